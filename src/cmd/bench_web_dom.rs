//! `labmesh bench web --dom`: what a person sees. Time from a state
//! publish on the bus to the value in the instrument page's DOM, in a real
//! headless Chromium (WebDriver via chromedriver), while `clients` other
//! WebSocket clients read along and one never reads. Baseline in the same
//! run, same browser, same clock: a bare WebSocket server writing the same
//! number straight to a page that puts it in the DOM (no bus, no web node,
//! no JSON, no table).
//!
//! Both sides take wall-clock times on this machine (the page's
//! `performance.timeOrigin + performance.now()`, the bench's
//! `SystemTime`), so a latency is one subtraction; updates are paced so
//! that each one is in the DOM before the next is published.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use fantoccini::{Client as Browser, ClientBuilder, Locator};
use futures::{SinkExt, StreamExt};
use labmesh_client::{Client, ClientOptions};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use super::pct;

/// What `--dom` needs.
pub struct DomArgs<'a> {
    pub n: u64,
    pub clients: usize,
    pub pace: Duration,
    pub chromium: &'a Path,
    pub chromedriver: &'a Path,
}

fn wall_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64() * 1e3)
        .unwrap_or(0.0)
}

async fn chromedriver(path: &Path) -> anyhow::Result<(tokio::process::Child, u16)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let child = tokio::process::Command::new(path)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", path.display()))?;
    let deadline = Instant::now() + Duration::from_secs(15);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        anyhow::ensure!(Instant::now() < deadline, "chromedriver did not listen");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok((child, port))
}

async fn browser(port: u16, chromium: &Path, profile: &Path) -> anyhow::Result<Browser> {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": chromium.display().to_string(),
            "args": ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                     "--disable-background-networking", "--disable-dev-shm-usage",
                     "--disable-background-timer-throttling", "--disable-renderer-backgrounding",
                     format!("--user-data-dir={}", profile.display())],
        }),
    );
    Ok(
        ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await?,
    )
}

/// Record, in the page, when `selector`'s text becomes each number.
const OBSERVE: &str = r#"
const [sel, done] = arguments;
const el = document.querySelector(sel);
window.__seen = [];
const root = el.closest('table') || el.parentNode;
new MutationObserver(() => {
  const t = performance.timeOrigin + performance.now();
  const e = document.querySelector(sel);
  const v = e ? Number(e.textContent) : NaN;
  const s = window.__seen;
  if (isFinite(v) && (!s.length || s[s.length - 1][0] !== v)) s.push([v, t]);
}).observe(root, { childList: true, subtree: true, characterData: true });
done(true);
"#;

/// The bare baseline page: a WebSocket that writes each number into a div.
const BARE: &str = r#"
const [url, done] = arguments;
document.body.innerHTML = '<div id="v"></div>';
window.__seen = [];
const el = document.getElementById('v');
new MutationObserver(() => {
  window.__seen.push([Number(el.textContent), performance.timeOrigin + performance.now()]);
}).observe(el, { childList: true, subtree: true, characterData: true });
const ws = new WebSocket(url);
ws.onmessage = (ev) => { el.textContent = ev.data; };
ws.onopen = () => done(true);
ws.onerror = () => done(false);
"#;

async fn seen(b: &Browser) -> anyhow::Result<Vec<(u64, f64)>> {
    let v = b.execute("return window.__seen;", vec![]).await?;
    Ok(v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|p| Some((p.get(0)?.as_f64()? as u64, p.get(1)?.as_f64()?)))
                .collect()
        })
        .unwrap_or_default())
}

/// Wait until the page recorded `value`.
async fn until_seen(b: &Browser, value: u64) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if seen(b).await?.iter().any(|(v, _)| *v == value) {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{value} never reached the page's DOM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn latencies(sent: &[(u64, f64)], seen: &[(u64, f64)]) -> Vec<f64> {
    let at: std::collections::HashMap<u64, f64> = seen.iter().copied().collect();
    sent.iter()
        .filter_map(|(v, t0)| at.get(v).map(|t| t - t0))
        .collect()
}

pub async fn run(ctx: &zmq::Context, a: DomArgs<'_>) -> anyhow::Result<()> {
    if !a.chromium.exists() || !a.chromedriver.exists() {
        anyhow::bail!(
            "--dom needs {} and {} (apt-get install chromium chromium-driver)",
            a.chromium.display(),
            a.chromedriver.display()
        );
    }
    // A mesh: broker, a relay with a mock supply (its own polls rare, so
    // the page shows only the bench's states), the web node.
    let broker = labmesh_broker::spawn(ctx, labmesh_broker::BrokerOptions::loopback()).await?;
    let relay = labmesh_relay::spawn(
        ctx,
        labmesh_relay::RelayOptions::with_broker(broker.rpc_endpoint(), broker.xsub_endpoint()),
        vec![labmesh_relay::Hosted::new(
            "bench-psu",
            Box::new(labmesh_drivers::mock_psu::MockPsu::new("bench-psu")),
        )
        .poll_every(Duration::from_secs(3600))],
    )
    .await?;
    let client = Client::connect(
        ctx,
        ClientOptions::new(broker.rpc_endpoint(), broker.xpub_endpoint()),
    )
    .await?;
    let web = labmesh_web::spawn(
        client,
        labmesh_web::WebOptions {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            // The slow reader below: small kernel buffers, so its queue
            // fills and drops instead of hiding in the socket.
            socket_send_buffer: Some(16 * 1024),
            ..Default::default()
        },
    )
    .await?;
    let publisher = ctx.socket(zmq::PUB)?;
    publisher.connect(broker.xsub_endpoint())?;
    let ws_url = format!("ws://{}/ws", web.addr());

    // `clients` readers and one that never reads.
    let mut readers = Vec::new();
    for _ in 0..a.clients {
        let (ws, _) = tokio_tungstenite::connect_async(ws_url.as_str()).await?;
        readers.push(tokio::spawn(async move {
            let (_tx, mut rx) = ws.split();
            let mut n = 0u64;
            while let Some(Ok(_)) = rx.next().await {
                n += 1;
            }
            n
        }));
    }
    let slow = {
        let sock = tokio::net::TcpSocket::new_v4()?;
        let _ = sock.set_recv_buffer_size(4096);
        let tcp = sock.connect(web.addr()).await?;
        let (ws, _) = tokio_tungstenite::client_async(ws_url.as_str(), tcp).await?;
        ws // held, never read
    };

    let (_driver, port) = chromedriver(a.chromedriver).await?;
    let profile = tempfile_dir()?;
    let b = browser(port, a.chromium, profile.path()).await?;
    let out = measure(&a, &b, &publisher, &web).await;
    let _ = b.close().await;
    drop(slow);
    for r in readers {
        r.abort();
    }
    web.shutdown().await;
    relay.shutdown().await;
    broker.shutdown().await;
    let _ = std::fs::remove_dir_all(profile.path());
    out
}

struct TempDir(std::path::PathBuf);
impl TempDir {
    fn path(&self) -> &Path {
        &self.0
    }
}
fn tempfile_dir() -> anyhow::Result<TempDir> {
    let p = std::env::temp_dir().join(format!("labmesh-bench-dom-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&p)?;
    Ok(TempDir(p))
}

async fn measure(
    a: &DomArgs<'_>,
    b: &Browser,
    publisher: &zmq::Socket,
    web: &labmesh_web::WebHandle,
) -> anyhow::Result<()> {
    let state = |v: u64| {
        json!({"relay_id": "bench-psu", "state": {"voltage": v, "current": 0.0, "output": true},
               "seq": v, "ts": wall_ms() / 1e3, "interval": 3600.0})
        .to_string()
    };
    let publish = |v: u64| -> anyhow::Result<f64> {
        let t = wall_ms();
        publisher.send_multipart([b"state.bench-psu".to_vec(), state(v).into_bytes()], 0)?;
        Ok(t)
    };
    b.goto(&format!("http://{}/#/relay/bench-psu", web.addr()))
        .await?;
    let cell = "td[data-field='voltage']";
    b.wait()
        .at_most(Duration::from_secs(15))
        .for_element(Locator::Css("#state"))
        .await?;
    // Until the subscription is through, publish warm-up values: the
    // first one to arrive makes the state table.
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut warm = 1_000_000u64;
    while b.find(Locator::Css(cell)).await.is_err() {
        publish(warm)?;
        warm += 1;
        anyhow::ensure!(Instant::now() < deadline, "the page never showed a state");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    b.execute_async(OBSERVE, vec![json!(cell)]).await?;
    loop {
        publish(warm)?;
        if tokio::time::timeout(Duration::from_millis(300), until_seen(b, warm))
            .await
            .is_ok_and(|r| r.is_ok())
        {
            break;
        }
        warm += 1;
        anyhow::ensure!(Instant::now() < deadline, "the page never showed a state");
    }
    let mut sent = Vec::with_capacity(a.n as usize);
    let mut tick = tokio::time::interval(a.pace);
    for v in 1..=a.n {
        tick.tick().await;
        sent.push((v, publish(v)?));
    }
    until_seen(b, a.n).await?;
    let mut lab = latencies(&sent, &seen(b).await?);
    let dropped: u64 = web.connections().iter().map(|c| c.dropped).sum();

    // Baseline: a bare WebSocket server -> the same browser -> a div.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let bare_url = format!("ws://{}/", listener.local_addr()?);
    let (tx, mut rx) = tokio::sync::mpsc::channel::<u64>(16);
    let (times_tx, times_rx) = tokio::sync::oneshot::channel::<Vec<(u64, f64)>>();
    let server = tokio::spawn(async move {
        let Ok((tcp, _)) = listener.accept().await else {
            return;
        };
        let _ = tcp.set_nodelay(true);
        let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
            return;
        };
        let mut times = Vec::new();
        while let Some(v) = rx.recv().await {
            let t = wall_ms();
            if ws.send(Message::Text(v.to_string().into())).await.is_err() {
                break;
            }
            times.push((v, t));
        }
        let _ = times_tx.send(times);
    });
    // A plain page from a loopback origin (about:blank may not open
    // loopback WebSockets).
    b.goto(&format!("http://{}/style.css", web.addr())).await?;
    let ok = b.execute_async(BARE, vec![json!(bare_url)]).await?;
    anyhow::ensure!(ok == Value::Bool(true), "baseline WebSocket did not open");
    let mut tick = tokio::time::interval(a.pace);
    for v in 1..=a.n {
        tick.tick().await;
        tx.send(v).await?;
    }
    until_seen(b, a.n).await?;
    drop(tx);
    let bare_sent = tokio::time::timeout(Duration::from_secs(5), times_rx)
        .await
        .ok()
        .and_then(|r| r.ok())
        .unwrap_or_default();
    let _ = server.await;
    let mut bare = latencies(&bare_sent, &seen(b).await?);

    println!(
        "state publish -> value in the instrument page's DOM (headless Chromium, {} updates every {:?}, {} other WebSocket clients + 1 that never reads): p50 {:.2} ms  p99 {:.2} ms  ({} seen; the slow one had {dropped} dropped)",
        a.n,
        a.pace,
        a.clients,
        pct(&mut lab, 0.5),
        pct(&mut lab, 0.99),
        lab.len()
    );
    println!(
        "baseline: bare WebSocket server -> the same browser -> a div: p50 {:.2} ms  p99 {:.2} ms  ({} seen)",
        pct(&mut bare, 0.5),
        pct(&mut bare, 0.99),
        bare.len()
    );
    Ok(())
}
