//! `scpi`: a generic SCPI instrument with the methods constellation's
//! remote relay calls: `connect() -> bool`, `close()`, `write(cmd) -> bool`,
//! `read() -> [bool, str]`, `query(cmd) -> [bool, str]`, plus
//! `query_binary(cmd) -> [bool, base64 str]` for IEEE 488.2 block replies.
//!
//! Failures come back in constellation's shape (`false` / `[false, "<why>"]`)
//! unless the option `raise_errors = true` is set, in which case they are
//! RPC errors (503 link, 500 instrument). An instrument that does not
//! answer in time is always an RPC error, 408, so a caller (and the CLI's
//! exit code) can tell "no answer" from an answer.

use base64::Engine;
use serde_json::{json, Value};

use crate::options::{self, OptionSpec, OptionType};
use crate::scpi::{ScpiSession, SessionOptions};
use crate::{
    Args, BoxInstrument, Description, DriverError, Instrument, InstrumentConfig, MethodSpec,
    MethodTable, ParamSpec, ParamType, Sampled,
};

/// The `scpi` driver's methods: one table for `describe()` and `call()`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Method {
    Connect,
    Close,
    Write,
    Read,
    Query,
    QueryBinary,
}

impl MethodTable for Method {
    const ALL: &'static [Method] = &[
        Method::Connect,
        Method::Close,
        Method::Write,
        Method::Read,
        Method::Query,
        Method::QueryBinary,
    ];

    fn name(self) -> &'static str {
        match self {
            Method::Connect => "connect",
            Method::Close => "close",
            Method::Write => "write",
            Method::Read => "read",
            Method::Query => "query",
            Method::QueryBinary => "query_binary",
        }
    }
}

impl Method {
    fn spec(self) -> MethodSpec {
        let m = |doc: &str| MethodSpec::new(self.name(), doc);
        let cmd = || ParamSpec::required("cmd", ParamType::String);
        match self {
            Method::Connect => m("Open the link; true on success"),
            Method::Close => m("Close the link"),
            Method::Write => m("Send one command; true on success").param(cmd()),
            Method::Read => m("Read one reply: [ok, text]"),
            Method::Query => m("Send a command and read its reply: [ok, text]").param(cmd()),
            Method::QueryBinary => {
                m("Send a command and read an IEEE 488.2 block: [ok, base64 of the data bytes]")
                    .param(cmd())
            }
        }
    }
}

/// The generic SCPI driver.
#[derive(Debug)]
pub struct ScpiDriver {
    id: String,
    session: ScpiSession,
    raise_errors: bool,
    /// `close` was called: `poll()` leaves the link closed until the next call.
    closed: bool,
}

impl ScpiDriver {
    /// A driver over `session`.
    pub fn new(id: &str, session: ScpiSession, raise_errors: bool) -> Self {
        ScpiDriver {
            id: id.to_string(),
            session,
            raise_errors,
            closed: false,
        }
    }

    /// Build from config: `resource` (required), session and serial options
    /// (`identify` defaults to true: `*IDN?` whenever the link opens),
    /// `raise_errors` (default false).
    pub fn from_config(cfg: &InstrumentConfig) -> Result<Self, DriverError> {
        let raise_errors = match cfg.options.get("raise_errors") {
            None => false,
            Some(v) => v.as_bool().ok_or_else(|| {
                DriverError::Config("option 'raise_errors': expected a boolean".into())
            })?,
        };
        let defaults = SessionOptions {
            identify: true,
            ..SessionOptions::default()
        };
        let session = ScpiSession::from_config(cfg, defaults)?;
        Ok(ScpiDriver::new(&cfg.id, session, raise_errors))
    }

    fn flag(&self, r: Result<(), DriverError>) -> Result<Value, DriverError> {
        match r {
            Ok(()) => Ok(json!(true)),
            Err(e) if self.raise_errors || !is_instrument_side(&e) => Err(e),
            Err(e) => {
                tracing::debug!(id = %self.id, "scpi: {e}");
                Ok(json!(false))
            }
        }
    }

    fn pair(&self, r: Result<String, DriverError>) -> Result<Value, DriverError> {
        match r {
            Ok(s) => Ok(json!([true, s])),
            Err(e) if self.raise_errors || !is_instrument_side(&e) => Err(e),
            Err(e) => Ok(json!([false, e.to_string()])),
        }
    }
}

/// Errors constellation reports as `false` (the instrument side failed);
/// request errors stay RPC errors.
fn is_instrument_side(e: &DriverError) -> bool {
    matches!(
        e,
        DriverError::Link { .. } | DriverError::Instrument(_) | DriverError::Busy(_)
    )
}

#[async_trait::async_trait]
impl Instrument for ScpiDriver {
    fn identity(&self) -> Option<String> {
        self.session.identity().map(str::to_string)
    }

    fn describe(&self) -> Description {
        Description {
            state_fields: Vec::new(),
            driver: "scpi".to_string(),
            identity: self.session.identity().map(str::to_string),
            methods: Method::ALL.iter().map(|m| m.spec()).collect(),
        }
    }

    async fn call(&mut self, method: &str, args: Args) -> Result<Value, DriverError> {
        let Some(m) = Method::from_name(method) else {
            return Err(DriverError::UnknownMethod(method.to_string()));
        };
        self.closed = m == Method::Close;
        match m {
            Method::Connect => {
                let r = self.session.connect().await;
                if r.is_ok() && self.session.identity().is_none() {
                    // `identify = false`, or no answer on open: ask once more.
                    let _ = self.session.idn().await;
                }
                self.flag(r)
            }
            Method::Close => {
                self.session.close().await;
                Ok(Value::Null)
            }
            Method::Write => {
                let cmd = args.str("cmd")?.to_string();
                let r = self.session.write(&cmd).await;
                self.flag(r)
            }
            Method::Read => {
                let r = self.session.read().await;
                self.pair(r)
            }
            Method::Query => {
                let cmd = args.str("cmd")?.to_string();
                let r = self.session.query(&cmd).await;
                self.pair(r)
            }
            Method::QueryBinary => {
                let cmd = args.str("cmd")?.to_string();
                let r = self
                    .session
                    .query_binary(&cmd)
                    .await
                    .map(|b| base64::engine::general_purpose::STANDARD.encode(b));
                self.pair(r)
            }
        }
    }

    /// `query_binary` samples as bytes (a raw frame on the bus); a failed
    /// block read is an error sample (not `[false, why]`); every other
    /// method as [`Instrument::call`].
    async fn sample(&mut self, method: &str, args: Args) -> Result<Sampled, DriverError> {
        if Method::from_name(method) == Some(Method::QueryBinary) {
            let cmd = args.str("cmd")?.to_string();
            self.closed = false;
            return self.session.query_binary(&cmd).await.map(Sampled::Binary);
        }
        self.call(method, args).await.map(Sampled::Json)
    }

    /// Cheap: opens the link if it is not open (learning the identity; not
    /// after `close`, until the next call), otherwise no instrument traffic.
    /// A link that does not open is `"connected": false`, not an error.
    async fn poll(&mut self) -> Result<Value, DriverError> {
        if !self.closed && !self.session.is_connected() {
            if let Err(e) = self.session.connect().await {
                tracing::debug!(id = %self.id, "scpi: poll could not connect: {e}");
            }
        }
        Ok(json!({
            "relay_id": self.id,
            "connected": self.session.is_connected(),
            "idn": self.session.identity(),
            "resource": self.session.resource().to_string(),
        }))
    }

    async fn lan_message(&mut self, message: &str) -> Result<Option<Vec<u8>>, DriverError> {
        self.session.passthrough(message).await
    }

    async fn shutdown(&mut self) {
        self.session.close().await;
    }
}

/// The `scpi` driver's options: `raise_errors` and the session's.
pub const OPTIONS: &[OptionSpec] = &[
    OptionSpec::new(
        "raise_errors",
        OptionType::Bool,
        "instrument-side failures are RPC errors, not false / [false, why] (default false)",
    ),
    options::TIMEOUT_MS,
    options::CONNECT_TIMEOUT_MS,
    options::WRITE_TERMINATION,
    options::READ_TERMINATION,
    options::CHECK_ERRORS,
    options::IDENTIFY,
    options::INIT,
    options::MAX_REPLY,
    options::DRAIN_QUIET_MS,
    options::BAUD,
    options::BAUD_RATE,
    options::DATA_BITS,
    options::PARITY,
    options::STOP_BITS,
    options::FLOW,
    options::ADAPTER,
    options::HISLIP_MODE,
];

/// Register `scpi`.
pub fn register(r: &mut crate::DriverRegistry) {
    r.register("scpi", OPTIONS, |cfg: InstrumentConfig| async move {
        Ok(Box::new(ScpiDriver::from_config(&cfg)?) as BoxInstrument)
    });
}
