//! VXI-11: ONC RPC (RFC 5531) with XDR (RFC 4506) over TCP with record
//! marking, as the VXI-11 specification (VXIbus Consortium, TCP/IP
//! Instrument Protocol) defines it.
//!
//! * The **portmapper** (RFC 1833, program 100000 version 2, TCP port 111)
//!   answers `GETPORT(prog, vers, prot=6, 0)` with the core channel's port.
//! * The **core channel** (program `0x0607AF` version 1): `create_link`,
//!   `device_write` (END flag on the last fragment of a message),
//!   `device_read` (reason bits REQCNT / CHR / END), `device_clear`,
//!   `device_lock` / `device_unlock`, `destroy_link`.
//!
//! [`Vxi11Link`] is the client used by [`crate::transport::Link`]; the
//! wire pieces (XDR, record marking, RPC call/reply) are shared with the
//! simulator's server (`crate::sim::vxi11`).

use std::io;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::DriverError;

/// The portmapper's program number.
pub const PMAP_PROG: u32 = 100_000;
/// The portmapper's version.
pub const PMAP_VERS: u32 = 2;
/// Portmapper procedure: nothing (ping).
pub const PMAP_NULL: u32 = 0;
/// Portmapper procedure: look up a port.
pub const PMAP_GETPORT: u32 = 3;
/// Portmapper procedure: list every mapping.
pub const PMAP_DUMP: u32 = 4;
/// The portmapper's well-known port.
pub const PMAP_PORT: u16 = 111;
/// IP protocol number of TCP, as the portmapper names it.
pub const IPPROTO_TCP: u32 = 6;

/// The core channel's program number.
pub const CORE_PROG: u32 = 0x0607AF;
/// The core channel's version.
pub const CORE_VERS: u32 = 1;
/// The abort channel's program number.
pub const ASYNC_PROG: u32 = 0x0607B0;

/// Core procedure numbers.
pub mod proc {
    /// create_link
    pub const CREATE_LINK: u32 = 10;
    /// device_write
    pub const DEVICE_WRITE: u32 = 11;
    /// device_read
    pub const DEVICE_READ: u32 = 12;
    /// device_readstb
    pub const DEVICE_READSTB: u32 = 13;
    /// device_trigger
    pub const DEVICE_TRIGGER: u32 = 14;
    /// device_clear
    pub const DEVICE_CLEAR: u32 = 15;
    /// device_remote
    pub const DEVICE_REMOTE: u32 = 16;
    /// device_local
    pub const DEVICE_LOCAL: u32 = 17;
    /// device_lock
    pub const DEVICE_LOCK: u32 = 18;
    /// device_unlock
    pub const DEVICE_UNLOCK: u32 = 19;
    /// destroy_link
    pub const DESTROY_LINK: u32 = 23;
}

/// Device_Flags: wait for the lock.
pub const FLAG_WAITLOCK: u32 = 0x01;
/// Device_Flags: the last fragment of a message (EOI).
pub const FLAG_END: u32 = 0x08;
/// Device_Flags: `termChar` is set.
pub const FLAG_TERMCHRSET: u32 = 0x80;

/// device_read reason: `requestSize` bytes were transferred.
pub const REASON_REQCNT: u32 = 0x01;
/// device_read reason: the termination character was read.
pub const REASON_CHR: u32 = 0x02;
/// device_read reason: the end of a message (EOI).
pub const REASON_END: u32 = 0x04;

/// Device_ErrorCode values (VXI-11 B.5.2).
pub mod err {
    /// no error
    pub const NONE: i32 = 0;
    /// syntax error
    pub const SYNTAX: i32 = 1;
    /// device not accessible
    pub const NOT_ACCESSIBLE: i32 = 3;
    /// invalid link identifier
    pub const INVALID_LINK: i32 = 4;
    /// parameter error
    pub const PARAMETER: i32 = 5;
    /// channel not established
    pub const NO_CHANNEL: i32 = 6;
    /// operation not supported
    pub const NOT_SUPPORTED: i32 = 8;
    /// out of resources
    pub const OUT_OF_RESOURCES: i32 = 9;
    /// device locked by another link
    pub const LOCKED: i32 = 11;
    /// no lock held by this link
    pub const NO_LOCK: i32 = 12;
    /// I/O timeout
    pub const IO_TIMEOUT: i32 = 15;
    /// I/O error
    pub const IO_ERROR: i32 = 17;
    /// invalid address
    pub const INVALID_ADDRESS: i32 = 21;
    /// abort
    pub const ABORT: i32 = 23;
    /// channel already established
    pub const CHANNEL_EXISTS: i32 = 29;

    /// The specification's name for an error code.
    pub fn name(code: i32) -> &'static str {
        match code {
            NONE => "no error",
            SYNTAX => "syntax error",
            NOT_ACCESSIBLE => "device not accessible",
            INVALID_LINK => "invalid link identifier",
            PARAMETER => "parameter error",
            NO_CHANNEL => "channel not established",
            NOT_SUPPORTED => "operation not supported",
            OUT_OF_RESOURCES => "out of resources",
            LOCKED => "device locked by another link",
            NO_LOCK => "no lock held by this link",
            IO_TIMEOUT => "I/O timeout",
            IO_ERROR => "I/O error",
            INVALID_ADDRESS => "invalid address",
            ABORT => "abort",
            CHANNEL_EXISTS => "channel already established",
            _ => "unknown error",
        }
    }
}

/// Largest RPC record accepted (either side).
pub const MAX_RECORD: usize = 16 << 20;

/// XDR encoder: big-endian 4-byte units, opaque data padded to 4.
#[derive(Debug, Default, Clone)]
pub struct XdrWriter(pub Vec<u8>);

impl XdrWriter {
    /// An empty buffer.
    pub fn new() -> Self {
        XdrWriter(Vec::new())
    }
    /// An unsigned int.
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    /// A signed int.
    pub fn i32(&mut self, v: i32) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    /// A bool (an int, 0 or 1).
    pub fn bool(&mut self, v: bool) -> &mut Self {
        self.u32(u32::from(v))
    }
    /// Variable-length opaque data (or a string): length, bytes, padding.
    pub fn opaque(&mut self, b: &[u8]) -> &mut Self {
        self.u32(u32::try_from(b.len()).unwrap_or(u32::MAX));
        self.0.extend_from_slice(b);
        let pad = (4 - b.len() % 4) % 4;
        self.0.extend_from_slice(&[0u8; 3][..pad]);
        self
    }
}

/// Input that does not decode as the XDR expected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed XDR: {0}")]
pub struct XdrError(pub &'static str);

/// XDR decoder over a byte slice; never panics.
#[derive(Debug, Clone)]
pub struct XdrReader<'a> {
    buf: &'a [u8],
}

impl<'a> XdrReader<'a> {
    /// Decode `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        XdrReader { buf }
    }
    /// The bytes not read yet.
    pub fn rest(&self) -> &'a [u8] {
        self.buf
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], XdrError> {
        if self.buf.len() < n {
            return Err(XdrError("truncated"));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }
    /// An unsigned int.
    pub fn u32(&mut self) -> Result<u32, XdrError> {
        let b = self.take(4)?;
        let mut a = [0u8; 4];
        a.copy_from_slice(b);
        Ok(u32::from_be_bytes(a))
    }
    /// A signed int.
    pub fn i32(&mut self) -> Result<i32, XdrError> {
        Ok(self.u32()? as i32)
    }
    /// A bool.
    pub fn bool(&mut self) -> Result<bool, XdrError> {
        Ok(self.u32()? != 0)
    }
    /// Variable-length opaque data of at most `max` bytes.
    pub fn opaque(&mut self, max: usize) -> Result<&'a [u8], XdrError> {
        let len = usize::try_from(self.u32()?).map_err(|_| XdrError("length"))?;
        if len > max {
            return Err(XdrError("opaque longer than allowed"));
        }
        let data = self.take(len)?;
        self.take((4 - len % 4) % 4)?;
        Ok(data)
    }
}

/// Read one RPC record (record marking: 4-byte fragment headers, the high
/// bit marks the last fragment) of at most `max` bytes.
pub async fn read_record<R: AsyncRead + Unpin>(r: &mut R, max: usize) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let mut h = [0u8; 4];
        r.read_exact(&mut h).await?;
        let v = u32::from_be_bytes(h);
        let len = (v & 0x7fff_ffff) as usize;
        if out.len().saturating_add(len) > max {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("RPC record longer than {max} bytes"),
            ));
        }
        let start = out.len();
        out.resize(start + len, 0);
        if let Some(dst) = out.get_mut(start..) {
            r.read_exact(dst).await?;
        }
        if v & 0x8000_0000 != 0 {
            return Ok(out);
        }
    }
}

/// Write `body` as one RPC record (a single last fragment).
pub async fn write_record<W: AsyncWrite + Unpin>(w: &mut W, body: &[u8]) -> io::Result<()> {
    let len = u32::try_from(body.len())
        .ok()
        .filter(|l| *l <= 0x7fff_ffff)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "RPC record too long"))?;
    let mut out = Vec::with_capacity(body.len() + 4);
    out.extend_from_slice(&(len | 0x8000_0000).to_be_bytes());
    out.extend_from_slice(body);
    w.write_all(&out).await?;
    w.flush().await
}

/// An RPC call message (AUTH_NULL credentials and verifier).
pub fn call_message(xid: u32, prog: u32, vers: u32, procedure: u32, args: &[u8]) -> Vec<u8> {
    let mut x = XdrWriter::new();
    x.u32(xid).u32(0).u32(2).u32(prog).u32(vers).u32(procedure);
    x.u32(0).u32(0).u32(0).u32(0);
    x.0.extend_from_slice(args);
    x.0
}

/// A decoded RPC call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RpcCall<'a> {
    /// Transaction id.
    pub xid: u32,
    /// Program.
    pub prog: u32,
    /// Program version.
    pub vers: u32,
    /// Procedure.
    pub procedure: u32,
    /// The encoded arguments.
    pub args: &'a [u8],
}

/// Decode an RPC call (any credentials are skipped).
pub fn parse_call(msg: &[u8]) -> Result<RpcCall<'_>, XdrError> {
    let mut r = XdrReader::new(msg);
    let xid = r.u32()?;
    if r.u32()? != 0 {
        return Err(XdrError("not a call"));
    }
    if r.u32()? != 2 {
        return Err(XdrError("RPC version is not 2"));
    }
    let (prog, vers, procedure) = (r.u32()?, r.u32()?, r.u32()?);
    for _ in 0..2 {
        r.u32()?;
        r.opaque(400)?;
    }
    Ok(RpcCall {
        xid,
        prog,
        vers,
        procedure,
        args: r.rest(),
    })
}

/// accept_stat values of an accepted reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcceptStat {
    /// Executed.
    Success = 0,
    /// No such program here.
    ProgUnavail = 1,
    /// No such version (the reply names 1..=1).
    ProgMismatch = 2,
    /// No such procedure.
    ProcUnavail = 3,
    /// The arguments do not decode.
    GarbageArgs = 4,
}

/// An accepted reply with `stat` and, on success, `results`.
pub fn reply_message(xid: u32, stat: AcceptStat, results: &[u8]) -> Vec<u8> {
    let mut x = XdrWriter::new();
    x.u32(xid).u32(1).u32(0).u32(0).u32(0).u32(stat as u32);
    match stat {
        AcceptStat::Success => x.0.extend_from_slice(results),
        AcceptStat::ProgMismatch => {
            x.u32(1).u32(1);
        }
        _ => {}
    }
    x.0
}

/// Decode an RPC reply to `xid`, returning the encoded results.
pub fn parse_reply(msg: &[u8], xid: u32) -> Result<&[u8], String> {
    let mut r = XdrReader::new(msg);
    let bad = |e: XdrError| e.to_string();
    let got = r.u32().map_err(bad)?;
    if got != xid {
        return Err(format!("reply to transaction {got:#x}, expected {xid:#x}"));
    }
    if r.u32().map_err(bad)? != 1 {
        return Err("not an RPC reply".into());
    }
    if r.u32().map_err(bad)? != 0 {
        return Err("RPC call denied".into());
    }
    r.u32().map_err(bad)?;
    r.opaque(400).map_err(bad)?;
    match r.u32().map_err(bad)? {
        0 => Ok(r.rest()),
        1 => Err("RPC program unavailable".into()),
        2 => Err("RPC program version mismatch".into()),
        3 => Err("RPC procedure unavailable".into()),
        4 => Err("RPC garbage arguments".into()),
        n => Err(format!("RPC accept status {n}")),
    }
}

/// A device_read result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadChunk {
    /// The bytes read.
    pub data: Vec<u8>,
    /// Reason bits (`REASON_*`).
    pub reason: u32,
}

/// A client link to one VXI-11 device (a core channel and a link id).
#[derive(Debug)]
pub struct Vxi11Link {
    stream: TcpStream,
    context: String,
    xid: u32,
    lid: i32,
    max_recv: usize,
    /// A call did not finish: the connection's replies are out of step.
    broken: bool,
}

/// Margin over the instrument's own `io_timeout` before the client gives up.
const GRACE: Duration = Duration::from_millis(250);

impl Vxi11Link {
    /// Ask the portmapper at `host:pm_port` for the core channel (unless
    /// `core_port` names it), connect and `create_link` to `device`.
    pub async fn connect(
        host: &str,
        pm_port: u16,
        core_port: Option<u16>,
        device: &str,
        connect_timeout: Duration,
    ) -> Result<Vxi11Link, DriverError> {
        let context = format!("vxi11://{host}:{pm_port}/{device}");
        let work = async {
            let port = match core_port {
                Some(p) => p,
                None => getport(host, pm_port, &context).await?,
            };
            let stream = TcpStream::connect((host, port)).await.map_err(|e| {
                DriverError::link(format!("{context}: core channel port {port}"), e)
            })?;
            let _ = stream.set_nodelay(true);
            let mut link = Vxi11Link {
                stream,
                context: context.clone(),
                xid: rand::random::<u32>() >> 1,
                lid: 0,
                max_recv: 1024,
                broken: false,
            };
            let mut a = XdrWriter::new();
            a.i32(rand::random::<i32>() & 0x7fff_ffff)
                .bool(false)
                .u32(0)
                .opaque(device.as_bytes());
            let res = link.call(proc::CREATE_LINK, &a.0).await?;
            let mut r = XdrReader::new(&res);
            let code = r.i32().map_err(|e| link.garbage(e))?;
            let lid = r.i32().map_err(|e| link.garbage(e))?;
            let _abort_port = r.u32().map_err(|e| link.garbage(e))?;
            let max_recv = r.u32().map_err(|e| link.garbage(e))?;
            if code != err::NONE {
                return Err(device_error(&context, "create_link", code));
            }
            link.lid = lid;
            link.max_recv = usize::try_from(max_recv).unwrap_or(1024).clamp(16, 1 << 30);
            Ok(link)
        };
        match tokio::time::timeout(connect_timeout, work).await {
            Ok(r) => r,
            Err(_) => Err(DriverError::link(
                format!("connecting to {context}"),
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("timed out after {connect_timeout:?}"),
                ),
            )),
        }
    }

    /// The largest write fragment the device accepts (its `maxRecvSize`).
    pub fn max_recv_size(&self) -> usize {
        self.max_recv
    }

    fn garbage(&mut self, e: XdrError) -> DriverError {
        self.broken = true;
        DriverError::Instrument(format!("{}: {e}", self.context))
    }

    async fn call(&mut self, procedure: u32, args: &[u8]) -> Result<Vec<u8>, DriverError> {
        if self.broken {
            return Err(DriverError::link_lost(
                self.context.clone(),
                io::ErrorKind::BrokenPipe,
                "an earlier call did not finish",
            ));
        }
        self.xid = self.xid.wrapping_add(1);
        let xid = self.xid;
        let msg = call_message(xid, CORE_PROG, CORE_VERS, procedure, args);
        self.broken = true;
        write_record(&mut self.stream, &msg)
            .await
            .map_err(|e| DriverError::link(self.context.clone(), e))?;
        let reply = read_record(&mut self.stream, MAX_RECORD)
            .await
            .map_err(|e| DriverError::link(self.context.clone(), e))?;
        let results = parse_reply(&reply, xid)
            .map_err(|why| DriverError::Instrument(format!("{}: {why}", self.context)))?
            .to_vec();
        self.broken = false;
        Ok(results)
    }

    /// Run `call` with the client-side deadline `timeout + GRACE`; a local
    /// timeout leaves the connection unusable (the reply may still come).
    async fn timed<T>(
        &mut self,
        timeout: Duration,
        f: impl AsyncFnOnce(&mut Self) -> Result<T, DriverError>,
    ) -> Result<T, DriverError> {
        let r = tokio::time::timeout(timeout + GRACE, f(self)).await;
        match r {
            Ok(r) => r,
            Err(_) => {
                self.broken = true;
                Err(DriverError::Timeout(timeout))
            }
        }
    }

    /// Write one message: fragments of at most `maxRecvSize`, END on the last.
    pub async fn write(&mut self, data: &[u8], timeout: Duration) -> Result<(), DriverError> {
        let io_ms = millis(timeout);
        let max = self.max_recv;
        self.timed(timeout, async move |l: &mut Self| {
            let mut chunks: Vec<&[u8]> = data.chunks(max).collect();
            if chunks.is_empty() {
                chunks.push(&[]);
            }
            let n = chunks.len();
            for (i, chunk) in chunks.into_iter().enumerate() {
                let flags = if i + 1 == n { FLAG_END } else { 0 };
                let mut a = XdrWriter::new();
                a.i32(l.lid).u32(io_ms).u32(io_ms).u32(flags).opaque(chunk);
                let res = l.call(proc::DEVICE_WRITE, &a.0).await?;
                let mut r = XdrReader::new(&res);
                let code = r.i32().map_err(|e| l.garbage(e))?;
                let size = r.u32().map_err(|e| l.garbage(e))?;
                if code != err::NONE {
                    return Err(device_error(&l.context, "device_write", code));
                }
                if size as usize != chunk.len() {
                    return Err(DriverError::Instrument(format!(
                        "{}: device_write took {size} of {} bytes",
                        l.context,
                        chunk.len()
                    )));
                }
            }
            Ok(())
        })
        .await
    }

    /// One device_read of at most `max` bytes, waiting up to `timeout`.
    /// `term`: stop after this byte (TERMCHRSET).
    pub async fn read(
        &mut self,
        max: usize,
        term: Option<u8>,
        timeout: Duration,
    ) -> Result<ReadChunk, DriverError> {
        let io_ms = millis(timeout);
        self.timed(timeout, async move |l: &mut Self| {
            let mut a = XdrWriter::new();
            let flags = if term.is_some() { FLAG_TERMCHRSET } else { 0 };
            a.i32(l.lid)
                .u32(u32::try_from(max).unwrap_or(u32::MAX))
                .u32(io_ms)
                .u32(io_ms)
                .u32(flags)
                .u32(u32::from(term.unwrap_or(0)));
            let res = l.call(proc::DEVICE_READ, &a.0).await?;
            let mut r = XdrReader::new(&res);
            let code = r.i32().map_err(|e| l.garbage(e))?;
            let reason = r.u32().map_err(|e| l.garbage(e))?;
            let data = r.opaque(MAX_RECORD).map_err(|e| l.garbage(e))?.to_vec();
            if code == err::IO_TIMEOUT {
                return Err(DriverError::Timeout(timeout));
            }
            if code != err::NONE {
                return Err(device_error(&l.context, "device_read", code));
            }
            Ok(ReadChunk { data, reason })
        })
        .await
    }

    async fn generic(
        &mut self,
        procedure: u32,
        name: &'static str,
        timeout: Duration,
    ) -> Result<Vec<u8>, DriverError> {
        let io_ms = millis(timeout);
        self.timed(timeout, async move |l: &mut Self| {
            let mut a = XdrWriter::new();
            a.i32(l.lid).u32(0).u32(io_ms).u32(io_ms);
            let res = l.call(procedure, &a.0).await?;
            let mut r = XdrReader::new(&res);
            let code = r.i32().map_err(|e| l.garbage(e))?;
            if code != err::NONE {
                return Err(device_error(&l.context, name, code));
            }
            Ok(r.rest().to_vec())
        })
        .await
    }

    /// device_clear: the device drops its input and output buffers.
    pub async fn clear(&mut self, timeout: Duration) -> Result<(), DriverError> {
        self.generic(proc::DEVICE_CLEAR, "device_clear", timeout)
            .await
            .map(drop)
    }

    /// device_readstb: the status byte.
    pub async fn read_stb(&mut self, timeout: Duration) -> Result<u8, DriverError> {
        let rest = self
            .generic(proc::DEVICE_READSTB, "device_readstb", timeout)
            .await?;
        let mut r = XdrReader::new(&rest);
        let stb = r.u32().map_err(|e| self.garbage(e))?;
        Ok(stb as u8)
    }

    /// device_lock, waiting up to `lock_timeout` for another link's lock.
    pub async fn lock(&mut self, lock_timeout: Duration) -> Result<(), DriverError> {
        let ms = millis(lock_timeout);
        self.timed(lock_timeout, async move |l: &mut Self| {
            let mut a = XdrWriter::new();
            a.i32(l.lid).u32(FLAG_WAITLOCK).u32(ms);
            let res = l.call(proc::DEVICE_LOCK, &a.0).await?;
            let code = XdrReader::new(&res).i32().map_err(|e| l.garbage(e))?;
            match code {
                err::NONE => Ok(()),
                code => Err(device_error(&l.context, "device_lock", code)),
            }
        })
        .await
    }

    /// device_unlock.
    pub async fn unlock(&mut self, timeout: Duration) -> Result<(), DriverError> {
        self.timed(timeout, async move |l: &mut Self| {
            let mut a = XdrWriter::new();
            a.i32(l.lid);
            let res = l.call(proc::DEVICE_UNLOCK, &a.0).await?;
            let code = XdrReader::new(&res).i32().map_err(|e| l.garbage(e))?;
            match code {
                err::NONE => Ok(()),
                code => Err(device_error(&l.context, "device_unlock", code)),
            }
        })
        .await
    }

    /// destroy_link, then close the connection.
    pub async fn close(&mut self, timeout: Duration) {
        let _ = self
            .timed(timeout, async move |l: &mut Self| {
                let mut a = XdrWriter::new();
                a.i32(l.lid);
                l.call(proc::DESTROY_LINK, &a.0).await.map(drop)
            })
            .await;
        let _ = self.stream.shutdown().await;
    }
}

fn millis(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX)
}

/// The error a device error code stands for: 11 (locked) is `Busy`, 15
/// `Timeout`-like codes are handled by the caller, 4 / 3 / 6 mean the link
/// is gone (`Link`), the rest are the instrument saying no.
fn device_error(context: &str, what: &str, code: i32) -> DriverError {
    let text = format!("{context}: {what}: error {code} ({})", err::name(code));
    match code {
        err::LOCKED => DriverError::Busy(text),
        err::INVALID_LINK | err::NOT_ACCESSIBLE | err::NO_CHANNEL | err::IO_ERROR => {
            DriverError::link(
                context.to_string(),
                io::Error::new(io::ErrorKind::ConnectionReset, text),
            )
        }
        _ => DriverError::Instrument(text),
    }
}

/// Ask the portmapper at `host:pm_port` for the core channel's TCP port.
async fn getport(host: &str, pm_port: u16, context: &str) -> Result<u16, DriverError> {
    let link_err = |e| DriverError::link(format!("{context}: portmapper {host}:{pm_port}"), e);
    let mut s = TcpStream::connect((host, pm_port))
        .await
        .map_err(link_err)?;
    let mut a = XdrWriter::new();
    a.u32(CORE_PROG).u32(CORE_VERS).u32(IPPROTO_TCP).u32(0);
    let xid = rand::random::<u32>();
    let msg = call_message(xid, PMAP_PROG, PMAP_VERS, PMAP_GETPORT, &a.0);
    write_record(&mut s, &msg).await.map_err(link_err)?;
    let reply = read_record(&mut s, 4096).await.map_err(link_err)?;
    let res = parse_reply(&reply, xid)
        .map_err(|why| DriverError::Instrument(format!("{context}: portmapper: {why}")))?;
    let port = XdrReader::new(res)
        .u32()
        .map_err(|e| DriverError::Instrument(format!("{context}: portmapper: {e}")))?;
    match u16::try_from(port) {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(DriverError::link_lost(
            format!("{context}: portmapper {host}:{pm_port}"),
            io::ErrorKind::NotFound,
            "no VXI-11 core channel registered",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn golden_call_bytes() {
        let mut a = XdrWriter::new();
        a.u32(CORE_PROG).u32(CORE_VERS).u32(IPPROTO_TCP).u32(0);
        let m = call_message(7, PMAP_PROG, PMAP_VERS, PMAP_GETPORT, &a.0);
        let want: Vec<u8> = [7u32, 0, 2, 100_000, 2, 3, 0, 0, 0, 0, 0x0607AF, 1, 6, 0]
            .iter()
            .flat_map(|v| v.to_be_bytes())
            .collect();
        assert_eq!(m, want);
        let c = parse_call(&m).unwrap();
        assert_eq!((c.xid, c.prog, c.vers, c.procedure), (7, PMAP_PROG, 2, 3));
        assert_eq!(c.args, &a.0[..]);
    }

    #[test]
    fn opaque_is_padded_and_round_trips() {
        let mut w = XdrWriter::new();
        w.opaque(b"inst0").u32(9);
        assert_eq!(w.0, b"\0\0\0\x05inst0\0\0\0\0\0\0\x09");
        let mut r = XdrReader::new(&w.0);
        assert_eq!(r.opaque(64).unwrap(), b"inst0");
        assert_eq!(r.u32().unwrap(), 9);
        assert!(r.u32().is_err());
        assert!(XdrReader::new(&w.0).opaque(2).is_err());
    }

    #[test]
    fn replies_decode_or_say_why() {
        let ok = reply_message(5, AcceptStat::Success, &[0, 0, 0, 1]);
        assert_eq!(parse_reply(&ok, 5).unwrap(), &[0, 0, 0, 1]);
        assert!(parse_reply(&ok, 6).unwrap_err().contains("transaction"));
        let e = reply_message(5, AcceptStat::ProcUnavail, &[]);
        assert!(parse_reply(&e, 5).unwrap_err().contains("procedure"));
        for n in 0..ok.len() {
            let _ = parse_reply(&ok[..n], 5);
            let _ = parse_call(&ok[..n]);
        }
    }

    proptest::proptest! {
        #[test]
        fn decoders_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..256)) {
            let _ = parse_call(&bytes);
            let _ = parse_reply(&bytes, 1);
            let mut r = XdrReader::new(&bytes);
            while r.opaque(64).is_ok() {}
        }

        #[test]
        fn opaque_round_trips(data in proptest::collection::vec(proptest::num::u8::ANY, 0..64), n in proptest::num::u32::ANY) {
            let mut w = XdrWriter::new();
            w.opaque(&data).u32(n);
            proptest::prop_assert_eq!(w.0.len() % 4, 0);
            let mut r = XdrReader::new(&w.0);
            proptest::prop_assert_eq!(r.opaque(64).unwrap(), &data[..]);
            proptest::prop_assert_eq!(r.u32().unwrap(), n);
        }
    }

    #[tokio::test]
    async fn record_marking_joins_fragments() {
        let bytes: Vec<u8> = [&[0, 0, 0, 2, b'a', b'b'][..], &[0x80, 0, 0, 1, b'c']].concat();
        let mut r = &bytes[..];
        assert_eq!(read_record(&mut r, 10).await.unwrap(), b"abc");
        let mut r = &bytes[..];
        assert!(read_record(&mut r, 2).await.is_err());
        let mut out = Vec::new();
        write_record(&mut out, b"xyz").await.unwrap();
        assert_eq!(out, [0x80, 0, 0, 3, b'x', b'y', b'z']);
    }
}
