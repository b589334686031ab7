//! The per-instrument RPC task: owns the ROUTER socket.

use labmesh_drivers::{Description, DriverError};
use labmesh_wire::auth::Password;
use labmesh_wire::msg::{self, encode, Reply, Request};
use labmesh_wire::{codes, AsyncSocket, ErrorBody};
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};

use crate::Call;

/// What the RPC task needs to answer without the instrument.
pub(crate) struct RpcContext {
    pub(crate) relay_id: String,
    pub(crate) description: Description,
    pub(crate) password: Password,
}

/// Reserved method: the instrument's [`Description`].
pub const DESCRIBE: &str = "lm.describe";
/// Reserved method: liveness check that bypasses the instrument queue.
pub const PING: &str = "lm.ping";

pub(crate) async fn serve(
    mut router: AsyncSocket,
    ctx: RpcContext,
    call_tx: mpsc::Sender<Call>,
    mut replies: mpsc::Receiver<(Vec<u8>, Vec<u8>)>,
    mut stop: watch::Receiver<bool>,
) {
    let mut call_tx = Some(call_tx);
    loop {
        tokio::select! {
            biased;
            r = replies.recv() => {
                // None: the instrument task has finished its queue after a stop.
                let Some((ident, body)) = r else { break };
                send(&mut router, &ident, &body).await;
            }
            _ = stop.changed(), if call_tx.is_some() => {
                // Stop taking requests; queued calls finish and are answered.
                call_tx = None;
            }
            frames = router.recv_multipart(), if call_tx.is_some() => {
                let frames = match frames {
                    Ok(f) => f,
                    Err(e) => {
                        tracing::warn!(relay_id = %ctx.relay_id, error = %e, "receive failed");
                        continue;
                    }
                };
                let Some(tx) = &call_tx else { continue };
                if let Some((ident, reply)) = handle(&ctx, tx, frames) {
                    send(&mut router, &ident, &reply).await;
                }
            }
        }
    }
    tracing::debug!(relay_id = %ctx.relay_id, "rpc task stopped");
}

async fn send(router: &mut AsyncSocket, ident: &[u8], body: &[u8]) {
    if let Err(e) = router.send_multipart([ident, body]).await {
        tracing::warn!(error = %e, "reply failed");
    }
}

/// Handle one request; returns an immediate reply, or queues a call.
fn handle(
    ctx: &RpcContext,
    calls: &mpsc::Sender<Call>,
    mut frames: Vec<Vec<u8>>,
) -> Option<(Vec<u8>, Vec<u8>)> {
    if frames.is_empty() {
        return None;
    }
    let ident = frames.remove(0);
    let payload = match frames.as_slice() {
        [p] => p,
        _ => {
            tracing::warn!(relay_id = %ctx.relay_id, frames = frames.len(), "request with the wrong number of frames");
            let e = Reply::Error {
                error: ErrorBody::new(codes::BAD_REQUEST, "expected exactly one frame of JSON"),
            };
            return Some((ident, encode(&e)));
        }
    };
    let rpc = match msg::decode_request(payload) {
        Ok(Request::Rpc(r)) => r,
        Ok(other) => {
            tracing::warn!(relay_id = %ctx.relay_id, ?other, "non-rpc message sent to a relay");
            let e = Reply::Error {
                error: ErrorBody::new(codes::BAD_REQUEST, "a relay only serves rpc requests"),
            };
            return Some((ident, encode(&e)));
        }
        Err(failure) => {
            tracing::warn!(relay_id = %ctx.relay_id, ?failure, "bad request");
            return Some((ident, encode(&failure.reply())));
        }
    };
    let error = |code: i64, message: String, rpc_uuid: Value| {
        encode(&Reply::RpcError {
            rpc_uuid,
            error: ErrorBody::new(code, message),
        })
    };
    if !ctx.password.accepts(rpc.password.as_ref()) {
        tracing::warn!(relay_id = %ctx.relay_id, method = %rpc.method, "rpc with a wrong password refused");
        return Some((
            ident,
            error(codes::UNAUTHORIZED, "invalid password".into(), rpc.rpc_uuid),
        ));
    }
    match rpc.method.as_str() {
        DESCRIBE => {
            let mut d = json!(ctx.description);
            d["relay_id"] = json!(ctx.relay_id);
            return Some((
                ident,
                encode(&Reply::RpcResult {
                    rpc_uuid: rpc.rpc_uuid,
                    result: d,
                }),
            ));
        }
        PING => {
            let r = json!({"ok": true, "relay_id": ctx.relay_id});
            return Some((
                ident,
                encode(&Reply::RpcResult {
                    rpc_uuid: rpc.rpc_uuid,
                    result: r,
                }),
            ));
        }
        _ => {}
    }
    let args = match ctx.description.bind(&rpc.method, &rpc.params) {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!(relay_id = %ctx.relay_id, method = %rpc.method, error = %e, "call refused");
            return Some((ident, error(e.code(), e.to_string(), rpc.rpc_uuid)));
        }
    };
    let call = Call {
        ident,
        rpc_uuid: rpc.rpc_uuid,
        method: rpc.method,
        args,
    };
    match calls.try_send(call) {
        Ok(()) => None,
        Err(mpsc::error::TrySendError::Full(c)) | Err(mpsc::error::TrySendError::Closed(c)) => {
            tracing::warn!(relay_id = %ctx.relay_id, method = %c.method, "instrument queue full");
            let body = error(
                codes::UNAVAILABLE,
                format!("{}: instrument queue full, try again", ctx.relay_id),
                c.rpc_uuid,
            );
            Some((c.ident, body))
        }
    }
}

/// The reply for a finished call.
pub(crate) fn reply_for(
    relay_id: &str,
    method: &str,
    rpc_uuid: Value,
    outcome: Result<Value, DriverError>,
) -> Vec<u8> {
    match outcome {
        Ok(result) => encode(&Reply::RpcResult { rpc_uuid, result }),
        Err(e) => {
            tracing::warn!(%relay_id, %method, error = %e, "call failed");
            let message = match &e {
                DriverError::UnknownMethod(_) | DriverError::BadParam { .. } => e.to_string(),
                _ => format!("{relay_id}.{method}: {e}"),
            };
            encode(&Reply::RpcError {
                rpc_uuid,
                error: ErrorBody::new(e.code(), message),
            })
        }
    }
}
