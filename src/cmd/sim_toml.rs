//! `labmesh sim toml FILE`: a simulator derived from a declarative TOML
//! driver file (`labmesh_drivers::sim::toml`), served over TCP (raw
//! socket, VXI-11, HiSLIP) or a pseudo-terminal.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use labmesh_drivers::sim::toml::TomlSim;
use labmesh_drivers::sim::Backend;

use super::sim::{run_servers, serve_lan, Lan};
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
    let mut lines = vec![head];
    let lan = Lan {
        tcp: t.tcp,
        vxi11: t.vxi11,
        hislip: t.hislip,
        other: false,
    };
    let servers = serve_lan(backend, lan, &mut lines).await?;
    run_servers(servers, &lines).await
}
