//! The `firmware` driver against the no_std firmware PSU over real
//! pseudo-terminals: the plain simulated device (`run_simulated_device`)
//! and the fault-injecting one (`serve_firmware_pty`).
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use anyhow::{Context, Result};
use firmware_proto::psu::{self, GetState};
use firmware_proto::sim::{async_tty, SIM_SERIAL};
use firmware_proto::{encode_frame, run_simulated_device, Endpoint, Header, Kind, MAX_FRAME};
use labmesh_drivers::firmware::{serve_firmware_pty, FirmwareDriver, DRIVER};
use labmesh_drivers::{
    Args, DriverError, DriverErrorKind, DriverRegistry, Instrument, InstrumentConfig, ParamType,
};
use serde_json::{json, Map, Value};
use tokio::time::timeout;

const LIMIT: Duration = Duration::from_secs(20);

fn config(resource: &str, opts: Value) -> InstrumentConfig {
    InstrumentConfig {
        id: "fw-psu".into(),
        driver: DRIVER.into(),
        resource: Some(resource.into()),
        options: match opts {
            Value::Object(m) => m,
            _ => Map::new(),
        },
    }
}

async fn call<I: Instrument + ?Sized>(
    inst: &mut I,
    method: &str,
    params: Value,
) -> Result<Value, DriverError> {
    let args = inst.describe().bind(method, &params)?;
    inst.call(method, args).await
}

fn num(v: &Value, key: &str) -> f64 {
    v[key].as_f64().unwrap_or(f64::NAN)
}

#[tokio::test]
async fn registry_driver_controls_the_simulated_device_over_a_pty() -> Result<()> {
    timeout(LIMIT, async {
        let (master, slave) = serialport::TTYPort::pair().context("pty pair")?;
        let path = serialport::SerialPort::name(&slave).context("pty path")?;
        // Keep the slave open for the whole test, as the device's board would:
        // the master then never reads EIO while the driver has not opened it.
        let _slave = slave;
        let device = tokio::spawn(run_simulated_device(
            async_tty(master)?,
            Some(Duration::from_millis(20)),
        ));
        // Default baud (115200), the VISA spelling of the port.
        let mut fw = DriverRegistry::with_builtins()
            .create(config(&format!("ASRL{path}::INSTR"), json!({})))
            .await?;

        // Every endpoint the device serves is a method, in routing order.
        let d = fw.describe();
        assert_eq!(d.driver, "firmware");
        let names: Vec<&str> = d.methods.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, psu::ENDPOINT_NAMES);
        let sv = d.method("set_voltage").context("set_voltage")?;
        assert_eq!(sv.params[0].ty, ParamType::Float);
        assert_eq!(sv.params[0].unit.as_deref(), Some("V"));
        assert_eq!(
            (sv.params[0].min, sv.params[0].max),
            (Some(0.0), Some(30.0))
        );
        let sc = d.method("set_current").context("set_current")?;
        assert_eq!((sc.params[0].min, sc.params[0].max), (Some(0.0), Some(3.0)));

        let id = call(fw.as_mut(), "identify", Value::Null).await?;
        assert_eq!(id["serial"], json!(SIM_SERIAL));
        assert_eq!(id["model"], json!(psu::MODEL));
        assert_eq!(
            (num(&id, "max_voltage"), num(&id, "max_current")),
            (30.0, 3.0)
        );

        let st = call(fw.as_mut(), "set_voltage", json!({"value": 12.0})).await?;
        assert_eq!(st["ok"], json!(true));
        assert_eq!(num(&st, "voltage_set"), 12.0);
        assert_eq!(st["output"], json!(false));
        call(fw.as_mut(), "set_current", json!([1.0])).await?;
        // 12 V into 10 Ω wants 1.2 A: the 1 A limit holds it at 10 V (CC).
        let st = call(fw.as_mut(), "set_output", json!({"on": "on"})).await?;
        assert_eq!(st["mode"], json!("cc"));
        assert_eq!((num(&st, "voltage"), num(&st, "current")), (10.0, 1.0));
        // Millivolt resolution survives the float round trip.
        call(fw.as_mut(), "set_current", json!(2.5)).await?;
        let st = call(fw.as_mut(), "set_voltage", json!(1.234)).await?;
        assert_eq!(num(&st, "voltage_set"), 1.234);
        assert_eq!(num(&st, "current"), 0.123);
        let m = call(fw.as_mut(), "measure", Value::Null).await?;
        assert_eq!(m, json!({"voltage": 1.234, "current": 0.123, "mode": "cv"}));

        // poll() publishes telemetry (with the setpoints last answered) once
        // a fresh event has arrived; each poll before that asks the device.
        let state = loop {
            let s = fw.poll().await?;
            assert_eq!(num(&s, "voltage"), 1.234, "{s}");
            if s["source"] == json!("telemetry") {
                break s;
            }
            assert_eq!(s["source"], json!("device"));
        };
        assert_eq!(num(&state, "voltage_set"), 1.234);
        assert_eq!(num(&state, "current_set"), 2.5);
        assert_eq!(state["output"], json!(true));
        assert_eq!(state["serial"], json!(SIM_SERIAL));
        assert_eq!(state["relay_id"], json!("fw-psu"));
        assert!(state["uptime_ms"].is_u64(), "{state}");
        let g = call(fw.as_mut(), "get_state", Value::Null).await?;
        assert_eq!(g["source"], json!("device"));

        fw.shutdown().await;
        device.abort();
        Ok(())
    })
    .await?
}

#[tokio::test]
async fn out_of_range_is_400_from_the_driver_and_from_the_device() -> Result<()> {
    timeout(LIMIT, async {
        let pty = serve_firmware_pty(None)?;
        let mut fw = FirmwareDriver::from_config(&config(&pty.resource(), json!({})))?;
        call(&mut fw, "set_voltage", json!({"value": 3.0})).await?;

        // The described range rejects it before anything is sent.
        for (method, value) in [("set_voltage", 30.001), ("set_current", 3.5)] {
            let e = call(&mut fw, method, json!({ "value": value }))
                .await
                .expect_err("accepted");
            assert!(matches!(e, DriverError::BadParam { .. }), "{e}");
            assert_eq!(e.code(), 400);
        }
        let frames = fw.link_stats().context("connected")?.frames;
        // Unchecked arguments reach the device, which refuses: still 400.
        let mut raw = Map::new();
        raw.insert("value".into(), json!(31.0));
        let e = fw
            .call("set_voltage", Args(raw))
            .await
            .expect_err("31 V accepted");
        assert!(matches!(e, DriverError::BadParam { .. }), "{e}");
        assert_eq!(e.code(), 400);
        assert_eq!(e.kind(), DriverErrorKind::Request);
        assert!(e.to_string().contains("OutOfRange"), "{e}");
        assert_eq!(fw.link_stats().context("connected")?.frames, frames + 1);
        // Values the device cannot represent never leave the host.
        let mut raw = Map::new();
        raw.insert("value".into(), json!(-1.0));
        let e = fw.call("set_current", Args(raw)).await.expect_err("-1 A");
        assert_eq!(e.code(), 400);
        // Nothing changed on the device.
        assert_eq!(pty.device_state().await?.set_mv, 3_000);
        let e = call(&mut fw, "reboot", Value::Null)
            .await
            .expect_err("reboot");
        assert_eq!(e.code(), 404);
        pty.close().await;
        Ok(())
    })
    .await?
}

#[tokio::test]
async fn silent_device_is_408_within_the_timeout_then_recovers() -> Result<()> {
    timeout(LIMIT, async {
        let pty = serve_firmware_pty(Some(Duration::from_millis(20)))?;
        let mut fw = FirmwareDriver::from_config(&config(
            &pty.resource(),
            json!({"timeout_ms": 300, "telemetry_max_age_ms": 60_000}),
        ))?;
        call(&mut fw, "set_voltage", json!(5.0)).await?;
        call(&mut fw, "set_output", json!(true)).await?;

        pty.set_muted(true).await?;
        let e = call(&mut fw, "get_state", Value::Null)
            .await
            .expect_err("a muted device answered");
        assert!(
            matches!(e, DriverError::Timeout(d) if d == Duration::from_millis(300)),
            "{e}"
        );
        assert_eq!(e.code(), 408);
        assert_eq!(e.kind(), DriverErrorKind::Retry);
        // A timeout is not a link failure: the port stays open.
        assert!(fw.is_connected());
        let e = call(&mut fw, "measure", Value::Null)
            .await
            .expect_err("still muted");
        assert_eq!(e.code(), 408);

        pty.set_muted(false).await?;
        // The device answers the two late requests first; they are dropped
        // as stale, and this call gets its own answer.
        let st = call(&mut fw, "get_state", Value::Null).await?;
        assert_eq!(num(&st, "voltage_set"), 5.0);
        assert_eq!(num(&st, "voltage"), 5.0);
        let stats = fw.link_stats().context("connected")?;
        assert_eq!(stats.stale, 2, "{stats:?}");
        assert_eq!(stats.bad_frames, 0, "{stats:?}");
        let m = call(&mut fw, "measure", Value::Null).await?;
        assert_eq!(m["mode"], json!("cv"));
        fw.shutdown().await;
        pty.close().await;
        Ok(())
    })
    .await?
}

#[tokio::test]
async fn poll_of_a_silent_device_is_408_then_recovers() -> Result<()> {
    timeout(LIMIT, async {
        let pty = serve_firmware_pty(None)?;
        let mut fw =
            FirmwareDriver::from_config(&config(&pty.resource(), json!({"timeout_ms": 200})))?;
        let s = fw.poll().await?;
        // No telemetry: every poll asks the device.
        assert_eq!(s["source"], json!("device"));
        assert_eq!(s["mode"], json!("off"));
        pty.set_muted(true).await?;
        assert_eq!(fw.poll().await.expect_err("muted").code(), 408);
        pty.set_muted(false).await?;
        let s = fw.poll().await?;
        assert_eq!(s["connected"], json!(true));
        pty.close().await;
        Ok(())
    })
    .await?
}

/// Noise as a UART picks it up: no 0x00 (so it ends no frame by itself).
fn noise(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 97 % 251) as u8 + 1).collect()
}

#[tokio::test]
async fn corrupted_byte_bursts_on_the_line_cost_no_more_than_one_answer() -> Result<()> {
    timeout(LIMIT, async {
        let pty = serve_firmware_pty(None)?;
        let mut fw =
            FirmwareDriver::from_config(&config(&pty.resource(), json!({"timeout_ms": 500})))?;
        call(&mut fw, "set_voltage", json!(7.5)).await?;

        // Towards the host: noise, a valid frame with a flipped bit, an
        // oversize run, each delimited.
        let mut buf = [0u8; MAX_FRAME];
        let frame = encode_frame(
            &Header::new(Kind::Response, 99, GetState::KEY),
            &pty.device_state().await?,
            &mut buf,
        )?
        .to_vec();
        let mut corrupted = frame.clone();
        corrupted[5] ^= 0x08;
        let mut burst = noise(40);
        burst.push(0);
        burst.extend_from_slice(&corrupted);
        burst.extend(noise(600));
        burst.push(0);
        pty.inject_to_host(&burst).await?;
        let st = call(&mut fw, "get_state", Value::Null).await?;
        assert_eq!(num(&st, "voltage_set"), 7.5);
        let stats = fw.link_stats().context("connected")?;
        assert_eq!((stats.bad_frames, stats.too_large), (2, 1), "{stats:?}");

        // Towards the device, ending mid-"frame": the host starts every
        // request with a 0x00, so the next request is still understood.
        pty.inject_to_device(&noise(300)).await?;
        pty.inject_to_device(&frame[..frame.len() / 2]).await?;
        let st = call(&mut fw, "set_voltage", json!(8.0)).await?;
        assert_eq!(num(&st, "voltage_set"), 8.0);

        // Towards the host, ending mid-frame: the device does not lead with
        // a delimiter, so its next answer is glued to the noise and lost
        // (one 408); the call after that works.
        pty.inject_to_host(&noise(30)).await?;
        let e = call(&mut fw, "measure", Value::Null)
            .await
            .expect_err("answer glued to noise");
        assert_eq!(e.code(), 408, "{e}");
        let m = call(&mut fw, "measure", Value::Null).await?;
        assert_eq!(m["mode"], json!("off"));
        assert_eq!(pty.device_state().await?.set_mv, 8_000);
        pty.close().await;
        Ok(())
    })
    .await?
}

#[tokio::test]
async fn unplugged_port_is_503_and_a_replugged_one_reconnects() -> Result<()> {
    timeout(LIMIT, async {
        // A stable name, as udev's /dev/serial/by-id links give real ports.
        let dir = tempfile::tempdir()?;
        let link = dir.path().join("ttyACM0");
        let pty = serve_firmware_pty(None)?;
        std::os::unix::fs::symlink(pty.path(), &link)?;
        let mut fw = DriverRegistry::with_builtins()
            .create(config(
                &format!("serial://{}", link.display()),
                json!({"timeout_ms": 1000}),
            ))
            .await?;
        call(fw.as_mut(), "set_voltage", json!(2.0)).await?;

        pty.close().await; // unplug
        let e = call(fw.as_mut(), "measure", Value::Null)
            .await
            .expect_err("unplugged");
        assert!(matches!(e, DriverError::Link { .. }), "{e}");
        assert_eq!(e.code(), 503);
        assert_eq!(e.kind(), DriverErrorKind::Reconnect);
        std::fs::remove_file(&link)?;
        let e = call(fw.as_mut(), "measure", Value::Null)
            .await
            .expect_err("still unplugged");
        assert_eq!(e.code(), 503, "{e}");
        assert!(e.to_string().contains("ttyACM0"), "{e}");

        // A device back under the same name: the next call reconnects.
        let pty2 = serve_firmware_pty(None)?;
        std::os::unix::fs::symlink(pty2.path(), &link)?;
        let st = call(fw.as_mut(), "get_state", Value::Null).await?;
        // A fresh device: its power-on setpoint, not the old one.
        assert_eq!(num(&st, "voltage_set"), 0.0);
        assert_eq!(st["connected"], json!(true));
        fw.shutdown().await;
        pty2.close().await;
        Ok(())
    })
    .await?
}

/// Issue 9: the identity was only known after `identify` or a poll; now
/// every new link asks the device, so the first call of any kind is enough.
#[tokio::test]
async fn identity_is_learned_when_the_link_opens() -> Result<()> {
    timeout(LIMIT, async {
        let pty = serve_firmware_pty(None)?;
        let mut fw = DriverRegistry::with_builtins()
            .create(config(&pty.resource(), json!({})))
            .await?;
        assert_eq!(fw.describe().identity, None);
        call(fw.as_mut(), "set_voltage", json!({"value": 1.0})).await?;
        let identity = fw.describe().identity.context("identity after a call")?;
        assert!(identity.contains(SIM_SERIAL), "{identity}");
        pty.close().await;
        Ok(())
    })
    .await?
}
