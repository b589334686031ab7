//! The CLI's exit codes (one table, kept by every command; README "Exit
//! codes") and how an error is printed.
//!
//! | code | meaning |
//! | --- | --- |
//! | 0 | success |
//! | 1 | local error: configuration file, files, binding a port, anything on this machine |
//! | 2 | usage: unknown flag, missing argument, a flag value out of its range (clap) |
//! | 3 | remote error: the broker, a relay or a bank answered with an error (unknown relay, method or dataset, bad parameter, instrument timeout 408, ...) |
//! | 4 | unreachable: nothing listens at the broker's endpoint, or no reply within the timeout |
//! | 130 | interrupted (Ctrl-C / SIGTERM during an upload) |

use std::process::ExitCode;

use labmesh_client::ClientError;
use labmesh_transfer::TransferError;
use labmesh_wire::WireError;

/// Success.
#[allow(dead_code)]
pub const OK: u8 = 0;
/// A local error.
pub const LOCAL: u8 = 1;
/// A usage error (clap's own code).
#[allow(dead_code)]
pub const USAGE: u8 = 2;
/// The other side answered with an error.
pub const REMOTE: u8 = 3;
/// Nothing answered in time.
pub const UNREACHABLE: u8 = 4;

/// An error that carries its exit code (for failures a command finds
/// itself: "dataset not found on any bank", "relay not listed").
#[derive(Debug)]
pub struct Failure {
    /// Exit code.
    pub code: u8,
    /// What to print.
    pub message: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failure {}

/// A remote error found by the command itself.
pub fn remote(message: impl Into<String>) -> anyhow::Error {
    Failure {
        code: REMOTE,
        message: message.into(),
    }
    .into()
}

/// An unreachable node or a timeout found by the command itself.
pub fn unreachable(message: impl Into<String>) -> anyhow::Error {
    Failure {
        code: UNREACHABLE,
        message: message.into(),
    }
    .into()
}

/// The exit code for `e`: the first error in its chain that says.
pub fn code_of(e: &anyhow::Error) -> u8 {
    for cause in e.chain() {
        if let Some(f) = cause.downcast_ref::<Failure>() {
            return f.code;
        }
        // (`#[error(transparent)]` variants hide the inner error from the
        // chain, so they are looked into here.)
        let (client, transfer, wire) = (
            cause.downcast_ref::<ClientError>(),
            cause.downcast_ref::<TransferError>(),
            cause.downcast_ref::<WireError>(),
        );
        let transfer = match client {
            Some(ClientError::Transfer(t)) => Some(t),
            _ => transfer,
        };
        let wire = match (client, transfer) {
            (Some(ClientError::Wire(w)), _) | (_, Some(TransferError::Wire(w))) => Some(w),
            _ => wire,
        };
        match client {
            Some(
                ClientError::Remote { .. }
                | ClientError::NotFound(_)
                | ClientError::Refused(_)
                | ClientError::Unexpected { .. },
            ) => return REMOTE,
            Some(ClientError::Timeout { .. }) => return UNREACHABLE,
            _ => {}
        }
        match transfer {
            Some(
                TransferError::Remote(_)
                | TransferError::Integrity(_)
                | TransferError::Protocol(_)
                | TransferError::CannotResume(_),
            ) => return REMOTE,
            Some(TransferError::Timeout(_)) => return UNREACHABLE,
            _ => {}
        }
        if let Some(WireError::Timeout(_)) = wire {
            return UNREACHABLE;
        }
    }
    LOCAL
}

/// `e` and its causes on one line, `outer: inner: innermost`, without
/// repeating a cause whose text the message before it already ends with
/// (errors that print their source in their own message, as many
/// libraries' do, would otherwise show it twice).
pub fn render(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let s = cause.to_string();
        if s.is_empty() || out.ends_with(&s) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&s);
    }
    out
}

/// Print `e` to stderr and give its exit code.
pub fn report(e: &anyhow::Error) -> ExitCode {
    eprintln!("labmesh: {}", render(e));
    ExitCode::from(code_of(e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot bind {ep}: {source}")]
    struct Embeds {
        ep: String,
        source: std::io::Error,
    }

    #[test]
    fn a_source_already_in_the_message_is_printed_once() {
        let io = std::io::Error::from(std::io::ErrorKind::AddrInUse);
        let e = anyhow::Error::new(Embeds {
            ep: "tcp://*:5850".into(),
            source: io,
        })
        .context("relay psu-1");
        let s = render(&e);
        assert_eq!(s.matches("address in use").count(), 1, "{s}");
        assert!(
            s.starts_with("relay psu-1: cannot bind tcp://*:5850"),
            "{s}"
        );
        let plain = anyhow::anyhow!("inner").context("outer");
        assert_eq!(render(&plain), "outer: inner");
    }

    #[test]
    fn codes_follow_the_table() {
        let remote = anyhow::Error::new(ClientError::NotFound("relay x".into()));
        assert_eq!(code_of(&remote), REMOTE);
        let timeout = anyhow::Error::new(ClientError::Timeout {
            target: "broker".into(),
            method: "hello".into(),
            after: std::time::Duration::from_secs(1),
        })
        .context("broker at tcp://127.0.0.1:1");
        assert_eq!(code_of(&timeout), UNREACHABLE);
        assert_eq!(code_of(&anyhow::anyhow!("no such file")), LOCAL);
        assert_eq!(code_of(&unreachable("x").context("y")), UNREACHABLE);
        let t = anyhow::Error::new(ClientError::Transfer(TransferError::Timeout(
            std::time::Duration::from_secs(1),
        )))
        .context("bank b");
        assert_eq!(code_of(&t), UNREACHABLE);
    }
}
