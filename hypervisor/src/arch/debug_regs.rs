//! The debug-status register DR6, which the VMCS does not hold (SDM Vol. 3C 25.4.1 lists DR7 only).
//!
//! A #DB that causes a VM exit leaves DR6 unchanged and reports its DR6 bits in the exit
//! qualification instead (SDM Vol. 3C 27.1, "Architectural State Before a VM Exit", and 28.2.1
//! Table 28-1). The host never uses the debug registers, so the physical DR6 holds the guest's value
//! from exit to entry: writing it here is how the guest's #DB handler sees the merged bits.

/// Reads DR6.
pub fn read_dr6() -> u64 {
    let value: u64;
    // SAFETY: MOV from DR6 at CPL 0 only reads a register (SDM Vol. 2B "MOV—Move to/from Debug
    // Registers"); CR4.DE does not affect DR6.
    unsafe {
        core::arch::asm!("mov {}, dr6", out(reg) value, options(nomem, nostack, preserves_flags))
    };
    value
}

/// Writes DR6.
///
/// # Safety
/// CPL 0. Bits 63:32 must be 0 (else #GP, SDM Vol. 2B MOV DR). The value is the guest's: the host
/// must not rely on DR6 itself (it does not).
pub unsafe fn write_dr6(value: u64) {
    // SAFETY: the caller guarantees CPL 0 and bits 63:32 clear, so MOV to DR6 cannot fault; DR6
    // only reports debug conditions and the host does not rely on it; no memory is touched.
    unsafe {
        core::arch::asm!("mov dr6, {}", in(reg) value, options(nomem, nostack, preserves_flags))
    };
}
