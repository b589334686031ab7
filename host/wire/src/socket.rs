//! ZeroMQ sockets driven by tokio.
//!
//! One pattern for every node: an [`AsyncSocket`] owns a `zmq::Socket` and
//! registers the socket's `ZMQ_FD` with tokio's reactor. That descriptor is
//! edge-triggered and only says "the socket's mailbox has commands", so every
//! wait re-reads `ZMQ_EVENTS` before and after sleeping, and readiness is only
//! cleared when `ZMQ_EVENTS` says the wanted direction is not ready. All sends
//! and receives are `DONTWAIT`, which makes `recv_multipart` cancel-safe: a
//! message is either fully taken or left on the socket.
//!
//! A `zmq::Socket` is `Send` but not `Sync`, so an `AsyncSocket` is owned by
//! one task at a time and its methods take `&mut self`; a task that must both
//! receive and send selects over `recv_multipart` and a channel of outgoing
//! messages (see the broker and relay for the pattern).

use std::cell::Cell;
use std::future::poll_fn;
use std::os::fd::{AsRawFd, RawFd};
use std::task::Poll;

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use crate::WireError;

/// Who sent a message, from libzmq's message properties (set by the ZAP
/// handler on CURVE sockets; all `None` on plaintext and inproc).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Peer {
    /// `User-Id`: `<role>:<fingerprint>`
    /// ([`labmesh_proto::security::UserId`]).
    pub user_id: Option<String>,
    /// The whole client public key, Z85
    /// ([`labmesh_proto::security::KEY_PROPERTY`]).
    pub key: Option<String>,
    /// `Peer-Address`: the client's IP address.
    pub address: Option<String>,
}

impl Peer {
    /// The properties of one received frame.
    pub fn of(m: &mut zmq::Message) -> Peer {
        Peer {
            user_id: m.gets("User-Id").map(str::to_string),
            key: m
                .gets(labmesh_proto::security::KEY_PROPERTY)
                .map(str::to_string),
            address: m.gets("Peer-Address").map(str::to_string),
        }
    }
}

/// Default largest accepted inbound message (ZMQ_MAXMSGSIZE), 64 MiB.
pub const DEFAULT_MAX_MSG_SIZE: i64 = labmesh_proto::limits::DEFAULT_MAX_MSG as i64;

/// A borrowed file descriptor; the zmq socket owns and closes it.
struct ZmqFd(RawFd);

impl AsRawFd for ZmqFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

/// Options applied to every socket before it binds or connects.
#[derive(Debug, Clone, Copy)]
pub struct SocketOptions {
    /// Send high-water mark (messages).
    pub sndhwm: i32,
    /// Receive high-water mark (messages).
    pub rcvhwm: i32,
    /// Milliseconds to keep unsent messages after close.
    pub linger_ms: i32,
    /// Largest accepted inbound message in bytes; -1 for no limit.
    pub max_msg_size: i64,
}

impl Default for SocketOptions {
    fn default() -> Self {
        SocketOptions {
            sndhwm: 1000,
            rcvhwm: 1000,
            linger_ms: 500,
            max_msg_size: DEFAULT_MAX_MSG_SIZE,
        }
    }
}

/// A ZeroMQ socket usable from async code. See the module docs.
pub struct AsyncSocket {
    // Declared before `sock` so it is deregistered before the socket closes.
    fd: AsyncFd<ZmqFd>,
    sock: zmq::Socket,
    /// The context's CURVE security (`curve::install`), applied at bind
    /// (server) and connect (client).
    security: Option<std::sync::Arc<crate::curve::Security>>,
    /// Whether libzmq may hold a message (or have processed a command)
    /// that the descriptor will not signal again: set by every operation
    /// other than a receive that found nothing, cleared by such a receive.
    /// While it is set a receive tries the socket before it sleeps.
    unsure: Cell<bool>,
}

impl std::fmt::Debug for AsyncSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsyncSocket")
            .field("type", &self.sock.get_socket_type().ok())
            .field("endpoint", &self.last_endpoint().ok())
            .finish()
    }
}

impl AsyncSocket {
    /// Create a socket of `kind` with `opts` applied. Must be called inside a
    /// tokio runtime.
    pub fn new(
        ctx: &zmq::Context,
        kind: zmq::SocketType,
        opts: SocketOptions,
    ) -> Result<Self, WireError> {
        let sock = ctx.socket(kind)?;
        sock.set_sndhwm(opts.sndhwm)?;
        sock.set_rcvhwm(opts.rcvhwm)?;
        sock.set_linger(opts.linger_ms)?;
        sock.set_maxmsgsize(opts.max_msg_size)?;
        let raw = sock.get_fd()?;
        // SAFETY: `raw` is the zmq socket's own signalling descriptor. It
        // stays open and unchanged while `sock` lives, and `fd` is declared
        // before `sock` in the struct, so it is deregistered (dropped) before
        // the socket closes the descriptor.
        let fd = unsafe { AsyncFd::register_with_interest(ZmqFd(raw), Interest::READABLE) }
            .map_err(|e| WireError::Io(e.into_parts().1))?;
        let security = crate::curve::for_context(ctx);
        Ok(AsyncSocket {
            fd,
            sock,
            security,
            unsure: Cell::new(true),
        })
    }

    /// The underlying socket, for options not wrapped here.
    pub fn raw(&self) -> &zmq::Socket {
        self.unsure.set(true);
        &self.sock
    }

    /// Bind to `endpoint` (e.g. `tcp://127.0.0.1:*`) and return the endpoint
    /// actually bound (with the real port).
    pub fn bind(&mut self, endpoint: &str) -> Result<String, WireError> {
        if let Some(sec) = &self.security {
            crate::curve::secure_server(&self.sock, sec)?;
        }
        self.sock.bind(endpoint).map_err(|source| WireError::Bind {
            endpoint: endpoint.to_string(),
            source,
        })?;
        self.last_endpoint()
    }

    /// Connect to `endpoint`. ZeroMQ connects in the background.
    pub fn connect(&mut self, endpoint: &str) -> Result<(), WireError> {
        if let Some(sec) = &self.security {
            crate::curve::secure_client(&self.sock, sec)?;
        }
        self.sock
            .connect(endpoint)
            .map_err(|source| WireError::Connect {
                endpoint: endpoint.to_string(),
                source,
            })
    }

    /// The last endpoint bound, as libzmq reports it.
    pub fn last_endpoint(&self) -> Result<String, WireError> {
        match self.sock.get_last_endpoint()? {
            Ok(s) => Ok(s),
            Err(bytes) => Ok(String::from_utf8_lossy(&bytes).into_owned()),
        }
    }

    /// Wait until `ZMQ_EVENTS` contains `want`.
    async fn wait_for(&mut self, want: zmq::PollEvents) -> Result<(), WireError> {
        self.unsure.set(true);
        loop {
            if self.sock.get_events()?.contains(want) {
                return Ok(());
            }
            let mut guard = self.fd.readable().await?;
            // The fd woke us; ZMQ_EVENTS tells whether it was for us. Reading it
            // also drains the fd, so clear tokio's readiness only when nothing
            // we want is ready (clear_ready keeps a newer edge).
            if self.sock.get_events()?.contains(want) {
                return Ok(());
            }
            guard.clear_ready();
        }
    }

    /// Receive the first frame of the next message. Cancel-safe.
    ///
    /// A `DONTWAIT` receive that finds nothing has processed libzmq's
    /// pending commands before it says `EAGAIN`, and so drained the
    /// descriptor exactly as reading `ZMQ_EVENTS` does: readiness is
    /// cleared on its word, and the task sleeps only after such a receive
    /// with nothing done to the socket since (`unsure`). This is one
    /// `poll(2)` of libzmq's mailbox per empty receive; the earlier loop
    /// read `ZMQ_EVENTS` before and after every sleep as well (two more).
    /// `clear_ready` keeps an edge newer than its guard, so a command that
    /// lands after the attempt still wakes the task.
    async fn recv_first(&mut self) -> Result<zmq::Message, WireError> {
        loop {
            let ready = poll_fn(|cx| Poll::Ready(self.fd.poll_read_ready(cx))).await;
            let mut guard = match ready {
                Poll::Ready(guard) => Some(guard?),
                // The waker is registered: any later edge wakes us.
                Poll::Pending if !self.unsure.get() => Some(self.fd.readable().await?),
                Poll::Pending => None,
            };
            match self.sock.recv_msg(zmq::DONTWAIT) {
                Ok(m) => {
                    // More may be queued without a new edge.
                    self.unsure.set(true);
                    return Ok(m);
                }
                Err(zmq::Error::EAGAIN) => {
                    self.unsure.set(false);
                    if let Some(g) = guard.as_mut() {
                        g.clear_ready();
                    }
                }
                Err(zmq::Error::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Receive one whole multipart message. Cancel-safe.
    pub async fn recv_multipart(&mut self) -> Result<Vec<Vec<u8>>, WireError> {
        let first = self.recv_first().await?;
        let mut frames = vec![first.to_vec()];
        while self.sock.get_rcvmore()? {
            frames.push(self.sock.recv_msg(0)?.to_vec());
        }
        Ok(frames)
    }

    /// Receive one whole multipart message as libzmq's own messages: no
    /// copy of the frames into `Vec`s (a 1 MiB bank chunk stays in the
    /// buffer libzmq received it into). Cancel-safe.
    pub async fn recv_messages(&mut self) -> Result<Vec<zmq::Message>, WireError> {
        let first = self.recv_first().await?;
        let mut frames = vec![first];
        while self.sock.get_rcvmore()? {
            frames.push(self.sock.recv_msg(0)?);
        }
        Ok(frames)
    }

    /// The rest of a multipart message whose first frame is `first` (it is
    /// all here: libzmq delivers messages whole), with the `User-Id` of
    /// the frames that carry one (a ROUTER's identity frame does not).
    fn rest_with_user(
        &mut self,
        first: zmq::Message,
    ) -> Result<(Vec<Vec<u8>>, Option<String>), WireError> {
        self.rest_with_peer(first).map(|(f, p)| (f, p.user_id))
    }

    /// [`AsyncSocket::rest_with_user`] with the whole key and the peer's
    /// address too (from the first frame that carries them).
    fn rest_with_peer(&mut self, first: zmq::Message) -> Result<(Vec<Vec<u8>>, Peer), WireError> {
        let (frames, peer) = self.rest_messages_with_peer(first)?;
        Ok((frames.iter().map(|m| m.to_vec()).collect(), peer))
    }

    /// [`AsyncSocket::rest_with_peer`] as libzmq's messages (no copy).
    fn rest_messages_with_peer(
        &mut self,
        mut first: zmq::Message,
    ) -> Result<(Vec<zmq::Message>, Peer), WireError> {
        let mut peer = Peer::of(&mut first);
        let mut frames = vec![first];
        while self.sock.get_rcvmore()? {
            let mut m = self.sock.recv_msg(0)?;
            if peer.user_id.is_none() {
                peer = Peer::of(&mut m);
            }
            frames.push(m);
        }
        Ok((frames, peer))
    }

    /// Receive one whole multipart message with its `User-Id` (set by the
    /// ZAP handler on CURVE sockets: `<role>:<fingerprint>`; `None` on a
    /// plaintext socket). Cancel-safe.
    pub async fn recv_multipart_meta(
        &mut self,
    ) -> Result<(Vec<Vec<u8>>, Option<String>), WireError> {
        let first = self.recv_first().await?;
        self.rest_with_user(first)
    }

    /// Receive one whole multipart message with who sent it ([`Peer`]:
    /// `User-Id`, whole CURVE key, address; all `None` on a plaintext
    /// socket). Cancel-safe.
    pub async fn recv_multipart_peer(&mut self) -> Result<(Vec<Vec<u8>>, Peer), WireError> {
        let (frames, peer) = self.recv_messages_peer().await?;
        Ok((frames.iter().map(|m| m.to_vec()).collect(), peer))
    }

    /// [`AsyncSocket::recv_multipart_peer`] as libzmq's own messages (no
    /// copy of the frames: a bank's 1 MiB ingest chunk stays in the buffer
    /// libzmq received it into, all the way to the file). Cancel-safe.
    pub async fn recv_messages_peer(&mut self) -> Result<(Vec<zmq::Message>, Peer), WireError> {
        loop {
            match self.sock.recv_msg(zmq::DONTWAIT) {
                Ok(first) => return self.rest_messages_with_peer(first),
                Err(zmq::Error::EAGAIN) => self.wait_for(zmq::POLLIN).await?,
                Err(zmq::Error::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Receive one whole message, or `Ok(None)` when libzmq signalled
    /// something that is not a message (a peer's pipe that has room again,
    /// a connection coming or going). A ROUTER that keeps replies for peers
    /// whose pipes were full retries them after `None`. Cancel-safe.
    pub async fn recv_or_signal(&mut self) -> Result<Option<Vec<Vec<u8>>>, WireError> {
        Ok(self
            .recv_or_signal_meta(true)
            .await?
            .map(|(frames, _)| frames))
    }

    /// [`AsyncSocket::recv_or_signal`] with the message's `User-Id` (see
    /// [`AsyncSocket::recv_multipart_meta`]). With `report_signal` false
    /// (the caller has no replies waiting for room) a wake-up without a
    /// message is not reported: this is [`AsyncSocket::recv_multipart_meta`].
    /// Cancel-safe.
    pub async fn recv_or_signal_meta(
        &mut self,
        report_signal: bool,
    ) -> Result<Option<(Vec<Vec<u8>>, Option<String>)>, WireError> {
        if !report_signal {
            return Ok(Some(self.recv_multipart_meta().await?));
        }
        self.unsure.set(true);
        loop {
            match self.sock.recv_msg(zmq::DONTWAIT) {
                Ok(first) => return Ok(Some(self.rest_with_user(first)?)),
                Err(zmq::Error::EAGAIN) => {
                    let mut guard = self.fd.readable().await?;
                    // Reading ZMQ_EVENTS processes libzmq's commands (the
                    // "pipe writable again" among them) and drains the fd.
                    if self.sock.get_events()?.contains(zmq::POLLIN) {
                        continue;
                    }
                    guard.clear_ready();
                    return Ok(None);
                }
                Err(zmq::Error::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Send one multipart message, waiting while the socket is at its
    /// high-water mark.
    pub async fn send_multipart<I, T>(&mut self, frames: I) -> Result<(), WireError>
    where
        I: IntoIterator<Item = T>,
        T: AsRef<[u8]>,
    {
        let frames: Vec<T> = frames.into_iter().collect();
        let Some((last, head)) = frames.split_last() else {
            return Ok(());
        };
        // The first frame decides whether the message can go: once it is
        // queued, libzmq accepts the rest of the message atomically.
        let mut first = true;
        for f in head {
            self.send_one(f.as_ref(), zmq::SNDMORE, first).await?;
            first = false;
        }
        self.send_one(last.as_ref(), 0, first).await
    }

    async fn send_one(&mut self, data: &[u8], flags: i32, first: bool) -> Result<(), WireError> {
        // A send may process libzmq's commands (an "activate read" among
        // them) and so consume the descriptor's signal.
        self.unsure.set(true);
        loop {
            match self.sock.send(data, flags | zmq::DONTWAIT) {
                Ok(()) => return Ok(()),
                Err(zmq::Error::EAGAIN) if first => self.wait_for(zmq::POLLOUT).await?,
                Err(zmq::Error::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Send one message without waiting: `Ok(false)` if the socket is at its
    /// high-water mark (the message is dropped, as PUB would).
    pub fn try_send_multipart<T: AsRef<[u8]>>(&mut self, frames: &[T]) -> Result<bool, WireError> {
        self.unsure.set(true);
        let Some((last, head)) = frames.split_last() else {
            return Ok(true);
        };
        for (i, f) in head.iter().enumerate() {
            match self.sock.send(f.as_ref(), zmq::SNDMORE | zmq::DONTWAIT) {
                Ok(()) => {}
                Err(zmq::Error::EAGAIN) if i == 0 => return Ok(false),
                Err(e) => return Err(e.into()),
            }
        }
        match self.sock.send(last.as_ref(), zmq::DONTWAIT) {
            Ok(()) => Ok(true),
            Err(zmq::Error::EAGAIN) if head.is_empty() => Ok(false),
            Err(e) => Err(e.into()),
        }
    }
}

impl AsyncSocket {
    /// [`AsyncSocket::try_send_multipart`], handing the last frame's buffer
    /// to libzmq instead of copying it (`zmq_msg_init_data`: libzmq frees
    /// it once sent). Small frames are copied as before; the last frame is
    /// moved out of `frames` only once the first frame is queued (from then
    /// on libzmq takes the whole message), so on `Ok(false)` `frames` is
    /// untouched and can be retried.
    pub fn try_send_multipart_owned(&mut self, frames: &mut [Vec<u8>]) -> Result<bool, WireError> {
        const OWN_ABOVE: usize = 64 * 1024;
        let Some((last, head)) = frames.split_last_mut() else {
            return Ok(true);
        };
        if head.is_empty() || last.len() <= OWN_ABOVE {
            return self.try_send_multipart(frames);
        }
        self.unsure.set(true);
        for (i, f) in head.iter().enumerate() {
            match self.sock.send(f.as_slice(), zmq::SNDMORE | zmq::DONTWAIT) {
                Ok(()) => {}
                Err(zmq::Error::EAGAIN) if i == 0 => return Ok(false),
                Err(e) => return Err(e.into()),
            }
        }
        let msg = zmq::Message::from(std::mem::take(last));
        self.sock.send(msg, zmq::DONTWAIT)?;
        Ok(true)
    }
}

/// Whether a libzmq error means the socket can never work again: its
/// context was terminated, or it is not (any more) a socket. Everything
/// else (a full queue, an interrupted call, a peer gone) may pass.
pub fn is_permanent(e: zmq::Error) -> bool {
    matches!(
        e,
        zmq::Error::ETERM | zmq::Error::ENOTSOCK | zmq::Error::EFAULT | zmq::Error::EMTHREAD
    )
}

/// What a receive loop does after a failed receive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterError {
    /// Transient: try again (after the back-off has run).
    Retry,
    /// Permanent: end the task.
    Stop,
}

/// The one policy for receive loops: a permanent error ends the task (and is
/// reported once), a transient one is retried after a back-off that doubles
/// from 1 ms to 1 s and resets after a success, so a failing socket never
/// spins a core.
#[derive(Debug)]
pub struct RecvErrors {
    what: &'static str,
    delay: std::time::Duration,
}

impl RecvErrors {
    const FIRST: std::time::Duration = std::time::Duration::from_millis(1);
    const MAX: std::time::Duration = std::time::Duration::from_secs(1);

    /// A policy for the loop named `what` (used in log lines).
    pub fn new(what: &'static str) -> Self {
        RecvErrors {
            what,
            delay: Self::FIRST,
        }
    }

    /// A receive succeeded: the next error starts the back-off afresh.
    pub fn ok(&mut self) {
        self.delay = Self::FIRST;
    }

    /// A receive failed with `e`: report it, and either wait out the
    /// back-off (`Retry`) or tell the loop to end (`Stop`).
    pub async fn failed(&mut self, e: &WireError) -> AfterError {
        if e.is_permanent() {
            tracing::error!(task = self.what, error = %e, "socket unusable; task stops");
            return AfterError::Stop;
        }
        crate::warn_throttled!(task = self.what, error = %e, "receive failed; retrying");
        tokio::time::sleep(self.delay).await;
        self.delay = (self.delay * 2).min(Self::MAX);
        AfterError::Retry
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const WAIT: Duration = Duration::from_secs(15);

    fn pair(ctx: &zmq::Context) -> (AsyncSocket, AsyncSocket) {
        let mut router = AsyncSocket::new(ctx, zmq::ROUTER, SocketOptions::default()).unwrap();
        let ep = router.bind("tcp://127.0.0.1:*").unwrap();
        let mut dealer = AsyncSocket::new(ctx, zmq::DEALER, SocketOptions::default()).unwrap();
        dealer.connect(&ep).unwrap();
        (router, dealer)
    }

    /// A server that answers each request before it reads the next (its
    /// sends process libzmq's commands, which may consume the signal of
    /// requests already queued) still receives every pipelined request:
    /// the receive tries the socket before it sleeps after any send.
    #[tokio::test]
    async fn pipelined_requests_all_arrive_while_the_server_sends() {
        let ctx = zmq::Context::new();
        let (mut router, mut dealer) = pair(&ctx);
        const N: usize = 2000;
        let server = tokio::spawn(async move {
            for i in 0..N {
                let mut frames = router.recv_multipart().await.unwrap();
                assert_eq!(frames.len(), 2, "request {i}");
                let body = frames.pop().unwrap();
                router
                    .send_multipart([frames.remove(0), body])
                    .await
                    .unwrap();
            }
            router
        });
        for i in 0..N {
            dealer.send_multipart([format!("req {i}")]).await.unwrap();
        }
        for i in 0..N {
            let got = tokio::time::timeout(WAIT, dealer.recv_multipart())
                .await
                .expect("reply in time")
                .unwrap();
            assert_eq!(got, vec![format!("req {i}").into_bytes()]);
        }
        tokio::time::timeout(WAIT, server).await.unwrap().unwrap();
    }

    /// `try_send_multipart_owned` leaves the message whole when libzmq
    /// refuses it, and sends the same bytes as the copying send when it
    /// takes it.
    #[tokio::test]
    async fn owned_send_keeps_the_frames_when_refused_and_sends_them_intact() {
        let ctx = zmq::Context::new();
        let mut router = AsyncSocket::new(&ctx, zmq::ROUTER, SocketOptions::default()).unwrap();
        let ep = router.bind("tcp://127.0.0.1:*").unwrap();
        // Not connected yet: a DEALER without a peer has nowhere to queue.
        let mut dealer = AsyncSocket::new(&ctx, zmq::DEALER, SocketOptions::default()).unwrap();
        let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let mut frames = vec![b"head".to_vec(), big.clone()];
        assert!(!dealer.try_send_multipart_owned(&mut frames).unwrap());
        assert_eq!(frames, vec![b"head".to_vec(), big.clone()], "untouched");
        dealer.connect(&ep).unwrap();
        // Once a first message has gone (waits for the connection), the
        // pipe has room.
        tokio::time::timeout(WAIT, dealer.send_multipart([b"hi".to_vec()]))
            .await
            .expect("connected in time")
            .unwrap();
        let hi = tokio::time::timeout(WAIT, router.recv_multipart())
            .await
            .expect("hi in time")
            .unwrap();
        assert_eq!(hi[1], b"hi");
        assert!(dealer.try_send_multipart_owned(&mut frames).unwrap());
        let got = tokio::time::timeout(WAIT, router.recv_messages())
            .await
            .expect("message in time")
            .unwrap();
        assert_eq!(got.len(), 3);
        assert_eq!(&got[1][..], b"head");
        assert_eq!(&got[2][..], &big[..]);
    }
}
