//! Cascading brokers (issue 13): a chain of three brokers on loopback, a
//! relay at the bottom reached from a client at the top; subscription-driven
//! forwarding measured on the link itself; no loops; id clashes; a Python
//! labmesh client at the top.

use std::time::{Duration, Instant};

use anyhow::Context;
use labmesh_broker::{Advertise, BrokerHandle, BrokerOptions, ParentOptions};
use labmesh_client::{Client, ClientOptions, Receive};
use labmesh_drivers::mock_psu::MockPsu;
use labmesh_proto::stream::StreamSpec;
use labmesh_relay::{Hosted, RelayHandle, RelayOptions};
use labmesh_tests::{free_port, init_logging, last_json, python_labmesh, run_python, WAIT};
use serde_json::{json, Value};

fn parent_of(b: &BrokerHandle) -> ParentOptions {
    ParentOptions {
        rpc: b.rpc_endpoint().into(),
        xsub: b.xsub_endpoint().into(),
        xpub: b.xpub_endpoint().into(),
        advertise: Advertise::Direct,
        gateway_bind: "tcp://127.0.0.1:*".into(),
    }
}

async fn broker(ctx: &zmq::Context, parent: Option<ParentOptions>) -> anyhow::Result<BrokerHandle> {
    Ok(labmesh_broker::spawn(
        ctx,
        BrokerOptions {
            parent,
            ttl: Duration::from_secs(3),
            ..BrokerOptions::loopback()
        },
    )
    .await?)
}

async fn relay(ctx: &zmq::Context, b: &BrokerHandle, id: &str) -> anyhow::Result<RelayHandle> {
    Ok(labmesh_relay::spawn(
        ctx,
        RelayOptions {
            heartbeat: Duration::from_millis(500),
            ..RelayOptions::with_broker(b.rpc_endpoint(), b.xsub_endpoint())
        },
        vec![Hosted::new(id, Box::new(MockPsu::new(id))).poll_every(Duration::from_millis(20))],
    )
    .await?)
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

#[tokio::test]
async fn a_client_at_the_top_of_three_brokers_lists_calls_and_watches_the_bottom(
) -> anyhow::Result<()> {
    init_logging();
    let ctx = zmq::Context::new();
    let top = broker(&ctx, None).await?;
    let mid = broker(&ctx, Some(parent_of(&top))).await?;
    let bottom = broker(&ctx, Some(parent_of(&mid))).await?;
    let side = broker(&ctx, Some(parent_of(&top))).await?;
    let r = relay(&ctx, &bottom, "deep").await?;
    let s = relay(&ctx, &side, "sibling").await?;

    let at_top = client(&ctx, &top).await?;
    let info = at_top.wait_for_relay("deep", WAIT).await?;
    assert_eq!(
        Some(info.rpc_endpoint.as_str()),
        r.endpoint("deep"),
        "listed as is (direct)"
    );
    let psu = at_top.relay("deep").await?;
    assert_eq!(
        psu.call("set_voltage", json!({"value": 4.5})).await?["voltage"],
        json!(4.5)
    );
    let st = at_top
        .wait_state("deep", WAIT, |s| s.state["voltage"] == json!(4.5))
        .await?;
    assert_eq!(st.relay_id, "deep");

    // A stream two levels down, each sample exactly once.
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
    // A subscriber at the bottom too: its own relay's messages must not
    // come back down from the parent a second time.
    let at_bottom = client(&ctx, &bottom).await?;
    let low = at_bottom
        .subscribe_stream("deep", "v", Receive::Queue(10_000))
        .await?;
    let low_state = at_bottom.subscribe_state("deep", Receive::Queue(10_000))?;
    let mut seqs = Vec::new();
    let until = Instant::now() + WAIT;
    while seqs.len() < 100 {
        let left = until.saturating_duration_since(Instant::now());
        seqs.push(
            sub.recv_timeout(left)
                .await
                .context("top stream")?
                .header
                .seq,
        );
    }
    for w in seqs.windows(2) {
        assert!(w[1] > w[0], "each sample once, in order: {w:?}");
    }
    let mut low_seqs = Vec::new();
    while let Ok(x) = low.try_recv() {
        low_seqs.push(x.header.seq);
    }
    assert!(low_seqs.len() > 50, "{}", low_seqs.len());
    for w in low_seqs.windows(2) {
        assert!(w[1] > w[0], "no echo at the bottom: {w:?}");
    }
    let mut state_seqs = Vec::new();
    while let Ok(x) = low_state.try_recv() {
        state_seqs.push(x.seq.unwrap_or(0));
    }
    for w in state_seqs.windows(2) {
        assert!(w[1] > w[0], "no state echo at the bottom: {w:?}");
    }
    assert_eq!(sub.stats().gaps, 0, "{:?}", sub.stats());

    // A sibling's relay reaches the bottom through the top (and down).
    at_bottom.wait_for_relay("deep", WAIT).await?;
    let sib = at_bottom.subscribe_state("sibling", Receive::Queue(100))?;
    let got = sib
        .recv_timeout(WAIT)
        .await
        .context("sibling state at the bottom")?;
    assert_eq!(got.relay_id, "sibling");
    // (The bottom broker's directory lists only its own relays.)
    let listed: Vec<String> = at_bottom
        .list_relays()
        .await?
        .into_iter()
        .map(|r| r.relay_id)
        .collect();
    assert_eq!(listed, ["deep"]);

    // The middle broker stops: its relays leave the top's directory.
    r.shutdown().await;
    let until = Instant::now() + WAIT;
    while at_top
        .list_relays()
        .await?
        .iter()
        .any(|r| r.relay_id == "deep")
    {
        anyhow::ensure!(Instant::now() < until, "deep still listed at the top");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    s.shutdown().await;
    for b in [bottom, side, mid, top] {
        b.shutdown().await;
    }
    Ok(())
}

#[tokio::test]
async fn only_subscribed_topics_cross_the_link() -> anyhow::Result<()> {
    init_logging();
    let ctx = zmq::Context::new();
    let top = broker(&ctx, None).await?;
    // The child's uplink goes to an XSUB of ours: we see exactly what
    // crosses the link, and choose what the "parent" subscribes to.
    let link = ctx.socket(zmq::XSUB)?;
    let port = free_port()?;
    link.bind(&format!("tcp://127.0.0.1:{port}"))?;
    link.set_rcvtimeo(200)?;
    let child = broker(
        &ctx,
        Some(ParentOptions {
            rpc: top.rpc_endpoint().into(),
            xsub: format!("tcp://127.0.0.1:{port}"),
            xpub: top.xpub_endpoint().into(),
            advertise: Advertise::Direct,
            gateway_bind: "tcp://127.0.0.1:*".into(),
        }),
    )
    .await?;
    let r = relay(&ctx, &child, "quiet").await?;
    let c = client(&ctx, &child).await?;
    c.wait_for_relay("quiet", WAIT).await?;
    c.relay("quiet")
        .await?
        .stream_add(&StreamSpec {
            name: "fast".into(),
            method: "get_state".into(),
            params: Value::Null,
            hz: 500.0,
            enabled: true,
        })
        .await?;
    // A subscriber at the child: the stream and state flow there...
    let local = c.subscribe_stream("quiet", "fast", Receive::Cache).await?;
    local.recv_timeout(WAIT).await?;
    // ... but nothing crosses the link while the parent subscribes to nothing.
    let link = tokio::task::spawn_blocking(move || -> anyhow::Result<(zmq::Socket, usize)> {
        let mut n = 0;
        let until = Instant::now() + Duration::from_millis(700);
        while Instant::now() < until {
            if link.recv_multipart(0).is_ok() {
                n += 1;
            }
        }
        Ok((link, n))
    })
    .await??;
    let (link, crossed) = link;
    assert_eq!(crossed, 0, "messages crossed without a subscriber upstream");
    // The parent subscribes to one relay's state: only that crosses.
    let link = tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<Vec<u8>>> {
        link.send(b"\x01state.quiet".as_slice(), 0)?;
        let mut topics = Vec::new();
        let until = Instant::now() + Duration::from_secs(5);
        while topics.len() < 10 && Instant::now() < until {
            if let Ok(f) = link.recv_multipart(0) {
                topics.push(f[0].clone());
            }
        }
        Ok(topics)
    })
    .await??;
    assert!(link.len() >= 10, "{} crossed", link.len());
    assert!(
        link.iter().all(|t| t == b"state.quiet"),
        "{:?}",
        link.first()
    );
    r.shutdown().await;
    child.shutdown().await;
    top.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn an_id_registered_elsewhere_in_the_tree_is_refused_naming_both_owners() -> anyhow::Result<()>
{
    init_logging();
    let ctx = zmq::Context::new();
    let top = broker(&ctx, None).await?;
    let child_a = broker(&ctx, Some(parent_of(&top))).await?;
    let child_b = broker(&ctx, Some(parent_of(&top))).await?;
    let first = relay(&ctx, &child_a, "dup").await?;
    let at_top = client(&ctx, &top).await?;
    let listed = at_top.wait_for_relay("dup", WAIT).await?;
    assert_eq!(Some(listed.rpc_endpoint.as_str()), first.endpoint("dup"));
    let second = relay(&ctx, &child_b, "dup").await?;
    let at_b = client(&ctx, &child_b).await?;
    at_b.wait_for_relay("dup", WAIT).await?;
    // Child b tries (and keeps trying) to register its "dup" above: the
    // top keeps the first while it lives.
    for _ in 0..10 {
        let l = at_top.list_relays().await?;
        let d = l
            .iter()
            .find(|r| r.relay_id == "dup")
            .context("dup listed")?;
        assert_eq!(Some(d.rpc_endpoint.as_str()), first.endpoint("dup"));
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    // The hello child b sends, byte for byte what its mirror sends: 409
    // naming both relays and both child brokers.
    let hello = labmesh_wire::DealerConn::connect(&ctx, top.rpc_endpoint(), Default::default())?;
    let reply = hello
        .request(
            labmesh_proto::encode(&labmesh_proto::Request::Hello(labmesh_proto::mesh::Hello {
                role: Some(labmesh_proto::mesh::Role::Relay),
                relay_id: Some("dup".into()),
                rpc_endpoint: second.endpoint("dup").map(str::to_string),
                via: Some(child_b.rpc_endpoint().into()),
                ..Default::default()
            })),
            None,
            WAIT,
        )
        .await?;
    let text = String::from_utf8_lossy(&labmesh_proto::encode(&reply)).into_owned();
    let want = format!(
        "relay_id 'dup' is already registered by a live relay at {} (via broker {}); refused for the relay at {} (via broker {})",
        first.endpoint("dup").unwrap_or_default(),
        child_a.rpc_endpoint(),
        second.endpoint("dup").unwrap_or_default(),
        child_b.rpc_endpoint()
    );
    assert!(text.contains("409") && text.contains(&want), "{text}");
    // The first goes: the second takes the id at the top.
    first.shutdown().await;
    let until = Instant::now() + WAIT;
    loop {
        let l = at_top.list_relays().await?;
        if l.iter()
            .any(|r| r.relay_id == "dup" && Some(r.rpc_endpoint.as_str()) == second.endpoint("dup"))
        {
            break;
        }
        anyhow::ensure!(Instant::now() < until, "the second dup never took over");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    second.shutdown().await;
    for b in [child_a, child_b, top] {
        b.shutdown().await;
    }
    Ok(())
}

#[tokio::test]
async fn python_labmesh_at_the_top_drives_a_relay_two_levels_down() -> anyhow::Result<()> {
    let Some(py) = python_labmesh() else {
        return Ok(());
    };
    init_logging();
    // Listed as is, and behind two gateways (`advertise = "gateway"`).
    for gateway in [false, true] {
        let ctx = zmq::Context::new();
        let up = |b: &BrokerHandle| ParentOptions {
            advertise: if gateway {
                Advertise::Gateway
            } else {
                Advertise::Direct
            },
            ..parent_of(b)
        };
        let top = broker(&ctx, None).await?;
        let mid = broker(&ctx, Some(up(&top))).await?;
        let bottom = broker(&ctx, Some(up(&mid))).await?;
        let r = relay(&ctx, &bottom, "Inst-0").await?;
        let listed = client(&ctx, &top)
            .await?
            .wait_for_relay("Inst-0", WAIT)
            .await?;
        assert_eq!(
            Some(listed.rpc_endpoint.as_str()) != r.endpoint("Inst-0"),
            gateway,
            "{listed:?}"
        );
        let out = run_python(
            &py,
            "client_flow.py",
            &[top.rpc_endpoint(), top.xpub_endpoint(), "Inst-0"],
            &[],
            WAIT,
        )
        .await?;
        let v = last_json(&out)?;
        assert_eq!(v["set_voltage"], json!({"ok": true, "voltage": 2.5}));
        assert_eq!(v["on_state"]["state"]["voltage"], json!(2.5), "{v}");
        r.shutdown().await;
        for b in [bottom, mid, top] {
            b.shutdown().await;
        }
    }
    Ok(())
}
