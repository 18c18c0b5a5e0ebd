//! A guest that ends inside its device's interrupt handler: the vector is still in service (in the
//! physical LAPIC under ELI), its IOAPIC pin unmasked and COM2 still asking for interrupts. The next
//! guest in the boot, on the same vector, must get its interrupts as if this one never ran.
#![no_std]
#![no_main]

use core::sync::atomic::{AtomicU64, Ordering};
use guest_tests::apic::Com2;
use guest_tests::workload::{self, DEVICE_VECTOR};
use guest_tests::{hypervisor, idt};

guest_tests::entry!(main);

static TAKEN: AtomicU64 = AtomicU64::new(0);

fn take_and_end(_: u8) {
    TAKEN.fetch_add(1, Ordering::SeqCst);
    guest_tests::println!("guest: in the device handler, powering off without EOI");
    hypervisor::power_off(0);
}

fn main(env: &guest_tests::Env) -> u32 {
    workload::setup();
    idt::set_handler(DEVICE_VECTOR, take_and_end);
    Com2::send(b'!');
    Com2::set_tx_interrupt(true);
    x86_64::instructions::interrupts::enable();
    // SAFETY: RDTSC is always available here.
    let start = unsafe { core::arch::x86_64::_rdtsc() };
    // SAFETY: RDTSC only reads the time-stamp counter, and is always available here.
    while unsafe { core::arch::x86_64::_rdtsc() } - start < 200_000_000 {
        core::hint::spin_loop();
    }
    guest_tests::println!(
        "guest: the device interrupt never came (mode {:?})",
        env.mode
    );
    1
}
