//! `labmesh bench directory`: a broker process with many registered relays
//! heart-beating at the default interval; its CPU and RSS, and the latency
//! and reply size of one lookup (`lm.resolve`) and of the full list
//! (`list_relay_ids`, what `labmesh ls` asks), next to the same calls on
//! the same broker before the relays registered (the baseline from the
//! same run).
//!
//! The relays are registrations only (hello + token heartbeats from a few
//! DEALER sockets, as `keep_registered` sends them); nothing listens at
//! their endpoints, and the broker never needs to probe them because the
//! heartbeats are on time.

use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

use labmesh_proto::mesh::{
    decode_reply, encode, Heartbeat, Hello, Reply, Request, Role, RpcRequest,
};
use serde_json::{json, Value};

use super::bench_all::Row;
use super::bench_bank::free_port;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Registered relays (1..=100000).
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    relays: u64,
    /// Seconds of heart-beating over which CPU is measured (1..=3600).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=3600))]
    seconds: u64,
}

pub async fn exec(a: Args, ctx: &zmq::Context) -> anyhow::Result<ExitCode> {
    let rows = run(ctx, usize::try_from(a.relays)?, a.seconds).await?;
    super::bench_all::print_table("directory", &rows);
    Ok(ExitCode::SUCCESS)
}

/// Sockets the registrations are spread over.
const SENDERS: usize = 8;

fn dealer(ctx: &zmq::Context, ep: &str) -> anyhow::Result<zmq::Socket> {
    let s = ctx.socket(zmq::DEALER)?;
    s.set_linger(0)?;
    s.set_sndhwm(0)?;
    s.set_rcvhwm(0)?;
    s.connect(ep)?;
    Ok(s)
}

/// Round trips of `req` on `sock`: (sorted microseconds, reply bytes).
fn calls(sock: &zmq::Socket, req: &[u8], n: usize) -> anyhow::Result<(Vec<f64>, usize)> {
    let mut us = Vec::with_capacity(n);
    let mut bytes = 0;
    for _ in 0..n {
        let t = Instant::now();
        sock.send(req, 0)?;
        anyhow::ensure!(sock.poll(zmq::POLLIN, 10_000)? > 0, "no reply in 10 s");
        let r = sock.recv_bytes(0)?;
        us.push(t.elapsed().as_secs_f64() * 1e6);
        bytes = r.len();
        // A miss (404 on the empty directory) is an answer too.
        match decode_reply(&r) {
            Ok(Reply::RpcResult { .. } | Reply::RpcError { .. }) => {}
            other => anyhow::bail!("unexpected reply {other:?}"),
        }
    }
    us.sort_by(f64::total_cmp);
    Ok((us, bytes))
}

fn pct(v: &[f64], q: f64) -> f64 {
    let i = ((v.len() as f64 - 1.0) * q).round() as usize;
    v.get(i).copied().unwrap_or(f64::NAN)
}

fn rpc(method: &str, params: Value) -> Vec<u8> {
    encode(&Request::Rpc(RpcRequest {
        rpc_uuid: json!("0123456789abcdef0123456789abcdef"),
        method: method.to_string(),
        params,
        password: None,
        lease: None,
    }))
}

struct Lookups {
    resolve: Vec<f64>,
    resolve_bytes: usize,
    list: Vec<f64>,
    list_bytes: usize,
}

fn lookups(sock: &zmq::Socket, id: &str) -> anyhow::Result<Lookups> {
    let (resolve, resolve_bytes) =
        calls(sock, &rpc("lm.resolve", json!({ "relay_id": id })), 2000)?;
    let (list, list_bytes) = calls(sock, &rpc("list_relay_ids", Value::Null), 30)?;
    Ok(Lookups {
        resolve,
        resolve_bytes,
        list,
        list_bytes,
    })
}

/// CPU seconds (user + system) of `pid`.
fn cpu_s(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return f64::NAN;
    };
    let rest = stat.rsplit_once(") ").map(|(_, r)| r).unwrap_or_default();
    let f: Vec<&str> = rest.split_whitespace().collect();
    let t = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (t(11) + t(12)) / 100.0
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// The bench; rows for the summary table.
pub async fn run(_ctx: &zmq::Context, relays: usize, seconds: u64) -> anyhow::Result<Vec<Row>> {
    let (p1, p2, p3) = (free_port()?, free_port()?, free_port()?);
    let dir = std::env::temp_dir().join(format!("labmesh-bench-dir-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let cfg = dir.join("labmesh.toml");
    std::fs::write(
        &cfg,
        format!(
            "[broker]\nrpc_bind = \"tcp://127.0.0.1:{p1}\"\nxsub_bind = \"tcp://127.0.0.1:{p2}\"\n\
             xpub_bind = \"tcp://127.0.0.1:{p3}\"\nmax_registrations = {}\n",
            relays + 16
        ),
    )?;
    let mut broker = tokio::process::Command::new(std::env::current_exe()?)
        .arg("--config")
        .arg(&cfg)
        .arg("broker")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let pid = broker
        .id()
        .ok_or_else(|| anyhow::anyhow!("broker exited at once"))?;
    let ep = format!("tcp://127.0.0.1:{p1}");
    let result = tokio::task::spawn_blocking(move || load(&ep, pid, relays, seconds)).await;
    let _ = broker.kill().await;
    let _ = std::fs::remove_dir_all(&dir);
    result?
}

fn load(ep: &str, pid: u32, relays: usize, seconds: u64) -> anyhow::Result<Vec<Row>> {
    let ctx = zmq::Context::new();
    let probe = dealer(&ctx, ep)?;
    // The broker is up once it answers.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        probe.send(rpc("lm.ping", Value::Null), 0)?;
        if probe.poll(zmq::POLLIN, 200)? > 0 {
            let _ = probe.recv_bytes(0)?;
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "broker did not answer in 30 s");
    }
    // Answers to pings sent before the broker was up.
    while probe.poll(zmq::POLLIN, 300)? > 0 {
        let _ = probe.recv_bytes(0)?;
    }
    let rss_empty = rss_kib(pid);
    let empty = lookups(&probe, "r-00000")?;

    // Register.
    let senders: Vec<zmq::Socket> = (0..SENDERS)
        .map(|_| dealer(&ctx, ep))
        .collect::<anyhow::Result<_>>()?;
    let ids: Vec<String> = (0..relays).map(|i| format!("r-{i:05}")).collect();
    let endpoint = |i: usize| {
        format!(
            "tcp://10.{}.{}.{}:5850",
            i >> 16 & 255,
            i >> 8 & 255,
            i & 255
        )
    };
    let t = Instant::now();
    for (i, id) in ids.iter().enumerate() {
        let hello = Hello {
            role: Some(Role::Relay),
            relay_id: Some(id.clone()),
            rpc_endpoint: Some(endpoint(i)),
            bank_id: None,
            ingest: None,
            retrieve: None,
            password: None,
            via: None,
        };
        if let Some(s) = senders.get(i % SENDERS) {
            s.send(encode(&Request::Hello(hello)), 0)?;
        }
    }
    let mut tokens = vec![String::new(); relays];
    for (k, s) in senders.iter().enumerate() {
        // Replies come back in order per socket.
        for i in (k..relays).step_by(SENDERS) {
            anyhow::ensure!(s.poll(zmq::POLLIN, 30_000)? > 0, "no hello ack in 30 s");
            match decode_reply(&s.recv_bytes(0)?) {
                Ok(Reply::Hello(ack)) if ack.ok => {
                    if let Some(slot) = tokens.get_mut(i) {
                        *slot = ack.token.unwrap_or_default();
                    }
                }
                other => anyhow::bail!("hello {i} refused: {other:?}"),
            }
        }
    }
    let register_s = t.elapsed().as_secs_f64();
    let heartbeats: Vec<Vec<u8>> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            encode(&Request::Heartbeat(Heartbeat {
                role: Some(Role::Relay),
                relay_id: Some(id.clone()),
                bank_id: None,
                password: None,
                rpc_uuid: None,
                token: tokens.get(i).cloned(),
                rpc_endpoint: Some(endpoint(i)),
            }))
        })
        .collect();

    // Heart-beat every relay once per interval, spread evenly, in 10 ms
    // ticks, while measuring.
    let interval = labmesh_proto::limits::DEFAULT_HEARTBEAT.as_secs_f64();
    let start = Instant::now();
    let mut next = 0usize;
    let (cpu0, t0) = (cpu_s(pid), Instant::now());
    let mut sent = 0u64;
    let end = start + Duration::from_secs(seconds);
    while Instant::now() < end {
        let due = ((start.elapsed().as_secs_f64() / interval) * relays as f64) as usize;
        while next < due {
            let i = next % relays;
            if let (Some(s), Some(hb)) = (senders.get(i % SENDERS), heartbeats.get(i)) {
                s.send(&hb[..], 0)?;
                sent += 1;
            }
            next += 1;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let cpu = (cpu_s(pid) - cpu0) / t0.elapsed().as_secs_f64();
    let full = lookups(&probe, "r-05000")?;
    let rss_full = rss_kib(pid);
    // Still registered (nothing expired under the heartbeat load)?
    let (_, list_bytes) = calls(&probe, &rpc("list_relay_ids", Value::Null), 1)?;
    let listed = probe_count(&probe)?;

    println!(
        "directory: {relays} relays registered in {register_s:.2} s over {SENDERS} sockets, then heart-beating every {interval} s ({:.0}/s) for {seconds} s; {listed} listed at the end ({list_bytes} bytes)",
        sent as f64 / seconds as f64
    );
    println!(
        "  broker CPU {:.1} % of one core; RSS {rss_empty} KiB empty -> {rss_full} KiB",
        cpu * 100.0
    );
    for (name, e, f, eb, fb) in [
        (
            "lm.resolve (one relay)",
            &empty.resolve,
            &full.resolve,
            empty.resolve_bytes,
            full.resolve_bytes,
        ),
        (
            "list_relay_ids (ls)",
            &empty.list,
            &full.list,
            empty.list_bytes,
            full.list_bytes,
        ),
    ] {
        println!(
            "  {name:<24} empty: p50 {:>8.1} us p99 {:>8.1} us, {eb:>7} B   {relays} relays: p50 {:>8.1} us p99 {:>8.1} us, {fb:>7} B",
            pct(e, 0.5),
            pct(e, 0.99),
            pct(f, 0.5),
            pct(f, 0.99)
        );
    }
    Ok(vec![
        Row::new(
            format!("directory: lm.resolve p50 with {relays} relays vs empty"),
            format!("{:.0} us", pct(&full.resolve, 0.5)),
            format!("{:.0} us", pct(&empty.resolve, 0.5)),
            pct(&full.resolve, 0.5) / pct(&empty.resolve, 0.5),
            "<= 1.5x",
        ),
        Row::new(
            format!("directory: lm.resolve reply bytes with {relays} relays vs empty"),
            format!("{} B", full.resolve_bytes),
            format!("{} B", empty.resolve_bytes),
            full.resolve_bytes as f64 / empty.resolve_bytes.max(1) as f64,
            "<= 2.0x",
        ),
        Row::new(
            format!("directory: ls (list_relay_ids) p50, {relays} relays"),
            format!("{:.1} ms", pct(&full.list, 0.5) / 1e3),
            format!("{:.1} ms", pct(&empty.list, 0.5) / 1e3),
            pct(&full.list, 0.5) / pct(&empty.list, 0.5),
            "-",
        ),
        Row::new(
            format!("directory: broker CPU, {relays} relays heart-beating / 5 s"),
            format!("{:.1} %", cpu * 100.0),
            "100 % (1 core)".to_string(),
            cpu,
            "<= 0.1x",
        ),
        Row::new(
            format!("directory: broker RSS, {relays} relays vs empty"),
            format!("{:.1} MiB", rss_full as f64 / 1024.0),
            format!("{:.1} MiB", rss_empty as f64 / 1024.0),
            rss_full as f64 / rss_empty.max(1) as f64,
            "-",
        ),
    ])
}

/// How many relays the broker lists now.
fn probe_count(sock: &zmq::Socket) -> anyhow::Result<usize> {
    sock.send(rpc("list_relay_ids", Value::Null), 0)?;
    anyhow::ensure!(sock.poll(zmq::POLLIN, 10_000)? > 0, "no reply in 10 s");
    match decode_reply(&sock.recv_bytes(0)?) {
        Ok(Reply::RpcResult { result, .. }) => Ok(result.as_array().map_or(0, Vec::len)),
        other => anyhow::bail!("unexpected reply {other:?}"),
    }
}
