//! VMX capabilities decoded from the capability MSRs (SDM Vol. 3D, Appendix A).
//!
//! [`read_vmx_msrs`] reads the raw values on the running CPU; [`VmxCaps::decode`] interprets them,
//! so the interpretation is host-tested with the values measured on Bochs.

pub use super::vmx_controls::{
    EntryControls, EptVpidCap, ExitControls, PinBasedControls, PrimaryControls, SecondaryControls,
};
use super::yes_no;
use bitflags::Flags;
use core::fmt;

pub use crate::arch::msr::vmx as msr;

/// IA32_FEATURE_CONTROL bits (SDM Vol. 3C 24.7).
pub mod feature_control {
    pub const LOCK: u64 = 1 << 0;
    pub const VMX_INSIDE_SMX: u64 = 1 << 1;
    pub const VMX_OUTSIDE_SMX: u64 = 1 << 2;
}

/// IA32_VMX_BASIC[55]: the TRUE control MSRs 0x48D-0x490 exist (SDM A.1).
const BASIC_TRUE_CONTROLS: u64 = 1 << 55;
/// Memory type 6 (write-back) in IA32_VMX_BASIC[53:50] (SDM A.1, Table A-1).
pub const MEMORY_TYPE_WRITE_BACK: u8 = 6;

/// The raw capability MSRs of one CPU.
///
/// The `*_true` fields hold the TRUE MSR (0x48D-0x490) when IA32_VMX_BASIC[55] is set and the
/// legacy MSR (0x481-0x484) otherwise. MSRs that do not exist read as 0 here: `procbased2` unless
/// the primary controls allow bit 31; `ept_vpid_cap` unless the secondary controls allow EPT or
/// VPID; `vmfunc` unless they allow VM functions (SDM A.3.3, A.10, A.11).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VmxMsrs {
    pub basic: u64,
    pub pinbased_true: u64,
    pub procbased_true: u64,
    pub exit_true: u64,
    pub entry_true: u64,
    pub procbased2: u64,
    pub ept_vpid_cap: u64,
    pub misc: u64,
    pub cr0_fixed0: u64,
    pub cr0_fixed1: u64,
    pub cr4_fixed0: u64,
    pub cr4_fixed1: u64,
    pub vmfunc: u64,
    pub feature_control: u64,
}

impl VmxMsrs {
    /// Reads the MSRs through `rdmsr`, following the existence rules of SDM Appendix A so that
    /// an absent MSR is never read (that would raise #GP).
    pub fn read_with(rdmsr: impl Fn(u32) -> u64) -> Self {
        let basic = rdmsr(msr::IA32_VMX_BASIC);
        let has_true = basic & BASIC_TRUE_CONTROLS != 0;
        let pick = |true_msr: u32, legacy: u32| rdmsr(if has_true { true_msr } else { legacy });
        let procbased_true = pick(
            msr::IA32_VMX_TRUE_PROCBASED_CTLS,
            msr::IA32_VMX_PROCBASED_CTLS,
        );
        let primary = ControlCaps::<PrimaryControls>::from_msr(procbased_true);
        let procbased2 = if primary.can_set(PrimaryControls::ACTIVATE_SECONDARY_CONTROLS) {
            rdmsr(msr::IA32_VMX_PROCBASED_CTLS2)
        } else {
            0
        };
        let secondary = ControlCaps::<SecondaryControls>::from_msr(procbased2);
        let ept_vpid_cap = if secondary.can_set(SecondaryControls::ENABLE_EPT)
            || secondary.can_set(SecondaryControls::ENABLE_VPID)
        {
            rdmsr(msr::IA32_VMX_EPT_VPID_CAP)
        } else {
            0
        };
        let vmfunc = if secondary.can_set(SecondaryControls::ENABLE_VM_FUNCTIONS) {
            rdmsr(msr::IA32_VMX_VMFUNC)
        } else {
            0
        };
        Self {
            basic,
            pinbased_true: pick(
                msr::IA32_VMX_TRUE_PINBASED_CTLS,
                msr::IA32_VMX_PINBASED_CTLS,
            ),
            procbased_true,
            exit_true: pick(msr::IA32_VMX_TRUE_EXIT_CTLS, msr::IA32_VMX_EXIT_CTLS),
            entry_true: pick(msr::IA32_VMX_TRUE_ENTRY_CTLS, msr::IA32_VMX_ENTRY_CTLS),
            procbased2,
            ept_vpid_cap,
            misc: rdmsr(msr::IA32_VMX_MISC),
            cr0_fixed0: rdmsr(msr::IA32_VMX_CR0_FIXED0),
            cr0_fixed1: rdmsr(msr::IA32_VMX_CR0_FIXED1),
            cr4_fixed0: rdmsr(msr::IA32_VMX_CR4_FIXED0),
            cr4_fixed1: rdmsr(msr::IA32_VMX_CR4_FIXED1),
            vmfunc,
            feature_control: rdmsr(msr::IA32_FEATURE_CONTROL),
        }
    }
}

/// Reads the VMX capability MSRs of the running CPU; `None` when CPUID.1:ECX.VMX is clear (then
/// the MSRs do not exist).
///
/// # Safety
/// Must run at CPL 0 (RDMSR).
pub unsafe fn read_vmx_msrs() -> Option<VmxMsrs> {
    if !super::cpu::CpuInfo::read().vmx {
        return None;
    }
    Some(VmxMsrs::read_with(|index| {
        // SAFETY: CPL 0 is the caller's promise; `read_with` only asks for MSRs that exist.
        unsafe { crate::arch::msr::read(index) }
    }))
}

/// The allowed settings of one VMX control field (SDM A.3-A.5): the low half of the MSR gives
/// the allowed 0-settings (a set bit means the control must be 1), the high half the allowed
/// 1-settings (a clear bit means the control must be 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ControlCaps<F> {
    /// Bits whose 0-setting is not allowed.
    pub must_be_one: F,
    /// Bits whose 1-setting is allowed.
    pub may_be_one: F,
}

impl<F: Flags<Bits = u32> + Copy> ControlCaps<F> {
    pub fn from_msr(value: u64) -> Self {
        Self {
            must_be_one: F::from_bits_retain(value as u32),
            may_be_one: F::from_bits_retain((value >> 32) as u32),
        }
    }

    /// Whether every control in `controls` may be 1.
    pub fn can_set(&self, controls: F) -> bool {
        self.may_be_one.contains(controls)
    }

    /// Whether every control in `controls` may be 0.
    pub fn can_clear(&self, controls: F) -> bool {
        !self.must_be_one.intersects(controls)
    }

    /// The value to write: `required` plus whatever `optional` controls the CPU allows, plus the
    /// must-be-one bits (SDM A.2 algorithm 3: fixed bits from the capability MSR). `Err` names
    /// the required controls the CPU cannot set.
    pub fn compute(&self, required: F, optional: F) -> Result<F, F> {
        let missing = required.difference(self.may_be_one);
        if !missing.is_empty() {
            return Err(missing);
        }
        let wanted = required.union(optional.intersection(self.may_be_one));
        Ok(wanted.union(self.must_be_one))
    }
}

/// Why VMX cannot be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmxUnsupported {
    /// CPUID.1:ECX.VMX = 0.
    CpuidNoVmx,
    /// IA32_FEATURE_CONTROL is locked with "VMX outside SMX" clear: VMXON raises #GP (SDM 24.7);
    /// only a firmware setting can change it.
    FeatureControlLockedVmxOff,
}

impl VmxUnsupported {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::CpuidNoVmx => "cpuid-no-vmx",
            Self::FeatureControlLockedVmxOff => "feature-control-locked-vmx-off",
        }
    }
}

/// Decoded VMX capabilities.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VmxCaps {
    /// `Err` when VMX cannot be used, with the reason.
    pub support: Result<(), VmxUnsupported>,
    /// VMCS revision identifier, IA32_VMX_BASIC[30:0].
    pub revision_id: u32,
    /// Bytes to allocate for the VMXON region and each VMCS, IA32_VMX_BASIC[44:32].
    pub region_size: u16,
    /// Memory type for the VMCS and the structures it references, IA32_VMX_BASIC[53:50].
    pub memory_type: u8,
    /// IA32_VMX_BASIC[48]: VMXON/VMCS addresses are limited to 32 bits.
    pub address_limit_32bit: bool,
    /// IA32_VMX_BASIC[55]: the control capabilities come from the TRUE MSRs.
    pub true_controls: bool,
    pub pin_based: ControlCaps<PinBasedControls>,
    pub primary: ControlCaps<PrimaryControls>,
    pub secondary: ControlCaps<SecondaryControls>,
    pub exit: ControlCaps<ExitControls>,
    pub entry: ControlCaps<EntryControls>,
    pub ept_vpid: EptVpidCap,
    pub misc: u64,
    pub cr0_fixed0: u64,
    pub cr0_fixed1: u64,
    pub cr4_fixed0: u64,
    pub cr4_fixed1: u64,
    pub vmfunc: u64,
    /// IA32_FEATURE_CONTROL as read; unlocked means the hypervisor locks it with VMX enabled.
    pub feature_control: u64,
}

impl VmxCaps {
    /// Decodes the MSRs read by [`read_vmx_msrs`] (`None`: CPUID says no VMX).
    pub fn decode(msrs: Option<&VmxMsrs>) -> Self {
        let m = msrs.copied().unwrap_or_default();
        let fc = m.feature_control;
        let support = if msrs.is_none() {
            Err(VmxUnsupported::CpuidNoVmx)
        } else if fc & feature_control::LOCK != 0 && fc & feature_control::VMX_OUTSIDE_SMX == 0 {
            Err(VmxUnsupported::FeatureControlLockedVmxOff)
        } else {
            Ok(())
        };
        Self {
            support,
            revision_id: (m.basic & 0x7fff_ffff) as u32,
            region_size: ((m.basic >> 32) & 0x1fff) as u16,
            memory_type: ((m.basic >> 50) & 0xf) as u8,
            address_limit_32bit: m.basic & (1 << 48) != 0,
            true_controls: m.basic & BASIC_TRUE_CONTROLS != 0,
            pin_based: ControlCaps::from_msr(m.pinbased_true),
            primary: ControlCaps::from_msr(m.procbased_true),
            secondary: ControlCaps::from_msr(m.procbased2),
            exit: ControlCaps::from_msr(m.exit_true),
            entry: ControlCaps::from_msr(m.entry_true),
            ept_vpid: EptVpidCap::from_bits_retain(m.ept_vpid_cap),
            misc: m.misc,
            cr0_fixed0: m.cr0_fixed0,
            cr0_fixed1: m.cr0_fixed1,
            cr4_fixed0: m.cr4_fixed0,
            cr4_fixed1: m.cr4_fixed1,
            vmfunc: m.vmfunc,
            feature_control: fc,
        }
    }

    pub fn supported(&self) -> bool {
        self.support.is_ok()
    }

    /// A secondary control is usable only if the primary controls can activate the secondary ones.
    fn secondary_allows(&self, c: SecondaryControls) -> bool {
        self.primary
            .can_set(PrimaryControls::ACTIVATE_SECONDARY_CONTROLS)
            && self.secondary.can_set(c)
    }

    pub fn ept(&self) -> bool {
        self.secondary_allows(SecondaryControls::ENABLE_EPT)
    }
    pub fn ept_4level(&self) -> bool {
        self.ept() && self.ept_vpid.contains(EptVpidCap::PAGE_WALK_LENGTH_4)
    }
    pub fn ept_wb(&self) -> bool {
        self.ept() && self.ept_vpid.contains(EptVpidCap::MEMORY_TYPE_WB)
    }
    pub fn ept_2m(&self) -> bool {
        self.ept() && self.ept_vpid.contains(EptVpidCap::PDE_2MB_PAGES)
    }
    pub fn ept_1g(&self) -> bool {
        self.ept() && self.ept_vpid.contains(EptVpidCap::PDPTE_1GB_PAGES)
    }
    pub fn ept_ad(&self) -> bool {
        self.ept() && self.ept_vpid.contains(EptVpidCap::ACCESSED_DIRTY_FLAGS)
    }
    pub fn ept_execute_only(&self) -> bool {
        self.ept() && self.ept_vpid.contains(EptVpidCap::EXECUTE_ONLY)
    }
    pub fn invept_single_context(&self) -> bool {
        self.ept_vpid
            .contains(EptVpidCap::INVEPT | EptVpidCap::INVEPT_SINGLE_CONTEXT)
    }
    pub fn invept_all_context(&self) -> bool {
        self.ept_vpid
            .contains(EptVpidCap::INVEPT | EptVpidCap::INVEPT_ALL_CONTEXT)
    }
    pub fn vpid(&self) -> bool {
        self.secondary_allows(SecondaryControls::ENABLE_VPID)
    }
    pub fn invvpid_individual_address(&self) -> bool {
        self.ept_vpid
            .contains(EptVpidCap::INVVPID | EptVpidCap::INVVPID_INDIVIDUAL_ADDRESS)
    }
    pub fn invvpid_single_context(&self) -> bool {
        self.ept_vpid
            .contains(EptVpidCap::INVVPID | EptVpidCap::INVVPID_SINGLE_CONTEXT)
    }
    pub fn invvpid_all_context(&self) -> bool {
        self.ept_vpid
            .contains(EptVpidCap::INVVPID | EptVpidCap::INVVPID_ALL_CONTEXT)
    }
    pub fn invvpid_single_context_retaining_globals(&self) -> bool {
        self.ept_vpid
            .contains(EptVpidCap::INVVPID | EptVpidCap::INVVPID_SINGLE_CONTEXT_RETAINING_GLOBALS)
    }
    pub fn unrestricted_guest(&self) -> bool {
        self.secondary_allows(SecondaryControls::UNRESTRICTED_GUEST)
    }
    pub fn preemption_timer(&self) -> bool {
        self.pin_based
            .can_set(PinBasedControls::ACTIVATE_VMX_PREEMPTION_TIMER)
    }
    /// The preemption timer counts down by 1 each time TSC bit X changes, X = IA32_VMX_MISC[4:0]
    /// (SDM A.6): the timer runs at the TSC rate divided by `1 << preemption_timer_tsc_shift()`.
    pub fn preemption_timer_tsc_shift(&self) -> u8 {
        (self.misc & 0x1f) as u8
    }
    pub fn descriptor_table_exiting(&self) -> bool {
        self.secondary_allows(SecondaryControls::DESCRIPTOR_TABLE_EXITING)
    }
    pub fn msr_bitmaps(&self) -> bool {
        self.primary.can_set(PrimaryControls::USE_MSR_BITMAPS)
    }
    pub fn io_bitmaps(&self) -> bool {
        self.primary.can_set(PrimaryControls::USE_IO_BITMAPS)
    }
    pub fn monitor_trap_flag(&self) -> bool {
        self.primary.can_set(PrimaryControls::MONITOR_TRAP_FLAG)
    }
    pub fn posted_interrupts(&self) -> bool {
        self.pin_based
            .can_set(PinBasedControls::PROCESS_POSTED_INTERRUPTS)
    }
    /// "Virtualize APIC accesses".
    pub fn apic_access(&self) -> bool {
        self.secondary_allows(SecondaryControls::VIRTUALIZE_APIC_ACCESSES)
    }
    pub fn virtual_x2apic(&self) -> bool {
        self.secondary_allows(SecondaryControls::VIRTUALIZE_X2APIC_MODE)
    }
    pub fn apic_register_virt(&self) -> bool {
        self.secondary_allows(SecondaryControls::APIC_REGISTER_VIRTUALIZATION)
    }
    pub fn virtual_interrupt_delivery(&self) -> bool {
        self.secondary_allows(SecondaryControls::VIRTUAL_INTERRUPT_DELIVERY)
    }
    pub fn vmfunc(&self) -> bool {
        self.secondary_allows(SecondaryControls::ENABLE_VM_FUNCTIONS)
    }
    /// VM function 0, EPTP switching (IA32_VMX_VMFUNC bit 0, SDM A.11).
    pub fn eptp_switching(&self) -> bool {
        self.vmfunc() && self.vmfunc & 1 != 0
    }

    /// `value` with the bits IA32_VMX_CR0_FIXED0/1 force (SDM A.7): fixed-0 ones set, fixed-1 zeros clear.
    pub fn fix_cr0(&self, value: u64) -> u64 {
        (value | self.cr0_fixed0) & self.cr0_fixed1
    }
    /// `value` with the bits IA32_VMX_CR4_FIXED0/1 force (SDM A.8).
    pub fn fix_cr4(&self, value: u64) -> u64 {
        (value | self.cr4_fixed0) & self.cr4_fixed1
    }

    pub fn write_summary(&self, out: &mut dyn fmt::Write) -> fmt::Result {
        if let Err(reason) = self.support {
            return writeln!(out, "summary: vmx supported=no reason={}", reason.as_str());
        }
        write!(
            out,
            "summary: vmx supported=yes revision={}",
            self.revision_id
        )?;
        let flags: [(&str, bool); 15] = [
            ("ept", self.ept()),
            ("ept_2m", self.ept_2m()),
            ("ept_1g", self.ept_1g()),
            ("vpid", self.vpid()),
            ("unrestricted_guest", self.unrestricted_guest()),
            ("preemption_timer", self.preemption_timer()),
            ("descriptor_table_exiting", self.descriptor_table_exiting()),
            ("msr_bitmaps", self.msr_bitmaps()),
            ("io_bitmaps", self.io_bitmaps()),
            ("posted_interrupts", self.posted_interrupts()),
            ("apic_access", self.apic_access()),
            ("virtual_x2apic", self.virtual_x2apic()),
            ("apic_register_virt", self.apic_register_virt()),
            (
                "virtual_interrupt_delivery",
                self.virtual_interrupt_delivery(),
            ),
            ("monitor_trap_flag", self.monitor_trap_flag()),
        ];
        for (key, value) in flags {
            write!(out, " {key}={}", yes_no(value))?;
        }
        let extras: [(&str, bool); 8] = [
            ("true_controls", self.true_controls),
            ("ept_4level", self.ept_4level()),
            ("ept_wb", self.ept_wb()),
            ("ept_ad", self.ept_ad()),
            ("invept_single", self.invept_single_context()),
            ("invept_all", self.invept_all_context()),
            ("invvpid_all", self.invvpid_all_context()),
            ("vmfunc", self.vmfunc()),
        ];
        for (key, value) in extras {
            write!(out, " {key}={}", yes_no(value))?;
        }
        writeln!(
            out,
            " preemption_timer_shift={} region_size={:#x} feature_control={:#x}",
            self.preemption_timer_tsc_shift(),
            self.region_size,
            self.feature_control
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::String;

    /// Bochs 2.7 `tigerlake` (emulators.md). Measured there: BASIC, EPT/VPID cap, MISC,
    /// FEATURE_CONTROL, and the allowed-1 (high) halves of the pin-based (0x7F), primary
    /// (0xFFF9FFFE) and secondary (0x02977FFF) controls. Built by hand around them: the allowed-0
    /// (low) halves are the SDM's default-1 bits as the TRUE MSRs report them (pin 1,2,4 = 0x16;
    /// primary 1,4-6,8,13,14,26 = 0x04006172, CR3 exiting clearable; secondary none), and the
    /// exit/entry MSRs entirely (default-1 bits minus bit 2: 0x36DFB / 0x11FB; allowed-1 chosen).
    fn bochs_tigerlake() -> VmxMsrs {
        VmxMsrs {
            basic: 0x01d8_1000_0000_0004,
            pinbased_true: 0x0000_007f_0000_0016,
            procbased_true: 0xfff9_fffe_0400_6172,
            exit_true: 0x00ff_ffff_0003_6dfb,
            entry_true: 0x0000_f3ff_0000_11fb,
            procbased2: 0x0297_7fff_0000_0000,
            ept_vpid_cap: 0x0000_0f01_06b3_4141,
            misc: 0x6004_01e0,
            cr0_fixed0: 0x8000_0021,
            cr0_fixed1: 0xffff_ffff,
            cr4_fixed0: 0x2000,
            cr4_fixed1: 0x0037_27ff,
            vmfunc: 1,
            feature_control: 5,
        }
    }

    #[test]
    fn bochs_tigerlake_decodes() {
        let caps = VmxCaps::decode(Some(&bochs_tigerlake()));
        assert_eq!(caps.support, Ok(()));
        // BASIC 0x01D81000_00000004: [30:0]=4, [44:32]=0x1000, [53:50]=6, [55]=1.
        assert_eq!(caps.revision_id, 4);
        assert_eq!(caps.region_size, 4096);
        assert_eq!(caps.memory_type, MEMORY_TYPE_WRITE_BACK);
        assert!(caps.true_controls && !caps.address_limit_32bit);
        // EPT/VPID cap 0x00000F01_06B34141: bits 0,6,8,14,16,17,20,21,23,25,26,32,40-43.
        assert!(caps.ept() && caps.ept_4level() && caps.ept_wb() && caps.ept_2m() && caps.ept_1g());
        assert!(caps.ept_ad() && caps.ept_execute_only());
        assert!(caps.invept_single_context() && caps.invept_all_context());
        assert!(caps.vpid() && caps.invvpid_individual_address() && caps.invvpid_single_context());
        assert!(caps.invvpid_all_context() && caps.invvpid_single_context_retaining_globals());
        assert!(!caps.ept_vpid.contains(EptVpidCap::PAGE_WALK_LENGTH_5));
        // Pin-based allowed-1 0x7F: bit 6 yes, bit 7 (posted interrupts) no.
        assert!(caps.preemption_timer() && !caps.posted_interrupts());
        assert!(caps
            .pin_based
            .can_set(PinBasedControls::EXTERNAL_INTERRUPT_EXITING | PinBasedControls::NMI_EXITING));
        // MISC 0x600401E0: [4:0] = 0, the timer ticks with the TSC.
        assert_eq!(caps.preemption_timer_tsc_shift(), 0);
        // Primary allowed-1 0xFFF9FFFE: bits 25, 27, 28, 31 set; 17 (tertiary) clear.
        assert!(caps.msr_bitmaps() && caps.io_bitmaps() && caps.monitor_trap_flag());
        assert!(!caps
            .primary
            .can_set(PrimaryControls::ACTIVATE_TERTIARY_CONTROLS));
        assert!(caps.primary.can_clear(PrimaryControls::CR3_LOAD_EXITING));
        assert!(!caps
            .primary
            .can_clear(PrimaryControls::from_bits_retain(1 << 1)));
        // Secondary allowed-1 0x02977FFF: bits 0-14, 16-18, 20, 23, 25.
        assert!(caps.apic_access() && caps.descriptor_table_exiting() && caps.virtual_x2apic());
        assert!(
            caps.unrestricted_guest()
                && caps.apic_register_virt()
                && caps.virtual_interrupt_delivery()
        );
        assert!(caps.vmfunc() && caps.eptp_switching());
        assert!(caps
            .secondary
            .can_set(SecondaryControls::ENABLE_PML | SecondaryControls::USE_TSC_SCALING));
        assert!(!caps
            .secondary
            .can_set(SecondaryControls::CONCEAL_VMX_FROM_PT));

        let mut s = String::new();
        caps.write_summary(&mut s).unwrap();
        assert!(s.starts_with(
            "summary: vmx supported=yes revision=4 ept=yes ept_2m=yes ept_1g=yes vpid=yes unrestricted_guest=yes \
             preemption_timer=yes descriptor_table_exiting=yes msr_bitmaps=yes io_bitmaps=yes posted_interrupts=no \
             apic_access=yes virtual_x2apic=yes apic_register_virt=yes virtual_interrupt_delivery=yes monitor_trap_flag=yes "
        ), "{s}");
        assert!(
            s.ends_with(" preemption_timer_shift=0 region_size=0x1000 feature_control=0x5\n"),
            "{s}"
        );
    }

    #[test]
    fn compute_controls_follows_allowed_settings() {
        let caps = VmxCaps::decode(Some(&bochs_tigerlake()));
        let pin = caps
            .pin_based
            .compute(
                PinBasedControls::ACTIVATE_VMX_PREEMPTION_TIMER,
                PinBasedControls::PROCESS_POSTED_INTERRUPTS,
            )
            .unwrap();
        // Preemption timer + default-1 bits 1, 2, 4; posted interrupts dropped (not allowed).
        assert_eq!(pin.bits(), 0x40 | 0x16);
        let missing = caps
            .pin_based
            .compute(
                PinBasedControls::PROCESS_POSTED_INTERRUPTS,
                PinBasedControls::empty(),
            )
            .unwrap_err();
        assert_eq!(missing, PinBasedControls::PROCESS_POSTED_INTERRUPTS);
    }

    #[test]
    fn read_with_follows_existence_rules() {
        use core::cell::RefCell;
        let asked = RefCell::new(alloc::vec::Vec::new());
        // BASIC without bit 55 and a primary MSR that cannot activate secondary controls.
        let msrs = VmxMsrs::read_with(|i| {
            asked.borrow_mut().push(i);
            match i {
                msr::IA32_VMX_BASIC => 0x0000_1000_0000_0001,
                msr::IA32_VMX_PROCBASED_CTLS => 0x7fff_fffe_0401_e172,
                _ => 0,
            }
        });
        let asked = asked.into_inner();
        assert!(asked.contains(&msr::IA32_VMX_PINBASED_CTLS));
        for absent in [
            msr::IA32_VMX_TRUE_PINBASED_CTLS,
            msr::IA32_VMX_TRUE_PROCBASED_CTLS,
            msr::IA32_VMX_PROCBASED_CTLS2,
            msr::IA32_VMX_EPT_VPID_CAP,
            msr::IA32_VMX_VMFUNC,
        ] {
            assert!(!asked.contains(&absent), "read absent MSR {absent:#x}");
        }
        let caps = VmxCaps::decode(Some(&msrs));
        assert!(!caps.true_controls && !caps.ept() && !caps.vpid());
        assert!(caps.primary.can_set(PrimaryControls::USE_MSR_BITMAPS));
    }

    #[test]
    fn unsupported_reasons() {
        let mut s = String::new();
        VmxCaps::decode(None).write_summary(&mut s).unwrap();
        assert_eq!(s, "summary: vmx supported=no reason=cpuid-no-vmx\n");

        // Locked (bit 0) with only "VMX inside SMX" (bit 1): VMXON would #GP.
        let msrs = VmxMsrs {
            feature_control: 0b011,
            ..bochs_tigerlake()
        };
        let caps = VmxCaps::decode(Some(&msrs));
        assert_eq!(
            caps.support,
            Err(VmxUnsupported::FeatureControlLockedVmxOff)
        );
        s.clear();
        caps.write_summary(&mut s).unwrap();
        assert_eq!(
            s,
            "summary: vmx supported=no reason=feature-control-locked-vmx-off\n"
        );

        // Unlocked (0, as OVMF leaves it under Bochs): the hypervisor may lock it with VMX on.
        let msrs = VmxMsrs {
            feature_control: 0,
            ..bochs_tigerlake()
        };
        assert!(VmxCaps::decode(Some(&msrs)).supported());
    }

    #[test]
    fn fixed_cr_bits() {
        let caps = VmxCaps::decode(Some(&bochs_tigerlake()));
        // CR0_FIXED0 0x80000021 forces PG, NE, PE; CR4_FIXED0 0x2000 forces VMXE.
        assert_eq!(caps.fix_cr0(0x10), 0x8000_0031);
        assert_eq!(caps.fix_cr4(0x20), 0x2020);
        // CR4_FIXED1 0x003727FF clears bit 11 (UMIP is not allowed by this mask).
        assert_eq!(caps.fix_cr4(1 << 11), 0x2000);
    }
}
