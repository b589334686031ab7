//! `labmesh bench streams`: stream rate accuracy and jitter on the mock PSU
//! next to a `tokio::time::interval` loop in the same process, and samples
//! per second through the broker to 10 subscribers (cache and queue) next
//! to a bare zmq PUB -> `zmq::proxy` -> 10 SUB in the same run.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use labmesh_client::{Client, ClientOptions, Receive};
use labmesh_drivers::mock_psu::MockPsu;
use labmesh_proto::stream::StreamSpec;
use serde_json::Value;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Seconds per rate-accuracy measurement.
    #[arg(long, default_value_t = 3.0, value_parser = seconds)]
    seconds: f64,
    /// Seconds per throughput measurement.
    #[arg(long, default_value_t = 3.0, value_parser = seconds)]
    throughput_seconds: f64,
}

fn seconds(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|e| format!("{e}"))?;
    if v.is_finite() && (0.5..=600.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!("{v} is outside 0.5..=600 seconds"))
    }
}

fn p99(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * 0.99).round() as usize]
}

/// Interval jitter of start times: p99 of |gap - period|, seconds.
fn gap_jitter(starts: &[f64], period: f64) -> f64 {
    p99(starts
        .windows(2)
        .map(|w| ((w[1] - w[0]) - period).abs())
        .collect())
}

/// Baseline: what a plain tokio interval loop achieves at `hz` (the
/// timer wheel's 1 ms resolution).
async fn tokio_interval(hz: f64, seconds: f64) -> (f64, f64) {
    let period = Duration::from_secs_f64(1.0 / hz);
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let t0 = Instant::now();
    let mut starts = Vec::new();
    while t0.elapsed().as_secs_f64() < seconds {
        tick.tick().await;
        starts.push(t0.elapsed().as_secs_f64());
    }
    let rate = (starts.len().saturating_sub(1)) as f64
        / (starts.last().copied().unwrap_or(0.0) - starts.first().copied().unwrap_or(0.0))
            .max(1e-9);
    (rate, gap_jitter(&starts, 1.0 / hz))
}

struct Mesh {
    broker: labmesh_broker::BrokerHandle,
    relay: labmesh_relay::RelayHandle,
    clients: Vec<Client>,
}

async fn mesh(ctx: &zmq::Context, ids: &[String], clients: usize) -> anyhow::Result<Mesh> {
    let broker = labmesh_broker::spawn(ctx, labmesh_broker::BrokerOptions::loopback()).await?;
    let relay = labmesh_relay::spawn(
        ctx,
        labmesh_relay::RelayOptions::with_broker(broker.rpc_endpoint(), broker.xsub_endpoint()),
        ids.iter()
            .map(|id| {
                labmesh_relay::Hosted::new(id, Box::new(MockPsu::new(id)))
                    .poll_every(Duration::from_secs(1))
            })
            .collect(),
    )
    .await?;
    let mut cs = Vec::new();
    for _ in 0..clients {
        let c = Client::connect(
            ctx,
            ClientOptions::new(broker.rpc_endpoint(), broker.xpub_endpoint()),
        )
        .await?;
        for id in ids {
            c.wait_for_relay(id, Duration::from_secs(10)).await?;
        }
        cs.push(c);
    }
    Ok(Mesh {
        broker,
        relay,
        clients: cs,
    })
}

fn spec(name: &str, hz: f64) -> StreamSpec {
    StreamSpec {
        name: name.into(),
        method: "get_state".into(),
        params: Value::Null,
        hz,
        enabled: true,
    }
}

async fn accuracy(ctx: &zmq::Context, seconds: f64) -> anyhow::Result<()> {
    println!("Stream rate accuracy on the mock PSU ({seconds} s each): the relay's own figures (lm.streams),");
    println!("the subscriber's view (t_mono gaps), and a tokio::time::interval loop at the same rate (baseline)");
    println!(
        "{:>8} | {:>10} {:>9} {:>13} {:>8} | {:>12} {:>13} | {:>12} {:>13}",
        "hz",
        "relay Hz",
        "missed",
        "late p99 us",
        "recv",
        "gap p99 us",
        "recv Hz",
        "tokio Hz",
        "tokio gap p99"
    );
    for hz in [100.0, 1000.0, 10_000.0] {
        let m = mesh(ctx, &["acc".to_string()], 1).await?;
        let c = &m.clients[0];
        let psu = c.relay("acc").await?;
        let sub = c
            .subscribe_stream("acc", "s", Receive::Queue(1_000_000))
            .await
            .ok();
        psu.stream_add(&spec("s", hz)).await?;
        let sub = match sub {
            Some(s) => s,
            None => {
                c.subscribe_stream("acc", "s", Receive::Queue(1_000_000))
                    .await?
            }
        };
        // Warm up, then measure a window.
        tokio::time::sleep(Duration::from_millis(300)).await;
        while sub.try_recv().is_ok() {}
        let before = psu.streams().await?.streams[0].clone();
        let t0 = Instant::now();
        let mut starts = Vec::new();
        while t0.elapsed().as_secs_f64() < seconds {
            if let Ok(s) = sub.recv_timeout(Duration::from_millis(200)).await {
                starts.push(s.header.t_mono);
            }
        }
        let after = psu.streams().await?.streams[0].clone();
        let recv_hz = starts.len().saturating_sub(1) as f64
            / (starts.last().copied().unwrap_or(0.0) - starts.first().copied().unwrap_or(0.0))
                .max(1e-9);
        let (tok_hz, tok_jit) = tokio_interval(hz, seconds).await;
        println!(
            "{:>8} | {:>10.1} {:>9} {:>13.1} {:>8} | {:>12.1} {:>13.1} | {:>12.1} {:>13.1}",
            hz,
            after.actual_hz,
            after.missed - before.missed,
            after.jitter_p99_s * 1e6,
            starts.len(),
            gap_jitter(&starts, 1.0 / hz) * 1e6,
            recv_hz,
            tok_hz,
            tok_jit * 1e6
        );
        drop(sub);
        m.relay.shutdown().await;
        m.broker.shutdown().await;
    }
    Ok(())
}

/// Bare libzmq: PUB -> XSUB|proxy|XPUB -> 10 SUB, flat out for `seconds`,
/// messages of `size` bytes; returns received messages per second summed
/// over the subscribers.
fn bare_proxy(ctx: &zmq::Context, subs: usize, size: usize, seconds: f64) -> anyhow::Result<f64> {
    let xsub = ctx.socket(zmq::XSUB)?;
    xsub.bind("tcp://127.0.0.1:*")?;
    let xsub_ep = xsub
        .get_last_endpoint()?
        .map_err(|_| anyhow::anyhow!("endpoint"))?;
    let xpub = ctx.socket(zmq::XPUB)?;
    xpub.bind("tcp://127.0.0.1:*")?;
    let xpub_ep = xpub
        .get_last_endpoint()?
        .map_err(|_| anyhow::anyhow!("endpoint"))?;
    let ctl_ep = format!("inproc://bench-proxy-{}", std::process::id());
    let control = ctx.socket(zmq::PAIR)?;
    control.bind(&ctl_ep)?;
    let ctx2 = ctx.clone();
    let ctl_ep2 = ctl_ep.clone();
    let proxy = std::thread::spawn(move || -> anyhow::Result<()> {
        let mut xsub = xsub;
        let mut xpub = xpub;
        let mut ctl = ctx2.socket(zmq::PAIR)?;
        ctl.connect(&ctl_ep2)?;
        let _ = zmq::proxy_steerable(&mut xsub, &mut xpub, &mut ctl);
        Ok(())
    });
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut readers = Vec::new();
    for _ in 0..subs {
        let s = ctx.socket(zmq::SUB)?;
        s.set_rcvhwm(100_000)?;
        s.set_subscribe(b"stream.")?;
        s.set_rcvtimeo(200)?;
        s.connect(&xpub_ep)?;
        let stop = stop.clone();
        readers.push(std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if s.recv_multipart(0).is_ok() {
                    n += 1;
                }
            }
            n
        }));
    }
    let publ = ctx.socket(zmq::PUB)?;
    publ.connect(&xsub_ep)?;
    std::thread::sleep(Duration::from_millis(500)); // subscriptions propagate
    let topic = labmesh_proto::topic::stream("bare", "s");
    let body = vec![b'x'; size];
    let t0 = Instant::now();
    while t0.elapsed().as_secs_f64() < seconds {
        for _ in 0..100 {
            publ.send(&topic, zmq::SNDMORE)?;
            publ.send(&body, 0)?;
        }
    }
    let elapsed = t0.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let total: u64 = readers.into_iter().map(|r| r.join().unwrap_or(0)).sum();
    control.send("TERMINATE", 0)?;
    let _ = proxy.join();
    Ok(total as f64 / elapsed)
}

async fn throughput(ctx: &zmq::Context, seconds: f64) -> anyhow::Result<()> {
    const SUBS: usize = 10;
    const INSTRUMENTS: usize = 4;
    let ids: Vec<String> = (0..INSTRUMENTS).map(|i| format!("tp-{i}")).collect();
    println!();
    println!(
        "Stream samples through the broker to {SUBS} subscribers: {INSTRUMENTS} mock PSUs with one {} Hz stream each (offered load {} samples/s)",
        labmesh_proto::stream::MAX_HZ,
        labmesh_proto::stream::MAX_HZ as usize * INSTRUMENTS
    );
    println!(
        "{:<52} {:>14} {:>14} {:>10}",
        "path", "published/s", "received/s", "per sub/s"
    );
    let mut header_len = 0;
    for mode in [Receive::Queue(100_000), Receive::Cache] {
        let m = mesh(ctx, &ids, SUBS).await?;
        let mut subs = Vec::new();
        for c in &m.clients {
            for id in &ids {
                c.relay(id)
                    .await?
                    .stream_add(&spec("s", labmesh_proto::stream::MAX_HZ))
                    .await?;
                subs.push(c.subscribe_stream(id, "s", mode).await?);
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let psu0 = m.clients[0].relay(&ids[0]).await?;
        let before: u64 = {
            let mut n = 0;
            for id in &ids {
                n += m.clients[0].relay(id).await?.streams().await?.streams[0].samples;
            }
            n
        };
        let got0: u64 = subs.iter().map(|s| s.stats().received).sum();
        let t0 = Instant::now();
        // Readers drain in queue mode; cache mode keeps the newest only.
        while t0.elapsed().as_secs_f64() < seconds {
            for s in &subs {
                while let Ok(x) = s.try_recv() {
                    if header_len == 0 {
                        header_len = serde_json::to_vec(&x.header).map_or(0, |v| v.len());
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let elapsed = t0.elapsed().as_secs_f64();
        let got: u64 = subs.iter().map(|s| s.stats().received).sum::<u64>() - got0;
        let mut after = 0;
        for id in &ids {
            after += m.clients[0].relay(id).await?.streams().await?.streams[0].samples;
        }
        let _ = psu0;
        let name = match mode {
            Receive::Cache => "labmesh relay -> broker -> 10 clients (cache)",
            Receive::Queue(_) => "labmesh relay -> broker -> 10 clients (queue)",
        };
        println!(
            "{:<52} {:>14.0} {:>14.0} {:>10.0}",
            name,
            (after - before) as f64 / elapsed,
            got as f64 / elapsed,
            got as f64 / elapsed / SUBS as f64
        );
        drop(subs);
        for c in &m.clients {
            c.close();
        }
        m.relay.shutdown().await;
        m.broker.shutdown().await;
    }
    // A body of the same size as the mock PSU's sample header.
    let size = header_len.max(1);
    let ctx2 = ctx.clone();
    let bare =
        tokio::task::spawn_blocking(move || bare_proxy(&ctx2, SUBS, size, seconds)).await??;
    println!(
        "{:<52} {:>14} {:>14.0} {:>10.0}",
        format!("bare PUB -> zmq::proxy -> 10 SUB, {size} B, flat out"),
        "-",
        bare,
        bare / SUBS as f64
    );
    Ok(())
}

pub async fn exec(a: Args, ctx: &zmq::Context) -> anyhow::Result<ExitCode> {
    accuracy(ctx, a.seconds).await?;
    throughput(ctx, a.throughput_seconds).await?;
    Ok(ExitCode::SUCCESS)
}
