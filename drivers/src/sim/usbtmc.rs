//! The simulator as a USBTMC / USB488 device: [`SimUsbtmc`] implements
//! [`UsbtmcPipes`] the way a device's endpoints answer, with the SCPI
//! simulator behind them.
//!
//! * Bulk-OUT: DEV_DEP_MSG_OUT data is collected until EOM and then
//!   executed; REQUEST_DEV_DEP_MSG_IN arms one reply transfer; TRIGGER
//!   runs `*TRG`. A header with a bad bTag inverse or an unknown MsgID
//!   stalls the endpoint (cleared by CLEAR_FEATURE(halt)).
//! * Bulk-IN: a reply is one DEV_DEP_MSG_IN transfer carrying the
//!   request's bTag, at most its TransferSize (and at most
//!   [`SimUsbtmcControl::set_max_transfer`]) data bytes, EOM on a
//!   message's last transfer, padded to 4 bytes, handed out in
//!   max-packet-size packets and ended by a short or zero-length packet.
//!   With no reply to give the endpoint NAKs (the read times out).
//! * Control: GET_CAPABILITIES, INITIATE_CLEAR / CHECK_CLEAR_STATUS
//!   (pending until queued bulk-IN data is read), INITIATE_ABORT_BULK_IN
//!   / _OUT and their CHECK_ requests, INDICATOR_PULSE, USB488
//!   READ_STATUS_BYTE (in the control response, or on the interrupt-IN
//!   endpoint with [`SimUsbtmc::with_interrupt_in`]).
//!
//! A [`SimUsbtmcControl`] (kept by the test) injects faults — a wrong
//! bTag on the next reply, unplugging — and counts clears and aborts.
//! Muting the [`SimPsu`] makes the device stop executing messages.

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

use super::{SimPsu, MAX_LINE};
use crate::usbtmc::{
    dev_dep_msg_in, msg, req, status, BulkEndpoint, BulkHeader, Capabilities, PipeError, Recipient,
    UsbtmcPipes, HEADER_LEN,
};

/// Fault knobs and counters shared between a [`SimUsbtmc`] and the test.
#[derive(Debug, Default)]
pub struct SimUsbtmcControl {
    wrong_tag_once: AtomicBool,
    unplugged: AtomicBool,
    max_transfer: AtomicU32,
    clears: AtomicUsize,
    aborts_in: AtomicUsize,
    aborts_out: AtomicUsize,
    requests: AtomicUsize,
    stalls: AtomicUsize,
    last_tag: AtomicU32,
}

impl SimUsbtmcControl {
    /// The next reply carries the wrong bTag (once).
    pub fn wrong_tag_once(&self) {
        self.wrong_tag_once.store(true, Ordering::SeqCst);
    }
    /// Unplug (true) or plug back in (false): every pipe operation fails
    /// with "disconnected" while unplugged.
    pub fn set_unplugged(&self, unplugged: bool) {
        self.unplugged.store(unplugged, Ordering::SeqCst);
    }
    /// Send at most `n` data bytes per DEV_DEP_MSG_IN whatever the host
    /// asks (0: as asked), so replies span several transfers.
    pub fn set_max_transfer(&self, n: u32) {
        self.max_transfer.store(n, Ordering::SeqCst);
    }
    /// INITIATE_CLEAR requests seen.
    pub fn clears(&self) -> usize {
        self.clears.load(Ordering::SeqCst)
    }
    /// INITIATE_ABORT_BULK_IN requests seen.
    pub fn aborts_in(&self) -> usize {
        self.aborts_in.load(Ordering::SeqCst)
    }
    /// INITIATE_ABORT_BULK_OUT requests seen.
    pub fn aborts_out(&self) -> usize {
        self.aborts_out.load(Ordering::SeqCst)
    }
    /// REQUEST_DEV_DEP_MSG_IN messages seen.
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
    /// Times the bulk-OUT endpoint stalled on a bad header.
    pub fn stalls(&self) -> usize {
        self.stalls.load(Ordering::SeqCst)
    }
    /// The bTag of the last bulk-OUT message.
    pub fn last_tag(&self) -> u8 {
        (self.last_tag.load(Ordering::SeqCst) & 0xFF) as u8
    }
}

/// A simulated USBTMC device in front of a [`SimPsu`].
#[derive(Debug)]
pub struct SimUsbtmc {
    sim: SimPsu,
    mps: usize,
    control: Arc<SimUsbtmcControl>,
    /// Data of the message being received (before EOM).
    input: Vec<u8>,
    /// Received messages not yet executed (the instrument is muted).
    deferred: VecDeque<String>,
    /// Response messages not yet sent, the front one maybe in part.
    output: VecDeque<Vec<u8>>,
    /// The armed REQUEST_DEV_DEP_MSG_IN: bTag and TransferSize.
    request: Option<(u8, u32)>,
    /// USB transfers queued on bulk-IN (an empty one is a zero-length packet).
    fifo: VecDeque<Vec<u8>>,
    halted_out: bool,
    /// CHECK_CLEAR_STATUS answers PENDING this many more times.
    clear_pending: u8,
    interrupt_in: bool,
    /// Notifications queued on interrupt-IN.
    notifications: VecDeque<Vec<u8>>,
}

impl SimUsbtmc {
    /// A device in front of `sim` whose bulk-IN max packet size is `mps`
    /// (64 for full speed, 512 for high speed).
    pub fn new(sim: SimPsu, mps: usize) -> SimUsbtmc {
        SimUsbtmc {
            sim,
            mps: mps.max(8),
            control: Arc::default(),
            input: Vec::new(),
            deferred: VecDeque::new(),
            output: VecDeque::new(),
            request: None,
            fifo: VecDeque::new(),
            halted_out: false,
            clear_pending: 0,
            interrupt_in: false,
            notifications: VecDeque::new(),
        }
    }

    /// Give READ_STATUS_BYTE's answer on an interrupt-IN endpoint, as
    /// USB488 devices that have one do.
    pub fn with_interrupt_in(mut self) -> SimUsbtmc {
        self.interrupt_in = true;
        self
    }

    /// The fault knobs and counters.
    pub fn control(&self) -> Arc<SimUsbtmcControl> {
        self.control.clone()
    }

    /// The capabilities the device reports: USBTMC 1.0 with TermChar,
    /// USB488 with 488.2, TRIGGER and SCPI.
    pub fn capabilities() -> Capabilities {
        Capabilities {
            bcd_usbtmc: 0x0100,
            term_char: true,
            interface_caps: 0,
            bcd_usb488: 0x0100,
            usb488_interface: 0b101,
            usb488_device: 0b1000,
        }
    }

    fn check_plugged(&self) -> Result<(), PipeError> {
        if self.control.unplugged.load(Ordering::SeqCst) {
            return Err(PipeError::Disconnected(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "simulated device unplugged",
            )));
        }
        Ok(())
    }

    fn stall_out(&mut self) -> Result<(), PipeError> {
        self.halted_out = true;
        self.control.stalls.fetch_add(1, Ordering::SeqCst);
        Err(PipeError::Stall)
    }

    /// Run every received message (unless muted).
    fn run_deferred(&mut self) {
        if self.sim.is_muted() {
            return;
        }
        while let Some(text) = self.deferred.pop_front() {
            if let Some(mut reply) = self.sim.execute(&text) {
                reply.push(b'\n');
                self.output.push_back(reply);
            }
        }
    }

    /// Queue the transfer answering the armed request, if there is a reply.
    fn arm_reply(&mut self) -> bool {
        let Some((tag, size)) = self.request else {
            return false;
        };
        let Some(front) = self.output.front_mut() else {
            return false;
        };
        let cap = self.control.max_transfer.load(Ordering::SeqCst);
        let size = if cap > 0 { size.min(cap) } else { size };
        let n = front.len().min(usize::try_from(size).unwrap_or(usize::MAX));
        let data: Vec<u8> = front.drain(..n).collect();
        let eom = front.is_empty();
        if eom {
            self.output.pop_front();
        }
        let tag = if self.control.wrong_tag_once.swap(false, Ordering::SeqCst) {
            crate::usbtmc::next_tag(tag)
        } else {
            tag
        };
        let transfer = dev_dep_msg_in(tag, &data, eom);
        let exact = transfer.len().is_multiple_of(self.mps);
        self.fifo.push_back(transfer);
        if exact {
            self.fifo.push_back(Vec::new());
        }
        self.request = None;
        true
    }
}

#[async_trait]
impl UsbtmcPipes for SimUsbtmc {
    fn max_packet_size(&self) -> usize {
        self.mps
    }

    fn has_interrupt_in(&self) -> bool {
        self.interrupt_in
    }

    async fn bulk_out(&mut self, data: &[u8], _timeout: Duration) -> Result<(), PipeError> {
        self.check_plugged()?;
        if self.halted_out {
            return Err(PipeError::Stall);
        }
        let Ok(h) = BulkHeader::decode(data) else {
            return self.stall_out();
        };
        self.control
            .last_tag
            .store(u32::from(h.tag), Ordering::SeqCst);
        match h.msg_id {
            msg::DEV_DEP_MSG_OUT => {
                let size = usize::try_from(h.transfer_size).unwrap_or(usize::MAX);
                let Some(payload) = data.get(HEADER_LEN..HEADER_LEN.saturating_add(size)) else {
                    return self.stall_out();
                };
                self.input.extend_from_slice(payload);
                if self.input.len() > MAX_LINE {
                    self.input.clear();
                    self.sim.state().push_error(-100);
                    return Ok(());
                }
                if h.eom() {
                    let text = String::from_utf8_lossy(&std::mem::take(&mut self.input))
                        .trim_end_matches(['\n', '\r'])
                        .to_string();
                    self.deferred.push_back(text);
                    self.run_deferred();
                }
                Ok(())
            }
            msg::REQUEST_DEV_DEP_MSG_IN => {
                self.control.requests.fetch_add(1, Ordering::SeqCst);
                self.request = Some((h.tag, h.transfer_size.max(1)));
                Ok(())
            }
            msg::TRIGGER => {
                let _ = self.sim.execute("*TRG");
                Ok(())
            }
            _ => self.stall_out(),
        }
    }

    async fn bulk_in(&mut self, len: usize, timeout: Duration) -> Result<Vec<u8>, PipeError> {
        self.check_plugged()?;
        if len == 0 || !len.is_multiple_of(self.mps) {
            return Err(PipeError::Other(io::Error::new(
                io::ErrorKind::InvalidInput,
                "bulk-IN length must be a multiple of the max packet size",
            )));
        }
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(front) = self.fifo.front_mut() {
                if front.len() <= len {
                    return Ok(self.fifo.pop_front().unwrap_or_default());
                }
                return Ok(front.drain(..len).collect());
            }
            if self.request.is_some() && !self.deferred.is_empty() && self.sim.is_muted() {
                // A hung instrument: wait for it (or the host's timeout).
                let mut rx = self.sim.inner.muted.subscribe();
                if tokio::time::timeout_at(deadline, rx.wait_for(|m| !*m))
                    .await
                    .is_err()
                {
                    return Err(PipeError::TimedOut);
                }
                self.run_deferred();
                continue;
            }
            if self.request.is_some() && !self.output.is_empty() {
                let latency = self.sim.latency();
                if !latency.is_zero() {
                    if Instant::now() + latency > deadline {
                        tokio::time::sleep_until(deadline).await;
                        return Err(PipeError::TimedOut);
                    }
                    tokio::time::sleep(latency).await;
                }
                self.arm_reply();
                continue;
            }
            // Nothing to send: the endpoint NAKs until the host gives up.
            tokio::time::sleep_until(deadline).await;
            self.check_plugged()?;
            return Err(PipeError::TimedOut);
        }
    }

    async fn control_in(
        &mut self,
        recipient: Recipient,
        request: u8,
        value: u16,
        length: u16,
        _timeout: Duration,
    ) -> Result<Vec<u8>, PipeError> {
        self.check_plugged()?;
        let mut r: Vec<u8> = match (recipient, request) {
            (Recipient::Interface, req::GET_CAPABILITIES) => Self::capabilities().encode().to_vec(),
            (Recipient::Interface, req::INITIATE_CLEAR) => {
                self.control.clears.fetch_add(1, Ordering::SeqCst);
                self.input.clear();
                self.deferred.clear();
                self.output.clear();
                self.request = None;
                // Answer PENDING once, as a device busy clearing would.
                self.clear_pending = 1;
                vec![status::SUCCESS]
            }
            (Recipient::Interface, req::CHECK_CLEAR_STATUS) => {
                if !self.fifo.is_empty() {
                    vec![status::PENDING, 1]
                } else if self.clear_pending > 0 {
                    self.clear_pending -= 1;
                    vec![status::PENDING, 0]
                } else {
                    vec![status::SUCCESS, 0]
                }
            }
            (Recipient::Interface, req::INDICATOR_PULSE) => vec![status::SUCCESS],
            (Recipient::Interface, req::READ_STATUS_BYTE) => {
                let tag = (value & 0xFF) as u8;
                if !(2..=127).contains(&tag) {
                    vec![status::FAILED, tag, 0]
                } else {
                    let stb = self
                        .sim
                        .execute("*STB?")
                        .and_then(|b| String::from_utf8_lossy(&b).trim().parse::<u8>().ok())
                        .unwrap_or(0);
                    if self.interrupt_in {
                        self.notifications.push_back(vec![0x80 | tag, stb]);
                        vec![status::SUCCESS, tag, 0]
                    } else {
                        vec![status::SUCCESS, tag, stb]
                    }
                }
            }
            (Recipient::BulkIn, req::INITIATE_ABORT_BULK_IN) => {
                self.control.aborts_in.fetch_add(1, Ordering::SeqCst);
                let tag = (value & 0xFF) as u8;
                match self.request {
                    Some((t, _)) if t == tag => {
                        self.request = None;
                        vec![status::SUCCESS, tag]
                    }
                    Some(_) => vec![status::TRANSFER_NOT_IN_PROGRESS, tag],
                    None if !self.fifo.is_empty() => vec![status::SUCCESS, tag],
                    None => vec![status::FAILED, tag],
                }
            }
            (Recipient::BulkIn, req::CHECK_ABORT_BULK_IN_STATUS) => {
                if self.fifo.is_empty() {
                    vec![status::SUCCESS, 0, 0, 0, 0, 0, 0, 0]
                } else {
                    vec![status::PENDING, 1, 0, 0, 0, 0, 0, 0]
                }
            }
            (Recipient::BulkOut, req::INITIATE_ABORT_BULK_OUT) => {
                self.control.aborts_out.fetch_add(1, Ordering::SeqCst);
                self.input.clear();
                vec![status::SUCCESS, (value & 0xFF) as u8]
            }
            (Recipient::BulkOut, req::CHECK_ABORT_BULK_OUT_STATUS) => {
                vec![status::SUCCESS, 0, 0, 0, 0, 0, 0, 0]
            }
            // Requests the device does not know stall the control pipe.
            _ => return Err(PipeError::Stall),
        };
        r.truncate(usize::from(length));
        Ok(r)
    }

    async fn clear_halt(&mut self, ep: BulkEndpoint, _timeout: Duration) -> Result<(), PipeError> {
        self.check_plugged()?;
        if ep == BulkEndpoint::Out {
            self.halted_out = false;
        }
        Ok(())
    }

    async fn interrupt_in(&mut self, timeout: Duration) -> Result<Vec<u8>, PipeError> {
        self.check_plugged()?;
        if !self.interrupt_in {
            return Err(PipeError::Other(io::Error::new(
                io::ErrorKind::Unsupported,
                "no interrupt-IN endpoint",
            )));
        }
        match self.notifications.pop_front() {
            Some(n) => Ok(n),
            None => {
                tokio::time::sleep(timeout).await;
                Err(PipeError::TimedOut)
            }
        }
    }
}
