//! The subcommands: one module each, with its clap `Args` and its `exec`.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::common::Global;

mod bank;
mod bench;
mod bench_abuse;
mod bench_streams;
mod bench_web;
mod broker;
mod call;
mod datasets;
mod demo;
mod drivers;
mod get;
mod ls;
mod relay;
mod sim;
mod streams;
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

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the broker (directory + state bus).
    Broker(broker::Args),
    /// Run a relay hosting one instrument (flags) or the `[[relay.instruments]]`.
    Relay(relay::Args),
    /// Run a databank (dataset ingest, storage, retrieve).
    Bank(bank::Args),
    /// Upload a file to a bank as a dataset (resumable; verified).
    Upload(upload::Args),
    /// List datasets in the banks' catalogues, newest first.
    Datasets(datasets::Args),
    /// Download a dataset (verified size and SHA-256).
    Get(get::Args),
    /// List relays and banks.
    Ls(ls::Args),
    /// Call a method on a relay and print the result as JSON.
    Call(call::Args),
    /// Print live state messages (or, with --stream, a stream's samples).
    Watch(watch::Args),
    /// Print a relay's methods (params, units, ranges), streams, driver and identity.
    Describe(streams::DescribeArgs),
    /// List a relay's streams with their rate and health.
    Streams(streams::ListArgs),
    /// Control a relay's streams: enable, disable, add, remove, rate.
    #[command(subcommand)]
    Stream(streams::Control),
    /// List the drivers (built-in, and declarative ones from `[relay] driver_dirs`).
    Drivers,
    /// Run a whole mesh in one process and show it working.
    Demo,
    /// Measure the mesh next to a raw baseline from the same run.
    #[command(subcommand)]
    Bench(bench::Args),
    /// Serve the live web dashboard (HTTP, WebSocket, /metrics).
    Web(web::Args),
    /// Run a simulated instrument (for tests and demos).
    #[command(subcommand)]
    Sim(sim::Args),
}

impl Cli {
    /// Nodes log at info; client commands and the demo at warn, so their
    /// output stays readable. RUST_LOG overrides both.
    pub fn default_log_level(&self) -> &'static str {
        match self.cmd {
            Command::Broker(_)
            | Command::Relay(_)
            | Command::Bank(_)
            | Command::Sim(_)
            | Command::Web(_) => "info",
            Command::Demo => "error",
            _ => "warn",
        }
    }
}

/// Run the subcommand.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let ctx = zmq::Context::new();
    let g = &cli.global;
    match cli.cmd {
        Command::Broker(a) => broker::exec(a, g, &ctx).await,
        Command::Relay(a) => relay::exec(a, g, &ctx).await,
        Command::Bank(a) => bank::exec(a, g, &ctx).await,
        Command::Upload(a) => upload::exec(a, g, &ctx).await,
        Command::Datasets(a) => datasets::exec(a, g, &ctx).await,
        Command::Get(a) => get::exec(a, g, &ctx).await,
        Command::Ls(a) => ls::exec(a, g, &ctx).await,
        Command::Call(a) => call::exec(a, g, &ctx).await,
        Command::Watch(a) => watch::exec(a, g, &ctx).await,
        Command::Describe(a) => streams::describe(a, g, &ctx).await,
        Command::Streams(a) => streams::list(a, g, &ctx).await,
        Command::Stream(c) => streams::control(c, g, &ctx).await,
        Command::Drivers => drivers::exec(g).await,
        Command::Demo => demo::exec(&ctx).await,
        Command::Bench(a) => bench::exec(a, &ctx).await,
        Command::Web(a) => web::exec(a, g, &ctx).await,
        Command::Sim(a) => sim::exec(a).await,
    }
}
