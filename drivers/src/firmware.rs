//! `firmware`: a microcontroller instrument speaking the firmware-proto
//! device link (postcard + COBS + CRC frames, docs/PROTOCOL.md (Device link)) over a
//! serial port, here the firmware bench PSU (`firmware_proto::psu`).
//!
//! * [`FirmwareDriver`]: the driver. It opens the serial resource through
//!   [`Link`] (default 115200 baud), talks through
//!   [`firmware_proto::DeviceClient`], exposes the device's endpoints as RPC
//!   methods in volts and amps, and publishes telemetry events as its state.
//! * [`serve_firmware_pty`] -> [`FirmwarePty`]: the same no_std PSU firmware
//!   run on the host behind a pseudo-terminal (a simulated microcontroller),
//!   with fault injection (mute, line noise in either direction, unplug).
//!
//! The device works in integer millivolts and milliamps; the driver converts
//! JSON floats to the nearest mV / mA (1 mV, 1 mA resolution) and back.
//! docs/DRIVERS.md ("The `firmware` driver") is the user guide.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use firmware_proto::psu::{
    self, GetState, Identify, Identity, Measure, Measurement, Mode, PsuFirmware, SetCurrent,
    SetCurrentEp, SetOutput, SetOutputEp, SetVoltage, SetVoltageEp, State, Telemetry,
    TelemetryTopic,
};
use firmware_proto::{
    ClientConfig, DeviceClient, DeviceError, DeviceEvent, Endpoint, EndpointError,
};
use serde_json::{json, Map, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::options::{self, OptionSpec, OptionType};
use crate::resource::Resource;
use crate::transport::Link;
use crate::{
    Args, BoxInstrument, Description, DriverError, DriverRegistry, Instrument, InstrumentConfig,
    MethodSpec, MethodTable, ParamSpec, ParamType,
};

/// Registry name of the driver.
pub const DRIVER: &str = "firmware";

/// Baud rate used when neither the resource nor the options name one.
pub const DEFAULT_BAUD: u32 = 115_200;

/// The driver's options (others are a configuration error).
pub const OPTIONS: &[OptionSpec] = &[
    OptionSpec::new(
        "timeout_ms",
        OptionType::Millis,
        "deadline for one device request (default 1000)",
    ),
    OptionSpec::new(
        "connect_timeout_ms",
        OptionType::Millis,
        "deadline for opening the link (default 2000)",
    ),
    OptionSpec::new(
        "telemetry_max_age_ms",
        OptionType::Millis,
        "older telemetry is not published; poll() asks the device (default 2000)",
    ),
    OptionSpec::new(
        "baud",
        OptionType::Integer,
        "serial baud rate, over the resource string's (default 115200)",
    ),
    options::BAUD_RATE,
    options::DATA_BITS,
    options::PARITY,
    options::STOP_BITS,
    options::FLOW,
];

/// Driver settings (instrument `options`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FirmwareOptions {
    /// Deadline for one device request (`timeout_ms`, default 1000).
    pub timeout: Duration,
    /// Deadline for opening the link (`connect_timeout_ms`, default 2000;
    /// matters for TCP serial bridges).
    pub connect_timeout: Duration,
    /// Telemetry older than this is not published; `poll()` asks the device
    /// instead (`telemetry_max_age_ms`, default 2000).
    pub telemetry_max_age: Duration,
}

impl Default for FirmwareOptions {
    fn default() -> Self {
        FirmwareOptions {
            timeout: Duration::from_millis(1000),
            connect_timeout: Duration::from_millis(2000),
            telemetry_max_age: Duration::from_millis(2000),
        }
    }
}

impl FirmwareOptions {
    /// Read the driver's options from an instrument's `options` table.
    /// Unknown keys are reported, not ignored.
    pub fn from_options(options: &Map<String, Value>) -> Result<Self, DriverError> {
        if let Some(key) = crate::options::unknown_key(options, OPTIONS) {
            return Err(DriverError::UnknownOption {
                driver: DRIVER.to_string(),
                key: key.to_string(),
                known: OPTIONS.iter().map(|o| o.name).collect(),
            });
        }
        let ms = |k: &str, default: Duration| -> Result<Duration, DriverError> {
            match options.get(k) {
                None => Ok(default),
                Some(v) => v
                    .as_u64()
                    .filter(|m| *m > 0)
                    .map(Duration::from_millis)
                    .ok_or_else(|| {
                        DriverError::Config(format!(
                            "option '{k}': expected a positive integer (milliseconds), got {v}"
                        ))
                    }),
            }
        };
        let d = FirmwareOptions::default();
        Ok(FirmwareOptions {
            timeout: ms("timeout_ms", d.timeout)?,
            connect_timeout: ms("connect_timeout_ms", d.connect_timeout)?,
            telemetry_max_age: ms("telemetry_max_age_ms", d.telemetry_max_age)?,
        })
    }
}

/// The newest telemetry event of one connection.
#[derive(Debug, Clone, Copy)]
struct Seen {
    /// When the host received it.
    at: Instant,
    /// Its body.
    telemetry: Telemetry,
    /// Times the device uptime went backwards (the device restarted).
    restarts: u64,
}

/// An open link: the client and the task that keeps the newest telemetry.
struct Conn {
    client: DeviceClient,
    telemetry: watch::Receiver<Option<Seen>>,
    watcher: JoinHandle<()>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.watcher.abort();
    }
}

/// Setpoints last answered by the device on the current connection.
#[derive(Debug, Clone, Copy)]
struct Known {
    state: State,
    /// `Seen::restarts` when it was answered.
    restarts: u64,
}

/// Where a published state came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Telemetry,
    Device,
}

/// The `firmware` driver: a firmware PSU over a serial port (or a TCP
/// serial bridge). Connects on the first call; after a link failure the
/// next call reconnects.
pub struct FirmwareDriver {
    id: String,
    resource: Resource,
    opts: FirmwareOptions,
    conn: Option<Conn>,
    /// A connection was dropped and its reader may still hold the port.
    settling: bool,
    identity: Option<Identity>,
    known: Option<Known>,
    /// The `telemetry` push stream, once the relay took it (shared with
    /// the telemetry watcher of the link open now and of later ones).
    push: PushSlot,
}

type PushSlot = std::sync::Arc<std::sync::OnceLock<mpsc::Sender<Result<Value, DriverError>>>>;

/// Telemetry events that may wait for the relay before new ones are
/// dropped (the device sends a few per second).
const PUSH_QUEUE: usize = 256;

/// A telemetry event as the `telemetry` push stream publishes it: volts,
/// amps, mode and the device's uptime.
fn telemetry_json(t: &Telemetry) -> Value {
    serde_json::json!({
        "voltage": f64::from(t.measured.mv) / 1000.0,
        "current": f64::from(t.measured.ma) / 1000.0,
        "mode": format!("{:?}", t.measured.mode).to_lowercase(),
        "uptime_ms": t.uptime_ms,
    })
}

impl std::fmt::Debug for FirmwareDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FirmwareDriver")
            .field("id", &self.id)
            .field("resource", &self.resource)
            .field("connected", &self.conn.is_some())
            .finish()
    }
}

/// JSON volts or amps from device millivolts or milliamps.
fn from_milli(m: u32) -> f64 {
    f64::from(m) / 1000.0
}

/// Device millivolts or milliamps from a JSON value in volts or amps.
fn to_milli(param: &str, value: f64, unit: &str) -> Result<u32, DriverError> {
    let m = (value * 1000.0).round();
    if !m.is_finite() || m < 0.0 || m > f64::from(u32::MAX) {
        return Err(DriverError::bad_param(
            param,
            format!("{value} {unit} cannot be sent to the device"),
        ));
    }
    // In range and integral: the cast is exact.
    Ok(m as u32)
}

fn mode_name(m: Mode) -> &'static str {
    match m {
        Mode::Off => "off",
        Mode::Cv => "cv",
        Mode::Cc => "cc",
    }
}

/// `measure`'s answer: `{"voltage", "current", "mode"}` in V, A.
pub fn measurement_json(m: &Measurement) -> Value {
    json!({
        "voltage": from_milli(m.mv),
        "current": from_milli(m.ma),
        "mode": mode_name(m.mode),
    })
}

/// `identify`'s answer.
pub fn identity_json(id: &Identity) -> Value {
    json!({
        "model": id.model.as_str(),
        "firmware": id.firmware.as_str(),
        "serial": id.serial.as_str(),
        "protocol": id.protocol,
        "max_voltage": from_milli(id.max_mv),
        "max_current": from_milli(id.max_ma),
    })
}

/// The driver error for an error the device's endpoint answered. `param` names the parameter
/// of the request, if it has one.
///
/// * `OutOfRange` -> `BadParam` (400): the value is outside what this
///   device accepts; the caller can fix it.
/// * `Busy` -> `Busy` (409): retry later.
/// * `BadRequest`, `UnknownEndpoint`, `UnsupportedVersion`,
///   `ResponseTooLarge`, `InvalidState` -> `Instrument` (500): the JSON was
///   valid, so host and firmware disagree (or the device refused); report.
pub fn endpoint_error(e: EndpointError, endpoint: &str, param: Option<&str>) -> DriverError {
    match e {
        EndpointError::OutOfRange => DriverError::bad_param(
            param.unwrap_or("params"),
            format!("outside the device's range ({endpoint} answered OutOfRange)"),
        ),
        EndpointError::Busy => DriverError::Busy(format!("device busy ({endpoint})")),
        EndpointError::BadRequest => DriverError::Instrument(format!(
            "{endpoint}: the device could not decode the request (firmware and driver disagree)"
        )),
        EndpointError::UnknownEndpoint => DriverError::Instrument(format!(
            "{endpoint}: the device does not serve this endpoint with this schema \
             (firmware and driver disagree; update one)"
        )),
        EndpointError::UnsupportedVersion { supported } => DriverError::Instrument(format!(
            "{endpoint}: the device speaks link protocol version {supported}, this driver {}",
            firmware_proto::PROTOCOL_VERSION
        )),
        EndpointError::ResponseTooLarge => {
            DriverError::Instrument(format!("{endpoint}: the answer did not fit a frame"))
        }
        EndpointError::InvalidState => DriverError::Instrument(format!(
            "{endpoint}: not allowed in the device's current state"
        )),
    }
}

/// Keep the newest telemetry of one connection in `tx`.
async fn watch_telemetry(
    mut events: broadcast::Receiver<DeviceEvent>,
    tx: watch::Sender<Option<Seen>>,
    push: PushSlot,
) {
    let mut restarts = 0u64;
    let mut last_uptime: Option<u32> = None;
    loop {
        let ev = match events.recv().await {
            Ok(ev) => ev,
            Err(broadcast::error::RecvError::Lagged(n)) => {
                tracing::debug!(missed = n, "telemetry watcher lagged");
                continue;
            }
            Err(broadcast::error::RecvError::Closed) => break,
        };
        match ev.decode::<TelemetryTopic>() {
            Some(Ok(t)) => {
                if last_uptime.is_some_and(|u| t.uptime_ms < u) {
                    restarts += 1;
                }
                last_uptime = Some(t.uptime_ms);
                if let Some(p) = push.get() {
                    if p.try_send(Ok(telemetry_json(&t))).is_err() {
                        tracing::debug!("telemetry push stream full: event dropped");
                    }
                }
                tx.send_replace(Some(Seen {
                    at: Instant::now(),
                    telemetry: t,
                    restarts,
                }));
            }
            Some(Err(e)) => tracing::debug!(error = %e, "undecodable telemetry body"),
            None => tracing::debug!(key = ?ev.key, "event on an unknown topic"),
        }
    }
}

/// Whether `text` or `options` name a baud rate.
fn names_baud(text: &str, options: &Map<String, Value>) -> bool {
    let is_baud = |k: &str| k.eq_ignore_ascii_case("baud") || k.eq_ignore_ascii_case("baud_rate");
    options.keys().any(|k| is_baud(k))
        || text.split_once('?').is_some_and(|(_, q)| {
            q.split('&')
                .any(|kv| is_baud(kv.split('=').next().unwrap_or("")))
        })
}

impl FirmwareDriver {
    /// A driver for the device at `resource` (not yet connected).
    pub fn new(id: &str, resource: Resource, opts: FirmwareOptions) -> Self {
        FirmwareDriver {
            id: id.to_string(),
            resource,
            opts,
            conn: None,
            settling: false,
            identity: None,
            known: None,
            push: PushSlot::default(),
        }
    }

    /// Build from an instrument's config: `resource` (required; serial as
    /// `serial:///dev/ttyACM0?baud=115200` or `ASRL/dev/ttyACM0::INSTR`, or
    /// a TCP serial bridge), serial line options and [`FirmwareOptions`].
    /// Serial links default to [`DEFAULT_BAUD`].
    pub fn from_config(cfg: &InstrumentConfig) -> Result<Self, DriverError> {
        let text = cfg.resource.as_deref().ok_or_else(|| {
            DriverError::Config(format!(
                "instrument '{}' (driver {DRIVER}) needs a resource, e.g. \
                 serial:///dev/ttyACM0?baud=115200",
                cfg.id
            ))
        })?;
        let opts = FirmwareOptions::from_options(&cfg.options)?;
        let mut resource = Resource::parse(text)?;
        if resource.is_message_based() {
            return Err(DriverError::Config(format!(
                "instrument '{}' (driver {DRIVER}): {text} is a VXI-11/HiSLIP resource; \
                 the device link needs a byte stream (serial, or tcp:// to a serial bridge)",
                cfg.id
            )));
        }
        if let Resource::Serial { settings, .. } = &mut resource {
            if !names_baud(text, &cfg.options) {
                settings.baud = DEFAULT_BAUD;
            }
        }
        resource.apply_options(&cfg.options)?;
        Ok(FirmwareDriver::new(&cfg.id, resource, opts))
    }

    /// The resource driven.
    pub fn resource(&self) -> &Resource {
        &self.resource
    }

    /// The driver's options.
    pub fn options(&self) -> &FirmwareOptions {
        &self.opts
    }

    /// Whether a link is open (it may still turn out broken on the next call).
    pub fn is_connected(&self) -> bool {
        self.conn.as_ref().is_some_and(|c| c.client.is_open())
    }

    /// Link counters of the open connection.
    pub fn link_stats(&self) -> Option<firmware_proto::ClientStats> {
        self.conn.as_ref().map(|c| c.client.stats())
    }

    fn drop_conn(&mut self, why: &str) {
        if self.conn.take().is_some() {
            tracing::warn!(resource = %self.resource, "device link lost: {why}");
            self.settling = true;
        }
        self.known = None;
    }

    /// Open the link now (a no-op when open).
    pub async fn connect(&mut self) -> Result<(), DriverError> {
        if self.conn.as_ref().is_some_and(|c| !c.client.is_open()) {
            self.drop_conn("the link's reader stopped");
        }
        if self.conn.is_some() {
            return Ok(());
        }
        let link = self.open_link().await?;
        let client = DeviceClient::new(
            link,
            ClientConfig {
                timeout: self.opts.timeout,
                ..ClientConfig::default()
            },
        );
        let (tx, rx) = watch::channel(None);
        let watcher = tokio::spawn(watch_telemetry(client.subscribe(), tx, self.push.clone()));
        self.conn = Some(Conn {
            client,
            telemetry: rx,
            watcher,
        });
        self.known = None;
        tracing::debug!(resource = %self.resource, "device link open");
        // Learn who answers on every new link (another board may be plugged
        // in). A device that does not say is still usable; a link that
        // fails here fails the call.
        match self.send::<Identify>(&(), None).await {
            Ok(id) => self.identity = Some(id),
            Err(e @ DriverError::Link { .. }) => return Err(e),
            Err(e) => tracing::warn!(resource = %self.resource, "identify on connect: {e}"),
        }
        Ok(())
    }

    async fn open_link(&mut self) -> Result<Link, DriverError> {
        if !self.settling {
            return Link::open(&self.resource, self.opts.connect_timeout).await;
        }
        // The dropped client's reader task is aborted, not yet dropped: it
        // may still hold the port (exclusive lock). Let it go, briefly.
        self.settling = false;
        let mut attempt = 0u32;
        loop {
            tokio::task::yield_now().await;
            match Link::open(&self.resource, self.opts.connect_timeout).await {
                Ok(link) => return Ok(link),
                Err(e) if attempt < 4 => {
                    tracing::debug!("reopening {}: {e}", self.resource);
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(25)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Close the link. The next call reconnects.
    pub fn close(&mut self) {
        if self.conn.take().is_some() {
            self.settling = true;
        }
        self.known = None;
    }

    /// Call endpoint `E`, mapping errors (see [`endpoint_error`]); a link
    /// failure drops the connection so the next call reconnects.
    async fn request<E: Endpoint>(
        &mut self,
        req: &E::Request,
        param: Option<&str>,
    ) -> Result<E::Response, DriverError> {
        self.connect().await?;
        self.send::<E>(req, param).await
    }

    /// [`FirmwareDriver::request`] on the open connection.
    async fn send<E: Endpoint>(
        &mut self,
        req: &E::Request,
        param: Option<&str>,
    ) -> Result<E::Response, DriverError> {
        let Some(conn) = &self.conn else {
            return Err(DriverError::link_lost(
                self.resource.to_string(),
                io::ErrorKind::NotConnected,
                "not connected",
            ));
        };
        match conn.client.call::<E>(req).await {
            Ok(r) => Ok(r),
            Err(DeviceError::Timeout(d)) => Err(DriverError::Timeout(d)),
            Err(DeviceError::Link(e)) => {
                self.drop_conn(&format!("writing failed: {e}"));
                Err(DriverError::link(
                    format!("{}: writing to the device failed", self.resource),
                    e,
                ))
            }
            Err(DeviceError::Closed) => {
                self.drop_conn("the link closed");
                Err(DriverError::link_lost(
                    self.resource.to_string(),
                    io::ErrorKind::UnexpectedEof,
                    "the device link closed",
                ))
            }
            Err(DeviceError::Device(w)) => Err(endpoint_error(w, E::NAME, param)),
            Err(e @ (DeviceError::BadResponse { .. } | DeviceError::KeyMismatch)) => Err(
                DriverError::Instrument(format!("{}: {e} (firmware and driver disagree)", E::NAME)),
            ),
            Err(e @ DeviceError::Encode(_)) => {
                Err(DriverError::Instrument(format!("{}: {e}", E::NAME)))
            }
        }
    }

    /// Remember setpoints the device answered.
    fn learn(&mut self, state: State) {
        let restarts = self
            .conn
            .as_ref()
            .and_then(|c| c.telemetry.borrow().map(|s| s.restarts))
            .unwrap_or(0);
        self.known = Some(Known { state, restarts });
    }

    /// Ask the device who it is (cached for `describe()` and the state).
    pub async fn identify(&mut self) -> Result<Identity, DriverError> {
        let id = self.request::<Identify>(&(), None).await?;
        self.identity = Some(id.clone());
        Ok(id)
    }

    /// Read setpoints and measurement from the device.
    pub async fn device_state(&mut self) -> Result<State, DriverError> {
        let st = self.request::<GetState>(&(), None).await?;
        self.learn(st);
        Ok(st)
    }

    /// Set the voltage setpoint, volts.
    pub async fn set_voltage(&mut self, volts: f64) -> Result<State, DriverError> {
        let mv = to_milli("value", volts, "V")?;
        let st = self
            .request::<SetVoltageEp>(&SetVoltage { mv }, Some("value"))
            .await?;
        self.learn(st);
        Ok(st)
    }

    /// Set the current limit, amps.
    pub async fn set_current(&mut self, amps: f64) -> Result<State, DriverError> {
        let ma = to_milli("value", amps, "A")?;
        let st = self
            .request::<SetCurrentEp>(&SetCurrent { ma }, Some("value"))
            .await?;
        self.learn(st);
        Ok(st)
    }

    /// Switch the output.
    pub async fn set_output(&mut self, on: bool) -> Result<State, DriverError> {
        let st = self
            .request::<SetOutputEp>(&SetOutput { on }, Some("on"))
            .await?;
        self.learn(st);
        Ok(st)
    }

    /// Read the output terminals.
    pub async fn measure(&mut self) -> Result<Measurement, DriverError> {
        self.request::<Measure>(&(), None).await
    }

    fn state_json(&self, st: &State, source: Source, uptime_ms: Option<u32>) -> Value {
        let id = self.identity.as_ref();
        let mut v = json!({
            "relay_id": self.id,
            "model": id.map(|i| i.model.as_str()),
            "serial": id.map(|i| i.serial.as_str()),
            "firmware": id.map(|i| i.firmware.as_str()),
            "connected": self.is_connected(),
            "voltage": from_milli(st.measured.mv),
            "current": from_milli(st.measured.ma),
            "output": st.output,
            "mode": mode_name(st.measured.mode),
            "voltage_set": from_milli(st.set_mv),
            "current_set": from_milli(st.limit_ma),
            "source": match source {
                Source::Telemetry => "telemetry",
                Source::Device => "device",
            },
        });
        if let (Some(u), Value::Object(m)) = (uptime_ms, &mut v) {
            m.insert("uptime_ms".into(), json!(u));
        }
        v
    }

    /// The state from fresh telemetry plus the setpoints the device last
    /// answered on this connection, if both agree with each other.
    fn state_from_telemetry(&self) -> Option<Value> {
        let conn = self.conn.as_ref()?;
        let seen = (*conn.telemetry.borrow())?;
        let known = self.known?;
        if seen.at.elapsed() > self.opts.telemetry_max_age || seen.restarts != known.restarts {
            return None;
        }
        let t = seen.telemetry;
        // Output off reads Mode::Off; any disagreement means the setpoints
        // are not what we think (a restart we did not see): ask the device.
        if (t.measured.mode == Mode::Off) == known.state.output {
            return None;
        }
        let st = State {
            measured: t.measured,
            ..known.state
        };
        Some(self.state_json(&st, Source::Telemetry, Some(t.uptime_ms)))
    }

    /// `{"ok": true}` plus the state the device answered a setter with.
    fn setter_json(&self, st: &State) -> Value {
        let mut v = self.state_json(st, Source::Device, None);
        if let Value::Object(m) = &mut v {
            m.insert("ok".into(), Value::Bool(true));
        }
        v
    }
}

/// The driver's methods, one per device endpoint in the device's routing
/// order, named by the endpoints themselves: one table for `describe()`
/// and `call()`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Method {
    Identify,
    SetVoltage,
    SetCurrent,
    SetOutput,
    Measure,
    GetState,
}

impl MethodTable for Method {
    const ALL: &'static [Method] = &[
        Method::Identify,
        Method::SetVoltage,
        Method::SetCurrent,
        Method::SetOutput,
        Method::Measure,
        Method::GetState,
    ];

    fn name(self) -> &'static str {
        match self {
            Method::Identify => Identify::NAME,
            Method::SetVoltage => SetVoltageEp::NAME,
            Method::SetCurrent => SetCurrentEp::NAME,
            Method::SetOutput => SetOutputEp::NAME,
            Method::Measure => Measure::NAME,
            Method::GetState => GetState::NAME,
        }
    }
}

impl Method {
    fn spec(self) -> MethodSpec {
        let vmax = from_milli(psu::MAX_MV);
        let imax = from_milli(psu::MAX_MA);
        let m = |doc: &str| MethodSpec::new(self.name(), doc);
        match self {
            Method::Identify => {
                m("Model, firmware, serial number, link protocol and limits (V, A)").read_only()
            }
            Method::SetVoltage => m(&format!(
                "Set the voltage setpoint (0..{vmax} V, 1 mV steps); returns the state"
            ))
            .param(
                ParamSpec::required("value", ParamType::Float)
                    .unit("V")
                    .range(0.0, vmax),
            ),
            Method::SetCurrent => m(&format!(
                "Set the current limit (0..{imax} A, 1 mA steps); returns the state"
            ))
            .param(
                ParamSpec::required("value", ParamType::Float)
                    .unit("A")
                    .range(0.0, imax),
            ),
            Method::SetOutput => m("Switch the output on or off; returns the state")
                .param(ParamSpec::required("on", ParamType::Bool)),
            Method::Measure => {
                m("Output voltage (V), current (A) and mode (off, cv, cc)").read_only()
            }
            Method::GetState => {
                m("Setpoints, output and measurement, read from the device").read_only()
            }
        }
    }
}

#[async_trait::async_trait]
impl Instrument for FirmwareDriver {
    fn identity(&self) -> Option<String> {
        self.identity.as_ref().map(|i| {
            format!(
                "{},{},{}",
                i.model.as_str(),
                i.serial.as_str(),
                i.firmware.as_str()
            )
        })
    }

    fn describe(&self) -> Description {
        Description {
            state_fields: Vec::new(),
            driver: DRIVER.to_string(),
            identity: self.identity.as_ref().map(|i| {
                format!(
                    "{},{},{}",
                    i.model.as_str(),
                    i.serial.as_str(),
                    i.firmware.as_str()
                )
            }),
            methods: Method::ALL.iter().map(|m| m.spec()).collect(),
        }
    }

    async fn call(&mut self, method: &str, args: Args) -> Result<Value, DriverError> {
        let Some(m) = Method::from_name(method) else {
            return Err(DriverError::UnknownMethod(method.to_string()));
        };
        match m {
            Method::Identify => {
                let id = self.identify().await?;
                Ok(identity_json(&id))
            }
            Method::SetVoltage => {
                let st = self.set_voltage(args.f64("value")?).await?;
                Ok(self.setter_json(&st))
            }
            Method::SetCurrent => {
                let st = self.set_current(args.f64("value")?).await?;
                Ok(self.setter_json(&st))
            }
            Method::SetOutput => {
                let st = self.set_output(args.bool("on")?).await?;
                Ok(self.setter_json(&st))
            }
            Method::Measure => {
                let m = self.measure().await?;
                Ok(measurement_json(&m))
            }
            Method::GetState => {
                let st = self.device_state().await?;
                Ok(self.state_json(&st, Source::Device, None))
            }
        }
    }

    /// Fresh telemetry (with the setpoints last answered) when there is
    /// some, else `get_state` from the device.
    async fn poll(&mut self) -> Result<Value, DriverError> {
        self.connect().await?;
        if self.identity.is_none() {
            self.identify().await?;
        }
        if let Some(v) = self.state_from_telemetry() {
            return Ok(v);
        }
        let st = self.device_state().await?;
        Ok(self.state_json(&st, Source::Device, None))
    }

    /// `telemetry`: every telemetry event the device sends while the link
    /// is open, as `{voltage, current, mode, uptime_ms}`.
    fn push_streams(&mut self) -> Vec<crate::PushStream> {
        let (tx, rx) = mpsc::channel(PUSH_QUEUE);
        if self.push.set(tx).is_err() {
            return Vec::new();
        }
        vec![crate::PushStream {
            name: "telemetry".into(),
            event: "telemetry".into(),
            events: rx,
        }]
    }

    async fn shutdown(&mut self) {
        self.close();
    }
}

/// Register the `firmware` driver.
pub fn register(r: &mut DriverRegistry) {
    r.register(DRIVER, OPTIONS, |cfg: InstrumentConfig| async move {
        Ok(Box::new(FirmwareDriver::from_config(&cfg)?) as BoxInstrument)
    });
}

// ---------------------------------------------------------------------------
// The simulated microcontroller on a pseudo-terminal.

enum Ctl {
    Mute(bool, oneshot::Sender<()>),
    ToHost(Vec<u8>, oneshot::Sender<io::Result<()>>),
    ToDevice(Vec<u8>, oneshot::Sender<io::Result<()>>),
    Peek(oneshot::Sender<State>),
}

/// The firmware PSU served on a pseudo-terminal (see [`serve_firmware_pty`]).
/// Dropping it or [`FirmwarePty::close`] "unplugs" the port.
#[derive(Debug)]
pub struct FirmwarePty {
    path: PathBuf,
    ctl: Option<mpsc::UnboundedSender<Ctl>>,
    task: Option<JoinHandle<io::Result<()>>>,
}

/// Serve the no_std firmware PSU (`firmware_proto::psu::PsuFirmware`, 10 Ω
/// load, serial [`firmware_proto::sim::SIM_SERIAL`]) on a new
/// pseudo-terminal, sending a telemetry event every `telemetry_period` if
/// given. Must be called within a tokio runtime. Open
/// [`FirmwarePty::path`] as a serial port ([`FirmwarePty::resource`]).
pub fn serve_firmware_pty(telemetry_period: Option<Duration>) -> Result<FirmwarePty, DriverError> {
    let (master, slave) = serialport::TTYPort::pair().map_err(|e| {
        DriverError::link("cannot create a pseudo-terminal", std::io::Error::from(e))
    })?;
    let path = serialport::SerialPort::name(&slave)
        .map(PathBuf::from)
        .ok_or_else(|| {
            DriverError::link_lost(
                "pseudo-terminal",
                std::io::ErrorKind::NotFound,
                "it has no path",
            )
        })?;
    let master = firmware_proto::sim::async_tty(master)
        .map_err(|e| DriverError::link("pseudo-terminal master", e))?;
    // The device keeps a slave descriptor open (so the master never reads
    // EIO between host sessions) and writes line noise "from the host" on it.
    // It never reads it: the host's bytes are for the host's own descriptor.
    let slave = firmware_proto::sim::async_tty(slave)
        .map_err(|e| DriverError::link("pseudo-terminal slave", e))?;
    let (tx, rx) = mpsc::unbounded_channel();
    let fw = PsuFirmware::new(psu::DEFAULT_LOAD_MOHM, firmware_proto::sim::SIM_SERIAL);
    let task = tokio::spawn(device_loop(fw, master, slave, telemetry_period, rx));
    Ok(FirmwarePty {
        path,
        ctl: Some(tx),
        task: Some(task),
    })
}

async fn tick(t: &mut Option<tokio::time::Interval>) {
    match t {
        Some(t) => {
            t.tick().await;
        }
        None => std::future::pending().await,
    }
}

async fn device_loop(
    mut fw: PsuFirmware,
    mut master: tokio_serial::SerialStream,
    mut slave: tokio_serial::SerialStream,
    telemetry_period: Option<Duration>,
    mut ctl: mpsc::UnboundedReceiver<Ctl>,
) -> io::Result<()> {
    let start = Instant::now();
    let mut ticker = telemetry_period.map(|p| {
        let mut t = tokio::time::interval_at(start + p, p);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        t
    });
    let mut muted = false;
    let mut buf = [0u8; 512];
    let mut out: Vec<u8> = Vec::with_capacity(1024);
    loop {
        tokio::select! {
            // Control first: a mute acknowledged is in force for every later byte.
            biased;
            c = ctl.recv() => match c {
                None => return Ok(()),
                Some(Ctl::Mute(m, ack)) => {
                    muted = m;
                    let _ = ack.send(());
                }
                Some(Ctl::ToHost(bytes, ack)) => {
                    let r = async {
                        master.write_all(&bytes).await?;
                        master.flush().await
                    }
                    .await;
                    let _ = ack.send(r);
                }
                Some(Ctl::ToDevice(bytes, ack)) => {
                    let r = async {
                        slave.write_all(&bytes).await?;
                        slave.flush().await
                    }
                    .await;
                    let _ = ack.send(r);
                }
                Some(Ctl::Peek(tx)) => {
                    let _ = tx.send(fw.psu.state());
                }
            },
            r = master.read(&mut buf), if !muted => {
                let n = r?;
                if n == 0 {
                    return Ok(());
                }
                fw.receive(buf.get(..n).unwrap_or(&[]), |f| out.extend_from_slice(f));
            }
            _ = tick(&mut ticker), if !muted => {
                let uptime = u32::try_from(start.elapsed().as_millis() % (1u128 << 32)).unwrap_or(0);
                fw.telemetry(uptime, |f| out.extend_from_slice(f));
            }
        }
        if !out.is_empty() {
            master.write_all(&out).await?;
            master.flush().await?;
            out.clear();
        }
    }
}

impl FirmwarePty {
    /// The slave side's path (`/dev/pts/N`): open it like a serial port.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A `serial://` resource for the path at [`DEFAULT_BAUD`].
    pub fn resource(&self) -> String {
        format!("serial://{}?baud={DEFAULT_BAUD}", self.path.display())
    }

    fn send(&self, c: Ctl) -> Result<(), DriverError> {
        self.ctl
            .as_ref()
            .and_then(|tx| tx.send(c).ok())
            .ok_or_else(|| {
                DriverError::link_lost(
                    "simulated device",
                    std::io::ErrorKind::BrokenPipe,
                    "it has stopped",
                )
            })
    }

    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Ctl) -> Result<T, DriverError> {
        let (tx, rx) = oneshot::channel();
        self.send(make(tx))?;
        rx.await.map_err(|_| {
            DriverError::link_lost(
                "simulated device",
                std::io::ErrorKind::BrokenPipe,
                "it has stopped",
            )
        })
    }

    /// Make the device stop (`true`) or resume (`false`) serving. Muted, it
    /// reads nothing and sends no telemetry, like a hung microcontroller;
    /// requests sent meanwhile wait in the line and are answered late on
    /// resume. In force for every byte sent after this returns.
    pub async fn set_muted(&self, muted: bool) -> Result<(), DriverError> {
        self.ask(|ack| Ctl::Mute(muted, ack)).await
    }

    /// Write raw bytes from the device towards the host (line noise on the
    /// device's TX line). Returns once written.
    pub async fn inject_to_host(&self, bytes: &[u8]) -> Result<(), DriverError> {
        self.ask(|ack| Ctl::ToHost(bytes.to_vec(), ack))
            .await?
            .map_err(|e| DriverError::link("injecting towards the host", e))
    }

    /// Write raw bytes towards the device, as if the host had sent them
    /// (line noise on the host's TX line). Returns once written.
    pub async fn inject_to_device(&self, bytes: &[u8]) -> Result<(), DriverError> {
        self.ask(|ack| Ctl::ToDevice(bytes.to_vec(), ack))
            .await?
            .map_err(|e| DriverError::link("injecting towards the device", e))
    }

    /// The firmware's own view of its state (what a debugger would read).
    pub async fn device_state(&self) -> Result<State, DriverError> {
        self.ask(Ctl::Peek).await
    }

    /// Stop serving and close both sides of the pseudo-terminal (an
    /// "unplug": a host reading the port gets an error). Waits until closed.
    pub async fn close(mut self) {
        self.ctl = None;
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }

    /// Wait until the device stops (closed, or an I/O error on the pty).
    pub async fn wait(mut self) -> io::Result<()> {
        match self.task.take() {
            Some(task) => task
                .await
                .unwrap_or_else(|e| Err(io::Error::other(format!("device task: {e}")))),
            None => Ok(()),
        }
    }
}

impl Drop for FirmwarePty {
    fn drop(&mut self) {
        // Dropping the control sender ends the device task.
        self.ctl = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn milli_conversions() {
        assert_eq!(to_milli("value", 5.0, "V").unwrap(), 5_000);
        assert_eq!(to_milli("value", 1.2345, "V").unwrap(), 1_235);
        assert_eq!(to_milli("value", 0.0, "V").unwrap(), 0);
        assert_eq!(to_milli("value", -0.0004, "V").unwrap(), 0);
        assert_eq!(to_milli("value", 30.0, "V").unwrap(), 30_000);
        for bad in [-0.001, f64::NAN, f64::INFINITY, 5.0e9] {
            let e = to_milli("value", bad, "V").unwrap_err();
            assert_eq!(e.code(), 400, "{bad}");
        }
        assert_eq!(from_milli(5_000), 5.0);
        assert_eq!(from_milli(1_234), 1.234);
    }

    #[test]
    fn endpoint_errors_map_to_codes() {
        let table = [
            (EndpointError::OutOfRange, 400),
            (EndpointError::Busy, 409),
            (EndpointError::BadRequest, 500),
            (EndpointError::UnknownEndpoint, 500),
            (EndpointError::UnsupportedVersion { supported: 2 }, 500),
            (EndpointError::ResponseTooLarge, 500),
            (EndpointError::InvalidState, 500),
        ];
        for (w, code) in table {
            let e = endpoint_error(w, "set_voltage", Some("value"));
            assert_eq!(e.code(), code, "{w:?}: {e}");
            assert!(e.to_string().contains("set_voltage") || code == 400, "{e}");
        }
        let e = endpoint_error(EndpointError::OutOfRange, "set_voltage", Some("value"));
        assert!(e.to_string().contains("'value'"), "{e}");
    }

    #[test]
    fn options_and_default_baud() {
        let cfg = |resource: &str, opts: Value| InstrumentConfig {
            id: "fw".into(),
            driver: DRIVER.into(),
            resource: Some(resource.into()),
            options: match opts {
                Value::Object(m) => m,
                _ => Map::new(),
            },
        };
        let baud = |d: &FirmwareDriver| match d.resource() {
            Resource::Serial { settings, .. } => settings.baud,
            _ => 0,
        };
        let d = FirmwareDriver::from_config(&cfg("ASRL/dev/ttyACM0::INSTR", json!({}))).unwrap();
        assert_eq!(baud(&d), DEFAULT_BAUD);
        let d = FirmwareDriver::from_config(&cfg("serial:///dev/ttyACM0?baud=9600", json!({})))
            .unwrap();
        assert_eq!(baud(&d), 9600);
        let d = FirmwareDriver::from_config(&cfg(
            "serial:///dev/ttyACM0?parity=none",
            json!({"baud": 57600, "timeout_ms": 250}),
        ))
        .unwrap();
        assert_eq!(baud(&d), 57600);
        assert_eq!(d.options().timeout, Duration::from_millis(250));
        let e = FirmwareDriver::from_config(&cfg("ASRL/dev/ttyACM0::INSTR", json!({"model": 1})))
            .unwrap_err();
        assert!(e.to_string().contains("'model'"), "{e}");
        let e =
            FirmwareDriver::from_config(&cfg("ASRL/dev/ttyACM0::INSTR", json!({"timeout_ms": 0})))
                .unwrap_err();
        assert!(e.to_string().contains("timeout_ms"), "{e}");
        let mut no_resource = cfg("x", json!({}));
        no_resource.resource = None;
        assert!(FirmwareDriver::from_config(&no_resource).is_err());
    }
}
