//! Links to instruments: a raw TCP socket or a serial port (byte
//! streams), or a VXI-11 / HiSLIP / USBTMC link (message-based: the
//! instrument marks the end of each message).
//!
//! The SCPI session talks through [`Link::send`] and [`Link::recv`], which
//! work for every kind; the byte streams also implement `AsyncRead` /
//! `AsyncWrite` (the message links answer those with `Unsupported`).
//!
//! [`Link::open`] takes a parsed [`Resource`]. TCP sockets have
//! `TCP_NODELAY` set (an SCPI query is one small write followed by a read;
//! Nagle plus delayed ACK would add tens of milliseconds to each). Serial
//! ports are opened through `tokio-serial` (no libudev), exclusive while open,
//! with stale input discarded on open.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_serial::{SerialPort, SerialPortBuilderExt, SerialStream};

use crate::gpib::GpibLink;
use crate::hislip::HislipLink;
use crate::resource::{FlowControl, Parity, Resource, SerialSettings};
use crate::usbtmc::{DevUsbtmc, UsbLink, UsbtmcLink};
use crate::vxi11::Vxi11Link;
use crate::DriverError;

/// An open link to an instrument.
#[derive(Debug)]
pub enum Link {
    /// A TCP connection.
    Tcp(TcpStream),
    /// A serial port.
    Serial(SerialStream),
    /// A VXI-11 core channel with its device link.
    Vxi11(Box<Vxi11Link>),
    /// A HiSLIP session (synchronous and asynchronous channels).
    Hislip(Box<HislipLink>),
    /// An instrument on a Prologix-compatible GPIB adapter.
    Gpib(Box<GpibLink>),
    /// A USBTMC device (framing done here, through nusb or a simulated device).
    Usbtmc(Box<UsbtmcLink>),
    /// A USBTMC device through the Linux kernel driver (`/dev/usbtmcN`).
    UsbtmcDev(Box<DevUsbtmc>),
}

/// How a [`Link::send`] or [`Link::recv`] failed.
#[derive(Debug)]
pub enum LinkFailure {
    /// Nothing within the time allowed; the exchange is out of step.
    TimedOut,
    /// The byte stream failed or was closed.
    Io(io::Error),
    /// A message link's own error (already a [`DriverError`]).
    Driver(DriverError),
}

impl From<DriverError> for LinkFailure {
    fn from(e: DriverError) -> Self {
        match e {
            DriverError::Timeout(_) => LinkFailure::TimedOut,
            e => LinkFailure::Driver(e),
        }
    }
}

impl Link {
    /// Open the link `resource` names, giving up after `connect_timeout`.
    /// Failures are [`DriverError::Link`] (retry later) except settings the
    /// port rejects, which are [`DriverError::Config`].
    pub async fn open(resource: &Resource, connect_timeout: Duration) -> Result<Link, DriverError> {
        match resource {
            Resource::Tcp { host, port } => {
                let connect = TcpStream::connect((host.as_str(), *port));
                let stream = match tokio::time::timeout(connect_timeout, connect).await {
                    Err(_) => {
                        return Err(DriverError::link(
                            format!("connecting to {host}:{port}"),
                            io::Error::new(
                                io::ErrorKind::TimedOut,
                                format!("timed out after {connect_timeout:?}"),
                            ),
                        ))
                    }
                    Ok(Err(e)) => {
                        return Err(DriverError::link(
                            format!("cannot connect to {host}:{port}"),
                            e,
                        ))
                    }
                    Ok(Ok(s)) => s,
                };
                stream
                    .set_nodelay(true)
                    .map_err(|e| DriverError::link(format!("TCP_NODELAY on {host}:{port}"), e))?;
                Ok(Link::Tcp(stream))
            }
            Resource::Serial { path, settings } => open_serial(path, settings).map(Link::Serial),
            Resource::Vxi11 {
                host,
                device,
                portmapper_port,
                core_port,
            } => Vxi11Link::connect(host, *portmapper_port, *core_port, device, connect_timeout)
                .await
                .map(|l| Link::Vxi11(Box::new(l))),
            Resource::Gpib {
                address,
                secondary,
                adapter,
                ..
            } => {
                let adapter = adapter.as_deref().ok_or_else(|| {
                    DriverError::Config(format!(
                        "resource {resource}: GPIB needs option 'adapter' (the Prologix-compatible \
                         adapter: tcp://HOST:1234 or serial:///dev/ttyUSB0?baud=115200)"
                    ))
                })?;
                // Boxed: opening the adapter opens a (byte-stream) Link.
                Box::pin(GpibLink::open(
                    adapter,
                    *address,
                    *secondary,
                    connect_timeout,
                ))
                .await
                .map(|l| Link::Gpib(Box::new(l)))
            }
            Resource::Hislip {
                host,
                device,
                port,
                mode,
            } => HislipLink::connect_mode(host, *port, device, *mode, connect_timeout)
                .await
                .map(|l| Link::Hislip(Box::new(l))),
            Resource::Usbtmc {
                vendor_id,
                product_id,
                serial,
                interface,
                ..
            } => {
                let l = crate::usbtmc::open_resource(
                    *vendor_id,
                    *product_id,
                    serial,
                    *interface,
                    connect_timeout,
                )
                .await?;
                Ok(match l {
                    UsbLink::Nusb(l) => Link::Usbtmc(l),
                    UsbLink::Kernel(d) => Link::UsbtmcDev(d),
                })
            }
            Resource::UsbtmcDev { path } => DevUsbtmc::open(path)
                .await
                .map(|d| Link::UsbtmcDev(Box::new(d))),
        }
    }

    /// The exchange (a command and its reply, if any) is over: a shared
    /// GPIB adapter is released for other instruments. No-op otherwise.
    pub fn end_exchange(&mut self) {
        if let Link::Gpib(l) = self {
            l.end_exchange();
        }
    }

    /// Whether the link is message-based (VXI-11, HiSLIP, USBTMC).
    pub fn is_message_based(&self) -> bool {
        matches!(
            self,
            Link::Vxi11(_) | Link::Hislip(_) | Link::Usbtmc(_) | Link::UsbtmcDev(_)
        )
    }

    /// Whether the link gets back in step by itself after a timeout or a
    /// failed transfer (USBTMC aborts the transfer and clears the device
    /// before the next one), so the session need not reopen it.
    pub fn resyncs_itself(&self) -> bool {
        matches!(self, Link::Usbtmc(_))
    }

    /// Send one message (`bytes`, already terminated) within `timeout`.
    pub async fn send(&mut self, bytes: &[u8], timeout: Duration) -> Result<(), LinkFailure> {
        match self {
            Link::Vxi11(l) => Ok(l.write(bytes, timeout).await?),
            Link::Hislip(l) => Ok(l.write(bytes, timeout).await?),
            Link::Usbtmc(l) => Ok(l.write(bytes, timeout).await?),
            Link::UsbtmcDev(l) => Ok(l.write(bytes, timeout).await?),
            Link::Gpib(l) => {
                // A failed exchange must not keep the shared adapter.
                let r = l.send(bytes, timeout).await;
                if r.is_err() {
                    l.end_exchange();
                }
                r
            }
            stream => match tokio::time::timeout(timeout, stream.write_all(bytes)).await {
                Err(_) => Err(LinkFailure::TimedOut),
                Ok(Err(e)) => Err(LinkFailure::Io(e)),
                Ok(Ok(())) => Ok(()),
            },
        }
    }

    /// Receive more of a reply before `deadline`, appending at most
    /// `max` bytes to `buf`. Returns whether the instrument marked the end
    /// of its message (message links only; a byte stream never does). A
    /// closed stream is a [`LinkFailure::Io`] of kind `UnexpectedEof`.
    pub async fn recv(
        &mut self,
        buf: &mut Vec<u8>,
        max: usize,
        deadline: tokio::time::Instant,
    ) -> Result<bool, LinkFailure> {
        match self {
            Link::Vxi11(l) => {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                if left.is_zero() {
                    return Err(LinkFailure::TimedOut);
                }
                let chunk = l.read(max.max(1), None, left).await?;
                buf.extend_from_slice(&chunk.data);
                Ok(chunk.reason & crate::vxi11::REASON_END != 0)
            }
            Link::Gpib(l) => {
                let r = l.recv(buf, deadline).await;
                if r.is_err() {
                    l.end_exchange();
                }
                r
            }
            Link::Hislip(l) => {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                if left.is_zero() {
                    return Err(LinkFailure::TimedOut);
                }
                let (data, end) = l.read(left).await?;
                buf.extend_from_slice(&data);
                Ok(end)
            }
            Link::Usbtmc(l) => {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                if left.is_zero() {
                    return Err(LinkFailure::TimedOut);
                }
                let (data, end) = l.read(max.max(1), left).await?;
                buf.extend_from_slice(&data);
                Ok(end)
            }
            Link::UsbtmcDev(l) => {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                if left.is_zero() {
                    return Err(LinkFailure::TimedOut);
                }
                let (data, end) = l.read(max.max(1), left).await?;
                buf.extend_from_slice(&data);
                Ok(end)
            }
            stream => {
                // Read straight into the buffer, up to 64 KiB (and `max`)
                // at a time: a 1 MiB block in 4 KiB reads costs 256 wakeups.
                let want = max.clamp(1, 64 * 1024);
                buf.reserve(want);
                let mut limited = AsyncReadExt::take(&mut *stream, want as u64);
                match tokio::time::timeout_at(deadline, limited.read_buf(buf)).await {
                    Err(_) => Err(LinkFailure::TimedOut),
                    Ok(Ok(0)) => Err(LinkFailure::Io(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "closed by the instrument",
                    ))),
                    Ok(Ok(_)) => Ok(false),
                    Ok(Err(e)) => Err(LinkFailure::Io(e)),
                }
            }
        }
    }

    /// Ask the instrument to clear its input and output (VXI-11
    /// device_clear, HiSLIP AsyncDeviceClear). Byte streams have no such message:
    /// `Ok(false)`, and the caller resynchronises its own way.
    pub async fn device_clear(&mut self, timeout: Duration) -> Result<bool, DriverError> {
        match self {
            Link::Vxi11(l) => l.clear(timeout).await.map(|()| true),
            Link::Hislip(l) => l.clear(timeout).await.map(|()| true),
            Link::Gpib(l) => l.clear(timeout).await.map(|()| true),
            Link::Usbtmc(l) => l.clear(timeout).await.map(|()| true),
            _ => Ok(false),
        }
    }

    /// Close politely (VXI-11 destroy_link; HiSLIP and streams: shutdown),
    /// within `timeout`.
    pub async fn close(mut self, timeout: Duration) {
        match &mut self {
            Link::Vxi11(l) => l.close(timeout).await,
            Link::Hislip(l) => l.close(timeout).await,
            Link::Gpib(l) => l.end_exchange(),
            Link::Usbtmc(_) | Link::UsbtmcDev(_) => {}
            stream => {
                let _ = tokio::time::timeout(timeout, stream.shutdown()).await;
            }
        }
    }

    /// Whether this is a serial link.
    pub fn is_serial(&self) -> bool {
        matches!(self, Link::Serial(_))
    }

    /// Discard bytes received but not yet read (serial only; a fresh TCP
    /// connection has none).
    pub fn discard_input(&mut self) {
        if let Link::Serial(s) = self {
            if let Err(e) = s.clear(tokio_serial::ClearBuffer::Input) {
                tracing::debug!("clearing serial input: {e}");
            }
        }
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        // Release the TIOCEXCL lock so the port can be reopened even when
        // another descriptor (e.g. a simulator's) keeps the tty alive.
        if let Link::Serial(s) = self {
            let _ = s.set_exclusive(false);
        }
    }
}

fn open_serial(path: &str, settings: &SerialSettings) -> Result<SerialStream, DriverError> {
    let data_bits = match settings.data_bits {
        5 => tokio_serial::DataBits::Five,
        6 => tokio_serial::DataBits::Six,
        7 => tokio_serial::DataBits::Seven,
        8 => tokio_serial::DataBits::Eight,
        n => return Err(DriverError::Config(format!("{n} data bits"))),
    };
    let stop_bits = match settings.stop_bits {
        1 => tokio_serial::StopBits::One,
        2 => tokio_serial::StopBits::Two,
        n => return Err(DriverError::Config(format!("{n} stop bits"))),
    };
    let parity = match settings.parity {
        Parity::None => tokio_serial::Parity::None,
        Parity::Odd => tokio_serial::Parity::Odd,
        Parity::Even => tokio_serial::Parity::Even,
    };
    let flow = match settings.flow {
        FlowControl::None => tokio_serial::FlowControl::None,
        FlowControl::Software => tokio_serial::FlowControl::Software,
        FlowControl::Hardware => tokio_serial::FlowControl::Hardware,
    };
    let builder = tokio_serial::new(path, settings.baud)
        .data_bits(data_bits)
        .stop_bits(stop_bits)
        .parity(parity)
        .flow_control(flow);
    let stream = builder.open_native_async().map_err(|e| match e.kind {
        tokio_serial::ErrorKind::InvalidInput => {
            DriverError::Config(format!("serial port {path}: {e}"))
        }
        _ => DriverError::link(
            format!("cannot open serial port {path}"),
            io::Error::from(e),
        ),
    })?;
    if let Err(e) = stream.clear(tokio_serial::ClearBuffer::All) {
        tracing::debug!("clearing {path} on open: {e}");
    }
    Ok(stream)
}

impl AsyncRead for Link {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Link::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Link::Serial(s) => Pin::new(s).poll_read(cx, buf),
            _ => Poll::Ready(Err(not_a_stream())),
        }
    }
}

impl AsyncWrite for Link {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Link::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Link::Serial(s) => Pin::new(s).poll_write(cx, buf),
            _ => Poll::Ready(Err(not_a_stream())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Link::Tcp(s) => Pin::new(s).poll_flush(cx),
            Link::Serial(s) => Pin::new(s).poll_flush(cx),
            _ => Poll::Ready(Err(not_a_stream())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Link::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Link::Serial(s) => Pin::new(s).poll_shutdown(cx),
            _ => Poll::Ready(Err(not_a_stream())),
        }
    }
}

fn not_a_stream() -> io::Error {
    io::Error::new(
        io::ErrorKind::Unsupported,
        "a message-based link (VXI-11, HiSLIP, USBTMC, GPIB) is not a byte stream",
    )
}
