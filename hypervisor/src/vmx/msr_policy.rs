//! Which MSR accesses a guest makes without a VM exit, declared once as data, and the MSR bitmap
//! built from it (SDM Vol. 3C 25.6.9: an access whose bitmap bit is clear goes to the hardware).
//!
//! Everything not declared here exits, and the exit handlers emulate it (`vmm::exits`). Two kinds
//! of passthrough exist:
//! - [`ALWAYS`]: state VMX does not switch and the host never uses, so the guest owns it while it
//!   runs (`arch::guest_cpu_state`): the SYSCALL/SWAPGS/RDTSCP MSRs, and the x2APIC TPR, which
//!   is the same register the guest's CR8 reaches;
//! - [`ELI_EOI`]: ELI's EOI write (eli.md; Gordon et al. 2012). With "virtualize x2APIC mode"
//!   off, an x2APIC MSR access the bitmap does not intercept goes straight to the physical local
//!   APIC (SDM Vol. 3C 25.6.9, 29.1), so the guest completes its own device interrupt in the
//!   physical ISR. `vmm::interrupts` passes it only while the interrupt in service is the guest's
//!   own, never while an injected (virtual) or a host interrupt is, by flipping the one bit
//!   [`eoi_write_bit`] names.
//! - [`ELI_TMR`]: in ELI mode, reads of the trigger-mode register. The guest's level-triggered
//!   device interrupts are accepted by the physical LAPIC, so only its TMR says they were level;
//!   Linux reads it on every level interrupt's EOI (`ioapic_ack_level`) and, finding the bit clear,
//!   would also EOI the IOAPIC by hand: an exit per interrupt.
//!
//! - [`APICV_VIRTUALIZED`] and [`APICV_EOI`]: in APICv mode, "virtualize x2APIC mode",
//!   APIC-register virtualization and virtual-interrupt delivery send these accesses to the vCPU's
//!   virtual-APIC page instead of the local APIC (SDM Vol. 3C 29.5): reads of PPR, ISR, TMR and
//!   IRR, which the CPU keeps there, and the EOI write, which it completes there (29.1.2). The TPR
//!   of [`ALWAYS`] reaches the page's VTPR in that mode too. These pass only together with those
//!   controls (`vmm::controls::plan` sets them for the same mode): without them the same bits would
//!   reach the physical LAPIC.
//!
//! The guest must never send IPIs/INIT/SIPI (ICR, self IPI) or touch the host's timer or LVTs:
//! [`ALWAYS_EXIT`] lists those, and a const assertion keeps them out of the passthrough lists.

use super::msr_bitmap::{MsrAccess, MsrBitmap};
use crate::arch::msr::{self, x2apic};
use crate::config::InterruptMode;

/// Which accesses of an MSR reach the hardware.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accesses {
    ReadWrite,
    /// WRMSR only; RDMSR exits.
    Write,
    /// RDMSR only; WRMSR exits.
    Read,
}

impl Accesses {
    /// Whether `access` is one of these.
    pub const fn includes(self, access: MsrAccess) -> bool {
        match self {
            Accesses::ReadWrite => true,
            Accesses::Write => matches!(access, MsrAccess::Write),
            Accesses::Read => matches!(access, MsrAccess::Read),
        }
    }
}

/// What puts a passed-through MSR back before another guest runs, so that no guest sees another's
/// value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reset {
    /// `arch::guest_cpu_state::reset_for_next_guest` writes 0 (valid for each of them).
    GuestCpuState,
    /// `arch::host_irq::scrub_after_guest` sets the physical TPR to 0 when the guest ends.
    LapicScrub,
    /// Nothing to reset: the register holds no state (EOI is write-only, SDM Vol. 3A 11.8.5).
    Stateless,
    /// The access reaches the vCPU's own virtual-APIC page, never the LAPIC (APICv).
    VirtualApicPage,
}

/// One MSR the guest reaches without an exit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Passthrough {
    pub msr: u32,
    pub name: &'static str,
    pub accesses: Accesses,
    pub reset: Reset,
    /// Why the guest may reach it, with the SDM sections that say so.
    pub why: &'static str,
}

const fn guest_owned(msr: u32, name: &'static str, why: &'static str) -> Passthrough {
    Passthrough {
        msr,
        name,
        accesses: Accesses::ReadWrite,
        reset: Reset::GuestCpuState,
        why,
    }
}

/// Passed through in every interrupt mode, for reads and writes.
pub const ALWAYS: [Passthrough; 7] = [
    guest_owned(
        msr::STAR,
        "IA32_STAR",
        "SYSCALL/SYSRET selectors (SDM Vol. 2B SYSCALL; Vol. 4 Table 2-2): not switched by VMX \
         (SDM Vol. 3C 25.5, 27.3), never used by the host (it executes no SYSCALL)",
    ),
    guest_owned(
        msr::LSTAR,
        "IA32_LSTAR",
        "64-bit SYSCALL target (SDM Vol. 2B SYSCALL): not switched by VMX, unused by the host; a \
         non-canonical write faults in the guest with #GP, the CPU's own check",
    ),
    guest_owned(
        msr::CSTAR,
        "IA32_CSTAR",
        "compatibility-mode SYSCALL target (SDM Vol. 4 Table 2-2): not switched by VMX, unused by \
         the host",
    ),
    guest_owned(
        msr::FMASK,
        "IA32_FMASK",
        "SYSCALL's RFLAGS mask (SDM Vol. 2B SYSCALL): not switched by VMX, unused by the host",
    ),
    guest_owned(
        msr::KERNEL_GS_BASE,
        "IA32_KERNEL_GS_BASE",
        "what SWAPGS exchanges with GS.base (SDM Vol. 2B SWAPGS): not switched by VMX, unused by \
         the host (it executes no SWAPGS)",
    ),
    guest_owned(
        msr::TSC_AUX,
        "IA32_TSC_AUX",
        "what RDTSCP/RDPID return (SDM Vol. 2B RDTSCP): not switched by VMX, unused by the host",
    ),
    Passthrough {
        msr: x2apic::TPR,
        name: "IA32_X2APIC_TPR",
        accesses: Accesses::ReadWrite,
        reset: Reset::LapicScrub,
        why: "the register the guest's CR8 reaches (SDM Vol. 3A 11.8.6.1 ties CR8 to TPR[7:4]): \
              no host interrupt is armed while the guest runs, so it gates only the guest's own \
              interrupts",
    },
];

/// Passed through only in ELI mode, and only while no injected interrupt is in service.
pub const ELI_EOI: Passthrough = Passthrough {
    msr: x2apic::EOI,
    name: "IA32_X2APIC_EOI",
    accesses: Accesses::Write,
    reset: Reset::Stateless,
    why: "ELI: the guest completes its own device interrupt in the physical ISR (SDM Vol. 3A \
          11.8.5; Vol. 3C 25.6.9, 29.1 with virtualize-x2APIC-mode off); RDMSR of EOI faults \
          anyway (11.12.1.2), so only the write is passed",
};

const fn eli_tmr(word: u32) -> Passthrough {
    Passthrough {
        msr: x2apic::TMR0 + word,
        name: "IA32_X2APIC_TMR",
        accesses: Accesses::Read,
        reset: Reset::LapicScrub,
        why: "ELI: the trigger mode of the interrupts the physical LAPIC accepted for the guest \
              (SDM Vol. 3A 11.8.4); the host's own vectors are all edge-triggered, so it tells \
              the guest nothing of the host's; read-only (11.12.1.2), so only reads pass",
    }
}

/// Passed through in ELI mode, for reads: the eight TMR words.
pub const ELI_TMR: [Passthrough; 8] = [
    eli_tmr(0),
    eli_tmr(1),
    eli_tmr(2),
    eli_tmr(3),
    eli_tmr(4),
    eli_tmr(5),
    eli_tmr(6),
    eli_tmr(7),
];

/// MSRs whose reads and writes exit in every mode: the ICR and self IPI (IPIs, INIT, SIPI), the
/// timer (LVT timer, initial/current count, divide) and the LVTs, which belong to the host; and
/// the MSRs VMX switches or the host emulates (SDM Vol. 3C 25.7.1, 25.8.1).
pub const ALWAYS_EXIT: [u32; 17] = [
    x2apic::ICR,
    x2apic::SELF_IPI,
    x2apic::LVT_TIMER,
    x2apic::TIMER_INITIAL_COUNT,
    x2apic::TIMER_CURRENT_COUNT,
    x2apic::TIMER_DIVIDE,
    x2apic::LVT_LINT0,
    x2apic::LVT_LINT1,
    x2apic::LVT_ERROR,
    x2apic::SVR,
    msr::APIC_BASE,
    msr::TSC,
    msr::PAT,
    msr::MISC_ENABLE,
    msr::EFER,
    msr::FS_BASE,
    msr::GS_BASE,
];

const fn apicv_read(msr: u32, name: &'static str) -> Passthrough {
    Passthrough {
        msr,
        name,
        accesses: Accesses::Read,
        reset: Reset::VirtualApicPage,
        why: "APICv: read from the vCPU's virtual-APIC page, where the CPU keeps it (SDM Vol. 3C \
              29.5 with APIC-register virtualization; 29.1.1 for VPPR, VISR, VIRR); the TMR there \
              is what the host wrote with each request; read-only registers (Vol. 3A 11.12.1.2)",
    }
}

/// Passed through in APICv mode, for reads: PPR, then the eight words of ISR, TMR and IRR.
pub const APICV_VIRTUALIZED: [Passthrough; 25] = {
    let mut all = [apicv_read(x2apic::PPR, "IA32_X2APIC_PPR"); 25];
    let mut word = 0;
    while word < 8 {
        all[1 + word] = apicv_read(x2apic::ISR0 + word as u32, "IA32_X2APIC_ISR");
        all[9 + word] = apicv_read(x2apic::TMR0 + word as u32, "IA32_X2APIC_TMR");
        all[17 + word] = apicv_read(x2apic::IRR0 + word as u32, "IA32_X2APIC_IRR");
        word += 1;
    }
    all
};

/// Passed through in APICv mode, for writes: EOI virtualization (SDM Vol. 3C 29.1.2, 29.5).
pub const APICV_EOI: Passthrough = Passthrough {
    msr: x2apic::EOI,
    name: "IA32_X2APIC_EOI",
    accesses: Accesses::Write,
    reset: Reset::VirtualApicPage,
    why: "APICv: the CPU completes the EOI in the virtual-APIC page (SDM Vol. 3C 29.1.2) and \
          exits only for the vectors the EOI-exit bitmap names (the level-triggered ones, whose \
          EOI the host passes on)",
};

/// Whether the policy lets `access` to `msr_index` through for a guest in `mode`;
/// `eoi_passthrough` is the ELI state (on while the interrupt in service is the guest's own; off
/// while an injected or host interrupt is, and ignored in the other modes).
pub fn passes(
    msr_index: u32,
    access: MsrAccess,
    mode: InterruptMode,
    eoi_passthrough: bool,
) -> bool {
    passthroughs(mode, eoi_passthrough).any(|p| p.msr == msr_index && p.accesses.includes(access))
}

/// The passthroughs of a guest in `mode` (and, for ELI, its EOI-passthrough state).
pub fn passthroughs(
    mode: InterruptMode,
    eoi_passthrough: bool,
) -> impl Iterator<Item = Passthrough> {
    let (eli, apicv) = match mode {
        InterruptMode::Baseline => (false, false),
        InterruptMode::Eli => (true, false),
        InterruptMode::Apicv => (false, true),
    };
    let eli_eoi = (eli && eoi_passthrough).then_some(ELI_EOI);
    let eli_tmr: &[Passthrough] = if eli { &ELI_TMR } else { &[] };
    let apicv_reads: &[Passthrough] = if apicv { &APICV_VIRTUALIZED } else { &[] };
    let apicv_eoi = apicv.then_some(APICV_EOI);
    ALWAYS
        .into_iter()
        .chain(eli_eoi)
        .chain(eli_tmr.iter().copied())
        .chain(apicv_reads.iter().copied())
        .chain(apicv_eoi)
}

/// The MSR bitmap for a guest in `mode` and EOI-passthrough state: every declared access passes,
/// everything else exits. A guest starts with `eoi_passthrough` off in every interrupt mode
/// (`vmm::interrupts` turns it on for ELI).
pub fn bitmap(mode: InterruptMode, eoi_passthrough: bool) -> MsrBitmap {
    let mut bitmap = MsrBitmap::intercept_all();
    for p in passthroughs(mode, eoi_passthrough) {
        // Every entry lies inside the bitmap (const assertion below), so neither call fails.
        if p.accesses.includes(MsrAccess::Read) {
            let _ = bitmap.pass_read(p.msr);
        }
        if p.accesses.includes(MsrAccess::Write) {
            let _ = bitmap.pass_write(p.msr);
        }
    }
    bitmap
}

/// The byte offset and bit in the MSR bitmap of the ELI EOI write's intercept: set, the write
/// exits; clear, it reaches the local APIC.
pub const fn eoi_write_bit() -> (usize, u8) {
    match MsrBitmap::bit_location(ELI_EOI.msr, MsrAccess::Write) {
        Some(location) => location,
        None => panic!("the EOI MSR lies outside the MSR bitmap"),
    }
}

/// The passed-through MSRs `arch::guest_cpu_state::reset_for_next_guest` zeroes.
pub fn zeroed_by_guest_cpu_state() -> impl Iterator<Item = u32> {
    ALWAYS
        .into_iter()
        .filter(|p| matches!(p.reset, Reset::GuestCpuState))
        .map(|p| p.msr)
}

// Every passthrough lies inside the bitmap, none is listed twice within its mode, and none must
// exit.
const _: () = {
    let eli = [
        ALWAYS[0], ALWAYS[1], ALWAYS[2], ALWAYS[3], ALWAYS[4], ALWAYS[5], ALWAYS[6], ELI_EOI,
        ELI_TMR[0], ELI_TMR[1], ELI_TMR[2], ELI_TMR[3], ELI_TMR[4], ELI_TMR[5], ELI_TMR[6],
        ELI_TMR[7],
    ];
    assert!(eli.len() == ALWAYS.len() + 1 + ELI_TMR.len());
    check_distinct_and_never_exiting(&eli);
    let mut apicv = [APICV_EOI; ALWAYS.len() + 1 + APICV_VIRTUALIZED.len()];
    let mut i = 0;
    while i < ALWAYS.len() {
        apicv[i] = ALWAYS[i];
        i += 1;
    }
    while i < ALWAYS.len() + APICV_VIRTUALIZED.len() {
        apicv[i] = APICV_VIRTUALIZED[i - ALWAYS.len()];
        i += 1;
    }
    check_distinct_and_never_exiting(&apicv);
    let _ = eoi_write_bit();
};

const fn check_distinct_and_never_exiting(all: &[Passthrough]) {
    let mut i = 0;
    while i < all.len() {
        assert!(MsrBitmap::bit_location(all[i].msr, MsrAccess::Write).is_some());
        let mut j = i + 1;
        while j < all.len() {
            assert!(all[i].msr != all[j].msr);
            j += 1;
        }
        let mut k = 0;
        while k < ALWAYS_EXIT.len() {
            assert!(all[i].msr != ALWAYS_EXIT[k]);
            k += 1;
        }
        i += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;

    fn every_passthrough() -> Vec<Passthrough> {
        ALWAYS
            .iter()
            .copied()
            .chain([ELI_EOI])
            .chain(ELI_TMR)
            .chain(APICV_VIRTUALIZED)
            .chain([APICV_EOI])
            .collect()
    }

    const STATES: [(InterruptMode, bool); 5] = [
        (InterruptMode::Baseline, false),
        (InterruptMode::Eli, false),
        (InterruptMode::Eli, true),
        (InterruptMode::Apicv, false),
        (InterruptMode::Apicv, true),
    ];

    /// A sample of every range: low MSRs, the 0xC000_0000 range, the x2APIC range, and MSRs
    /// outside both bitmap ranges.
    fn samples() -> Vec<u32> {
        let mut s: Vec<u32> = (0..0x2000).step_by(7).collect();
        s.extend(msr::X2APIC_FIRST..=msr::X2APIC_LAST);
        s.extend(0xC000_0000..0xC000_0200);
        s.extend((0xC000_0200..0xC000_2000).step_by(13));
        s.extend([
            0x2000,
            0x4000_0000,
            0x4000_0001,
            0xBFFF_FFFF,
            0xC000_2000,
            0xFFFF_FFFF,
        ]);
        s.extend(ALWAYS_EXIT);
        s.extend(every_passthrough().iter().map(|p| p.msr));
        s
    }

    #[test]
    fn bitmap_passes_exactly_the_declared_msrs() {
        for (mode, eoi_passthrough) in STATES {
            let b = bitmap(mode, eoi_passthrough);
            for m in samples() {
                for access in [MsrAccess::Read, MsrAccess::Write] {
                    assert_eq!(
                        b.exits(m, access),
                        !passes(m, access, mode, eoi_passthrough),
                        "MSR {m:#x} {access:?}, {mode:?}, EOI passthrough {eoi_passthrough}"
                    );
                }
            }
            // The same, counted over the whole page: one bit per declared access.
            let cleared: u32 = b.as_bytes().iter().map(|x| x.count_zeros()).sum();
            let mode_bits = match mode {
                InterruptMode::Baseline => 0,
                InterruptMode::Eli => 8 + u32::from(eoi_passthrough),
                InterruptMode::Apicv => 25 + 1,
            };
            assert_eq!(cleared, 2 * 7 + mode_bits, "{mode:?}");
        }
        // Only ELI's EOI follows the flag.
        for mode in [InterruptMode::Baseline, InterruptMode::Apicv] {
            assert_eq!(
                bitmap(mode, true).as_bytes(),
                bitmap(mode, false).as_bytes()
            );
        }
    }

    #[test]
    fn the_declared_msrs_by_number() {
        let b = bitmap(InterruptMode::Baseline, false);
        for m in [
            0xC000_0081,
            0xC000_0082,
            0xC000_0083,
            0xC000_0084,
            0xC000_0102,
            0xC000_0103,
            0x808,
        ] {
            assert!(!b.exits(m, MsrAccess::Read), "{m:#x}");
            assert!(!b.exits(m, MsrAccess::Write), "{m:#x}");
        }
        for m in [
            0x10,
            0x1B,
            0x277,
            0x80B,
            0x830,
            0x83F,
            0xC000_0080,
            0xC000_0100,
            0xC000_0101,
            0x6E0,
            0x4000_0000,
        ] {
            assert!(b.exits(m, MsrAccess::Read), "{m:#x}");
            assert!(b.exits(m, MsrAccess::Write), "{m:#x}");
        }
        assert!(b.exits(0x818, MsrAccess::Read), "baseline: the virtual TMR");
        let eli = bitmap(InterruptMode::Eli, true);
        assert!(!eli.exits(0x80B, MsrAccess::Write));
        assert!(eli.exits(0x80B, MsrAccess::Read));
        assert!(eli.exits(0x830, MsrAccess::Write));
        for m in 0x818..=0x81F {
            assert!(!eli.exits(m, MsrAccess::Read), "{m:#x}");
            assert!(eli.exits(m, MsrAccess::Write), "{m:#x}");
        }
        assert!(eli.exits(0x817, MsrAccess::Read) && eli.exits(0x820, MsrAccess::Read));
        // APICv: the registers the CPU keeps in the virtual-APIC page are read there; of the
        // writes only TPR and EOI are virtualized; ICR, self IPI, timer and LVTs exit as always.
        let apicv = bitmap(InterruptMode::Apicv, false);
        for m in [0x80A].into_iter().chain(0x810..=0x827) {
            assert!(!apicv.exits(m, MsrAccess::Read), "{m:#x}");
            assert!(apicv.exits(m, MsrAccess::Write), "{m:#x}");
        }
        assert!(!apicv.exits(0x80B, MsrAccess::Write));
        for m in [
            0x802, 0x803, 0x80D, 0x80F, 0x828, 0x830, 0x832, 0x837, 0x838, 0x839, 0x83F,
        ] {
            assert!(apicv.exits(m, MsrAccess::Read), "{m:#x}");
            assert!(apicv.exits(m, MsrAccess::Write), "{m:#x}");
        }
    }

    #[test]
    fn eoi_toggle_is_the_eoi_write_bit() {
        assert_eq!(
            Some(eoi_write_bit()),
            MsrBitmap::bit_location(0x80B, MsrAccess::Write)
        );
        // eli.md: write-low bitmap at 0x800, 0x80B / 8 = 0x101, 0x80B % 8 = 3.
        assert_eq!(eoi_write_bit(), (0x901, 3));
        // Flipping that bit is the whole difference between the two states.
        let (byte, bit) = eoi_write_bit();
        let mut off = *bitmap(InterruptMode::Eli, false).as_bytes();
        assert_eq!(off[byte] & (1 << bit), 1 << bit);
        off[byte] &= !(1 << bit);
        assert_eq!(&off, bitmap(InterruptMode::Eli, true).as_bytes());
    }

    #[test]
    fn no_msr_is_listed_twice() {
        for (mode, eoi_passthrough) in STATES {
            let all: Vec<u32> = passthroughs(mode, eoi_passthrough).map(|p| p.msr).collect();
            let mut msrs = all.clone();
            msrs.sort_unstable();
            msrs.dedup();
            assert_eq!(msrs.len(), all.len(), "{mode:?}");
            assert!(msrs.iter().all(|m| !ALWAYS_EXIT.contains(m)));
        }
        let mut exits = ALWAYS_EXIT.to_vec();
        exits.sort_unstable();
        exits.dedup();
        assert_eq!(exits.len(), ALWAYS_EXIT.len());
    }

    #[test]
    fn guest_cpu_state_zeroes_the_syscall_swapgs_and_tsc_aux_msrs() {
        let zeroed: Vec<u32> = zeroed_by_guest_cpu_state().collect();
        assert_eq!(
            zeroed,
            [
                0xC000_0081,
                0xC000_0082,
                0xC000_0083,
                0xC000_0084,
                0xC000_0102,
                0xC000_0103
            ]
        );
        // Every passthrough with state is reset by someone.
        for p in every_passthrough() {
            assert!(
                p.reset != Reset::Stateless || p.accesses == Accesses::Write,
                "{}",
                p.name
            );
            assert!(!p.why.is_empty());
        }
    }
}
