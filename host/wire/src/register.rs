//! Staying registered with the broker, for relays and banks alike.
//!
//! [`keep_registered`] sends each node's `hello` and checks the ack,
//! retrying with backoff (100 ms doubling to 5 s) until the broker accepts;
//! then it heartbeats. It registers again when
//!
//! * the DEALER reconnects to the broker (a restarted broker is seen within
//!   libzmq's reconnect interval, 100 ms), or
//! * a Rust broker's heartbeat ack says it does not know the node (it
//!   expired it), or
//! * the broker stops answering (registration resumes when it is back).
//!
//! A labmesh v0 broker never answers heartbeats; that is detected with one
//! `ping` and heartbeats continue unacknowledged. On stop, each node says
//! `bye` so the broker lists it offline at once.

use std::time::Duration;

use serde_json::Value;
use tokio::sync::watch;

use crate::auth::Password;
use crate::dealer::new_rpc_uuid;
use crate::{DealerConn, WireError};
use labmesh_proto::lm;
use labmesh_proto::mesh::{encode, Bye, Heartbeat, Hello, Reply, Request, Role};

const REPLY_TIMEOUT: Duration = Duration::from_secs(2);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// One node to keep registered.
#[derive(Debug, Clone)]
pub struct Registrant {
    /// Name for logs (`relay psu-1`).
    pub label: String,
    /// The hello to send.
    pub hello: Hello,
    /// The heartbeat to send (its `rpc_uuid` is filled per beat).
    pub heartbeat: Heartbeat,
    /// The goodbye to send on stop.
    pub bye: Bye,
}

impl Registrant {
    /// A relay serving RPC at `rpc_endpoint`.
    pub fn relay(relay_id: &str, rpc_endpoint: &str, password: &Password) -> Self {
        Registrant {
            label: format!("relay {relay_id}"),
            hello: Hello {
                role: Some(Role::Relay),
                relay_id: Some(relay_id.into()),
                rpc_endpoint: Some(rpc_endpoint.into()),
                password: password.to_field(),
                ..Hello::default()
            },
            heartbeat: Heartbeat {
                role: Some(Role::Relay),
                relay_id: Some(relay_id.into()),
                password: password.to_field(),
                rpc_endpoint: Some(rpc_endpoint.into()),
                ..Heartbeat::default()
            },
            bye: Bye {
                role: Some(Role::Relay),
                relay_id: Some(relay_id.into()),
                password: password.to_field(),
                ..Bye::default()
            },
        }
    }

    /// A bank with its ingest and retrieve endpoints.
    pub fn bank(bank_id: &str, ingest: &str, retrieve: &str, password: &Password) -> Self {
        Registrant {
            label: format!("bank {bank_id}"),
            hello: Hello {
                role: Some(Role::Bank),
                bank_id: Some(bank_id.into()),
                ingest: Some(ingest.into()),
                retrieve: Some(retrieve.into()),
                password: password.to_field(),
                ..Hello::default()
            },
            heartbeat: Heartbeat {
                role: Some(Role::Bank),
                bank_id: Some(bank_id.into()),
                password: password.to_field(),
                ..Heartbeat::default()
            },
            bye: Bye {
                role: Some(Role::Bank),
                bank_id: Some(bank_id.into()),
                password: password.to_field(),
                ..Bye::default()
            },
        }
    }
}

/// What the broker said to a hello.
#[derive(Debug)]
enum HelloOutcome {
    /// Registered; the broker's registration token, if it hands one out.
    Accepted(Option<String>),
    Refused(String),
}

async fn hello(conn: &DealerConn, node: &Registrant) -> Result<HelloOutcome, WireError> {
    let reply = conn
        .request(
            encode(&Request::Hello(node.hello.clone())),
            None,
            REPLY_TIMEOUT,
        )
        .await?;
    Ok(match reply {
        Reply::Hello(ack) if ack.ok => HelloOutcome::Accepted(ack.token),
        Reply::Hello(ack) => HelloOutcome::Refused(
            ack.error
                .map(|e| e.to_string())
                .unwrap_or_else(|| "refused".into()),
        ),
        Reply::Error { error } => HelloOutcome::Refused(error.to_string()),
        other => HelloOutcome::Refused(String::from_utf8_lossy(&encode(&other)).into_owned()),
    })
}

/// Heartbeat outcome for one node.
enum Beat {
    Known,
    Unknown,
    NoAck,
}

async fn beat(
    conn: &DealerConn,
    node: &Registrant,
    token: Option<&String>,
    acks: bool,
) -> Result<Beat, WireError> {
    let hb = Heartbeat {
        token: token.cloned(),
        ..node.heartbeat.clone()
    };
    if !acks {
        conn.send(encode(&Request::Heartbeat(hb))).await?;
        return Ok(Beat::NoAck);
    }
    let id = new_rpc_uuid();
    let hb = Heartbeat {
        rpc_uuid: Some(id.clone()),
        ..hb
    };
    match conn
        .request(encode(&Request::Heartbeat(hb)), Some(id), REPLY_TIMEOUT)
        .await
    {
        Ok(Reply::HeartbeatAck { known: false, .. }) => Ok(Beat::Unknown),
        Ok(_) => Ok(Beat::Known),
        Err(WireError::Timeout(_)) => Ok(Beat::NoAck),
        Err(e) => Err(e),
    }
}

/// Whether the broker lists `node` (labmesh v0 directory methods), for
/// brokers that do not acknowledge heartbeats. `None` when it did not
/// answer.
async fn listed(conn: &DealerConn, node: &Registrant) -> Option<bool> {
    let (method, key, id) = match (&node.hello.relay_id, &node.hello.bank_id) {
        (Some(r), _) => (lm::LIST_RELAY_IDS, "relay_id", r),
        (None, Some(b)) => (lm::LIST_BANKS, "bank_id", b),
        (None, None) => return Some(true),
    };
    match conn
        .rpc(
            method,
            Value::Object(Default::default()),
            node.hello.password.clone(),
            REPLY_TIMEOUT,
        )
        .await
    {
        Ok(Ok(Value::Array(items))) => Some(
            items
                .iter()
                .any(|i| i.get(key).and_then(Value::as_str) == Some(id.as_str())),
        ),
        _ => None,
    }
}

/// How many unacknowledged heartbeats pass between listing checks against
/// a broker that does not acknowledge them.
const LISTING_CHECK_EVERY: u32 = 3;

/// Keep `nodes` registered with the broker behind `conn` until `stop`
/// turns true; then say goodbye.
///
/// A broker that has acknowledged a heartbeat once is a Rust broker for
/// good: a later silence is an outage (register again when it answers),
/// never a reason to stop asking for acks. Against a broker that never
/// acknowledged (labmesh v0), every few heartbeats the node checks that it
/// is still listed and registers again if not.
pub async fn keep_registered(
    conn: DealerConn,
    nodes: Vec<Registrant>,
    heartbeat: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut connections = conn.connections();
    let mut need = vec![true; nodes.len()];
    let mut tokens: Vec<Option<String>> = vec![None; nodes.len()];
    let mut backoff = Duration::from_millis(100);
    let mut attempts = 0u32;
    // Whether this broker answers heartbeats (Rust) or not (labmesh v0),
    // and whether it ever did.
    let mut acks = true;
    let mut ever_acked = false;
    let mut unacked_beats = 0u32;
    let mut ticker = tokio::time::interval(heartbeat.max(Duration::from_millis(10)));
    ticker.tick().await;
    loop {
        if *stop.borrow() {
            break;
        }
        if need.iter().any(|n| *n) {
            attempts += 1;
            for ((node, need), token) in nodes
                .iter()
                .zip(need.iter_mut())
                .zip(tokens.iter_mut())
                .filter(|((_, n), _)| **n)
            {
                match hello(&conn, node).await {
                    Ok(HelloOutcome::Accepted(t)) => {
                        tracing::info!(node = %node.label, broker = %conn.endpoint(), "registered with the broker");
                        *need = false;
                        *token = t;
                    }
                    Ok(HelloOutcome::Refused(why)) => {
                        tracing::error!(node = %node.label, broker = %conn.endpoint(), %why, "broker refused registration; retrying");
                    }
                    Err(e) if attempts == 1 || attempts.is_multiple_of(10) => {
                        tracing::warn!(node = %node.label, broker = %conn.endpoint(), error = %e, attempts, "broker not answering; still trying to register");
                    }
                    Err(_) => {}
                }
            }
            if need.iter().any(|n| *n) {
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.changed() => break,
                    _ = connections.changed() => {}
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
            backoff = Duration::from_millis(100);
            attempts = 0;
            connections.borrow_and_update();
        }
        tokio::select! {
            _ = stop.changed() => break,
            changed = connections.changed() => {
                if changed.is_err() {
                    return;
                }
                tracing::info!(broker = %conn.endpoint(), "broker connection re-established; registering again");
                need.iter_mut().for_each(|n| *n = true);
            }
            _ = ticker.tick() => {
                if !acks {
                    unacked_beats += 1;
                }
                for ((node, need), token) in nodes.iter().zip(need.iter_mut()).zip(tokens.iter()) {
                    match beat(&conn, node, token.as_ref(), acks).await {
                        Ok(Beat::Known) => ever_acked = true,
                        Ok(Beat::Unknown) => {
                            ever_acked = true;
                            tracing::info!(node = %node.label, "broker does not know us (restarted or expired); registering again");
                            *need = true;
                        }
                        Ok(Beat::NoAck) if acks && ever_acked => {
                            // A broker that acknowledged before is not v0:
                            // this is an outage. Register again once it is back.
                            tracing::warn!(broker = %conn.endpoint(), "heartbeat not acknowledged; will register again when the broker answers");
                            *need = true;
                        }
                        Ok(Beat::NoAck) if acks => {
                            // Either a labmesh v0 broker (never acks) or a dead one.
                            match conn.rpc(lm::BROKER_PING, Value::Object(Default::default()), node.hello.password.clone(), REPLY_TIMEOUT).await {
                                Ok(_) => {
                                    tracing::info!(broker = %conn.endpoint(), "broker does not acknowledge heartbeats (labmesh v0); sending them unacknowledged");
                                    acks = false;
                                }
                                Err(_) => {
                                    tracing::warn!(broker = %conn.endpoint(), "broker not answering; will register again when it is back");
                                    *need = true;
                                }
                            }
                        }
                        Ok(Beat::NoAck) => {
                            // v0 broker: make sure it still lists us (it may
                            // have expired us, or been told `bye`).
                            if unacked_beats.is_multiple_of(LISTING_CHECK_EVERY) && listed(&conn, node).await == Some(false) {
                                tracing::info!(node = %node.label, "broker no longer lists us; registering again");
                                *need = true;
                            }
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "heartbeat failed");
                            return;
                        }
                    }
                }
            }
        }
    }
    // Goodbye, with the token of each registration, then a ping on the same
    // socket: once it is answered, the broker has processed the byes (one
    // socket, in order).
    for (node, token) in nodes.iter().zip(tokens.iter()) {
        let bye = Bye {
            token: token.clone(),
            ..node.bye.clone()
        };
        let _ = conn.send(encode(&Request::Bye(bye))).await;
    }
    let password = nodes.first().and_then(|n| n.hello.password.clone());
    let _ = conn
        .rpc(
            lm::BROKER_PING,
            Value::Object(Default::default()),
            password,
            Duration::from_millis(500),
        )
        .await;
}
