//! VMX control fields as typed bit sets, named after the Intel SDM Vol. 3C, section 25.6-25.8
//! (24.6-24.8 in SDMs before 2023): Tables 25-5 (pin-based), 25-6 (primary processor-based),
//! 25-7 (secondary processor-based), 25-13 (VM-exit) and 25-15 (VM-entry).
//!
//! The same types are written into the VMCS. Bits the SDM reserves are not named; values read
//! from capability MSRs keep them (`from_bits_retain`), because reserved default-1 bits still
//! have to be written as 1 (SDM Appendix A.2-A.5).

use bitflags::bitflags;

bitflags! {
    /// Pin-based VM-execution controls (SDM Table 25-5). Bits 1, 2 and 4 are reserved default-1.
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
    pub struct PinBasedControls: u32 {
        const EXTERNAL_INTERRUPT_EXITING = 1 << 0;
        const NMI_EXITING = 1 << 3;
        const VIRTUAL_NMIS = 1 << 5;
        const ACTIVATE_VMX_PREEMPTION_TIMER = 1 << 6;
        const PROCESS_POSTED_INTERRUPTS = 1 << 7;
    }
}

bitflags! {
    /// Primary processor-based VM-execution controls (SDM Table 25-6). Bits 1, 4-6, 8, 13-16 and 26
    /// are default-1 (15 and 16, CR3-load/store exiting, may be cleared with the TRUE MSRs).
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
    pub struct PrimaryControls: u32 {
        const INTERRUPT_WINDOW_EXITING = 1 << 2;
        const USE_TSC_OFFSETTING = 1 << 3;
        const HLT_EXITING = 1 << 7;
        const INVLPG_EXITING = 1 << 9;
        const MWAIT_EXITING = 1 << 10;
        const RDPMC_EXITING = 1 << 11;
        const RDTSC_EXITING = 1 << 12;
        const CR3_LOAD_EXITING = 1 << 15;
        const CR3_STORE_EXITING = 1 << 16;
        const ACTIVATE_TERTIARY_CONTROLS = 1 << 17;
        const CR8_LOAD_EXITING = 1 << 19;
        const CR8_STORE_EXITING = 1 << 20;
        const USE_TPR_SHADOW = 1 << 21;
        const NMI_WINDOW_EXITING = 1 << 22;
        const MOV_DR_EXITING = 1 << 23;
        const UNCONDITIONAL_IO_EXITING = 1 << 24;
        const USE_IO_BITMAPS = 1 << 25;
        const MONITOR_TRAP_FLAG = 1 << 27;
        const USE_MSR_BITMAPS = 1 << 28;
        const MONITOR_EXITING = 1 << 29;
        const PAUSE_EXITING = 1 << 30;
        const ACTIVATE_SECONDARY_CONTROLS = 1 << 31;
    }
}

bitflags! {
    /// Secondary processor-based VM-execution controls (SDM Table 25-7). No default-1 bits.
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
    pub struct SecondaryControls: u32 {
        const VIRTUALIZE_APIC_ACCESSES = 1 << 0;
        const ENABLE_EPT = 1 << 1;
        const DESCRIPTOR_TABLE_EXITING = 1 << 2;
        const ENABLE_RDTSCP = 1 << 3;
        const VIRTUALIZE_X2APIC_MODE = 1 << 4;
        const ENABLE_VPID = 1 << 5;
        const WBINVD_EXITING = 1 << 6;
        const UNRESTRICTED_GUEST = 1 << 7;
        const APIC_REGISTER_VIRTUALIZATION = 1 << 8;
        const VIRTUAL_INTERRUPT_DELIVERY = 1 << 9;
        const PAUSE_LOOP_EXITING = 1 << 10;
        const RDRAND_EXITING = 1 << 11;
        const ENABLE_INVPCID = 1 << 12;
        const ENABLE_VM_FUNCTIONS = 1 << 13;
        const VMCS_SHADOWING = 1 << 14;
        const ENABLE_ENCLS_EXITING = 1 << 15;
        const RDSEED_EXITING = 1 << 16;
        const ENABLE_PML = 1 << 17;
        const EPT_VIOLATION_VE = 1 << 18;
        const CONCEAL_VMX_FROM_PT = 1 << 19;
        const ENABLE_XSAVES_XRSTORS = 1 << 20;
        const MODE_BASED_EXECUTE_CONTROL_FOR_EPT = 1 << 22;
        const SUB_PAGE_WRITE_PERMISSIONS_FOR_EPT = 1 << 23;
        const INTEL_PT_USES_GUEST_PHYSICAL_ADDRESSES = 1 << 24;
        const USE_TSC_SCALING = 1 << 25;
        const ENABLE_USER_WAIT_AND_PAUSE = 1 << 26;
        const ENABLE_PCONFIG = 1 << 27;
        const ENABLE_ENCLV_EXITING = 1 << 28;
        const VMM_BUS_LOCK_DETECTION = 1 << 30;
        const INSTRUCTION_TIMEOUT = 1 << 31;
    }
}

bitflags! {
    /// Primary VM-exit controls (SDM Table 25-13). Bits 0-8, 10, 11, 13, 14, 16 and 17 are
    /// default-1 (bit 2, save debug controls, may be cleared with the TRUE MSRs).
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
    pub struct ExitControls: u32 {
        const SAVE_DEBUG_CONTROLS = 1 << 2;
        const HOST_ADDRESS_SPACE_SIZE = 1 << 9;
        const LOAD_IA32_PERF_GLOBAL_CTRL = 1 << 12;
        const ACKNOWLEDGE_INTERRUPT_ON_EXIT = 1 << 15;
        const SAVE_IA32_PAT = 1 << 18;
        const LOAD_IA32_PAT = 1 << 19;
        const SAVE_IA32_EFER = 1 << 20;
        const LOAD_IA32_EFER = 1 << 21;
        const SAVE_VMX_PREEMPTION_TIMER_VALUE = 1 << 22;
        const CLEAR_IA32_BNDCFGS = 1 << 23;
        const CONCEAL_VMX_FROM_PT = 1 << 24;
        const CLEAR_IA32_RTIT_CTL = 1 << 25;
        const CLEAR_IA32_LBR_CTL = 1 << 26;
        const CLEAR_UINV = 1 << 27;
        const LOAD_CET_STATE = 1 << 28;
        const LOAD_PKRS = 1 << 29;
        const SAVE_IA32_PERF_GLOBAL_CTL = 1 << 30;
        const ACTIVATE_SECONDARY_CONTROLS = 1 << 31;
    }
}

bitflags! {
    /// VM-entry controls (SDM Table 25-15). Bits 0-8 and 12 are default-1 (bit 2, load debug
    /// controls, may be cleared with the TRUE MSRs).
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
    pub struct EntryControls: u32 {
        const LOAD_DEBUG_CONTROLS = 1 << 2;
        const IA32E_MODE_GUEST = 1 << 9;
        const ENTRY_TO_SMM = 1 << 10;
        const DEACTIVATE_DUAL_MONITOR_TREATMENT = 1 << 11;
        const LOAD_IA32_PERF_GLOBAL_CTRL = 1 << 13;
        const LOAD_IA32_PAT = 1 << 14;
        const LOAD_IA32_EFER = 1 << 15;
        const LOAD_IA32_BNDCFGS = 1 << 16;
        const CONCEAL_VMX_FROM_PT = 1 << 17;
        const LOAD_IA32_RTIT_CTL = 1 << 18;
        const LOAD_UINV = 1 << 19;
        const LOAD_CET_STATE = 1 << 20;
        const LOAD_GUEST_IA32_LBR_CTL = 1 << 21;
        const LOAD_PKRS = 1 << 22;
    }
}

bitflags! {
    /// IA32_VMX_EPT_VPID_CAP (MSR 0x48C), SDM Appendix A.10.
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
    pub struct EptVpidCap: u64 {
        const EXECUTE_ONLY = 1 << 0;
        const PAGE_WALK_LENGTH_4 = 1 << 6;
        const PAGE_WALK_LENGTH_5 = 1 << 7;
        const MEMORY_TYPE_UC = 1 << 8;
        const MEMORY_TYPE_WB = 1 << 14;
        const PDE_2MB_PAGES = 1 << 16;
        const PDPTE_1GB_PAGES = 1 << 17;
        const INVEPT = 1 << 20;
        const ACCESSED_DIRTY_FLAGS = 1 << 21;
        const ADVANCED_EPT_VIOLATION_INFO = 1 << 22;
        const SUPERVISOR_SHADOW_STACK = 1 << 23;
        const INVEPT_SINGLE_CONTEXT = 1 << 25;
        const INVEPT_ALL_CONTEXT = 1 << 26;
        const INVVPID = 1 << 32;
        const INVVPID_INDIVIDUAL_ADDRESS = 1 << 40;
        const INVVPID_SINGLE_CONTEXT = 1 << 41;
        const INVVPID_ALL_CONTEXT = 1 << 42;
        const INVVPID_SINGLE_CONTEXT_RETAINING_GLOBALS = 1 << 43;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Spot checks of bit positions against the SDM tables, worked out by hand.
    #[test]
    fn sdm_bit_positions() {
        assert_eq!(PinBasedControls::ACTIVATE_VMX_PREEMPTION_TIMER.bits(), 0x40);
        assert_eq!(PrimaryControls::USE_MSR_BITMAPS.bits(), 0x1000_0000);
        assert_eq!(
            PrimaryControls::ACTIVATE_SECONDARY_CONTROLS.bits(),
            0x8000_0000
        );
        assert_eq!(SecondaryControls::UNRESTRICTED_GUEST.bits(), 0x80);
        assert_eq!(SecondaryControls::VIRTUAL_INTERRUPT_DELIVERY.bits(), 0x200);
        assert_eq!(ExitControls::ACKNOWLEDGE_INTERRUPT_ON_EXIT.bits(), 0x8000);
        assert_eq!(ExitControls::HOST_ADDRESS_SPACE_SIZE.bits(), 0x200);
        assert_eq!(EntryControls::IA32E_MODE_GUEST.bits(), 0x200);
        assert_eq!(EptVpidCap::INVVPID_ALL_CONTEXT.bits(), 1 << 42);
    }
}
