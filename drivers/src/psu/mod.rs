//! Power supplies: model limits and the family drivers.

pub mod models;
