//! The simulator's VXI-11 server: a portmapper and a core channel.
//!
//! Every client connection is served by its own task, calls in order (RPC
//! over TCP: one outstanding call per connection). Links (`create_link`)
//! share the one instrument; `device_lock` is the instrument's lock (one
//! holder, other links wait up to their `lock_timeout` or get error 11).
//! A message is executed when its END fragment arrives; its reply waits in
//! the link's output queue for `device_read`. While the simulator is
//! muted, messages are queued and `device_read` times out (error 15).

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::io;
use std::pin::pin;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::backend::{Backend, Refused, ScpiBackend};
use super::{SimPsu, MAX_LINE};
use crate::vxi11::{
    err, parse_call, proc, read_record, reply_message, write_record, AcceptStat, XdrReader,
    XdrWriter, CORE_PROG, CORE_VERS, FLAG_END, FLAG_TERMCHRSET, FLAG_WAITLOCK, IPPROTO_TCP,
    PMAP_DUMP, PMAP_GETPORT, PMAP_NULL, PMAP_PROG, PMAP_VERS, REASON_CHR, REASON_END,
    REASON_REQCNT,
};

/// The largest write fragment the simulator accepts (`maxRecvSize`).
pub const MAX_RECV_SIZE: u32 = 16 * 1024;

/// Largest RPC record the simulator reads.
const MAX_CALL: usize = 256 * 1024;

impl SimPsu {
    /// Serve VXI-11 until `shutdown`: the core channel on `core`, and, if
    /// given, a portmapper on `portmapper` that points `GETPORT` at it.
    /// On shutdown, open connections are closed and awaited.
    pub async fn serve_vxi11(
        &self,
        portmapper: Option<TcpListener>,
        core: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> io::Result<()> {
        serve(
            std::sync::Arc::new(self.clone()),
            portmapper,
            core,
            shutdown,
        )
        .await
    }
}

/// Serve VXI-11 for `backend` until `shutdown`: the core channel on
/// `core`, and, if given, a portmapper on `portmapper` that points
/// `GETPORT` at it. On shutdown, open connections are closed and awaited.
pub async fn serve(
    backend: Backend,
    portmapper: Option<TcpListener>,
    core: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let core_port = core.local_addr()?.port();
    let mut shutdown = pin!(shutdown);
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut conns = JoinSet::new();
    let pm_accept = async |pm: &Option<TcpListener>| match pm {
        Some(l) => l.accept().await,
        None => std::future::pending().await,
    };
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            accepted = core.accept() => {
                let Some(sock) = accepted_or_pause(accepted).await else { continue };
                if !super::backend::room_for(conns.len(), "VXI-11") {
                    continue;
                }
                let sim = backend.clone();
                let stop = stop_rx.clone();
                conns.spawn(async move {
                    if let Err(e) = serve_core(&*sim, sock, stop).await {
                        tracing::debug!("sim vxi11 core client: {e}");
                    }
                });
            }
            accepted = pm_accept(&portmapper) => {
                let Some(sock) = accepted_or_pause(accepted).await else { continue };
                if !super::backend::room_for(conns.len(), "VXI-11") {
                    continue;
                }
                let stop = stop_rx.clone();
                conns.spawn(async move {
                    if let Err(e) = serve_portmapper(sock, core_port, stop).await {
                        tracing::debug!("sim portmapper client: {e}");
                    }
                });
            }
        }
    }
    let _ = stop_tx.send(true);
    while conns.join_next().await.is_some() {}
    Ok(())
}

async fn accepted_or_pause(
    accepted: io::Result<(TcpStream, std::net::SocketAddr)>,
) -> Option<TcpStream> {
    match accepted {
        Ok((sock, _)) => {
            let _ = sock.set_nodelay(true);
            Some(sock)
        }
        Err(e) => {
            // Out of descriptors and the like: keep serving.
            tracing::warn!("sim accept: {e}");
            tokio::time::sleep(Duration::from_millis(50)).await;
            None
        }
    }
}

/// Read the next call, or `None` when the peer closed or we are stopping.
async fn next_call(
    sock: &mut TcpStream,
    stop: &mut watch::Receiver<bool>,
) -> io::Result<Option<Vec<u8>>> {
    tokio::select! {
        _ = stop.wait_for(|s| *s) => Ok(None),
        r = read_record(sock, MAX_CALL) => match r {
            Ok(m) => Ok(Some(m)),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(None),
            Err(e) => Err(e),
        },
    }
}

async fn serve_portmapper(
    mut sock: TcpStream,
    core_port: u16,
    mut stop: watch::Receiver<bool>,
) -> io::Result<()> {
    while let Some(msg) = next_call(&mut sock, &mut stop).await? {
        let Ok(call) = parse_call(&msg) else {
            return Ok(()); // not RPC: hang up
        };
        let reply = if call.prog != PMAP_PROG {
            reply_message(call.xid, AcceptStat::ProgUnavail, &[])
        } else if call.vers != PMAP_VERS {
            reply_message(call.xid, AcceptStat::ProgMismatch, &[])
        } else {
            match call.procedure {
                PMAP_NULL => reply_message(call.xid, AcceptStat::Success, &[]),
                PMAP_GETPORT => {
                    let mut r = XdrReader::new(call.args);
                    match (r.u32(), r.u32(), r.u32()) {
                        (Ok(prog), Ok(vers), Ok(prot)) => {
                            let found =
                                prog == CORE_PROG && vers == CORE_VERS && prot == IPPROTO_TCP;
                            let mut x = XdrWriter::new();
                            x.u32(if found { u32::from(core_port) } else { 0 });
                            reply_message(call.xid, AcceptStat::Success, &x.0)
                        }
                        _ => reply_message(call.xid, AcceptStat::GarbageArgs, &[]),
                    }
                }
                PMAP_DUMP => {
                    let mut x = XdrWriter::new();
                    x.bool(true)
                        .u32(CORE_PROG)
                        .u32(CORE_VERS)
                        .u32(IPPROTO_TCP)
                        .u32(u32::from(core_port))
                        .bool(false);
                    reply_message(call.xid, AcceptStat::Success, &x.0)
                }
                _ => reply_message(call.xid, AcceptStat::ProcUnavail, &[]),
            }
        };
        write_record(&mut sock, &reply).await?;
    }
    Ok(())
}

/// One device link's buffers.
#[derive(Debug, Default)]
struct LinkState {
    /// The message being written (fragments before END).
    input: Vec<u8>,
    /// Messages received while muted, executed on unmute.
    pending: VecDeque<String>,
    /// Response messages not read yet (front first).
    output: VecDeque<Vec<u8>>,
}

struct Core<'a> {
    sim: &'a dyn ScpiBackend,
    links: HashMap<u32, LinkState>,
}

async fn serve_core(
    sim: &dyn ScpiBackend,
    mut sock: TcpStream,
    mut stop: watch::Receiver<bool>,
) -> io::Result<()> {
    let mut core = Core {
        sim,
        links: HashMap::new(),
    };
    let r = async {
        while let Some(msg) = next_call(&mut sock, &mut stop).await? {
            let Ok(call) = parse_call(&msg) else {
                return Ok(());
            };
            let reply = if call.prog != CORE_PROG {
                reply_message(call.xid, AcceptStat::ProgUnavail, &[])
            } else if call.vers != CORE_VERS {
                reply_message(call.xid, AcceptStat::ProgMismatch, &[])
            } else {
                let mut stopped = stop.clone();
                let handled = tokio::select! {
                    _ = stopped.wait_for(|s| *s) => return Ok(()),
                    h = core.handle(call.procedure, call.args) => h,
                };
                match handled {
                    Some(Ok(results)) => reply_message(call.xid, AcceptStat::Success, &results),
                    Some(Err(_)) => reply_message(call.xid, AcceptStat::GarbageArgs, &[]),
                    None => reply_message(call.xid, AcceptStat::ProcUnavail, &[]),
                }
            };
            write_record(&mut sock, &reply).await?;
        }
        Ok(())
    }
    .await;
    // A dropped connection ends its links and releases their lock.
    for lid in core.links.keys() {
        sim.end_session(*lid).await;
    }
    r
}

fn error_only(code: i32) -> Vec<u8> {
    let mut x = XdrWriter::new();
    x.i32(code);
    x.0
}

impl Core<'_> {
    /// The results of one core procedure; `None`: no such procedure.
    async fn handle(
        &mut self,
        procedure: u32,
        args: &[u8],
    ) -> Option<Result<Vec<u8>, crate::vxi11::XdrError>> {
        let mut r = XdrReader::new(args);
        let out = match procedure {
            proc::CREATE_LINK => self.create_link(&mut r).await,
            proc::DEVICE_WRITE => self.write(&mut r).await,
            proc::DEVICE_READ => self.read(&mut r).await,
            proc::DEVICE_READSTB
            | proc::DEVICE_TRIGGER
            | proc::DEVICE_CLEAR
            | proc::DEVICE_REMOTE
            | proc::DEVICE_LOCAL => self.generic(procedure, &mut r).await,
            proc::DEVICE_LOCK => self.lock(&mut r).await,
            proc::DEVICE_UNLOCK => match r.u32() {
                Ok(lid) => Ok(error_only(if !self.links.contains_key(&lid) {
                    err::INVALID_LINK
                } else if self.sim.unlock(lid).await {
                    err::NONE
                } else {
                    err::NO_LOCK
                })),
                Err(e) => Err(e),
            },
            proc::DESTROY_LINK => match r.u32() {
                Ok(lid) => Ok(error_only(match self.links.remove(&lid) {
                    None => err::INVALID_LINK,
                    Some(_) => {
                        self.sim.end_session(lid).await;
                        err::NONE
                    }
                })),
                Err(e) => Err(e),
            },
            _ => return None,
        };
        Some(out)
    }

    async fn create_link(
        &mut self,
        r: &mut XdrReader<'_>,
    ) -> Result<Vec<u8>, crate::vxi11::XdrError> {
        let _client_id = r.i32()?;
        let lock_device = r.bool()?;
        let _lock_timeout = r.u32()?;
        let device = String::from_utf8_lossy(r.opaque(256)?).to_ascii_lowercase();
        let mut x = XdrWriter::new();
        let known = device
            .strip_prefix("inst")
            .is_some_and(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()));
        if !known {
            x.i32(err::INVALID_ADDRESS).u32(0).u32(0).u32(0);
            return Ok(x.0);
        }
        let lid = self.sim.next_session();
        if lock_device && !self.sim.lock(lid, Duration::ZERO).await {
            x.i32(err::LOCKED).u32(0).u32(0).u32(0);
            return Ok(x.0);
        }
        self.links.insert(lid, LinkState::default());
        x.i32(err::NONE).u32(lid).u32(0).u32(MAX_RECV_SIZE);
        Ok(x.0)
    }

    /// Wait for the instrument's lock for `lid` (`FLAG_WAITLOCK`: up to
    /// `lock_timeout`); false if another link keeps it.
    async fn gate(&self, lid: u32, flags: u32, lock_timeout: u32) -> bool {
        let wait = if flags & FLAG_WAITLOCK != 0 {
            Duration::from_millis(u64::from(lock_timeout))
        } else {
            Duration::ZERO
        };
        self.sim.wait_free(lid, wait).await
    }

    async fn write(&mut self, r: &mut XdrReader<'_>) -> Result<Vec<u8>, crate::vxi11::XdrError> {
        let lid = r.u32()?;
        let _io_timeout = r.u32()?;
        let lock_timeout = r.u32()?;
        let flags = r.u32()?;
        let data = r.opaque(MAX_CALL)?;
        let mut x = XdrWriter::new();
        if !self.links.contains_key(&lid) {
            x.i32(err::INVALID_LINK).u32(0);
            return Ok(x.0);
        }
        if !self.gate(lid, flags, lock_timeout).await {
            x.i32(err::LOCKED).u32(0);
            return Ok(x.0);
        }
        let sim = self.sim;
        let Some(link) = self.links.get_mut(&lid) else {
            x.i32(err::INVALID_LINK).u32(0);
            return Ok(x.0);
        };
        link.input.extend_from_slice(data);
        if link.input.len() > MAX_LINE {
            tracing::warn!("program message longer than {MAX_LINE} bytes: dropped");
            link.input.clear();
            sim.message_too_long();
        } else if flags & FLAG_END != 0 {
            let msg = std::mem::take(&mut link.input);
            let text = String::from_utf8_lossy(&msg);
            let text = text.trim_end_matches(['\n', '\r']).to_string();
            link.pending.push_back(text);
            if sim.is_ready() {
                if let Err(e) = run_pending(sim, lid, link).await {
                    x.i32(refused_code(&e)).u32(0);
                    return Ok(x.0);
                }
            }
        }
        x.i32(err::NONE)
            .u32(u32::try_from(data.len()).unwrap_or(u32::MAX));
        Ok(x.0)
    }

    async fn read(&mut self, r: &mut XdrReader<'_>) -> Result<Vec<u8>, crate::vxi11::XdrError> {
        let lid = r.u32()?;
        let request = usize::try_from(r.u32()?).unwrap_or(usize::MAX).max(1);
        let io_timeout = Duration::from_millis(u64::from(r.u32()?));
        let lock_timeout = r.u32()?;
        let flags = r.u32()?;
        let term = (flags & FLAG_TERMCHRSET != 0).then_some(r.u32()? as u8);
        let deadline = Instant::now() + io_timeout;
        let mut x = XdrWriter::new();
        if !self.links.contains_key(&lid) {
            x.i32(err::INVALID_LINK).u32(0).opaque(&[]);
            return Ok(x.0);
        }
        if !self.gate(lid, flags, lock_timeout).await {
            x.i32(err::LOCKED).u32(0).opaque(&[]);
            return Ok(x.0);
        }
        let sim = self.sim;
        let unmuted = tokio::time::timeout_at(deadline, sim.ready()).await;
        let Some(link) = self.links.get_mut(&lid) else {
            x.i32(err::INVALID_LINK).u32(0).opaque(&[]);
            return Ok(x.0);
        };
        if unmuted.is_ok() {
            if let Err(e) = run_pending(sim, lid, link).await {
                x.i32(refused_code(&e)).u32(0).opaque(&[]);
                return Ok(x.0);
            }
        }
        if unmuted.is_err() || link.output.is_empty() {
            // Nothing to read: a real instrument times out (nothing on
            // this connection can produce a reply meanwhile).
            tokio::time::sleep_until(deadline).await;
            x.i32(err::IO_TIMEOUT).u32(0).opaque(&[]);
            return Ok(x.0);
        }
        let latency = sim.latency();
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        let Some(front) = link.output.front_mut() else {
            x.i32(err::IO_TIMEOUT).u32(0).opaque(&[]);
            return Ok(x.0);
        };
        let mut n = front.len().min(request);
        let mut reason = 0;
        if let Some(t) = term {
            if let Some(i) = front.iter().take(n).position(|b| *b == t) {
                n = i + 1;
                reason |= REASON_CHR;
            }
        }
        let data: Vec<u8> = front.drain(..n).collect();
        if front.is_empty() {
            link.output.pop_front();
            reason |= REASON_END;
        } else if reason == 0 {
            reason |= REASON_REQCNT;
        }
        x.i32(err::NONE).u32(reason).opaque(&data);
        Ok(x.0)
    }

    async fn generic(
        &mut self,
        procedure: u32,
        r: &mut XdrReader<'_>,
    ) -> Result<Vec<u8>, crate::vxi11::XdrError> {
        let lid = r.u32()?;
        let flags = r.u32()?;
        let lock_timeout = r.u32()?;
        let _io_timeout = r.u32()?;
        let mut x = XdrWriter::new();
        let with_stb = procedure == proc::DEVICE_READSTB;
        let code = if !self.links.contains_key(&lid) {
            err::INVALID_LINK
        } else if !self.gate(lid, flags, lock_timeout).await {
            err::LOCKED
        } else {
            err::NONE
        };
        if code != err::NONE {
            x.i32(code);
            if with_stb {
                x.u32(0);
            }
            return Ok(x.0);
        }
        match procedure {
            proc::DEVICE_CLEAR => {
                if let Some(link) = self.links.get_mut(&lid) {
                    *link = LinkState::default();
                }
                x.i32(err::NONE);
            }
            proc::DEVICE_READSTB => {
                let stb = self.sim.status_byte(lid).await;
                x.i32(err::NONE).u32(u32::from(stb));
            }
            proc::DEVICE_TRIGGER => {
                self.sim.trigger(lid).await;
                x.i32(err::NONE);
            }
            _ => {
                x.i32(err::NONE);
            }
        }
        Ok(x.0)
    }

    async fn lock(&mut self, r: &mut XdrReader<'_>) -> Result<Vec<u8>, crate::vxi11::XdrError> {
        let lid = r.u32()?;
        let flags = r.u32()?;
        let lock_timeout = r.u32()?;
        if !self.links.contains_key(&lid) {
            return Ok(error_only(err::INVALID_LINK));
        }
        let wait = if flags & FLAG_WAITLOCK != 0 {
            Duration::from_millis(u64::from(lock_timeout))
        } else {
            Duration::ZERO
        };
        let got = self.sim.lock(lid, wait).await;
        Ok(error_only(if got { err::NONE } else { err::LOCKED }))
    }
}

/// Execute the link's queued messages, queueing their replies. A refused
/// message is dropped with the ones queued after it (the client is told).
async fn run_pending(sim: &dyn ScpiBackend, lid: u32, link: &mut LinkState) -> Result<(), Refused> {
    while let Some(text) = link.pending.pop_front() {
        match sim.execute(lid, &text).await {
            Ok(Some(mut reply)) => {
                reply.push(b'\n');
                link.output.push_back(reply);
            }
            Ok(None) => {}
            Err(e) => {
                link.pending.clear();
                return Err(e);
            }
        }
    }
    Ok(())
}

/// The VXI-11 error a refusal is answered with.
fn refused_code(e: &Refused) -> i32 {
    match e {
        Refused::Locked(why) => {
            tracing::debug!("vxi11: refused: {why}");
            err::LOCKED
        }
        Refused::Failed(why) => {
            tracing::debug!("vxi11: failed: {why}");
            err::IO_ERROR
        }
    }
}
