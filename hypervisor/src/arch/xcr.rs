//! XCR0, the extended-feature enable register (SDM Vol. 1 13.3), which the VMCS does not hold: a
//! guest's XSETBV exits unconditionally (SDM Vol. 3C 26.1.2) and the host performs it for the guest.
//!
//! The kernel is built for `x86_64-unknown-none`, whose target disables SSE and x87 code generation
//! (soft float), and it never executes XSAVE/XRSTOR or touches FPU state. So XCR0 can stay the
//! guest's value while the host runs between exits; the runner resets it when a new guest starts.

/// CPUID.1:ECX bit 26: XSAVE/XRSTOR/XSETBV/XGETBV and XCR0 exist (SDM Vol. 2A CPUID).
const CPUID1_ECX_XSAVE: u32 = 1 << 26;
/// CR4 bit 18, OSXSAVE: without it XSETBV raises #UD (SDM Vol. 3A 2.5).
pub const CR4_OSXSAVE: u64 = 1 << 18;

/// Whether this CPU has XSAVE (and so XCR0).
pub fn cpu_has_xsave() -> bool {
    super::cpu::cpuid(1, 0)[2] & CPUID1_ECX_XSAVE != 0
}

/// Whether the host can execute XSETBV right now (CR4.OSXSAVE is set).
pub fn host_osxsave() -> bool {
    x86_64::registers::control::Cr4::read_raw() & CR4_OSXSAVE != 0
}

/// Loads XCR0 with `value`.
///
/// # Safety
/// CPL 0 with CR4.OSXSAVE = 1, and `value` a valid XCR0 for this CPU (bit 0 set, only bits CPUID
/// leaf 0xD sub-leaf 0 reports, the pairing rules of SDM Vol. 1 13.3): otherwise XSETBV raises #GP
/// in the host. Callers check with `vmm::validate::xcr0_write`.
pub unsafe fn xsetbv0(value: u64) {
    // SAFETY: per the caller's contract; XSETBV with ECX = 0 writes XCR0 (SDM Vol. 2C XSETBV).
    unsafe {
        core::arch::asm!("xsetbv", in("ecx") 0u32, in("eax") value as u32, in("edx") (value >> 32) as u32,
            options(nomem, nostack, preserves_flags));
    }
}
