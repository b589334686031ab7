//! The uploader: relay side of the ingest protocol.

use std::collections::VecDeque;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::{recv_within, transfer_socket, TransferError};
use labmesh_proto::bank::{
    decode_ingest_reply, valid_dataset_id, valid_token, IngestAbort, IngestChunk, IngestDone,
    IngestReply, IngestRequest, IngestResume, IngestStart, NO_SESSION,
};
use labmesh_proto::codes;
use labmesh_proto::mesh::encode;
use labmesh_wire::auth::Password;
use labmesh_wire::AsyncSocket;

/// How long an uploader with a token waits for the answer to its
/// `ingest_resume` before it starts afresh (a labmesh v0 bank never answers).
const RESUME_PROBE: std::time::Duration = std::time::Duration::from_secs(2);

/// How to upload. `Default` gives labmesh's `[relay]` defaults.
#[derive(Debug, Clone)]
pub struct UploadOptions {
    /// Dataset id; a uuid4 hex string when `None` (as labmesh).
    pub dataset_id: Option<String>,
    /// The uploading relay, recorded in the catalogue.
    pub relay_id: String,
    /// Metadata object stored with the dataset.
    pub meta: Value,
    /// Chunk size in bytes (`[relay] upload_chunk`, default 1 000 000).
    pub chunk_size: usize,
    /// How long to wait for any answer from the bank (`upload_timeout`).
    pub timeout: Duration,
    /// How many reconnect-and-resume attempts before giving up
    /// (`upload_retries`).
    pub retries: u32,
    /// Chunks sent ahead of the bank's acknowledgements.
    pub window: usize,
    /// Shared network password.
    pub password: Password,
    /// Where to report bytes acknowledged by the bank (for progress bars).
    pub progress: Option<std::sync::Arc<crate::Progress>>,
    /// The upload token; a random one when `None`. A chosen token means
    /// "the same token is the same bytes": the uploader first asks the bank
    /// to resume that session and, when it exists, skips the bytes the bank
    /// already holds (re-hashing them locally). See [`file_token`].
    pub token: Option<String>,
}

impl Default for UploadOptions {
    fn default() -> Self {
        UploadOptions {
            dataset_id: None,
            relay_id: "unknown".to_string(),
            meta: Value::Object(Default::default()),
            chunk_size: labmesh_proto::limits::DEFAULT_UPLOAD_CHUNK,
            timeout: labmesh_proto::limits::DEFAULT_UPLOAD_TIMEOUT,
            retries: 5,
            window: 8,
            password: Password::none(),
            progress: None,
            token: None,
        }
    }
}

/// What the bank committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadReceipt {
    /// The dataset id.
    pub dataset_id: String,
    /// Size in bytes.
    pub size: u64,
    /// Lower-case hex SHA-256 (checked against the bank's).
    pub sha256: String,
    /// How many times the upload was resumed after losing the bank.
    pub resumes: u32,
    /// Bytes the bank already held when this upload started (a session
    /// left by an earlier, interrupted run with the same token); 0 otherwise.
    pub resumed_from: u64,
}

/// A token derived from a file's identity, so that running the same upload
/// again resumes the session an interrupted run left at the bank: hex
/// SHA-256 (first 32 digits) of the canonical path, size, modification time
/// (nanoseconds), dataset id and bank id, NUL-separated. `None` for anything
/// but a regular file (a pipe or `/dev/zero` cannot be read again). Anyone
/// who knows those facts can compute it; it names a session, it is not a
/// secret (the network password is what keeps strangers out).
pub fn file_token(path: &Path, dataset_id: &str, bank_id: &str) -> Option<String> {
    let canonical = std::fs::canonicalize(path).ok()?;
    let meta = std::fs::metadata(&canonical).ok()?;
    if !meta.is_file() {
        return None;
    }
    let mtime = meta
        .modified()
        .ok()?
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_nanos();
    let mut h = Sha256::new();
    for part in [
        canonical.to_string_lossy().as_bytes(),
        meta.len().to_string().as_bytes(),
        mtime.to_string().as_bytes(),
        dataset_id.as_bytes(),
        bank_id.as_bytes(),
    ] {
        h.update(part);
        h.update([0u8]);
    }
    let hex = hex::encode(h.finalize());
    hex.get(..32).map(str::to_string)
}

/// Tell the bank to delete an upload session and its bytes (best effort: no
/// reply exists; the message is given up to one second to leave).
pub async fn abort_upload(
    ctx: &zmq::Context,
    ingest_endpoint: &str,
    dataset_id: &str,
    token: &str,
) -> Result<(), TransferError> {
    let mut sock = transfer_socket(ctx, ingest_endpoint)?;
    sock.raw()
        .set_linger(1000)
        .map_err(labmesh_wire::WireError::from)?;
    let msg = IngestRequest::IngestAbort(IngestAbort {
        dataset_id: dataset_id.to_string(),
        token: token.to_string(),
    });
    sock.send_multipart([encode(&msg)]).await?;
    Ok(())
}

/// Uploads datasets to one bank's ingest endpoint.
#[derive(Clone)]
pub struct Uploader {
    ctx: zmq::Context,
    endpoint: String,
    opts: UploadOptions,
}

impl Uploader {
    /// An uploader for `ingest_endpoint` with `opts`.
    pub fn new(ctx: &zmq::Context, ingest_endpoint: &str, opts: UploadOptions) -> Self {
        Uploader {
            ctx: ctx.clone(),
            endpoint: ingest_endpoint.to_string(),
            opts,
        }
    }

    /// Upload the file at `path` (declares its size to the bank).
    pub async fn upload_file(&self, path: &Path) -> Result<UploadReceipt, TransferError> {
        let io = |source| TransferError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = tokio::fs::File::open(path).await.map_err(io)?;
        let size = file.metadata().await.map_err(io)?.len();
        self.upload_reader(file, Some(size)).await
    }

    /// Upload everything `reader` yields. Memory stays bounded by the window
    /// plus the bank's checkpoint interval (the chunks kept for a resume).
    pub async fn upload_reader<R: AsyncRead + Unpin>(
        &self,
        reader: R,
        size: Option<u64>,
    ) -> Result<UploadReceipt, TransferError> {
        let dataset_id = match &self.opts.dataset_id {
            Some(id) => id.clone(),
            None => uuid::Uuid::new_v4().simple().to_string(),
        };
        if !valid_dataset_id(&dataset_id) {
            return Err(TransferError::InvalidDatasetId(dataset_id));
        }
        let (token, chosen) = match &self.opts.token {
            Some(t) if valid_token(t) => (t.clone(), true),
            Some(t) => {
                return Err(TransferError::Protocol(format!(
                    "invalid upload token {t:?}"
                )))
            }
            None => (uuid::Uuid::new_v4().simple().to_string(), false),
        };
        let session = Session {
            ctx: &self.ctx,
            endpoint: &self.endpoint,
            opts: &self.opts,
            dataset_id,
            token,
            chosen_token: chosen,
            resumed_from: 0,
            declared_size: size,
            sock: transfer_socket(&self.ctx, &self.endpoint)?,
            extended: false,
            retained: VecDeque::new(),
            next_send: 0,
            acked: 0,
            read_offset: 0,
            read_done: false,
            hasher: Sha256::new(),
            digest: None,
            eof_sent: false,
            attempts_left: self.opts.retries,
            resumes: 0,
        };
        session.run(reader).await
    }
}

/// Upload the file at `path` to the bank at `ingest_endpoint`.
pub async fn upload_file(
    ctx: &zmq::Context,
    ingest_endpoint: &str,
    path: &Path,
    opts: UploadOptions,
) -> Result<UploadReceipt, TransferError> {
    Uploader::new(ctx, ingest_endpoint, opts)
        .upload_file(path)
        .await
}

/// Upload everything `reader` yields to the bank at `ingest_endpoint`.
pub async fn upload_reader<R: AsyncRead + Unpin>(
    ctx: &zmq::Context,
    ingest_endpoint: &str,
    reader: R,
    size: Option<u64>,
    opts: UploadOptions,
) -> Result<UploadReceipt, TransferError> {
    Uploader::new(ctx, ingest_endpoint, opts)
        .upload_reader(reader, size)
        .await
}

/// A chunk kept until the bank says it is durable.
struct Held {
    seq: u64,
    offset: u64,
    data: Vec<u8>,
}

struct Session<'a> {
    ctx: &'a zmq::Context,
    endpoint: &'a str,
    opts: &'a UploadOptions,
    dataset_id: String,
    token: String,
    /// The caller chose the token: try to resume before starting.
    chosen_token: bool,
    resumed_from: u64,
    declared_size: Option<u64>,
    sock: AsyncSocket,
    /// The bank speaks the resumable extension (its ack echoed the token).
    extended: bool,
    /// Chunks not yet durable at the bank, in seq order.
    retained: VecDeque<Held>,
    /// Next seq to put on the wire.
    next_send: u64,
    /// The bank's next_seq.
    acked: u64,
    /// Bytes read from the source so far.
    read_offset: u64,
    read_done: bool,
    hasher: Sha256,
    digest: Option<String>,
    eof_sent: bool,
    attempts_left: u32,
    resumes: u32,
}

enum Step {
    Continue,
    Done(IngestDone),
}

impl Session<'_> {
    async fn run<R: AsyncRead + Unpin>(
        mut self,
        mut reader: R,
    ) -> Result<UploadReceipt, TransferError> {
        let attached = if self.chosen_token {
            self.attach(&mut reader).await?
        } else {
            false
        };
        if !attached {
            self.start().await?;
        }
        match self.transfer(&mut reader).await {
            Ok(r) => Ok(r),
            Err(e) => {
                // The bank keeps a failed session's bytes for a resume that
                // will not come: ask it to free them now.
                if self.extended && !matches!(e, TransferError::Integrity(_)) {
                    let abort = IngestRequest::IngestAbort(IngestAbort {
                        dataset_id: self.dataset_id.clone(),
                        token: self.token.clone(),
                    });
                    let _ = self.sock.raw().set_linger(1000);
                    let _ = self.send(&abort, None).await;
                }
                Err(e)
            }
        }
    }

    /// Re-attach to a session an earlier run left with this token: on an
    /// ack, skip (and hash) the bytes the bank holds. `false`: start afresh.
    async fn attach<R: AsyncRead + Unpin>(
        &mut self,
        reader: &mut R,
    ) -> Result<bool, TransferError> {
        let msg = IngestRequest::IngestResume(IngestResume {
            dataset_id: self.dataset_id.clone(),
            token: self.token.clone(),
            size: None,
            sha256: None,
            password: self.opts.password.to_field(),
        });
        self.send(&msg, None).await?;
        // A Rust bank answers a resume at once (an ack, or "no session"); a
        // labmesh v0 bank never does. Wait a short while only, so uploads to
        // a v0 bank do not start a whole upload timeout late.
        let wait = self.opts.timeout.min(RESUME_PROBE);
        let Some(frames) = recv_within(&mut self.sock, wait).await? else {
            // A v0 bank ignores a resume it cannot decode; start instead
            // (with a fresh socket, so a late answer cannot confuse it).
            self.sock = transfer_socket(self.ctx, self.endpoint)?;
            return Ok(false);
        };
        let ack = match decode(&frames)? {
            IngestReply::IngestAck(a) if a.token.as_deref() == Some(self.token.as_str()) => a,
            IngestReply::Error(e) if e.error.code == codes::UNAUTHORIZED => {
                return Err(TransferError::Remote(e.error))
            }
            _ => return Ok(false),
        };
        let (Some(next), Some(offset)) = (ack.next_seq, ack.offset) else {
            return Ok(false);
        };
        if self.declared_size.is_some_and(|n| offset > n) {
            return Ok(false);
        }
        // Hash the prefix the bank holds; the source is then positioned
        // right after it.
        let mut left = offset;
        while left > 0 {
            let want = left.min(1 << 20) as usize;
            let data = read_chunk(reader, want).await?;
            if data.is_empty() {
                return Err(TransferError::CannotResume(format!(
                    "the bank holds {offset} bytes of this upload, the source has fewer"
                )));
            }
            self.hasher.update(&data);
            left -= data.len() as u64;
        }
        self.extended = true;
        self.acked = next;
        self.next_send = next;
        self.read_offset = offset;
        self.resumed_from = offset;
        if let Some(p) = &self.opts.progress {
            if let Some(size) = self.declared_size {
                p.set_total(size);
            }
            p.set_done(offset);
        }
        tracing::info!(dataset_id = %self.dataset_id, next_seq = next, offset, "resuming an earlier upload");
        Ok(true)
    }

    async fn transfer<R: AsyncRead + Unpin>(
        &mut self,
        mut reader: R,
    ) -> Result<UploadReceipt, TransferError> {
        loop {
            self.fill(&mut reader).await?;
            let reply = recv_within(&mut self.sock, self.opts.timeout).await?;
            let step = match reply {
                None => {
                    tracing::warn!(dataset_id = %self.dataset_id, "bank silent for {:?}; resuming", self.opts.timeout);
                    self.resume().await?
                }
                Some(frames) => self.on_reply(&frames).await?,
            };
            if let Step::Done(done) = step {
                return self.finish(&done);
            }
        }
    }

    fn total_chunks(&self) -> u64 {
        self.retained
            .back()
            .map(|h| h.seq + 1)
            .unwrap_or(self.acked)
    }

    async fn send(
        &mut self,
        msg: &IngestRequest,
        data: Option<&[u8]>,
    ) -> Result<(), TransferError> {
        let head = encode(msg);
        match data {
            Some(d) => self.sock.send_multipart([head.as_slice(), d]).await?,
            None => self.sock.send_multipart([head]).await?,
        }
        Ok(())
    }

    fn start_msg(&self) -> IngestRequest {
        IngestRequest::IngestStart(IngestStart {
            dataset_id: Some(self.dataset_id.clone()),
            relay_id: Some(self.opts.relay_id.clone()),
            meta: Some(self.opts.meta.clone()),
            size: self.declared_size,
            sha256: None,
            token: Some(self.token.clone()),
            password: self.opts.password.to_field(),
        })
    }

    /// Send ingest_start until the bank acks it.
    async fn start(&mut self) -> Result<(), TransferError> {
        if let (Some(p), Some(size)) = (&self.opts.progress, self.declared_size) {
            p.set_total(size);
        }
        loop {
            let msg = self.start_msg();
            self.send(&msg, None).await?;
            match recv_within(&mut self.sock, self.opts.timeout).await? {
                Some(frames) => match decode(&frames)? {
                    IngestReply::IngestAck(ack) => {
                        self.extended = ack.token.as_deref() == Some(self.token.as_str());
                        if let Some(max) = ack.max_chunk {
                            if (self.opts.chunk_size as u64) > max {
                                return Err(TransferError::Protocol(format!(
                                    "chunk size {} exceeds the bank's max_chunk {max}",
                                    self.opts.chunk_size
                                )));
                            }
                        }
                        return Ok(());
                    }
                    IngestReply::Error(e) => return Err(TransferError::Remote(e.error)),
                    other => {
                        tracing::debug!(?other, "ignoring a stale reply while starting");
                    }
                },
                None => self.backoff().await?,
            }
        }
    }

    /// Reconnect with a fresh socket after a pause; fails when no attempts
    /// are left.
    async fn backoff(&mut self) -> Result<(), TransferError> {
        if self.attempts_left == 0 {
            return Err(TransferError::Timeout(self.opts.timeout));
        }
        let used = self.opts.retries - self.attempts_left;
        self.attempts_left -= 1;
        let pause = Duration::from_millis(100u64 << used.min(5)).min(Duration::from_secs(3));
        tokio::time::sleep(pause).await;
        self.sock = transfer_socket(self.ctx, self.endpoint)?;
        Ok(())
    }

    /// Put chunks on the wire until the window is full, then eof when all
    /// chunks are acknowledged.
    async fn fill<R: AsyncRead + Unpin>(&mut self, reader: &mut R) -> Result<(), TransferError> {
        let window = self.opts.window.max(1) as u64;
        while !self.eof_sent && self.next_send < self.acked + window {
            if self.next_send < self.total_chunks() {
                // Resend a retained chunk (after a resume or a rewind).
                let Some(first) = self.retained.front().map(|h| h.seq) else {
                    break;
                };
                let held = self
                    .next_send
                    .checked_sub(first)
                    .and_then(|idx| usize::try_from(idx).ok())
                    .and_then(|idx| self.retained.get(idx));
                let Some(held) = held else {
                    return Err(TransferError::CannotResume(format!(
                        "chunk {} is no longer held",
                        self.next_send
                    )));
                };
                let msg = self.chunk_msg(held.seq);
                let data = held.data.clone();
                self.send(&msg, Some(&data)).await?;
                self.next_send += 1;
                continue;
            }
            if self.read_done {
                break;
            }
            let data = read_chunk(reader, self.opts.chunk_size.max(1)).await?;
            if data.is_empty() {
                self.read_done = true;
                self.digest = Some(hex::encode(std::mem::take(&mut self.hasher).finalize()));
                break;
            }
            self.hasher.update(&data);
            let seq = self.next_send;
            let msg = self.chunk_msg(seq);
            self.send(&msg, Some(&data)).await?;
            self.retained.push_back(Held {
                seq,
                offset: self.read_offset,
                data,
            });
            self.read_offset += self
                .retained
                .back()
                .map(|h| h.data.len() as u64)
                .unwrap_or(0);
            self.next_send += 1;
        }
        if self.read_done && !self.eof_sent && self.acked == self.total_chunks() {
            let eof = IngestRequest::IngestChunk(IngestChunk {
                dataset_id: Some(self.dataset_id.clone()),
                seq: self.acked,
                eof: true,
                size: Some(self.read_offset),
                sha256: self.digest.clone(),
            });
            self.send(&eof, None).await?;
            self.eof_sent = true;
        }
        Ok(())
    }

    fn chunk_msg(&self, seq: u64) -> IngestRequest {
        IngestRequest::IngestChunk(IngestChunk {
            dataset_id: Some(self.dataset_id.clone()),
            seq,
            eof: false,
            size: None,
            sha256: None,
        })
    }

    /// Forget chunks the bank no longer needs.
    fn release(&mut self, below: u64) {
        while self.retained.front().is_some_and(|h| h.seq < below) {
            self.retained.pop_front();
        }
    }

    async fn on_reply(&mut self, frames: &[Vec<u8>]) -> Result<Step, TransferError> {
        match decode(frames)? {
            IngestReply::IngestAckChunk(a) => {
                if a.next_seq > self.total_chunks() {
                    return Err(TransferError::Protocol(format!(
                        "bank acknowledged seq {} but only {} chunks were sent",
                        a.next_seq,
                        self.total_chunks()
                    )));
                }
                self.acked = self.acked.max(a.next_seq);
                if a.status.is_some() && a.next_seq < self.next_send {
                    // The bank wants an earlier chunk: rewind to it, if it
                    // is still held. Chunks are dropped only once the bank
                    // acknowledged them (as durable, for a resumable bank),
                    // so asking for one again contradicts the bank's own
                    // earlier answer: an error, never an arithmetic wrap.
                    let held_from = self.retained.front().map_or(self.next_send, |h| h.seq);
                    if a.next_seq < held_from {
                        return Err(TransferError::Protocol(format!(
                            "bank asked for chunk {} again after acknowledging every chunk below {}",
                            a.next_seq, held_from
                        )));
                    }
                    self.acked = a.next_seq;
                    self.next_send = a.next_seq;
                }
                if let Some(p) = &self.opts.progress {
                    let bytes = self.acked.saturating_mul(self.opts.chunk_size as u64);
                    p.set_done(bytes.min(self.read_offset));
                }
                let durable = if self.extended {
                    a.durable_seq.unwrap_or(0).min(self.acked)
                } else {
                    self.acked
                };
                self.release(durable);
                Ok(Step::Continue)
            }
            IngestReply::IngestDone(done) if self.eof_sent => Ok(Step::Done(done)),
            IngestReply::IngestDone(_) => Err(TransferError::Protocol(
                "ingest_done before eof was sent".to_string(),
            )),
            IngestReply::Error(e)
                if e.error.code == codes::CONFLICT && e.error.message == NO_SESSION =>
            {
                tracing::warn!(dataset_id = %self.dataset_id, "bank lost the session; resuming");
                self.resume().await
            }
            IngestReply::Error(e) => Err(TransferError::Remote(e.error)),
            IngestReply::IngestAck(_) => Ok(Step::Continue),
        }
    }

    /// Reconnect and re-attach to the session at the bank's next_seq.
    async fn resume(&mut self) -> Result<Step, TransferError> {
        if !self.extended {
            return Err(TransferError::CannotResume(
                "the bank does not support resumable uploads".to_string(),
            ));
        }
        loop {
            self.backoff().await?;
            let msg = IngestRequest::IngestResume(IngestResume {
                dataset_id: self.dataset_id.clone(),
                token: self.token.clone(),
                size: self.eof_sent.then_some(self.read_offset),
                sha256: if self.eof_sent {
                    self.digest.clone()
                } else {
                    None
                },
                password: self.opts.password.to_field(),
            });
            self.send(&msg, None).await?;
            let Some(frames) = recv_within(&mut self.sock, self.opts.timeout).await? else {
                continue;
            };
            match decode(&frames)? {
                IngestReply::IngestAck(ack) => {
                    let next = ack.next_seq.unwrap_or(0);
                    let offset = ack.offset.unwrap_or(0);
                    let held_from = self.retained.front().map(|h| (h.seq, h.offset));
                    let ok = match held_from {
                        Some((seq, off)) => {
                            next >= seq
                                && next <= self.total_chunks()
                                && self
                                    .retained
                                    .get((next - seq) as usize)
                                    .map(|h| h.offset)
                                    .unwrap_or(self.read_offset)
                                    == offset
                                && off <= offset
                        }
                        None => next == self.acked && offset == self.read_offset,
                    };
                    if !ok {
                        return Err(TransferError::CannotResume(format!(
                            "bank resumes at chunk {next} (byte {offset}), which is no longer held"
                        )));
                    }
                    self.resumes += 1;
                    self.acked = next;
                    self.next_send = next;
                    self.eof_sent = false;
                    tracing::info!(dataset_id = %self.dataset_id, next_seq = next, offset, "upload resumed");
                    return Ok(Step::Continue);
                }
                IngestReply::IngestDone(done) if self.eof_sent => return Ok(Step::Done(done)),
                IngestReply::Error(e) if e.error.code == codes::NOT_FOUND => {
                    return Err(TransferError::CannotResume(e.error.message))
                }
                IngestReply::Error(e) => return Err(TransferError::Remote(e.error)),
                other => tracing::debug!(?other, "ignoring a stale reply while resuming"),
            }
        }
    }

    fn finish(&self, done: &IngestDone) -> Result<UploadReceipt, TransferError> {
        let ours = self.digest.clone().unwrap_or_default();
        if done.sha256 != ours || done.size != self.read_offset {
            return Err(TransferError::Integrity(format!(
                "bank stored {} bytes sha256 {}, we sent {} bytes sha256 {ours}",
                done.size, done.sha256, self.read_offset
            )));
        }
        Ok(UploadReceipt {
            dataset_id: done.dataset_id.clone(),
            size: done.size,
            sha256: done.sha256.clone(),
            resumes: self.resumes,
            resumed_from: self.resumed_from,
        })
    }
}

fn decode(frames: &[Vec<u8>]) -> Result<IngestReply, TransferError> {
    let first = frames
        .first()
        .ok_or_else(|| TransferError::Protocol("empty reply".to_string()))?;
    decode_ingest_reply(first).map_err(|m| TransferError::Protocol(m.message()))
}

/// Read up to `size` bytes (fewer only at end of input).
async fn read_chunk<R: AsyncRead + Unpin>(
    reader: &mut R,
    size: usize,
) -> Result<Vec<u8>, TransferError> {
    let mut buf = vec![0u8; size];
    let mut filled = 0;
    while filled < size {
        let n = reader
            .read(&mut buf[filled..])
            .await
            .map_err(TransferError::Source)?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    buf.truncate(filled);
    Ok(buf)
}

impl std::fmt::Debug for Uploader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Uploader")
            .field("endpoint", &self.endpoint)
            .field("opts", &self.opts)
            .finish()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn file_token_is_stable_per_file_dataset_and_bank() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.bin");
        std::fs::write(&p, b"hello").unwrap();
        let t = file_token(&p, "d1", "bank-1").unwrap();
        assert_eq!(t.len(), 32);
        assert!(valid_token(&t));
        // The same file through another path spelling: the same token.
        let other = dir.path().join(".").join("a.bin");
        assert_eq!(
            file_token(&other, "d1", "bank-1").as_deref(),
            Some(t.as_str())
        );
        assert_ne!(file_token(&p, "d2", "bank-1").unwrap(), t);
        assert_ne!(file_token(&p, "d1", "bank-2").unwrap(), t);
        std::fs::write(&p, b"hello, longer").unwrap();
        assert_ne!(file_token(&p, "d1", "bank-1").unwrap(), t);
        // Not a regular file: nothing to resume from.
        assert_eq!(file_token(dir.path(), "d1", "bank-1"), None);
        assert_eq!(file_token(Path::new("/dev/zero"), "d1", "bank-1"), None);
        assert_eq!(
            file_token(&dir.path().join("missing"), "d1", "bank-1"),
            None
        );
    }
}
