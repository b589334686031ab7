//! `labmesh bench abuse`: the resource-exhaustion cases of issue 10 replayed
//! against a broker, a bank and a relay running as child processes (this
//! binary), printing each node's RSS and open files before, at peak and
//! after every case. Loopback only; every case is bounded in count and time.
//!
//! A refused request is a result to print, not a failure: the nodes may
//! defend themselves however they like, and the bench reports what they did.

use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use labmesh_client::{Client, ClientOptions};
use serde_json::{json, Value};
use tokio::io::AsyncBufReadExt;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Cases to run (7 to 12, comma-separated); all by default.
    #[arg(long, value_delimiter = ',')]
    cases: Vec<u8>,
}

/// How long one wait inside a case may take.
const WAIT: Duration = Duration::from_secs(30);

pub async fn exec(a: Args, ctx: &zmq::Context) -> anyhow::Result<ExitCode> {
    let cases: Vec<u8> = if a.cases.is_empty() {
        (7..=12).collect()
    } else {
        a.cases
    };
    if let Some(bad) = cases.iter().find(|c| !(7..=12).contains(*c)) {
        anyhow::bail!("no case {bad}: the cases are 7 to 12");
    }
    let mut outcome = Ok(());
    for case in cases {
        // Fresh nodes for every case, so each is measured from the start.
        // Case 12 runs again on nodes that keep freed memory (trimming off):
        // the baseline from the same run.
        let trims: &[bool] = if case == 12 { &[true, false] } else { &[true] };
        for &trim in trims {
            let mesh = Mesh::start(ctx, trim).await?;
            outcome = mesh.run_case(ctx, case).await;
            mesh.stop().await;
            if outcome.is_err() {
                break;
            }
        }
        if outcome.is_err() {
            break;
        }
    }
    outcome?;
    Ok(ExitCode::SUCCESS)
}

/// A node running as a child process.
struct Proc {
    name: &'static str,
    child: tokio::process::Child,
    pid: u32,
}

/// RSS (KiB) and open files of `pid`; `None` once it has gone.
fn usage(pid: u32) -> Option<(u64, usize)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count();
    Some((rss, fds))
}

/// Samples the nodes every 10 ms and keeps the largest values.
struct PeakSampler {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Vec<(u64, usize)>>,
}

impl PeakSampler {
    fn start(pids: Vec<u32>) -> anyhow::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("abuse-peaks".into())
            .spawn(move || {
                let mut peak = vec![(0u64, 0usize); pids.len()];
                loop {
                    for (p, pid) in peak.iter_mut().zip(&pids) {
                        if let Some((rss, fds)) = usage(*pid) {
                            p.0 = p.0.max(rss);
                            p.1 = p.1.max(fds);
                        }
                    }
                    if flag.load(Ordering::Relaxed) {
                        return peak;
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
            })?;
        Ok(PeakSampler { stop, thread })
    }

    fn finish(self) -> Vec<(u64, usize)> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap_or_default()
    }
}

/// The three nodes and how to reach them.
struct Mesh {
    dir: PathBuf,
    trim: bool,
    nodes: Vec<Proc>,
    rpc: String,
    xsub: String,
    xpub: String,
    relay_ep: String,
    ingest: String,
    retrieve: String,
    client: Client,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Start `labmesh --config CFG ARGS`, wait for a stdout line containing
/// `ready`; stderr goes to `log`.
async fn start_node(
    name: &'static str,
    cfg: &Path,
    args: &[&str],
    ready: &str,
    log: &Path,
    trim: bool,
) -> anyhow::Result<Proc> {
    let mut child = tokio::process::Command::new(std::env::current_exe()?)
        .arg("--config")
        .arg(cfg)
        .args(args)
        .env("RUST_LOG", "warn")
        .env(crate::memory::TRIM_ENV, if trim { "1" } else { "0" })
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log)?)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("start the {name}"))?;
    let pid = child.id().context("node exited at once")?;
    let stdout = child.stdout.take().context("node stdout")?;
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let found = tokio::time::timeout(WAIT, async {
        while let Ok(Some(l)) = lines.next_line().await {
            if l.contains(ready) {
                return true;
            }
        }
        false
    })
    .await
    .with_context(|| format!("{name} not ready within {WAIT:?}"))?;
    anyhow::ensure!(
        found,
        "{name} exited before it was ready (see {})",
        log.display()
    );
    // Keep draining stdout so the node never blocks on it.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok(Proc { name, child, pid })
}

impl Mesh {
    async fn start(ctx: &zmq::Context, trim: bool) -> anyhow::Result<Mesh> {
        let (p1, p2, p3) = (free_port()?, free_port()?, free_port()?);
        let dir = std::env::temp_dir().join(format!(
            "labmesh-abuse-{}-{}",
            std::process::id(),
            labmesh_wire::dealer::new_rpc_uuid().get(..8).unwrap_or("0")
        ));
        std::fs::create_dir_all(&dir)?;
        let cfg = dir.join("labmesh.toml");
        std::fs::write(
            &cfg,
            format!(
                r#"[broker]
rpc_bind = "tcp://127.0.0.1:{p1}"
xsub_bind = "tcp://127.0.0.1:{p2}"
xpub_bind = "tcp://127.0.0.1:{p3}"
address = "127.0.0.1"

[relay]
default_rpc_bind = "tcp://127.0.0.1:*"
broker_rpc = "tcp://BROKER:{p1}"
broker_xsub = "tcp://BROKER:{p2}"
default_address = "127.0.0.1"

[bank]
broker_rpc = "tcp://BROKER:{p1}"
broker_xsub = "tcp://BROKER:{p2}"
default_address = "127.0.0.1"
"#
            ),
        )?;
        let data = dir.join("bank_data").to_string_lossy().into_owned();
        let broker = start_node(
            "broker",
            &cfg,
            &["broker"],
            "broker:",
            &dir.join("broker.log"),
            trim,
        )
        .await?;
        let bank = start_node(
            "bank",
            &cfg,
            &[
                "bank",
                "--bank-id",
                "abuse-bank",
                "--data-dir",
                &data,
                "--ingest-bind",
                "tcp://127.0.0.1:*",
                "--retrieve-bind",
                "tcp://127.0.0.1:*",
            ],
            "bank abuse-bank:",
            &dir.join("bank.log"),
            trim,
        )
        .await?;
        let relay = start_node(
            "relay",
            &cfg,
            &["relay", "--relay-id", "abuse-psu", "--driver", "mock-psu"],
            "relay abuse-psu:",
            &dir.join("relay.log"),
            trim,
        )
        .await?;
        let rpc = format!("tcp://127.0.0.1:{p1}");
        let xpub = format!("tcp://127.0.0.1:{p3}");
        let client = Client::connect(ctx, ClientOptions::new(&rpc, &xpub).without_bus()).await?;
        let relay_ep = client.wait_for_relay("abuse-psu", WAIT).await?.rpc_endpoint;
        let bank_info = tokio::time::timeout(WAIT, async {
            loop {
                if let Ok(banks) = client.list_banks().await {
                    if let Some(b) = banks.into_iter().find(|b| b.bank_id == "abuse-bank") {
                        return b;
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await
        .context("the bank did not register")?;
        Ok(Mesh {
            dir,
            trim,
            nodes: vec![broker, bank, relay],
            rpc,
            xsub: format!("tcp://127.0.0.1:{p2}"),
            xpub,
            relay_ep,
            ingest: bank_info.ingest.context("bank has no ingest endpoint")?,
            retrieve: bank_info
                .retrieve
                .context("bank has no retrieve endpoint")?,
            client,
        })
    }

    async fn stop(mut self) {
        for n in &mut self.nodes {
            let _ = n.child.start_kill();
            let _ = tokio::time::timeout(WAIT, n.child.wait()).await;
        }
        let _ = std::fs::remove_dir_all(self.dir.join("bank_data"));
        let _ = std::fs::remove_file(self.dir.join("abuse-8mb.bin"));
    }

    fn pids(&self) -> Vec<u32> {
        self.nodes.iter().map(|n| n.pid).collect()
    }

    /// Run one case between samples; print the table.
    async fn run_case(&self, ctx: &zmq::Context, case: u8) -> anyhow::Result<()> {
        let title = match case {
            7 => "one subscriber never reads while 600 messages of 1 MB are published on the bus",
            8 => "150 stalled credit-mode downloads (credit 1, never read), then closed",
            9 => "80 hellos with 900 KB relay ids at the broker",
            10 => "20 000 ingest_start with distinct tokens from one connection",
            11 => "20 000 pipelined calls to the relay on one connection",
            _ => "three rounds of 2000 connections to the broker and the relay",
        };
        let baseline = if self.trim {
            ""
        } else {
            " [baseline: nodes with LABMESH_MALLOC_TRIM=0]"
        };
        println!(
            "\ncase {case}: {title}{baseline}\n  (fresh nodes: broker pid {}, bank pid {}, relay pid {}; logs in {})",
            self.nodes[0].pid,
            self.nodes[1].pid,
            self.nodes[2].pid,
            self.dir.display()
        );
        // Set up outside the measurement.
        let dataset = if case == 8 {
            Some(self.upload_dataset().await)
        } else {
            None
        };
        let pids = self.pids();
        let before: Vec<Option<(u64, usize)>> = pids.iter().map(|p| usage(*p)).collect();
        let sampler = PeakSampler::start(pids.clone())?;
        let t0 = Instant::now();
        let result = match case {
            7 => self.bus_never_read(ctx).await,
            8 => match dataset {
                Some(Ok(id)) => self.stalled_downloads(ctx, &id).await,
                Some(Err(e)) => Err(e.context("no dataset to download")),
                None => Err(anyhow::anyhow!("no dataset to download")),
            },
            9 => self.huge_hellos(ctx).await,
            10 => self.many_ingest_starts(ctx).await,
            11 => self.pipelined_calls(ctx).await,
            _ => self.connection_rounds().await,
        };
        let took = t0.elapsed();
        let peak = sampler.finish();
        let after = settle(&pids, &before).await;
        match result {
            Ok(text) => println!("  result ({:.1} s): {text}", took.as_secs_f64()),
            Err(e) => println!(
                "  result ({:.1} s): not completed: {e:#}",
                took.as_secs_f64()
            ),
        }
        println!(
            "  {:<7} {:>11} {:>11} {:>11}   {:>6} {:>6} {:>6}",
            "node", "RSS KiB", "peak", "after", "files", "peak", "after"
        );
        for (i, n) in self.nodes.iter().enumerate() {
            let show = |u: Option<(u64, usize)>| {
                u.map_or(("gone".to_string(), "-".to_string()), |(r, f)| {
                    (r.to_string(), f.to_string())
                })
            };
            let (rb, fb) = show(before.get(i).copied().flatten());
            let (ra, fa) = show(after.get(i).copied().flatten());
            // The sampler stops with the case; a node still busy may peak
            // while it settles.
            let (mut rp, mut fp) = peak.get(i).copied().unwrap_or_default();
            for (r, f) in [before.get(i), after.get(i)]
                .into_iter()
                .flatten()
                .flatten()
            {
                rp = rp.max(*r);
                fp = fp.max(*f);
            }
            println!(
                "  {:<7} {rb:>11} {rp:>11} {ra:>11}   {fb:>6} {fp:>6} {fa:>6}",
                n.name
            );
        }
        for (i, n) in self.nodes.iter().enumerate() {
            if after.get(i).copied().flatten().is_none() {
                anyhow::bail!("the {} exited during case {case}", n.name);
            }
        }
        Ok(())
    }

    async fn upload_dataset(&self) -> anyhow::Result<String> {
        let path = self.dir.join("abuse-8mb.bin");
        std::fs::write(&path, vec![0x5au8; 8 * 1_000_000])?;
        let bank = self.client.bank(Some("abuse-bank")).await?;
        let opts = labmesh_transfer::UploadOptions {
            dataset_id: Some("abuse-8mb".into()),
            relay_id: "abuse".into(),
            ..labmesh_transfer::UploadOptions::default()
        };
        let receipt = bank.upload_file(&path, opts).await?;
        Ok(receipt.dataset_id)
    }

    async fn bus_never_read(&self, ctx: &zmq::Context) -> anyhow::Result<String> {
        let (ctx, xsub, xpub) = (ctx.clone(), self.xsub.clone(), self.xpub.clone());
        tokio::task::spawn_blocking(move || bus_case(&ctx, &xsub, &xpub)).await?
    }

    async fn stalled_downloads(&self, ctx: &zmq::Context, id: &str) -> anyhow::Result<String> {
        let (ctx, ep, id) = (ctx.clone(), self.retrieve.clone(), id.to_string());
        tokio::task::spawn_blocking(move || downloads_case(&ctx, &ep, &id)).await?
    }

    async fn huge_hellos(&self, ctx: &zmq::Context) -> anyhow::Result<String> {
        let (ctx, ep) = (ctx.clone(), self.rpc.clone());
        tokio::task::spawn_blocking(move || hellos_case(&ctx, &ep)).await?
    }

    async fn many_ingest_starts(&self, ctx: &zmq::Context) -> anyhow::Result<String> {
        let (ctx, ep) = (ctx.clone(), self.ingest.clone());
        tokio::task::spawn_blocking(move || ingest_case(&ctx, &ep)).await?
    }

    async fn pipelined_calls(&self, ctx: &zmq::Context) -> anyhow::Result<String> {
        let mut out = Vec::new();
        for (round, id_len) in [32usize, 256].into_iter().enumerate() {
            let marker = 20.0 + round as f64 + 0.125;
            let (c2, ep) = (ctx.clone(), self.relay_ep.clone());
            let sock = tokio::task::spawn_blocking(move || {
                pipeline_send(&c2, &ep, PIPELINED, id_len, marker)
            })
            .await??;
            // Read nothing until the relay has executed the last call: the
            // attack is a peer that asks faster than it reads.
            tokio::time::timeout(WAIT, async {
                loop {
                    if let Ok(s) = self.client.call("abuse-psu", "get_state", json!({})).await {
                        if s["voltage"].as_f64() == Some(marker) {
                            return;
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
            .await
            .context("the relay did not execute the calls in time")?;
            let t = tokio::task::spawn_blocking(move || pipeline_read(&sock, PIPELINED)).await??;
            out.push(format!("{id_len}-character ids: {t}"));
        }
        Ok(out.join("; "))
    }

    async fn connection_rounds(&self) -> anyhow::Result<String> {
        let pids = self.pids();
        let start: Vec<Option<(u64, usize)>> = pids.iter().map(|p| usage(*p)).collect();
        let mut rows = Vec::new();
        for round in 1..=3 {
            let mut row = Vec::new();
            for (node, ep, req) in [
                (
                    0usize,
                    self.rpc.clone(),
                    r#"{"type":"hello","role":"client"}"#,
                ),
                (
                    2,
                    self.relay_ep.clone(),
                    r#"{"type":"rpc","rpc_uuid":"r","method":"lm.ping"}"#,
                ),
            ] {
                let answered = tokio::task::spawn_blocking(move || {
                    connection_round(&ep, CONNECTIONS, req.as_bytes())
                })
                .await??;
                row.push(format!(
                    "{} {answered}/{CONNECTIONS} answered",
                    self.nodes[node].name
                ));
            }
            // RSS once the round's connections have gone (bounded wait).
            let now = settle(&pids, &start).await;
            let rss = |i: usize| now.get(i).copied().flatten().map_or(0, |u| u.0);
            rows.push(format!(
                "round {round}: {}; settled RSS broker {} KiB, relay {} KiB",
                row.join(", "),
                rss(0),
                rss(2)
            ));
        }
        Ok(rows.join("; "))
    }
}

/// After a case: wait (bounded) until each node's open files are back to
/// their count before, and its RSS within 8 MiB of it (a node may give
/// memory back a moment later), then sample.
async fn settle(pids: &[u32], before: &[Option<(u64, usize)>]) -> Vec<Option<(u64, usize)>> {
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        let now: Vec<Option<(u64, usize)>> = pids.iter().map(|p| usage(*p)).collect();
        let settled = now.iter().zip(before).all(|(n, b)| match (n, b) {
            (Some((rn, fnow)), Some((rb, fb))) => *fnow <= fb + 2 && *rn <= rb + 8 * 1024,
            _ => true,
        });
        if settled || Instant::now() >= end {
            return now;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

const BUS_MESSAGES: usize = 600;
const BUS_MESSAGES_UNDER: usize = 2000;
const STALLED_DOWNLOADS: usize = 150;
const HELLOS: usize = 80;
const HELLO_ID_BYTES: usize = 900_000;
const INGEST_STARTS: usize = 20_000;
const PIPELINED: usize = 20_000;
const CONNECTIONS: usize = 2000;

/// Case 7.
fn bus_case(ctx: &zmq::Context, xsub: &str, xpub: &str) -> anyhow::Result<String> {
    let size = labmesh_proto::limits::DEFAULT_MAX_MSG.min(1_000_000);
    // A stuck reader: with a one-message queue and a 4 KiB TCP buffer its
    // libzmq takes almost nothing off the wire, so the backlog is the bus's.
    let stalled = ctx.socket(zmq::SUB)?;
    stalled.set_linger(0)?;
    stalled.set_rcvhwm(1)?;
    stalled.set_rcvbuf(4096)?;
    stalled.set_subscribe(b"abuse.")?;
    stalled.connect(xpub)?;
    let reader = ctx.socket(zmq::SUB)?;
    reader.set_linger(0)?;
    reader.set_subscribe(b"abuse.probe")?;
    reader.connect(xpub)?;
    let publisher = ctx.socket(zmq::PUB)?;
    publisher.set_linger(0)?;
    publisher.set_sndhwm(0)?;
    publisher.connect(xsub)?;
    // The subscriptions have reached the bus when the reader hears a probe.
    let end = Instant::now() + WAIT;
    let wait_probe = |tag: &[u8]| -> anyhow::Result<bool> {
        while Instant::now() < end {
            publisher.send_multipart([b"abuse.probe".as_slice(), tag], 0)?;
            if reader.poll(zmq::POLLIN, 50)? > 0 {
                while let Ok(m) = reader.recv_multipart(zmq::DONTWAIT) {
                    if m.get(1).map(Vec::as_slice) == Some(tag) {
                        return Ok(true);
                    }
                }
            }
        }
        Ok(false)
    };
    anyhow::ensure!(wait_probe(b"start")?, "the bus never delivered a probe");
    // The flood: 600 messages of 1 MB (above the bus's largest message,
    // `[broker] bus_max_msg`), then 2000 of just under that limit, which
    // the stuck reader's queue must hold within `[broker] bus_budget`.
    let body = vec![0x42u8; size];
    let under = vec![0x43u8; labmesh_proto::limits::DEFAULT_BUS_MAX_MSG - 1024];
    let t = Instant::now();
    for _ in 0..BUS_MESSAGES {
        publisher.send_multipart([b"abuse.bulk".as_slice(), &body], 0)?;
    }
    // A second flooding peer sends messages just under the limit, which the
    // stuck reader's queue must hold within `[broker] bus_budget`.
    let second = ctx.socket(zmq::PUB)?;
    second.set_linger(0)?;
    second.set_sndhwm(0)?;
    second.connect(xsub)?;
    let end = Instant::now() + WAIT;
    // Its connection is up once the reader hears its probe.
    let mut up = false;
    while !up && Instant::now() < end {
        second.send_multipart([b"abuse.probe".as_slice(), b"second"], 0)?;
        if reader.poll(zmq::POLLIN, 50)? > 0 {
            while let Ok(m) = reader.recv_multipart(zmq::DONTWAIT) {
                up |= m.get(1).map(Vec::as_slice) == Some(b"second".as_slice());
            }
        }
    }
    for _ in 0..BUS_MESSAGES_UNDER {
        second.send_multipart([b"abuse.bulk".as_slice(), &under], 0)?;
    }
    // Let the broker take in what the flooding peers queued.
    std::thread::sleep(Duration::from_secs(2));
    // Another, well-behaved publisher: does the bus still serve others?
    let other = ctx.socket(zmq::PUB)?;
    other.set_linger(0)?;
    other.connect(xsub)?;
    let end = Instant::now() + WAIT;
    let mut through = false;
    while !through && Instant::now() < end {
        other.send_multipart([b"abuse.probe".as_slice(), b"end"], 0)?;
        if reader.poll(zmq::POLLIN, 50)? > 0 {
            while let Ok(m) = reader.recv_multipart(zmq::DONTWAIT) {
                if m.get(1).map(Vec::as_slice) == Some(b"end".as_slice()) {
                    through = true;
                }
            }
        }
    }
    Ok(format!(
        "{BUS_MESSAGES} x {size} B from one peer, {BUS_MESSAGES_UNDER} x {} B from another; the bus {} a third publisher's message to a reading subscriber {:.1} s later",
        under.len(),
        if through {
            "still carried"
        } else {
            "did not carry"
        },
        t.elapsed().as_secs_f64()
    ))
}

/// Case 8.
fn downloads_case(ctx: &zmq::Context, retrieve: &str, id: &str) -> anyhow::Result<String> {
    let mut socks = Vec::with_capacity(STALLED_DOWNLOADS);
    let get = json!({"type":"get","dataset_id":id,"credit":1}).to_string();
    for _ in 0..STALLED_DOWNLOADS {
        let s = ctx.socket(zmq::DEALER)?;
        s.set_linger(0)?;
        s.set_rcvhwm(1)?;
        s.connect(retrieve)?;
        s.send(get.as_bytes(), 0)?;
        socks.push(s);
    }
    // Wait (bounded) until every stream has something waiting, unread.
    let end = Instant::now() + Duration::from_secs(10);
    let mut started = 0;
    for s in &socks {
        let left = end.saturating_duration_since(Instant::now());
        if s.poll(zmq::POLLIN, left.as_millis().max(1) as i64)? > 0 {
            started += 1;
        }
    }
    // What the bank said to each: a stream (meta) or a refusal.
    let (mut streams, mut refused, mut other) = (0, 0, 0);
    let mut why = String::new();
    for s in &socks {
        match s
            .recv_bytes(zmq::DONTWAIT)
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        {
            Some(v) if v["type"] == "meta" => streams += 1,
            Some(v) if v["error"]["code"] == 503 => {
                refused += 1;
                if why.is_empty() {
                    why = v["error"]["message"].as_str().unwrap_or("").to_string();
                }
            }
            _ => other += 1,
        }
    }
    drop(socks);
    Ok(format!(
        "{started}/{STALLED_DOWNLOADS} answered: {streams} streams, {refused} refused ({why}), {other} other; then all closed"
    ))
}

/// Read every waiting message of `s`, as JSON.
fn drain(s: &zmq::Socket, out: &mut Vec<Value>) -> anyhow::Result<()> {
    while let Ok(b) = s.recv_bytes(zmq::DONTWAIT) {
        out.push(serde_json::from_slice(&b).unwrap_or(Value::Null));
    }
    Ok(())
}

/// Send `requests` on one DEALER, reading answers as they come; then read
/// until `expected` answers or 3 s of quiet.
fn ask_all(
    s: &zmq::Socket,
    requests: impl Iterator<Item = Vec<u8>>,
    expected: usize,
) -> anyhow::Result<Vec<Value>> {
    let mut answers = Vec::new();
    for r in requests {
        s.send(r, 0)?;
        drain(s, &mut answers)?;
    }
    let end = Instant::now() + WAIT;
    while answers.len() < expected && Instant::now() < end {
        if s.poll(zmq::POLLIN, 3000)? == 0 {
            break;
        }
        drain(s, &mut answers)?;
    }
    Ok(answers)
}

/// "12 ingest_ack, 3 error 413" for a list of answers.
fn count_answers(answers: &[Value], expected: usize) -> String {
    let mut kinds = std::collections::BTreeMap::<String, usize>::new();
    for a in answers {
        let kind = match (
            a["type"].as_str(),
            a["error"]["code"].as_i64(),
            a["ok"].as_bool(),
        ) {
            (_, Some(code), _) => format!("error {code}"),
            (Some(t), None, Some(false)) => format!("{t} refused"),
            (Some(t), None, _) => t.to_string(),
            (None, None, _) => "other".to_string(),
        };
        *kinds.entry(kind).or_default() += 1;
    }
    let mut parts: Vec<String> = kinds.into_iter().map(|(k, n)| format!("{n} {k}")).collect();
    parts.push(format!(
        "{} unanswered",
        expected.saturating_sub(answers.len())
    ));
    parts.join(", ")
}

/// Case 9.
fn hellos_case(ctx: &zmq::Context, rpc: &str) -> anyhow::Result<String> {
    let s = ctx.socket(zmq::DEALER)?;
    s.set_linger(0)?;
    s.set_sndhwm(0)?;
    s.connect(rpc)?;
    let requests = (0..HELLOS).map(|i| {
        let mut id = format!("abuse-{i:03}-");
        id.extend(std::iter::repeat_n(
            'x',
            HELLO_ID_BYTES.saturating_sub(id.len()),
        ));
        json!({"type":"hello","role":"relay","relay_id":id,"rpc_endpoint":"tcp://127.0.0.1:9"})
            .to_string()
            .into_bytes()
    });
    let answers = ask_all(&s, requests, HELLOS)?;
    Ok(count_answers(&answers, HELLOS))
}

/// Case 10.
fn ingest_case(ctx: &zmq::Context, ingest: &str) -> anyhow::Result<String> {
    let s = ctx.socket(zmq::DEALER)?;
    s.set_linger(0)?;
    s.set_sndhwm(0)?;
    s.connect(ingest)?;
    let requests = (0..INGEST_STARTS).map(|i| {
        json!({"type":"ingest_start","dataset_id":format!("abuse-{i}"),"relay_id":"abuse","meta":{},"size":1000,"token":format!("abuse{i:08}")})
            .to_string()
            .into_bytes()
    });
    let answers = ask_all(&s, requests, INGEST_STARTS)?;
    Ok(count_answers(&answers, INGEST_STARTS))
}

/// Case 11: what came back for pipelined calls.
#[derive(Default)]
struct Tally {
    ok: usize,
    unavailable: usize,
    other: usize,
    notices: usize,
    missing: usize,
}

impl std::fmt::Display for Tally {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} answered, {} 503, {} other errors, {} missing, {} notices",
            self.ok, self.unavailable, self.other, self.missing, self.notices
        )
    }
}

/// Send `n` calls without reading; every other one is `lm.ping` (answered
/// without the instrument), the last one sets the voltage to `marker`.
fn pipeline_send(
    ctx: &zmq::Context,
    endpoint: &str,
    n: usize,
    id_len: usize,
    marker: f64,
) -> anyhow::Result<zmq::Socket> {
    let s = ctx.socket(zmq::DEALER)?;
    s.set_linger(0)?;
    s.set_sndhwm(0)?;
    s.set_rcvhwm(100)?;
    s.set_rcvbuf(4096)?;
    s.connect(endpoint)?;
    let w = id_len.saturating_sub(1);
    for i in 0..n {
        let req = if i % 2 == 1 || i + 1 == n {
            let value = if i + 1 == n { marker } else { (i % 30) as f64 };
            json!({"type":"rpc","rpc_uuid":format!("c{i:0w$}"),"method":"set_voltage","params":{"value":value}})
        } else {
            json!({"type":"rpc","rpc_uuid":format!("c{i:0w$}"),"method":"lm.ping"})
        };
        s.send(req.to_string().as_bytes(), 0)?;
    }
    Ok(s)
}

fn pipeline_read(s: &zmq::Socket, n: usize) -> anyhow::Result<Tally> {
    let mut t = Tally::default();
    let mut answered = 0;
    let end = Instant::now() + WAIT;
    while answered < n && Instant::now() < end {
        if s.poll(zmq::POLLIN, 3000)? == 0 {
            break;
        }
        let v: Value = serde_json::from_slice(&s.recv_bytes(0)?).unwrap_or(Value::Null);
        if v["rpc_uuid"].is_null() {
            t.notices += 1;
            continue;
        }
        answered += 1;
        match v["error"]["code"].as_i64() {
            None => t.ok += 1,
            Some(503) => t.unavailable += 1,
            Some(_) => t.other += 1,
        }
    }
    t.missing = n - answered;
    Ok(t)
}

/// Case 12, one round: `n` DEALERs connect at once, each asks once and
/// waits (bounded) for its answer, then all close.
fn connection_round(endpoint: &str, n: usize, request: &[u8]) -> anyhow::Result<usize> {
    // A context holds at most 1023 sockets (ZMQ_MAX_SOCKETS): 500 each.
    let ctxs: Vec<zmq::Context> = (0..n.div_ceil(500)).map(|_| zmq::Context::new()).collect();
    let mut socks = Vec::with_capacity(n);
    for i in 0..n {
        let ctx = ctxs.get(i / 500).context("context")?;
        let s = ctx.socket(zmq::DEALER)?;
        s.set_linger(0)?;
        s.connect(endpoint)?;
        s.send(request, 0)?;
        socks.push(s);
    }
    let end = Instant::now() + WAIT;
    let mut answered = 0;
    for s in &socks {
        let left = end.saturating_duration_since(Instant::now());
        if s.poll(zmq::POLLIN, left.as_millis().max(1) as i64)? > 0 {
            let _ = s.recv_bytes(0)?;
            answered += 1;
        }
    }
    Ok(answered)
}
