//! `labmesh get`: download a dataset (verified size and SHA-256).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::bail;
use labmesh_client::{BankClient, ClientError};
use labmesh_transfer::{DownloadOptions, Progress, TransferError};
use serde_json::json;

use crate::common::{connect, Global};
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
}

pub async fn exec(a: Args, global: &Global, ctx: &zmq::Context) -> anyhow::Result<ExitCode> {
    let client = connect(global, ctx).await?;
    let dataset_id = a.dataset_id.as_str();
    let banks: Vec<BankClient> = match &a.bank {
        Some(id) => vec![client.bank(Some(id)).await?],
        None => client.banks().await?,
    };
    if banks.is_empty() {
        bail!("no banks registered with the broker");
    }
    let dest = a.output.unwrap_or_else(|| PathBuf::from(dataset_id));
    for b in &banks {
        let progress = Arc::new(Progress::default());
        let opts = DownloadOptions {
            progress: Some(progress.clone()),
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
            Err(e) => return Err(e.into()),
        }
    }
    eprintln!(
        "labmesh: dataset {dataset_id:?} not found on {} bank(s)",
        banks.len()
    );
    Ok(ExitCode::from(2))
}
