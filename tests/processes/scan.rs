//! `labmesh scan --probe`: the binary finds simulated instruments on a
//! pseudo-terminal (at a baud rate it has to try), a raw socket, VXI-11
//! and HiSLIP, and the `[[relay.instruments]]` blocks it prints are a
//! config the drivers open and drive.

use std::time::Duration;

use anyhow::Context;
use labmesh_drivers::psu::models::Family;
use labmesh_drivers::sim::{SimConfig, SimPsu};
use labmesh_drivers::{DriverRegistry, InstrumentConfig};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use crate::BIN;

fn sim(family: Family, serial: &str) -> anyhow::Result<SimPsu> {
    Ok(SimPsu::new(SimConfig {
        serial: serial.into(),
        ..SimConfig::new(family)
    })?)
}

#[tokio::test]
async fn scan_probe_finds_pty_tcp_vxi11_and_hislip_instruments_and_prints_working_config(
) -> anyhow::Result<()> {
    tokio::time::timeout(Duration::from_secs(60), async {
        let (stop, rx) = oneshot::channel::<()>();
        let rx = futures::FutureExt::shared(async {
            let _ = rx.await;
        });
        // A Rigol on a pty (a pty answers at any baud rate, so the first
        // rate tried, 9600, is the one printed).
        let (rigol, pty) = labmesh_drivers::sim::serve_pty(SimConfig {
            serial: "PTY-1".into(),
            ..SimConfig::new(Family::RigolDp8xx)
        })?;
        let pty_path = pty.path().to_string_lossy().into_owned();

        let keysight = sim(Family::KeysightE36xx, "RAW-1")?;
        let raw = TcpListener::bind("127.0.0.1:0").await?;
        let raw_port = raw.local_addr()?.port();
        tokio::spawn({
            let (s, rx) = (keysight.clone(), rx.clone());
            async move { s.serve_tcp(raw, rx).await }
        });

        let siglent = sim(Family::SiglentSpd3303x, "VXI-1")?;
        let pm = TcpListener::bind("127.0.0.1:0").await?;
        let core = TcpListener::bind("127.0.0.1:0").await?;
        let pm_port = pm.local_addr()?.port();
        tokio::spawn({
            let (s, rx) = (siglent.clone(), rx.clone());
            async move { s.serve_vxi11(Some(pm), core, rx).await }
        });

        let hs = sim(Family::KeysightE36xx, "HS-1")?;
        let hl = TcpListener::bind("127.0.0.1:0").await?;
        let hs_port = hl.local_addr()?.port();
        tokio::spawn({
            let (s, rx) = (hs.clone(), rx.clone());
            async move { s.serve_hislip(hl, rx).await }
        });
        // Nothing listens here.
        let dead = TcpListener::bind("127.0.0.1:0").await?;
        let dead_port = dead.local_addr()?.port();
        drop(dead);

        let out = tokio::process::Command::new(BIN)
            .args([
                "scan",
                "--only",
                "--probe",
                "--timeout-ms",
                "400",
                "--port",
                &pty_path,
            ])
            .args(["--tcp", &format!("127.0.0.1:{raw_port}")])
            .args(["--tcp", &format!("127.0.0.1:{pm_port}")])
            .args(["--tcp", &format!("127.0.0.1:{hs_port}")])
            .args(["--tcp", &format!("127.0.0.1:{dead_port}")])
            .env("RUST_LOG", "warn")
            .kill_on_drop(true)
            .output()
            .await
            .context("run labmesh scan")?;
        let text = String::from_utf8(out.stdout)?;
        eprintln!("{text}");
        anyhow::ensure!(
            out.status.success(),
            "scan failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            text.contains(&format!("127.0.0.1:{dead_port}: no answer")),
            "{text}"
        );

        // The printed blocks are valid config...
        let toml_text = text
            .split_once("# Paste into labmesh.toml:")
            .map(|(_, t)| t)
            .context("no config blocks printed")?;
        let (cfg, _) = labmesh_config::Config::parse(toml_text, std::path::Path::new("scan.toml"))?;
        let insts = &cfg.relay.instruments;
        assert_eq!(insts.len(), 4, "{toml_text}");
        let by_resource = |prefix: &str| {
            insts
                .iter()
                .find(|i| i.resource.as_deref().unwrap_or("").starts_with(prefix))
                .with_context(|| format!("no block for {prefix}"))
        };
        // Each *IDN? is quoted above its block.
        for sn in ["PTY-1", "RAW-1", "VXI-1", "HS-1"] {
            assert!(toml_text.contains(&format!(",{sn},")), "{toml_text}");
        }
        let p = by_resource(&format!("serial://{pty_path}?baud=9600"))?;
        assert_eq!(p.driver, "rigol-dp8xx");
        assert_eq!(p.id, "dp832-1");
        let r = by_resource(&format!("tcp://127.0.0.1:{raw_port}"))?;
        assert_eq!(r.driver, "keysight-e36xx");
        let v = by_resource(&format!("vxi11://127.0.0.1:{pm_port}/inst0"))?;
        assert_eq!(v.driver, "siglent-spd3303x");
        let h = by_resource(&format!("hislip://127.0.0.1:{hs_port}/hislip0"))?;
        assert_eq!(h.driver, "keysight-e36xx");
        // Two E36313As: distinct ids.
        assert_ne!(r.id, h.id);

        // ... that the drivers open and drive: set a voltage on each.
        let reg = DriverRegistry::with_builtins();
        for (inst, sim, q) in [
            (p, &rigol, ":SOUR1:VOLT?"),
            (r, &keysight, "VOLT?"),
            (v, &siglent, "CH1:VOLT?"),
            (h, &hs, "VOLT?"),
        ] {
            let mut d = reg
                .create(InstrumentConfig {
                    id: inst.id.clone(),
                    driver: inst.driver.clone(),
                    resource: inst.resource.clone(),
                    options: inst.driver_options(),
                })
                .await?;
            let args = d.describe().bind("set_voltage", &json!({"value": 1.5}))?;
            d.call("set_voltage", args).await?;
            let set: f64 = String::from_utf8(sim.execute(q).unwrap_or_default())?
                .trim()
                .parse()?;
            assert_eq!(set, 1.5, "{}", inst.id);
        }
        let _ = stop.send(());
        pty.close().await;
        Ok(())
    })
    .await
    .context("scan test did not finish within 60 s")?
}
