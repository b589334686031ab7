//! `labmesh upload`: a file to a bank as a dataset (resumable; verified).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use labmesh_transfer::{Progress, UploadOptions};
use serde_json::{json, Value};

use crate::common::{connect_with, load, parse_kv, Global};
use crate::progress::with_bar;

#[derive(Debug, clap::Args)]
pub struct Args {
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
}

pub async fn exec(a: Args, global: &Global, ctx: &zmq::Context) -> anyhow::Result<ExitCode> {
    let cfg = load(global)?;
    let client = connect_with(&cfg, ctx).await?;
    let bank = client.bank(a.bank.as_deref()).await?;
    let progress = Arc::new(Progress::default());
    let opts = UploadOptions {
        dataset_id: a.dataset_id,
        meta: Value::Object(parse_kv(&a.meta)?),
        progress: Some(progress.clone()),
        ..labmesh_relay::upload_options(&cfg, &a.relay_id)
    };
    let label = format!("upload {}", a.file.display());
    let receipt = with_bar(&label, progress, bank.upload_file(&a.file, opts)).await?;
    println!(
        "{}",
        json!({"dataset_id": receipt.dataset_id, "bank_id": bank.info().bank_id, "size": receipt.size, "sha256": receipt.sha256})
    );
    Ok(ExitCode::SUCCESS)
}
