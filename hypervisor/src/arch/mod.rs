//! The machine itself: serial console, per-CPU state and descriptor tables, exception entry,
//! power-off, and the typed wrappers through which the rest of the kernel executes CPU
//! instructions and reaches I/O ports (`cpu`: CPUID and RDTSC; `msr`: RDMSR/WRMSR; `port`;
//! `mmio` for run-time-sized device accesses). This is where the kernel's `unsafe` and assembly
//! live; each piece is small and documented.

pub mod apic;
pub mod cpu;
pub mod debug_regs;
pub mod exceptions;
pub mod gdt;
pub mod guest_cpu_state;
pub mod host_irq;
/// The self-tests' interrupt counter: only in the test kernel (feature `selftest`) and host tests.
#[cfg(any(test, feature = "selftest"))]
pub mod irq_probe;
pub mod mmio;
pub mod msr;
pub mod percpu;
pub mod port;
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
