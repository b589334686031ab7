//! Cascading brokers with `advertise = "gateway"` (issue 13): the lab's relay
//! and bank bind `inproc://` endpoints in the lab's own ZeroMQ context, which
//! nothing outside that context can reach; a client at the top of a chain of
//! three brokers (the two lower ones gateways) calls, watches, streams,
//! uploads and downloads through two gateway hops, and sees the lab go
//! offline and come back with its broker.

use std::time::{Duration, Instant};

use anyhow::Context;
use labmesh_broker::{Advertise, BrokerHandle, BrokerOptions, ParentOptions};
use labmesh_client::{Client, ClientOptions, Receive};
use labmesh_drivers::mock_psu::MockPsu;
use labmesh_proto::stream::StreamSpec;
use labmesh_relay::{Hosted, RelayOptions};
use labmesh_tests::{free_port, init_logging, WAIT};
use serde_json::{json, Value};

fn gateway_parent(b: &BrokerHandle) -> ParentOptions {
    ParentOptions {
        rpc: b.rpc_endpoint().into(),
        xsub: b.xsub_endpoint().into(),
        xpub: b.xpub_endpoint().into(),
        advertise: Advertise::Gateway,
        gateway_bind: "tcp://127.0.0.1:*".into(),
    }
}

async fn broker_at(
    ctx: &zmq::Context,
    parent: Option<ParentOptions>,
    ports: Option<[u16; 3]>,
) -> anyhow::Result<BrokerHandle> {
    let mut o = BrokerOptions {
        parent,
        ttl: Duration::from_secs(2),
        ..BrokerOptions::loopback()
    };
    if let Some([a, b, c]) = ports {
        o.rpc_bind = format!("tcp://127.0.0.1:{a}");
        o.xsub_bind = format!("tcp://127.0.0.1:{b}");
        o.xpub_bind = format!("tcp://127.0.0.1:{c}");
    }
    Ok(labmesh_broker::spawn(ctx, o).await?)
}

async fn client(ctx: &zmq::Context, b: &BrokerHandle) -> anyhow::Result<Client> {
    Ok(Client::connect(
        ctx,
        ClientOptions {
            timeout: Duration::from_secs(5),
            ..ClientOptions::new(b.rpc_endpoint(), b.xpub_endpoint())
        },
    )
    .await?)
}

fn pattern(n: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

async fn until_listed(c: &Client, id: &str, listed: bool) -> anyhow::Result<String> {
    let until = Instant::now() + WAIT;
    loop {
        let l = c.list_relays().await?;
        match l.iter().find(|r| r.relay_id == id) {
            Some(r) if listed => return Ok(r.rpc_endpoint.clone()),
            None if !listed => return Ok(String::new()),
            _ => {}
        }
        anyhow::ensure!(Instant::now() < until, "{id} listed={} never", listed);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_client_at_the_top_reaches_a_private_lab_through_two_gateways() -> anyhow::Result<()> {
    init_logging();
    // The site: top and middle brokers, and the client, in one context.
    let site = zmq::Context::new();
    let top = broker_at(&site, None, None).await?;
    let mid = broker_at(&site, Some(gateway_parent(&top)), None).await?;
    // The lab: its own context; relay and bank on inproc endpoints.
    let lab = zmq::Context::new();
    let ports = [free_port()?, free_port()?, free_port()?];
    let bottom = broker_at(&lab, Some(gateway_parent(&mid)), Some(ports)).await?;
    let relay = labmesh_relay::spawn(
        &lab,
        RelayOptions {
            heartbeat: Duration::from_millis(300),
            ..RelayOptions::with_broker(bottom.rpc_endpoint(), bottom.xsub_endpoint())
        },
        vec![Hosted::new("deep", Box::new(MockPsu::new("deep")))
            .bind("inproc://lab-deep-rpc")
            .poll_every(Duration::from_millis(20))],
    )
    .await?;
    let dir = std::env::temp_dir().join(format!("labmesh-gw-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut bo = labmesh_bank::BankOptions::new("lab-bank", dir.join("bank"));
    bo.ingest_bind = "inproc://lab-bank-ingest".into();
    bo.retrieve_bind = "inproc://lab-bank-retrieve".into();
    bo.broker_rpc = Some(bottom.rpc_endpoint().into());
    bo.broker_xsub = Some(bottom.xsub_endpoint().into());
    bo.heartbeat = Duration::from_millis(300);
    let bank = labmesh_bank::Bank::start(&lab, bo).await?;

    let at_top = client(&site, &top).await?;
    let at_mid = client(&site, &mid).await?;
    let via_top = until_listed(&at_top, "deep", true).await?;
    let via_mid = until_listed(&at_mid, "deep", true).await?;
    assert_eq!(relay.endpoint("deep"), Some("inproc://lab-deep-rpc"));
    assert!(via_mid.starts_with("tcp://127.0.0.1:"), "{via_mid}");
    assert!(via_top.starts_with("tcp://127.0.0.1:"), "{via_top}");
    assert_ne!(via_top, via_mid, "the top lists the middle's gateway");

    // Calls, state and a stream through two hops.
    let psu = at_top.relay("deep").await?;
    assert_eq!(
        psu.call("set_voltage", json!({"value": 3.25})).await?["voltage"],
        json!(3.25)
    );
    let err = psu
        .call("no_such_method", Value::Null)
        .await
        .expect_err("an unknown method is an error through the gateway too");
    assert_eq!(err.code(), Some(404), "{err}");
    at_top
        .wait_state("deep", WAIT, |s| s.state["voltage"] == json!(3.25))
        .await?;
    psu.stream_add(&StreamSpec {
        name: "v".into(),
        method: "get_state".into(),
        params: Value::Null,
        hz: 200.0,
        enabled: true,
    })
    .await?;
    let sub = at_top
        .subscribe_stream("deep", "v", Receive::Queue(10_000))
        .await?;
    let mut seqs = Vec::new();
    let until = Instant::now() + WAIT;
    while seqs.len() < 50 {
        let left = until.saturating_duration_since(Instant::now());
        seqs.push(sub.recv_timeout(left).await.context("stream")?.header.seq);
    }
    for w in seqs.windows(2) {
        assert!(w[1] > w[0], "each sample once, in order: {w:?}");
    }

    // A dataset up and down through both gateways, credit mode, verified.
    let banks = at_top.list_banks().await?;
    let b = banks
        .iter()
        .find(|b| b.bank_id == "lab-bank")
        .context("lab-bank listed at the top")?;
    assert!(b
        .retrieve
        .as_deref()
        .is_some_and(|e| e.starts_with("tcp://")));
    let payload = pattern(12 * 1024 * 1024 + 17);
    let src = dir.join("src.bin");
    std::fs::write(&src, &payload)?;
    let bc = at_top.bank(Some("lab-bank")).await?;
    let up = bc
        .upload_file(
            &src,
            labmesh_transfer::UploadOptions {
                dataset_id: Some("through-gw".into()),
                relay_id: "deep".into(),
                ..Default::default()
            },
        )
        .await?;
    let dest = dir.join("dest.bin");
    let got = bc
        .download_with(
            "through-gw",
            &dest,
            labmesh_transfer::DownloadOptions {
                credit: 8,
                chunk_size: Some(256 * 1024),
                ..Default::default()
            },
        )
        .await?;
    assert_eq!(got.sha256, up.sha256);
    assert_eq!(std::fs::read(&dest)?, payload);
    // Several downloads at once share the gateway without mixing up.
    let mut jobs = Vec::new();
    for i in 0..3 {
        let bc = at_top.bank(Some("lab-bank")).await?;
        let dest = dir.join(format!("par-{i}.bin"));
        jobs.push(tokio::spawn(async move {
            bc.download("through-gw", &dest).await.map(|r| r.sha256)
        }));
    }
    for j in jobs {
        assert_eq!(j.await??, up.sha256);
    }

    // The lab's broker goes: the lab leaves the top within ttl...
    let t0 = Instant::now();
    bottom.shutdown().await;
    until_listed(&at_top, "deep", false).await?;
    // Said goodbye to (or at worst expired: ttl 2 s at the middle), then
    // the middle's mirror round (0.5 s); slack for a loaded machine.
    assert!(t0.elapsed() < Duration::from_secs(6), "{:?}", t0.elapsed());
    // ... and comes back with it (same endpoints; the relay re-registers).
    let bottom = broker_at(&lab, Some(gateway_parent(&mid)), Some(ports)).await?;
    until_listed(&at_top, "deep", true).await?;
    at_top.forget_relay("deep");
    let psu = at_top.relay("deep").await?;
    assert_eq!(
        psu.call("set_voltage", json!({"value": 1.5})).await?["voltage"],
        json!(1.5)
    );

    relay.shutdown().await;
    bank.shutdown().await;
    for b in [bottom, mid, top] {
        b.shutdown().await;
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
