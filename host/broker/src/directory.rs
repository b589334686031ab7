//! The directory ROUTER: registrations and directory RPCs.

use std::collections::BTreeMap;
use std::time::Instant;

use labmesh_wire::msg::{
    self, encode, BankInfo, Hello, HelloAck, RelayInfo, Reply, Request, RpcRequest,
};
use labmesh_wire::{codes, AsyncSocket, ErrorBody};
use serde_json::{json, Value};
use tokio::sync::watch;

use crate::BrokerOptions;

struct Entry<T> {
    info: T,
    last_seen: Instant,
}

#[derive(Default)]
struct Directory {
    relays: BTreeMap<String, Entry<RelayInfo>>,
    banks: BTreeMap<String, Entry<BankInfo>>,
}

pub(crate) async fn run(
    mut router: AsyncSocket,
    opts: BrokerOptions,
    mut stop: watch::Receiver<bool>,
) {
    let mut dir = Directory::default();
    loop {
        let frames = tokio::select! {
            biased;
            _ = stop.changed() => break,
            f = router.recv_multipart() => f,
        };
        let frames = match frames {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(error = %e, "directory receive failed");
                continue;
            }
        };
        let Some(reply) = handle(&mut dir, &opts, &frames) else {
            continue;
        };
        // frames[0] is the peer identity ROUTER prepends; handle() only
        // answers when it is there.
        if let Some(ident) = frames.first() {
            if let Err(e) = router.send_multipart([ident.as_slice(), &reply]).await {
                tracing::warn!(error = %e, "directory reply failed");
            }
        }
    }
    tracing::info!("directory stopped");
}

/// One request; `None` when nothing is to be sent back.
fn handle(dir: &mut Directory, opts: &BrokerOptions, frames: &[Vec<u8>]) -> Option<Vec<u8>> {
    let payload = match frames {
        [_ident, payload] => payload,
        [_ident, ..] => {
            tracing::warn!(
                frames = frames.len(),
                "directory request with {} frames, expected 1",
                frames.len() - 1
            );
            return Some(encode(&Reply::Error {
                error: ErrorBody::new(codes::BAD_REQUEST, "expected exactly one frame of JSON"),
            }));
        }
        [] => return None,
    };
    let req = match msg::decode_request(payload) {
        Ok(r) => r,
        Err(failure) => {
            tracing::warn!(?failure, "bad directory request");
            return Some(encode(&failure.reply()));
        }
    };
    match req {
        Request::Hello(h) => Some(hello(dir, opts, h)),
        Request::Rpc(r) => Some(rpc(dir, opts, r)),
        Request::Heartbeat(hb) => {
            if !opts.password.accepts(hb.password.as_ref()) {
                tracing::warn!("heartbeat with a wrong password ignored");
                return None;
            }
            let now = Instant::now();
            if let Some(e) = hb.relay_id.as_ref().and_then(|id| dir.relays.get_mut(id)) {
                e.last_seen = now;
            }
            if let Some(e) = hb.bank_id.as_ref().and_then(|id| dir.banks.get_mut(id)) {
                e.last_seen = now;
            }
            None
        }
    }
}

fn hello(dir: &mut Directory, opts: &BrokerOptions, h: Hello) -> Vec<u8> {
    if !opts.password.accepts(h.password.as_ref()) {
        tracing::warn!(role = ?h.role, "hello with a wrong password refused");
        return encode(&HelloAck::refused("invalid password"));
    }
    let now = Instant::now();
    match h.role.as_deref() {
        Some("relay") => {
            let (Some(rid), Some(ep)) = (
                h.relay_id.filter(|s| !s.is_empty()),
                h.rpc_endpoint.filter(|s| !s.is_empty()),
            ) else {
                return encode(&Reply::Error {
                    error: ErrorBody::new(codes::BAD_REQUEST, "missing relay_id/rpc_endpoint"),
                });
            };
            tracing::info!(relay_id = %rid, endpoint = %ep, "relay online");
            dir.relays.insert(
                rid.clone(),
                Entry {
                    info: RelayInfo {
                        relay_id: rid,
                        rpc_endpoint: ep,
                    },
                    last_seen: now,
                },
            );
            encode(&HelloAck::ok("relay"))
        }
        Some("bank") => {
            let bank_id = h
                .bank_id
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "bank".into());
            tracing::info!(%bank_id, ingest = ?h.ingest, retrieve = ?h.retrieve, "bank online");
            dir.banks.insert(
                bank_id.clone(),
                Entry {
                    info: BankInfo {
                        bank_id: bank_id.clone(),
                        ingest: h.ingest,
                        retrieve: h.retrieve,
                    },
                    last_seen: now,
                },
            );
            encode(&HelloAck {
                bank_id: Some(bank_id),
                ..HelloAck::ok("bank")
            })
        }
        _ => {
            tracing::debug!("client hello");
            encode(&HelloAck::ok("client"))
        }
    }
}

fn rpc(dir: &Directory, opts: &BrokerOptions, r: RpcRequest) -> Vec<u8> {
    let rpc_uuid = r.rpc_uuid;
    if !opts.password.accepts(r.password.as_ref()) {
        tracing::warn!(method = %r.method, "rpc with a wrong password refused");
        return encode(&Reply::RpcError {
            rpc_uuid,
            error: ErrorBody::new(codes::UNAUTHORIZED, "invalid password"),
        });
    }
    let result: Value = match r.method.as_str() {
        "list_relay_ids" => json!(dir.relays.values().map(|e| &e.info).collect::<Vec<_>>()),
        "list_banks" => json!(dir.banks.values().map(|e| &e.info).collect::<Vec<_>>()),
        "ping" => json!({"ok": true}),
        other => {
            tracing::warn!(method = %other, "unknown directory method");
            return encode(&Reply::RpcError {
                rpc_uuid,
                error: ErrorBody::new(codes::BAD_REQUEST, format!("unknown method {other}")),
            });
        }
    };
    encode(&Reply::RpcResult { rpc_uuid, result })
}
