//! Exit handlers for interrupts: the mediated IOAPIC (EPT violations in its window, emulated by
//! decoding the guest's instruction), assigned functions' MSI-X pages, and, before each VM entry, the
//! preemption timer and the delivery of virtual interrupts (injected, or posted to the virtual-APIC
//! page under APICv). Dispatched from `exits`.

use super::guest_memory::GuestMemory;
use super::host_clock::preemption_value;
use super::interrupts::{IOAPIC_GPA, IOAPIC_WINDOW};
use super::mmio_decode::{self, MmioAccess, MAX_INSTRUCTION_LEN};
use super::msix::MsixOutcome;
use super::vcpu::{gpr_value, set_gpr, stopped, Handled, HostServices, Vcpu};
use super::vm::Vm;
use crate::caps::vmx::PrimaryControls;
use crate::config::InterruptMode;
use crate::virq::virtual_apic::InterruptStatus;
use crate::vmx::exit::{EventType, Gpr, InterruptionInfo};
use crate::vmx::vmcs::{VmFail, VmcsAccess};
use crate::vmx::vmcs_fields::{Vmcs16, Vmcs32, Vmcs64, VmcsNatural};
use alloc::format;

/// Interruptibility: blocking by STI (bit 0) or MOV SS (bit 1) (SDM 25.4.2).
const BLOCKING_STI_MOV_SS: u32 = 0b11;
const RFLAGS_IF: u64 = 1 << 9;
const ACTIVITY_ACTIVE: u32 = 0;
const ACTIVITY_HLT: u32 = 1;

/// EPT violations that are not faults: the mediated IOAPIC and the pages of assigned functions' MSI-X
/// tables. `None` means the access is the guest's fault.
pub(super) fn ept_violation(
    vmcs: &mut impl VmcsAccess,
    vcpu: &mut Vcpu,
    vm: &mut Vm,
    mem: &mut GuestMemory<'_>,
    host: &mut impl HostServices,
    gpa: u64,
) -> Result<Option<Handled>, VmFail> {
    if (IOAPIC_GPA..IOAPIC_GPA + IOAPIC_WINDOW).contains(&gpa) && vm.has_ioapic {
        return ioapic_access(vmcs, vcpu, vm, mem, host, gpa - IOAPIC_GPA).map(Some);
    }
    if vm.pci.msix_traps(gpa) {
        return msix_access(vmcs, vcpu, vm, mem, host, gpa).map(Some);
    }
    Ok(None)
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

/// Emulates one guest instruction that touched the IOAPIC window at `offset`.
fn ioapic_access(
    vmcs: &mut impl VmcsAccess,
    vcpu: &mut Vcpu,
    vm: &mut Vm,
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
            let (value, _) =
                vm.interrupts
                    .ioapic_access(offset, size, None, &mut vcpu.interrupts, host);
            let dest = load.dest.gpr;
            let old = gpr_value(&vcpu.regs, rsp, dest);
            let new = mmio_decode::apply_read(old, &load, u64::from(value));
            if dest == Gpr::Rsp {
                return Ok(stopped(format!("IOAPIC read into RSP at rip {rip:#x}")));
            }
            set_gpr(&mut vcpu.regs, dest, new);
        }
        MmioAccess::Write(store) => {
            let data = mmio_decode::write_data(&store, |r| gpr_value(&vcpu.regs, rsp, r));
            vm.interrupts.ioapic_access(
                offset,
                size,
                Some(data as u32),
                &mut vcpu.interrupts,
                host,
            );
        }
    }
    // EPT violations report no instruction length: the decoder's length moves RIP on.
    Ok(Handled::SkipDecoded(decoded.length))
}

/// Emulates one guest instruction that touched a page holding an assigned function's MSI-X table
/// or PBA (left out of EPT): table accesses go to the guest's model, the rest to the device.
fn msix_access(
    vmcs: &mut impl VmcsAccess,
    vcpu: &mut Vcpu,
    vm: &mut Vm,
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
            let value = match vm.pci.msix_access(gpa, size, None) {
                Some(MsixOutcome::Forward { hpa }) => host.device_mmio(hpa, size, None),
                Some(MsixOutcome::Emulated(v)) => v,
                Some(MsixOutcome::Request(_)) | None => u64::MAX,
            };
            let dest = load.dest.gpr;
            if dest == Gpr::Rsp {
                return Ok(stopped(format!("MSI-X read into RSP at rip {rip:#x}")));
            }
            let old = gpr_value(&vcpu.regs, rsp, dest);
            let new = mmio_decode::apply_read(old, &load, value);
            set_gpr(&mut vcpu.regs, dest, new);
        }
        MmioAccess::Write(store) => {
            let data = mmio_decode::write_data(&store, |r| gpr_value(&vcpu.regs, rsp, r));
            match vm.pci.msix_access(gpa, size, Some(data)) {
                Some(MsixOutcome::Forward { hpa }) => {
                    host.device_mmio(hpa, size, Some(data));
                }
                Some(MsixOutcome::Request(req)) => {
                    let vector = host.route_guest_msix(req);
                    vm.interrupts.msix_vector(req.bdf, req.entry, vector);
                }
                Some(MsixOutcome::Emulated(_)) | None => {}
            }
        }
    }
    Ok(Handled::SkipDecoded(decoded.length))
}

/// Before each VM entry: aim the VMX-preemption timer at the next time the host needs the CPU (its
/// tick, the guest's budget, or the guest's virtual LAPIC timer, whichever is first); then inject the
/// highest deliverable virtual interrupt if the guest can take it now (RFLAGS.IF = 1, no STI/MOV-SS
/// blocking: SDM 26.3.1.5), otherwise ask for an interrupt-window exit.
pub fn prepare_entry(
    vmcs: &mut impl VmcsAccess,
    vcpu: &mut Vcpu,
    host: &mut impl HostServices,
) -> Result<(), VmFail> {
    let now = host.rdtsc();
    vcpu.interrupts.advance_to(now);
    let host_deadline = host.next_host_deadline();
    let deadline = vcpu
        .interrupts
        .next_timer_due()
        .map_or(host_deadline, |due| due.min(host_deadline));
    // With the count saved at each exit, the timer still aims at the deadline written last (late only
    // by the time spent in the host since, which it does not count: SDM Vol. 3C 25.5.1): rewrite it
    // only when the deadline moved. Without, the count is reloaded at each entry: keep it current.
    if !(vcpu.preemption_saved && vcpu.preemption_deadline == deadline) {
        let value = preemption_value(now, deadline, vcpu.preemption_shift);
        if vcpu.preemption_saved || value != vcpu.preemption_written {
            vmcs.write32(Vmcs32::PreemptionTimerValue, value)?;
        }
        vcpu.preemption_deadline = deadline;
        vcpu.preemption_written = value;
    }
    if vcpu.interrupts.mode == InterruptMode::Apicv {
        return post_virtual_interrupts(vmcs, vcpu);
    }
    if vcpu.interrupts.apic.any_requested() {
        vcpu.interrupts.apic.set_tpr(host.guest_tpr());
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

/// APICv, before each entry: what the virtual x2APIC accepted goes to the virtual-APIC page, RVI is
/// raised to it (the CPU evaluates pending virtual interrupts from RVI at entry: SDM Vol. 3C
/// 29.2.1) and the EOI-exit bitmap follows the trigger modes. The CPU delivers when the guest can
/// take it, with no interrupt-window exit. A vCPU waiting in HLT with a deliverable interrupt is
/// made active: it resumes after its HLT and takes the interrupt at once, as a woken CPU would.
fn post_virtual_interrupts(vmcs: &mut impl VmcsAccess, vcpu: &mut Vcpu) -> Result<(), VmFail> {
    let posted = vcpu.interrupts.post_requested();
    if let Some(bitmap) = posted.eoi_exit_bitmap {
        let fields = [
            Vmcs64::EoiExitBitmap0,
            Vmcs64::EoiExitBitmap1,
            Vmcs64::EoiExitBitmap2,
            Vmcs64::EoiExitBitmap3,
        ];
        for (field, word) in fields.into_iter().zip(bitmap.words()) {
            vmcs.write64(field, word)?;
        }
    }
    let (Some(highest), Some(page)) = (posted.highest, vcpu.interrupts.virtual_apic()) else {
        return Ok(());
    };
    let status =
        InterruptStatus::decode(vmcs.read16(Vmcs16::GuestInterruptStatus)?).request(highest);
    vmcs.write16(Vmcs16::GuestInterruptStatus, status.encode())?;
    if page.deliverable(status) && vmcs.read32(Vmcs32::GuestActivityState)? == ACTIVITY_HLT {
        vmcs.write32(Vmcs32::GuestActivityState, ACTIVITY_ACTIVE)?;
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
