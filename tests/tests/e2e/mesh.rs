//! Rust client <-> Rust broker + relay: the seed's basic flow and more.

use std::time::Duration;

use labmesh_client::{ClientError, Event};
use labmesh_drivers::{Args, Description, DriverError, Instrument, MethodSpec};
use labmesh_relay::{Hosted, RelayOptions};
use labmesh_tests::{Mesh, WAIT};
use serde_json::{json, Value};
use tokio::time::timeout;

const FAST: Duration = Duration::from_millis(50);

#[tokio::test]
async fn seed_flow_list_call_state() -> anyhow::Result<()> {
    let mesh = Mesh::start(&["Inst-0"], FAST).await?;
    let relays = mesh.client.list_relays().await?;
    assert_eq!(relays.len(), 1);
    assert_eq!(relays[0].relay_id, "Inst-0");
    assert_eq!(
        relays[0].rpc_endpoint,
        mesh.relay.endpoint("Inst-0").unwrap_or_default()
    );
    assert!(mesh.client.list_banks().await?.is_empty());
    mesh.client.ping().await?;

    let psu = mesh.client.relay("Inst-0").await?;
    assert_eq!(
        psu.call("set_voltage", json!({"value": 2.5})).await?,
        json!({"ok": true, "voltage": 2.5})
    );
    let st = psu.call("get_state", json!({})).await?;
    assert_eq!(st["voltage"], json!(2.5));
    assert_eq!(st["relay_id"], json!("Inst-0"));

    let s = mesh
        .client
        .wait_state("Inst-0", WAIT, |s| s.state["voltage"] == json!(2.5))
        .await?;
    let i = s.state["current"].as_f64().unwrap_or(-1.0);
    assert!(
        (2.25..=2.75).contains(&i),
        "current {i} should follow 2.5 V within 10 %"
    );
    assert!(s.seq.is_some() && s.ts.is_some());
    // Cache mode holds the newest state.
    let cached = mesh.client.latest_state("Inst-0").expect("cached state");
    assert!(cached.seq >= s.seq);
    mesh.stop().await;
    Ok(())
}

#[tokio::test]
async fn params_positional_scalar_falsy_and_errors() -> anyhow::Result<()> {
    let mesh = Mesh::start(&["psu"], FAST).await?;
    let psu = mesh.client.relay("psu").await?;
    assert_eq!(
        psu.call("set_voltage", json!([3.3])).await?["voltage"],
        json!(3.3)
    );
    assert_eq!(
        psu.call("set_voltage", json!(1.25)).await?["voltage"],
        json!(1.25)
    );
    // Falsy values are passed as given.
    assert_eq!(
        psu.call("set_voltage", json!({"value": 0})).await?["voltage"],
        json!(0.0)
    );
    assert_eq!(
        psu.call("set_output", json!({"on": false})).await?["output"],
        json!(false)
    );
    assert_eq!(
        psu.call("get_state", Value::Null).await?["voltage"],
        json!(0.0)
    );

    let err = psu.call("nope", json!({})).await.unwrap_err();
    match &err {
        ClientError::Remote { code, message, .. } => {
            assert_eq!(*code, 404);
            assert_eq!(message, "unknown method: nope");
        }
        other => panic!("expected a remote 404, got {other:?}"),
    }
    for (params, needle) in [
        (json!({}), "'value'"),
        (json!({"value": "high"}), "'value'"),
        (json!({"value": 1, "volts": 2}), "'volts'"),
        (json!([1, 2]), "params"),
    ] {
        let e = psu.call("set_voltage", params.clone()).await.unwrap_err();
        assert_eq!(e.code(), Some(400), "{params}: {e}");
        assert!(e.to_string().contains(needle), "{params}: {e}");
    }
    // Reflection is not a way in: only declared methods are callable.
    assert_eq!(
        psu.call("__init__", json!({})).await.unwrap_err().code(),
        Some(404)
    );
    let d = psu.describe().await?;
    let names: Vec<&str> = d["methods"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["name"].as_str())
        .collect();
    assert_eq!(names, ["set_voltage", "set_output", "get_state", "poll"]);
    mesh.stop().await;
    Ok(())
}

#[tokio::test]
async fn concurrent_calls_on_one_connection_get_their_own_replies() -> anyhow::Result<()> {
    let mesh = Mesh::start(&["psu"], Duration::from_secs(1)).await?;
    let psu = mesh.client.relay("psu").await?;
    let calls = (0..200).map(|i| {
        let psu = psu.clone();
        async move {
            let v = f64::from(i) / 10.0;
            let r = psu.call("set_voltage", json!({"value": v})).await?;
            anyhow::ensure!(r["voltage"] == json!(v), "call {i} got {r}");
            Ok(())
        }
    });
    let results = timeout(WAIT, futures::future::join_all(calls)).await?;
    for r in results {
        r?;
    }
    mesh.stop().await;
    Ok(())
}

/// An instrument whose `hang` never returns (until the deadline) and whose
/// `echo` answers at once.
struct Sticky;

#[async_trait::async_trait]
impl Instrument for Sticky {
    fn describe(&self) -> Description {
        Description {
            state_fields: Vec::new(),
            driver: "sticky".into(),
            identity: None,
            methods: vec![MethodSpec::new("hang", ""), MethodSpec::new("echo", "")],
        }
    }
    async fn call(&mut self, method: &str, _args: Args) -> Result<Value, DriverError> {
        match method {
            "hang" => {
                std::future::pending::<()>().await;
                Ok(Value::Null)
            }
            _ => Ok(json!("echo")),
        }
    }
    async fn poll(&mut self) -> Result<Value, DriverError> {
        Ok(json!({"alive": true}))
    }
}

#[tokio::test]
async fn hung_instrument_times_out_and_blocks_nothing_else() -> anyhow::Result<()> {
    let mesh = Mesh::start(&["psu"], FAST).await?;
    let sticky = labmesh_relay::spawn(
        &mesh.ctx,
        RelayOptions::with_broker(mesh.broker.rpc_endpoint(), mesh.broker.xsub_endpoint()),
        vec![Hosted::new("sticky", Box::new(Sticky))
            .poll_every(FAST)
            .call_timeout(Duration::from_millis(600))],
    )
    .await?;
    mesh.client.wait_for_relay("sticky", WAIT).await?;
    let s = mesh.client.relay("sticky").await?;
    let mut events = mesh.client.events();
    let hang = tokio::spawn({
        let s = s.clone();
        async move { s.call("hang", Value::Null).await }
    });
    // While `hang` runs: the other instrument answers, this relay's RPC
    // socket answers lm.ping, and its state keeps coming (marked stale).
    let psu = mesh.client.relay("psu").await?;
    assert_eq!(
        psu.call("set_voltage", json!({"value": 1.0})).await?["voltage"],
        json!(1.0)
    );
    assert_eq!(s.call("lm.ping", Value::Null).await?["ok"], json!(true));
    let stale = timeout(WAIT, async {
        loop {
            if let Ok(Event::State(st)) = events.recv().await {
                if st.relay_id == "sticky" && st.stale {
                    return st;
                }
            }
        }
    })
    .await?;
    assert_eq!(stale.state, json!({"alive": true}));
    let err = timeout(WAIT, hang).await??.unwrap_err();
    assert_eq!(err.code(), Some(408), "{err}");
    assert!(err.to_string().contains("sticky.hang"), "{err}");
    // And the instrument serves the next call.
    assert_eq!(s.call("echo", Value::Null).await?, json!("echo"));
    sticky.shutdown().await;
    mesh.stop().await;
    Ok(())
}

#[tokio::test]
async fn wildcard_bind_advertises_a_reachable_endpoint() -> anyhow::Result<()> {
    let mesh = Mesh::start(&["a"], FAST).await?;
    let relay = labmesh_relay::spawn(
        &mesh.ctx,
        RelayOptions::with_broker(mesh.broker.rpc_endpoint(), mesh.broker.xsub_endpoint()),
        vec![
            Hosted::new("b", Box::new(labmesh_drivers::mock_psu::MockPsu::new("b")))
                .bind("tcp://*:*"),
        ],
    )
    .await?;
    let info = mesh.client.wait_for_relay("b", WAIT).await?;
    assert!(
        info.rpc_endpoint.starts_with("tcp://127.0.0.1:"),
        "{}",
        info.rpc_endpoint
    );
    assert!(!info.rpc_endpoint.ends_with(":*") && !info.rpc_endpoint.ends_with(":0"));
    assert_eq!(
        mesh.client.call("b", "get_state", json!({})).await?["relay_id"],
        json!("b")
    );
    relay.shutdown().await;
    mesh.stop().await;
    Ok(())
}

#[tokio::test]
async fn relay_started_before_the_broker_registers_when_it_appears() -> anyhow::Result<()> {
    labmesh_tests::init_logging();
    let ctx = zmq::Context::new();
    let rpc_port = labmesh_tests::free_port()?;
    let rpc = format!("tcp://127.0.0.1:{rpc_port}");
    let relay = labmesh_relay::spawn(
        &ctx,
        RelayOptions {
            broker_xsub: None,
            ..RelayOptions::with_broker(&rpc, "")
        },
        vec![Hosted::new(
            "early",
            Box::new(labmesh_drivers::mock_psu::MockPsu::new("early")),
        )],
    )
    .await?;
    // Let the first hello attempts go unanswered, then start the broker.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let broker = labmesh_broker::spawn(
        &ctx,
        labmesh_broker::BrokerOptions {
            rpc_bind: rpc.clone(),
            ..labmesh_broker::BrokerOptions::loopback()
        },
    )
    .await?;
    let client = labmesh_client::Client::connect(
        &ctx,
        labmesh_client::ClientOptions::new(broker.rpc_endpoint(), broker.xpub_endpoint()),
    )
    .await?;
    client.wait_for_relay("early", WAIT).await?;
    relay.shutdown().await;
    broker.shutdown().await;
    Ok(())
}
