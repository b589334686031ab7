//! `labmesh sim toml FILE`: a simulator derived from a declarative TOML
//! driver file (`labmesh_drivers::sim::toml`), served over TCP (raw
//! socket, VXI-11, HiSLIP) or a pseudo-terminal.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use labmesh_drivers::sim::toml::TomlSim;
use labmesh_drivers::sim::Backend;

use super::sim::{spawn, with_default_port, Server};
use crate::common::serve;

#[derive(Debug, clap::Args)]
pub struct Toml {
    /// The TOML driver file (as `[relay] driver_dirs` loads it).
    file: PathBuf,
    /// Serve SCPI over TCP at this address (default 127.0.0.1:5025 unless
    /// --vxi11 or --hislip is given).
    #[arg(long, conflicts_with = "pty")]
    tcp: Option<String>,
    /// Serve VXI-11: a portmapper at HOST[:PORT] (port default 111) and the
    /// core channel on a free port of the same host.
    #[arg(long, value_name = "HOST[:PORT]", conflicts_with = "pty")]
    vxi11: Option<String>,
    /// Serve HiSLIP at HOST[:PORT] (port default 4880).
    #[arg(long, value_name = "HOST[:PORT]", conflicts_with = "pty")]
    hislip: Option<String>,
    /// Serve on a new pseudo-terminal and print its path.
    #[arg(long)]
    pty: bool,
}

pub async fn exec(t: Toml) -> anyhow::Result<ExitCode> {
    let sim = TomlSim::load(&t.file)?;
    let head = format!("sim toml {}: {}", t.file.display(), sim.idn());
    let backend: Backend = Arc::new(sim);
    if t.pty {
        let port = labmesh_drivers::sim::backend::serve_pty(backend)?;
        let banner = format!("{head}\n{}", port.path().display());
        return serve(port, &banner, |port| port.close()).await;
    }
    let mut servers: Vec<Server> = Vec::new();
    let mut lines = vec![head];
    if t.tcp.is_some() || (t.vxi11.is_none() && t.hislip.is_none()) {
        let addr = t.tcp.unwrap_or_else(|| "127.0.0.1:5025".to_string());
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        lines.push(format!("raw SCPI: tcp://{}", listener.local_addr()?));
        let b = backend.clone();
        servers.push(spawn(move |stopped| async move {
            labmesh_drivers::sim::backend::serve_tcp(b, listener, stopped).await
        }));
    }
    if let Some(addr) = t.vxi11 {
        let addr = with_default_port(&addr, 111);
        let pm = tokio::net::TcpListener::bind(&addr)
            .await
            .with_context(|| format!("--vxi11: cannot listen on {addr} (port 111 needs root)"))?;
        let pm_addr = pm.local_addr()?;
        let core = tokio::net::TcpListener::bind((pm_addr.ip(), 0))
            .await
            .with_context(|| format!("--vxi11: no free port on {}", pm_addr.ip()))?;
        let core_addr = core.local_addr()?;
        lines.push(format!(
            "VXI-11: portmapper {pm_addr}, core channel {core_addr} (PyVISA: TCPIP::{},{}::INSTR)",
            core_addr.ip(),
            core_addr.port()
        ));
        let b = backend.clone();
        servers.push(spawn(move |stopped| async move {
            labmesh_drivers::sim::vxi11::serve(b, Some(pm), core, stopped).await
        }));
    }
    if let Some(addr) = t.hislip {
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
