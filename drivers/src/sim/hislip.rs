//! The simulator's HiSLIP server (IVI-6.1), synchronized mode by
//! preference.
//!
//! A client's first connection sends `Initialize` (sub-address `hislip0`,
//! `hislip1`, ...) and becomes the session's synchronous channel; the
//! second sends `AsyncInitialize` with the session id and becomes its
//! asynchronous channel. A message runs when its `DataEnd` arrives and is
//! answered at once with `DataEnd` (split into `Data` fragments over the
//! client's maximum message size) carrying the request's message id.
//! `AsyncLock` takes the instrument's one lock (shared with VXI-11 links);
//! a session's messages wait while another holds it. The server prefers
//! synchronized mode ([`SimPsu::serve_hislip`]) or overlapped mode
//! ([`SimPsu::serve_hislip_with`]), says so in `InitializeResponse` and
//! `AsyncDeviceClearAcknowledge`, and grants the mode a client asks for
//! in `DeviceClearComplete`. Messages are answered in order, each with its
//! own message id, so several queries may be in flight in overlapped mode.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::backend::{Backend, Refused, ScpiBackend};
use super::{SimPsu, MAX_LINE};
use crate::hislip::{code, msg, read_message, write_message, VERSION};

/// The server's maximum message size (AsyncMaximumMessageSizeResponse):
/// small, so clients' fragmenting is exercised.
pub const SERVER_MAX_MESSAGE: u64 = 16 * 1024;

/// The largest payload actually read (forgiving clients that never asked
/// for the maximum, as pyvisa-py does not).
const READ_CAP: u64 = 1 << 20;

#[derive(Debug)]
struct Session {
    lock_id: u32,
    client_max: AtomicU64,
}

type Sessions = Arc<Mutex<HashMap<u16, Arc<Session>>>>;

/// How the simulator's HiSLIP server behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HislipServerOptions {
    /// Prefer (and start sessions in) overlapped mode.
    pub prefer_overlap: bool,
}

impl SimPsu {
    /// Serve HiSLIP on `listener` until `shutdown`, preferring
    /// synchronized mode. On shutdown, open connections are closed and
    /// awaited.
    pub async fn serve_hislip(
        &self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> io::Result<()> {
        self.serve_hislip_with(listener, HislipServerOptions::default(), shutdown)
            .await
    }

    /// [`SimPsu::serve_hislip`] with `options`.
    pub async fn serve_hislip_with(
        &self,
        listener: TcpListener,
        options: HislipServerOptions,
        shutdown: impl Future<Output = ()>,
    ) -> io::Result<()> {
        serve(Arc::new(self.clone()), listener, options, shutdown).await
    }
}

/// Serve HiSLIP for `backend` on `listener` until `shutdown`. On shutdown,
/// open connections are closed and awaited.
pub async fn serve(
    backend: Backend,
    listener: TcpListener,
    options: HislipServerOptions,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let mut shutdown = pin!(shutdown);
    let (stop_tx, stop_rx) = watch::channel(false);
    let sessions: Sessions = Arc::default();
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            accepted = listener.accept() => {
                let sock = match accepted {
                    Ok((s, _)) => s,
                    Err(e) => {
                        tracing::warn!("sim accept: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                if !super::backend::room_for(conns.len(), "HiSLIP") {
                    continue;
                }
                let _ = sock.set_nodelay(true);
                let sim = backend.clone();
                let stop = stop_rx.clone();
                let sessions = sessions.clone();
                conns.spawn(async move {
                    if let Err(e) = serve_connection(&*sim, sock, &sessions, options, stop).await {
                        tracing::debug!("sim hislip client: {e}");
                    }
                });
            }
        }
    }
    let _ = stop_tx.send(true);
    while conns.join_next().await.is_some() {}
    Ok(())
}

fn sessions_lock(s: &Sessions) -> std::sync::MutexGuard<'_, HashMap<u16, Arc<Session>>> {
    s.lock().unwrap_or_else(|e| e.into_inner())
}

async fn fatal(sock: &mut TcpStream, control: u8, why: &str) -> io::Result<()> {
    write_message(sock, msg::FATAL_ERROR, control, 0, why.as_bytes()).await
}

/// Read the next message, or `None` when the peer closed or we stop.
async fn next(
    sock: &mut TcpStream,
    stop: &mut watch::Receiver<bool>,
    max: u64,
) -> io::Result<Option<crate::hislip::Message>> {
    tokio::select! {
        _ = stop.wait_for(|s| *s) => Ok(None),
        r = read_message(sock, max) => match r {
            Ok(m) => Ok(Some(m)),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(None),
            Err(e) => Err(e),
        },
    }
}

async fn serve_connection(
    sim: &dyn ScpiBackend,
    mut sock: TcpStream,
    sessions: &Sessions,
    options: HislipServerOptions,
    mut stop: watch::Receiver<bool>,
) -> io::Result<()> {
    let prefer = u8::from(options.prefer_overlap);
    let first = match next(&mut sock, &mut stop, 1024).await {
        Ok(Some(m)) => m,
        Ok(None) => return Ok(()),
        Err(e) if e.kind() == io::ErrorKind::InvalidData => {
            return fatal(&mut sock, code::FATAL_BAD_HEADER, "poorly formed header").await;
        }
        Err(e) => return Err(e),
    };
    match first.header.msg_type {
        msg::INITIALIZE => {
            let sub = String::from_utf8_lossy(&first.payload).to_ascii_lowercase();
            let known = sub
                .strip_prefix("hislip")
                .is_some_and(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()));
            if !known {
                return fatal(
                    &mut sock,
                    code::FATAL_UNIDENTIFIED,
                    &format!("unknown sub-address {sub:?}"),
                )
                .await;
            }
            let lock_id = sim.next_session();
            let id = (lock_id & 0xFFFF) as u16;
            let session = Arc::new(Session {
                lock_id,
                client_max: AtomicU64::new(crate::hislip::CLIENT_MAX_MESSAGE),
            });
            sessions_lock(sessions).insert(id, session.clone());
            let param = (u32::from(VERSION) << 16) | u32::from(id);
            let r = async {
                write_message(&mut sock, msg::INITIALIZE_RESPONSE, prefer, param, &[]).await?;
                serve_sync(sim, &mut sock, &session, &mut stop).await
            }
            .await;
            sessions_lock(sessions).remove(&id);
            sim.end_session(lock_id).await;
            r
        }
        msg::ASYNC_INITIALIZE => {
            let id = (first.header.param & 0xFFFF) as u16;
            let session = sessions_lock(sessions).get(&id).cloned();
            let Some(session) = session else {
                return fatal(&mut sock, code::FATAL_INVALID_INIT, "no such session").await;
            };
            let vendor = u32::from(u16::from_be_bytes(*b"LM"));
            write_message(&mut sock, msg::ASYNC_INITIALIZE_RESPONSE, 0, vendor, &[]).await?;
            let r = serve_async(sim, &mut sock, &session, prefer, &mut stop).await;
            sim.unlock(session.lock_id).await;
            r
        }
        _ => fatal(&mut sock, code::FATAL_INVALID_INIT, "expected Initialize").await,
    }
}

async fn serve_sync(
    sim: &dyn ScpiBackend,
    sock: &mut TcpStream,
    session: &Session,
    stop: &mut watch::Receiver<bool>,
) -> io::Result<()> {
    let mut input: Vec<u8> = Vec::new();
    while let Some(m) = next(sock, stop, READ_CAP).await? {
        let h = m.header;
        match h.msg_type {
            msg::DATA | msg::DATA_END => {
                input.extend_from_slice(&m.payload);
                if input.len() > MAX_LINE {
                    input.clear();
                    sim.message_too_long();
                    continue;
                }
                if h.msg_type == msg::DATA {
                    continue;
                }
                let text = String::from_utf8_lossy(&std::mem::take(&mut input))
                    .trim_end_matches(['\n', '\r'])
                    .to_string();
                let mut stopped = stop.clone();
                let ready = async {
                    sim.ready().await;
                    sim.wait_free(session.lock_id, Duration::from_secs(86_400))
                        .await
                };
                let free = tokio::select! {
                    _ = stopped.wait_for(|s| *s) => return Ok(()),
                    free = ready => free,
                };
                let executed = if free {
                    tokio::select! {
                        _ = stopped.wait_for(|s| *s) => return Ok(()),
                        r = sim.execute(session.lock_id, &text) => r,
                    }
                } else {
                    Err(Refused::Locked("the instrument is locked".into()))
                };
                let mut reply = match executed {
                    Ok(Some(reply)) => reply,
                    Ok(None) => continue,
                    Err(e) => {
                        // Non-fatal: the message is dropped, the session goes on.
                        let why = e.to_string();
                        write_message(
                            sock,
                            msg::ERROR,
                            code::ERROR_UNIDENTIFIED,
                            0,
                            why.as_bytes(),
                        )
                        .await?;
                        continue;
                    }
                };
                let latency = sim.latency();
                if !latency.is_zero() {
                    tokio::select! {
                        _ = stopped.wait_for(|s| *s) => return Ok(()),
                        _ = tokio::time::sleep(latency) => {}
                    }
                }
                reply.push(b'\n');
                let max = session.client_max.load(Ordering::Relaxed).max(1);
                let max = usize::try_from(max).unwrap_or(usize::MAX);
                let chunks: Vec<&[u8]> = reply.chunks(max).collect();
                let n = chunks.len();
                for (i, chunk) in chunks.into_iter().enumerate() {
                    let t = if i + 1 == n { msg::DATA_END } else { msg::DATA };
                    write_message(sock, t, 0, h.param, chunk).await?;
                }
            }
            msg::TRIGGER => {
                sim.trigger(session.lock_id).await;
            }
            msg::DEVICE_CLEAR_COMPLETE => {
                input.clear();
                // Overlapped (bit 0) is acknowledged as asked.
                let setting = h.control & 1;
                write_message(sock, msg::DEVICE_CLEAR_ACKNOWLEDGE, setting, 0, &[]).await?;
            }
            msg::INITIALIZE | msg::ASYNC_INITIALIZE => {
                return fatal(sock, code::FATAL_INVALID_INIT, "already initialized").await;
            }
            other => {
                let why = format!("message type {other} on the synchronous channel");
                write_message(
                    sock,
                    msg::ERROR,
                    code::ERROR_UNRECOGNIZED_TYPE,
                    0,
                    why.as_bytes(),
                )
                .await?;
            }
        }
    }
    Ok(())
}

async fn serve_async(
    sim: &dyn ScpiBackend,
    sock: &mut TcpStream,
    session: &Session,
    prefer: u8,
    stop: &mut watch::Receiver<bool>,
) -> io::Result<()> {
    while let Some(m) = next(sock, stop, 1024).await? {
        let h = m.header;
        match h.msg_type {
            msg::ASYNC_MAXIMUM_MESSAGE_SIZE => {
                if let Ok(b) = <[u8; 8]>::try_from(m.payload.as_slice()) {
                    session
                        .client_max
                        .store(u64::from_be_bytes(b), Ordering::Relaxed);
                }
                write_message(
                    sock,
                    msg::ASYNC_MAXIMUM_MESSAGE_SIZE_RESPONSE,
                    0,
                    0,
                    &SERVER_MAX_MESSAGE.to_be_bytes(),
                )
                .await?;
            }
            msg::ASYNC_LOCK if h.control == 1 => {
                // Request: param = timeout in ms; a non-empty lock string
                // asks for a shared lock, which the simulator does not have.
                let result = if !m.payload.is_empty() {
                    3
                } else {
                    let wait = Duration::from_millis(u64::from(h.param));
                    let mut stopped = stop.clone();
                    tokio::select! {
                        _ = stopped.wait_for(|s| *s) => return Ok(()),
                        got = sim.lock(session.lock_id, wait) => u8::from(got),
                    }
                };
                write_message(sock, msg::ASYNC_LOCK_RESPONSE, result, 0, &[]).await?;
            }
            msg::ASYNC_LOCK if h.control == 0 => {
                let result = if sim.unlock(session.lock_id).await {
                    1
                } else {
                    3
                };
                write_message(sock, msg::ASYNC_LOCK_RESPONSE, result, 0, &[]).await?;
            }
            msg::ASYNC_LOCK_INFO => {
                let locked = sim.is_locked().await;
                write_message(
                    sock,
                    msg::ASYNC_LOCK_INFO_RESPONSE,
                    u8::from(locked),
                    0,
                    &[],
                )
                .await?;
            }
            msg::ASYNC_STATUS_QUERY => {
                let stb = sim.status_byte(session.lock_id).await;
                write_message(sock, msg::ASYNC_STATUS_RESPONSE, stb, 0, &[]).await?;
            }
            msg::ASYNC_DEVICE_CLEAR => {
                // Feature preference: bit 0 set for overlapped mode.
                write_message(sock, msg::ASYNC_DEVICE_CLEAR_ACKNOWLEDGE, prefer, 0, &[]).await?;
            }
            msg::ASYNC_REMOTE_LOCAL_CONTROL => {
                write_message(sock, msg::ASYNC_REMOTE_LOCAL_RESPONSE, 0, 0, &[]).await?;
            }
            msg::ASYNC_LOCK => {
                write_message(
                    sock,
                    msg::ERROR,
                    code::ERROR_UNRECOGNIZED_CONTROL,
                    0,
                    b"AsyncLock control code",
                )
                .await?;
            }
            other => {
                let why = format!("message type {other} on the asynchronous channel");
                write_message(
                    sock,
                    msg::ERROR,
                    code::ERROR_UNRECOGNIZED_TYPE,
                    0,
                    why.as_bytes(),
                )
                .await?;
            }
        }
    }
    Ok(())
}
