//! labmesh databank: ingest, crash-safe storage, SQLite catalogue, retrieve.
//!
//! A [`Bank`] binds two ROUTER sockets, wire-compatible with the Python
//! `labmesh.databank.DataBank`:
//!
//! * **ingest** (`[bank] ingest_bind`): upload sessions — labmesh v0 ones
//!   keyed by the sender's identity, and resumable ones keyed by an upload
//!   token (extension);
//! * **retrieve** (`[bank] retrieve_bind`): `get` (paced legacy stream, or
//!   credit-based with an offset), and the `list_datasets` catalogue query.
//!
//! It stays registered with the broker through
//! `labmesh_wire::register::keep_registered` (hello retried until
//! acknowledged, heartbeats, re-registration after a broker restart, `bye`
//! on shutdown) and announces each committed dataset on
//! `dataset.<bank_id>`. See [`store`] for the on-disk layout and the crash
//! guarantees, and `docs/PROTOCOL.md` for every message.
//!
//! ```no_run
//! # async fn demo() -> Result<(), labmesh_bank::BankError> {
//! let ctx = zmq::Context::new();
//! let opts = labmesh_bank::BankOptions::new("bank-1", "./bank_data");
//! let bank = labmesh_bank::Bank::start(&ctx, opts).await?;
//! println!("uploads to {}", bank.ingest_endpoint());
//! bank.shutdown().await;
//! # Ok(()) }
//! ```

mod authz;
mod ingest;
mod retrieve;
pub mod s3;
pub mod store;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use labmesh_proto::bank::{DatasetInfo, Query};
use labmesh_proto::endpoint::public_endpoint;
use labmesh_proto::limits;
use labmesh_proto::mesh::{encode, DatasetAnnounce};
use labmesh_proto::topic;
use labmesh_wire::auth::Password;
use labmesh_wire::register::{keep_registered, Registrant};
use labmesh_wire::{AsyncSocket, DealerConn, SocketOptions, WireError};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

pub use retrieve::MAX_CREDIT;
pub use s3::{S3Options, Storage};
pub use store::{Recovery, StoreError};

/// Everything a bank needs. [`BankOptions::new`] gives labmesh's defaults
/// with ephemeral loopback ports.
#[derive(Debug, Clone)]
pub struct BankOptions {
    /// Bank id, announced on `dataset.<bank_id>`.
    pub bank_id: String,
    /// Ingest ROUTER bind (`tcp://*:5761`; `tcp://127.0.0.1:*` for any port).
    pub ingest_bind: String,
    /// Retrieve ROUTER bind (`tcp://*:5762`).
    pub retrieve_bind: String,
    /// Where datasets, partial uploads and the catalogue live.
    pub data_dir: PathBuf,
    /// Broker RPC endpoint to register with; `None` = standalone.
    pub broker_rpc: Option<String>,
    /// Broker XSUB endpoint for announcements; `None` = no announcements.
    pub broker_xsub: Option<String>,
    /// Host put in place of a wildcard when advertising endpoints.
    pub advertise_host: String,
    /// Heartbeat period towards the broker.
    pub heartbeat: Duration,
    /// Shared network password (checked on ingest_start, ingest_resume, get
    /// and list_datasets).
    pub password: Password,
    /// Largest chunk accepted on ingest and served on retrieve, bytes.
    pub max_chunk: usize,
    /// Chunk size for downloads that do not ask for one (labmesh: 1 MB).
    pub retrieve_chunk: usize,
    /// Resumable uploads are made durable every this many bytes; it bounds
    /// what an uploader must keep in memory to resume.
    pub checkpoint_bytes: u64,
    /// Sessions and downloads idle this long are suspended/dropped.
    pub idle_timeout: Duration,
    /// Suspended resumable uploads older than this are deleted at start.
    pub resume_ttl: Duration,
    /// Upload sessions open at once, all peers together (more: 503).
    pub max_upload_sessions: usize,
    /// Upload sessions one peer (ZeroMQ identity) may hold open (more: 503).
    pub max_upload_sessions_per_peer: usize,
    /// Bytes all unfinished uploads may hold on disk, suspended ones
    /// included; a chunk or a declared size beyond it is refused with 503.
    pub partial_quota_bytes: u64,
    /// Downloads served at once, all peers together (more: 503).
    pub max_downloads: usize,
    /// Downloads one peer may run at once (more: 503).
    pub max_downloads_per_peer: usize,
    /// Bytes read ahead for one credit-mode download (credit is capped at
    /// this divided by the chunk size; a larger chunk size is lowered to it).
    pub download_buffer_bytes: usize,
    /// Where dataset content lives: `data_dir/objects` or an S3 bucket
    /// (the catalogue is in `data_dir` either way).
    pub storage: Storage,
    /// S3 backend: rebuild the catalogue from the bucket before serving.
    pub reindex: bool,
}

impl BankOptions {
    /// From the `[bank]` table (`BROKER` resolved), as `bank_id`; the
    /// network password comes from the environment.
    pub fn from_config(cfg: &labmesh_config::Config, bank_id: &str) -> Self {
        BankOptions {
            ingest_bind: cfg.bank.ingest_bind.clone(),
            retrieve_bind: cfg.bank.retrieve_bind.clone(),
            broker_rpc: Some(cfg.at_broker(&cfg.bank.broker_rpc)),
            broker_xsub: Some(cfg.at_broker(&cfg.bank.broker_xsub)),
            advertise_host: cfg.bank.default_address.clone(),
            heartbeat: cfg.bank.heartbeat_seconds.duration(),
            password: Password::from_env(),
            max_upload_sessions: cfg.bank.max_upload_sessions,
            max_upload_sessions_per_peer: cfg.bank.max_upload_sessions_per_peer,
            partial_quota_bytes: cfg.bank.partial_quota_bytes,
            max_downloads: cfg.bank.max_downloads,
            max_downloads_per_peer: cfg.bank.max_downloads_per_peer,
            download_buffer_bytes: cfg.bank.download_buffer_bytes,
            storage: match cfg.bank.storage {
                labmesh_config::StorageKind::File => Storage::File,
                labmesh_config::StorageKind::S3 => {
                    let c = &cfg.bank.s3;
                    let mut o = S3Options::new(&c.endpoint, &c.bucket);
                    o.prefix = c.prefix.clone();
                    o.region = c.region.clone();
                    o.part_size = c.part_size;
                    o.relist = Duration::from_secs_f64(c.relist_seconds.max(0.0));
                    Storage::S3(o)
                }
            },
            ..BankOptions::new(bank_id, cfg.bank.default_data_dir.clone())
        }
    }

    /// Defaults: loopback ephemeral ports, no broker, 1 MB download chunks,
    /// 16 MiB max chunk, 32 MiB checkpoints, 5 min idle, 24 h resume TTL,
    /// and the limits of `labmesh_proto::limits`.
    pub fn new(bank_id: &str, data_dir: impl Into<PathBuf>) -> Self {
        BankOptions {
            bank_id: bank_id.to_string(),
            ingest_bind: "tcp://127.0.0.1:*".to_string(),
            retrieve_bind: "tcp://127.0.0.1:*".to_string(),
            data_dir: data_dir.into(),
            broker_rpc: None,
            broker_xsub: None,
            advertise_host: "127.0.0.1".to_string(),
            heartbeat: Duration::from_secs(5),
            password: Password::none(),
            max_chunk: labmesh_proto::limits::DEFAULT_MAX_CHUNK,
            retrieve_chunk: labmesh_proto::limits::DEFAULT_RETRIEVE_CHUNK,
            checkpoint_bytes: 32 * 1024 * 1024,
            idle_timeout: Duration::from_secs(300),
            resume_ttl: Duration::from_secs(24 * 3600),
            max_upload_sessions: limits::DEFAULT_MAX_UPLOAD_SESSIONS,
            max_upload_sessions_per_peer: limits::DEFAULT_MAX_UPLOAD_SESSIONS_PER_PEER,
            partial_quota_bytes: limits::DEFAULT_PARTIAL_QUOTA,
            max_downloads: limits::DEFAULT_MAX_DOWNLOADS,
            max_downloads_per_peer: limits::DEFAULT_MAX_DOWNLOADS_PER_PEER,
            download_buffer_bytes: limits::DEFAULT_DOWNLOAD_BUFFER,
            storage: Storage::File,
            reindex: false,
        }
    }
}

/// Errors starting a bank.
#[derive(Debug, thiserror::Error)]
pub enum BankError {
    /// Opening or recovering the storage failed.
    #[error("storage: {0}")]
    Store(#[from] StoreError),
    /// Binding or connecting a socket failed.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// An option is out of range.
    #[error("invalid option: {0}")]
    InvalidOption(String),
    /// A blocking start-up task failed.
    #[error("start-up task failed: {0}")]
    Task(String),
}

/// The databank service.
#[derive(Debug)]
pub struct Bank;

/// A running bank.
#[derive(Debug)]
pub struct BankHandle {
    ingest: String,
    retrieve: String,
    store: Arc<store::Store>,
    recovery: Recovery,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Bank {
    /// Open the storage (recovering from any crash), bind both sockets and
    /// start serving. Must run inside a tokio runtime.
    pub async fn start(ctx: &zmq::Context, opts: BankOptions) -> Result<BankHandle, BankError> {
        if opts.max_chunk == 0 || opts.retrieve_chunk == 0 || opts.retrieve_chunk > opts.max_chunk {
            return Err(BankError::InvalidOption(
                "need 0 < retrieve_chunk <= max_chunk".to_string(),
            ));
        }
        if opts.bank_id.is_empty() {
            return Err(BankError::InvalidOption("empty bank_id".to_string()));
        }
        if opts.max_upload_sessions == 0
            || opts.max_upload_sessions_per_peer == 0
            || opts.partial_quota_bytes == 0
            || opts.max_downloads == 0
            || opts.max_downloads_per_peer == 0
            || opts.download_buffer_bytes == 0
        {
            return Err(BankError::InvalidOption(
                "session, download and byte limits must be at least 1".to_string(),
            ));
        }
        let (dir, id, ttl) = (opts.data_dir.clone(), opts.bank_id.clone(), opts.resume_ttl);
        let (store, recovery) = match &opts.storage {
            Storage::File => {
                tokio::task::spawn_blocking(move || store::Store::open(&dir, &id, ttl))
                    .await
                    .map_err(|e| BankError::Task(e.to_string()))??
            }
            Storage::S3(o) => {
                if o.bucket.is_empty() {
                    return Err(BankError::InvalidOption(
                        "storage s3 needs a bucket ([bank.s3] bucket, --s3-bucket)".to_string(),
                    ));
                }
                let backend = store::S3Backend {
                    objs: Arc::new(s3::S3Objects::new(o).map_err(StoreError::from)?),
                    rt: tokio::runtime::Handle::current(),
                };
                let reindex = opts.reindex;
                tokio::task::spawn_blocking(move || {
                    store::Store::open_s3(&dir, &id, ttl, backend, reindex)
                })
                .await
                .map_err(|e| BankError::Task(e.to_string()))??
            }
        };
        store.set_partial_quota(opts.partial_quota_bytes);
        let store = Arc::new(store);

        // Ingest: a small receive HWM so a fast uploader is held back by TCP
        // instead of filling the bank's memory; room for a whole max chunk.
        let frame_limit = (opts.max_chunk + 64 * 1024) as i64;
        let mut ingest_sock = AsyncSocket::new(
            ctx,
            zmq::ROUTER,
            SocketOptions {
                rcvhwm: 16,
                sndhwm: 1000,
                linger_ms: 500,
                // Frames beyond max_chunk but below this get a 400; beyond
                // it libzmq drops the connection (the peer reconnects).
                max_msg_size: frame_limit * 2,
            },
        )?;
        let ingest = ingest_sock.bind(&opts.ingest_bind)?;
        let mut retrieve_sock = AsyncSocket::new(
            ctx,
            zmq::ROUTER,
            SocketOptions {
                rcvhwm: 1000,
                sndhwm: 8,
                linger_ms: 500,
                max_msg_size: labmesh_proto::limits::MAX_RETRIEVE_REQUEST as i64,
            },
        )?;
        retrieve_sock
            .raw()
            .set_router_mandatory(true)
            .map_err(WireError::from)?;
        let retrieve = retrieve_sock.bind(&opts.retrieve_bind)?;
        let ingest_pub = public_endpoint(&ingest, &opts.advertise_host);
        let retrieve_pub = public_endpoint(&retrieve, &opts.advertise_host);
        tracing::info!(bank_id = %opts.bank_id, ingest = %ingest_pub, retrieve = %retrieve_pub,
            orphan_objects = recovery.orphan_objects, broken_rows = recovery.broken_rows,
            dropped_partials = recovery.dropped_partials, resumable = recovery.resumable,
            "bank started");

        let (shutdown, shutdown_rx) = watch::channel(false);
        let (announce_tx, announce_rx) = mpsc::unbounded_channel();
        let mut tasks = Vec::new();
        tasks.push(tokio::spawn(ingest::run(
            ingest_sock,
            store.clone(),
            ingest::IngestConfig {
                bank_id: opts.bank_id.clone(),
                max_chunk: opts.max_chunk,
                checkpoint_bytes: opts.checkpoint_bytes.max(1),
                session_idle: opts.idle_timeout,
                password: opts.password.clone(),
                max_sessions: opts.max_upload_sessions,
                max_sessions_per_peer: opts.max_upload_sessions_per_peer,
            },
            announce_tx,
            shutdown_rx.clone(),
        )));
        tasks.push(tokio::spawn(retrieve::run(
            retrieve_sock,
            store.clone(),
            retrieve::RetrieveConfig {
                chunk_size: opts.retrieve_chunk,
                max_chunk: opts.max_chunk,
                idle: opts.idle_timeout,
                password: opts.password.clone(),
                max_downloads: opts.max_downloads,
                max_downloads_per_peer: opts.max_downloads_per_peer,
                buffer_bytes: opts.download_buffer_bytes,
            },
            shutdown_rx.clone(),
        )));
        if let Some(s3) = store.s3() {
            if !s3.objs.relist.is_zero() {
                tasks.push(tokio::spawn(relist(
                    store.clone(),
                    s3.objs.relist,
                    shutdown_rx.clone(),
                )));
            }
        }
        let publisher = match &opts.broker_xsub {
            Some(xsub) => {
                let mut s = AsyncSocket::new(ctx, zmq::PUB, SocketOptions::default())?;
                s.connect(xsub)?;
                Some(s)
            }
            None => None,
        };
        tasks.push(tokio::spawn(announce(
            publisher,
            opts.bank_id.clone(),
            announce_rx,
            shutdown_rx.clone(),
        )));
        if let Some(rpc) = &opts.broker_rpc {
            let conn = DealerConn::connect(
                ctx,
                rpc,
                SocketOptions {
                    linger_ms: 0,
                    ..Default::default()
                },
            )?;
            let node = Registrant::bank(&opts.bank_id, &ingest_pub, &retrieve_pub, &opts.password);
            tasks.push(tokio::spawn(keep_registered(
                conn,
                vec![node],
                opts.heartbeat,
                shutdown_rx,
            )));
        }
        Ok(BankHandle {
            ingest: ingest_pub,
            retrieve: retrieve_pub,
            store,
            recovery,
            shutdown,
            tasks,
        })
    }
}

impl BankHandle {
    /// The ingest endpoint as advertised (real port, wildcard replaced).
    pub fn ingest_endpoint(&self) -> &str {
        &self.ingest
    }

    /// The retrieve endpoint as advertised.
    pub fn retrieve_endpoint(&self) -> &str {
        &self.retrieve
    }

    /// What start-up recovery found.
    pub fn recovery(&self) -> &Recovery {
        &self.recovery
    }

    /// S3 backend: re-list the bucket now (what the schedule does); the
    /// number of rows added. File backend: 0.
    pub async fn reindex(&self) -> Result<usize, StoreError> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || store.reindex())
            .await
            .map_err(|_| StoreError::Poisoned)?
    }

    /// Query the catalogue directly (same semantics as `list_datasets`).
    pub async fn list(&self, q: Query) -> Result<Vec<DatasetInfo>, StoreError> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || store.list(&q))
            .await
            .map_err(|_| StoreError::Poisoned)?
    }

    /// Stop gracefully: resumable uploads are checkpointed (they resume after
    /// the next start), legacy uploads are dropped, downloads end.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// S3 backend: re-list the bucket on a schedule, so datasets other banks
/// wrote under the same prefix show in `list_datasets` (a `get` finds them
/// at once anyway: a catalogue miss asks the bucket).
async fn relist(store: Arc<store::Store>, every: Duration, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tick.tick() => {
                let s = store.clone();
                match tokio::task::spawn_blocking(move || s.reindex()).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => tracing::warn!(error = %e, "re-listing the bucket failed; serving the catalogue as it is"),
                    Err(e) => tracing::warn!(error = %e, "re-list task failed"),
                }
            }
        }
    }
}

async fn announce(
    mut publisher: Option<AsyncSocket>,
    bank_id: String,
    mut rx: mpsc::UnboundedReceiver<DatasetAnnounce>,
    mut shutdown: watch::Receiver<bool>,
) {
    let topic = topic::dataset(&bank_id).into_bytes();
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            msg = rx.recv() => {
                let Some(msg) = msg else { return };
                if let Some(p) = publisher.as_mut() {
                    if let Err(e) = p.send_multipart([topic.clone(), encode(&msg)]).await {
                        tracing::warn!(error = %e, "announcement not published");
                    }
                }
            }
        }
    }
}
