//! Request/reply over a DEALER socket with many requests in flight.
//!
//! A [`DealerConn`] owns one DEALER (in its own task) connected to a broker,
//! relay or bank ROUTER. Requests that carry an `rpc_uuid` are matched to
//! their reply by that id, so concurrent calls on one connection never steal
//! each other's replies. Requests without one (`hello`) are answered in
//! order by replies without one.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::{mpsc, oneshot, watch};

use crate::msg::{encode, RpcRequest};
use crate::{AsyncSocket, ErrorBody, SocketOptions, WireError};

/// Outcome of an RPC: the remote result, or the remote error object.
pub type RpcOutcome = Result<Value, ErrorBody>;

enum Cmd {
    Request {
        body: Vec<u8>,
        key: Option<String>,
        reply: oneshot::Sender<Value>,
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
        let events = zmq::SocketEvent::CONNECTED.to_raw() | zmq::SocketEvent::DISCONNECTED.to_raw();
        sock.raw().monitor(&monitor_addr, i32::from(events))?;
        let mut monitor = AsyncSocket::new(ctx, zmq::PAIR, SocketOptions::default())?;
        monitor.connect(&monitor_addr)?;
        sock.connect(endpoint)?;
        let (tx, rx) = mpsc::channel(1024);
        let (connected_tx, connections) = watch::channel(0);
        let ep = endpoint.to_string();
        tokio::spawn(run(sock, monitor, rx, ep, connected_tx));
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
    ) -> Result<Value, WireError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Cmd::Request { body, key, reply })
            .await
            .map_err(|_| WireError::Closed)?;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(v)) => Ok(v),
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
        let id = new_rpc_uuid();
        let req = crate::msg::Request::Rpc(RpcRequest {
            rpc_uuid: Value::String(id.clone()),
            method: method.to_string(),
            params,
            password,
        });
        let mut reply = self.request(encode(&req), Some(id), timeout).await?;
        // Take the parts out of the parsed reply instead of re-parsing it.
        match reply.get("type").and_then(Value::as_str) {
            Some("rpc_result") => Ok(Ok(reply
                .get_mut("result")
                .map(Value::take)
                .unwrap_or(Value::Null))),
            Some("rpc_error") | Some("error") => {
                match reply
                    .get_mut("error")
                    .map(Value::take)
                    .map(serde_json::from_value::<ErrorBody>)
                {
                    Some(Ok(e)) => Ok(Err(e)),
                    _ => Err(WireError::MalformedReply(reply.to_string())),
                }
            }
            _ => Err(WireError::MalformedReply(reply.to_string())),
        }
    }
}

/// A fresh request id: 32 lower-case hex digits, as labmesh's `uuid4().hex`.
pub fn new_rpc_uuid() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

async fn run(
    mut sock: AsyncSocket,
    mut monitor: AsyncSocket,
    mut rx: mpsc::Receiver<Cmd>,
    endpoint: String,
    connected: watch::Sender<u64>,
) {
    let mut keyed: HashMap<String, oneshot::Sender<Value>> = HashMap::new();
    let mut unkeyed: VecDeque<oneshot::Sender<Value>> = VecDeque::new();
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
                    Ok(f) => f,
                    Err(e) => {
                        tracing::warn!(%endpoint, error = %e, "receive failed");
                        continue;
                    }
                };
                let Some(first) = frames.first() else { continue };
                let value: Value = match serde_json::from_slice(first) {
                    Ok(v @ Value::Object(_)) => v,
                    _ => {
                        tracing::warn!(%endpoint, bytes = first.len(), "ignoring a reply that is not a JSON object");
                        continue;
                    }
                };
                let key = value.get("rpc_uuid").and_then(Value::as_str).map(str::to_string);
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
                    Some(tx) => { let _ = tx.send(value); }
                    None => tracing::debug!(%endpoint, "reply with no waiter (late or unsolicited)"),
                }
            }
        }
    }
}
