//! [`DriverRegistry`]: driver name -> factory.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::{DriverError, Instrument, OptionSpec};

/// One instrument as configured (a `[[relay.instruments]]` table, or the CLI).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct InstrumentConfig {
    /// The instrument's relay id on the mesh.
    pub id: String,
    /// Registry name of the driver.
    pub driver: String,
    /// Where it is plugged in: a PyVISA-style resource string or URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
    /// Driver-specific options.
    #[serde(default)]
    pub options: Map<String, Value>,
}

/// A boxed instrument, as the relay holds it.
pub type BoxInstrument = Box<dyn Instrument>;

/// The future a factory returns.
pub type FactoryFuture = Pin<Box<dyn Future<Output = Result<BoxInstrument, DriverError>> + Send>>;

type Factory = Arc<dyn Fn(InstrumentConfig) -> FactoryFuture + Send + Sync>;

/// A registered driver: the options it declares and its factory.
#[derive(Clone)]
struct Entry {
    options: &'static [OptionSpec],
    factory: Factory,
}

/// Maps driver names to factories and the options each driver declares.
/// A value, passed around: build one with [`DriverRegistry::with_builtins`]
/// and add your own with [`DriverRegistry::register`].
#[derive(Clone, Default)]
pub struct DriverRegistry {
    factories: BTreeMap<String, Entry>,
}

impl std::fmt::Debug for DriverRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.factories.keys()).finish()
    }
}

impl DriverRegistry {
    /// An empty registry.
    pub fn empty() -> Self {
        DriverRegistry::default()
    }

    /// A registry with every built-in driver.
    pub fn with_builtins() -> Self {
        let mut r = DriverRegistry::empty();
        crate::builtins::register_all(&mut r);
        r
    }

    /// Register (or replace) a driver accepting `options` (its one table of
    /// option keys, types and docs; `&[]` for none). [`DriverRegistry::create`]
    /// refuses any other key before the factory runs.
    pub fn register<F, Fut>(&mut self, name: &str, options: &'static [OptionSpec], factory: F)
    where
        F: Fn(InstrumentConfig) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<BoxInstrument, DriverError>> + Send + 'static,
    {
        self.factories.insert(
            name.to_string(),
            Entry {
                options,
                factory: Arc::new(move |cfg| Box::pin(factory(cfg))),
            },
        );
    }

    /// The options the driver `name` declares.
    pub fn options(&self, name: &str) -> Option<&'static [OptionSpec]> {
        self.factories.get(name).map(|e| e.options)
    }

    /// Load every declarative driver (`*.toml`) in `dir` and register it.
    /// Returns the names registered, sorted by file name. All files are
    /// checked before any is registered; an error names the file and key.
    /// A name already registered (a built-in, or a file loaded before) is
    /// an error too.
    pub fn load_dir(&mut self, dir: &std::path::Path) -> Result<Vec<String>, DriverError> {
        let defs = crate::declarative::load_dir(dir)?;
        for def in &defs {
            if self.factories.contains_key(&def.name) {
                return Err(DriverError::Config(format!(
                    "{}: driver.name: '{}' is already registered",
                    def.file.display(),
                    def.name
                )));
            }
        }
        let mut names = Vec::new();
        for def in defs {
            let name = def.name.clone();
            let def = Arc::new(def);
            self.register(
                &name,
                crate::options::SCPI_SESSION,
                move |cfg: InstrumentConfig| {
                    let def = def.clone();
                    async move {
                        crate::declarative::DeclarativeDriver::from_config(def, &cfg)
                            .map(|d| Box::new(d) as BoxInstrument)
                    }
                },
            );
            names.push(name);
        }
        Ok(names)
    }

    /// Whether a driver named `name` is registered.
    pub fn contains(&self, name: &str) -> bool {
        self.factories.contains_key(name)
    }

    /// Names of the registered drivers, sorted.
    pub fn names(&self) -> Vec<String> {
        self.factories.keys().cloned().collect()
    }

    /// Create the instrument `cfg` describes. An option its driver does not
    /// declare is [`DriverError::UnknownOption`] (nothing is created).
    pub async fn create(&self, cfg: InstrumentConfig) -> Result<BoxInstrument, DriverError> {
        let entry = self.factories.get(&cfg.driver).ok_or_else(|| {
            DriverError::Config(format!(
                "unknown driver '{}' (known: {})",
                cfg.driver,
                self.names().join(", ")
            ))
        })?;
        if let Some(key) = crate::options::unknown_key(&cfg.options, entry.options) {
            return Err(DriverError::UnknownOption {
                driver: cfg.driver.clone(),
                key: key.to_string(),
                known: entry.options.iter().map(|o| o.name).collect(),
            });
        }
        (entry.factory)(cfg).await
    }
}
