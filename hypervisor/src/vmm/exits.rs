//! VM-exit handling: the exit is decoded once into [`ExitReason`], dispatched from [`handle_exit`], and
//! every handler says what happens next ([`Next`]); RIP is advanced in one place.
//!
//! Everything here goes through [`VmcsAccess`], [`GuestMemory`] and [`HostServices`], so it is
//! unit-tested on the host with a fake VMCS.

use super::cpuid::{guest_cpuid, CpuidContext, LEAF7_ECX_OSPKE};
use super::events;
use super::guest_memory::GuestMemory;
use super::guest_platform::{COM1_GSI, COM1_PORT as COM1};
use super::irq_exits;
use super::legacy_ports::GuestRequest;
use super::measure_window::{Snapshot, MEASURE_PORT};
use super::validate::{self, GuestFeatures, Refusal};
use super::vcpu::{
    gpr_value, ExitCounters, GuestEnd, Handled, HostServices, Next, Vcpu, APIC_BASE_RESET,
};
use super::virtual_pci::{CONFIG_ADDRESS, CONFIG_DATA};
use super::vm::Vm;
use crate::vmx::exit::{
    CrAccess, CrAccessKind, ExitReason, ExitReasonField, InterruptionInfo, IoDirection,
    IoQualification,
};
use crate::vmx::vmcs::{VmFail, VmcsAccess};
use crate::vmx::vmcs_fields::{Vmcs32, Vmcs32Ro, Vmcs64, Vmcs64Ro, VmcsNatural, VmcsNaturalRo};
use alloc::format;
use alloc::string::String;
use exitless_abi::hypercall::{Hypercall, HypercallError, ABI_VERSION, EXIT_REASON_COUNT};

const APIC_BASE_WRITABLE: u64 = (1 << 11) | (1 << 10);

use crate::arch::msr;

const RFLAGS_IF: u64 = 1 << 9;
/// Guest activity state HLT (SDM 25.4.2).
const ACTIVITY_HLT: u32 = 1;
/// Interruptibility: blocking by STI (bit 0) and by MOV SS (bit 1) end when an instruction is skipped.
const BLOCKING_STI_MOV_SS: u32 = 0b11;

/// Handles the VM exit that just happened on the current VMCS.
pub fn handle_exit(
    vmcs: &mut impl VmcsAccess,
    vcpu: &mut Vcpu,
    vm: &mut Vm,
    mem: &mut GuestMemory<'_>,
    host: &mut impl HostServices,
) -> Next {
    match dispatch(vmcs, vcpu, vm, mem, host) {
        Ok(next) => next,
        Err(fail) => Next::End(GuestEnd::Stopped(format!(
            "VMREAD/VMWRITE failed while handling an exit: {fail}"
        ))),
    }
}

fn dispatch(
    vmcs: &mut impl VmcsAccess,
    vcpu: &mut Vcpu,
    vm: &mut Vm,
    mem: &mut GuestMemory<'_>,
    host: &mut impl HostServices,
) -> Result<Next, VmFail> {
    let raw = ExitReasonField(vmcs.read32_ro(Vmcs32Ro::ExitReason)?);
    if let Some(counter) = vcpu.counters.0.get_mut(raw.basic() as usize) {
        *counter += 1;
    }
    vcpu.last_exit = raw.basic();
    let qualification = vmcs.read_natural_ro(VmcsNaturalRo::ExitQualification)?;
    if raw.entry_failure() {
        return Ok(stop(format!(
            "VM entry failed: basic reason {} qualification {qualification:#x}",
            raw.basic()
        )));
    }
    let Ok(reason) = raw.reason() else {
        return Ok(stop(format!("unknown VM exit reason {}", raw.basic())));
    };
    events::note_exit(vcpu, reason);
    let handled = match reason {
        ExitReason::Cpuid => cpuid(vmcs, vcpu, host)?,
        ExitReason::Rdmsr => rdmsr(vmcs, vcpu, host)?,
        ExitReason::Wrmsr => wrmsr(vmcs, vcpu, vm, host)?,
        ExitReason::IoInstruction => io(vcpu, vm, host, qualification),
        // VMCALL exits at any CPL (SDM Vol. 3C 26.1.2); on bare metal outside VMX it is #UD, and
        // the hypercall interface is the guest kernel's alone.
        ExitReason::Vmcall if events::guest_cpl(vmcs)? != 0 => events::inject_ud(vmcs)?,
        ExitReason::Vmcall => hypercall(vcpu, mem, host),
        ExitReason::Xsetbv => xsetbv(vmcs, vcpu, host)?,
        ExitReason::Hlt => hlt(vmcs)?,
        ExitReason::CrAccess => control_register(vmcs, vcpu, host, qualification)?,
        ExitReason::PreemptionTimer => {
            // The count ran out (early by its rounding, at most 2^shift TSC ticks): aim it afresh.
            vcpu.preemption_deadline = 0;
            Handled::Stay
        }
        ExitReason::InterruptWindow => Handled::Stay,
        ExitReason::ExternalInterrupt => {
            let info = InterruptionInfo::decode(vmcs.read32_ro(Vmcs32Ro::ExitInterruptionInfo)?);
            vcpu.interrupts
                .external_interrupt(info.vector, &vm.interrupts, host);
            Handled::Stay
        }
        // Trap-like: the WRMSR is done and RIP already past it (SDM Vol. 3C 29.1.2).
        ExitReason::VirtualizedEoi => {
            let vector = qualification as u8;
            vcpu.interrupts
                .virtualized_eoi(vector, &mut vm.interrupts, host);
            Handled::Stay
        }
        ExitReason::EptViolation => {
            let gpa = vmcs.read64_ro(Vmcs64Ro::GuestPhysicalAddress)?;
            match irq_exits::ept_violation(vmcs, vcpu, vm, mem, host, gpa)? {
                Some(handled) => handled,
                None => {
                    let rip = vmcs.read_natural(VmcsNatural::GuestRip)?;
                    Handled::End(GuestEnd::Stopped(format!(
                        "EPT violation: guest-physical {gpa:#x} is not guest memory (qualification {qualification:#x}, rip {rip:#x})"
                    )))
                }
            }
        }
        ExitReason::TripleFault => {
            let rip = vmcs.read_natural(VmcsNatural::GuestRip)?;
            Handled::End(GuestEnd::Stopped(format!("triple fault at rip {rip:#x}")))
        }
        // Guests are single-CPU and cannot be reset in place: an INIT or SIPI ends the guest.
        ExitReason::InitSignal | ExitReason::StartupIpi => {
            Handled::End(GuestEnd::Stopped(format!(
                "{}: the guest was reset by INIT/SIPI, which a single-CPU guest cannot survive",
                reason.description()
            )))
        }
        ExitReason::ExceptionOrNmi => events::exception_exit(vmcs, vcpu, mem, host, qualification)?,
        other => Handled::End(GuestEnd::Stopped(format!(
            "unhandled VM exit: {} ({})",
            other as u16,
            other.description()
        ))),
    };
    // One place for every handler: an event whose delivery this exit interrupted is delivered again.
    let handled = events::complete_delivery(vmcs, vcpu, reason, handled)?;
    match handled {
        Handled::Skip => {
            skip_instruction(vmcs)?;
            Ok(Next::Resume)
        }
        Handled::SkipDecoded(len) => {
            skip_bytes(vmcs, len.into())?;
            Ok(Next::Resume)
        }
        Handled::Stay => Ok(Next::Resume),
        Handled::End(end) => Ok(Next::End(end)),
    }
}

fn stop(why: String) -> Next {
    Next::End(GuestEnd::Stopped(why))
}

/// Advances RIP past the exiting instruction and ends STI/MOV-SS blocking, as executing it would have
/// (SDM Vol. 3C 27.3.1.5 requires no such blocking when injecting after an emulated instruction).
pub(super) fn skip_instruction(vmcs: &mut impl VmcsAccess) -> Result<(), VmFail> {
    let len = vmcs.read32_ro(Vmcs32Ro::ExitInstructionLength)?;
    skip_bytes(vmcs, len)
}

/// The one place RIP moves past an emulated instruction (`len` bytes), ending STI/MOV-SS blocking.
fn skip_bytes(vmcs: &mut impl VmcsAccess, len: u32) -> Result<(), VmFail> {
    let rip = vmcs.read_natural(VmcsNatural::GuestRip)?;
    vmcs.write_natural(VmcsNatural::GuestRip, rip.wrapping_add(u64::from(len)))?;
    let interruptibility = vmcs.read32(Vmcs32::GuestInterruptibilityState)?;
    if interruptibility & BLOCKING_STI_MOV_SS != 0 {
        vmcs.write32(
            Vmcs32::GuestInterruptibilityState,
            interruptibility & !BLOCKING_STI_MOV_SS,
        )?;
    }
    Ok(())
}

/// Injects #GP(0) on the next entry (SDM 26.6: hardware exception with error code).
pub(super) fn inject_gp(vmcs: &mut impl VmcsAccess) -> Result<Handled, VmFail> {
    events::inject_gp(vmcs)
}

/// A refused write, as bare metal refuses it.
fn refuse(vmcs: &mut impl VmcsAccess, refusal: Refusal) -> Result<Handled, VmFail> {
    match refusal {
        Refusal::GeneralProtection => events::inject_gp(vmcs),
        Refusal::InvalidOpcode => events::inject_ud(vmcs),
    }
}

/// The CPU features the guest's CPUID shows.
fn guest_features(host: &impl HostServices) -> GuestFeatures {
    let ctx = host.cpuid_context();
    GuestFeatures::from_cpuid(|leaf, subleaf| {
        guest_cpuid(leaf, subleaf, host.cpuid(leaf, subleaf), &ctx)
    })
}

/// CR4 as the guest sees it: host-owned bits (the guest/host mask) from the read shadow, the rest
/// from the real register (SDM Vol. 3C 25.6.6).
fn guest_cr4(vmcs: &impl VmcsAccess) -> Result<u64, VmFail> {
    let mask = vmcs.read_natural(VmcsNatural::Cr4GuestHostMask)?;
    let real = vmcs.read_natural(VmcsNatural::GuestCr4)?;
    let shadow = vmcs.read_natural(VmcsNatural::Cr4ReadShadow)?;
    Ok((real & !mask) | (shadow & mask))
}

/// CPUID.1:ECX bit 27, OSXSAVE: "reflects CR4.OSXSAVE" (SDM Vol. 2A CPUID), the guest's CR4, not the
/// host's (which sets it to run XSETBV for its guests).
const LEAF1_ECX_OSXSAVE: u32 = 1 << 27;
/// CR4.PKE (bit 22), which CPUID.(7,0):ECX.OSPKE reflects the same way.
const CR4_PKE: u64 = 1 << 22;

fn cpuid(
    vmcs: &impl VmcsAccess,
    vcpu: &mut Vcpu,
    host: &impl HostServices,
) -> Result<Handled, VmFail> {
    let (leaf, subleaf) = (vcpu.regs.rax as u32, vcpu.regs.rcx as u32);
    let ctx = CpuidContext {
        guest_xcr0: vcpu.xcr0,
        ..host.cpuid_context()
    };
    let [a, b, mut c, d] = guest_cpuid(leaf, subleaf, host.cpuid(leaf, subleaf), &ctx);
    if leaf == 1 {
        c &= !LEAF1_ECX_OSXSAVE;
        if guest_cr4(vmcs)? & validate::CR4_OSXSAVE != 0 {
            c |= LEAF1_ECX_OSXSAVE;
        }
    }
    // OSPKE likewise follows the guest's CR4.PKE (which `validate` allows only with PKU shown).
    if (leaf, subleaf) == (7, 0) {
        c &= !LEAF7_ECX_OSPKE;
        if guest_cr4(vmcs)? & CR4_PKE != 0 {
            c |= LEAF7_ECX_OSPKE;
        }
    }
    (vcpu.regs.rax, vcpu.regs.rbx, vcpu.regs.rcx, vcpu.regs.rdx) =
        (a.into(), b.into(), c.into(), d.into());
    Ok(Handled::Skip)
}

/// XSETBV (exit reason 55, unconditional in VMX non-root operation, SDM Vol. 3C 26.1.2): checked as
/// the instruction checks it, then performed in the host, whose XCR0 stays the guest's while it runs
/// (`arch::xcr`).
fn xsetbv(
    vmcs: &mut impl VmcsAccess,
    vcpu: &mut Vcpu,
    host: &mut impl HostServices,
) -> Result<Handled, VmFail> {
    let value = (vcpu.regs.rdx << 32) | (vcpu.regs.rax & 0xFFFF_FFFF);
    let cpl = events::guest_cpl(vmcs)?;
    let xcr = vcpu.regs.rcx as u32;
    match validate::xcr0_write(guest_cr4(vmcs)?, cpl, xcr, value, &guest_features(host)) {
        Ok(()) => {
            host.xsetbv(value);
            vcpu.xcr0 = value;
            Ok(Handled::Skip)
        }
        Err(refusal) => refuse(vmcs, refusal),
    }
}

/// IA32_MISC_ENABLE as guests read it (SDM Vol. 4 Table 2-2): fast strings enabled (bit 0), which keeps
/// Linux's ERMS and so makes the FSRM that CPUID shows safe (`cpuid`, `early_init_intel`); branch
/// trace storage (11) and PEBS (12) unavailable, as CPUID hides DS. Nothing else (no speedstep, no
/// MONITOR, no thermal control), and writes change nothing.
pub(super) const GUEST_MISC_ENABLE: u64 = 1 | 1 << 11 | 1 << 12;

/// RDMSR of the MSRs guests reach only through exits. Any other MSR is #GP(0), as on a CPU that lacks
/// it: Linux probes optional MSRs with `rdmsr_safe`, and every MSR whose CPUID feature `cpuid` hides
/// (APERF/MPERF, HWP, IA32_ARCH_CAPABILITIES, IA32_PERF_CAPABILITIES, IA32_SPEC_CTRL, TSC_ADJUST,
/// MTRRs, MSR_KVM_*, ...) is absent here.
fn rdmsr(
    vmcs: &mut impl VmcsAccess,
    vcpu: &mut Vcpu,
    host: &impl HostServices,
) -> Result<Handled, VmFail> {
    let soft = &vcpu.soft_msrs;
    let value = match vcpu.regs.rcx as u32 {
        msr::TSC => host.rdtsc(),
        msr::APIC_BASE => vcpu.apic_base,
        msr::MISC_ENABLE => GUEST_MISC_ENABLE,
        // No microcode update loaded, platform ID 0.
        msr::PLATFORM_ID | msr::BIOS_SIGN_ID => 0,
        // CPUID shows MCE and MCA with no banks (bits 7:0 = 0) and no machine check in progress.
        msr::MCG_CAP | msr::MCG_STATUS => 0,
        msr::TSC_DEADLINE => {
            vcpu.interrupts.advance_to(host.rdtsc());
            vcpu.interrupts.apic.tsc_deadline()
        }
        msr::PAT => soft.pat,
        msr::EFER => vmcs.read64(Vmcs64::GuestIa32Efer)?,
        msr::FS_BASE => vmcs.read_natural(VmcsNatural::GuestFsBase)?,
        msr::GS_BASE => vmcs.read_natural(VmcsNatural::GuestGsBase)?,
        msr::X2APIC_FIRST..=msr::X2APIC_LAST => {
            match vcpu.interrupts.read_msr(vcpu.regs.rcx as u32, host.rdtsc()) {
                Ok(value) => value,
                Err(_) => return inject_gp(vmcs),
            }
        }
        _ => return inject_gp(vmcs),
    };
    vcpu.regs.rax = value & 0xFFFF_FFFF;
    vcpu.regs.rdx = value >> 32;
    Ok(Handled::Skip)
}

/// WRMSR of the MSRs guests reach only through exits; read-only (IA32_PLATFORM_ID, IA32_MCG_CAP) and
/// unknown MSRs are #GP(0), as on hardware.
fn wrmsr(
    vmcs: &mut impl VmcsAccess,
    vcpu: &mut Vcpu,
    vm: &mut Vm,
    host: &mut impl HostServices,
) -> Result<Handled, VmFail> {
    let value = (vcpu.regs.rdx << 32) | (vcpu.regs.rax & 0xFFFF_FFFF);
    let soft = &mut vcpu.soft_msrs;
    match vcpu.regs.rcx as u32 {
        msr::APIC_BASE => {
            if value & !APIC_BASE_WRITABLE != APIC_BASE_RESET & !APIC_BASE_WRITABLE {
                // Moving the APIC or clearing the BSP flag is not supported.
                return inject_gp(vmcs);
            }
            vcpu.apic_base = value;
        }
        msr::MISC_ENABLE => {}
        // Linux writes 0 before reading the microcode revision (SDM Vol. 3A 10.11.7.1).
        msr::BIOS_SIGN_ID => {}
        // Software may clear IA32_MCG_STATUS; other values are #GP (SDM Vol. 3B 16.3.1.2).
        msr::MCG_STATUS if value == 0 => {}
        // The virtual x2APIC's timer: ignored outside TSC-deadline mode (SDM Vol. 3A 11.5.4.1).
        msr::TSC_DEADLINE => {
            vcpu.interrupts.advance_to(host.rdtsc());
            vcpu.interrupts.apic.set_tsc_deadline(value);
        }
        msr::PAT if !validate::pat_valid(value) => return inject_gp(vmcs),
        msr::PAT => soft.pat = value,
        msr::EFER => {
            // Reserved bits, NXE without NX, and changing LME are #GP; LMA stays the CPU's (validate).
            let current = vmcs.read64(Vmcs64::GuestIa32Efer)?;
            match validate::efer_write(current, value, &guest_features(host)) {
                Ok(efer) => vmcs.write64(Vmcs64::GuestIa32Efer, efer)?,
                Err(refusal) => return refuse(vmcs, refusal),
            }
        }
        // Addresses must be canonical (SDM Vol. 4 for each MSR; a non-canonical FS/GS base would
        // also fail the next VM entry's guest-state checks, SDM Vol. 3C 26.3.1.2). LSTAR, CSTAR and
        // KERNEL_GS_BASE are the guest's own (passed through): the CPU checks them itself.
        msr::FS_BASE | msr::GS_BASE if !guest_features(host).canonical(value) => {
            return inject_gp(vmcs)
        }
        msr::FS_BASE => vmcs.write_natural(VmcsNatural::GuestFsBase, value)?,
        msr::GS_BASE => vmcs.write_natural(VmcsNatural::GuestGsBase, value)?,
        // The virtual x2APIC; IPIs that would reach other CPUs (INIT, SIPI) are refused with #GP.
        msr::X2APIC_FIRST..=msr::X2APIC_LAST => {
            if vcpu
                .interrupts
                .write_msr(
                    vcpu.regs.rcx as u32,
                    value,
                    host.rdtsc(),
                    &mut vm.interrupts,
                    host,
                )
                .is_err()
            {
                return inject_gp(vmcs);
            }
        }
        _ => return inject_gp(vmcs),
    }
    Ok(Handled::Skip)
}

fn size_mask(size: u8) -> u32 {
    match size {
        1 => 0xFF,
        2 => 0xFFFF,
        _ => u32::MAX,
    }
}

fn io(vcpu: &mut Vcpu, vm: &mut Vm, host: &mut impl HostServices, qualification: u64) -> Handled {
    let Some(access) = IoQualification::decode(qualification) else {
        return Handled::End(GuestEnd::Stopped(format!(
            "malformed I/O exit qualification {qualification:#x}"
        )));
    };
    if access.string {
        return Handled::End(GuestEnd::Stopped(format!(
            "string I/O to port {:#x} is not emulated",
            access.port
        )));
    }
    let pci_port = (CONFIG_ADDRESS..CONFIG_DATA + 4).contains(&access.port)
        && (vm.has_pci_bus || !vm.pci.is_empty());
    let value = match access.direction {
        IoDirection::Out if pci_port => {
            if let Some(config) = host.pci_config() {
                let data = (vcpu.regs.rax as u32) & size_mask(access.size);
                vm.pci.write(access.port, access.size, data, config);
            }
            if let Some(req) = vm.pci.take_msi_change() {
                let vector = host.route_guest_msi(req);
                vm.interrupts.msi_vector(req.bdf, vector);
            }
            for req in vm.pci.take_msix_changes() {
                let vector = host.route_guest_msix(req);
                vm.interrupts.msix_vector(req.bdf, req.entry, vector);
            }
            return Handled::Skip;
        }
        IoDirection::In if pci_port => host
            .pci_config()
            .and_then(|config| vm.pci.read(access.port, access.size, config))
            .unwrap_or(u32::MAX),
        // The emulated devices are byte-wide, as on the ISA bus: a wider access reaches
        // consecutive ports, low byte first.
        IoDirection::Out => {
            let value = vcpu.regs.rax as u32;
            for i in 0..access.size {
                let port = access.port.wrapping_add(i.into());
                if let Some(end) = port_write(vcpu, vm, host, port, (value >> (8 * i)) as u8) {
                    return Handled::End(end);
                }
            }
            return Handled::Skip;
        }
        IoDirection::In => (0..access.size).fold(0, |value, i| {
            let port = access.port.wrapping_add(i.into());
            value | u32::from(port_read(vcpu, vm, port)) << (8 * i)
        }),
    };
    let rax = &mut vcpu.regs.rax;
    *rax = match access.size {
        1 => (*rax & !0xFF) | u64::from(value & 0xFF),
        2 => (*rax & !0xFFFF) | u64::from(value & 0xFFFF),
        // A 32-bit register write zero-extends (SDM Vol. 1 3.4.1.1).
        _ => u64::from(value),
    };
    Handled::Skip
}

fn com1_register(port: u16) -> Option<u16> {
    port.checked_sub(COM1).filter(|offset| *offset < 8)
}

/// A byte read of `port` from COM1, a legacy port, or nothing (all ones).
fn port_read(vcpu: &mut Vcpu, vm: &mut Vm, port: u16) -> u8 {
    let Some(offset) = com1_register(port) else {
        return vm.legacy.read(port);
    };
    let value = vm.console.read(offset);
    com1_interrupt(vcpu, vm);
    value
}

/// A byte write to `port`; `Some` if it ends the guest.
fn port_write(
    vcpu: &mut Vcpu,
    vm: &mut Vm,
    host: &mut impl HostServices,
    port: u16,
    value: u8,
) -> Option<GuestEnd> {
    if port == MEASURE_PORT {
        let now = Snapshot {
            tsc: host.rdtsc(),
            exits: vcpu.counters.clone(),
            interrupts: vcpu.interrupts.stats,
        };
        vcpu.window.mark(value, now);
        return None;
    }
    let Some(offset) = com1_register(port) else {
        return vm.legacy.write(port, value).map(|request| match request {
            GuestRequest::PowerOff => GuestEnd::PoweredOff(0),
            GuestRequest::Reset(why) => GuestEnd::Stopped(String::from(why)),
        });
    };
    if let Some(line) = vm.console.write(offset, value) {
        host.console_line(&line);
    }
    com1_interrupt(vcpu, vm);
    None
}

/// COM1's IRQ line drives its IOAPIC pin (ISA IRQ 4: edge, active high in the MADT; a rising
/// edge sends the interrupt, so the pin follows the line after every register access). It reaches
/// the vCPU whose access moved it (the only one).
fn com1_interrupt(vcpu: &mut Vcpu, vm: &mut Vm) {
    let line = vm.console.interrupt_line();
    vm.interrupts
        .set_emulated_pin(COM1_GSI, line, &mut vcpu.interrupts);
}

fn hypercall(vcpu: &mut Vcpu, mem: &mut GuestMemory<'_>, host: &impl HostServices) -> Handled {
    let regs = &mut vcpu.regs;
    regs.rax = match Hypercall::from_raw(regs.rax) {
        Some(Hypercall::Version) => ABI_VERSION,
        Some(Hypercall::PowerOff) => return Handled::End(GuestEnd::PoweredOff(regs.rdi as u32)),
        Some(Hypercall::ResetExitCounters) => {
            vcpu.counters = ExitCounters::default();
            0
        }
        Some(Hypercall::ReadExitCounters) => {
            let count = (regs.rsi as usize).min(EXIT_REASON_COUNT);
            match mem.slice_mut(regs.rdi, count as u64 * 8) {
                Some(buffer) => {
                    for (chunk, value) in buffer.chunks_exact_mut(8).zip(vcpu.counters.0.iter()) {
                        chunk.copy_from_slice(&value.to_le_bytes());
                    }
                    count as u64
                }
                None => HypercallError::BadAddress as u64,
            }
        }
        Some(Hypercall::HostTimerTicks) => host.host_timer_ticks(),
        Some(Hypercall::InterruptMode) => match vcpu.interrupts.mode {
            crate::config::InterruptMode::Baseline => 0,
            crate::config::InterruptMode::Eli => 1,
            crate::config::InterruptMode::Apicv => 2,
        },
        None => HypercallError::UnknownCall as u64,
    };
    Handled::Skip
}

fn hlt(vmcs: &mut impl VmcsAccess) -> Result<Handled, VmFail> {
    let rflags = vmcs.read_natural(VmcsNatural::GuestRflags)?;
    if rflags & RFLAGS_IF == 0 {
        let rip = vmcs.read_natural(VmcsNatural::GuestRip)?;
        return Ok(Handled::End(GuestEnd::Stopped(format!(
            "HLT with interrupts disabled at rip {rip:#x}: the guest can never wake"
        ))));
    }
    // Let the CPU wait inside the guest, after the HLT, until an interrupt arrives (SDM 25.4.2
    // activity state).
    vmcs.write32(Vmcs32::GuestActivityState, ACTIVITY_HLT)?;
    Ok(Handled::Skip)
}

/// MOV to CR0/CR4 that touches a bit the host owns (the guest/host masks): the guest keeps its view in
/// the read shadow, the CPU keeps the VMX fixed bits.
fn control_register(
    vmcs: &mut impl VmcsAccess,
    vcpu: &mut Vcpu,
    host: &impl HostServices,
    qualification: u64,
) -> Result<Handled, VmFail> {
    let access = CrAccess::decode(qualification);
    let CrAccessKind::MovToCr(source) = access.kind else {
        return Ok(Handled::End(GuestEnd::Stopped(format!(
            "unsupported control-register access {qualification:#x}"
        ))));
    };
    let rsp = vmcs.read_natural(VmcsNatural::GuestRsp)?;
    let value = gpr_value(&vcpu.regs, rsp, source);
    match access.cr {
        0 => {
            let (fixed0, fixed1) = vcpu.cr0_fixed;
            if value & fixed0 != fixed0 {
                // Linux reboots this way where ACPI is hardware-reduced and there is no EFI
                // (`efi_reboot_required`, then BOOT_BIOS: the real-mode restart): a reboot ends
                // the guest, which cannot be reset in place.
                let rip = vmcs.read_natural(VmcsNatural::GuestRip)?;
                const PE_PG: u64 = (1 << 0) | (1 << 31);
                let why = if value & PE_PG != PE_PG {
                    format!("the guest left paged protected mode (CR0 {value:#x} at rip {rip:#x}; a BIOS-style reboot), which Exitless does not run: ended as a reset")
                } else {
                    format!("guest cleared CR0 bits VMX needs ({value:#x} at rip {rip:#x})")
                };
                return Ok(Handled::End(GuestEnd::Stopped(why)));
            }
            vmcs.write_natural(VmcsNatural::Cr0ReadShadow, value)?;
            vmcs.write_natural(VmcsNatural::GuestCr0, (value | fixed0) & fixed1)?;
        }
        4 => {
            let ctx = validate::Cr4Context {
                cr4: guest_cr4(vmcs)?,
                cr0: vmcs.read_natural(VmcsNatural::GuestCr0)?,
                cr3: vmcs.read_natural(VmcsNatural::GuestCr3)?,
                long_mode: vmcs.read64(Vmcs64::GuestIa32Efer)? & validate::EFER_LMA != 0,
            };
            if let Err(refusal) = validate::cr4_write(value, &ctx, &guest_features(host)) {
                return refuse(vmcs, refusal);
            }
            let (fixed0, fixed1) = vcpu.cr4_fixed;
            vmcs.write_natural(VmcsNatural::Cr4ReadShadow, value)?;
            vmcs.write_natural(VmcsNatural::GuestCr4, (value | fixed0) & fixed1)?;
        }
        cr => {
            return Ok(Handled::End(GuestEnd::Stopped(format!(
                "unexpected MOV to CR{cr} exit"
            ))))
        }
    }
    Ok(Handled::Skip)
}

#[cfg(test)]
mod tests;
