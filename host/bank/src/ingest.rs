//! The ingest socket: upload sessions (labmesh v0 and resumable).
//!
//! One task owns the ROUTER. Each session has its own writer task, which
//! does the file work through `spawn_blocking` and sends its replies back
//! over an unbounded channel (replies are small; the socket task never waits
//! on a writer while a writer waits on it). Chunks reach a writer through a
//! small bounded channel: a slow disk pushes back on the socket, and libzmq's
//! receive high-water mark pushes back on the uploader over TCP.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use labmesh_proto::bank::{
    decode_ingest, valid_dataset_id, valid_token, BankErrorReply, IngestAck, IngestAckChunk,
    IngestDone, IngestReply, IngestRequest, IngestResume, IngestStart, NO_SESSION,
};
use labmesh_proto::codes;
use labmesh_proto::mesh::{encode, DatasetAnnounce};
use labmesh_wire::socket::{AfterError, Peer, RecvErrors};
use labmesh_wire::AsyncSocket;
use serde_json::Value;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::store::{Checkpoint, Commit, Partial, Store, StoreError};

/// Settings the ingest side needs.
#[derive(Debug, Clone)]
pub(crate) struct IngestConfig {
    pub bank_id: String,
    pub max_chunk: usize,
    pub checkpoint_bytes: u64,
    pub session_idle: Duration,
    pub password: labmesh_wire::auth::Password,
    /// Open sessions (all peers together, openings in progress included).
    pub max_sessions: usize,
    /// Open sessions of one peer (ZeroMQ identity).
    pub max_sessions_per_peer: usize,
}

type Ident = Vec<u8>;

enum WriterCmd {
    Chunk {
        ident: Ident,
        seq: u64,
        eof: bool,
        /// The chunk as libzmq received it (no copy before the file).
        data: zmq::Message,
        size: Option<u64>,
        sha256: Option<String>,
    },
    /// The uploader re-attached (possibly with a new identity).
    Rebind {
        ident: Ident,
    },
    Abort,
}

struct SessionHandle {
    tx: mpsc::Sender<WriterCmd>,
    /// The peer it counts against (the last one to attach).
    owner: Ident,
    dataset_id: String,
    last_active: Instant,
    task: JoinHandle<()>,
}

/// Results of work done off the socket task.
enum Internal {
    /// A session is ready: register it and ack.
    Opened {
        ident: Ident,
        key: String,
        partial: Box<Partial>,
        ack: IngestAck,
    },
    /// A writer ended; `last` is its final reply (ingest_done or the commit
    /// error), sent only after the session is gone, so a resume that follows
    /// it finds the committed dataset rather than a finished writer.
    Closed {
        key: String,
        last: Option<(Ident, IngestReply)>,
    },
    /// An opening that did not produce a session (refused or failed) ended.
    Settled { ident: Ident },
}

struct Ingest {
    sock: AsyncSocket,
    store: Arc<Store>,
    cfg: IngestConfig,
    sessions: HashMap<String, SessionHandle>,
    by_ident: HashMap<Ident, String>,
    /// Openings in progress per peer (they count against the caps).
    opening: HashMap<Ident, usize>,
    out_tx: mpsc::UnboundedSender<(Ident, Vec<u8>)>,
    internal_tx: mpsc::UnboundedSender<Internal>,
    announce: mpsc::UnboundedSender<DatasetAnnounce>,
}

pub(crate) async fn run(
    sock: AsyncSocket,
    store: Arc<Store>,
    cfg: IngestConfig,
    announce: mpsc::UnboundedSender<DatasetAnnounce>,
    mut shutdown: watch::Receiver<bool>,
) {
    let (out_tx, mut out_rx) = mpsc::unbounded_channel();
    let (internal_tx, mut internal_rx) = mpsc::unbounded_channel();
    let mut ing = Ingest {
        sock,
        store,
        cfg,
        sessions: HashMap::new(),
        by_ident: HashMap::new(),
        opening: HashMap::new(),
        out_tx,
        internal_tx,
        announce,
    };
    let mut sweep = tokio::time::interval(Duration::from_secs(5));
    let mut errors = RecvErrors::new("bank ingest");
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            frames = ing.sock.recv_messages_peer() => match frames {
                Ok((frames, meta)) => {
                    errors.ok();
                    ing.on_frames(frames, &meta).await
                }
                Err(e) => match errors.failed(&e).await {
                    AfterError::Retry => {}
                    AfterError::Stop => break,
                },
            },
            Some((ident, body)) = out_rx.recv() => ing.reply_raw(ident, body),
            Some(msg) = internal_rx.recv() => ing.on_internal(msg),
            _ = sweep.tick() => ing.sweep(),
        }
    }
    // Graceful: writers checkpoint resumable sessions and delete legacy ones,
    // all at once (each on the blocking pool), so stopping takes one
    // checkpoint's time, not one per session.
    let tasks: Vec<JoinHandle<()>> = ing.sessions.drain().map(|(_, s)| s.task).collect();
    for t in tasks {
        let _ = t.await;
    }
    while let Ok((ident, body)) = out_rx.try_recv() {
        ing.reply_raw(ident, body);
    }
    tracing::info!("ingest stopped");
}

fn reply_bytes(r: &IngestReply) -> Vec<u8> {
    encode(r)
}

impl Ingest {
    fn reply_raw(&mut self, ident: Ident, body: Vec<u8>) {
        // ROUTER without MANDATORY never blocks: a peer that does not read
        // (labmesh's upload_dataset ignores chunk acks) just loses them at
        // its high-water mark.
        if let Err(e) = self.sock.try_send_multipart(&[ident, body]) {
            tracing::debug!(error = %e, "ingest reply not sent");
        }
    }

    fn reply(&mut self, ident: &Ident, r: IngestReply) {
        self.reply_raw(ident.clone(), reply_bytes(&r));
    }

    fn error(&mut self, ident: &Ident, dataset_id: Option<&str>, code: i64, msg: String) {
        let e = match dataset_id {
            Some(d) => BankErrorReply::for_dataset(d, code, msg),
            None => BankErrorReply::new(code, msg),
        };
        self.reply(ident, IngestReply::Error(e));
    }

    async fn on_frames(&mut self, mut frames: Vec<zmq::Message>, meta: &Peer) {
        if frames.len() < 2 {
            labmesh_wire::warn_throttled!(
                frames = frames.len(),
                "ingest message without a body; ignored"
            );
            return;
        }
        let ident = frames.remove(0).to_vec();
        if frames.len() > 2 {
            self.error(
                &ident,
                None,
                codes::BAD_REQUEST,
                format!("expected 1 or 2 frames, got {}", frames.len()),
            );
            return;
        }
        let data = if frames.len() == 2 {
            frames.pop()
        } else {
            None
        };
        let head = frames.pop().unwrap_or_else(zmq::Message::new);
        let req = match decode_ingest(&head[..]) {
            Ok(r) => r,
            Err(m) => {
                labmesh_wire::warn_throttled!(problem = %m.message(), "bad ingest request");
                self.error(&ident, None, codes::BAD_REQUEST, m.message());
                return;
            }
        };
        let kind = match &req {
            IngestRequest::IngestStart(_) => "ingest_start",
            IngestRequest::IngestChunk(_) => "ingest_chunk",
            IngestRequest::IngestResume(_) => "ingest_resume",
            IngestRequest::IngestAbort(_) => "ingest_abort",
        };
        if let Err(m) = crate::authz::check(true, kind, meta) {
            let id = match &req {
                IngestRequest::IngestStart(s) => s.dataset_id.as_deref(),
                IngestRequest::IngestChunk(c) => c.dataset_id.as_deref(),
                IngestRequest::IngestResume(r) => Some(r.dataset_id.as_str()),
                IngestRequest::IngestAbort(a) => Some(a.dataset_id.as_str()),
            };
            self.error(&ident, id, codes::FORBIDDEN, m);
            return;
        }
        match req {
            IngestRequest::IngestStart(s) => self.on_start(ident, s).await,
            IngestRequest::IngestChunk(c) => {
                let Some(key) = self.by_ident.get(&ident).cloned() else {
                    self.error(&ident, None, codes::CONFLICT, NO_SESSION.to_string());
                    return;
                };
                let data = data.unwrap_or_else(zmq::Message::new);
                if data.len() > self.cfg.max_chunk {
                    let id = self.sessions.get(&key).map(|s| s.dataset_id.clone());
                    let msg = format!(
                        "chunk of {} bytes exceeds max_chunk {}",
                        data.len(),
                        self.cfg.max_chunk
                    );
                    self.error(&ident, id.as_deref(), codes::BAD_REQUEST, msg);
                    return;
                }
                let cmd = WriterCmd::Chunk {
                    ident: ident.clone(),
                    seq: c.seq,
                    eof: c.eof,
                    data,
                    size: c.size,
                    sha256: c.sha256,
                };
                self.forward(&key, &ident, cmd).await;
            }
            IngestRequest::IngestResume(r) => self.on_resume(ident, r).await,
            IngestRequest::IngestAbort(a) => match self.sessions.get(&a.token) {
                Some(s) if s.dataset_id == a.dataset_id => {
                    let _ = s.tx.send(WriterCmd::Abort).await;
                }
                Some(_) => {}
                // A suspended session: its bytes go too.
                None if valid_token(&a.token) => {
                    let store = self.store.clone();
                    tokio::task::spawn_blocking(move || {
                        if store.delete_partial(&a.token, &a.dataset_id) {
                            tracing::info!(dataset_id = %a.dataset_id, "suspended upload aborted");
                        }
                    });
                }
                None => {}
            },
        }
    }

    /// Refuse a new session when the peer or the bank has too many open
    /// (sessions and openings in progress); otherwise count the opening.
    fn admit(&mut self, ident: &Ident, dataset_id: &str) -> bool {
        let total = self.sessions.len() + self.opening.values().sum::<usize>();
        let mine = self.sessions.values().filter(|s| s.owner == *ident).count()
            + self.opening.get(ident).copied().unwrap_or(0);
        let refusal = if mine >= self.cfg.max_sessions_per_peer {
            Some(format!(
                "too many upload sessions from this peer: {mine} open \
                 (max_upload_sessions_per_peer = {}); finish or abort one",
                self.cfg.max_sessions_per_peer
            ))
        } else if total >= self.cfg.max_sessions {
            Some(format!(
                "bank busy: {total} upload sessions open (max_upload_sessions = {}); try again later",
                self.cfg.max_sessions
            ))
        } else {
            None
        };
        match refusal {
            Some(msg) => {
                labmesh_wire::warn_throttled!(problem = %msg, "upload session refused");
                self.error(ident, Some(dataset_id), codes::UNAVAILABLE, msg);
                false
            }
            None => {
                *self.opening.entry(ident.clone()).or_default() += 1;
                true
            }
        }
    }

    /// An opening counted by `admit` ended.
    fn settled(&mut self, ident: &Ident) {
        if let Some(n) = self.opening.get_mut(ident) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.opening.remove(ident);
            }
        }
    }

    async fn forward(&mut self, key: &str, ident: &Ident, cmd: WriterCmd) {
        let Some(s) = self.sessions.get_mut(key) else {
            self.by_ident.remove(ident);
            self.error(ident, None, codes::CONFLICT, NO_SESSION.to_string());
            return;
        };
        s.last_active = Instant::now();
        if s.tx.send(cmd).await.is_err() {
            // The writer just ended (eof or failure); its final answer comes
            // with `Internal::Closed` and must reach the uploader first (a
            // 409 here would send it resuming a session that failed for a
            // reason it should see). Chunks after that get `no ingest_start`.
            tracing::debug!(session = %key, "chunk for a session that just ended; dropped");
        }
    }

    async fn on_start(&mut self, ident: Ident, s: IngestStart) {
        if !self.cfg.password.accepts(s.password.as_ref()) {
            self.error(&ident, None, codes::UNAUTHORIZED, "invalid password".into());
            return;
        }
        let dataset_id = match s.dataset_id.filter(|d| !d.is_empty()) {
            Some(d) => d,
            None => uuid::Uuid::new_v4().simple().to_string(),
        };
        if !valid_dataset_id(&dataset_id) {
            self.error(
                &ident,
                None,
                codes::BAD_REQUEST,
                "invalid dataset_id: use 1..128 of letters, digits, '.', '_', '-'".into(),
            );
            return;
        }
        if let Some(t) = &s.token {
            if !valid_token(t) {
                self.error(
                    &ident,
                    Some(&dataset_id),
                    codes::BAD_REQUEST,
                    "invalid token: use 1..64 of letters, digits, '_', '-'".into(),
                );
                return;
            }
        }
        // A new start from the same sender replaces its legacy session (as
        // labmesh); a token session stays resumable until it goes idle.
        if let Some(old) = self.by_ident.remove(&ident) {
            if old.starts_with('#') {
                // Dropping the handle ends the writer, which deletes a
                // legacy part file.
                self.sessions.remove(&old);
            }
        }
        if let Some(t) = &s.token {
            if let Some(h) = self.sessions.remove(t) {
                let _ = h.tx.send(WriterCmd::Abort).await;
                let _ = h.task.await;
            }
        }
        if !self.admit(&ident, &dataset_id) {
            return;
        }
        let cp = Checkpoint {
            dataset_id: dataset_id.clone(),
            relay_id: s
                .relay_id
                .filter(|r| !r.is_empty())
                .unwrap_or_else(|| "unknown".into()),
            meta: match s.meta {
                None | Some(Value::Null) => Value::Object(Default::default()),
                Some(m) => m,
            },
            expected_size: s.size.filter(|n| *n > 0),
            expected_sha: s.sha256.filter(|h| !h.is_empty()),
            next_seq: 0,
            offset: 0,
            updated: labmesh_proto::unix_now(),
        };
        let store = self.store.clone();
        let internal = self.internal_tx.clone();
        let out = self.out_tx.clone();
        let token = s.token.clone();
        let checkpoint_bytes = self.cfg.checkpoint_bytes;
        let max_chunk = self.cfg.max_chunk as u64;
        tokio::spawn(async move {
            let settle = ident.clone();
            let job = tokio::task::spawn_blocking(move || {
                // A declared size that cannot fit is refused at once.
                if let Some(n) = cp.expected_size {
                    store.check_partial_quota(n)?;
                }
                // Early conflict: the id exists with different declared content.
                if let Some(existing) = store.lookup(&cp.dataset_id)? {
                    let size_differs = cp.expected_size.is_some_and(|n| n != existing.size);
                    let sha_differs = cp
                        .expected_sha
                        .as_ref()
                        .is_some_and(|h| !h.eq_ignore_ascii_case(&existing.sha256));
                    if size_differs || sha_differs {
                        return Ok(Err(existing));
                    }
                }
                store
                    .create_partial(token.as_deref(), cp, checkpoint_bytes)
                    .map(Ok)
            })
            .await;
            match job {
                Ok(Ok(Ok(partial))) => {
                    let resumable = partial.resumable();
                    let ack = IngestAck {
                        dataset_id: partial.info().dataset_id.clone(),
                        token: s.token.clone(),
                        next_seq: resumable.then_some(0),
                        offset: resumable.then_some(0),
                        max_chunk: resumable.then_some(max_chunk),
                    };
                    let key = s
                        .token
                        .clone()
                        .unwrap_or_else(|| format!("#{}", hex::encode(&ident)));
                    let _ = internal.send(Internal::Opened {
                        ident,
                        key,
                        partial: Box::new(partial),
                        ack,
                    });
                    return;
                }
                Ok(Ok(Err(existing))) => {
                    let e = BankErrorReply::for_dataset(
                        &existing.dataset_id,
                        codes::CONFLICT,
                        format!(
                            "dataset {} exists with different content",
                            existing.dataset_id
                        ),
                    );
                    let _ = out.send((ident, reply_bytes(&IngestReply::Error(e))));
                }
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "cannot open an upload");
                    let e = BankErrorReply::new(codes::UNAVAILABLE, format!("storage: {e}"));
                    let _ = out.send((ident, reply_bytes(&IngestReply::Error(e))));
                }
                Err(e) => tracing::error!(error = %e, "upload open task failed"),
            }
            let _ = internal.send(Internal::Settled { ident: settle });
        });
    }

    async fn on_resume(&mut self, ident: Ident, r: IngestResume) {
        if !self.cfg.password.accepts(r.password.as_ref()) {
            self.error(&ident, None, codes::UNAUTHORIZED, "invalid password".into());
            return;
        }
        if !valid_token(&r.token) || !valid_dataset_id(&r.dataset_id) {
            self.error(
                &ident,
                None,
                codes::BAD_REQUEST,
                "invalid token or dataset_id".into(),
            );
            return;
        }
        if let Some(h) = self.sessions.get(&r.token) {
            if h.dataset_id != r.dataset_id {
                let msg = format!("token belongs to dataset {}", h.dataset_id);
                self.error(&ident, Some(&r.dataset_id), codes::CONFLICT, msg);
                return;
            }
            self.by_ident.insert(ident.clone(), r.token.clone());
            if let Some(h) = self.sessions.get_mut(&r.token) {
                h.owner = ident.clone();
            }
            let key = r.token.clone();
            self.forward(
                &key,
                &ident,
                WriterCmd::Rebind {
                    ident: ident.clone(),
                },
            )
            .await;
            return;
        }
        if !self.admit(&ident, &r.dataset_id) {
            return;
        }
        let store = self.store.clone();
        let internal = self.internal_tx.clone();
        let out = self.out_tx.clone();
        let checkpoint_bytes = self.cfg.checkpoint_bytes;
        let max_chunk = self.cfg.max_chunk as u64;
        tokio::spawn(async move {
            let settle = ident.clone();
            let token = r.token.clone();
            let job = tokio::task::spawn_blocking(move || {
                let p = store.load_partial(&token, checkpoint_bytes)?;
                let committed = match (&p, &r.size, &r.sha256) {
                    (None, Some(_), Some(_)) => store.lookup(&r.dataset_id)?,
                    _ => None,
                };
                Ok::<_, StoreError>((p, committed, r))
            })
            .await;
            let reply = match job {
                Ok(Ok((Some(p), _, r))) if p.info().dataset_id == r.dataset_id => {
                    let ack = IngestAck {
                        dataset_id: r.dataset_id.clone(),
                        token: Some(r.token.clone()),
                        next_seq: Some(p.next_seq()),
                        offset: Some(p.offset()),
                        max_chunk: Some(max_chunk),
                    };
                    let _ = internal.send(Internal::Opened {
                        ident,
                        key: r.token,
                        partial: Box::new(p),
                        ack,
                    });
                    return;
                }
                Ok(Ok((Some(p), _, r))) => {
                    let msg = format!("token belongs to dataset {}", p.info().dataset_id);
                    p.suspend();
                    IngestReply::Error(BankErrorReply::for_dataset(
                        &r.dataset_id,
                        codes::CONFLICT,
                        msg,
                    ))
                }
                Ok(Ok((None, Some(rec), r)))
                    if Some(rec.size) == r.size
                        && r.sha256
                            .as_ref()
                            .is_some_and(|h| h.eq_ignore_ascii_case(&rec.sha256)) =>
                {
                    // Committed, but the uploader never saw ingest_done.
                    IngestReply::IngestDone(IngestDone {
                        dataset_id: rec.dataset_id,
                        size: rec.size,
                        sha256: rec.sha256,
                    })
                }
                Ok(Ok((None, _, r))) => IngestReply::Error(BankErrorReply::for_dataset(
                    &r.dataset_id,
                    codes::NOT_FOUND,
                    "unknown upload session".to_string(),
                )),
                Ok(Err(e)) => IngestReply::Error(BankErrorReply::new(
                    codes::UNAVAILABLE,
                    format!("storage: {e}"),
                )),
                Err(e) => {
                    tracing::error!(error = %e, "resume task failed");
                    let _ = internal.send(Internal::Settled { ident: settle });
                    return;
                }
            };
            let _ = out.send((ident, reply_bytes(&reply)));
            let _ = internal.send(Internal::Settled { ident: settle });
        });
    }

    fn on_internal(&mut self, msg: Internal) {
        match msg {
            Internal::Opened {
                ident,
                key,
                partial,
                ack,
            } => {
                self.settled(&ident);
                if let Some(old) = self.sessions.remove(&key) {
                    // Two resumes raced; the newer wins.
                    let _ = old.tx.try_send(WriterCmd::Abort);
                }
                let (tx, rx) = mpsc::channel(4);
                let writer = Writer {
                    key: key.clone(),
                    ident: ident.clone(),
                    store: self.store.clone(),
                    out: self.out_tx.clone(),
                    announce: self.announce.clone(),
                    bank_id: self.cfg.bank_id.clone(),
                };
                let internal = self.internal_tx.clone();
                let dataset_id = partial.info().dataset_id.clone();
                let task = tokio::spawn(async move {
                    let key = writer.key.clone();
                    let last = writer.run(*partial, rx).await;
                    let _ = internal.send(Internal::Closed { key, last });
                });
                self.sessions.insert(
                    key.clone(),
                    SessionHandle {
                        tx,
                        owner: ident.clone(),
                        dataset_id,
                        last_active: Instant::now(),
                        task,
                    },
                );
                self.by_ident.insert(ident.clone(), key);
                self.reply(&ident, IngestReply::IngestAck(ack));
            }
            Internal::Closed { key, last } => {
                if self.sessions.get(&key).is_some_and(|s| s.tx.is_closed()) {
                    self.sessions.remove(&key);
                }
                let sessions = &self.sessions;
                self.by_ident.retain(|_, k| sessions.contains_key(k));
                if let Some((ident, reply)) = last {
                    self.reply(&ident, reply);
                }
            }
            Internal::Settled { ident } => self.settled(&ident),
        }
    }

    /// Drop sessions idle for too long: resumable ones stay on disk.
    fn sweep(&mut self) {
        let idle = self.cfg.session_idle;
        let stale: Vec<String> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.last_active.elapsed() > idle)
            .map(|(k, _)| k.clone())
            .collect();
        for k in stale {
            tracing::info!(session = %k, "upload idle; suspending it");
            self.sessions.remove(&k);
            self.by_ident.retain(|_, v| *v != k);
        }
    }
}

struct Writer {
    key: String,
    ident: Ident,
    store: Arc<Store>,
    out: mpsc::UnboundedSender<(Ident, Vec<u8>)>,
    announce: mpsc::UnboundedSender<DatasetAnnounce>,
    bank_id: String,
}

impl Writer {
    fn send(&self, ident: &Ident, r: &IngestReply) {
        let _ = self.out.send((ident.clone(), reply_bytes(r)));
    }

    /// Runs the session; returns the final reply when it ends by commit.
    async fn run(
        mut self,
        mut partial: Partial,
        mut rx: mpsc::Receiver<WriterCmd>,
    ) -> Option<(Ident, IngestReply)> {
        // A command taken off the queue while gathering a batch.
        let mut next: Option<WriterCmd> = None;
        loop {
            let cmd = if next.is_some() {
                next.take()
            } else {
                rx.recv().await
            };
            let Some(cmd) = cmd else {
                // Idle, shutdown or replaced: keep resumable bytes.
                let _ = tokio::task::spawn_blocking(move || partial.suspend()).await;
                return None;
            };
            match cmd {
                WriterCmd::Abort => {
                    let _ = tokio::task::spawn_blocking(move || partial.discard()).await;
                    return None;
                }
                WriterCmd::Rebind { ident } => {
                    self.ident = ident;
                    let ack = IngestAck {
                        dataset_id: partial.info().dataset_id.clone(),
                        token: Some(self.key.clone()),
                        next_seq: Some(partial.next_seq()),
                        offset: Some(partial.offset()),
                        max_chunk: None,
                    };
                    self.send(&self.ident, &IngestReply::IngestAck(ack));
                }
                WriterCmd::Chunk {
                    ident,
                    seq,
                    eof: false,
                    data,
                    ..
                } => {
                    // This chunk and the ones already queued behind it go to
                    // the blocking pool in one trip (one hop per batch, not
                    // per 1 MiB chunk); an eof or a control command ends the
                    // batch and is handled next.
                    let mut batch = vec![(ident, seq, data)];
                    while batch.len() < MAX_BATCH {
                        match rx.try_recv() {
                            Ok(WriterCmd::Chunk {
                                ident,
                                seq,
                                eof: false,
                                data,
                                ..
                            }) => batch.push((ident, seq, data)),
                            Ok(other) => {
                                next = Some(other);
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                    let job = tokio::task::spawn_blocking(move || {
                        let out = append_batch(&mut partial, batch);
                        (partial, out)
                    })
                    .await;
                    let (p, (acks, failed)) = match job {
                        Ok(r) => r,
                        Err(e) => {
                            tracing::error!(session = %self.key, error = %e, "write task failed");
                            return None;
                        }
                    };
                    partial = p;
                    for (ident, r) in &acks {
                        self.send(ident, r);
                    }
                    if let Some((ident, e)) = failed {
                        let dataset_id = partial.info().dataset_id.clone();
                        if matches!(e, StoreError::Quota { .. }) {
                            tracing::warn!(%dataset_id, error = %e, "upload refused");
                        } else {
                            tracing::error!(%dataset_id, error = %e, "write failed");
                        }
                        let r = IngestReply::Error(BankErrorReply::for_dataset(
                            &dataset_id,
                            codes::UNAVAILABLE,
                            format!("storage: {e}"),
                        ));
                        // A failed session frees its space at once
                        // (a full disk must not stay full).
                        let _ = tokio::task::spawn_blocking(move || partial.discard()).await;
                        return Some((ident, r));
                    }
                }
                WriterCmd::Chunk {
                    ident,
                    seq,
                    eof: true,
                    size,
                    sha256,
                    ..
                } => {
                    let dataset_id = partial.info().dataset_id.clone();
                    if seq != partial.next_seq() {
                        let r = IngestReply::Error(BankErrorReply::for_dataset(
                            &dataset_id,
                            codes::CONFLICT,
                            format!("eof at seq {seq}, but next_seq is {}", partial.next_seq()),
                        ));
                        self.send(&ident, &r);
                        continue;
                    }
                    let r = self.finish(partial, size, sha256).await;
                    return Some((ident, r));
                }
            }
        }
    }

    /// Verify, commit, announce.
    async fn finish(
        &self,
        partial: Partial,
        size: Option<u64>,
        sha256: Option<String>,
    ) -> IngestReply {
        let store = self.store.clone();
        let dataset_id = partial.info().dataset_id.clone();
        let job = tokio::task::spawn_blocking(move || {
            let done = partial.finish()?;
            let mut err = None;
            let checks = [
                (done.cp.expected_size, done.cp.expected_sha.clone()),
                (size, sha256),
            ];
            for (want_size, want_sha) in checks {
                if let Some(n) = want_size.filter(|n| *n != done.size) {
                    err = Some(format!("size mismatch: got {}, expected {n}", done.size));
                }
                // Hex digits in either case (a SHA-256 printed by another
                // tool may be upper case); the bank records lower case.
                if let Some(h) =
                    want_sha.filter(|h| !h.is_empty() && !h.eq_ignore_ascii_case(&done.sha256))
                {
                    err = Some(format!("sha mismatch: got {}, expected {h}", done.sha256));
                }
            }
            if let Some(e) = err {
                done.discard();
                return Ok(Err(e));
            }
            store.commit(done).map(Ok)
        })
        .await;
        match job {
            Ok(Ok(Ok(Commit::Stored(rec)))) => {
                tracing::info!(dataset_id = %rec.dataset_id, size = rec.size, "dataset stored");
                let _ = self.announce.send(DatasetAnnounce {
                    dataset_id: rec.dataset_id.clone(),
                    bank_id: self.bank_id.clone(),
                    size: rec.size,
                    sha256: rec.sha256.clone(),
                    relay_id: rec.relay_id.clone(),
                });
                IngestReply::IngestDone(IngestDone {
                    dataset_id: rec.dataset_id,
                    size: rec.size,
                    sha256: rec.sha256,
                })
            }
            Ok(Ok(Ok(Commit::Identical(rec)))) => IngestReply::IngestDone(IngestDone {
                dataset_id: rec.dataset_id,
                size: rec.size,
                sha256: rec.sha256,
            }),
            Ok(Ok(Ok(Commit::Conflict(rec)))) => IngestReply::Error(BankErrorReply::for_dataset(
                &rec.dataset_id,
                codes::CONFLICT,
                format!("dataset {} exists with different content", rec.dataset_id),
            )),
            Ok(Ok(Err(mismatch))) => IngestReply::Error(BankErrorReply::for_dataset(
                &dataset_id,
                codes::UNPROCESSABLE,
                mismatch,
            )),
            Ok(Err(e)) => {
                tracing::error!(%dataset_id, error = %e, "commit failed");
                IngestReply::Error(BankErrorReply::for_dataset(
                    &dataset_id,
                    codes::UNAVAILABLE,
                    format!("storage: {e}"),
                ))
            }
            Err(e) => {
                tracing::error!(%dataset_id, error = %e, "commit task failed");
                IngestReply::Error(BankErrorReply::for_dataset(
                    &dataset_id,
                    codes::UNAVAILABLE,
                    "storage task failed".to_string(),
                ))
            }
        }
    }
}

/// A received chunk, shared with the upload's hashing thread.
struct Chunk(zmq::Message);

impl AsRef<[u8]> for Chunk {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// Chunks handed to the blocking pool in one trip, at most. With the
/// writer's queue (4) and the hashing thread's (2 + 1), a session holds at
/// most 11 chunks (11 MiB of 1 MiB chunks) besides libzmq's receive
/// high-water mark of the connection.
const MAX_BATCH: usize = 4;

/// Append a batch of in-order chunks (on the blocking pool): the ack of
/// each, in order, and the first failure with the uploader to tell. A
/// chunk out of order is answered with `next_seq` and not written, as
/// before; nothing after a failure is written.
#[allow(clippy::type_complexity)]
fn append_batch(
    partial: &mut Partial,
    batch: Vec<(Ident, u64, zmq::Message)>,
) -> (Vec<(Ident, IngestReply)>, Option<(Ident, StoreError)>) {
    let mut acks = Vec::with_capacity(batch.len());
    for (ident, seq, data) in batch {
        let in_order = seq == partial.next_seq();
        if in_order && !data.is_empty() {
            if let Err(e) = partial.append_shared(Arc::new(Chunk(data))) {
                return (acks, Some((ident, e)));
            }
        }
        let r = IngestReply::IngestAckChunk(IngestAckChunk {
            dataset_id: partial.info().dataset_id.clone(),
            next_seq: partial.next_seq(),
            status: (!in_order).then_some(labmesh_proto::mesh::ChunkStatus::OutOfOrder),
            durable_seq: partial.resumable().then_some(partial.durable_seq()),
        });
        acks.push((ident, r));
    }
    (acks, None)
}
