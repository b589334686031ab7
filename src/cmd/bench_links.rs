//! `labmesh bench links`: instrument links to the simulator, in one run,
//! next to a bare TCP baseline on the same loopback:
//!
//! * query round trip (`*IDN?`) p50 / p99 through `ScpiSession` over a raw
//!   socket, VXI-11 and HiSLIP, next to a bare TCP echo of a line of the
//!   same size (tokio client, no SCPI session);
//! * binary block transfer of the simulator's 1 MiB waveform (`WAV:DATA?`,
//!   `query_binary`) over each, in MB/s, next to bare TCP sending the same
//!   block.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use labmesh_drivers::psu::models::Family;
use labmesh_drivers::sim::{SimConfig, SimPsu};
use labmesh_drivers::{Resource, ScpiSession, SessionOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Query round trips per link.
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u64).range(10..=1_000_000))]
    n: u64,
    /// 1 MiB waveform transfers per link.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    blocks: u64,
}

struct Stats {
    p50: f64,
    p99: f64,
}

fn stats(mut us: Vec<f64>) -> Stats {
    us.sort_by(f64::total_cmp);
    let pick = |q: f64| {
        let i = ((us.len() as f64 - 1.0) * q).round() as usize;
        us.get(i).copied().unwrap_or(f64::NAN)
    };
    Stats {
        p50: pick(0.5),
        p99: pick(0.99),
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// A bare TCP server: a line gets `idn` back; `WAV:DATA?` gets `block`.
async fn bare_server(
    listener: TcpListener,
    idn: Vec<u8>,
    block: Vec<u8>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let sock = tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            a = listener.accept() => match a { Ok((s, _)) => s, Err(_) => continue },
        };
        let _ = sock.set_nodelay(true);
        let (idn, block, mut stop) = (idn.clone(), block.clone(), stop.clone());
        tokio::spawn(async move {
            let mut sock = sock;
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            loop {
                let n = tokio::select! {
                    _ = stop.wait_for(|s| *s) => return,
                    n = sock.read(&mut chunk) => match n { Ok(0) | Err(_) => return, Ok(n) => n },
                };
                buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
                while let Some(i) = buf.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = buf.drain(..=i).collect();
                    let reply = if line.starts_with(b"WAV") {
                        &block
                    } else {
                        &idn
                    };
                    if sock.write_all(reply).await.is_err() {
                        return;
                    }
                }
            }
        });
    }
}

/// Bare TCP: `n` line round trips (reply up to its `\n`).
async fn bare_queries(addr: std::net::SocketAddr, n: u64) -> anyhow::Result<Vec<f64>> {
    let mut s = TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 4096];
    for i in 0..n + n / 10 {
        let t = Instant::now();
        s.write_all(b"*IDN?\n").await?;
        let mut got = 0;
        loop {
            let k = s.read(&mut buf[got..]).await?;
            anyhow::ensure!(k > 0, "bare server closed");
            got += k;
            if buf[..got].ends_with(b"\n") {
                break;
            }
        }
        if i >= n / 10 {
            out.push(t.elapsed().as_secs_f64() * 1e6);
        }
    }
    Ok(out)
}

/// Bare TCP: `blocks` 1 MiB block transfers, MB/s each.
async fn bare_blocks(
    addr: std::net::SocketAddr,
    blocks: u64,
    len: usize,
) -> anyhow::Result<Vec<f64>> {
    let mut s = TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    let mut buf = vec![0u8; len];
    let mut out = Vec::new();
    for _ in 0..blocks {
        let t = Instant::now();
        s.write_all(b"WAV:DATA?\n").await?;
        s.read_exact(&mut buf).await?;
        out.push(len as f64 / t.elapsed().as_secs_f64() / 1e6);
    }
    Ok(out)
}

async fn session_queries(s: &mut ScpiSession, n: u64) -> anyhow::Result<Vec<f64>> {
    let mut out = Vec::new();
    for i in 0..n + n / 10 {
        let t = Instant::now();
        s.query("*IDN?").await?;
        if i >= n / 10 {
            out.push(t.elapsed().as_secs_f64() * 1e6);
        }
    }
    Ok(out)
}

async fn session_blocks(s: &mut ScpiSession, blocks: u64) -> anyhow::Result<Vec<f64>> {
    let want = labmesh_drivers::sim::psu::waveform();
    let mut out = Vec::new();
    for _ in 0..blocks {
        let t = Instant::now();
        let data = s.query_binary("WAV:DATA?").await?;
        let dt = t.elapsed().as_secs_f64();
        anyhow::ensure!(
            data == want,
            "waveform came back different ({} bytes)",
            data.len()
        );
        out.push(data.len() as f64 / dt / 1e6);
    }
    Ok(out)
}

pub async fn exec(a: Args) -> anyhow::Result<ExitCode> {
    let sim = SimPsu::new(SimConfig::new(Family::KeysightE36xx))?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |rx: watch::Receiver<bool>| async move {
        let mut rx = rx;
        let _ = rx.wait_for(|s| *s).await;
    };

    let raw = TcpListener::bind("127.0.0.1:0").await?;
    let raw_port = raw.local_addr()?.port();
    let pm = TcpListener::bind("127.0.0.1:0").await?;
    let core = TcpListener::bind("127.0.0.1:0").await?;
    let pm_port = pm.local_addr()?.port();
    let hs = TcpListener::bind("127.0.0.1:0").await?;
    let hs_port = hs.local_addr()?.port();
    let bare = TcpListener::bind("127.0.0.1:0").await?;
    let bare_addr = bare.local_addr()?;
    let mut tasks = Vec::new();
    {
        let (s, rx) = (sim.clone(), stop_rx.clone());
        tasks.push(tokio::spawn(async move {
            let _ = s.serve_tcp(raw, stopped(rx)).await;
        }));
        let (s, rx) = (sim.clone(), stop_rx.clone());
        tasks.push(tokio::spawn(async move {
            let _ = s.serve_vxi11(Some(pm), core, stopped(rx)).await;
        }));
        let (s, rx) = (sim.clone(), stop_rx.clone());
        tasks.push(tokio::spawn(async move {
            let _ = s.serve_hislip(hs, stopped(rx)).await;
        }));
        let mut idn = sim.idn().into_bytes();
        idn.push(b'\n');
        let block = labmesh_drivers::block::encode(labmesh_drivers::sim::psu::waveform());
        let rx = stop_rx.clone();
        tasks.push(tokio::spawn(bare_server(bare, idn, block, rx)));
    }
    let block_len = labmesh_drivers::block::encode(labmesh_drivers::sim::psu::waveform()).len();

    let links = [
        (
            "raw socket (SCPI-RAW)",
            format!("tcp://127.0.0.1:{raw_port}"),
        ),
        ("VXI-11", format!("vxi11://127.0.0.1:{pm_port}/inst0")),
        ("HiSLIP", format!("hislip://127.0.0.1:{hs_port}/hislip0")),
    ];
    println!(
        "query round trip (*IDN?, {} answer bytes), n={} each after {} warm-up; 1 MiB waveform (WAV:DATA?) x{}",
        sim.idn().len() + 1,
        a.n,
        a.n / 10,
        a.blocks
    );
    println!(
        "{:<40} {:>9} {:>9} {:>9} {:>11} {:>9}",
        "link", "p50 us", "p99 us", "p50/bare", "block MB/s", "/bare"
    );
    let q = stats(bare_queries(bare_addr, a.n).await?);
    let b = median(bare_blocks(bare_addr, a.blocks, block_len).await?);
    println!(
        "{:<40} {:>9.1} {:>9.1} {:>9} {:>11.0} {:>9}",
        "bare TCP echo (baseline)", q.p50, q.p99, "1.00x", b, "1.00x"
    );
    for (name, resource) in links {
        let opts = SessionOptions {
            timeout: Duration::from_secs(10),
            ..SessionOptions::default()
        };
        let mut s = ScpiSession::new(Resource::parse(&resource)?, opts);
        s.connect()
            .await
            .with_context(|| format!("{name}: {resource}"))?;
        let st = stats(
            session_queries(&mut s, a.n)
                .await
                .with_context(|| name.to_string())?,
        );
        let mb = median(
            session_blocks(&mut s, a.blocks)
                .await
                .with_context(|| name.to_string())?,
        );
        s.close().await;
        println!(
            "{:<40} {:>9.1} {:>9.1} {:>8.2}x {:>11.0} {:>8.2}x",
            name,
            st.p50,
            st.p99,
            st.p50 / q.p50,
            mb,
            mb / b
        );
    }
    let _ = stop_tx.send(true);
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(2), t).await;
    }
    Ok(ExitCode::SUCCESS)
}
