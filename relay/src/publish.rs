//! What a relay publishes: each instrument's `state.<relay_id>` messages
//! (built here) and stream samples (built in `streams`), carried by the
//! relay process's one PUB socket to the broker's XSUB.
//!
//! The queue to the PUB task is bounded in messages and in bytes: a
//! waveform stream faster than the socket loses samples (the subscribers
//! see the seq gap), never the relay's memory.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use labmesh_proto::mesh::{encode, StateMsg};
use labmesh_proto::topic;
use labmesh_wire::AsyncSocket;
use serde_json::Value;
use tokio::sync::mpsc;

/// Messages that may wait for the PUB socket before new ones are dropped
/// (as PUB itself drops at its high-water mark).
pub(crate) const QUEUE: usize = 1024;

/// Room left for the topic frame (and the header of a binary stream
/// sample) below the broker's bus maximum.
const TOPIC_ROOM: usize = 256;

/// Bytes that may wait for the PUB socket, all instruments together.
pub(crate) const QUEUE_BYTES: usize = 64 * labmesh_proto::limits::MIB;

/// A bus message on its way to the PUB socket: `[topic, body]` or
/// `[topic, body, extra]`.
pub(crate) struct Outgoing {
    topic: Vec<u8>,
    body: Vec<u8>,
    extra: Option<Vec<u8>>,
}

impl Outgoing {
    fn bytes(&self) -> usize {
        self.topic.len() + self.body.len() + self.extra.as_ref().map_or(0, Vec::len)
    }
}

/// The sending side of the PUB queue, shared by every instrument task.
#[derive(Clone)]
pub(crate) struct Bus {
    tx: mpsc::Sender<Outgoing>,
    queued: Arc<AtomicUsize>,
    max_body: usize,
}

/// The receiving side, owned by the PUB task.
pub(crate) struct BusRx {
    rx: mpsc::Receiver<Outgoing>,
    queued: Arc<AtomicUsize>,
}

/// A bounded PUB queue for a broker whose bus takes messages of at most
/// `bus_max_msg` bytes (`[broker] bus_max_msg`).
pub(crate) fn bus(bus_max_msg: usize) -> (Bus, BusRx) {
    let (tx, rx) = mpsc::channel(QUEUE);
    let queued = Arc::new(AtomicUsize::new(0));
    (
        Bus {
            tx,
            queued: queued.clone(),
            max_body: bus_max_msg.saturating_sub(TOPIC_ROOM),
        },
        BusRx { rx, queued },
    )
}

impl Bus {
    /// Largest body (or binary frame) the broker accepts: the broker drops
    /// a publisher's whole connection for one message above its bus
    /// maximum, which would cost every instrument of this relay its bus.
    pub(crate) fn max_body(&self) -> usize {
        self.max_body
    }

    /// Queue a message; false when the queue is full (in messages or
    /// bytes): the message is dropped, as PUB drops at its high-water mark.
    pub(crate) fn offer(&self, topic: Vec<u8>, body: Vec<u8>, extra: Option<Vec<u8>>) -> bool {
        let m = Outgoing { topic, body, extra };
        let n = m.bytes();
        if self.queued.fetch_add(n, Ordering::Relaxed) + n > QUEUE_BYTES {
            self.queued.fetch_sub(n, Ordering::Relaxed);
            return false;
        }
        if self.tx.try_send(m).is_err() {
            self.queued.fetch_sub(n, Ordering::Relaxed);
            return false;
        }
        true
    }
}

/// Builds and queues `state.<relay_id>` messages for one instrument.
pub(crate) struct StatePublisher {
    relay_id: String,
    interval: f64,
    topic: Vec<u8>,
    seq: u64,
    last: Option<Value>,
    out: Bus,
}

impl StatePublisher {
    pub(crate) fn new(relay_id: &str, interval: Duration, out: Bus) -> Self {
        StatePublisher {
            relay_id: relay_id.to_string(),
            interval: interval.as_secs_f64(),
            topic: topic::state(relay_id).into_bytes(),
            seq: 0,
            last: None,
            out,
        }
    }

    fn send(&mut self, state: Value, stale: bool) {
        let msg = StateMsg {
            relay_id: self.relay_id.clone(),
            state,
            seq: Some(self.seq),
            ts: Some(labmesh_proto::unix_now()),
            stale: stale.then_some(true),
            interval: Some(self.interval),
        };
        self.seq += 1;
        let body = encode(&msg);
        // The broker drops a publisher's whole connection for one message
        // above its bus maximum, which would cost every instrument of this
        // relay its state: such a state is not sent (the seq gap shows it).
        if body.len() > self.out.max_body() {
            labmesh_wire::warn_throttled!(relay_id = %self.relay_id, bytes = body.len(), limit = self.out.max_body(), "state message above the bus maximum not published");
            return;
        }
        // A full queue means the PUB is behind; drop, as PUB would.
        let _ = self.out.offer(self.topic.clone(), body, None);
    }

    pub(crate) fn publish(&mut self, state: Value) {
        self.last = Some(state.clone());
        self.send(state, false);
    }

    /// While a call runs, keep the bus ticking with the last known state,
    /// marked stale: subscribers see the relay alive.
    pub(crate) fn republish_stale(&mut self) {
        if let Some(s) = self.last.clone() {
            self.send(s, true);
        }
    }
}

/// The PUB task: sends every queued message, dropping at the high-water
/// mark; ends when every instrument task has dropped its sender.
pub(crate) async fn run(mut sock: AsyncSocket, mut rx: BusRx) {
    while let Some(m) = rx.rx.recv().await {
        rx.queued.fetch_sub(m.bytes(), Ordering::Relaxed);
        let sent = match m.extra {
            Some(extra) => sock.try_send_multipart(&[m.topic, m.body, extra]),
            None => sock.try_send_multipart(&[m.topic, m.body]),
        };
        match sent {
            Ok(true) => {}
            Ok(false) => tracing::debug!("state dropped at the high-water mark"),
            Err(e) => tracing::warn!(error = %e, "state publish failed"),
        }
    }
}
