//! VMCS field encodings, typed by width and access (Intel SDM Vol. 3D, Appendix B).
//!
//! One enum per (width, access) pair: [`Vmcs16`], [`Vmcs32`], [`Vmcs64`], [`VmcsNatural`] hold the
//! writable fields, [`Vmcs32Ro`], [`Vmcs64Ro`], [`VmcsNaturalRo`] the read-only VM-exit information
//! fields (there are no 16-bit read-only fields). The typed accessors in [`super::vmcs`] take only the
//! matching enum, so a wrong-width VMWRITE or a VMWRITE to a read-only field does not compile.
//!
//! Encoding layout (SDM Vol. 3C 25.11.2, "VMREAD, VMWRITE, and Encodings of VMCS Fields"):
//! bit 0 access type (0 full, 1 high half of a 64-bit field), bits 9:1 index, bits 11:10 type
//! (0 control, 1 VM-exit information, 2 guest state, 3 host state), bit 12 reserved (0),
//! bits 14:13 width (0 16-bit, 1 64-bit, 2 32-bit, 3 natural width). All encodings here are "full"
//! accesses: this hypervisor runs in 64-bit mode and never needs the high halves.

/// Width of a VMCS field, bits 14:13 of its encoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldWidth {
    Bits16 = 0,
    Bits64 = 1,
    Bits32 = 2,
    Natural = 3,
}

/// Kind of a VMCS field, bits 11:10 of its encoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldType {
    Control = 0,
    /// VM-exit information: read-only (unless IA32_VMX_MISC bit 29 allows VMWRITE to it).
    ExitInformation = 1,
    GuestState = 2,
    HostState = 3,
}

/// What software may do with a field through this API.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldAccess {
    ReadWrite,
    ReadOnly,
}

/// A raw field encoding, decoded into its parts (SDM Vol. 3C 25.11.2, Table 25-21).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FieldEncoding(pub u32);

impl FieldEncoding {
    pub const fn width(self) -> FieldWidth {
        match (self.0 >> 13) & 3 {
            0 => FieldWidth::Bits16,
            1 => FieldWidth::Bits64,
            2 => FieldWidth::Bits32,
            _ => FieldWidth::Natural,
        }
    }
    pub const fn field_type(self) -> FieldType {
        match (self.0 >> 10) & 3 {
            0 => FieldType::Control,
            1 => FieldType::ExitInformation,
            2 => FieldType::GuestState,
            _ => FieldType::HostState,
        }
    }
    /// Bit 0: the access touches the high 32 bits of a 64-bit field.
    pub const fn is_high_access(self) -> bool {
        self.0 & 1 != 0
    }
    pub const fn index(self) -> u32 {
        (self.0 >> 1) & 0x1FF
    }
    /// Bit 12 and bits 31:15 must be 0 (a VMREAD/VMWRITE with them set fails with error 12).
    pub const fn reserved_bits_clear(self) -> bool {
        self.0 & !0x6FFF == 0
    }
    /// The access allowed to software by field type.
    pub const fn access(self) -> FieldAccess {
        match self.field_type() {
            FieldType::ExitInformation => FieldAccess::ReadOnly,
            _ => FieldAccess::ReadWrite,
        }
    }
}

/// Common view of every field enum, for tables that walk all fields (dump, tests).
pub trait VmcsField: Copy + 'static {
    const WIDTH: FieldWidth;
    const ACCESS: FieldAccess;
    const ALL: &'static [Self];
    fn encoding(self) -> u32;
    fn name(self) -> &'static str;
}

macro_rules! vmcs_fields {
    (
        $(#[$meta:meta])*
        enum $name:ident: $width:ident, $access:ident {
            $( $(#[$fmeta:meta])* $variant:ident = $enc:literal, )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[repr(u32)]
        pub enum $name {
            $( $(#[$fmeta])* $variant = $enc, )*
        }

        impl $name {
            /// The field encoding used as the VMREAD/VMWRITE operand.
            pub const fn encoding(self) -> u32 {
                self as u32
            }
            pub const fn name(self) -> &'static str {
                match self {
                    $( $name::$variant => stringify!($variant), )*
                }
            }
        }

        impl VmcsField for $name {
            const WIDTH: FieldWidth = FieldWidth::$width;
            const ACCESS: FieldAccess = FieldAccess::$access;
            const ALL: &'static [Self] = &[ $( $name::$variant, )* ];
            fn encoding(self) -> u32 {
                self as u32
            }
            fn name(self) -> &'static str {
                $name::name(self)
            }
        }
    };
}

vmcs_fields! {
    /// 16-bit fields (SDM Vol. 3D B.1): control, guest state, host state.
    enum Vmcs16: Bits16, ReadWrite {
        // B.1.1 16-bit control fields.
        Vpid = 0x0000,
        PostedInterruptNotificationVector = 0x0002,
        EptpIndex = 0x0004,
        // B.1.2 16-bit guest-state fields.
        GuestEsSelector = 0x0800,
        GuestCsSelector = 0x0802,
        GuestSsSelector = 0x0804,
        GuestDsSelector = 0x0806,
        GuestFsSelector = 0x0808,
        GuestGsSelector = 0x080A,
        GuestLdtrSelector = 0x080C,
        GuestTrSelector = 0x080E,
        /// RVI (7:0) and SVI (15:8) for virtual-interrupt delivery.
        GuestInterruptStatus = 0x0810,
        PmlIndex = 0x0812,
        // B.1.3 16-bit host-state fields.
        HostEsSelector = 0x0C00,
        HostCsSelector = 0x0C02,
        HostSsSelector = 0x0C04,
        HostDsSelector = 0x0C06,
        HostFsSelector = 0x0C08,
        HostGsSelector = 0x0C0A,
        HostTrSelector = 0x0C0C,
    }
}

vmcs_fields! {
    /// Writable 64-bit fields (SDM Vol. 3D B.2): control, guest state, host state.
    enum Vmcs64: Bits64, ReadWrite {
        // B.2.1 64-bit control fields.
        IoBitmapA = 0x2000,
        IoBitmapB = 0x2002,
        MsrBitmaps = 0x2004,
        ExitMsrStoreAddr = 0x2006,
        ExitMsrLoadAddr = 0x2008,
        EntryMsrLoadAddr = 0x200A,
        ExecutiveVmcsPointer = 0x200C,
        PmlAddress = 0x200E,
        TscOffset = 0x2010,
        VirtualApicAddress = 0x2012,
        ApicAccessAddress = 0x2014,
        PostedInterruptDescriptor = 0x2016,
        VmFunctionControls = 0x2018,
        EptPointer = 0x201A,
        EoiExitBitmap0 = 0x201C,
        EoiExitBitmap1 = 0x201E,
        EoiExitBitmap2 = 0x2020,
        EoiExitBitmap3 = 0x2022,
        EptpListAddress = 0x2024,
        VmreadBitmap = 0x2026,
        VmwriteBitmap = 0x2028,
        VirtualizationExceptionInfo = 0x202A,
        XssExitingBitmap = 0x202C,
        EnclsExitingBitmap = 0x202E,
        SubPagePermissionTable = 0x2030,
        TscMultiplier = 0x2032,
        TertiaryProcBasedControls = 0x2034,
        // B.2.3 64-bit guest-state fields.
        VmcsLinkPointer = 0x2800,
        GuestIa32Debugctl = 0x2802,
        GuestIa32Pat = 0x2804,
        GuestIa32Efer = 0x2806,
        GuestIa32PerfGlobalCtrl = 0x2808,
        GuestPdpte0 = 0x280A,
        GuestPdpte1 = 0x280C,
        GuestPdpte2 = 0x280E,
        GuestPdpte3 = 0x2810,
        GuestIa32Bndcfgs = 0x2812,
        GuestIa32RtitCtl = 0x2814,
        // B.2.4 64-bit host-state fields.
        HostIa32Pat = 0x2C00,
        HostIa32Efer = 0x2C02,
        HostIa32PerfGlobalCtrl = 0x2C04,
    }
}

vmcs_fields! {
    /// Read-only 64-bit fields (SDM Vol. 3D B.2.2).
    enum Vmcs64Ro: Bits64, ReadOnly {
        GuestPhysicalAddress = 0x2400,
    }
}

vmcs_fields! {
    /// Writable 32-bit fields (SDM Vol. 3D B.3): control, guest state, host state.
    enum Vmcs32: Bits32, ReadWrite {
        // B.3.1 32-bit control fields.
        PinBasedControls = 0x4000,
        PrimaryProcBasedControls = 0x4002,
        ExceptionBitmap = 0x4004,
        PageFaultErrorCodeMask = 0x4006,
        PageFaultErrorCodeMatch = 0x4008,
        Cr3TargetCount = 0x400A,
        ExitControls = 0x400C,
        ExitMsrStoreCount = 0x400E,
        ExitMsrLoadCount = 0x4010,
        EntryControls = 0x4012,
        EntryMsrLoadCount = 0x4014,
        EntryInterruptionInfo = 0x4016,
        EntryExceptionErrorCode = 0x4018,
        EntryInstructionLength = 0x401A,
        TprThreshold = 0x401C,
        SecondaryProcBasedControls = 0x401E,
        PleGap = 0x4020,
        PleWindow = 0x4022,
        // B.3.3 32-bit guest-state fields.
        GuestEsLimit = 0x4800,
        GuestCsLimit = 0x4802,
        GuestSsLimit = 0x4804,
        GuestDsLimit = 0x4806,
        GuestFsLimit = 0x4808,
        GuestGsLimit = 0x480A,
        GuestLdtrLimit = 0x480C,
        GuestTrLimit = 0x480E,
        GuestGdtrLimit = 0x4810,
        GuestIdtrLimit = 0x4812,
        GuestEsAccessRights = 0x4814,
        GuestCsAccessRights = 0x4816,
        GuestSsAccessRights = 0x4818,
        GuestDsAccessRights = 0x481A,
        GuestFsAccessRights = 0x481C,
        GuestGsAccessRights = 0x481E,
        GuestLdtrAccessRights = 0x4820,
        GuestTrAccessRights = 0x4822,
        GuestInterruptibilityState = 0x4824,
        GuestActivityState = 0x4826,
        GuestSmbase = 0x4828,
        GuestIa32SysenterCs = 0x482A,
        PreemptionTimerValue = 0x482E,
        // B.3.4 32-bit host-state field.
        HostIa32SysenterCs = 0x4C00,
    }
}

vmcs_fields! {
    /// Read-only 32-bit fields (SDM Vol. 3D B.3.2).
    enum Vmcs32Ro: Bits32, ReadOnly {
        VmInstructionError = 0x4400,
        ExitReason = 0x4402,
        ExitInterruptionInfo = 0x4404,
        ExitInterruptionErrorCode = 0x4406,
        IdtVectoringInfo = 0x4408,
        IdtVectoringErrorCode = 0x440A,
        ExitInstructionLength = 0x440C,
        ExitInstructionInfo = 0x440E,
    }
}

vmcs_fields! {
    /// Writable natural-width fields (SDM Vol. 3D B.4): control, guest state, host state.
    enum VmcsNatural: Natural, ReadWrite {
        // B.4.1 natural-width control fields.
        Cr0GuestHostMask = 0x6000,
        Cr4GuestHostMask = 0x6002,
        Cr0ReadShadow = 0x6004,
        Cr4ReadShadow = 0x6006,
        Cr3TargetValue0 = 0x6008,
        Cr3TargetValue1 = 0x600A,
        Cr3TargetValue2 = 0x600C,
        Cr3TargetValue3 = 0x600E,
        // B.4.3 natural-width guest-state fields.
        GuestCr0 = 0x6800,
        GuestCr3 = 0x6802,
        GuestCr4 = 0x6804,
        GuestEsBase = 0x6806,
        GuestCsBase = 0x6808,
        GuestSsBase = 0x680A,
        GuestDsBase = 0x680C,
        GuestFsBase = 0x680E,
        GuestGsBase = 0x6810,
        GuestLdtrBase = 0x6812,
        GuestTrBase = 0x6814,
        GuestGdtrBase = 0x6816,
        GuestIdtrBase = 0x6818,
        GuestDr7 = 0x681A,
        GuestRsp = 0x681C,
        GuestRip = 0x681E,
        GuestRflags = 0x6820,
        GuestPendingDebugExceptions = 0x6822,
        GuestIa32SysenterEsp = 0x6824,
        GuestIa32SysenterEip = 0x6826,
        // B.4.4 natural-width host-state fields.
        HostCr0 = 0x6C00,
        HostCr3 = 0x6C02,
        HostCr4 = 0x6C04,
        HostFsBase = 0x6C06,
        HostGsBase = 0x6C08,
        HostTrBase = 0x6C0A,
        HostGdtrBase = 0x6C0C,
        HostIdtrBase = 0x6C0E,
        HostIa32SysenterEsp = 0x6C10,
        HostIa32SysenterEip = 0x6C12,
        HostRsp = 0x6C14,
        HostRip = 0x6C16,
    }
}

vmcs_fields! {
    /// Read-only natural-width fields (SDM Vol. 3D B.4.2).
    enum VmcsNaturalRo: Natural, ReadOnly {
        ExitQualification = 0x6400,
        IoRcx = 0x6402,
        IoRsi = 0x6404,
        IoRdi = 0x6406,
        IoRip = 0x6408,
        GuestLinearAddress = 0x640A,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::collections::BTreeSet;
    use alloc::vec::Vec;

    /// Encodings copied by hand from SDM Vol. 3D Appendix B (tables B-1 .. B-12).
    #[test]
    fn encodings_from_appendix_b() {
        assert_eq!(VmcsNatural::GuestRip.encoding(), 0x681E);
        assert_eq!(Vmcs32Ro::ExitReason.encoding(), 0x4402);
        assert_eq!(Vmcs64::EptPointer.encoding(), 0x201A);
        assert_eq!(Vmcs32::PinBasedControls.encoding(), 0x4000);
        assert_eq!(Vmcs16::HostTrSelector.encoding(), 0x0C0C);
        assert_eq!(Vmcs16::Vpid.encoding(), 0x0000);
        assert_eq!(Vmcs32Ro::VmInstructionError.encoding(), 0x4400);
        assert_eq!(VmcsNaturalRo::ExitQualification.encoding(), 0x6400);
        assert_eq!(Vmcs64Ro::GuestPhysicalAddress.encoding(), 0x2400);
        assert_eq!(Vmcs32::SecondaryProcBasedControls.encoding(), 0x401E);
        assert_eq!(Vmcs32::PreemptionTimerValue.encoding(), 0x482E);
        assert_eq!(Vmcs64::VmcsLinkPointer.encoding(), 0x2800);
        assert_eq!(VmcsNatural::HostRip.encoding(), 0x6C16);
        assert_eq!(Vmcs16::PmlIndex.encoding(), 0x0812);
        assert_eq!(Vmcs64::EptpListAddress.encoding(), 0x2024);
    }

    /// Cross-check against an independent table: the `x86` crate's constants.
    #[test]
    fn encodings_agree_with_x86_crate() {
        use x86::vmx::vmcs::{control, guest, host, ro};
        let pairs: &[(u32, u32)] = &[
            (Vmcs16::EptpIndex as u32, control::EPTP_INDEX),
            (Vmcs16::GuestInterruptStatus as u32, guest::INTERRUPT_STATUS),
            (Vmcs16::HostGsSelector as u32, host::GS_SELECTOR),
            (Vmcs64::MsrBitmaps as u32, control::MSR_BITMAPS_ADDR_FULL),
            (Vmcs64::PmlAddress as u32, control::PML_ADDR_FULL),
            (
                Vmcs64::VmFunctionControls as u32,
                control::VM_FUNCTION_CONTROLS_FULL,
            ),
            (Vmcs64::EoiExitBitmap3 as u32, control::EOI_EXIT3_FULL),
            (Vmcs64::TscMultiplier as u32, control::TSC_MULTIPLIER_FULL),
            (Vmcs64::GuestIa32Efer as u32, guest::IA32_EFER_FULL),
            (Vmcs64::GuestIa32RtitCtl as u32, guest::IA32_RTIT_CTL_FULL),
            (
                Vmcs64::HostIa32PerfGlobalCtrl as u32,
                host::IA32_PERF_GLOBAL_CTRL_FULL,
            ),
            (Vmcs32::PleWindow as u32, control::PLE_WINDOW),
            (Vmcs32::GuestTrAccessRights as u32, guest::TR_ACCESS_RIGHTS),
            (Vmcs32::GuestIa32SysenterCs as u32, guest::IA32_SYSENTER_CS),
            (Vmcs32::HostIa32SysenterCs as u32, host::IA32_SYSENTER_CS),
            (
                Vmcs32Ro::ExitInstructionInfo as u32,
                ro::VMEXIT_INSTRUCTION_INFO,
            ),
            (
                VmcsNatural::Cr3TargetValue3 as u32,
                control::CR3_TARGET_VALUE3,
            ),
            (
                VmcsNatural::GuestIa32SysenterEip as u32,
                guest::IA32_SYSENTER_EIP,
            ),
            (VmcsNatural::HostIdtrBase as u32, host::IDTR_BASE),
            (
                VmcsNaturalRo::GuestLinearAddress as u32,
                ro::GUEST_LINEAR_ADDR,
            ),
        ];
        for &(ours, theirs) in pairs {
            assert_eq!(ours, theirs, "{ours:#x}");
        }
    }

    fn check_table<F: VmcsField>(expected_ro: bool, seen: &mut BTreeSet<u32>) {
        for &f in F::ALL {
            let enc = FieldEncoding(f.encoding());
            assert!(enc.reserved_bits_clear(), "{}: reserved bits", f.name());
            assert!(!enc.is_high_access(), "{}: high access", f.name());
            assert_eq!(enc.width(), F::WIDTH, "{}: width", f.name());
            assert_eq!(enc.access(), F::ACCESS, "{}: access", f.name());
            assert_eq!(
                enc.field_type() == FieldType::ExitInformation,
                expected_ro,
                "{}",
                f.name()
            );
            assert!(
                seen.insert(f.encoding()),
                "{}: duplicate encoding",
                f.name()
            );
        }
    }

    /// Every table entry's width and access, derived from its encoding bits (SDM 25.11.2), agrees
    /// with the enum it sits in; no encoding appears twice.
    #[test]
    fn every_entry_matches_its_enum() {
        let mut seen = BTreeSet::new();
        check_table::<Vmcs16>(false, &mut seen);
        check_table::<Vmcs32>(false, &mut seen);
        check_table::<Vmcs64>(false, &mut seen);
        check_table::<VmcsNatural>(false, &mut seen);
        check_table::<Vmcs32Ro>(true, &mut seen);
        check_table::<Vmcs64Ro>(true, &mut seen);
        check_table::<VmcsNaturalRo>(true, &mut seen);
        assert_eq!(seen.len(), 20 + 42 + 41 + 40 + 8 + 1 + 6);
    }

    #[test]
    fn encoding_decoder_by_hand() {
        // 0x681E = 0b110_1000_0001_1110: width 3 (natural), type 2 (guest), index 15, full.
        let e = FieldEncoding(0x681E);
        assert_eq!(e.width(), FieldWidth::Natural);
        assert_eq!(e.field_type(), FieldType::GuestState);
        assert_eq!(e.index(), 15);
        // 0x201B is the high half of the EPT pointer.
        assert!(FieldEncoding(0x201B).is_high_access());
        assert!(!FieldEncoding(0x1000).reserved_bits_clear());
        let names: Vec<_> = Vmcs32Ro::ALL.iter().map(|f| f.name()).collect();
        assert_eq!(names[1], "ExitReason");
    }
}
