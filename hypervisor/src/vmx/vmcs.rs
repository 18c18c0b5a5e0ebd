//! Typed access to the current VMCS: a raw backend trait ([`VmcsAccess`]), the real backend
//! ([`CurrentVmcs`], VMREAD/VMWRITE), a fake for host tests ([`FakeVmcs`]), the VM-instruction
//! error numbers (SDM Vol. 3C 31.4) and a full [`dump`] for diagnosing failed VM entries.

use super::vmcs_fields::{
    FieldAccess, FieldEncoding, FieldWidth, Vmcs16, Vmcs32, Vmcs32Ro, Vmcs64, Vmcs64Ro, VmcsField,
    VmcsNatural, VmcsNaturalRo,
};
use alloc::collections::{BTreeMap, BTreeSet};
use core::fmt;
use core::marker::PhantomData;

macro_rules! instruction_errors {
    ($( $number:literal $variant:ident $message:literal, )*) => {
        /// VM-instruction error numbers (SDM Vol. 3C 31.4, Table 31-1), read from VMCS field 0x4400
        /// after a VMfailValid.
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum VmInstructionError {
            $( $variant, )*
            /// A number the table does not define (14, 21, 27 or newer than this table).
            Unknown(u32),
        }

        impl VmInstructionError {
            pub const fn from_number(n: u32) -> Self {
                match n {
                    $( $number => Self::$variant, )*
                    other => Self::Unknown(other),
                }
            }
            pub const fn number(self) -> u32 {
                match self {
                    $( Self::$variant => $number, )*
                    Self::Unknown(n) => n,
                }
            }
            /// The SDM's description of the error.
            pub const fn message(self) -> &'static str {
                match self {
                    $( Self::$variant => $message, )*
                    Self::Unknown(_) => "unknown VM-instruction error",
                }
            }
        }
    };
}

instruction_errors! {
    1 VmcallInRoot "VMCALL executed in VMX root operation",
    2 VmclearInvalidAddress "VMCLEAR with invalid physical address",
    3 VmclearVmxonPointer "VMCLEAR with VMXON pointer",
    4 VmlaunchNonClear "VMLAUNCH with non-clear VMCS",
    5 VmresumeNonLaunched "VMRESUME with non-launched VMCS",
    6 VmresumeAfterVmxoff "VMRESUME after VMXOFF (VMXOFF and VMXON between VMLAUNCH and VMRESUME)",
    7 EntryInvalidControls "VM entry with invalid control field(s)",
    8 EntryInvalidHostState "VM entry with invalid host-state field(s)",
    9 VmptrldInvalidAddress "VMPTRLD with invalid physical address",
    10 VmptrldVmxonPointer "VMPTRLD with VMXON pointer",
    11 VmptrldBadRevision "VMPTRLD with incorrect VMCS revision identifier",
    12 UnsupportedComponent "VMREAD/VMWRITE from/to unsupported VMCS component",
    13 VmwriteReadOnly "VMWRITE to read-only VMCS component",
    15 VmxonInRoot "VMXON executed in VMX root operation",
    16 EntryInvalidExecutivePointer "VM entry with invalid executive-VMCS pointer",
    17 EntryNonLaunchedExecutive "VM entry with non-launched executive VMCS",
    18 EntryExecutiveNotVmxon "VM entry with executive-VMCS pointer not VMXON pointer",
    19 VmcallNonClear "VMCALL with non-clear VMCS",
    20 VmcallInvalidExitControls "VMCALL with invalid VM-exit control fields",
    22 VmcallBadMsegRevision "VMCALL with incorrect MSEG revision identifier",
    23 VmxoffDualMonitor "VMXOFF under dual-monitor treatment of SMIs and SMM",
    24 VmcallInvalidSmmFeatures "VMCALL with invalid SMM-monitor features",
    25 EntryInvalidExecutiveControls "VM entry with invalid VM-execution control fields in executive VMCS",
    26 EntryBlockedByMovSs "VM entry with events blocked by MOV SS",
    28 InvalidInveptInvvpidOperand "Invalid operand to INVEPT/INVVPID",
}

/// How a VMX instruction failed (SDM Vol. 3C 31.2, "Conventions").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmFail {
    /// CF = 1: there is no current VMCS (no error number is stored).
    Invalid,
    /// ZF = 1: the error number is in the VM-instruction error field.
    Valid(VmInstructionError),
}

impl fmt::Display for VmFail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VmFail::Invalid => f.write_str("VMfailInvalid (no current VMCS)"),
            VmFail::Valid(e) => write!(f, "VMfailValid error {}: {}", e.number(), e.message()),
        }
    }
}

/// Raw VMREAD/VMWRITE on some VMCS. Code outside this module should use the typed methods, which
/// accept only a field enum of the right width and access:
///
/// ```
/// use hypervisor::vmx::vmcs::{FakeVmcs, VmcsAccess};
/// use hypervisor::vmx::vmcs_fields::{Vmcs32, Vmcs32Ro};
/// let mut v = FakeVmcs::new();
/// v.write32(Vmcs32::ExceptionBitmap, 1 << 11).unwrap();
/// let _reason = v.read32_ro(Vmcs32Ro::ExitReason).unwrap();
/// ```
///
/// A write to a read-only field does not compile:
///
/// ```compile_fail,E0308
/// use hypervisor::vmx::vmcs::{FakeVmcs, VmcsAccess};
/// use hypervisor::vmx::vmcs_fields::Vmcs32Ro;
/// let mut v = FakeVmcs::new();
/// v.write32(Vmcs32Ro::ExitReason, 0).unwrap();
/// ```
///
/// Nor does a write of the wrong width:
///
/// ```compile_fail,E0308
/// use hypervisor::vmx::vmcs::{FakeVmcs, VmcsAccess};
/// use hypervisor::vmx::vmcs_fields::VmcsNatural;
/// let mut v = FakeVmcs::new();
/// v.write32(VmcsNatural::GuestRip, 0).unwrap();
/// ```
pub trait VmcsAccess {
    fn vmread(&self, encoding: u32) -> Result<u64, VmFail>;
    fn vmwrite(&mut self, encoding: u32, value: u64) -> Result<(), VmFail>;

    fn read16(&self, field: Vmcs16) -> Result<u16, VmFail> {
        self.vmread(field.encoding()).map(|v| v as u16)
    }
    fn write16(&mut self, field: Vmcs16, value: u16) -> Result<(), VmFail> {
        self.vmwrite(field.encoding(), value.into())
    }
    fn read32(&self, field: Vmcs32) -> Result<u32, VmFail> {
        self.vmread(field.encoding()).map(|v| v as u32)
    }
    fn write32(&mut self, field: Vmcs32, value: u32) -> Result<(), VmFail> {
        self.vmwrite(field.encoding(), value.into())
    }
    fn read64(&self, field: Vmcs64) -> Result<u64, VmFail> {
        self.vmread(field.encoding())
    }
    fn write64(&mut self, field: Vmcs64, value: u64) -> Result<(), VmFail> {
        self.vmwrite(field.encoding(), value)
    }
    fn read_natural(&self, field: VmcsNatural) -> Result<u64, VmFail> {
        self.vmread(field.encoding())
    }
    fn write_natural(&mut self, field: VmcsNatural, value: u64) -> Result<(), VmFail> {
        self.vmwrite(field.encoding(), value)
    }
    fn read32_ro(&self, field: Vmcs32Ro) -> Result<u32, VmFail> {
        self.vmread(field.encoding()).map(|v| v as u32)
    }
    fn read64_ro(&self, field: Vmcs64Ro) -> Result<u64, VmFail> {
        self.vmread(field.encoding())
    }
    fn read_natural_ro(&self, field: VmcsNaturalRo) -> Result<u64, VmFail> {
        self.vmread(field.encoding())
    }
}

/// The current VMCS of this CPU, reached with VMREAD/VMWRITE. Not `Send`: the current-VMCS
/// pointer is per logical processor.
pub struct CurrentVmcs {
    _per_cpu: PhantomData<*const ()>,
}

impl CurrentVmcs {
    /// # Safety
    /// The CPU is in VMX root operation at CPL 0 (otherwise VMREAD/VMWRITE raise #UD/#GP), and the
    /// caller has made the intended VMCS current with VMPTRLD.
    pub unsafe fn assume_current() -> Self {
        CurrentVmcs {
            _per_cpu: PhantomData,
        }
    }

    fn instruction_error(&self) -> VmFail {
        match self.vmread(Vmcs32Ro::VmInstructionError.encoding()) {
            Ok(n) => VmFail::Valid(VmInstructionError::from_number(n as u32)),
            Err(e) => e,
        }
    }
}

impl VmcsAccess for CurrentVmcs {
    fn vmread(&self, encoding: u32) -> Result<u64, VmFail> {
        let value: u64;
        let (cf, zf): (u8, u8);
        // SAFETY: `assume_current` established VMX root operation with a current VMCS. The flags
        // are captured in the same asm block, so nothing can clobber them (SDM 31.2).
        unsafe {
            core::arch::asm!(
                "vmread {value}, {field}",
                "setc {cf}",
                "setz {zf}",
                field = in(reg) u64::from(encoding),
                value = out(reg) value,
                cf = out(reg_byte) cf,
                zf = out(reg_byte) zf,
                options(nostack),
            );
        }
        match (cf, zf) {
            (0, 0) => Ok(value),
            (1, _) => Err(VmFail::Invalid),
            _ => Err(self.instruction_error()),
        }
    }

    fn vmwrite(&mut self, encoding: u32, value: u64) -> Result<(), VmFail> {
        let (cf, zf): (u8, u8);
        // SAFETY: as in `vmread`.
        unsafe {
            core::arch::asm!(
                "vmwrite {field}, {value}",
                "setc {cf}",
                "setz {zf}",
                field = in(reg) u64::from(encoding),
                value = in(reg) value,
                cf = out(reg_byte) cf,
                zf = out(reg_byte) zf,
                options(nostack),
            );
        }
        match (cf, zf) {
            (0, 0) => Ok(()),
            (1, _) => Err(VmFail::Invalid),
            _ => Err(self.instruction_error()),
        }
    }
}

/// A VMCS in memory for host tests. Unwritten fields read as 0 (like a freshly cleared VMCS);
/// fields marked unsupported fail with error 12; VMWRITE to a VM-exit information field fails with
/// error 13, as on a CPU without "VMWRITE to any field" (IA32_VMX_MISC bit 29).
#[derive(Clone, Debug, Default)]
pub struct FakeVmcs {
    fields: BTreeMap<u32, u64>,
    unsupported: BTreeSet<u32>,
}

impl FakeVmcs {
    pub fn new() -> Self {
        Self::default()
    }
    /// Make VMREAD/VMWRITE of `encoding` fail as on a CPU that lacks the field.
    pub fn mark_unsupported(&mut self, encoding: u32) {
        self.unsupported.insert(encoding);
    }
    /// Set any field, read-only ones included, as the CPU would on a VM exit.
    pub fn set(&mut self, encoding: u32, value: u64) {
        self.fields.insert(encoding, truncate(encoding, value));
    }
    /// The value last written, `None` if never written.
    pub fn get(&self, encoding: u32) -> Option<u64> {
        self.fields.get(&encoding).copied()
    }
}

/// VMWRITE of a narrower field ignores the upper source bits (SDM Vol. 3C 31.3, VMWRITE).
fn truncate(encoding: u32, value: u64) -> u64 {
    match FieldEncoding(encoding).width() {
        FieldWidth::Bits16 => value & 0xFFFF,
        FieldWidth::Bits32 => value & 0xFFFF_FFFF,
        FieldWidth::Bits64 | FieldWidth::Natural => value,
    }
}

impl VmcsAccess for FakeVmcs {
    fn vmread(&self, encoding: u32) -> Result<u64, VmFail> {
        if self.unsupported.contains(&encoding) || !FieldEncoding(encoding).reserved_bits_clear() {
            return Err(VmFail::Valid(VmInstructionError::UnsupportedComponent));
        }
        Ok(self.fields.get(&encoding).copied().unwrap_or(0))
    }

    fn vmwrite(&mut self, encoding: u32, value: u64) -> Result<(), VmFail> {
        let enc = FieldEncoding(encoding);
        if self.unsupported.contains(&encoding) || !enc.reserved_bits_clear() {
            return Err(VmFail::Valid(VmInstructionError::UnsupportedComponent));
        }
        if enc.access() == FieldAccess::ReadOnly {
            return Err(VmFail::Valid(VmInstructionError::VmwriteReadOnly));
        }
        self.set(encoding, value);
        Ok(())
    }
}

fn dump_table<F: VmcsField>(
    vmcs: &impl VmcsAccess,
    title: &str,
    out: &mut dyn fmt::Write,
) -> fmt::Result {
    writeln!(out, "vmcs: -- {title} --")?;
    let digits = match F::WIDTH {
        FieldWidth::Bits16 => 4,
        FieldWidth::Bits32 => 8,
        FieldWidth::Bits64 | FieldWidth::Natural => 16,
    };
    for &field in F::ALL {
        let enc = field.encoding();
        match vmcs.vmread(enc) {
            Ok(v) => writeln!(
                out,
                "vmcs: {enc:04x} {:<32} = {v:#0w$x}",
                field.name(),
                w = digits + 2
            )?,
            Err(e) => writeln!(out, "vmcs: {enc:04x} {:<32} ({e})", field.name())?,
        }
    }
    Ok(())
}

/// Print every known VMCS field with its encoding, name and value, one per line; fields the CPU
/// does not support are printed with the error instead. Meant for failed VM entries (SDM Vol. 3C
/// 27.7-27.8: error 7/8 name only the class of the problem, the dump shows which field).
pub fn dump(vmcs: &impl VmcsAccess, out: &mut dyn fmt::Write) -> fmt::Result {
    dump_table::<Vmcs32Ro>(vmcs, "32-bit read-only", out)?;
    dump_table::<Vmcs64Ro>(vmcs, "64-bit read-only", out)?;
    dump_table::<VmcsNaturalRo>(vmcs, "natural-width read-only", out)?;
    dump_table::<Vmcs16>(vmcs, "16-bit", out)?;
    dump_table::<Vmcs32>(vmcs, "32-bit", out)?;
    dump_table::<Vmcs64>(vmcs, "64-bit", out)?;
    dump_table::<VmcsNatural>(vmcs, "natural-width", out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::String;

    #[test]
    fn typed_round_trip_and_truncation() {
        let mut v = FakeVmcs::new();
        v.write16(Vmcs16::Vpid, 1).unwrap();
        v.write32(Vmcs32::ExceptionBitmap, 1 << 11).unwrap();
        v.write64(Vmcs64::EptPointer, 0x1234_505E).unwrap();
        v.write_natural(VmcsNatural::GuestRip, 0xFFFF_8000_0000_1000)
            .unwrap();
        assert_eq!(v.read16(Vmcs16::Vpid), Ok(1));
        assert_eq!(v.get(0x4004), Some(0x800));
        assert_eq!(v.read64(Vmcs64::EptPointer), Ok(0x1234_505E));
        assert_eq!(
            v.read_natural(VmcsNatural::GuestRip),
            Ok(0xFFFF_8000_0000_1000)
        );
        // A raw wide write to a 16-bit field keeps the low 16 bits only.
        v.vmwrite(Vmcs16::Vpid.encoding(), 0x1_0002).unwrap();
        assert_eq!(v.read16(Vmcs16::Vpid), Ok(2));
    }

    #[test]
    fn read_only_fields_refuse_raw_writes() {
        let mut v = FakeVmcs::new();
        let r = v.vmwrite(0x4402, 1);
        assert_eq!(r, Err(VmFail::Valid(VmInstructionError::VmwriteReadOnly)));
        v.set(0x4402, 30);
        assert_eq!(v.read32_ro(Vmcs32Ro::ExitReason), Ok(30));
    }

    #[test]
    fn instruction_error_numbers() {
        // SDM 31.4 Table 31-1.
        assert_eq!(
            VmInstructionError::from_number(7),
            VmInstructionError::EntryInvalidControls
        );
        assert_eq!(VmInstructionError::EntryInvalidHostState.number(), 8);
        assert_eq!(VmInstructionError::InvalidInveptInvvpidOperand.number(), 28);
        assert_eq!(
            VmInstructionError::from_number(14),
            VmInstructionError::Unknown(14)
        );
        let mut s = String::new();
        use core::fmt::Write;
        write!(s, "{}", VmFail::Valid(VmInstructionError::from_number(12))).unwrap();
        assert_eq!(
            s,
            "VMfailValid error 12: VMREAD/VMWRITE from/to unsupported VMCS component"
        );
    }

    #[test]
    fn dump_prints_every_field_by_name() {
        let mut v = FakeVmcs::new();
        v.write_natural(VmcsNatural::GuestRip, 0x1000).unwrap();
        v.set(0x4400, 7);
        v.mark_unsupported(Vmcs16::PmlIndex.encoding());
        let mut s = String::new();
        dump(&v, &mut s).unwrap();
        let fields = s.lines().filter(|l| !l.contains("--")).count();
        let total = Vmcs16::ALL.len()
            + Vmcs32::ALL.len()
            + Vmcs64::ALL.len()
            + VmcsNatural::ALL.len()
            + Vmcs32Ro::ALL.len()
            + Vmcs64Ro::ALL.len()
            + VmcsNaturalRo::ALL.len();
        assert_eq!(fields, total);
        assert!(s.contains("vmcs: 681e GuestRip                         = 0x0000000000001000"));
        assert!(s.contains("vmcs: 4400 VmInstructionError               = 0x00000007"));
        assert!(s.contains("vmcs: 0812 PmlIndex                         (VMfailValid error 12"));
    }
}
