//! Frames per second over a pseudo-terminal at 115200 and 1 Mbaud, printed next
//! to the UART wire limit for the same frame sizes (10 bits per byte: 8N1).
//!
//! `cargo bench -p firmware-proto --bench link` (LINK_BENCH_SECS=2 by default).
//!
//! A pty accepts the baud setting but does not pace bytes, so the measured
//! figure is the software ceiling (client + framing + simulated firmware +
//! kernel tty layer); a real UART caps the link at the wire limit column.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use firmware_proto::psu::{GetState, PsuFirmware, TelemetryTopic, DEFAULT_LOAD_MOHM};
use firmware_proto::sim::async_tty;
use firmware_proto::{
    encode_frame, run_simulated_device, ClientConfig, DeviceClient, Endpoint, Feed, FrameReader,
    Header, Kind, Topic, MAX_FRAME,
};
use serialport::{SerialPort, TTYPort};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_serial::SerialStream;

fn pty(baud: u32) -> Result<(SerialStream, SerialStream)> {
    let (mut a, mut b) = TTYPort::pair().context("pty pair")?;
    a.set_baud_rate(baud)?;
    b.set_baud_rate(baud)?;
    Ok((async_tty(a)?, async_tty(b)?))
}

fn wire_limit(baud: u32, bytes_per_frame: usize) -> f64 {
    f64::from(baud) / 10.0 / bytes_per_frame as f64
}

/// Sequential request/response calls per second.
async fn round_trips(baud: u32, secs: Duration) -> Result<(f64, usize)> {
    let (host, device) = pty(baud)?;
    let dev = tokio::spawn(run_simulated_device(device, None));
    let client = DeviceClient::new(host, ClientConfig::default());
    for _ in 0..200 {
        client.call::<GetState>(&()).await?;
    }
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < secs {
        client.call::<GetState>(&()).await?;
        n += 1;
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    dev.abort();
    // Bytes on the wire per call: leading 0x00 + request frame + response frame.
    let mut buf = [0u8; MAX_FRAME];
    let req = encode_frame(
        &Header::new(Kind::Request, 1000, GetState::KEY),
        &(),
        &mut buf,
    )?
    .len();
    let st = PsuFirmware::new(DEFAULT_LOAD_MOHM, "x").psu.state();
    let resp = encode_frame(
        &Header::new(Kind::Response, 1000, GetState::KEY),
        &st,
        &mut buf,
    )?
    .len();
    Ok((rate, 1 + req + resp))
}

/// One-way event frames per second (device -> host), back to back.
async fn stream(baud: u32, secs: Duration) -> Result<(f64, usize)> {
    let (mut tx, mut rx) = pty(baud)?;
    let fw = PsuFirmware::new(DEFAULT_LOAD_MOHM, "x");
    let mut buf = [0u8; MAX_FRAME];
    let frame = encode_frame(
        &Header::new(Kind::Event, 1000, TelemetryTopic::KEY),
        &fw.psu.telemetry(123_456),
        &mut buf,
    )?
    .to_vec();
    let batch: Vec<u8> = frame
        .iter()
        .copied()
        .cycle()
        .take(frame.len() * 64)
        .collect();
    let writer = tokio::spawn(async move {
        loop {
            if tx.write_all(&batch).await.is_err() {
                break;
            }
        }
    });
    let mut reader = FrameReader::<MAX_FRAME>::new();
    let mut chunk = [0u8; 4096];
    let mut frames = 0u64;
    let start = Instant::now();
    while start.elapsed() < secs {
        let k = rx.read(&mut chunk).await?;
        let mut w = chunk.get(..k).unwrap_or(&[]);
        loop {
            w = match reader.feed(w) {
                Feed::NeedMore => break,
                Feed::Frame { remaining, .. } => {
                    frames += 1;
                    remaining
                }
                Feed::BadFrame { remaining, .. } | Feed::FrameTooLarge { remaining } => remaining,
            };
        }
    }
    let rate = frames as f64 / start.elapsed().as_secs_f64();
    writer.abort();
    Ok((rate, frame.len()))
}

fn main() -> Result<()> {
    let secs = std::env::var("LINK_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2.0);
    let secs = Duration::from_secs_f64(secs);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    println!(
        "{:<26} {:>9} {:>11} {:>16} {:>16} {:>8}",
        "case", "baud", "bytes/frame", "wire limit /s", "pty measured /s", "ratio"
    );
    rt.block_on(async {
        for baud in [115_200u32, 1_000_000] {
            let (rate, bytes) = round_trips(baud, secs).await?;
            let limit = wire_limit(baud, bytes);
            println!(
                "{:<26} {:>9} {:>11} {:>16.0} {:>16.0} {:>7.1}x",
                "get_state round trip",
                baud,
                bytes,
                limit,
                rate,
                rate / limit
            );
            let (rate, bytes) = stream(baud, secs).await?;
            let limit = wire_limit(baud, bytes);
            println!(
                "{:<26} {:>9} {:>11} {:>16.0} {:>16.0} {:>7.1}x",
                "telemetry event stream",
                baud,
                bytes,
                limit,
                rate,
                rate / limit
            );
        }
        Ok::<_, anyhow::Error>(())
    })?;
    println!("(pty does not pace bytes: a real UART stops at the wire limit column)");
    Ok(())
}
