//! `labmesh bench web`: the web node's live path. Latency from a state
//! publish to the WebSocket message at a client (next to a bare zmq SUB on
//! the same bus, same messages, same run), and messages/s fanned out to 50
//! WebSocket clients (next to 50 bare SUB sockets in the same run).

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::StreamExt;
use labmesh_client::{Client, ClientOptions};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// State updates for the latency measurement.
    #[arg(long, default_value_t = 1000)]
    n: u64,
    /// WebSocket clients for the fan-out measurement.
    #[arg(long, default_value_t = 50)]
    clients: usize,
    /// Messages published for the fan-out measurement.
    #[arg(long, default_value_t = 5000)]
    messages: u64,
    /// Also measure publish -> DOM in a headless Chromium (needs chromium
    /// and chromedriver), with `--clients` readers and one slow reader.
    #[arg(long)]
    dom: bool,
    /// Only the DOM measurement (implies --dom).
    #[arg(long)]
    dom_only: bool,
    /// State updates for the DOM measurement.
    #[arg(long, default_value_t = 1000)]
    dom_n: u64,
    /// Time between DOM-measurement updates, ms (each is in the DOM before
    /// the next).
    #[arg(long, default_value_t = 20)]
    dom_pace_ms: u64,
    /// The Chromium binary.
    #[arg(long, default_value = "/usr/bin/chromium")]
    chromium: std::path::PathBuf,
    /// The chromedriver binary.
    #[arg(long, default_value = "/usr/bin/chromedriver")]
    chromedriver: std::path::PathBuf,
}

#[path = "bench_web_dom.rs"]
mod dom;

fn state(seq: u64) -> Vec<u8> {
    json!({"relay_id": "bench", "state": {"voltage": (seq % 30) as f64, "current": 0.1},
           "seq": seq, "ts": 0.0, "interval": 1.0})
    .to_string()
    .into_bytes()
}

fn seq_of(body: &[u8]) -> Option<u64> {
    serde_json::from_slice::<Value>(body).ok()?["seq"].as_u64()
}

pub(super) fn pct(v: &mut [f64], q: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    let i = ((v.len() as f64 - 1.0) * q).round() as usize;
    v.get(i).copied().unwrap_or(f64::NAN)
}

struct Bench {
    broker: labmesh_broker::BrokerHandle,
    web: labmesh_web::WebHandle,
    publisher: zmq::Socket,
    ws_url: String,
}

async fn setup(ctx: &zmq::Context) -> anyhow::Result<Bench> {
    let broker = labmesh_broker::spawn(ctx, labmesh_broker::BrokerOptions::loopback()).await?;
    let client = Client::connect(
        ctx,
        ClientOptions::new(broker.rpc_endpoint(), broker.xpub_endpoint()),
    )
    .await?;
    let web = labmesh_web::spawn(
        client,
        labmesh_web::WebOptions {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            ws_queue_bytes: 4 << 20,
            ..Default::default()
        },
    )
    .await?;
    let publisher = ctx.socket(zmq::PUB)?;
    publisher.set_sndhwm(100_000)?;
    publisher.connect(broker.xsub_endpoint())?;
    let ws_url = format!("ws://{}/ws", web.addr());
    Ok(Bench {
        broker,
        web,
        publisher,
        ws_url,
    })
}

fn publish(p: &zmq::Socket, seq: u64) -> anyhow::Result<()> {
    p.send_multipart([b"state.bench".to_vec(), state(seq)], 0)?;
    Ok(())
}

/// A bare SUB on the bus (thread): (seq, arrival) for each state.
fn bare_sub(
    ctx: &zmq::Context,
    xpub: &str,
    stop: Arc<AtomicU64>,
) -> anyhow::Result<std::thread::JoinHandle<Vec<(u64, Instant)>>> {
    let s = ctx.socket(zmq::SUB)?;
    s.set_rcvhwm(100_000)?;
    s.set_subscribe(b"state.bench")?;
    s.set_rcvtimeo(50)?;
    s.connect(xpub)?;
    Ok(std::thread::spawn(move || {
        let mut got = Vec::new();
        while stop.load(Ordering::Relaxed) == 0 {
            if let Ok(f) = s.recv_multipart(0) {
                if let Some(seq) = f.get(1).and_then(|b| seq_of(b)) {
                    got.push((seq, Instant::now()));
                }
            }
        }
        got
    }))
}

type WsRx = futures::stream::SplitStream<
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
>;

/// The seq of the next state message on the WebSocket.
async fn next_seq(rx: &mut WsRx) -> Option<u64> {
    while let Some(m) = rx.next().await {
        if let Ok(Message::Text(t)) = m {
            if t.as_str().contains("\"type\":\"state\"") {
                return seq_of(t.as_bytes());
            }
        }
    }
    None
}

async fn latency(ctx: &zmq::Context, n: u64) -> anyhow::Result<()> {
    let b = setup(ctx).await?;
    // Baseline: a second mesh client in this process (what the web node's
    // own client sees, without the HTTP/WebSocket hop).
    let other = Client::connect(
        ctx,
        ClientOptions::new(b.broker.rpc_endpoint(), b.broker.xpub_endpoint()),
    )
    .await?;
    let mut events = other.events();
    let bus = tokio::spawn(async move {
        let mut got = Vec::new();
        while let Ok(ev) = events.recv().await {
            if let labmesh_client::Event::State(s) = ev {
                let done = s.seq == Some(u64::MAX);
                if let Some(seq) = s.seq {
                    got.push((seq, Instant::now()));
                }
                if done {
                    break;
                }
            }
        }
        got
    });
    let (ws, _) = tokio_tungstenite::connect_async(b.ws_url.as_str()).await?;
    let (_tx, mut rx) = ws.split();
    // Subscriptions propagate asynchronously: publish until one arrives.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut warm = 1_000_000_000u64;
    loop {
        publish(&b.publisher, warm)?;
        warm += 1;
        if tokio::time::timeout(Duration::from_millis(100), next_seq(&mut rx))
            .await
            .is_ok_and(|s| s.is_some())
        {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "web node never forwarded a state"
        );
    }
    let mut sent = Vec::with_capacity(n as usize);
    let mut ws_us = Vec::with_capacity(n as usize);
    for seq in 1..=n {
        let t0 = Instant::now();
        publish(&b.publisher, seq)?;
        sent.push((seq, t0));
        loop {
            let got = tokio::time::timeout(Duration::from_secs(5), next_seq(&mut rx))
                .await
                .ok()
                .flatten()
                .with_context(|| format!("state {seq} never reached the WebSocket"))?;
            if got == seq {
                ws_us.push(t0.elapsed().as_secs_f64() * 1e6);
                break;
            }
        }
    }
    publish(&b.publisher, u64::MAX)?;
    let arrivals: std::collections::HashMap<u64, Instant> =
        tokio::time::timeout(Duration::from_secs(10), bus)
            .await
            .ok()
            .and_then(|r| r.ok())
            .unwrap_or_default()
            .into_iter()
            .collect();
    let mut bus_us: Vec<f64> = sent
        .iter()
        .filter_map(|(s, t0)| {
            arrivals
                .get(s)
                .map(|t| t.duration_since(*t0).as_secs_f64() * 1e6)
        })
        .collect();
    println!(
        "state publish -> WebSocket message ({n} updates, one at a time): p50 {:.0} us  p99 {:.0} us",
        pct(&mut ws_us, 0.5),
        pct(&mut ws_us, 0.99)
    );
    println!(
        "baseline: same publish -> a second mesh client's event queue ({} seen): p50 {:.0} us  p99 {:.0} us",
        bus_us.len(),
        pct(&mut bus_us, 0.5),
        pct(&mut bus_us, 0.99)
    );
    b.web.shutdown().await;
    b.broker.shutdown().await;
    Ok(())
}

async fn fanout(ctx: &zmq::Context, clients: usize, messages: u64) -> anyhow::Result<()> {
    let b = setup(ctx).await?;
    // Baseline: `clients` bare SUB sockets on one thread.
    let stop = Arc::new(AtomicU64::new(0));
    let subs: Vec<_> = (0..clients)
        .map(|_| bare_sub(ctx, b.broker.xpub_endpoint(), stop.clone()))
        .collect::<Result<_, _>>()?;
    let t_bus = run_publisher(&b, 0, messages).await?;
    stop.store(1, Ordering::Relaxed);
    let mut bus_total = 0u64;
    let mut last = None::<Instant>;
    for s in subs {
        let got = s.join().unwrap_or_default();
        let got: Vec<_> = got
            .into_iter()
            .filter(|(s, _)| (1..=messages).contains(s))
            .collect();
        bus_total += got.len() as u64;
        for (_, t) in &got {
            last = Some(last.map_or(*t, |l: Instant| l.max(*t)));
        }
    }
    let bus_secs = match last {
        Some(l) => l.duration_since(t_bus).as_secs_f64().max(1e-6),
        None => f64::NAN,
    };

    // The web node: `clients` WebSockets.
    let counts: Vec<Arc<AtomicU64>> = (0..clients).map(|_| Arc::new(AtomicU64::new(0))).collect();
    let firsts = Arc::new(std::sync::Mutex::new((None::<Instant>, None::<Instant>)));
    for c in &counts {
        let (ws, _) = tokio_tungstenite::connect_async(b.ws_url.as_str()).await?;
        let c = c.clone();
        let fl = firsts.clone();
        tokio::spawn(async move {
            let (_tx, mut rx) = ws.split();
            while let Some(Ok(m)) = rx.next().await {
                if let Message::Text(t) = m {
                    if let Some(seq) = seq_of(t.as_bytes()) {
                        if (PHASE2..PHASE2 + 1_000_000_000).contains(&seq) {
                            c.fetch_add(1, Ordering::Relaxed);
                            let now = Instant::now();
                            if let Ok(mut g) = fl.lock() {
                                g.0 = Some(g.0.map_or(now, |f| f.min(now)));
                                g.1 = Some(now);
                            }
                        }
                    }
                }
            }
        });
    }
    let t_ws = run_publisher(&b, PHASE2, messages).await?;
    // Let the queues drain: wait until the counts stop moving.
    let mut prev = u64::MAX;
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now: u64 = counts.iter().map(|c| c.load(Ordering::Relaxed)).sum();
        if now == prev {
            break;
        }
        prev = now;
    }
    let ws_total: u64 = counts.iter().map(|c| c.load(Ordering::Relaxed)).sum();
    let (_, l) = firsts.lock().map(|g| *g).unwrap_or((None, None));
    let ws_secs = match l {
        Some(l) => l.duration_since(t_ws).as_secs_f64().max(1e-6),
        None => f64::NAN,
    };
    let dropped: u64 = b.web.connections().iter().map(|c| c.dropped).sum();
    let expected = messages * clients as u64;
    println!(
        "fan-out to {clients} WebSockets: {:.0} messages/s delivered (sum over clients, from the first publish) ({ws_total} of {expected}, {dropped} dropped by the web node's queues)",
        ws_total as f64 / ws_secs
    );
    println!(
        "baseline: {clients} bare zmq SUB sockets on the bus: {:.0} messages/s delivered ({bus_total} of {expected})",
        bus_total as f64 / bus_secs
    );
    b.web.shutdown().await;
    b.broker.shutdown().await;
    Ok(())
}

/// Seqs of the WebSocket phase start here (the web node's client also saw
/// the baseline phase; its leftovers are not counted).
const PHASE2: u64 = 10_000_000;

/// Warm the path up (receivers ignore warm-up seqs), then publish
/// `messages` states (seqs `base+1..`) at full speed. Returns when
/// publishing started.
async fn run_publisher(b: &Bench, base: u64, messages: u64) -> anyhow::Result<Instant> {
    // Subscriptions travel XPUB -> XSUB -> PUB asynchronously; give them a
    // bounded head start by publishing warm-up messages for 300 ms.
    let warm_until = Instant::now() + Duration::from_millis(300);
    let mut warm = 1_000_000_000u64;
    while Instant::now() < warm_until {
        publish(&b.publisher, warm)?;
        warm += 1;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let t0 = Instant::now();
    for seq in base + 1..=base + messages {
        publish(&b.publisher, seq)?;
        if seq % 200 == 0 {
            tokio::task::yield_now().await;
        }
    }
    Ok(t0)
}

pub async fn exec(a: Args, ctx: &zmq::Context) -> anyhow::Result<ExitCode> {
    if !a.dom_only {
        latency(ctx, a.n).await?;
        fanout(ctx, a.clients, a.messages).await?;
    }
    if a.dom || a.dom_only {
        dom::run(
            ctx,
            dom::DomArgs {
                n: a.dom_n,
                clients: a.clients,
                pace: Duration::from_millis(a.dom_pace_ms.max(1)),
                chromium: &a.chromium,
                chromedriver: &a.chromedriver,
            },
        )
        .await?;
    }
    Ok(ExitCode::SUCCESS)
}
