//! End to end over real pseudo-terminals: `DeviceClient` <-> pty <-> the no_std
//! PSU firmware run by the simulated-microcontroller runner.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use anyhow::{bail, Context, Result};
use firmware_proto::psu::{
    GetState, Identify, Measure, Mode, PsuFirmware, SetCurrent, SetCurrentEp, SetOutput,
    SetOutputEp, SetVoltage, SetVoltageEp, State, TelemetryTopic, DEFAULT_LOAD_MOHM,
};
use firmware_proto::sim::{async_tty, run_firmware_until, SIM_SERIAL};
use firmware_proto::{
    encode_frame, run_simulated_device, ClientConfig, DeviceClient, DeviceError, DeviceErrorKind,
    Endpoint, EndpointError, Feed, FrameReader, Header, Key, Kind, Topic, MAX_FRAME,
};
use serialport::TTYPort;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;
use tokio::time::timeout;
use tokio_serial::SerialStream;

const LIMIT: Duration = Duration::from_secs(20);

fn pty_pair() -> Result<(SerialStream, SerialStream)> {
    let (host, device) = TTYPort::pair().context("open pty pair")?;
    Ok((async_tty(host)?, async_tty(device)?))
}

fn config(ms: u64) -> ClientConfig {
    ClientConfig {
        timeout: Duration::from_millis(ms),
        ..ClientConfig::default()
    }
}

/// Same name, different schema: the key differs, so the device must refuse it.
struct SetVoltageFloat;
impl Endpoint for SetVoltageFloat {
    type Request = f32;
    type Response = State;
    const NAME: &'static str = "set_voltage";
    const SCHEMA: &'static str = "f32->State";
}

#[tokio::test]
async fn client_drives_the_firmware_psu_over_a_pty() -> Result<()> {
    timeout(LIMIT, async {
        let (host, device) = pty_pair()?;
        let dev = tokio::spawn(run_simulated_device(
            device,
            Some(Duration::from_millis(20)),
        ));
        let client = DeviceClient::new(host, config(2000));
        let mut events = client.subscribe();

        let id = client.call::<Identify>(&()).await?;
        assert_eq!(id.serial.as_str(), SIM_SERIAL);
        assert_eq!(id.max_mv, 30_000);

        let st = client
            .call::<SetVoltageEp>(&SetVoltage { mv: 12_000 })
            .await?;
        assert_eq!((st.set_mv, st.output), (12_000, false));
        client
            .call::<SetCurrentEp>(&SetCurrent { ma: 1_000 })
            .await?;
        // 12 V into 10 Ω wants 1.2 A; the 1 A limit makes it constant-current at 10 V.
        let st = client.call::<SetOutputEp>(&SetOutput { on: true }).await?;
        assert_eq!(st.measured.mode, Mode::Cc);
        assert_eq!((st.measured.mv, st.measured.ma), (10_000, 1_000));
        client
            .call::<SetCurrentEp>(&SetCurrent { ma: 3_000 })
            .await?;
        let m = client.call::<Measure>(&()).await?;
        assert_eq!((m.mv, m.ma, m.mode), (12_000, 1_200, Mode::Cv));

        // Errors cross the link as data.
        let err = client
            .call::<SetVoltageEp>(&SetVoltage { mv: 30_001 })
            .await
            .err()
            .context("31 V accepted")?;
        assert!(
            matches!(err, DeviceError::Device(EndpointError::OutOfRange)),
            "{err:?}"
        );
        let err = client
            .call::<SetVoltageFloat>(&5.0)
            .await
            .err()
            .context("schema mismatch accepted")?;
        assert!(
            matches!(err, DeviceError::Device(EndpointError::UnknownEndpoint)),
            "{err:?}"
        );
        assert_eq!(err.kind(), DeviceErrorKind::Report);
        let err = client
            .call_raw(SetVoltageEp::KEY, &[0xff], Duration::from_secs(2))
            .await
            .err()
            .context("bad body accepted")?;
        assert!(
            matches!(err, DeviceError::Device(EndpointError::BadRequest)),
            "{err:?}"
        );
        // The rejected set_voltage left the setpoint alone.
        assert_eq!(client.call::<GetState>(&()).await?.set_mv, 12_000);

        // Telemetry events reach subscribers and reflect the output.
        loop {
            let ev = events.recv().await?;
            if let Some(t) = ev.decode::<TelemetryTopic>() {
                let t = t?;
                if t.measured.mode == Mode::Cv && t.measured.ma == 1_200 {
                    break;
                }
            }
        }
        assert_eq!(client.stats().bad_frames, 0);
        drop(client);
        dev.abort();
        Ok(())
    })
    .await?
}

#[tokio::test]
async fn silent_device_times_out_then_garbage_burst_then_recovery() -> Result<()> {
    timeout(LIMIT, async {
        let (host, device) = pty_pair()?;
        let mut fw = PsuFirmware::new(DEFAULT_LOAD_MOHM, SIM_SERIAL);
        let client = DeviceClient::new(host, config(300));
        let mut events = client.subscribe();

        // Phase 1: device answers.
        let (stop, stopped) = oneshot::channel::<()>();
        let first = async {
            let st = client.call::<SetVoltageEp>(&SetVoltage { mv: 5_000 }).await;
            let _ = stop.send(());
            st
        };
        let (st, device) = tokio::join!(first, run_firmware_until(&mut fw, device, None, stopped));
        assert_eq!(st?.set_mv, 5_000);
        let mut device = device?;

        // Phase 2: the device stops answering; the line stays open.
        let err = client
            .call::<GetState>(&())
            .await
            .err()
            .context("silent device answered")?;
        assert!(matches!(err, DeviceError::Timeout(_)), "{err:?}");
        assert_eq!(err.kind(), DeviceErrorKind::Retry);

        // Phase 3: a burst of line noise towards the host.
        let mut buf = [0u8; MAX_FRAME];
        let event = encode_frame(
            &Header::new(Kind::Event, 1, TelemetryTopic::KEY),
            &fw.psu.telemetry(1),
            &mut buf,
        )?
        .to_vec();
        let mut corrupted = event.clone();
        corrupted[6] ^= 0x10;
        let mut burst: Vec<u8> = (0u16..200)
            .map(|i| (i.wrapping_mul(97) % 251) as u8)
            .collect();
        burst.push(0);
        burst.extend_from_slice(&corrupted); // delimited, fails the CRC
        burst.extend_from_slice(&[0x55; 400]); // longer than any frame
        burst.push(0);
        burst.extend_from_slice(&event[..event.len() / 2]); // cut off mid-frame, no delimiter
        device.write_all(&burst).await?;
        device.flush().await?;

        // Phase 4: the device comes back (same firmware state). It first answers the
        // timed-out request (glued to the cut-off frame, so lost), then this one.
        let (stop, stopped) = oneshot::channel::<()>();
        let after = async {
            let st = client
                .call_with_timeout::<GetState>(&(), Duration::from_secs(2))
                .await;
            let m = client.call::<Measure>(&()).await;
            let _ = stop.send(());
            (st, m)
        };
        let ((st, m), device) =
            tokio::join!(after, run_firmware_until(&mut fw, device, None, stopped));
        device?;
        assert_eq!(st?.set_mv, 5_000, "state survived the outage");
        assert_eq!(m?.mode, Mode::Off);
        let stats = client.stats();
        // The corrupted event, and the stale answer glued to the cut-off frame.
        assert_eq!(stats.bad_frames, 2, "{stats:?}");
        // The 199-byte noise run and the 400-byte run both exceed MAX_FRAME.
        assert_eq!(stats.too_large, 2, "{stats:?}");
        // The corrupted event was dropped, never delivered.
        assert!(events.try_recv().is_err());
        Ok(())
    })
    .await?
}

/// Read frames from `s` until `n` arrived.
async fn read_frames(s: &mut SerialStream, n: usize) -> Result<Vec<(Header, Vec<u8>)>> {
    let mut reader = FrameReader::<MAX_FRAME>::new();
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    while got.len() < n {
        let k = s.read(&mut buf).await?;
        if k == 0 {
            bail!("eof");
        }
        let mut w = &buf[..k];
        loop {
            w = match reader.feed(w) {
                Feed::NeedMore => break,
                Feed::Frame { frame, remaining } => {
                    got.push((frame.header, frame.body.to_vec()));
                    remaining
                }
                Feed::BadFrame { remaining, .. } | Feed::FrameTooLarge { remaining } => remaining,
            };
        }
    }
    Ok(got)
}

#[tokio::test]
async fn device_resynchronises_after_garbage_on_its_input() -> Result<()> {
    timeout(LIMIT, async {
        let (mut host, device) = pty_pair()?;
        let dev = tokio::spawn(run_simulated_device(device, None));
        let mut out = Vec::new();
        let mut buf = [0u8; MAX_FRAME];
        let req = |seq, key: Key, buf: &mut [u8; MAX_FRAME]| -> Result<Vec<u8>> {
            Ok(encode_frame(&Header::new(Kind::Request, seq, key), &(), buf)?.to_vec())
        };
        out.extend_from_slice(b"\x13\x37garbage without delimiter");
        out.push(0);
        out.extend(req(1, GetState::KEY, &mut buf)?);
        out.extend_from_slice(&[0xAA; 1000]);
        out.push(0);
        let mut bad = req(2, GetState::KEY, &mut buf)?;
        bad[3] ^= 0x40;
        out.extend(bad);
        out.extend(req(3, Measure::KEY, &mut buf)?);
        // Another protocol version: answered with UnsupportedVersion, seq kept.
        let mut v2 = Header::new(Kind::Request, 4, GetState::KEY);
        v2.version = 2;
        out.extend(encode_frame(&v2, &(), &mut buf)?.iter());
        host.write_all(&out).await?;

        let got = read_frames(&mut host, 3).await?;
        let seqs: Vec<(u32, Kind)> = got.iter().map(|(h, _)| (h.seq, h.kind)).collect();
        assert_eq!(
            seqs,
            vec![(1, Kind::Response), (3, Kind::Response), (4, Kind::Error)]
        );
        let err: EndpointError = postcard::from_bytes(&got[2].1)?;
        assert_eq!(err, EndpointError::UnsupportedVersion { supported: 1 });
        dev.abort();
        Ok(())
    })
    .await?
}

#[tokio::test]
async fn dropped_device_end_closes_the_client() -> Result<()> {
    timeout(LIMIT, async {
        let (host, device) = pty_pair()?;
        let client = DeviceClient::new(host, config(5000));
        drop(device);
        let err = client
            .call::<Identify>(&())
            .await
            .err()
            .context("answer from nowhere")?;
        assert!(
            matches!(
                err,
                DeviceError::Closed | DeviceError::Link(_) | DeviceError::Timeout(_)
            ),
            "{err:?}"
        );
        Ok(())
    })
    .await?
}
