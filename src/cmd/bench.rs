//! `labmesh bench rpc | soak | abuse`: RPC round trips through the mesh next
//! to a raw zmq DEALER/ROUTER echo measured in the same run; a soak of many
//! relays; the resource-exhaustion cases of issue 10 (`bench_abuse`).

use std::process::ExitCode;
use std::time::{Duration, Instant};

use labmesh_client::{Client, ClientOptions};
use labmesh_drivers::mock_psu::MockPsu;
use serde_json::json;

#[derive(Debug, clap::Subcommand)]
pub enum Args {
    /// RPC round trips (client -> relay -> mock PSU) vs a raw zmq echo.
    Rpc {
        /// Calls per measurement (1..=10000000).
        #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
        n: u64,
    },
    /// Many relays publishing state through one broker process; counts
    /// sequence gaps at a client, reports broker CPU and RSS.
    Soak {
        /// Relay ids (mock PSUs, hosted by one relay; 1..=10000).
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=10_000))]
        relays: u64,
        /// State messages per second per relay (above 0, at most 100: the
        /// 10 ms state-interval floor).
        #[arg(long, default_value_t = 10.0, value_parser = crate::cli_args::rate)]
        hz: f64,
        /// Duration of the measurement, seconds (1..=86400).
        #[arg(long, default_value_t = 600, value_parser = clap::value_parser!(u64).range(1..=86_400))]
        seconds: u64,
    },
    /// Resource-exhaustion cases against broker, bank and relay processes;
    /// RSS and open files of each node before, at peak and after each case.
    Abuse(super::bench_abuse::Args),
    /// Instrument links to the simulator (raw socket, VXI-11, HiSLIP):
    /// query round trips and 1 MiB block transfers next to bare TCP.
    Links(super::bench_links::Args),
    /// Query round trips through a relay's LAN gateway (raw socket,
    /// VXI-11, HiSLIP) to a serial simulator, next to the simulator direct.
    Gateway(super::bench_gateway::Args),
    /// Stream rate accuracy and jitter (100 Hz, 1 kHz, 10 kHz) vs a tokio
    /// interval, and samples/s to 10 subscribers vs a bare zmq proxy.
    Streams(super::bench_streams::Args),
    /// CURVE on vs off in the same run: RPC p50/p99 and bank upload and
    /// download throughput.
    Curve(super::bench_curve::Args),
    /// The web node: state publish -> WebSocket latency and fan-out to 50
    /// WebSockets, each next to bare zmq SUB sockets.
    Web(super::bench_web::Args),
    /// The bank on the Python client's path vs the Python bank and
    /// `dd conv=fsync`; the Rust uploader/downloader; the bank's peak RSS.
    Bank(super::bench_bank::Args),
    /// The broker's state bus, 1 publisher and 10 subscribers, vs a bare
    /// `zmq::proxy` (small, 1 kB and 64 kB messages).
    Bus(super::bench_bus::Args),
    /// A broker with 10 000 relays heart-beating: CPU, RSS, lookup and
    /// list latency and reply size.
    Directory(super::bench_directory::Args),
    /// RPC, bus, directory and bank in one run (under 5 minutes), one table.
    All(super::bench_all::Args),
    /// A blocking zmq ROUTER echo process (the CPU baseline of `bench rpc`).
    #[command(hide = true)]
    EchoServer {
        #[arg(long, default_value = "tcp://127.0.0.1:*")]
        bind: String,
    },
    /// Cascading brokers: RPC direct vs one and two gateway hops, bus
    /// through one broker vs a chain of three, bank download via gateways.
    Cascade(super::bench_cascade::Args),
}

pub async fn exec(a: Args, ctx: &zmq::Context) -> anyhow::Result<ExitCode> {
    match a {
        Args::Rpc { n } => rpc(ctx, usize::try_from(n)?).await?,
        Args::Curve(a) => super::bench_curve::exec(a).await?,
        Args::Soak {
            relays,
            hz,
            seconds,
        } => soak(ctx, usize::try_from(relays)?, hz, seconds).await?,
        Args::Abuse(a) => return super::bench_abuse::exec(a, ctx).await,
        Args::Links(a) => return super::bench_links::exec(a).await,
        Args::Gateway(a) => return super::bench_gateway::exec(a, ctx).await,
        Args::Streams(a) => return super::bench_streams::exec(a, ctx).await,
        Args::Web(a) => return super::bench_web::exec(a, ctx).await,
        Args::Bank(a) => return super::bench_bank::exec(a, ctx).await,
        Args::Bus(a) => return super::bench_bus::exec(a, ctx).await,
        Args::Directory(a) => return super::bench_directory::exec(a, ctx).await,
        Args::All(a) => return super::bench_all::exec(a, ctx).await,
        Args::EchoServer { bind } => {
            tokio::task::spawn_blocking(move || super::bench_rpc_cpu::echo_server(&bind)).await??
        }
        Args::Cascade(a) => return super::bench_cascade::exec(a, ctx).await,
    }
    Ok(ExitCode::SUCCESS)
}

/// Percentiles of a sample, in microseconds.
pub(super) struct Summary {
    pub(super) p50: f64,
    pub(super) p99: f64,
    pub(super) mean: f64,
}

pub(super) fn summarise(mut us: Vec<f64>) -> Summary {
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

pub(super) async fn mesh_calls(
    client: &Client,
    method: &str,
    n: usize,
) -> anyhow::Result<Vec<f64>> {
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

/// Rounds of the lease A/B (alternating, so drift on a noisy machine hits
/// both sides alike).
const LEASE_ROUNDS: usize = 10;

/// `method` called without a lease and with one held, alternating in
/// rounds: (no lease, lease held) round trips in microseconds.
async fn lease_ab(client: &Client, method: &str, n: usize) -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
    let per = (n / LEASE_ROUNDS).max(10);
    let (mut free, mut held) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for _ in 0..LEASE_ROUNDS {
        free.extend(mesh_calls(client, method, per).await?);
        let lease = client.lock("bench", Duration::from_secs(60)).await?;
        held.extend(mesh_calls(client, method, per).await?);
        lease.unlock().await?;
    }
    Ok((free, held))
}

async fn rpc(ctx: &zmq::Context, n: usize) -> anyhow::Result<()> {
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
    let (set_free, set_leased) = lease_ab(&client, "set_voltage", n).await?;
    let (get_free, get_leased) = lease_ab(&client, "get_state", n).await?;
    // lm.ping again, seconds after the start: the first row also holds
    // whatever the mesh does in its first second (registration, the
    // broker's probe, first state polls).
    let ping_late = mesh_calls(&client, "lm.ping", n).await?;
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
    let (set, get) = (summarise(set), summarise(get));
    let leased = [
        (summarise(set_free), summarise(set_leased), "set_voltage"),
        (summarise(get_free), summarise(get_leased), "get_state"),
    ];
    for (name, s) in [
        (
            "labmesh client -> relay lm.ping (no driver)",
            summarise(ping),
        ),
        ("labmesh client -> relay -> mock-psu set_voltage", set),
        ("labmesh client -> relay -> mock-psu get_state", get),
        ("lm.ping again, after the rows above", summarise(ping_late)),
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
    println!(
        "Leases: no lease vs a lease held (every call carries the token, the relay checks it), {LEASE_ROUNDS} alternating rounds of {} calls each",
        n / LEASE_ROUNDS
    );
    for (free, held, method) in leased {
        println!(
            "{:<44} {:>9.1} {:>9.1} {:>9.1} {:>9.2}x",
            format!("  {method}, no lease"),
            free.p50,
            free.p99,
            free.mean,
            free.p50 / raw.p50
        );
        println!(
            "{:<44} {:>9.1} {:>9.1} {:>9.1} {:>9.2}x",
            format!("  {method}, lease held"),
            held.p50,
            held.p99,
            held.mean,
            held.p50 / raw.p50
        );
        println!(
            "  {method}: lease held / no lease p50 = {:.2}x",
            held.p50 / free.p50
        );
    }
    let rows = super::bench_rpc_cpu::run(ctx, 3000, 2.0).await?;
    super::bench_all::print_table("rpc: CPU and concurrency", &rows);
    Ok(())
}

/// Rounds of the latency comparison in `bench all` (alternating).
const ROUNDS: usize = 5;

/// `bench all`'s RPC rows: `lm.ping` p50/p99 against the raw echo
/// (alternating rounds), then CPU per call and 8-client calls/s.
pub async fn rpc_rows(ctx: &zmq::Context, n: usize) -> anyhow::Result<Vec<super::bench_all::Row>> {
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
        ClientOptions::new(broker.rpc_endpoint(), broker.xpub_endpoint()).without_bus(),
    )
    .await?;
    client
        .wait_for_relay("bench", Duration::from_secs(10))
        .await?;
    let request = br#"{"type":"rpc","rpc_uuid":"0123456789abcdef0123456789abcdef","method":"lm.ping","params":null}"#;
    let per = (n / ROUNDS).max(10);
    let (mut raw, mut ping) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let ctx2 = ctx.clone();
        raw.extend(tokio::task::spawn_blocking(move || raw_echo(&ctx2, per, request)).await??);
        ping.extend(mesh_calls(&client, "lm.ping", per).await?);
    }
    client.close();
    relay.shutdown().await;
    broker.shutdown().await;
    let (raw, ping) = (summarise(raw), summarise(ping));
    println!(
        "rpc: lm.ping vs raw zmq echo of the same bytes, {ROUNDS} alternating rounds of {per}: p50 {:.1} / {:.1} us, p99 {:.1} / {:.1} us",
        ping.p50, raw.p50, ping.p99, raw.p99
    );
    let mut rows = vec![
        super::bench_all::Row::new(
            "rpc: lm.ping p50 vs raw zmq DEALER->ROUTER echo".into(),
            format!("{:.1} us", ping.p50),
            format!("{:.1} us", raw.p50),
            ping.p50 / raw.p50,
            "<= 1.1x",
        ),
        super::bench_all::Row::new(
            "rpc: lm.ping p99 vs raw zmq DEALER->ROUTER echo".into(),
            format!("{:.1} us", ping.p99),
            format!("{:.1} us", raw.p99),
            ping.p99 / raw.p99,
            "<= 1.5x",
        ),
    ];
    rows.extend(super::bench_rpc_cpu::run(ctx, n, 2.0).await?);
    Ok(rows)
}

/// CPU seconds (user + system) and RSS in KiB of process `pid` (Linux).
fn proc_usage(pid: u32) -> anyhow::Result<(f64, u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may contain spaces) start at ") ".
    let rest = stat.rsplit_once(") ").map(|(_, r)| r).unwrap_or_default();
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of /proc/pid/stat (11, 12 here).
    let cpu = (ticks(11) + ticks(12)) / 100.0;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    Ok((cpu, kib("VmRSS:"), kib("VmHWM:")))
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// `labmesh bench soak`: many relays publishing state through one broker
/// (a separate process, so its CPU and memory can be read) to one client
/// that counts sequence gaps.
async fn soak(ctx: &zmq::Context, relays: usize, hz: f64, seconds: u64) -> anyhow::Result<()> {
    let (p1, p2, p3) = (free_port()?, free_port()?, free_port()?);
    let dir = std::env::temp_dir().join(format!("labmesh-soak-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let cfg = dir.join("labmesh.toml");
    std::fs::write(
        &cfg,
        format!(
            "[broker]\nrpc_bind = \"tcp://127.0.0.1:{p1}\"\nxsub_bind = \"tcp://127.0.0.1:{p2}\"\nxpub_bind = \"tcp://127.0.0.1:{p3}\"\n"
        ),
    )?;
    let mut broker = tokio::process::Command::new(std::env::current_exe()?)
        .arg("--config")
        .arg(&cfg)
        .arg("broker")
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let pid = broker
        .id()
        .ok_or_else(|| anyhow::anyhow!("broker exited at once"))?;
    let rpc = format!("tcp://127.0.0.1:{p1}");
    let xsub = format!("tcp://127.0.0.1:{p2}");
    let xpub = format!("tcp://127.0.0.1:{p3}");

    let client = Client::connect(ctx, ClientOptions::new(&rpc, &xpub)).await?;
    let interval = Duration::from_secs_f64(1.0 / hz);
    let ids: Vec<String> = (0..relays).map(|i| format!("soak-{i:03}")).collect();
    let hosted = ids
        .iter()
        .map(|id| labmesh_relay::Hosted::new(id, Box::new(MockPsu::new(id))).poll_every(interval))
        .collect();
    let relay = labmesh_relay::spawn(
        ctx,
        labmesh_relay::RelayOptions::with_broker(&rpc, &xsub),
        hosted,
    )
    .await?;
    for id in &ids {
        client.wait_for_relay(id, Duration::from_secs(30)).await?;
    }
    // Count from the first message of each relay on (the subscription needs
    // a moment to reach the publishers).
    let mut events = client.events();
    let warmup = tokio::time::Instant::now() + Duration::from_secs(2);
    while tokio::time::Instant::now() < warmup {
        let _ = tokio::time::timeout_at(warmup, events.recv()).await;
    }
    let gaps0: u64 = ids
        .iter()
        .filter_map(|id| client.state_health(id))
        .map(|h| h.gaps)
        .sum();
    let (cpu0, rss0, _) = proc_usage(pid)?;
    let t0 = std::time::Instant::now();
    let mut received = 0u64;
    let mut lagged = 0u64;
    let end = tokio::time::Instant::now() + Duration::from_secs(seconds);
    let mut next_report = t0 + Duration::from_secs(60);
    loop {
        match tokio::time::timeout_at(end, events.recv()).await {
            Err(_) => break,
            Ok(Ok(labmesh_client::Event::State(_))) => received += 1,
            Ok(Ok(_)) => {}
            Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(n))) => lagged += n,
            Ok(Err(_)) => break,
        }
        if std::time::Instant::now() >= next_report {
            next_report += Duration::from_secs(60);
            let (cpu, rss, _) = proc_usage(pid)?;
            eprintln!(
                "{:>5.0} s: {received} states, broker CPU {:.1} %, RSS {} KiB",
                t0.elapsed().as_secs_f64(),
                100.0 * (cpu - cpu0) / t0.elapsed().as_secs_f64(),
                rss
            );
        }
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let (cpu1, rss1, hwm) = proc_usage(pid)?;
    let gaps: u64 = ids
        .iter()
        .filter_map(|id| client.state_health(id))
        .map(|h| h.gaps)
        .sum::<u64>()
        - gaps0;
    relay.shutdown().await;
    let _ = broker.kill().await;
    let _ = std::fs::remove_dir_all(&dir);

    println!("soak: {relays} relays x {hz} Hz through one broker for {elapsed:.0} s");
    println!(
        "  state messages received   {received} ({:.0}/s; offered {:.0}/s)",
        received as f64 / elapsed,
        relays as f64 * hz
    );
    println!("  sequence gaps at client   {gaps}");
    println!("  client queue overruns     {lagged}");
    println!(
        "  broker CPU                {:.1} % of one core",
        100.0 * (cpu1 - cpu0) / elapsed
    );
    println!("  broker RSS                {rss0} KiB at start, {rss1} KiB at end, peak {hwm} KiB");
    Ok(())
}
