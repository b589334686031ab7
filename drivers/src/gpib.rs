//! GPIB through a Prologix-compatible adapter (Prologix GPIB-USB /
//! GPIB-ETHERNET, AR488): a byte stream (serial port, or TCP port 1234)
//! carrying `++` commands to the adapter and escaped data for the
//! instrument, as the Prologix manual describes.
//!
//! On (re)open the adapter is configured once: `++mode 1` (controller),
//! `++auto 0` (read only when asked), `++eoi 1` (EOI with the last byte),
//! `++eos 3` (the adapter appends nothing: the session's own terminator
//! is sent), `++eot_enable 0`, `++read_tmo_ms`. Each exchange selects its
//! instrument with `++addr N [96+S]` when another was addressed last,
//! sends the command (CR, LF, ESC and `+` escaped with ESC) and, for a
//! reply, `++read eoi`.
//!
//! **Sharing**: every [`GpibLink`] naming the same adapter (the option's
//! resource text) shares one [`Adapter`] behind an async mutex, held from
//! a command to the end of its reply ([`GpibLink::end_exchange`]), so
//! instruments on one bus never interleave. An exchange abandoned half
//! way (timeout, cancellation) marks the adapter dirty: the next user
//! waits out the adapter's read timeout (`++read_tmo_ms`, 3000 ms) and
//! drains its input until quiet, and the abandoned instrument gets a
//! selected device clear (`++clr`) before its next exchange.

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::OwnedMutexGuard;
use tokio::time::Instant;

use crate::resource::Resource;
use crate::transport::{Link, LinkFailure};
use crate::DriverError;

/// The Prologix GPIB-ETHERNET's TCP port.
pub const PROLOGIX_TCP_PORT: u16 = 1234;

/// One adapter's connection and what it was last told.
#[derive(Debug)]
pub struct Adapter {
    resource: Resource,
    stream: Option<Link>,
    /// The address last selected with `++addr`.
    addressed: Option<(u8, Option<u8>)>,
    /// An exchange was abandoned at this time: before the next one, wait
    /// out the adapter's read timeout, then drain.
    dirty: Option<Instant>,
    /// The adapter's `++read_tmo_ms`.
    read_tmo: Duration,
    /// Instruments whose exchange was abandoned: `++clr` (selected device
    /// clear) before they are used again, so a late answer in their output
    /// buffer is not read as the next reply.
    needs_clear: std::collections::HashSet<(u8, Option<u8>)>,
}

type Shared = Arc<tokio::sync::Mutex<Adapter>>;

/// Adapters in use, by resource text. Weak: an adapter closes when its
/// last instrument's link is gone.
fn adapters() -> &'static Mutex<HashMap<String, Weak<tokio::sync::Mutex<Adapter>>>> {
    static ADAPTERS: OnceLock<Mutex<HashMap<String, Weak<tokio::sync::Mutex<Adapter>>>>> =
        OnceLock::new();
    ADAPTERS.get_or_init(Mutex::default)
}

fn shared_adapter(text: &str) -> Result<Shared, DriverError> {
    let resource = Resource::parse(text)?;
    if resource.is_message_based() || matches!(resource, Resource::Gpib { .. }) {
        return Err(DriverError::Config(format!(
            "GPIB adapter {text:?}: expected a serial port or tcp://HOST:1234"
        )));
    }
    let key = resource.to_string();
    let mut map = adapters().lock().unwrap_or_else(|e| e.into_inner());
    map.retain(|_, w| w.strong_count() > 0);
    if let Some(a) = map.get(&key).and_then(Weak::upgrade) {
        return Ok(a);
    }
    let a = Arc::new(tokio::sync::Mutex::new(Adapter {
        resource,
        stream: None,
        addressed: None,
        dirty: None,
        read_tmo: Duration::from_millis(3000),
        needs_clear: Default::default(),
    }));
    map.insert(key, Arc::downgrade(&a));
    Ok(a)
}

/// Escape data for the adapter: CR, LF, ESC and `+` get an ESC before them.
pub fn escape(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 8);
    for &b in data {
        if matches!(b, b'\r' | b'\n' | 0x1B | b'+') {
            out.push(0x1B);
        }
        out.push(b);
    }
    out
}

/// A link to one instrument on a Prologix-compatible adapter's bus.
#[derive(Debug)]
pub struct GpibLink {
    adapter: Shared,
    context: String,
    address: u8,
    secondary: Option<u8>,
    read_tmo_ms: u64,
    connect_timeout: Duration,
    guard: Option<OwnedMutexGuard<Adapter>>,
    /// `++read eoi` was sent and the reply is not finished.
    reading: bool,
}

impl GpibLink {
    /// A link to `address` (and `secondary`) through the adapter `adapter`
    /// names; opens and configures the adapter if no other link has.
    pub async fn open(
        adapter: &str,
        address: u8,
        secondary: Option<u8>,
        connect_timeout: Duration,
    ) -> Result<GpibLink, DriverError> {
        let shared = shared_adapter(adapter)?;
        let mut link = GpibLink {
            adapter: shared,
            context: format!("GPIB address {address} via {adapter}"),
            address,
            secondary,
            read_tmo_ms: 3000,
            connect_timeout,
            guard: None,
            reading: false,
        };
        let deadline = Instant::now() + connect_timeout;
        link.acquire(deadline).await.map_err(|f| link.fail(f))?;
        link.end_exchange();
        Ok(link)
    }

    fn fail(&self, f: LinkFailure) -> DriverError {
        match f {
            LinkFailure::TimedOut => DriverError::link(
                self.context.clone(),
                io::Error::new(io::ErrorKind::TimedOut, "adapter busy or not answering"),
            ),
            LinkFailure::Io(e) => DriverError::link(self.context.clone(), e),
            LinkFailure::Driver(e) => e,
        }
    }

    /// Take the adapter (waiting for other instruments' exchanges), open
    /// and configure it if needed, drain after an abandoned exchange, and
    /// address this instrument.
    async fn acquire(&mut self, deadline: Instant) -> Result<(), LinkFailure> {
        if self.guard.is_none() {
            let lock = self.adapter.clone().lock_owned();
            let g = tokio::time::timeout_at(deadline, lock)
                .await
                .map_err(|_| LinkFailure::TimedOut)?;
            self.guard = Some(g);
        }
        let (read_tmo, connect_timeout) = (self.read_tmo_ms, self.connect_timeout);
        let Some(a) = self.guard.as_mut() else {
            return Err(LinkFailure::TimedOut);
        };
        if a.stream.is_none() {
            let mut s = Link::open(&a.resource, connect_timeout).await?;
            s.discard_input();
            let setup = format!(
                "++mode 1\n++auto 0\n++eoi 1\n++eos 3\n++eot_enable 0\n++read_tmo_ms {read_tmo}\n"
            );
            let w = tokio::time::timeout_at(deadline, s.write_all(setup.as_bytes())).await;
            match w {
                Err(_) => return Err(LinkFailure::TimedOut),
                Ok(Err(e)) => return Err(LinkFailure::Io(e)),
                Ok(Ok(())) => {}
            }
            a.stream = Some(s);
            a.addressed = None;
            a.dirty = None;
            a.read_tmo = Duration::from_millis(read_tmo);
        }
        if let Some(since) = a.dirty {
            // The adapter may still be reading from the instrument: let its
            // read time out, then discard what it sends.
            tokio::time::sleep_until(since + a.read_tmo).await;
            drain(a).await?;
            a.dirty = None;
        }
        let want = (self.address, self.secondary);
        if a.addressed != Some(want) {
            let cmd = match self.secondary {
                Some(s) => format!("++addr {} {}\n", self.address, 96 + u16::from(s)),
                None => format!("++addr {}\n", self.address),
            };
            write(a, cmd.as_bytes(), deadline).await?;
            a.addressed = Some(want);
        }
        if a.needs_clear.remove(&want) {
            write(a, b"++clr\n", deadline).await?;
        }
        Ok(())
    }

    /// Send one command (already terminated) to the instrument.
    pub async fn send(&mut self, bytes: &[u8], timeout: Duration) -> Result<(), LinkFailure> {
        let deadline = Instant::now() + timeout;
        self.acquire(deadline).await?;
        self.reading = false;
        let mut line = escape(bytes);
        line.push(b'\n');
        let Some(a) = self.guard.as_mut() else {
            return Err(LinkFailure::TimedOut);
        };
        write(a, &line, deadline).await
    }

    /// Read more of the instrument's reply (`++read eoi` first).
    pub async fn recv(
        &mut self,
        buf: &mut Vec<u8>,
        deadline: Instant,
    ) -> Result<bool, LinkFailure> {
        self.acquire(deadline).await?;
        let Some(a) = self.guard.as_mut() else {
            return Err(LinkFailure::TimedOut);
        };
        if !self.reading {
            write(a, b"++read eoi\n", deadline).await?;
            self.reading = true;
        }
        let Some(s) = a.stream.as_mut() else {
            return Err(LinkFailure::TimedOut);
        };
        let mut chunk = [0u8; 4096];
        match tokio::time::timeout_at(deadline, s.read(&mut chunk)).await {
            Err(_) => {
                a.dirty = Some(Instant::now());
                a.needs_clear.insert((self.address, self.secondary));
                Err(LinkFailure::TimedOut)
            }
            Ok(Ok(0)) => {
                a.stream = None;
                Err(LinkFailure::Io(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the GPIB adapter closed the link",
                )))
            }
            Ok(Ok(n)) => {
                buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
                Ok(false)
            }
            Ok(Err(e)) => {
                a.stream = None;
                Err(LinkFailure::Io(e))
            }
        }
    }

    /// The exchange is over: let other instruments use the adapter.
    pub fn end_exchange(&mut self) {
        self.reading = false;
        self.guard = None;
    }

    /// Selected device clear (`++clr`).
    pub async fn clear(&mut self, timeout: Duration) -> Result<(), DriverError> {
        let deadline = Instant::now() + timeout;
        let r = async {
            self.acquire(deadline).await?;
            let Some(a) = self.guard.as_mut() else {
                return Err(LinkFailure::TimedOut);
            };
            write(a, b"++clr\n", deadline).await
        }
        .await;
        self.end_exchange();
        r.map_err(|f| self.fail(f))
    }
}

impl Drop for GpibLink {
    fn drop(&mut self) {
        if let Some(g) = self.guard.as_mut() {
            if self.reading {
                g.dirty = Some(Instant::now());
                g.needs_clear.insert((self.address, self.secondary));
            }
        }
    }
}

async fn write(a: &mut Adapter, bytes: &[u8], deadline: Instant) -> Result<(), LinkFailure> {
    let Some(s) = a.stream.as_mut() else {
        return Err(LinkFailure::TimedOut);
    };
    match tokio::time::timeout_at(deadline, s.write_all(bytes)).await {
        Err(_) => {
            // A half-written line: start the adapter afresh.
            a.stream = None;
            Err(LinkFailure::TimedOut)
        }
        Ok(Err(e)) => {
            a.stream = None;
            Err(LinkFailure::Io(e))
        }
        Ok(Ok(())) => Ok(()),
    }
}

/// Discard the adapter's input until it has been quiet for 100 ms (at most 2 s).
async fn drain(a: &mut Adapter) -> Result<(), LinkFailure> {
    let give_up = Instant::now() + Duration::from_secs(2);
    let mut scratch = [0u8; 512];
    while Instant::now() < give_up {
        let Some(s) = a.stream.as_mut() else {
            return Ok(());
        };
        match tokio::time::timeout(Duration::from_millis(100), s.read(&mut scratch)).await {
            Err(_) => break,
            Ok(Ok(0)) => {
                a.stream = None;
                return Ok(());
            }
            Ok(Ok(n)) => tracing::debug!(bytes = n, "GPIB adapter: discarding a late reply"),
            Ok(Err(e)) => {
                a.stream = None;
                return Err(LinkFailure::Io(e));
            }
        }
    }
    if let Some(s) = a.stream.as_mut() {
        s.discard_input();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_the_four_special_bytes() {
        assert_eq!(escape(b"VOLT 1\n"), b"VOLT 1\x1b\n");
        assert_eq!(escape(b"+5\r\x1b"), b"\x1b+5\x1b\r\x1b\x1b");
    }
}
