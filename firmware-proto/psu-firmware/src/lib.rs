//! Example firmware for the labmesh device link: the `firmware-proto` PSU model,
//! frame reader and dispatcher as a C-callable `no_std` static library.
//!
//! A board's UART driver calls [`labmesh_psu_rx`] with received bytes and
//! [`labmesh_psu_tick`] from a timer; answer frames go out through the
//! `labmesh_uart_write` function the board provides. No allocator, no board
//! support crate: it links on its own for `thumbv7em-none-eabihf`.
#![no_std]

use core::cell::RefCell;
use core::panic::PanicInfo;

extern "C" {
    /// Provided by the board: queue `len` bytes from `data` for the UART.
    fn labmesh_uart_write(data: *const u8, len: usize);
}

fn send(frame: &[u8]) {
    // SAFETY: `frame` is a valid slice for the duration of the call.
    unsafe { labmesh_uart_write(frame.as_ptr(), frame.len()) }
}

/// Single-core firmware state, touched only from the UART/timer context.
#[cfg_attr(feature = "size-baseline", allow(dead_code))]
struct Global<T>(RefCell<Option<T>>);
// SAFETY: the firmware runs on one core and these entry points are not reentrant
// (they are called from one interrupt priority level), as documented above.
unsafe impl<T> Sync for Global<T> {}

#[cfg_attr(feature = "size-baseline", allow(dead_code))]
impl<T> Global<T> {
    fn with(&self, init: impl FnOnce() -> T, f: impl FnOnce(&mut T)) {
        if let Ok(mut slot) = self.0.try_borrow_mut() {
            f(slot.get_or_insert_with(init));
        }
    }
}

#[cfg(not(any(feature = "size-baseline", feature = "size-link-only")))]
mod app {
    use super::{send, Global};
    use core::cell::RefCell;
    use firmware_proto::psu::{PsuFirmware, DEFAULT_LOAD_MOHM};

    static FIRMWARE: Global<PsuFirmware> = Global(RefCell::new(None));
    fn init() -> PsuFirmware {
        PsuFirmware::new(DEFAULT_LOAD_MOHM, "FW-0001")
    }

    pub fn rx(input: &[u8]) {
        FIRMWARE.with(init, |fw| fw.receive(input, send));
    }

    pub fn tick(uptime_ms: u32) {
        FIRMWARE.with(init, |fw| fw.telemetry(uptime_ms, send));
    }
}

#[cfg(feature = "size-link-only")]
mod app {
    use super::{send, Global};
    use core::cell::RefCell;
    use firmware_proto::dispatch::{Device, Route, Serve};
    use firmware_proto::{Endpoint, EndpointError};

    /// One trivial endpoint, so only framing and dispatch are measured.
    pub struct Ping;
    impl Endpoint for Ping {
        type Request = u32;
        type Response = u32;
        const NAME: &'static str = "ping";
        const SCHEMA: &'static str = "u32->u32";
    }
    pub struct Ctx;
    impl Serve<Ping> for Ctx {
        fn serve(&mut self, n: u32) -> Result<u32, EndpointError> {
            Ok(n)
        }
    }
    static ROUTES: [Route<Ctx>; 1] = [Route::of::<Ping>()];
    static DEVICE: Global<Device<'static, Ctx>> = Global(RefCell::new(None));

    pub fn rx(input: &[u8]) {
        DEVICE.with(
            || Device::new(&ROUTES),
            |d| d.receive(&mut Ctx, input, send),
        );
    }

    pub fn tick(_: u32) {}
}

#[cfg(feature = "size-baseline")]
mod app {
    pub fn rx(input: &[u8]) {
        super::send(input);
    }

    pub fn tick(_: u32) {}
}

/// Feed `len` received bytes at `data`.
///
/// # Safety
/// `data` must point to `len` readable bytes.
#[no_mangle]
pub unsafe extern "C" fn labmesh_psu_rx(data: *const u8, len: usize) {
    if data.is_null() {
        return;
    }
    // SAFETY: the caller guarantees `data` points to `len` readable bytes.
    let input = unsafe { core::slice::from_raw_parts(data, len) };
    app::rx(input);
}

/// Emit one telemetry frame (call from a periodic timer).
#[no_mangle]
pub extern "C" fn labmesh_psu_tick(uptime_ms: u32) {
    app::tick(uptime_ms);
}

#[cfg(target_os = "none")]
#[panic_handler]
fn panic(_: &PanicInfo) -> ! {
    loop {
        core::hint::spin_loop();
    }
}
