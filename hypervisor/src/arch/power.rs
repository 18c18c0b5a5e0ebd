//! Powering the machine off.
//!
//! Order: the emulators' test exits (only when the configuration asks for them, because the same ports
//! mean nothing, or something else, on a real server), then UEFI `ResetSystem(EfiResetShutdown)`, which
//! works on real firmware because the kernel keeps the firmware's identity map and never calls
//! `SetVirtualAddressMap` (UEFI spec 8.5.1), then halt.

use super::port;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use exitless_abi::protocol;

/// QEMU `-device isa-debug-exit,iobase=0xf4,iosize=0x04`: writing v exits QEMU with (v << 1) | 1.
const QEMU_DEBUG_EXIT_PORT: u16 = 0xF4;
/// Bochs: writing the bytes of "Shutdown" to port 0x8900 ends the emulation.
const BOCHS_SHUTDOWN_PORT: u16 = 0x8900;
/// Exit code reported after an unrecoverable CPU exception or panic.
pub const FATAL_EXIT_CODE: u32 = 3;

static EMULATOR_EXIT: AtomicBool = AtomicBool::new(false);
static UEFI_SYSTEM_TABLE: AtomicU64 = AtomicU64::new(0);

/// Enables the emulators' exit ports (test images set `emulator_exit = yes`).
pub fn set_emulator_exit(enabled: bool) {
    EMULATOR_EXIT.store(enabled, Ordering::Relaxed);
}

/// Remembers the UEFI system table so power-off can use runtime services.
pub fn set_uefi_system_table(phys: u64) {
    UEFI_SYSTEM_TABLE.store(phys, Ordering::Relaxed);
}

/// Announces the power-off on the console (the test harness waits for this line) and powers off.
/// `code` 0 means every check passed.
pub fn power_off(code: u32) -> ! {
    super::serial::print_emergency(format_args!(""));
    let _ = protocol::write_poweroff(&mut super::serial::Console, code);
    super::serial::drain();
    x86_64::instructions::interrupts::disable();
    if EMULATOR_EXIT.load(Ordering::Relaxed) {
        // SAFETY: test images run only under QEMU (isa-debug-exit) or Bochs (shutdown port), and
        // writing these ports there ends the emulation; we are stopping anyway.
        unsafe {
            port::write::<u32>(QEMU_DEBUG_EXIT_PORT, code);
            for byte in *b"Shutdown" {
                port::write::<u8>(BOCHS_SHUTDOWN_PORT, byte);
            }
        }
    }
    uefi_shutdown();
    log::error!("power-off did not take effect: halting; switch the machine off by hand");
    super::halt_forever()
}

/// Stops after an unrecoverable error: power-off with [`FATAL_EXIT_CODE`] in test images, otherwise halt
/// so the report stays on screen.
pub fn stop_after_fatal_error() -> ! {
    if EMULATOR_EXIT.load(Ordering::Relaxed) {
        power_off(FATAL_EXIT_CODE)
    }
    super::serial::print_emergency(format_args!("machine halted after a fatal error\n"));
    super::serial::drain();
    super::halt_forever()
}

fn uefi_shutdown() {
    let table =
        UEFI_SYSTEM_TABLE.load(Ordering::Relaxed) as *const uefi_raw::table::system::SystemTable;
    if table.is_null() {
        return;
    }
    // SAFETY: the loader passed the firmware's system table; runtime services stay mapped at their
    // physical addresses (identity map, no SetVirtualAddressMap) and stay valid after ExitBootServices.
    unsafe {
        let runtime = (*table).runtime_services;
        if runtime.is_null() {
            return;
        }
        ((*runtime).reset_system)(
            uefi_raw::table::runtime::ResetType::SHUTDOWN,
            uefi_raw::Status::SUCCESS,
            0,
            core::ptr::null(),
        );
    }
}
