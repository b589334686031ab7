//! `labmesh bench gateway`: query round trips through a relay's
//! LAN-instrument gateway (raw socket, VXI-11, HiSLIP) to a simulated
//! serial PSU on a pseudo-terminal, next to the same query sent to an
//! identical serial simulator directly, in the same run.
//!
//! Two simulators (each pty takes one client): one is opened directly
//! with a `ScpiSession` (the baseline); the other is hosted by an
//! in-process relay (driver `keysight-e36xx`, polls every hour so they do
//! not interleave with the measurement) whose gateway the LAN clients
//! (`ScpiSession` over each link) reach on 127.0.0.1.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use labmesh_config::lan::{LanSection, Listen};
use labmesh_drivers::psu::models::Family;
use labmesh_drivers::sim::{self, SimConfig};
use labmesh_drivers::{DriverRegistry, InstrumentConfig, Resource, ScpiSession, SessionOptions};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Query round trips per row (after a tenth as many warm-up).
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u64).range(10..=1_000_000))]
    n: u64,
    /// The query.
    #[arg(long, default_value = "*IDN?")]
    query: String,
}

fn percentiles(mut us: Vec<f64>) -> (f64, f64) {
    us.sort_by(f64::total_cmp);
    let pick = |q: f64| {
        let i = ((us.len() as f64 - 1.0) * q).round() as usize;
        us.get(i).copied().unwrap_or(f64::NAN)
    };
    (pick(0.5), pick(0.99))
}

async fn round_trips(resource: &str, query: &str, n: u64) -> anyhow::Result<(f64, f64)> {
    let opts = SessionOptions {
        timeout: Duration::from_secs(10),
        ..SessionOptions::default()
    };
    let mut s = ScpiSession::new(Resource::parse(resource)?, opts);
    s.connect().await.with_context(|| resource.to_string())?;
    let mut out = Vec::new();
    for i in 0..n + n / 10 {
        let t = Instant::now();
        s.query(query).await.with_context(|| resource.to_string())?;
        if i >= n / 10 {
            out.push(t.elapsed().as_secs_f64() * 1e6);
        }
    }
    s.close().await;
    Ok(percentiles(out))
}

pub async fn exec(a: Args, ctx: &zmq::Context) -> anyhow::Result<ExitCode> {
    let (_direct_sim, direct_pty) = sim::serve_pty(SimConfig::new(Family::KeysightE36xx))?;
    let (_gw_sim, gw_pty) = sim::serve_pty(SimConfig::new(Family::KeysightE36xx))?;
    let registry = DriverRegistry::with_builtins();
    let inst = registry
        .create(InstrumentConfig {
            id: "psu-gw".into(),
            driver: "keysight-e36xx".into(),
            resource: Some(format!("ASRL{}::INSTR", gw_pty.path().display())),
            options: serde_json::Map::new(),
        })
        .await?;
    let lan = LanSection {
        raw: Some(Listen::At("127.0.0.1:0".into())),
        vxi11: Some(Listen::At("127.0.0.1:0".into())),
        vxi11_core: None,
        hislip: Some(Listen::At("127.0.0.1:0".into())),
    };
    let hosted = labmesh_relay::Hosted::new("psu-gw", inst)
        .poll_every(Duration::from_secs(3600))
        .lan(lan);
    let relay =
        labmesh_relay::spawn(ctx, labmesh_relay::RelayOptions::standalone(), vec![hosted]).await?;
    let servers = relay
        .served()
        .first()
        .map(|s| s.lan.clone())
        .unwrap_or_default();
    let port = |p: &str| -> anyhow::Result<u16> {
        servers
            .iter()
            .find(|s| s.protocol == p)
            .map(|s| s.addr.port())
            .with_context(|| format!("the relay serves no {p}"))
    };
    let rows = [
        (
            "serial simulator, direct (baseline)".to_string(),
            format!("ASRL{}::INSTR", direct_pty.path().display()),
        ),
        (
            "gateway: raw socket -> relay -> serial".to_string(),
            format!("tcp://127.0.0.1:{}", port("raw")?),
        ),
        (
            "gateway: VXI-11 -> relay -> serial".to_string(),
            format!("vxi11://127.0.0.1:{}/inst0", port("portmapper")?),
        ),
        (
            "gateway: HiSLIP -> relay -> serial".to_string(),
            format!("hislip://127.0.0.1:{}/hislip0", port("hislip")?),
        ),
    ];
    println!(
        "query round trip ({}), n={} each after {} warm-up; serial = a pseudo-terminal",
        a.query,
        a.n,
        a.n / 10
    );
    println!(
        "{:<42} {:>9} {:>9} {:>11}",
        "path", "p50 us", "p99 us", "p50/direct"
    );
    let mut base = f64::NAN;
    for (i, (name, resource)) in rows.iter().enumerate() {
        let (p50, p99) = round_trips(resource, &a.query, a.n).await?;
        if i == 0 {
            base = p50;
        }
        println!(
            "{:<42} {:>9.1} {:>9.1} {:>10.2}x",
            name,
            p50,
            p99,
            p50 / base
        );
    }
    relay.shutdown().await;
    direct_pty.close().await;
    gw_pty.close().await;
    Ok(ExitCode::SUCCESS)
}
