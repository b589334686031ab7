//! Byte links to instruments: a raw TCP socket or a serial port.
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

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_serial::{SerialPort, SerialPortBuilderExt, SerialStream};

use crate::resource::{FlowControl, Parity, Resource, SerialSettings};
use crate::DriverError;

/// An open link to an instrument.
#[derive(Debug)]
pub enum Link {
    /// A TCP connection.
    Tcp(TcpStream),
    /// A serial port.
    Serial(SerialStream),
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
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Link::Tcp(s) => Pin::new(s).poll_flush(cx),
            Link::Serial(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Link::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Link::Serial(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}
