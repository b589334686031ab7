//! The process-level half of `labmesh bench rpc`: relay CPU per `lm.ping`
//! and calls/s with 8 concurrent clients, each next to a blocking Rust zmq
//! ROUTER echo (`labmesh bench echo-server`, its own process) measured the
//! same way in the same run. CPU is read from `/proc/<pid>/stat` (user +
//! system ticks) of the server process only, over thousands of sequential
//! calls.

use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use labmesh_client::{Client, ClientOptions};
use serde_json::Value;

use super::bench_all::{median, Row};
use super::bench_bank::free_port;

/// The same bytes an `lm.ping` request carries, for the echo.
const PING: &[u8] =
    br#"{"type":"rpc","rpc_uuid":"0123456789abcdef0123456789abcdef","method":"lm.ping","params":null}"#;

/// `labmesh bench echo-server`: a blocking ROUTER that sends every message
/// back. Prints `READY <endpoint>`, serves until killed.
pub fn echo_server(bind: &str) -> anyhow::Result<()> {
    let ctx = zmq::Context::new();
    let router = ctx.socket(zmq::ROUTER)?;
    router.set_linger(0)?;
    router.bind(bind)?;
    let ep = router
        .get_last_endpoint()?
        .map_err(|_| anyhow::anyhow!("endpoint not UTF-8"))?;
    println!("READY {ep}");
    use std::io::Write;
    std::io::stdout().flush()?;
    loop {
        let msg = router.recv_multipart(0)?;
        router.send_multipart(msg, 0)?;
    }
}

/// CPU seconds (user + system) of `pid`.
fn cpu_s(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return f64::NAN;
    };
    let rest = stat.rsplit_once(") ").map(|(_, r)| r).unwrap_or_default();
    let f: Vec<&str> = rest.split_whitespace().collect();
    let t = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    let hz = clock_ticks();
    (t(11) + t(12)) / hz
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf only reads a system constant.
    let v = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if v > 0 {
        v as f64
    } else {
        100.0
    }
}

fn echo_calls(ctx: &zmq::Context, ep: &str, n: usize) -> anyhow::Result<()> {
    let d = ctx.socket(zmq::DEALER)?;
    d.set_linger(0)?;
    d.connect(ep)?;
    for _ in 0..n {
        d.send(PING, 0)?;
        anyhow::ensure!(d.poll(zmq::POLLIN, 10_000)? > 0, "echo did not answer");
        let _ = d.recv_bytes(0)?;
    }
    Ok(())
}

/// Calls/s of `k` threads, each with its own DEALER, for `secs`.
fn echo_concurrent(ctx: &zmq::Context, ep: &str, k: usize, secs: f64) -> anyhow::Result<f64> {
    let count = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    for _ in 0..k {
        let d = ctx.socket(zmq::DEALER)?;
        d.set_linger(0)?;
        d.connect(ep)?;
        let (count, stop) = (count.clone(), stop.clone());
        threads.push(std::thread::spawn(move || -> anyhow::Result<()> {
            while !stop.load(Ordering::Relaxed) {
                d.send(PING, 0)?;
                anyhow::ensure!(d.poll(zmq::POLLIN, 10_000)? > 0, "echo did not answer");
                let _ = d.recv_bytes(0)?;
                count.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        }));
    }
    std::thread::sleep(Duration::from_secs_f64(secs * 0.2));
    let (c0, t0) = (count.load(Ordering::Relaxed), Instant::now());
    std::thread::sleep(Duration::from_secs_f64(secs));
    let rate = (count.load(Ordering::Relaxed) - c0) as f64 / t0.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join()
            .map_err(|_| anyhow::anyhow!("echo client panicked"))??;
    }
    Ok(rate)
}

async fn mesh_concurrent(clients: &[Client], secs: f64) -> anyhow::Result<f64> {
    let count = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for c in clients {
        let relay = c.relay("cpu").await?;
        let (count, stop) = (count.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                if relay
                    .call(labmesh_proto::lm::PING, Value::Null)
                    .await
                    .is_err()
                {
                    return false;
                }
                count.fetch_add(1, Ordering::Relaxed);
            }
            true
        }));
    }
    tokio::time::sleep(Duration::from_secs_f64(secs * 0.2)).await;
    let (c0, t0) = (count.load(Ordering::Relaxed), Instant::now());
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    let rate = (count.load(Ordering::Relaxed) - c0) as f64 / t0.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        anyhow::ensure!(t.await?, "a concurrent call failed");
    }
    Ok(rate)
}

/// Relay CPU per `lm.ping` and 8-client calls/s, each next to the echo.
pub async fn run(ctx: &zmq::Context, n: usize, secs: f64) -> anyhow::Result<Vec<Row>> {
    let broker = labmesh_broker::spawn(ctx, labmesh_broker::BrokerOptions::loopback()).await?;
    let dir = std::env::temp_dir().join(format!("labmesh-bench-rpc-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let cfg = dir.join("labmesh.toml");
    std::fs::write(
        &cfg,
        format!(
            "[relay]\nbroker_rpc = \"{}\"\nbroker_xsub = \"{}\"\n",
            broker.rpc_endpoint(),
            broker.xsub_endpoint()
        ),
    )?;
    let port = free_port()?;
    let exe = std::env::current_exe()?;
    let mut relay = tokio::process::Command::new(&exe)
        .arg("--config")
        .arg(&cfg)
        .arg("relay")
        .args(["--relay-id", "cpu", "--driver", "mock-psu", "--rpc"])
        .arg(format!("tcp://127.0.0.1:{port}"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let relay_pid = relay
        .id()
        .ok_or_else(|| anyhow::anyhow!("relay exited at once"))?;
    let mut echo = tokio::process::Command::new(&exe)
        .args(["bench", "echo-server", "--bind", "tcp://127.0.0.1:*"])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let echo_pid = echo
        .id()
        .ok_or_else(|| anyhow::anyhow!("echo server exited at once"))?;
    let out = echo
        .stdout
        .take()
        .ok_or_else(|| anyhow::anyhow!("no echo stdout"))?;
    let mut line = String::new();
    let mut reader = tokio::io::BufReader::new(out);
    tokio::time::timeout(
        Duration::from_secs(30),
        tokio::io::AsyncBufReadExt::read_line(&mut reader, &mut line),
    )
    .await
    .map_err(|_| anyhow::anyhow!("echo server not ready in 30 s"))??;
    let echo_ep = line
        .trim()
        .strip_prefix("READY ")
        .ok_or_else(|| anyhow::anyhow!("echo server said {line:?}"))?
        .to_string();

    let opts = ClientOptions::new(broker.rpc_endpoint(), broker.xpub_endpoint()).without_bus();
    let client = Client::connect(ctx, opts.clone()).await?;
    client
        .wait_for_relay("cpu", Duration::from_secs(30))
        .await?;
    let psu = client.relay("cpu").await?;
    for _ in 0..500 {
        psu.call(labmesh_proto::lm::PING, Value::Null).await?;
    }
    let ectx = zmq::Context::new();
    {
        let (c, e) = (ectx.clone(), echo_ep.clone());
        tokio::task::spawn_blocking(move || echo_calls(&c, &e, 500)).await??;
    }
    let (mut relay_us, mut echo_us) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        let c0 = cpu_s(relay_pid);
        for _ in 0..n {
            psu.call(labmesh_proto::lm::PING, Value::Null).await?;
        }
        relay_us.push((cpu_s(relay_pid) - c0) / n as f64 * 1e6);
        let c0 = cpu_s(echo_pid);
        let (c, e) = (ectx.clone(), echo_ep.clone());
        tokio::task::spawn_blocking(move || echo_calls(&c, &e, n)).await??;
        echo_us.push((cpu_s(echo_pid) - c0) / n as f64 * 1e6);
    }
    let mut clients = Vec::new();
    for _ in 0..8 {
        clients.push(Client::connect(ctx, opts.clone()).await?);
    }
    let (mut mesh_rate, mut echo_rate) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        mesh_rate.push(mesh_concurrent(&clients, secs).await?);
        let (c, e) = (ectx.clone(), echo_ep.clone());
        echo_rate
            .push(tokio::task::spawn_blocking(move || echo_concurrent(&c, &e, 8, secs)).await??);
    }
    for c in &clients {
        c.close();
    }
    client.close();
    let _ = relay.kill().await;
    let _ = echo.kill().await;
    broker.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);

    let (ru, eu) = (median(&relay_us), median(&echo_us));
    let (mr, er) = (median(&mesh_rate), median(&echo_rate));
    println!(
        "Server CPU per call (/proc/<pid>/stat, user+system, {n} sequential calls x 3 rounds, alternating):"
    );
    println!("  relay process, lm.ping (mock-psu hosted)    {ru:8.1} us   rounds {relay_us:.1?}");
    println!("  blocking Rust zmq ROUTER echo process       {eu:8.1} us   rounds {echo_us:.1?}");
    println!(
        "  relay / echo                                {:8.2}x",
        ru / eu
    );
    println!("8 concurrent clients, calls/s ({secs} s x 3 rounds, alternating):");
    println!("  8 labmesh Clients -> relay lm.ping          {mr:8.0}/s   rounds {mesh_rate:.0?}");
    println!("  8 DEALER threads -> ROUTER echo             {er:8.0}/s   rounds {echo_rate:.0?}");
    println!(
        "  relay / echo                                {:8.2}x",
        mr / er
    );
    Ok(vec![
        Row::new(
            "rpc: relay CPU per lm.ping vs blocking zmq ROUTER echo".into(),
            format!("{ru:.1} us"),
            format!("{eu:.1} us"),
            ru / eu,
            "<= 2.0x",
        ),
        Row::new(
            "rpc: 8 concurrent clients calls/s vs ROUTER echo, 8 DEALERs".into(),
            format!("{mr:.0}/s"),
            format!("{er:.0}/s"),
            mr / er,
            ">= 0.8x",
        ),
    ])
}
