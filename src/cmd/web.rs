//! `labmesh web`: the live dashboard (HTTP + WebSocket + /metrics).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use labmesh_client::{Client, ClientOptions};

use crate::common::{load_with, shutdown_signal, Global};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Listen address (overrides `[web] listen`; default 127.0.0.1:8080).
    /// On a non-loopback address state-changing actions need the token.
    #[arg(long)]
    listen: Option<String>,
    /// File holding the operator token (overrides `[web] token_file`).
    #[arg(long)]
    token_file: Option<PathBuf>,
}

pub async fn exec(a: Args, global: &Global, ctx: &zmq::Context) -> anyhow::Result<ExitCode> {
    let cfg = load_with(global, &[("--listen", "web.listen")], |c| {
        if let Some(l) = &a.listen {
            c.web.listen = l.clone();
        }
        if let Some(f) = &a.token_file {
            c.web.token_file = Some(f.clone());
        }
        Ok(())
    })?;
    let options = options_from_config(&cfg)?;
    let client = Client::connect(ctx, ClientOptions::from_config(&cfg)).await?;
    let web = labmesh_web::spawn(client, options).await?;
    println!("labmesh web: http://{}/", web.addr());
    shutdown_signal().await;
    web.shutdown().await;
    Ok(ExitCode::SUCCESS)
}

/// The dashboard's options from `[web]` (`labmesh web` and `labmesh up`):
/// the listen address, the operator token (a token file must not be
/// empty), the queues and the gauges. Warns when a non-local address has
/// no token.
pub(super) fn options_from_config(
    cfg: &labmesh_config::Config,
) -> anyhow::Result<labmesh_web::WebOptions> {
    let listen: SocketAddr = cfg
        .web
        .listen
        .parse()
        .with_context(|| format!("web.listen {:?}", cfg.web.listen))?;
    let token = match &cfg.web.token_file {
        Some(f) => {
            let t = std::fs::read_to_string(f)
                .with_context(|| format!("token file {}", f.display()))?;
            let t = t.trim().to_string();
            anyhow::ensure!(!t.is_empty(), "token file {} is empty", f.display());
            Some(t)
        }
        None => cfg.web.token.clone(),
    };
    if !listen.ip().is_loopback() && token.is_none() {
        tracing::warn!(%listen, "no operator token: on this address every state-changing action will be refused (403)");
    }
    Ok(labmesh_web::WebOptions {
        listen,
        token,
        ws_queue_bytes: cfg.web.ws_queue_bytes,
        max_ws: cfg.web.max_clients,
        gauges: match &cfg.web.gauges {
            labmesh_config::WebGauges::All(false) => labmesh_web::Gauges::Off,
            labmesh_config::WebGauges::All(true) => labmesh_web::Gauges::All,
            labmesh_config::WebGauges::Fields(f) => labmesh_web::Gauges::Fields(f.clone()),
        },
        ..Default::default()
    })
}
