//! Fan-out of bus messages to WebSocket connections.
//!
//! Each message is serialised once ([`Utf8Bytes`] is reference-counted, so
//! a copy per browser is a pointer). Every connection has its own queue,
//! bounded in bytes; when a message does not fit, the oldest queued ones
//! are dropped (and counted) until it does. Publishing never waits for a
//! browser, so one slow browser only loses its own messages.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::ws::Utf8Bytes;
use serde::Serialize;
use tokio::sync::Notify;

use crate::metrics::Metrics;

/// What one connection's queue holds and has done.
#[derive(Default)]
struct Queue {
    items: VecDeque<Utf8Bytes>,
    bytes: usize,
    dropped: u64,
    sent: u64,
    closed: bool,
}

/// One WebSocket connection as the hub sees it.
pub struct Conn {
    /// Connection number (for logs and `/api/web`).
    pub id: u64,
    /// The browser's address.
    pub peer: SocketAddr,
    q: Mutex<Queue>,
    notify: Notify,
    /// Relays whose stream samples this connection wants.
    samples_of: Mutex<HashSet<String>>,
    budget: usize,
}

/// A connection's counters (`GET /api/web`).
#[derive(Debug, Clone, Serialize)]
pub struct ConnStats {
    /// Connection number.
    pub id: u64,
    /// The browser's address.
    pub peer: String,
    /// Messages written.
    pub sent: u64,
    /// Messages dropped because the queue was full.
    pub dropped: u64,
    /// Messages waiting.
    pub queued: usize,
    /// Bytes waiting (at most the per-connection budget).
    pub queued_bytes: usize,
}

impl Conn {
    fn push(&self, msg: &Utf8Bytes) -> u64 {
        let len = msg.len();
        let Ok(mut q) = self.q.lock() else { return 0 };
        if q.closed {
            return 0;
        }
        let mut dropped = 0;
        if len > self.budget {
            q.dropped += 1;
            return 1;
        }
        while q.bytes + len > self.budget {
            match q.items.pop_front() {
                Some(old) => {
                    q.bytes -= old.len();
                    dropped += 1;
                }
                None => break,
            }
        }
        q.dropped += dropped;
        q.bytes += len;
        q.items.push_back(msg.clone());
        drop(q);
        self.notify.notify_one();
        dropped
    }

    /// The next message to write, waiting for one; `None` once closed.
    /// Also returns the drop count so far (to tell the browser).
    pub async fn next(&self) -> Option<(Utf8Bytes, u64)> {
        loop {
            {
                let Ok(mut q) = self.q.lock() else {
                    return None;
                };
                if q.closed {
                    return None;
                }
                if let Some(m) = q.items.pop_front() {
                    q.bytes -= m.len();
                    q.sent += 1;
                    return Some((m, q.dropped));
                }
            }
            self.notify.notified().await;
        }
    }

    /// Ask for `relay_id`'s stream samples too.
    pub fn watch(&self, relay_id: &str) {
        if let Ok(mut s) = self.samples_of.lock() {
            if s.len() < 64 {
                s.insert(relay_id.to_string());
            }
        }
    }

    /// Stop asking for any relay's samples.
    pub fn unwatch_all(&self) {
        if let Ok(mut s) = self.samples_of.lock() {
            s.clear();
        }
    }

    fn wants_samples_of(&self, relay_id: &str) -> bool {
        self.samples_of
            .lock()
            .map(|s| s.contains(relay_id))
            .unwrap_or(false)
    }

    /// Counters now.
    pub fn stats(&self) -> ConnStats {
        let (sent, dropped, queued, queued_bytes) = self
            .q
            .lock()
            .map(|q| (q.sent, q.dropped, q.items.len(), q.bytes))
            .unwrap_or_default();
        ConnStats {
            id: self.id,
            peer: self.peer.to_string(),
            sent,
            dropped,
            queued,
            queued_bytes,
        }
    }

    fn close(&self) {
        if let Ok(mut q) = self.q.lock() {
            q.closed = true;
            q.items.clear();
            q.bytes = 0;
        }
        self.notify.notify_one();
    }
}

/// Every open connection.
pub struct Hub {
    conns: Mutex<HashMap<u64, Arc<Conn>>>,
    next: AtomicU64,
    budget: usize,
    max: usize,
    metrics: Arc<Metrics>,
}

impl Hub {
    /// A hub with `budget` bytes of queue per connection and at most `max`
    /// connections.
    pub fn new(budget: usize, max: usize, metrics: Arc<Metrics>) -> Hub {
        Hub {
            conns: Mutex::new(HashMap::new()),
            next: AtomicU64::new(1),
            budget: budget.max(1024),
            max,
            metrics,
        }
    }

    /// Register a connection; `None` when the hub is full.
    pub fn join(&self, peer: SocketAddr) -> Option<Arc<Conn>> {
        let mut m = self.conns.lock().ok()?;
        if m.len() >= self.max {
            self.metrics.ws_refused.inc();
            return None;
        }
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let c = Arc::new(Conn {
            id,
            peer,
            q: Mutex::new(Queue::default()),
            notify: Notify::new(),
            samples_of: Mutex::new(HashSet::new()),
            budget: self.budget,
        });
        m.insert(id, c.clone());
        self.metrics.ws_accepted.inc();
        self.metrics.ws_connections.set(m.len() as i64);
        Some(c)
    }

    /// Forget a connection (its queue is freed).
    pub fn leave(&self, conn: &Conn) {
        conn.close();
        if let Ok(mut m) = self.conns.lock() {
            m.remove(&conn.id);
            self.metrics.ws_connections.set(m.len() as i64);
        }
    }

    /// Queue `msg` for every connection (stream samples only for those
    /// watching `samples_of`).
    pub fn publish(&self, msg: Utf8Bytes, samples_of: Option<&str>) {
        let conns: Vec<Arc<Conn>> = match self.conns.lock() {
            Ok(m) => m.values().cloned().collect(),
            Err(_) => return,
        };
        for c in conns {
            if let Some(r) = samples_of {
                if !c.wants_samples_of(r) {
                    continue;
                }
            }
            // Counted per connection as it happens, so the total never
            // lags a connection's own count by more than this one push.
            let dropped = c.push(&msg);
            if dropped > 0 {
                self.metrics.ws_dropped.inc_by(dropped);
            }
        }
    }

    /// Every connection's counters, by id.
    pub fn stats(&self) -> Vec<ConnStats> {
        let mut v: Vec<ConnStats> = match self.conns.lock() {
            Ok(m) => m.values().map(|c| c.stats()).collect(),
            Err(_) => Vec::new(),
        };
        v.sort_by_key(|s| s.id);
        v
    }

    /// The per-connection queue budget in bytes.
    pub fn budget(&self) -> usize {
        self.budget
    }
}
