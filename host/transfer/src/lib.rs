//! labmesh-transfer: dataset transfer to and from databanks.
//!
//! The messages are `labmesh_proto::bank`; this crate holds the client
//! state machines that exchange them.
//!
//! * [`Uploader`] / [`upload_file`] / [`upload_reader`]: stream a dataset to
//!   a bank's ingest socket with a window of chunks in flight, resuming after
//!   a bank restart.
//! * [`Downloader`] / [`download_to_file`] / [`list_datasets`]: fetch a
//!   dataset with credit-based flow control into a temp file that is renamed
//!   only once size and SHA-256 match; query a bank's catalogue.
//! * [`DownloadStream`]: the same download chunk by chunk, to forward it
//!   without a local copy (credit-bounded, verified at the end).
//!
//! The byte-exact protocol is in `docs/PROTOCOL.md` (bank section).

mod download;
mod stream;
mod upload;

use std::path::PathBuf;
use std::time::Duration;

pub use download::{download_to_file, list_datasets, DownloadOptions, DownloadReceipt, Downloader};
pub use labmesh_proto::bank::{valid_dataset_id, DatasetInfo, Query};
pub use stream::DownloadStream;
pub use upload::{
    abort_upload, file_token, upload_file, upload_reader, UploadOptions, UploadReceipt, Uploader,
};

use labmesh_proto::{codes, ErrorBody};
use labmesh_wire::{AsyncSocket, SocketOptions, WireError};

/// Live progress of a transfer, for progress bars: bytes done and the total
/// (0 until known). Share one with [`UploadOptions::progress`] or
/// [`DownloadOptions::progress`] and read it from another task.
#[derive(Debug, Default)]
pub struct Progress {
    /// Bytes acknowledged by the bank (upload) or written locally (download).
    pub done: std::sync::atomic::AtomicU64,
    /// Dataset size in bytes, once known.
    pub total: std::sync::atomic::AtomicU64,
}

impl Progress {
    pub(crate) fn set_done(&self, n: u64) {
        self.done.store(n, std::sync::atomic::Ordering::Relaxed);
    }

    pub(crate) fn set_total(&self, n: u64) {
        self.total.store(n, std::sync::atomic::Ordering::Relaxed);
    }

    /// `(done, total)` now.
    pub fn get(&self) -> (u64, u64) {
        (
            self.done.load(std::sync::atomic::Ordering::Relaxed),
            self.total.load(std::sync::atomic::Ordering::Relaxed),
        )
    }
}

/// What a caller should do about a [`TransferError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransferErrorKind {
    /// The bank or link was unavailable; trying again later may work.
    Retry,
    /// The request itself is wrong (bad id, conflict, unknown dataset).
    Report,
    /// Data was corrupted in transit or at rest; nothing was kept.
    Integrity,
    /// A local problem (file system).
    Local,
}

/// Errors from uploads, downloads and catalogue queries.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    /// ZeroMQ plumbing failed.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// Reading the source or writing the destination failed.
    #[error("{path}: {source}")]
    Io {
        /// The file concerned.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Reading from the caller's reader failed.
    #[error("reading the upload source: {0}")]
    Source(std::io::Error),
    /// The dataset id is not 1..=128 of `[A-Za-z0-9._-]`.
    #[error("invalid dataset id {0:?} (1..=128 of letters, digits, '.', '_', '-')")]
    InvalidDatasetId(String),
    /// The bank did not answer within the timeout (after all retries).
    #[error("bank did not answer within {0:?}")]
    Timeout(Duration),
    /// The bank refused the request.
    #[error("bank error {0}")]
    Remote(ErrorBody),
    /// Size or SHA-256 did not match.
    #[error("integrity check failed: {0}")]
    Integrity(String),
    /// The bank sent something the protocol does not allow here.
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// The upload was interrupted and cannot be resumed (legacy bank, lost
    /// session, or the chunks to resend are gone from a non-seekable reader).
    #[error("upload cannot be resumed: {0}")]
    CannotResume(String),
}

impl TransferError {
    /// What to do about this error.
    pub fn kind(&self) -> TransferErrorKind {
        match self {
            TransferError::Wire(e) if e.is_transient() => TransferErrorKind::Retry,
            TransferError::Wire(_) => TransferErrorKind::Report,
            TransferError::Timeout(_) | TransferError::CannotResume(_) => TransferErrorKind::Retry,
            TransferError::Remote(e) if e.code == codes::UNAVAILABLE => TransferErrorKind::Retry,
            TransferError::Remote(e) if e.code == codes::UNPROCESSABLE => {
                TransferErrorKind::Integrity
            }
            TransferError::Remote(_)
            | TransferError::InvalidDatasetId(_)
            | TransferError::Protocol(_) => TransferErrorKind::Report,
            TransferError::Integrity(_) => TransferErrorKind::Integrity,
            TransferError::Io { .. } | TransferError::Source(_) => TransferErrorKind::Local,
        }
    }
}

/// A DEALER for one transfer: linger 0 (a finished or abandoned transfer
/// leaves nothing queued), no inbound size limit beyond 1 GiB.
pub(crate) fn transfer_socket(
    ctx: &zmq::Context,
    endpoint: &str,
) -> Result<AsyncSocket, WireError> {
    let mut s = AsyncSocket::new(
        ctx,
        zmq::DEALER,
        SocketOptions {
            linger_ms: 0,
            max_msg_size: labmesh_proto::limits::MAX_TRANSFER_MSG as i64,
            ..Default::default()
        },
    )?;
    s.connect(endpoint)?;
    Ok(s)
}

/// Receive one message within `timeout`; `Ok(None)` on timeout.
/// [`recv_within`] keeping libzmq's messages (no copy of the frames).
pub(crate) async fn recv_messages_within(
    sock: &mut AsyncSocket,
    timeout: Duration,
) -> Result<Option<Vec<zmq::Message>>, WireError> {
    match tokio::time::timeout(timeout, sock.recv_messages()).await {
        Ok(r) => r.map(Some),
        Err(_) => Ok(None),
    }
}

pub(crate) async fn recv_within(
    sock: &mut AsyncSocket,
    timeout: Duration,
) -> Result<Option<Vec<Vec<u8>>>, WireError> {
    match tokio::time::timeout(timeout, sock.recv_multipart()).await {
        Ok(r) => r.map(Some),
        Err(_) => Ok(None),
    }
}
