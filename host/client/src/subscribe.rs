//! Subscriptions with a receive mode: stream samples and state messages.
//!
//! Each subscription has its own inbox, in one of two modes:
//!
//! * [`Receive::Cache`]: the newest value only. A value not read before the
//!   next arrives is replaced (counted in [`SubscriptionStats::replaced`]).
//! * [`Receive::Queue`]: first in, first out, up to a depth. When full, the
//!   oldest value is dropped to make room (counted in
//!   [`SubscriptionStats::dropped`], never silently).
//!
//! Either way, gaps in the publisher's sequence numbers (messages lost
//! before they reached this client: a full socket, a restarted relay) are
//! counted in [`SubscriptionStats::gaps`].
//!
//! Reading: [`Subscription::try_recv`] (never waits), [`Subscription::recv`]
//! (waits), [`Subscription::recv_timeout`] (waits at most so long).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use labmesh_proto::stream::StreamSample;
use tokio::sync::Notify;

/// How a subscription keeps what arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Receive {
    /// The newest value only.
    Cache,
    /// Every value in order, up to this many unread (at least 1); the
    /// oldest is dropped when full.
    Queue(usize),
}

/// One stream sample as received.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The header: relay, stream, seq, times, ok, value or error.
    pub header: StreamSample,
    /// A binary value (the message's third frame).
    pub binary: Option<Vec<u8>>,
}

/// Counters of one subscription.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SubscriptionStats {
    /// Values delivered to the inbox.
    pub received: u64,
    /// Queue mode: values dropped because the queue was full.
    pub dropped: u64,
    /// Cache mode: values replaced by a newer one before they were read.
    pub replaced: u64,
    /// Values the publisher sent that never arrived (sequence gaps).
    pub gaps: u64,
}

/// Why a read returned without a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RecvError {
    /// Nothing arrived in time ([`Subscription::recv_timeout`]) or nothing
    /// is waiting ([`Subscription::try_recv`]).
    #[error("nothing received")]
    Empty,
    /// The client was closed: nothing more will arrive.
    #[error("the client's bus listener stopped")]
    Closed,
}

struct InboxState<T> {
    mode: Receive,
    items: VecDeque<T>,
    stats: SubscriptionStats,
    last_seq: Option<u64>,
    closed: bool,
}

/// Where the bus listener puts what one subscription receives.
pub(crate) struct Inbox<T> {
    state: Mutex<InboxState<T>>,
    notify: Notify,
}

impl<T> Inbox<T> {
    fn new(mode: Receive) -> Self {
        let mode = match mode {
            Receive::Queue(0) => Receive::Queue(1),
            m => m,
        };
        Inbox {
            state: Mutex::new(InboxState {
                mode,
                items: VecDeque::new(),
                stats: SubscriptionStats::default(),
                last_seq: None,
                closed: false,
            }),
            notify: Notify::new(),
        }
    }

    /// Deliver `item` (with the publisher's `seq`, if it has one). An item
    /// with a seq at or below the last one delivered is older news (the
    /// seed of a late joiner that the bus already overtook) unless the seq
    /// went back far, which is a restarted publisher.
    pub(crate) fn deliver(&self, item: T, seq: Option<u64>) {
        let Ok(mut s) = self.state.lock() else { return };
        if let (Some(prev), Some(seq)) = (s.last_seq, seq) {
            if seq == prev {
                return;
            }
            if seq > prev + 1 {
                s.stats.gaps += seq - prev - 1;
            }
        }
        if seq.is_some() {
            s.last_seq = seq;
        }
        s.stats.received += 1;
        match s.mode {
            Receive::Cache => {
                if s.items.pop_front().is_some() {
                    s.stats.replaced += 1;
                }
            }
            Receive::Queue(depth) => {
                while s.items.len() >= depth {
                    s.items.pop_front();
                    s.stats.dropped += 1;
                }
            }
        }
        s.items.push_back(item);
        drop(s);
        self.notify.notify_one();
    }

    /// Deliver a late joiner's seed: only if nothing newer arrived.
    pub(crate) fn seed(&self, item: T, seq: u64) {
        let newer = self
            .state
            .lock()
            .map(|s| s.last_seq.is_some_and(|l| l >= seq))
            .unwrap_or(true);
        if !newer {
            self.deliver(item, Some(seq));
        }
    }

    pub(crate) fn close(&self) {
        if let Ok(mut s) = self.state.lock() {
            s.closed = true;
        }
        self.notify.notify_waiters();
        self.notify.notify_one();
    }

    fn take(&self) -> Result<T, RecvError> {
        let Ok(mut s) = self.state.lock() else {
            return Err(RecvError::Closed);
        };
        match s.items.pop_front() {
            Some(v) => Ok(v),
            None if s.closed => Err(RecvError::Closed),
            None => Err(RecvError::Empty),
        }
    }
}

/// A subscription's end that the caller holds. Dropping it unsubscribes.
pub struct Subscription<T> {
    inbox: Arc<Inbox<T>>,
    registry: Weak<Mutex<Registry>>,
}

impl<T> std::fmt::Debug for Subscription<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("stats", &self.stats())
            .finish()
    }
}

impl<T> Subscription<T> {
    /// The next value if one is waiting; never waits.
    pub fn try_recv(&self) -> Result<T, RecvError> {
        self.inbox.take()
    }

    /// Wait for the next value (`Err(Closed)` once the client is closed).
    pub async fn recv(&self) -> Result<T, RecvError> {
        loop {
            let notified = self.inbox.notify.notified();
            match self.inbox.take() {
                Err(RecvError::Empty) => notified.await,
                other => return other,
            }
        }
    }

    /// Wait at most `timeout` for the next value (`Err(Empty)` when none
    /// came).
    pub async fn recv_timeout(&self, timeout: Duration) -> Result<T, RecvError> {
        tokio::time::timeout(timeout, self.recv())
            .await
            .unwrap_or(Err(RecvError::Empty))
    }

    /// The counters so far.
    pub fn stats(&self) -> SubscriptionStats {
        self.inbox.state.lock().map(|s| s.stats).unwrap_or_default()
    }

    /// Values waiting to be read.
    pub fn len(&self) -> usize {
        self.inbox.state.lock().map(|s| s.items.len()).unwrap_or(0)
    }

    /// Whether nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<T> Drop for Subscription<T> {
    fn drop(&mut self) {
        // The listener prunes dead inboxes; tell it to reconcile its socket
        // subscriptions now.
        if let Some(r) = self.registry.upgrade() {
            if let Ok(r) = r.lock() {
                r.changed.notify_one();
            }
        }
    }
}

/// Every live subscription of one client, shared with its bus listener.
pub(crate) struct Registry {
    streams: HashMap<(String, String), Vec<Weak<Inbox<Sample>>>>,
    states: HashMap<String, Vec<Weak<Inbox<crate::StateUpdate>>>>,
    /// Wakes the listener to change its socket's subscriptions.
    pub(crate) changed: Arc<Notify>,
}

impl Registry {
    pub(crate) fn new() -> Self {
        Registry {
            streams: HashMap::new(),
            states: HashMap::new(),
            changed: Arc::new(Notify::new()),
        }
    }

    /// The stream topics someone still listens to.
    pub(crate) fn wanted_streams(&mut self) -> Vec<(String, String)> {
        self.streams.retain(|_, v| {
            v.retain(|w| w.strong_count() > 0);
            !v.is_empty()
        });
        self.streams.keys().cloned().collect()
    }

    pub(crate) fn deliver_sample(&mut self, s: Sample) {
        let key = (s.header.relay_id.clone(), s.header.stream.clone());
        let Some(v) = self.streams.get_mut(&key) else {
            return;
        };
        v.retain(|w| w.strong_count() > 0);
        let seq = s.header.seq;
        // The last inbox takes the sample itself; the others a copy.
        let live: Vec<_> = v.iter().filter_map(Weak::upgrade).collect();
        if let Some((last, rest)) = live.split_last() {
            for i in rest {
                i.deliver(s.clone(), Some(seq));
            }
            last.deliver(s, Some(seq));
        }
    }

    pub(crate) fn deliver_state(&mut self, u: &crate::StateUpdate) {
        let Some(v) = self.states.get_mut(&u.relay_id) else {
            return;
        };
        v.retain(|w| w.strong_count() > 0);
        for i in v.iter().filter_map(Weak::upgrade) {
            i.deliver(u.clone(), u.seq);
        }
    }

    /// The client stopped listening: every reader is told.
    pub(crate) fn close_all(&mut self) {
        for i in self.streams.values().flatten().filter_map(Weak::upgrade) {
            i.close();
        }
        for i in self.states.values().flatten().filter_map(Weak::upgrade) {
            i.close();
        }
    }
}

pub(crate) fn add_stream(
    registry: &Arc<Mutex<Registry>>,
    relay_id: &str,
    stream: &str,
    mode: Receive,
) -> Subscription<Sample> {
    let inbox = Arc::new(Inbox::new(mode));
    if let Ok(mut r) = registry.lock() {
        r.streams
            .entry((relay_id.to_string(), stream.to_string()))
            .or_default()
            .push(Arc::downgrade(&inbox));
        r.changed.notify_one();
    }
    Subscription {
        inbox,
        registry: Arc::downgrade(registry),
    }
}

pub(crate) fn add_state(
    registry: &Arc<Mutex<Registry>>,
    relay_id: &str,
    mode: Receive,
) -> Subscription<crate::StateUpdate> {
    let inbox = Arc::new(Inbox::new(mode));
    if let Ok(mut r) = registry.lock() {
        r.states
            .entry(relay_id.to_string())
            .or_default()
            .push(Arc::downgrade(&inbox));
    }
    Subscription {
        inbox,
        registry: Arc::downgrade(registry),
    }
}

impl<T> Subscription<T> {
    pub(crate) fn inbox(&self) -> &Inbox<T> {
        &self.inbox
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sub(mode: Receive) -> Subscription<u64> {
        Subscription {
            inbox: Arc::new(Inbox::new(mode)),
            registry: Weak::new(),
        }
    }

    #[test]
    fn cache_keeps_the_newest_and_counts_replacements() {
        let s = sub(Receive::Cache);
        for seq in 0..5 {
            s.inbox().deliver(seq, Some(seq));
        }
        assert_eq!(s.try_recv(), Ok(4));
        assert_eq!(s.try_recv(), Err(RecvError::Empty));
        let st = s.stats();
        assert_eq!(
            (st.received, st.replaced, st.dropped, st.gaps),
            (5, 4, 0, 0)
        );
    }

    #[test]
    fn queue_is_fifo_and_counts_drops_and_gaps() {
        let s = sub(Receive::Queue(3));
        for seq in [0, 1, 2, 3, 4, 7] {
            s.inbox().deliver(seq, Some(seq));
        }
        assert_eq!(s.try_recv(), Ok(3));
        assert_eq!(s.try_recv(), Ok(4));
        assert_eq!(s.try_recv(), Ok(7));
        assert_eq!(s.try_recv(), Err(RecvError::Empty));
        let st = s.stats();
        assert_eq!((st.received, st.dropped, st.gaps), (6, 3, 2));
    }

    #[test]
    fn a_seed_older_than_the_bus_is_ignored_and_a_duplicate_too() {
        let s = sub(Receive::Queue(10));
        s.inbox().deliver(5, Some(5));
        s.inbox().seed(4, 4);
        s.inbox().deliver(5, Some(5));
        assert_eq!(s.len(), 1);
        let fresh = sub(Receive::Queue(10));
        fresh.inbox().seed(9, 9);
        fresh.inbox().deliver(10, Some(10));
        assert_eq!(fresh.try_recv(), Ok(9));
        assert_eq!(fresh.try_recv(), Ok(10));
        assert_eq!(fresh.stats().gaps, 0);
    }

    #[tokio::test]
    async fn blocking_reads_wake_and_time_out_and_close() {
        let s = sub(Receive::Queue(4));
        assert_eq!(
            s.recv_timeout(Duration::from_millis(20)).await,
            Err(RecvError::Empty)
        );
        let inbox = s.inbox.clone();
        let t = tokio::spawn(async move {
            tokio::task::yield_now().await;
            inbox.deliver(1, Some(0));
            inbox.close();
        });
        assert_eq!(s.recv_timeout(Duration::from_secs(5)).await, Ok(1));
        t.await.unwrap();
        assert_eq!(s.recv().await, Err(RecvError::Closed));
    }
}
