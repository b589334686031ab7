//! `labmesh drivers`: the built-in and declarative drivers.

use std::process::ExitCode;

use crate::common::{driver_registry, load, Global};

pub async fn exec(global: &Global) -> anyhow::Result<ExitCode> {
    let registry = driver_registry(&load(global)?)?;
    for name in registry.names() {
        println!("{name}");
    }
    Ok(ExitCode::SUCCESS)
}
