//! The built-in drivers, registered by [`crate::DriverRegistry::with_builtins`].

use crate::{BoxInstrument, DriverRegistry, InstrumentConfig};

/// Register every built-in driver in `r`.
pub fn register_all(r: &mut DriverRegistry) {
    r.register("mock-psu", &[], |cfg: InstrumentConfig| async move {
        Ok(Box::new(crate::mock_psu::MockPsu::new(&cfg.id)) as BoxInstrument)
    });
    crate::scpi_driver::register(r);
    crate::psu::register(r);
    crate::firmware::register(r);
}
