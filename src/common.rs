//! Helpers shared by the subcommands: configuration loading with flag
//! overrides, connecting a client, `key=value` parsing, and running a node
//! until Ctrl-C / SIGTERM. A leaf: imports no subcommand module.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::Args;

use crate::cli_args::BrokerArg;
use labmesh_client::{Client, ClientOptions};
use labmesh_config::{Config, ConfigError, Seconds};
use labmesh_drivers::DriverRegistry;
use serde_json::{Map, Value};

/// Flags every subcommand takes.
#[derive(Debug, Clone, Args)]
pub struct Global {
    /// Configuration file (labmesh TOML); the labmesh defaults are used when
    /// the default file does not exist.
    #[arg(long, global = true, default_value = "labmesh.toml")]
    pub config: PathBuf,
    /// `--broker`, for the commands that reach a broker (see [`BrokerFlag`]).
    #[arg(skip)]
    pub broker: Option<BrokerArg>,
}

/// `--broker`, taken by the commands that reach a broker (relay, bank,
/// client commands); not by those that never do (drivers, sim, demo,
/// bench, broker).
#[derive(Debug, Clone, Args)]
pub struct BrokerFlag {
    /// Broker host (replaces `BROKER` in the file's endpoints, i.e.
    /// `[broker] address`), or its directory endpoint `tcp://HOST:PORT`
    /// (`HOST:PORT` works too), used as is by this node or client.
    #[arg(long, global = true, value_name = "HOST|tcp://HOST:PORT", value_parser = crate::cli_args::broker)]
    pub broker: Option<BrokerArg>,
}

impl Global {
    /// These flags with a subcommand's `--broker`.
    pub fn with_broker(&self, b: BrokerFlag) -> Global {
        Global {
            broker: b.broker,
            ..self.clone()
        }
    }
}

/// A flag that overrides a configuration key: (flag, dotted key).
pub type Override = (&'static str, &'static str);

/// The configuration file (or the defaults) with `--broker` applied.
pub fn load(global: &Global) -> anyhow::Result<Config> {
    load_with(global, &[], |_| Ok(()))
}

/// The file's configuration for what is read before the command runs
/// (the `[security]` keys): no warnings printed (the command's own load
/// prints them), a missing file gives the defaults (the command reports it).
pub fn load_lenient(global: &Global) -> anyhow::Result<Config> {
    Ok(Config::load_or_default(&global.config)?.0)
}

/// The configuration file (or the defaults) with `--broker` and then a
/// subcommand's flags (`apply`) applied, validated after the overrides: an
/// invalid value that a flag set is reported as that flag (`flags` says
/// which flag sets which key).
pub fn load_with(
    global: &Global,
    flags: &[Override],
    apply: impl FnOnce(&mut Config) -> anyhow::Result<()>,
) -> anyhow::Result<Config> {
    let (mut cfg, warnings, from) = Config::load_or_default(&global.config)?;
    for w in &warnings {
        tracing::warn!("{w}");
    }
    match from {
        Some(p) => tracing::debug!(file = %p.display(), "configuration loaded"),
        None if global.config != Path::new("labmesh.toml") => {
            bail!("{}: no such file", global.config.display())
        }
        None => tracing::debug!("no labmesh.toml here; using the labmesh defaults"),
    }
    if let Some(b) = &global.broker {
        cfg.broker.address = b.host.clone();
        if let Some(ep) = &b.endpoint {
            cfg.client.broker_rpc = ep.clone();
            cfg.relay.broker_rpc = ep.clone();
            cfg.bank.broker_rpc = ep.clone();
        }
    }
    apply(&mut cfg)?;
    let Err(e) = cfg.validate(&global.config) else {
        return Ok(cfg);
    };
    if let ConfigError::Invalid { key, why, .. } = &e {
        let global_flags = [("--broker", "broker.address")];
        if let Some((flag, _)) = global_flags.iter().chain(flags).find(|(_, k)| k == key) {
            bail!("{flag}: {why}");
        }
    }
    Err(e.into())
}

/// A flag's seconds, refused (naming the flag) unless usable as a period
/// (flags now use `crate::cli_args::seconds` as their clap parser).
#[allow(dead_code)]
pub fn seconds_flag(flag: &str, v: f64) -> anyhow::Result<Seconds> {
    Seconds::new(v).map_err(|e| anyhow::anyhow!("{flag} {v}: {e}"))
}

/// A client for the mesh `cfg` describes.
pub async fn connect_with(cfg: &Config, ctx: &zmq::Context) -> anyhow::Result<Client> {
    connect_opts(ctx, ClientOptions::from_config(cfg).without_bus()).await
}

/// Connect, failing fast when nothing listens at the broker's endpoint,
/// and naming that endpoint in every failure.
async fn connect_opts(ctx: &zmq::Context, opts: ClientOptions) -> anyhow::Result<Client> {
    let ep = opts.broker_rpc.clone();
    crate::probe::broker_listening(&ep).await?;
    Client::connect(ctx, opts)
        .await
        .with_context(|| format!("broker at {ep}"))
}

/// A client for the mesh the configuration describes, for one-shot
/// commands: the broker directory only, no bus subscription (nothing
/// decodes state messages nobody reads).
pub async fn connect(global: &Global, ctx: &zmq::Context) -> anyhow::Result<Client> {
    connect_with(&load(global)?, ctx).await
}

/// A client that also subscribes to the bus (`watch`).
pub async fn connect_bus(global: &Global, ctx: &zmq::Context) -> anyhow::Result<Client> {
    connect_opts(ctx, ClientOptions::from_config(&load(global)?)).await
}

/// The built-in drivers and the declarative ones from `[relay] driver_dirs`.
pub fn driver_registry(cfg: &Config) -> anyhow::Result<DriverRegistry> {
    let mut registry = DriverRegistry::with_builtins();
    for dir in &cfg.relay.driver_dirs {
        let names = registry
            .load_dir(dir)
            .with_context(|| format!("driver directory {}", dir.display()))?;
        tracing::info!(dir = %dir.display(), names = %names.join(", "), "declarative drivers loaded");
    }
    Ok(registry)
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

/// What stopping a node gives: nothing, or whether it stopped cleanly.
pub trait Stopped {
    /// As a result.
    fn into_result(self) -> anyhow::Result<()>;
}

impl Stopped for () {
    fn into_result(self) -> anyhow::Result<()> {
        Ok(())
    }
}

impl Stopped for anyhow::Result<()> {
    fn into_result(self) -> anyhow::Result<()> {
        self
    }
}

/// Run a started node until Ctrl-C / SIGTERM: print `banner` (its
/// endpoints), wait for the signal, then `stop` it. Every node command
/// (broker, relay, bank, sim) ends here.
pub async fn serve<H, F, Fut>(node: H, banner: &str, stop: F) -> anyhow::Result<ExitCode>
where
    F: FnOnce(H) -> Fut,
    Fut: Future,
    Fut::Output: Stopped,
{
    crate::memory::keep_trimmed();
    println!("{banner}");
    shutdown_signal().await;
    tracing::info!("shutting down");
    stop(node).await.into_result()?;
    Ok(ExitCode::SUCCESS)
}

/// Parse `key=value` pairs; a value that parses as JSON is taken as JSON.
pub fn parse_kv(pairs: &[String]) -> anyhow::Result<Map<String, Value>> {
    let mut map = Map::new();
    for p in pairs {
        let Some((k, v)) = p.split_once('=') else {
            bail!("expected key=value, got {p:?}");
        };
        if k.trim().is_empty() {
            bail!("{p:?}: the key before '=' is empty");
        }
        let value = serde_json::from_str(v).unwrap_or_else(|_| Value::String(v.to_string()));
        map.insert(k.to_string(), value);
    }
    Ok(map)
}

/// Hex SHA-256 of a file, streamed.
pub fn sha256_file(path: &Path) -> anyhow::Result<String> {
    use sha2::Digest;
    use std::io::Read;
    let mut f = std::fs::File::open(path).with_context(|| path.display().to_string())?;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(buf.get(..n).unwrap_or_default());
    }
    Ok(hex::encode(h.finalize()))
}
