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
