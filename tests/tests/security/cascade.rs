//! Cascading brokers under CURVE: a child broker links up to its parent as
//! an allow-listed client, and a relay below the child is listed, called
//! and watched from a client of the parent, every hop encrypted.

use std::time::Duration;

use labmesh_broker::{Advertise, BrokerOptions, ParentOptions};
use labmesh_client::{Client, ClientOptions};
use labmesh_drivers::mock_psu::MockPsu;
use labmesh_proto::security::Role;
use labmesh_relay::{Hosted, RelayOptions};
use labmesh_tests::{init_logging, WAIT};
use labmesh_wire::curve::{self, AllowEntry, KeyPair, Security};
use serde_json::json;
use tokio::time::timeout;

#[tokio::test]
async fn a_relay_below_a_child_broker_is_called_and_watched_from_the_parent() {
    init_logging();
    let mesh = KeyPair::generate().unwrap();
    let child = KeyPair::generate().unwrap();
    let user = KeyPair::generate().unwrap();
    let stranger = KeyPair::generate().unwrap();
    let allow = vec![
        AllowEntry::new(child.public, Role::Operator, Some("lab-broker")),
        AllowEntry::new(user.public, Role::Operator, Some("user")),
    ];
    // The parent: a CURVE server only.
    let top_ctx = zmq::Context::new();
    let _top_sec = curve::install(
        &top_ctx,
        Security {
            server: Some(mesh),
            allow: allow.clone(),
            ..Security::default()
        },
    )
    .unwrap();
    let top = labmesh_broker::spawn(&top_ctx, BrokerOptions::loopback())
        .await
        .unwrap();
    // The lab machine: a server for its relay, a client (with the child
    // broker's key) toward the parent.
    let lab_ctx = zmq::Context::new();
    let mut lab_sec = Security {
        server: Some(mesh),
        allow,
        ..Security::default()
    };
    lab_sec.client = Some(child);
    lab_sec.server_public = Some(mesh.public);
    let _lab_sec = curve::install(&lab_ctx, lab_sec).unwrap();
    let lab = labmesh_broker::spawn(
        &lab_ctx,
        BrokerOptions {
            parent: Some(ParentOptions {
                rpc: top.rpc_endpoint().into(),
                xsub: top.xsub_endpoint().into(),
                xpub: top.xpub_endpoint().into(),
                advertise: Advertise::Direct,
                gateway_bind: "tcp://127.0.0.1:*".into(),
            }),
            ttl: Duration::from_secs(3),
            ..BrokerOptions::loopback()
        },
    )
    .await
    .unwrap();
    let relay = labmesh_relay::spawn(
        &lab_ctx,
        RelayOptions {
            heartbeat: Duration::from_millis(500),
            ..RelayOptions::with_broker(lab.rpc_endpoint(), lab.xsub_endpoint())
        },
        vec![Hosted::new("deep", Box::new(MockPsu::new("deep")))
            .poll_every(Duration::from_millis(20))],
    )
    .await
    .unwrap();

    let connect = |pair: KeyPair| {
        let ctx = zmq::Context::new();
        let installed = curve::install(
            &ctx,
            Security {
                client: Some(pair),
                server_public: Some(mesh.public),
                ..Security::default()
            },
        )
        .unwrap();
        let opts = ClientOptions {
            timeout: Duration::from_secs(3),
            ..ClientOptions::new(top.rpc_endpoint(), top.xpub_endpoint())
        };
        async move {
            let c = timeout(WAIT, Client::connect(&ctx, opts))
                .await
                .expect("connect is bounded");
            (ctx, installed, c)
        }
    };
    let (_c, _ci, c) = connect(user).await;
    let c = c.unwrap();
    c.wait_for_relay("deep", WAIT).await.unwrap();
    let psu = c.relay("deep").await.unwrap();
    assert_eq!(
        psu.call("set_voltage", json!({"value": 3.25}))
            .await
            .unwrap()["voltage"],
        json!(3.25)
    );
    // The relay's state crossed the child's bus and the parent's, both
    // CURVE, published upward with the child broker's key.
    c.wait_state("deep", WAIT, |s| s.state["voltage"] == json!(3.25))
        .await
        .unwrap();
    // A key on no allow-list gets nothing from the parent.
    let (_s, _si, s) = connect(stranger).await;
    assert!(s.is_err(), "an unknown key connected to the parent");

    relay.shutdown().await;
    lab.shutdown().await;
    top.shutdown().await;
}
