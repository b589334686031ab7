//! `labmesh bench bus`: one publisher, ten subscribers through the broker's
//! state bus, next to a bare `zmq::proxy` (XSUB/XPUB with the same
//! high-water marks) in the same run, alternating.
//!
//! The publisher runs at most `window` messages ahead of the slowest
//! subscriber, so every queue on the way stays below its high-water mark:
//! the figure is throughput without loss, and loss is counted (it must be
//! zero). Publisher and subscribers are plain zmq sockets on their own
//! threads and their own contexts, so the two rows differ only in what sits
//! in the middle.

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::bench_all::{median, Row};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Runs of each measurement; medians are printed (1..=20).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=20))]
    runs: u64,
}

pub async fn exec(a: Args, ctx: &zmq::Context) -> anyhow::Result<ExitCode> {
    let mut sizes = Sizes::quick();
    sizes.runs = usize::try_from(a.runs)?;
    let rows = run(ctx, sizes).await?;
    super::bench_all::print_table("bus", &rows);
    Ok(ExitCode::SUCCESS)
}

/// What to measure: (body bytes, messages) pairs and runs of each.
pub struct Sizes {
    cases: Vec<(usize, usize)>,
    runs: usize,
}

impl Sizes {
    /// Small state messages, 1 kB and 64 kB; about 1 s per measurement.
    pub fn quick() -> Sizes {
        Sizes {
            cases: vec![(STATE.len(), 200_000), (1000, 50_000), (64_000, 2_000)],
            runs: 3,
        }
    }
}

/// A state body of the size the mock PSU publishes.
const STATE: &[u8] = br#"{"relay_id":"psu-1","seq":123456,"ts":1764650000.123,"state":{"voltage":2.5,"current":0.1,"output":true}}"#;
const SUBSCRIBERS: usize = 10;
const TOPIC: &[u8] = b"state.bench";

struct Measure {
    secs: f64,
    received: u64,
    expected: u64,
}

/// The bare baseline: XSUB/XPUB through `zmq::proxy_steerable` on a thread
/// of its own, options as the broker sets them.
struct BareProxy {
    xsub: String,
    xpub: String,
    ctl: zmq::Socket,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl BareProxy {
    fn start(hwm: i32, max_msg: i64) -> anyhow::Result<BareProxy> {
        let ctx = zmq::Context::new();
        let xsub = ctx.socket(zmq::XSUB)?;
        xsub.set_sndhwm(hwm)?;
        xsub.set_rcvhwm(hwm)?;
        xsub.set_linger(0)?;
        xsub.set_maxmsgsize(max_msg)?;
        xsub.bind("tcp://127.0.0.1:*")?;
        let xpub = ctx.socket(zmq::XPUB)?;
        xpub.set_sndhwm(hwm)?;
        xpub.set_rcvhwm(hwm)?;
        xpub.set_linger(0)?;
        xpub.set_xpub_verbose(true)?;
        xpub.bind("tcp://127.0.0.1:*")?;
        let ep = |s: &zmq::Socket| -> anyhow::Result<String> {
            s.get_last_endpoint()?
                .map_err(|_| anyhow::anyhow!("endpoint not UTF-8"))
        };
        let (xsub_ep, xpub_ep) = (ep(&xsub)?, ep(&xpub)?);
        let ctl = ctx.socket(zmq::PAIR)?;
        ctl.bind("inproc://bench-bus-ctl")?;
        let peer = ctx.socket(zmq::PAIR)?;
        peer.connect("inproc://bench-bus-ctl")?;
        let thread = std::thread::spawn(move || {
            let (mut xsub, mut xpub, mut peer) = (xsub, xpub, peer);
            let _ = zmq::proxy_steerable(&mut xsub, &mut xpub, &mut peer);
        });
        Ok(BareProxy {
            xsub: xsub_ep,
            xpub: xpub_ep,
            ctl,
            thread: Some(thread),
        })
    }
}

impl Drop for BareProxy {
    fn drop(&mut self) {
        let _ = self.ctl.send("TERMINATE", 0);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One measurement: `n` messages of `size` bytes from one PUB to ten SUBs.
fn measure(xsub: &str, xpub: &str, size: usize, n: u64, window: u64) -> anyhow::Result<Measure> {
    let counts: Arc<Vec<AtomicU64>> =
        Arc::new((0..SUBSCRIBERS).map(|_| AtomicU64::new(0)).collect());
    let ready: Arc<Vec<AtomicBool>> =
        Arc::new((0..SUBSCRIBERS).map(|_| AtomicBool::new(false)).collect());
    let done_at: Arc<std::sync::Mutex<Vec<Instant>>> = Arc::default();
    let sub_ctx = zmq::Context::new();
    let mut subs = Vec::new();
    for i in 0..SUBSCRIBERS {
        let s = sub_ctx.socket(zmq::SUB)?;
        s.set_rcvhwm(1000)?;
        s.set_linger(0)?;
        s.set_subscribe(b"state.")?;
        s.connect(xpub)?;
        let (counts, ready, done_at) = (counts.clone(), ready.clone(), done_at.clone());
        subs.push(std::thread::spawn(move || -> anyhow::Result<()> {
            let mut got = 0u64;
            let mut last_rx = Instant::now();
            loop {
                // Idle for 2 s: whatever did not arrive by then is lost (the
                // rate is taken at the last message received, not here).
                if s.poll(zmq::POLLIN, 2000)? == 0 {
                    break;
                }
                let msg = s.recv_multipart(0)?;
                match msg.get(1).and_then(|b| b.first()) {
                    Some(b'P') => {
                        if let Some(r) = ready.get(i) {
                            r.store(true, Ordering::Release);
                        }
                    }
                    Some(_) => {
                        got += 1;
                        last_rx = Instant::now();
                        if let Some(c) = counts.get(i) {
                            c.store(got, Ordering::Release);
                        }
                        if got == n {
                            break;
                        }
                    }
                    None => {}
                }
            }
            if let Ok(mut d) = done_at.lock() {
                d.push(last_rx);
            }
            Ok(())
        }));
    }
    let pub_ctx = zmq::Context::new();
    let publisher = pub_ctx.socket(zmq::PUB)?;
    publisher.set_sndhwm(1000)?;
    publisher.set_linger(0)?;
    publisher.connect(xsub)?;
    // Probes until every subscriber's subscription has reached the publisher.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ready.iter().all(|r| r.load(Ordering::Acquire)) {
        anyhow::ensure!(
            Instant::now() < deadline,
            "subscribers not connected in 10 s"
        );
        publisher.send_multipart([TOPIC, b"P".as_slice()], 0)?;
        std::thread::sleep(Duration::from_millis(2));
    }
    let mut body = vec![b'D'; size];
    let t0 = Instant::now();
    let mut stalled_since: Option<Instant> = None;
    let mut sent = 0u64;
    while sent < n {
        let slowest = counts
            .iter()
            .map(|c| c.load(Ordering::Acquire))
            .min()
            .unwrap_or(0);
        if sent - slowest >= window {
            // Loss would stall the window for good: give up after 2 s.
            let since = *stalled_since.get_or_insert_with(Instant::now);
            if since.elapsed() > Duration::from_secs(2) {
                break;
            }
            std::thread::yield_now();
            continue;
        }
        stalled_since = None;
        if let Some(b) = body.get_mut(1..9) {
            b.copy_from_slice(&sent.to_le_bytes());
        }
        publisher.send(TOPIC, zmq::SNDMORE)?;
        publisher.send(&body[..], 0)?;
        sent += 1;
    }
    for s in subs {
        s.join()
            .map_err(|_| anyhow::anyhow!("subscriber panicked"))??;
    }
    let last = done_at
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
        .iter()
        .max()
        .copied()
        .unwrap_or_else(Instant::now);
    let received: u64 = counts.iter().map(|c| c.load(Ordering::Acquire)).sum();
    Ok(Measure {
        secs: last.duration_since(t0).as_secs_f64(),
        received,
        expected: n * SUBSCRIBERS as u64,
    })
}

/// The bench; rows for the summary table.
pub async fn run(ctx: &zmq::Context, sizes: Sizes) -> anyhow::Result<Vec<Row>> {
    let opts = labmesh_broker::BrokerOptions::loopback();
    let hwm = opts.bus_hwm();
    let max_msg = i64::try_from(opts.bus_max_msg).unwrap_or(i64::MAX);
    let broker = labmesh_broker::spawn(ctx, opts).await?;
    let bare = BareProxy::start(hwm, max_msg)?;
    // A quarter of the high-water mark: libzmq tells a writer about reads
    // in batches of half the mark, so a window of half the mark can still
    // look full to the pipe and drop a few messages.
    let window = u64::try_from(hwm / 4).unwrap_or(250).max(1);
    let (bx, bp) = (
        broker.xsub_endpoint().to_string(),
        broker.xpub_endpoint().to_string(),
    );
    let (rx, rp) = (bare.xsub.clone(), bare.xpub.clone());
    let runs = sizes.runs;
    let cases = sizes.cases.clone();
    let results = tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<_>> {
        let mut out = Vec::new();
        for (size, n) in cases {
            let (mut b, mut r) = (Vec::new(), Vec::new());
            let mut lost = (0u64, 0u64);
            for _ in 0..runs {
                let m = measure(&bx, &bp, size, n as u64, window)?;
                lost.0 += m.expected - m.received;
                b.push(m.received as f64 / m.secs);
                let m = measure(&rx, &rp, size, n as u64, window)?;
                lost.1 += m.expected - m.received;
                r.push(m.received as f64 / m.secs);
            }
            out.push((size, n, b, r, lost));
        }
        Ok(out)
    })
    .await??;
    drop(bare);
    broker.shutdown().await;

    println!(
        "bus: 1 PUB -> proxy -> {SUBSCRIBERS} SUB, publisher at most {window} messages ahead of the slowest subscriber (HWM {hwm}); {runs} runs, alternating; received messages/s, all subscribers together"
    );
    let mut rows = Vec::new();
    for (size, n, b, r, lost) in results {
        let (bm, rm) = (median(&b), median(&r));
        println!(
            "  {size:>6} B x {n:>7}: broker {bm:>11.0}/s ({:>7.1} MB/s) lost {}   bare zmq::proxy {rm:>11.0}/s ({:>7.1} MB/s) lost {}   ratio {:.2}x   runs broker {:.0?} bare {:.0?}",
            bm * size as f64 / 1e6,
            lost.0,
            rm * size as f64 / 1e6,
            lost.1,
            bm / rm,
            b,
            r
        );
        let (project, baseline) = if size >= 1000 {
            (
                format!("{:.0} MB/s", bm * size as f64 / 1e6),
                format!("{:.0} MB/s", rm * size as f64 / 1e6),
            )
        } else {
            (
                format!("{:.2} M/s", bm / 1e6),
                format!("{:.2} M/s", rm / 1e6),
            )
        };
        rows.push(Row::new(
            format!(
                "bus: {size} B messages, 1 pub -> broker -> 10 subs (lost {})",
                lost.0
            ),
            project,
            baseline,
            bm / rm,
            ">= 0.9x",
        ));
        if size < 1000 {
            rows.push(Row::new(
                format!("bus: {size} B messages received/s, all 10 subscribers"),
                format!("{:.2} M/s", bm / 1e6),
                "1 M/s".to_string(),
                bm / 1e6,
                ">= 1.0x",
            ));
        }
    }
    Ok(rows)
}
