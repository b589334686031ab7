//! A simulated microcontroller (feature `std`): the no_std PSU firmware driven
//! over a tokio byte stream, e.g. one end of a pseudo-terminal.

use std::future::Future;
use std::io;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

use crate::psu::{PsuFirmware, DEFAULT_LOAD_MOHM};

/// Serial number the simulated device reports.
pub const SIM_SERIAL: &str = "SIM-0001";

/// Run the firmware PSU over `stream` until it ends (EOF or I/O error).
///
/// Same dispatcher and PSU code as the thumbv7em build; a 10 Ω load.
/// With `telemetry_period`, a telemetry event frame is sent every period.
pub async fn run_simulated_device<S: AsyncRead + AsyncWrite>(
    stream: S,
    telemetry_period: Option<Duration>,
) -> io::Result<()> {
    let mut fw = PsuFirmware::new(DEFAULT_LOAD_MOHM, SIM_SERIAL);
    run_firmware_until(
        &mut fw,
        Box::pin(stream),
        telemetry_period,
        std::future::pending::<()>(),
    )
    .await
    .map(|_| ())
}

/// Run `fw` over `stream` until `shutdown` completes or the stream ends; gives the
/// stream back so a test can keep the line open with a silent device (or
/// restart the same firmware state later).
pub async fn run_firmware_until<S, F>(
    fw: &mut PsuFirmware,
    mut stream: S,
    telemetry_period: Option<Duration>,
    shutdown: F,
) -> io::Result<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
    F: Future,
{
    let start = Instant::now();
    let mut ticker = telemetry_period.map(|p| {
        let mut t = tokio::time::interval_at(start + p, p);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        t
    });
    let mut buf = [0u8; 512];
    let mut out: Vec<u8> = Vec::with_capacity(1024);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => return Ok(stream),
            r = stream.read(&mut buf) => {
                let n = r?;
                if n == 0 {
                    return Ok(stream);
                }
                fw.receive(buf.get(..n).unwrap_or(&[]), |f| out.extend_from_slice(f));
            }
            _ = tick(&mut ticker) => {
                let uptime = u32::try_from(start.elapsed().as_millis() % (1u128 << 32)).unwrap_or(0);
                fw.telemetry(uptime, |f| out.extend_from_slice(f));
            }
        }
        if !out.is_empty() {
            stream.write_all(&out).await?;
            stream.flush().await?;
            out.clear();
        }
    }
}

async fn tick(t: &mut Option<tokio::time::Interval>) {
    match t {
        Some(t) => {
            t.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// Turn a `serialport::TTYPort` (e.g. one end of `TTYPort::pair()`) into a tokio
/// stream. Uses `tokio_serial::SerialStream` (mio + `AsyncFd`, non-blocking fd);
/// must be called inside a tokio runtime.
pub fn async_tty(port: serialport::TTYPort) -> io::Result<tokio_serial::SerialStream> {
    tokio_serial::SerialStream::try_from(port).map_err(io::Error::from)
}
