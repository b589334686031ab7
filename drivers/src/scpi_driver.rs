//! `scpi`: a generic SCPI instrument with the methods constellation's
//! remote relay calls: `connect() -> bool`, `close()`, `write(cmd) -> bool`,
//! `read() -> [bool, str]`, `query(cmd) -> [bool, str]`, plus
//! `query_binary(cmd) -> [bool, base64 str]` for IEEE 488.2 block replies.
//!
//! Failures come back in constellation's shape (`false` / `[false, "<why>"]`)
//! unless the option `raise_errors = true` is set, in which case they are
//! RPC errors (408 timeout, 503 link, 500 instrument).

use base64::Engine;
use serde_json::{json, Value};

use crate::scpi::{ScpiSession, SessionOptions};
use crate::{
    Args, BoxInstrument, Description, DriverError, Instrument, InstrumentConfig, MethodSpec,
    ParamSpec, ParamType,
};

/// The generic SCPI driver.
#[derive(Debug)]
pub struct ScpiDriver {
    id: String,
    session: ScpiSession,
    identity: Option<String>,
    raise_errors: bool,
}

impl ScpiDriver {
    /// A driver over `session`.
    pub fn new(id: &str, session: ScpiSession, raise_errors: bool) -> Self {
        ScpiDriver {
            id: id.to_string(),
            session,
            identity: None,
            raise_errors,
        }
    }

    /// Build from config: `resource` (required), session and serial options,
    /// `raise_errors` (default false).
    pub fn from_config(cfg: &InstrumentConfig) -> Result<Self, DriverError> {
        let raise_errors = match cfg.options.get("raise_errors") {
            None => false,
            Some(v) => v.as_bool().ok_or_else(|| {
                DriverError::Config("option 'raise_errors': expected a boolean".into())
            })?,
        };
        let session = ScpiSession::from_config(cfg, SessionOptions::default())?;
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
        DriverError::Timeout(_)
            | DriverError::Link { .. }
            | DriverError::Instrument(_)
            | DriverError::Busy(_)
    )
}

#[async_trait::async_trait]
impl Instrument for ScpiDriver {
    fn describe(&self) -> Description {
        let cmd = || ParamSpec::required("cmd", ParamType::String);
        Description {
            driver: "scpi".to_string(),
            identity: self.identity.clone(),
            methods: vec![
                MethodSpec::new("connect", "Open the link; true on success"),
                MethodSpec::new("close", "Close the link"),
                MethodSpec::new("write", "Send one command; true on success").param(cmd()),
                MethodSpec::new("read", "Read one reply: [ok, text]"),
                MethodSpec::new("query", "Send a command and read its reply: [ok, text]")
                    .param(cmd()),
                MethodSpec::new(
                    "query_binary",
                    "Send a command and read an IEEE 488.2 block: [ok, base64 of the data bytes]",
                )
                .param(cmd()),
            ],
        }
    }

    async fn call(&mut self, method: &str, args: Args) -> Result<Value, DriverError> {
        match method {
            "connect" => {
                let r = self.session.connect().await;
                if r.is_ok() && self.identity.is_none() {
                    self.identity = self.session.idn().await.ok();
                }
                self.flag(r)
            }
            "close" => {
                self.session.close().await;
                Ok(Value::Null)
            }
            "write" => {
                let cmd = args.str("cmd")?.to_string();
                let r = self.session.write(&cmd).await;
                self.flag(r)
            }
            "read" => {
                let r = self.session.read().await;
                self.pair(r)
            }
            "query" => {
                let cmd = args.str("cmd")?.to_string();
                let r = self.session.query(&cmd).await;
                self.pair(r)
            }
            "query_binary" => {
                let cmd = args.str("cmd")?.to_string();
                let r = self
                    .session
                    .query_binary(&cmd)
                    .await
                    .map(|b| base64::engine::general_purpose::STANDARD.encode(b));
                self.pair(r)
            }
            other => Err(DriverError::UnknownMethod(other.to_string())),
        }
    }

    /// Cheap: no instrument traffic.
    async fn poll(&mut self) -> Result<Value, DriverError> {
        Ok(json!({
            "relay_id": self.id,
            "connected": self.session.is_connected(),
            "idn": self.identity,
            "resource": self.session.resource().to_string(),
        }))
    }

    async fn shutdown(&mut self) {
        self.session.close().await;
    }
}

/// Register `scpi`.
pub fn register(r: &mut crate::DriverRegistry) {
    r.register("scpi", |cfg: InstrumentConfig| async move {
        Ok(Box::new(ScpiDriver::from_config(&cfg)?) as BoxInstrument)
    });
}
