#![cfg_attr(not(feature = "std"), no_std)]
//! no_std device link for labmesh firmware instruments.
//!
//! Frames are `COBS(postcard(header) ++ postcard(body) ++ crc32c) ++ 0x00`
//! (see `docs/PROTOCOL.md (Device link)`). Without features the crate needs neither std nor
//! an allocator; `std` adds the tokio host client and a simulated microcontroller.

#[cfg(feature = "alloc")]
extern crate alloc;

pub mod dispatch;
pub mod error;
pub mod frame;
pub mod key;
pub mod psu;

pub use error::{DeviceErrorKind, EndpointError};
pub use frame::{
    encode_frame, BadFrame, EncodeError, Feed, Frame, FrameReader, Header, Kind, MAX_BODY,
    MAX_FRAME, PROTOCOL_VERSION,
};
pub use key::{Endpoint, Key, Topic};

#[cfg(feature = "std")]
pub mod host;
#[cfg(feature = "std")]
pub mod sim;

#[cfg(feature = "std")]
pub use host::{ClientConfig, ClientStats, DeviceClient, DeviceError, DeviceEvent};
#[cfg(feature = "std")]
pub use sim::run_simulated_device;
