//! Instruments through the mesh: every simulated PSU family over SCPI/TCP
//! and over a serial pseudo-terminal, a declarative (TOML) driver, and an
//! instrument that stops answering.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use labmesh_drivers::sim::{self, Dialect, PtySim, SimConfig, SimPsu};
use labmesh_drivers::{BoxInstrument, DriverRegistry, InstrumentConfig};
use labmesh_relay::{Hosted, RelayOptions};
use labmesh_tests::{Mesh, WAIT};
use serde_json::{json, Map, Value};
use tokio::time::timeout;

/// A simulator served over TCP until dropped.
pub struct TcpSim {
    pub sim: SimPsu,
    pub addr: SocketAddr,
    _stop: tokio::sync::oneshot::Sender<()>,
}

pub async fn tcp_sim(dialect: Dialect) -> anyhow::Result<TcpSim> {
    let sim = SimPsu::new(SimConfig::new(dialect))?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let s = sim.clone();
    tokio::spawn(async move {
        let _ = s
            .serve_tcp(listener, async {
                let _ = stopped.await;
            })
            .await;
    });
    Ok(TcpSim {
        sim,
        addr,
        _stop: stop,
    })
}

pub async fn create(
    registry: &DriverRegistry,
    id: &str,
    driver: &str,
    resource: &str,
    options: Value,
) -> anyhow::Result<BoxInstrument> {
    let options = match options {
        Value::Object(m) => m,
        _ => Map::new(),
    };
    Ok(registry
        .create(InstrumentConfig {
            id: id.into(),
            driver: driver.into(),
            resource: Some(resource.into()),
            options,
        })
        .await?)
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-6
}

#[tokio::test]
async fn relay_drives_every_psu_family_over_tcp_and_serial() -> anyhow::Result<()> {
    let mesh = Mesh::start(&["mock"], Duration::from_millis(200)).await?;
    let registry = DriverRegistry::with_builtins();
    let mut tcp_sims = Vec::new();
    let mut ptys: Vec<PtySim> = Vec::new();
    let mut hosted = Vec::new();
    for (dialect, driver) in [
        (Dialect::KeysightE36xx, "keysight-e36xx"),
        (Dialect::RigolDp8xx, "rigol-dp8xx"),
        (Dialect::SiglentSpd3303x, "siglent-spd3303x"),
    ] {
        let t = tcp_sim(dialect).await?;
        let id = format!("{driver}-tcp");
        let resource = format!("TCPIP0::{}::{}::SOCKET", t.addr.ip(), t.addr.port());
        hosted.push(Hosted::new(
            &id,
            create(&registry, &id, driver, &resource, json!({})).await?,
        ));
        tcp_sims.push(t);

        let (_sim, pty) = sim::serve_pty(SimConfig::new(dialect))?;
        let id = format!("{driver}-serial");
        let resource = format!("ASRL{}::INSTR", pty.path().display());
        hosted.push(Hosted::new(
            &id,
            create(&registry, &id, driver, &resource, json!({})).await?,
        ));
        ptys.push(pty);
    }
    let ids: Vec<String> = hosted.iter().map(|h| h.relay_id.clone()).collect();
    let relay = labmesh_relay::spawn(
        &mesh.ctx,
        RelayOptions::with_broker(mesh.broker.rpc_endpoint(), mesh.broker.xsub_endpoint()),
        hosted,
    )
    .await?;
    for id in &ids {
        mesh.client.wait_for_relay(id, WAIT).await?;
    }
    // All six at once: one relay process, instruments in parallel.
    let runs = ids.iter().map(|id| {
        let client = mesh.client.clone();
        async move {
            let c = client.relay(id).await?;
            let idn = c.call("identify", Value::Null).await?;
            anyhow::ensure!(
                idn.as_str().is_some_and(|s| s.contains(',')),
                "{id}: idn {idn}"
            );
            c.call("set_voltage", json!({"value": 3.0})).await?;
            c.call("set_current", json!({"value": 1.0, "channel": 1}))
                .await?;
            c.call("set_output", json!({"on": true})).await?;
            let v = c.call("measure_voltage", json!({})).await?;
            let i = c.call("measure_current", json!([1])).await?;
            anyhow::ensure!(
                v.as_f64().is_some_and(|v| close(v, 3.0)),
                "{id}: measured {v} V"
            );
            // 3 V across the simulator's 10 ohm load.
            anyhow::ensure!(
                i.as_f64().is_some_and(|i| close(i, 0.3)),
                "{id}: measured {i} A"
            );
            // Out of the model's range: refused by the driver with 400.
            let e = c
                .call("set_voltage", json!({"value": 1000}))
                .await
                .unwrap_err();
            anyhow::ensure!(e.code() == Some(400), "{id}: {e}");
            // State on the bus follows.
            client
                .wait_state(id, WAIT, |s| {
                    s.state["voltage"].as_f64().is_some_and(|v| close(v, 3.0))
                })
                .await?;
            Ok(())
        }
    });
    for r in timeout(WAIT * 2, futures::future::join_all(runs)).await? {
        r?;
    }
    relay.shutdown().await;
    for p in ptys {
        p.close().await;
    }
    drop(tcp_sims);
    mesh.stop().await;
    Ok(())
}

#[tokio::test]
async fn instrument_that_stops_answering_gives_408_and_nothing_else_stalls() -> anyhow::Result<()> {
    let mesh = Mesh::start(&["mock"], Duration::from_millis(100)).await?;
    let t = tcp_sim(Dialect::KeysightE36xx).await?;
    let registry = DriverRegistry::with_builtins();
    let resource = format!("tcp://{}", t.addr);
    let inst = create(
        &registry,
        "psu",
        "keysight-e36xx",
        &resource,
        json!({"timeout_ms": 300}),
    )
    .await?;
    let relay = labmesh_relay::spawn(
        &mesh.ctx,
        RelayOptions::with_broker(mesh.broker.rpc_endpoint(), mesh.broker.xsub_endpoint()),
        vec![Hosted::new("psu", inst).poll_every(Duration::from_millis(100))],
    )
    .await?;
    mesh.client.wait_for_relay("psu", WAIT).await?;
    let psu = mesh.client.relay("psu").await?;
    psu.call("set_voltage", json!({"value": 1.5})).await?;

    t.sim.set_muted(true);
    let started = std::time::Instant::now();
    let e = psu.call("measure_voltage", json!({})).await.unwrap_err();
    assert_eq!(e.code(), Some(408), "{e}");
    assert!(e.to_string().contains("psu.measure_voltage"), "{e}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    // The other instrument and the relay's RPC socket carry on.
    assert_eq!(
        mesh.client
            .call("mock", "set_voltage", json!({"value": 2.0}))
            .await?["voltage"],
        json!(2.0)
    );
    assert_eq!(psu.call("lm.ping", Value::Null).await?["ok"], json!(true));

    t.sim.set_muted(false);
    // No stale reply: the next answer is this query's.
    let v = psu.call("measure_voltage", json!({})).await?;
    assert!(
        v.as_f64().is_some_and(|v| v.abs() < 1e-9),
        "output off: 0 V, got {v}"
    );
    psu.call("set_output", json!({"on": true})).await?;
    let v = psu.call("measure_voltage", json!({})).await?;
    assert!(v.as_f64().is_some_and(|v| close(v, 1.5)), "got {v}");
    relay.shutdown().await;
    mesh.stop().await;
    Ok(())
}

#[tokio::test]
async fn declarative_toml_driver_through_the_mesh() -> anyhow::Result<()> {
    let mesh = Mesh::start(&["mock"], Duration::from_millis(100)).await?;
    let t = tcp_sim(Dialect::KeysightE36xx).await?;
    let mut registry = DriverRegistry::with_builtins();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../instruments");
    let names = registry.load_dir(&dir)?;
    assert!(names.iter().any(|n| n == "labmesh-sim-psu"), "{names:?}");
    let inst = create(
        &registry,
        "toml-psu",
        "labmesh-sim-psu",
        &format!("tcp://{}", t.addr),
        json!({}),
    )
    .await?;
    let relay = labmesh_relay::spawn(
        &mesh.ctx,
        RelayOptions::with_broker(mesh.broker.rpc_endpoint(), mesh.broker.xsub_endpoint()),
        vec![Hosted::new("toml-psu", inst).poll_every(Duration::from_millis(100))],
    )
    .await?;
    mesh.client.wait_for_relay("toml-psu", WAIT).await?;
    let c = mesh.client.relay("toml-psu").await?;
    let described = c.describe().await?;
    assert_eq!(described["driver"], json!("labmesh-sim-psu"));
    c.call("set_voltage", json!({"value": 4.0, "channel": 2}))
        .await?;
    c.call("set_output", json!({"on": true, "channel": 2}))
        .await?;
    let v = c.call("measure_voltage", json!({"channel": 2})).await?;
    assert!(v.as_f64().is_some_and(|v| close(v, 4.0)), "{v}");
    // The TOML range check, then the instrument's own (-222 via SYST:ERR?).
    assert_eq!(
        c.call("set_voltage", json!({"value": 40}))
            .await
            .unwrap_err()
            .code(),
        Some(400)
    );
    let e = c
        .call("set_voltage", json!({"value": 20.0, "channel": 1}))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(500), "{e}");
    assert!(e.to_string().contains("-222"), "{e}");
    // Its poll list reaches the bus.
    let s = mesh
        .client
        .wait_state("toml-psu", WAIT, |s| {
            s.state["voltages"][1]
                .as_f64()
                .is_some_and(|v| close(v, 4.0))
        })
        .await?;
    assert!(s.state["currents"].is_array(), "{}", s.state);
    relay.shutdown().await;
    mesh.stop().await;
    Ok(())
}
