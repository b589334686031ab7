//! What the LAN-instrument servers (raw socket, VXI-11, HiSLIP) serve: any
//! [`ScpiBackend`].
//!
//! The servers in [`super::vxi11`], [`super::hislip`] and [`serve_tcp`] /
//! [`serve_stream`] speak the protocols; a backend executes program
//! messages and holds the instrument's one lock. The simulated PSU
//! ([`super::SimPsu`]) and the TOML simulator ([`super::toml::TomlSim`])
//! are backends, and so is an instrument hosted by a relay (the relay's
//! LAN gateway), whose messages go through the instrument's task queue and
//! whose lock is the mesh lease.
//!
//! Session ids (VXI-11 link ids, HiSLIP session ids, one per raw-socket
//! connection) come from [`ScpiBackend::next_session`]; the lock methods
//! take the session that asks.

use std::future::Future;
use std::path::PathBuf;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinSet;

use super::{PtySim, MAX_LINE};
use crate::DriverError;

/// Why a backend did not execute a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// Someone else holds the instrument (another LAN session's lock, or a
    /// mesh lease): VXI-11 answers error 11, HiSLIP an `Error` message.
    #[error("locked: {0}")]
    Locked(String),
    /// The instrument could not be reached or did not answer in time:
    /// VXI-11 answers error 17 (I/O error), HiSLIP an `Error` message.
    #[error("{0}")]
    Failed(String),
}

/// An instrument the LAN servers can serve.
#[async_trait::async_trait]
pub trait ScpiBackend: Send + Sync + 'static {
    /// Execute one program message (no terminator) for `session`: the
    /// reply bytes without terminator, or `None` if it has no reply.
    async fn execute(&self, session: u32, message: &str) -> Result<Option<Vec<u8>>, Refused>;

    /// A program message longer than [`MAX_LINE`] was dropped (a simulator
    /// queues -100 "Command error").
    fn message_too_long(&self) {}

    /// Whether messages run now (a muted simulator: no; the VXI-11 server
    /// queues them until it is).
    fn is_ready(&self) -> bool {
        true
    }

    /// Wait until [`ScpiBackend::is_ready`].
    async fn ready(&self) {}

    /// Delay before every reply (a simulator's injected latency).
    fn latency(&self) -> Duration {
        Duration::ZERO
    }

    /// A new session id (never 0).
    fn next_session(&self) -> u32;

    /// Take the instrument's lock for `session`, waiting up to `wait` for
    /// its holder; true if `session` holds it now.
    async fn lock(&self, session: u32, wait: Duration) -> bool;

    /// Whether `session` may use the instrument (nobody else holds the
    /// lock), waiting up to `wait` for another session to release it.
    async fn wait_free(&self, session: u32, wait: Duration) -> bool;

    /// Release `session`'s lock; false if it does not hold it.
    async fn unlock(&self, session: u32) -> bool;

    /// Whether anyone holds the lock.
    async fn is_locked(&self) -> bool;

    /// The session ended (its connection closed): release what it holds.
    async fn end_session(&self, session: u32) {
        self.unlock(session).await;
    }

    /// The status byte (`*STB?`), 0 if unknown.
    async fn status_byte(&self, session: u32) -> u8 {
        match self.execute(session, "*STB?").await {
            Ok(Some(b)) => String::from_utf8_lossy(&b)
                .trim()
                .trim_start_matches('+')
                .parse::<u8>()
                .unwrap_or(0),
            _ => 0,
        }
    }

    /// A device trigger (`*TRG`).
    async fn trigger(&self, session: u32) {
        let _ = self.execute(session, "*TRG").await;
    }
}

/// A shared backend.
pub type Backend = Arc<dyn ScpiBackend>;

/// Connections one server keeps open at once; more are closed at once
/// (each connection's buffers are bounded, so this bounds a server).
pub const MAX_CONNECTIONS: usize = 64;

/// Whether a server with `open` connections may take one more (logs a
/// refusal).
pub(crate) fn room_for(open: usize, what: &str) -> bool {
    if open >= MAX_CONNECTIONS {
        tracing::warn!("{what}: {MAX_CONNECTIONS} connections open, refusing another");
        return false;
    }
    true
}

/// The one lock of a simulated instrument: the holder's session id.
#[derive(Debug)]
pub struct SimLock(watch::Sender<Option<u32>>);

impl Default for SimLock {
    fn default() -> Self {
        SimLock(watch::channel(None).0)
    }
}

impl SimLock {
    /// Take it for `id` if free (or already `id`'s).
    pub fn try_lock(&self, id: u32) -> bool {
        let mut got = false;
        self.0.send_if_modified(|owner| match owner {
            None => {
                *owner = Some(id);
                got = true;
                true
            }
            Some(o) => {
                got = *o == id;
                false
            }
        });
        got
    }

    /// Take it for `id`, waiting up to `wait` for its holder.
    pub async fn lock(&self, id: u32, wait: Duration) -> bool {
        let mut rx = self.0.subscribe();
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if self.try_lock(id) {
                return true;
            }
            let free = tokio::time::timeout_at(deadline, rx.wait_for(|o| o.is_none())).await;
            if free.is_err() {
                return false;
            }
        }
    }

    /// Whether `id` may use the instrument, waiting up to `wait`.
    pub async fn wait_free(&self, id: u32, wait: Duration) -> bool {
        let mut rx = self.0.subscribe();
        let free = tokio::time::timeout(wait, rx.wait_for(|o| o.is_none_or(|o| o == id))).await;
        matches!(free, Ok(Ok(_)))
    }

    /// Release `id`'s lock; false if it does not hold it.
    pub fn unlock(&self, id: u32) -> bool {
        self.0.send_if_modified(|owner| {
            if *owner == Some(id) {
                *owner = None;
                true
            } else {
                false
            }
        })
    }

    /// Whether anyone holds it.
    pub fn is_locked(&self) -> bool {
        self.0.borrow().is_some()
    }
}

/// Serve SCPI on one byte stream until it closes or `shutdown` completes.
/// Program messages end in `\n` (a `\r` before it is ignored); every
/// response message ends in `\n`. The stream is one session; a message
/// the backend refuses (locked) is dropped and logged: a raw socket has no
/// way to say so.
pub async fn serve_stream<S>(
    backend: &dyn ScpiBackend,
    mut stream: S,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let session = backend.next_session();
    let r = serve_session(backend, session, &mut stream, shutdown).await;
    backend.end_session(session).await;
    r
}

async fn serve_session<S>(
    backend: &dyn ScpiBackend,
    session: u32,
    stream: &mut S,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut shutdown = pin!(shutdown);
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 4096];
    let mut discarding = false;
    loop {
        while let Some(i) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=i).collect();
            if discarding {
                discarding = false;
                continue;
            }
            let text = String::from_utf8_lossy(line.get(..i).unwrap_or_default());
            let text = text.trim_end_matches('\r');
            tokio::select! {
                _ = &mut shutdown => return Ok(()),
                _ = backend.ready() => {}
            }
            let reply = tokio::select! {
                _ = &mut shutdown => return Ok(()),
                r = backend.execute(session, text) => r,
            };
            match reply {
                Ok(Some(mut reply)) => {
                    let latency = backend.latency();
                    if !latency.is_zero() {
                        tokio::select! {
                            _ = &mut shutdown => return Ok(()),
                            _ = tokio::time::sleep(latency) => {}
                        }
                    }
                    reply.push(b'\n');
                    stream.write_all(&reply).await?;
                    stream.flush().await?;
                }
                Ok(None) => {}
                Err(e) => tracing::warn!("raw socket: {text:?} not executed: {e}"),
            }
        }
        if buf.len() > MAX_LINE {
            tracing::warn!("program message longer than {MAX_LINE} bytes: dropped");
            buf.clear();
            discarding = true;
            backend.message_too_long();
        }
        tokio::select! {
            _ = &mut shutdown => return Ok(()),
            n = stream.read(&mut chunk) => match n? {
                0 => return Ok(()),
                n => buf.extend_from_slice(chunk.get(..n).unwrap_or_default()),
            },
        }
    }
}

/// Accept TCP clients until `shutdown` completes; every client talks to
/// the one backend. On shutdown, open connections are closed and awaited
/// before this returns.
pub async fn serve_tcp(
    backend: Backend,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let mut shutdown = pin!(shutdown);
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            accepted = listener.accept() => {
                let (sock, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of descriptors and the like: keep serving.
                        tracing::warn!("accept: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                if !room_for(conns.len(), "raw socket") {
                    continue;
                }
                let _ = sock.set_nodelay(true);
                let backend = backend.clone();
                let mut stop = stop_rx.clone();
                conns.spawn(async move {
                    tracing::debug!(%peer, "raw socket client connected");
                    let stopped = async move {
                        let _ = stop.wait_for(|s| *s).await;
                    };
                    if let Err(e) = serve_stream(&*backend, sock, stopped).await {
                        tracing::debug!(%peer, "raw socket client: {e}");
                    }
                });
            }
        }
    }
    let _ = stop_tx.send(true);
    while conns.join_next().await.is_some() {}
    Ok(())
}

/// Serve `backend` on a new pseudo-terminal (see [`super::SimPsu::serve_pty`]).
/// Must be called from within a tokio runtime.
pub fn serve_pty(backend: Backend) -> Result<PtySim, DriverError> {
    let (master, slave) = serialport::TTYPort::pair().map_err(|e| {
        DriverError::link("cannot create a pseudo-terminal", std::io::Error::from(e))
    })?;
    let path = serialport::SerialPort::name(&slave)
        .map(PathBuf::from)
        .ok_or_else(|| {
            DriverError::link_lost(
                "pseudo-terminal",
                std::io::ErrorKind::NotFound,
                "it has no path",
            )
        })?;
    let master = tokio_serial::SerialStream::try_from(master)
        .map_err(|e| DriverError::link("pseudo-terminal master", std::io::Error::from(e)))?;
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        // Hold the slave open: with no slave descriptor open, reads on
        // the master fail with EIO between client sessions.
        let _slave = slave;
        let stopped = async move {
            let _ = stop_rx.await;
        };
        if let Err(e) = serve_stream(&*backend, master, stopped).await {
            tracing::warn!("sim pty: {e}");
        }
    });
    Ok(PtySim {
        path,
        stop: Some(stop_tx),
        task: Some(task),
    })
}
