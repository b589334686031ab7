//! Replies a peer has not taken yet.
//!
//! A ROUTER without `ZMQ_ROUTER_MANDATORY` silently drops a message for a
//! peer whose pipe is at its send high-water mark: a client that pipelined
//! 20 000 calls without reading lost the replies that did not fit in the
//! pipe and the TCP buffers, and its callers timed out. The relay's ROUTER
//! is mandatory, so a full pipe is `EAGAIN` for that one peer; its replies
//! then wait here, in order, bounded in bytes per peer and in total, and go
//! out when libzmq says the pipe has room again. Other peers never wait
//! behind a slow one (nothing here blocks).
//!
//! A peer that leaves more than [`PEER_BYTES`] unread is told so: further
//! replies are dropped and counted, and once its queue has drained it gets
//! one error message (503, no `rpc_uuid`) saying how many. A peer that has
//! gone (`EHOSTUNREACH`) loses its queue at once: nothing here outlives the
//! connection.

use std::collections::{HashMap, VecDeque};

use labmesh_proto::limits::MIB;
use labmesh_proto::mesh::{encode, Reply};
use labmesh_proto::{codes, ErrorBody};
use labmesh_wire::{AsyncSocket, WireError};

/// Unsent reply bytes one peer may have waiting.
pub(crate) const PEER_BYTES: usize = 8 * MIB;
/// Unsent reply bytes all peers of one instrument may have waiting.
pub(crate) const TOTAL_BYTES: usize = 64 * MIB;

#[derive(Default)]
struct Peer {
    queue: VecDeque<Vec<u8>>,
    bytes: usize,
    /// Replies dropped since the queue overflowed; the peer is told once
    /// the queue has drained.
    dropped: u64,
}

/// What one attempt to hand a message to libzmq did.
enum Sent {
    Yes,
    Full,
    Gone,
}

/// The waiting replies of one ROUTER's peers.
pub(crate) struct Outbox {
    relay_id: String,
    peers: HashMap<Vec<u8>, Peer>,
    bytes: usize,
}

impl Outbox {
    pub(crate) fn new(relay_id: &str) -> Self {
        Outbox {
            relay_id: relay_id.to_string(),
            peers: HashMap::new(),
            bytes: 0,
        }
    }

    /// Whether any peer has replies waiting.
    pub(crate) fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }

    /// Send `body` to `ident` now, or queue it behind that peer's earlier
    /// replies. Never waits.
    pub(crate) fn send(&mut self, router: &mut AsyncSocket, ident: &[u8], body: Vec<u8>) {
        if !self.peers.contains_key(ident) {
            match try_send(router, ident, &body) {
                Sent::Yes | Sent::Gone => return,
                Sent::Full => {}
            }
        }
        let total = self.bytes;
        let peer = self.peers.entry(ident.to_vec()).or_default();
        if peer.dropped > 0
            || peer.bytes + body.len() > PEER_BYTES
            || total + body.len() > TOTAL_BYTES
        {
            if peer.dropped == 0 {
                labmesh_wire::warn_throttled!(relay_id = %self.relay_id, queued = peer.bytes, "a peer is not reading its replies; dropping them until it has");
            }
            peer.dropped += 1;
            return;
        }
        peer.bytes += body.len();
        self.bytes += body.len();
        peer.queue.push_back(body);
    }

    /// Hand libzmq what it takes now; peers that have gone are forgotten.
    pub(crate) fn flush(&mut self, router: &mut AsyncSocket) {
        let relay_id = &self.relay_id;
        let mut freed = 0;
        self.peers.retain(|ident, peer| {
            while let Some(body) = peer.queue.front() {
                match try_send(router, ident, body) {
                    Sent::Yes => {
                        let n = body.len();
                        peer.bytes -= n;
                        freed += n;
                        peer.queue.pop_front();
                    }
                    Sent::Full => return true,
                    Sent::Gone => {
                        freed += peer.bytes;
                        return false;
                    }
                }
            }
            if peer.dropped == 0 {
                return false;
            }
            let notice = encode(&Reply::Error {
                error: ErrorBody::new(
                    codes::UNAVAILABLE,
                    format!(
                        "{relay_id}: {} replies dropped: this connection left more than {PEER_BYTES} bytes of replies unread",
                        peer.dropped
                    ),
                ),
            });
            matches!(try_send(router, ident, &notice), Sent::Full)
        });
        self.bytes -= freed;
    }
}

fn try_send(router: &mut AsyncSocket, ident: &[u8], body: &[u8]) -> Sent {
    match router.try_send_multipart(&[ident, body]) {
        Ok(true) => Sent::Yes,
        Ok(false) => Sent::Full,
        Err(WireError::Zmq(zmq::Error::EHOSTUNREACH)) => {
            tracing::debug!("reply for a peer that has gone");
            Sent::Gone
        }
        Err(e) => {
            tracing::warn!(error = %e, "reply failed");
            Sent::Gone
        }
    }
}
