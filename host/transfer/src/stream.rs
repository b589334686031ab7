//! Streaming download: the dataset's bytes chunk by chunk, to forward them
//! (an HTTP response, a pipe) without a copy of the whole file.
//!
//! Credit mode makes it bounded: the bank sends at most `credit` chunks
//! ahead, and more credit is granted only as the caller takes chunks, so a
//! slow consumer slows the bank instead of filling memory. Size and SHA-256
//! are checked as the bytes pass; the final [`DownloadStream::next_chunk`]
//! (the one returning `Ok(None)`) fails with [`TransferError::Integrity`]
//! when they do not match, so the consumer can abort what it forwarded.
//! No resume: a stream that stalls longer than the timeout fails.

use sha2::{Digest, Sha256};

use crate::{recv_messages_within, recv_within, transfer_socket, DownloadOptions, TransferError};
use labmesh_proto::bank::{
    decode_retrieve_reply, valid_dataset_id, Credit, Get, MetaMsg, RetrieveReply, RetrieveRequest,
};
use labmesh_proto::mesh::encode;
use labmesh_wire::AsyncSocket;

/// A dataset being received: its metadata, then its chunks in order.
pub struct DownloadStream {
    sock: AsyncSocket,
    opts: DownloadOptions,
    meta: MetaMsg,
    hasher: Sha256,
    offset: u64,
    seq: u64,
    consumed: u32,
    credit_mode: bool,
    done: bool,
}

impl std::fmt::Debug for DownloadStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DownloadStream")
            .field("dataset_id", &self.meta.dataset_id)
            .field("offset", &self.offset)
            .field("size", &self.meta.size)
            .finish()
    }
}

impl DownloadStream {
    /// Ask the bank at `endpoint` for `dataset_id` and wait for its
    /// metadata (a missing dataset is [`TransferError::Remote`] 404 here,
    /// before any byte is forwarded).
    pub async fn open(
        ctx: &zmq::Context,
        endpoint: &str,
        dataset_id: &str,
        opts: DownloadOptions,
    ) -> Result<DownloadStream, TransferError> {
        if !valid_dataset_id(dataset_id) {
            return Err(TransferError::InvalidDatasetId(dataset_id.to_string()));
        }
        let mut sock = transfer_socket(ctx, endpoint)?;
        let credit_mode = opts.credit > 0;
        let get = Get {
            dataset_id: Some(dataset_id.to_string()),
            credit: credit_mode.then_some(opts.credit),
            offset: None,
            chunk_size: if credit_mode { opts.chunk_size } else { None },
            password: opts.password.to_field(),
        };
        sock.send_multipart([encode(&RetrieveRequest::Get(get))])
            .await?;
        let frames = recv_within(&mut sock, opts.timeout)
            .await?
            .ok_or(TransferError::Timeout(opts.timeout))?;
        let meta = match decode(&frames)? {
            RetrieveReply::Meta(m) => m,
            RetrieveReply::Error(e) => return Err(TransferError::Remote(e.error)),
            other => {
                return Err(TransferError::Protocol(format!(
                    "expected meta, got {other:?}"
                )))
            }
        };
        if meta.dataset_id != dataset_id {
            return Err(TransferError::Protocol(format!(
                "meta for {:?}, asked for {dataset_id:?}",
                meta.dataset_id
            )));
        }
        if meta.offset.unwrap_or(0) != 0 {
            return Err(TransferError::Protocol(format!(
                "bank starts at byte {:?}, asked for 0",
                meta.offset
            )));
        }
        // A legacy bank ignores credit and streams everything at once.
        let credit_mode = credit_mode && meta.offset.is_some();
        // Grant against the credit the bank actually gave (it caps ours to
        // its buffer): waiting for half of what we asked would wait for
        // chunks the bank may never send.
        let mut opts = opts;
        if credit_mode {
            opts.credit = meta.credit.unwrap_or(opts.credit).clamp(1, opts.credit);
        }
        Ok(DownloadStream {
            sock,
            opts,
            meta,
            hasher: Sha256::new(),
            offset: 0,
            seq: 0,
            consumed: 0,
            credit_mode,
            done: false,
        })
    }

    /// The bank's metadata: id, size, SHA-256, the uploader's meta.
    pub fn meta(&self) -> &MetaMsg {
        &self.meta
    }

    /// Bytes received so far.
    pub fn received(&self) -> u64 {
        self.offset
    }

    /// The next chunk, `Ok(None)` after the last one once size and SHA-256
    /// matched. An error ends the stream.
    pub async fn next_chunk(&mut self) -> Result<Option<Vec<u8>>, TransferError> {
        Ok(self.next_message().await?.map(|m| m.to_vec()))
    }

    /// [`DownloadStream::next_chunk`] without a copy: the bytes stay in the
    /// message libzmq received them into (`zmq::Message` derefs to
    /// `[u8]`). For a consumer that only reads the bytes (hashes, writes
    /// them), this saves a memcpy of every chunk.
    pub async fn next_message(&mut self) -> Result<Option<zmq::Message>, TransferError> {
        if self.done {
            return Ok(None);
        }
        let r = self.next_inner().await;
        if !matches!(r, Ok(Some(_))) {
            self.done = true;
        }
        r
    }

    async fn next_inner(&mut self) -> Result<Option<zmq::Message>, TransferError> {
        let mut frames = recv_messages_within(&mut self.sock, self.opts.timeout)
            .await?
            .ok_or(TransferError::Timeout(self.opts.timeout))?;
        let head = frames
            .first()
            .ok_or_else(|| TransferError::Protocol("empty reply".to_string()))?;
        let chunk =
            match decode_retrieve_reply(head).map_err(|m| TransferError::Protocol(m.message()))? {
                RetrieveReply::Chunk(c) => c,
                RetrieveReply::Error(e) => return Err(TransferError::Remote(e.error)),
                other => {
                    return Err(TransferError::Protocol(format!(
                        "expected chunk, got {other:?}"
                    )))
                }
            };
        if chunk.dataset_id != self.meta.dataset_id || chunk.seq != self.seq {
            return Err(TransferError::Protocol(format!(
                "chunk {} of {:?} out of order (expected {} of {:?})",
                chunk.seq, chunk.dataset_id, self.seq, self.meta.dataset_id
            )));
        }
        if chunk.offset.is_some_and(|o| o != self.offset) {
            return Err(TransferError::Protocol(format!(
                "chunk {} at byte {:?}, expected byte {}",
                self.seq, chunk.offset, self.offset
            )));
        }
        if chunk.eof {
            let sha = hex::encode(std::mem::take(&mut self.hasher).finalize());
            if self.offset != self.meta.size || sha != self.meta.sha256 {
                return Err(TransferError::Integrity(format!(
                    "received {} bytes sha256 {sha}; bank declared {} bytes sha256 {}",
                    self.offset, self.meta.size, self.meta.sha256
                )));
            }
            return Ok(None);
        }
        let data = if frames.len() > 1 {
            frames.swap_remove(1)
        } else {
            zmq::Message::new()
        };
        if self.offset + data.len() as u64 > self.meta.size {
            return Err(TransferError::Integrity(format!(
                "bank sent more than the declared {} bytes",
                self.meta.size
            )));
        }
        self.hasher.update(&data[..]);
        self.offset += data.len() as u64;
        self.seq += 1;
        if self.credit_mode {
            self.consumed += 1;
            if self.consumed >= (self.opts.credit / 2).max(1) {
                let c = Credit {
                    dataset_id: self.meta.dataset_id.clone(),
                    credit: self.consumed,
                };
                self.sock
                    .send_multipart([encode(&RetrieveRequest::Credit(c))])
                    .await?;
                self.consumed = 0;
            }
        }
        Ok(Some(data))
    }
}

fn decode(frames: &[Vec<u8>]) -> Result<RetrieveReply, TransferError> {
    let first = frames
        .first()
        .ok_or_else(|| TransferError::Protocol("empty reply".to_string()))?;
    decode_retrieve_reply(first).map_err(|m| TransferError::Protocol(m.message()))
}
