//! HiSLIP (IVI-6.1, High-Speed LAN Instrument Protocol).

/// The IANA-registered HiSLIP port.
pub const PORT: u16 = 4880;
