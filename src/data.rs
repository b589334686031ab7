//! `labmesh upload | datasets | get`: datasets on the mesh's banks.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use labmesh_client::{BankClient, Client, ClientError};
use labmesh_transfer::{DownloadOptions, Progress, Query, TransferError, UploadOptions};
use serde_json::{json, Value};

/// A progress bar fed from a [`Progress`] while `fut` runs, when stdout is a
/// terminal; nothing otherwise.
async fn with_bar<T>(
    label: &str,
    progress: Arc<Progress>,
    fut: impl std::future::Future<Output = T>,
) -> T {
    if !std::io::stdout().is_terminal() {
        return fut.await;
    }
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.set_message(label.to_string());
    let ticker = {
        let bar = bar.clone();
        tokio::spawn(async move {
            loop {
                let (done, total) = progress.get();
                bar.set_length(total.max(done));
                bar.set_position(done);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let out = fut.await;
    ticker.abort();
    bar.finish_and_clear();
    out
}

/// `k=v` pairs to a JSON object (values that parse as JSON stay JSON).
fn meta_object(pairs: &[String]) -> anyhow::Result<Value> {
    Ok(Value::Object(crate::cli::parse_kv(pairs)?))
}

/// `1700000000` (Unix seconds) or `30s` / `10m` / `2h` / `7d` ago.
pub fn parse_time(s: &str) -> anyhow::Result<f64> {
    if let Ok(t) = s.parse::<f64>() {
        return Ok(t);
    }
    let (num, unit) = s.split_at(s.len().saturating_sub(1));
    let n: f64 = num
        .parse()
        .with_context(|| format!("{s:?}: expected Unix seconds or a duration like 10m, 2h, 7d"))?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86400.0,
        _ => bail!("{s:?}: unit must be s, m, h or d"),
    };
    Ok(labmesh_proto::unix_now() - secs)
}

pub struct UploadArgs {
    pub file: PathBuf,
    pub relay_id: String,
    pub dataset_id: Option<String>,
    pub meta: Vec<String>,
    pub bank: Option<String>,
    pub opts: UploadOptions,
}

pub async fn upload(client: &Client, a: UploadArgs) -> anyhow::Result<ExitCode> {
    let bank = client.bank(a.bank.as_deref()).await?;
    let progress = Arc::new(Progress::default());
    let opts = UploadOptions {
        dataset_id: a.dataset_id,
        relay_id: a.relay_id,
        meta: meta_object(&a.meta)?,
        progress: Some(progress.clone()),
        ..a.opts
    };
    let label = format!("upload {}", a.file.display());
    let receipt = with_bar(&label, progress, bank.upload_file(&a.file, opts)).await?;
    println!(
        "{}",
        json!({"dataset_id": receipt.dataset_id, "bank_id": bank.info().bank_id, "size": receipt.size, "sha256": receipt.sha256})
    );
    Ok(ExitCode::SUCCESS)
}

pub struct ListArgs {
    pub bank: Option<String>,
    pub relay: Option<String>,
    pub since: Option<String>,
    pub until: Option<String>,
    pub meta: Vec<String>,
    pub limit: Option<u32>,
    pub json: bool,
}

pub async fn datasets(client: &Client, a: ListArgs) -> anyhow::Result<ExitCode> {
    let banks = match &a.bank {
        Some(id) => vec![client.bank(Some(id)).await?],
        None => client.banks().await?,
    };
    let mut meta = Vec::new();
    for p in &a.meta {
        let Some((k, v)) = p.split_once('=') else {
            bail!("--meta expects key=value, got {p:?}");
        };
        meta.push((k.to_string(), v.to_string()));
    }
    let query = Query {
        relay_id: a.relay.clone(),
        since: a.since.as_deref().map(parse_time).transpose()?,
        until: a.until.as_deref().map(parse_time).transpose()?,
        meta,
        limit: a.limit,
        ..Query::default()
    };
    let mut all = Vec::new();
    for b in &banks {
        match b.list_datasets(query.clone()).await {
            Ok(list) => all.extend(list),
            Err(e) => eprintln!("labmesh: bank {}: {e}", b.info().bank_id),
        }
    }
    all.sort_by(|x, y| y.created.total_cmp(&x.created));
    if let Some(n) = a.limit {
        all.truncate(n as usize);
    }
    if a.json {
        println!("{}", serde_json::to_string(&all)?);
    } else {
        println!(
            "{:<34} {:<10} {:<12} {:>12}  {:<20} META",
            "DATASET", "BANK", "RELAY", "BYTES", "CREATED (UTC s)"
        );
        for d in &all {
            println!(
                "{:<34} {:<10} {:<12} {:>12}  {:<20.3} {}",
                d.dataset_id, d.bank_id, d.relay_id, d.size, d.created, d.meta
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn get(
    client: &Client,
    dataset_id: &str,
    out: Option<PathBuf>,
    bank: Option<String>,
) -> anyhow::Result<ExitCode> {
    let banks: Vec<BankClient> = match &bank {
        Some(id) => vec![client.bank(Some(id)).await?],
        None => client.banks().await?,
    };
    if banks.is_empty() {
        bail!("no banks registered with the broker");
    }
    let dest = out.unwrap_or_else(|| PathBuf::from(dataset_id));
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
