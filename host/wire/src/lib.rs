//! labmesh-wire: the ZeroMQ plumbing every node shares.
//!
//! The messages themselves are in `labmesh-proto`; this crate moves them.
//!
//! * [`socket`]: [`AsyncSocket`], a tokio-driven zmq socket.
//! * [`dealer`]: [`DealerConn`], request/reply over a DEALER with many calls in
//!   flight, matched by `rpc_uuid`.
//! * [`auth`]: the optional shared network password.
//! * [`register`]: staying registered with the broker (relays and banks).
//! * [`throttle`]: rate-limited warnings for peer-controlled input.
//! * [`curve`]: CURVE keys, the allow-list, securing every socket made in a
//!   context; [`zap`]: the context's ZAP handler (key -> role).

pub mod auth;
pub mod curve;
pub mod dealer;
pub mod register;
pub mod socket;
pub mod throttle;
pub mod zap;

pub use dealer::DealerConn;
pub use socket::{AsyncSocket, Peer, SocketOptions};

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
    /// The peer answered something that is not a reply of the protocol.
    #[error("malformed reply: {0}")]
    MalformedReply(String),
    /// CURVE keys could not be used.
    #[error("{0}")]
    Curve(#[from] curve::CurveError),
    /// The socket failed in a way retrying cannot fix (its context was
    /// terminated, it was closed); the task using it stops.
    #[error("socket unusable: {0}")]
    Fatal(zmq::Error),
}

impl WireError {
    /// Whether retrying the same operation later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, WireError::Timeout(_) | WireError::Closed)
    }

    /// Whether the socket behind this error can never work again, so a
    /// receive loop must end instead of trying again.
    pub fn is_permanent(&self) -> bool {
        match self {
            WireError::Fatal(_) => true,
            WireError::Zmq(e) => socket::is_permanent(*e),
            WireError::Io(_) => true,
            _ => false,
        }
    }
}
