//! Simulated SCPI power supplies: a product for tests and demos.
//!
//! A [`SimPsu`] is one instrument (shared state behind a handle that is
//! cheap to clone). Serve it over TCP ([`SimPsu::serve_tcp`], many clients
//! sharing the one instrument), over any byte stream
//! ([`SimPsu::serve_stream`]) or over a pseudo-terminal ([`SimPsu::serve_pty`],
//! which prints like a serial port at a `/dev/pts/N` path).
//!
//! It speaks the Keysight E36xx, Rigol DP800 or Siglent SPD3303X dialect
//! ([`Dialect`]) as its programming guide documents it (docs/DRIVERS.md,
//! "What each dialect models"), with a real error queue, short and long
//! forms, `;`-separated commands, per-channel limits, a resistive load
//! model, over-voltage/over-current protection with trip and clear, saved
//! states and status registers.
//! [`SimPsu::set_muted`] makes it stop answering (it stops reading commands
//! until unmuted, like a hung instrument; queued commands are then executed
//! and answered late); [`SimPsu::set_latency`] delays every reply.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use labmesh_drivers::sim::{Dialect, SimConfig, SimPsu};
//! let sim = SimPsu::new(SimConfig::new(Dialect::KeysightE36xx))?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:5025").await?;
//! sim.serve_tcp(listener, std::future::pending()).await?;
//! # Ok(()) }
//! ```

pub mod hislip;
pub mod parser;
pub mod prologix;
pub mod psu;
pub mod usbtmc;
pub mod vxi11;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::pin;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio::task::{JoinHandle, JoinSet};

pub use self::psu::{PsuState, Reading};
pub use crate::psu::models::Family as Dialect;
use crate::psu::models::PsuModel;
use crate::DriverError;

/// Longest program message accepted; longer input is dropped with -100.
pub const MAX_LINE: usize = 64 * 1024;

/// How to build a simulated PSU.
#[derive(Debug, Clone, PartialEq)]
pub struct SimConfig {
    /// Command dialect.
    pub dialect: Dialect,
    /// Model name (`E36313A`, `DP832`, `SPD3303X`, ...); `None`: the
    /// family's default.
    pub model: Option<String>,
    /// Serial number reported by `*IDN?`.
    pub serial: String,
    /// Resistive load on every output, ohms (default 10).
    pub load_ohms: f64,
    /// Delay before every reply.
    pub latency: Duration,
}

impl SimConfig {
    /// Defaults for `dialect`: its default model, 10 Ω load, no latency.
    pub fn new(dialect: Dialect) -> Self {
        SimConfig {
            dialect,
            model: None,
            serial: "SIM000001".to_string(),
            load_ohms: 10.0,
            latency: Duration::ZERO,
        }
    }
}

#[derive(Debug)]
struct Inner {
    state: Mutex<PsuState>,
    muted: watch::Sender<bool>,
    latency_us: AtomicU64,
    /// Link / session ids handed out by the VXI-11 and HiSLIP servers.
    next_link: AtomicU32,
    /// The instrument's lock (VXI-11 device_lock, HiSLIP AsyncLock): the
    /// holder's link id.
    lock: watch::Sender<Option<u32>>,
}

/// A simulated PSU: a handle to one instrument's shared state.
#[derive(Debug, Clone)]
pub struct SimPsu {
    inner: Arc<Inner>,
}

impl SimPsu {
    /// Build the instrument `cfg` describes.
    pub fn new(cfg: SimConfig) -> Result<SimPsu, DriverError> {
        let model: &'static PsuModel = match &cfg.model {
            Some(name) => cfg.dialect.model(name)?,
            None => cfg.dialect.default_model(),
        };
        let (muted, _) = watch::channel(false);
        let sim = SimPsu {
            inner: Arc::new(Inner {
                state: Mutex::new(PsuState::new(model, &cfg.serial, cfg.load_ohms)),
                muted,
                latency_us: AtomicU64::new(0),
                next_link: AtomicU32::new(1),
                lock: watch::channel(None).0,
            }),
        };
        sim.set_latency(cfg.latency);
        Ok(sim)
    }

    fn state(&self) -> MutexGuard<'_, PsuState> {
        // A panic while holding the lock cannot leave the model half-updated
        // in a way that matters more than stopping the simulator would.
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stop (true) or resume (false) answering. While muted, connections
    /// stop reading commands; on unmute they catch up.
    pub fn set_muted(&self, muted: bool) {
        self.inner.muted.send_replace(muted);
    }

    /// Whether the simulator is muted.
    pub fn is_muted(&self) -> bool {
        *self.inner.muted.borrow()
    }

    /// Delay every reply by `latency`.
    pub fn set_latency(&self, latency: Duration) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.inner.latency_us.store(us, Ordering::Relaxed);
    }

    /// The current reply latency.
    pub fn latency(&self) -> Duration {
        Duration::from_micros(self.inner.latency_us.load(Ordering::Relaxed))
    }

    /// `*IDN?` answer.
    pub fn idn(&self) -> String {
        self.state().idn()
    }

    /// What channel `channel` (1-based) measures now.
    pub fn reading(&self, channel: usize) -> Reading {
        self.state().reading(channel.wrapping_sub(1))
    }

    /// Number of entries in the error queue.
    pub fn error_count(&self) -> usize {
        self.state().error_count()
    }

    /// The SPD3303X's fixed CH3 (switch position and on/off); `None` on
    /// other models.
    pub fn fixed_output(&self) -> Option<psu::FixedOutput> {
        self.state().fixed_output()
    }

    /// Move the SPD3303X's CH3 switch to 2.5, 3.3 or 5 V (false: no such
    /// output, or not a switch position).
    pub fn set_fixed_voltage(&self, volts: f64) -> bool {
        self.state().set_fixed_voltage(volts)
    }

    /// Run the Siglent timers `by` ahead (tests that do not want to wait
    /// for the groups' seconds).
    pub fn advance_timers(&self, by: Duration) {
        self.state().advance_timers(by)
    }

    /// Execute one program message directly (no I/O, no mute, no latency).
    pub fn execute(&self, line: &str) -> Option<Vec<u8>> {
        self.state().execute(line)
    }

    /// A new link / session id (never 0).
    fn next_link_id(&self) -> u32 {
        loop {
            let id = self.inner.next_link.fetch_add(1, Ordering::Relaxed);
            if id != 0 {
                return id;
            }
        }
    }

    /// Take the instrument's lock for `id` if free (or already `id`'s).
    fn vxi_try_lock(&self, id: u32) -> bool {
        let mut got = false;
        self.inner.lock.send_if_modified(|owner| match owner {
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

    /// Take the lock for `id`, waiting up to `wait` for its holder.
    async fn vxi_lock(&self, id: u32, wait: Duration) -> bool {
        let mut rx = self.inner.lock.subscribe();
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if self.vxi_try_lock(id) {
                return true;
            }
            let free = tokio::time::timeout_at(deadline, rx.wait_for(|o| o.is_none())).await;
            if free.is_err() {
                return false;
            }
        }
    }

    /// Whether `id` may use the instrument (no lock, or its own), waiting
    /// up to `wait` for another holder to release it.
    async fn vxi_wait_free(&self, id: u32, wait: Duration) -> bool {
        let mut rx = self.inner.lock.subscribe();
        let free = tokio::time::timeout(wait, rx.wait_for(|o| o.is_none_or(|o| o == id))).await;
        matches!(free, Ok(Ok(_)))
    }

    /// Release `id`'s lock; false if it does not hold it.
    fn vxi_unlock(&self, id: u32) -> bool {
        self.inner.lock.send_if_modified(|owner| {
            if *owner == Some(id) {
                *owner = None;
                true
            } else {
                false
            }
        })
    }

    async fn wait_unmuted(&self) {
        let mut rx = self.inner.muted.subscribe();
        // Err only if the sender is gone, which it cannot be while `self` lives.
        let _ = rx.wait_for(|m| !*m).await;
    }

    /// Serve SCPI on one byte stream until it closes or `shutdown` completes.
    /// Program messages end in `\n` (a `\r` before it is ignored); every
    /// response message ends in `\n`.
    pub async fn serve_stream<S>(
        &self,
        mut stream: S,
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
                    _ = self.wait_unmuted() => {}
                }
                let reply = self.execute(text);
                if let Some(mut reply) = reply {
                    let latency = self.latency();
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
            }
            if buf.len() > MAX_LINE {
                tracing::warn!("program message longer than {MAX_LINE} bytes: dropped");
                buf.clear();
                discarding = true;
                self.state().push_error(-100);
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
    /// this one instrument. On shutdown, open connections are closed and
    /// awaited before this returns.
    pub async fn serve_tcp(
        &self,
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
                            tracing::warn!("sim accept: {e}");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    let _ = sock.set_nodelay(true);
                    let sim = self.clone();
                    let mut stop = stop_rx.clone();
                    conns.spawn(async move {
                        tracing::debug!(%peer, "sim client connected");
                        let stopped = async move {
                            let _ = stop.wait_for(|s| *s).await;
                        };
                        if let Err(e) = sim.serve_stream(sock, stopped).await {
                            tracing::debug!(%peer, "sim client: {e}");
                        }
                    });
                }
            }
        }
        let _ = stop_tx.send(true);
        while conns.join_next().await.is_some() {}
        Ok(())
    }

    /// Serve this instrument on a new pseudo-terminal. Must be called from
    /// within a tokio runtime. The returned [`PtySim`] names the slave path
    /// to open as a serial port; dropping or [`PtySim::close`]-ing it
    /// "unplugs" the port.
    pub fn serve_pty(&self) -> Result<PtySim, DriverError> {
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
        let sim = self.clone();
        let task = tokio::spawn(async move {
            // Hold the slave open: with no slave descriptor open, reads on
            // the master fail with EIO between client sessions.
            let _slave = slave;
            let stopped = async move {
                let _ = stop_rx.await;
            };
            if let Err(e) = sim.serve_stream(master, stopped).await {
                tracing::warn!("sim pty: {e}");
            }
        });
        Ok(PtySim {
            path,
            stop: Some(stop_tx),
            task: Some(task),
        })
    }
}

/// A simulator served on a pseudo-terminal.
#[derive(Debug)]
pub struct PtySim {
    path: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl PtySim {
    /// The slave side's path (`/dev/pts/N`): open it like a serial port.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stop serving and close both sides of the pseudo-terminal (an
    /// "unplug": clients reading the port get an error). Waits until closed.
    pub async fn close(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }

    /// Wait until the serving task ends (it ends when closed).
    pub async fn wait(mut self) {
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for PtySim {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Serve a new simulator described by `cfg` on `listener` until `shutdown`.
pub async fn serve_tcp(
    listener: TcpListener,
    cfg: SimConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), DriverError> {
    let sim = SimPsu::new(cfg)?;
    sim.serve_tcp(listener, shutdown)
        .await
        .map_err(|e| DriverError::link("simulator", e))
}

/// Create a simulator described by `cfg` and serve it on a new
/// pseudo-terminal; returns the handle (mute, latency) and the pty.
pub fn serve_pty(cfg: SimConfig) -> Result<(SimPsu, PtySim), DriverError> {
    let sim = SimPsu::new(cfg)?;
    let pty = sim.serve_pty()?;
    Ok((sim, pty))
}
