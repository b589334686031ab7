//! Device side: route request frames to handlers, without an allocator.
//!
//! ```
//! use firmware_proto::dispatch::{Device, Route, Serve};
//! use firmware_proto::{Endpoint, EndpointError};
//!
//! struct Ping;
//! impl Endpoint for Ping {
//!     type Request = u8;
//!     type Response = u8;
//!     const NAME: &'static str = "ping";
//!     const SCHEMA: &'static str = "u8->u8";
//! }
//! struct Ctx;
//! impl Serve<Ping> for Ctx {
//!     fn serve(&mut self, n: u8) -> Result<u8, EndpointError> {
//!         n.checked_add(1).ok_or(EndpointError::OutOfRange)
//!     }
//! }
//! static ROUTES: [Route<Ctx>; 1] = [Route::of::<Ping>()];
//! let mut device = Device::<Ctx>::new(&ROUTES);
//! let mut ctx = Ctx;
//! let mut replies = 0;
//! device.receive(&mut ctx, &[0x00], |_frame| replies += 1);
//! assert_eq!(replies, 0);
//! ```

use crate::error::EndpointError;
use crate::frame::{
    encode_frame, BadFrame, EncodeError, Feed, Frame, FrameReader, Header, Kind, MAX_FRAME,
};
use crate::key::{Endpoint, Key};

/// A context type that serves endpoint `E`.
pub trait Serve<E: Endpoint> {
    /// Handle one request.
    fn serve(&mut self, req: E::Request) -> Result<E::Response, EndpointError>;
}

type CallFn<C> = fn(&mut C, &Frame<'_>, &mut [u8]) -> Result<usize, EncodeError>;

/// One entry of a routing table: an endpoint key and its monomorphised handler.
pub struct Route<C> {
    /// Endpoint key.
    pub key: Key,
    /// Endpoint name.
    pub name: &'static str,
    call: CallFn<C>,
}

impl<C> Route<C> {
    /// The route for endpoint `E`, served by `C`'s `Serve<E>` impl.
    pub const fn of<E: Endpoint>() -> Self
    where
        C: Serve<E>,
    {
        Route {
            key: E::KEY,
            name: E::NAME,
            call: call_endpoint::<C, E>,
        }
    }
}

fn call_endpoint<C: Serve<E>, E: Endpoint>(
    ctx: &mut C,
    frame: &Frame<'_>,
    out: &mut [u8],
) -> Result<usize, EncodeError> {
    let hdr = frame.header;
    let result = match frame.decode_body::<E::Request>() {
        Ok(req) => ctx.serve(req),
        Err(_) => Err(EndpointError::BadRequest),
    };
    match result {
        Ok(resp) => {
            let h = Header::new(Kind::Response, hdr.seq, hdr.key);
            match encode_frame(&h, &resp, out) {
                Ok(bytes) => Ok(bytes.len()),
                Err(_) => error_frame(hdr.seq, hdr.key, EndpointError::ResponseTooLarge, out),
            }
        }
        Err(e) => error_frame(hdr.seq, hdr.key, e, out),
    }
}

/// Encode an `Error` frame answering `seq`/`key`; returns its length.
pub fn error_frame(
    seq: u32,
    key: Key,
    err: EndpointError,
    out: &mut [u8],
) -> Result<usize, EncodeError> {
    let h = Header::new(Kind::Error, seq, key);
    Ok(encode_frame(&h, &err, out)?.len())
}

/// Maps endpoint keys to handlers.
pub struct Dispatcher<'a, C> {
    routes: &'a [Route<C>],
}

impl<'a, C> Dispatcher<'a, C> {
    /// A dispatcher over a routing table (usually a `static`).
    pub const fn new(routes: &'a [Route<C>]) -> Self {
        Dispatcher { routes }
    }

    /// The routing table.
    pub fn routes(&self) -> &'a [Route<C>] {
        self.routes
    }

    /// Handle one frame; writes the answer into `out` and returns its length.
    ///
    /// Only `Request` frames are answered: a `Response` or an `Error` for
    /// every request, `UnknownEndpoint` for unknown keys. Other kinds yield `None`.
    pub fn handle(&self, ctx: &mut C, frame: &Frame<'_>, out: &mut [u8]) -> Option<usize> {
        if frame.header.kind != Kind::Request {
            return None;
        }
        let written = match self.routes.iter().find(|r| r.key == frame.header.key) {
            Some(route) => (route.call)(ctx, frame, out),
            None => error_frame(
                frame.header.seq,
                frame.header.key,
                EndpointError::UnknownEndpoint,
                out,
            ),
        };
        written.ok()
    }

    /// Answer a rejected frame where possible: another protocol version gets
    /// `UnsupportedVersion` (seq from the stable header prefix, key zero).
    /// Line noise (CRC, COBS) is not answered: the sender times out.
    pub fn handle_bad(&self, reason: BadFrame, out: &mut [u8]) -> Option<usize> {
        match reason {
            BadFrame::Version { seq: Some(seq), .. } => error_frame(
                seq,
                Key::ZERO,
                EndpointError::UnsupportedVersion {
                    supported: crate::PROTOCOL_VERSION,
                },
                out,
            )
            .ok(),
            _ => None,
        }
    }
}

/// Link counters kept by a [`Device`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// Good frames received.
    pub frames: u32,
    /// Frames rejected (COBS, CRC, version, header).
    pub bad_frames: u32,
    /// Oversize runs dropped.
    pub too_large: u32,
}

/// A device endpoint: frame reader + dispatcher + output buffer. No allocation.
pub struct Device<'a, C, const N: usize = MAX_FRAME> {
    reader: FrameReader<N>,
    dispatcher: Dispatcher<'a, C>,
    out: [u8; N],
    stats: LinkStats,
}

impl<'a, C, const N: usize> Device<'a, C, N> {
    /// A device serving `routes`.
    pub const fn new(routes: &'a [Route<C>]) -> Self {
        Device {
            reader: FrameReader::new(),
            dispatcher: Dispatcher::new(routes),
            out: [0; N],
            stats: LinkStats {
                frames: 0,
                bad_frames: 0,
                too_large: 0,
            },
        }
    }

    /// Link counters.
    pub fn stats(&self) -> LinkStats {
        self.stats
    }

    /// Feed received bytes; `emit` is called with each encoded answer frame.
    pub fn receive(&mut self, ctx: &mut C, input: &[u8], mut emit: impl FnMut(&[u8])) {
        let mut window = input;
        loop {
            let (answer, remaining) = match self.reader.feed(window) {
                Feed::NeedMore => return,
                Feed::FrameTooLarge { remaining } => {
                    self.stats.too_large = self.stats.too_large.wrapping_add(1);
                    (None, remaining)
                }
                Feed::BadFrame { reason, remaining } => {
                    self.stats.bad_frames = self.stats.bad_frames.wrapping_add(1);
                    (self.dispatcher.handle_bad(reason, &mut self.out), remaining)
                }
                Feed::Frame { frame, remaining } => {
                    self.stats.frames = self.stats.frames.wrapping_add(1);
                    (
                        self.dispatcher.handle(ctx, &frame, &mut self.out),
                        remaining,
                    )
                }
            };
            if let Some(bytes) = answer.and_then(|n| self.out.get(..n)) {
                emit(bytes);
            }
            window = remaining;
        }
    }

    /// Encode an event frame for topic key `key`; `emit` gets the bytes.
    pub fn emit_event<T: serde::Serialize>(
        &mut self,
        key: Key,
        seq: u32,
        body: &T,
        mut emit: impl FnMut(&[u8]),
    ) -> Result<(), EncodeError> {
        let h = Header::new(Kind::Event, seq, key);
        emit(encode_frame(&h, body, &mut self.out)?);
        Ok(())
    }
}
