//! Programs a fresh VMCS: controls, host state (what a VM exit loads) and the guest's 64-bit start state
//! (SDM Vol. 3C 25.4-25.5 layout, 27.2-27.3 checks).

use super::controls::Controls;
use super::guest_layout::{self, GuestStart};
use crate::caps::vmx::VmxCaps;
use crate::vmx::vmcs::{VmFail, VmcsAccess};
use crate::vmx::vmcs_fields::{Vmcs16, Vmcs32, Vmcs64, VmcsNatural};

/// Host state a VM exit restores; captured once per CPU.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HostState {
    pub cr0: u64,
    pub cr3: u64,
    pub cr4: u64,
    pub code_selector: u16,
    pub data_selector: u16,
    pub tr_selector: u16,
    pub fs_base: u64,
    /// The running CPU's per-CPU area (`arch::percpu`, whose GS rule needs GS there after an exit),
    /// and that CPU's own TSS and GDT.
    pub gs_base: u64,
    pub tr_base: u64,
    pub gdtr_base: u64,
    pub idtr_base: u64,
    pub efer: u64,
    pub rip: u64,
}

/// Where a guest's hardware structures live (host-physical) and how it is identified.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestTables {
    pub eptp: u64,
    pub msr_bitmap: u64,
    pub io_bitmap_a: u64,
    pub io_bitmap_b: u64,
    /// Non-zero when VPID is enabled (SDM 27.2.1.1: 0 is the host's).
    pub vpid: u16,
    /// APICv: the vCPU's virtual-APIC page.
    pub virtual_apic: Option<u64>,
}

// CR0 bits (SDM Vol. 3A 2.5).
const CR0_PE: u64 = 1 << 0;
const CR0_MP: u64 = 1 << 1;
const CR0_ET: u64 = 1 << 4;
const CR0_NE: u64 = 1 << 5;
const CR0_WP: u64 = 1 << 16;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const CR4_VMXE: u64 = 1 << 13;
// EFER (SDM Vol. 3A 2.2.1).
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
const EFER_NXE: u64 = 1 << 11;

/// The CR0 a guest starts with, as it sees it.
pub const GUEST_CR0: u64 = CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_WP | CR0_PG;
/// The CR4 a guest starts with, as it sees it (VMXE is the host's and hidden by the read shadow).
pub const GUEST_CR4: u64 = CR4_PAE;
pub const GUEST_EFER: u64 = EFER_LME | EFER_LMA | EFER_NXE;

// Segment access rights (SDM Vol. 3C 25.4.1 Table 25-2): type, S, DPL, P, AVL, L, D/B, G, unusable.
const AR_CODE64: u32 = 0xA09B;
const AR_DATA: u32 = 0xC093;
const AR_TSS_BUSY64: u32 = 0x008B;
const AR_UNUSABLE: u32 = 1 << 16;
/// RFLAGS bit 1 is reserved and always 1.
const RFLAGS_FIXED: u64 = 1 << 1;
/// VMCS link pointer "not used" value (SDM 27.3.1.5).
const NO_VMCS_LINK: u64 = u64::MAX;

pub fn write_controls(
    vmcs: &mut impl VmcsAccess,
    controls: &Controls,
    exception_bitmap: u32,
) -> Result<(), VmFail> {
    vmcs.write32(Vmcs32::PinBasedControls, controls.pin.bits())?;
    vmcs.write32(Vmcs32::PrimaryProcBasedControls, controls.primary.bits())?;
    vmcs.write32(
        Vmcs32::SecondaryProcBasedControls,
        controls.secondary.bits(),
    )?;
    vmcs.write32(Vmcs32::ExitControls, controls.exit.bits())?;
    vmcs.write32(Vmcs32::EntryControls, controls.entry.bits())?;
    vmcs.write32(Vmcs32::ExceptionBitmap, exception_bitmap)?;
    vmcs.write32(Vmcs32::PageFaultErrorCodeMask, 0)?;
    vmcs.write32(Vmcs32::PageFaultErrorCodeMatch, 0)?;
    vmcs.write32(Vmcs32::Cr3TargetCount, 0)?;
    vmcs.write32(Vmcs32::ExitMsrStoreCount, 0)?;
    vmcs.write32(Vmcs32::ExitMsrLoadCount, 0)?;
    vmcs.write32(Vmcs32::EntryMsrLoadCount, 0)?;
    vmcs.write32(Vmcs32::EntryInterruptionInfo, 0)
}

pub fn write_tables(vmcs: &mut impl VmcsAccess, tables: &GuestTables) -> Result<(), VmFail> {
    vmcs.write64(Vmcs64::EptPointer, tables.eptp)?;
    vmcs.write64(Vmcs64::MsrBitmaps, tables.msr_bitmap)?;
    vmcs.write64(Vmcs64::IoBitmapA, tables.io_bitmap_a)?;
    vmcs.write64(Vmcs64::IoBitmapB, tables.io_bitmap_b)?;
    if tables.vpid != 0 {
        vmcs.write16(Vmcs16::Vpid, tables.vpid)?;
    }
    if let Some(page) = tables.virtual_apic {
        // Nothing requested or in service, no EOI exits yet (`irq_exits` keeps them), and the TPR
        // threshold unused: with virtual-interrupt delivery TPR writes cause no TPR-below-threshold
        // exits (SDM Vol. 3C 29.1.2).
        vmcs.write64(Vmcs64::VirtualApicAddress, page)?;
        for field in [
            Vmcs64::EoiExitBitmap0,
            Vmcs64::EoiExitBitmap1,
            Vmcs64::EoiExitBitmap2,
            Vmcs64::EoiExitBitmap3,
        ] {
            vmcs.write64(field, 0)?;
        }
        vmcs.write16(Vmcs16::GuestInterruptStatus, 0)?;
        vmcs.write32(Vmcs32::TprThreshold, 0)?;
    }
    Ok(())
}

pub fn write_host_state(vmcs: &mut impl VmcsAccess, host: &HostState) -> Result<(), VmFail> {
    vmcs.write_natural(VmcsNatural::HostCr0, host.cr0)?;
    vmcs.write_natural(VmcsNatural::HostCr3, host.cr3)?;
    vmcs.write_natural(VmcsNatural::HostCr4, host.cr4)?;
    vmcs.write16(Vmcs16::HostCsSelector, host.code_selector)?;
    for field in [
        Vmcs16::HostSsSelector,
        Vmcs16::HostDsSelector,
        Vmcs16::HostEsSelector,
    ] {
        vmcs.write16(field, host.data_selector)?;
    }
    // SDM 27.2.3: FS and GS selectors may be 0; their bases come from the base fields.
    vmcs.write16(Vmcs16::HostFsSelector, 0)?;
    vmcs.write16(Vmcs16::HostGsSelector, 0)?;
    vmcs.write16(Vmcs16::HostTrSelector, host.tr_selector)?;
    vmcs.write_natural(VmcsNatural::HostFsBase, host.fs_base)?;
    vmcs.write_natural(VmcsNatural::HostGsBase, host.gs_base)?;
    vmcs.write_natural(VmcsNatural::HostTrBase, host.tr_base)?;
    vmcs.write_natural(VmcsNatural::HostGdtrBase, host.gdtr_base)?;
    vmcs.write_natural(VmcsNatural::HostIdtrBase, host.idtr_base)?;
    // The kernel never uses SYSENTER; zero keeps a stray one from going anywhere.
    vmcs.write32(Vmcs32::HostIa32SysenterCs, 0)?;
    vmcs.write_natural(VmcsNatural::HostIa32SysenterEsp, 0)?;
    vmcs.write_natural(VmcsNatural::HostIa32SysenterEip, 0)?;
    vmcs.write64(Vmcs64::HostIa32Efer, host.efer)?;
    vmcs.write_natural(VmcsNatural::HostRip, host.rip)
}

/// The guest's state at its first instruction (guest boot protocol, `guest_layout`; Linux's 64-bit
/// boot protocol, `linux_boot`). RDI and RSI are general registers, the caller's to load.
pub fn write_guest_start(
    vmcs: &mut impl VmcsAccess,
    caps: &VmxCaps,
    start: &GuestStart,
) -> Result<(), VmFail> {
    // CR0/CR4 must hold the VMX fixed bits (SDM A.7/A.8); the masks make the guest own every other bit,
    // and the read shadows show it the values it expects.
    vmcs.write_natural(VmcsNatural::GuestCr0, caps.fix_cr0(GUEST_CR0))?;
    vmcs.write_natural(VmcsNatural::GuestCr4, caps.fix_cr4(GUEST_CR4 | CR4_VMXE))?;
    vmcs.write_natural(
        VmcsNatural::Cr0GuestHostMask,
        caps.cr0_fixed0 | !caps.cr0_fixed1,
    )?;
    vmcs.write_natural(
        VmcsNatural::Cr4GuestHostMask,
        caps.cr4_fixed0 | !caps.cr4_fixed1,
    )?;
    vmcs.write_natural(VmcsNatural::Cr0ReadShadow, GUEST_CR0)?;
    vmcs.write_natural(VmcsNatural::Cr4ReadShadow, GUEST_CR4)?;
    vmcs.write_natural(VmcsNatural::GuestCr3, start.cr3)?;
    vmcs.write_natural(VmcsNatural::GuestDr7, 0x400)?;
    vmcs.write_natural(VmcsNatural::GuestRsp, start.rsp)?;
    vmcs.write_natural(VmcsNatural::GuestRip, start.rip)?;
    vmcs.write_natural(VmcsNatural::GuestRflags, RFLAGS_FIXED)?;
    vmcs.write64(Vmcs64::GuestIa32Efer, GUEST_EFER)?;

    let flat = 0xFFFF_FFFF;
    let gdt = &start.gdt;
    write_segment(vmcs, Segment::Cs, gdt.code_selector, 0, flat, AR_CODE64)?;
    for seg in [
        Segment::Ss,
        Segment::Ds,
        Segment::Es,
        Segment::Fs,
        Segment::Gs,
    ] {
        write_segment(vmcs, seg, gdt.data_selector, 0, flat, AR_DATA)?;
    }
    write_segment(vmcs, Segment::Ldtr, 0, 0, 0, AR_UNUSABLE)?;
    write_segment(
        vmcs,
        Segment::Tr,
        gdt.tss_selector,
        gdt.tss_base,
        guest_layout::TSS_LIMIT,
        AR_TSS_BUSY64,
    )?;
    vmcs.write_natural(VmcsNatural::GuestGdtrBase, gdt.base)?;
    vmcs.write32(Vmcs32::GuestGdtrLimit, u32::from(gdt.limit))?;
    vmcs.write_natural(VmcsNatural::GuestIdtrBase, 0)?;
    vmcs.write32(Vmcs32::GuestIdtrLimit, 0)?;

    vmcs.write32(Vmcs32::GuestInterruptibilityState, 0)?;
    vmcs.write32(Vmcs32::GuestActivityState, 0)?;
    vmcs.write_natural(VmcsNatural::GuestPendingDebugExceptions, 0)?;
    vmcs.write64(Vmcs64::VmcsLinkPointer, NO_VMCS_LINK)?;
    vmcs.write64(Vmcs64::GuestIa32Debugctl, 0)?;
    vmcs.write32(Vmcs32::GuestIa32SysenterCs, 0)?;
    vmcs.write_natural(VmcsNatural::GuestIa32SysenterEsp, 0)?;
    vmcs.write_natural(VmcsNatural::GuestIa32SysenterEip, 0)
}

#[derive(Clone, Copy)]
enum Segment {
    Es,
    Cs,
    Ss,
    Ds,
    Fs,
    Gs,
    Ldtr,
    Tr,
}

fn write_segment(
    vmcs: &mut impl VmcsAccess,
    seg: Segment,
    selector: u16,
    base: u64,
    limit: u32,
    access: u32,
) -> Result<(), VmFail> {
    use Segment::*;
    let (sel, base_f, limit_f, ar_f) = match seg {
        Es => (
            Vmcs16::GuestEsSelector,
            VmcsNatural::GuestEsBase,
            Vmcs32::GuestEsLimit,
            Vmcs32::GuestEsAccessRights,
        ),
        Cs => (
            Vmcs16::GuestCsSelector,
            VmcsNatural::GuestCsBase,
            Vmcs32::GuestCsLimit,
            Vmcs32::GuestCsAccessRights,
        ),
        Ss => (
            Vmcs16::GuestSsSelector,
            VmcsNatural::GuestSsBase,
            Vmcs32::GuestSsLimit,
            Vmcs32::GuestSsAccessRights,
        ),
        Ds => (
            Vmcs16::GuestDsSelector,
            VmcsNatural::GuestDsBase,
            Vmcs32::GuestDsLimit,
            Vmcs32::GuestDsAccessRights,
        ),
        Fs => (
            Vmcs16::GuestFsSelector,
            VmcsNatural::GuestFsBase,
            Vmcs32::GuestFsLimit,
            Vmcs32::GuestFsAccessRights,
        ),
        Gs => (
            Vmcs16::GuestGsSelector,
            VmcsNatural::GuestGsBase,
            Vmcs32::GuestGsLimit,
            Vmcs32::GuestGsAccessRights,
        ),
        Ldtr => (
            Vmcs16::GuestLdtrSelector,
            VmcsNatural::GuestLdtrBase,
            Vmcs32::GuestLdtrLimit,
            Vmcs32::GuestLdtrAccessRights,
        ),
        Tr => (
            Vmcs16::GuestTrSelector,
            VmcsNatural::GuestTrBase,
            Vmcs32::GuestTrLimit,
            Vmcs32::GuestTrAccessRights,
        ),
    };
    vmcs.write16(sel, selector)?;
    vmcs.write_natural(base_f, base)?;
    vmcs.write32(limit_f, limit)?;
    vmcs.write32(ar_f, access)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmm::guest_layout::GuestGdt;
    use crate::vmx::vmcs::FakeVmcs;

    fn caps() -> VmxCaps {
        let mut caps = VmxCaps::decode(None);
        caps.cr0_fixed0 = 0x8000_0021;
        caps.cr0_fixed1 = 0xFFFF_FFFF;
        caps.cr4_fixed0 = 0x2000;
        caps.cr4_fixed1 = 0x003F_FFFF;
        caps
    }

    #[test]
    fn guest_starts_in_64_bit_mode_with_hidden_vmxe() {
        let mut vmcs = FakeVmcs::new();
        let start = GuestStart {
            rip: 0xffff_ffff_8000_0000,
            rsp: 0x8000,
            rdi: 0x1000,
            rsi: 0,
            cr3: 0x10000,
            gdt: GuestGdt::EXITLESS,
        };
        write_guest_start(&mut vmcs, &caps(), &start).unwrap();
        assert_eq!(vmcs.get(VmcsNatural::GuestRip as u32), Some(start.rip));
        assert_eq!(vmcs.get(Vmcs16::GuestCsSelector as u32), Some(0x08));
        assert_eq!(vmcs.get(Vmcs16::GuestSsSelector as u32), Some(0x10));
        assert_eq!(vmcs.get(Vmcs16::GuestTrSelector as u32), Some(0x18));
        assert_eq!(
            vmcs.get(VmcsNatural::GuestGdtrBase as u32),
            Some(guest_layout::GDT_GPA)
        );
        assert_eq!(vmcs.get(Vmcs32::GuestGdtrLimit as u32), Some(39));
        assert_eq!(
            vmcs.get(Vmcs32::GuestCsAccessRights as u32),
            Some(0xA09B),
            "L=1, P, code"
        );
        assert_eq!(
            vmcs.get(Vmcs32::GuestLdtrAccessRights as u32),
            Some(1 << 16),
            "LDTR unusable"
        );
        assert_eq!(
            vmcs.get(Vmcs32::GuestTrAccessRights as u32),
            Some(0x8B),
            "busy 64-bit TSS"
        );
        let cr4 = vmcs.get(VmcsNatural::GuestCr4 as u32).unwrap();
        assert_ne!(cr4 & CR4_VMXE, 0, "VMXE is a fixed-1 bit in VMX operation");
        assert_eq!(
            vmcs.get(VmcsNatural::Cr4ReadShadow as u32),
            Some(CR4_PAE),
            "guest sees no VMXE"
        );
        assert_ne!(
            vmcs.get(VmcsNatural::Cr4GuestHostMask as u32).unwrap() & CR4_VMXE,
            0
        );
        assert_eq!(
            vmcs.get(Vmcs64::GuestIa32Efer as u32),
            Some(0xD00),
            "LME|LMA|NXE"
        );
        assert_eq!(vmcs.get(Vmcs64::VmcsLinkPointer as u32), Some(u64::MAX));
        assert_eq!(
            vmcs.get(VmcsNatural::GuestRflags as u32),
            Some(2),
            "interrupts off"
        );
    }

    #[test]
    fn a_guest_gdt_other_than_ours_is_used_as_given() {
        let mut vmcs = FakeVmcs::new();
        let gdt = GuestGdt {
            base: 0x5000,
            limit: 47,
            code_selector: 0x10,
            data_selector: 0x18,
            tss_selector: 0x20,
            tss_base: 0x6000,
        };
        let start = GuestStart {
            rip: 0x100_0200,
            rsp: 0x8000,
            rdi: 0,
            rsi: 0x7000,
            cr3: 0x10000,
            gdt,
        };
        write_guest_start(&mut vmcs, &caps(), &start).unwrap();
        assert_eq!(vmcs.get(Vmcs16::GuestCsSelector as u32), Some(0x10));
        for ds in [
            Vmcs16::GuestDsSelector,
            Vmcs16::GuestEsSelector,
            Vmcs16::GuestSsSelector,
        ] {
            assert_eq!(vmcs.get(ds as u32), Some(0x18));
        }
        assert_eq!(vmcs.get(Vmcs16::GuestTrSelector as u32), Some(0x20));
        assert_eq!(vmcs.get(VmcsNatural::GuestTrBase as u32), Some(0x6000));
        assert_eq!(vmcs.get(VmcsNatural::GuestGdtrBase as u32), Some(0x5000));
        assert_eq!(vmcs.get(Vmcs32::GuestGdtrLimit as u32), Some(47));
    }

    #[test]
    fn host_state_and_tables_are_written() {
        let mut vmcs = FakeVmcs::new();
        let host = HostState {
            code_selector: 8,
            data_selector: 16,
            tr_selector: 24,
            gs_base: 0xffff_ffff_8010_0000,
            tr_base: 0xffff_ffff_8010_0040,
            gdtr_base: 0xffff_ffff_8010_00b0,
            rip: 0xffff_ffff_8000_1234,
            ..Default::default()
        };
        write_host_state(&mut vmcs, &host).unwrap();
        assert_eq!(vmcs.get(Vmcs16::HostTrSelector as u32), Some(24));
        assert_eq!(vmcs.get(VmcsNatural::HostGsBase as u32), Some(host.gs_base));
        assert_eq!(vmcs.get(VmcsNatural::HostTrBase as u32), Some(host.tr_base));
        assert_eq!(
            vmcs.get(VmcsNatural::HostGdtrBase as u32),
            Some(host.gdtr_base)
        );
        assert_eq!(vmcs.get(VmcsNatural::HostRip as u32), Some(host.rip));
        let tables = GuestTables {
            eptp: 0x5000 | 0x5E,
            msr_bitmap: 0x6000,
            io_bitmap_a: 0x7000,
            io_bitmap_b: 0x8000,
            vpid: 1,
            virtual_apic: None,
        };
        write_tables(&mut vmcs, &tables).unwrap();
        assert_eq!(vmcs.get(Vmcs64::EptPointer as u32), Some(0x505E));
        assert_eq!(vmcs.get(Vmcs16::Vpid as u32), Some(1));
        assert_eq!(vmcs.get(Vmcs64::VirtualApicAddress as u32), None);
        // APICv: the page, and its delivery state starting empty.
        let apicv = GuestTables {
            virtual_apic: Some(0x9000),
            ..tables
        };
        write_tables(&mut vmcs, &apicv).unwrap();
        assert_eq!(vmcs.get(Vmcs64::VirtualApicAddress as u32), Some(0x9000));
        assert_eq!(vmcs.get(Vmcs64::EoiExitBitmap2 as u32), Some(0));
        assert_eq!(vmcs.get(Vmcs16::GuestInterruptStatus as u32), Some(0));
    }
}
