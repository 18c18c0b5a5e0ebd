//! Which x2APIC MSR accesses may reach the physical local APIC without a VM exit.
//!
//! With "virtualize x2APIC mode" off, a WRMSR/RDMSR of 0x800-0x8FF that the MSR bitmap does not
//! intercept goes straight to the physical LAPIC (SDM Vol. 3C 25.6.9, 29.1). ELI gives the guest
//! exactly one such access, the EOI write (eli.md; Gordon et al. 2012), and only while the
//! interrupt in service is the guest's. Everything else exits so the virtual x2APIC answers;
//! in particular the guest must never send IPIs/INIT/SIPI (ICR, self IPI) or touch the host's
//! timer, TPR or LVTs.

use super::x2apic::msr;

/// An access kind to an MSR.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
}

/// One MSR access the policy lets through to the hardware.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Passthrough {
    pub msr: u32,
    pub access: Access,
}

/// The accesses ELI passes through while EOI passthrough is on: the EOI write only (RDMSR of EOI
/// faults anyway, so it is not worth passing).
pub const ELI_PASSTHROUGH: [Passthrough; 1] = [Passthrough {
    msr: msr::EOI,
    access: Access::Write,
}];

/// MSRs whose reads and writes must exit in every mode: the ICR and self IPI (IPIs, INIT, SIPI)
/// and the timer (LVT timer, initial/current count, divide), which belong to the host.
pub const ALWAYS_EXIT: [u32; 6] = [
    msr::ICR,
    msr::SELF_IPI,
    msr::LVT_TIMER,
    msr::TIMER_INITIAL_COUNT,
    msr::TIMER_CURRENT_COUNT,
    msr::TIMER_DIVIDE,
];

/// The MSR range the policy covers (SDM Vol. 3A 11.12.1.2).
pub const X2APIC_MSRS: core::ops::RangeInclusive<u32> = msr::FIRST..=msr::LAST;

/// Whether `access` to x2APIC MSR `msr_index` must exit. `eoi_passthrough` is the ELI state:
/// on while the interrupt in service is the guest's, off in baseline mode and while an injected
/// or host interrupt is in service.
pub const fn exits(msr_index: u32, access: Access, eoi_passthrough: bool) -> bool {
    if !eoi_passthrough {
        return true;
    }
    let mut i = 0;
    while i < ELI_PASSTHROUGH.len() {
        let p = ELI_PASSTHROUGH[i];
        if p.msr == msr_index && p.access as u8 == access as u8 {
            return false;
        }
        i += 1;
    }
    true
}

// The passthrough list and the always-exit list never overlap.
const _: () = {
    let mut i = 0;
    while i < ALWAYS_EXIT.len() {
        assert!(exits(ALWAYS_EXIT[i], Access::Read, true));
        assert!(exits(ALWAYS_EXIT[i], Access::Write, true));
        i += 1;
    }
};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmx::msr_bitmap::{MsrAccess, MsrBitmap};

    fn fill(bitmap: &mut MsrBitmap, eoi_passthrough: bool) {
        for m in X2APIC_MSRS {
            if !exits(m, Access::Write, eoi_passthrough) {
                bitmap.pass_write(m).unwrap();
            }
            if !exits(m, Access::Read, eoi_passthrough) {
                bitmap.pass_read(m).unwrap();
            }
        }
    }

    #[test]
    fn eli_passes_only_the_eoi_write() {
        let passed: usize = X2APIC_MSRS
            .flat_map(|m| [(m, Access::Read), (m, Access::Write)])
            .filter(|&(m, a)| !exits(m, a, true))
            .count();
        assert_eq!(passed, 1);
        assert!(!exits(0x80B, Access::Write, true));
        assert!(exits(0x80B, Access::Read, true));
        assert!(exits(0x80B, Access::Write, false));
        // ICR, self IPI and the timer registers: 0x830, 0x83F, 0x832, 0x838, 0x839, 0x83E.
        assert_eq!(ALWAYS_EXIT, [0x830, 0x83F, 0x832, 0x838, 0x839, 0x83E]);
        for m in ALWAYS_EXIT {
            assert!(exits(m, Access::Write, true) && exits(m, Access::Read, true));
        }
    }

    #[test]
    fn bitmap_filled_from_the_policy_clears_byte_0x901_bit_3() {
        // eli.md: write-low bitmap at 0x800, 0x80B / 8 = 0x101, 0x80B % 8 = 3.
        let mut b = MsrBitmap::intercept_all();
        fill(&mut b, true);
        assert_eq!(b.as_bytes()[0x901], 0xF7);
        assert_eq!(b.as_bytes().iter().filter(|&&x| x != 0xFF).count(), 1);
        assert!(b.exits(0x830, MsrAccess::Write));
        let mut baseline = MsrBitmap::intercept_all();
        fill(&mut baseline, false);
        assert!(baseline.as_bytes().iter().all(|&x| x == 0xFF));
    }
}
