//! Host side (feature `std`): a tokio client over any async byte stream.
//!
//! One reader task per link feeds a [`FrameReader`], hands responses to the
//! waiting call by request id, and publishes events on a broadcast channel.
//! Garbage on the line costs the frames it hits and nothing else: the reader
//! resynchronises at the next 0x00 and later calls work.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, WriteHalf};
use tokio::sync::{broadcast, oneshot};
use tokio::task::JoinHandle;

use crate::error::{DeviceErrorKind, EndpointError};
use crate::frame::{
    decode_exact, encode_frame, EncodeError, Feed, Frame, FrameReader, Header, Kind, MAX_FRAME,
};
use crate::key::{Endpoint, Key, Topic};

/// Client settings.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// Default per-request timeout.
    pub timeout: Duration,
    /// Events buffered per subscriber before the slowest one lags.
    pub event_capacity: usize,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            timeout: Duration::from_secs(1),
            event_capacity: 64,
        }
    }
}

/// Why a call failed. "The link failed" and "the device said no" are apart.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// No answer within the timeout (device busy, gone quiet, or the frame was hit by noise).
    #[error("device did not answer within {0:?}")]
    Timeout(Duration),
    /// Writing to the link failed.
    #[error("link write failed")]
    Link(#[source] std::io::Error),
    /// The link's reader has stopped (end of stream or read error).
    #[error("link closed")]
    Closed,
    /// The device answered with an error.
    #[error("device error: {0}")]
    Device(#[from] EndpointError),
    /// The device answered with a body that does not decode as the response type.
    #[error("bad response body for `{endpoint}`")]
    BadResponse {
        /// Endpoint called.
        endpoint: &'static str,
        /// Decode error.
        #[source]
        source: postcard::Error,
    },
    /// The answer carries another endpoint key than the request.
    #[error("answer for another endpoint key")]
    KeyMismatch,
    /// The request did not encode into a frame.
    #[error("request does not fit a frame")]
    Encode(#[from] EncodeError),
}

impl DeviceError {
    /// What to do about this error.
    pub fn kind(&self) -> DeviceErrorKind {
        match self {
            DeviceError::Timeout(_) => DeviceErrorKind::Retry,
            DeviceError::Link(_) | DeviceError::Closed => DeviceErrorKind::Reconnect,
            DeviceError::Device(e) => e.kind(),
            DeviceError::BadResponse { .. } | DeviceError::KeyMismatch | DeviceError::Encode(_) => {
                DeviceErrorKind::Report
            }
        }
    }
}

/// An event frame from the device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceEvent {
    /// Topic key.
    pub key: Key,
    /// Event counter.
    pub seq: u32,
    /// Encoded body.
    pub body: Vec<u8>,
}

impl DeviceEvent {
    /// Decode as topic `T`; `None` if the event belongs to another topic.
    pub fn decode<T: Topic>(&self) -> Option<Result<T::Message, postcard::Error>> {
        (self.key == T::KEY).then(|| decode_exact(&self.body))
    }
}

/// Link counters kept by the client.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClientStats {
    /// Good frames received.
    pub frames: u64,
    /// Frames rejected (COBS, CRC, version, header).
    pub bad_frames: u64,
    /// Oversize runs dropped.
    pub too_large: u64,
    /// Answers for no waiting call (late after a timeout, or duplicated).
    pub stale: u64,
}

#[derive(Default)]
struct Counters {
    frames: AtomicU64,
    bad_frames: AtomicU64,
    too_large: AtomicU64,
    stale: AtomicU64,
}

enum Answer {
    Ok(Vec<u8>),
    Err(EndpointError),
}

struct Pending {
    key: Key,
    tx: oneshot::Sender<(Key, Answer)>,
}

#[derive(Default)]
struct Shared {
    pending: Mutex<HashMap<u32, Pending>>,
    counters: Counters,
}

impl Shared {
    fn take(&self, seq: u32) -> Option<Pending> {
        self.pending.lock().ok().and_then(|mut p| p.remove(&seq))
    }
}

/// Removes a pending entry when a call ends in any way (also when cancelled).
struct PendingGuard<'a> {
    shared: &'a Shared,
    seq: u32,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        let _ = self.shared.take(self.seq);
    }
}

type BoxWriter = Box<dyn AsyncWrite + Unpin + Send>;

/// A client for one device link.
pub struct DeviceClient {
    writer: tokio::sync::Mutex<BoxWriter>,
    shared: Arc<Shared>,
    events: broadcast::Sender<DeviceEvent>,
    next_seq: AtomicU32,
    config: ClientConfig,
    reader: JoinHandle<()>,
}

impl Drop for DeviceClient {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl DeviceClient {
    /// Start a client over `stream` (spawns the reader task; needs a tokio runtime).
    pub fn new<S>(stream: S, config: ClientConfig) -> Self
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (read, write): (_, WriteHalf<S>) = tokio::io::split(stream);
        let shared = Arc::new(Shared::default());
        let (events, _) = broadcast::channel(config.event_capacity.max(1));
        let reader = tokio::spawn(read_loop(read, shared.clone(), events.clone()));
        DeviceClient {
            writer: tokio::sync::Mutex::new(Box::new(write)),
            shared,
            events,
            next_seq: AtomicU32::new(1),
            config,
            reader,
        }
    }

    /// Subscribe to device events (telemetry).
    pub fn subscribe(&self) -> broadcast::Receiver<DeviceEvent> {
        self.events.subscribe()
    }

    /// Link counters.
    pub fn stats(&self) -> ClientStats {
        let c = &self.shared.counters;
        ClientStats {
            frames: c.frames.load(Ordering::Relaxed),
            bad_frames: c.bad_frames.load(Ordering::Relaxed),
            too_large: c.too_large.load(Ordering::Relaxed),
            stale: c.stale.load(Ordering::Relaxed),
        }
    }

    /// True while the reader task runs.
    pub fn is_open(&self) -> bool {
        !self.reader.is_finished()
    }

    /// Call endpoint `E` with the default timeout.
    pub async fn call<E: Endpoint>(&self, req: &E::Request) -> Result<E::Response, DeviceError> {
        self.call_with_timeout::<E>(req, self.config.timeout).await
    }

    /// Call endpoint `E`; the timeout covers writing the request and the answer.
    pub async fn call_with_timeout<E: Endpoint>(
        &self,
        req: &E::Request,
        timeout: Duration,
    ) -> Result<E::Response, DeviceError> {
        let body = self.request(E::KEY, req, timeout).await?;
        decode_exact(&body).map_err(|source| DeviceError::BadResponse {
            endpoint: E::NAME,
            source,
        })
    }

    /// Call by key with an already-encoded body; returns the encoded answer body.
    pub async fn call_raw(
        &self,
        key: Key,
        body: &[u8],
        timeout: Duration,
    ) -> Result<Vec<u8>, DeviceError> {
        self.request(key, &RawBody(body), timeout).await
    }

    async fn request<T: serde::Serialize + ?Sized>(
        &self,
        key: Key,
        body: &T,
        timeout: Duration,
    ) -> Result<Vec<u8>, DeviceError> {
        if !self.is_open() {
            return Err(DeviceError::Closed);
        }
        let seq = self.alloc_seq();
        // A leading 0x00 ends whatever noise the device may be holding, so this
        // request is not glued to it (receivers skip empty frames).
        let mut buf = [0u8; MAX_FRAME + 1];
        let len = match buf.get_mut(1..) {
            Some(tail) => encode_frame(&Header::new(Kind::Request, seq, key), body, tail)?.len(),
            None => return Err(DeviceError::Encode(EncodeError::BufferFull)),
        };
        let (tx, rx) = oneshot::channel();
        if let Ok(mut p) = self.shared.pending.lock() {
            p.insert(seq, Pending { key, tx });
        }
        let _guard = PendingGuard {
            shared: &self.shared,
            seq,
        };
        let exchange = async {
            {
                let mut w = self.writer.lock().await;
                let frame = buf.get(..len + 1).unwrap_or(&[]);
                w.write_all(frame).await.map_err(DeviceError::Link)?;
                w.flush().await.map_err(DeviceError::Link)?;
            }
            rx.await.map_err(|_| DeviceError::Closed)
        };
        let (answer_key, answer) = tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| DeviceError::Timeout(timeout))??;
        if answer_key != key {
            return Err(DeviceError::KeyMismatch);
        }
        match answer {
            Answer::Ok(body) => Ok(body),
            Answer::Err(e) => Err(DeviceError::Device(e)),
        }
    }

    fn alloc_seq(&self) -> u32 {
        loop {
            let s = self.next_seq.fetch_add(1, Ordering::Relaxed);
            if s != 0 {
                return s;
            }
        }
    }
}

/// Serialises as its bytes with no length prefix (a tuple of u8).
struct RawBody<'a>(&'a [u8]);

impl serde::Serialize for RawBody<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeTuple;
        let mut t = s.serialize_tuple(self.0.len())?;
        for b in self.0 {
            t.serialize_element(b)?;
        }
        t.end()
    }
}

async fn read_loop<R: AsyncRead + Unpin>(
    mut read: R,
    shared: Arc<Shared>,
    events: broadcast::Sender<DeviceEvent>,
) {
    let mut reader: FrameReader<MAX_FRAME> = FrameReader::new();
    let mut buf = [0u8; 1024];
    loop {
        let n = match read.read(&mut buf).await {
            Ok(0) => {
                tracing::debug!("device link: end of stream");
                break;
            }
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, "device link: read failed");
                break;
            }
        };
        let mut window = buf.get(..n).unwrap_or(&[]);
        loop {
            let c = &shared.counters;
            window = match reader.feed(window) {
                Feed::NeedMore => break,
                Feed::FrameTooLarge { remaining } => {
                    c.too_large.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!("device link: oversize frame dropped");
                    remaining
                }
                Feed::BadFrame { reason, remaining } => {
                    c.bad_frames.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(%reason, "device link: bad frame dropped");
                    remaining
                }
                Feed::Frame { frame, remaining } => {
                    c.frames.fetch_add(1, Ordering::Relaxed);
                    on_frame(&shared, &events, &frame);
                    remaining
                }
            };
        }
    }
    // Dropping the pending senders wakes every waiting call with `Closed`.
    if let Ok(mut p) = shared.pending.lock() {
        p.clear();
    }
}

fn on_frame(shared: &Shared, events: &broadcast::Sender<DeviceEvent>, frame: &Frame<'_>) {
    let h = frame.header;
    let answer = match h.kind {
        Kind::Event => {
            // No subscriber is not an error.
            let _ = events.send(DeviceEvent {
                key: h.key,
                seq: h.seq,
                body: frame.body.to_vec(),
            });
            return;
        }
        Kind::Request => {
            tracing::debug!(seq = h.seq, "device link: request from device ignored");
            return;
        }
        Kind::Response => Answer::Ok(frame.body.to_vec()),
        Kind::Error => match frame.decode_body::<EndpointError>() {
            Ok(e) => Answer::Err(e),
            Err(e) => {
                shared.counters.bad_frames.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(error = %e, "device link: undecodable error body");
                return;
            }
        },
    };
    match shared.take(h.seq) {
        Some(p) => {
            // A key mismatch is reported to the caller; seq 0 answers carry Key::ZERO.
            let key = if h.key == Key::ZERO { p.key } else { h.key };
            let _ = p.tx.send((key, answer));
        }
        None => {
            shared.counters.stale.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(seq = h.seq, "device link: answer for no waiting call");
        }
    }
}
