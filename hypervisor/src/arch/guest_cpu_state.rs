//! CPU state that VMX does not switch between host and guest, and that a guest therefore owns while it
//! runs: DR0-DR3 and DR6, CR2, the x87/SSE/AVX registers and XCR0, and the SYSCALL/SWAPGS/RDTSCP
//! MSRs (which the MSR bitmap passes through, `vmx::msr_policy`). The host kernel uses none of it
//! (it is built without SSE, never executes SYSCALL or SWAPGS and sets no breakpoints), so a
//! guest's values can stay in the CPU across its exits; [`reset_for_next_guest`] wipes them before
//! a guest starts, so no guest sees another's.

use crate::vmx::msr_policy;
use x86_64::registers::control::{Cr4, Cr4Flags};

/// XCR0 components the host enables so that one XRSTOR can put all of them in their initial state: x87,
/// SSE, AVX and the three AVX-512 components (SDM Vol. 1 13.1), those the CPU supports.
const XCR0_RESETTABLE: u64 = 0b1110_0111;
/// XCR0 at power-on: x87 only (SDM Vol. 1 13.3). Guests start with it.
const XCR0_RESET: u64 = 1;
/// MXCSR at power-on (SDM Vol. 1 11.6.4).
const MXCSR_RESET: u32 = 0x1F80;
/// x87 control word after FNINIT (SDM Vol. 1 8.1.5).
const FCW_RESET: u16 = 0x037F;
/// DR6 with no debug condition recorded (SDM Vol. 3B 18.2.3: reserved bits read as 1).
const DR6_CLEAR: u64 = 0xFFFF_0FF0;

/// The legacy region and XSAVE header in their initial state: with XSTATE_BV = 0, XRSTOR puts every
/// requested component in its initial configuration, reading only MXCSR from the legacy region (SDM
/// Vol. 1 13.8.1); FXRSTOR of the same 512 bytes does it for x87 and SSE where there is no XSAVE.
#[repr(C, align(64))]
struct InitialState([u8; 576]);

static INITIAL_STATE: InitialState = {
    let mut bytes = [0u8; 576];
    let fcw = FCW_RESET.to_le_bytes();
    bytes[0] = fcw[0];
    bytes[1] = fcw[1];
    let mxcsr = MXCSR_RESET.to_le_bytes();
    bytes[24] = mxcsr[0];
    bytes[25] = mxcsr[1];
    bytes[26] = mxcsr[2];
    bytes[27] = mxcsr[3];
    InitialState(bytes)
};

/// The XCR0 components the host can reset: the CPU's supported ones (CPUID.(EAX=0DH,ECX=0):EAX).
fn resettable_components() -> u64 {
    u64::from(super::cpu::cpuid(0xD, 0)[0]) & XCR0_RESETTABLE
}

/// Turns on what the host needs to reset a guest's extended state: CR4.OSFXSR (FXRSTOR) and, where the
/// CPU has XSAVE, CR4.OSXSAVE (XSETBV, XRSTOR). Call once per CPU before its HOST_CR4 is recorded.
pub fn enable_for_host() {
    let mut flags = Cr4::read() | Cr4Flags::OSFXSR | Cr4Flags::OSXMMEXCPT_ENABLE;
    if super::xcr::cpu_has_xsave() {
        flags |= Cr4Flags::OSXSAVE;
    }
    // SAFETY: the bits CPUID allows; they only enable instructions, which the host itself never uses.
    unsafe { Cr4::write(flags) };
}

/// Wipes everything a previous guest may have left in the CPU (see the module comment) and gives the
/// next guest what it would have after reset.
pub fn reset_for_next_guest() {
    // SAFETY: CPL 0. Debug registers and CR2 hold no host state; the MSRs are the guest-owned ones
    // of `vmx::msr_policy` (0 is valid for each); the initial-state area is aligned and valid for
    // FXRSTOR/XRSTOR, and the CR4 bits they need were set by `enable_for_host`.
    unsafe {
        core::arch::asm!(
            "mov dr0, {zero}",
            "mov dr1, {zero}",
            "mov dr2, {zero}",
            "mov dr3, {zero}",
            "mov dr6, {dr6}",
            "mov cr2, {zero}",
            zero = in(reg) 0u64,
            dr6 = in(reg) DR6_CLEAR,
            options(nostack),
        );
        for msr in msr_policy::zeroed_by_guest_cpu_state() {
            super::msr::write(msr, 0);
        }
        if Cr4::read().contains(Cr4Flags::OSXSAVE) {
            let all = resettable_components();
            super::xcr::xsetbv0(all);
            core::arch::asm!(
                "xrstor64 [{area}]",
                area = in(reg) INITIAL_STATE.0.as_ptr(),
                in("eax") all as u32,
                in("edx") (all >> 32) as u32,
                options(nostack, readonly),
            );
            super::xcr::xsetbv0(XCR0_RESET);
        } else {
            core::arch::asm!(
                "fxrstor64 [{area}]",
                area = in(reg) INITIAL_STATE.0.as_ptr(),
                options(nostack, readonly),
            );
        }
    }
}
