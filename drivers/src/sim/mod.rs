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

pub mod backend;
pub mod hislip;
pub mod parser;
pub mod prologix;
pub mod psu;
pub mod toml;
pub mod usbtmc;
pub mod vxi11;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

pub use self::backend::{Backend, Refused, ScpiBackend, SimLock};
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
    /// The instrument's lock (VXI-11 device_lock, HiSLIP AsyncLock).
    lock: SimLock,
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
                lock: SimLock::default(),
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
        stream: S,
        shutdown: impl Future<Output = ()>,
    ) -> std::io::Result<()>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        backend::serve_stream(self, stream, shutdown).await
    }

    /// Accept TCP clients until `shutdown` completes; every client talks to
    /// this one instrument. On shutdown, open connections are closed and
    /// awaited before this returns.
    pub async fn serve_tcp(
        &self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> std::io::Result<()> {
        backend::serve_tcp(Arc::new(self.clone()), listener, shutdown).await
    }

    /// Serve this instrument on a new pseudo-terminal. Must be called from
    /// within a tokio runtime. The returned [`PtySim`] names the slave path
    /// to open as a serial port; dropping or [`PtySim::close`]-ing it
    /// "unplugs" the port.
    pub fn serve_pty(&self) -> Result<PtySim, DriverError> {
        backend::serve_pty(Arc::new(self.clone()))
    }
}

#[async_trait::async_trait]
impl ScpiBackend for SimPsu {
    async fn execute(&self, _session: u32, message: &str) -> Result<Option<Vec<u8>>, Refused> {
        Ok(SimPsu::execute(self, message))
    }

    fn message_too_long(&self) {
        self.state().push_error(-100);
    }

    fn is_ready(&self) -> bool {
        !self.is_muted()
    }

    async fn ready(&self) {
        self.wait_unmuted().await;
    }

    fn latency(&self) -> Duration {
        SimPsu::latency(self)
    }

    fn next_session(&self) -> u32 {
        self.next_link_id()
    }

    async fn lock(&self, session: u32, wait: Duration) -> bool {
        self.inner.lock.lock(session, wait).await
    }

    async fn wait_free(&self, session: u32, wait: Duration) -> bool {
        self.inner.lock.wait_free(session, wait).await
    }

    async fn unlock(&self, session: u32) -> bool {
        self.inner.lock.unlock(session)
    }

    async fn is_locked(&self) -> bool {
        self.inner.lock.is_locked()
    }
}

/// A simulator served on a pseudo-terminal.
#[derive(Debug)]
pub struct PtySim {
    pub(crate) path: PathBuf,
    pub(crate) stop: Option<oneshot::Sender<()>>,
    pub(crate) task: Option<JoinHandle<()>>,
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
