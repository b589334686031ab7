//! `labmesh bench curve`: the cost of CURVE, measured against itself off.
//!
//! Each round runs a whole mesh (broker, relay with the mock PSU, bank,
//! client) twice in this process, once plaintext and once with CURVE on
//! every socket (allow-listed client key, so the ZAP handler runs), and
//! alternates the two so drift on a noisy machine hits both alike.

use std::time::{Duration, Instant};

use labmesh_bank::{Bank, BankOptions};
use labmesh_client::{Client, ClientOptions};
use labmesh_drivers::mock_psu::MockPsu;
use labmesh_proto::security::Role;
use labmesh_wire::curve::{self, AllowEntry, KeyPair, Security};

use super::bench::{mesh_calls, summarise};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// set_voltage calls per mode per round (1..=1000000).
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub n: u64,
    /// Dataset size for the bank, MiB (1..=4096).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub mib: u64,
    /// Rounds (each runs both modes; 1..=20).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=20))]
    pub rounds: u64,
}

struct Round {
    rpc_us: Vec<f64>,
    up_mib_s: f64,
    down_mib_s: f64,
}

async fn one(
    sec: Option<Security>,
    n: usize,
    file: &std::path::Path,
    dir: &std::path::Path,
) -> anyhow::Result<Round> {
    let ctx = zmq::Context::new();
    let _installed = match sec {
        Some(s) => Some(curve::install(&ctx, s)?),
        None => None,
    };
    let broker = labmesh_broker::spawn(&ctx, labmesh_broker::BrokerOptions::loopback()).await?;
    let relay = labmesh_relay::spawn(
        &ctx,
        labmesh_relay::RelayOptions::with_broker(broker.rpc_endpoint(), broker.xsub_endpoint()),
        vec![
            labmesh_relay::Hosted::new("bench", Box::new(MockPsu::new("bench")))
                .poll_every(Duration::from_secs(1)),
        ],
    )
    .await?;
    let client = Client::connect(
        &ctx,
        ClientOptions::new(broker.rpc_endpoint(), broker.xpub_endpoint()),
    )
    .await?;
    client
        .wait_for_relay("bench", Duration::from_secs(10))
        .await?;
    let rpc_us = mesh_calls(&client, "set_voltage", n).await?;

    let data = dir.join(format!("bank-{}", uuid::Uuid::new_v4().simple()));
    let bank = Bank::start(&ctx, BankOptions::new("bench-bank", &data)).await?;
    let size = std::fs::metadata(file)?.len() as f64 / (1024.0 * 1024.0);
    let t = Instant::now();
    let receipt =
        labmesh_transfer::upload_file(&ctx, bank.ingest_endpoint(), file, Default::default())
            .await?;
    let up = size / t.elapsed().as_secs_f64();
    let dest = dir.join(format!("down-{}", receipt.dataset_id));
    let t = Instant::now();
    labmesh_transfer::download_to_file(
        &ctx,
        bank.retrieve_endpoint(),
        &receipt.dataset_id,
        &dest,
        Default::default(),
    )
    .await?;
    let down = size / t.elapsed().as_secs_f64();
    let _ = std::fs::remove_file(&dest);
    bank.shutdown().await;
    let _ = std::fs::remove_dir_all(&data);
    relay.shutdown().await;
    broker.shutdown().await;
    Ok(Round {
        rpc_us,
        up_mib_s: up,
        down_mib_s: down,
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

pub async fn exec(a: Args) -> anyhow::Result<()> {
    if !curve::available() {
        anyhow::bail!("{}", curve::NOT_BUILT);
    }
    let n = usize::try_from(a.n)?;
    let server = KeyPair::generate()?;
    let client = KeyPair::generate()?;
    let sec = Security {
        server: Some(server),
        client: Some(client),
        server_public: Some(server.public),
        allow: vec![AllowEntry {
            key: client.public,
            role: Role::Operator,
            name: Some("bench".into()),
            instruments: Default::default(),
        }],
    };
    let dir = std::env::temp_dir().join(format!(
        "labmesh-bench-curve-{}",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir)?;
    let file = dir.join("payload.bin");
    {
        // Incompressible-looking bytes (CURVE does not compress; neither does the bank).
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let bytes: Vec<u8> = (0..a.mib * 1024 * 1024)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        std::fs::write(&file, bytes)?;
    }
    let (mut off, mut on): (Vec<Round>, Vec<Round>) = (Vec::new(), Vec::new());
    for _ in 0..a.rounds {
        off.push(one(None, n, &file, &dir).await?);
        on.push(one(Some(sec.clone()), n, &file, &dir).await?);
    }
    let _ = std::fs::remove_dir_all(&dir);

    let rpc = |rs: &[Round]| summarise(rs.iter().flat_map(|r| r.rpc_us.iter().copied()).collect());
    let (r_off, r_on) = (rpc(&off), rpc(&on));
    println!(
        "CURVE on vs off, tcp://127.0.0.1, {} rounds alternating; RPC: {n} set_voltage calls per round; bank: {} MiB",
        a.rounds, a.mib
    );
    println!(
        "{:<34} {:>12} {:>12} {:>8}",
        "", "CURVE off", "CURVE on", "on/off"
    );
    println!(
        "{:<34} {:>12.1} {:>12.1} {:>7.2}x",
        "RPC p50 us",
        r_off.p50,
        r_on.p50,
        r_on.p50 / r_off.p50
    );
    println!(
        "{:<34} {:>12.1} {:>12.1} {:>7.2}x",
        "RPC p99 us",
        r_off.p99,
        r_on.p99,
        r_on.p99 / r_off.p99
    );
    let up = |rs: &[Round]| median(rs.iter().map(|r| r.up_mib_s).collect());
    let down = |rs: &[Round]| median(rs.iter().map(|r| r.down_mib_s).collect());
    println!(
        "{:<34} {:>12.1} {:>12.1} {:>7.2}x",
        "bank upload MiB/s (median)",
        up(&off),
        up(&on),
        up(&on) / up(&off)
    );
    println!(
        "{:<34} {:>12.1} {:>12.1} {:>7.2}x",
        "bank download MiB/s (median)",
        down(&off),
        down(&on),
        down(&on) / down(&off)
    );
    Ok(())
}
