//! `labmesh upload`: a file to a bank as a dataset (resumable; verified).
//!
//! The upload token is derived from the file ([`labmesh_transfer::file_token`]:
//! canonical path, size, mtime, dataset id, bank id), and so is the default
//! dataset id, so running the same command again after a crash, a lost
//! network or SIGKILL resumes where the bank stopped. An upload that fails,
//! or is stopped with Ctrl-C or SIGTERM, is aborted at the bank, which frees
//! its partial bytes at once.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use labmesh_transfer::{Progress, UploadOptions};
use serde_json::{json, Value};

use crate::common::{connect_with, load, parse_kv, shutdown_signal, Global};
use crate::progress::with_bar;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The file.
    file: PathBuf,
    /// Relay id recorded as the dataset's source.
    #[arg(long, default_value = "cli", value_parser = crate::cli_args::node_id)]
    relay_id: String,
    /// Dataset id (default: derived from the file's path, size and mtime,
    /// so a rerun resumes; a new uuid for a pipe or device).
    #[arg(long)]
    dataset_id: Option<String>,
    /// Metadata `key=value` (repeatable; the key not empty).
    #[arg(long = "meta", value_name = "KEY=VALUE", value_parser = crate::cli_args::key_value)]
    meta: Vec<String>,
    /// Bank id (default: the first registered bank).
    #[arg(long)]
    bank: Option<String>,
}

pub async fn exec(a: Args, global: &Global, ctx: &zmq::Context) -> anyhow::Result<ExitCode> {
    let cfg = load(global)?;
    let client = connect_with(&cfg, ctx).await?;
    let bank = client.bank(a.bank.as_deref()).await?;
    let bank_id = bank.info().bank_id.clone();
    let dataset_id = match a.dataset_id {
        Some(id) => id,
        None => default_dataset_id(&a.file),
    };
    let token = labmesh_transfer::file_token(&a.file, &dataset_id, &bank_id)
        .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
    let progress = Arc::new(Progress::default());
    let opts = UploadOptions {
        dataset_id: Some(dataset_id.clone()),
        meta: Value::Object(parse_kv(&a.meta)?),
        progress: Some(progress.clone()),
        token: Some(token.clone()),
        ..labmesh_relay::upload_options(&cfg, &a.relay_id)
    };
    let label = format!("upload {}", a.file.display());
    // The upload aborts its own session when it fails; a signal drops it,
    // so the abort is sent from here.
    let receipt = tokio::select! {
        r = with_bar(&label, progress, bank.upload_file(&a.file, opts)) => r?,
        _ = shutdown_signal() => {
            if let Some(ingest) = bank.info().ingest.as_deref() {
                if let Err(e) = labmesh_transfer::abort_upload(ctx, ingest, &dataset_id, &token).await {
                    tracing::warn!(error = %e, "could not abort the upload at the bank");
                }
            }
            eprintln!("upload interrupted; the bank was told to delete its partial data");
            return Ok(ExitCode::from(130));
        }
    };
    println!(
        "{}",
        json!({"dataset_id": receipt.dataset_id, "bank_id": bank_id, "size": receipt.size,
               "sha256": receipt.sha256, "resumed_from": receipt.resumed_from})
    );
    Ok(ExitCode::SUCCESS)
}

/// 32 hex digits from the file's identity (canonical path, size, mtime), so
/// the same file gets the same id; a uuid when it is not a regular file.
fn default_dataset_id(file: &std::path::Path) -> String {
    labmesh_transfer::file_token(file, "", "")
        .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string())
}
