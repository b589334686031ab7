//! HiSLIP (IVI-6.1, High-Speed LAN Instrument Protocol), written from the
//! IVI Foundation's specification.
//!
//! Every message is a 16-byte header — `"HS"`, message type (u8), control
//! code (u8), message parameter (u32), payload length (u64), big-endian —
//! and its payload. A session has two TCP connections to port 4880: the
//! **synchronous** channel (`Initialize` / `InitializeResponse` with the
//! session id; `Data` / `DataEnd` carrying message ids; `DeviceClearComplete`
//! / `DeviceClearAcknowledge`) and the **asynchronous** one
//! (`AsyncInitialize` with that session id; `AsyncMaximumMessageSize`,
//! `AsyncLock`, `AsyncDeviceClear`, `AsyncStatusQuery`, ...).
//!
//! [`HislipLink`] is the client used by [`crate::transport::Link`]; the
//! framing is shared with the simulator's server (`crate::sim::hislip`).
//!
//! **Modes.** The server names its preferred mode in `InitializeResponse`
//! (control bit 0: overlapped) and starts in it; the client asks for the
//! mode it wants ([`HislipMode`]) in the device-clear handshake
//! (`DeviceClearComplete`'s feature bit), and `DeviceClearAcknowledge`
//! says which mode is in force. In *synchronized* mode one message is
//! answered at a time; in *overlapped* mode several queries may be in
//! flight ([`HislipLink::query_many`]) and their answers come back in
//! order, each carrying its query's message id.

use std::io;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::DriverError;

/// The IANA-registered HiSLIP port.
pub const PORT: u16 = 4880;

/// The protocol version this side speaks (1.0): major in the high byte.
pub const VERSION: u16 = 0x0100;

/// The first message id of a session (and after a device clear).
pub const FIRST_MESSAGE_ID: u32 = 0xFFFF_FF00;

/// Message types (IVI-6.1 table 4).
pub mod msg {
    /// Initialize (sync, client -> server)
    pub const INITIALIZE: u8 = 0;
    /// InitializeResponse
    pub const INITIALIZE_RESPONSE: u8 = 1;
    /// FatalError
    pub const FATAL_ERROR: u8 = 2;
    /// Error
    pub const ERROR: u8 = 3;
    /// AsyncLock
    pub const ASYNC_LOCK: u8 = 4;
    /// AsyncLockResponse
    pub const ASYNC_LOCK_RESPONSE: u8 = 5;
    /// Data
    pub const DATA: u8 = 6;
    /// DataEnd
    pub const DATA_END: u8 = 7;
    /// DeviceClearComplete
    pub const DEVICE_CLEAR_COMPLETE: u8 = 8;
    /// DeviceClearAcknowledge
    pub const DEVICE_CLEAR_ACKNOWLEDGE: u8 = 9;
    /// AsyncRemoteLocalControl
    pub const ASYNC_REMOTE_LOCAL_CONTROL: u8 = 10;
    /// AsyncRemoteLocalResponse
    pub const ASYNC_REMOTE_LOCAL_RESPONSE: u8 = 11;
    /// Trigger
    pub const TRIGGER: u8 = 12;
    /// Interrupted
    pub const INTERRUPTED: u8 = 13;
    /// AsyncInterrupted
    pub const ASYNC_INTERRUPTED: u8 = 14;
    /// AsyncMaximumMessageSize
    pub const ASYNC_MAXIMUM_MESSAGE_SIZE: u8 = 15;
    /// AsyncMaximumMessageSizeResponse
    pub const ASYNC_MAXIMUM_MESSAGE_SIZE_RESPONSE: u8 = 16;
    /// AsyncInitialize
    pub const ASYNC_INITIALIZE: u8 = 17;
    /// AsyncInitializeResponse
    pub const ASYNC_INITIALIZE_RESPONSE: u8 = 18;
    /// AsyncDeviceClear
    pub const ASYNC_DEVICE_CLEAR: u8 = 19;
    /// AsyncServiceRequest
    pub const ASYNC_SERVICE_REQUEST: u8 = 20;
    /// AsyncStatusQuery
    pub const ASYNC_STATUS_QUERY: u8 = 21;
    /// AsyncStatusResponse
    pub const ASYNC_STATUS_RESPONSE: u8 = 22;
    /// AsyncDeviceClearAcknowledge
    pub const ASYNC_DEVICE_CLEAR_ACKNOWLEDGE: u8 = 23;
    /// AsyncLockInfo
    pub const ASYNC_LOCK_INFO: u8 = 24;
    /// AsyncLockInfoResponse
    pub const ASYNC_LOCK_INFO_RESPONSE: u8 = 25;
}

/// Error / FatalError codes used here.
pub mod code {
    /// FatalError: unidentified error.
    pub const FATAL_UNIDENTIFIED: u8 = 0;
    /// FatalError: poorly formed message header.
    pub const FATAL_BAD_HEADER: u8 = 1;
    /// FatalError: attempt to use a connection without both channels.
    pub const FATAL_NO_BOTH_CHANNELS: u8 = 2;
    /// FatalError: invalid initialization sequence.
    pub const FATAL_INVALID_INIT: u8 = 3;
    /// Error: unidentified error.
    pub const ERROR_UNIDENTIFIED: u8 = 0;
    /// Error: unrecognized message type.
    pub const ERROR_UNRECOGNIZED_TYPE: u8 = 1;
    /// Error: unrecognized control code.
    pub const ERROR_UNRECOGNIZED_CONTROL: u8 = 2;
    /// Error: message too large.
    pub const ERROR_TOO_LARGE: u8 = 4;
}

/// A message header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HislipHeader {
    /// Message type ([`msg`]).
    pub msg_type: u8,
    /// Control code.
    pub control: u8,
    /// Message parameter.
    pub param: u32,
    /// Payload length.
    pub len: u64,
}

impl HislipHeader {
    /// The 16 header bytes.
    pub fn encode(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[0] = b'H';
        b[1] = b'S';
        b[2] = self.msg_type;
        b[3] = self.control;
        b[4..8].copy_from_slice(&self.param.to_be_bytes());
        b[8..16].copy_from_slice(&self.len.to_be_bytes());
        b
    }

    /// Decode 16 header bytes; `None` without the `"HS"` prologue.
    pub fn decode(b: &[u8; 16]) -> Option<HislipHeader> {
        if b[0] != b'H' || b[1] != b'S' {
            return None;
        }
        let mut p = [0u8; 4];
        p.copy_from_slice(&b[4..8]);
        let mut l = [0u8; 8];
        l.copy_from_slice(&b[8..16]);
        Some(HislipHeader {
            msg_type: b[2],
            control: b[3],
            param: u32::from_be_bytes(p),
            len: u64::from_be_bytes(l),
        })
    }
}

/// A whole message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Its header.
    pub header: HislipHeader,
    /// Its payload.
    pub payload: Vec<u8>,
}

/// Read one message whose payload is at most `max` bytes (longer, or a
/// header without `"HS"`, is `InvalidData`).
pub async fn read_message<R: AsyncRead + Unpin>(r: &mut R, max: u64) -> io::Result<Message> {
    let mut h = [0u8; 16];
    r.read_exact(&mut h).await?;
    let header = HislipHeader::decode(&h)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "not a HiSLIP header"))?;
    if header.len > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("HiSLIP payload of {} bytes (at most {max})", header.len),
        ));
    }
    let mut payload = vec![0u8; usize::try_from(header.len).unwrap_or(0)];
    r.read_exact(&mut payload).await?;
    Ok(Message { header, payload })
}

/// Write one message.
pub async fn write_message<W: AsyncWrite + Unpin>(
    w: &mut W,
    msg_type: u8,
    control: u8,
    param: u32,
    payload: &[u8],
) -> io::Result<()> {
    let h = HislipHeader {
        msg_type,
        control,
        param,
        len: payload.len() as u64,
    };
    let mut out = Vec::with_capacity(16 + payload.len());
    out.extend_from_slice(&h.encode());
    out.extend_from_slice(payload);
    w.write_all(&out).await?;
    w.flush().await
}

/// Largest payload this client accepts (announced in AsyncMaximumMessageSize).
pub const CLIENT_MAX_MESSAGE: u64 = 1 << 20;

/// Which HiSLIP mode a client asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HislipMode {
    /// Synchronized (the default): one message answered at a time.
    #[default]
    Synchronized,
    /// Overlapped: several queries in flight, answered in order.
    Overlapped,
    /// Whatever the server prefers (its `InitializeResponse`).
    Server,
}

impl HislipMode {
    /// Parse `synchronized` / `overlapped` / `server`.
    pub fn parse(s: &str) -> Option<HislipMode> {
        match s.to_ascii_lowercase().as_str() {
            "synchronized" | "sync" => Some(HislipMode::Synchronized),
            "overlapped" | "overlap" => Some(HislipMode::Overlapped),
            "server" => Some(HislipMode::Server),
            _ => None,
        }
    }

    /// The name [`HislipMode::parse`] reads.
    pub fn name(self) -> &'static str {
        match self {
            HislipMode::Synchronized => "synchronized",
            HislipMode::Overlapped => "overlapped",
            HislipMode::Server => "server",
        }
    }
}

/// Most bytes of answers kept for queries not yet read (overlapped mode).
pub const MAX_STASH: usize = 16 << 20;

/// A client HiSLIP session (synchronized mode).
#[derive(Debug)]
pub struct HislipLink {
    sync: TcpStream,
    asyn: TcpStream,
    context: String,
    session_id: u16,
    server_max: u64,
    message_id: u32,
    last_sent: u32,
    /// A DataEnd was received since the last message sent (RMT-delivered).
    rmt: bool,
    /// The server preferred overlapped mode in InitializeResponse.
    server_prefers_overlap: bool,
    /// The mode asked for in device clears.
    want: HislipMode,
    /// Overlapped mode is in force.
    overlapped: bool,
    /// A call did not finish; the channels are out of step.
    broken: bool,
}

impl HislipLink {
    /// Open both channels to `host:port`, initialize with `sub_address`
    /// (`hislip0`) and exchange maximum message sizes.
    pub async fn connect(
        host: &str,
        port: u16,
        sub_address: &str,
        connect_timeout: Duration,
    ) -> Result<HislipLink, DriverError> {
        Self::connect_mode(
            host,
            port,
            sub_address,
            HislipMode::Synchronized,
            connect_timeout,
        )
        .await
    }

    /// [`HislipLink::connect`], then (when `mode` differs from the mode the
    /// server started in) a device clear asking for `mode`.
    pub async fn connect_mode(
        host: &str,
        port: u16,
        sub_address: &str,
        mode: HislipMode,
        connect_timeout: Duration,
    ) -> Result<HislipLink, DriverError> {
        let started = tokio::time::Instant::now();
        let mut link = Self::handshake(host, port, sub_address, connect_timeout).await?;
        link.want = mode;
        let differs = match mode {
            HislipMode::Server => false,
            HislipMode::Overlapped => !link.overlapped,
            HislipMode::Synchronized => link.overlapped,
        };
        if differs {
            let left = connect_timeout.saturating_sub(started.elapsed());
            link.clear(left.max(Duration::from_millis(1))).await?;
        }
        Ok(link)
    }

    async fn handshake(
        host: &str,
        port: u16,
        sub_address: &str,
        connect_timeout: Duration,
    ) -> Result<HislipLink, DriverError> {
        let context = format!("hislip://{host}:{port}/{sub_address}");
        let ctx = context.clone();
        let work = async move {
            let link_err = |e| DriverError::link(ctx.clone(), e);
            let mut sync = TcpStream::connect((host, port)).await.map_err(link_err)?;
            let _ = sync.set_nodelay(true);
            let param = (u32::from(VERSION) << 16) | u32::from(u16::from_be_bytes(*b"LM"));
            write_message(&mut sync, msg::INITIALIZE, 0, param, sub_address.as_bytes())
                .await
                .map_err(link_err)?;
            let r = read_message(&mut sync, 4096).await.map_err(link_err)?;
            expect(&ctx, &r, msg::INITIALIZE_RESPONSE)?;
            let session_id = (r.header.param & 0xFFFF) as u16;
            let overlap = r.header.control & 1 != 0;
            let mut asyn = TcpStream::connect((host, port)).await.map_err(link_err)?;
            let _ = asyn.set_nodelay(true);
            write_message(
                &mut asyn,
                msg::ASYNC_INITIALIZE,
                0,
                u32::from(session_id),
                &[],
            )
            .await
            .map_err(link_err)?;
            let r = read_message(&mut asyn, 4096).await.map_err(link_err)?;
            expect(&ctx, &r, msg::ASYNC_INITIALIZE_RESPONSE)?;
            write_message(
                &mut asyn,
                msg::ASYNC_MAXIMUM_MESSAGE_SIZE,
                0,
                0,
                &CLIENT_MAX_MESSAGE.to_be_bytes(),
            )
            .await
            .map_err(link_err)?;
            let r = read_message(&mut asyn, 4096).await.map_err(link_err)?;
            expect(&ctx, &r, msg::ASYNC_MAXIMUM_MESSAGE_SIZE_RESPONSE)?;
            let mut b = [0u8; 8];
            if r.payload.len() != 8 {
                return Err(DriverError::Instrument(format!(
                    "{ctx}: AsyncMaximumMessageSizeResponse with {} payload bytes",
                    r.payload.len()
                )));
            }
            b.copy_from_slice(&r.payload);
            Ok(HislipLink {
                sync,
                asyn,
                context: ctx.clone(),
                session_id,
                server_max: u64::from_be_bytes(b).max(64),
                message_id: FIRST_MESSAGE_ID,
                last_sent: FIRST_MESSAGE_ID,
                rmt: false,
                server_prefers_overlap: overlap,
                want: HislipMode::Synchronized,
                // The server starts in the mode it prefers.
                overlapped: overlap,
                broken: false,
            })
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

    /// The session id the server gave.
    pub fn session_id(&self) -> u16 {
        self.session_id
    }

    /// The server's maximum message size.
    pub fn server_max_message(&self) -> u64 {
        self.server_max
    }

    /// Whether the server said it prefers overlapped mode.
    pub fn server_prefers_overlap(&self) -> bool {
        self.server_prefers_overlap
    }

    /// Whether overlapped mode is in force.
    pub fn is_overlapped(&self) -> bool {
        self.overlapped
    }

    /// The message id the next message sent will carry.
    pub fn next_message_id(&self) -> u32 {
        self.message_id
    }

    fn io(&mut self, e: io::Error) -> DriverError {
        self.broken = true;
        DriverError::link(self.context.clone(), e)
    }

    fn check(&self) -> Result<(), DriverError> {
        if self.broken {
            return Err(DriverError::link_lost(
                self.context.clone(),
                io::ErrorKind::BrokenPipe,
                "an earlier exchange did not finish",
            ));
        }
        Ok(())
    }

    async fn bounded<T>(
        &mut self,
        timeout: Duration,
        f: impl AsyncFnOnce(&mut Self) -> Result<T, DriverError>,
    ) -> Result<T, DriverError> {
        self.check()?;
        let r = tokio::time::timeout(timeout, f(self)).await;
        match r {
            Ok(r) => r,
            Err(_) => {
                self.broken = true;
                Err(DriverError::Timeout(timeout))
            }
        }
    }

    /// Send one message: Data fragments of at most the server's maximum,
    /// DataEnd on the last, each with the next message id.
    pub async fn write(&mut self, data: &[u8], timeout: Duration) -> Result<(), DriverError> {
        let max = usize::try_from(self.server_max).unwrap_or(usize::MAX);
        self.bounded(timeout, async move |l: &mut Self| {
            let mut chunks: Vec<&[u8]> = data.chunks(max).collect();
            if chunks.is_empty() {
                chunks.push(&[]);
            }
            let n = chunks.len();
            for (i, chunk) in chunks.into_iter().enumerate() {
                let t = if i + 1 == n { msg::DATA_END } else { msg::DATA };
                let id = l.message_id;
                let rmt = u8::from(l.rmt);
                l.broken = true;
                let r = write_message(&mut l.sync, t, rmt, id, chunk).await;
                r.map_err(|e| l.io(e))?;
                l.broken = false;
                l.rmt = false;
                l.last_sent = id;
                l.message_id = id.wrapping_add(2);
            }
            Ok(())
        })
        .await
    }

    /// Receive the next Data / DataEnd answering the last message sent;
    /// returns its payload and whether it was DataEnd. Answers to older
    /// messages are discarded.
    pub async fn read(&mut self, timeout: Duration) -> Result<(Vec<u8>, bool), DriverError> {
        self.bounded(timeout, async move |l: &mut Self| loop {
            l.broken = true;
            let r = read_message(&mut l.sync, CLIENT_MAX_MESSAGE).await;
            let m = r.map_err(|e| l.io(e))?;
            l.broken = false;
            let h = m.header;
            match h.msg_type {
                msg::DATA | msg::DATA_END if h.param == l.last_sent || h.param == 0xFFFF_FFFF => {
                    let end = h.msg_type == msg::DATA_END;
                    if end {
                        l.rmt = true;
                    }
                    return Ok((m.payload, end));
                }
                msg::DATA | msg::DATA_END | msg::INTERRUPTED => {
                    tracing::debug!(id = h.param, "discarding a stale HiSLIP message");
                }
                msg::FATAL_ERROR => {
                    l.broken = true;
                    return Err(DriverError::link(
                        l.context.clone(),
                        io::Error::new(
                            io::ErrorKind::ConnectionAborted,
                            format!(
                                "FatalError {}: {}",
                                h.control,
                                String::from_utf8_lossy(&m.payload)
                            ),
                        ),
                    ));
                }
                msg::ERROR => {
                    return Err(DriverError::Instrument(format!(
                        "{}: Error {}: {}",
                        l.context,
                        h.control,
                        String::from_utf8_lossy(&m.payload)
                    )))
                }
                other => {
                    tracing::debug!(
                        msg_type = other,
                        "ignoring a HiSLIP message on the sync channel"
                    );
                }
            }
        })
        .await
    }

    /// Send every message of `queries` (each a whole query, terminated),
    /// then read their answers: in overlapped mode all are in flight at
    /// once and each answer is matched to its query by message id; in
    /// synchronized mode they run one after another. Returns the answers
    /// in order (each up to its `DataEnd`). `timeout` bounds the whole.
    pub async fn query_many(
        &mut self,
        queries: &[&[u8]],
        timeout: Duration,
    ) -> Result<Vec<Vec<u8>>, DriverError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let left = || deadline.saturating_duration_since(tokio::time::Instant::now());
        let mut out = Vec::with_capacity(queries.len());
        if !self.overlapped {
            for q in queries {
                self.write(q, left()).await?;
                let mut answer = Vec::new();
                loop {
                    let (data, end) = self.read(left()).await?;
                    answer.extend_from_slice(&data);
                    if end {
                        break;
                    }
                }
                out.push(answer);
            }
            return Ok(out);
        }
        let mut ids = Vec::with_capacity(queries.len());
        for q in queries {
            self.write(q, left()).await?;
            ids.push(self.last_sent);
        }
        let first = ids.first().copied().unwrap_or(self.last_sent);
        self.bounded(left(), async move |l: &mut Self| {
            let mut answers: Vec<Vec<u8>> = vec![Vec::new(); ids.len()];
            let mut done = 0usize;
            let mut held = 0usize;
            while done < ids.len() {
                l.broken = true;
                let r = read_message(&mut l.sync, CLIENT_MAX_MESSAGE).await;
                let m = r.map_err(|e| l.io(e))?;
                l.broken = false;
                let h = m.header;
                match h.msg_type {
                    msg::DATA | msg::DATA_END => {
                        // Which of our queries (ids go up by 2, wrapping).
                        let k = h.param.wrapping_sub(first) / 2;
                        let slot = usize::try_from(k)
                            .ok()
                            .filter(|k| ids.get(*k) == Some(&h.param));
                        let Some(k) = slot else {
                            tracing::debug!(
                                id = h.param,
                                "discarding a HiSLIP answer to another message"
                            );
                            continue;
                        };
                        if k < done {
                            tracing::debug!(id = h.param, "discarding data after its DataEnd");
                            continue;
                        }
                        held += m.payload.len();
                        if held > MAX_STASH {
                            l.broken = true;
                            return Err(DriverError::Instrument(format!(
                                "{}: answers to {} queries exceed {MAX_STASH} bytes",
                                l.context,
                                ids.len()
                            )));
                        }
                        if let Some(a) = answers.get_mut(k) {
                            a.extend_from_slice(&m.payload);
                        }
                        if h.msg_type == msg::DATA_END {
                            if k != done {
                                // Answers come in order: an earlier query got none.
                                l.broken = true;
                                return Err(DriverError::Instrument(format!(
                                    "{}: answer to message {:#x} before the one to {:#x}",
                                    l.context,
                                    h.param,
                                    ids.get(done).copied().unwrap_or(0)
                                )));
                            }
                            done += 1;
                        }
                    }
                    msg::ERROR => {
                        return Err(DriverError::Instrument(format!(
                            "{}: Error {}: {}",
                            l.context,
                            h.control,
                            String::from_utf8_lossy(&m.payload)
                        )))
                    }
                    msg::FATAL_ERROR => {
                        l.broken = true;
                        return Err(DriverError::link(
                            l.context.clone(),
                            io::Error::new(
                                io::ErrorKind::ConnectionAborted,
                                format!(
                                    "FatalError {}: {}",
                                    h.control,
                                    String::from_utf8_lossy(&m.payload)
                                ),
                            ),
                        ));
                    }
                    _ => {}
                }
            }
            l.rmt = true;
            Ok(answers)
        })
        .await
        .map(|a| {
            out.extend(a);
            out
        })
    }

    /// One request on the asynchronous channel and its response of type `want`.
    async fn ask_async(
        &mut self,
        request: (u8, u8, u32, &[u8]),
        want: u8,
        timeout: Duration,
    ) -> Result<Message, DriverError> {
        let (t, control, param, payload) = request;
        self.bounded(timeout, async move |l: &mut Self| {
            l.broken = true;
            let r = write_message(&mut l.asyn, t, control, param, payload).await;
            r.map_err(|e| l.io(e))?;
            loop {
                let r = read_message(&mut l.asyn, 4096).await;
                let m = r.map_err(|e| l.io(e))?;
                if m.header.msg_type == msg::ASYNC_SERVICE_REQUEST {
                    continue;
                }
                l.broken = false;
                expect(&l.context, &m, want)?;
                return Ok(m);
            }
        })
        .await
    }

    /// Device clear: AsyncDeviceClear, then DeviceClearComplete on the sync
    /// channel asking for the link's mode (overlapped, synchronized, or for
    /// [`HislipMode::Server`] the server's preference from
    /// AsyncDeviceClearAcknowledge); DeviceClearAcknowledge says which
    /// mode is in force. Pending answers are dropped and message ids start
    /// again.
    pub async fn clear(&mut self, timeout: Duration) -> Result<(), DriverError> {
        let ack = self
            .ask_async(
                (msg::ASYNC_DEVICE_CLEAR, 0, 0, &[]),
                msg::ASYNC_DEVICE_CLEAR_ACKNOWLEDGE,
                timeout,
            )
            .await?;
        let request = match self.want {
            HislipMode::Overlapped => 1,
            HislipMode::Synchronized => 0,
            HislipMode::Server => ack.header.control & 1,
        };
        self.bounded(timeout, async move |l: &mut Self| {
            l.broken = true;
            let r = write_message(&mut l.sync, msg::DEVICE_CLEAR_COMPLETE, request, 0, &[]).await;
            r.map_err(|e| l.io(e))?;
            loop {
                let r = read_message(&mut l.sync, CLIENT_MAX_MESSAGE).await;
                let m = r.map_err(|e| l.io(e))?;
                if m.header.msg_type == msg::DEVICE_CLEAR_ACKNOWLEDGE {
                    l.overlapped = m.header.control & 1 != 0;
                    break;
                }
            }
            l.broken = false;
            l.message_id = FIRST_MESSAGE_ID;
            l.last_sent = FIRST_MESSAGE_ID;
            l.rmt = false;
            Ok(())
        })
        .await
    }

    /// Request the exclusive lock, waiting up to `lock_timeout`; another
    /// holder past that is `Busy` (409).
    pub async fn lock(&mut self, lock_timeout: Duration) -> Result<(), DriverError> {
        let ms = u32::try_from(lock_timeout.as_millis()).unwrap_or(u32::MAX);
        let m = self
            .ask_async(
                (msg::ASYNC_LOCK, 1, ms, &[]),
                msg::ASYNC_LOCK_RESPONSE,
                lock_timeout + Duration::from_millis(500),
            )
            .await?;
        match m.header.control {
            1 => Ok(()),
            0 => Err(DriverError::Busy(format!(
                "{}: locked by another session",
                self.context
            ))),
            c => Err(DriverError::Instrument(format!(
                "{}: AsyncLock request answered {c} (error)",
                self.context
            ))),
        }
    }

    /// Release the lock.
    pub async fn unlock(&mut self, timeout: Duration) -> Result<(), DriverError> {
        let last = self.last_sent;
        let m = self
            .ask_async(
                (msg::ASYNC_LOCK, 0, last, &[]),
                msg::ASYNC_LOCK_RESPONSE,
                timeout,
            )
            .await?;
        match m.header.control {
            1 | 2 => Ok(()),
            c => Err(DriverError::Instrument(format!(
                "{}: AsyncLock release answered {c} (no lock held)",
                self.context
            ))),
        }
    }

    /// The status byte (AsyncStatusQuery).
    pub async fn read_stb(&mut self, timeout: Duration) -> Result<u8, DriverError> {
        let (rmt, id) = (u8::from(self.rmt), self.message_id);
        self.rmt = false;
        let m = self
            .ask_async(
                (msg::ASYNC_STATUS_QUERY, rmt, id, &[]),
                msg::ASYNC_STATUS_RESPONSE,
                timeout,
            )
            .await?;
        Ok(m.header.control)
    }

    /// Close both channels.
    pub async fn close(&mut self, timeout: Duration) {
        let _ = tokio::time::timeout(timeout, async {
            let _ = self.sync.shutdown().await;
            let _ = self.asyn.shutdown().await;
        })
        .await;
    }
}

fn expect(context: &str, m: &Message, want: u8) -> Result<(), DriverError> {
    let h = m.header;
    if h.msg_type == want {
        return Ok(());
    }
    let text = String::from_utf8_lossy(&m.payload);
    let why = match h.msg_type {
        msg::FATAL_ERROR => format!("FatalError {}: {text}", h.control),
        msg::ERROR => format!("Error {}: {text}", h.control),
        t => format!("message type {t}, expected {want}"),
    };
    if h.msg_type == msg::FATAL_ERROR {
        return Err(DriverError::link(
            context.to_string(),
            io::Error::new(io::ErrorKind::ConnectionAborted, why),
        ));
    }
    Err(DriverError::Instrument(format!("{context}: {why}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn golden_header() {
        let h = HislipHeader {
            msg_type: msg::DATA_END,
            control: 1,
            param: FIRST_MESSAGE_ID,
            len: 6,
        };
        let b = h.encode();
        assert_eq!(
            b,
            [b'H', b'S', 7, 1, 0xFF, 0xFF, 0xFF, 0x00, 0, 0, 0, 0, 0, 0, 0, 6]
        );
        assert_eq!(HislipHeader::decode(&b), Some(h));
        let mut bad = b;
        bad[1] = b'X';
        assert_eq!(HislipHeader::decode(&bad), None);
    }

    proptest::proptest! {
        #[test]
        fn header_round_trips(t in proptest::num::u8::ANY, c in proptest::num::u8::ANY,
                              p in proptest::num::u32::ANY, l in proptest::num::u64::ANY) {
            let h = HislipHeader { msg_type: t, control: c, param: p, len: l };
            proptest::prop_assert_eq!(HislipHeader::decode(&h.encode()), Some(h));
        }

        #[test]
        fn reading_garbage_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..128)) {
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            rt.block_on(async {
                let mut r = &bytes[..];
                while read_message(&mut r, 64).await.is_ok() {}
            });
        }
    }

    #[tokio::test]
    async fn messages_round_trip_and_oversize_is_refused() {
        let mut out = Vec::new();
        write_message(&mut out, msg::INITIALIZE, 0, 0x0100_4c4d, b"hislip0")
            .await
            .unwrap();
        assert_eq!(&out[..4], b"HS\0\0");
        let mut r = &out[..];
        let m = read_message(&mut r, 64).await.unwrap();
        assert_eq!(m.payload, b"hislip0");
        assert_eq!(m.header.param, 0x0100_4c4d);
        let mut r = &out[..];
        assert!(read_message(&mut r, 3).await.is_err());
        let mut r = &out[..10];
        assert!(read_message(&mut r, 64).await.is_err());
    }
}
