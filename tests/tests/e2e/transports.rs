//! Every node on `ipc://` endpoints (one host) and on `inproc://` endpoints
//! (one process, one ZeroMQ context): broker directory and bus, relay RPC,
//! bank ingest and retrieve; a client lists, calls, watches and moves a
//! dataset both ways (issue 13).

use std::time::Duration;

use labmesh_broker::BrokerOptions;
use labmesh_client::{Client, ClientOptions};
use labmesh_drivers::mock_psu::MockPsu;
use labmesh_relay::{Hosted, RelayOptions};
use labmesh_tests::{init_logging, WAIT};
use serde_json::json;

async fn whole_mesh_on(ctx: &zmq::Context, ep: impl Fn(&str) -> String) -> anyhow::Result<()> {
    let broker = labmesh_broker::spawn(
        ctx,
        BrokerOptions {
            rpc_bind: ep("rpc"),
            xsub_bind: ep("xsub"),
            xpub_bind: ep("xpub"),
            ..BrokerOptions::loopback()
        },
    )
    .await?;
    assert_eq!(broker.rpc_endpoint(), ep("rpc"));
    let relay = labmesh_relay::spawn(
        ctx,
        RelayOptions::with_broker(broker.rpc_endpoint(), broker.xsub_endpoint()),
        vec![Hosted::new("psu", Box::new(MockPsu::new("psu")))
            .bind(&ep("psu"))
            .poll_every(Duration::from_millis(20))],
    )
    .await?;
    let dir = std::env::temp_dir().join(format!(
        "labmesh-transports-{}-{}",
        std::process::id(),
        ep("x").len()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    let mut bo = labmesh_bank::BankOptions::new("bank-t", dir.join("bank"));
    bo.ingest_bind = ep("ingest");
    bo.retrieve_bind = ep("retrieve");
    bo.broker_rpc = Some(broker.rpc_endpoint().into());
    bo.broker_xsub = Some(broker.xsub_endpoint().into());
    let bank = labmesh_bank::Bank::start(ctx, bo).await?;
    let client = Client::connect(
        ctx,
        ClientOptions {
            timeout: Duration::from_secs(5),
            ..ClientOptions::new(broker.rpc_endpoint(), broker.xpub_endpoint())
        },
    )
    .await?;
    let info = client.wait_for_relay("psu", WAIT).await?;
    assert_eq!(info.rpc_endpoint, ep("psu"));
    let psu = client.relay("psu").await?;
    assert_eq!(
        psu.call("set_voltage", json!({"value": 2.0})).await?["voltage"],
        json!(2.0)
    );
    client
        .wait_state("psu", WAIT, |s| s.state["voltage"] == json!(2.0))
        .await?;
    let payload: Vec<u8> = (0..3_000_000u32).map(|i| (i % 249) as u8).collect();
    std::fs::create_dir_all(&dir)?;
    let src = dir.join("src.bin");
    std::fs::write(&src, &payload)?;
    let bc = tokio::time::timeout(WAIT, async {
        loop {
            if let Ok(b) = client.bank(Some("bank-t")).await {
                return b;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await?;
    assert_eq!(bc.info().retrieve.as_deref(), Some(ep("retrieve").as_str()));
    bc.upload_file(
        &src,
        labmesh_transfer::UploadOptions {
            dataset_id: Some("t-1".into()),
            relay_id: "psu".into(),
            ..Default::default()
        },
    )
    .await?;
    let dest = dir.join("dest.bin");
    bc.download("t-1", &dest).await?;
    assert_eq!(std::fs::read(&dest)?, payload);
    relay.shutdown().await;
    bank.shutdown().await;
    broker.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

#[tokio::test]
async fn every_node_on_ipc_endpoints() -> anyhow::Result<()> {
    init_logging();
    let base = std::env::temp_dir().join(format!("lm-ipc-{}", std::process::id()));
    std::fs::create_dir_all(&base)?;
    let b = base.to_string_lossy().into_owned();
    let ctx = zmq::Context::new();
    whole_mesh_on(&ctx, |n| format!("ipc://{b}/{n}.sock")).await?;
    let _ = std::fs::remove_dir_all(&base);
    Ok(())
}

#[tokio::test]
async fn every_node_on_inproc_endpoints() -> anyhow::Result<()> {
    init_logging();
    let ctx = zmq::Context::new();
    let tag = std::process::id();
    whole_mesh_on(&ctx, |n| format!("inproc://lm-{tag}-{n}")).await
}
