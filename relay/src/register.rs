//! Registration with the broker: hello (checked, retried with backoff), then
//! heartbeats.

use std::time::Duration;

use labmesh_wire::auth::Password;
use labmesh_wire::msg::{encode, Heartbeat, Hello, HelloAck, Request};
use labmesh_wire::{DealerConn, WireError};
use tokio::sync::watch;

use crate::Served;

const HELLO_TIMEOUT: Duration = Duration::from_secs(2);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Outcome of one hello.
#[derive(Debug)]
pub(crate) enum HelloOutcome {
    Accepted,
    /// The broker said no (wrong password, bad fields): retrying will not help
    /// until the configuration changes.
    Refused(String),
}

pub(crate) async fn hello(
    conn: &DealerConn,
    s: &Served,
    password: &Password,
) -> Result<HelloOutcome, WireError> {
    let req = Request::Hello(Hello {
        role: Some("relay".into()),
        relay_id: Some(s.relay_id.clone()),
        rpc_endpoint: Some(s.rpc_endpoint.clone()),
        password: password.to_field(),
        ..Hello::default()
    });
    let reply = conn.request(encode(&req), None, HELLO_TIMEOUT).await?;
    match serde_json::from_value::<HelloAck>(reply.clone()) {
        Ok(ack) if ack.ok => Ok(HelloOutcome::Accepted),
        Ok(ack) => Ok(HelloOutcome::Refused(
            ack.error
                .map(|e| e.to_string())
                .unwrap_or_else(|| "refused".into()),
        )),
        Err(_) => Ok(HelloOutcome::Refused(reply.to_string())),
    }
}

pub(crate) async fn run(
    conn: DealerConn,
    served: Vec<Served>,
    heartbeat: Duration,
    password: Password,
    mut stop: watch::Receiver<bool>,
) {
    for s in &served {
        let mut backoff = Duration::from_millis(100);
        let mut attempts = 0u32;
        loop {
            if *stop.borrow() {
                return;
            }
            attempts += 1;
            match hello(&conn, s, &password).await {
                Ok(HelloOutcome::Accepted) => {
                    tracing::info!(relay_id = %s.relay_id, endpoint = %s.rpc_endpoint, broker = %conn.endpoint(), "registered with the broker");
                    break;
                }
                Ok(HelloOutcome::Refused(why)) => {
                    tracing::error!(relay_id = %s.relay_id, broker = %conn.endpoint(), %why, "broker refused registration; retrying");
                }
                Err(e) => {
                    if attempts == 1 || attempts % 5 == 0 {
                        tracing::warn!(relay_id = %s.relay_id, broker = %conn.endpoint(), error = %e, attempts, "broker not answering; still trying to register");
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = stop.changed() => return,
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }
    let mut ticker = tokio::time::interval(heartbeat);
    ticker.tick().await;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.changed() => return,
        }
        for s in &served {
            let hb = Request::Heartbeat(Heartbeat {
                role: Some("relay".into()),
                relay_id: Some(s.relay_id.clone()),
                password: password.to_field(),
                ..Heartbeat::default()
            });
            if conn.send(encode(&hb)).await.is_err() {
                return;
            }
        }
    }
}
