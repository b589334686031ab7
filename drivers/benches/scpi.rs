//! SCPI round trips through the driver stack to the simulated PSU, next to
//! baselines measured in the same run.
//!
//! `cargo bench -p labmesh-drivers --bench scpi`
//!
//! * TCP: 1000 `measure_voltage` calls (`INST:NSEL 1;:MEAS:VOLT?` through
//!   `PsuDriver` -> `ScpiSession` -> TCP -> simulator) and 1000 bare
//!   `MEAS:VOLT?` session queries, next to a bare TCP line echo.
//! * pty: 1000 `MEAS:VOLT?` queries over a pseudo-terminal opened at
//!   115200 baud, next to what a real 115200 8N1 wire could carry (10 bits
//!   per byte). A pty does not pace bytes to the baud rate, so this measures
//!   the software path; a real port is bounded by the wire figure.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use labmesh_drivers::psu::models::Family;
use labmesh_drivers::sim::{SimConfig, SimPsu};
use labmesh_drivers::{DriverRegistry, InstrumentConfig, Resource, ScpiSession, SessionOptions};
use serde_json::{json, Map, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

const N: usize = 1000;

fn percentiles(mut v: Vec<Duration>) -> (Duration, Duration, Duration) {
    v.sort();
    let at = |q: f64| {
        v.get(((v.len() as f64 - 1.0) * q).round() as usize)
            .copied()
            .unwrap_or_default()
    };
    let mean = v.iter().sum::<Duration>() / v.len().max(1) as u32;
    (at(0.5), at(0.99), mean)
}

fn report(name: &str, samples: Vec<Duration>) {
    let (p50, p99, mean) = percentiles(samples);
    println!(
        "{name:<44} p50 {:>8.1} us   p99 {:>8.1} us   mean {:>8.1} us",
        p50.as_secs_f64() * 1e6,
        p99.as_secs_f64() * 1e6,
        mean.as_secs_f64() * 1e6
    );
}

async fn echo_server(listener: TcpListener) {
    while let Ok((sock, _)) = listener.accept().await {
        let _ = sock.set_nodelay(true);
        tokio::spawn(async move {
            let (r, mut w) = sock.into_split();
            let mut lines = BufReader::new(r);
            let mut line = String::new();
            while lines.read_line(&mut line).await.unwrap_or(0) > 0 {
                if w.write_all(line.as_bytes()).await.is_err() {
                    break;
                }
                line.clear();
            }
        });
    }
}

async fn bench_tcp() -> anyhow::Result<()> {
    // Baseline: bare TCP echo of the same line.
    let echo = TcpListener::bind("127.0.0.1:0").await?;
    let echo_addr = echo.local_addr()?;
    tokio::spawn(echo_server(echo));
    let sock = TcpStream::connect(echo_addr).await?;
    sock.set_nodelay(true)?;
    let (r, mut w) = sock.into_split();
    let mut r = BufReader::new(r);
    let mut line = String::new();
    let mut echo_samples = Vec::with_capacity(N);
    for _ in 0..N + 50 {
        let t = Instant::now();
        w.write_all(b"MEAS:VOLT?\n").await?;
        line.clear();
        r.read_line(&mut line).await?;
        echo_samples.push(t.elapsed());
    }
    echo_samples.drain(..50);

    // The simulator.
    let sim = SimPsu::new(SimConfig::new(Family::KeysightE36xx))?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let s = sim.clone();
    tokio::spawn(async move { s.serve_tcp(listener, std::future::pending()).await });
    sim.execute("VOLT 5;OUTP ON");

    let mut session = ScpiSession::new(
        Resource::parse(&format!("tcp://{addr}"))?,
        SessionOptions::default(),
    );
    let mut q = Vec::with_capacity(N);
    for i in 0..N + 50 {
        let t = Instant::now();
        let r = session.query("MEAS:VOLT?").await?;
        let d = t.elapsed();
        if i >= 50 {
            q.push(d);
        }
        assert_eq!(r, "+5.00000000E+00");
    }

    let reg = DriverRegistry::with_builtins();
    let mut psu = reg
        .create(InstrumentConfig {
            id: "bench".into(),
            driver: "keysight-e36xx".into(),
            resource: Some(format!("tcp://{addr}")),
            options: Map::new(),
        })
        .await?;
    let desc = psu.describe();
    let mut d = Vec::with_capacity(N);
    for i in 0..N + 50 {
        let t = Instant::now();
        let args = desc.bind("measure_voltage", &json!({"channel": 1}))?;
        let v = psu.call("measure_voltage", args).await?;
        let e = t.elapsed();
        if i >= 50 {
            d.push(e);
        }
        assert_eq!(v, Value::from(5.0));
    }

    println!("TCP on 127.0.0.1, {N} round trips each (after 50 warm-up):");
    report("bare TCP line echo (baseline)", echo_samples);
    report("ScpiSession::query(\"MEAS:VOLT?\") -> sim", q);
    report("keysight-e36xx measure_voltage -> sim", d);
    Ok(())
}

async fn bench_pty() -> anyhow::Result<()> {
    let sim = SimPsu::new(SimConfig::new(Family::KeysightE36xx))?;
    sim.execute("VOLT 5;OUTP ON");
    let pty = sim.serve_pty()?;
    let resource = format!("serial://{}?baud=115200", pty.path().display());
    let mut session = ScpiSession::new(Resource::parse(&resource)?, SessionOptions::default());
    session.query("*OPC?").await?;
    let cmd = "MEAS:VOLT?";
    let mut reply_len = 0;
    let start = Instant::now();
    for _ in 0..N {
        let r = session.query(cmd).await?;
        reply_len = r.len();
    }
    let elapsed = start.elapsed();
    let bytes = cmd.len() + 1 + reply_len + 1;
    let wire = 115_200.0 / (10.0 * bytes as f64);
    println!("pty at 115200 baud 8N1, {N} exchanges of {bytes} bytes ({cmd} + reply):");
    println!(
        "{:<44} {:>8.0} exchanges/s ({:.1} us each)",
        "measured over the pty",
        N as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64() * 1e6 / N as f64
    );
    println!(
        "{:<44} {:>8.0} exchanges/s (10 bits per byte)",
        "wire limit of a real 115200 line", wire
    );
    pty.close().await;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    // `cargo test --benches` runs this with --bench absent; keep it quick then.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        bench_tcp().await?;
        bench_pty().await
    })
}
