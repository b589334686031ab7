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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use labmesh_wire::SocketOptions;
    use std::time::Duration;

    /// A mandatory ROUTER with a small send queue, and a DEALER (small
    /// receive side) whose identity the ROUTER has learned.
    async fn pair(ctx: &zmq::Context) -> (AsyncSocket, zmq::Socket, Vec<u8>) {
        let opts = SocketOptions {
            sndhwm: 10,
            ..SocketOptions::default()
        };
        let mut router = AsyncSocket::new(ctx, zmq::ROUTER, opts).unwrap();
        router.raw().set_router_mandatory(true).unwrap();
        let ep = router.bind("tcp://127.0.0.1:*").unwrap();
        let dealer = ctx.socket(zmq::DEALER).unwrap();
        dealer.set_linger(0).unwrap();
        dealer.set_rcvhwm(1).unwrap();
        dealer.set_rcvbuf(4096).unwrap();
        dealer.connect(&ep).unwrap();
        dealer.send("hi", 0).unwrap();
        let frames = tokio::time::timeout(Duration::from_secs(10), router.recv_multipart())
            .await
            .unwrap()
            .unwrap();
        (router, dealer, frames[0].clone())
    }

    /// Flush on every signal (and every 20 ms) until the outbox is empty.
    async fn drain(outbox: &mut Outbox, router: &mut AsyncSocket) {
        tokio::time::timeout(Duration::from_secs(20), async {
            while !outbox.is_empty() {
                let _ =
                    tokio::time::timeout(Duration::from_millis(20), router.recv_or_signal()).await;
                outbox.flush(router);
            }
        })
        .await
        .expect("outbox did not drain");
    }

    #[tokio::test]
    async fn replies_to_a_full_pipe_wait_in_order_and_all_arrive() {
        let ctx = zmq::Context::new();
        let (mut router, dealer, ident) = pair(&ctx).await;
        let mut outbox = Outbox::new("t");
        let n = 3000;
        for i in 0..n {
            outbox.send(&mut router, &ident, format!("{i:01000}").into_bytes());
        }
        assert!(!outbox.is_empty(), "3 MB should not fit in the pipe");
        let reader = std::thread::spawn(move || {
            (0..n)
                .map(|_| {
                    assert!(
                        dealer.poll(zmq::POLLIN, 10_000).unwrap() > 0,
                        "reply missing"
                    );
                    dealer.recv_bytes(0).unwrap()
                })
                .collect::<Vec<_>>()
        });
        drain(&mut outbox, &mut router).await;
        let got = tokio::task::spawn_blocking(move || reader.join().unwrap())
            .await
            .unwrap();
        for (i, body) in got.iter().enumerate() {
            assert_eq!(body, format!("{i:01000}").as_bytes());
        }
        assert_eq!(outbox.bytes, 0);
    }

    #[tokio::test]
    async fn a_peer_that_has_gone_loses_its_queue() {
        let ctx = zmq::Context::new();
        let (mut router, dealer, ident) = pair(&ctx).await;
        let mut outbox = Outbox::new("t");
        for i in 0..3000 {
            outbox.send(&mut router, &ident, format!("{i:01000}").into_bytes());
        }
        assert!(!outbox.is_empty());
        drop(dealer);
        drain(&mut outbox, &mut router).await;
        assert_eq!(outbox.bytes, 0);
    }

    #[tokio::test]
    async fn a_peer_over_its_bound_is_told_how_many_replies_were_dropped() {
        let ctx = zmq::Context::new();
        let (mut router, dealer, ident) = pair(&ctx).await;
        let mut outbox = Outbox::new("t");
        let body = vec![b'x'; 64 * 1024];
        let n = PEER_BYTES / body.len() * 2;
        for _ in 0..n {
            outbox.send(&mut router, &ident, body.clone());
        }
        assert!(outbox.bytes <= PEER_BYTES);
        let reader = std::thread::spawn(move || {
            let mut replies = 0;
            loop {
                assert!(dealer.poll(zmq::POLLIN, 10_000).unwrap() > 0, "no notice");
                let m = dealer.recv_bytes(0).unwrap();
                if m.first() == Some(&b'{') {
                    return (replies, String::from_utf8(m).unwrap());
                }
                replies += 1;
            }
        });
        drain(&mut outbox, &mut router).await;
        let (replies, notice) = tokio::task::spawn_blocking(move || reader.join().unwrap())
            .await
            .unwrap();
        assert!(replies < n);
        assert!(
            notice.contains("\"code\":503")
                && notice.contains(&format!("{} replies dropped", n - replies)),
            "{notice}"
        );
    }
}
