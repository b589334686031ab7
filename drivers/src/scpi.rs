//! [`ScpiSession`]: SCPI message exchange over a [`Link`].
//!
//! * Every write is terminated (`"\n"` by default) and every read runs to the
//!   read terminator (`"\n"` by default; a trailing `"\r"` is stripped too), so
//!   a raw socket never waits on a terminator it will not get, and bytes past
//!   the terminator stay buffered for the next read.
//! * Each call has a timeout ([`SessionOptions::timeout`], or per call).
//! * After a timeout (or a call cancelled half way) the session is marked
//!   out of step and resynchronises before the next exchange, so a late reply
//!   is never returned as the answer to the next query: a TCP link is closed
//!   and reopened (the late reply dies with the old connection); a serial
//!   link is drained until it has been quiet for
//!   [`SessionOptions::drain_quiet`], then its input buffer is discarded.
//! * Message links (VXI-11, HiSLIP) send each command as one message (END
//!   on its last fragment); a reply ends at the read terminator or at the
//!   instrument's END, whichever comes first.
//! * A broken link (closed socket, unplugged port) fails the call that finds
//!   it with [`DriverError::Link`]; the next call reconnects and replays the
//!   init sequence.
//! * Optional `SYST:ERR?` check after each write; `*OPC?` fencing;
//!   IEEE 488.2 binary blocks.

use std::time::Duration;

use serde_json::{Map, Value};
use tokio::io::AsyncReadExt;
use tokio::time::Instant;

use crate::block::{self, BlockHeader};
use crate::resource::Resource;
use crate::transport::{Link, LinkFailure};
use crate::DriverError;

/// How a session talks.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionOptions {
    /// Appended to every command. Default `"\n"`.
    pub write_termination: String,
    /// Ends every reply. Default `"\n"` (a `"\r"` before it is stripped too).
    pub read_termination: String,
    /// Default per-call timeout. Default 2 s.
    pub timeout: Duration,
    /// Connect / open timeout. Default 3 s.
    pub connect_timeout: Duration,
    /// Query `SYST:ERR?` after each write and fail on an error entry.
    pub check_errors: bool,
    /// Commands written after every (re)connect, e.g. `["*CLS", "SYST:REM"]`.
    pub init: Vec<String>,
    /// Largest reply or binary block accepted. Default 16 MiB.
    pub max_reply: usize,
    /// Serial resync: drain until the line has been quiet this long. Default 100 ms.
    pub drain_quiet: Duration,
    /// Ask `*IDN?` whenever the link opens (after the init sequence) and
    /// keep the answer ([`ScpiSession::identity`]). Default false here; the
    /// built-in drivers turn it on (option `identify`).
    pub identify: bool,
}

impl Default for SessionOptions {
    fn default() -> Self {
        SessionOptions {
            write_termination: "\n".into(),
            read_termination: "\n".into(),
            timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(3),
            check_errors: false,
            init: Vec::new(),
            max_reply: 16 << 20,
            drain_quiet: Duration::from_millis(100),
            identify: false,
        }
    }
}

impl SessionOptions {
    /// Read the session keys of an instrument's `options` table:
    /// `timeout_ms`, `connect_timeout_ms`, `write_termination`,
    /// `read_termination`, `check_errors`, `init` (list of commands),
    /// `max_reply`, `drain_quiet_ms`, `identify`. Other keys are left to
    /// the driver.
    pub fn from_options(options: &Map<String, Value>) -> Result<Self, DriverError> {
        let mut o = SessionOptions::default();
        o.apply_options(options)?;
        Ok(o)
    }

    /// Override these options with the session keys of `options` (see
    /// [`SessionOptions::from_options`]).
    pub fn apply_options(&mut self, options: &Map<String, Value>) -> Result<(), DriverError> {
        let o = self;
        let bad = |k: &str, why: &str| DriverError::Config(format!("option '{k}': {why}"));
        let ms = |k: &str| -> Result<Option<Duration>, DriverError> {
            match options.get(k) {
                None => Ok(None),
                Some(v) => v
                    .as_u64()
                    .filter(|m| *m > 0)
                    .map(|m| Some(Duration::from_millis(m)))
                    .ok_or_else(|| bad(k, "expected a positive integer (milliseconds)")),
            }
        };
        if let Some(d) = ms("timeout_ms")? {
            o.timeout = d;
        }
        if let Some(d) = ms("connect_timeout_ms")? {
            o.connect_timeout = d;
        }
        if let Some(d) = ms("drain_quiet_ms")? {
            o.drain_quiet = d;
        }
        for (k, slot) in [
            ("write_termination", &mut o.write_termination),
            ("read_termination", &mut o.read_termination),
        ] {
            if let Some(v) = options.get(k) {
                *slot = v
                    .as_str()
                    .ok_or_else(|| bad(k, "expected a string such as \"\\n\""))?
                    .to_string();
            }
        }
        if o.read_termination.is_empty() {
            return Err(bad("read_termination", "must not be empty"));
        }
        for (k, slot) in [
            ("check_errors", &mut o.check_errors),
            ("identify", &mut o.identify),
        ] {
            if let Some(v) = options.get(k) {
                *slot = v.as_bool().ok_or_else(|| bad(k, "expected a boolean"))?;
            }
        }
        if let Some(v) = options.get("max_reply") {
            o.max_reply = v
                .as_u64()
                .and_then(|m| usize::try_from(m).ok())
                .filter(|m| *m > 0)
                .ok_or_else(|| bad("max_reply", "expected a positive integer (bytes)"))?;
        }
        if let Some(v) = options.get("init") {
            let items = v
                .as_array()
                .ok_or_else(|| bad("init", "expected a list of commands"))?;
            o.init = items
                .iter()
                .map(|i| i.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| bad("init", "expected a list of strings"))?;
        }
        Ok(())
    }
}

/// Opens a session's link in place of [`Link::open`] (see
/// [`ScpiSession::with_opener`]): called for every (re)connect.
pub type LinkOpener = std::sync::Arc<
    dyn Fn()
            -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Link, DriverError>> + Send>>
        + Send
        + Sync,
>;

/// An optional [`LinkOpener`] (Debug without showing the closure).
#[derive(Clone, Default)]
struct Opener(Option<LinkOpener>);

impl std::fmt::Debug for Opener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Opener(custom)"
        } else {
            "Opener(resource)"
        })
    }
}

/// An SCPI conversation with one instrument. Owns its link; connects lazily.
#[derive(Debug)]
pub struct ScpiSession {
    opener: Opener,
    resource: Resource,
    opts: SessionOptions,
    link: Option<Link>,
    buf: Vec<u8>,
    /// Set while an exchange is in flight and left set when it does not
    /// finish (timeout, cancellation): the next exchange resyncs first.
    out_of_step: bool,
    /// A binary block was read; skip the terminator that follows it.
    skip_terminator: bool,
    /// The buffer ends where a message link marked the end of a message.
    msg_end: bool,
    /// The last `*IDN?` answer (asked on every open with
    /// [`SessionOptions::identify`], and by [`ScpiSession::idn`]).
    identity: Option<String>,
    /// The instrument did not answer `*IDN?` on open: do not ask again.
    idn_unanswered: bool,
}

impl ScpiSession {
    /// A session for `resource`; nothing is opened until the first call
    /// (or [`ScpiSession::connect`]).
    pub fn new(resource: Resource, opts: SessionOptions) -> Self {
        ScpiSession {
            opener: Opener::default(),
            resource,
            opts,
            link: None,
            buf: Vec::new(),
            out_of_step: false,
            skip_terminator: false,
            msg_end: false,
            identity: None,
            idn_unanswered: false,
        }
    }

    /// A session whose link is opened (and reopened after it is lost) by
    /// `opener` instead of from the resource: for devices found some other
    /// way, such as the simulated USBTMC device in tests (each call a
    /// fresh enumeration, as after a replug). `resource` names it in
    /// errors and logs.
    pub fn with_opener(resource: Resource, opts: SessionOptions, opener: LinkOpener) -> Self {
        let mut s = ScpiSession::new(resource, opts);
        s.opener = Opener(Some(opener));
        s
    }

    /// A session for an instrument's config: its `resource` (required) with
    /// serial line options, and the session keys of its `options` over
    /// `defaults`.
    pub fn from_config(
        cfg: &crate::InstrumentConfig,
        defaults: SessionOptions,
    ) -> Result<ScpiSession, DriverError> {
        let text = cfg.resource.as_deref().ok_or_else(|| {
            DriverError::Config(format!(
                "instrument '{}' (driver {}) needs a resource, e.g. tcp://HOST:5025",
                cfg.id, cfg.driver
            ))
        })?;
        let mut resource = Resource::parse(text)?;
        resource.apply_options(&cfg.options)?;
        if let Resource::Gpib { adapter: None, .. } = resource {
            return Err(DriverError::Config(format!(
                "instrument '{}': resource {text}: GPIB needs option 'adapter' (the \
                 Prologix-compatible adapter: tcp://HOST:1234 or serial:///dev/ttyUSB0?baud=115200)",
                cfg.id
            )));
        }
        let mut opts = defaults;
        opts.apply_options(&cfg.options)?;
        Ok(ScpiSession::new(resource, opts))
    }

    /// The resource this session talks to.
    pub fn resource(&self) -> &Resource {
        &self.resource
    }

    /// The session options.
    pub fn options(&self) -> &SessionOptions {
        &self.opts
    }

    /// Whether a link is open (it may still turn out broken on the next call).
    pub fn is_connected(&self) -> bool {
        self.link.is_some()
    }

    /// The instrument's `*IDN?` answer, once known: learned whenever the
    /// link opens (with [`SessionOptions::identify`]) and by
    /// [`ScpiSession::idn`]; kept across reconnects.
    pub fn identity(&self) -> Option<&str> {
        self.identity.as_deref()
    }

    /// Open the link now (a no-op when open), send the init sequence and,
    /// with [`SessionOptions::identify`], learn the identity (`*IDN?`).
    /// An instrument that does not answer `*IDN?` is not asked again.
    pub async fn connect(&mut self) -> Result<(), DriverError> {
        if self.link.is_some() {
            return Ok(());
        }
        self.open().await?;
        if !self.opts.identify || self.idn_unanswered {
            return Ok(());
        }
        self.out_of_step = true;
        let timeout = self.opts.timeout;
        let r = match self.send("*IDN?", timeout).await {
            Ok(()) => self.recv_line(timeout).await,
            Err(e) => Err(e),
        };
        match r {
            Ok(idn) => {
                self.out_of_step = false;
                tracing::debug!(resource = %self.resource, %idn, "identified");
                self.identity = Some(idn);
                Ok(())
            }
            Err(DriverError::Timeout(_)) => {
                tracing::warn!(resource = %self.resource, "no answer to *IDN? on connect; not asking again");
                self.idn_unanswered = true;
                // A late answer must not become the next call's reply:
                // resync as after any unfinished exchange.
                if self.link.as_ref().is_some_and(Link::is_serial) {
                    self.drain().await?;
                    self.buf.clear();
                    self.out_of_step = false;
                    self.skip_terminator = false;
                    Ok(())
                } else {
                    self.link = None;
                    self.open().await
                }
            }
            Err(e) => Err(e),
        }
    }

    /// Use `link` (already open to this session's resource, e.g. a
    /// simulated USBTMC device) instead of opening one, and send the init
    /// sequence. Once it fails, the next call reopens the resource as usual.
    pub async fn attach(&mut self, link: Link) -> Result<(), DriverError> {
        self.link = None;
        self.install(link).await
    }

    /// Open the link and send the init sequence.
    async fn open(&mut self) -> Result<(), DriverError> {
        let link = match &self.opener.0 {
            Some(open) => open().await?,
            None => Link::open(&self.resource, self.opts.connect_timeout).await?,
        };
        self.install(link).await
    }

    async fn install(&mut self, mut link: Link) -> Result<(), DriverError> {
        link.discard_input();
        self.link = Some(link);
        self.buf.clear();
        self.msg_end = false;
        self.out_of_step = false;
        self.skip_terminator = false;
        tracing::debug!(resource = %self.resource, "connected");
        for cmd in self.opts.init.clone() {
            self.send(&cmd, self.opts.timeout).await?;
            self.end_exchange();
        }
        Ok(())
    }

    /// Close the link (VXI-11: destroy_link). The next call reconnects.
    pub async fn close(&mut self) {
        if let Some(link) = self.link.take() {
            link.close(Duration::from_millis(200)).await;
        }
        self.buf.clear();
        self.msg_end = false;
        self.out_of_step = false;
    }

    /// Device clear: the instrument drops pending input and output and the
    /// session's buffer is emptied. On VXI-11 this is `device_clear`, on
    /// HiSLIP `AsyncDeviceClear` + `DeviceClearComplete`; a
    /// byte stream has no such message, so the session resynchronises
    /// instead (a TCP link is reopened, a serial line drained).
    pub async fn clear(&mut self) -> Result<(), DriverError> {
        self.connect().await?;
        let timeout = self.opts.timeout;
        let Some(link) = self.link.as_mut() else {
            return Err(self.not_connected());
        };
        match link.device_clear(timeout).await {
            Ok(true) => {
                self.buf.clear();
                self.msg_end = false;
                self.out_of_step = false;
                self.skip_terminator = false;
                Ok(())
            }
            Ok(false) => {
                self.out_of_step = true;
                self.ready().await
            }
            Err(e) => Err(self.failed(LinkFailure::from(e), timeout)),
        }
    }

    fn drop_link(&mut self, source: std::io::Error) -> DriverError {
        tracing::warn!(resource = %self.resource, "link lost: {source}");
        self.link = None;
        self.buf.clear();
        self.msg_end = false;
        DriverError::link(self.resource.to_string(), source)
    }

    /// An exchange failed half way (a reply too long, not a block): a
    /// network or GPIB link is dropped now (a shared GPIB adapter must not
    /// wait for this session's next call; the next call reconnects anyway);
    /// a serial link stays, to be drained before the next exchange.
    fn abandon(&mut self) {
        if !self.link.as_ref().is_some_and(Link::is_serial) {
            self.link = None;
        }
    }

    /// A command and its reply are done: let a shared GPIB adapter go.
    fn end_exchange(&mut self) {
        if let Some(link) = self.link.as_mut() {
            link.end_exchange();
        }
    }

    fn not_connected(&self) -> DriverError {
        DriverError::link_lost(
            self.resource.to_string(),
            std::io::ErrorKind::NotConnected,
            "not connected",
        )
    }

    /// Connect if needed and resynchronise after an unfinished exchange.
    async fn ready(&mut self) -> Result<(), DriverError> {
        if self.out_of_step {
            match &self.link {
                Some(l) if l.is_serial() => self.drain().await?,
                // USBTMC aborted the transfer and clears the device before its next one.
                Some(l) if l.resyncs_itself() => {}
                Some(_) => {
                    tracing::debug!(resource = %self.resource, "out of step: reconnecting");
                    self.link = None;
                }
                None => {}
            }
            self.out_of_step = false;
            self.skip_terminator = false;
            self.buf.clear();
            self.msg_end = false;
        }
        self.connect().await
    }

    /// Serial resync: discard input until the line is quiet.
    async fn drain(&mut self) -> Result<(), DriverError> {
        let quiet = self.opts.drain_quiet;
        let give_up = Instant::now() + quiet * 20;
        let mut scratch = [0u8; 512];
        loop {
            let Some(link) = self.link.as_mut() else {
                return Ok(());
            };
            if Instant::now() >= give_up {
                break;
            }
            match tokio::time::timeout(quiet, link.read(&mut scratch)).await {
                Err(_) => break,
                Ok(Ok(0)) => return Err(self.drop_link(closed("port closed"))),
                Ok(Ok(n)) => tracing::debug!(bytes = n, "discarding a late reply"),
                Ok(Err(e)) => return Err(self.drop_link(e)),
            }
        }
        if let Some(link) = self.link.as_mut() {
            link.discard_input();
        }
        Ok(())
    }

    /// What a [`LinkFailure`] means for the session: a timeout leaves it
    /// out of step, a failed stream or link drops the link.
    fn failed(&mut self, f: LinkFailure, timeout: Duration) -> DriverError {
        match f {
            LinkFailure::TimedOut => {
                self.out_of_step = true;
                DriverError::Timeout(timeout)
            }
            LinkFailure::Io(e) => self.drop_link(e),
            LinkFailure::Driver(e @ DriverError::Link { .. }) => {
                tracing::warn!(resource = %self.resource, "link lost: {e}");
                self.link = None;
                self.buf.clear();
                self.msg_end = false;
                e
            }
            LinkFailure::Driver(e) => {
                self.out_of_step = true;
                e
            }
        }
    }

    async fn send(&mut self, cmd: &str, timeout: Duration) -> Result<(), DriverError> {
        let mut bytes = Vec::with_capacity(cmd.len() + self.opts.write_termination.len());
        bytes.extend_from_slice(cmd.as_bytes());
        bytes.extend_from_slice(self.opts.write_termination.as_bytes());
        let Some(link) = self.link.as_mut() else {
            return Err(self.not_connected());
        };
        match link.send(&bytes, timeout).await {
            Err(f) => Err(self.failed(f, timeout)),
            Ok(()) => Ok(()),
        }
    }

    /// Read more bytes into the buffer before `deadline`.
    async fn fill(&mut self, deadline: Instant, timeout: Duration) -> Result<(), DriverError> {
        if self.buf.len() > self.opts.max_reply + 16 {
            self.out_of_step = true;
            self.abandon();
            return Err(DriverError::Instrument(format!(
                "reply longer than {} bytes without a terminator",
                self.opts.max_reply
            )));
        }
        let Some(link) = self.link.as_mut() else {
            return Err(self.not_connected());
        };
        let max = self.opts.max_reply + 16 - self.buf.len().min(self.opts.max_reply);
        match link.recv(&mut self.buf, max.min(1 << 20), deadline).await {
            Err(f) => Err(self.failed(f, timeout)),
            Ok(end) => {
                self.msg_end = end;
                Ok(())
            }
        }
    }

    async fn recv_line(&mut self, timeout: Duration) -> Result<String, DriverError> {
        let r = self.recv_line_inner(timeout).await;
        if r.is_ok() {
            self.end_exchange();
        }
        r
    }

    async fn recv_line_inner(&mut self, timeout: Duration) -> Result<String, DriverError> {
        let deadline = Instant::now() + timeout;
        let term = self.opts.read_termination.clone().into_bytes();
        loop {
            if let Some(i) = find(&self.buf, &term) {
                let mut line: Vec<u8> = self.buf.drain(..i + term.len()).collect();
                if self.buf.is_empty() {
                    self.msg_end = false;
                }
                line.truncate(i);
                while matches!(line.last(), Some(b'\r' | b'\n')) {
                    line.pop();
                }
                if self.skip_terminator {
                    self.skip_terminator = false;
                    if line.is_empty() {
                        continue;
                    }
                }
                return Ok(String::from_utf8_lossy(&line).into_owned());
            }
            if self.msg_end {
                // A message link's END without the terminator: the
                // message is the reply.
                self.msg_end = false;
                let mut line = std::mem::take(&mut self.buf);
                while matches!(line.last(), Some(b'\r' | b'\n')) {
                    line.pop();
                }
                if self.skip_terminator {
                    self.skip_terminator = false;
                    if line.is_empty() {
                        continue;
                    }
                }
                return Ok(String::from_utf8_lossy(&line).into_owned());
            }
            self.fill(deadline, timeout).await?;
        }
    }

    /// Write one command (terminated). With `check_errors`, then query
    /// `SYST:ERR?` and fail with the instrument's error.
    pub async fn write(&mut self, cmd: &str) -> Result<(), DriverError> {
        self.ready().await?;
        self.out_of_step = true;
        self.send(cmd, self.opts.timeout).await?;
        self.end_exchange();
        self.out_of_step = false;
        if self.opts.check_errors {
            self.check_error(cmd).await?;
        }
        Ok(())
    }

    /// Read one reply with the default timeout.
    pub async fn read(&mut self) -> Result<String, DriverError> {
        self.read_timeout(self.opts.timeout).await
    }

    /// Read one reply within `timeout`.
    pub async fn read_timeout(&mut self, timeout: Duration) -> Result<String, DriverError> {
        self.ready().await?;
        // A bare read does not make the session out of step: nothing was asked.
        let r = self.recv_line(timeout).await;
        if matches!(r, Err(DriverError::Timeout(_))) {
            self.out_of_step = false;
        }
        r
    }

    /// Write `cmd` and read its reply (default timeout).
    pub async fn query(&mut self, cmd: &str) -> Result<String, DriverError> {
        self.query_timeout(cmd, self.opts.timeout).await
    }

    /// Write `cmd` and read its reply within `timeout`.
    pub async fn query_timeout(
        &mut self,
        cmd: &str,
        timeout: Duration,
    ) -> Result<String, DriverError> {
        self.ready().await?;
        self.out_of_step = true;
        self.send(cmd, timeout).await?;
        let line = self.recv_line(timeout).await?;
        self.out_of_step = false;
        Ok(line)
    }

    /// Write `cmd` and read an IEEE 488.2 block reply (`#<n><len><data>` or
    /// `#0<data><terminator>`), returning the data bytes.
    pub async fn query_binary(&mut self, cmd: &str) -> Result<Vec<u8>, DriverError> {
        let timeout = self.opts.timeout;
        self.ready().await?;
        self.out_of_step = true;
        self.send(cmd, timeout).await?;
        self.recv_block(Instant::now() + timeout, timeout).await
    }

    /// Send one program message as a LAN client wrote it (the relay's
    /// gateway) and, if it is a query ([`expects_reply`]), read its reply
    /// as bytes: a line without its terminator, or a whole IEEE 488.2
    /// block (header included). No error checking: the client asks
    /// `SYST:ERR?` itself.
    pub async fn passthrough(&mut self, message: &str) -> Result<Option<Vec<u8>>, DriverError> {
        let timeout = self.opts.timeout;
        self.ready().await?;
        self.out_of_step = true;
        self.send(message, timeout).await?;
        if !expects_reply(message) {
            self.end_exchange();
            self.out_of_step = false;
            return Ok(None);
        }
        let deadline = Instant::now() + timeout;
        let term = self.opts.read_termination.clone().into_bytes();
        // Look at the reply's first byte: a block or a line?
        loop {
            if self.skip_terminator {
                let n = self
                    .buf
                    .iter()
                    .take_while(|b| term.contains(b) || **b == b'\r')
                    .count();
                self.buf.drain(..n);
                if !self.buf.is_empty() {
                    self.skip_terminator = false;
                }
            }
            if !self.buf.is_empty() {
                break;
            }
            self.fill(deadline, timeout).await?;
        }
        if self.buf.first() == Some(&b'#') {
            let header = block::parse_header(&self.buf, self.opts.max_reply);
            let data = self.recv_block(deadline, timeout).await?;
            let mut out = match header {
                Ok(Some(BlockHeader::Indefinite { .. })) => b"#0".to_vec(),
                _ => {
                    let len = data.len().to_string();
                    format!("#{}{len}", len.len()).into_bytes()
                }
            };
            out.extend_from_slice(&data);
            return Ok(Some(out));
        }
        let line = self.recv_line(timeout).await?;
        self.out_of_step = false;
        Ok(Some(line.into_bytes()))
    }

    /// Read an IEEE 488.2 block reply (the command was sent).
    async fn recv_block(
        &mut self,
        deadline: Instant,
        timeout: Duration,
    ) -> Result<Vec<u8>, DriverError> {
        let term = self.opts.read_termination.clone().into_bytes();
        loop {
            if self.skip_terminator {
                let trimmed = self
                    .buf
                    .iter()
                    .take_while(|b| term.contains(b) || **b == b'\r')
                    .count();
                self.buf.drain(..trimmed);
                if !self.buf.is_empty() {
                    self.skip_terminator = false;
                }
            }
            let header = match block::parse_header(&self.buf, self.opts.max_reply) {
                Ok(h) => h,
                Err(e) => {
                    // The reply is not a block: report it, resync before the next call.
                    let text = String::from_utf8_lossy(&self.buf)
                        .chars()
                        .take(80)
                        .collect::<String>();
                    self.abandon();
                    return Err(DriverError::Instrument(format!(
                        "{e} (reply starts {text:?})"
                    )));
                }
            };
            match header {
                Some(BlockHeader::Definite { data_start, len }) => {
                    let end = data_start.saturating_add(len);
                    if self.buf.len() >= end {
                        let data = self.buf.get(data_start..end).unwrap_or_default().to_vec();
                        self.buf.drain(..end);
                        self.skip_terminator = true;
                        self.out_of_step = false;
                        self.end_exchange();
                        return Ok(data);
                    }
                }
                Some(BlockHeader::Indefinite { data_start }) => {
                    if let Some(i) = self.buf.get(data_start..).and_then(|r| find(r, &term)) {
                        let data = self
                            .buf
                            .get(data_start..data_start + i)
                            .unwrap_or_default()
                            .to_vec();
                        self.buf.drain(..data_start + i + term.len());
                        self.out_of_step = false;
                        self.end_exchange();
                        return Ok(data);
                    }
                }
                None => {}
            }
            self.fill(deadline, timeout).await?;
        }
    }

    /// `*IDN?` (the answer is kept: [`ScpiSession::identity`]).
    pub async fn idn(&mut self) -> Result<String, DriverError> {
        let idn = self.query("*IDN?").await?;
        self.identity = Some(idn.clone());
        Ok(idn)
    }

    /// `*OPC?` fence: returns once every previous command has completed.
    pub async fn opc(&mut self) -> Result<(), DriverError> {
        let r = self.query("*OPC?").await?;
        match r.trim().trim_start_matches('+') {
            "1" => Ok(()),
            other => Err(DriverError::Instrument(format!(
                "*OPC? answered {other:?}, expected 1"
            ))),
        }
    }

    /// Read the whole error queue (`SYST:ERR?` until `0,"No error"` or
    /// Siglent's `0 No Error`, at most 64 entries).
    pub async fn errors(&mut self) -> Result<Vec<(i32, String)>, DriverError> {
        let mut out = Vec::new();
        for _ in 0..64 {
            let r = self.query("SYST:ERR?").await?;
            let (code, text) = parse_error_entry(&r).ok_or_else(|| {
                DriverError::Instrument(format!(
                    "SYST:ERR? answered {r:?}, expected <code>,\"<text>\""
                ))
            })?;
            if code == 0 {
                break;
            }
            out.push((code, text));
        }
        Ok(out)
    }

    /// Query the error queue; its first entry (if any) becomes
    /// [`DriverError::Instrument`] naming `after` (the command just sent).
    pub async fn check_error(&mut self, after: &str) -> Result<(), DriverError> {
        let errs = self.errors().await?;
        match errs.first() {
            None => Ok(()),
            Some((code, text)) => {
                let more = if errs.len() > 1 {
                    format!(" (+{} more)", errs.len() - 1)
                } else {
                    String::new()
                };
                Err(DriverError::Instrument(format!(
                    "{after:?}: {code},\"{text}\"{more}"
                )))
            }
        }
    }
}

/// Whether a program message has a reply: one of its headers is a query
/// (a `?` outside quoted strings), as a gateway that forwards messages
/// without knowing the instrument's commands must guess.
pub fn expects_reply(message: &str) -> bool {
    let mut quoted: Option<char> = None;
    for c in message.chars() {
        match (quoted, c) {
            (None, '"' | '\'') => quoted = Some(c),
            (Some(q), c) if c == q => quoted = None,
            (None, '?') => return true,
            _ => {}
        }
    }
    false
}

/// The I/O error for a link the other side closed (a read of 0 bytes).
fn closed(why: &'static str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::UnexpectedEof, why)
}

/// Parse an error-queue entry `-222,"Data out of range"` into its code and text.
pub fn parse_error_entry(s: &str) -> Option<(i32, String)> {
    // `-222,"Data out of range"` (SCPI-99); Siglent's SPD3303X answers
    // `0 No Error` (space, no quotes).
    let s = s.trim();
    let (code, text) = match s.split_once(',') {
        Some((c, t)) => (c, t),
        None => s.split_once(char::is_whitespace).unwrap_or((s, "")),
    };
    let code: i32 = code.trim().trim_start_matches('+').parse().ok()?;
    let text = text.trim().trim_matches('"').to_string();
    Some((code, text))
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return None;
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_error_entries() {
        assert_eq!(
            parse_error_entry("0,\"No error\""),
            Some((0, "No error".into()))
        );
        assert_eq!(
            parse_error_entry("-222,\"Data out of range\"\n"),
            Some((-222, "Data out of range".into()))
        );
        assert_eq!(
            parse_error_entry("+0,\"No error\""),
            Some((0, "No error".into()))
        );
        assert_eq!(parse_error_entry("-113"), Some((-113, String::new())));
        assert_eq!(
            parse_error_entry("0 No Error"),
            Some((0, "No Error".into()))
        );
        assert_eq!(
            parse_error_entry("-222 Data out of range"),
            Some((-222, "Data out of range".into()))
        );
        assert_eq!(parse_error_entry("garbage"), None);
        assert_eq!(parse_error_entry(""), None);
    }

    #[test]
    fn options_from_table() {
        let opts: Map<String, Value> = serde_json::from_value(json!({
            "timeout_ms": 250, "read_termination": "\r\n", "check_errors": true,
            "init": ["*CLS", "SYST:REM"], "unrelated": 1
        }))
        .unwrap();
        let o = SessionOptions::from_options(&opts).unwrap();
        assert_eq!(o.timeout, Duration::from_millis(250));
        assert_eq!(o.read_termination, "\r\n");
        assert!(o.check_errors);
        assert_eq!(o.init, vec!["*CLS", "SYST:REM"]);
        for bad in [
            json!({"timeout_ms": "1s"}),
            json!({"timeout_ms": 0}),
            json!({"init": "*CLS"}),
            json!({"read_termination": ""}),
            json!({"check_errors": "yes"}),
        ] {
            let m: Map<String, Value> = serde_json::from_value(bad.clone()).unwrap();
            let e = SessionOptions::from_options(&m).unwrap_err();
            assert_eq!(e.code(), 500, "{bad}");
        }
    }
}
