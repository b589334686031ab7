//! The directory ROUTER: registrations, liveness and directory RPCs.
//!
//! Liveness: every registration remembers when it last showed a sign of life
//! (hello, heartbeat, answered probe). A node silent for `ttl / 2` is probed
//! with an `lm.ping` RPC at its advertised endpoint (labmesh v0 relays never
//! heartbeat; any reply, even an `rpc_error`, proves life). A node silent
//! for `ttl` is expired. Changes are published on the bus as
//! `presence.<id>` events.
//!
//! With CURVE on, an id also belongs to the key that registered it (the
//! `X-Labmesh-Key` property of the `hello`): a `hello` for a live id,
//! heartbeats and `bye` from any other key are refused, and registering
//! needs the `operator` role (docs/SECURITY.md, Broker and bus). The key
//! of each id is shared with the bus thread ([`crate::bus`]), which
//! forwards an id's topics only from that key.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use labmesh_proto::bank::Get;
use labmesh_proto::lm::{self, BrokerMethod, PingResult, ResolveParams};
use labmesh_proto::mesh::{
    self, encode, valid_endpoint, valid_node_id, BankInfo, Bye, Heartbeat, Hello, HelloAck,
    Presence, PresenceReason, PresenceStatus, RelayInfo, Reply, Request, Role, RpcRequest,
};
use labmesh_proto::security::{self, UserId, FINGERPRINT_CHARS};
use labmesh_proto::{codes, topic, ErrorBody};
use labmesh_wire::dealer::RpcOutcome;
use labmesh_wire::socket::{AfterError, RecvErrors};
use labmesh_wire::{AsyncSocket, DealerConn, Peer, SocketOptions};
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};

use crate::BrokerOptions;

/// How long a probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_millis(1000);

struct Entry<T> {
    info: T,
    last_seen: Instant,
    probing: bool,
    /// Handed out in the hello ack; heartbeats and `bye` must carry it.
    token: String,
    /// The child broker that registered it (cascading), if any.
    via: Option<String>,
    /// The CURVE key (Z85) that registered it; `None` without CURVE.
    key: Option<Arc<str>>,
}

impl<T> Entry<T> {
    fn new(info: T) -> Self {
        Entry {
            info,
            last_seen: Instant::now(),
            probing: false,
            token: labmesh_wire::dealer::new_rpc_uuid(),
            via: None,
            key: None,
        }
    }
}

/// Whether a probe's answer came from a relay: a Rust relay answers
/// `lm.ping` with its own id; a labmesh v0 relay answers "unknown method"
/// with its own code (500). A broker or bank that was registered as a
/// relay answers 400 (unknown method / message type), which proves
/// nothing: so does anything else.
fn proves_relay(outcome: &RpcOutcome, relay_id: &str) -> bool {
    match outcome {
        Ok(v) => v.get("relay_id").and_then(Value::as_str) == Some(relay_id),
        Err(e) => e.code != codes::BAD_REQUEST,
    }
}

/// Whether a probe's answer came from a bank: both Rust and labmesh v0
/// banks answer a `get` of a dataset they do not hold with 404; a broker
/// or relay answers 400.
fn proves_bank(reply: &Reply) -> bool {
    matches!(reply, Reply::Error { error } if error.code == codes::NOT_FOUND)
}

/// Results of work done outside the directory task.
enum Internal {
    /// A probe of `relay_id` at `endpoint` finished.
    Probed {
        relay_id: String,
        endpoint: String,
        alive: bool,
    },
    /// A relay or bank id registered from a new endpoint: was the old one
    /// alive?
    DuplicateChecked {
        ident: Vec<u8>,
        hello: Box<Hello>,
        old_alive: bool,
        /// The key of the new registrant.
        key: Option<Arc<str>>,
    },
}

/// Who sent a request, as the ZAP handler labelled the connection
/// (everything `None` without CURVE).
#[derive(Debug, Clone, Default)]
struct Who {
    key: Option<Arc<str>>,
    user: Option<UserId>,
    address: String,
}

impl Who {
    fn of(peer: &Peer) -> Who {
        Who {
            key: peer.key.as_deref().map(Arc::from),
            user: peer.user_id.as_deref().and_then(UserId::parse),
            address: peer.address.clone().unwrap_or_else(|| "-".into()),
        }
    }

    /// The key's fingerprint for logs and messages (`-`: none).
    fn fingerprint(&self) -> String {
        fingerprint(self.key.as_deref())
    }

    fn role(&self) -> Option<security::Role> {
        self.user.as_ref().map(|u| u.role)
    }
}

fn fingerprint(key: Option<&str>) -> String {
    key.map_or_else(
        || "-".into(),
        |k| k.chars().take(FINGERPRINT_CHARS).collect(),
    )
}

/// The least role that may register (`hello` as relay or bank), heartbeat
/// and say `bye` with CURVE on.
pub(crate) const REGISTER_ROLE: security::Role = security::Role::Operator;

struct Directory {
    opts: BrokerOptions,
    /// CURVE on: ids belong to keys, registering needs [`REGISTER_ROLE`].
    curve: bool,
    ctx: zmq::Context,
    relays: BTreeMap<String, Entry<RelayInfo>>,
    banks: BTreeMap<String, Entry<BankInfo>>,
    probes: HashMap<String, DealerConn>,
    internal: mpsc::Sender<Internal>,
    presence: Option<AsyncSocket>,
    /// Ids registered here right now (relays and banks), shared with the
    /// cascade's bus loop (which must not send our own messages back to us).
    local: crate::cascade::LocalIds,
}

/// What to do after handling a request.
enum Action {
    Reply(Vec<u8>),
    Nothing,
}

pub(crate) async fn run(
    mut router: AsyncSocket,
    opts: BrokerOptions,
    ctx: zmq::Context,
    presence: Option<AsyncSocket>,
    local: crate::cascade::LocalIds,
    curve: bool,
    mut stop: watch::Receiver<bool>,
) {
    let (internal, mut internal_rx) = mpsc::channel(256);
    let sweep_every = (opts.ttl / 10).clamp(Duration::from_millis(50), Duration::from_secs(1));
    let mut dir = Directory {
        opts,
        curve,
        ctx,
        relays: BTreeMap::new(),
        banks: BTreeMap::new(),
        probes: HashMap::new(),
        internal,
        presence,
        local,
    };
    let mut errors = RecvErrors::new("broker directory");
    let mut sweep = tokio::time::interval(sweep_every);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            _ = stop.changed() => break,
            Some(ev) = internal_rx.recv() => {
                if let Some((ident, reply)) = dir.apply(ev) {
                    send(&mut router, &ident, &reply).await;
                }
            }
            f = router.recv_multipart_peer() => {
                let (frames, peer) = match f {
                    Ok(f) => {
                        errors.ok();
                        f
                    }
                    Err(e) => match errors.failed(&e).await {
                        AfterError::Retry => continue,
                        AfterError::Stop => break,
                    },
                };
                if let Some(ident) = frames.first() {
                    if let Action::Reply(reply) = dir.handle(&frames, &Who::of(&peer)) {
                        send(&mut router, ident, &reply).await;
                    }
                }
            }
            _ = sweep.tick() => dir.sweep(),
        }
    }
    tracing::info!("directory stopped");
}

/// Ask a bank for a dataset no bank holds: a bank answers 404.
async fn probe_bank(conn: &DealerConn, password: Option<Value>) -> bool {
    let get = labmesh_proto::bank::RetrieveRequest::Get(Get {
        dataset_id: Some(format!("lm-probe-{}", labmesh_wire::dealer::new_rpc_uuid())),
        password,
        ..Get::default()
    });
    conn.request(encode(&get), None, PROBE_TIMEOUT)
        .await
        .is_ok_and(|r| proves_bank(&r))
}

fn bad_hello(why: &str) -> Action {
    labmesh_wire::warn_throttled!(%why, "hello refused");
    Action::Reply(encode(&Reply::Error {
        error: ErrorBody::new(codes::BAD_REQUEST, why),
    }))
}

/// Why an id or endpoint of a hello is refused, if it is.
fn check_id_and_endpoints(key: &str, id: &str, endpoints: &[&str]) -> Option<String> {
    if !valid_node_id(id) {
        let shown: String = id.chars().take(40).collect();
        return Some(format!(
            "invalid {key} {shown:?}{}: 1..={} of letters, digits, '.', '_', '-'",
            if id.len() > shown.len() { "…" } else { "" },
            labmesh_proto::limits::MAX_NODE_ID
        ));
    }
    endpoints.iter().find(|e| !valid_endpoint(e)).map(|e| {
        let shown: String = e.chars().take(40).collect();
        format!(
            "invalid endpoint {shown:?}: tcp://, ipc:// or inproc://, at most {} bytes",
            labmesh_proto::limits::MAX_ENDPOINT
        )
    })
}

async fn send(router: &mut AsyncSocket, ident: &[u8], reply: &[u8]) {
    if let Err(e) = router.send_multipart([ident, reply]).await {
        tracing::warn!(error = %e, "directory reply failed");
    }
}

impl Directory {
    /// One request.
    fn handle(&mut self, frames: &[Vec<u8>], who: &Who) -> Action {
        let (ident, payload) = match frames {
            [ident, payload] => (ident, payload),
            [_ident, rest @ ..] => {
                labmesh_wire::warn_throttled!(
                    frames = rest.len(),
                    "directory request with the wrong number of frames"
                );
                return Action::Reply(encode(&Reply::Error {
                    error: ErrorBody::new(codes::BAD_REQUEST, "expected exactly one frame of JSON"),
                }));
            }
            [] => return Action::Nothing,
        };
        let req = match mesh::decode_request(payload) {
            Ok(r) => r,
            Err(failure) => {
                labmesh_wire::warn_throttled!(%failure, "bad directory request");
                return Action::Reply(encode(&failure.reply()));
            }
        };
        match req {
            Request::Hello(h) => self.hello(ident.clone(), h, who),
            Request::Rpc(r) => Action::Reply(self.rpc(r)),
            Request::Heartbeat(hb) => self.heartbeat(hb, who),
            Request::Bye(b) => {
                self.bye(b, who);
                Action::Nothing
            }
        }
    }

    /// With CURVE on: whether `who` may register (`operator` or more).
    fn may_register(&self, who: &Who) -> bool {
        !self.curve || who.role().is_some_and(|r| r.allows(REGISTER_ROLE))
    }

    /// With CURVE on: whether `who` holds the key that registered an
    /// entry (always true without CURVE: the token decides).
    fn owns<T>(&self, e: &Entry<T>, who: &Who) -> bool {
        !self.curve || (e.key.is_some() && e.key == who.key)
    }

    /// The 403 for a key whose role may not register.
    fn forbidden(&self, what: &str, who: &Who) -> Action {
        let role = who.role().unwrap_or(security::Role::Viewer);
        labmesh_wire::warn_throttled!(key = %who.fingerprint(), peer = %who.address, %role, what, "registration refused: role too low");
        Action::Reply(encode(&Reply::Error {
            error: ErrorBody::new(
                codes::FORBIDDEN,
                security::forbidden_message(role, what, REGISTER_ROLE),
            ),
        }))
    }

    /// The 409 for a `hello` of a live id that another key registered.
    fn key_clash(kind: &str, id: &str, owner: Option<&str>, who: &Who) -> Action {
        labmesh_wire::warn_throttled!(
            %kind, %id, owner = %fingerprint(owner), key = %who.fingerprint(), peer = %who.address,
            "hello for an id another key registered refused"
        );
        Action::Reply(encode(&Reply::Error {
            error: ErrorBody::new(
                codes::CONFLICT,
                format!(
                    "{kind}_id '{id}' is registered by another key ({}); refused for key {}",
                    fingerprint(owner),
                    who.fingerprint()
                ),
            ),
        }))
    }

    fn hello(&mut self, ident: Vec<u8>, h: Hello, who: &Who) -> Action {
        if !self.opts.password.accepts(h.password.as_ref()) {
            labmesh_wire::warn_throttled!(role = %h.role.as_ref().map_or_else(|| "-".to_string(), |r| r.to_string()), "hello with a wrong password refused");
            return Action::Reply(encode(&Reply::Hello(HelloAck::refused("invalid password"))));
        }
        match h.role {
            Some(Role::Relay) if !self.may_register(who) => {
                return self.forbidden("hello (register a relay)", who)
            }
            Some(Role::Bank) if !self.may_register(who) => {
                return self.forbidden("hello (register a bank)", who)
            }
            _ => {}
        }
        match h.role {
            Some(Role::Relay) => {
                let (Some(rid), Some(ep)) = (
                    h.relay_id.as_deref().filter(|s| !s.is_empty()),
                    h.rpc_endpoint.as_deref().filter(|s| !s.is_empty()),
                ) else {
                    return bad_hello("missing relay_id/rpc_endpoint");
                };
                if let Some(why) = check_id_and_endpoints("relay_id", rid, &[ep]) {
                    return bad_hello(&why);
                }
                match self.relays.get(rid) {
                    Some(old) => {
                        let fresh = old.last_seen.elapsed() < self.opts.ttl;
                        if fresh && !self.owns(old, who) {
                            // A live id belongs to its key: no probe can
                            // tell a thief at the same endpoint apart.
                            return Self::key_clash("relay", rid, old.key.as_deref(), who);
                        }
                        if old.info.rpc_endpoint != ep && fresh {
                            // Is the first registrant still there? Ask it,
                            // without blocking the directory; the answer comes
                            // back as Internal::DuplicateChecked.
                            let old_ep = old.info.rpc_endpoint.clone();
                            self.check_duplicate(ident, h, old_ep, Role::Relay, who);
                            return Action::Nothing;
                        }
                    }
                    None if self.full() => return self.refuse_full(rid),
                    None => {}
                }
                Action::Reply(self.register_relay(&h, who.key.clone()))
            }
            Some(Role::Bank) => {
                let bank_id = h
                    .bank_id
                    .clone()
                    .filter(|s| !s.is_empty())
                    .unwrap_or_else(|| "bank".into());
                let endpoints: Vec<&str> = [h.ingest.as_deref(), h.retrieve.as_deref()]
                    .into_iter()
                    .flatten()
                    .collect();
                if let Some(why) = check_id_and_endpoints("bank_id", &bank_id, &endpoints) {
                    return bad_hello(&why);
                }
                match self.banks.get(&bank_id) {
                    Some(old) => {
                        let fresh = old.last_seen.elapsed() < self.opts.ttl;
                        if fresh && !self.owns(old, who) {
                            return Self::key_clash("bank", &bank_id, old.key.as_deref(), who);
                        }
                        let same = old.info.ingest == h.ingest && old.info.retrieve == h.retrieve;
                        if !same && fresh {
                            // Same ownership rule as relays: probe the old
                            // bank, 409 while it is alive.
                            match old.info.retrieve.clone() {
                                Some(old_ep) => {
                                    self.check_duplicate(ident, h, old_ep, Role::Bank, who);
                                    return Action::Nothing;
                                }
                                None => {
                                    return Action::Reply(encode(&Reply::Error {
                                        error: ErrorBody::new(
                                            codes::CONFLICT,
                                            format!("bank_id '{bank_id}' is already registered"),
                                        ),
                                    }))
                                }
                            }
                        }
                    }
                    None if self.full() => return self.refuse_full(&bank_id),
                    None => {}
                }
                Action::Reply(self.register_bank(&h, bank_id, who.key.clone()))
            }
            _ => {
                tracing::debug!("client hello");
                Action::Reply(encode(&Reply::Hello(HelloAck::ok(Role::Client))))
            }
        }
    }

    fn full(&self) -> bool {
        self.relays.len() + self.banks.len() >= self.opts.max_registrations
    }

    fn refuse_full(&self, id: &str) -> Action {
        labmesh_wire::warn_throttled!(%id, limit = self.opts.max_registrations, "directory full; hello refused");
        Action::Reply(encode(&Reply::Error {
            error: ErrorBody::new(
                codes::UNAVAILABLE,
                format!(
                    "directory full ({} registrations): '{id}' refused",
                    self.opts.max_registrations
                ),
            ),
        }))
    }

    fn register_bank(&mut self, h: &Hello, bank_id: String, key: Option<Arc<str>>) -> Vec<u8> {
        let info = BankInfo {
            bank_id: bank_id.clone(),
            ingest: h.ingest.clone(),
            retrieve: h.retrieve.clone(),
        };
        let changed = self.banks.get(&bank_id).is_none_or(|e| e.info != info);
        if changed {
            tracing::info!(%bank_id, ingest = %h.ingest.as_deref().unwrap_or("-"), retrieve = %h.retrieve.as_deref().unwrap_or("-"), "bank online");
            self.publish_presence(
                &bank_id,
                Role::Bank,
                PresenceStatus::Online,
                PresenceReason::Registered,
                h.retrieve.clone(),
            );
        }
        let mut entry = Entry::new(info);
        entry.via = h.via.clone();
        entry.key = key.clone();
        let token = entry.token.clone();
        self.banks.insert(bank_id.clone(), entry);
        if let Ok(mut reg) = self.local.write() {
            reg.banks.insert(bank_id.clone(), key);
        }
        encode(&Reply::Hello(HelloAck {
            bank_id: Some(bank_id),
            token: Some(token),
            ..HelloAck::ok(Role::Bank)
        }))
    }

    fn register_relay(&mut self, h: &Hello, key: Option<Arc<str>>) -> Vec<u8> {
        let (rid, ep) = (
            h.relay_id.clone().unwrap_or_default(),
            h.rpc_endpoint.clone().unwrap_or_default(),
        );
        let changed = self
            .relays
            .get(&rid)
            .is_none_or(|e| e.info.rpc_endpoint != ep);
        if changed {
            tracing::info!(relay_id = %rid, endpoint = %ep, "relay online");
            self.publish_presence(
                &rid,
                Role::Relay,
                PresenceStatus::Online,
                PresenceReason::Registered,
                Some(ep.clone()),
            );
        }
        let mut entry = Entry::new(RelayInfo {
            relay_id: rid.clone(),
            rpc_endpoint: ep,
        });
        entry.via = h.via.clone();
        entry.key = key.clone();
        let token = entry.token.clone();
        if let Ok(mut reg) = self.local.write() {
            reg.relays.insert(rid.clone(), key);
        }
        self.relays.insert(rid, entry);
        encode(&Reply::Hello(HelloAck {
            token: Some(token),
            ..HelloAck::ok(Role::Relay)
        }))
    }

    fn check_duplicate(
        &mut self,
        ident: Vec<u8>,
        hello: Hello,
        old_endpoint: String,
        role: Role,
        who: &Who,
    ) {
        let key = who.key.clone();
        let conn = match self.probe_conn(&old_endpoint) {
            Some(c) => c,
            None => {
                // Cannot even connect: treat the old one as gone.
                let _ = self.internal.try_send(Internal::DuplicateChecked {
                    ident,
                    hello: Box::new(hello),
                    old_alive: false,
                    key,
                });
                return;
            }
        };
        let tx = self.internal.clone();
        let password = self.opts.password.to_field();
        let relay_id = hello.relay_id.clone().unwrap_or_default();
        tokio::spawn(async move {
            let old_alive = match role {
                Role::Bank => probe_bank(&conn, password).await,
                _ => conn
                    .rpc(lm::PING, Value::Null, password, PROBE_TIMEOUT)
                    .await
                    .is_ok_and(|o| proves_relay(&o, &relay_id)),
            };
            let _ = tx
                .send(Internal::DuplicateChecked {
                    ident,
                    hello: Box::new(hello),
                    old_alive,
                    key,
                })
                .await;
        });
    }

    fn heartbeat(&mut self, hb: Heartbeat, who: &Who) -> Action {
        if !self.opts.password.accepts(hb.password.as_ref()) {
            labmesh_wire::warn_throttled!("heartbeat with a wrong password ignored");
            return Action::Nothing;
        }
        let now = Instant::now();
        let mut known = false;
        // A heartbeat with a token refreshes only the registration it was
        // handed to (and, from a relay, only at the registered endpoint);
        // a labmesh v0 heartbeat (no token) refreshes by id, as before.
        // With CURVE on, also only from the key that registered it.
        let owns = |token: &str, hb: &Heartbeat| hb.token.as_deref().is_none_or(|t| t == token);
        let curve = self.curve;
        let by_key = |key: &Option<Arc<str>>| !curve || (key.is_some() && *key == who.key);
        if let Some(e) = hb.relay_id.as_ref().and_then(|id| self.relays.get_mut(id)) {
            let at_endpoint = hb
                .rpc_endpoint
                .as_deref()
                .is_none_or(|ep| ep == e.info.rpc_endpoint);
            if owns(&e.token, &hb) && at_endpoint && by_key(&e.key) {
                e.last_seen = now;
                known = true;
            } else {
                labmesh_wire::warn_throttled!(relay_id = %e.info.relay_id, key = %who.fingerprint(), owner = %fingerprint(e.key.as_deref()), peer = %who.address, "heartbeat from another registrant than the registered one");
            }
        }
        if let Some(e) = hb.bank_id.as_ref().and_then(|id| self.banks.get_mut(id)) {
            if owns(&e.token, &hb) && by_key(&e.key) {
                e.last_seen = now;
                known = true;
            } else {
                labmesh_wire::warn_throttled!(bank_id = %e.info.bank_id, key = %who.fingerprint(), owner = %fingerprint(e.key.as_deref()), peer = %who.address, "heartbeat from another registrant than the registered one");
            }
        }
        match hb.rpc_uuid {
            // Extension: acknowledge, so the sender can tell a restarted broker.
            Some(id) => Action::Reply(encode(&Reply::HeartbeatAck {
                rpc_uuid: Value::String(id),
                known,
            })),
            None => Action::Nothing,
        }
    }

    fn bye(&mut self, b: Bye, who: &Who) {
        if !self.opts.password.accepts(b.password.as_ref()) {
            labmesh_wire::warn_throttled!("bye with a wrong password ignored");
            return;
        }
        // Only the registrant may say goodbye: a bye must carry the
        // registration's token (labmesh v0 nodes never send bye).
        // With CURVE on, also only from the key that registered it.
        let curve = self.curve;
        let owner = |e_token: &str, e_key: &Option<Arc<str>>| {
            b.token.as_deref() == Some(e_token)
                && (!curve || (e_key.is_some() && *e_key == who.key))
        };
        let relay = b.relay_id.as_ref().filter(|id| {
            let ok = self
                .relays
                .get(*id)
                .is_some_and(|e| owner(&e.token, &e.key));
            if let Some(e) = self.relays.get(*id).filter(|_| !ok) {
                labmesh_wire::warn_throttled!(relay_id = %id, key = %who.fingerprint(), owner = %fingerprint(e.key.as_deref()), peer = %who.address, "bye from another registrant than the registered one ignored");
            }
            ok
        });
        if let Some(e) = relay.and_then(|id| self.relays.remove(id)) {
            tracing::info!(relay_id = %e.info.relay_id, "relay offline (shutdown)");
            self.probes.remove(&e.info.rpc_endpoint);
            self.publish_presence(
                &e.info.relay_id,
                Role::Relay,
                PresenceStatus::Offline,
                PresenceReason::Shutdown,
                Some(e.info.rpc_endpoint.clone()),
            );
        }
        let bank = b.bank_id.as_ref().filter(|id| {
            let ok = self
                .banks
                .get(*id)
                .is_some_and(|e| owner(&e.token, &e.key));
            if let Some(e) = self.banks.get(*id).filter(|_| !ok) {
                labmesh_wire::warn_throttled!(bank_id = %id, key = %who.fingerprint(), owner = %fingerprint(e.key.as_deref()), peer = %who.address, "bye from another registrant than the registered one ignored");
            }
            ok
        });
        if let Some(e) = bank.and_then(|id| self.banks.remove(id)) {
            tracing::info!(bank_id = %e.info.bank_id, "bank offline (shutdown)");
            self.publish_presence(
                &e.info.bank_id,
                Role::Bank,
                PresenceStatus::Offline,
                PresenceReason::Shutdown,
                e.info.retrieve.clone(),
            );
        }
    }

    fn rpc(&self, r: RpcRequest) -> Vec<u8> {
        let rpc_uuid = r.rpc_uuid;
        if !self.opts.password.accepts(r.password.as_ref()) {
            labmesh_wire::warn_throttled!(method = %r.method, "rpc with a wrong password refused");
            return encode(&Reply::RpcError {
                rpc_uuid,
                error: ErrorBody::new(codes::UNAUTHORIZED, "invalid password"),
            });
        }
        let result: Value = match BrokerMethod::parse(&r.method) {
            BrokerMethod::ListRelayIds => {
                json!(self.relays.values().map(|e| &e.info).collect::<Vec<_>>())
            }
            BrokerMethod::ListBanks => {
                json!(self.banks.values().map(|e| &e.info).collect::<Vec<_>>())
            }
            BrokerMethod::Ping => json!(PingResult {
                ok: true,
                relay_id: None
            }),
            BrokerMethod::Resolve => {
                let params = match serde_json::from_value::<ResolveParams>(r.params) {
                    Ok(p) => p,
                    Err(e) => {
                        return encode(&Reply::RpcError {
                            rpc_uuid,
                            error: ErrorBody::new(
                                codes::BAD_REQUEST,
                                format!("{}: {e}", lm::RESOLVE),
                            ),
                        })
                    }
                };
                match self.relays.get(&params.relay_id) {
                    Some(e) => json!(e.info),
                    None => {
                        return encode(&Reply::RpcError {
                            rpc_uuid,
                            error: ErrorBody::new(
                                codes::NOT_FOUND,
                                format!("relay '{}' is not registered", params.relay_id),
                            ),
                        })
                    }
                }
            }
            BrokerMethod::Unknown(other) => {
                labmesh_wire::warn_throttled!(method = %other, "unknown directory method");
                return encode(&Reply::RpcError {
                    rpc_uuid,
                    error: ErrorBody::new(codes::BAD_REQUEST, format!("unknown method {other}")),
                });
            }
        };
        encode(&Reply::RpcResult { rpc_uuid, result })
    }

    /// Fold in the result of outside work; maybe a deferred reply.
    fn apply(&mut self, ev: Internal) -> Option<(Vec<u8>, Vec<u8>)> {
        match ev {
            Internal::Probed {
                relay_id,
                endpoint,
                alive,
            } => {
                if let Some(e) = self.relays.get_mut(&relay_id) {
                    if e.info.rpc_endpoint == endpoint {
                        e.probing = false;
                        if alive {
                            e.last_seen = Instant::now();
                        }
                    }
                }
                None
            }
            Internal::DuplicateChecked {
                ident,
                hello,
                old_alive,
                key,
            } if hello.role == Some(Role::Bank) => {
                let bid = hello
                    .bank_id
                    .clone()
                    .filter(|s| !s.is_empty())
                    .unwrap_or_else(|| "bank".into());
                if old_alive {
                    let (old, old_via) = self
                        .banks
                        .get(&bid)
                        .map(|e| (e.info.retrieve.clone().unwrap_or_default(), e.via.clone()))
                        .unwrap_or_default();
                    tracing::warn!(bank_id = %bid, existing = %old, refused = %hello.retrieve.as_deref().unwrap_or("-"), "duplicate bank id refused");
                    let reply = encode(&Reply::Error {
                        error: ErrorBody::new(
                            codes::CONFLICT,
                            crate::cascade::clash_message(
                                "bank",
                                &bid,
                                (&old, old_via.as_deref()),
                                (
                                    hello.retrieve.as_deref().unwrap_or("-"),
                                    hello.via.as_deref(),
                                ),
                            ),
                        ),
                    });
                    return Some((ident, reply));
                }
                if let Some(old) = self.banks.get(&bid) {
                    let ep = old.info.retrieve.clone();
                    if let Some(ep) = &ep {
                        self.probes.remove(ep);
                    }
                    self.publish_presence(
                        &bid,
                        Role::Bank,
                        PresenceStatus::Offline,
                        PresenceReason::Replaced,
                        ep,
                    );
                }
                let reply = self.register_bank(&hello, bid, key);
                Some((ident, reply))
            }
            Internal::DuplicateChecked {
                ident,
                hello,
                old_alive,
                key,
            } => {
                let rid = hello.relay_id.clone().unwrap_or_default();
                if old_alive {
                    let (old, old_via) = self
                        .relays
                        .get(&rid)
                        .map(|e| (e.info.rpc_endpoint.clone(), e.via.clone()))
                        .unwrap_or_default();
                    tracing::warn!(relay_id = %rid, existing = %old, refused = %hello.rpc_endpoint.as_deref().unwrap_or("-"), "duplicate relay id refused");
                    let reply = encode(&Reply::Error {
                        error: ErrorBody::new(
                            codes::CONFLICT,
                            crate::cascade::clash_message(
                                "relay",
                                &rid,
                                (&old, old_via.as_deref()),
                                (
                                    hello.rpc_endpoint.as_deref().unwrap_or("-"),
                                    hello.via.as_deref(),
                                ),
                            ),
                        ),
                    });
                    return Some((ident, reply));
                }
                if let Some(old) = self.relays.get(&rid) {
                    let ep = old.info.rpc_endpoint.clone();
                    self.probes.remove(&ep);
                    self.publish_presence(
                        &rid,
                        Role::Relay,
                        PresenceStatus::Offline,
                        PresenceReason::Replaced,
                        Some(ep),
                    );
                }
                let reply = self.register_relay(&hello, key);
                Some((ident, reply))
            }
        }
    }

    fn probe_conn(&mut self, endpoint: &str) -> Option<DealerConn> {
        if let Some(c) = self.probes.get(endpoint) {
            return Some(c.clone());
        }
        match DealerConn::connect(
            &self.ctx,
            endpoint,
            SocketOptions {
                linger_ms: 0,
                ..SocketOptions::default()
            },
        ) {
            Ok(c) => {
                self.probes.insert(endpoint.to_string(), c.clone());
                Some(c)
            }
            Err(e) => {
                tracing::warn!(%endpoint, error = %e, "cannot probe");
                None
            }
        }
    }

    /// Expire silent registrations; probe the quiet ones.
    fn sweep(&mut self) {
        let ttl = self.opts.ttl;
        let expired: Vec<String> = self
            .relays
            .iter()
            .filter(|(_, e)| e.last_seen.elapsed() >= ttl)
            .map(|(k, _)| k.clone())
            .collect();
        for rid in expired {
            if let Some(e) = self.relays.remove(&rid) {
                tracing::warn!(relay_id = %rid, endpoint = %e.info.rpc_endpoint, "relay offline (ttl expired)");
                self.probes.remove(&e.info.rpc_endpoint);
                self.publish_presence(
                    &rid,
                    Role::Relay,
                    PresenceStatus::Offline,
                    PresenceReason::TtlExpired,
                    Some(e.info.rpc_endpoint),
                );
            }
        }
        let expired: Vec<String> = self
            .banks
            .iter()
            .filter(|(_, e)| e.last_seen.elapsed() >= ttl)
            .map(|(k, _)| k.clone())
            .collect();
        for bid in expired {
            if let Some(e) = self.banks.remove(&bid) {
                tracing::warn!(bank_id = %bid, "bank offline (ttl expired)");
                self.publish_presence(
                    &bid,
                    Role::Bank,
                    PresenceStatus::Offline,
                    PresenceReason::TtlExpired,
                    e.info.retrieve,
                );
            }
        }
        let quiet: Vec<(String, String)> = self
            .relays
            .iter()
            .filter(|(_, e)| !e.probing && e.last_seen.elapsed() >= ttl / 2)
            .map(|(k, e)| (k.clone(), e.info.rpc_endpoint.clone()))
            .collect();
        for (relay_id, endpoint) in quiet {
            let Some(conn) = self.probe_conn(&endpoint) else {
                continue;
            };
            if let Some(e) = self.relays.get_mut(&relay_id) {
                e.probing = true;
            }
            let tx = self.internal.clone();
            let timeout = PROBE_TIMEOUT.min(ttl / 2);
            // Probes carry the password like every other request, and only
            // a relay's answer proves life.
            let password = self.opts.password.to_field();
            let id = relay_id.clone();
            tokio::spawn(async move {
                let alive = conn
                    .rpc(lm::PING, Value::Null, password, timeout)
                    .await
                    .is_ok_and(|o| proves_relay(&o, &id));
                let _ = tx
                    .send(Internal::Probed {
                        relay_id,
                        endpoint,
                        alive,
                    })
                    .await;
            });
        }
    }

    fn publish_presence(
        &mut self,
        id: &str,
        role: Role,
        status: PresenceStatus,
        reason: PresenceReason,
        endpoint: Option<String>,
    ) {
        // Every removal passes here (registrations are shared where the
        // entry is made, with its key): keep the shared map exact.
        if status != PresenceStatus::Online {
            if let Ok(mut reg) = self.local.write() {
                match role {
                    Role::Bank => reg.banks.remove(id),
                    _ => reg.relays.remove(id),
                };
            }
        }
        let Some(sock) = self.presence.as_mut() else {
            return;
        };
        let body = encode(&Presence {
            id: id.to_string(),
            role,
            status,
            reason,
            endpoint,
            ts: labmesh_proto::unix_now(),
        });
        let topic = topic::presence(id);
        if let Err(e) = sock.try_send_multipart(&[topic.as_bytes(), &body]) {
            tracing::warn!(error = %e, "presence publish failed");
        }
    }
}
