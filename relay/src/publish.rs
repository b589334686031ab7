//! What a relay publishes: each instrument's `state.<relay_id>` messages,
//! built here and carried by the relay process's one PUB socket to the
//! broker's XSUB.

use std::time::Duration;

use labmesh_proto::mesh::{encode, StateMsg};
use labmesh_proto::topic;
use labmesh_wire::AsyncSocket;
use serde_json::Value;
use tokio::sync::mpsc;

/// Messages that may wait for the PUB socket before new ones are dropped
/// (as PUB itself drops at its high-water mark).
pub(crate) const QUEUE: usize = 1024;

/// Largest state message a relay publishes: the broker's default bus
/// maximum (`[broker] bus_max_msg`), less room for the topic frame.
pub(crate) const MAX_STATE_BYTES: usize = labmesh_proto::limits::DEFAULT_BUS_MAX_MSG - 256;

/// A state message on its way to the PUB socket.
pub(crate) struct Outgoing {
    topic: Vec<u8>,
    body: Vec<u8>,
}

impl Outgoing {
    /// A message for `topic` (for other families than `state.`: `lock.`).
    pub(crate) fn new(topic: Vec<u8>, body: Vec<u8>) -> Self {
        Outgoing { topic, body }
    }

    #[cfg(test)]
    pub(crate) fn topic(&self) -> &[u8] {
        &self.topic
    }

    #[cfg(test)]
    pub(crate) fn body(&self) -> &[u8] {
        &self.body
    }
}

/// Builds and queues `state.<relay_id>` messages for one instrument.
pub(crate) struct StatePublisher {
    relay_id: String,
    interval: f64,
    topic: Vec<u8>,
    seq: u64,
    last: Option<Value>,
    out: mpsc::Sender<Outgoing>,
}

impl StatePublisher {
    pub(crate) fn new(relay_id: &str, interval: Duration, out: mpsc::Sender<Outgoing>) -> Self {
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
        if body.len() > MAX_STATE_BYTES {
            labmesh_wire::warn_throttled!(relay_id = %self.relay_id, bytes = body.len(), limit = MAX_STATE_BYTES, "state message above the bus maximum not published");
            return;
        }
        // A full queue means the PUB is behind; drop, as PUB would.
        let _ = self.out.try_send(Outgoing {
            topic: self.topic.clone(),
            body,
        });
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
pub(crate) async fn run(mut sock: AsyncSocket, mut rx: mpsc::Receiver<Outgoing>) {
    while let Some(m) = rx.recv().await {
        match sock.try_send_multipart(&[m.topic, m.body]) {
            Ok(true) => {}
            Ok(false) => tracing::debug!("state dropped at the high-water mark"),
            Err(e) => tracing::warn!(error = %e, "state publish failed"),
        }
    }
}
