//! Request handling for a relay's ROUTER: decoding, password, reserved
//! methods, and binding parameters to the driver's description.

use labmesh_drivers::{Args, Description, DriverError};
use labmesh_proto::lease::{LockParams, UnlockParams, UnlockResult};
use labmesh_proto::lm::{DescribeResult, PingResult, RelayMethod};
use labmesh_proto::mesh::{self, encode, Reply, Request};
use labmesh_proto::stream::{SetRate, StreamName, StreamSpec};
use labmesh_proto::{codes, ErrorBody};
use labmesh_wire::auth::Password;
use serde_json::Value;

use crate::lease::Lease;
use crate::streams::{Control, Streams};

/// A call waiting for the instrument.
pub(crate) struct Call {
    pub(crate) ident: Vec<u8>,
    pub(crate) rpc_uuid: Value,
    pub(crate) method: String,
    pub(crate) args: Args,
}

/// What the RPC task needs to answer without the instrument.
pub(crate) struct RpcContext {
    pub(crate) relay_id: String,
    pub(crate) description: Description,
    pub(crate) password: Password,
    /// The instrument's lease (`lm.lock`, `lm.unlock`, `lm.who`).
    pub(crate) lease: Lease,
    /// The CURVE security installed on the relay's context (allow-list
    /// entries: per-instrument roles and key names), if any.
    pub(crate) security: Option<std::sync::Arc<labmesh_wire::curve::Security>>,
}

/// What to do with one request.
pub(crate) enum Handled {
    /// Answer at once.
    Reply(Vec<u8>, Vec<u8>),
    /// A valid call for the instrument.
    Call(Call),
    /// Nothing to answer.
    Nothing,
}

/// Handle one request: an immediate reply, or a call for the instrument.
/// Stream control (`lm.stream_*`, `lm.streams`, `lm.last`) is answered
/// here, against the instrument's `streams`.
pub(crate) fn handle(
    ctx: &mut RpcContext,
    streams: &mut Streams,
    mut frames: Vec<Vec<u8>>,
    user: Option<&str>,
) -> Handled {
    if frames.is_empty() {
        return Handled::Nothing;
    }
    let ident = frames.remove(0);
    let payload = match frames.as_slice() {
        [p] => p,
        _ => {
            labmesh_wire::warn_throttled!(relay_id = %ctx.relay_id, frames = frames.len(), "request with the wrong number of frames");
            let e = Reply::Error {
                error: ErrorBody::new(codes::BAD_REQUEST, "expected exactly one frame of JSON"),
            };
            return Handled::Reply(ident, encode(&e));
        }
    };
    let rpc = match mesh::decode_request(payload) {
        Ok(Request::Rpc(r)) => r,
        Ok(other) => {
            labmesh_wire::warn_throttled!(relay_id = %ctx.relay_id, ?other, "non-rpc message sent to a relay");
            let e = Reply::Error {
                error: ErrorBody::new(codes::BAD_REQUEST, "a relay only serves rpc requests"),
            };
            return Handled::Reply(ident, encode(&e));
        }
        Err(failure) => {
            labmesh_wire::warn_throttled!(relay_id = %ctx.relay_id, %failure, "bad request");
            return Handled::Reply(ident, encode(&failure.reply()));
        }
    };
    let error = |code: i64, message: String, rpc_uuid: Value| {
        encode(&Reply::RpcError {
            rpc_uuid,
            error: ErrorBody::new(code, message),
        })
    };
    if !ctx.password.accepts(rpc.password.as_ref()) {
        labmesh_wire::warn_throttled!(relay_id = %ctx.relay_id, method = %rpc.method, "rpc with a wrong password refused");
        return Handled::Reply(
            ident,
            error(codes::UNAUTHORIZED, "invalid password".into(), rpc.rpc_uuid),
        );
    }
    let caller = crate::authz::caller(&ctx.relay_id, user, ctx.security.as_ref());
    let who = caller.as_ref().map(|c| &c.key);
    if let Err(m) = crate::authz::check(
        &ctx.relay_id,
        caller.as_ref(),
        &rpc.method,
        &rpc.params,
        &ctx.description,
    ) {
        return Handled::Reply(ident, error(codes::FORBIDDEN, m, rpc.rpc_uuid));
    }
    let answer = |result: Value| {
        encode(&Reply::RpcResult {
            rpc_uuid: rpc.rpc_uuid.clone(),
            result,
        })
    };
    match RelayMethod::parse(&rpc.method) {
        RelayMethod::Describe => {
            let d = DescribeResult {
                description: ctx.description.clone(),
                relay_id: ctx.relay_id.clone(),
                driver_version: Some(labmesh_drivers::VERSION.to_string()),
                streams: streams.specs(),
            };
            return Handled::Reply(ident, answer(to_value(&d)));
        }
        RelayMethod::Streams => return Handled::Reply(ident, answer(to_value(&streams.status()))),
        RelayMethod::Last => {
            let body = params::<StreamName>(&rpc.method, &rpc.params)
                .and_then(|p| streams.last(&p.name))
                .map(|r| answer(to_value(&r)))
                .unwrap_or_else(|(code, m)| error(code, m, rpc.rpc_uuid.clone()));
            return Handled::Reply(ident, body);
        }
        RelayMethod::StreamAdd
        | RelayMethod::StreamRemove
        | RelayMethod::StreamEnable
        | RelayMethod::StreamDisable
        | RelayMethod::StreamSetRate => {
            // Streams call instrument methods: changing them needs the
            // lease while someone holds it (lm.streams and lm.last do not).
            if let Err(e) = ctx.lease.admit(false, rpc.lease, who) {
                return Handled::Reply(ident, error(e.code, e.message, rpc.rpc_uuid));
            }
            let m = rpc.method.as_str();
            let name = || params::<StreamName>(m, &rpc.params).map(|p| p.name);
            let control = match RelayMethod::parse(m) {
                RelayMethod::StreamAdd => params::<StreamSpec>(m, &rpc.params).map(Control::Add),
                RelayMethod::StreamRemove => name().map(Control::Remove),
                RelayMethod::StreamEnable => name().map(Control::Enable),
                RelayMethod::StreamDisable => name().map(Control::Disable),
                _ => params::<SetRate>(m, &rpc.params).map(|p| Control::SetRate(p.name, p.hz)),
            };
            let body = control
                .and_then(|c| {
                    tracing::info!(relay_id = %ctx.relay_id, method = %rpc.method, params = %rpc.params, "stream control");
                    streams.control(c, &ctx.description, std::time::Instant::now())
                })
                .map(|r| answer(to_value(&r)))
                .unwrap_or_else(|(code, m)| error(code, m, rpc.rpc_uuid.clone()));
            return Handled::Reply(ident, body);
        }
        RelayMethod::Ping => {
            let p = PingResult {
                ok: true,
                relay_id: Some(ctx.relay_id.clone()),
            };
            return Handled::Reply(ident, answer(to_value(&p)));
        }
        RelayMethod::Lock => {
            let outcome = serde_json::from_value::<LockParams>(rpc.params.clone())
                .map_err(|e| ErrorBody::new(codes::BAD_REQUEST, format!("lm.lock: {e}")))
                .and_then(|p| ctx.lease.lock(&p, who));
            return Handled::Reply(ident, lease_reply(rpc.rpc_uuid, outcome));
        }
        RelayMethod::Unlock => {
            let outcome = serde_json::from_value::<UnlockParams>(rpc.params.clone())
                .map_err(|e| ErrorBody::new(codes::BAD_REQUEST, format!("lm.unlock: {e}")))
                .and_then(|p| ctx.lease.unlock(p.token, who))
                .map(|()| UnlockResult { ok: true });
            return Handled::Reply(ident, lease_reply(rpc.rpc_uuid, outcome));
        }
        RelayMethod::Who => {
            let who = ctx.lease.who();
            return Handled::Reply(ident, answer(to_value(&who)));
        }
        RelayMethod::UnknownReserved(_) | RelayMethod::Instrument(_) => {}
    }
    let args = match ctx.description.bind(&rpc.method, &rpc.params) {
        Ok(a) => a,
        Err(e) => {
            labmesh_wire::warn_throttled!(relay_id = %ctx.relay_id, method = %rpc.method, error = %e, "call refused");
            return Handled::Reply(ident, error(e.code(), e.to_string(), rpc.rpc_uuid));
        }
    };
    // The lease: checked when the call arrives (a call already queued when
    // the lease changes hands still runs).
    if ctx.lease.engaged() || rpc.lease.is_some() {
        let read_only = ctx
            .description
            .methods
            .iter()
            .any(|m| m.name == rpc.method && m.read_only);
        if let Err(e) = ctx.lease.admit(read_only, rpc.lease, who) {
            labmesh_wire::warn_throttled!(relay_id = %ctx.relay_id, method = %rpc.method, "call refused: instrument leased");
            return Handled::Reply(ident, error(e.code, e.message, rpc.rpc_uuid));
        }
    }
    let call = Call {
        ident,
        rpc_uuid: rpc.rpc_uuid,
        method: rpc.method,
        args,
    };
    Handled::Call(call)
}

fn lease_reply<T: serde::Serialize>(rpc_uuid: Value, outcome: Result<T, ErrorBody>) -> Vec<u8> {
    match outcome {
        Ok(r) => encode(&Reply::RpcResult {
            rpc_uuid,
            result: to_value(&r),
        }),
        Err(error) => encode(&Reply::RpcError { rpc_uuid, error }),
    }
}

/// Decode the params object of a reserved method.
fn params<T: serde::de::DeserializeOwned>(
    method: &str,
    params: &Value,
) -> Result<T, (i64, String)> {
    serde_json::from_value(params.clone())
        .map_err(|e| (codes::BAD_REQUEST, format!("{method}: bad params: {e}")))
}

fn to_value<T: serde::Serialize>(v: &T) -> Value {
    // Our own result types always serialise.
    serde_json::to_value(v).unwrap_or(Value::Null)
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
