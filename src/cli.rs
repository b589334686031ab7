//! Argument parsing and the thin glue from subcommands to the libraries.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use labmesh_client::{Client, ClientError, ClientOptions, Event};
use labmesh_config::{Config, Seconds};
use labmesh_drivers::{DriverRegistry, InstrumentConfig};
use serde_json::{Map, Value};

#[derive(Debug, Parser)]
#[command(name = "labmesh", version, about = "Lab-instrument mesh over ZeroMQ")]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub cmd: Command,
}

#[derive(Debug, Args)]
pub struct Global {
    /// Configuration file (labmesh TOML); the labmesh defaults are used when
    /// the default file does not exist.
    #[arg(long, global = true, default_value = "labmesh.toml")]
    pub config: PathBuf,
    /// Broker host, overriding `[broker] address`.
    #[arg(long, global = true)]
    pub broker: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the broker (directory + state bus).
    Broker {
        /// Directory bind, overriding `[broker] rpc_bind`.
        #[arg(long)]
        rpc_bind: Option<String>,
        /// XSUB bind, overriding `[broker] xsub_bind`.
        #[arg(long)]
        xsub_bind: Option<String>,
        /// XPUB bind, overriding `[broker] xpub_bind`.
        #[arg(long)]
        xpub_bind: Option<String>,
    },
    /// Run a relay hosting one instrument (flags) or the `[[relay.instruments]]`.
    Relay {
        /// Relay id of the single instrument.
        #[arg(long)]
        relay_id: Option<String>,
        /// Driver of the single instrument (see `labmesh drivers`).
        #[arg(long)]
        driver: Option<String>,
        /// Resource string (`TCPIP::host::5025::SOCKET`, `tcp://host:5025`,
        /// `ASRL/dev/ttyUSB0::INSTR`, `serial:///dev/ttyUSB0?baud=9600`).
        #[arg(long)]
        resource: Option<String>,
        /// RPC bind, overriding `[relay] default_rpc_bind` (`tcp://*:*` for any port).
        #[arg(long)]
        rpc: Option<String>,
        /// Seconds between state messages, overriding `[relay] state_interval`.
        #[arg(long)]
        state_interval: Option<f64>,
        /// Driver option `key=value` (repeatable).
        #[arg(long = "option", value_name = "KEY=VALUE")]
        options: Vec<String>,
    },
    /// Run a databank (dataset ingest, storage, retrieve).
    Bank {
        /// Bank id on the mesh.
        #[arg(long, default_value = "bank-0")]
        bank_id: String,
        /// Where datasets are stored, overriding `[bank] default_data_dir`.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Ingest bind, overriding `[bank] ingest_bind`.
        #[arg(long)]
        ingest_bind: Option<String>,
        /// Retrieve bind, overriding `[bank] retrieve_bind`.
        #[arg(long)]
        retrieve_bind: Option<String>,
    },
    /// Upload a file to a bank as a dataset (resumable; verified).
    Upload {
        /// The file.
        file: PathBuf,
        /// Relay id recorded as the dataset's source.
        #[arg(long, default_value = "cli")]
        relay_id: String,
        /// Dataset id (default: a new uuid).
        #[arg(long)]
        dataset_id: Option<String>,
        /// Metadata `key=value` (repeatable).
        #[arg(long = "meta", value_name = "KEY=VALUE")]
        meta: Vec<String>,
        /// Bank id (default: the first registered bank).
        #[arg(long)]
        bank: Option<String>,
    },
    /// List datasets in the banks' catalogues, newest first.
    Datasets {
        /// Only this bank.
        #[arg(long)]
        bank: Option<String>,
        /// Only datasets from this relay.
        #[arg(long)]
        relay: Option<String>,
        /// Created at or after: Unix seconds, or 30s / 10m / 2h / 7d ago.
        #[arg(long)]
        since: Option<String>,
        /// Created before: Unix seconds, or a duration ago.
        #[arg(long)]
        until: Option<String>,
        /// Metadata filter `key=value` (repeatable; all must match).
        #[arg(long = "meta", value_name = "KEY=VALUE")]
        meta: Vec<String>,
        /// At most N datasets.
        #[arg(long)]
        limit: Option<u32>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Download a dataset (verified size and SHA-256).
    Get {
        /// Dataset id.
        dataset_id: String,
        /// Output file (default: the dataset id).
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// Bank id (default: every bank until one has it).
        #[arg(long)]
        bank: Option<String>,
    },
    /// List relays and banks.
    Ls {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Call a method on a relay and print the result as JSON.
    Call {
        /// Relay id.
        relay: String,
        /// Method name (`lm.describe` lists them).
        method: String,
        /// Named parameters `key=value`; values are JSON when they parse as JSON.
        params: Vec<String>,
        /// All parameters as one JSON value (object, array or scalar).
        #[arg(long, conflicts_with = "params")]
        json: Option<String>,
        /// Seconds to wait for the reply.
        #[arg(long)]
        timeout: Option<f64>,
    },
    /// Print live state messages.
    Watch {
        /// Only this relay.
        relay: Option<String>,
        /// Stop after N messages.
        #[arg(long)]
        count: Option<u64>,
        /// Print the raw JSON of each message.
        #[arg(long)]
        json: bool,
        /// Also print presence (online/offline) and dataset announcements.
        #[arg(long)]
        all: bool,
    },
    /// List the drivers (built-in, and declarative ones from `[relay] driver_dirs`).
    Drivers,
    /// Run a whole mesh in one process and show it working.
    Demo,
    /// Measure the mesh next to a raw baseline from the same run.
    #[command(subcommand)]
    Bench(BenchCmd),
    /// Run a simulated instrument (for tests and demos).
    #[command(subcommand)]
    Sim(SimCmd),
}

#[derive(Debug, Subcommand)]
pub enum SimCmd {
    /// A simulated SCPI power supply (keysight / rigol / siglent dialect),
    /// or with --firmware the firmware PSU over the postcard device link.
    Psu {
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
    },
}

#[derive(Debug, Subcommand)]
pub enum BenchCmd {
    /// RPC round trips (client -> relay -> mock PSU) vs a raw zmq echo.
    Rpc {
        /// Calls per measurement.
        #[arg(long, default_value_t = 5000)]
        n: usize,
    },
    /// Many relays publishing state through one broker process; counts
    /// sequence gaps at a client, reports broker CPU and RSS.
    Soak {
        /// Relay ids (mock PSUs, hosted by one relay).
        #[arg(long, default_value_t = 100)]
        relays: usize,
        /// State messages per second per relay.
        #[arg(long, default_value_t = 10.0)]
        hz: f64,
        /// Duration of the measurement.
        #[arg(long, default_value_t = 600)]
        seconds: u64,
    },
}

impl Cli {
    /// Nodes log at info; client commands and the demo at warn, so their
    /// output stays readable. RUST_LOG overrides both.
    pub fn default_log_level(&self) -> &'static str {
        match self.cmd {
            Command::Broker { .. }
            | Command::Relay { .. }
            | Command::Bank { .. }
            | Command::Sim(_) => "info",
            Command::Demo => "error",
            _ => "warn",
        }
    }
}

fn load(global: &Global) -> anyhow::Result<Config> {
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
        cfg.broker.address = b.clone();
    }
    Ok(cfg)
}

/// A client for the mesh the configuration describes.
async fn connect(global: &Global, ctx: &zmq::Context) -> anyhow::Result<Client> {
    let cfg = load(global)?;
    Ok(Client::connect(ctx, ClientOptions::from_config(&cfg)).await?)
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

/// A flag's seconds, refused (naming the flag) unless usable as a period.
fn seconds_flag(flag: &str, v: f64) -> anyhow::Result<Seconds> {
    Seconds::new(v).map_err(|e| anyhow::anyhow!("{flag} {v}: {e}"))
}

/// Parse `key=value` pairs; a value that parses as JSON is taken as JSON.
pub fn parse_kv(pairs: &[String]) -> anyhow::Result<Map<String, Value>> {
    let mut map = Map::new();
    for p in pairs {
        let Some((k, v)) = p.split_once('=') else {
            bail!("expected key=value, got {p:?}");
        };
        let value = serde_json::from_str(v).unwrap_or_else(|_| Value::String(v.to_string()));
        map.insert(k.to_string(), value);
    }
    Ok(map)
}

pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let ctx = zmq::Context::new();
    match cli.cmd {
        Command::Broker {
            rpc_bind,
            xsub_bind,
            xpub_bind,
        } => {
            let cfg = load(&cli.global)?;
            let mut opts = labmesh_broker::BrokerOptions::from_config(&cfg);
            if let Some(b) = rpc_bind {
                opts.rpc_bind = b;
            }
            if let Some(b) = xsub_bind {
                opts.xsub_bind = b;
            }
            if let Some(b) = xpub_bind {
                opts.xpub_bind = b;
            }
            let broker = labmesh_broker::spawn(&ctx, opts).await?;
            println!(
                "broker: directory {}  xsub {}  xpub {}",
                broker.rpc_endpoint(),
                broker.xsub_endpoint(),
                broker.xpub_endpoint()
            );
            shutdown_signal().await;
            tracing::info!("shutting down");
            broker.shutdown().await;
            Ok(ExitCode::SUCCESS)
        }
        Command::Relay {
            relay_id,
            driver,
            resource,
            rpc,
            state_interval,
            options,
        } => {
            let mut cfg = load(&cli.global)?;
            if let Some(s) = state_interval {
                cfg.relay.state_interval = seconds_flag("--state-interval", s)?;
            }
            let mut registry = DriverRegistry::with_builtins();
            for dir in &cfg.relay.driver_dirs {
                let names = registry
                    .load_dir(dir)
                    .with_context(|| format!("driver directory {}", dir.display()))?;
                tracing::info!(dir = %dir.display(), ?names, "declarative drivers loaded");
            }
            let hosted = match (relay_id, driver) {
                (Some(id), Some(driver)) => {
                    let instrument = registry
                        .create(InstrumentConfig {
                            id: id.clone(),
                            driver,
                            resource,
                            options: parse_kv(&options)?,
                        })
                        .await
                        .with_context(|| format!("instrument {id}"))?;
                    vec![labmesh_relay::Hosted {
                        relay_id: id,
                        rpc_bind: rpc.unwrap_or_else(|| cfg.relay.default_rpc_bind.clone()),
                        poll_interval: cfg.relay.state_interval.duration(),
                        call_timeout: Duration::from_secs(10),
                        instrument,
                    }]
                }
                (None, None) => {
                    if let Some(r) = rpc {
                        cfg.relay.default_rpc_bind = r;
                    }
                    let hosted = labmesh_relay::hosted_from_config(&cfg, &registry).await?;
                    if hosted.is_empty() {
                        bail!(
                            "nothing to host: pass --relay-id ID --driver DRIVER, or add [[relay.instruments]] to {}",
                            cli.global.config.display()
                        );
                    }
                    hosted
                }
                _ => bail!("--relay-id and --driver go together"),
            };
            let relay =
                labmesh_relay::spawn(&ctx, labmesh_relay::RelayOptions::from_config(&cfg), hosted)
                    .await?;
            for s in relay.served() {
                println!("relay {}: {}", s.relay_id, s.rpc_endpoint);
            }
            shutdown_signal().await;
            tracing::info!("shutting down");
            relay.shutdown().await;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bank {
            bank_id,
            data_dir,
            ingest_bind,
            retrieve_bind,
        } => {
            let cfg = load(&cli.global)?;
            let mut opts = labmesh_bank::BankOptions::from_config(&cfg, &bank_id);
            if let Some(d) = data_dir {
                opts.data_dir = d;
            }
            if let Some(b) = ingest_bind {
                opts.ingest_bind = b;
            }
            if let Some(b) = retrieve_bind {
                opts.retrieve_bind = b;
            }
            let bank = labmesh_bank::Bank::start(&ctx, opts).await?;
            println!(
                "bank {bank_id}: ingest {}  retrieve {}",
                bank.ingest_endpoint(),
                bank.retrieve_endpoint()
            );
            shutdown_signal().await;
            tracing::info!("shutting down");
            bank.shutdown().await;
            Ok(ExitCode::SUCCESS)
        }
        Command::Upload {
            file,
            relay_id,
            dataset_id,
            meta,
            bank,
        } => {
            let cfg = load(&cli.global)?;
            let client = Client::connect(&ctx, ClientOptions::from_config(&cfg)).await?;
            let opts = labmesh_relay::upload_options(&cfg, &relay_id);
            crate::data::upload(
                &client,
                crate::data::UploadArgs {
                    file,
                    relay_id,
                    dataset_id,
                    meta,
                    bank,
                    opts,
                },
            )
            .await
        }
        Command::Datasets {
            bank,
            relay,
            since,
            until,
            meta,
            limit,
            json,
        } => {
            let client = connect(&cli.global, &ctx).await?;
            crate::data::datasets(
                &client,
                crate::data::ListArgs {
                    bank,
                    relay,
                    since,
                    until,
                    meta,
                    limit,
                    json,
                },
            )
            .await
        }
        Command::Get {
            dataset_id,
            output,
            bank,
        } => {
            let client = connect(&cli.global, &ctx).await?;
            crate::data::get(&client, &dataset_id, output, bank).await
        }
        Command::Ls { json } => {
            let client = connect(&cli.global, &ctx).await?;
            let relays = client.list_relays().await?;
            let banks = client.list_banks().await?;
            if json {
                println!("{}", serde_json::json!({"relays": relays, "banks": banks}));
            } else {
                println!("RELAY                ENDPOINT");
                for r in &relays {
                    println!("{:<20} {}", r.relay_id, r.rpc_endpoint);
                }
                println!("BANK                 INGEST / RETRIEVE");
                for b in &banks {
                    println!(
                        "{:<20} {} / {}",
                        b.bank_id,
                        b.ingest.as_deref().unwrap_or("-"),
                        b.retrieve.as_deref().unwrap_or("-")
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Call {
            relay,
            method,
            params,
            json,
            timeout,
        } => {
            let mut cfg = load(&cli.global)?;
            if let Some(t) = timeout {
                cfg.client.timeout_seconds = seconds_flag("--timeout", t)?;
            }
            let opts = ClientOptions::from_config(&cfg);
            let params = match json {
                Some(j) => serde_json::from_str(&j).context("--json is not valid JSON")?,
                None => Value::Object(parse_kv(&params)?),
            };
            let client = Client::connect(&ctx, opts).await?;
            match client.call(&relay, &method, params).await {
                Ok(v) => {
                    println!("{}", serde_json::to_string_pretty(&v)?);
                    Ok(ExitCode::SUCCESS)
                }
                Err(e @ ClientError::Remote { .. })
                | Err(e @ ClientError::Timeout { .. })
                | Err(e @ ClientError::NotFound(_)) => {
                    eprintln!("labmesh: {e}");
                    Ok(ExitCode::from(2))
                }
                Err(e) => Err(e.into()),
            }
        }
        Command::Watch {
            relay,
            count,
            json,
            all,
        } => {
            let client = connect(&cli.global, &ctx).await?;
            let mut rx = client.events();
            let mut seen = 0u64;
            let stop = shutdown_signal();
            tokio::pin!(stop);
            loop {
                let ev = tokio::select! {
                    _ = &mut stop => break,
                    ev = rx.recv() => ev,
                };
                let ev = match ev {
                    Ok(ev) => ev,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        eprintln!("labmesh: missed {n} messages (terminal too slow)");
                        continue;
                    }
                    Err(_) => break,
                };
                let s = match ev {
                    Event::State(s) => s,
                    Event::Presence(p) if all => {
                        println!("[presence] {} {} {}: {}", p.role, p.id, p.status, p.reason);
                        continue;
                    }
                    Event::Dataset(d) if all => {
                        println!(
                            "[dataset] {} on {}: {} bytes from {}",
                            d.dataset_id, d.bank_id, d.size, d.relay_id
                        );
                        continue;
                    }
                    _ => continue,
                };
                if relay.as_ref().is_some_and(|r| r != &s.relay_id) {
                    continue;
                }
                if json {
                    println!(
                        "{}",
                        serde_json::json!({"relay_id": s.relay_id, "state": s.state, "seq": s.seq, "ts": s.ts})
                    );
                } else {
                    println!("[state] {}: {}", s.relay_id, s.state);
                }
                seen += 1;
                if count.is_some_and(|c| seen >= c) {
                    break;
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Drivers => {
            let cfg = load(&cli.global)?;
            let mut registry = DriverRegistry::with_builtins();
            for dir in &cfg.relay.driver_dirs {
                registry
                    .load_dir(dir)
                    .with_context(|| format!("driver directory {}", dir.display()))?;
            }
            for name in registry.names() {
                println!("{name}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo => crate::demo::run(&ctx).await.map(|_| ExitCode::SUCCESS),
        Command::Sim(SimCmd::Psu {
            firmware: true,
            telemetry_ms,
            ..
        }) => {
            let period = (telemetry_ms > 0).then(|| Duration::from_millis(telemetry_ms));
            let port = labmesh_drivers::firmware::serve_firmware_pty(period)?;
            println!("sim psu (firmware): {}", port.path().display());
            println!("resource: {}", port.resource());
            shutdown_signal().await;
            port.close().await;
            Ok(ExitCode::SUCCESS)
        }
        Command::Sim(SimCmd::Psu {
            dialect,
            model,
            tcp,
            pty,
            load_ohms,
            latency_ms,
            ..
        }) => {
            let cfg = labmesh_drivers::sim::SimConfig {
                model,
                load_ohms,
                latency: Duration::from_millis(latency_ms),
                ..labmesh_drivers::sim::SimConfig::new(
                    dialect
                        .parse()
                        .map_err(|e| anyhow::anyhow!("--dialect {dialect}: {e}"))?,
                )
            };
            let sim = labmesh_drivers::sim::SimPsu::new(cfg)?;
            if pty {
                let port = sim.serve_pty()?;
                println!(
                    "sim psu ({dialect}) {}: {}",
                    sim.idn(),
                    port.path().display()
                );
                shutdown_signal().await;
                port.close().await;
            } else {
                let addr = tcp.unwrap_or_else(|| "127.0.0.1:5025".to_string());
                let listener = tokio::net::TcpListener::bind(&addr)
                    .await
                    .with_context(|| format!("cannot listen on {addr}"))?;
                println!(
                    "sim psu ({dialect}) {}: tcp://{}",
                    sim.idn(),
                    listener.local_addr()?
                );
                sim.serve_tcp(listener, shutdown_signal()).await?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench(BenchCmd::Soak {
            relays,
            hz,
            seconds,
        }) => crate::bench::soak(&ctx, relays, hz, seconds)
            .await
            .map(|_| ExitCode::SUCCESS),
        Command::Bench(BenchCmd::Rpc { n }) => {
            crate::bench::rpc(&ctx, n).await.map(|_| ExitCode::SUCCESS)
        }
    }
}
