//! A complete firmware image around the library: a polled UART at fixed
//! registers (STM32F4 USART2 layout: SR at 0x4000_4400, DR at 0x4000_4404),
//! a free-running millisecond counter stand-in, telemetry every 1000 polls.
//! It links with no board crate, which is what the size figure needs: only
//! code reachable from `_start` survives `--gc-sections`.
#![no_std]
#![no_main]

use core::ptr::{read_volatile, write_volatile};

const USART_SR: *const u32 = 0x4000_4400 as *const u32;
const USART_DR: *mut u32 = 0x4000_4404 as *mut u32;
const SR_RXNE: u32 = 1 << 5;
const SR_TXE: u32 = 1 << 7;

/// Blocking byte-wise UART transmit, used by the library for answer frames.
#[no_mangle]
pub extern "C" fn labmesh_uart_write(data: *const u8, len: usize) {
    if data.is_null() {
        return;
    }
    // SAFETY: the library passes a valid frame slice.
    let bytes = unsafe { core::slice::from_raw_parts(data, len) };
    for &b in bytes {
        // SAFETY: fixed, always-mapped peripheral registers on the target board.
        unsafe {
            while read_volatile(USART_SR) & SR_TXE == 0 {}
            write_volatile(USART_DR, u32::from(b));
        }
    }
}

/// Reset entry point.
#[no_mangle]
pub extern "C" fn _start() -> ! {
    let mut polls: u32 = 0;
    let mut uptime_ms: u32 = 0;
    loop {
        // SAFETY: fixed, always-mapped peripheral registers on the target board.
        let sr = unsafe { read_volatile(USART_SR) };
        if sr & SR_RXNE != 0 {
            // SAFETY: as above; reading DR clears RXNE.
            let byte = unsafe { read_volatile(USART_DR) } as u8;
            // SAFETY: one readable byte.
            unsafe { psu_firmware::labmesh_psu_rx(&byte, 1) };
        }
        polls = polls.wrapping_add(1);
        if polls % 1000 == 0 {
            uptime_ms = uptime_ms.wrapping_add(1000);
            psu_firmware::labmesh_psu_tick(uptime_ms);
        }
    }
}
