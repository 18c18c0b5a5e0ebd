//! COM1 console and the `log` backend.
//!
//! Everything the kernel says goes to COM1 (0x3F8), which QEMU's `-serial file:` and Bochs' `com1:`
//! capture and a real server's BMC serial-over-LAN shows.

use core::fmt::{self, Write};
use spin::Mutex;
use uart_16550::SerialPort;

const COM1: u16 = 0x3F8;
/// Line status register, bit 6: transmitter empty (holding register and shift register both idle).
const LSR_TRANSMITTER_EMPTY: u8 = 1 << 6;

static CONSOLE: Mutex<Option<SerialPort>> = Mutex::new(None);

/// Programs COM1 (115200 8N1, FIFO on) and makes it the `log` target.
pub fn init(max_level: log::LevelFilter) {
    // SAFETY: 0x3F8-0x3FF is COM1 on every PC-compatible; nothing else in the kernel drives it.
    let mut port = unsafe { SerialPort::new(COM1) };
    port.init();
    *CONSOLE.lock() = Some(port);
    // A second init (e.g. after a panic during boot) keeps the first logger.
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(max_level);
}

/// Writes formatted text to the console (nothing before `init`).
pub fn print(args: fmt::Arguments<'_>) {
    x86_64::instructions::interrupts::without_interrupts(|| {
        if let Some(port) = CONSOLE.lock().as_mut() {
            let _ = port.write_fmt(args);
        }
    });
}

/// Writes from an exception or panic handler: takes the console even if the interrupted code held it,
/// because this CPU will not return to that code.
pub fn print_emergency(args: fmt::Arguments<'_>) {
    // SAFETY: called only on paths that never return to the interrupted holder of the lock.
    unsafe { CONSOLE.force_unlock() };
    print(args);
}

/// Waits until the UART has sent every byte, so nothing is lost when the machine powers off.
pub fn drain() {
    for _ in 0..1_000_000 {
        // SAFETY: reading COM1's line status register has no side effects.
        if unsafe { super::port::read::<u8>(COM1 + 5) } & LSR_TRANSMITTER_EMPTY != 0 {
            return;
        }
        core::hint::spin_loop();
    }
}

/// A [`fmt::Write`] that goes to the console, for code that reports through `write_summary`.
pub struct Console;

impl Write for Console {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        print(format_args!("{s}"));
        Ok(())
    }
}

#[macro_export]
macro_rules! println {
    () => { $crate::arch::serial::print(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::arch::serial::print(format_args!("{}\n", format_args!($($arg)*))) };
}

struct SerialLogger;
static LOGGER: SerialLogger = SerialLogger;

impl log::Log for SerialLogger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }
    fn log(&self, record: &log::Record<'_>) {
        if self.enabled(record.metadata()) {
            print(format_args!("[{:<5}] {}\n", record.level(), record.args()));
        }
    }
    fn flush(&self) {}
}
