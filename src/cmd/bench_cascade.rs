//! `labmesh bench cascade`: cascading brokers on loopback, in one run.
//!
//! * RPC p50/p99 to one relay: direct (listed by its own broker), through
//!   one gateway hop (listed by the middle broker) and two (the top), the
//!   three interleaved in rounds so drift hits each alike.
//! * Bus messages/s from a publisher to a subscriber through one broker vs
//!   a chain of three (publisher at the bottom, subscriber at the top).
//! * Bank download MB/s: direct vs one gateway hop vs two.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use labmesh_broker::{Advertise, BrokerHandle, BrokerOptions, ParentOptions};
use labmesh_client::{Client, ClientOptions};
use labmesh_drivers::mock_psu::MockPsu;
use serde_json::Value;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// RPC calls per path (1..=1000000).
    #[arg(long, default_value_t = 3000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    n: u64,
    /// Bus messages per measurement (1000..=10000000).
    #[arg(long, default_value_t = 200_000, value_parser = clap::value_parser!(u64).range(1000..=10_000_000))]
    msgs: u64,
    /// Dataset size for the download, MiB (1..=4096).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=4096))]
    mib: u64,
}

const ROUNDS: usize = 5;

async fn broker(ctx: &zmq::Context, parent: Option<&BrokerHandle>) -> anyhow::Result<BrokerHandle> {
    Ok(labmesh_broker::spawn(
        ctx,
        BrokerOptions {
            parent: parent.map(|p| ParentOptions {
                rpc: p.rpc_endpoint().into(),
                xsub: p.xsub_endpoint().into(),
                xpub: p.xpub_endpoint().into(),
                advertise: Advertise::Gateway,
                gateway_bind: "tcp://127.0.0.1:*".into(),
            }),
            ..BrokerOptions::loopback()
        },
    )
    .await?)
}

async fn client(ctx: &zmq::Context, b: &BrokerHandle) -> anyhow::Result<Client> {
    Ok(Client::connect(ctx, ClientOptions::new(b.rpc_endpoint(), b.xpub_endpoint())).await?)
}

fn pct(mut us: Vec<f64>, q: f64) -> f64 {
    us.sort_by(f64::total_cmp);
    let i = ((us.len() as f64 - 1.0) * q).round() as usize;
    us.get(i).copied().unwrap_or(f64::NAN)
}

async fn calls(c: &Client, n: usize, out: &mut Vec<f64>) -> anyhow::Result<()> {
    let psu = c.relay("bench").await?;
    for _ in 0..n {
        let t = Instant::now();
        psu.call("get_state", Value::Null).await?;
        out.push(t.elapsed().as_secs_f64() * 1e6);
    }
    Ok(())
}

/// Messages/s from a PUB at `xsub` to a SUB at `xpub`: (msgs/s, received
/// of sent).
fn bus_rate(ctx: &zmq::Context, xsub: &str, xpub: &str, n: u64) -> anyhow::Result<(f64, u64)> {
    let publ = ctx.socket(zmq::PUB)?;
    publ.set_sndhwm(100_000)?;
    publ.set_linger(0)?;
    publ.connect(xsub)?;
    let sub = ctx.socket(zmq::SUB)?;
    sub.set_rcvhwm(100_000)?;
    sub.set_linger(0)?;
    sub.set_subscribe(b"lmbench.busbench")?;
    sub.connect(xpub)?;
    sub.set_rcvtimeo(20)?;
    // Until the subscription has crossed every link.
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        publ.send_multipart([&b"lmbench.busbench"[..], b"probe"], 0)?;
        if sub.recv_multipart(0).is_ok() {
            break;
        }
        anyhow::ensure!(Instant::now() < until, "subscription never reached {xsub}");
    }
    while sub.recv_multipart(zmq::DONTWAIT).is_ok() {}
    let body = vec![b'x'; 100];
    let counter = std::thread::spawn(move || -> (u64, Duration) {
        let _ = sub.set_rcvtimeo(1000);
        let mut got = 0u64;
        let mut first = None;
        let mut last = Instant::now();
        while got < n {
            match sub.recv_multipart(0) {
                Ok(f) if f.get(1).is_some_and(|b| b.as_slice() != b"probe") => {
                    got += 1;
                    last = Instant::now();
                    first.get_or_insert(last);
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
        (
            got,
            first.map(|f| last.duration_since(f)).unwrap_or_default(),
        )
    });
    for _ in 0..n {
        publ.send_multipart([&b"lmbench.busbench"[..], &body], 0)?;
    }
    let (got, took) = counter
        .join()
        .map_err(|_| anyhow::anyhow!("counter thread panicked"))?;
    Ok((got as f64 / took.as_secs_f64().max(1e-9), got))
}

pub async fn exec(a: Args, ctx: &zmq::Context) -> anyhow::Result<ExitCode> {
    let n = usize::try_from(a.n)?;
    let top = broker(ctx, None).await?;
    let mid = broker(ctx, Some(&top)).await?;
    let bottom = broker(ctx, Some(&mid)).await?;
    let relay = labmesh_relay::spawn(
        ctx,
        labmesh_relay::RelayOptions::with_broker(bottom.rpc_endpoint(), bottom.xsub_endpoint()),
        vec![
            labmesh_relay::Hosted::new("bench", Box::new(MockPsu::new("bench")))
                .poll_every(Duration::from_secs(1)),
        ],
    )
    .await?;
    let work = std::env::temp_dir().join(format!("labmesh-bench-cascade-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    let mut bo = labmesh_bank::BankOptions::new("bench-bank", work.join("bank"));
    bo.broker_rpc = Some(bottom.rpc_endpoint().into());
    bo.broker_xsub = Some(bottom.xsub_endpoint().into());
    let bank = labmesh_bank::Bank::start(ctx, bo).await?;
    let clients = [
        client(ctx, &bottom).await?,
        client(ctx, &mid).await?,
        client(ctx, &top).await?,
    ];
    for c in &clients {
        c.wait_for_relay("bench", Duration::from_secs(10)).await?;
        let until = Instant::now() + Duration::from_secs(10);
        while !c
            .list_banks()
            .await?
            .iter()
            .any(|b| b.bank_id == "bench-bank")
        {
            anyhow::ensure!(Instant::now() < until, "bench-bank not listed");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let names = ["direct", "1 gateway hop", "2 gateway hops"];

    // RPC, interleaved rounds after a warm-up.
    let mut lat: [Vec<f64>; 3] = Default::default();
    for c in &clients {
        calls(c, (n / 10).max(10), &mut Vec::new()).await?;
    }
    for _ in 0..ROUNDS {
        for (c, out) in clients.iter().zip(lat.iter_mut()) {
            calls(c, (n / ROUNDS).max(1), out).await?;
        }
    }
    println!(
        "RPC get_state round trips ({} per path, {ROUNDS} interleaved rounds):",
        n
    );
    println!(
        "{:<16} {:>10} {:>10} {:>10}",
        "path", "p50 us", "p99 us", "p50/direct"
    );
    let base = pct(lat[0].clone(), 0.5);
    for (name, l) in names.iter().zip(&lat) {
        let (p50, p99) = (pct(l.clone(), 0.5), pct(l.clone(), 0.99));
        println!("{name:<16} {p50:>10.1} {p99:>10.1} {:>10.2}", p50 / base);
    }

    // Bus throughput: one broker vs the chain.
    let single = broker(ctx, None).await?;
    let (ctx1, ctx2) = (ctx.clone(), ctx.clone());
    let (sx, sp) = (
        single.xsub_endpoint().to_string(),
        single.xpub_endpoint().to_string(),
    );
    let (cx, cp) = (
        bottom.xsub_endpoint().to_string(),
        top.xpub_endpoint().to_string(),
    );
    let msgs = a.msgs;
    let one = tokio::task::spawn_blocking(move || bus_rate(&ctx1, &sx, &sp, msgs)).await??;
    let chain = tokio::task::spawn_blocking(move || bus_rate(&ctx2, &cx, &cp, msgs)).await??;
    println!("\nbus, {msgs} messages of 100 bytes, publisher -> subscriber:");
    println!("{:<24} {:>12} {:>14}", "path", "msgs/s", "received");
    println!(
        "{:<24} {:>12.0} {:>14}",
        "one broker",
        one.0,
        format!("{}/{msgs}", one.1)
    );
    println!(
        "{:<24} {:>12.0} {:>14}   ({:.2}x one broker)",
        "chain of three",
        chain.0,
        format!("{}/{msgs}", chain.1),
        chain.0 / one.0
    );

    // Download: direct vs through the gateways.
    let size = usize::try_from(a.mib)? * 1024 * 1024;
    let src = work.join("src.bin");
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let data: Vec<u8> = (0..size)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 32) as u8
        })
        .collect();
    std::fs::write(&src, &data)?;
    drop(data);
    clients[0]
        .bank(Some("bench-bank"))
        .await?
        .upload_file(
            &src,
            labmesh_transfer::UploadOptions {
                dataset_id: Some("bench-ds".into()),
                relay_id: "bench".into(),
                ..Default::default()
            },
        )
        .await?;
    let mut rates: [Vec<f64>; 3] = Default::default();
    for round in 0..3 {
        for (i, c) in clients.iter().enumerate() {
            let dest = work.join(format!("dl-{round}-{i}.bin"));
            let t = Instant::now();
            c.bank(Some("bench-bank"))
                .await?
                .download("bench-ds", &dest)
                .await?;
            rates[i].push(size as f64 / 1e6 / t.elapsed().as_secs_f64());
            let _ = std::fs::remove_file(&dest);
        }
    }
    println!(
        "\nbank download, {} MiB, default credit window, 3 interleaved rounds (median):",
        a.mib
    );
    println!("{:<16} {:>10} {:>10}", "path", "MB/s", "/direct");
    let base = pct(rates[0].clone(), 0.5);
    for (name, r) in names.iter().zip(&rates) {
        let m = pct(r.clone(), 0.5);
        println!("{name:<16} {m:>10.1} {:>10.2}", m / base);
    }

    relay.shutdown().await;
    bank.shutdown().await;
    for b in [single, bottom, mid, top] {
        b.shutdown().await;
    }
    let _ = std::fs::remove_dir_all(&work);
    Ok(ExitCode::SUCCESS)
}
