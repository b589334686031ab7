//! The [`Instrument`] trait and what a driver call can fail with.
//!
//! The method-description schema ([`Description`], [`MethodSpec`],
//! [`ParamSpec`], [`Args`]) is part of the protocol and lives in
//! `labmesh_proto::describe`; it is re-exported here for drivers.

use std::time::Duration;

use labmesh_proto::codes;
pub use labmesh_proto::describe::{
    Args, BindError, Description, MethodSpec, ParamSpec, ParamType, StateField,
};
use serde_json::Value;

/// What a driver call can fail with. Each variant maps to a stable RPC
/// error code (see [`DriverError::code`]).
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// The instrument has no such method.
    #[error("unknown method: {0}")]
    UnknownMethod(String),
    /// A parameter is missing, unexpected, of the wrong type or out of range.
    #[error("bad parameter '{param}': {why}")]
    BadParam {
        /// The parameter's name.
        param: String,
        /// What is wrong with it.
        why: String,
    },
    /// The instrument did not answer within the deadline.
    #[error("instrument timeout after {0:?}")]
    Timeout(Duration),
    /// The instrument is busy or locked by someone else.
    #[error("instrument busy: {0}")]
    Busy(String),
    /// The instrument answered, and the answer was "no" (an SCPI error
    /// queue entry, a firmware error, an unparseable reply).
    #[error("instrument error: {0}")]
    Instrument(String),
    /// The link to the instrument failed (closed socket, unplugged port,
    /// refused connection). The message includes the I/O error's, so it
    /// stays meaningful when sent over RPC as text.
    #[error("link to instrument failed: {context}: {source}")]
    Link {
        /// What was being done, naming the resource (`tcp://host:5025`,
        /// the serial port).
        context: String,
        /// The I/O error behind it (for failures without one, such as the
        /// peer closing the link, an error of the matching
        /// [`std::io::ErrorKind`]).
        #[source]
        source: std::io::Error,
    },
    /// The driver's configuration is wrong (bad resource string, option).
    #[error("driver configuration: {0}")]
    Config(String),
    /// An instrument's options name a key its driver does not declare
    /// (see [`crate::OptionSpec`]); the caller adds which instrument.
    #[error(
        "driver configuration: '{key}' is not a {driver} option (known: {})",
        if known.is_empty() { "none".to_string() } else { known.join(", ") }
    )]
    UnknownOption {
        /// The driver's registry name.
        driver: String,
        /// The key.
        key: String,
        /// The options the driver declares.
        known: Vec<&'static str>,
    },
    /// A configuration file (a declarative driver, a driver directory)
    /// could not be read.
    #[error("driver configuration: cannot read {path}: {source}", path = .path.display())]
    ReadConfig {
        /// The file or directory.
        path: std::path::PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// What a caller should do about a [`DriverError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DriverErrorKind {
    /// Fix the request; retrying it unchanged will fail again.
    Request,
    /// Retry later: the instrument was slow or busy.
    Retry,
    /// The link is down: the driver reconnects, retry later.
    Reconnect,
    /// Report: the instrument or configuration needs a person.
    Report,
}

impl DriverError {
    /// A bad-parameter error.
    pub fn bad_param(param: impl Into<String>, why: impl Into<String>) -> Self {
        DriverError::BadParam {
            param: param.into(),
            why: why.into(),
        }
    }

    /// A link failure: `context` names the resource and what was being done.
    pub fn link(context: impl Into<String>, source: std::io::Error) -> Self {
        DriverError::Link {
            context: context.into(),
            source,
        }
    }

    /// A link failure without an underlying I/O error of its own (the peer
    /// closed the link, nothing is connected): an I/O error of `kind` with
    /// message `why` stands in for it.
    pub fn link_lost(
        context: impl Into<String>,
        kind: std::io::ErrorKind,
        why: &'static str,
    ) -> Self {
        DriverError::link(context, std::io::Error::new(kind, why))
    }

    /// The stable RPC error code for this error.
    pub fn code(&self) -> i64 {
        match self {
            DriverError::UnknownMethod(_) => codes::NOT_FOUND,
            DriverError::BadParam { .. } => codes::BAD_REQUEST,
            DriverError::Timeout(_) => codes::TIMEOUT,
            DriverError::Busy(_) => codes::CONFLICT,
            DriverError::Instrument(_)
            | DriverError::Config(_)
            | DriverError::UnknownOption { .. }
            | DriverError::ReadConfig { .. } => codes::DRIVER,
            DriverError::Link { .. } => codes::UNAVAILABLE,
        }
    }

    /// What to do about it.
    pub fn kind(&self) -> DriverErrorKind {
        match self {
            DriverError::UnknownMethod(_) | DriverError::BadParam { .. } => {
                DriverErrorKind::Request
            }
            DriverError::Timeout(_) | DriverError::Busy(_) => DriverErrorKind::Retry,
            DriverError::Link { .. } => DriverErrorKind::Reconnect,
            DriverError::Instrument(_)
            | DriverError::Config(_)
            | DriverError::UnknownOption { .. }
            | DriverError::ReadConfig { .. } => DriverErrorKind::Report,
        }
    }
}

/// A driven instrument. One task owns it, so calls are serialised; the relay
/// runs different instruments concurrently.
#[async_trait::async_trait]
pub trait Instrument: Send {
    /// Methods and parameters. Only these are callable over RPC.
    fn describe(&self) -> Description;

    /// Call `method` with arguments already bound to its [`MethodSpec`].
    async fn call(&mut self, method: &str, args: Args) -> Result<Value, DriverError>;

    /// Read the instrument's state for the state bus.
    async fn poll(&mut self) -> Result<Value, DriverError>;

    /// The instrument's identity as [`Instrument::describe`] reports it,
    /// cheaply: the relay asks after every call and poll, and rebuilds the
    /// description only when this changed. The default builds the whole
    /// description; drivers that learn an identity override it.
    fn identity(&self) -> Option<String> {
        self.describe().identity
    }

    /// Run `method` for a stream sample. The default is [`Instrument::call`]
    /// with its JSON result; a driver whose method returns bytes (a waveform
    /// from an IEEE 488.2 block) answers [`Sampled::Binary`], which travels
    /// as a raw frame instead of base64.
    async fn sample(&mut self, method: &str, args: Args) -> Result<Sampled, DriverError> {
        self.call(method, args).await.map(Sampled::Json)
    }

    /// Push streams: events the driver publishes by itself (telemetry a
    /// device sends unasked). Taken once, when the relay starts hosting
    /// the instrument. Default: none.
    fn push_streams(&mut self) -> Vec<PushStream> {
        Vec::new()
    }

    /// Send one program message as a LAN client wrote it (the relay's LAN
    /// gateway): its reply bytes if it is a query, `None` if not. Default:
    /// refused, the instrument is not message-based; SCPI drivers pass it
    /// to their session ([`crate::scpi::ScpiSession::passthrough`]).
    async fn lan_message(&mut self, message: &str) -> Result<Option<Vec<u8>>, DriverError> {
        let _ = message;
        Err(DriverError::Config(
            "this driver does not take raw program messages (not a SCPI instrument)".into(),
        ))
    }

    /// Release the instrument (close links). Default: nothing.
    async fn shutdown(&mut self) {}
}

/// A stream sample's value, as a driver produced it.
#[derive(Debug, Clone, PartialEq)]
pub enum Sampled {
    /// A JSON value.
    Json(Value),
    /// Bytes (published as a raw frame).
    Binary(Vec<u8>),
}

/// Events a driver publishes by itself, as a stream named `name`. The
/// channel is bounded by the driver (which drops events when it is full,
/// and says so in its log); the relay publishes every event it receives.
#[derive(Debug)]
pub struct PushStream {
    /// Stream name (see `labmesh_proto::stream::valid_name`).
    pub name: String,
    /// What the events are (shown as the stream's method).
    pub event: String,
    /// The events.
    pub events: tokio::sync::mpsc::Receiver<Result<Value, DriverError>>,
}

impl From<BindError> for DriverError {
    fn from(e: BindError) -> Self {
        match e {
            BindError::UnknownMethod(m) => DriverError::UnknownMethod(m),
            BindError::BadParam { param, why } => DriverError::BadParam { param, why },
        }
    }
}
