//! Resource strings: where an instrument is plugged in.
//!
//! Two spellings are accepted, case-insensitive in their keywords:
//!
//! * PyVISA form: `TCPIP0::192.168.1.50::5025::SOCKET`, `TCPIP::host::5025::SOCKET`,
//!   `ASRL/dev/ttyUSB0::INSTR` (a device path after `ASRL`).
//! * PyVISA LAN instruments: `TCPIP::host::INSTR` / `TCPIP::host::inst0::INSTR`
//!   (VXI-11), `TCPIP::host::hislip0[,port]::INSTR` (HiSLIP).
//! * GPIB through a Prologix-compatible adapter: `GPIB0::5::INSTR` with
//!   the adapter in option `adapter`.
//! * USBTMC: `USB[board]::0xVID::0xPID::SERIAL[::INTERFACE]::INSTR` (VID and
//!   PID in hex with `0x`, or decimal); the Linux kernel driver's character
//!   device as `usbtmc:///dev/usbtmc0`.
//! * URLs: `tcp://host:5025`, `tcp://[::1]:5025`, `vxi11://host[:pmport]/inst0`,
//!   `hislip://host[:port]/hislip0`,
//!   `serial:///dev/ttyUSB0?baud=115200&parity=none&data_bits=8&stop_bits=1&flow=none`.
//!
//! `ASRL3::INSTR` (a numbered port) is a VISA-on-Windows convention; it is
//! rejected on other systems with a hint to name the device path.
//! See docs/DRIVERS.md for the full grammar.

use std::fmt;
use std::str::FromStr;

use serde_json::{Map, Value};

use crate::DriverError;

/// Parity of a serial line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parity {
    /// No parity bit.
    None,
    /// Odd parity.
    Odd,
    /// Even parity.
    Even,
}

/// Flow control of a serial line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowControl {
    /// None.
    None,
    /// XON/XOFF.
    Software,
    /// RTS/CTS.
    Hardware,
}

/// Line settings of a serial port. The default is PyVISA's: 9600 8N1, no flow control.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SerialSettings {
    /// Baud rate.
    pub baud: u32,
    /// Data bits, 5..=8.
    pub data_bits: u8,
    /// Parity.
    pub parity: Parity,
    /// Stop bits, 1 or 2.
    pub stop_bits: u8,
    /// Flow control.
    pub flow: FlowControl,
}

impl Default for SerialSettings {
    fn default() -> Self {
        SerialSettings {
            baud: 9600,
            data_bits: 8,
            parity: Parity::None,
            stop_bits: 1,
            flow: FlowControl::None,
        }
    }
}

impl SerialSettings {
    /// Bits on the wire per byte: start + data + parity + stop.
    pub fn bits_per_byte(&self) -> u32 {
        1 + u32::from(self.data_bits)
            + u32::from(self.parity != Parity::None)
            + u32::from(self.stop_bits)
    }

    /// Apply one `key=value` setting (URL query or config option). Keys:
    /// `baud` (alias `baud_rate`), `data_bits`, `parity`, `stop_bits`, `flow`.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), DriverError> {
        let bad = |why: &str| DriverError::Config(format!("serial setting {key}={value:?}: {why}"));
        match key.to_ascii_lowercase().as_str() {
            "baud" | "baud_rate" => {
                self.baud = value
                    .parse()
                    .ok()
                    .filter(|b| *b > 0)
                    .ok_or_else(|| bad("expected a positive integer"))?
            }
            "data_bits" => {
                self.data_bits = value
                    .parse()
                    .ok()
                    .filter(|b| (5..=8).contains(b))
                    .ok_or_else(|| bad("expected 5, 6, 7 or 8"))?
            }
            "stop_bits" => {
                self.stop_bits = value
                    .parse()
                    .ok()
                    .filter(|b| *b == 1 || *b == 2)
                    .ok_or_else(|| bad("expected 1 or 2"))?
            }
            "parity" => {
                self.parity = match value.to_ascii_lowercase().as_str() {
                    "none" | "n" => Parity::None,
                    "odd" | "o" => Parity::Odd,
                    "even" | "e" => Parity::Even,
                    _ => return Err(bad("expected none, odd or even")),
                }
            }
            "flow" | "flow_control" => {
                self.flow = match value.to_ascii_lowercase().as_str() {
                    "none" => FlowControl::None,
                    "software" | "xon_xoff" | "xonxoff" => FlowControl::Software,
                    "hardware" | "rts_cts" | "rtscts" => FlowControl::Hardware,
                    _ => return Err(bad("expected none, software or hardware")),
                }
            }
            _ => {
                return Err(DriverError::Config(format!(
                "unknown serial setting '{key}' (known: baud, data_bits, parity, stop_bits, flow)"
            )))
            }
        }
        Ok(())
    }
}

/// A parsed resource string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resource {
    /// A raw TCP socket (SCPI-RAW, usually port 5025).
    Tcp {
        /// Host name or address (IPv6 without brackets).
        host: String,
        /// TCP port.
        port: u16,
    },
    /// A VXI-11 device (ONC RPC; the core channel found through the portmapper).
    Vxi11 {
        /// Host name or address (IPv6 without brackets).
        host: String,
        /// The device name given to `create_link` (`inst0`, `gpib0,5`).
        device: String,
        /// The portmapper's TCP port (111).
        portmapper_port: u16,
        /// The core channel's port, skipping the portmapper
        /// (`TCPIP::host,port::INSTR`, as pyvisa-py spells it).
        core_port: Option<u16>,
    },
    /// A HiSLIP (IVI-6.1) device.
    Hislip {
        /// Host name or address (IPv6 without brackets).
        host: String,
        /// The sub-address sent in `Initialize` (`hislip0`).
        device: String,
        /// TCP port (4880).
        port: u16,
        /// The mode asked for (URL `?mode=overlapped`, option `hislip_mode`).
        mode: crate::hislip::HislipMode,
    },
    /// An instrument on a GPIB bus, through a Prologix-compatible adapter.
    Gpib {
        /// The board number of `GPIBn` (informational: the adapter names the bus).
        board: u8,
        /// Primary address, 0..=30.
        address: u8,
        /// Secondary address, 0..=30.
        secondary: Option<u8>,
        /// The adapter's resource (option `adapter`): a serial port or
        /// `tcp://HOST:1234`.
        adapter: Option<String>,
    },
    /// A serial port.
    Serial {
        /// Device path, e.g. `/dev/ttyUSB0` (or `COM3` on Windows).
        path: String,
        /// Line settings.
        settings: SerialSettings,
    },
    /// A USBTMC device (USB Test & Measurement Class), driven through
    /// `nusb`, falling back to the Linux `usbtmc` kernel driver.
    Usbtmc {
        /// The board number of `USBn` (informational).
        board: u8,
        /// idVendor.
        vendor_id: u16,
        /// idProduct.
        product_id: u16,
        /// The device's serial number string.
        serial: String,
        /// The USBTMC interface number (usually 0).
        interface: u8,
    },
    /// A USBTMC device through the Linux kernel driver's character device
    /// (`/dev/usbtmc0`).
    UsbtmcDev {
        /// The device path.
        path: String,
    },
}

impl Resource {
    /// Parse a resource string (see the module docs).
    pub fn parse(s: &str) -> Result<Resource, DriverError> {
        let s = s.trim();
        let bad = |why: &str| DriverError::Config(format!("resource {s:?}: {why}"));
        let lower = s.to_ascii_lowercase();
        if let Some(rest) = strip_prefix_ci(s, "tcp://") {
            let rest = rest.trim_end_matches('/');
            let (host, port) = split_host_port(rest)
                .ok_or_else(|| bad("expected tcp://HOST:PORT (IPv6 as tcp://[::1]:5025)"))?;
            return Ok(Resource::Tcp { host, port });
        }
        for (scheme, hislip) in [("vxi11://", false), ("hislip://", true)] {
            let Some(rest) = strip_prefix_ci(s, scheme) else {
                continue;
            };
            let (rest, query) = match rest.split_once('?') {
                Some((r, q)) => (r, q),
                None => (rest, ""),
            };
            let (authority, path) = match rest.split_once('/') {
                Some((a, p)) => (a, p.trim_end_matches('/')),
                None => (rest, ""),
            };
            let usage = if hislip {
                "expected hislip://HOST[:PORT][/hislip0][?mode=synchronized|overlapped|server]"
            } else {
                "expected vxi11://HOST[:PORTMAPPER_PORT][/inst0][?core_port=N]"
            };
            let (host, port) = split_host_opt_port(authority).ok_or_else(|| bad(usage))?;
            if path.contains('/') {
                return Err(bad(usage));
            }
            let mut core_port = None;
            let mut mode = crate::hislip::HislipMode::default();
            for pair in query.split('&').filter(|p| !p.is_empty()) {
                match pair.split_once('=') {
                    Some(("mode", v)) if hislip => {
                        mode = crate::hislip::HislipMode::parse(v)
                            .ok_or_else(|| bad("mode must be synchronized, overlapped or server"))?
                    }
                    Some(("core_port", v)) if !hislip => {
                        core_port = Some(
                            v.parse::<u16>()
                                .ok()
                                .filter(|p| *p > 0)
                                .ok_or_else(|| bad("core_port must be 1..=65535"))?,
                        )
                    }
                    _ => return Err(bad(usage)),
                }
            }
            return Ok(if hislip {
                Resource::Hislip {
                    host,
                    device: if path.is_empty() { "hislip0" } else { path }.to_string(),
                    port: port.unwrap_or(crate::hislip::PORT),
                    mode,
                }
            } else {
                Resource::Vxi11 {
                    host,
                    device: if path.is_empty() { "inst0" } else { path }.to_string(),
                    portmapper_port: port.unwrap_or(crate::vxi11::PMAP_PORT),
                    core_port,
                }
            });
        }
        if let Some(rest) = strip_prefix_ci(s, "usbtmc://") {
            if !rest.starts_with('/') || rest.len() < 2 {
                return Err(bad("expected usbtmc:///dev/usbtmcN"));
            }
            return Ok(Resource::UsbtmcDev {
                path: rest.to_string(),
            });
        }
        if lower.starts_with("usb") {
            return usb_instr(s).map_err(bad);
        }
        if let Some(rest) = strip_prefix_ci(s, "serial://") {
            let (path, query) = match rest.split_once('?') {
                Some((p, q)) => (p, q),
                None => (rest, ""),
            };
            if path.is_empty() {
                return Err(bad("expected serial:///dev/ttyUSB0?baud=9600"));
            }
            let mut settings = SerialSettings::default();
            for pair in query.split('&').filter(|p| !p.is_empty()) {
                let (k, v) = pair
                    .split_once('=')
                    .ok_or_else(|| bad(&format!("query item {pair:?} is not key=value")))?;
                settings.set(k, v)?;
            }
            return Ok(Resource::Serial {
                path: path.to_string(),
                settings,
            });
        }
        if lower.starts_with("tcpip") {
            let parts: Vec<&str> = s.split("::").collect();
            let board = parts.first().and_then(|b| b.get(5..)).unwrap_or("");
            if !board.chars().all(|c| c.is_ascii_digit()) {
                return Err(bad("expected TCPIP[board]::HOST::PORT::SOCKET"));
            }
            return match parts.as_slice() {
                [_, host, port, kind] if kind.eq_ignore_ascii_case("SOCKET") => {
                    let port: u16 = port
                        .parse()
                        .ok()
                        .filter(|p| *p > 0)
                        .ok_or_else(|| bad("port must be 1..=65535"))?;
                    if host.is_empty() {
                        return Err(bad("empty host"));
                    }
                    Ok(Resource::Tcp {
                        host: host.to_string(),
                        port,
                    })
                }
                [_, host, kind] if kind.eq_ignore_ascii_case("INSTR") => {
                    lan_instr(host, "inst0").map_err(bad)
                }
                [_, host, device, kind] if kind.eq_ignore_ascii_case("INSTR") => {
                    lan_instr(host, device).map_err(bad)
                }
                _ => Err(bad(
                    "expected TCPIP[board]::HOST::PORT::SOCKET or TCPIP[board]::HOST[::DEVICE]::INSTR",
                )),
            };
        }
        if lower.starts_with("gpib") {
            let parts: Vec<&str> = s.split("::").collect();
            let usage = "expected GPIB[board]::ADDRESS[::SECONDARY]::INSTR (addresses 0..=30)";
            let board: u8 = match parts.first().and_then(|b| b.get(4..)) {
                Some("") => 0,
                Some(b) => b.parse().map_err(|_| bad(usage))?,
                None => return Err(bad(usage)),
            };
            let addr = |t: &str| {
                t.parse::<u8>()
                    .ok()
                    .filter(|a| *a <= 30)
                    .ok_or_else(|| bad(usage))
            };
            return match parts.as_slice() {
                [_, a, kind] if kind.eq_ignore_ascii_case("INSTR") => Ok(Resource::Gpib {
                    board,
                    address: addr(a)?,
                    secondary: None,
                    adapter: None,
                }),
                [_, a, sec, kind] if kind.eq_ignore_ascii_case("INSTR") => Ok(Resource::Gpib {
                    board,
                    address: addr(a)?,
                    secondary: Some(addr(sec)?),
                    adapter: None,
                }),
                _ => Err(bad(usage)),
            };
        }
        if lower.starts_with("asrl") {
            let body = s.get(4..).unwrap_or("");
            let path = match body.rsplit_once("::") {
                Some((p, kind)) if kind.eq_ignore_ascii_case("INSTR") => p,
                Some(_) => return Err(bad("expected ASRL<device>::INSTR")),
                None => body,
            };
            if path.is_empty() {
                return Err(bad(
                    "expected ASRL<device>::INSTR, e.g. ASRL/dev/ttyUSB0::INSTR",
                ));
            }
            if path.chars().all(|c| c.is_ascii_digit()) {
                if cfg!(windows) {
                    return Ok(Resource::Serial {
                        path: format!("COM{path}"),
                        settings: SerialSettings::default(),
                    });
                }
                return Err(bad(
                    "numbered serial ports (ASRLn) are a Windows convention; \
                     name the device, e.g. ASRL/dev/ttyUSB0::INSTR",
                ));
            }
            return Ok(Resource::Serial {
                path: path.to_string(),
                settings: SerialSettings::default(),
            });
        }
        Err(bad(
            "expected TCPIP::HOST::PORT::SOCKET, TCPIP::HOST[::DEVICE]::INSTR, \
             GPIB0::ADDRESS::INSTR, USB0::0xVID::0xPID::SERIAL::INSTR, ASRL/dev/DEVICE::INSTR, \
             tcp://HOST:PORT, vxi11://HOST/inst0, hislip://HOST/hislip0, usbtmc:///dev/usbtmc0 \
             or serial:///dev/DEVICE?baud=N",
        ))
    }

    /// Whether the link is message-based (VXI-11, HiSLIP): the instrument
    /// marks the end of every message, no byte stream.
    pub fn is_message_based(&self) -> bool {
        matches!(
            self,
            Resource::Vxi11 { .. }
                | Resource::Hislip { .. }
                | Resource::Usbtmc { .. }
                | Resource::UsbtmcDev { .. }
        )
    }

    /// Apply serial line options from an instrument's `options` table
    /// (`baud`, `data_bits`, `parity`, `stop_bits`, `flow`); other keys are
    /// ignored here. Does nothing for TCP resources.
    pub fn apply_options(&mut self, options: &Map<String, Value>) -> Result<(), DriverError> {
        if let Resource::Hislip { mode, .. } = self {
            if let Some(v) = options.get("hislip_mode") {
                *mode = v
                    .as_str()
                    .and_then(crate::hislip::HislipMode::parse)
                    .ok_or_else(|| {
                        DriverError::Config(
                            "option 'hislip_mode': expected \"synchronized\", \"overlapped\" or \"server\""
                                .into(),
                        )
                    })?;
            }
        }
        if let Resource::Gpib { adapter, .. } = self {
            if let Some(v) = options.get("adapter") {
                *adapter = Some(
                    v.as_str()
                        .ok_or_else(|| {
                            DriverError::Config(
                                "option 'adapter': expected a resource string such as \
                                 tcp://HOST:1234 or serial:///dev/ttyUSB0?baud=115200"
                                    .into(),
                            )
                        })?
                        .to_string(),
                );
            }
        }
        if let Resource::Serial { settings, .. } = self {
            for key in [
                "baud",
                "baud_rate",
                "data_bits",
                "parity",
                "stop_bits",
                "flow",
            ] {
                if let Some(v) = options.get(key) {
                    let text = match v {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    settings.set(key, &text)?;
                }
            }
        }
        Ok(())
    }
}

impl FromStr for Resource {
    type Err = DriverError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Resource::parse(s)
    }
}

impl fmt::Display for Resource {
    /// The URL form, which [`Resource::parse`] reads back.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Resource::Tcp { host, port } if host.contains(':') => {
                write!(f, "tcp://[{host}]:{port}")
            }
            Resource::Tcp { host, port } => write!(f, "tcp://{host}:{port}"),
            Resource::Vxi11 {
                host,
                device,
                portmapper_port,
                core_port,
            } => {
                write!(f, "vxi11://{}:{portmapper_port}/{device}", bracket(host))?;
                match core_port {
                    Some(p) => write!(f, "?core_port={p}"),
                    None => Ok(()),
                }
            }
            Resource::Hislip {
                host,
                device,
                port,
                mode,
            } => {
                write!(f, "hislip://{}:{port}/{device}", bracket(host))?;
                if *mode != crate::hislip::HislipMode::default() {
                    write!(f, "?mode={}", mode.name())?;
                }
                Ok(())
            }
            Resource::Gpib {
                board,
                address,
                secondary,
                ..
            } => match secondary {
                Some(sec) => write!(f, "GPIB{board}::{address}::{sec}::INSTR"),
                None => write!(f, "GPIB{board}::{address}::INSTR"),
            },
            Resource::Usbtmc {
                board,
                vendor_id,
                product_id,
                serial,
                interface,
            } => {
                write!(
                    f,
                    "USB{board}::0x{vendor_id:04X}::0x{product_id:04X}::{serial}::"
                )?;
                if *interface != 0 {
                    write!(f, "{interface}::")?;
                }
                write!(f, "INSTR")
            }
            Resource::UsbtmcDev { path } => write!(f, "usbtmc://{path}"),
            Resource::Serial { path, settings } => {
                let parity = match settings.parity {
                    Parity::None => "none",
                    Parity::Odd => "odd",
                    Parity::Even => "even",
                };
                let flow = match settings.flow {
                    FlowControl::None => "none",
                    FlowControl::Software => "software",
                    FlowControl::Hardware => "hardware",
                };
                write!(
                    f,
                    "serial://{path}?baud={}&data_bits={}&parity={parity}&stop_bits={}&flow={flow}",
                    settings.baud, settings.data_bits, settings.stop_bits
                )
            }
        }
    }
}

fn bracket(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    }
}

/// `TCPIP::HOST[,PORT]::DEVICE::INSTR`: HiSLIP when the device is
/// `hislipN[,PORT]`, VXI-11 otherwise (`HOST,PORT` names the core channel).
fn lan_instr(host: &str, device: &str) -> Result<Resource, &'static str> {
    let port = |p: &str| -> Result<u16, &'static str> {
        p.trim()
            .parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or("port must be 1..=65535")
    };
    if device.to_ascii_lowercase().starts_with("hislip") {
        let (device, p) = match device.split_once(',') {
            Some((d, p)) => (d, port(p)?),
            None => (device, crate::hislip::PORT),
        };
        if host.is_empty() || host.contains(',') {
            return Err("expected TCPIP::HOST::hislip0[,PORT]::INSTR");
        }
        return Ok(Resource::Hislip {
            host: host.to_string(),
            device: device.to_string(),
            port: p,
            mode: crate::hislip::HislipMode::default(),
        });
    }
    let (host, core_port) = match host.split_once(',') {
        Some((h, p)) => (h, Some(port(p)?)),
        None => (host, None),
    };
    if host.is_empty() || device.is_empty() {
        return Err("expected TCPIP[board]::HOST[::inst0]::INSTR");
    }
    Ok(Resource::Vxi11 {
        host: host.to_string(),
        device: device.to_string(),
        portmapper_port: crate::vxi11::PMAP_PORT,
        core_port,
    })
}

/// `USB[board]::VID::PID::SERIAL[::INTERFACE]::INSTR`.
fn usb_instr(s: &str) -> Result<Resource, &'static str> {
    const USAGE: &str = "expected USB[board]::0xVID::0xPID::SERIAL[::INTERFACE]::INSTR";
    let parts: Vec<&str> = s.split("::").collect();
    let board: u8 = match parts.first().and_then(|b| b.get(3..)) {
        Some("") => 0,
        Some(b) => b.parse().map_err(|_| USAGE)?,
        None => return Err(USAGE),
    };
    let id = |t: &str| -> Result<u16, &'static str> {
        let t = t.trim();
        match t.get(..2) {
            Some(p) if p.eq_ignore_ascii_case("0x") => {
                u16::from_str_radix(t.get(2..).unwrap_or(""), 16).map_err(|_| USAGE)
            }
            _ => t.parse().map_err(|_| USAGE),
        }
    };
    let (vid, pid, serial, interface) = match parts.as_slice() {
        [_, v, p, serial, kind] if kind.eq_ignore_ascii_case("INSTR") => (v, p, serial, 0),
        [_, v, p, serial, i, kind] if kind.eq_ignore_ascii_case("INSTR") => {
            (v, p, serial, i.parse::<u8>().map_err(|_| USAGE)?)
        }
        _ => return Err(USAGE),
    };
    if serial.is_empty() {
        return Err("USB resource needs the device's serial number (see `labmesh scan`)");
    }
    Ok(Resource::Usbtmc {
        board,
        vendor_id: id(vid)?,
        product_id: id(pid)?,
        serial: serial.to_string(),
        interface,
    })
}

/// `host`, `host:port`, `[v6]`, `[v6]:port`.
fn split_host_opt_port(s: &str) -> Option<(String, Option<u16>)> {
    if let Some(rest) = s.strip_prefix('[') {
        let (h, p) = rest.split_once(']')?;
        if h.is_empty() {
            return None;
        }
        return match p {
            "" => Some((h.to_string(), None)),
            p => Some((
                h.to_string(),
                Some(p.strip_prefix(':')?.parse().ok().filter(|p| *p > 0)?),
            )),
        };
    }
    match s.split_once(':') {
        None if !s.is_empty() => Some((s.to_string(), None)),
        None => None,
        Some(_) => split_host_port(s).map(|(h, p)| (h, Some(p))),
    }
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    if head.eq_ignore_ascii_case(prefix) {
        s.get(prefix.len()..)
    } else {
        None
    }
}

fn split_host_port(s: &str) -> Option<(String, u16)> {
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (h, p) = rest.split_once(']')?;
        (h, p.strip_prefix(':')?)
    } else {
        s.rsplit_once(':')?
    };
    if host.is_empty() || (host.contains(':') && !s.starts_with('[')) {
        return None;
    }
    let port: u16 = port.parse().ok().filter(|p| *p > 0)?;
    Some((host.to_string(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp(host: &str, port: u16) -> Resource {
        Resource::Tcp {
            host: host.into(),
            port,
        }
    }

    fn vxi11(host: &str, device: &str, pm: u16, core: Option<u16>) -> Resource {
        Resource::Vxi11 {
            host: host.into(),
            device: device.into(),
            portmapper_port: pm,
            core_port: core,
        }
    }

    fn hislip(host: &str, device: &str, port: u16) -> Resource {
        Resource::Hislip {
            host: host.into(),
            device: device.into(),
            port,
            mode: crate::hislip::HislipMode::Synchronized,
        }
    }

    fn gpib(board: u8, address: u8, secondary: Option<u8>) -> Resource {
        Resource::Gpib {
            board,
            address,
            secondary,
            adapter: None,
        }
    }

    fn usb(vid: u16, pid: u16, serial: &str, interface: u8) -> Resource {
        Resource::Usbtmc {
            board: 0,
            vendor_id: vid,
            product_id: pid,
            serial: serial.into(),
            interface,
        }
    }

    fn serial(path: &str, f: impl FnOnce(&mut SerialSettings)) -> Resource {
        let mut settings = SerialSettings::default();
        f(&mut settings);
        Resource::Serial {
            path: path.into(),
            settings,
        }
    }

    #[test]
    fn parses_the_table() {
        let table: Vec<(&str, Resource)> =
            vec![
            (
                "TCPIP0::192.168.1.50::5025::SOCKET",
                tcp("192.168.1.50", 5025),
            ),
            ("TCPIP::host::5025::SOCKET", tcp("host", 5025)),
            ("tcpip1::lab-psu.local::5025::socket", tcp("lab-psu.local", 5025)),
            ("tcp://host:5025", tcp("host", 5025)),
            ("TCP://127.0.0.1:1/", tcp("127.0.0.1", 1)),
            ("tcp://[::1]:5025", tcp("::1", 5025)),
            ("TCPIP::10.0.0.5::INSTR", vxi11("10.0.0.5", "inst0", 111, None)),
            ("TCPIP0::host::inst1::INSTR", vxi11("host", "inst1", 111, None)),
            ("tcpip::host,1024::inst0::instr", vxi11("host", "inst0", 111, Some(1024))),
            ("TCPIP::host::gpib0,5::INSTR", vxi11("host", "gpib0,5", 111, None)),
            ("vxi11://host", vxi11("host", "inst0", 111, None)),
            ("vxi11://127.0.0.1:4111/inst0", vxi11("127.0.0.1", "inst0", 4111, None)),
            ("vxi11://[::1]:4111/inst0?core_port=9", vxi11("::1", "inst0", 4111, Some(9))),
            ("TCPIP::host::hislip0::INSTR", hislip("host", "hislip0", 4880)),
            ("TCPIP1::host::HISLIP1,5000::INSTR", hislip("host", "HISLIP1", 5000)),
            ("hislip://host", hislip("host", "hislip0", 4880)),
            ("hislip://127.0.0.1:4881/hislip0", hislip("127.0.0.1", "hislip0", 4881)),
            (
                "hislip://h/hislip0?mode=overlapped",
                Resource::Hislip {
                    host: "h".into(),
                    device: "hislip0".into(),
                    port: 4880,
                    mode: crate::hislip::HislipMode::Overlapped,
                },
            ),
            ("GPIB0::5::INSTR", gpib(0, 5, None)),
            ("gpib1::12::3::instr", gpib(1, 12, Some(3))),
            ("GPIB::30::INSTR", gpib(0, 30, None)),
            ("USB0::0x1AB1::0x0E11::DP8C123456::INSTR", usb(0x1AB1, 0x0E11, "DP8C123456", 0)),
            ("usb::0x2a8d::0x1202::MY5900::0::instr", usb(0x2A8D, 0x1202, "MY5900", 0)),
            ("USB0::6833::3601::SN1::1::INSTR", usb(6833, 3601, "SN1", 1)),
            (
                "usbtmc:///dev/usbtmc0",
                Resource::UsbtmcDev {
                    path: "/dev/usbtmc0".into(),
                },
            ),
            ("ASRL/dev/ttyUSB0::INSTR", serial("/dev/ttyUSB0", |_| {})),
            ("asrl/dev/ttyACM1::instr", serial("/dev/ttyACM1", |_| {})),
            ("serial:///dev/ttyUSB0", serial("/dev/ttyUSB0", |_| {})),
            (
                "serial:///dev/ttyUSB0?baud=115200&parity=none&data_bits=8&stop_bits=1&flow=none",
                serial("/dev/ttyUSB0", |s| s.baud = 115200),
            ),
            (
                "serial:///dev/ttyS1?baud=19200&parity=even&data_bits=7&stop_bits=2&flow=hardware",
                serial("/dev/ttyS1", |s| {
                    s.baud = 19200;
                    s.parity = Parity::Even;
                    s.data_bits = 7;
                    s.stop_bits = 2;
                    s.flow = FlowControl::Hardware;
                }),
            ),
        ];
        for (text, want) in table {
            let got = Resource::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(got, want, "{text}");
            // Display round-trips.
            assert_eq!(Resource::parse(&got.to_string()).unwrap(), want, "{text}");
        }
    }

    #[test]
    fn rejects_the_table_with_a_reason() {
        let table = [
            ("", "expected"),
            ("TCPIP::host::SOCKET", "expected TCPIP"),
            ("TCPIP::host::0::SOCKET", "port"),
            ("TCPIP::host::99999::SOCKET", "port"),
            ("TCPIP::host,0::INSTR", "port"),
            ("TCPIP::host::hislip0,x::INSTR", "port"),
            ("vxi11://", "vxi11://HOST"),
            ("vxi11://host/a/b", "vxi11://HOST"),
            ("vxi11://host/inst0?core_port=0", "core_port"),
            ("hislip://host:99999", "hislip://HOST"),
            ("hislip://host/hislip0?mode=fast", "mode must be"),
            ("hislip://host/hislip0?core_port=1", "hislip://HOST"),
            ("TCPIPx::host::5025::SOCKET", "expected TCPIP"),
            ("tcp://host", "tcp://HOST:PORT"),
            ("tcp://:5025", "tcp://HOST:PORT"),
            ("tcp://::1:5025", "tcp://HOST:PORT"),
            ("serial://", "serial:///dev"),
            ("serial:///dev/ttyUSB0?baud=fast", "baud"),
            ("serial:///dev/ttyUSB0?parity=mark", "parity"),
            ("serial:///dev/ttyUSB0?data_bits=9", "data_bits"),
            ("serial:///dev/ttyUSB0?stop_bits=3", "stop_bits"),
            ("serial:///dev/ttyUSB0?speed=9600", "unknown serial setting"),
            ("serial:///dev/ttyUSB0?baud", "key=value"),
            ("ASRL::INSTR", "ASRL<device>"),
            ("GPIB0::31::INSTR", "GPIB[board]"),
            ("GPIB::8::SOCKET", "GPIB[board]"),
            ("GPIBx::8::INSTR", "GPIB[board]"),
            ("USB0::0x1AB1::0x0E11::INSTR", "USB[board]"),
            ("USB0::0x1AB1::0x0E11::::INSTR", "serial number"),
            ("USB0::0xZZ::0x0E11::SN::INSTR", "USB[board]"),
            ("USB0::0x1AB1::0x10000::SN::INSTR", "USB[board]"),
            ("USB0::0x1AB1::0x0E11::SN::x::INSTR", "USB[board]"),
            ("USBx::0x1AB1::0x0E11::SN::INSTR", "USB[board]"),
            ("usbtmc://dev", "usbtmc:///dev"),
        ];
        for (text, why) in table {
            let e = Resource::parse(text).expect_err(text);
            assert_eq!(e.code(), 500, "{text}");
            assert!(e.to_string().contains(why), "{text}: {e}");
        }
    }

    #[cfg(not(windows))]
    #[test]
    fn numbered_asrl_is_an_error_off_windows() {
        let e = Resource::parse("ASRL3::INSTR").unwrap_err();
        assert!(e.to_string().contains("/dev/ttyUSB0"), "{e}");
    }

    #[test]
    fn options_override_serial_settings() {
        let mut r = Resource::parse("ASRL/dev/ttyUSB0::INSTR").unwrap();
        let opts: Map<String, Value> = serde_json::from_value(serde_json::json!({
            "baud": 115200, "parity": "odd", "timeout_ms": 5
        }))
        .unwrap();
        r.apply_options(&opts).unwrap();
        assert_eq!(
            r,
            serial("/dev/ttyUSB0", |s| {
                s.baud = 115200;
                s.parity = Parity::Odd
            })
        );
        let bad: Map<String, Value> =
            serde_json::from_value(serde_json::json!({"baud": -1})).unwrap();
        assert!(r.apply_options(&bad).is_err());
        assert_eq!(SerialSettings::default().bits_per_byte(), 10);
    }
}
