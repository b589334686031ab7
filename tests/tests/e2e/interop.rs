//! Interop with the real Python labmesh package (PyPI `labmesh`).

use std::time::Duration;

use labmesh_tests::{last_json, python_labmesh, run_python, Mesh, WAIT};
use labmesh_wire::auth::Password;
use serde_json::json;

#[tokio::test]
async fn python_client_lists_calls_and_watches_rust_relay() -> anyhow::Result<()> {
    let Some(py) = python_labmesh() else {
        return Ok(());
    };
    let mesh = Mesh::start(&["Inst-0"], Duration::from_millis(100)).await?;
    let out = run_python(
        &py,
        "client_flow.py",
        &[
            mesh.broker.rpc_endpoint(),
            mesh.broker.xpub_endpoint(),
            "Inst-0",
        ],
        &[],
        WAIT,
    )
    .await?;
    let v = last_json(&out)?;
    assert_eq!(
        v["relays"],
        json!([{"relay_id": "Inst-0", "rpc_endpoint": mesh.relay.endpoint("Inst-0")}])
    );
    assert_eq!(v["banks"], json!([]));
    assert_eq!(v["ping"], json!({"ok": true}));
    assert_eq!(v["set_voltage"], json!({"ok": true, "voltage": 2.5}));
    assert_eq!(v["state"]["voltage"], json!(2.5));
    assert_eq!(v["positional"], json!({"ok": true, "output": true}));
    assert_eq!(
        v["unknown"],
        json!("RPC error 404: unknown method: no_such_method")
    );
    assert_eq!(v["on_state"]["state"]["voltage"], json!(2.5));
    // The Rust side saw the Python client's call.
    assert_eq!(
        mesh.client.call("Inst-0", "get_state", json!({})).await?["output"],
        json!(true)
    );
    mesh.stop().await;
    Ok(())
}

#[tokio::test]
async fn python_relay_registers_with_rust_broker_and_is_called_from_rust() -> anyhow::Result<()> {
    let Some(py) = python_labmesh() else {
        return Ok(());
    };
    let mesh = Mesh::start(&["rust-psu"], Duration::from_millis(100)).await?;
    let (mut child, port) = labmesh_tests::spawn_python_relay(&py, &mesh.broker, "py-psu").await?;
    let info = mesh.client.wait_for_relay("py-psu", WAIT).await?;
    assert_eq!(info.rpc_endpoint, format!("tcp://127.0.0.1:{port}"));
    let psu = mesh.client.relay("py-psu").await?;
    assert_eq!(
        psu.call("set_voltage", json!({"value": 4.5})).await?,
        json!({"ok": true, "voltage": 4.5})
    );
    assert_eq!(
        psu.call("set_output", json!([true])).await?,
        json!({"ok": true, "output": true})
    );
    let st = psu.call("get_state", json!({})).await?;
    assert_eq!(
        (st["voltage"].clone(), st["output"].clone()),
        (json!(4.5), json!(true))
    );
    // Python's error shape for a failing method reaches the Rust caller.
    let e = psu
        .call("set_voltage", json!({"volts": 1}))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(500), "{e}");
    // Its state arrives through the Rust broker's bus (no seq: labmesh v0).
    let s = mesh
        .client
        .wait_state("py-psu", WAIT, |s| s.state["voltage"] == json!(4.5))
        .await?;
    assert_eq!(s.seq, None);
    let _ = child.kill().await;
    mesh.stop().await;
    Ok(())
}

#[tokio::test]
async fn network_password_accepts_the_right_one_and_refuses_others() -> anyhow::Result<()> {
    let Some(py) = python_labmesh() else {
        return Ok(());
    };
    let mesh = Mesh::start_with_password(
        &["Inst-0"],
        Duration::from_millis(100),
        Password::new("s3cret"),
    )
    .await?;
    let out = run_python(
        &py,
        "password.py",
        &[mesh.broker.rpc_endpoint(), "Inst-0", "s3cret"],
        &[],
        WAIT,
    )
    .await?;
    let v = last_json(&out)?;
    assert_eq!(
        v["hello_good"],
        json!({"type": "hello", "ok": true, "role": "client"})
    );
    let refused = json!({"type": "hello", "ok": false, "error": "invalid password"});
    assert_eq!(v["hello_bad"], refused);
    assert_eq!(v["hello_none"], refused);
    assert_eq!(v["hello_odd"], refused);
    assert_eq!(v["list_good"]["type"], json!("rpc_result"));
    assert_eq!(v["list_bad"]["type"], json!("rpc_error"));
    assert_eq!(v["list_bad"]["error"]["code"], json!(401));
    assert_eq!(
        v["call_good"]["result"],
        json!({"ok": true, "voltage": 1.5})
    );
    assert_eq!(v["call_bad"]["error"]["code"], json!(401));
    assert_eq!(v["call_number"]["error"]["code"], json!(401));
    // The refused call changed nothing.
    assert_eq!(v["state_after"]["result"]["voltage"], json!(1.5));
    let pypi = v["pypi_client"].as_str().unwrap_or_default();
    assert!(pypi.contains("401"), "{pypi}");
    mesh.stop().await;
    Ok(())
}

#[tokio::test]
async fn python_client_queries_idn_through_the_scpi_driver() -> anyhow::Result<()> {
    let Some(py) = python_labmesh() else {
        return Ok(());
    };
    let mesh = Mesh::start(&["mock"], Duration::from_millis(200)).await?;
    let t = crate::instruments::tcp_sim(labmesh_drivers::sim::Dialect::KeysightE36xx).await?;
    let registry = labmesh_drivers::DriverRegistry::with_builtins();
    let inst = crate::instruments::create(
        &registry,
        "dmm",
        "scpi",
        &format!("tcp://{}", t.addr),
        json!({}),
    )
    .await?;
    let relay = labmesh_relay::spawn(
        &mesh.ctx,
        labmesh_relay::RelayOptions::with_broker(
            mesh.broker.rpc_endpoint(),
            mesh.broker.xsub_endpoint(),
        ),
        vec![labmesh_relay::Hosted::new("dmm", inst)],
    )
    .await?;
    mesh.client.wait_for_relay("dmm", WAIT).await?;
    let out = run_python(
        &py,
        "scpi_query.py",
        &[
            mesh.broker.rpc_endpoint(),
            mesh.broker.xpub_endpoint(),
            "dmm",
        ],
        &[],
        WAIT,
    )
    .await?;
    let v = last_json(&out)?;
    assert_eq!(v["idn"], json!([true, t.sim.idn()]));
    assert_eq!(v["write"], json!(true));
    assert_eq!(v["volt"][0], json!(true));
    let volts: f64 = v["volt"][1].as_str().unwrap_or_default().trim().parse()?;
    assert!((volts - 2.5).abs() < 1e-9, "{v}");
    relay.shutdown().await;
    mesh.stop().await;
    Ok(())
}

#[tokio::test]
async fn python_databank_registers_with_rust_broker_and_serves_rust_client() -> anyhow::Result<()> {
    let Some(py) = python_labmesh() else {
        return Ok(());
    };
    let mesh = Mesh::start(&["Inst-0"], Duration::from_millis(200)).await?;
    let (pi, pr) = (labmesh_tests::free_port()?, labmesh_tests::free_port()?);
    let dir = std::env::temp_dir().join(format!("labmesh-pybank-{}-{pi}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let data_dir = dir.join("data");
    let mut child = labmesh_tests::spawn_python_until(
        &py,
        "bank_py_server.py",
        &[
            &format!("tcp://*:{pi}"),
            &format!("tcp://*:{pr}"),
            &data_dir.to_string_lossy(),
            mesh.broker.rpc_endpoint(),
            mesh.broker.xsub_endpoint(),
            "py-bank",
        ],
        "retrieve socket",
    )
    .await?;
    // Listed by the Rust broker with its advertised endpoints.
    let bank = tokio::time::timeout(WAIT, async {
        loop {
            if let Ok(b) = mesh.client.bank(Some("py-bank")).await {
                return b;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await?;
    assert_eq!(
        bank.info().retrieve.as_deref(),
        Some(format!("tcp://127.0.0.1:{pr}").as_str())
    );
    // A Rust upload to it is announced on the Rust broker's bus...
    let src = dir.join("src.bin");
    let payload: Vec<u8> = (0..1_500_000u32).map(|i| (i * 7 % 256) as u8).collect();
    std::fs::write(&src, &payload)?;
    let mut events = mesh.client.events();
    let receipt = bank
        .upload_file(
            &src,
            labmesh_transfer::UploadOptions {
                dataset_id: Some("from-rust".into()),
                relay_id: "Inst-0".into(),
                ..Default::default()
            },
        )
        .await?;
    let announced = tokio::time::timeout(WAIT, async {
        loop {
            if let Ok(labmesh_client::Event::Dataset(d)) = events.recv().await {
                if d.dataset_id == "from-rust" {
                    return d;
                }
            }
        }
    })
    .await?;
    assert_eq!(
        (announced.bank_id.as_str(), announced.sha256.as_str()),
        ("py-bank", receipt.sha256.as_str())
    );
    // `labmesh upload` sends a file-derived token and asks to resume first;
    // the v0 bank never answers that, and the upload must not wait a whole
    // upload timeout for it.
    let t0 = std::time::Instant::now();
    let tokened = bank
        .upload_file(
            &src,
            labmesh_transfer::UploadOptions {
                dataset_id: Some("from-rust-2".into()),
                relay_id: "Inst-0".into(),
                token: labmesh_transfer::file_token(&src, "from-rust-2", "py-bank"),
                ..Default::default()
            },
        )
        .await?;
    assert_eq!(tokened.sha256, receipt.sha256);
    assert!(
        t0.elapsed() < Duration::from_secs(6),
        "a tokened upload to a v0 bank took {:?}",
        t0.elapsed()
    );
    // ...and downloads back through the client (legacy `get`, detected).
    let dest = dir.join("dest.bin");
    let got = bank.download("from-rust", &dest).await?;
    assert_eq!(got.sha256, receipt.sha256);
    assert_eq!(std::fs::read(&dest)?, payload);
    let _ = child.kill().await;
    mesh.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// labmesh v0 relays never heartbeat: the Rust broker keeps them listed by
/// probing them, and expires them once they stop answering.
#[tokio::test]
async fn python_relay_without_heartbeats_stays_listed_by_probes_until_it_dies() -> anyhow::Result<()>
{
    let Some(py) = python_labmesh() else {
        return Ok(());
    };
    labmesh_tests::init_logging();
    let ctx = zmq::Context::new();
    let ttl = Duration::from_millis(1500);
    let broker = labmesh_broker::spawn(
        &ctx,
        labmesh_broker::BrokerOptions {
            ttl,
            ..labmesh_broker::BrokerOptions::loopback()
        },
    )
    .await?;
    let client = labmesh_client::Client::connect(
        &ctx,
        labmesh_client::ClientOptions::new(broker.rpc_endpoint(), broker.xpub_endpoint()),
    )
    .await?;
    let (mut child, _) = labmesh_tests::spawn_python_relay(&py, &broker, "py-quiet").await?;
    client.wait_for_relay("py-quiet", WAIT).await?;
    // Three TTLs pass with no heartbeat from it: probes keep it listed.
    tokio::time::sleep(ttl * 3).await;
    assert!(
        client
            .list_relays()
            .await?
            .iter()
            .any(|r| r.relay_id == "py-quiet"),
        "expired although alive"
    );
    let mut events = client.events();
    child.kill().await?;
    let offline = tokio::time::timeout(ttl + Duration::from_secs(1) + ttl / 2, async {
        loop {
            if let Ok(labmesh_client::Event::Presence(p)) = events.recv().await {
                if p.id == "py-quiet" && p.status == "offline" {
                    return p;
                }
            }
        }
    })
    .await?;
    assert_eq!(offline.reason, "ttl expired");
    broker.shutdown().await;
    Ok(())
}
