//! The one table of error codes, and the `{"code","message"}` error object.
//!
//! Codes are HTTP-like and stable: labmesh v0 peers see the same shape they
//! send (`{"code": int, "message": str}`), Rust peers can act on the number.
//! Every node (broker, relay, bank) and every driver error maps to this
//! table; docs/PROTOCOL.md lists where each is used.

use serde::{Deserialize, Serialize};

/// Malformed request or wrong parameters.
pub const BAD_REQUEST: i64 = 400;
/// Wrong or missing network password.
pub const UNAUTHORIZED: i64 = 401;
/// The caller's CURVE key has a role that may not do this (the message
/// names the role and the method).
pub const FORBIDDEN: i64 = 403;
/// Unknown relay, method or dataset.
pub const NOT_FOUND: i64 = 404;
/// The instrument (or the remote node) did not answer in time.
pub const TIMEOUT: i64 = 408;
/// Conflict: duplicate id, locked resource, missing session.
pub const CONFLICT: i64 = 409;
/// Too large for where it was going (a stream sample above the bus
/// maximum).
pub const TOO_LARGE: i64 = 413;
/// Checksum or size mismatch.
pub const UNPROCESSABLE: i64 = 422;
/// The driver or instrument failed.
pub const DRIVER: i64 = 500;
/// The service is not available (shutting down, queue full, link down,
/// storage failing).
pub const UNAVAILABLE: i64 = 503;

/// Every code above with its one-word name, for docs and logs.
pub const TABLE: &[(i64, &str)] = &[
    (BAD_REQUEST, "bad request"),
    (UNAUTHORIZED, "unauthorized"),
    (FORBIDDEN, "forbidden"),
    (NOT_FOUND, "not found"),
    (TIMEOUT, "timeout"),
    (CONFLICT, "conflict"),
    (TOO_LARGE, "too large"),
    (UNPROCESSABLE, "unprocessable"),
    (DRIVER, "driver error"),
    (UNAVAILABLE, "unavailable"),
];

/// The name of `code` in [`TABLE`], if it is one of ours.
pub fn name(code: i64) -> Option<&'static str> {
    TABLE.iter().find(|(c, _)| *c == code).map(|(_, n)| *n)
}

/// The `{"code","message"}` error object used in every error reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// HTTP-like status code (see the constants of this module).
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_body_bytes_and_names() {
        assert_eq!(
            serde_json::to_vec(&ErrorBody::new(NOT_FOUND, "unknown method: x")).unwrap(),
            br#"{"code":404,"message":"unknown method: x"}"#
        );
        assert_eq!(name(TIMEOUT), Some("timeout"));
        assert_eq!(name(418), None);
        let mut codes: Vec<i64> = TABLE.iter().map(|(c, _)| *c).collect();
        codes.dedup();
        assert_eq!(codes.len(), TABLE.len());
    }
}
