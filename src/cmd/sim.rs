//! `labmesh sim`: simulated instruments (for tests and demos).

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use std::sync::Arc;

use labmesh_drivers::sim::{Backend, SimConfig, SimPsu};

use crate::common::serve;

#[derive(Debug, clap::Subcommand)]
pub enum Args {
    /// A simulated SCPI power supply (keysight / rigol / siglent dialect),
    /// or with --firmware the firmware PSU over the postcard device link.
    Psu(Psu),
    /// A simulator derived from a declarative TOML SCPI driver file:
    /// setpoints remembered, ranges enforced with SCPI errors, an error
    /// queue, measured values from its [sim] section (docs/DRIVERS.md).
    Toml(super::sim_toml::Toml),
}

#[derive(Debug, clap::Args)]
pub struct Psu {
    /// SCPI dialect.
    #[arg(long, default_value = "keysight")]
    dialect: String,
    /// Model name (E36313A, DP832, SPD3303X, ...); default per dialect.
    #[arg(long)]
    model: Option<String>,
    /// Serve SCPI over TCP at this address (e.g. 127.0.0.1:5025; the
    /// default unless --vxi11 or --hislip is given).
    #[arg(long, conflicts_with = "pty")]
    tcp: Option<String>,
    /// Serve VXI-11: a portmapper at HOST[:PORT] (port default 111) and the
    /// core channel on a free port of the same host.
    #[arg(long, value_name = "HOST[:PORT]", conflicts_with = "pty")]
    vxi11: Option<String>,
    /// Act as a Prologix-compatible GPIB adapter (TCP, like a GPIB-ETHERNET)
    /// at HOST[:PORT] (port default 1234), the PSU at --gpib-address.
    #[arg(long, value_name = "HOST[:PORT]", conflicts_with = "pty")]
    prologix: Option<String>,
    /// With --prologix: the PSU's GPIB primary address.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u8).range(0..=30))]
    gpib_address: u8,
    /// Serve HiSLIP at HOST[:PORT] (port default 4880).
    #[arg(long, value_name = "HOST[:PORT]", conflicts_with = "pty")]
    hislip: Option<String>,
    /// Serve on a new pseudo-terminal and print its path.
    #[arg(long)]
    pty: bool,
    /// The firmware PSU (no_std code behind the postcard device link)
    /// instead of SCPI; needs --pty.
    #[arg(long, requires = "pty")]
    firmware: bool,
    /// With --firmware: milliseconds between telemetry events (0: none).
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u64).range(0..=3_600_000))]
    telemetry_ms: u64,
    /// Resistive load on each output, ohms (finite, above 0).
    #[arg(long, default_value_t = 10.0, value_parser = crate::cli_args::positive)]
    load_ohms: f64,
    /// Delay before every reply, milliseconds (0..=60000).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=60_000))]
    latency_ms: u64,
}

pub async fn exec(a: Args) -> anyhow::Result<ExitCode> {
    match a {
        Args::Psu(p) if p.firmware => firmware_psu(p).await,
        Args::Psu(p) => scpi_psu(p).await,
        Args::Toml(t) => super::sim_toml::exec(t).await,
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
    let mut lines = vec![format!("sim psu ({dialect}) {}", sim.idn())];
    let lan = Lan {
        tcp: p.tcp,
        vxi11: p.vxi11,
        hislip: p.hislip,
        other: p.prologix.is_some(),
    };
    let mut servers = serve_lan(Arc::new(sim.clone()), lan, &mut lines).await?;
    if let Some(addr) = p.prologix {
        let addr = with_default_port(&addr, labmesh_drivers::gpib::PROLOGIX_TCP_PORT);
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .with_context(|| format!("--prologix: cannot listen on {addr}"))?;
        lines.push(format!(
            "Prologix GPIB adapter: tcp://{}: GPIB0::{}::INSTR with option adapter = \"tcp://{}\"",
            listener.local_addr()?,
            p.gpib_address,
            listener.local_addr()?
        ));
        let bus = labmesh_drivers::sim::prologix::GpibBus::new([(p.gpib_address, sim.clone())]);
        servers.push(spawn(move |stopped| async move {
            bus.serve_tcp(listener, stopped).await
        }));
    }
    run_servers(servers, &lines).await
}

/// Where to serve a simulator on the LAN (`sim psu` and `sim toml`).
pub(super) struct Lan {
    pub tcp: Option<String>,
    pub vxi11: Option<String>,
    pub hislip: Option<String>,
    /// Another server (e.g. `--prologix`) was asked for: no default raw
    /// socket then.
    pub other: bool,
}

/// Start the raw-socket, VXI-11 and HiSLIP servers `lan` asks for (raw
/// SCPI on 127.0.0.1:5025 when nothing is), one banner line each.
pub(super) async fn serve_lan(
    backend: Backend,
    lan: Lan,
    lines: &mut Vec<String>,
) -> anyhow::Result<Vec<Server>> {
    let mut servers: Vec<Server> = Vec::new();
    if lan.tcp.is_some() || (lan.vxi11.is_none() && lan.hislip.is_none() && !lan.other) {
        let addr = lan.tcp.unwrap_or_else(|| "127.0.0.1:5025".to_string());
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        lines.push(format!("raw SCPI: tcp://{}", listener.local_addr()?));
        let b = backend.clone();
        servers.push(spawn(move |stopped| async move {
            labmesh_drivers::sim::backend::serve_tcp(b, listener, stopped).await
        }));
    }
    if let Some(addr) = lan.vxi11 {
        let addr = with_default_port(&addr, 111);
        let pm = tokio::net::TcpListener::bind(&addr)
            .await
            .with_context(|| format!("--vxi11: cannot listen on {addr} (port 111 needs root)"))?;
        let pm_addr = pm.local_addr()?;
        let core = tokio::net::TcpListener::bind((pm_addr.ip(), 0))
            .await
            .with_context(|| format!("--vxi11: no free port on {}", pm_addr.ip()))?;
        let core_addr = core.local_addr()?;
        let host = match pm_addr.ip() {
            std::net::IpAddr::V6(ip) => format!("[{ip}]"),
            ip => ip.to_string(),
        };
        let pyvisa = if pm_addr.port() == 111 {
            format!("TCPIP::{}::INSTR", pm_addr.ip())
        } else {
            format!("TCPIP::{},{}::INSTR", pm_addr.ip(), core_addr.port())
        };
        lines.push(format!(
            "VXI-11: portmapper {pm_addr}, core channel {core_addr}: vxi11://{host}:{}/inst0 \
             (PyVISA: {pyvisa})",
            pm_addr.port()
        ));
        let b = backend.clone();
        servers.push(spawn(move |stopped| async move {
            labmesh_drivers::sim::vxi11::serve(b, Some(pm), core, stopped).await
        }));
    }
    if let Some(addr) = lan.hislip {
        let addr = with_default_port(&addr, labmesh_drivers::hislip::PORT);
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .with_context(|| format!("--hislip: cannot listen on {addr}"))?;
        let a = listener.local_addr()?;
        lines.push(format!(
            "HiSLIP: {a}: TCPIP::{}::hislip0,{}::INSTR",
            a.ip(),
            a.port()
        ));
        let b = backend.clone();
        servers.push(spawn(move |stopped| async move {
            let opts = labmesh_drivers::sim::hislip::HislipServerOptions::default();
            labmesh_drivers::sim::hislip::serve(b, listener, opts, stopped).await
        }));
    }
    Ok(servers)
}

/// Print the banner, serve until a signal, then stop every server and
/// wait for each.
pub(super) async fn run_servers(
    servers: Vec<Server>,
    lines: &[String],
) -> anyhow::Result<ExitCode> {
    serve(servers, &lines.join("\n"), |servers| async move {
        for (stop, _) in &servers {
            let _ = stop.send(true);
        }
        for (_, task) in servers {
            task.await?.context("simulator")?;
        }
        anyhow::Ok(())
    })
    .await
}

pub(super) type Server = (
    tokio::sync::watch::Sender<bool>,
    tokio::task::JoinHandle<std::io::Result<()>>,
);

/// Run one simulator server until told to stop.
pub(super) fn spawn<F, Fut>(f: F) -> Server
where
    F: FnOnce(std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>) -> Fut,
    Fut: std::future::Future<Output = std::io::Result<()>> + Send + 'static,
{
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(f(Box::pin(async move {
        let _ = stopped.wait_for(|s| *s).await;
    })));
    (stop, task)
}

/// `HOST` or `HOST:PORT` (IPv6 as `[::1]` or `[::1]:PORT`) with `port` as the default.
pub(super) fn with_default_port(addr: &str, port: u16) -> String {
    if addr.parse::<std::net::SocketAddr>().is_ok() {
        return addr.to_string();
    }
    if addr.starts_with('[') && addr.ends_with(']') {
        return format!("{addr}:{port}");
    }
    if addr.parse::<std::net::Ipv6Addr>().is_ok() {
        return format!("[{addr}]:{port}");
    }
    if addr.contains(':') {
        addr.to_string()
    } else {
        format!("{addr}:{port}")
    }
}
