//! labmesh-client: talk to a labmesh mesh from async Rust.
//!
//! ```no_run
//! # async fn demo() -> Result<(), labmesh_client::ClientError> {
//! use labmesh_client::{Client, ClientOptions};
//! let ctx = zmq::Context::new();
//! let client = Client::connect(&ctx, ClientOptions::new("tcp://127.0.0.1:5750", "tcp://127.0.0.1:5752")).await?;
//! println!("{:?}", client.list_relays().await?);
//! let psu = client.relay("Inst-0").await?;
//! psu.call("set_voltage", serde_json::json!({"value": 2.5})).await?;
//! let mut states = client.events();
//! while let Ok(ev) = states.recv().await {
//!     println!("{ev:?}");
//! }
//! # Ok(()) }
//! ```
//!
//! Receiving: [`Client::events`] is a *queue* (every state and dataset
//! message, in order; a slow reader is told how many it missed), and
//! [`Client::latest_state`] is a *cache* (the newest state of each relay).
//! [`Client::subscribe_stream`] and [`Client::subscribe_state`] give one
//! relay's stream samples or states with a receive mode of their own
//! ([`Receive::Cache`] or [`Receive::Queue`], see [`subscribe`]).

pub mod subscribe;

pub use subscribe::{Receive, RecvError, Sample, Subscription, SubscriptionStats};

mod lease;

pub use labmesh_proto::lease::{LeaseInfo, LockEvent, LockEventKind};
pub use lease::{default_holder, Lease, LockOptions};

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use labmesh_proto::lm::{self, ResolveParams};
use labmesh_proto::mesh::{
    encode, BankInfo, DatasetAnnounce, Hello, Presence, PresenceStatus, RelayInfo, Reply, Request,
    Role, StateMsg,
};
use labmesh_proto::topic::{self, TopicFamily};
use labmesh_proto::{codes, ErrorBody};
use labmesh_transfer::{
    DatasetInfo, DownloadOptions, DownloadReceipt, Query, UploadOptions, UploadReceipt,
};
use labmesh_wire::auth::Password;
use labmesh_wire::socket::{AfterError, RecvErrors};
use labmesh_wire::{AsyncSocket, DealerConn, SocketOptions, WireError};
use serde_json::Value;
use tokio::sync::{broadcast, watch};

/// Errors from client calls.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Socket-level failure.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// The broker has no relay (or bank) by that id.
    #[error("{0} not found")]
    NotFound(String),
    /// The call did not complete in time.
    #[error("{target}.{method}: no reply within {after:?}")]
    Timeout {
        /// Relay id (or `broker`).
        target: String,
        /// Method called.
        method: String,
        /// The deadline.
        after: Duration,
    },
    /// The remote side answered with an error.
    #[error("{target}.{method}: error {code}: {message}")]
    Remote {
        /// Relay id (or `broker`).
        target: String,
        /// Method called.
        method: String,
        /// Stable error code (400, 404, 408, ...).
        code: i64,
        /// The remote message.
        message: String,
    },
    /// The broker refused our hello (wrong password).
    #[error("broker refused the connection: {0}")]
    Refused(String),
    /// A dataset transfer or catalogue query failed.
    #[error(transparent)]
    Transfer(#[from] labmesh_transfer::TransferError),
    /// A subscription was asked of a client made without the bus
    /// ([`ClientOptions::without_bus`]).
    #[error("this client was connected without the bus: it cannot subscribe")]
    NoBus,
    /// A reply had an unexpected shape.
    #[error("unexpected reply from {target}: {detail}")]
    Unexpected {
        /// Who answered.
        target: String,
        /// What was odd.
        detail: String,
    },
}

impl ClientError {
    /// The remote error code, if the remote side answered with an error.
    pub fn code(&self) -> Option<i64> {
        match self {
            ClientError::Remote { code, .. } => Some(*code),
            ClientError::Timeout { .. } => Some(codes::TIMEOUT),
            ClientError::NotFound(_) => Some(codes::NOT_FOUND),
            _ => None,
        }
    }
}

/// How to reach the mesh.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Broker directory endpoint.
    pub broker_rpc: String,
    /// Broker XPUB endpoint.
    pub broker_xpub: String,
    /// Deadline for one call.
    pub timeout: Duration,
    /// Shared network password.
    pub password: Password,
    /// Subscribe to the bus (events, state cache, presence-driven
    /// re-resolution). Off for one-shot commands that only call: no SUB
    /// socket, no listener task.
    pub subscribe: bool,
}

impl ClientOptions {
    /// Options with the default timeout
    /// ([`labmesh_proto::limits::DEFAULT_CLIENT_TIMEOUT`]: longer than a
    /// relay's call deadline), the password from the environment, and a bus
    /// subscription.
    pub fn new(broker_rpc: &str, broker_xpub: &str) -> Self {
        ClientOptions {
            broker_rpc: broker_rpc.to_string(),
            broker_xpub: broker_xpub.to_string(),
            timeout: labmesh_proto::limits::DEFAULT_CLIENT_TIMEOUT,
            password: Password::from_env(),
            subscribe: true,
        }
    }

    /// The same options without a bus subscription (see
    /// [`ClientOptions::subscribe`]).
    pub fn without_bus(self) -> Self {
        ClientOptions {
            subscribe: false,
            ..self
        }
    }

    /// From the `[client]` table (`BROKER` resolved).
    pub fn from_config(cfg: &labmesh_config::Config) -> Self {
        ClientOptions {
            timeout: cfg.client.timeout_seconds.duration(),
            ..ClientOptions::new(
                &cfg.at_broker(&cfg.client.broker_rpc),
                &cfg.at_broker(&cfg.client.broker_xpub),
            )
        }
    }
}

/// A state message as received.
#[derive(Debug, Clone, PartialEq)]
pub struct StateUpdate {
    /// The relay.
    pub relay_id: String,
    /// The driver's state.
    pub state: Value,
    /// Sequence number (Rust relays; None from Python relays).
    pub seq: Option<u64>,
    /// Publish time (Rust relays).
    pub ts: Option<f64>,
    /// The relay republished its last state because the instrument is busy.
    pub stale: bool,
    /// The relay's state interval in seconds (Rust relays).
    pub interval: Option<f64>,
}

/// How a relay's state stream looks from this client.
#[derive(Debug, Clone, PartialEq)]
pub struct StateHealth {
    /// The newest state.
    pub last: StateUpdate,
    /// State messages missed (gaps in `seq`) since the client connected.
    pub gaps: u64,
    /// No state for three intervals (or three seconds when the relay does
    /// not say its interval).
    pub stale: bool,
}

struct Tracked {
    last: StateUpdate,
    at: std::time::Instant,
    gaps: u64,
}

/// Something published on the bus.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// `state.<relay_id>`
    State(StateUpdate),
    /// `dataset.<bank_id>`
    Dataset(DatasetAnnounce),
    /// `presence.<id>` (ext): a relay or bank came online or went offline.
    Presence(Presence),
    /// `lock.<relay_id>` (ext): an instrument lease changed.
    Lock(LockEvent),
}

/// A connection to the mesh: the broker directory plus the state bus.
///
/// Clones share one connection. When the last clone is dropped (or on
/// [`Client::close`]), the bus listener stops and every socket the client
/// opened (SUB, the broker's and each cached relay's DEALER) is closed.
#[derive(Clone)]
pub struct Client {
    ctx: zmq::Context,
    broker: DealerConn,
    opts: ClientOptions,
    events: broadcast::Sender<Event>,
    latest: Arc<Mutex<HashMap<String, Tracked>>>,
    relays: Arc<Mutex<HashMap<String, RelayClient>>>,
    /// Dropped with the last clone: the listener sees its sender go.
    stop: Arc<watch::Sender<bool>>,
    /// Whether the broker serves `lm.resolve` (None: not asked yet).
    resolves: Arc<Mutex<Option<bool>>>,
    /// Stream and state subscriptions with a receive mode.
    subs: Arc<Mutex<subscribe::Registry>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("broker", &self.opts.broker_rpc)
            .finish()
    }
}

impl Client {
    /// Connect to the broker, say hello, and subscribe to the bus.
    pub async fn connect(ctx: &zmq::Context, opts: ClientOptions) -> Result<Client, ClientError> {
        let broker = DealerConn::connect(ctx, &opts.broker_rpc, SocketOptions::default())?;
        let hello = Request::Hello(Hello {
            role: Some("client".into()),
            password: opts.password.to_field(),
            ..Hello::default()
        });
        let reply = broker
            .request(encode(&hello), None, opts.timeout)
            .await
            .map_err(|e| match e {
                // Names the endpoint: with CURVE, a wrong server key looks
                // exactly like this (the handshake never completes).
                WireError::Timeout(after) => ClientError::Timeout {
                    target: format!("broker[{}]", opts.broker_rpc),
                    method: "hello".into(),
                    after,
                },
                other => other.into(),
            })?;
        match reply {
            Reply::Hello(ack) if ack.ok => {}
            Reply::Hello(ack) => {
                return Err(ClientError::Refused(
                    ack.error.map(|e| e.to_string()).unwrap_or_default(),
                ))
            }
            Reply::Error { error } => return Err(ClientError::Refused(error.to_string())),
            other => {
                return Err(ClientError::Unexpected {
                    target: "broker".into(),
                    detail: String::from_utf8_lossy(&encode(&other)).into_owned(),
                })
            }
        }
        let (events, _) = broadcast::channel(4096);
        let latest = Arc::new(Mutex::new(HashMap::new()));
        let relays = Arc::new(Mutex::new(HashMap::new()));
        let (stop, stop_rx) = watch::channel(false);
        let subs = Arc::new(Mutex::new(subscribe::Registry::new()));
        if opts.subscribe {
            let mut sub = AsyncSocket::new(ctx, zmq::SUB, SocketOptions::default())?;
            for prefix in [
                topic::STATE_PREFIX,
                topic::DATASET_PREFIX,
                topic::PRESENCE_PREFIX,
                topic::LOCK_PREFIX,
            ] {
                sub.raw()
                    .set_subscribe(prefix.as_bytes())
                    .map_err(WireError::from)?;
            }
            sub.connect(&opts.broker_xpub)?;
            tokio::spawn(listen(
                sub,
                events.clone(),
                latest.clone(),
                Arc::downgrade(&relays),
                subs.clone(),
                stop_rx,
            ));
        }
        Ok(Client {
            ctx: ctx.clone(),
            broker,
            opts,
            events,
            latest,
            relays,
            stop: Arc::new(stop),
            resolves: Arc::new(Mutex::new(None)),
            subs,
        })
    }

    /// Subscribe to `relay_id`'s stream `stream` (exactly that stream: not
    /// `stream2`). The newest sample so far is delivered at once (from
    /// `lm.last`; a relay that cannot be asked is no error, the bus still
    /// delivers), then every sample as the mode keeps it.
    pub async fn subscribe_stream(
        &self,
        relay_id: &str,
        stream: &str,
        mode: Receive,
    ) -> Result<Subscription<Sample>, ClientError> {
        if !self.opts.subscribe {
            return Err(ClientError::NoBus);
        }
        let sub = subscribe::add_stream(&self.subs, relay_id, stream, mode);
        match self.relay(relay_id).await {
            Ok(r) => match r.last(stream).await {
                Ok(Some(s)) => {
                    let seq = s.header.seq;
                    sub.inbox().seed(s, seq);
                }
                Ok(None) => {}
                Err(e @ ClientError::Remote { code: 404, .. }) => return Err(e),
                Err(e) => {
                    tracing::debug!(%relay_id, %stream, error = %e, "lm.last failed; waiting for the bus")
                }
            },
            Err(e) => {
                tracing::debug!(%relay_id, error = %e, "relay not resolved; waiting for the bus")
            }
        }
        Ok(sub)
    }

    /// Subscribe to `relay_id`'s state messages with a receive mode of
    /// their own; the newest state already received is delivered at once.
    pub fn subscribe_state(
        &self,
        relay_id: &str,
        mode: Receive,
    ) -> Result<Subscription<StateUpdate>, ClientError> {
        if !self.opts.subscribe {
            return Err(ClientError::NoBus);
        }
        let sub = subscribe::add_state(&self.subs, relay_id, mode);
        if let Some(h) = self.state_health(relay_id) {
            match h.last.seq {
                Some(seq) => sub.inbox().seed(h.last, seq),
                None => sub.inbox().deliver(h.last, None),
            }
        }
        Ok(sub)
    }

    /// Stop the bus listener and close every cached relay connection now
    /// (dropping the last clone does the same). Calls made afterwards still
    /// work; events stop.
    pub fn close(&self) {
        let _ = self.stop.send(true);
        if let Ok(mut m) = self.relays.lock() {
            m.clear();
        }
    }

    async fn broker_rpc(&self, method: &str) -> Result<Value, ClientError> {
        rpc(
            &self.broker,
            "broker",
            method,
            Value::Object(Default::default()),
            &self.opts,
        )
        .await
    }

    /// Relays registered with the broker, sorted by id.
    pub async fn list_relays(&self) -> Result<Vec<RelayInfo>, ClientError> {
        let v = self.broker_rpc("list_relay_ids").await?;
        serde_json::from_value(v).map_err(|e| ClientError::Unexpected {
            target: "broker".into(),
            detail: e.to_string(),
        })
    }

    /// Banks registered with the broker, sorted by id.
    pub async fn list_banks(&self) -> Result<Vec<BankInfo>, ClientError> {
        let v = self.broker_rpc("list_banks").await?;
        serde_json::from_value(v).map_err(|e| ClientError::Unexpected {
            target: "broker".into(),
            detail: e.to_string(),
        })
    }

    /// Wait until the broker lists `relay_id` (asks every 50 ms; a broker
    /// that is down or restarting is asked again until `timeout`).
    pub async fn wait_for_relay(
        &self,
        relay_id: &str,
        timeout: Duration,
    ) -> Result<RelayInfo, ClientError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let attempt = Duration::from_millis(500).min(self.opts.timeout).min(left);
            let opts = ClientOptions {
                timeout: attempt.max(Duration::from_millis(1)),
                ..self.opts.clone()
            };
            let listed = rpc(
                &self.broker,
                "broker",
                "list_relay_ids",
                Value::Object(Default::default()),
                &opts,
            )
            .await;
            if let Ok(v) = listed {
                let relays: Vec<RelayInfo> =
                    serde_json::from_value(v).map_err(|e| ClientError::Unexpected {
                        target: "broker".into(),
                        detail: e.to_string(),
                    })?;
                if let Some(r) = relays.into_iter().find(|r| r.relay_id == relay_id) {
                    return Ok(r);
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ClientError::NotFound(format!(
                    "relay '{relay_id}' (waited {timeout:?})"
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The bank `bank_id`, or the first registered bank when `None`.
    pub async fn bank(&self, bank_id: Option<&str>) -> Result<BankClient, ClientError> {
        let banks = self.list_banks().await?;
        let info = match bank_id {
            Some(id) => banks.into_iter().find(|b| b.bank_id == id),
            None => banks.into_iter().next(),
        }
        .ok_or_else(|| ClientError::NotFound(format!("bank '{}'", bank_id.unwrap_or("(any)"))))?;
        Ok(BankClient::new(&self.ctx, info, self.opts.password.clone()))
    }

    /// Every registered bank.
    pub async fn banks(&self) -> Result<Vec<BankClient>, ClientError> {
        Ok(self
            .list_banks()
            .await?
            .into_iter()
            .map(|b| BankClient::new(&self.ctx, b, self.opts.password.clone()))
            .collect())
    }

    /// Wait until a dataset announcement matching `pred` arrives.
    pub async fn wait_dataset(
        &self,
        timeout: Duration,
        mut pred: impl FnMut(&DatasetAnnounce) -> bool,
    ) -> Result<DatasetAnnounce, ClientError> {
        self.wait_event("bus", "dataset", timeout, |ev| match ev {
            Event::Dataset(d) if pred(&d) => Some(d),
            _ => None,
        })
        .await
    }

    /// Wait until `pick` takes an event from the bus; `target`/`what` name
    /// the wait in the timeout error.
    pub async fn wait_event<T>(
        &self,
        target: &str,
        what: &str,
        timeout: Duration,
        mut pick: impl FnMut(Event) -> Option<T>,
    ) -> Result<T, ClientError> {
        let mut rx = self.events();
        let fut = async {
            loop {
                match rx.recv().await {
                    Ok(ev) => {
                        if let Some(t) = pick(ev) {
                            return Ok(t);
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => {
                        return Err(ClientError::Wire(WireError::Closed))
                    }
                }
            }
        };
        tokio::time::timeout(timeout, fut)
            .await
            .map_err(|_| ClientError::Timeout {
                target: target.to_string(),
                method: what.to_string(),
                after: timeout,
            })?
    }

    /// Ask the broker whether it is alive.
    pub async fn ping(&self) -> Result<(), ClientError> {
        self.broker_rpc("ping").await.map(|_| ())
    }

    /// A handle on `relay_id`, resolved through the broker (and cached; see
    /// [`Client::forget_relay`]).
    pub async fn relay(&self, relay_id: &str) -> Result<RelayClient, ClientError> {
        if let Some(r) = self.cached(relay_id) {
            return Ok(r);
        }
        let info = self.resolve(relay_id).await?;
        let r = RelayClient::connect(&self.ctx, relay_id, &info.rpc_endpoint, self.opts.clone())?;
        if let Ok(mut m) = self.relays.lock() {
            m.insert(relay_id.to_string(), r.clone());
        }
        Ok(r)
    }

    /// Where `relay_id` is registered: one `lm.resolve` to a Rust broker;
    /// against a labmesh v0 broker (which does not know it), the relay list.
    pub async fn resolve(&self, relay_id: &str) -> Result<RelayInfo, ClientError> {
        let known = self.resolves.lock().ok().and_then(|g| *g);
        if known != Some(false) {
            let params = serde_json::to_value(ResolveParams {
                relay_id: relay_id.to_string(),
            })
            .unwrap_or(Value::Null);
            match rpc(&self.broker, "broker", lm::RESOLVE, params, &self.opts).await {
                Ok(v) => {
                    self.set_resolves(true);
                    return serde_json::from_value(v).map_err(|e| ClientError::Unexpected {
                        target: "broker".into(),
                        detail: e.to_string(),
                    });
                }
                Err(ClientError::Remote { code, .. }) if code == codes::NOT_FOUND => {
                    self.set_resolves(true);
                    return Err(ClientError::NotFound(format!("relay '{relay_id}'")));
                }
                // labmesh v0: "unknown method lm.resolve" (400).
                Err(ClientError::Remote { code, .. }) if code == codes::BAD_REQUEST => {
                    self.set_resolves(false);
                }
                Err(e) => return Err(e),
            }
        }
        self.list_relays()
            .await?
            .into_iter()
            .find(|r| r.relay_id == relay_id)
            .ok_or_else(|| ClientError::NotFound(format!("relay '{relay_id}'")))
    }

    fn set_resolves(&self, yes: bool) {
        if let Ok(mut g) = self.resolves.lock() {
            *g = Some(yes);
        }
    }

    fn cached(&self, relay_id: &str) -> Option<RelayClient> {
        self.relays
            .lock()
            .ok()
            .and_then(|m| m.get(relay_id).cloned())
    }

    /// Drop the cached endpoint of `relay_id` (the next [`Client::relay`]
    /// asks the broker again).
    pub fn forget_relay(&self, relay_id: &str) {
        if let Ok(mut m) = self.relays.lock() {
            m.remove(relay_id);
        }
    }

    /// Call `method` on `relay_id`. When the call times out or the
    /// connection is gone, the relay's endpoint is asked of the broker again;
    /// if the relay has moved (restarted on another port), the call is sent
    /// once more to the new endpoint.
    pub async fn call(
        &self,
        relay_id: &str,
        method: &str,
        params: Value,
    ) -> Result<Value, ClientError> {
        let relay = self.relay(relay_id).await?;
        match relay.call(method, params.clone()).await {
            Err(e @ (ClientError::Timeout { .. } | ClientError::Wire(WireError::Closed))) => {
                self.forget_relay(relay_id);
                match self.relay(relay_id).await {
                    Ok(moved) if moved.endpoint() != relay.endpoint() => {
                        tracing::info!(%relay_id, from = %relay.endpoint(), to = %moved.endpoint(), "relay moved; calling it at its new endpoint");
                        moved.call(method, params).await
                    }
                    _ => Err(e),
                }
            }
            other => other,
        }
    }

    /// Queue mode: every state, dataset and presence message from now on.
    pub fn events(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// Cache mode: the newest state of `relay_id`, if any arrived.
    pub fn latest_state(&self, relay_id: &str) -> Option<StateUpdate> {
        self.latest
            .lock()
            .ok()
            .and_then(|m| m.get(relay_id).map(|t| t.last.clone()))
    }

    /// The newest state of `relay_id` with its gap count and staleness.
    pub fn state_health(&self, relay_id: &str) -> Option<StateHealth> {
        let m = self.latest.lock().ok()?;
        let t = m.get(relay_id)?;
        let interval = t
            .last
            .interval
            .filter(|i| i.is_finite() && *i > 0.0)
            .unwrap_or(1.0);
        Some(StateHealth {
            last: t.last.clone(),
            gaps: t.gaps,
            stale: t.at.elapsed().as_secs_f64() > 3.0 * interval,
        })
    }

    /// Wait until a state of `relay_id` matching `pred` arrives.
    pub async fn wait_state(
        &self,
        relay_id: &str,
        timeout: Duration,
        mut pred: impl FnMut(&StateUpdate) -> bool,
    ) -> Result<StateUpdate, ClientError> {
        self.wait_event(relay_id, "state", timeout, |ev| match ev {
            Event::State(s) if s.relay_id == relay_id && pred(&s) => Some(s),
            _ => None,
        })
        .await
    }
}

async fn listen(
    mut sub: AsyncSocket,
    events: broadcast::Sender<Event>,
    latest: Arc<Mutex<HashMap<String, Tracked>>>,
    relays: std::sync::Weak<Mutex<HashMap<String, RelayClient>>>,
    subs: Arc<Mutex<subscribe::Registry>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut errors = RecvErrors::new("client bus listener");
    let changed = subs.lock().map(|r| r.changed.clone()).ok();
    let mut subscribed: std::collections::HashSet<(String, String)> = Default::default();
    loop {
        let frames = tokio::select! {
            biased;
            // The last Client clone dropped its sender, or close() was called.
            _ = stop.changed() => break,
            _ = async { match &changed { Some(c) => c.notified().await, None => std::future::pending().await } } => {
                reconcile(&mut sub, &subs, &mut subscribed);
                continue;
            }
            f = sub.recv_multipart() => f,
        };
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
        let Some(t) = frames.first() else { continue };
        let Some((family, _)) = topic::parse(t) else {
            continue;
        };
        if family == TopicFamily::Stream {
            deliver_sample(&subs, frames);
            continue;
        }
        let [_, body] = frames.as_slice() else {
            labmesh_wire::warn_throttled!(
                frames = frames.len(),
                "bus message without exactly [topic, body]"
            );
            continue;
        };
        // Decoded once, straight into the typed body.
        let ev = match family {
            TopicFamily::State => serde_json::from_slice::<StateMsg>(body).map(|m| {
                Event::State(StateUpdate {
                    relay_id: m.relay_id,
                    state: m.state,
                    seq: m.seq,
                    ts: m.ts,
                    stale: m.stale.unwrap_or(false),
                    interval: m.interval,
                })
            }),
            TopicFamily::Dataset => {
                serde_json::from_slice::<DatasetAnnounce>(body).map(Event::Dataset)
            }
            TopicFamily::Presence => serde_json::from_slice::<Presence>(body).map(Event::Presence),
            TopicFamily::Lock => serde_json::from_slice::<LockEvent>(body).map(Event::Lock),
            TopicFamily::Stream => continue,
        };
        let ev = match ev {
            Ok(ev) => ev,
            Err(e) => {
                labmesh_wire::warn_throttled!(?family, error = %e, "malformed bus message");
                continue;
            }
        };
        match &ev {
            Event::State(s) => {
                track(&latest, s);
                if let Ok(mut r) = subs.lock() {
                    r.deliver_state(s);
                }
            }
            Event::Presence(p) if p.role == Role::Relay => {
                // A relay that went offline or came back elsewhere: resolve
                // it again on the next call.
                let Some(cache) = relays.upgrade() else { break };
                if let Ok(mut m) = cache.lock() {
                    if m.get(&p.id).is_some_and(|r| {
                        p.status != PresenceStatus::Online
                            || p.endpoint.as_deref() != Some(r.endpoint())
                    }) {
                        m.remove(&p.id);
                    }
                };
            }
            _ => {}
        }
        // No receivers is fine: cache mode only.
        let _ = events.send(ev);
    }
    if let Ok(mut r) = subs.lock() {
        r.close_all();
    }
    tracing::debug!("client bus listener stopped");
}

/// Make the SUB socket's stream subscriptions those someone listens to.
fn reconcile(
    sub: &mut AsyncSocket,
    subs: &Mutex<subscribe::Registry>,
    subscribed: &mut std::collections::HashSet<(String, String)>,
) {
    let wanted: std::collections::HashSet<(String, String)> = match subs.lock() {
        Ok(mut r) => r.wanted_streams().into_iter().collect(),
        Err(_) => return,
    };
    for k in wanted.difference(subscribed) {
        if let Err(e) = sub.raw().set_subscribe(&topic::stream(&k.0, &k.1)) {
            tracing::warn!(relay_id = %k.0, stream = %k.1, error = %e, "cannot subscribe to a stream");
        }
    }
    for k in subscribed.difference(&wanted) {
        let _ = sub.raw().set_unsubscribe(&topic::stream(&k.0, &k.1));
    }
    *subscribed = wanted;
}

/// `[topic, header]` or `[topic, header, bytes]`: decode once, deliver to
/// the subscriptions of exactly that relay and stream.
fn deliver_sample(subs: &Mutex<subscribe::Registry>, mut frames: Vec<Vec<u8>>) {
    let binary = match frames.len() {
        2 => None,
        3 => frames.pop(),
        n => {
            labmesh_wire::warn_throttled!(
                frames = n,
                "stream message without [topic, header(, bytes)]"
            );
            return;
        }
    };
    let header: labmesh_proto::stream::StreamSample = match serde_json::from_slice(&frames[1]) {
        Ok(h) => h,
        Err(e) => {
            labmesh_wire::warn_throttled!(error = %e, "malformed stream sample");
            return;
        }
    };
    if header.binary.map(|n| n as usize) != binary.as_ref().map(Vec::len) {
        labmesh_wire::warn_throttled!(relay_id = %header.relay_id, stream = %header.stream, "stream sample whose binary length does not match its frame");
        return;
    }
    if let Ok(mut r) = subs.lock() {
        r.deliver_sample(Sample { header, binary });
    }
}

/// Record a state in the cache, counting sequence gaps.
fn track(latest: &Mutex<HashMap<String, Tracked>>, s: &StateUpdate) {
    let Ok(mut m) = latest.lock() else { return };
    let now = std::time::Instant::now();
    match m.get_mut(&s.relay_id) {
        Some(t) => {
            if let (Some(prev), Some(seq)) = (t.last.seq, s.seq) {
                if seq > prev + 1 {
                    let missed = seq - prev - 1;
                    t.gaps += missed;
                    tracing::debug!(relay_id = %s.relay_id, missed, "state sequence gap");
                }
                // seq <= prev: the relay restarted; start counting afresh.
            }
            t.last = s.clone();
            t.at = now;
        }
        None => {
            m.insert(
                s.relay_id.clone(),
                Tracked {
                    last: s.clone(),
                    at: now,
                    gaps: 0,
                },
            );
        }
    }
}

async fn rpc(
    conn: &DealerConn,
    target: &str,
    method: &str,
    params: Value,
    opts: &ClientOptions,
) -> Result<Value, ClientError> {
    rpc_leased(conn, target, method, params, None, opts).await
}

async fn rpc_leased(
    conn: &DealerConn,
    target: &str,
    method: &str,
    params: Value,
    lease: Option<u64>,
    opts: &ClientOptions,
) -> Result<Value, ClientError> {
    match conn
        .rpc_leased(
            method,
            params,
            opts.password.to_field(),
            lease,
            opts.timeout,
        )
        .await
    {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(ErrorBody { code, message })) => Err(ClientError::Remote {
            target: target.to_string(),
            method: method.to_string(),
            code,
            message,
        }),
        Err(WireError::Timeout(after)) => Err(ClientError::Timeout {
            target: target.to_string(),
            method: method.to_string(),
            after,
        }),
        Err(e) => Err(e.into()),
    }
}

fn stream_name(name: &str) -> labmesh_proto::stream::StreamName {
    labmesh_proto::stream::StreamName {
        name: name.to_string(),
    }
}

/// A databank as the broker lists it: download, upload, query.
#[derive(Clone)]
pub struct BankClient {
    ctx: zmq::Context,
    info: BankInfo,
    password: Password,
}

impl std::fmt::Debug for BankClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BankClient")
            .field("bank", &self.info)
            .finish()
    }
}

impl BankClient {
    /// A client for the bank `info` describes.
    pub fn new(ctx: &zmq::Context, info: BankInfo, password: Password) -> Self {
        BankClient {
            ctx: ctx.clone(),
            info,
            password,
        }
    }

    /// The bank's id and endpoints.
    pub fn info(&self) -> &BankInfo {
        &self.info
    }

    fn retrieve(&self) -> Result<&str, ClientError> {
        self.info.retrieve.as_deref().ok_or_else(|| {
            ClientError::NotFound(format!("retrieve endpoint of bank '{}'", self.info.bank_id))
        })
    }

    /// Download `dataset_id` into `dest` (verified size and SHA-256; written
    /// to a temporary file that is renamed into place).
    pub async fn download(
        &self,
        dataset_id: &str,
        dest: &std::path::Path,
    ) -> Result<DownloadReceipt, ClientError> {
        self.download_with(dataset_id, dest, DownloadOptions::default())
            .await
    }

    /// [`BankClient::download`] with options (credit, resume, progress).
    pub async fn download_with(
        &self,
        dataset_id: &str,
        dest: &std::path::Path,
        mut opts: DownloadOptions,
    ) -> Result<DownloadReceipt, ClientError> {
        if !opts.password.is_set() {
            opts.password = self.password.clone();
        }
        Ok(
            labmesh_transfer::download_to_file(&self.ctx, self.retrieve()?, dataset_id, dest, opts)
                .await?,
        )
    }

    /// Open `dataset_id` as a stream of chunks (verified as they pass; see
    /// [`labmesh_transfer::DownloadStream`]), to forward it without a local
    /// copy.
    pub async fn download_stream(
        &self,
        dataset_id: &str,
        mut opts: DownloadOptions,
    ) -> Result<labmesh_transfer::DownloadStream, ClientError> {
        if !opts.password.is_set() {
            opts.password = self.password.clone();
        }
        Ok(
            labmesh_transfer::DownloadStream::open(&self.ctx, self.retrieve()?, dataset_id, opts)
                .await?,
        )
    }

    /// The bank's catalogue, newest first (extension; a labmesh v0 bank
    /// answers 400).
    pub async fn list_datasets(&self, mut query: Query) -> Result<Vec<DatasetInfo>, ClientError> {
        if query.password.is_none() {
            query.password = self.password.to_field();
        }
        Ok(labmesh_transfer::list_datasets(&self.ctx, self.retrieve()?, query).await?)
    }

    /// Upload a file to this bank; returns once the bank committed it.
    pub async fn upload_file(
        &self,
        path: &std::path::Path,
        mut opts: UploadOptions,
    ) -> Result<UploadReceipt, ClientError> {
        if !opts.password.is_set() {
            opts.password = self.password.clone();
        }
        let ingest = self.info.ingest.as_deref().ok_or_else(|| {
            ClientError::NotFound(format!("ingest endpoint of bank '{}'", self.info.bank_id))
        })?;
        Ok(labmesh_transfer::upload_file(&self.ctx, ingest, path, opts).await?)
    }
}

/// A connection to one relay; cheap to clone, calls may run concurrently.
#[derive(Clone, Debug)]
pub struct RelayClient {
    relay_id: String,
    conn: DealerConn,
    opts: ClientOptions,
    /// The lease token attached to every call (shared by clones; set by a
    /// [`Lease`] or [`RelayClient::use_lease`]).
    lease: Arc<Mutex<Option<u64>>>,
}

impl RelayClient {
    /// Connect directly to a relay's RPC endpoint.
    pub fn connect(
        ctx: &zmq::Context,
        relay_id: &str,
        endpoint: &str,
        opts: ClientOptions,
    ) -> Result<RelayClient, ClientError> {
        let conn = DealerConn::connect(ctx, endpoint, SocketOptions::default())?;
        Ok(RelayClient {
            relay_id: relay_id.to_string(),
            conn,
            opts,
            lease: Arc::new(Mutex::new(None)),
        })
    }

    /// The relay id.
    pub fn relay_id(&self) -> &str {
        &self.relay_id
    }

    /// The relay's RPC endpoint.
    pub fn endpoint(&self) -> &str {
        self.conn.endpoint()
    }

    /// Call `method`; `params` is an object (named), array (positional),
    /// scalar (single) or null.
    pub async fn call(&self, method: &str, params: Value) -> Result<Value, ClientError> {
        let lease = self.lease.lock().ok().and_then(|g| *g);
        rpc_leased(
            &self.conn,
            &self.relay_id,
            method,
            params,
            lease,
            &self.opts,
        )
        .await
    }

    /// Call `method` carrying `lease` (a token from `lm.lock`) for this
    /// call only, whatever [`RelayClient::use_lease`] set: a node that
    /// calls for many users (the web dashboard) passes each one's own.
    pub async fn call_leased(
        &self,
        method: &str,
        params: Value,
        lease: Option<u64>,
    ) -> Result<Value, ClientError> {
        rpc_leased(
            &self.conn,
            &self.relay_id,
            method,
            params,
            lease,
            &self.opts,
        )
        .await
    }

    /// The relay's methods and parameters (`lm.describe`).
    pub async fn describe(&self) -> Result<Value, ClientError> {
        self.call("lm.describe", Value::Null).await
    }

    async fn typed<P: serde::Serialize, R: serde::de::DeserializeOwned>(
        &self,
        method: &str,
        params: &P,
    ) -> Result<R, ClientError> {
        let v = self
            .call(method, serde_json::to_value(params).unwrap_or(Value::Null))
            .await?;
        serde_json::from_value(v).map_err(|e| ClientError::Unexpected {
            target: self.relay_id.clone(),
            detail: format!("{method}: {e}"),
        })
    }

    /// Every stream of the relay with its rate and health (`lm.streams`).
    pub async fn streams(&self) -> Result<labmesh_proto::stream::StreamsResult, ClientError> {
        self.typed(lm::STREAMS, &Value::Null).await
    }

    /// Add a stream, or replace the one of that name (`lm.stream_add`).
    pub async fn stream_add(
        &self,
        spec: &labmesh_proto::stream::StreamSpec,
    ) -> Result<labmesh_proto::stream::StreamChanged, ClientError> {
        self.typed(lm::STREAM_ADD, spec).await
    }

    /// Remove a stream (`lm.stream_remove`; removing a missing one is fine).
    pub async fn stream_remove(
        &self,
        name: &str,
    ) -> Result<labmesh_proto::stream::StreamChanged, ClientError> {
        self.typed(lm::STREAM_REMOVE, &stream_name(name)).await
    }

    /// Enable or disable a stream (`lm.stream_enable` / `lm.stream_disable`).
    pub async fn stream_enable(
        &self,
        name: &str,
        enabled: bool,
    ) -> Result<labmesh_proto::stream::StreamChanged, ClientError> {
        let m = if enabled {
            lm::STREAM_ENABLE
        } else {
            lm::STREAM_DISABLE
        };
        self.typed(m, &stream_name(name)).await
    }

    /// Change a stream's rate (`lm.stream_set_rate`).
    pub async fn stream_set_rate(
        &self,
        name: &str,
        hz: f64,
    ) -> Result<labmesh_proto::stream::StreamChanged, ClientError> {
        let p = labmesh_proto::stream::SetRate {
            name: name.to_string(),
            hz,
        };
        self.typed(lm::STREAM_SET_RATE, &p).await
    }

    /// A stream's newest sample (`lm.last`), if it published one.
    pub async fn last(&self, name: &str) -> Result<Option<Sample>, ClientError> {
        let r: labmesh_proto::stream::LastResult = self.typed(lm::LAST, &stream_name(name)).await?;
        let Some(header) = r.sample else {
            return Ok(None);
        };
        let binary = match r.binary_base64 {
            Some(b) => Some(
                base64::Engine::decode(&base64::engine::general_purpose::STANDARD, b).map_err(
                    |e| ClientError::Unexpected {
                        target: self.relay_id.clone(),
                        detail: format!("lm.last: binary_base64: {e}"),
                    },
                )?,
            ),
            None => None,
        };
        Ok(Some(Sample { header, binary }))
    }
}
