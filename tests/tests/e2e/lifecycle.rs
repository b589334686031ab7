//! Node and client lifecycles: nothing outlives its owner, no loop spins.

use std::time::{Duration, Instant};

use labmesh_client::{Client, ClientOptions};
use labmesh_tests::{Mesh, WAIT};
use serde_json::json;

fn fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

fn status_field(name: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Wait (bounded) until `f` holds; libzmq closes sockets on its reaper
/// thread, a moment after the owner drops them.
async fn settle(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    f()
}

/// Regression (issue 9, defect 2): a dropped `Client` leaked its listener
/// task, its SUB socket and every cached relay's DEALER task, so a process
/// that made clients in a loop ran out of descriptors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_clients_release_tasks_sockets_and_memory() -> anyhow::Result<()> {
    let mesh = Mesh::start(&["psu"], Duration::from_millis(200)).await?;
    let opts = ClientOptions {
        timeout: Duration::from_secs(5),
        ..ClientOptions::new(mesh.broker.rpc_endpoint(), mesh.broker.xpub_endpoint())
    };
    let one = |close: bool| {
        let ctx = mesh.ctx.clone();
        let opts = opts.clone();
        async move {
            let c = Client::connect(&ctx, opts).await?;
            // Caches a DEALER to the relay, the part that leaked.
            let v = c.call("psu", "get_state", json!({})).await?;
            anyhow::ensure!(v["relay_id"] == json!("psu"), "{v}");
            if close {
                c.close();
            }
            drop(c);
            anyhow::Ok(())
        }
    };
    for _ in 0..20 {
        one(false).await?;
    }
    let base = fds();
    settle(WAIT, || fds() <= base).await;
    let (base_fds, base_threads, base_rss) =
        (fds(), status_field("Threads:"), status_field("VmRSS:"));
    for i in 0..500 {
        one(i % 2 == 0).await?;
    }
    let released = settle(Duration::from_secs(10), || fds() <= base_fds + 16).await;
    let (now_fds, now_threads, now_rss) = (fds(), status_field("Threads:"), status_field("VmRSS:"));
    println!(
        "500 clients: fds {base_fds} -> {now_fds}, threads {base_threads} -> {now_threads}, RSS {base_rss} -> {now_rss} kB"
    );
    assert!(released, "descriptors leaked: {base_fds} -> {now_fds}");
    assert!(
        now_threads <= base_threads + 2,
        "threads {base_threads} -> {now_threads}"
    );
    assert!(
        now_rss < base_rss + 64 * 1024,
        "RSS {base_rss} -> {now_rss} kB"
    );
    // The mesh still serves.
    mesh.client.call("psu", "get_state", json!({})).await?;
    mesh.stop().await;
    Ok(())
}

/// Regression (issue 9, defect 3): receive loops `continue`d on every
/// socket error, so once the context was terminated every loop spun on
/// ETERM, never closed its socket, and `zmq_ctx_term` never returned. Now a
/// permanent error ends the task: terminating the context returns as soon
/// as every node's sockets are closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receive_loops_end_when_the_context_terminates() -> anyhow::Result<()> {
    let mesh = Mesh::start(&["a", "b"], Duration::from_millis(50)).await?;
    // Every kind of loop is running: broker directory, relay instruments,
    // client listener, dealers (client -> broker, client -> relay).
    mesh.client.call("a", "get_state", json!({})).await?;
    mesh.client.wait_state("b", WAIT, |_| true).await?;
    let Mesh {
        ctx: mesh_ctx,
        broker,
        relay,
        client,
    } = mesh;
    let mut ctx = mesh_ctx.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    // A plain thread: if the test fails it stays stuck in zmq_ctx_term
    // without holding up the runtime.
    std::thread::spawn(move || {
        let r = ctx.destroy();
        // Every other clone is forgotten below, so nothing terms it twice.
        std::mem::forget(ctx);
        let _ = tx.send(r);
    });
    // The handles own no loop, only the broker's proxy control socket: drop
    // them. The client and the mesh hold context clones whose drop would
    // term it a second time: forget those.
    drop(broker);
    drop(relay);
    std::mem::forget(client);
    std::mem::forget(mesh_ctx);
    let got = tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(10))).await?;
    match got {
        Ok(r) => r.map_err(|e| anyhow::anyhow!("zmq_ctx_term: {e}")),
        Err(_) => {
            anyhow::bail!("zmq_ctx_term did not return within 10 s: a receive loop kept its socket")
        }
    }
}

/// An instrument whose state is larger than the bus allows.
struct Huge;

#[async_trait::async_trait]
impl labmesh_drivers::Instrument for Huge {
    fn describe(&self) -> labmesh_drivers::Description {
        labmesh_drivers::Description {
            state_fields: Vec::new(),
            driver: "huge".into(),
            identity: None,
            methods: vec![],
        }
    }
    async fn call(
        &mut self,
        method: &str,
        _args: labmesh_drivers::Args,
    ) -> Result<serde_json::Value, labmesh_drivers::DriverError> {
        Err(labmesh_drivers::DriverError::UnknownMethod(method.into()))
    }
    async fn poll(&mut self) -> Result<serde_json::Value, labmesh_drivers::DriverError> {
        Ok(json!({"blob": "x".repeat(200_000)}))
    }
}

/// Regression (issue 10, item 7, relay side): once the broker bounded bus
/// messages, one instrument with a state above the limit made the broker
/// drop its relay's whole PUB connection at every poll, so the relay's
/// other instruments lost their states too. The relay now keeps such a
/// state off the bus.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_oversize_state_cost_every_instrument_of_the_relay_its_states() -> anyhow::Result<()> {
    use labmesh_relay::{Hosted, RelayOptions};
    let mesh = Mesh::start(&[], Duration::from_millis(50)).await?;
    let relay = labmesh_relay::spawn(
        &mesh.ctx,
        RelayOptions::with_broker(mesh.broker.rpc_endpoint(), mesh.broker.xsub_endpoint()),
        vec![
            Hosted::new("huge", Box::new(Huge)).poll_every(Duration::from_millis(20)),
            Hosted::new(
                "small",
                Box::new(labmesh_drivers::mock_psu::MockPsu::new("small")),
            )
            .poll_every(Duration::from_millis(20)),
        ],
    )
    .await?;
    // Forty consecutive states of the small instrument, none missed and
    // none held back: libzmq queues a dropped publisher's messages and
    // resends them after every reconnect, so without the guard the states
    // arrive later and later (seconds behind after forty).
    let first = mesh.client.wait_state("small", WAIT, |_| true).await?;
    let first_seq = first.seq.unwrap_or(0);
    let mut worst = 0.0f64;
    mesh.client
        .wait_state("small", WAIT, |s| {
            worst = worst.max(labmesh_proto::unix_now() - s.ts.unwrap_or(0.0));
            s.seq.unwrap_or(0) >= first_seq + 40
        })
        .await?;
    let health = mesh.client.state_health("small").expect("tracked");
    assert_eq!(health.gaps, 0, "the small instrument lost states");
    assert!(
        worst < 2.0,
        "states arrived up to {worst:.1} s after they were published"
    );
    assert!(
        mesh.client.latest_state("huge").is_none(),
        "an oversize state went out"
    );
    relay.shutdown().await;
    mesh.stop().await;
    Ok(())
}

/// Meshes started and stopped one after the other in one process and one
/// ZeroMQ context (a reloading relay, `labmesh up`, benchmarks). Before the
/// DEALER monitor was drained on close, a disconnect event for a dropped
/// connection blocked libzmq's I/O thread and a later broker never received
/// a hello (round 1 to 6 here, every run).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequential_meshes_share_one_context() -> anyhow::Result<()> {
    labmesh_tests::init_logging();
    let ctx = zmq::Context::new();
    for round in 0..12 {
        let broker = labmesh_broker::spawn(&ctx, labmesh_broker::BrokerOptions::loopback()).await?;
        let relay = labmesh_relay::spawn(
            &ctx,
            labmesh_relay::RelayOptions::with_broker(broker.rpc_endpoint(), broker.xsub_endpoint()),
            vec![labmesh_relay::Hosted::new(
                "seq",
                Box::new(labmesh_drivers::mock_psu::MockPsu::new("seq")),
            )],
        )
        .await?;
        let mut clients = Vec::new();
        for _ in 0..5 {
            let c = tokio::time::timeout(
                Duration::from_secs(10),
                labmesh_client::Client::connect(
                    &ctx,
                    labmesh_client::ClientOptions::new(
                        broker.rpc_endpoint(),
                        broker.xpub_endpoint(),
                    ),
                ),
            )
            .await
            .map_err(|_| anyhow::anyhow!("round {round}: connect hung"))??;
            c.wait_for_relay("seq", WAIT)
                .await
                .map_err(|e| anyhow::anyhow!("round {round}: {e}"))?;
            c.call("seq", "get_state", serde_json::json!({})).await?;
            clients.push(c);
        }
        drop(clients);
        relay.shutdown().await;
        broker.shutdown().await;
    }
    Ok(())
}
