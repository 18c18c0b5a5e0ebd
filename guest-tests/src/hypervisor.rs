//! Calls into Exitless (`exitless_abi::hypercall`). Only valid in `Mode::Exitless`.

use exitless_abi::hypercall::{Hypercall, EXIT_REASON_COUNT};

/// `VMCALL` with up to three arguments.
pub fn call(call: Hypercall, a: u64, b: u64, c: u64) -> u64 {
    let result: u64;
    // SAFETY: VMCALL exits to the hypervisor, which returns in rax and preserves all other registers.
    unsafe {
        core::arch::asm!("vmcall", inlateout("rax") call as u64 => result, in("rdi") a, in("rsi") b, in("rdx") c,
            options(nostack));
    }
    result
}

pub fn power_off(code: u32) -> ! {
    call(Hypercall::PowerOff, u64::from(code), 0, 0);
    unreachable!("the PowerOff hypercall returned")
}

pub fn reset_exit_counters() {
    call(Hypercall::ResetExitCounters, 0, 0, 0);
}

/// The guest's exit counters, indexed by basic exit reason.
pub fn exit_counters(env: &crate::Env) -> [u64; EXIT_REASON_COUNT] {
    let mut counters = [0u64; EXIT_REASON_COUNT];
    // The hypervisor takes a guest-physical address; the buffer lives in the upper-half image mapping.
    let phys = env.virt_to_phys(counters.as_mut_ptr() as u64);
    call(
        Hypercall::ReadExitCounters,
        phys,
        EXIT_REASON_COUNT as u64,
        0,
    );
    counters
}

/// Host timer interrupts the host has taken so far.
pub fn host_timer_ticks() -> u64 {
    call(Hypercall::HostTimerTicks, 0, 0, 0)
}

/// Whether this guest's device interrupts are delivered ELI-style.
pub fn eli_mode() -> bool {
    call(Hypercall::InterruptMode, 0, 0, 0) == 1
}

/// Whether this guest's device interrupts are delivered through the virtual APIC (APICv).
pub fn apicv_mode() -> bool {
    call(Hypercall::InterruptMode, 0, 0, 0) == 2
}
