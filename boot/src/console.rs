//! Loader messages on the UEFI console (ConOut) and on COM1.
//!
//! OVMF usually mirrors ConOut onto a serial terminal already; then writing to the UART as well would
//! print every line twice. So the UART is written directly only when the `ConOut` variable names no
//! UART device-path node (UEFI 2.10, 10.3.4.11 "UART Device Path"), and always after boot services
//! have exited (no ConOut any more).

use core::fmt;
use core::sync::atomic::{AtomicBool, Ordering};

use uefi::runtime::{self, VariableVendor};
use uefi::{cstr16, system};
use x86_64::instructions::port::Port;

static BOOT_SERVICES_EXITED: AtomicBool = AtomicBool::new(false);
static SERIAL_DIRECT: AtomicBool = AtomicBool::new(true);

/// COM1 (legacy ISA address; OVMF and Bochs/QEMU program it to 115200 8N1).
const COM1: u16 = 0x3f8;
/// Line status register: bit 5 = transmit holding register empty (16550 datasheet).
const LSR_THR_EMPTY: u8 = 1 << 5;
/// Bounded wait for a missing or stuck UART: the loader must never hang on output.
const UART_SPINS: u32 = 100_000;

/// Decides whether the UART must be written directly (see the module doc).
pub fn init() {
    let mirrored = runtime::get_variable_boxed(cstr16!("ConOut"), &VariableVendor::GLOBAL_VARIABLE)
        .map(|(path, _)| device_path_has_uart(&path))
        .unwrap_or(false);
    SERIAL_DIRECT.store(!mirrored, Ordering::Relaxed);
}

/// Whether ConOut also reaches a serial port.
pub fn conout_reaches_serial() -> bool {
    !SERIAL_DIRECT.load(Ordering::Relaxed)
}

/// From now on only the UART is written.
pub fn boot_services_exited() {
    BOOT_SERVICES_EXITED.store(true, Ordering::SeqCst);
}

/// Walks a (multi-instance) device path: nodes are type, subtype, 16-bit length; type 0x7f ends.
fn device_path_has_uart(mut path: &[u8]) -> bool {
    while path.len() >= 4 {
        let (ty, subtype) = (path[0], path[1]);
        let len = u16::from_le_bytes([path[2], path[3]]) as usize;
        if ty == 0x03 && subtype == 0x0e {
            return true; // Messaging device path, UART
        }
        if ty == 0x7f && subtype == 0xff || len < 4 || len > path.len() {
            return false;
        }
        path = &path[len..];
    }
    false
}

/// LSR bit 6: transmitter empty (holding and shift registers both idle).
const LSR_TRANSMITTER_EMPTY: u8 = 1 << 6;

/// Waits (bounded) until COM1 has sent everything: the kernel reprograms the UART first thing, which
/// would cut off the loader's last line.
pub fn drain() {
    let mut lsr = Port::<u8>::new(COM1 + 5);
    for _ in 0..1_000_000 {
        // SAFETY: reading COM1's line status register has no side effects.
        if unsafe { lsr.read() } & LSR_TRANSMITTER_EMPTY != 0 {
            return;
        }
    }
}

fn uart_write_byte(byte: u8) {
    let (mut lsr, mut thr) = (Port::<u8>::new(COM1 + 5), Port::<u8>::new(COM1));
    for _ in 0..UART_SPINS {
        // SAFETY: reading COM1's line status register has no side effects; an absent UART reads
        // 0xff.
        if unsafe { lsr.read() } & LSR_THR_EMPTY != 0 {
            break;
        }
        core::hint::spin_loop();
    }
    // SAFETY: writing COM1's transmit holding register only sends a byte (an absent UART ignores
    // it); no memory is touched.
    unsafe { thr.write(byte) };
}

/// Writes to ConOut (while boot services run) and to COM1 (when ConOut does not already).
pub struct Console;

impl fmt::Write for Console {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let exited = BOOT_SERVICES_EXITED.load(Ordering::SeqCst);
        if !exited {
            // uefi's Output turns "\n" into "\r\n" itself.
            let _ = system::with_stdout(|out| fmt::Write::write_str(out, s));
        }
        if exited || SERIAL_DIRECT.load(Ordering::Relaxed) {
            for b in s.bytes() {
                if b == b'\n' {
                    uart_write_byte(b'\r');
                }
                uart_write_byte(b);
            }
        }
        Ok(())
    }
}

/// `say!("...")`: one line on the console and the serial port.
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => {{
        let _ = core::fmt::Write::write_fmt(
            &mut $crate::console::Console,
            format_args!("exitless loader: {}\n", format_args!($($arg)*)),
        );
    }};
}

/// Whether [`boot_services_exited`] was called.
pub fn exited() -> bool {
    BOOT_SERVICES_EXITED.load(Ordering::SeqCst)
}
