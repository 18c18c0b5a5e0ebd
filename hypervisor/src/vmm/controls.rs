//! The VM-execution, VM-exit and VM-entry controls a guest runs with, computed from the TRUE capability
//! MSRs (SDM Vol. 3D A.3-A.5): required features must be settable or the guest is refused with their
//! names; optional ones are used where offered; default-1 bits the CPU insists on are kept.

use crate::caps::vmx::{
    EntryControls, ExitControls, PinBasedControls, PrimaryControls, SecondaryControls, VmxCaps,
};
use crate::config::InterruptMode;
use alloc::format;
use alloc::string::String;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Controls {
    pub pin: PinBasedControls,
    pub primary: PrimaryControls,
    pub secondary: SecondaryControls,
    pub exit: ExitControls,
    pub entry: EntryControls,
}

/// A required VMX feature the CPU does not offer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MissingFeature(pub String);

impl core::fmt::Display for MissingFeature {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "this CPU's VMX lacks a required feature: {}", self.0)
    }
}

/// Plans the controls for a guest in `mode`.
pub fn plan(caps: &VmxCaps, mode: InterruptMode) -> Result<Controls, MissingFeature> {
    if let Err(reason) = caps.support {
        return Err(MissingFeature(format!("VMX itself ({})", reason.as_str())));
    }
    // Baseline: every external interrupt exits and is acknowledged on exit, so the exit carries its
    // vector (SDM 25.2 "acknowledge interrupt on exit"). ELI: interrupts go straight through the guest's
    // own IDT. In both, the VMX-preemption timer is how the host gets the CPU back on time, since no
    // host interrupt is armed while a guest runs (host_clock); NMIs always exit.
    //
    // APICv exits on interrupts as baseline does (virtual-interrupt delivery requires external-
    // interrupt exiting: SDM Vol. 3C 27.2.1.1), and delivers them through the virtual APIC: the TPR
    // shadow holds the virtual-APIC page, "virtualize x2APIC mode" points the x2APIC MSRs at it,
    // APIC-register virtualization serves their reads from it, and virtual-interrupt delivery
    // delivers from its IRR and completes EOIs in it (29.1-29.5). All four are required: without
    // one, the mode is not what it claims, and the guest is refused naming it.
    let (pin_required, exit_interrupt) = match mode {
        InterruptMode::Baseline | InterruptMode::Apicv => (
            PinBasedControls::EXTERNAL_INTERRUPT_EXITING,
            ExitControls::ACKNOWLEDGE_INTERRUPT_ON_EXIT,
        ),
        InterruptMode::Eli => (PinBasedControls::empty(), ExitControls::empty()),
    };
    let (primary_apicv, secondary_apicv) = match mode {
        InterruptMode::Apicv => (
            PrimaryControls::USE_TPR_SHADOW,
            SecondaryControls::VIRTUALIZE_X2APIC_MODE
                | SecondaryControls::APIC_REGISTER_VIRTUALIZATION
                | SecondaryControls::VIRTUAL_INTERRUPT_DELIVERY,
        ),
        InterruptMode::Baseline | InterruptMode::Eli => {
            (PrimaryControls::empty(), SecondaryControls::empty())
        }
    };
    let pin = caps
        .pin_based
        .compute(
            pin_required
                | PinBasedControls::NMI_EXITING
                | PinBasedControls::ACTIVATE_VMX_PREEMPTION_TIMER,
            PinBasedControls::empty(),
        )
        .map_err(|m| missing("pin-based", m))?;
    let primary = caps
        .primary
        .compute(
            PrimaryControls::HLT_EXITING
                | PrimaryControls::USE_IO_BITMAPS
                | PrimaryControls::USE_MSR_BITMAPS
                | PrimaryControls::ACTIVATE_SECONDARY_CONTROLS
                | primary_apicv,
            PrimaryControls::empty(),
        )
        .map_err(|m| missing("primary processor-based", m))?;
    let secondary = caps
        .secondary
        .compute(
            SecondaryControls::ENABLE_EPT | secondary_apicv,
            // Without these the guest's RDTSCP/INVPCID would #UD although CPUID advertises them.
            SecondaryControls::ENABLE_VPID
                | SecondaryControls::ENABLE_RDTSCP
                | SecondaryControls::ENABLE_INVPCID,
        )
        .map_err(|m| missing("secondary processor-based", m))?;
    let exit = caps
        .exit
        .compute(
            ExitControls::HOST_ADDRESS_SPACE_SIZE
                | ExitControls::SAVE_IA32_EFER
                | ExitControls::LOAD_IA32_EFER
                | exit_interrupt,
            // Spares a VMWRITE per entry: the timer keeps aiming at the host's deadline (host_clock).
            ExitControls::SAVE_VMX_PREEMPTION_TIMER_VALUE,
        )
        .map_err(|m| missing("VM-exit", m))?;
    let entry = caps
        .entry
        .compute(
            EntryControls::IA32E_MODE_GUEST | EntryControls::LOAD_IA32_EFER,
            EntryControls::empty(),
        )
        .map_err(|m| missing("VM-entry", m))?;
    Ok(Controls {
        pin,
        primary,
        secondary,
        exit,
        entry,
    })
}

fn missing(kind: &str, bits: impl core::fmt::Debug) -> MissingFeature {
    MissingFeature(format!("{kind} controls {bits:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::caps::vmx::VmxMsrs;

    /// Bochs `tigerlake` allowed-1 halves (shared/emulators.md) with the SDM's default-1 bits as allowed-0.
    fn bochs_caps() -> VmxCaps {
        let msrs = VmxMsrs {
            basic: 0x01D8_1000_0000_0004,
            pinbased_true: (0x7F << 32) | 0x16,
            procbased_true: (0xFFF9_FFFE << 32) | 0x0401_E172,
            exit_true: (0x03FF_FFFF << 32) | 0x0003_6DFB,
            entry_true: (0x0000_F3FF << 32) | 0x0000_11FB,
            procbased2: 0x0297_7FFF << 32,
            ept_vpid_cap: 0x0000_0F01_06B3_4141,
            misc: 0x6004_01E0,
            cr0_fixed0: 0x8000_0021,
            cr0_fixed1: 0xFFFF_FFFF,
            cr4_fixed0: 0x2000,
            cr4_fixed1: 0x003F_FFFF,
            vmfunc: 1,
            feature_control: 5,
        };
        VmxCaps::decode(Some(&msrs))
    }

    #[test]
    fn baseline_exits_on_interrupts_and_eli_does_not() {
        let caps = bochs_caps();
        let baseline = plan(&caps, InterruptMode::Baseline).unwrap();
        assert!(baseline
            .pin
            .contains(PinBasedControls::EXTERNAL_INTERRUPT_EXITING));
        assert!(baseline
            .exit
            .contains(ExitControls::ACKNOWLEDGE_INTERRUPT_ON_EXIT));
        let eli = plan(&caps, InterruptMode::Eli).unwrap();
        assert!(!eli
            .pin
            .contains(PinBasedControls::EXTERNAL_INTERRUPT_EXITING));
        assert!(eli
            .pin
            .contains(PinBasedControls::ACTIVATE_VMX_PREEMPTION_TIMER));
        for c in [baseline, eli] {
            assert!(c.secondary.contains(SecondaryControls::ENABLE_EPT));
            // The guest's LIDT/SIDT/LGDT/SGDT run as on bare metal: its IDT is its own.
            assert!(!c
                .secondary
                .contains(SecondaryControls::DESCRIPTOR_TABLE_EXITING));
            assert!(c.pin.contains(
                PinBasedControls::ACTIVATE_VMX_PREEMPTION_TIMER | PinBasedControls::NMI_EXITING
            ));
            assert!(
                c.secondary.contains(SecondaryControls::ENABLE_VPID),
                "optional but offered by Bochs"
            );
            assert!(c.entry.contains(EntryControls::IA32E_MODE_GUEST));
            // Default-1 bits (allowed-0 = 1) stay set.
            assert!(caps.primary.must_be_one.difference(c.primary).is_empty());
        }
    }

    #[test]
    fn apicv_exits_on_interrupts_and_delivers_through_the_virtual_apic() {
        let caps = bochs_caps();
        let apicv = plan(&caps, InterruptMode::Apicv).unwrap();
        assert!(apicv
            .pin
            .contains(PinBasedControls::EXTERNAL_INTERRUPT_EXITING));
        assert!(apicv
            .exit
            .contains(ExitControls::ACKNOWLEDGE_INTERRUPT_ON_EXIT));
        assert!(apicv.primary.contains(PrimaryControls::USE_TPR_SHADOW));
        assert!(apicv.secondary.contains(
            SecondaryControls::VIRTUALIZE_X2APIC_MODE
                | SecondaryControls::APIC_REGISTER_VIRTUALIZATION
                | SecondaryControls::VIRTUAL_INTERRUPT_DELIVERY
        ));
        // x2APIC virtualization excludes APIC-access virtualization (SDM Vol. 3C 27.2.1.1), and
        // CR8 must reach the TPR shadow, not exit.
        assert!(!apicv
            .secondary
            .contains(SecondaryControls::VIRTUALIZE_APIC_ACCESSES));
        assert!(!apicv
            .primary
            .intersects(PrimaryControls::CR8_LOAD_EXITING | PrimaryControls::CR8_STORE_EXITING));
        // The other modes leave the virtual APIC off.
        for mode in [InterruptMode::Baseline, InterruptMode::Eli] {
            let c = plan(&caps, mode).unwrap();
            assert!(!c.primary.contains(PrimaryControls::USE_TPR_SHADOW));
            assert!(!c
                .secondary
                .contains(SecondaryControls::VIRTUAL_INTERRUPT_DELIVERY));
        }
    }

    #[test]
    fn apicv_on_a_cpu_without_virtual_interrupt_delivery_is_refused_naming_it() {
        let mut caps = bochs_caps();
        caps.secondary
            .may_be_one
            .remove(SecondaryControls::VIRTUAL_INTERRUPT_DELIVERY);
        let error = plan(&caps, InterruptMode::Apicv).unwrap_err();
        assert!(error.0.contains("VIRTUAL_INTERRUPT_DELIVERY"), "{error}");
        assert!(plan(&caps, InterruptMode::Baseline).is_ok());
    }

    #[test]
    fn a_cpu_without_ept_is_refused_naming_it() {
        let mut caps = bochs_caps();
        caps.secondary
            .may_be_one
            .remove(SecondaryControls::ENABLE_EPT);
        let error = plan(&caps, InterruptMode::Baseline).unwrap_err();
        assert!(error.0.contains("ENABLE_EPT"), "{error}");
    }

    #[test]
    fn both_modes_need_the_preemption_timer() {
        let mut caps = bochs_caps();
        caps.pin_based
            .may_be_one
            .remove(PinBasedControls::ACTIVATE_VMX_PREEMPTION_TIMER);
        for mode in [
            InterruptMode::Baseline,
            InterruptMode::Eli,
            InterruptMode::Apicv,
        ] {
            let error = plan(&caps, mode).unwrap_err();
            assert!(error.0.contains("PREEMPTION_TIMER"), "{error}");
        }
    }
}
