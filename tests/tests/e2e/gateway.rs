//! Issue 15: the relay as a LAN-instrument gateway. A relay hosts a
//! simulated Keysight PSU on a real pseudo-terminal (a serial instrument)
//! and serves it as a raw socket, VXI-11 and HiSLIP instrument; pyvisa-py
//! (PyPI `pyvisa` + `pyvisa-py`) drives it through each, and the mesh
//! sees the same instrument. Locks are the mesh lease, both ways: a LAN
//! lock makes mesh calls 409, a mesh lease makes LAN messages and lock
//! requests fail with the protocol's lock error.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use labmesh_config::lan::{LanSection, Listen};
use labmesh_drivers::hislip::HislipLink;
use labmesh_drivers::psu::models::Family;
use labmesh_drivers::sim::{self, SimConfig};
use labmesh_drivers::vxi11::Vxi11Link;
use labmesh_drivers::{DriverRegistry, InstrumentConfig};
use labmesh_relay::Hosted;
use labmesh_tests::{last_json, python_pyvisa, run_python, Mesh, WAIT};
use serde_json::{json, Map};

/// VI_ERROR_IO: pyvisa-py 0.8 reports every VXI-11 error but a timeout
/// as this (error 11, "device locked by another link", included); the
/// Rust VXI-11 client below sees the 11 itself.
const VI_ERROR_IO: i64 = -1073807298;

fn lan_on_free_ports() -> LanSection {
    LanSection {
        raw: Some(Listen::At("127.0.0.1:0".into())),
        vxi11: None,
        vxi11_core: Some("127.0.0.1:0".into()),
        hislip: Some(Listen::At("127.0.0.1:0".into())),
    }
}

/// Wait (bounded) until nobody holds `relay_id`'s lease.
async fn lease_free(mesh: &Mesh, relay_id: &str) -> anyhow::Result<()> {
    tokio::time::timeout(WAIT, async {
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        loop {
            tick.tick().await;
            if let Ok(None) = mesh.client.who(relay_id).await {
                return;
            }
        }
    })
    .await
    .context("the lease was not released")
}

#[tokio::test]
async fn lan_gateway_serves_a_serial_psu_to_pyvisa_and_maps_locks_to_the_lease(
) -> anyhow::Result<()> {
    tokio::time::timeout(Duration::from_secs(120), async {
        let (sim, pty) = sim::serve_pty(SimConfig::new(Family::KeysightE36xx))?;
        let registry = DriverRegistry::with_builtins();
        let inst = registry
            .create(InstrumentConfig {
                id: "psu-lan".into(),
                driver: "keysight-e36xx".into(),
                resource: Some(format!("ASRL{}::INSTR", pty.path().display())),
                options: Map::new(),
            })
            .await?;
        let mesh = Mesh::start_hosted(vec![Hosted::new("psu-lan", inst)
            .poll_every(Duration::from_millis(100))
            .lan(lan_on_free_ports())])
        .await?;
        let servers = mesh.relay.served()[0].lan.clone();
        let addr = |p: &str| -> anyhow::Result<SocketAddr> {
            servers
                .iter()
                .find(|s| s.protocol == p)
                .map(|s| s.addr)
                .with_context(|| format!("no {p} server in {servers:?}"))
        };
        let (raw, vxi, hs) = (addr("raw")?, addr("vxi11")?, addr("hislip")?);
        let resources = [
            ("raw", format!("TCPIP::127.0.0.1::{}::SOCKET", raw.port())),
            ("vxi11", format!("TCPIP::127.0.0.1,{}::INSTR", vxi.port())),
            (
                "hislip",
                format!("TCPIP::127.0.0.1::hislip0,{}::INSTR", hs.port()),
            ),
        ];
        // The relay prints what it serves as VISA resources.
        for (p, r) in &resources {
            assert!(
                servers.iter().any(|s| &s.visa == r),
                "{p}: {r} not in {servers:?}"
            );
        }

        if let Some(py) = python_pyvisa() {
            for (i, (proto, resource)) in resources.iter().enumerate() {
                let volts = 1.0 + i as f64;
                let out = run_python(
                    &py,
                    "pyvisa_gateway.py",
                    &["drive", resource, &volts.to_string()],
                    &[],
                    WAIT,
                )
                .await?;
                let v = last_json(&out)?;
                assert_eq!(v["idn"], sim.idn(), "{proto}: {v}");
                let set: f64 = v["volt"].as_str().unwrap_or_default().trim().parse()?;
                assert!((set - volts).abs() < 1e-9, "{proto}: {v}");
                assert_eq!(v["err"], "-222,\"Data out of range\"", "{proto}: {v}");
                if resource.ends_with("::INSTR") {
                    assert_eq!(v["stb"], 0, "{proto}: {v}");
                    if *proto == "vxi11" {
                        assert_eq!(v["lock"], "ok", "{proto}: {v}");
                    }
                    if v["lock"] == "ok" {
                        let locked: f64 = v["locked_volt"]
                            .as_str()
                            .unwrap_or_default()
                            .trim()
                            .parse()?;
                        assert!((locked - volts).abs() < 1e-9, "{proto}: {v}");
                    }
                }
                // The mesh drives the same serial instrument.
                let st = mesh.client.call("psu-lan", "get_state", json!({})).await?;
                assert_eq!(
                    st["channels"][0]["voltage_set"],
                    json!(volts),
                    "{proto}: {st}"
                );
            }

            // A mesh lease: LAN clients get the protocol's lock error, and
            // the setpoint does not move.
            let lease = mesh.client.lock("psu-lan", Duration::from_secs(30)).await?;
            for (proto, resource) in &resources {
                let out =
                    run_python(&py, "pyvisa_gateway.py", &["locked", resource], &[], WAIT).await?;
                let v = last_json(&out)?;
                match *proto {
                    "vxi11" => {
                        assert_eq!(v["write"]["code"], VI_ERROR_IO, "{proto}: {v}");
                        assert_eq!(v["query"]["code"], VI_ERROR_IO, "{proto}: {v}");
                    }
                    // HiSLIP answers an Error message; a raw socket has no
                    // way to say so: the query gets nothing (a timeout).
                    _ => assert!(v["query"]["error"].is_string(), "{proto}: {v}"),
                }
            }
            let st = mesh.client.call("psu-lan", "get_state", json!({})).await?;
            assert_eq!(st["channels"][0]["voltage_set"], json!(3.0), "{st}");
            lease.unlock().await?;
        }

        // A VXI-11 lock is the lease: mesh calls that change state get 409
        // naming the LAN session, the LAN holder still writes, and other
        // LAN sessions cannot lock.
        let t = Duration::from_secs(5);
        let mut v = Vxi11Link::connect("127.0.0.1", 0, Some(vxi.port()), "inst0", t).await?;
        v.lock(Duration::from_secs(1)).await?;
        let e = mesh
            .client
            .call("psu-lan", "set_voltage", json!({"value": 4.0}))
            .await
            .expect_err("a mesh call while a LAN client holds the lock");
        assert_eq!(e.code(), Some(409), "{e}");
        assert!(e.to_string().contains("LAN session"), "{e}");
        let who = mesh.client.who("psu-lan").await?.context("a lease")?;
        assert!(who.holder.starts_with("LAN session"), "{who:?}");
        v.write(b"INST:NSEL 1;:VOLT 4.5\n", t).await?;
        let mut h = HislipLink::connect("127.0.0.1", hs.port(), "hislip0", t).await?;
        assert!(h.lock(Duration::from_millis(200)).await.is_err());
        v.unlock(t).await?;
        lease_free(&mesh, "psu-lan").await?;
        let st = mesh.client.call("psu-lan", "get_state", json!({})).await?;
        assert_eq!(st["channels"][0]["voltage_set"], json!(4.5), "{st}");
        mesh.client
            .call("psu-lan", "set_voltage", json!({"value": 2.0}))
            .await?;

        // A mesh lease: a HiSLIP lock request fails at once (not after
        // its timeout); free again, the HiSLIP lock is the lease, and
        // closing the session releases it.
        let lease = mesh.client.lock("psu-lan", Duration::from_secs(30)).await?;
        let started = tokio::time::Instant::now();
        assert!(h.lock(Duration::from_secs(3)).await.is_err());
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        let e = v
            .write(b"VOLT 1\n", t)
            .await
            .expect_err("VXI-11 write under a mesh lease");
        assert!(e.to_string().contains("locked"), "{e}");
        lease.unlock().await?;
        h.lock(Duration::from_secs(1)).await?;
        let e = mesh
            .client
            .call("psu-lan", "set_voltage", json!({"value": 4.0}))
            .await
            .expect_err("a mesh call while a HiSLIP client holds the lock");
        assert_eq!(e.code(), Some(409), "{e}");
        h.close(t).await;
        lease_free(&mesh, "psu-lan").await?;
        mesh.client
            .call("psu-lan", "set_voltage", json!({"value": 4.0}))
            .await?;
        v.close(t).await;
        mesh.stop().await;
        pty.close().await;
        anyhow::Ok(())
    })
    .await
    .context("gateway test took too long")?
}

/// A driver that is not message-based (mock-psu) behind the gateway: LAN
/// messages are refused with the protocol's error (VXI-11 error 17, I/O
/// error; HiSLIP an `Error` message), garbage on the raw socket is
/// dropped, and the relay keeps serving the mesh.
#[tokio::test]
async fn lan_gateway_refuses_messages_for_a_driver_that_takes_none_and_keeps_serving(
) -> anyhow::Result<()> {
    tokio::time::timeout(Duration::from_secs(60), async {
        let inst = Box::new(labmesh_drivers::mock_psu::MockPsu::new("mock-lan"));
        let mesh = Mesh::start_hosted(vec![Hosted::new("mock-lan", inst).lan(lan_on_free_ports())])
            .await?;
        let servers = mesh.relay.served()[0].lan.clone();
        let port = |p: &str| {
            servers
                .iter()
                .find(|s| s.protocol == p)
                .map(|s| s.addr.port())
        };
        let t = Duration::from_secs(5);
        let mut v = Vxi11Link::connect("127.0.0.1", 0, port("vxi11"), "inst0", t).await?;
        let e = v
            .write(b"*IDN?\n", t)
            .await
            .expect_err("mock-psu takes no SCPI");
        assert!(e.to_string().contains("I/O error"), "{e}");
        // Garbage and an oversize line on the raw socket: dropped.
        let raw = port("raw").context("raw")?;
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", raw)).await?;
        use tokio::io::AsyncWriteExt;
        s.write_all(&[0xff, 0x00, b'\n']).await?;
        s.write_all(&vec![b'A'; 200 * 1024]).await?;
        s.write_all(b"\n*IDN?\n").await?;
        drop(s);
        let mut h =
            HislipLink::connect("127.0.0.1", port("hislip").context("hislip")?, "hislip0", t)
                .await?;
        h.write(b"*IDN?\n", t).await?;
        let e = h.read(t).await.expect_err("an Error message, not data");
        assert!(e.to_string().contains("Error 0"), "{e}");
        h.close(t).await;
        let st = mesh
            .client
            .call("mock-lan", "set_voltage", json!({"value": 1.5}))
            .await?;
        assert_eq!(st["ok"], json!(true), "{st}");
        v.close(t).await;
        mesh.stop().await;
        anyhow::Ok(())
    })
    .await
    .context("took too long")?
}
