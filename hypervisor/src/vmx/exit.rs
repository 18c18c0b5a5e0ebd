//! VM-exit information decoded once: basic exit reasons (SDM Vol. 3D Appendix C, Table C-1), the
//! exit-reason field, exit qualifications (SDM Vol. 3C 28.2.1), the instruction-information field
//! of LIDT/SIDT/LGDT/SGDT, and the interruption-information fields (SDM Vol. 3C 25.9.2, 25.9.3,
//! 25.8.3).

use bitflags::bitflags;

macro_rules! exit_reasons {
    ($( $number:literal $variant:ident $text:literal, )*) => {
        /// Basic exit reasons (SDM Vol. 3D Appendix C, Table C-1).
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[repr(u16)]
        pub enum ExitReason {
            $( $variant = $number, )*
        }

        impl ExitReason {
            /// Every defined reason, in numeric order.
            pub const ALL: &'static [ExitReason] = &[ $( ExitReason::$variant, )* ];

            pub const fn from_basic(basic: u16) -> Option<Self> {
                match basic {
                    $( $number => Some(Self::$variant), )*
                    _ => None,
                }
            }
            /// Table C-1's name for the reason.
            pub const fn description(self) -> &'static str {
                match self {
                    $( Self::$variant => $text, )*
                }
            }
        }
    };
}

exit_reasons! {
    0 ExceptionOrNmi "Exception or non-maskable interrupt (NMI)",
    1 ExternalInterrupt "External interrupt",
    2 TripleFault "Triple fault",
    3 InitSignal "INIT signal",
    4 StartupIpi "Start-up IPI (SIPI)",
    5 IoSmi "I/O system-management interrupt (SMI)",
    6 OtherSmi "Other SMI",
    7 InterruptWindow "Interrupt window",
    8 NmiWindow "NMI window",
    9 TaskSwitch "Task switch",
    10 Cpuid "CPUID",
    11 Getsec "GETSEC",
    12 Hlt "HLT",
    13 Invd "INVD",
    14 Invlpg "INVLPG",
    15 Rdpmc "RDPMC",
    16 Rdtsc "RDTSC",
    17 Rsm "RSM",
    18 Vmcall "VMCALL",
    19 Vmclear "VMCLEAR",
    20 Vmlaunch "VMLAUNCH",
    21 Vmptrld "VMPTRLD",
    22 Vmptrst "VMPTRST",
    23 Vmread "VMREAD",
    24 Vmresume "VMRESUME",
    25 Vmwrite "VMWRITE",
    26 Vmxoff "VMXOFF",
    27 Vmxon "VMXON",
    28 CrAccess "Control-register accesses",
    29 DrAccess "MOV DR",
    30 IoInstruction "I/O instruction",
    31 Rdmsr "RDMSR",
    32 Wrmsr "WRMSR",
    33 EntryFailInvalidGuestState "VM-entry failure due to invalid guest state",
    34 EntryFailMsrLoading "VM-entry failure due to MSR loading",
    36 Mwait "MWAIT",
    37 MonitorTrapFlag "Monitor trap flag",
    39 Monitor "MONITOR",
    40 Pause "PAUSE",
    41 EntryFailMachineCheck "VM-entry failure due to machine-check event",
    43 TprBelowThreshold "TPR below threshold",
    44 ApicAccess "APIC access",
    45 VirtualizedEoi "Virtualized EOI",
    46 GdtrIdtrAccess "Access to GDTR or IDTR",
    47 LdtrTrAccess "Access to LDTR or TR",
    48 EptViolation "EPT violation",
    49 EptMisconfiguration "EPT misconfiguration",
    50 Invept "INVEPT",
    51 Rdtscp "RDTSCP",
    52 PreemptionTimer "VMX-preemption timer expired",
    53 Invvpid "INVVPID",
    54 Wbinvd "WBINVD or WBNOINVD",
    55 Xsetbv "XSETBV",
    56 ApicWrite "APIC write",
    57 Rdrand "RDRAND",
    58 Invpcid "INVPCID",
    59 Vmfunc "VMFUNC",
    60 Encls "ENCLS",
    61 Rdseed "RDSEED",
    62 PmlFull "Page-modification log full",
    63 Xsaves "XSAVES",
    64 Xrstors "XRSTORS",
    65 Pconfig "PCONFIG",
    66 SppEvent "SPP-related event",
    67 Umwait "UMWAIT",
    68 Tpause "TPAUSE",
    69 Loadiwkey "LOADIWKEY",
    70 Enclv "ENCLV",
    72 EnqcmdPasidFailure "ENQCMD PASID translation failure",
    73 EnqcmdsPasidFailure "ENQCMDS PASID translation failure",
    74 BusLock "Bus lock",
    75 InstructionTimeout "Instruction timeout",
    76 Seamcall "SEAMCALL",
    77 Tdcall "TDCALL",
    78 Rdmsrlist "RDMSRLIST",
    79 Wrmsrlist "WRMSRLIST",
}

/// The 32-bit exit-reason field (SDM Vol. 3C 28.2.1, "Format of Exit Reason").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExitReasonField(pub u32);

impl ExitReasonField {
    /// Bits 15:0.
    pub const fn basic(self) -> u16 {
        self.0 as u16
    }
    /// The basic reason as an enum; `Err(number)` for a number Table C-1 does not define.
    pub const fn reason(self) -> Result<ExitReason, u16> {
        match ExitReason::from_basic(self.basic()) {
            Some(r) => Ok(r),
            None => Err(self.basic()),
        }
    }
    /// Bit 27: the exit was incident to enclave mode.
    pub const fn from_enclave(self) -> bool {
        self.0 & (1 << 27) != 0
    }
    /// Bit 28: a monitor-trap-flag VM exit was pending.
    pub const fn pending_mtf(self) -> bool {
        self.0 & (1 << 28) != 0
    }
    /// Bit 29: the exit came from VMX root operation (SMM dual-monitor treatment).
    pub const fn from_vmx_root(self) -> bool {
        self.0 & (1 << 29) != 0
    }
    /// Bit 31: this is a VM-entry failure (reasons 33, 34, 41), not a true VM exit.
    pub const fn entry_failure(self) -> bool {
        self.0 & (1 << 31) != 0
    }
}

/// General-purpose register numbering used by exit qualifications and instruction information
/// (SDM Vol. 3C Table 28-3 and Table 28-10).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Gpr {
    Rax = 0,
    Rcx = 1,
    Rdx = 2,
    Rbx = 3,
    Rsp = 4,
    Rbp = 5,
    Rsi = 6,
    Rdi = 7,
    R8 = 8,
    R9 = 9,
    R10 = 10,
    R11 = 11,
    R12 = 12,
    R13 = 13,
    R14 = 14,
    R15 = 15,
}

impl Gpr {
    pub const ALL: [Gpr; 16] = [
        Gpr::Rax,
        Gpr::Rcx,
        Gpr::Rdx,
        Gpr::Rbx,
        Gpr::Rsp,
        Gpr::Rbp,
        Gpr::Rsi,
        Gpr::Rdi,
        Gpr::R8,
        Gpr::R9,
        Gpr::R10,
        Gpr::R11,
        Gpr::R12,
        Gpr::R13,
        Gpr::R14,
        Gpr::R15,
    ];
    /// The register with number `n & 0xF`.
    pub const fn from_bits(n: u64) -> Gpr {
        Gpr::ALL[(n & 0xF) as usize]
    }
}

/// Direction of an I/O instruction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoDirection {
    Out,
    In,
}

/// Exit qualification of an I/O instruction exit (SDM Vol. 3C 28.2.1, Table 28-5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IoQualification {
    /// Access size in bytes: 1, 2 or 4 (bits 2:0 = 0, 1, 3).
    pub size: u8,
    /// Bit 3.
    pub direction: IoDirection,
    /// Bit 4: INS/OUTS.
    pub string: bool,
    /// Bit 5: REP prefix.
    pub rep: bool,
    /// Bit 6: port given as an immediate (otherwise in DX).
    pub immediate: bool,
    /// Bits 31:16.
    pub port: u16,
}

impl IoQualification {
    /// `None` if bits 2:0 hold the unused size encoding 2 or a value above 3.
    pub const fn decode(q: u64) -> Option<Self> {
        let size = match q & 7 {
            0 => 1,
            1 => 2,
            3 => 4,
            _ => return None,
        };
        Some(IoQualification {
            size,
            direction: if q & (1 << 3) != 0 {
                IoDirection::In
            } else {
                IoDirection::Out
            },
            string: q & (1 << 4) != 0,
            rep: q & (1 << 5) != 0,
            immediate: q & (1 << 6) != 0,
            port: (q >> 16) as u16,
        })
    }
}

/// The kind of control-register access (bits 5:4 of the exit qualification).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrAccessKind {
    MovToCr(Gpr),
    MovFromCr(Gpr),
    Clts,
    /// LMSW with its 16-bit source operand; `memory` when the operand was in memory.
    Lmsw {
        source: u16,
        memory: bool,
    },
}

/// Exit qualification of a control-register access (SDM Vol. 3C 28.2.1, Table 28-3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CrAccess {
    /// Bits 3:0: 0 for CLTS and LMSW.
    pub cr: u8,
    pub kind: CrAccessKind,
}

impl CrAccess {
    pub const fn decode(q: u64) -> Self {
        let gpr = Gpr::from_bits(q >> 8);
        let kind = match (q >> 4) & 3 {
            0 => CrAccessKind::MovToCr(gpr),
            1 => CrAccessKind::MovFromCr(gpr),
            2 => CrAccessKind::Clts,
            _ => CrAccessKind::Lmsw {
                source: (q >> 16) as u16,
                memory: q & (1 << 6) != 0,
            },
        };
        CrAccess {
            cr: (q & 0xF) as u8,
            kind,
        }
    }
}

bitflags! {
    /// Exit qualification of an EPT violation (SDM Vol. 3C 28.2.1, Table 28-7).
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct EptViolation: u64 {
        const DATA_READ = 1 << 0;
        const DATA_WRITE = 1 << 1;
        const INSTRUCTION_FETCH = 1 << 2;
        /// Bits 3-6: the AND of the corresponding permission bits of the EPT entries walked
        /// (the page was readable / writable / executable / user-executable).
        const READABLE = 1 << 3;
        const WRITABLE = 1 << 4;
        const EXECUTABLE = 1 << 5;
        const USER_EXECUTABLE = 1 << 6;
        /// The guest-linear-address field is valid.
        const LINEAR_ADDRESS_VALID = 1 << 7;
        /// With bit 7: the access was to the translated address (else to a guest paging entry).
        const TRANSLATED_ACCESS = 1 << 8;
        /// Bits 9-11 only with "advanced VM-exit information for EPT violations".
        const USER_MODE_LINEAR = 1 << 9;
        const READ_WRITE_PAGE = 1 << 10;
        const EXECUTE_DISABLE_PAGE = 1 << 11;
        /// NMI unblocking due to IRET: re-block NMIs before resuming (SDM 28.2.3).
        const NMI_UNBLOCKING = 1 << 12;
        const SHADOW_STACK = 1 << 13;
        const SUPERVISOR_SHADOW_STACK = 1 << 14;
        const GUEST_PAGING_VERIFICATION = 1 << 15;
        const ASYNCHRONOUS = 1 << 16;
    }
}

impl EptViolation {
    pub const fn decode(q: u64) -> Self {
        Self::from_bits_retain(q)
    }
}

/// Which descriptor-table instruction exited (bits 29:28).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DtInstruction {
    Sgdt,
    Sidt,
    Lgdt,
    Lidt,
}

/// Address size of the memory operand (bits 9:7).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddressSize {
    Bits16,
    Bits32,
    Bits64,
}

impl AddressSize {
    pub const fn mask(self) -> u64 {
        match self {
            AddressSize::Bits16 => 0xFFFF,
            AddressSize::Bits32 => 0xFFFF_FFFF,
            AddressSize::Bits64 => u64::MAX,
        }
    }
}

/// Segment register of the memory operand (bits 17:15).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SegmentReg {
    Es,
    Cs,
    Ss,
    Ds,
    Fs,
    Gs,
}

/// VM-exit instruction information for LIDT, LGDT, SIDT, SGDT (SDM Vol. 3C 28.2.5,
/// Table 28-10 "Format of the VM-Exit Instruction-Information Field as Used for LIDT, LGDT, SIDT,
/// or SGDT"). The displacement of the memory operand is in the exit qualification.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DescriptorTableInfo {
    /// Index scale factor 1, 2, 4 or 8 (bits 1:0; meaningless without an index register).
    pub scale: u8,
    pub address_size: AddressSize,
    /// Bit 11: 32-bit operand size (else 16-bit); undefined in 64-bit mode, where the table base
    /// is always 64 bits wide.
    pub operand_32bit: bool,
    pub segment: SegmentReg,
    /// Bits 21:18, `None` when bit 22 (invalid) is set.
    pub index: Option<Gpr>,
    /// Bits 26:23, `None` when bit 27 (invalid) is set.
    pub base: Option<Gpr>,
    pub instruction: DtInstruction,
}

impl DescriptorTableInfo {
    /// `None` for the reserved address-size (3) or segment (6, 7) encodings.
    pub const fn decode(info: u32) -> Option<Self> {
        let address_size = match (info >> 7) & 7 {
            0 => AddressSize::Bits16,
            1 => AddressSize::Bits32,
            2 => AddressSize::Bits64,
            _ => return None,
        };
        let segment = match (info >> 15) & 7 {
            0 => SegmentReg::Es,
            1 => SegmentReg::Cs,
            2 => SegmentReg::Ss,
            3 => SegmentReg::Ds,
            4 => SegmentReg::Fs,
            5 => SegmentReg::Gs,
            _ => return None,
        };
        let instruction = match (info >> 28) & 3 {
            0 => DtInstruction::Sgdt,
            1 => DtInstruction::Sidt,
            2 => DtInstruction::Lgdt,
            _ => DtInstruction::Lidt,
        };
        Some(DescriptorTableInfo {
            scale: 1 << (info & 3),
            address_size,
            operand_32bit: info & (1 << 11) != 0,
            segment,
            index: if info & (1 << 22) != 0 {
                None
            } else {
                Some(Gpr::from_bits((info >> 18) as u64))
            },
            base: if info & (1 << 27) != 0 {
                None
            } else {
                Some(Gpr::from_bits((info >> 23) as u64))
            },
            instruction,
        })
    }

    /// Linear address of the memory operand: segment base + (base + index * scale + displacement)
    /// truncated to the address size. `gpr` reads the guest's registers; `segment_base` is the
    /// base of [`Self::segment`] (0 for ES/CS/SS/DS in 64-bit mode).
    pub fn linear_address(
        &self,
        displacement: u64,
        gpr: impl Fn(Gpr) -> u64,
        segment_base: u64,
    ) -> u64 {
        let base = self.base.map_or(0, &gpr);
        let index = self.index.map_or(0, &gpr);
        let offset = base
            .wrapping_add(index.wrapping_mul(self.scale.into()))
            .wrapping_add(displacement)
            & self.address_size.mask();
        segment_base.wrapping_add(offset)
    }
}

/// Event type of an interruption-information field (bits 10:8).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum EventType {
    ExternalInterrupt = 0,
    /// Type 1 is not used.
    Reserved = 1,
    Nmi = 2,
    HardwareException = 3,
    SoftwareInterrupt = 4,
    PrivilegedSoftwareException = 5,
    SoftwareException = 6,
    /// On VM entry with vector 0: a pending MTF VM exit.
    Other = 7,
}

impl EventType {
    pub const fn from_bits(n: u32) -> Self {
        match n & 7 {
            0 => EventType::ExternalInterrupt,
            1 => EventType::Reserved,
            2 => EventType::Nmi,
            3 => EventType::HardwareException,
            4 => EventType::SoftwareInterrupt,
            5 => EventType::PrivilegedSoftwareException,
            6 => EventType::SoftwareException,
            _ => EventType::Other,
        }
    }
}

/// The common layout of the VM-exit interruption information, IDT-vectoring information and
/// VM-entry interruption information fields (SDM Vol. 3C 25.9.2 Table 25-19, 25.9.3 Table 25-20,
/// 25.8.3 Table 25-17): vector 7:0, type 10:8, error code valid 11, NMI unblocking due to IRET 12
/// (exit interruption information only; undefined in IDT-vectoring, reserved on entry), valid 31.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InterruptionInfo {
    pub vector: u8,
    pub event_type: EventType,
    pub error_code_valid: bool,
    pub nmi_unblocking: bool,
    pub valid: bool,
}

impl InterruptionInfo {
    pub const fn decode(raw: u32) -> Self {
        InterruptionInfo {
            vector: raw as u8,
            event_type: EventType::from_bits(raw >> 8),
            error_code_valid: raw & (1 << 11) != 0,
            nmi_unblocking: raw & (1 << 12) != 0,
            valid: raw & (1 << 31) != 0,
        }
    }

    pub const fn encode(self) -> u32 {
        (self.vector as u32)
            | ((self.event_type as u32) << 8)
            | ((self.error_code_valid as u32) << 11)
            | ((self.nmi_unblocking as u32) << 12)
            | ((self.valid as u32) << 31)
    }

    /// The decoded field if its valid bit is set.
    pub const fn decode_valid(raw: u32) -> Option<Self> {
        if raw & (1 << 31) != 0 {
            Some(Self::decode(raw))
        } else {
            None
        }
    }

    /// A valid event for the VM-entry interruption-information field (bit 12 stays 0, as
    /// SDM 27.2.1.3 requires on entry).
    pub const fn inject(vector: u8, event_type: EventType, error_code_valid: bool) -> Self {
        InterruptionInfo {
            vector,
            event_type,
            error_code_valid,
            nmi_unblocking: false,
            valid: true,
        }
    }

    /// Injection of external interrupt `vector` (no error code).
    pub const fn external_interrupt(vector: u8) -> Self {
        Self::inject(vector, EventType::ExternalInterrupt, false)
    }

    /// Injection of hardware exception `vector`; the caller says whether it pushes an error code
    /// (#DF, #TS, #NP, #SS, #GP, #PF, #AC, #CP do; SDM Vol. 3A 6.13).
    pub const fn hardware_exception(vector: u8, error_code: bool) -> Self {
        Self::inject(vector, EventType::HardwareException, error_code)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_reasons_table_c1() {
        assert_eq!(ExitReason::from_basic(0), Some(ExitReason::ExceptionOrNmi));
        assert_eq!(ExitReason::from_basic(10), Some(ExitReason::Cpuid));
        assert_eq!(ExitReason::from_basic(30), Some(ExitReason::IoInstruction));
        assert_eq!(ExitReason::from_basic(46), Some(ExitReason::GdtrIdtrAccess));
        assert_eq!(ExitReason::from_basic(48), Some(ExitReason::EptViolation));
        assert_eq!(
            ExitReason::from_basic(52),
            Some(ExitReason::PreemptionTimer)
        );
        assert_eq!(ExitReason::from_basic(62), Some(ExitReason::PmlFull));
        for unused in [35, 38, 42, 71, 80, 0xFFFF] {
            assert_eq!(ExitReason::from_basic(unused), None, "{unused}");
        }
        // The table is in order and consistent with from_basic.
        for w in ExitReason::ALL.windows(2) {
            assert!((w[0] as u16) < (w[1] as u16));
        }
        for &r in ExitReason::ALL {
            assert_eq!(ExitReason::from_basic(r as u16), Some(r));
        }
        // 0..=79 without the unused 35, 38, 42 and 71.
        assert_eq!(ExitReason::ALL.len(), 80 - 4);
    }

    #[test]
    fn exit_reason_field_bits() {
        // Invalid guest state: basic 33 with bit 31 set.
        let f = ExitReasonField(0x8000_0021);
        assert!(f.entry_failure());
        assert_eq!(f.reason(), Ok(ExitReason::EntryFailInvalidGuestState));
        let f = ExitReasonField((1 << 27) | 48);
        assert!(f.from_enclave() && !f.entry_failure() && !f.pending_mtf());
        assert_eq!(f.reason(), Ok(ExitReason::EptViolation));
        assert!(ExitReasonField(1 << 28).pending_mtf());
        assert!(ExitReasonField(1 << 29).from_vmx_root());
        assert_eq!(ExitReasonField(35).reason(), Err(35));
    }

    #[test]
    fn io_qualification_table_28_5() {
        // `out dx, al` to COM1 (0x3F8): size 0, out, DX operand.
        let q = IoQualification::decode(0x03F8_0000).unwrap();
        assert_eq!(
            q,
            IoQualification {
                size: 1,
                direction: IoDirection::Out,
                string: false,
                rep: false,
                immediate: false,
                port: 0x3F8
            }
        );
        // `rep insw` from 0x1F0: size 1 (2 bytes), in (bit 3), string (4), rep (5).
        let q = IoQualification::decode(0x01F0_0039).unwrap();
        assert_eq!((q.size, q.direction), (2, IoDirection::In));
        assert!(q.string && q.rep && !q.immediate);
        assert_eq!(q.port, 0x1F0);
        // `in eax, 0x71`: size 3 (4 bytes), in, immediate (bit 6).
        let q = IoQualification::decode(0x0071_004B).unwrap();
        assert_eq!((q.size, q.port, q.immediate), (4, 0x71, true));
        assert_eq!(IoQualification::decode(2), None);
    }

    #[test]
    fn cr_access_table_28_3() {
        // mov cr3, rbx: cr 3, type 0, gpr 3 -> 0x303.
        assert_eq!(
            CrAccess::decode(0x303),
            CrAccess {
                cr: 3,
                kind: CrAccessKind::MovToCr(Gpr::Rbx)
            }
        );
        // mov r12, cr4: cr 4, type 1 (0x10), gpr 12 (0xC00).
        assert_eq!(
            CrAccess::decode(0xC14).kind,
            CrAccessKind::MovFromCr(Gpr::R12)
        );
        assert_eq!(CrAccess::decode(0x20).kind, CrAccessKind::Clts);
        // lmsw from memory with source 0x0011: type 3 (0x30), bit 6, data in 31:16.
        assert_eq!(
            CrAccess::decode(0x0011_0070).kind,
            CrAccessKind::Lmsw {
                source: 0x11,
                memory: true
            }
        );
    }

    #[test]
    fn ept_violation_table_28_7() {
        // A guest write to a present read-only page, linear address valid, translated access:
        // bits 1, 3, 5, 7, 8 -> 0x1AA.
        let v = EptViolation::decode(0x1AA);
        assert!(v.contains(EptViolation::DATA_WRITE | EptViolation::READABLE));
        assert!(v.contains(EptViolation::EXECUTABLE | EptViolation::LINEAR_ADDRESS_VALID));
        assert!(v.contains(EptViolation::TRANSLATED_ACCESS));
        assert!(!v.contains(EptViolation::WRITABLE));
        assert!(!v.contains(EptViolation::DATA_READ));
        assert!(EptViolation::decode(1 << 12).contains(EptViolation::NMI_UNBLOCKING));
    }

    #[test]
    fn descriptor_table_info_table_28_10() {
        // lidt [rax + rcx*8 + disp] in 64-bit mode: scale 3, addr size 2 (bits 9:7 = 0x100),
        // segment DS 3 (bits 17:15 = 0x18000), index RCX 1 (bit 18 = 0x40000),
        // base RAX 0, identity LIDT 3 (bits 29:28 = 0x3000_0000).
        let raw = 3 | 0x100 | 0x18000 | 0x40000 | 0x3000_0000;
        let i = DescriptorTableInfo::decode(raw).unwrap();
        assert_eq!(
            i,
            DescriptorTableInfo {
                scale: 8,
                address_size: AddressSize::Bits64,
                operand_32bit: false,
                segment: SegmentReg::Ds,
                index: Some(Gpr::Rcx),
                base: Some(Gpr::Rax),
                instruction: DtInstruction::Lidt,
            }
        );
        let regs = |r: Gpr| match r {
            Gpr::Rax => 0x1000,
            Gpr::Rcx => 2,
            _ => 0,
        };
        assert_eq!(i.linear_address(0x20, regs, 0), 0x1000 + 16 + 0x20);
        // sidt [rip-less absolute disp32] via FS, 32-bit addresses, no base/index:
        // addr size 1 (0x80), FS 4 (0x20000), index invalid (bit 22), base invalid (bit 27),
        // identity SIDT 1 (0x1000_0000).
        let raw = 0x80 | 0x20000 | (1 << 22) | (1 << 27) | 0x1000_0000;
        let i = DescriptorTableInfo::decode(raw).unwrap();
        assert_eq!((i.index, i.base), (None, None));
        assert_eq!(i.segment, SegmentReg::Fs);
        assert_eq!(i.instruction, DtInstruction::Sidt);
        assert_eq!(
            i.linear_address(0xFFFF_FFF0, regs, 0x10_0000),
            0x10_0000 + 0xFFFF_FFF0
        );
        // SGDT is 0, LGDT is 2.
        assert_eq!(
            DescriptorTableInfo::decode(0x100).unwrap().instruction,
            DtInstruction::Sgdt
        );
        assert_eq!(
            DescriptorTableInfo::decode(0x2000_0100)
                .unwrap()
                .instruction,
            DtInstruction::Lgdt
        );
        // 16-bit address wrap.
        let i = DescriptorTableInfo::decode(0x18000 | 0x3000_0000 | (1 << 22)).unwrap();
        assert_eq!(i.linear_address(0x10, |_| 0xFFF8, 0), 0x8);
        // Reserved address size 3 and segment 6.
        assert_eq!(DescriptorTableInfo::decode(0x180), None);
        assert_eq!(DescriptorTableInfo::decode(0x100 | (6 << 15)), None);
    }

    #[test]
    fn interruption_info_encode_decode() {
        // A #NP exit during delivery of external interrupt v (eli.md): exit interruption info
        // 0x80000B0B (vector 11, hardware exception, error code valid), IDT-vectoring 0x80000000 | v.
        let np = InterruptionInfo::decode(0x8000_0B0B);
        assert_eq!(np, InterruptionInfo::hardware_exception(11, true));
        assert_eq!(np.encode(), 0x8000_0B0B);
        let idt = InterruptionInfo::decode_valid(0x8000_0041).unwrap();
        assert_eq!(idt.event_type, EventType::ExternalInterrupt);
        assert_eq!(idt.vector, 0x41);
        assert_eq!(InterruptionInfo::decode_valid(0x41), None);
        // Injection of external interrupt 0x30 for VM entry: 0x80000030.
        assert_eq!(
            InterruptionInfo::external_interrupt(0x30).encode(),
            0x8000_0030
        );
        // NMI (type 2) with NMI unblocking due to IRET (bit 12): 0x80001202.
        let nmi = InterruptionInfo::decode(0x8000_1202);
        assert_eq!(nmi.event_type, EventType::Nmi);
        assert!(nmi.nmi_unblocking && !nmi.error_code_valid);
        assert_eq!(nmi.encode(), 0x8000_1202);
        // Software interrupt int 0x80 (type 4): 0x80000480; #BP as software exception: 0x80000603.
        assert_eq!(
            InterruptionInfo::inject(0x80, EventType::SoftwareInterrupt, false).encode(),
            0x8000_0480
        );
        assert_eq!(
            InterruptionInfo::decode(0x8000_0603).event_type,
            EventType::SoftwareException
        );
        assert_eq!(
            InterruptionInfo::decode(0x500).event_type,
            EventType::PrivilegedSoftwareException
        );
        assert_eq!(InterruptionInfo::decode(0x700).event_type, EventType::Other);
    }
}
