//! Exit handlers for interrupts: the mediated IOAPIC (EPT violations in its window, emulated by
//! decoding the guest's instruction), ELI's #NP exits and shadow-IDT upkeep, and injection before
//! each VM entry. Dispatched from `exits`.

use super::exits::{stopped, Handled, HostServices, Vcpu};
use super::guest_memory::GuestMemory;
use super::interrupts::{IOAPIC_GPA, IOAPIC_WINDOW};
use super::mmio_decode::{self, MmioAccess, MAX_INSTRUCTION_LEN};
use super::msix::MsixOutcome;
use crate::caps::vmx::PrimaryControls;
use crate::config::InterruptMode;
use crate::vmx::exit::{EventType, Gpr, InterruptionInfo};
use crate::vmx::shadow_idt::{
    GateDescriptor, NpCause, ShadowIdt, VectorSet, NP_VECTOR, SHADOW_IDT_LIMIT,
};
use crate::vmx::vmcs::{VmFail, VmcsAccess};
use crate::vmx::vmcs_fields::{Vmcs32, Vmcs32Ro, VmcsNatural};
use alloc::format;

/// Guest-physical (and, through the guest's identity map, guest-linear) address of the shadow IDT: a
/// host frame mapped read-only in the MMIO hole, where no guest RAM or device lives.
pub const SHADOW_IDT_GPA: u64 = 0xFEB0_0000;
/// Interruptibility: blocking by STI (bit 0) or MOV SS (bit 1) (SDM 25.4.2).
const BLOCKING_STI_MOV_SS: u32 = 0b11;
const RFLAGS_IF: u64 = 1 << 9;
const ACTIVITY_ACTIVE: u32 = 0;
/// EPT-violation qualification bit 1: the access was a write (SDM Table 28-7).
const EPT_WRITE: u64 = 1 << 1;
const PAGE: u64 = 4096;

/// ELI's per-guest state: the shadow IDT and the guest-physical pages of the guest's own IDT, which
/// are write-protected so that changes reach the shadow.
#[derive(Debug)]
pub struct EliState {
    pub shadow: ShadowIdt,
    protected: [Option<u64>; 2],
}

impl Default for EliState {
    fn default() -> Self {
        Self {
            shadow: ShadowIdt::new(&[], 0, VectorSet::new()),
            protected: [None; 2],
        }
    }
}

/// #NP and other exceptions the exception bitmap sends here.
pub(super) fn exception(
    vmcs: &mut impl VmcsAccess,
    vcpu: &mut Vcpu,
    host: &mut impl HostServices,
) -> Result<Handled, VmFail> {
    let info = InterruptionInfo::decode(vmcs.read32_ro(Vmcs32Ro::ExitInterruptionInfo)?);
    let rip = vmcs.read_natural(VmcsNatural::GuestRip)?;
    let (Some(eli), NP_VECTOR) = (vcpu.eli.as_mut(), info.vector) else {
        return Ok(stopped(format!(
            "unexpected exception vector {} at rip {rip:#x}",
            info.vector
        )));
    };
    let error_code = vmcs.read32_ro(Vmcs32Ro::ExitInterruptionErrorCode)?;
    let vectoring = InterruptionInfo::decode_valid(vmcs.read32_ro(Vmcs32Ro::IdtVectoringInfo)?);
    Ok(match eli.shadow.classify_np(error_code, vectoring) {
        // SDM 27.2.4: the external interrupt was acknowledged and is in service; it is the host's.
        NpCause::HostInterrupt(vector) => {
            vcpu.interrupts.hidden_vector(vector, host);
            Handled::Stay
        }
        NpCause::Reflect { vector, error_code } => {
            vmcs.write32(Vmcs32::EntryInterruptionInfo, InterruptionInfo::hardware_exception(vector, true).encode())?;
            vmcs.write32(Vmcs32::EntryExceptionErrorCode, error_code)?;
            Handled::Stay
        }
        NpCause::GuestSoftwareInterrupt(vector) => {
            stopped(format!("INT {vector:#x} at rip {rip:#x}: software interrupts to hidden vectors are not supported"))
        }
    })
}

/// EPT violations that are not faults: the mediated IOAPIC, and ELI's write-protected guest IDT.
/// `None` means the access is the guest's fault.
pub(super) fn ept_violation(
    vmcs: &mut impl VmcsAccess,
    vcpu: &mut Vcpu,
    mem: &mut GuestMemory<'_>,
    host: &mut impl HostServices,
    gpa: u64,
    qualification: u64,
) -> Result<Option<Handled>, VmFail> {
    if (IOAPIC_GPA..IOAPIC_GPA + IOAPIC_WINDOW).contains(&gpa)
        && !vcpu.interrupts.ioapic.assigned().is_empty()
    {
        return ioapic_access(vmcs, vcpu, mem, host, gpa - IOAPIC_GPA).map(Some);
    }
    if vcpu.pci.msix_traps(gpa) {
        return msix_access(vmcs, vcpu, mem, host, gpa).map(Some);
    }
    let page = gpa & !(PAGE - 1);
    let protected = vcpu
        .eli
        .as_ref()
        .is_some_and(|eli| eli.protected.contains(&Some(page)));
    if qualification & EPT_WRITE == 0 || !protected {
        return Ok(None);
    }
    // A write to the guest's own IDT: perform it for the guest, then rebuild the shadow from what it
    // wrote (the page stays write-protected; the IDT has a page to itself in well-behaved guests).
    let rip = vmcs.read_natural(VmcsNatural::GuestRip)?;
    let decoded = match fetch_and_decode(vmcs, mem, rip)? {
        Ok(d) => d,
        Err(why) => {
            return Ok(Some(stopped(format!(
                "write to its IDT at rip {rip:#x}: {why}"
            ))))
        }
    };
    let MmioAccess::Write(store) = decoded.access else {
        return Ok(Some(stopped(format!(
            "IDT write at rip {rip:#x} decoded as a read"
        ))));
    };
    let rsp = vmcs.read_natural(VmcsNatural::GuestRsp)?;
    let data = mmio_decode::write_data(&store, |r| super::exits::gpr_value(&vcpu.regs, rsp, r));
    let size = u64::from(store.size.bytes());
    match mem.slice_mut(gpa, size) {
        Some(bytes) => bytes.copy_from_slice(&data.to_le_bytes()[..size as usize]),
        None => {
            return Ok(Some(stopped(format!(
                "IDT write at {gpa:#x} outside guest memory"
            ))))
        }
    }
    rebuild_shadow(vmcs, vcpu, mem, host)?;
    vmcs.write_natural(VmcsNatural::GuestRip, rip + u64::from(decoded.length))?;
    Ok(Some(Handled::Stay))
}

/// Fetches up to 15 instruction bytes at `rip` through the guest's page tables and decodes them.
fn fetch_and_decode(
    vmcs: &mut impl VmcsAccess,
    mem: &GuestMemory<'_>,
    rip: u64,
) -> Result<Result<mmio_decode::Decoded, alloc::string::String>, VmFail> {
    let cr3 = vmcs.read_natural(VmcsNatural::GuestCr3)?;
    let mut bytes = [0u8; MAX_INSTRUCTION_LEN];
    let mut fetched = 0;
    while fetched < bytes.len() {
        match mem.read_virt::<1>(cr3, rip + fetched as u64) {
            Some([b]) => bytes[fetched] = b,
            None => break,
        }
        fetched += 1;
    }
    Ok(mmio_decode::decode(&bytes[..fetched])
        .map_err(|e| format!("instruction cannot be emulated: {e:?}")))
}

/// The guest loaded a new IDT (LIDT): protect its pages, rebuild the shadow, keep the CPU on it.
pub(super) fn guest_idt_loaded(
    vmcs: &mut impl VmcsAccess,
    vcpu: &mut Vcpu,
    mem: &mut GuestMemory<'_>,
    host: &mut impl HostServices,
) -> Result<(), VmFail> {
    let cr3 = vmcs.read_natural(VmcsNatural::GuestCr3)?;
    let (base, limit) = vcpu.guest_idtr;
    let Some(eli) = vcpu.eli.as_mut() else {
        return Ok(());
    };
    for page in eli.protected.into_iter().flatten() {
        host.set_guest_page_writable(page, true);
    }
    let first = mem.translate(cr3, base).map(|g| g & !(PAGE - 1));
    let last = mem
        .translate(cr3, base + u64::from(limit))
        .map(|g| g & !(PAGE - 1));
    eli.protected = [first, last.filter(|l| Some(*l) != first)];
    for page in eli.protected.into_iter().flatten() {
        host.set_guest_page_writable(page, false);
    }
    vmcs.write_natural(VmcsNatural::GuestIdtrBase, SHADOW_IDT_GPA)?;
    vmcs.write32(Vmcs32::GuestIdtrLimit, u32::from(SHADOW_IDT_LIMIT))?;
    rebuild_shadow(vmcs, vcpu, mem, host)
}

/// Re-reads the guest's IDT and writes the shadow: present gates only for the guest's device vectors
/// and the virtual interrupts it has pending or in service (injected through the shadow).
fn rebuild_shadow(
    vmcs: &mut impl VmcsAccess,
    vcpu: &mut Vcpu,
    mem: &mut GuestMemory<'_>,
    host: &mut impl HostServices,
) -> Result<(), VmFail> {
    let cr3 = vmcs.read_natural(VmcsNatural::GuestCr3)?;
    let (base, limit) = vcpu.guest_idtr;
    let assigned = eli_vectors(vcpu);
    let Some(eli) = vcpu.eli.as_mut() else {
        return Ok(());
    };
    let mut gates = [GateDescriptor::NOT_PRESENT; 256];
    let count = ((u64::from(limit) + 1) / 16).min(256) as usize;
    for (i, gate) in gates.iter_mut().enumerate().take(count) {
        if let Some(bytes) = mem.read_virt::<16>(cr3, base + i as u64 * 16) {
            *gate = GateDescriptor::from_bytes(bytes);
        }
    }
    // In place: a ShadowIdt is 8 KiB, too much to move around on the kernel stack.
    eli.shadow.load(&gates[..count], limit);
    eli.shadow.set_assigned(assigned);
    let mut bytes = [0u8; 4096];
    for (chunk, gate) in bytes.chunks_exact_mut(16).zip(eli.shadow.shadow()) {
        chunk.copy_from_slice(&gate.to_bytes());
    }
    host.write_shadow_idt(&bytes);
    Ok(())
}

fn eli_vectors(vcpu: &Vcpu) -> VectorSet {
    let mut set = vcpu.interrupts.device_vectors;
    for vector in 0x20..=0xFFu8 {
        if vcpu.interrupts.apic.is_requested(vector) || vcpu.interrupts.apic.is_in_service(vector) {
            set.insert(vector);
        }
    }
    set
}

/// Emulates one guest instruction that touched the IOAPIC window at `offset`.
fn ioapic_access(
    vmcs: &mut impl VmcsAccess,
    vcpu: &mut Vcpu,
    mem: &mut GuestMemory<'_>,
    host: &mut impl HostServices,
    offset: u64,
) -> Result<Handled, VmFail> {
    let rip = vmcs.read_natural(VmcsNatural::GuestRip)?;
    let decoded = match fetch_and_decode(vmcs, mem, rip)? {
        Ok(d) => d,
        Err(why) => return Ok(stopped(format!("IOAPIC access at rip {rip:#x}: {why}"))),
    };
    let rsp = vmcs.read_natural(VmcsNatural::GuestRsp)?;
    let size = decoded.access.size().bytes();
    match decoded.access {
        MmioAccess::Read(load) => {
            let (value, _) = vcpu.interrupts.ioapic_access(offset, size, None, host);
            let dest = load.dest.gpr;
            let old = super::exits::gpr_value(&vcpu.regs, rsp, dest);
            let new = mmio_decode::apply_read(old, &load, u64::from(value));
            if dest == Gpr::Rsp {
                return Ok(stopped(format!("IOAPIC read into RSP at rip {rip:#x}")));
            }
            super::exits::set_gpr(&mut vcpu.regs, dest, new);
        }
        MmioAccess::Write(store) => {
            let data =
                mmio_decode::write_data(&store, |r| super::exits::gpr_value(&vcpu.regs, rsp, r));
            let (_, vectors_changed) =
                vcpu.interrupts
                    .ioapic_access(offset, size, Some(data as u32), host);
            if vectors_changed && vcpu.eli.is_some() && vcpu.guest_idtr.1 != 0 {
                rebuild_shadow(vmcs, vcpu, mem, host)?;
            }
        }
    }
    // EPT violations report no instruction length: the decoder's length moves RIP on.
    vmcs.write_natural(VmcsNatural::GuestRip, rip + u64::from(decoded.length))?;
    Ok(Handled::Stay)
}

/// Emulates one guest instruction that touched a page holding an assigned function's MSI-X table
/// or PBA (left out of EPT): table accesses go to the guest's model, the rest to the device.
fn msix_access(
    vmcs: &mut impl VmcsAccess,
    vcpu: &mut Vcpu,
    mem: &mut GuestMemory<'_>,
    host: &mut impl HostServices,
    gpa: u64,
) -> Result<Handled, VmFail> {
    let rip = vmcs.read_natural(VmcsNatural::GuestRip)?;
    let decoded = match fetch_and_decode(vmcs, mem, rip)? {
        Ok(d) => d,
        Err(why) => return Ok(stopped(format!("MSI-X page access at rip {rip:#x}: {why}"))),
    };
    let rsp = vmcs.read_natural(VmcsNatural::GuestRsp)?;
    let size = decoded.access.size().bytes();
    match decoded.access {
        MmioAccess::Read(load) => {
            let value = match vcpu.pci.msix_access(gpa, size, None) {
                Some(MsixOutcome::Forward { hpa }) => host.device_mmio(hpa, size, None),
                Some(MsixOutcome::Emulated(v)) => v,
                Some(MsixOutcome::Request(_)) | None => u64::MAX,
            };
            let dest = load.dest.gpr;
            if dest == Gpr::Rsp {
                return Ok(stopped(format!("MSI-X read into RSP at rip {rip:#x}")));
            }
            let old = super::exits::gpr_value(&vcpu.regs, rsp, dest);
            let new = mmio_decode::apply_read(old, &load, value);
            super::exits::set_gpr(&mut vcpu.regs, dest, new);
        }
        MmioAccess::Write(store) => {
            let data =
                mmio_decode::write_data(&store, |r| super::exits::gpr_value(&vcpu.regs, rsp, r));
            match vcpu.pci.msix_access(gpa, size, Some(data)) {
                Some(MsixOutcome::Forward { hpa }) => {
                    host.device_mmio(hpa, size, Some(data));
                }
                Some(MsixOutcome::Request(req)) => {
                    let vector = host.route_guest_msix(req);
                    // A change of device vectors reaches ELI's shadow at the next VM entry.
                    vcpu.interrupts.msix_vector(req.bdf, req.entry, vector);
                }
                Some(MsixOutcome::Emulated(_)) | None => {}
            }
        }
    }
    vmcs.write_natural(VmcsNatural::GuestRip, rip + u64::from(decoded.length))?;
    Ok(Handled::Stay)
}

/// Before each VM entry: inject the highest deliverable virtual interrupt if the guest can take it
/// now (RFLAGS.IF = 1, no STI/MOV-SS blocking: SDM 26.3.1.5), otherwise ask for an interrupt-window
/// exit; in ELI mode keep the shadow's gates in step with the virtual interrupts.
pub fn prepare_entry(
    vmcs: &mut impl VmcsAccess,
    vcpu: &mut Vcpu,
    host: &mut impl HostServices,
) -> Result<(), VmFail> {
    let now = host.rdtsc();
    vcpu.interrupts.advance_to(now);
    if let Some((usual, shift)) = vcpu.preemption {
        // Come back when the guest's virtual LAPIC timer is due, or after the host's usual period.
        let until_due = vcpu
            .interrupts
            .next_timer_due()
            .map(|due| due.saturating_sub(now) >> shift);
        let value = until_due.map_or(usual, |t| t.min(u64::from(usual)) as u32);
        if value != vcpu.preemption_written {
            vmcs.write32(Vmcs32::PreemptionTimerValue, value)?;
            vcpu.preemption_written = value;
        }
    }
    if vcpu.interrupts.mode == InterruptMode::Eli
        && vcpu.interrupts.take_virtual_change()
        && vcpu.guest_idtr.1 != 0
    {
        // Rebuilding needs guest memory; cheap path: only the assigned set changes.
        let assigned = eli_vectors(vcpu);
        if let Some(eli) = vcpu.eli.as_mut() {
            eli.shadow.set_assigned(assigned);
            let mut bytes = [0u8; 4096];
            for (chunk, gate) in bytes.chunks_exact_mut(16).zip(eli.shadow.shadow()) {
                chunk.copy_from_slice(&gate.to_bytes());
            }
            host.write_shadow_idt(&bytes);
        }
    }
    let Some(vector) = vcpu.interrupts.pending() else {
        if vcpu.window_exiting {
            set_primary(vmcs, PrimaryControls::INTERRUPT_WINDOW_EXITING, false)?;
            vcpu.window_exiting = false;
        }
        return Ok(());
    };
    if InterruptionInfo::decode(vmcs.read32(Vmcs32::EntryInterruptionInfo)?).valid {
        return Ok(()); // an exception goes first; the interrupt waits for the next entry
    }
    let rflags = vmcs.read_natural(VmcsNatural::GuestRflags)?;
    let blocking = vmcs.read32(Vmcs32::GuestInterruptibilityState)? & BLOCKING_STI_MOV_SS;
    let can_take = rflags & RFLAGS_IF != 0 && blocking == 0;
    if can_take {
        vmcs.write32(
            Vmcs32::EntryInterruptionInfo,
            InterruptionInfo::inject(vector, EventType::ExternalInterrupt, false).encode(),
        )?;
        vmcs.write32(Vmcs32::GuestActivityState, ACTIVITY_ACTIVE)?;
        vcpu.interrupts.injected(vector, host);
    }
    if can_take == vcpu.window_exiting {
        set_primary(vmcs, PrimaryControls::INTERRUPT_WINDOW_EXITING, !can_take)?;
        vcpu.window_exiting = !can_take;
    }
    Ok(())
}

fn set_primary(vmcs: &mut impl VmcsAccess, bit: PrimaryControls, on: bool) -> Result<(), VmFail> {
    let current = vmcs.read32(Vmcs32::PrimaryProcBasedControls)?;
    let new = if on {
        current | bit.bits()
    } else {
        current & !bit.bits()
    };
    if new != current {
        vmcs.write32(Vmcs32::PrimaryProcBasedControls, new)?;
    }
    Ok(())
}
