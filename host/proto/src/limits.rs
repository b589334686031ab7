//! Sizes and deadlines every node agrees on, in one place.
//!
//! Memory caps are in bytes; a peer that sends more is refused (the socket
//! drops the frame, or the node answers 400/413-style errors). Deadlines are
//! chained: a client waits longer than a relay lets an instrument take, so
//! the relay's 408 reaches the caller before the caller gives up.

use std::time::Duration;

/// One MiB.
pub const MIB: usize = 1024 * 1024;

/// Largest request a relay accepts on its RPC socket (ZMQ_MAXMSGSIZE).
pub const MAX_RPC_MSG: usize = 16 * MIB;
/// Largest request the broker's directory accepts.
pub const MAX_DIRECTORY_MSG: usize = MIB;
/// Largest request a bank's retrieve socket accepts (gets, credits, queries).
pub const MAX_RETRIEVE_REQUEST: usize = MIB;
/// Default largest inbound message of any other socket.
pub const DEFAULT_MAX_MSG: usize = 64 * MIB;
/// Largest message a transfer client accepts from a bank (a chunk).
pub const MAX_TRANSFER_MSG: usize = 1024 * MIB;
/// Largest upload chunk a bank accepts by default.
pub const DEFAULT_MAX_CHUNK: usize = 16 * MIB;
/// Largest upload chunk a relay or client may be configured to send.
pub const MAX_UPLOAD_CHUNK: usize = 64 * MIB;
/// Upload chunk size used when none is configured (labmesh's 1 MB).
pub const DEFAULT_UPLOAD_CHUNK: usize = 1_000_000;
/// Download chunk size a bank uses when the client names none.
pub const DEFAULT_RETRIEVE_CHUNK: usize = 1_000_000;
/// Largest SCPI reply line or block a session reads.
pub const MAX_SCPI_REPLY: usize = 16 * MIB;

/// Longest relay or bank id (the dataset-id rule: 1..=128 of
/// `[A-Za-z0-9._-]`, see [`crate::mesh::valid_node_id`]).
pub const MAX_NODE_ID: usize = 128;
/// Longest endpoint a node may register (`tcp://host:port`).
pub const MAX_ENDPOINT: usize = 256;
/// Registrations (relays plus banks) a broker keeps by default; a hello
/// beyond it is refused (503), so directory replies stay bounded:
/// `MAX_REGISTRATIONS × (MAX_NODE_ID + 2 × MAX_ENDPOINT + 64)` ≈ 2.6 MiB.
pub const DEFAULT_MAX_REGISTRATIONS: usize = 4096;
/// Largest message a publisher may put on the bus (the broker's XSUB drops
/// the connection of a publisher that sends more, as libzmq does).
pub const DEFAULT_BUS_MAX_MSG: usize = 64 * 1024;
/// Bytes the broker may queue for one slow bus peer: its high-water mark is
/// `min(hwm, BUS_BUDGET / bus_max_msg)` messages.
pub const DEFAULT_BUS_BUDGET: usize = 64 * MIB;
/// Upload sessions a bank keeps open at once, all peers together
/// (`[bank] max_upload_sessions`); each holds one open part file.
pub const DEFAULT_MAX_UPLOAD_SESSIONS: usize = 256;
/// Upload sessions one peer (ZeroMQ identity) may hold open at once
/// (`[bank] max_upload_sessions_per_peer`).
pub const DEFAULT_MAX_UPLOAD_SESSIONS_PER_PEER: usize = 16;
/// Bytes all unfinished uploads of a bank may hold on disk, suspended ones
/// included (`[bank] partial_quota_bytes`); also the largest single upload.
pub const DEFAULT_PARTIAL_QUOTA: u64 = 64 * 1024 * MIB as u64;
/// Downloads a bank serves at once, all peers together
/// (`[bank] max_downloads`).
pub const DEFAULT_MAX_DOWNLOADS: usize = 64;
/// Downloads one peer may run at once (`[bank] max_downloads_per_peer`).
pub const DEFAULT_MAX_DOWNLOADS_PER_PEER: usize = 8;
/// Bytes a bank reads ahead for one credit-mode download: credit is capped
/// at this divided by the chunk size (`[bank] download_buffer_bytes`).
pub const DEFAULT_DOWNLOAD_BUFFER: usize = 8 * MIB;

/// How long a relay lets one instrument call or poll take before it answers
/// 408 (per instrument: `call_timeout`).
pub const DEFAULT_CALL_DEADLINE: Duration = Duration::from_secs(10);
/// What a client adds to the relay's deadline so the relay's own answer
/// (a result or its 408) arrives before the client stops waiting.
pub const CLIENT_MARGIN: Duration = Duration::from_secs(5);
/// A client's default deadline for one call: the relay's deadline plus the
/// margin.
pub const DEFAULT_CLIENT_TIMEOUT: Duration = DEFAULT_CALL_DEADLINE.saturating_add(CLIENT_MARGIN);
/// How long an uploader waits for one bank answer.
pub const DEFAULT_UPLOAD_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a downloader waits for one bank answer.
pub const DEFAULT_DOWNLOAD_TIMEOUT: Duration = Duration::from_secs(30);
/// Seconds without a sign of life before the broker expires a node.
pub const DEFAULT_TTL: Duration = Duration::from_secs(30);
/// Interval between heartbeats of relays and banks.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(5);

// The relations above, checked when the crate compiles.
const _: () = assert!(DEFAULT_CLIENT_TIMEOUT.as_nanos() > DEFAULT_CALL_DEADLINE.as_nanos());
const _: () = assert!(DEFAULT_MAX_CHUNK <= MAX_UPLOAD_CHUNK);
const _: () = assert!(MAX_UPLOAD_CHUNK < MAX_TRANSFER_MSG);
const _: () = assert!(MAX_RPC_MSG <= DEFAULT_MAX_MSG);
const _: () = assert!(
    DEFAULT_MAX_REGISTRATIONS * (MAX_NODE_ID + 2 * MAX_ENDPOINT + 64) < MAX_DIRECTORY_REPLY
);

/// The largest directory reply a client must accept (a full relay list).
pub const MAX_DIRECTORY_REPLY: usize = 4 * MIB;
const _: () = assert!(DEFAULT_MAX_UPLOAD_SESSIONS_PER_PEER <= DEFAULT_MAX_UPLOAD_SESSIONS);
const _: () = assert!(DEFAULT_MAX_DOWNLOADS_PER_PEER <= DEFAULT_MAX_DOWNLOADS);
const _: () = assert!(DEFAULT_DOWNLOAD_BUFFER >= DEFAULT_RETRIEVE_CHUNK);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_waits_longer_than_the_relay() {
        assert_eq!(DEFAULT_CLIENT_TIMEOUT, Duration::from_secs(15));
        assert_eq!(
            DEFAULT_CLIENT_TIMEOUT - DEFAULT_CALL_DEADLINE,
            CLIENT_MARGIN
        );
    }
}
