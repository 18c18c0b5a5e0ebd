//! COM1 output. Under Exitless the port accesses exit and the hypervisor forwards the bytes.

use core::fmt::{self, Write};
use uart_16550::SerialPort;
use x86_64::instructions::port::Port;

const COM1: u16 = 0x3F8;
static mut PORT: Option<SerialPort> = None;

pub fn init() {
    // SAFETY: COM1 is the guest's console; a guest test is single-threaded and calls this first.
    unsafe {
        let mut port = SerialPort::new(COM1);
        port.init();
        PORT = Some(port);
    }
}

/// Waits until the UART has sent everything (LSR bit 6, transmitter empty).
pub fn drain() {
    let mut lsr: Port<u8> = Port::new(COM1 + 5);
    for _ in 0..1_000_000 {
        // SAFETY: reading the line status register has no side effects.
        if unsafe { lsr.read() } & (1 << 6) != 0 {
            return;
        }
    }
}

pub struct Console;

impl Write for Console {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        // SAFETY: single-threaded guest; interrupt handlers do not print.
        match unsafe { (*core::ptr::addr_of_mut!(PORT)).as_mut() } {
            Some(port) => port.write_str(s),
            None => Ok(()),
        }
    }
}

#[macro_export]
macro_rules! println {
    ($($arg:tt)*) => {{
        use core::fmt::Write as _;
        let _ = writeln!($crate::console::Console, $($arg)*);
    }};
}
