//! `labmesh bench rpc`: RPC round trips through the mesh next to a raw zmq
//! DEALER/ROUTER echo measured in the same run.

use std::time::{Duration, Instant};

use labmesh_client::{Client, ClientOptions};
use labmesh_drivers::mock_psu::MockPsu;
use serde_json::json;

/// Percentiles of a sample, in microseconds.
struct Summary {
    p50: f64,
    p99: f64,
    mean: f64,
}

fn summarise(mut us: Vec<f64>) -> Summary {
    us.sort_by(f64::total_cmp);
    let pick = |q: f64| {
        let i = ((us.len() as f64 - 1.0) * q).round() as usize;
        us.get(i).copied().unwrap_or(f64::NAN)
    };
    let mean = us.iter().sum::<f64>() / us.len().max(1) as f64;
    Summary {
        p50: pick(0.50),
        p99: pick(0.99),
        mean,
    }
}

/// Raw libzmq: a ROUTER thread echoing to a DEALER, blocking calls, no JSON.
fn raw_echo(ctx: &zmq::Context, n: usize, payload: &[u8]) -> anyhow::Result<Vec<f64>> {
    let router = ctx.socket(zmq::ROUTER)?;
    router.set_linger(0)?;
    router.bind("tcp://127.0.0.1:*")?;
    let ep = router
        .get_last_endpoint()?
        .map_err(|_| anyhow::anyhow!("endpoint not UTF-8"))?;
    let server = std::thread::spawn(move || -> anyhow::Result<()> {
        loop {
            let msg = router.recv_multipart(0)?;
            if msg.get(1).is_some_and(|m| m.as_slice() == b"STOP") {
                return Ok(());
            }
            router.send_multipart(msg, 0)?;
        }
    });
    let dealer = ctx.socket(zmq::DEALER)?;
    dealer.set_linger(0)?;
    dealer.connect(&ep)?;
    let mut out = Vec::with_capacity(n);
    for i in 0..n + n / 10 {
        let t = Instant::now();
        dealer.send(payload, 0)?;
        let _ = dealer.recv_bytes(0)?;
        if i >= n / 10 {
            out.push(t.elapsed().as_secs_f64() * 1e6);
        }
    }
    dealer.send("STOP", 0)?;
    server
        .join()
        .map_err(|_| anyhow::anyhow!("echo thread panicked"))??;
    Ok(out)
}

async fn mesh_calls(client: &Client, method: &str, n: usize) -> anyhow::Result<Vec<f64>> {
    let psu = client.relay("bench").await?;
    let mut out = Vec::with_capacity(n);
    for i in 0..n + n / 10 {
        let params = if method == "set_voltage" {
            json!({"value": (i % 30) as f64})
        } else {
            json!({})
        };
        let t = Instant::now();
        psu.call(method, params).await?;
        if i >= n / 10 {
            out.push(t.elapsed().as_secs_f64() * 1e6);
        }
    }
    Ok(out)
}

pub async fn rpc(ctx: &zmq::Context, n: usize) -> anyhow::Result<()> {
    let broker = labmesh_broker::spawn(ctx, labmesh_broker::BrokerOptions::loopback()).await?;
    let relay = labmesh_relay::spawn(
        ctx,
        labmesh_relay::RelayOptions::with_broker(broker.rpc_endpoint(), broker.xsub_endpoint()),
        vec![
            labmesh_relay::Hosted::new("bench", Box::new(MockPsu::new("bench")))
                .poll_every(Duration::from_secs(1)),
        ],
    )
    .await?;
    let client = Client::connect(
        ctx,
        ClientOptions::new(broker.rpc_endpoint(), broker.xpub_endpoint()),
    )
    .await?;
    client
        .wait_for_relay("bench", Duration::from_secs(10))
        .await?;

    // The same bytes a set_voltage request carries, for the raw echo.
    let request = br#"{"type":"rpc","rpc_uuid":"0123456789abcdef0123456789abcdef","method":"set_voltage","params":{"value":2.5}}"#;
    let ctx2 = ctx.clone();
    let raw = tokio::task::spawn_blocking(move || raw_echo(&ctx2, n, request)).await??;
    let ping = mesh_calls(&client, "lm.ping", n).await?;
    let set = mesh_calls(&client, "set_voltage", n).await?;
    let get = mesh_calls(&client, "get_state", n).await?;
    relay.shutdown().await;
    broker.shutdown().await;

    let raw = summarise(raw);
    println!(
        "RPC round trip over tcp://127.0.0.1, {n} sequential calls each (after {} warm-up)",
        n / 10
    );
    println!(
        "{:<44} {:>9} {:>9} {:>9} {:>10}",
        "path", "p50 us", "p99 us", "mean us", "p50/raw"
    );
    println!(
        "{:<44} {:>9.1} {:>9.1} {:>9.1} {:>10}",
        "raw zmq DEALER->ROUTER echo (baseline)", raw.p50, raw.p99, raw.mean, "1.00x"
    );
    for (name, s) in [
        (
            "labmesh client -> relay lm.ping (no driver)",
            summarise(ping),
        ),
        (
            "labmesh client -> relay -> mock-psu set_voltage",
            summarise(set),
        ),
        (
            "labmesh client -> relay -> mock-psu get_state",
            summarise(get),
        ),
    ] {
        println!(
            "{:<44} {:>9.1} {:>9.1} {:>9.1} {:>9.2}x",
            name,
            s.p50,
            s.p99,
            s.mean,
            s.p50 / raw.p50
        );
    }
    Ok(())
}
