//! The gateway of a cascading broker (`advertise = "gateway"`): for each
//! relay RPC endpoint and bank ingest/retrieve endpoint registered here, a
//! ROUTER of ours that the parent's clients reach instead, forwarding every
//! message to the real endpoint and every reply back.
//!
//! Each client connection (ROUTER identity) gets a DEALER of its own toward
//! the target, so the relay or bank sees one peer per client, exactly as if
//! the client were connected directly: per-peer limits, download sessions
//! and credit-mode flow control work unchanged, end to end (the gateway
//! holds no credit of its own; what is in flight is what the client
//! granted). Frames are forwarded verbatim, multipart included (bulk data
//! frames).
//!
//! Bounded: at most [`MAX_SESSIONS`] client sessions per route (the least
//! recently used is closed for a new one), idle sessions close after
//! [`SESSION_IDLE`], every pipe holds at most [`GATEWAY_HWM`] messages of at
//! most [`MAX_FRAME`] bytes; a full pipe drops (as a full ROUTER does).

use std::collections::HashMap;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use labmesh_proto::endpoint::public_endpoint;
use labmesh_proto::limits;

/// Client sessions kept at most per proxied endpoint.
pub const MAX_SESSIONS: usize = 256;
/// A session with no traffic this long is closed (the next request opens a
/// new one).
pub const SESSION_IDLE: Duration = Duration::from_secs(120);
/// Messages queued at most per pipe (each direction of each session).
pub const GATEWAY_HWM: i32 = 64;
/// Largest message accepted in either direction, bytes (an upload chunk at
/// the largest allowed size, plus its header).
pub const MAX_FRAME: usize = limits::MAX_UPLOAD_CHUNK + limits::MIB;

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub(crate) enum GatewayError {
    /// A socket could not be made.
    #[error("zmq: {0}")]
    Zmq(#[from] zmq::Error),
    /// Its thread could not be started.
    #[error("cannot start the gateway thread: {0}")]
    Thread(std::io::Error),
}

enum Cmd {
    Open { target: String, front: zmq::Socket },
    Close { target: String },
    Stop,
}

/// Handle to the gateway thread.
pub(crate) struct Gateway {
    ctx: zmq::Context,
    bind: String,
    host: String,
    tx: mpsc::Sender<Cmd>,
    wake: zmq::Socket,
    routes: HashMap<String, String>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Gateway {
    /// Start the gateway thread. Proxied endpoints are bound at `bind`
    /// (`tcp://*:*`; a fresh port each) and advertised with `host`.
    pub(crate) fn spawn(ctx: &zmq::Context, bind: &str, host: &str) -> Result<Self, GatewayError> {
        let addr = format!(
            "inproc://labmesh-gateway-{}",
            labmesh_wire::dealer::new_rpc_uuid()
        );
        let ctl = ctx.socket(zmq::PAIR)?;
        ctl.bind(&addr)?;
        let wake = ctx.socket(zmq::PAIR)?;
        wake.set_linger(0)?;
        wake.connect(&addr)?;
        let (tx, rx) = mpsc::channel();
        let tctx = ctx.clone();
        let thread = std::thread::Builder::new()
            .name("labmesh-gateway".into())
            .spawn(move || run(tctx, ctl, rx))
            .map_err(GatewayError::Thread)?;
        Ok(Gateway {
            ctx: ctx.clone(),
            bind: bind.into(),
            host: host.into(),
            tx,
            wake,
            routes: HashMap::new(),
            thread: Some(thread),
        })
    }

    fn poke(&self, cmd: Cmd) {
        if self.tx.send(cmd).is_ok() {
            let _ = self.wake.send(b"".as_slice(), zmq::DONTWAIT);
        }
    }

    /// The endpoint at which `target` is reached through this gateway
    /// (opened on first use).
    pub(crate) fn route(&mut self, target: &str) -> Result<String, zmq::Error> {
        if let Some(ep) = self.routes.get(target) {
            return Ok(ep.clone());
        }
        let front = self.ctx.socket(zmq::ROUTER)?;
        front.set_linger(0)?;
        front.set_sndhwm(GATEWAY_HWM)?;
        front.set_rcvhwm(GATEWAY_HWM)?;
        front.set_maxmsgsize(MAX_FRAME as i64)?;
        front.bind(&self.bind)?;
        let bound = match front.get_last_endpoint()? {
            Ok(s) => s,
            Err(b) => String::from_utf8_lossy(&b).into_owned(),
        };
        let ep = public_endpoint(&bound, &self.host);
        tracing::info!(target, gateway = %ep, "gateway: proxying");
        self.poke(Cmd::Open {
            target: target.into(),
            front,
        });
        self.routes.insert(target.into(), ep.clone());
        Ok(ep)
    }

    /// Close every route whose target is not in `keep`.
    pub(crate) fn retain(&mut self, keep: &std::collections::HashSet<String>) {
        let gone: Vec<String> = self
            .routes
            .keys()
            .filter(|t| !keep.contains(*t))
            .cloned()
            .collect();
        for target in gone {
            tracing::info!(target, "gateway: closing");
            self.routes.remove(&target);
            self.poke(Cmd::Close { target });
        }
    }

    /// Stop the thread (its sockets close).
    pub(crate) async fn stop(mut self) {
        self.poke(Cmd::Stop);
        if let Some(t) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
    }
}

struct Session {
    dealer: zmq::Socket,
    last: Instant,
}

struct Route {
    target: String,
    front: zmq::Socket,
    sessions: HashMap<Vec<u8>, Session>,
}

fn send_all(sock: &zmq::Socket, head: Option<&[u8]>, frames: &[Vec<u8>]) {
    let n = frames.len() + usize::from(head.is_some());
    let all = head.into_iter().chain(frames.iter().map(Vec::as_slice));
    for (i, f) in all.enumerate() {
        let flags = if i + 1 < n {
            zmq::SNDMORE | zmq::DONTWAIT
        } else {
            zmq::DONTWAIT
        };
        if sock.send(f, flags).is_err() {
            // A full pipe drops the message, as a ROUTER at its mark does;
            // the rest of a message whose first frame went always fits.
            return;
        }
    }
}

fn open_session(ctx: &zmq::Context, target: &str) -> Result<zmq::Socket, zmq::Error> {
    let d = ctx.socket(zmq::DEALER)?;
    d.set_linger(0)?;
    d.set_sndhwm(GATEWAY_HWM)?;
    d.set_rcvhwm(GATEWAY_HWM)?;
    d.set_maxmsgsize(MAX_FRAME as i64)?;
    d.connect(target)?;
    Ok(d)
}

impl Route {
    /// One message from a client: to its session's DEALER.
    fn client_message(&mut self, ctx: &zmq::Context) {
        let Ok(frames) = self.front.recv_multipart(zmq::DONTWAIT) else {
            return;
        };
        let Some((id, body)) = frames.split_first() else {
            return;
        };
        if body.is_empty() {
            return;
        }
        if !self.sessions.contains_key(id) {
            if self.sessions.len() >= MAX_SESSIONS {
                if let Some(oldest) = self
                    .sessions
                    .iter()
                    .min_by_key(|(_, s)| s.last)
                    .map(|(k, _)| k.clone())
                {
                    tracing::debug!(target = %self.target, "gateway: session limit, closing the oldest");
                    self.sessions.remove(&oldest);
                }
            }
            match open_session(ctx, &self.target) {
                Ok(dealer) => {
                    self.sessions.insert(
                        id.clone(),
                        Session {
                            dealer,
                            last: Instant::now(),
                        },
                    );
                }
                Err(e) => {
                    tracing::warn!(target = %self.target, error = %e, "gateway: cannot open a session");
                    return;
                }
            }
        }
        if let Some(s) = self.sessions.get_mut(id) {
            s.last = Instant::now();
            send_all(&s.dealer, None, body);
        }
    }

    /// Replies waiting on a session: back to its client.
    fn replies_for(&mut self, id: &[u8]) {
        let Some(s) = self.sessions.get_mut(id) else {
            return;
        };
        for _ in 0..256 {
            let Ok(frames) = s.dealer.recv_multipart(zmq::DONTWAIT) else {
                break;
            };
            s.last = Instant::now();
            send_all(&self.front, Some(id), &frames);
        }
    }

    fn expire(&mut self, now: Instant) {
        self.sessions
            .retain(|_, s| now.duration_since(s.last) < SESSION_IDLE);
    }
}

fn run(ctx: zmq::Context, ctl: zmq::Socket, rx: mpsc::Receiver<Cmd>) {
    let mut routes: Vec<Route> = Vec::new();
    let mut last_expiry = Instant::now();
    loop {
        // Which socket each poll item is: ctl, then per route its front
        // and its sessions.
        let mut which: Vec<(usize, Option<Vec<u8>>)> = Vec::new();
        let mut items = vec![ctl.as_poll_item(zmq::POLLIN)];
        for (ri, r) in routes.iter().enumerate() {
            items.push(r.front.as_poll_item(zmq::POLLIN));
            which.push((ri, None));
            for (id, s) in &r.sessions {
                items.push(s.dealer.as_poll_item(zmq::POLLIN));
                which.push((ri, Some(id.clone())));
            }
        }
        match zmq::poll(&mut items, 1000) {
            Ok(_) => {}
            Err(zmq::Error::EINTR) => continue,
            Err(e) => {
                tracing::error!(error = %e, "gateway stopped");
                return;
            }
        }
        let ready: Vec<bool> = items.iter().map(|i| i.is_readable()).collect();
        drop(items);
        if ready[0] {
            while ctl.recv_bytes(zmq::DONTWAIT).is_ok() {}
            while let Ok(cmd) = rx.try_recv() {
                match cmd {
                    Cmd::Open { target, front } => routes.push(Route {
                        target,
                        front,
                        sessions: HashMap::new(),
                    }),
                    Cmd::Close { target } => routes.retain(|r| r.target != target),
                    Cmd::Stop => return,
                }
            }
            // Indexes below refer to the routes as polled; start over.
            continue;
        }
        for (k, (ri, sid)) in which.into_iter().enumerate() {
            if !ready[k + 1] {
                continue;
            }
            let Some(r) = routes.get_mut(ri) else {
                continue;
            };
            match sid {
                None => {
                    for _ in 0..256 {
                        if !r.front.get_events().is_ok_and(|e| e.contains(zmq::POLLIN)) {
                            break;
                        }
                        r.client_message(&ctx);
                    }
                }
                Some(id) => r.replies_for(&id),
            }
        }
        let now = Instant::now();
        if now.duration_since(last_expiry) > Duration::from_secs(5) {
            last_expiry = now;
            for r in &mut routes {
                r.expire(now);
            }
        }
    }
}
