//! MSRs: their indices, each written once (SDM Vol. 4 Table 2-2, "IA-32 Architectural MSRs", unless
//! said otherwise), and [`read`]/[`write`], the kernel's only RDMSR and WRMSR. What the host does
//! with each MSR lives with the code that reads or writes it, and which ones a guest reaches
//! without an exit is `vmx::msr_policy`.

/// RDMSR of `index` (SDM Vol. 2B RDMSR).
///
/// # Safety
/// CPL 0, and the MSR must exist on this CPU (else #GP); reading it must have no effect the caller
/// has not accounted for.
#[inline]
pub unsafe fn read(index: u32) -> u64 {
    let (low, high): (u32, u32);
    // SAFETY: the caller's contract; RDMSR only writes EDX:EAX.
    unsafe {
        core::arch::asm!("rdmsr", in("ecx") index, out("eax") low, out("edx") high,
            options(nomem, nostack, preserves_flags));
    }
    u64::from(high) << 32 | u64::from(low)
}

/// WRMSR of `value` to `index` (SDM Vol. 2B WRMSR).
///
/// # Safety
/// CPL 0, the MSR must exist and accept `value` (else #GP), and the write's effect on the CPU must
/// be the caller's intent.
#[inline]
pub unsafe fn write(index: u32, value: u64) {
    // SAFETY: the caller's contract. Not `nomem`: a WRMSR can change how memory is reached (PAT,
    // EFER, GS base), so the compiler must not move memory accesses across it.
    unsafe {
        core::arch::asm!("wrmsr", in("ecx") index, in("eax") value as u32, in("edx") (value >> 32) as u32,
            options(nostack, preserves_flags));
    }
}

/// IA32_TIME_STAMP_COUNTER (Table 2-2; SDM Vol. 3B 18.17).
pub const TSC: u32 = 0x10;
/// IA32_PLATFORM_ID (Table 2-2).
pub const PLATFORM_ID: u32 = 0x17;
/// IA32_APIC_BASE (Table 2-2; SDM Vol. 3A 11.4.4, 11.12.1).
pub const APIC_BASE: u32 = 0x1B;
/// IA32_FEATURE_CONTROL (Table 2-2; SDM Vol. 3C 24.7).
pub const FEATURE_CONTROL: u32 = 0x3A;
/// IA32_BIOS_SIGN_ID, the microcode update signature (Table 2-2).
pub const BIOS_SIGN_ID: u32 = 0x8B;
/// IA32_MCG_CAP, machine-check global capabilities: bank count in bits 7:0 (Table 2-2; SDM Vol. 3B
/// 16.3.1.1).
pub const MCG_CAP: u32 = 0x179;
/// IA32_MCG_STATUS (Table 2-2; SDM Vol. 3B 16.3.1.2).
pub const MCG_STATUS: u32 = 0x17A;
/// IA32_MISC_ENABLE (Table 2-2).
pub const MISC_ENABLE: u32 = 0x1A0;
/// IA32_TSC_DEADLINE, the LAPIC timer's TSC-deadline mode target (Table 2-2; SDM Vol. 3A 11.5.4.1).
pub const TSC_DEADLINE: u32 = 0x6E0;
/// IA32_PAT (Table 2-2; SDM Vol. 3A 12.12.2).
pub const PAT: u32 = 0x277;
/// IA32_EFER (Table 2-2).
pub const EFER: u32 = 0xC000_0080;
/// IA32_STAR: SYSCALL/SYSRET segment selectors (Table 2-2; SDM Vol. 2B SYSCALL).
pub const STAR: u32 = 0xC000_0081;
/// IA32_LSTAR: the 64-bit SYSCALL target RIP (Table 2-2).
pub const LSTAR: u32 = 0xC000_0082;
/// IA32_CSTAR: the compatibility-mode SYSCALL target (Table 2-2; unused by Intel CPUs, but
/// read- and writable).
pub const CSTAR: u32 = 0xC000_0083;
/// IA32_FMASK: the RFLAGS mask SYSCALL applies (Table 2-2).
pub const FMASK: u32 = 0xC000_0084;
/// IA32_FS_BASE (Table 2-2).
pub const FS_BASE: u32 = 0xC000_0100;
/// IA32_GS_BASE (Table 2-2).
pub const GS_BASE: u32 = 0xC000_0101;
/// IA32_KERNEL_GS_BASE: what SWAPGS exchanges with GS_BASE (Table 2-2; SDM Vol. 2B SWAPGS).
pub const KERNEL_GS_BASE: u32 = 0xC000_0102;
/// IA32_TSC_AUX: what RDTSCP and RDPID return (Table 2-2).
pub const TSC_AUX: u32 = 0xC000_0103;

/// First and last MSR of the x2APIC range (SDM Vol. 3A 11.12.1.2; Table 2-2 lists them as
/// IA32_X2APIC_*).
pub const X2APIC_FIRST: u32 = 0x800;
pub const X2APIC_LAST: u32 = 0x8FF;

/// x2APIC register MSRs (SDM Vol. 3A Table 11-6; Vol. 4 Table 2-2, IA32_X2APIC_*).
pub mod x2apic {
    pub use super::{X2APIC_FIRST as FIRST, X2APIC_LAST as LAST};

    pub const ID: u32 = 0x802;
    pub const VERSION: u32 = 0x803;
    pub const TPR: u32 = 0x808;
    pub const PPR: u32 = 0x80A;
    pub const EOI: u32 = 0x80B;
    pub const LDR: u32 = 0x80D;
    pub const SVR: u32 = 0x80F;
    /// ISR, TMR and IRR: eight 32-bit words each, vectors 32*i..32*i+31 in word i.
    pub const ISR0: u32 = 0x810;
    pub const TMR0: u32 = 0x818;
    pub const IRR0: u32 = 0x820;
    pub const ESR: u32 = 0x828;
    pub const ICR: u32 = 0x830;
    pub const LVT_TIMER: u32 = 0x832;
    pub const LVT_THERMAL: u32 = 0x833;
    pub const LVT_PERFMON: u32 = 0x834;
    pub const LVT_LINT0: u32 = 0x835;
    pub const LVT_LINT1: u32 = 0x836;
    pub const LVT_ERROR: u32 = 0x837;
    pub const TIMER_INITIAL_COUNT: u32 = 0x838;
    pub const TIMER_CURRENT_COUNT: u32 = 0x839;
    pub const TIMER_DIVIDE: u32 = 0x83E;
    pub const SELF_IPI: u32 = 0x83F;
}

/// IA32_FEATURE_CONTROL and the VMX capability MSRs (Table 2-2; SDM Vol. 3D Appendix A), under
/// the names `caps::vmx` reads them by.
pub mod vmx {
    pub use super::FEATURE_CONTROL as IA32_FEATURE_CONTROL;

    pub const IA32_VMX_BASIC: u32 = 0x480;
    pub const IA32_VMX_PINBASED_CTLS: u32 = 0x481;
    pub const IA32_VMX_PROCBASED_CTLS: u32 = 0x482;
    pub const IA32_VMX_EXIT_CTLS: u32 = 0x483;
    pub const IA32_VMX_ENTRY_CTLS: u32 = 0x484;
    pub const IA32_VMX_MISC: u32 = 0x485;
    pub const IA32_VMX_CR0_FIXED0: u32 = 0x486;
    pub const IA32_VMX_CR0_FIXED1: u32 = 0x487;
    pub const IA32_VMX_CR4_FIXED0: u32 = 0x488;
    pub const IA32_VMX_CR4_FIXED1: u32 = 0x489;
    pub const IA32_VMX_PROCBASED_CTLS2: u32 = 0x48B;
    pub const IA32_VMX_EPT_VPID_CAP: u32 = 0x48C;
    pub const IA32_VMX_TRUE_PINBASED_CTLS: u32 = 0x48D;
    pub const IA32_VMX_TRUE_PROCBASED_CTLS: u32 = 0x48E;
    pub const IA32_VMX_TRUE_EXIT_CTLS: u32 = 0x48F;
    pub const IA32_VMX_TRUE_ENTRY_CTLS: u32 = 0x490;
    pub const IA32_VMX_VMFUNC: u32 = 0x491;
}
