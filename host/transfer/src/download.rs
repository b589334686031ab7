//! The downloader and the catalogue query: client side of the retrieve
//! protocol.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

use crate::{recv_within, transfer_socket, TransferError};
use labmesh_proto::bank::{
    decode_retrieve_reply, valid_dataset_id, Credit, DatasetInfo, Get, MetaMsg, Query,
    RetrieveReply, RetrieveRequest,
};
use labmesh_proto::mesh::encode;
use labmesh_wire::auth::Password;
use labmesh_wire::AsyncSocket;

/// How to download. `Default` is credit mode with resume on.
#[derive(Debug, Clone)]
pub struct DownloadOptions {
    /// How long to wait for each message from the bank.
    pub timeout: Duration,
    /// Chunks the bank may send ahead (extension; 0 = legacy `get`, the only
    /// mode a Python bank understands — it is detected automatically too).
    pub credit: u32,
    /// Wanted chunk size (the bank caps it); `None` = the bank's default.
    pub chunk_size: Option<u64>,
    /// Continue a previous partial download of the same destination.
    pub resume: bool,
    /// Reconnect-and-resume attempts when the bank goes silent mid-stream.
    pub retries: u32,
    /// Shared network password.
    pub password: Password,
    /// Where to report bytes written (for progress bars).
    pub progress: Option<std::sync::Arc<crate::Progress>>,
}

impl Default for DownloadOptions {
    fn default() -> Self {
        DownloadOptions {
            timeout: labmesh_proto::limits::DEFAULT_DOWNLOAD_TIMEOUT,
            credit: 32,
            chunk_size: None,
            resume: true,
            retries: 3,
            password: Password::none(),
            progress: None,
        }
    }
}

/// A finished download.
#[derive(Debug, Clone, PartialEq)]
pub struct DownloadReceipt {
    /// Dataset id.
    pub dataset_id: String,
    /// Size in bytes (verified).
    pub size: u64,
    /// SHA-256 (verified).
    pub sha256: String,
    /// Where the dataset now is.
    pub path: PathBuf,
    /// The uploader's metadata.
    pub meta: Value,
    /// Bytes that were already present from an earlier partial download.
    pub resumed_from: u64,
}

/// Downloads from one bank's retrieve endpoint.
#[derive(Clone)]
pub struct Downloader {
    ctx: zmq::Context,
    endpoint: String,
    opts: DownloadOptions,
}

/// The partial file next to `dest`.
fn partial_path(dest: &Path) -> PathBuf {
    let mut name = dest
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".lmpart");
    dest.with_file_name(name)
}

impl Downloader {
    /// A downloader for `retrieve_endpoint` with `opts`.
    pub fn new(ctx: &zmq::Context, retrieve_endpoint: &str, opts: DownloadOptions) -> Self {
        Downloader {
            ctx: ctx.clone(),
            endpoint: retrieve_endpoint.to_string(),
            opts,
        }
    }

    /// Download `dataset_id` to `dest`. Bytes go to `dest.lmpart` and are
    /// renamed to `dest` only after size and SHA-256 match.
    pub async fn download_to_file(
        &self,
        dataset_id: &str,
        dest: &Path,
    ) -> Result<DownloadReceipt, TransferError> {
        if !valid_dataset_id(dataset_id) {
            return Err(TransferError::InvalidDatasetId(dataset_id.to_string()));
        }
        let part = partial_path(dest);
        let io = |source| TransferError::Io {
            path: part.clone(),
            source,
        };
        let mut file = tokio::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&part)
            .await
            .map_err(io)?;
        let mut hasher = Sha256::new();
        let mut offset = 0u64;
        if self.opts.resume && self.opts.credit > 0 {
            // Re-hash what an earlier attempt left.
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n = file.read(&mut buf).await.map_err(io)?;
                if n == 0 {
                    break;
                }
                hasher.update(buf.get(..n).unwrap_or_default());
                offset += n as u64;
            }
        } else {
            file.set_len(0).await.map_err(io)?;
        }
        let resumed_from = offset;
        let mut attempts_left = self.opts.retries;
        loop {
            let mut stream = Stream {
                sock: transfer_socket(&self.ctx, &self.endpoint)?,
                opts: &self.opts,
                dataset_id,
            };
            match stream.run(&mut file, &part, &mut hasher, &mut offset).await {
                Ok(meta) => {
                    file.flush().await.map_err(io)?;
                    file.sync_all().await.map_err(io)?;
                    drop(file);
                    tokio::fs::rename(&part, dest)
                        .await
                        .map_err(|source| TransferError::Io {
                            path: dest.to_path_buf(),
                            source,
                        })?;
                    return Ok(DownloadReceipt {
                        dataset_id: meta.dataset_id,
                        size: meta.size,
                        sha256: meta.sha256,
                        path: dest.to_path_buf(),
                        meta: meta.meta,
                        resumed_from,
                    });
                }
                Err(Failure::Retryable(e)) if attempts_left > 0 && self.opts.credit > 0 => {
                    attempts_left -= 1;
                    tracing::warn!(%dataset_id, offset, error = %e, "download interrupted; resuming");
                }
                Err(Failure::Retryable(e)) | Err(Failure::Fatal(e)) => {
                    if matches!(e, TransferError::Integrity(_)) {
                        // Corrupt: start from scratch next time.
                        let _ = tokio::fs::remove_file(&part).await;
                    }
                    return Err(e);
                }
            }
        }
    }

    /// Query the bank's catalogue (extension), newest first.
    pub async fn list(&self, query: Query) -> Result<Vec<DatasetInfo>, TransferError> {
        let mut sock = transfer_socket(&self.ctx, &self.endpoint)?;
        let mut q = query;
        if q.password.is_none() {
            q.password = self.opts.password.to_field();
        }
        sock.send_multipart([encode(&RetrieveRequest::ListDatasets(q))])
            .await?;
        let frames = recv_within(&mut sock, self.opts.timeout)
            .await?
            .ok_or(TransferError::Timeout(self.opts.timeout))?;
        match decode(&frames)? {
            RetrieveReply::Datasets(list) => Ok(list.datasets),
            RetrieveReply::Error(e) => Err(TransferError::Remote(e.error)),
            other => Err(TransferError::Protocol(format!(
                "unexpected answer to list_datasets: {other:?}"
            ))),
        }
    }
}

/// Download `dataset_id` from the bank at `retrieve_endpoint` into `dest`.
pub async fn download_to_file(
    ctx: &zmq::Context,
    retrieve_endpoint: &str,
    dataset_id: &str,
    dest: &Path,
    opts: DownloadOptions,
) -> Result<DownloadReceipt, TransferError> {
    Downloader::new(ctx, retrieve_endpoint, opts)
        .download_to_file(dataset_id, dest)
        .await
}

/// Query the catalogue of the bank at `retrieve_endpoint`.
pub async fn list_datasets(
    ctx: &zmq::Context,
    retrieve_endpoint: &str,
    query: Query,
) -> Result<Vec<DatasetInfo>, TransferError> {
    Downloader::new(ctx, retrieve_endpoint, DownloadOptions::default())
        .list(query)
        .await
}

enum Failure {
    /// The link went quiet: resuming may help.
    Retryable(TransferError),
    Fatal(TransferError),
}

impl From<TransferError> for Failure {
    fn from(e: TransferError) -> Self {
        Failure::Fatal(e)
    }
}

struct Stream<'a> {
    sock: AsyncSocket,
    opts: &'a DownloadOptions,
    dataset_id: &'a str,
}

impl Stream<'_> {
    async fn recv(&mut self) -> Result<Vec<Vec<u8>>, Failure> {
        match recv_within(&mut self.sock, self.opts.timeout).await {
            Ok(Some(f)) => Ok(f),
            Ok(None) => Err(Failure::Retryable(TransferError::Timeout(
                self.opts.timeout,
            ))),
            Err(e) => Err(Failure::Fatal(e.into())),
        }
    }

    async fn send(&mut self, msg: &RetrieveRequest) -> Result<(), Failure> {
        self.sock
            .send_multipart([encode(msg)])
            .await
            .map_err(|e| Failure::Fatal(e.into()))
    }

    async fn run(
        &mut self,
        file: &mut tokio::fs::File,
        part: &Path,
        hasher: &mut Sha256,
        offset: &mut u64,
    ) -> Result<MetaMsg, Failure> {
        let io = |source| {
            Failure::Fatal(TransferError::Io {
                path: part.to_path_buf(),
                source,
            })
        };
        let credit_mode = self.opts.credit > 0;
        let get = Get {
            dataset_id: Some(self.dataset_id.to_string()),
            credit: credit_mode.then_some(self.opts.credit),
            offset: (credit_mode && *offset > 0).then_some(*offset),
            chunk_size: if credit_mode {
                self.opts.chunk_size
            } else {
                None
            },
            password: self.opts.password.to_field(),
        };
        self.send(&RetrieveRequest::Get(get)).await?;
        let frames = self.recv().await?;
        let meta = match decode(&frames)? {
            RetrieveReply::Meta(m) => m,
            RetrieveReply::Error(e) => return Err(TransferError::Remote(e.error).into()),
            other => {
                return Err(TransferError::Protocol(format!("expected meta, got {other:?}")).into())
            }
        };
        if let Some(p) = &self.opts.progress {
            p.set_total(meta.size);
        }
        if meta.dataset_id != self.dataset_id {
            return Err(TransferError::Protocol(format!(
                "meta for {:?}, asked for {:?}",
                meta.dataset_id, self.dataset_id
            ))
            .into());
        }
        // A legacy bank ignores credit and offset and streams from byte 0.
        let extended = meta.offset.is_some();
        let start = meta.offset.unwrap_or(0);
        if start != *offset {
            if start != 0 {
                return Err(TransferError::Protocol(format!(
                    "bank starts at byte {start}, we hold {offset}"
                ))
                .into());
            }
            *offset = 0;
            *hasher = Sha256::new();
            file.set_len(0).await.map_err(io)?;
        }
        file.seek(std::io::SeekFrom::Start(*offset))
            .await
            .map_err(io)?;
        let credit_mode = credit_mode && extended;
        // Grant against the credit the bank actually gave (it caps what we
        // ask for at its read-ahead buffer): waiting for half of what we
        // asked would wait forever once the cap is below that.
        let granted = meta
            .credit
            .unwrap_or(self.opts.credit)
            .min(self.opts.credit);
        let grant_every = (granted / 2).max(1);
        let mut consumed = 0u32;
        let mut seq = 0u64;
        loop {
            let frames = self.recv().await?;
            let chunk = match decode(&frames)? {
                RetrieveReply::Chunk(c) => c,
                RetrieveReply::Error(e) => return Err(TransferError::Remote(e.error).into()),
                other => {
                    return Err(
                        TransferError::Protocol(format!("expected chunk, got {other:?}")).into(),
                    )
                }
            };
            if chunk.dataset_id != self.dataset_id || chunk.seq != seq {
                return Err(TransferError::Protocol(format!(
                    "chunk {} of {:?} out of order (expected {seq} of {:?})",
                    chunk.seq, chunk.dataset_id, self.dataset_id
                ))
                .into());
            }
            if let Some(o) = chunk.offset {
                if o != *offset {
                    return Err(TransferError::Protocol(format!(
                        "chunk {seq} at byte {o}, expected byte {offset}"
                    ))
                    .into());
                }
            }
            if chunk.eof {
                let sha = hex::encode(std::mem::take(hasher).finalize());
                if *offset != meta.size || sha != meta.sha256 {
                    return Err(TransferError::Integrity(format!(
                        "received {offset} bytes sha256 {sha}; bank declared {} bytes sha256 {}",
                        meta.size, meta.sha256
                    ))
                    .into());
                }
                return Ok(meta);
            }
            let data = frames.get(1).map(Vec::as_slice).unwrap_or_default();
            if *offset + data.len() as u64 > meta.size {
                return Err(TransferError::Integrity(format!(
                    "bank sent more than the declared {} bytes",
                    meta.size
                ))
                .into());
            }
            file.write_all(data).await.map_err(io)?;
            hasher.update(data);
            *offset += data.len() as u64;
            if let Some(p) = &self.opts.progress {
                p.set_done(*offset);
            }
            seq += 1;
            if credit_mode {
                consumed += 1;
                if consumed >= grant_every {
                    let c = Credit {
                        dataset_id: self.dataset_id.to_string(),
                        credit: consumed,
                    };
                    self.send(&RetrieveRequest::Credit(c)).await?;
                    consumed = 0;
                }
            }
        }
    }
}

fn decode(frames: &[Vec<u8>]) -> Result<RetrieveReply, TransferError> {
    let first = frames
        .first()
        .ok_or_else(|| TransferError::Protocol("empty reply".to_string()))?;
    decode_retrieve_reply(first).map_err(|m| TransferError::Protocol(m.message()))
}

impl std::fmt::Debug for Downloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Downloader")
            .field("endpoint", &self.endpoint)
            .field("opts", &self.opts)
            .finish()
    }
}
