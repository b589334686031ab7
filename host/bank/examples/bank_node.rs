//! A standalone bank process for tests and benchmarks (the real CLI is
//! `labmesh bank`).
//!
//! ```text
//! bank_node DATA_DIR [--ingest EP] [--retrieve EP] [--bank-id ID]
//!           [--checkpoint-bytes N] [--broker-rpc EP] [--broker-xsub EP]
//! ```
//!
//! Prints `READY <ingest> <retrieve>` on stdout once both sockets are bound,
//! then serves until stdin reaches end of file (graceful shutdown) or the
//! process is killed.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use anyhow::{bail, Context};
use labmesh_bank::{Bank, BankOptions};
use std::io::Read;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let mut args = std::env::args().skip(1);
    let dir = args.next().context("usage: bank_node DATA_DIR [options]")?;
    let mut opts = BankOptions::new("bank-node", dir);
    while let Some(flag) = args.next() {
        let value = args
            .next()
            .with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--ingest" => opts.ingest_bind = value,
            "--retrieve" => opts.retrieve_bind = value,
            "--bank-id" => opts.bank_id = value,
            "--checkpoint-bytes" => opts.checkpoint_bytes = value.parse()?,
            "--broker-rpc" => opts.broker_rpc = Some(value),
            "--broker-xsub" => opts.broker_xsub = Some(value),
            "--heartbeat-ms" => opts.heartbeat = Duration::from_millis(value.parse()?),
            // S3 storage: --s3 ENDPOINT/BUCKET[/PREFIX]
            "--s3" => {
                let (endpoint, rest) = value
                    .rsplit_once("//")
                    .and_then(|(scheme, r)| {
                        let (host, path) = r.split_once('/')?;
                        Some((format!("{scheme}//{host}"), path.to_string()))
                    })
                    .context("--s3 http://HOST:PORT/BUCKET[/PREFIX]")?;
                let (bucket, prefix) = rest.split_once('/').unwrap_or((rest.as_str(), ""));
                let mut o = labmesh_bank::S3Options::new(&endpoint, bucket);
                o.prefix = prefix.to_string();
                o.part_size = labmesh_bank::s3::MIN_PART_SIZE;
                o.request_timeout = Duration::from_secs(5);
                o.max_retries = 1;
                o.retry_timeout = Duration::from_secs(5);
                opts.storage = labmesh_bank::Storage::S3(o);
            }
            "--reindex" => opts.reindex = value == "1",
            other => bail!("unknown option {other}"),
        }
    }
    let ctx = zmq::Context::new();
    let bank = Bank::start(&ctx, opts).await?;
    println!(
        "READY {} {}",
        bank.ingest_endpoint(),
        bank.retrieve_endpoint()
    );
    // Wait for stdin to close (tokio's stdin needs a feature we do not use).
    let _ = tokio::task::spawn_blocking(|| {
        let mut buf = [0u8; 64];
        while std::io::stdin().read(&mut buf).unwrap_or(0) > 0 {}
    })
    .await;
    bank.shutdown().await;
    Ok(())
}
