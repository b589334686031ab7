//! labmesh-relay: hosts instruments on the mesh.
//!
//! Each hosted instrument is its own relay id with its own ROUTER (so Python
//! labmesh clients, which address a relay by endpoint, can call it). One
//! task per instrument owns both its ROUTER and its driver: it decodes
//! requests, checks the method and binds the parameters against the driver's
//! description (bad calls are answered at once, without queueing behind the
//! instrument), runs calls one at a time with a deadline, polls the state
//! every interval, and keeps answering `lm.ping` while a call runs.
//!
//! One PUB socket per relay process carries every instrument's
//! `state.<relay_id>` messages and stream samples
//! (`stream.<relay_id>.<name>`) to the broker's XSUB. Different instruments
//! never wait for each other.

mod authz;
pub mod gateway;
mod hrtimer;
mod lease;
mod outbox;
mod publish;
pub mod reload;
mod rpc;
mod serve;
mod streams;

use std::time::Duration;

use labmesh_drivers::{BoxInstrument, DriverError, DriverRegistry, InstrumentConfig};
use labmesh_proto::endpoint::{public_endpoint, resolve_broker};
use labmesh_wire::auth::Password;
use labmesh_wire::register::{keep_registered, Registrant};
use labmesh_wire::{AsyncSocket, SocketOptions, WireError};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Dataset upload from a relay to a bank (see [`upload_options`]).
pub use labmesh_transfer::{upload_file, upload_reader, UploadOptions, UploadReceipt};

/// Upload options from `[relay]`: `upload_chunk`, `upload_timeout`,
/// `upload_retries`, and the network password.
pub fn upload_options(cfg: &labmesh_config::Config, relay_id: &str) -> UploadOptions {
    UploadOptions {
        relay_id: relay_id.to_string(),
        chunk_size: cfg.relay.upload_chunk,
        timeout: cfg.relay.upload_timeout.duration(),
        retries: cfg.relay.upload_retries,
        password: Password::from_env(),
        ..UploadOptions::default()
    }
}

/// Errors starting a relay.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// A socket could not be created, bound or connected.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// A LAN-instrument gateway server could not listen.
    #[error("instrument {id}: {source}")]
    Lan {
        /// The instrument's relay id.
        id: String,
        /// What could not be bound.
        source: gateway::LanBindError,
    },
    /// An instrument could not be created.
    #[error("instrument {id}: {source}")]
    Driver {
        /// The instrument's relay id.
        id: String,
        /// The driver's error.
        source: DriverError,
    },
    /// An instrument of a configuration file could not be created (an
    /// unknown option, a bad resource string): names the file, the table
    /// and the instrument.
    #[error("{}: relay.instruments[{index}] (id {id:?}): {source}", file.display())]
    Configured {
        /// The configuration file.
        file: std::path::PathBuf,
        /// Index of the `[[relay.instruments]]` table.
        index: usize,
        /// The instrument's relay id.
        id: String,
        /// The driver's error.
        source: DriverError,
    },
    /// Two instruments share a relay id.
    #[error("duplicate relay id {0:?}")]
    DuplicateId(String),
    /// A configured stream does not fit the instrument (unknown method,
    /// bad params).
    #[error("instrument {id}: {why}")]
    Stream {
        /// The instrument's relay id.
        id: String,
        /// What is wrong with the stream.
        why: String,
    },
}

/// Process-wide relay settings.
#[derive(Debug, Clone)]
pub struct RelayOptions {
    /// Broker directory endpoint; `None` runs without registering.
    pub broker_rpc: Option<String>,
    /// Broker XSUB endpoint; `None` publishes no state.
    pub broker_xsub: Option<String>,
    /// Host advertised in place of a wildcard bind address.
    pub advertise_host: String,
    /// Interval between heartbeats to the broker.
    pub heartbeat: Duration,
    /// Shared network password (checked on requests, sent to the broker).
    pub password: Password,
    /// Largest accepted RPC request, bytes.
    pub max_msg_size: i64,
    /// The broker's bus maximum (`[broker] bus_max_msg`): larger state
    /// messages and stream samples are not published (a stream publishes an
    /// error sample saying so).
    pub bus_max_msg: usize,
}

impl RelayOptions {
    /// Standalone: no broker, loopback advertising.
    pub fn standalone() -> Self {
        RelayOptions {
            broker_rpc: None,
            broker_xsub: None,
            advertise_host: "127.0.0.1".into(),
            heartbeat: labmesh_proto::limits::DEFAULT_HEARTBEAT,
            password: Password::none(),
            max_msg_size: labmesh_proto::limits::MAX_RPC_MSG as i64,
            bus_max_msg: labmesh_proto::limits::DEFAULT_BUS_MAX_MSG,
        }
    }

    /// Registering with the broker at `rpc`, publishing to `xsub`.
    pub fn with_broker(rpc: &str, xsub: &str) -> Self {
        RelayOptions {
            broker_rpc: Some(rpc.to_string()),
            broker_xsub: Some(xsub.to_string()),
            ..RelayOptions::standalone()
        }
    }

    /// From the `[relay]` table (`BROKER` resolved).
    pub fn from_config(cfg: &labmesh_config::Config) -> Self {
        RelayOptions {
            broker_rpc: Some(resolve_broker(&cfg.relay.broker_rpc, &cfg.broker.address)),
            broker_xsub: Some(resolve_broker(&cfg.relay.broker_xsub, &cfg.broker.address)),
            advertise_host: cfg.relay.default_address.clone(),
            heartbeat: cfg.relay.heartbeat_seconds.duration(),
            password: Password::from_env(),
            max_msg_size: labmesh_proto::limits::MAX_RPC_MSG as i64,
            bus_max_msg: cfg.broker.bus_max_msg,
        }
    }
}

/// One instrument to host.
pub struct Hosted {
    /// Relay id on the mesh.
    pub relay_id: String,
    /// RPC bind (`tcp://*:5850`, `tcp://127.0.0.1:*`).
    pub rpc_bind: String,
    /// Interval between polls (= state messages).
    pub poll_interval: Duration,
    /// Deadline for one call or poll.
    pub call_timeout: Duration,
    /// Streams it starts with (more can be added at runtime).
    pub streams: Vec<labmesh_proto::stream::StreamSpec>,
    /// The driver.
    pub instrument: BoxInstrument,
    /// LAN-instrument gateway servers (`lan = {...}`), if any.
    pub lan: Option<labmesh_config::LanSection>,
}

impl std::fmt::Debug for Hosted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hosted")
            .field("relay_id", &self.relay_id)
            .field("rpc_bind", &self.rpc_bind)
            .finish()
    }
}

impl Hosted {
    /// Host `instrument` as `relay_id` on an ephemeral loopback port, state
    /// every second, 10 s call deadline.
    pub fn new(relay_id: &str, instrument: BoxInstrument) -> Self {
        Hosted {
            relay_id: relay_id.to_string(),
            rpc_bind: "tcp://127.0.0.1:*".into(),
            poll_interval: Duration::from_secs(1),
            call_timeout: labmesh_proto::limits::DEFAULT_CALL_DEADLINE,
            streams: Vec::new(),
            instrument,
            lan: None,
        }
    }

    /// Serve it as a LAN instrument too (see [`gateway`]).
    pub fn lan(mut self, lan: labmesh_config::LanSection) -> Self {
        self.lan = Some(lan);
        self
    }

    /// Add a stream it starts with.
    pub fn stream(mut self, spec: labmesh_proto::stream::StreamSpec) -> Self {
        self.streams.push(spec);
        self
    }

    /// Set the RPC bind.
    pub fn bind(mut self, endpoint: &str) -> Self {
        self.rpc_bind = endpoint.to_string();
        self
    }

    /// Set the poll / state interval.
    pub fn poll_every(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }

    /// Set the per-call deadline.
    pub fn call_timeout(mut self, timeout: Duration) -> Self {
        self.call_timeout = timeout;
        self
    }
}

/// Create every `[[relay.instruments]]` instrument from `cfg` with
/// `registry`. The first instrument without an `rpc_bind` takes
/// `default_rpc_bind`; the others get an ephemeral port on the same host.
pub async fn hosted_from_config(
    cfg: &labmesh_config::Config,
    registry: &DriverRegistry,
) -> Result<Vec<Hosted>, RelayError> {
    let mut out = Vec::new();
    let mut default_taken = false;
    for (index, inst) in cfg.relay.instruments.iter().enumerate() {
        let instrument = registry
            .create(InstrumentConfig {
                id: inst.id.clone(),
                driver: inst.driver.clone(),
                resource: inst.resource.clone(),
                options: inst.driver_options(),
            })
            .await
            .map_err(|source| match &cfg.file {
                Some(file) => RelayError::Configured {
                    file: file.clone(),
                    index,
                    id: inst.id.clone(),
                    source,
                },
                None => RelayError::Driver {
                    id: inst.id.clone(),
                    source,
                },
            })?;
        let rpc_bind = match &inst.rpc_bind {
            Some(b) => b.clone(),
            None if !default_taken => {
                default_taken = true;
                cfg.relay.default_rpc_bind.clone()
            }
            None => ephemeral_like(&cfg.relay.default_rpc_bind),
        };
        out.push(Hosted {
            relay_id: inst.id.clone(),
            rpc_bind,
            poll_interval: inst
                .poll_interval
                .unwrap_or(cfg.relay.state_interval)
                .duration(),
            call_timeout: inst
                .call_timeout
                .map_or(labmesh_proto::limits::DEFAULT_CALL_DEADLINE, |t| {
                    t.duration()
                }),
            streams: inst.streams.clone(),
            instrument,
            lan: inst.lan.clone().filter(|l| l.any()),
        });
    }
    Ok(out)
}

/// `tcp://host:5850` -> `tcp://host:*`.
fn ephemeral_like(bind: &str) -> String {
    match bind.rsplit_once(':') {
        Some((head, _)) if bind.starts_with("tcp://") => format!("{head}:*"),
        _ => "tcp://*:*".to_string(),
    }
}

/// A hosted instrument as it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Served {
    /// Relay id.
    pub relay_id: String,
    /// The endpoint advertised to the broker and clients.
    pub rpc_endpoint: String,
    /// Its LAN-instrument gateway servers (empty: none).
    pub lan: Vec<gateway::LanServer>,
}

/// A running relay.
#[derive(Debug)]
pub struct RelayHandle {
    served: Vec<Served>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl RelayHandle {
    /// The instruments and their endpoints.
    pub fn served(&self) -> &[Served] {
        &self.served
    }

    /// The endpoint of `relay_id`.
    pub fn endpoint(&self, relay_id: &str) -> Option<&str> {
        self.served
            .iter()
            .find(|s| s.relay_id == relay_id)
            .map(|s| s.rpc_endpoint.as_str())
    }

    /// Stop: requests already received are answered, instruments are shut
    /// down, sockets close.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// Bind every instrument's ROUTER, start its tasks, and register with the
/// broker (in the background, retrying until it answers).
pub async fn spawn(
    ctx: &zmq::Context,
    opts: RelayOptions,
    hosted: Vec<Hosted>,
) -> Result<RelayHandle, RelayError> {
    let mut ids = std::collections::HashSet::new();
    for h in &hosted {
        if !ids.insert(h.relay_id.clone()) {
            return Err(RelayError::DuplicateId(h.relay_id.clone()));
        }
    }
    let (stop, stop_rx) = watch::channel(false);
    let mut tasks = Vec::new();

    // One PUB for the process.
    let (state_tx, state_rx) = publish::bus(opts.bus_max_msg);
    if let Some(xsub) = &opts.broker_xsub {
        let mut pub_sock = AsyncSocket::new(ctx, zmq::PUB, SocketOptions::default())?;
        pub_sock.connect(xsub)?;
        tasks.push(tokio::spawn(publish::run(pub_sock, state_rx)));
    } else {
        drop(state_rx);
    }

    let security = labmesh_wire::curve::for_context(ctx);
    let mut served = Vec::new();
    // t_mono of every stream sample counts from here.
    let epoch = std::time::Instant::now();
    for mut h in hosted {
        let description = h.instrument.describe();
        let mut streams = streams::Streams::new(&h.relay_id, epoch, state_tx.clone());
        for spec in std::mem::take(&mut h.streams) {
            streams
                .add(spec, &description, epoch)
                .map_err(|(_, why)| RelayError::Stream {
                    id: h.relay_id.clone(),
                    why,
                })?;
        }
        let push = h.instrument.push_streams();
        for p in &push {
            if !streams.add_push(p) {
                tracing::warn!(relay_id = %h.relay_id, stream = %p.name, "driver push stream with a bad or duplicate name not published");
            }
        }
        let mut router = AsyncSocket::new(
            ctx,
            zmq::ROUTER,
            SocketOptions {
                max_msg_size: opts.max_msg_size,
                ..SocketOptions::default()
            },
        )?;
        // A full pipe to one peer is EAGAIN (its replies wait in the
        // instrument's outbox), not a silent drop; see `outbox`.
        router
            .raw()
            .set_router_mandatory(true)
            .map_err(WireError::from)?;
        let (lan_port, lan_servers) = match &h.lan {
            Some(lan) => {
                let listeners =
                    gateway::bind(lan, &opts.advertise_host)
                        .await
                        .map_err(|source| RelayError::Lan {
                            id: h.relay_id.clone(),
                            source,
                        })?;
                let servers = listeners.servers.clone();
                for s in &servers {
                    tracing::info!(relay_id = %h.relay_id, protocol = s.protocol, addr = %s.addr, visa = %s.visa, "LAN gateway serving");
                }
                let (port, lan_tasks) = gateway::start(&h.relay_id, listeners, &stop_rx);
                tasks.extend(lan_tasks);
                (Some(port), servers)
            }
            None => (None, Vec::new()),
        };
        let bound = router.bind(&h.rpc_bind)?;
        let endpoint = public_endpoint(&bound, &opts.advertise_host);
        tracing::info!(relay_id = %h.relay_id, %endpoint, "instrument serving");
        tasks.push(tokio::spawn(serve::run(
            router,
            rpc::RpcContext {
                relay_id: h.relay_id.clone(),
                description,
                password: opts.password.clone(),
                lease: lease::Lease::new(&h.relay_id, state_tx.clone()),
                security: security.clone(),
            },
            h.instrument,
            serve::Settings {
                poll_interval: h.poll_interval,
                call_timeout: h.call_timeout,
            },
            streams,
            push,
            state_tx.clone(),
            stop_rx.clone(),
            lan_port,
        )));
        served.push(Served {
            relay_id: h.relay_id,
            rpc_endpoint: endpoint,
            lan: lan_servers,
        });
    }
    drop(state_tx);

    if let Some(broker) = &opts.broker_rpc {
        let conn = labmesh_wire::DealerConn::connect(ctx, broker, SocketOptions::default())?;
        let nodes = served
            .iter()
            .map(|s| Registrant::relay(&s.relay_id, &s.rpc_endpoint, &opts.password))
            .collect();
        tasks.push(tokio::spawn(keep_registered(
            conn,
            nodes,
            opts.heartbeat,
            stop_rx.clone(),
        )));
    }
    Ok(RelayHandle {
        served,
        stop,
        tasks,
    })
}
