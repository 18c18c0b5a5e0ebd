//! The machine itself: serial console, descriptor tables, exception entry, power-off.
//! This is where the kernel's `unsafe` and assembly live; each piece is small and documented.

pub mod apic;
pub mod debug_regs;
pub mod exceptions;
pub mod gdt;
pub mod guest_cpu_state;
pub mod host_irq;
/// The self-tests' interrupt counter: only in the test kernel (feature `selftest`) and host tests.
#[cfg(any(test, feature = "selftest"))]
pub mod irq_probe;
pub mod msr;
pub mod power;
pub mod serial;
pub mod tsc_calibration;
pub mod vmx;
pub mod xcr;

/// Stops this CPU for good: interrupts off, halt forever (an NMI or SMI returns to the loop).
pub fn halt_forever() -> ! {
    loop {
        x86_64::instructions::interrupts::disable();
        x86_64::instructions::hlt();
    }
}
