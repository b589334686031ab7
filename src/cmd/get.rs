//! `labmesh get`: download a dataset (verified size and SHA-256).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::bail;
use labmesh_client::{BankClient, ClientError};
use labmesh_transfer::{DownloadOptions, Progress, TransferError};
use serde_json::json;

use crate::common::{connect_with, load_with, Global};
use crate::progress::with_bar;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Dataset id.
    dataset_id: String,
    /// Output file (default: the dataset id).
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// Bank id (default: every bank until one has it).
    #[arg(long)]
    bank: Option<String>,
    /// Seconds to wait for each answer from a bank (default `[client]
    /// timeout_seconds`; above 0, below 10^9). A bank that stays silent is
    /// given up after two waits (one retry).
    #[arg(long, value_name = "SECONDS", value_parser = crate::cli_args::seconds)]
    timeout: Option<labmesh_config::Seconds>,
    /// Replace the output file if it exists (without: refused, exit 1).
    #[arg(long)]
    force: bool,
}

pub async fn exec(a: Args, global: &Global, ctx: &zmq::Context) -> anyhow::Result<ExitCode> {
    let cfg = load_with(global, &[], |cfg| {
        if let Some(t) = a.timeout {
            cfg.client.timeout_seconds = t;
        }
        Ok(())
    })?;
    let dest = a
        .output
        .clone()
        .unwrap_or_else(|| PathBuf::from(&a.dataset_id));
    if !a.force && dest.exists() {
        bail!(
            "{} exists (--force to replace it, -o to write elsewhere)",
            dest.display()
        );
    }
    let client = connect_with(&cfg, ctx).await?;
    let dataset_id = a.dataset_id.as_str();
    let banks: Vec<BankClient> = match &a.bank {
        Some(id) => vec![client.bank(Some(id)).await?],
        None => client.banks().await?,
    };
    if banks.is_empty() {
        return Err(crate::exit::remote("no banks registered with the broker"));
    }
    for b in &banks {
        let progress = Arc::new(Progress::default());
        let opts = DownloadOptions {
            progress: Some(progress.clone()),
            timeout: cfg.client.timeout_seconds.duration(),
            retries: 1,
            ..DownloadOptions::default()
        };
        let label = format!("get {dataset_id}");
        match with_bar(&label, progress, b.download_with(dataset_id, &dest, opts)).await {
            Ok(r) => {
                println!(
                    "{}",
                    json!({"dataset_id": r.dataset_id, "bank_id": b.info().bank_id, "size": r.size, "sha256": r.sha256, "path": r.path})
                );
                return Ok(ExitCode::SUCCESS);
            }
            Err(ClientError::Transfer(TransferError::Remote(e))) if e.code == 404 => continue,
            Err(e) => {
                return Err(anyhow::Error::new(e).context(format!(
                    "bank {} ({})",
                    b.info().bank_id,
                    b.info().retrieve.as_deref().unwrap_or("-")
                )))
            }
        }
    }
    Err(crate::exit::remote(format!(
        "dataset {dataset_id:?} not found on {} bank(s)",
        banks.len()
    )))
}
