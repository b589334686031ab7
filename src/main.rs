//! `labmesh`: run mesh nodes and talk to them.

mod cli_args;
mod cmd;
mod common;
mod exit;
mod memory;
mod probe;
mod progress;
mod security;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches};

fn main() -> ExitCode {
    let mut command = cmd::Cli::command();
    let matches = command.get_matches_mut();
    let cli = match cmd::Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.format(&mut command).exit(),
    };
    if !cli.reads_config() && explicit_config(&matches) {
        // A warning, not an error: wrappers pass --config to every command.
        eprintln!(
            "labmesh: warning: --config has no effect on `labmesh {}` (it reads no configuration file)",
            matches.subcommand_name().unwrap_or_default()
        );
    }
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(cli.default_log_level()));
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour only for a person at a terminal: journald and log files
        // get plain text.
        .with_ansi(std::io::stderr().is_terminal());
    // Under systemd (stderr connected to the journal) journald stamps each
    // line itself.
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        fmt.without_time().init();
    } else {
        fmt.init();
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("labmesh: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(cmd::run(cli)) {
        Ok(code) => code,
        Err(e) => exit::report(&e),
    }
}

/// Whether `--config` was given on the command line (at any level: it is a
/// global flag), as opposed to its default.
fn explicit_config(m: &clap::ArgMatches) -> bool {
    let mut m = Some(m);
    while let Some(cur) = m {
        if cur.value_source("config") == Some(clap::parser::ValueSource::CommandLine) {
            return true;
        }
        m = cur.subcommand().map(|(_, sub)| sub);
    }
    false
}
