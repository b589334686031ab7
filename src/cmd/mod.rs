//! The subcommands: one module each, with its clap `Args` and its `exec`.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::common::{BrokerFlag, Global};

mod bank;
mod bench;
mod bench_abuse;
mod bench_all;
mod bench_bank;
mod bench_bus;
mod bench_cascade;
mod bench_curve;
mod bench_directory;
mod bench_gateway;
mod bench_links;
mod bench_rpc_cpu;
mod bench_streams;
mod bench_web;
mod broker;
mod call;
mod datasets;
mod demo;
mod drivers;
mod get;
mod install_service;
mod keygen;
mod lock;
mod ls;
mod relay;
mod relay_reload;
mod scan;
mod sim;
mod sim_toml;
mod streams;
mod up;
mod upload;
mod watch;
mod web;

#[derive(Debug, Parser)]
#[command(name = "labmesh", version, about = "Lab-instrument mesh over ZeroMQ")]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub cmd: Command,
}

/// A subcommand's arguments plus `--broker`, for the commands that reach a
/// broker (the others do not offer the flag).
#[derive(Debug, clap::Args)]
pub struct Net<A: clap::Args> {
    #[command(flatten)]
    pub args: A,
    #[command(flatten)]
    pub broker: BrokerFlag,
}

/// [`Net`] for a command with subcommands: `--broker` is taken before or
/// after the subcommand.
#[derive(Debug, clap::Args)]
pub struct NetSub<C: clap::Subcommand> {
    #[command(subcommand)]
    pub cmd: C,
    #[command(flatten)]
    pub broker: BrokerFlag,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the broker (directory + state bus).
    Broker(broker::Args),
    /// Run a relay hosting one instrument (flags) or the `[[relay.instruments]]`.
    Relay(Net<relay::Args>),
    /// Run a databank (dataset ingest, storage, retrieve).
    Bank(Net<bank::Args>),
    /// Upload a file to a bank as a dataset (resumable; verified).
    Upload(Net<upload::Args>),
    /// List datasets in the banks' catalogues, newest first.
    Datasets(Net<datasets::Args>),
    /// Download a dataset (verified size and SHA-256).
    Get(Net<get::Args>),
    /// List relays and banks.
    Ls(Net<ls::Args>),
    /// Call a method on a relay and print the result as JSON.
    Call(Net<call::Args>),
    /// Print live state messages (or, with --stream, a stream's samples).
    Watch(Net<watch::Args>),
    /// Take an instrument's lease (print it, or hold it while `-- CMD` runs).
    Lock(Net<lock::Args>),
    /// Release an instrument's lease (token from --token or LABMESH_LEASE).
    Unlock(Net<lock::UnlockArgs>),
    /// Who holds the lease of one relay, or of every relay.
    Who(Net<lock::WhoArgs>),
    /// Print a relay's methods (params, units, ranges), streams, driver and identity.
    Describe(Net<streams::DescribeArgs>),
    /// List a relay's streams with their rate and health.
    Streams(Net<streams::ListArgs>),
    /// Control a relay's streams: enable, disable, add, remove, rate.
    Stream(NetSub<streams::Control>),
    /// List the drivers (built-in, and declarative ones from `[relay] driver_dirs`).
    Drivers,
    /// Run a whole mesh in one process and show it working.
    Demo(demo::Args),
    /// Run every node the configuration file describes in one process
    /// (broker; bank with `[bank]`; relay with `[[relay.instruments]]`; web
    /// with `[web]`).
    Up(up::Args),
    /// Measure the mesh next to a raw baseline from the same run.
    #[command(subcommand)]
    Bench(bench::Args),
    /// Write the systemd units (broker, bank, relay@) for this binary.
    InstallService(install_service::Args),
    /// Serve the live web dashboard (HTTP, WebSocket, /metrics).
    Web(web::Args),
    /// Run a simulated instrument (for tests and demos).
    #[command(subcommand)]
    Sim(sim::Args),
    /// List serial ports and USBTMC devices; with --probe (and --tcp) ask
    /// them for *IDN? and print ready [[relay.instruments]] blocks.
    Scan(scan::Args),
    /// Print a CURVE key pair (env, json or toml) under the names nodes read.
    Keygen(keygen::Args),
}

impl Cli {
    /// Whether the subcommand reads the configuration file (bench reads
    /// its `[security]`). For the others (keygen, sim, scan, demo,
    /// install-service) an explicit `--config` gets a warning that it has
    /// no effect, rather than being ignored in silence.
    pub fn reads_config(&self) -> bool {
        !matches!(
            self.cmd,
            Command::Keygen(_)
                | Command::Sim(_)
                | Command::Scan(_)
                | Command::Demo(_)
                | Command::InstallService(_)
        )
    }

    /// Nodes log at info; client commands and the demo at warn, so their
    /// output stays readable. RUST_LOG overrides both.
    pub fn default_log_level(&self) -> &'static str {
        match self.cmd {
            Command::Broker(_)
            | Command::Relay(_)
            | Command::Bank(_)
            | Command::Sim(_)
            | Command::Web(_)
            | Command::Up(_) => "info",
            Command::Demo(_) => "error",
            _ => "warn",
        }
    }
}

/// Run the subcommand.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let ctx = zmq::Context::new();
    let g = &cli.global;
    // CURVE keys ([security], ZMQ_*KEY) go on the context before any
    // socket exists; kept until the command ends.
    let _security = match cli.cmd {
        Command::Keygen(_)
        | Command::Sim(_)
        | Command::Scan(_)
        | Command::Drivers
        | Command::Demo(_)
        | Command::InstallService(_) => None,
        _ => crate::security::install(&ctx, &crate::common::load_lenient(g)?)?,
    };
    match cli.cmd {
        Command::Broker(a) => broker::exec(a, g, &ctx).await,
        Command::Relay(a) => relay::exec(a.args, &g.with_broker(a.broker), &ctx).await,
        Command::Bank(a) => bank::exec(a.args, &g.with_broker(a.broker), &ctx).await,
        Command::Upload(a) => upload::exec(a.args, &g.with_broker(a.broker), &ctx).await,
        Command::Datasets(a) => datasets::exec(a.args, &g.with_broker(a.broker), &ctx).await,
        Command::Get(a) => get::exec(a.args, &g.with_broker(a.broker), &ctx).await,
        Command::Ls(a) => ls::exec(a.args, &g.with_broker(a.broker), &ctx).await,
        Command::Call(a) => call::exec(a.args, &g.with_broker(a.broker), &ctx).await,
        Command::Watch(a) => watch::exec(a.args, &g.with_broker(a.broker), &ctx).await,
        Command::Lock(a) => lock::exec(a.args, &g.with_broker(a.broker), &ctx).await,
        Command::Unlock(a) => lock::exec_unlock(a.args, &g.with_broker(a.broker), &ctx).await,
        Command::Who(a) => lock::exec_who(a.args, &g.with_broker(a.broker), &ctx).await,
        Command::Describe(a) => streams::describe(a.args, &g.with_broker(a.broker), &ctx).await,
        Command::Streams(a) => streams::list(a.args, &g.with_broker(a.broker), &ctx).await,
        Command::Stream(c) => streams::control(c.cmd, &g.with_broker(c.broker), &ctx).await,
        Command::Drivers => drivers::exec(g).await,
        Command::Demo(a) => demo::exec(a, &ctx).await,
        Command::Up(a) => up::exec(a, g, &ctx).await,
        Command::Bench(a) => bench::exec(a, &ctx).await,
        Command::Web(a) => web::exec(a, g, &ctx).await,
        Command::Sim(a) => sim::exec(a).await,
        Command::Scan(a) => scan::exec(a).await,
        Command::InstallService(a) => install_service::exec(a).await,
        Command::Keygen(a) => keygen::exec(a).await,
    }
}
