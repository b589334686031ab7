//! USBTMC (USB Test & Measurement Class 1.0) with the USB488 subclass,
//! written from the USB-IF specifications.
//!
//! A USBTMC interface (class 0xFE, subclass 0x03) has a bulk-OUT and a
//! bulk-IN endpoint (and, for USB488, usually an interrupt-IN one).
//! Every bulk-OUT transfer starts with a 12-byte header:
//!
//! | byte | DEV_DEP_MSG_OUT (1)            | REQUEST_DEV_DEP_MSG_IN (2)        |
//! |------|--------------------------------|-----------------------------------|
//! | 0    | MsgID                          | MsgID                             |
//! | 1, 2 | bTag (1..=255), !bTag          | bTag, !bTag                       |
//! | 3    | 0                              | 0                                 |
//! | 4..8 | TransferSize (LE, data bytes)  | TransferSize (most bytes wanted)  |
//! | 8    | bit 0: EOM                     | bit 1: TermChar enabled           |
//! | 9    | 0                              | TermChar                          |
//! | 10,11| 0                              | 0                                 |
//!
//! A DEV_DEP_MSG_OUT is followed by its data and 0..=3 zero bytes so the
//! transfer is a multiple of 4 long. The device answers a
//! REQUEST_DEV_DEP_MSG_IN with one bulk-IN transfer: a DEV_DEP_MSG_IN
//! header (MsgID 2, the request's bTag, TransferSize, bit 0 EOM) and at
//! most TransferSize data bytes, in as many max-packet-size packets as it
//! takes, ended by a short (or zero-length) packet. A reply without EOM
//! continues in the answer to the next request.
//!
//! Class requests on the default control pipe: INITIATE_CLEAR /
//! CHECK_CLEAR_STATUS (device clear), INITIATE_ABORT_BULK_OUT / _IN and
//! their CHECK_ status requests (used after a timeout), GET_CAPABILITIES,
//! and USB488's READ_STATUS_BYTE.
//!
//! [`UsbtmcLink`] holds the framing and the state machine; it talks
//! through [`UsbtmcPipes`], implemented by [`NusbPipes`] (real hardware
//! through `nusb`) and by the simulator's endpoint
//! ([`crate::sim::usbtmc::SimUsbtmc`]). [`DevUsbtmc`] is the fallback
//! through the Linux `usbtmc` kernel driver's `/dev/usbtmcN`, where the
//! kernel does the framing.

use std::fmt;
use std::io;
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

use crate::DriverError;

/// The USB interface class of test and measurement devices.
pub const CLASS_APPLICATION: u8 = 0xFE;
/// The USBTMC subclass.
pub const SUBCLASS_USBTMC: u8 = 0x03;
/// Interface protocol: plain USBTMC.
pub const PROTOCOL_USBTMC: u8 = 0x00;
/// Interface protocol: USB488.
pub const PROTOCOL_USB488: u8 = 0x01;

/// Length of every bulk header.
pub const HEADER_LEN: usize = 12;

/// Bulk MsgIDs.
pub mod msg {
    /// DEV_DEP_MSG_OUT (host -> device data) and DEV_DEP_MSG_IN's reply id.
    pub const DEV_DEP_MSG_OUT: u8 = 1;
    /// REQUEST_DEV_DEP_MSG_IN (host asks for data).
    pub const REQUEST_DEV_DEP_MSG_IN: u8 = 2;
    /// DEV_DEP_MSG_IN (device -> host data, the answer to a request).
    pub const DEV_DEP_MSG_IN: u8 = 2;
    /// USB488 TRIGGER.
    pub const TRIGGER: u8 = 128;
}

/// Class-specific control requests (bRequest).
pub mod req {
    /// INITIATE_ABORT_BULK_OUT (endpoint recipient, wValue = bTag).
    pub const INITIATE_ABORT_BULK_OUT: u8 = 1;
    /// CHECK_ABORT_BULK_OUT_STATUS.
    pub const CHECK_ABORT_BULK_OUT_STATUS: u8 = 2;
    /// INITIATE_ABORT_BULK_IN (endpoint recipient, wValue = bTag).
    pub const INITIATE_ABORT_BULK_IN: u8 = 3;
    /// CHECK_ABORT_BULK_IN_STATUS.
    pub const CHECK_ABORT_BULK_IN_STATUS: u8 = 4;
    /// INITIATE_CLEAR (interface recipient).
    pub const INITIATE_CLEAR: u8 = 5;
    /// CHECK_CLEAR_STATUS.
    pub const CHECK_CLEAR_STATUS: u8 = 6;
    /// GET_CAPABILITIES.
    pub const GET_CAPABILITIES: u8 = 7;
    /// INDICATOR_PULSE.
    pub const INDICATOR_PULSE: u8 = 64;
    /// USB488 READ_STATUS_BYTE (interface recipient, wValue = bTag 2..=127).
    pub const READ_STATUS_BYTE: u8 = 128;
}

/// USBTMC_status values in control responses.
pub mod status {
    /// STATUS_SUCCESS.
    pub const SUCCESS: u8 = 0x01;
    /// STATUS_PENDING.
    pub const PENDING: u8 = 0x02;
    /// STATUS_FAILED.
    pub const FAILED: u8 = 0x80;
    /// STATUS_TRANSFER_NOT_IN_PROGRESS.
    pub const TRANSFER_NOT_IN_PROGRESS: u8 = 0x81;
    /// STATUS_SPLIT_NOT_IN_PROGRESS.
    pub const SPLIT_NOT_IN_PROGRESS: u8 = 0x82;
    /// STATUS_SPLIT_IN_PROGRESS.
    pub const SPLIT_IN_PROGRESS: u8 = 0x83;
}

/// The next bTag after `tag`: 1..=255, wrapping from 255 to 1 (0 is never used).
pub fn next_tag(tag: u8) -> u8 {
    if tag == u8::MAX {
        1
    } else {
        tag + 1
    }
}

/// Zero bytes that bring `len` to a multiple of 4.
pub fn padding(len: usize) -> usize {
    (4 - len % 4) % 4
}

/// A DEV_DEP_MSG_OUT transfer: header, `data`, alignment.
pub fn dev_dep_msg_out(tag: u8, data: &[u8], eom: bool) -> Vec<u8> {
    let size = u32::try_from(data.len()).unwrap_or(u32::MAX);
    let mut out = Vec::with_capacity(HEADER_LEN + data.len() + 3);
    out.extend_from_slice(&[msg::DEV_DEP_MSG_OUT, tag, !tag, 0]);
    out.extend_from_slice(&size.to_le_bytes());
    out.extend_from_slice(&[u8::from(eom), 0, 0, 0]);
    out.extend_from_slice(data);
    out.resize(out.len() + padding(data.len()), 0);
    out
}

/// A REQUEST_DEV_DEP_MSG_IN header asking for at most `max` bytes, ending
/// early at `term_char` when given.
pub fn request_dev_dep_msg_in(tag: u8, max: u32, term_char: Option<u8>) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[0] = msg::REQUEST_DEV_DEP_MSG_IN;
    h[1] = tag;
    h[2] = !tag;
    h[4..8].copy_from_slice(&max.to_le_bytes());
    if let Some(c) = term_char {
        h[8] = 0b10;
        h[9] = c;
    }
    h
}

/// A USB488 TRIGGER header.
pub fn trigger(tag: u8) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[0] = msg::TRIGGER;
    h[1] = tag;
    h[2] = !tag;
    h
}

/// A decoded bulk header (either direction).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BulkHeader {
    /// MsgID.
    pub msg_id: u8,
    /// bTag.
    pub tag: u8,
    /// TransferSize.
    pub transfer_size: u32,
    /// bmTransferAttributes.
    pub attributes: u8,
    /// Byte 9 (TermChar in a REQUEST_DEV_DEP_MSG_IN).
    pub term_char: u8,
}

/// Why a bulk header is not one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderError {
    /// Fewer than 12 bytes.
    Short,
    /// bTagInverse is not the inverse of bTag, or bTag is 0.
    BadTag,
}

impl BulkHeader {
    /// Decode the first 12 bytes of `b`.
    pub fn decode(b: &[u8]) -> Result<BulkHeader, HeaderError> {
        let h: &[u8; HEADER_LEN] = b
            .get(..HEADER_LEN)
            .and_then(|s| s.try_into().ok())
            .ok_or(HeaderError::Short)?;
        if h[1] == 0 || h[2] != !h[1] {
            return Err(HeaderError::BadTag);
        }
        Ok(BulkHeader {
            msg_id: h[0],
            tag: h[1],
            transfer_size: u32::from_le_bytes([h[4], h[5], h[6], h[7]]),
            attributes: h[8],
            term_char: h[9],
        })
    }

    /// Whether the EOM bit is set.
    pub fn eom(&self) -> bool {
        self.attributes & 1 != 0
    }
}

/// A DEV_DEP_MSG_IN transfer (device side): header with `tag`, `data`, alignment.
pub fn dev_dep_msg_in(tag: u8, data: &[u8], eom: bool) -> Vec<u8> {
    let mut out = dev_dep_msg_out(tag, data, eom);
    if let Some(b) = out.first_mut() {
        *b = msg::DEV_DEP_MSG_IN;
    }
    out
}

/// What a USBTMC device can do (GET_CAPABILITIES).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Capabilities {
    /// bcdUSBTMC.
    pub bcd_usbtmc: u16,
    /// The device honours TermChar in REQUEST_DEV_DEP_MSG_IN.
    pub term_char: bool,
    /// Talk-only / listen-only / indicator-pulse bits (USBTMC interface capabilities).
    pub interface_caps: u8,
    /// USB488: bcdUSB488 (0 for a plain USBTMC device).
    pub bcd_usb488: u16,
    /// USB488 interface capabilities (bit 2: 488.2, bit 1: REN control, bit 0: TRIGGER).
    pub usb488_interface: u8,
    /// USB488 device capabilities (bit 3: SCPI, bit 2: SR1, bit 1: RL1, bit 0: DT1).
    pub usb488_device: u8,
}

impl Capabilities {
    /// Decode the 0x18-byte GET_CAPABILITIES response (status first).
    pub fn decode(b: &[u8]) -> Option<Capabilities> {
        if b.len() < 0x18 || b.first() != Some(&status::SUCCESS) {
            return None;
        }
        Some(Capabilities {
            bcd_usbtmc: u16::from_le_bytes([b[2], b[3]]),
            interface_caps: b[4],
            term_char: b[5] & 1 != 0,
            bcd_usb488: u16::from_le_bytes([b[12], b[13]]),
            usb488_interface: b[14],
            usb488_device: b[15],
        })
    }

    /// The 0x18-byte response a device sends (status SUCCESS).
    pub fn encode(&self) -> [u8; 0x18] {
        let mut b = [0u8; 0x18];
        b[0] = status::SUCCESS;
        b[2..4].copy_from_slice(&self.bcd_usbtmc.to_le_bytes());
        b[4] = self.interface_caps;
        b[5] = u8::from(self.term_char);
        b[12..14].copy_from_slice(&self.bcd_usb488.to_le_bytes());
        b[14] = self.usb488_interface;
        b[15] = self.usb488_device;
        b
    }
}

/// Whom a class control request addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recipient {
    /// The USBTMC interface (wIndex = interface number).
    Interface,
    /// The bulk-OUT endpoint (wIndex = its address).
    BulkOut,
    /// The bulk-IN endpoint (wIndex = its address).
    BulkIn,
}

/// Which bulk endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BulkEndpoint {
    /// Bulk-OUT.
    Out,
    /// Bulk-IN.
    In,
}

/// How a pipe operation failed.
#[derive(Debug)]
pub enum PipeError {
    /// Nothing completed within the time allowed (the transfer was cancelled).
    TimedOut,
    /// The endpoint (or control request) stalled.
    Stall,
    /// The device is gone.
    Disconnected(io::Error),
    /// Anything else the host controller or OS reported.
    Other(io::Error),
}

impl fmt::Display for PipeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PipeError::TimedOut => write!(f, "timed out"),
            PipeError::Stall => write!(f, "endpoint stalled"),
            PipeError::Disconnected(e) => write!(f, "device disconnected: {e}"),
            PipeError::Other(e) => write!(f, "{e}"),
        }
    }
}

/// The pipes of one USBTMC interface: what [`UsbtmcLink`] needs from a
/// USB stack (or from a simulated device).
#[async_trait]
pub trait UsbtmcPipes: Send + Sync + fmt::Debug {
    /// The bulk-IN endpoint's maximum packet size.
    fn max_packet_size(&self) -> usize;
    /// Whether the interface has an interrupt-IN endpoint (USB488 status
    /// bytes arrive there).
    fn has_interrupt_in(&self) -> bool {
        false
    }
    /// Send one bulk-OUT transfer.
    async fn bulk_out(&mut self, data: &[u8], timeout: Duration) -> Result<(), PipeError>;
    /// Receive one bulk-IN transfer's worth of at most `len` bytes (`len`
    /// a multiple of the maximum packet size): it ends at a short packet
    /// or when `len` bytes have come. Zero bytes is a zero-length packet.
    async fn bulk_in(&mut self, len: usize, timeout: Duration) -> Result<Vec<u8>, PipeError>;
    /// A class IN control request to `recipient` with `value`, reading at
    /// most `length` bytes.
    async fn control_in(
        &mut self,
        recipient: Recipient,
        request: u8,
        value: u16,
        length: u16,
        timeout: Duration,
    ) -> Result<Vec<u8>, PipeError>;
    /// CLEAR_FEATURE(ENDPOINT_HALT) on a bulk endpoint.
    async fn clear_halt(&mut self, ep: BulkEndpoint, timeout: Duration) -> Result<(), PipeError>;
    /// Read one interrupt-IN notification.
    async fn interrupt_in(&mut self, timeout: Duration) -> Result<Vec<u8>, PipeError> {
        let _ = timeout;
        Err(PipeError::Other(io::Error::new(
            io::ErrorKind::Unsupported,
            "no interrupt-IN endpoint",
        )))
    }
}

/// Largest TransferSize asked for in one REQUEST_DEV_DEP_MSG_IN.
pub const IN_CHUNK: u32 = 1 << 20;
/// Largest DEV_DEP_MSG_OUT data per transfer.
pub const OUT_CHUNK: usize = 1 << 20;

/// A USBTMC session over some [`UsbtmcPipes`].
#[derive(Debug)]
pub struct UsbtmcLink {
    pipes: Box<dyn UsbtmcPipes>,
    context: String,
    /// The next bTag to use.
    tag: u8,
    /// The next USB488 READ_STATUS_BYTE bTag (2..=127).
    stb_tag: u8,
    /// The bTag of the last REQUEST_DEV_DEP_MSG_IN (for INITIATE_ABORT_BULK_IN).
    last_request: Option<u8>,
    /// The last transfer failed oddly: clear the device before the next one.
    needs_clear: bool,
    /// The TransferSize asked for in each request (capped by the reader).
    in_chunk: u32,
    /// The bulk-IN read size (a multiple of the max packet size).
    read_len: usize,
    caps: Capabilities,
    term_char: Option<u8>,
}

impl UsbtmcLink {
    /// A session over `pipes`, named `context` in errors. Asks
    /// GET_CAPABILITIES and clears the device (INITIATE_CLEAR), so a
    /// reply left from an earlier session is not taken for ours.
    pub async fn open(
        pipes: Box<dyn UsbtmcPipes>,
        context: impl Into<String>,
        timeout: Duration,
    ) -> Result<UsbtmcLink, DriverError> {
        let mps = pipes.max_packet_size().max(1);
        let mut l = UsbtmcLink {
            pipes,
            context: context.into(),
            tag: 1,
            stb_tag: 2,
            last_request: None,
            needs_clear: false,
            in_chunk: IN_CHUNK,
            read_len: mps * (16384 / mps).max(1),
            caps: Capabilities::default(),
            term_char: None,
        };
        let deadline = Instant::now() + timeout;
        let left = deadline.saturating_duration_since(Instant::now());
        match l
            .pipes
            .control_in(Recipient::Interface, req::GET_CAPABILITIES, 0, 0x18, left)
            .await
        {
            Ok(b) => l.caps = Capabilities::decode(&b).unwrap_or_default(),
            Err(PipeError::Stall) => {}
            Err(e) => return Err(l.pipe_error(e, timeout)),
        }
        l.clear_until(deadline, timeout).await?;
        Ok(l)
    }

    /// What GET_CAPABILITIES said.
    pub fn capabilities(&self) -> Capabilities {
        self.caps
    }

    /// The bTag the next bulk-OUT message will carry.
    pub fn next_bulk_tag(&self) -> u8 {
        self.tag
    }

    /// Start bTags at `tag` (1..=255; tests use it to cross the wrap).
    pub fn set_next_tag(&mut self, tag: u8) {
        self.tag = tag.max(1);
    }

    /// Ask for at most `size` bytes per REQUEST_DEV_DEP_MSG_IN (>= 1).
    pub fn set_transfer_size(&mut self, size: u32) {
        self.in_chunk = size.max(1);
    }

    /// Read the bulk-IN pipe `len` bytes at a time (rounded to a multiple
    /// of the max packet size, at least one packet).
    pub fn set_read_len(&mut self, len: usize) {
        let mps = self.pipes.max_packet_size().max(1);
        self.read_len = mps * (len / mps).max(1);
    }

    /// Ask the device to end replies at `term_char` (only if it says it can).
    pub fn set_term_char(&mut self, term_char: Option<u8>) {
        self.term_char = term_char.filter(|_| self.caps.term_char);
    }

    /// Whether the next operation clears the device first.
    pub fn needs_clear(&self) -> bool {
        self.needs_clear
    }

    fn take_tag(&mut self) -> u8 {
        let t = self.tag;
        self.tag = next_tag(t);
        t
    }

    fn pipe_error(&mut self, e: PipeError, timeout: Duration) -> DriverError {
        match e {
            PipeError::TimedOut => DriverError::Timeout(timeout),
            PipeError::Disconnected(e) => DriverError::link(self.context.clone(), e),
            PipeError::Stall => {
                self.needs_clear = true;
                DriverError::Instrument(format!("{}: endpoint stalled", self.context))
            }
            PipeError::Other(e) => {
                self.needs_clear = true;
                DriverError::link(self.context.clone(), e)
            }
        }
    }

    fn protocol(&mut self, why: String) -> DriverError {
        self.needs_clear = true;
        DriverError::Instrument(format!("{}: {why}", self.context))
    }

    async fn recover(&mut self, deadline: Instant, timeout: Duration) -> Result<(), DriverError> {
        if self.needs_clear {
            tracing::debug!(context = %self.context, "clearing the device after a failed transfer");
            self.clear_until(deadline, timeout).await?;
        }
        Ok(())
    }

    /// Send one message: DEV_DEP_MSG_OUT transfers of at most
    /// [`OUT_CHUNK`] bytes, EOM on the last. A timeout aborts the
    /// transfer (INITIATE_ABORT_BULK_OUT) and is [`DriverError::Timeout`].
    pub async fn write(&mut self, data: &[u8], timeout: Duration) -> Result<(), DriverError> {
        let deadline = Instant::now() + timeout;
        self.recover(deadline, timeout).await?;
        let mut chunks: Vec<&[u8]> = data.chunks(OUT_CHUNK).collect();
        if chunks.is_empty() {
            chunks.push(&[]);
        }
        let n = chunks.len();
        for (i, chunk) in chunks.into_iter().enumerate() {
            let tag = self.take_tag();
            let bytes = dev_dep_msg_out(tag, chunk, i + 1 == n);
            let left = deadline.saturating_duration_since(Instant::now());
            match self.pipes.bulk_out(&bytes, left).await {
                Ok(()) => {}
                Err(PipeError::TimedOut) => {
                    self.abort_out(tag, timeout).await;
                    return Err(DriverError::Timeout(timeout));
                }
                Err(e) => return Err(self.pipe_error(e, timeout)),
            }
        }
        Ok(())
    }

    /// USB488 TRIGGER.
    pub async fn trigger(&mut self, timeout: Duration) -> Result<(), DriverError> {
        let deadline = Instant::now() + timeout;
        self.recover(deadline, timeout).await?;
        let tag = self.take_tag();
        self.pipes
            .bulk_out(&trigger(tag), timeout)
            .await
            .map_err(|e| self.pipe_error(e, timeout))
    }

    /// Ask for and receive one DEV_DEP_MSG_IN of at most `max` bytes
    /// (and at most the transfer size set); returns its data and whether
    /// it carried EOM. A reply that does not come in time is aborted
    /// (INITIATE_ABORT_BULK_IN) and is [`DriverError::Timeout`]; a reply
    /// with the wrong bTag or a bad header is an error and the device is
    /// cleared before the next operation.
    pub async fn read(
        &mut self,
        max: usize,
        timeout: Duration,
    ) -> Result<(Vec<u8>, bool), DriverError> {
        let deadline = Instant::now() + timeout;
        self.recover(deadline, timeout).await?;
        let want = u32::try_from(max.max(1))
            .unwrap_or(u32::MAX)
            .min(self.in_chunk);
        let tag = self.take_tag();
        let request = request_dev_dep_msg_in(tag, want, self.term_char);
        let left = deadline.saturating_duration_since(Instant::now());
        match self.pipes.bulk_out(&request, left).await {
            Ok(()) => {}
            Err(PipeError::TimedOut) => {
                self.abort_out(tag, timeout).await;
                return Err(DriverError::Timeout(timeout));
            }
            Err(e) => return Err(self.pipe_error(e, timeout)),
        }
        self.last_request = Some(tag);
        let mut got: Vec<u8> = Vec::new();
        let mut header: Option<BulkHeader> = None;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let chunk = match self.pipes.bulk_in(self.read_len, left).await {
                Ok(c) => c,
                Err(PipeError::TimedOut) => {
                    self.abort_in(tag, timeout).await;
                    return Err(DriverError::Timeout(timeout));
                }
                Err(e) => return Err(self.pipe_error(e, timeout)),
            };
            let short = chunk.len() < self.read_len;
            if chunk.is_empty() && got.is_empty() {
                // A zero-length packet left from an earlier transfer.
                continue;
            }
            got.extend_from_slice(&chunk);
            if header.is_none() && got.len() >= HEADER_LEN {
                let h = match BulkHeader::decode(&got) {
                    Ok(h) => h,
                    Err(e) => {
                        return Err(self.protocol(format!("bad DEV_DEP_MSG_IN header: {e:?}")))
                    }
                };
                if h.msg_id != msg::DEV_DEP_MSG_IN {
                    return Err(self.protocol(format!(
                        "bulk-IN MsgID {}, expected DEV_DEP_MSG_IN (2)",
                        h.msg_id
                    )));
                }
                if h.tag != tag {
                    return Err(
                        self.protocol(format!("reply carries bTag {}, expected {tag}", h.tag))
                    );
                }
                if h.transfer_size > want {
                    return Err(self.protocol(format!(
                        "reply of {} bytes to a request for at most {want}",
                        h.transfer_size
                    )));
                }
                header = Some(h);
            }
            if let Some(h) = header {
                let size = usize::try_from(h.transfer_size).unwrap_or(usize::MAX);
                let need = HEADER_LEN + size;
                if got.len() >= need && (short || got.len() >= need + padding(size)) {
                    // Done: drop the header and any alignment bytes. A
                    // zero-length packet that may follow an exact
                    // multiple of the packet size is skipped by the next read.
                    got.truncate(need);
                    got.drain(..HEADER_LEN);
                    self.last_request = None;
                    return Ok((got, h.eom()));
                }
            }
            if short {
                let size = header.map(|h| h.transfer_size);
                return Err(self.protocol(format!(
                    "bulk-IN transfer ended after {} bytes (header says {size:?} data bytes)",
                    got.len()
                )));
            }
            if got.len() > HEADER_LEN + usize::try_from(want).unwrap_or(usize::MAX) + 4 {
                return Err(self.protocol("bulk-IN transfer longer than asked".into()));
            }
        }
    }

    /// INITIATE_ABORT_BULK_OUT for `tag`, then CHECK_ABORT_BULK_OUT_STATUS
    /// until done and CLEAR_FEATURE(halt) on bulk-OUT. Failure leaves the
    /// link to be cleared.
    async fn abort_out(&mut self, tag: u8, timeout: Duration) {
        let budget = timeout.clamp(Duration::from_millis(200), Duration::from_secs(2));
        let deadline = Instant::now() + budget;
        let ok = async {
            let r = self
                .pipes
                .control_in(
                    Recipient::BulkOut,
                    req::INITIATE_ABORT_BULK_OUT,
                    u16::from(tag),
                    2,
                    budget,
                )
                .await
                .ok()?;
            if r.first() != Some(&status::SUCCESS) {
                return Some(false);
            }
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Some(false);
                }
                let r = self
                    .pipes
                    .control_in(
                        Recipient::BulkOut,
                        req::CHECK_ABORT_BULK_OUT_STATUS,
                        0,
                        8,
                        left,
                    )
                    .await
                    .ok()?;
                match r.first() {
                    Some(&status::PENDING) => tokio::time::sleep(Duration::from_millis(5)).await,
                    Some(&status::SUCCESS) => break,
                    _ => return Some(false),
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            self.pipes.clear_halt(BulkEndpoint::Out, left).await.ok()?;
            Some(true)
        }
        .await;
        if ok != Some(true) {
            self.needs_clear = true;
        }
    }

    /// INITIATE_ABORT_BULK_IN for `tag`, then CHECK_ABORT_BULK_IN_STATUS
    /// (reading and dropping what the device still has queued) until
    /// done. A device with no transfer in progress for `tag` has nothing
    /// to abort. Either way the device is cleared before the next exchange.
    async fn abort_in(&mut self, tag: u8, timeout: Duration) {
        self.last_request = None;
        let budget = timeout.clamp(Duration::from_millis(200), Duration::from_secs(2));
        let deadline = Instant::now() + budget;
        let read_len = self.read_len;
        let ok = async {
            let r = self
                .pipes
                .control_in(
                    Recipient::BulkIn,
                    req::INITIATE_ABORT_BULK_IN,
                    u16::from(tag),
                    2,
                    budget,
                )
                .await
                .ok()?;
            match r.first() {
                Some(&status::SUCCESS) => {}
                // Nothing queued for that tag (FAILED: nothing at all;
                // NOT_IN_PROGRESS: another transfer, which a clear handles).
                Some(&status::FAILED) => return Some(true),
                _ => return Some(false),
            }
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Some(false);
                }
                let r = self
                    .pipes
                    .control_in(
                        Recipient::BulkIn,
                        req::CHECK_ABORT_BULK_IN_STATUS,
                        0,
                        8,
                        left,
                    )
                    .await
                    .ok()?;
                match (r.first(), r.get(1)) {
                    (Some(&status::PENDING), Some(bm)) if bm & 1 != 0 => {
                        // Read until a short packet ends what is queued.
                        loop {
                            let left = deadline.saturating_duration_since(Instant::now());
                            let c = self.pipes.bulk_in(read_len, left).await.ok()?;
                            if c.len() < read_len {
                                break;
                            }
                        }
                    }
                    (Some(&status::PENDING), _) => {
                        tokio::time::sleep(Duration::from_millis(5)).await
                    }
                    (Some(&status::SUCCESS), _) => return Some(true),
                    _ => return Some(false),
                }
            }
        }
        .await;
        if ok != Some(true) {
            tracing::debug!(context = %self.context, "abort of bulk-IN did not complete");
        }
        // The instrument may still answer the query later: clear it
        // before the next exchange so that answer is never taken for the
        // next one's.
        self.needs_clear = true;
    }

    /// Device clear: INITIATE_CLEAR, CHECK_CLEAR_STATUS until done
    /// (reading and dropping queued bulk-IN data when the device says it
    /// has some), then CLEAR_FEATURE(halt) on bulk-OUT. bTags go on.
    pub async fn clear(&mut self, timeout: Duration) -> Result<(), DriverError> {
        self.clear_until(Instant::now() + timeout, timeout).await
    }

    async fn clear_until(
        &mut self,
        deadline: Instant,
        timeout: Duration,
    ) -> Result<(), DriverError> {
        let left = deadline.saturating_duration_since(Instant::now());
        let r = self
            .pipes
            .control_in(Recipient::Interface, req::INITIATE_CLEAR, 0, 1, left)
            .await
            .map_err(|e| self.pipe_error(e, timeout))?;
        if r.first() != Some(&status::SUCCESS) {
            self.needs_clear = true;
            return Err(DriverError::Instrument(format!(
                "{}: INITIATE_CLEAR answered {:?}",
                self.context,
                r.first()
            )));
        }
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                self.needs_clear = true;
                return Err(DriverError::Timeout(timeout));
            }
            let r = self
                .pipes
                .control_in(Recipient::Interface, req::CHECK_CLEAR_STATUS, 0, 2, left)
                .await
                .map_err(|e| self.pipe_error(e, timeout))?;
            match (r.first(), r.get(1)) {
                (Some(&status::SUCCESS), _) => break,
                (Some(&status::PENDING), Some(bm)) if bm & 1 != 0 => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    match self.pipes.bulk_in(self.read_len, left).await {
                        Ok(_) => {}
                        Err(e) => return Err(self.pipe_error(e, timeout)),
                    }
                }
                (Some(&status::PENDING), _) => tokio::time::sleep(Duration::from_millis(5)).await,
                (s, _) => {
                    self.needs_clear = true;
                    return Err(DriverError::Instrument(format!(
                        "{}: CHECK_CLEAR_STATUS answered {s:?}",
                        self.context
                    )));
                }
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        self.pipes
            .clear_halt(BulkEndpoint::Out, left)
            .await
            .map_err(|e| self.pipe_error(e, timeout))?;
        self.needs_clear = false;
        self.last_request = None;
        Ok(())
    }

    /// USB488 READ_STATUS_BYTE: the status byte, from the control
    /// response or, on a device with an interrupt-IN endpoint, from the
    /// notification that follows it.
    pub async fn read_stb(&mut self, timeout: Duration) -> Result<u8, DriverError> {
        let tag = self.stb_tag;
        self.stb_tag = if tag >= 127 { 2 } else { tag + 1 };
        let r = self
            .pipes
            .control_in(
                Recipient::Interface,
                req::READ_STATUS_BYTE,
                u16::from(tag),
                3,
                timeout,
            )
            .await
            .map_err(|e| self.pipe_error(e, timeout))?;
        match r.as_slice() {
            [status::SUCCESS, t, stb] if *t == tag => {
                if !self.pipes.has_interrupt_in() {
                    return Ok(*stb);
                }
                loop {
                    let n = self
                        .pipes
                        .interrupt_in(timeout)
                        .await
                        .map_err(|e| self.pipe_error(e, timeout))?;
                    match n.as_slice() {
                        [b, stb] if *b == 0x80 | tag => return Ok(*stb),
                        _ => continue,
                    }
                }
            }
            other => Err(DriverError::Instrument(format!(
                "{}: READ_STATUS_BYTE answered {other:?}",
                self.context
            ))),
        }
    }

    /// Give the pipes back (closing the interface when dropped).
    pub fn into_pipes(self) -> Box<dyn UsbtmcPipes> {
        self.pipes
    }
}

// ------------------------------------------------------------------
// Real hardware through nusb.

/// A USBTMC device on the bus, as enumeration shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsbtmcDeviceInfo {
    /// idVendor.
    pub vendor_id: u16,
    /// idProduct.
    pub product_id: u16,
    /// iSerialNumber's string, when the OS knows it.
    pub serial: Option<String>,
    /// iManufacturer.
    pub manufacturer: Option<String>,
    /// iProduct.
    pub product: Option<String>,
    /// The USBTMC interface's number.
    pub interface: u8,
    /// Whether the interface speaks USB488.
    pub usb488: bool,
}

impl UsbtmcDeviceInfo {
    /// The VISA resource string for it.
    pub fn resource(&self) -> String {
        let serial = self.serial.as_deref().unwrap_or("");
        if self.interface == 0 {
            format!(
                "USB0::0x{:04X}::0x{:04X}::{serial}::INSTR",
                self.vendor_id, self.product_id
            )
        } else {
            format!(
                "USB0::0x{:04X}::0x{:04X}::{serial}::{}::INSTR",
                self.vendor_id, self.product_id, self.interface
            )
        }
    }
}

fn usb_io(e: nusb::Error) -> io::Error {
    io::Error::from(e)
}

/// List the USBTMC interfaces on the machine's USB buses.
pub async fn list_devices() -> Result<Vec<UsbtmcDeviceInfo>, DriverError> {
    let devices = nusb::list_devices()
        .await
        .map_err(|e| DriverError::link("listing USB devices", usb_io(e)))?;
    let mut out = Vec::new();
    for d in devices {
        for i in d.interfaces() {
            if i.class() == CLASS_APPLICATION && i.subclass() == SUBCLASS_USBTMC {
                out.push(UsbtmcDeviceInfo {
                    vendor_id: d.vendor_id(),
                    product_id: d.product_id(),
                    serial: d.serial_number().map(str::to_string),
                    manufacturer: d.manufacturer_string().map(str::to_string),
                    product: d.product_string().map(str::to_string),
                    interface: i.interface_number(),
                    usb488: i.protocol() == PROTOCOL_USB488,
                });
            }
        }
    }
    Ok(out)
}

/// The pipes of a real USBTMC interface, through `nusb`.
pub struct NusbPipes {
    interface: nusb::Interface,
    out: nusb::Endpoint<nusb::transfer::Bulk, nusb::transfer::Out>,
    inp: nusb::Endpoint<nusb::transfer::Bulk, nusb::transfer::In>,
    intr: Option<nusb::Endpoint<nusb::transfer::Interrupt, nusb::transfer::In>>,
}

impl fmt::Debug for NusbPipes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NusbPipes")
            .field("interface", &self.interface.interface_number())
            .field("bulk_out", &self.out.endpoint_address())
            .field("bulk_in", &self.inp.endpoint_address())
            .finish()
    }
}

impl NusbPipes {
    /// Open the USBTMC interface `interface` of the device `vid:pid`
    /// (with `serial`, when given), detaching the kernel's `usbtmc`
    /// driver if it holds it.
    pub async fn open(
        vid: u16,
        pid: u16,
        serial: Option<&str>,
        interface: u8,
    ) -> Result<NusbPipes, DriverError> {
        let ctx = format!("USB device {vid:04x}:{pid:04x}");
        let link = |what: &str, e: io::Error| DriverError::link(format!("{ctx}: {what}"), e);
        let devices = nusb::list_devices()
            .await
            .map_err(|e| link("listing USB devices", usb_io(e)))?;
        let info = devices
            .filter(|d| d.vendor_id() == vid && d.product_id() == pid)
            .find(|d| serial.is_none_or(|s| d.serial_number() == Some(s)))
            .ok_or_else(|| {
                DriverError::link_lost(
                    ctx.clone(),
                    io::ErrorKind::NotFound,
                    "no such USB device plugged in (see `labmesh scan`)",
                )
            })?;
        let device = info
            .open()
            .await
            .map_err(|e| link("opening (permissions? see docs/DRIVERS.md)", usb_io(e)))?;
        let iface = device
            .detach_and_claim_interface(interface)
            .await
            .map_err(|e| link("claiming the USBTMC interface", usb_io(e)))?;
        let desc = iface.descriptor().ok_or_else(|| {
            DriverError::link_lost(
                ctx.clone(),
                io::ErrorKind::NotFound,
                "no interface descriptor",
            )
        })?;
        let (mut out_ep, mut in_ep, mut int_ep) = (None, None, None);
        for ep in desc.endpoints() {
            use nusb::descriptors::TransferType;
            use nusb::transfer::Direction;
            match (ep.transfer_type(), ep.direction()) {
                (TransferType::Bulk, Direction::Out) if out_ep.is_none() => {
                    out_ep = Some(ep.address())
                }
                (TransferType::Bulk, Direction::In) if in_ep.is_none() => {
                    in_ep = Some(ep.address())
                }
                (TransferType::Interrupt, Direction::In) if int_ep.is_none() => {
                    int_ep = Some(ep.address())
                }
                _ => {}
            }
        }
        let (Some(o), Some(i)) = (out_ep, in_ep) else {
            return Err(DriverError::Config(format!(
                "{ctx}: interface {interface} has no bulk-IN/bulk-OUT pair: not USBTMC"
            )));
        };
        let out = iface
            .endpoint::<nusb::transfer::Bulk, nusb::transfer::Out>(o)
            .map_err(|e| link("bulk-OUT endpoint", usb_io(e)))?;
        let inp = iface
            .endpoint::<nusb::transfer::Bulk, nusb::transfer::In>(i)
            .map_err(|e| link("bulk-IN endpoint", usb_io(e)))?;
        let intr = int_ep.and_then(|a| {
            iface
                .endpoint::<nusb::transfer::Interrupt, nusb::transfer::In>(a)
                .ok()
        });
        Ok(NusbPipes {
            interface: iface,
            out,
            inp,
            intr,
        })
    }
}

fn transfer_error(e: nusb::transfer::TransferError) -> PipeError {
    use nusb::transfer::TransferError as T;
    match e {
        T::Cancelled => PipeError::TimedOut,
        T::Stall => PipeError::Stall,
        T::Disconnected => PipeError::Disconnected(io::Error::from(e)),
        e => PipeError::Other(io::Error::from(e)),
    }
}

/// Submit on `ep` and wait up to `timeout`; on timeout cancel and collect
/// the cancelled transfer so nothing stays pending.
async fn transfer<T: nusb::transfer::BulkOrInterrupt, D: nusb::transfer::EndpointDirection>(
    ep: &mut nusb::Endpoint<T, D>,
    buf: nusb::transfer::Buffer,
    timeout: Duration,
) -> Result<nusb::transfer::Buffer, PipeError> {
    ep.submit(buf);
    match tokio::time::timeout(timeout, ep.next_complete()).await {
        Ok(c) => c.status.map(|()| c.buffer).map_err(transfer_error),
        Err(_) => {
            ep.cancel_all();
            // The cancelled transfer comes back promptly; bounded anyway.
            let _ = tokio::time::timeout(Duration::from_secs(1), ep.next_complete()).await;
            Err(PipeError::TimedOut)
        }
    }
}

#[async_trait]
impl UsbtmcPipes for NusbPipes {
    fn max_packet_size(&self) -> usize {
        self.inp.max_packet_size()
    }

    fn has_interrupt_in(&self) -> bool {
        self.intr.is_some()
    }

    async fn bulk_out(&mut self, data: &[u8], timeout: Duration) -> Result<(), PipeError> {
        transfer(
            &mut self.out,
            nusb::transfer::Buffer::from(data.to_vec()),
            timeout,
        )
        .await
        .map(|_| ())
    }

    async fn bulk_in(&mut self, len: usize, timeout: Duration) -> Result<Vec<u8>, PipeError> {
        let buf = self.inp.allocate(len);
        transfer(&mut self.inp, buf, timeout)
            .await
            .map(|b| b.into_vec())
    }

    async fn control_in(
        &mut self,
        recipient: Recipient,
        request: u8,
        value: u16,
        length: u16,
        timeout: Duration,
    ) -> Result<Vec<u8>, PipeError> {
        let (r, index) = match recipient {
            Recipient::Interface => (
                nusb::transfer::Recipient::Interface,
                u16::from(self.interface.interface_number()),
            ),
            Recipient::BulkOut => (
                nusb::transfer::Recipient::Endpoint,
                u16::from(self.out.endpoint_address()),
            ),
            Recipient::BulkIn => (
                nusb::transfer::Recipient::Endpoint,
                u16::from(self.inp.endpoint_address()),
            ),
        };
        self.interface
            .control_in(
                nusb::transfer::ControlIn {
                    control_type: nusb::transfer::ControlType::Class,
                    recipient: r,
                    request,
                    value,
                    index,
                    length,
                },
                timeout,
            )
            .await
            .map_err(transfer_error)
    }

    async fn clear_halt(&mut self, ep: BulkEndpoint, timeout: Duration) -> Result<(), PipeError> {
        let r = match ep {
            BulkEndpoint::Out => tokio::time::timeout(timeout, self.out.clear_halt()).await,
            BulkEndpoint::In => tokio::time::timeout(timeout, self.inp.clear_halt()).await,
        };
        match r {
            Err(_) => Err(PipeError::TimedOut),
            Ok(r) => r.map_err(|e| PipeError::Other(usb_io(e))),
        }
    }

    async fn interrupt_in(&mut self, timeout: Duration) -> Result<Vec<u8>, PipeError> {
        let Some(ep) = self.intr.as_mut() else {
            return Err(PipeError::Other(io::Error::new(
                io::ErrorKind::Unsupported,
                "no interrupt-IN endpoint",
            )));
        };
        let buf = ep.allocate(ep.max_packet_size());
        transfer(ep, buf, timeout).await.map(|b| b.into_vec())
    }
}

/// Open a USBTMC link to a real device through nusb.
pub async fn open_nusb(
    vid: u16,
    pid: u16,
    serial: Option<&str>,
    interface: u8,
    timeout: Duration,
) -> Result<UsbtmcLink, DriverError> {
    let pipes = NusbPipes::open(vid, pid, serial, interface).await?;
    let ctx = format!(
        "USB0::0x{vid:04X}::0x{pid:04X}::{}::INSTR",
        serial.unwrap_or("")
    );
    UsbtmcLink::open(Box::new(pipes), ctx, timeout).await
}

// ------------------------------------------------------------------
// The Linux usbtmc kernel driver.

/// A USBTMC device through the Linux kernel's `usbtmc` driver
/// (`/dev/usbtmcN`): a `write` sends one message, a `read` returns (part
/// of) the reply; the kernel does the headers, bTags and aborts.
#[derive(Debug)]
pub struct DevUsbtmc {
    path: String,
    file: std::sync::Arc<std::fs::File>,
}

impl DevUsbtmc {
    /// Open `path` for reading and writing.
    pub async fn open(path: &str) -> Result<DevUsbtmc, DriverError> {
        let p = path.to_string();
        let file = tokio::task::spawn_blocking(move || {
            std::fs::OpenOptions::new().read(true).write(true).open(&p)
        })
        .await
        .map_err(|e| DriverError::link(path.to_string(), io::Error::other(e)))?
        .map_err(|e| DriverError::link(format!("cannot open {path}"), e))?;
        Ok(DevUsbtmc {
            path: path.to_string(),
            file: std::sync::Arc::new(file),
        })
    }

    /// The device path.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Write one message. A write that does not finish within `timeout`
    /// is a timeout (the kernel's own timeout ends the blocked call).
    pub async fn write(&mut self, data: &[u8], timeout: Duration) -> Result<(), DriverError> {
        let f = self.file.clone();
        let data = data.to_vec();
        let job = tokio::task::spawn_blocking(move || {
            use std::io::Write;
            (&*f).write_all(&data)
        });
        match tokio::time::timeout(timeout, job).await {
            Err(_) => Err(DriverError::Timeout(timeout)),
            Ok(Err(e)) => Err(DriverError::link(self.path.clone(), io::Error::other(e))),
            Ok(Ok(r)) => r.map_err(|e| self.io(e, timeout)),
        }
    }

    /// Read at most `max` bytes of the reply; `Ok((data, end))` where
    /// `end` is a read shorter than asked (the kernel ends a read at the
    /// device's EOM).
    pub async fn read(
        &mut self,
        max: usize,
        timeout: Duration,
    ) -> Result<(Vec<u8>, bool), DriverError> {
        let f = self.file.clone();
        let max = max.clamp(1, 1 << 20);
        let job = tokio::task::spawn_blocking(move || {
            use std::io::Read;
            let mut buf = vec![0u8; max];
            let n = (&*f).read(&mut buf)?;
            buf.truncate(n);
            Ok::<_, io::Error>(buf)
        });
        match tokio::time::timeout(timeout, job).await {
            Err(_) => Err(DriverError::Timeout(timeout)),
            Ok(Err(e)) => Err(DriverError::link(self.path.clone(), io::Error::other(e))),
            Ok(Ok(Ok(buf))) => {
                let end = buf.len() < max;
                Ok((buf, end))
            }
            Ok(Ok(Err(e))) => Err(self.io(e, timeout)),
        }
    }

    fn io(&self, e: io::Error, timeout: Duration) -> DriverError {
        // The kernel driver answers its own timeout with ETIMEDOUT.
        if e.kind() == io::ErrorKind::TimedOut {
            return DriverError::Timeout(timeout);
        }
        DriverError::link(self.path.clone(), e)
    }
}

/// The `/dev/usbtmcN` the Linux kernel driver made for interface
/// `interface` of device `vid:pid` with `serial`, found through sysfs
/// (`/sys/class/usbmisc/usbtmcN/device` is the interface; its parent
/// directory has the device's `idVendor`, `idProduct` and `serial`).
pub fn find_kernel_device(vid: u16, pid: u16, serial: &str, interface: u8) -> Option<String> {
    let dir = std::fs::read_dir("/sys/class/usbmisc").ok()?;
    for entry in dir.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with("usbtmc") {
            continue;
        }
        let Ok(iface) = std::fs::canonicalize(entry.path().join("device")) else {
            continue;
        };
        let read = |p: std::path::PathBuf| {
            std::fs::read_to_string(p)
                .ok()
                .map(|t| t.trim().to_string())
        };
        let number =
            read(iface.join("bInterfaceNumber")).and_then(|n| u8::from_str_radix(&n, 16).ok());
        let Some(dev) = iface.parent() else { continue };
        let hex = |f: &str| read(dev.join(f)).and_then(|v| u16::from_str_radix(&v, 16).ok());
        if hex("idVendor") == Some(vid)
            && hex("idProduct") == Some(pid)
            && read(dev.join("serial")).as_deref() == Some(serial)
            && number == Some(interface)
        {
            return Some(format!("/dev/{name}"));
        }
    }
    None
}

/// Open the USBTMC device a `USB::...::INSTR` resource names: through
/// nusb, or, when that fails and the Linux `usbtmc` kernel driver has the
/// device (`/dev/usbtmcN`), through the kernel driver.
pub async fn open_resource(
    vid: u16,
    pid: u16,
    serial: &str,
    interface: u8,
    timeout: Duration,
) -> Result<UsbLink, DriverError> {
    match open_nusb(vid, pid, Some(serial), interface, timeout).await {
        Ok(l) => Ok(UsbLink::Nusb(Box::new(l))),
        Err(e) => match find_kernel_device(vid, pid, serial, interface) {
            Some(path) => {
                tracing::info!("USB device {vid:04x}:{pid:04x} through {path} ({e})");
                DevUsbtmc::open(&path)
                    .await
                    .map(|d| UsbLink::Kernel(Box::new(d)))
            }
            None => Err(e),
        },
    }
}

/// A USBTMC link of either kind.
#[derive(Debug)]
pub enum UsbLink {
    /// Framing done here, through nusb (or a simulated device).
    Nusb(Box<UsbtmcLink>),
    /// Framing done by the Linux kernel driver.
    Kernel(Box<DevUsbtmc>),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn golden_dev_dep_msg_out() {
        let b = dev_dep_msg_out(1, b"*IDN?\n", true);
        assert_eq!(
            b,
            [1, 1, 0xFE, 0, 6, 0, 0, 0, 1, 0, 0, 0, b'*', b'I', b'D', b'N', b'?', b'\n', 0, 0]
        );
        assert_eq!(b.len() % 4, 0);
        // No padding when already aligned, EOM clear.
        let b = dev_dep_msg_out(0xFF, b"ABCD", false);
        assert_eq!(
            b,
            [1, 0xFF, 0x00, 0, 4, 0, 0, 0, 0, 0, 0, 0, b'A', b'B', b'C', b'D']
        );
    }

    #[test]
    fn golden_request_and_trigger() {
        assert_eq!(
            request_dev_dep_msg_in(7, 0x0001_0000, None),
            [2, 7, 0xF8, 0, 0, 0, 1, 0, 0, 0, 0, 0]
        );
        assert_eq!(
            request_dev_dep_msg_in(0x80, 64, Some(b'\n')),
            [2, 0x80, 0x7F, 0, 64, 0, 0, 0, 2, b'\n', 0, 0]
        );
        assert_eq!(trigger(3), [128, 3, 0xFC, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn tags_wrap_from_255_to_1() {
        assert_eq!(next_tag(1), 2);
        assert_eq!(next_tag(254), 255);
        assert_eq!(next_tag(255), 1);
        let mut t = 1u8;
        for _ in 0..1000 {
            t = next_tag(t);
            assert_ne!(t, 0);
        }
    }

    #[test]
    fn header_decode_checks_the_inverse() {
        let b = dev_dep_msg_in(9, b"hello", true);
        let h = BulkHeader::decode(&b).unwrap();
        assert_eq!((h.msg_id, h.tag, h.transfer_size, h.eom()), (2, 9, 5, true));
        let mut bad = b.clone();
        bad[2] = 0;
        assert_eq!(BulkHeader::decode(&bad), Err(HeaderError::BadTag));
        assert_eq!(BulkHeader::decode(&b[..11]), Err(HeaderError::Short));
        let zero = [2u8, 0, 0xFF, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(BulkHeader::decode(&zero), Err(HeaderError::BadTag));
    }

    #[test]
    fn capabilities_round_trip() {
        let c = Capabilities {
            bcd_usbtmc: 0x0100,
            term_char: true,
            interface_caps: 0b100,
            bcd_usb488: 0x0100,
            usb488_interface: 0b110,
            usb488_device: 0b1111,
        };
        let b = c.encode();
        assert_eq!(b[..6], [1, 0, 0x00, 0x01, 0b100, 1]);
        assert_eq!(Capabilities::decode(&b), Some(c));
        assert_eq!(Capabilities::decode(&b[..10]), None);
    }

    proptest::proptest! {
        #[test]
        fn out_transfers_are_aligned_and_decode(tag in 1u8..=255, data in proptest::collection::vec(proptest::num::u8::ANY, 0..300), eom in proptest::bool::ANY) {
            let b = dev_dep_msg_out(tag, &data, eom);
            proptest::prop_assert_eq!(b.len() % 4, 0);
            let h = BulkHeader::decode(&b).unwrap();
            proptest::prop_assert_eq!(h.tag, tag);
            proptest::prop_assert_eq!(h.eom(), eom);
            proptest::prop_assert_eq!(h.transfer_size as usize, data.len());
            proptest::prop_assert_eq!(&b[HEADER_LEN..HEADER_LEN + data.len()], &data[..]);
        }

        #[test]
        fn decoding_garbage_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..40)) {
            let _ = BulkHeader::decode(&bytes);
            let _ = Capabilities::decode(&bytes);
        }
    }
}
