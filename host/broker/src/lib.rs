//! labmesh-broker: the mesh's directory and state bus.
//!
//! * Directory: a ROUTER where relays and banks register (`hello`) and
//!   clients ask `list_relay_ids`, `list_banks`, `ping`.
//! * State bus: libzmq's own proxy between an XSUB (publishers connect) and
//!   an XPUB (subscribers connect), on its own thread. With CURVE on, a
//!   loop that forwards a published message only if its publisher's key
//!   registered the topic's id (see `bus.rs`).
//!
//! ```no_run
//! # async fn demo() -> Result<(), labmesh_broker::BrokerError> {
//! let ctx = zmq::Context::new();
//! let broker = labmesh_broker::spawn(&ctx, labmesh_broker::BrokerOptions::loopback()).await?;
//! println!("directory at {}", broker.rpc_endpoint());
//! broker.shutdown().await;
//! # Ok(()) }
//! ```

mod bus;
mod cascade;
mod directory;
mod gateway;

pub use cascade::{Advertise, ParentOptions};
pub use gateway::{GATEWAY_HWM, MAX_FRAME, MAX_SESSIONS, SESSION_IDLE};

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use labmesh_proto::endpoint::public_endpoint;
use labmesh_wire::auth::Password;
use labmesh_wire::{AsyncSocket, SocketOptions, WireError};
use tokio::sync::watch;

/// Errors starting a broker.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// A socket could not be created or bound.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// A raw zmq call failed.
    #[error("zmq: {0}")]
    Zmq(#[from] zmq::Error),
    /// The bus proxy thread could not be started.
    #[error("cannot start the bus proxy thread: {0}")]
    Thread(std::io::Error),
}

/// How to run a broker.
#[derive(Debug, Clone)]
pub struct BrokerOptions {
    /// Directory ROUTER bind (`tcp://*:5750`; `tcp://127.0.0.1:*` for any port).
    pub rpc_bind: String,
    /// Bus XSUB bind.
    pub xsub_bind: String,
    /// Bus XPUB bind.
    pub xpub_bind: String,
    /// Host advertised for wildcard binds (used in the handle's endpoints).
    pub advertise_host: String,
    /// Bus high-water mark (messages).
    pub hwm: i32,
    /// Registration time-to-live without a sign of life.
    pub ttl: Duration,
    /// Shared network password.
    pub password: Password,
    /// Largest accepted directory request, bytes.
    pub max_msg_size: i64,
    /// Registrations (relays plus banks) kept at most; more hellos get 503.
    pub max_registrations: usize,
    /// Largest message a publisher may put on the bus, bytes.
    pub bus_max_msg: usize,
    /// Bytes queued at most for one bus peer (sets the high-water marks).
    pub bus_budget: usize,
    /// A parent broker to join (cascading): this broker's relays and banks
    /// are registered there and the bus is bridged both ways, driven by
    /// subscriptions (see `cascade`).
    pub parent: Option<ParentOptions>,
}

impl BrokerOptions {
    /// Every socket on an ephemeral loopback port (tests, the demo).
    pub fn loopback() -> Self {
        BrokerOptions {
            rpc_bind: "tcp://127.0.0.1:*".into(),
            xsub_bind: "tcp://127.0.0.1:*".into(),
            xpub_bind: "tcp://127.0.0.1:*".into(),
            advertise_host: "127.0.0.1".into(),
            hwm: 4000,
            ttl: labmesh_proto::limits::DEFAULT_TTL,
            password: Password::none(),
            max_msg_size: labmesh_proto::limits::MAX_DIRECTORY_MSG as i64,
            max_registrations: labmesh_proto::limits::DEFAULT_MAX_REGISTRATIONS,
            bus_max_msg: labmesh_proto::limits::DEFAULT_BUS_MAX_MSG,
            bus_budget: labmesh_proto::limits::DEFAULT_BUS_BUDGET,
            parent: None,
        }
    }

    /// The bus high-water mark in messages: `hwm`, lowered so that a full
    /// queue of the largest messages stays within `bus_budget` bytes.
    pub fn bus_hwm(&self) -> i32 {
        let by_bytes = self.bus_budget / self.bus_max_msg.max(1);
        let by_bytes = i32::try_from(by_bytes).unwrap_or(i32::MAX).max(1);
        if self.hwm <= 0 {
            by_bytes
        } else {
            self.hwm.min(by_bytes)
        }
    }

    /// From the `[broker]` table.
    pub fn from_config(cfg: &labmesh_config::Config) -> Self {
        BrokerOptions {
            rpc_bind: cfg.broker.rpc_bind.clone(),
            xsub_bind: cfg.broker.xsub_bind.clone(),
            xpub_bind: cfg.broker.xpub_bind.clone(),
            advertise_host: cfg.broker.address.clone(),
            hwm: cfg.broker.hwm,
            ttl: cfg.broker.ttl_seconds.duration(),
            password: Password::from_env(),
            max_msg_size: labmesh_proto::limits::MAX_DIRECTORY_MSG as i64,
            max_registrations: cfg.broker.max_registrations,
            bus_max_msg: cfg.broker.bus_max_msg,
            bus_budget: cfg.broker.bus_budget,
            parent: cfg.broker.parent_rpc.as_ref().map(|rpc| ParentOptions {
                rpc: rpc.clone(),
                xsub: cfg.broker.parent_xsub.clone().unwrap_or_default(),
                xpub: cfg.broker.parent_xpub.clone().unwrap_or_default(),
                advertise: cfg.broker.advertise,
                gateway_bind: cfg.broker.gateway_bind.clone(),
            }),
        }
    }
}

/// A running broker. Dropping it without [`BrokerHandle::shutdown`] leaves
/// the broker running until the runtime stops.
pub struct BrokerHandle {
    rpc: String,
    xsub: String,
    xpub: String,
    stop: watch::Sender<bool>,
    directory: tokio::task::JoinHandle<()>,
    mirror: Option<tokio::task::JoinHandle<()>>,
    proxy_ctl: zmq::Socket,
    proxy: Option<std::thread::JoinHandle<()>>,
    dropped: Arc<AtomicU64>,
}

impl std::fmt::Debug for BrokerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerHandle")
            .field("rpc", &self.rpc)
            .field("xsub", &self.xsub)
            .field("xpub", &self.xpub)
            .finish()
    }
}

impl BrokerHandle {
    /// The directory endpoint to connect to.
    pub fn rpc_endpoint(&self) -> &str {
        &self.rpc
    }

    /// The XSUB endpoint publishers connect to.
    pub fn xsub_endpoint(&self) -> &str {
        &self.xsub
    }

    /// The XPUB endpoint subscribers connect to.
    pub fn xpub_endpoint(&self) -> &str {
        &self.xpub
    }

    /// Messages the bus dropped because their publisher's key may not
    /// publish their topic (CURVE on; always 0 without CURVE).
    pub fn bus_dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Stop serving: the directory answers what it has already received,
    /// the proxy thread terminates, sockets close.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        let _ = (&mut self.directory).await;
        if let Some(m) = self.mirror.take() {
            // Its registrations in the parent say goodbye.
            let _ = m.await;
        }
        if let Err(e) = self.proxy_ctl.send("TERMINATE", 0) {
            tracing::warn!(error = %e, "cannot stop the bus proxy");
        }
        if let Some(t) = self.proxy.take() {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
    }

    /// Resolves when the directory task ends (it only ends on shutdown).
    pub async fn wait(&mut self) {
        let _ = (&mut self.directory).await;
    }
}

/// Bind every socket and start serving.
pub async fn spawn(ctx: &zmq::Context, opts: BrokerOptions) -> Result<BrokerHandle, BrokerError> {
    // The bus: plain zmq sockets moved to the proxy thread.
    // Memory per bus peer is bounded in bytes: no message above
    // `bus_max_msg` gets in (libzmq drops a publisher that sends one), and
    // no queue holds more than `bus_hwm()` of them.
    let hwm = opts.bus_hwm();
    let xsub = ctx.socket(zmq::XSUB)?;
    xsub.set_sndhwm(hwm)?;
    xsub.set_rcvhwm(hwm)?;
    xsub.set_linger(0)?;
    xsub.set_maxmsgsize(i64::try_from(opts.bus_max_msg).unwrap_or(i64::MAX))?;
    labmesh_wire::curve::prepare_bind(ctx, &xsub)?;
    bind_raw(&xsub, &opts.xsub_bind)?;
    // Before the inproc bind below, which would be the last endpoint.
    let xsub_ep = public_endpoint(&last_endpoint(&xsub)?, &opts.advertise_host);
    // The broker's own presence publisher connects over inproc: no CURVE
    // handshake there, so with CURVE on a message without a key is the
    // broker's own (the only one allowed to publish `presence.`).
    let presence_ep = format!("inproc://labmesh-broker-presence-{}", uuid_like());
    xsub.bind(&presence_ep)?;
    let xpub = ctx.socket(zmq::XPUB)?;
    xpub.set_sndhwm(hwm)?;
    xpub.set_rcvhwm(hwm)?;
    xpub.set_linger(0)?;
    xpub.set_xpub_verbose(true)?;
    labmesh_wire::curve::prepare_bind(ctx, &xpub)?;
    bind_raw(&xpub, &opts.xpub_bind)?;
    let xpub_ep = public_endpoint(&last_endpoint(&xpub)?, &opts.advertise_host);

    let ctl_addr = format!("inproc://labmesh-broker-proxy-{}", uuid_like());
    let proxy_ctl = ctx.socket(zmq::PAIR)?;
    proxy_ctl.bind(&ctl_addr)?;
    let ctl_peer = ctx.socket(zmq::PAIR)?;
    ctl_peer.connect(&ctl_addr)?;
    let local: cascade::LocalIds = Default::default();
    // CURVE on: this context serves with a server key (and its ZAP handler
    // labels every connection).
    let curve = labmesh_wire::curve::for_context(ctx).is_some_and(|s| s.server.is_some());
    let dropped = Arc::new(AtomicU64::new(0));
    let guard = curve.then(|| bus::Guard {
        local: local.clone(),
        dropped: dropped.clone(),
    });
    let parent_sockets = match &opts.parent {
        Some(p) => Some(cascade::parent_sockets(
            ctx,
            p,
            hwm,
            i64::try_from(opts.bus_max_msg).unwrap_or(i64::MAX),
        )?),
        None => None,
    };
    let bus_local = local.clone();
    let proxy = std::thread::Builder::new()
        .name("labmesh-bus".into())
        .spawn(move || match parent_sockets {
            // With a parent: the loop that knows where messages come from.
            Some((up, down)) => cascade::bus_loop(
                cascade::BusSockets {
                    xsub,
                    xpub,
                    up,
                    down,
                    ctl: ctl_peer,
                },
                bus_local,
                guard,
            ),
            None => match guard {
                // CURVE: every published message checked against its key.
                Some(guard) => bus::checked_proxy(xsub, xpub, ctl_peer, guard),
                // Plaintext: libzmq's own proxy, untouched.
                None => {
                    let (mut xsub, mut xpub, mut ctl) = (xsub, xpub, ctl_peer);
                    if let Err(e) = zmq::proxy_steerable(&mut xsub, &mut xpub, &mut ctl) {
                        tracing::error!(error = %e, "bus proxy stopped");
                    }
                }
            },
        })
        .map_err(BrokerError::Thread)?;

    let mut router = AsyncSocket::new(
        ctx,
        zmq::ROUTER,
        SocketOptions {
            max_msg_size: opts.max_msg_size,
            ..SocketOptions::default()
        },
    )?;
    let rpc_ep = public_endpoint(&router.bind(&opts.rpc_bind)?, &opts.advertise_host);
    tracing::info!(rpc = %rpc_ep, xsub = %xsub_ep, xpub = %xpub_ep, "broker serving");

    // Presence events go out through our own bus, like any publisher's.
    let mut presence = AsyncSocket::new(ctx, zmq::PUB, SocketOptions::default())?;
    presence.connect(&presence_ep)?;

    let (stop, stop_rx) = watch::channel(false);
    let mirror = opts.parent.clone().map(|parent| {
        tracing::info!(parent = %parent.rpc, "joining a parent broker");
        tokio::spawn(cascade::mirror_directory(
            cascade::Mirror {
                ctx: ctx.clone(),
                own_rpc: rpc_ep.clone(),
                parent,
                advertise_host: opts.advertise_host.clone(),
                password: opts.password.clone(),
                heartbeat: labmesh_proto::limits::DEFAULT_HEARTBEAT.min(opts.ttl / 3),
                every: std::time::Duration::from_millis(500),
            },
            stop_rx.clone(),
        ))
    });
    let directory = tokio::spawn(directory::run(
        router,
        opts,
        ctx.clone(),
        Some(presence),
        local,
        curve,
        stop_rx,
    ));
    Ok(BrokerHandle {
        rpc: rpc_ep,
        xsub: xsub_ep,
        xpub: xpub_ep,
        stop,
        directory,
        mirror,
        proxy_ctl,
        proxy: Some(proxy),
        dropped,
    })
}

fn bind_raw(sock: &zmq::Socket, endpoint: &str) -> Result<(), BrokerError> {
    sock.bind(endpoint).map_err(|source| {
        BrokerError::Wire(WireError::Bind {
            endpoint: endpoint.to_string(),
            source,
        })
    })
}

fn last_endpoint(sock: &zmq::Socket) -> Result<String, BrokerError> {
    Ok(match sock.get_last_endpoint()? {
        Ok(s) => s,
        Err(b) => String::from_utf8_lossy(&b).into_owned(),
    })
}

fn uuid_like() -> String {
    labmesh_wire::dealer::new_rpc_uuid()
}
