//! `labmesh sim`: simulated instruments (for tests and demos).

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use labmesh_drivers::sim::{SimConfig, SimPsu};

use crate::common::serve;

#[derive(Debug, clap::Subcommand)]
pub enum Args {
    /// A simulated SCPI power supply (keysight / rigol / siglent dialect),
    /// or with --firmware the firmware PSU over the postcard device link.
    Psu(Psu),
}

#[derive(Debug, clap::Args)]
pub struct Psu {
    /// SCPI dialect.
    #[arg(long, default_value = "keysight")]
    dialect: String,
    /// Model name (E36313A, DP832, SPD3303X, ...); default per dialect.
    #[arg(long)]
    model: Option<String>,
    /// Serve SCPI over TCP at this address (e.g. 127.0.0.1:5025).
    #[arg(long, conflicts_with = "pty")]
    tcp: Option<String>,
    /// Serve on a new pseudo-terminal and print its path.
    #[arg(long)]
    pty: bool,
    /// The firmware PSU (no_std code behind the postcard device link)
    /// instead of SCPI; needs --pty.
    #[arg(long, requires = "pty")]
    firmware: bool,
    /// With --firmware: milliseconds between telemetry events (0: none).
    #[arg(long, default_value_t = 200)]
    telemetry_ms: u64,
    /// Resistive load on each output, ohms.
    #[arg(long, default_value_t = 10.0)]
    load_ohms: f64,
    /// Delay before every reply, milliseconds.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
}

pub async fn exec(a: Args) -> anyhow::Result<ExitCode> {
    match a {
        Args::Psu(p) if p.firmware => firmware_psu(p).await,
        Args::Psu(p) => scpi_psu(p).await,
    }
}

async fn firmware_psu(p: Psu) -> anyhow::Result<ExitCode> {
    let period = (p.telemetry_ms > 0).then(|| Duration::from_millis(p.telemetry_ms));
    let port = labmesh_drivers::firmware::serve_firmware_pty(period)?;
    let banner = format!(
        "sim psu (firmware): {}\nresource: {}",
        port.path().display(),
        port.resource()
    );
    serve(port, &banner, |port| port.close()).await
}

async fn scpi_psu(p: Psu) -> anyhow::Result<ExitCode> {
    let dialect = p.dialect;
    let cfg = SimConfig {
        model: p.model,
        load_ohms: p.load_ohms,
        latency: Duration::from_millis(p.latency_ms),
        ..SimConfig::new(
            dialect
                .parse()
                .map_err(|e| anyhow::anyhow!("--dialect {dialect}: {e}"))?,
        )
    };
    let sim = SimPsu::new(cfg)?;
    if p.pty {
        let port = sim.serve_pty()?;
        let banner = format!(
            "sim psu ({dialect}) {}: {}",
            sim.idn(),
            port.path().display()
        );
        return serve(port, &banner, |port| port.close()).await;
    }
    let addr = p.tcp.unwrap_or_else(|| "127.0.0.1:5025".to_string());
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let banner = format!(
        "sim psu ({dialect}) {}: tcp://{}",
        sim.idn(),
        listener.local_addr()?
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        sim.serve_tcp(listener, async {
            let _ = stopped.await;
        })
        .await
    });
    serve((stop, task), &banner, |(stop, task)| async move {
        let _ = stop.send(());
        task.await?.context("simulator")
    })
    .await
}
