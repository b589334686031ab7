//! Request/reply over a DEALER socket with many requests in flight.
//!
//! A [`DealerConn`] owns one DEALER (in its own task) connected to a broker,
//! relay or bank ROUTER. Requests that carry an `rpc_uuid` are matched to
//! their reply by that id, so concurrent calls on one connection never steal
//! each other's replies. Requests without one (`hello`) are answered in
//! order by replies without one.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use labmesh_proto::mesh::{decode_reply, encode, Reply, Request, RpcRequest};
use labmesh_proto::ErrorBody;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot, watch};

use crate::socket::{AfterError, RecvErrors};
use crate::{AsyncSocket, SocketOptions, WireError};

/// Outcome of an RPC: the remote result, or the remote error object.
pub type RpcOutcome = Result<Value, ErrorBody>;

/// What a waiter gets: the decoded reply, or why the frame carrying its
/// `rpc_uuid` was not a reply of the protocol.
type Answer = Result<Reply, String>;

enum Cmd {
    Request {
        body: Vec<u8>,
        key: Option<String>,
        reply: oneshot::Sender<Answer>,
    },
    Send {
        body: Vec<u8>,
    },
}

/// A DEALER connection; cheap to clone, all clones share the socket.
#[derive(Clone, Debug)]
pub struct DealerConn {
    tx: mpsc::Sender<Cmd>,
    endpoint: String,
    connections: watch::Receiver<u64>,
}

impl DealerConn {
    /// Connect a DEALER to `endpoint` and start its task.
    pub fn connect(
        ctx: &zmq::Context,
        endpoint: &str,
        opts: SocketOptions,
    ) -> Result<Self, WireError> {
        let mut sock = AsyncSocket::new(ctx, zmq::DEALER, opts)?;
        // Watch the connection: every (re)connect is counted, so owners can
        // re-register after the peer restarts.
        let monitor_addr = format!("inproc://labmesh-monitor-{}", new_rpc_uuid());
        let events = zmq::SocketEvent::CONNECTED.to_raw()
            | zmq::SocketEvent::DISCONNECTED.to_raw()
            | zmq::SocketEvent::MONITOR_STOPPED.to_raw();
        sock.raw().monitor(&monitor_addr, i32::from(events))?;
        let mut monitor = AsyncSocket::new(ctx, zmq::PAIR, SocketOptions::default())?;
        monitor.connect(&monitor_addr)?;
        sock.connect(endpoint)?;
        let (tx, rx) = mpsc::channel(1024);
        let (connected_tx, connections) = watch::channel(0);
        let ep = endpoint.to_string();
        let linger = Duration::from_millis(u64::try_from(opts.linger_ms.max(0)).unwrap_or(0));
        tokio::spawn(run(
            Monitored {
                sock: Some(sock),
                monitor: Some(monitor),
                linger,
            },
            rx,
            ep,
            connected_tx,
        ));
        Ok(DealerConn {
            tx,
            endpoint: endpoint.to_string(),
            connections,
        })
    }

    /// Counts successful TCP connects to the peer (0 until the first). A
    /// change after the first means the peer came back (restart, network).
    pub fn connections(&self) -> watch::Receiver<u64> {
        self.connections.clone()
    }

    /// The endpoint this connection points at.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Send a message that expects no reply (heartbeat).
    pub async fn send(&self, body: Vec<u8>) -> Result<(), WireError> {
        self.tx
            .send(Cmd::Send { body })
            .await
            .map_err(|_| WireError::Closed)
    }

    /// Send `body` and wait for its reply. `key` is the request's
    /// `rpc_uuid` (None for requests answered without one).
    pub async fn request(
        &self,
        body: Vec<u8>,
        key: Option<String>,
        timeout: Duration,
    ) -> Result<Reply, WireError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Cmd::Request { body, key, reply })
            .await
            .map_err(|_| WireError::Closed)?;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(Ok(v))) => Ok(v),
            Ok(Ok(Err(why))) => Err(WireError::MalformedReply(why)),
            Ok(Err(_)) => Err(WireError::Closed),
            Err(_) => Err(WireError::Timeout(timeout)),
        }
    }

    /// Call `method` with `params`; the reply is the result or the remote
    /// error object.
    pub async fn rpc(
        &self,
        method: &str,
        params: Value,
        password: Option<Value>,
        timeout: Duration,
    ) -> Result<RpcOutcome, WireError> {
        self.rpc_leased(method, params, password, None, timeout)
            .await
    }

    /// [`DealerConn::rpc`] carrying an instrument lease token (the rpc
    /// request's `lease` field) when `lease` is set.
    pub async fn rpc_leased(
        &self,
        method: &str,
        params: Value,
        password: Option<Value>,
        lease: Option<u64>,
        timeout: Duration,
    ) -> Result<RpcOutcome, WireError> {
        let id = new_rpc_uuid();
        let req = Request::Rpc(RpcRequest {
            rpc_uuid: Value::String(id.clone()),
            method: method.to_string(),
            params,
            password,
            lease,
        });
        match self.request(encode(&req), Some(id), timeout).await? {
            Reply::RpcResult { result, .. } => Ok(Ok(result)),
            Reply::RpcError { error, .. } | Reply::Error { error } => Ok(Err(error)),
            other => Err(WireError::MalformedReply(format!(
                "expected an rpc reply, got {}",
                String::from_utf8_lossy(&encode(&other))
            ))),
        }
    }
}

/// A fresh request id: 32 lower-case hex digits, as labmesh's `uuid4().hex`.
pub fn new_rpc_uuid() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// A DEALER and the PAIR that receives its monitor events.
///
/// libzmq 4.3 sends monitor events from its I/O thread with a *blocking*
/// send on an internal PAIR. If nobody reads that PAIR any more while the
/// monitored socket still lives (its close is asynchronous, in the reaper
/// thread), the next event, such as the disconnect of a peer that shut
/// down, blocks the context's I/O thread for ever: every socket of the
/// process stops moving (seen: a new broker in the same process that never
/// received a hello). So the DEALER is closed first, and the monitor is read
/// until libzmq says monitoring stopped.
struct Monitored {
    sock: Option<AsyncSocket>,
    monitor: Option<AsyncSocket>,
    linger: Duration,
}

impl Drop for Monitored {
    fn drop(&mut self) {
        let (sock, monitor, linger) = (self.sock.take(), self.monitor.take(), self.linger);
        // Waiting for the monitor must not hold up the caller: with a
        // runtime it is a task of its own (no thread).
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(close_monitored_async(sock, monitor, linger));
            }
            Err(_) => close_monitored(sock, monitor, linger),
        }
    }
}

fn is_monitor_stopped(frames: &[Vec<u8>]) -> bool {
    frames
        .first()
        .and_then(|b| b.get(0..2))
        .map(|e| u16::from_ne_bytes([e[0], e[1]]))
        == Some(zmq::SocketEvent::MONITOR_STOPPED.to_raw())
}

/// As [`close_monitored`], awaiting the monitor instead of blocking.
async fn close_monitored_async(
    sock: Option<AsyncSocket>,
    monitor: Option<AsyncSocket>,
    linger: Duration,
) {
    drop(sock);
    let Some(mut monitor) = monitor else {
        return;
    };
    let until = tokio::time::Instant::now() + linger + Duration::from_secs(2);
    loop {
        match tokio::time::timeout_at(until, monitor.recv_multipart()).await {
            Ok(Ok(f)) if is_monitor_stopped(&f) => return,
            Ok(Ok(_)) => {}
            Ok(Err(_)) => return,
            Err(_) => {
                tracing::warn!("dealer monitor did not stop in time");
                return;
            }
        }
    }
}

/// Close `sock`, then read `monitor` until libzmq says monitoring stopped.
fn close_monitored(sock: Option<AsyncSocket>, monitor: Option<AsyncSocket>, linger: Duration) {
    drop(sock);
    let Some(monitor) = monitor else {
        return;
    };
    let raw = monitor.raw();
    if raw.set_rcvtimeo(20).is_err() {
        return;
    }
    // The socket is destroyed at the latest when its linger ends.
    let until = std::time::Instant::now() + linger + Duration::from_secs(2);
    while std::time::Instant::now() < until {
        match raw.recv_multipart(0) {
            Ok(f) if is_monitor_stopped(&f) => return,
            Ok(_) => {}
            Err(zmq::Error::EAGAIN) | Err(zmq::Error::EINTR) => {}
            Err(_) => return,
        }
    }
    tracing::warn!("dealer monitor did not stop in time");
}

async fn run(
    mut watched: Monitored,
    mut rx: mpsc::Receiver<Cmd>,
    endpoint: String,
    connected: watch::Sender<u64>,
) {
    let (Some(sock), Some(monitor)) = (watched.sock.as_mut(), watched.monitor.as_mut()) else {
        return;
    };
    let mut keyed: HashMap<String, oneshot::Sender<Answer>> = HashMap::new();
    let mut unkeyed: VecDeque<oneshot::Sender<Answer>> = VecDeque::new();
    let mut errors = RecvErrors::new("dealer");
    loop {
        tokio::select! {
            cmd = rx.recv() => {
                let Some(cmd) = cmd else { break };
                let body = match cmd {
                    Cmd::Request { body, key, reply } => {
                        match key {
                            Some(k) => {
                                if keyed.len() >= 256 {
                                    // Drop waiters whose callers timed out.
                                    keyed.retain(|_, tx| !tx.is_closed());
                                }
                                keyed.insert(k, reply);
                            }
                            None => {
                                unkeyed.retain(|tx| !tx.is_closed());
                                unkeyed.push_back(reply);
                            }
                        }
                        body
                    }
                    Cmd::Send { body } => body,
                };
                if let Err(e) = sock.send_multipart([body]).await {
                    tracing::warn!(%endpoint, error = %e, "send failed");
                }
            }
            ev = monitor.recv_multipart() => {
                let ev = match ev {
                    Ok(f) => Ok(f),
                    Err(e) => match errors.failed(&e).await {
                        AfterError::Retry => Err(e),
                        AfterError::Stop => break,
                    },
                };
                // First frame: u16 event (native endian) + u32 value.
                let event = ev.ok().and_then(|f| f.first().and_then(|b| b.get(0..2).map(|e| u16::from_ne_bytes([e[0], e[1]]))));
                match event {
                    Some(e) if e == zmq::SocketEvent::CONNECTED.to_raw() => {
                        tracing::debug!(%endpoint, "connected");
                        connected.send_modify(|n| *n += 1);
                    }
                    Some(e) if e == zmq::SocketEvent::DISCONNECTED.to_raw() => {
                        tracing::debug!(%endpoint, "disconnected");
                    }
                    _ => {}
                }
            }
            frames = sock.recv_multipart() => {
                let frames = match frames {
                    Ok(f) => {
                        errors.ok();
                        f
                    }
                    Err(e) => match errors.failed(&e).await {
                        AfterError::Retry => continue,
                        AfterError::Stop => break,
                    },
                };
                let Some(first) = frames.first() else { continue };
                // Decoded once, into the typed reply the waiter gets.
                let (key, answer) = match decode_reply(first) {
                    Ok(r) => (r.rpc_uuid().map(str::to_string), Ok(r)),
                    Err(failure) => {
                        crate::warn_throttled!(%endpoint, %failure, "a frame that is not a reply");
                        // Only the failure path looks again, for the id of
                        // the caller to tell.
                        match serde_json::from_slice::<Value>(first)
                            .ok()
                            .and_then(|v| v.get("rpc_uuid").and_then(Value::as_str).map(str::to_string))
                        {
                            Some(k) => (Some(k), Err(failure.to_string())),
                            None => continue,
                        }
                    }
                };
                let waiter = match key {
                    Some(k) => keyed.remove(&k),
                    None => loop {
                        match unkeyed.pop_front() {
                            Some(tx) if tx.is_closed() => continue,
                            other => break other,
                        }
                    },
                };
                match waiter {
                    Some(tx) => { let _ = tx.send(answer); }
                    None => tracing::debug!(%endpoint, "reply with no waiter (late or unsolicited)"),
                }
            }
        }
    }
}
