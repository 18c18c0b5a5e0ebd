//! A guest that never gives the CPU back: interrupts off, a jump to itself. The host must stop it when
//! its run budget (`timeout_ms`) is spent, with a report, and run the next guest.
#![no_std]
#![no_main]

guest_tests::entry!(main);

fn main(_: &guest_tests::Env) -> u32 {
    guest_tests::println!("guest: interrupts off, spinning for good");
    // SAFETY: the point of this guest; nothing after it runs.
    unsafe { core::arch::asm!("cli", "2:", "jmp 2b", options(noreturn)) }
}
