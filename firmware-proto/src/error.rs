//! Errors that cross the link as data.

use serde::{Deserialize, Serialize};

/// An error answered by the device in an `Error` frame (postcard enum, varint tag).
///
/// The variant order is part of the wire format: append only.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EndpointError {
    /// The device serves no endpoint with this key (unknown name or schema mismatch).
    #[error("unknown endpoint (name or schema mismatch)")]
    UnknownEndpoint,
    /// The request body did not decode as the endpoint's request type.
    #[error("bad request body")]
    BadRequest,
    /// The device cannot serve the request now; retry later.
    #[error("device busy")]
    Busy,
    /// A parameter is outside the device's limits.
    #[error("value out of range")]
    OutOfRange,
    /// The frame's protocol version is not spoken by the device.
    #[error("unsupported protocol version (device speaks {supported})")]
    UnsupportedVersion {
        /// The version the device speaks.
        supported: u8,
    },
    /// The response did not fit in a frame.
    #[error("response too large for a frame")]
    ResponseTooLarge,
    /// The request is valid but not allowed in the device's current state.
    #[error("not allowed in the current device state")]
    InvalidState,
}

/// What a caller should do about an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceErrorKind {
    /// Transient: the same request may succeed later.
    Retry,
    /// The link is gone or out of sync: reopen it.
    Reconnect,
    /// The request itself is wrong (or host and device disagree): report it.
    Report,
}

impl EndpointError {
    /// What to do about this error.
    pub fn kind(&self) -> DeviceErrorKind {
        match self {
            EndpointError::Busy => DeviceErrorKind::Retry,
            _ => DeviceErrorKind::Report,
        }
    }
}
