//! The retrieve socket: downloads (legacy `get` and credit mode) and the
//! catalogue query.
//!
//! The ROUTER has `ROUTER_MANDATORY` and a small send high-water mark, so a
//! send to a peer whose queue is full fails with `EAGAIN` instead of being
//! dropped. Each download has a reader task that may only read a chunk when
//! it holds a permit from the download's semaphore:
//!
//! * legacy `get` (labmesh v0 clients): 2 permits, plus one each time a
//!   chunk is handed to libzmq — the stream is paced by the client's TCP
//!   window, nothing is dropped, and the bank holds at most a few chunks;
//! * credit mode (extension): permits are exactly the credit the client
//!   grants with `credit` messages.
//!
//! A message that meets a full peer queue waits in the download's own queue
//! and is retried a few milliseconds later; other downloads keep flowing.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use labmesh_proto::bank::{
    decode_retrieve, valid_dataset_id, BankErrorReply, ChunkMsg, DatasetList, Get, Malformed,
    MetaMsg, Query, RetrieveReply, RetrieveRequest,
};
use labmesh_proto::codes;
use labmesh_proto::mesh::encode;
use labmesh_wire::socket::{AfterError, Peer, RecvErrors};
use labmesh_wire::{AsyncSocket, WireError};
use tokio::sync::{mpsc, watch, Semaphore};

use crate::store::{Source, Store};

/// Largest credit a client may hold at once (chunks).
pub const MAX_CREDIT: u32 = 64;

#[derive(Debug, Clone)]
pub(crate) struct RetrieveConfig {
    pub chunk_size: usize,
    pub max_chunk: usize,
    pub idle: Duration,
    pub password: labmesh_wire::auth::Password,
    /// Downloads at once, all peers (lookups in progress included).
    pub max_downloads: usize,
    /// Downloads at once from one peer.
    pub max_downloads_per_peer: usize,
    /// Largest credit in bytes (credit x chunk size) per download.
    pub buffer_bytes: usize,
}

type Ident = Vec<u8>;
type Frames = Vec<Vec<u8>>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Meta,
    Chunk,
    Last,
}

struct Out {
    id: u64,
    frames: Frames,
    kind: Kind,
}

struct Download {
    ident: Ident,
    dataset_id: String,
    sem: Arc<Semaphore>,
    /// Chunks the reader may have read but not yet handed to libzmq (both
    /// modes): reading is paced to sending, so the bank's own queue stays
    /// short and credit is never refused because of it.
    pipe: Arc<Semaphore>,
    legacy: bool,
    /// Most chunks this download may have granted at once.
    cap: u32,
    queue: VecDeque<Out>,
    last_progress: Instant,
}

impl Download {
    /// Stop the reader (it sees closed semaphores).
    fn close(&self) {
        self.sem.close();
        self.pipe.close();
    }
}

/// Chunks a credit-mode reader may read ahead of what libzmq has taken.
const PIPE_AHEAD: usize = 2;

enum Internal {
    Reply(Ident, Vec<u8>),
    /// A get's lookup ended (after its Start or Reply was sent).
    Looked(Ident),
    Start {
        ident: Ident,
        meta: MetaMsg,
        source: Source,
        offset: u64,
        chunk: usize,
        credit: Option<u32>,
    },
}

struct Retrieve {
    sock: AsyncSocket,
    store: Arc<Store>,
    cfg: RetrieveConfig,
    downloads: HashMap<u64, Download>,
    /// Gets whose lookup is in progress, per peer (they count as downloads).
    looking: HashMap<Ident, usize>,
    /// Downloads ended since memory was last handed back to the OS.
    ended: usize,
    next_id: u64,
    internal_tx: mpsc::UnboundedSender<Internal>,
    stream_tx: mpsc::Sender<Out>,
}

pub(crate) async fn run(
    sock: AsyncSocket,
    store: Arc<Store>,
    cfg: RetrieveConfig,
    mut shutdown: watch::Receiver<bool>,
) {
    let (internal_tx, mut internal_rx) = mpsc::unbounded_channel();
    let (stream_tx, mut stream_rx) = mpsc::channel(8);
    let mut r = Retrieve {
        sock,
        store,
        cfg,
        downloads: HashMap::new(),
        looking: HashMap::new(),
        ended: 0,
        next_id: 0,
        internal_tx,
        stream_tx,
    };
    let mut sweep = tokio::time::interval(Duration::from_secs(5));
    // When some download met a full peer queue, retry at this instant. It is
    // set once and not pushed back by other events, so a busy socket cannot
    // starve the retry.
    let mut retry_at: Option<tokio::time::Instant> = None;
    let mut errors = RecvErrors::new("bank retrieve");
    loop {
        let blocked = r.downloads.values().any(|d| !d.queue.is_empty());
        if !blocked {
            retry_at = None;
        } else if retry_at.is_none() {
            retry_at = Some(tokio::time::Instant::now() + Duration::from_millis(1));
        }
        let retry = tokio::time::sleep_until(retry_at.unwrap_or_else(tokio::time::Instant::now));
        tokio::select! {
            _ = shutdown.changed() => break,
            frames = r.sock.recv_multipart_peer() => match frames {
                Ok((f, meta)) => {
                    errors.ok();
                    r.on_frames(f, &meta)
                }
                Err(e) => match errors.failed(&e).await {
                    AfterError::Retry => {}
                    AfterError::Stop => break,
                },
            },
            Some(msg) = internal_rx.recv() => r.on_internal(msg),
            Some(out) = stream_rx.recv() => r.enqueue(out),
            // Retry sends that met a full peer queue (pacing, not polling:
            // only armed while something is waiting).
            _ = retry, if blocked => {
                retry_at = None;
                r.pump_all();
            }
            _ = sweep.tick() => r.sweep(),
        }
    }
    for d in r.downloads.values() {
        d.close();
    }
    tracing::info!("retrieve stopped");
}

impl Retrieve {
    fn reply(&mut self, ident: &Ident, r: &RetrieveReply) {
        let frames = [ident.clone(), encode(r)];
        match self.sock.try_send_multipart(&frames) {
            Ok(true) => {}
            Ok(false) => tracing::debug!("reply dropped: peer queue full"),
            Err(e) => tracing::debug!(error = %e, "reply not sent"),
        }
    }

    fn error(&mut self, ident: &Ident, code: i64, msg: impl Into<String>) {
        self.reply(ident, &RetrieveReply::Error(BankErrorReply::new(code, msg)));
    }

    fn on_frames(&mut self, frames: Frames, meta: &Peer) {
        let mut it = frames.into_iter();
        let (Some(ident), Some(head)) = (it.next(), it.next()) else {
            labmesh_wire::warn_throttled!("retrieve message without a body; ignored");
            return;
        };
        if it.next().is_some() {
            self.error(&ident, codes::BAD_REQUEST, "expected one frame");
            return;
        }
        let req = decode_retrieve(&head);
        if let Ok(req) = &req {
            let kind = match req {
                RetrieveRequest::Get(_) => "get",
                RetrieveRequest::Credit(_) => "credit",
                RetrieveRequest::Cancel(_) => "cancel",
                RetrieveRequest::ListDatasets(_) => "list_datasets",
            };
            if let Err(m) = crate::authz::check(false, kind, meta) {
                self.error(&ident, codes::FORBIDDEN, m);
                return;
            }
        }
        match req {
            Ok(RetrieveRequest::Get(g)) => self.on_get(ident, g),
            Ok(RetrieveRequest::Credit(c)) => {
                if let Some(d) = self
                    .downloads
                    .values_mut()
                    .find(|d| d.ident == ident && d.dataset_id == c.dataset_id && !d.legacy)
                {
                    // Unsent chunks count against the cap too, so a client
                    // that grants without reading cannot grow the queue.
                    let held = (d.sem.available_permits() + d.queue.len()) as u32;
                    let add = c.credit.min(d.cap.saturating_sub(held));
                    d.sem.add_permits(add as usize);
                    d.last_progress = Instant::now();
                }
            }
            Ok(RetrieveRequest::Cancel(c)) => {
                self.cancel(|d| d.ident == ident && d.dataset_id == c.dataset_id);
            }
            Ok(RetrieveRequest::ListDatasets(q)) => self.on_list(ident, q),
            Err(Malformed::UnknownType(Some(_))) => {
                // labmesh's answer to anything that is not a get.
                self.error(&ident, codes::BAD_REQUEST, "expected get");
            }
            Err(m) => {
                labmesh_wire::warn_throttled!(problem = %m.message(), "bad retrieve request");
                self.error(&ident, codes::BAD_REQUEST, m.message());
            }
        }
    }

    fn cancel(&mut self, pred: impl Fn(&Download) -> bool) {
        let ids: Vec<u64> = self
            .downloads
            .iter()
            .filter(|(_, d)| pred(d))
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.remove(id);
        }
    }

    /// End download `id` (its reader sees closed semaphores).
    fn remove(&mut self, id: u64) {
        if let Some(d) = self.downloads.remove(&id) {
            d.close();
            self.ended += 1;
            if self.downloads.is_empty() {
                self.trim();
            }
        }
    }

    /// Hand the chunk buffers of ended downloads back to the OS: glibc
    /// keeps freed memory in its arenas otherwise, and a burst of stalled
    /// downloads would leave the bank hundreds of MiB larger for good.
    fn trim(&mut self) {
        if self.ended > 0 {
            self.ended = 0;
            tokio::task::spawn_blocking(release_freed_memory);
        }
    }

    /// Refuse a download when the peer or the bank runs too many.
    fn admit(&mut self, ident: &Ident) -> bool {
        let total = self.downloads.len() + self.looking.values().sum::<usize>();
        let mine = self
            .downloads
            .values()
            .filter(|d| d.ident == *ident)
            .count()
            + self.looking.get(ident).copied().unwrap_or(0);
        let refusal = if mine >= self.cfg.max_downloads_per_peer {
            Some(format!(
                "too many downloads from this peer: {mine} running \
                 (max_downloads_per_peer = {}); cancel or finish one",
                self.cfg.max_downloads_per_peer
            ))
        } else if total >= self.cfg.max_downloads {
            Some(format!(
                "bank busy: {total} downloads running (max_downloads = {}); try again later",
                self.cfg.max_downloads
            ))
        } else {
            None
        };
        match refusal {
            Some(msg) => {
                labmesh_wire::warn_throttled!(problem = %msg, "download refused");
                self.error(ident, codes::UNAVAILABLE, msg);
                false
            }
            None => {
                *self.looking.entry(ident.clone()).or_default() += 1;
                true
            }
        }
    }

    fn on_get(&mut self, ident: Ident, g: Get) {
        if !self.cfg.password.accepts(g.password.as_ref()) {
            self.error(&ident, codes::UNAUTHORIZED, "invalid password");
            return;
        }
        let Some(dataset_id) = g.dataset_id.filter(|d| valid_dataset_id(d)) else {
            self.error(&ident, codes::NOT_FOUND, "not found");
            return;
        };
        // A new get for the same dataset from the same peer replaces the old.
        self.cancel(|d| d.ident == ident && d.dataset_id == dataset_id);
        if !self.admit(&ident) {
            return;
        }
        let extended = g.credit.is_some() || g.offset.is_some() || g.chunk_size.is_some();
        let buffer = self.cfg.buffer_bytes.max(1);
        let chunk = g
            .chunk_size
            .map(|c| (c as usize).clamp(1, self.cfg.max_chunk.min(buffer)))
            .unwrap_or(self.cfg.chunk_size);
        let offset = g.offset.unwrap_or(0);
        // The bank holds at most credit x chunk bytes for a download.
        let cap = (buffer / chunk.max(1)).clamp(1, MAX_CREDIT as usize) as u32;
        let credit = g.credit.map(|c| c.clamp(1, cap));
        let store = self.store.clone();
        let tx = self.internal_tx.clone();
        tokio::spawn(async move {
            let looked = ident.clone();
            let id = dataset_id.clone();
            let found =
                tokio::task::spawn_blocking(move || store.lookup(&id).map(|r| (r, store))).await;
            let msg = match found {
                Ok(Ok((Some(rec), store))) if offset <= rec.size => Internal::Start {
                    source: store.source(&rec.dataset_id),
                    meta: MetaMsg {
                        dataset_id: rec.dataset_id,
                        size: rec.size,
                        sha256: rec.sha256,
                        meta: rec.meta,
                        offset: extended.then_some(offset),
                        chunk_size: extended.then_some(chunk as u64),
                        credit,
                    },
                    ident,
                    offset,
                    chunk,
                    credit,
                },
                Ok(Ok((Some(rec), _))) => Internal::Reply(
                    ident,
                    encode(&RetrieveReply::Error(BankErrorReply::for_dataset(
                        &rec.dataset_id,
                        codes::BAD_REQUEST,
                        format!("offset {offset} beyond size {}", rec.size),
                    ))),
                ),
                Ok(Ok((None, _))) => Internal::Reply(
                    ident,
                    encode(&RetrieveReply::Error(BankErrorReply::new(
                        codes::NOT_FOUND,
                        "not found",
                    ))),
                ),
                Ok(Err(e)) => Internal::Reply(
                    ident,
                    encode(&RetrieveReply::Error(BankErrorReply::new(
                        codes::UNAVAILABLE,
                        format!("storage: {e}"),
                    ))),
                ),
                Err(e) => {
                    tracing::error!(error = %e, "lookup task failed");
                    let _ = tx.send(Internal::Looked(looked));
                    return;
                }
            };
            let _ = tx.send(msg);
            let _ = tx.send(Internal::Looked(looked));
        });
    }

    fn on_list(&mut self, ident: Ident, q: Query) {
        if !self.cfg.password.accepts(q.password.as_ref()) {
            self.error(&ident, codes::UNAUTHORIZED, "invalid password");
            return;
        }
        let store = self.store.clone();
        let tx = self.internal_tx.clone();
        tokio::spawn(async move {
            let reply = match tokio::task::spawn_blocking(move || store.list(&q)).await {
                Ok(Ok(datasets)) => RetrieveReply::Datasets(DatasetList { datasets }),
                Ok(Err(e)) => RetrieveReply::Error(BankErrorReply::new(
                    codes::UNAVAILABLE,
                    format!("storage: {e}"),
                )),
                Err(e) => {
                    tracing::error!(error = %e, "list task failed");
                    return;
                }
            };
            let _ = tx.send(Internal::Reply(ident, encode(&reply)));
        });
    }

    fn on_internal(&mut self, msg: Internal) {
        match msg {
            Internal::Reply(ident, body) => {
                if let Err(e) = self.sock.try_send_multipart(&[ident, body]) {
                    tracing::debug!(error = %e, "reply not sent");
                }
            }
            Internal::Looked(ident) => {
                if let Some(n) = self.looking.get_mut(&ident) {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        self.looking.remove(&ident);
                    }
                }
            }
            Internal::Start {
                ident,
                meta,
                source,
                offset,
                chunk,
                credit,
            } => {
                // Two gets of one dataset raced through their lookups: the
                // newer replaces the older here too.
                let dataset_id = meta.dataset_id.clone();
                self.cancel(|d| d.ident == ident && d.dataset_id == dataset_id);
                let id = self.next_id;
                self.next_id += 1;
                let legacy = credit.is_none();
                let sem = Arc::new(Semaphore::new(credit.unwrap_or(2) as usize));
                let pipe = Arc::new(Semaphore::new(PIPE_AHEAD));
                let extended = meta.offset.is_some();
                let meta_size = meta.size;
                let dataset_id = meta.dataset_id.clone();
                self.downloads.insert(
                    id,
                    Download {
                        ident: ident.clone(),
                        dataset_id: dataset_id.clone(),
                        sem: sem.clone(),
                        pipe: pipe.clone(),
                        legacy,
                        cap: credit.unwrap_or(2),
                        queue: VecDeque::new(),
                        last_progress: Instant::now(),
                    },
                );
                let frames = vec![ident.clone(), encode(&RetrieveReply::Meta(meta))];
                self.enqueue(Out {
                    id,
                    frames,
                    kind: Kind::Meta,
                });
                let reader = Reader {
                    id,
                    ident,
                    dataset_id,
                    source,
                    size: meta_size,
                    offset,
                    chunk,
                    extended,
                    sem,
                    pipe: (!legacy).then_some(pipe),
                    tx: self.stream_tx.clone(),
                };
                tokio::spawn(reader.run());
            }
        }
    }

    fn enqueue(&mut self, out: Out) {
        let id = out.id;
        let Some(d) = self.downloads.get_mut(&id) else {
            return; // cancelled
        };
        d.queue.push_back(out);
        self.pump(id);
    }

    fn pump_all(&mut self) {
        let ids: Vec<u64> = self
            .downloads
            .iter()
            .filter(|(_, d)| !d.queue.is_empty())
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.pump(id);
        }
    }

    /// Hand queued messages of download `id` to libzmq until its peer's
    /// queue is full.
    fn pump(&mut self, id: u64) {
        loop {
            let Some(d) = self.downloads.get_mut(&id) else {
                return;
            };
            let Some(out) = d.queue.front_mut() else {
                return;
            };
            // The chunk's buffer goes to libzmq as it is (no copy).
            match self.sock.try_send_multipart_owned(&mut out.frames) {
                Ok(true) => {
                    let kind = out.kind;
                    d.queue.pop_front();
                    d.last_progress = Instant::now();
                    match kind {
                        Kind::Last => {
                            self.remove(id);
                            return;
                        }
                        Kind::Chunk if d.legacy => d.sem.add_permits(1),
                        Kind::Chunk => d.pipe.add_permits(1),
                        _ => {}
                    }
                }
                Ok(false) => return,
                Err(WireError::Zmq(zmq::Error::EHOSTUNREACH)) => {
                    tracing::info!(dataset_id = %d.dataset_id, "downloader went away");
                    self.remove(id);
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "download send failed");
                    self.remove(id);
                    return;
                }
            }
        }
    }

    /// Drop downloads that made no progress for too long (a credit-mode
    /// client that died, a legacy client that stopped reading).
    fn sweep(&mut self) {
        let idle = self.cfg.idle;
        self.cancel(|d| d.last_progress.elapsed() > idle);
        // Also memory libzmq freed when peers went away (their queued
        // chunks), which no download end reports.
        self.ended = self.ended.max(1);
        self.trim();
    }
}

/// Return freed heap pages to the OS (glibc only; elsewhere a no-op).
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists; it
    // takes the arena locks itself and is safe to call from any thread.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// What a reader reads from.
enum Input {
    /// Read with `std::fs` inside one blocking call per chunk, straight
    /// into the chunk's buffer (tokio's `File` reads into a buffer of its
    /// own and copies from it: one memcpy per chunk more). `None` only
    /// while a read is under way.
    File(Option<std::fs::File>),
    S3 {
        stream: futures::stream::BoxStream<'static, Result<bytes::Bytes, crate::s3::ObjectError>>,
        /// Bytes received but not yet put in a chunk.
        left: bytes::Bytes,
    },
    Empty,
}

impl Input {
    /// Up to `size` bytes (fewer only at the end; empty at the end).
    async fn read_chunk(&mut self, size: usize) -> Result<Vec<u8>, String> {
        let mut buf = Vec::with_capacity(size);
        match self {
            Input::File(slot) => {
                let Some(mut f) = slot.take() else {
                    return Err("file read after a failed read".to_string());
                };
                let (f, read) = tokio::task::spawn_blocking(move || {
                    let r = read_full(&mut f, &mut buf, size);
                    (f, r.map(|()| buf))
                })
                .await
                .map_err(|e| e.to_string())?;
                *slot = Some(f);
                buf = read.map_err(|e| e.to_string())?;
            }
            Input::S3 { stream, left } => {
                use futures::StreamExt;
                while buf.len() < size {
                    if left.is_empty() {
                        match stream.next().await {
                            Some(Ok(b)) => *left = b,
                            Some(Err(e)) => return Err(e.to_string()),
                            None => break,
                        }
                        continue;
                    }
                    let take = left.len().min(size - buf.len());
                    buf.extend_from_slice(&left.split_to(take));
                }
            }
            Input::Empty => {}
        }
        Ok(buf)
    }
}

/// Fill `buf` (empty, capacity `size`) with up to `size` bytes of `f`:
/// fewer only at the end of the file.
fn read_full(f: &mut std::fs::File, buf: &mut Vec<u8>, size: usize) -> std::io::Result<()> {
    use std::io::Read;
    let mut limited = f.take(size as u64);
    loop {
        match limited.read_to_end(buf) {
            Ok(_) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

struct Reader {
    id: u64,
    ident: Ident,
    dataset_id: String,
    source: Source,
    /// The dataset's size (S3: no range request past the end).
    size: u64,
    offset: u64,
    chunk: usize,
    extended: bool,
    sem: Arc<Semaphore>,
    /// Credit mode: pacing to the socket (legacy paces with `sem` itself).
    pipe: Option<Arc<Semaphore>>,
    tx: mpsc::Sender<Out>,
}

impl Reader {
    async fn run(self) {
        if let Err(e) = self.stream().await {
            tracing::warn!(dataset_id = %self.dataset_id, error = %e, "download failed");
            let err = BankErrorReply::for_dataset(
                &self.dataset_id,
                codes::UNAVAILABLE,
                format!("storage: {e}"),
            );
            let _ = self
                .tx
                .send(Out {
                    id: self.id,
                    frames: vec![self.ident.clone(), encode(&RetrieveReply::Error(err))],
                    kind: Kind::Last,
                })
                .await;
        }
    }

    async fn stream(&self) -> Result<(), String> {
        tracing::trace!(dataset_id = %self.dataset_id, offset = self.offset, "reader starts");
        let mut input = match &self.source {
            Source::File(path) => {
                let (path, offset) = (path.clone(), self.offset);
                let f = tokio::task::spawn_blocking(move || {
                    use std::io::{Seek, SeekFrom};
                    let what = |e: std::io::Error| format!("{}: {e}", path.display());
                    let mut f = std::fs::File::open(&path).map_err(what)?;
                    f.seek(SeekFrom::Start(offset)).map_err(what)?;
                    Ok::<_, String>(f)
                })
                .await
                .map_err(|e| e.to_string())??;
                Input::File(Some(f))
            }
            // Nothing left to read: no range request (S3 refuses an empty
            // range with 416).
            Source::S3(..) if self.offset >= self.size => Input::Empty,
            Source::S3(objs, id) => Input::S3 {
                stream: objs
                    .read_from(id, self.offset)
                    .await
                    .map_err(|e| e.to_string())?,
                left: bytes::Bytes::new(),
            },
        };
        let mut seq = 0u64;
        let mut pos = self.offset;
        loop {
            match self.sem.acquire().await {
                Ok(p) => p.forget(),
                Err(_) => return Ok(()), // cancelled
            }
            if let Some(pipe) = &self.pipe {
                match pipe.acquire().await {
                    Ok(p) => p.forget(),
                    Err(_) => return Ok(()), // cancelled
                }
            }
            let buf = input.read_chunk(self.chunk).await?;
            tracing::trace!(dataset_id = %self.dataset_id, seq, len = buf.len(), "chunk read");
            let eof = buf.is_empty();
            let head = ChunkMsg {
                dataset_id: self.dataset_id.clone(),
                seq,
                eof,
                offset: self.extended.then_some(pos),
            };
            let mut frames = vec![self.ident.clone(), encode(&RetrieveReply::Chunk(head))];
            if !eof {
                pos += buf.len() as u64;
                frames.push(buf);
            }
            let out = Out {
                id: self.id,
                frames,
                kind: if eof { Kind::Last } else { Kind::Chunk },
            };
            if self.tx.send(out).await.is_err() || eof {
                return Ok(());
            }
            seq += 1;
        }
    }
}
