//! labmesh-wire: the mesh's messages and the ZeroMQ plumbing every node shares.
//!
//! * [`msg`]: typed JSON envelopes, byte-compatible with the Python `labmesh`
//!   package (see `docs/PROTOCOL.md`).
//! * [`socket`]: [`AsyncSocket`], a tokio-driven zmq socket.
//! * [`dealer`]: [`DealerConn`], request/reply over a DEALER with many calls in
//!   flight, matched by `rpc_uuid`.
//! * [`endpoint`]: `BROKER` and `*` substitution, ephemeral ports.
//! * [`auth`]: the optional shared network password.
//! * [`register`]: staying registered with the broker (relays and banks).
//! * [`transfer`]: dataset upload, download and catalogue queries.
//! * [`throttle`]: rate-limited warnings for peer-controlled input.
#![warn(missing_docs)]
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

pub mod auth;
pub mod dealer;
pub mod endpoint;
pub mod msg;
pub mod register;
pub mod socket;
pub mod throttle;
pub mod transfer;

pub use dealer::DealerConn;
pub use socket::{AsyncSocket, SocketOptions};

use serde::{Deserialize, Serialize};

/// The `{"code","message"}` error object used in every error reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// HTTP-like status code (see [`codes`]).
    pub code: i64,
    /// Human-readable explanation.
    pub message: String,
}

impl ErrorBody {
    /// An error with `code` and `message`.
    pub fn new(code: i64, message: impl Into<String>) -> Self {
        ErrorBody {
            code,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for ErrorBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.code, self.message)
    }
}

/// Stable error codes.
pub mod codes {
    /// Malformed request or wrong parameters.
    pub const BAD_REQUEST: i64 = 400;
    /// Wrong or missing network password.
    pub const UNAUTHORIZED: i64 = 401;
    /// Unknown relay, method or dataset.
    pub const NOT_FOUND: i64 = 404;
    /// The instrument (or the remote node) did not answer in time.
    pub const TIMEOUT: i64 = 408;
    /// Conflict: duplicate id, locked resource, missing session.
    pub const CONFLICT: i64 = 409;
    /// Checksum or size mismatch.
    pub const UNPROCESSABLE: i64 = 422;
    /// The driver or instrument failed.
    pub const DRIVER: i64 = 500;
    /// The service is not available (shutting down, link down).
    pub const UNAVAILABLE: i64 = 503;
}

/// Errors from the ZeroMQ plumbing.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// A libzmq call failed.
    #[error("zmq: {0}")]
    Zmq(#[from] zmq::Error),
    /// Registering the socket with the tokio reactor failed.
    #[error("reactor: {0}")]
    Io(#[from] std::io::Error),
    /// Binding an endpoint failed (address in use, bad syntax, ...).
    #[error("cannot bind {endpoint}: {source}")]
    Bind {
        /// The endpoint as given.
        endpoint: String,
        /// libzmq's reason.
        source: zmq::Error,
    },
    /// Connecting an endpoint failed (bad syntax, unknown transport).
    #[error("cannot connect {endpoint}: {source}")]
    Connect {
        /// The endpoint as given.
        endpoint: String,
        /// libzmq's reason.
        source: zmq::Error,
    },
    /// The peer did not answer in time.
    #[error("no reply within {0:?}")]
    Timeout(std::time::Duration),
    /// The connection's task has stopped (the node is shutting down).
    #[error("connection closed")]
    Closed,
    /// The peer answered something that is not a JSON object.
    #[error("malformed reply: {0}")]
    MalformedReply(String),
}

impl WireError {
    /// Whether retrying the same operation later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, WireError::Timeout(_) | WireError::Closed)
    }
}

/// Seconds since the Unix epoch, as labmesh's `time.time()`.
pub fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}
