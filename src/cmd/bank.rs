//! `labmesh bank`: dataset ingest, storage and retrieve.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::common::{load_with, serve, Global};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Bank id on the mesh (1..=128 of letters, digits, `.`, `_`, `-`).
    #[arg(long, default_value = "bank-0", value_parser = crate::cli_args::node_id)]
    bank_id: String,
    /// Where datasets are stored, overriding `[bank] default_data_dir`.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Ingest bind, overriding `[bank] ingest_bind`.
    #[arg(long, value_name = "ENDPOINT", value_parser = crate::cli_args::endpoint)]
    ingest_bind: Option<String>,
    /// Retrieve bind, overriding `[bank] retrieve_bind`.
    #[arg(long, value_name = "ENDPOINT", value_parser = crate::cli_args::endpoint)]
    retrieve_bind: Option<String>,
}

const FLAGS: &[crate::common::Override] = &[
    ("--ingest-bind", "bank.ingest_bind"),
    ("--retrieve-bind", "bank.retrieve_bind"),
];

pub async fn exec(a: Args, global: &Global, ctx: &zmq::Context) -> anyhow::Result<ExitCode> {
    let cfg = load_with(global, FLAGS, |cfg| {
        if let Some(d) = a.data_dir {
            cfg.bank.default_data_dir = d;
        }
        if let Some(b) = a.ingest_bind {
            cfg.bank.ingest_bind = b;
        }
        if let Some(b) = a.retrieve_bind {
            cfg.bank.retrieve_bind = b;
        }
        Ok(())
    })?;
    let opts = labmesh_bank::BankOptions::from_config(&cfg, &a.bank_id);
    let bank = labmesh_bank::Bank::start(ctx, opts).await?;
    let banner = format!(
        "bank {}: ingest {}  retrieve {}",
        a.bank_id,
        bank.ingest_endpoint(),
        bank.retrieve_endpoint()
    );
    serve(bank, &banner, |b| b.shutdown()).await
}
