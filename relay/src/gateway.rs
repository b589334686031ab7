//! The LAN-instrument gateway: a hosted instrument served as a LAN
//! instrument (raw SCPI socket, VXI-11, HiSLIP), with the simulator's own
//! servers (`labmesh_drivers::sim::{backend, vxi11, hislip}`).
//!
//! The servers talk to a [`GatewayBackend`], which sends every program
//! message to the instrument's task over a bounded channel ([`Port`]). The
//! task queues it next to mesh calls (they alternate), runs it with the
//! instrument's call deadline through [`labmesh_drivers::Instrument::lan_message`],
//! and answers on a oneshot. So LAN requests interleave safely with calls,
//! polls and streams, and never touch the driver concurrently.
//!
//! Locks are the mesh lease: a VXI-11 `device_lock` / HiSLIP `AsyncLock`
//! takes the lease as holder `LAN session N (<protocol>)` (TTL
//! [`labmesh_proto::lease::MAX_TTL_S`]), released by unlock or when the
//! link closes. While a LAN session holds it, mesh calls that change
//! state get 409 (the lease's own check); while a mesh client holds it,
//! LAN messages and lock requests are refused at once (VXI-11 error 11,
//! HiSLIP `Error` / lock failure), not waited for. Messages from a LAN
//! session without a lock are refused while anyone holds the lease, as a
//! mesh call without the token is.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use labmesh_config::LanSection;
use labmesh_drivers::sim::{Backend, Refused, ScpiBackend};
use labmesh_drivers::BoxInstrument;
use labmesh_proto::lease::{LockParams, MAX_TTL_S};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::lease::Lease;

/// LAN messages that may wait for the instrument before new ones are
/// refused (as the mesh's call queue).
const QUEUE_LIMIT: usize = 256;

/// Requests in the channel from the servers to the instrument task.
const CHANNEL: usize = 64;

/// One LAN server of a hosted instrument, as it listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LanServer {
    /// `raw`, `vxi11` (the core channel), `portmapper` or `hislip`.
    pub protocol: &'static str,
    /// The bound address.
    pub addr: SocketAddr,
    /// The VISA resource string that reaches it.
    pub visa: String,
}

/// A request from the LAN servers.
pub(crate) enum Op {
    Message {
        session: u32,
        text: String,
        reply: oneshot::Sender<Result<Option<Vec<u8>>, Refused>>,
    },
    Lock {
        session: u32,
        reply: oneshot::Sender<bool>,
    },
    Unlock {
        session: u32,
        reply: oneshot::Sender<bool>,
    },
}

/// Who holds the instrument, as the LAN servers see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Holder {
    Free,
    Mesh(String),
    Lan(u32),
}

/// A LAN message waiting for the instrument.
pub(crate) struct Job {
    text: String,
    reply: oneshot::Sender<Result<Option<Vec<u8>>, Refused>>,
}

/// The instrument task's end of the gateway.
pub(crate) struct Port {
    rx: mpsc::Receiver<Op>,
    holder: watch::Sender<Holder>,
    /// LAN sessions holding the lease: session -> token.
    locks: HashMap<u32, u64>,
    queue: VecDeque<Job>,
}

impl Port {
    /// The next request (pending forever once every server is gone).
    pub(crate) async fn recv(port: &mut Option<Port>) -> Op {
        match port.as_mut() {
            Some(p) => match p.rx.recv().await {
                Some(op) => op,
                None => std::future::pending().await,
            },
            None => std::future::pending().await,
        }
    }

    /// Handle one request: lock and unlock at once, a message checked
    /// against the lease and queued.
    pub(crate) fn handle(&mut self, op: Op, lease: &mut Lease, relay_id: &str) {
        match op {
            Op::Lock { session, reply } => {
                let held = self
                    .locks
                    .get(&session)
                    .is_some_and(|t| lease.current().is_some_and(|(c, _)| c == *t));
                let got = held
                    || {
                        let holder = format!("LAN session {session}");
                        match lease.lock(&LockParams::new(MAX_TTL_S, &holder), None) {
                            Ok(r) => {
                                tracing::info!(%relay_id, session, token = r.token, "LAN lock: lease granted");
                                self.locks.insert(session, r.token);
                                true
                            }
                            Err(_) => false,
                        }
                    };
                let _ = reply.send(got);
            }
            Op::Unlock { session, reply } => {
                let released = match self.locks.remove(&session) {
                    Some(token) => lease.unlock(token, None).is_ok(),
                    None => false,
                };
                let _ = reply.send(released);
            }
            Op::Message {
                session,
                text,
                reply,
            } => {
                let token = self.locks.get(&session).copied();
                if let Err(e) = lease.admit(false, token, None) {
                    let _ = reply.send(Err(Refused::Locked(e.message)));
                } else if self.queue.len() >= QUEUE_LIMIT {
                    tracing::warn!(%relay_id, "LAN gateway queue full");
                    let _ = reply.send(Err(Refused::Failed(format!(
                        "{relay_id}: instrument queue full, try again"
                    ))));
                } else {
                    self.queue.push_back(Job { text, reply });
                }
            }
        }
    }

    /// Whether LAN messages wait for the instrument.
    pub(crate) fn has_jobs(port: &Option<Port>) -> bool {
        port.as_ref().is_some_and(|p| !p.queue.is_empty())
    }

    /// The next LAN message for the instrument.
    pub(crate) fn next_job(port: &mut Option<Port>) -> Option<Job> {
        port.as_mut().and_then(|p| p.queue.pop_front())
    }

    /// Tell the servers who holds the lease now (called after every turn
    /// of the instrument task: a mesh `lm.lock`, an expiry).
    pub(crate) fn sync(port: &mut Option<Port>, lease: &Lease) {
        let Some(p) = port.as_mut() else { return };
        let now = match lease.current() {
            None => Holder::Free,
            Some((token, holder)) => match p.locks.iter().find(|(_, t)| **t == token) {
                Some((session, _)) => Holder::Lan(*session),
                None => Holder::Mesh(holder.to_string()),
            },
        };
        // A LAN lock that is not the lease any more (expired, forced).
        let current = lease.current().map(|(t, _)| t);
        p.locks.retain(|_, t| Some(*t) == current);
        p.holder.send_if_modified(|h| {
            if *h == now {
                false
            } else {
                *h = now;
                true
            }
        });
    }
}

/// Run one LAN message on the instrument within `deadline`; the answer
/// goes to the server that asked.
pub(crate) async fn run(mut inst: BoxInstrument, job: Job, deadline: Duration) -> BoxInstrument {
    let r = match tokio::time::timeout(deadline, inst.lan_message(&job.text)).await {
        Ok(Ok(r)) => Ok(r),
        Ok(Err(e)) => Err(Refused::Failed(e.to_string())),
        Err(_) => Err(Refused::Failed(format!(
            "instrument timeout after {deadline:?}"
        ))),
    };
    let _ = job.reply.send(r);
    inst
}

/// What the LAN servers serve: the hosted instrument, through its task.
pub(crate) struct GatewayBackend {
    relay_id: String,
    tx: mpsc::Sender<Op>,
    holder: watch::Receiver<Holder>,
    next: AtomicU32,
}

impl GatewayBackend {
    async fn ask<T>(&self, op: impl FnOnce(oneshot::Sender<T>) -> Op) -> Option<T> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(op(tx)).await.ok()?;
        rx.await.ok()
    }

    fn stopped(&self) -> Refused {
        Refused::Failed(format!("{}: the relay is stopping", self.relay_id))
    }
}

#[async_trait::async_trait]
impl ScpiBackend for GatewayBackend {
    async fn execute(&self, session: u32, message: &str) -> Result<Option<Vec<u8>>, Refused> {
        let text = message.to_string();
        self.ask(|reply| Op::Message {
            session,
            text,
            reply,
        })
        .await
        .unwrap_or_else(|| Err(self.stopped()))
    }

    fn next_session(&self) -> u32 {
        loop {
            let id = self.next.fetch_add(1, Ordering::Relaxed);
            if id != 0 {
                return id;
            }
        }
    }

    async fn lock(&self, session: u32, wait: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + wait;
        let mut holder = self.holder.clone();
        loop {
            holder.borrow_and_update();
            if self
                .ask(|reply| Op::Lock { session, reply })
                .await
                .unwrap_or(false)
            {
                return true;
            }
            if matches!(*holder.borrow(), Holder::Mesh(_)) {
                // A mesh lease is not waited for.
                return false;
            }
            match tokio::time::timeout_at(deadline, holder.changed()).await {
                Ok(Ok(())) => {}
                _ => return false,
            }
        }
    }

    async fn wait_free(&self, session: u32, wait: Duration) -> bool {
        let mut holder = self.holder.clone();
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match &*holder.borrow_and_update() {
                Holder::Free => return true,
                Holder::Lan(s) if *s == session => return true,
                Holder::Mesh(_) => return false,
                Holder::Lan(_) => {}
            }
            match tokio::time::timeout_at(deadline, holder.changed()).await {
                Ok(Ok(())) => {}
                _ => return false,
            }
        }
    }

    async fn unlock(&self, session: u32) -> bool {
        self.ask(|reply| Op::Unlock { session, reply })
            .await
            .unwrap_or(false)
    }

    async fn is_locked(&self) -> bool {
        *self.holder.borrow() != Holder::Free
    }
}

/// Why a LAN server could not start.
#[derive(Debug, thiserror::Error)]
#[error("LAN gateway: cannot listen on {addr} ({what}): {source}")]
pub struct LanBindError {
    /// The address.
    pub addr: String,
    /// Which server.
    pub what: &'static str,
    /// The I/O error.
    #[source]
    pub source: std::io::Error,
}

async fn listen(addr: &str, what: &'static str) -> Result<(TcpListener, SocketAddr), LanBindError> {
    let err = |source| LanBindError {
        addr: addr.to_string(),
        what,
        source,
    };
    let l = TcpListener::bind(addr).await.map_err(err)?;
    let a = l.local_addr().map_err(err)?;
    Ok((l, a))
}

fn host_of(a: &SocketAddr, advertise: &str) -> String {
    if a.ip().is_unspecified() {
        advertise.to_string()
    } else {
        a.ip().to_string()
    }
}

/// Bound listeners of one instrument's gateway, not serving yet.
pub(crate) struct Listeners {
    raw: Option<TcpListener>,
    vxi11: Option<(Option<TcpListener>, TcpListener)>,
    hislip: Option<TcpListener>,
    pub(crate) servers: Vec<LanServer>,
}

/// Bind the servers `lan` asks for (all, or none: an error names the one
/// that failed).
pub(crate) async fn bind(lan: &LanSection, advertise: &str) -> Result<Listeners, LanBindError> {
    let mut servers = Vec::new();
    let raw = match lan.raw_addr() {
        Some(addr) => {
            let (l, a) = listen(&addr, "raw socket").await?;
            servers.push(LanServer {
                protocol: "raw",
                addr: a,
                visa: format!("TCPIP::{}::{}::SOCKET", host_of(&a, advertise), a.port()),
            });
            Some(l)
        }
        None => None,
    };
    let vxi11 = match (lan.vxi11_addr(), &lan.vxi11_core) {
        (None, None) => None,
        (pm, core) => {
            let pm = match pm {
                Some(addr) => Some(listen(&addr, "VXI-11 portmapper").await?),
                None => None,
            };
            let core_addr = match (core, &pm) {
                (Some(c), _) => c.clone(),
                (None, Some((_, a))) => SocketAddr::new(a.ip(), 0).to_string(),
                (None, None) => "0.0.0.0:0".to_string(),
            };
            let (core, ca) = listen(&core_addr, "VXI-11 core channel").await?;
            let host = host_of(&ca, advertise);
            servers.push(LanServer {
                protocol: "vxi11",
                addr: ca,
                visa: format!("TCPIP::{host},{}::INSTR", ca.port()),
            });
            let pm = pm.map(|(l, a)| {
                servers.push(LanServer {
                    protocol: "portmapper",
                    addr: a,
                    visa: if a.port() == 111 {
                        format!("TCPIP::{}::inst0::INSTR", host_of(&a, advertise))
                    } else {
                        format!("vxi11://{}:{}/inst0", host_of(&a, advertise), a.port())
                    },
                });
                l
            });
            Some((pm, core))
        }
    };
    let hislip = match lan.hislip_addr() {
        Some(addr) => {
            let (l, a) = listen(&addr, "HiSLIP").await?;
            let host = host_of(&a, advertise);
            servers.push(LanServer {
                protocol: "hislip",
                addr: a,
                visa: if a.port() == labmesh_drivers::hislip::PORT {
                    format!("TCPIP::{host}::hislip0::INSTR")
                } else {
                    format!("TCPIP::{host}::hislip0,{}::INSTR", a.port())
                },
            });
            Some(l)
        }
        None => None,
    };
    Ok(Listeners {
        raw,
        vxi11,
        hislip,
        servers,
    })
}

/// Start serving `listeners` for `relay_id` until `stop` turns true: the
/// instrument task's [`Port`] and the server tasks.
pub(crate) fn start(
    relay_id: &str,
    listeners: Listeners,
    stop: &watch::Receiver<bool>,
) -> (Port, Vec<JoinHandle<()>>) {
    let (tx, rx) = mpsc::channel(CHANNEL);
    let (holder_tx, holder_rx) = watch::channel(Holder::Free);
    let backend: Backend = Arc::new(GatewayBackend {
        relay_id: relay_id.to_string(),
        tx,
        holder: holder_rx,
        next: AtomicU32::new(1),
    });
    let stopped = |stop: &watch::Receiver<bool>| {
        let mut stop = stop.clone();
        async move {
            let _ = stop.wait_for(|s| *s).await;
        }
    };
    let mut tasks = Vec::new();
    let id = relay_id.to_string();
    if let Some(l) = listeners.raw {
        let (b, s, id) = (backend.clone(), stopped(stop), id.clone());
        tasks.push(tokio::spawn(async move {
            if let Err(e) = labmesh_drivers::sim::backend::serve_tcp(b, l, s).await {
                tracing::warn!(relay_id = %id, "LAN raw socket: {e}");
            }
        }));
    }
    if let Some((pm, core)) = listeners.vxi11 {
        let (b, s, id) = (backend.clone(), stopped(stop), id.clone());
        tasks.push(tokio::spawn(async move {
            if let Err(e) = labmesh_drivers::sim::vxi11::serve(b, pm, core, s).await {
                tracing::warn!(relay_id = %id, "LAN VXI-11: {e}");
            }
        }));
    }
    if let Some(l) = listeners.hislip {
        let (b, s, id) = (backend.clone(), stopped(stop), id.clone());
        tasks.push(tokio::spawn(async move {
            let opts = labmesh_drivers::sim::hislip::HislipServerOptions::default();
            if let Err(e) = labmesh_drivers::sim::hislip::serve(b, l, opts, s).await {
                tracing::warn!(relay_id = %id, "LAN HiSLIP: {e}");
            }
        }));
    }
    let port = Port {
        rx,
        holder: holder_tx,
        locks: HashMap::new(),
        queue: VecDeque::new(),
    };
    (port, tasks)
}
