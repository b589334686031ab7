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
    /// Where dataset content lives (`file` or `s3`), overriding `[bank] storage`.
    #[arg(long, value_parser = ["file", "s3"])]
    storage: Option<String>,
    /// S3 endpoint URL (`http://127.0.0.1:8333`), overriding `[bank.s3] endpoint`.
    #[arg(long)]
    s3_endpoint: Option<String>,
    /// S3 bucket, overriding `[bank.s3] bucket`.
    #[arg(long)]
    s3_bucket: Option<String>,
    /// S3 key prefix, overriding `[bank.s3] prefix`.
    #[arg(long)]
    s3_prefix: Option<String>,
    /// S3 region, overriding `[bank.s3] region`.
    #[arg(long)]
    s3_region: Option<String>,
    /// Rebuild the catalogue from the bucket before serving (S3 storage).
    #[arg(long)]
    reindex: bool,
}

const FLAGS: &[crate::common::Override] = &[
    ("--ingest-bind", "bank.ingest_bind"),
    ("--retrieve-bind", "bank.retrieve_bind"),
    ("--storage", "bank.storage"),
    ("--s3-endpoint", "bank.s3.endpoint"),
    ("--s3-bucket", "bank.s3.bucket"),
    ("--s3-prefix", "bank.s3.prefix"),
    ("--s3-region", "bank.s3.region"),
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
        match a.storage.as_deref() {
            Some("s3") => cfg.bank.storage = labmesh_config::StorageKind::S3,
            Some(_) => cfg.bank.storage = labmesh_config::StorageKind::File,
            None => {}
        }
        let s3 = &mut cfg.bank.s3;
        for (flag, field) in [
            (a.s3_endpoint, &mut s3.endpoint),
            (a.s3_bucket, &mut s3.bucket),
            (a.s3_prefix, &mut s3.prefix),
            (a.s3_region, &mut s3.region),
        ] {
            if let Some(v) = flag {
                *field = v;
            }
        }
        Ok(())
    })?;
    let mut opts = labmesh_bank::BankOptions::from_config(&cfg, &a.bank_id);
    opts.reindex = a.reindex;
    if a.reindex && opts.storage == labmesh_bank::Storage::File {
        anyhow::bail!("--reindex needs S3 storage (--storage s3): the file backend's catalogue is recovered at every start");
    }
    let bank = labmesh_bank::Bank::start(ctx, opts).await?;
    let banner = format!(
        "bank {}: ingest {}  retrieve {}{}",
        a.bank_id,
        bank.ingest_endpoint(),
        bank.retrieve_endpoint(),
        match bank.recovery().reindexed {
            Some(n) => format!("  (reindex: {n} datasets from the bucket)"),
            None => String::new(),
        }
    );
    serve(bank, &banner, |b| b.shutdown()).await
}
