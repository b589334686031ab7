//! On-disk storage: committed datasets, resumable partial uploads, and the
//! SQLite catalogue.
//!
//! Layout under `data_dir`:
//!
//! ```text
//! catalogue.sqlite          WAL-mode SQLite: one row per committed dataset
//! objects/<dataset_id>.bin  committed content (ids are validated: no traversal)
//! partial/<token>.part      bytes of a resumable upload (token sessions),
//!                           created by its first chunk
//! partial/<token>.json      its checkpoint: next_seq + offset durable on disk
//! partial/legacy-<uuid>.part  a labmesh v0 upload (not resumable)
//! ```
//!
//! Commit order: fsync the part file, rename it into `objects/`, fsync the
//! directory, insert the catalogue row (synchronous=FULL), delete the
//! checkpoint. A dataset is visible only once its row exists, so a crash at
//! any point leaves either no row (the object is an orphan, removed at the
//! next start) or a complete dataset. At start the store also drops rows
//! whose object is missing or has the wrong size, deletes legacy part files
//! and checkpoints older than the resume TTL, and truncates every remaining
//! part file to its checkpoint so the upload can resume from there.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use labmesh_proto::bank::{valid_token, DatasetInfo, Query};
use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::s3::{ObjectError, S3Objects, Sidecar};

/// Errors from the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The file concerned.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The catalogue failed.
    #[error("catalogue: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The catalogue lock was poisoned by a panic elsewhere.
    #[error("catalogue lock poisoned")]
    Poisoned,
    /// The upload's hashing thread ended before the upload did.
    #[error("the upload's SHA-256 thread ended early")]
    HashThread,
    /// The object store (S3 backend) failed or refused; its reason is kept.
    #[error(transparent)]
    Object(Box<ObjectError>),
    /// The store acknowledged an upload but does not hold what was sent.
    #[error("object store verification failed: {0}")]
    Verify(String),
    /// Partial uploads would use more than `partial_quota_bytes`.
    #[error(
        "partial upload quota exceeded: {used} bytes held by unfinished uploads, \
         {want} more would exceed partial_quota_bytes = {quota}"
    )]
    Quota {
        /// Bytes of partial uploads on disk now.
        used: u64,
        /// Bytes asked for.
        want: u64,
        /// The quota.
        quota: u64,
    },
}

impl From<ObjectError> for StoreError {
    fn from(e: ObjectError) -> Self {
        StoreError::Object(Box::new(e))
    }
}

/// Bytes of partial uploads on disk, shared by the store and every open
/// upload; bounded by the quota.
#[derive(Debug)]
struct Usage {
    bytes: AtomicU64,
    quota: AtomicU64,
}

impl Usage {
    /// Count `n` more bytes, or refuse when the quota would be exceeded.
    fn reserve(&self, n: u64) -> Result<(), StoreError> {
        let quota = self.quota.load(Ordering::Relaxed);
        self.bytes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(n).filter(|t| *t <= quota)
            })
            .map(|_| ())
            .map_err(|used| StoreError::Quota {
                used,
                want: n,
                quota,
            })
    }

    /// Whether `n` more bytes would fit now (nothing is reserved).
    fn check(&self, n: u64) -> Result<(), StoreError> {
        let quota = self.quota.load(Ordering::Relaxed);
        let used = self.bytes.load(Ordering::Acquire);
        if used.saturating_add(n) > quota {
            return Err(StoreError::Quota {
                used,
                want: n,
                quota,
            });
        }
        Ok(())
    }

    /// `n` bytes were deleted or became a dataset.
    fn release(&self, n: u64) {
        let _ = self
            .bytes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                Some(used.saturating_sub(n))
            });
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What a start-up recovery found and fixed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Recovery {
    /// Object files without a catalogue row, deleted.
    pub orphan_objects: usize,
    /// Catalogue rows whose object was missing or truncated, deleted.
    pub broken_rows: usize,
    /// Part files that cannot be resumed (legacy, expired, corrupt), deleted.
    pub dropped_partials: usize,
    /// Resumable uploads kept.
    pub resumable: usize,
    /// S3 backend: multipart uploads a crash left open, aborted.
    pub aborted_uploads: usize,
    /// S3 backend with reindex: datasets found in the bucket and now in
    /// the catalogue (`None`: no reindex ran).
    pub reindexed: Option<usize>,
}

/// A committed dataset's row.
pub type Record = DatasetInfo;

/// Outcome of a commit.
#[derive(Debug, Clone, PartialEq)]
pub enum Commit {
    /// Stored and now visible.
    Stored(Record),
    /// The same id already held identical content; nothing changed.
    Identical(Record),
    /// The id is taken by different content.
    Conflict(Record),
}

/// Checkpoint of a resumable upload (`partial/<token>.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Dataset being uploaded.
    pub dataset_id: String,
    /// Uploading relay.
    pub relay_id: String,
    /// Metadata from ingest_start.
    pub meta: Value,
    /// Size declared at start (0 = none).
    pub expected_size: Option<u64>,
    /// SHA-256 declared at start.
    pub expected_sha: Option<String>,
    /// Chunks durable in the part file.
    pub next_seq: u64,
    /// Bytes durable in the part file.
    pub offset: u64,
    /// Unix time of this checkpoint.
    pub updated: f64,
}

/// The bank's storage. All methods block; call them from
/// `spawn_blocking`.
#[derive(Debug)]
pub struct Store {
    bank_id: String,
    objects: PathBuf,
    partial: PathBuf,
    db: Mutex<Connection>,
    /// Held across a commit's check, rename and insert: two uploads of one
    /// id must not interleave (the second rename would replace the first
    /// one's object, and its failed insert delete it).
    commit_lock: Mutex<()>,
    usage: Arc<Usage>,
    /// The S3 backend: content lives in the bucket, the catalogue here.
    s3: Option<S3Backend>,
}

/// The bucket and the runtime its async client runs on (the store's
/// methods block: they run on the blocking pool and wait on the runtime).
#[derive(Debug, Clone)]
pub(crate) struct S3Backend {
    pub(crate) objs: Arc<S3Objects>,
    pub(crate) rt: tokio::runtime::Handle,
}

impl S3Backend {
    fn run<T>(&self, f: impl std::future::Future<Output = T>) -> T {
        self.rt.block_on(f)
    }
}

/// Where a committed dataset's bytes are read from.
#[derive(Debug, Clone)]
pub(crate) enum Source {
    /// A local file.
    File(PathBuf),
    /// An object in the bucket.
    S3(Arc<S3Objects>, String),
}

impl Store {
    /// Open (creating) the store in `data_dir` and recover from any crash.
    pub fn open(
        data_dir: &Path,
        bank_id: &str,
        resume_ttl: Duration,
    ) -> Result<(Store, Recovery), StoreError> {
        Store::open_with(data_dir, bank_id, resume_ttl, None)
    }

    /// Open a store whose datasets live in `objs` (the catalogue and the
    /// records of open multipart uploads stay in `data_dir`). Probes the
    /// bucket first (a bad credential fails here), aborts multipart uploads
    /// a crash left behind, and with `reindex` rebuilds the catalogue from
    /// the bucket's sidecars. Must run on a thread that may block on `rt`
    /// (the blocking pool).
    pub(crate) fn open_s3(
        data_dir: &Path,
        bank_id: &str,
        resume_ttl: Duration,
        backend: S3Backend,
        reindex: bool,
    ) -> Result<(Store, Recovery), StoreError> {
        backend.run(backend.objs.probe(bank_id))?;
        let (store, mut rec) = Store::open_with(data_dir, bank_id, resume_ttl, Some(backend))?;
        if reindex {
            rec.reindexed = Some(store.reindex()?);
        }
        Ok((store, rec))
    }

    fn open_with(
        data_dir: &Path,
        bank_id: &str,
        resume_ttl: Duration,
        s3: Option<S3Backend>,
    ) -> Result<(Store, Recovery), StoreError> {
        let objects = data_dir.join("objects");
        let partial = data_dir.join("partial");
        for d in [data_dir, &objects, &partial] {
            fs::create_dir_all(d).map_err(io_err(d))?;
        }
        let db = Connection::open(data_dir.join("catalogue.sqlite"))?;
        db.pragma_update(None, "journal_mode", "WAL")?;
        db.pragma_update(None, "synchronous", "FULL")?;
        db.busy_timeout(Duration::from_secs(5))?;
        db.execute_batch(
            "CREATE TABLE IF NOT EXISTS datasets (
                dataset_id TEXT PRIMARY KEY,
                bank_id    TEXT NOT NULL,
                relay_id   TEXT NOT NULL,
                size       INTEGER NOT NULL,
                sha256     TEXT NOT NULL,
                created    REAL NOT NULL,
                meta       TEXT NOT NULL
             );
             CREATE INDEX IF NOT EXISTS datasets_created ON datasets(created DESC);",
        )?;
        let store = Store {
            bank_id: bank_id.to_string(),
            objects,
            partial,
            db: Mutex::new(db),
            commit_lock: Mutex::new(()),
            usage: Arc::new(Usage {
                bytes: AtomicU64::new(0),
                quota: AtomicU64::new(u64::MAX),
            }),
            s3,
        };
        let rec = if store.s3.is_some() {
            store.recover_s3()?
        } else {
            store.recover(resume_ttl)?
        };
        Ok((store, rec))
    }

    /// Refuse partial data beyond `quota` bytes (all unfinished uploads
    /// together, suspended ones included).
    pub fn set_partial_quota(&self, quota: u64) {
        self.usage.quota.store(quota, Ordering::Relaxed);
    }

    /// Bytes of unfinished uploads on disk.
    pub fn partial_bytes(&self) -> u64 {
        self.usage.bytes.load(Ordering::Acquire)
    }

    /// Whether an upload of `size` bytes fits in the partial quota now.
    pub fn check_partial_quota(&self, size: u64) -> Result<(), StoreError> {
        self.usage.check(size)
    }

    fn db(&self) -> Result<std::sync::MutexGuard<'_, Connection>, StoreError> {
        self.db.lock().map_err(|_| StoreError::Poisoned)
    }

    /// Path of a committed dataset (the id must be valid).
    pub fn object_path(&self, dataset_id: &str) -> PathBuf {
        self.objects.join(format!("{dataset_id}.bin"))
    }

    fn recover(&self, resume_ttl: Duration) -> Result<Recovery, StoreError> {
        let mut rec = Recovery::default();
        // Rows whose object is gone or short.
        let rows: Vec<(String, u64)> = {
            let db = self.db()?;
            let mut st = db.prepare("SELECT dataset_id, size FROM datasets")?;
            let it = st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, u64>(1)?)))?;
            it.collect::<Result<_, _>>()?
        };
        let mut known = std::collections::HashSet::new();
        for (id, size) in rows {
            let ok = fs::metadata(self.object_path(&id))
                .map(|m| m.len() == size)
                .unwrap_or(false);
            if ok {
                known.insert(format!("{id}.bin"));
            } else {
                tracing::warn!(dataset_id = %id, "catalogue row without a complete object; dropping it");
                self.db()?
                    .execute("DELETE FROM datasets WHERE dataset_id = ?1", [&id])?;
                rec.broken_rows += 1;
            }
        }
        // Objects without rows: a crash between rename and insert.
        for entry in fs::read_dir(&self.objects).map_err(io_err(&self.objects))? {
            let entry = entry.map_err(io_err(&self.objects))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if !known.contains(&name) {
                tracing::info!(file = %name, "removing orphan object");
                let _ = fs::remove_file(entry.path());
                rec.orphan_objects += 1;
            }
        }
        // Partial uploads.
        let now = labmesh_proto::unix_now();
        let mut parts = Vec::new();
        for entry in fs::read_dir(&self.partial).map_err(io_err(&self.partial))? {
            let entry = entry.map_err(io_err(&self.partial))?;
            parts.push(entry.path());
        }
        for path in &parts {
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let Some(token) = name.strip_suffix(".json") else {
                if let Some(token) = name.strip_suffix(".part") {
                    if valid_token(token) && self.partial.join(format!("{token}.json")).exists() {
                        continue; // handled with its checkpoint
                    }
                }
                tracing::info!(file = %name, "removing unresumable partial upload");
                let _ = fs::remove_file(path);
                rec.dropped_partials += 1;
                continue;
            };
            let kept = valid_token(token)
                .then(|| self.read_checkpoint(token))
                .flatten()
                .filter(|cp| now - cp.updated <= resume_ttl.as_secs_f64())
                .filter(|cp| {
                    let part = self.part_path(token);
                    match OpenOptions::new().write(true).open(&part) {
                        Ok(f) => match f.metadata() {
                            Ok(m) if m.len() >= cp.offset => {
                                f.set_len(cp.offset).is_ok() && f.sync_all().is_ok()
                            }
                            _ => false,
                        },
                        // Started, nothing written yet (created lazily).
                        Err(e) => e.kind() == std::io::ErrorKind::NotFound && cp.offset == 0,
                    }
                });
            if let Some(cp) = kept {
                rec.resumable += 1;
                self.usage.bytes.fetch_add(cp.offset, Ordering::AcqRel);
            } else {
                tracing::info!(file = %name, "removing expired or corrupt upload checkpoint");
                let _ = fs::remove_file(path);
                if valid_token(token) {
                    let _ = fs::remove_file(self.part_path(token));
                }
                rec.dropped_partials += 1;
            }
        }
        if rec != Recovery::default() {
            tracing::info!(
                orphan_objects = rec.orphan_objects,
                broken_rows = rec.broken_rows,
                dropped_partials = rec.dropped_partials,
                resumable = rec.resumable,
                "storage recovered"
            );
        }
        Ok(rec)
    }

    /// S3 backend start-up: abort the multipart uploads a crash left open
    /// (their records are in `partial/*.mpu`) and delete everything else in
    /// `partial/` (S3 uploads do not survive a bank restart: see
    /// docs/BANK.md). Catalogue rows are not checked against the bucket
    /// here; reindex does that.
    fn recover_s3(&self) -> Result<Recovery, StoreError> {
        let mut rec = Recovery::default();
        let Some(s3) = &self.s3 else {
            return Ok(rec);
        };
        for entry in fs::read_dir(&self.partial).map_err(io_err(&self.partial))? {
            let entry = entry.map_err(io_err(&self.partial))?;
            let path = entry.path();
            if path.extension().is_some_and(|x| x == "mpu") {
                let Some(r) = fs::read(&path)
                    .ok()
                    .and_then(|b| serde_json::from_slice::<MpuRecord>(&b).ok())
                else {
                    let _ = fs::remove_file(&path);
                    continue;
                };
                match s3.run(s3.objs.abort(&r.key, &r.upload)) {
                    Ok(()) => {
                        tracing::info!(key = %r.key, "aborted a multipart upload left by a crash");
                        rec.aborted_uploads += 1;
                        let _ = fs::remove_file(&path);
                    }
                    // Gone already (completed or aborted by the store).
                    Err(e) if e.not_found() => {
                        let _ = fs::remove_file(&path);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot abort a multipart upload left by a crash; retried at the next start")
                    }
                }
            } else {
                let _ = fs::remove_file(&path);
                rec.dropped_partials += 1;
            }
        }
        if rec != Recovery::default() {
            tracing::info!(?rec, "storage recovered");
        }
        Ok(rec)
    }

    /// S3 backend: bring the catalogue in line with the bucket's sidecars
    /// (rows for datasets found there are added, rows whose sidecar is gone
    /// are dropped). Returns how many rows were added. File backend: 0.
    pub fn reindex(&self) -> Result<usize, StoreError> {
        let Some(s3) = &self.s3 else {
            return Ok(0);
        };
        // Commits put the sidecar before the row: hold them off so a
        // commit's row is neither doubled nor dropped by a stale listing.
        let _one = self.commit_lock.lock().map_err(|_| StoreError::Poisoned)?;
        let listed: std::collections::HashSet<String> =
            s3.run(s3.objs.list_ids())?.into_iter().collect();
        let known: std::collections::HashSet<String> = {
            let db = self.db()?;
            let mut st = db.prepare("SELECT dataset_id FROM datasets")?;
            let it = st.query_map([], |r| r.get::<_, String>(0))?;
            it.collect::<Result<_, _>>()?
        };
        for gone in known.difference(&listed) {
            tracing::info!(dataset_id = %gone, "dataset no longer in the bucket; dropping its row");
            self.db()?
                .execute("DELETE FROM datasets WHERE dataset_id = ?1", [gone])?;
        }
        let mut added = 0;
        for id in listed.difference(&known) {
            if let Some(side) = s3.run(s3.objs.sidecar(id))? {
                self.insert_row(&side.record(&self.bank_id), true)?;
                added += 1;
            }
        }
        if added > 0 {
            tracing::info!(added, store = %s3.objs.url(), "catalogue updated from the bucket");
        }
        Ok(added)
    }

    fn insert_row(&self, rec: &Record, or_replace: bool) -> Result<(), StoreError> {
        let verb = if or_replace {
            "INSERT OR REPLACE"
        } else {
            "INSERT"
        };
        self.db()?.execute(
            &format!(
                "{verb} INTO datasets (dataset_id, bank_id, relay_id, size, sha256, created, meta)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"
            ),
            params![
                rec.dataset_id,
                rec.bank_id,
                rec.relay_id,
                rec.size,
                rec.sha256,
                rec.created,
                rec.meta.to_string()
            ],
        )?;
        Ok(())
    }

    /// The S3 backend, if that is where datasets live.
    pub(crate) fn s3(&self) -> Option<&S3Backend> {
        self.s3.as_ref()
    }

    /// Where a committed dataset's bytes are read from.
    pub(crate) fn source(&self, dataset_id: &str) -> Source {
        match &self.s3 {
            Some(s3) => Source::S3(s3.objs.clone(), dataset_id.to_string()),
            None => Source::File(self.object_path(dataset_id)),
        }
    }

    fn part_path(&self, token: &str) -> PathBuf {
        self.partial.join(format!("{token}.part"))
    }

    fn checkpoint_path(&self, token: &str) -> PathBuf {
        self.partial.join(format!("{token}.json"))
    }

    /// Read a resumable upload's checkpoint.
    pub fn read_checkpoint(&self, token: &str) -> Option<Checkpoint> {
        if !valid_token(token) {
            return None;
        }
        let bytes = fs::read(self.checkpoint_path(token)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Look a dataset up. With the S3 backend a dataset missing from the
    /// catalogue is looked for in the bucket too (another bank on the same
    /// prefix may have written it) and added when found.
    pub fn lookup(&self, dataset_id: &str) -> Result<Option<Record>, StoreError> {
        let r = self.lookup_local(dataset_id)?;
        if r.is_some() {
            return Ok(r);
        }
        let Some(s3) = &self.s3 else {
            return Ok(None);
        };
        let Some(side) = s3.run(s3.objs.sidecar(dataset_id))? else {
            return Ok(None);
        };
        let rec = side.record(&self.bank_id);
        self.insert_row(&rec, true)?;
        Ok(Some(rec))
    }

    fn lookup_local(&self, dataset_id: &str) -> Result<Option<Record>, StoreError> {
        let db = self.db()?;
        let r = db
            .query_row(
                "SELECT dataset_id, bank_id, relay_id, size, sha256, created, meta
                 FROM datasets WHERE dataset_id = ?1",
                [dataset_id],
                row_to_record,
            )
            .optional()?;
        Ok(r)
    }

    /// Catalogue query, newest first.
    pub fn list(&self, q: &Query) -> Result<Vec<Record>, StoreError> {
        let mut sql = String::from(
            "SELECT dataset_id, bank_id, relay_id, size, sha256, created, meta FROM datasets WHERE 1=1",
        );
        let mut args: Vec<rusqlite::types::Value> = Vec::new();
        if let Some(r) = &q.relay_id {
            args.push(r.clone().into());
            sql.push_str(&format!(" AND relay_id = ?{}", args.len()));
        }
        if let Some(t) = q.since {
            args.push(t.into());
            sql.push_str(&format!(" AND created >= ?{}", args.len()));
        }
        if let Some(t) = q.until {
            args.push(t.into());
            sql.push_str(&format!(" AND created < ?{}", args.len()));
        }
        for (k, v) in &q.meta {
            args.push(k.clone().into());
            let kn = args.len();
            args.push(v.clone().into());
            let vn = args.len();
            sql.push_str(&format!(
                " AND EXISTS (SELECT 1 FROM json_each(datasets.meta) AS m
                   WHERE m.key = ?{kn} AND (CAST(m.value AS TEXT) = ?{vn}
                   OR (m.type = 'true' AND ?{vn} = 'true')
                   OR (m.type = 'false' AND ?{vn} = 'false')))"
            ));
        }
        let limit = q.limit.unwrap_or(1000).min(10_000);
        sql.push_str(&format!(" ORDER BY created DESC, dataset_id LIMIT {limit}"));
        let db = self.db()?;
        let mut st = db.prepare(&sql)?;
        let it = st.query_map(rusqlite::params_from_iter(args), row_to_record)?;
        Ok(it.collect::<Result<_, _>>()?)
    }

    /// Start a new partial upload. A token makes it resumable (an existing
    /// checkpoint with that token is replaced).
    pub fn create_partial(
        &self,
        token: Option<&str>,
        cp: Checkpoint,
        checkpoint_bytes: u64,
    ) -> Result<Partial, StoreError> {
        let (path, sidecar) = match token {
            Some(t) => (self.part_path(t), Some(self.checkpoint_path(t))),
            None => (
                self.partial
                    .join(format!("legacy-{}.part", uuid::Uuid::new_v4().simple())),
                None,
            ),
        };
        // A suspended upload with this token is replaced: its bytes go.
        if let Ok(m) = fs::metadata(&path) {
            self.usage.release(m.len());
            fs::remove_file(&path).map_err(io_err(&path))?;
        }
        // The part file is created by the first chunk: a session that never
        // sends one costs no file handle (and a legacy one no file at all).
        let mut p = Partial {
            path,
            sidecar,
            file: None,
            hasher: UploadHash::new(Sha256::new()),
            cp,
            next_seq: 0,
            offset: 0,
            since_checkpoint: 0,
            checkpoint_bytes,
            partial_dir: self.partial.clone(),
            counted: 0,
            usage: self.usage.clone(),
            s3: self.s3.as_ref().map(|b| S3Part {
                backend: b.clone(),
                dataset_id: String::new(),
                buf: Vec::new(),
                upload: None,
                parts: Vec::new(),
                record: self
                    .partial
                    .join(format!("{}.mpu", uuid::Uuid::new_v4().simple())),
            }),
        };
        if let Some(s3) = p.s3.as_mut() {
            s3.dataset_id = p.cp.dataset_id.clone();
        }
        if let Err(e) = p.checkpoint() {
            p.discard();
            return Err(e);
        }
        Ok(p)
    }

    /// Re-open a resumable upload from its checkpoint (re-hashing the bytes
    /// kept so far). `None` when there is no such upload.
    pub fn load_partial(
        &self,
        token: &str,
        checkpoint_bytes: u64,
    ) -> Result<Option<Partial>, StoreError> {
        let Some(cp) = self.read_checkpoint(token) else {
            return Ok(None);
        };
        let path = self.part_path(token);
        let mut file = match OpenOptions::new().read(true).write(true).open(&path) {
            Ok(f) => f,
            // Nothing was written yet (the part file is created lazily).
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && cp.offset == 0 => {
                return Ok(Some(Partial {
                    path,
                    sidecar: Some(self.checkpoint_path(token)),
                    file: None,
                    hasher: UploadHash::new(Sha256::new()),
                    next_seq: cp.next_seq,
                    offset: 0,
                    cp,
                    since_checkpoint: 0,
                    checkpoint_bytes,
                    partial_dir: self.partial.clone(),
                    counted: 0,
                    usage: self.usage.clone(),
                    s3: None,
                }));
            }
            Err(_) => return Ok(None),
        };
        let len = file.metadata().map_err(io_err(&path))?.len();
        if len < cp.offset {
            return Ok(None);
        }
        file.set_len(cp.offset).map_err(io_err(&path))?;
        self.usage.release(len - cp.offset);
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut left = cp.offset;
        file.seek(SeekFrom::Start(0)).map_err(io_err(&path))?;
        while left > 0 {
            let want = buf.len().min(left as usize);
            let n = file
                .read(buf.get_mut(..want).unwrap_or_default())
                .map_err(io_err(&path))?;
            if n == 0 {
                return Ok(None);
            }
            hasher.update(buf.get(..n).unwrap_or_default());
            left -= n as u64;
        }
        let cp_offset = cp.offset;
        Ok(Some(Partial {
            path,
            sidecar: Some(self.checkpoint_path(token)),
            file: Some(file),
            hasher: UploadHash::new(hasher),
            next_seq: cp.next_seq,
            offset: cp.offset,
            cp,
            since_checkpoint: 0,
            checkpoint_bytes,
            partial_dir: self.partial.clone(),
            counted: cp_offset,
            usage: self.usage.clone(),
            s3: None,
        }))
    }

    /// Delete a suspended resumable upload (an `ingest_abort` for a session
    /// that is not open) if it belongs to `dataset_id`. Whether it existed.
    pub fn delete_partial(&self, token: &str, dataset_id: &str) -> bool {
        match self.read_checkpoint(token) {
            Some(cp) if cp.dataset_id == dataset_id => {
                let part = self.part_path(token);
                if let Ok(m) = fs::metadata(&part) {
                    self.usage.release(m.len());
                }
                let _ = fs::remove_file(&part);
                let _ = fs::remove_file(self.checkpoint_path(token));
                true
            }
            _ => false,
        }
    }

    /// Make a finished partial upload a dataset (see the module docs for the
    /// crash-safe order). The partial's files are gone afterwards whatever
    /// the outcome.
    pub fn commit(&self, mut done: Finished) -> Result<Commit, StoreError> {
        if let Some(part) = done.s3.take() {
            let r = self.commit_s3(&done, part);
            done.usage.release(done.counted);
            return r;
        }
        let id = done.cp.dataset_id.clone();
        let result = (|| {
            // One commit at a time: check, rename and insert are one step
            // per id (commits are short: a rename, an fsync, an insert).
            let _one = self.commit_lock.lock().map_err(|_| StoreError::Poisoned)?;
            if let Some(existing) = self.lookup(&id)? {
                return Ok(
                    if existing.size == done.size && existing.sha256 == done.sha256 {
                        Commit::Identical(existing)
                    } else {
                        Commit::Conflict(existing)
                    },
                );
            }
            let dest = self.object_path(&id);
            fs::rename(&done.path, &dest).map_err(io_err(&dest))?;
            if let Err(e) = sync_dir(&self.objects) {
                // Ours (no row has this id, and the lock is held).
                let _ = fs::remove_file(&dest);
                return Err(e);
            }
            let rec = Record {
                dataset_id: id.clone(),
                bank_id: self.bank_id.clone(),
                relay_id: done.cp.relay_id.clone(),
                size: done.size,
                sha256: done.sha256.clone(),
                created: labmesh_proto::unix_now(),
                meta: done.cp.meta.clone(),
            };
            let inserted = self.db()?.execute(
                "INSERT INTO datasets (dataset_id, bank_id, relay_id, size, sha256, created, meta)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    rec.dataset_id,
                    rec.bank_id,
                    rec.relay_id,
                    rec.size,
                    rec.sha256,
                    rec.created,
                    rec.meta.to_string()
                ],
            );
            if let Err(e) = inserted {
                let _ = fs::remove_file(&dest);
                return Err(e.into());
            }
            Ok(Commit::Stored(rec))
        })();
        let _ = fs::remove_file(&done.path);
        if let Some(s) = &done.sidecar {
            let _ = fs::remove_file(s);
        }
        done.usage.release(done.counted);
        result
    }
}

impl Store {
    /// S3 commit: check the id (catalogue and bucket), complete the
    /// multipart upload (or put the small object), check its size, write
    /// the sidecar, insert the row. The object appears only at completion,
    /// so an existing dataset is never overwritten by a conflicting one.
    fn commit_s3(&self, done: &Finished, mut part: S3Part) -> Result<Commit, StoreError> {
        let id = done.cp.dataset_id.clone();
        let _one = self.commit_lock.lock().map_err(|_| StoreError::Poisoned)?;
        let existing = match self.lookup(&id) {
            Ok(e) => e,
            Err(e) => {
                part.abort();
                return Err(e);
            }
        };
        if let Some(existing) = existing {
            part.abort();
            return Ok(
                if existing.size == done.size && existing.sha256 == done.sha256 {
                    Commit::Identical(existing)
                } else {
                    Commit::Conflict(existing)
                },
            );
        }
        let s3 = part.backend.clone();
        let written = match &part.upload {
            Some(upload) => s3.run(s3.objs.complete(&id, upload, part.parts.clone())),
            None => s3.run(
                s3.objs
                    .put_object(&id, bytes::Bytes::from(std::mem::take(&mut part.buf))),
            ),
        };
        if let Err(e) = written {
            part.abort();
            return Err(e.into());
        }
        part.forget();
        let undo = |e: StoreError| {
            let _ = s3.run(s3.objs.delete_object(&id));
            Err(e)
        };
        match s3.run(s3.objs.size(&id)) {
            Ok(Some(n)) if n == done.size => {}
            Ok(n) => {
                return undo(StoreError::Verify(format!(
                    "{} holds {} bytes after the upload, {} were sent",
                    s3.objs.object_key(&id),
                    n.map(|n| n.to_string()).unwrap_or_else(|| "no".into()),
                    done.size
                )))
            }
            Err(e) => return undo(e.into()),
        }
        let side = Sidecar {
            dataset_id: id.clone(),
            relay_id: done.cp.relay_id.clone(),
            size: done.size,
            sha256: done.sha256.clone(),
            created: labmesh_proto::unix_now(),
            meta: done.cp.meta.clone(),
            written_by: self.bank_id.clone(),
        };
        if let Err(e) = s3.run(s3.objs.put_sidecar(&side)) {
            return undo(e.into());
        }
        let rec = side.record(&self.bank_id);
        if let Err(e) = self.insert_row(&rec, true) {
            let _ = s3.run(s3.objs.delete_sidecar(&id));
            return undo(e);
        }
        Ok(Commit::Stored(rec))
    }
}

/// A multipart upload in progress, recorded in `partial/<uuid>.mpu` so a
/// crash's leftovers are aborted at the next start.
#[derive(Debug, Serialize, Deserialize)]
struct MpuRecord {
    key: String,
    upload: String,
}

/// The S3 side of an upload: bytes not yet sent as a part, and the parts.
#[derive(Debug)]
struct S3Part {
    backend: S3Backend,
    dataset_id: String,
    buf: Vec<u8>,
    upload: Option<String>,
    parts: Vec<object_store::multipart::PartId>,
    record: PathBuf,
}

impl S3Part {
    /// Send the buffer as the next part (starting the multipart upload
    /// and recording it first).
    fn flush(&mut self) -> Result<(), StoreError> {
        let s3 = self.backend.clone();
        let upload = match &self.upload {
            Some(u) => u.clone(),
            None => {
                let u = s3.run(s3.objs.create_multipart(&self.dataset_id))?;
                self.upload = Some(u.clone());
                let r = MpuRecord {
                    key: s3.objs.object_key(&self.dataset_id).to_string(),
                    upload: u.clone(),
                };
                let body = serde_json::to_vec(&r).unwrap_or_default();
                let written = File::create(&self.record)
                    .and_then(|mut f| f.write_all(&body).and_then(|_| f.sync_all()));
                written.map_err(io_err(&self.record))?;
                u
            }
        };
        let data = bytes::Bytes::from(std::mem::take(&mut self.buf));
        let id = s3.run(
            s3.objs
                .put_part(&self.dataset_id, &upload, self.parts.len(), data),
        )?;
        self.parts.push(id);
        Ok(())
    }

    /// Abort the multipart upload (if any); keep its record when the store
    /// cannot be told, so the next start retries.
    fn abort(self) {
        if let Some(u) = &self.upload {
            let key = self.backend.objs.object_key(&self.dataset_id).to_string();
            match self.backend.run(self.backend.objs.abort(&key, u)) {
                Ok(()) => {
                    let _ = fs::remove_file(&self.record);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "multipart upload not aborted; retried at the next start")
                }
            }
        }
    }

    /// The upload completed: its record goes.
    fn forget(self) {
        let _ = fs::remove_file(&self.record);
    }
}

fn row_to_record(r: &rusqlite::Row<'_>) -> rusqlite::Result<Record> {
    let meta: String = r.get(6)?;
    Ok(Record {
        dataset_id: r.get(0)?,
        bank_id: r.get(1)?,
        relay_id: r.get(2)?,
        size: r.get(3)?,
        sha256: r.get(4)?,
        created: r.get(5)?,
        meta: serde_json::from_str(&meta).unwrap_or(Value::Null),
    })
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

/// Start writing `len` bytes at `offset` of `file` back to the disk, without
/// waiting for them (Linux `sync_file_range(SYNC_FILE_RANGE_WRITE)`, what
/// RocksDB's `bytes_per_sync` does): the disk works while the next chunks
/// arrive, so the fsync before the commit waits only for the last few
/// instead of the whole upload. Durability still comes from that fsync
/// (which also covers the metadata); this only starts the work earlier. A
/// failure here is harmless and only logged: the fsync reports real errors.
fn start_writeback(file: Option<&File>, offset: u64, len: usize) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if let (Some(f), Ok(off), Ok(n)) = (file, i64::try_from(offset), i64::try_from(len)) {
        use std::os::fd::AsRawFd;
        // SAFETY: the descriptor belongs to `f`, which outlives the call;
        // sync_file_range reads no memory of ours.
        let r =
            unsafe { libc::sync_file_range(f.as_raw_fd(), off, n, libc::SYNC_FILE_RANGE_WRITE) };
        if r != 0 {
            tracing::debug!(error = %std::io::Error::last_os_error(), "sync_file_range");
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let _ = (file, offset, len);
}

/// Bytes shared with an upload's hashing thread without a copy (a received
/// `zmq::Message` behind an `Arc`).
pub type SharedBytes = Arc<dyn AsRef<[u8]> + Send + Sync>;

/// Chunks at least this large are hashed on the upload's own thread.
const HASH_THREAD_FROM: usize = 256 * 1024;
/// Chunks queued for the hashing thread, at most; then the writer waits.
/// With 1 MiB chunks a session's hashing holds at most 3 MiB (2 queued,
/// 1 being hashed).
const HASH_QUEUE: usize = 2;

/// The SHA-256 of an upload. It starts on the writer's thread; the first
/// large shared chunk moves it to a thread of its own, which hashes while
/// the writer writes and the socket receives. Hashing is about half of the
/// bank's ingest CPU (docs/PERFORMANCE.md, issue 16): on the writer's
/// thread it was added to every chunk's write. Chunks reach the thread in
/// order over a bounded channel; [`UploadHash::finish`] waits for the last.
#[derive(Debug)]
enum UploadHash {
    Inline(Sha256),
    Thread {
        tx: std::sync::mpsc::SyncSender<SharedBytes>,
        join: std::thread::JoinHandle<Sha256>,
    },
    /// Taken by `finish`.
    Done,
}

impl UploadHash {
    fn new(h: Sha256) -> Self {
        UploadHash::Inline(h)
    }

    /// Hash `data` (`shared` is the same bytes, when the thread may keep them).
    fn update(&mut self, data: &[u8], shared: Option<SharedBytes>) -> Result<(), StoreError> {
        if let UploadHash::Inline(h) = self {
            match shared {
                Some(bytes) if data.len() >= HASH_THREAD_FROM => {
                    let (tx, rx) = std::sync::mpsc::sync_channel::<SharedBytes>(HASH_QUEUE);
                    let start = h.clone();
                    let spawned = std::thread::Builder::new()
                        .name("bank-sha256".into())
                        .spawn(move || {
                            let mut h = start;
                            for c in rx {
                                h.update((*c).as_ref());
                            }
                            h
                        });
                    match spawned {
                        Ok(join) => {
                            // Cannot fail: the thread holds the receiver
                            // until this sender is dropped.
                            tx.send(bytes).map_err(|_| StoreError::HashThread)?;
                            *self = UploadHash::Thread { tx, join };
                        }
                        Err(e) => {
                            labmesh_wire::warn_throttled!(error = %e, "no hashing thread; hashing on the writer");
                            h.update(data);
                        }
                    }
                }
                _ => h.update(data),
            }
            return Ok(());
        }
        match self {
            UploadHash::Thread { tx, .. } => {
                let bytes = shared.unwrap_or_else(|| Arc::new(data.to_vec()));
                tx.send(bytes).map_err(|_| StoreError::HashThread)
            }
            _ => Err(StoreError::HashThread),
        }
    }

    /// The hasher with every byte in (joins the thread).
    fn finish(self) -> Result<Sha256, StoreError> {
        match self {
            UploadHash::Inline(h) => Ok(h),
            UploadHash::Thread { tx, join } => {
                drop(tx);
                join.join().map_err(|_| StoreError::HashThread)
            }
            UploadHash::Done => Err(StoreError::HashThread),
        }
    }
}

/// An upload being written.
#[derive(Debug)]
pub struct Partial {
    path: PathBuf,
    sidecar: Option<PathBuf>,
    /// Opened (created) by the first write.
    file: Option<File>,
    hasher: UploadHash,
    cp: Checkpoint,
    next_seq: u64,
    offset: u64,
    since_checkpoint: u64,
    checkpoint_bytes: u64,
    partial_dir: PathBuf,
    /// Bytes this upload counts in `usage` (its part file's length).
    counted: u64,
    usage: Arc<Usage>,
    /// S3 backend: the part buffer and the multipart upload.
    s3: Option<S3Part>,
}

/// A finished, fsynced upload awaiting commit.
#[derive(Debug)]
pub struct Finished {
    path: PathBuf,
    sidecar: Option<PathBuf>,
    counted: u64,
    usage: Arc<Usage>,
    s3: Option<S3Part>,
    /// Session facts.
    pub cp: Checkpoint,
    /// Final size.
    pub size: u64,
    /// Final SHA-256.
    pub sha256: String,
}

impl Finished {
    /// Delete the files (verification failed).
    pub fn discard(self) {
        if let Some(p) = self.s3 {
            p.abort();
        }
        let _ = fs::remove_file(&self.path);
        if let Some(s) = &self.sidecar {
            let _ = fs::remove_file(s);
        }
        self.usage.release(self.counted);
    }
}

impl Partial {
    /// The part file, created on first use and positioned at `offset`.
    fn open(&mut self) -> Result<&mut File, StoreError> {
        if self.file.is_none() {
            let mut f = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&self.path)
                .map_err(io_err(&self.path))?;
            f.seek(SeekFrom::Start(self.offset))
                .map_err(io_err(&self.path))?;
            self.file = Some(f);
        }
        match self.file.as_mut() {
            Some(f) => Ok(f),
            None => Err(io_err(&self.path)(std::io::Error::other(
                "part file not open",
            ))),
        }
    }

    /// Session facts (as of the last checkpoint for next_seq/offset).
    pub fn info(&self) -> &Checkpoint {
        &self.cp
    }

    /// Next chunk expected.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Bytes received.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Chunks durable on disk (== next_seq of the last checkpoint).
    pub fn durable_seq(&self) -> u64 {
        self.cp.next_seq
    }

    /// Whether the upload survives a bank restart.
    pub fn resumable(&self) -> bool {
        self.sidecar.is_some()
    }

    /// Append chunk `next_seq`; checkpoints every `checkpoint_bytes` for
    /// resumable uploads.
    /// Refused when the bytes would exceed the partial quota.
    pub fn append(&mut self, data: &[u8]) -> Result<(), StoreError> {
        self.append_inner(data, None)
    }

    /// [`Partial::append`] of bytes the hashing thread can share: a large
    /// chunk is hashed there, overlapping with this thread's write and the
    /// receiving of the next chunks, without a copy.
    pub fn append_shared(&mut self, data: SharedBytes) -> Result<(), StoreError> {
        let keep = data.clone();
        self.append_inner((*keep).as_ref(), Some(data))
    }

    /// The SHA-256 of everything appended (waits for the hashing thread).
    fn take_digest(&mut self) -> Result<String, StoreError> {
        let h = std::mem::replace(&mut self.hasher, UploadHash::Done).finish()?;
        Ok(hex::encode(h.finalize()))
    }

    fn append_inner(&mut self, data: &[u8], shared: Option<SharedBytes>) -> Result<(), StoreError> {
        self.usage.reserve(data.len() as u64)?;
        self.counted += data.len() as u64;
        if let Some(s3) = self.s3.as_mut() {
            // Parts end at chunk boundaries, so what the store holds is
            // always a whole number of chunks (durable_seq).
            s3.buf.extend_from_slice(data);
            self.hasher.update(data, shared)?;
            self.offset += data.len() as u64;
            self.next_seq += 1;
            if s3.buf.len() >= s3.backend.objs.part_size {
                s3.flush()?;
                self.cp.next_seq = self.next_seq;
                self.cp.offset = self.offset;
            }
            return Ok(());
        }
        self.open()?.write_all(data).map_err(io_err(&self.path))?;
        start_writeback(self.file.as_ref(), self.offset, data.len());
        self.hasher.update(data, shared)?;
        self.offset += data.len() as u64;
        self.next_seq += 1;
        self.since_checkpoint += data.len() as u64;
        if self.sidecar.is_some() && self.since_checkpoint >= self.checkpoint_bytes {
            self.checkpoint()?;
        }
        Ok(())
    }

    /// Make everything received durable and record it (resumable uploads).
    pub fn checkpoint(&mut self) -> Result<(), StoreError> {
        let Some(sidecar) = self.sidecar.clone() else {
            return Ok(());
        };
        if self.s3.is_some() {
            return Ok(()); // S3: a part in the store is the checkpoint
        }
        if let Some(f) = &self.file {
            f.sync_data().map_err(io_err(&self.path))?;
        }
        self.cp.next_seq = self.next_seq;
        self.cp.offset = self.offset;
        self.cp.updated = labmesh_proto::unix_now();
        let tmp = sidecar.with_extension("json.tmp");
        let body = serde_json::to_vec(&self.cp).unwrap_or_default();
        {
            let mut f = File::create(&tmp).map_err(io_err(&tmp))?;
            f.write_all(&body).map_err(io_err(&tmp))?;
            f.sync_all().map_err(io_err(&tmp))?;
        }
        fs::rename(&tmp, &sidecar).map_err(io_err(&sidecar))?;
        sync_dir(&self.partial_dir)?;
        self.since_checkpoint = 0;
        Ok(())
    }

    /// Flush and fsync; the content is ready for verification and commit.
    /// On failure the upload is deleted.
    pub fn finish(mut self) -> Result<Finished, StoreError> {
        if let Some(mut s3) = self.s3.take() {
            // A multipart upload gets the rest as its last part (any size);
            // a small upload stays in memory until the commit's single PUT.
            if s3.upload.is_some() && !s3.buf.is_empty() {
                if let Err(e) = s3.flush() {
                    s3.abort();
                    self.discard();
                    return Err(e);
                }
            }
            let sha256 = match self.take_digest() {
                Ok(d) => d,
                Err(e) => {
                    s3.abort();
                    self.discard();
                    return Err(e);
                }
            };
            return Ok(Finished {
                path: self.path,
                sidecar: self.sidecar,
                counted: self.counted,
                usage: self.usage,
                s3: Some(s3),
                cp: self.cp,
                size: self.offset,
                sha256,
            });
        }
        let path = self.path.clone();
        let synced = self
            .open()
            .and_then(|f| f.sync_all().map_err(io_err(&path)));
        if let Err(e) = synced {
            self.discard();
            return Err(e);
        }
        let sha256 = match self.take_digest() {
            Ok(d) => d,
            Err(e) => {
                self.discard();
                return Err(e);
            }
        };
        Ok(Finished {
            path: self.path,
            sidecar: self.sidecar,
            counted: self.counted,
            usage: self.usage,
            s3: None,
            cp: self.cp,
            size: self.offset,
            sha256,
        })
    }

    /// Stop: a resumable upload is checkpointed and kept; a legacy one is
    /// deleted.
    pub fn suspend(mut self) {
        if self.s3.is_some() {
            // An S3 upload's hash state lives only in this process: it
            // cannot be picked up again, so it is aborted (docs/BANK.md).
            self.discard();
            return;
        }
        if self.sidecar.is_some() {
            if self.since_checkpoint == 0 && self.cp.next_seq == self.next_seq {
                return; // the checkpoint on disk is current
            }
            if let Err(e) = self.checkpoint() {
                tracing::warn!(error = %e, "checkpoint on suspend failed");
            }
        } else {
            let _ = fs::remove_file(&self.path);
            self.usage.release(self.counted);
        }
    }

    /// Delete the upload (aborted, or failed: its space is free at once).
    pub fn discard(mut self) {
        if let Some(p) = self.s3.take() {
            p.abort();
        }
        let _ = fs::remove_file(&self.path);
        if let Some(s) = &self.sidecar {
            let _ = fs::remove_file(s);
        }
        let _ = fs::remove_file(self.sidecar_tmp());
        self.usage.release(self.counted);
    }

    fn sidecar_tmp(&self) -> PathBuf {
        self.sidecar
            .as_ref()
            .map(|s| s.with_extension("json.tmp"))
            .unwrap_or_default()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn cp(id: &str) -> Checkpoint {
        Checkpoint {
            dataset_id: id.into(),
            relay_id: "r".into(),
            meta: Value::Object(Default::default()),
            expected_size: None,
            expected_sha: None,
            next_seq: 0,
            offset: 0,
            updated: labmesh_proto::unix_now(),
        }
    }

    #[test]
    fn part_file_is_created_by_the_first_chunk_and_survives_a_restart_without_one() {
        let dir = tempfile::tempdir().unwrap();
        let ttl = Duration::from_secs(3600);
        let (store, _) = Store::open(dir.path(), "b", ttl).unwrap();
        let p = store.create_partial(Some("t1"), cp("d1"), 1 << 20).unwrap();
        assert!(!store.part_path("t1").exists(), "no file before a chunk");
        assert!(store.checkpoint_path("t1").exists());
        p.suspend();
        drop(store);
        let (store, rec) = Store::open(dir.path(), "b", ttl).unwrap();
        assert_eq!(rec.resumable, 1, "{rec:?}");
        let mut p = store.load_partial("t1", 1 << 20).unwrap().unwrap();
        p.append(b"abc").unwrap();
        assert!(store.part_path("t1").exists());
        let done = p.finish().unwrap();
        assert!(matches!(store.commit(done).unwrap(), Commit::Stored(_)));
        assert_eq!(fs::read(store.object_path("d1")).unwrap(), b"abc");
        // An empty upload still commits a (empty) file.
        let p = store.create_partial(None, cp("d2"), 1 << 20).unwrap();
        let done = p.finish().unwrap();
        assert!(matches!(store.commit(done).unwrap(), Commit::Stored(_)));
        assert_eq!(fs::read(store.object_path("d2")).unwrap(), b"");
        assert_eq!(store.partial_bytes(), 0);
    }

    #[test]
    fn hashing_thread_digest_is_the_sha256_of_every_byte_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(dir.path(), "b", Duration::from_secs(60)).unwrap();
        let mut p = store.create_partial(None, cp("h"), 1 << 20).unwrap();
        let big = |seed: u8| -> Vec<u8> {
            (0..HASH_THREAD_FROM + 7)
                .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
                .collect()
        };
        let mut all = Vec::new();
        // Small first (inline), then large shared (moves to the thread),
        // then small copied and large shared chunks (through the thread).
        for (i, chunk) in [b"head".to_vec(), big(1), b"mid".to_vec(), big(2), big(3)]
            .into_iter()
            .enumerate()
        {
            all.extend_from_slice(&chunk);
            if i % 2 == 0 {
                p.append(&chunk).unwrap();
            } else {
                p.append_shared(Arc::new(chunk)).unwrap();
            }
            if i == 1 {
                assert!(matches!(p.hasher, UploadHash::Thread { .. }));
            }
        }
        let done = p.finish().unwrap();
        assert_eq!(done.sha256, hex::encode(Sha256::digest(&all)));
        assert!(matches!(store.commit(done).unwrap(), Commit::Stored(_)));
        assert_eq!(fs::read(store.object_path("h")).unwrap(), all);
    }

    #[test]
    fn partial_quota_counts_every_unfinished_upload_and_frees_on_discard() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(dir.path(), "b", Duration::from_secs(60)).unwrap();
        store.set_partial_quota(10);
        let mut a = store.create_partial(Some("a"), cp("a"), 1 << 20).unwrap();
        let mut b = store.create_partial(None, cp("b"), 1 << 20).unwrap();
        a.append(b"123456").unwrap();
        let e = b.append(b"12345").unwrap_err();
        assert!(e.to_string().contains("partial_quota_bytes = 10"), "{e}");
        assert!(store.check_partial_quota(5).is_err());
        b.append(b"1234").unwrap();
        assert_eq!(store.partial_bytes(), 10);
        a.discard();
        assert_eq!(store.partial_bytes(), 4);
        let done = b.finish().unwrap();
        store.commit(done).unwrap();
        assert_eq!(store.partial_bytes(), 0);
    }
}
