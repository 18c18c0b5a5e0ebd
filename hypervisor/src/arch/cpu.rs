//! The two instructions that read the processor without privilege or side effects, CPUID and
//! RDTSC, as safe functions: the rest of the kernel calls these instead of the intrinsics.

/// CPUID with EAX = `leaf`, ECX = `subleaf`: `[eax, ebx, ecx, edx]` (SDM Vol. 2A CPUID). A leaf
/// above the CPU's maximum returns the highest basic leaf's data, never faults.
#[inline]
pub fn cpuid(leaf: u32, subleaf: u32) -> [u32; 4] {
    // CPUID exists on every x86_64 processor and only writes the four registers (a safe intrinsic).
    let r = core::arch::x86_64::__cpuid_count(leaf, subleaf);
    [r.eax, r.ebx, r.ecx, r.edx]
}

/// The time-stamp counter (SDM Vol. 2B RDTSC; Vol. 3B 18.17). Not serializing: a read may pass
/// earlier instructions, which the kernel's coarse timing (waits, ticks, budgets) tolerates.
#[inline]
pub fn rdtsc() -> u64 {
    // SAFETY: the kernel runs at CPL 0, so RDTSC never faults whatever CR4.TSD says; it only reads
    // the counter into EDX:EAX.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// This processor's initial APIC ID: the full 32-bit x2APIC ID of CPUID.0BH:EDX where leaf 0BH
/// exists (SDM Vol. 3A 11.12.8, 11.12.5.1: the x2APIC ID register holds the same value), else the
/// 8-bit ID of CPUID.1:EBX[31:24].
pub fn initial_apic_id() -> u32 {
    if cpuid(0, 0)[0] >= 0xB && cpuid(0xB, 0)[1] != 0 {
        cpuid(0xB, 0)[3]
    } else {
        cpuid(1, 0)[1] >> 24
    }
}
