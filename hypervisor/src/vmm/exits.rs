//! VM-exit handling: the exit is decoded once into [`ExitReason`], dispatched from [`handle_exit`], and
//! every handler says what happens next ([`Next`]); RIP is advanced in one place.
//!
//! Everything here goes through [`VmcsAccess`], [`GuestMemory`] and [`HostServices`], so it is
//! unit-tested on the host with a fake VMCS.

use super::cpuid::guest_cpuid;
use super::events::{self, EventState};
use super::guest_memory::GuestMemory;
use super::interrupts::{GuestInterrupts, InterruptHardware};
use super::irq_exits;
use super::msix::MsixRequest;
use super::validate::{self, GuestFeatures, Refusal};
use super::virtual_pci::{MsiRequest, VirtualPci, CONFIG_ADDRESS, CONFIG_DATA};
use crate::arch::vmx::GuestRegisters;
use crate::pci::ConfigAccess;
use crate::vmx::exit::{
    CrAccess, CrAccessKind, ExitReason, ExitReasonField, Gpr, InterruptionInfo, IoDirection,
    IoQualification,
};
use crate::vmx::vmcs::{VmFail, VmcsAccess};
use crate::vmx::vmcs_fields::{Vmcs32, Vmcs32Ro, Vmcs64, Vmcs64Ro, VmcsNatural, VmcsNaturalRo};
use alloc::format;
use alloc::string::String;
use exitless_abi::hypercall::{Hypercall, HypercallError, ABI_VERSION, EXIT_REASON_COUNT};

/// What the machine outside the guest provides to exit handlers.
pub trait HostServices: InterruptHardware {
    /// One complete line the guest printed on its console.
    fn console_line(&mut self, line: &str);
    /// The host CPU's CPUID.
    fn cpuid(&self, leaf: u32, subleaf: u32) -> [u32; 4];
    fn rdtsc(&self) -> u64;
    /// Host timer ticks so far.
    fn host_timer_ticks(&self) -> u64;
    /// TSC at which the host must have the CPU back (its next tick, or the end of the guest's budget).
    fn next_host_deadline(&self) -> u64;
    /// The guest's task priority: the physical TPR, which its CR8 and x2APIC TPR MSR reach without
    /// exits, and which the host leaves alone while the guest runs.
    fn guest_tpr(&self) -> u8;
    /// The host's PCI configuration access, for guests with assigned functions.
    fn pci_config(&self) -> Option<&dyn ConfigAccess>;
    /// Applies the guest's MSI programming of an assigned function to the hardware (an IRTE with
    /// the guest's vector, and the device's MSI capability); returns the guest vector the device
    /// now raises, `None` if its MSI is off (disabled by the guest, or refused).
    fn route_guest_msi(&mut self, req: MsiRequest) -> Option<u8>;
    /// [`Self::route_guest_msi`] for one MSI-X table entry (an IRTE with the guest's vector in the
    /// device's real entry, unmasked; masked when the guest masked or disabled it).
    fn route_guest_msix(&mut self, req: MsixRequest) -> Option<u8> {
        let _ = req;
        None
    }
    /// A guest access to an assigned device's register at host-physical `hpa` that shares a page
    /// with its MSI-X table or PBA, performed for the guest (`size` bytes; `write` holds the value
    /// to store). Returns what a read gives.
    fn device_mmio(&mut self, hpa: u64, size: u8, write: Option<u64>) -> u64 {
        let _ = (hpa, size, write);
        u64::MAX
    }
    /// The guest's DR6, which the CPU keeps while the host runs (the host never uses it; the VMCS
    /// does not hold it).
    fn read_dr6(&self) -> u64;
    /// Sets the guest's DR6 for the next entry (a reflected #DB's status bits, `events`).
    fn write_dr6(&mut self, value: u64);
    /// Loads XCR0 with a value `validate::xcr0_write` accepted for the guest (its XSETBV).
    fn xsetbv(&mut self, xcr0: u64);
}

/// How a guest ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GuestEnd {
    /// The guest asked to power off (hypercall) with this code.
    PoweredOff(u32),
    /// The guest did something it may not, or that cannot go on; it is stopped, the host runs on.
    Stopped(String),
}

/// What happens after an exit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Next {
    Resume,
    End(GuestEnd),
}

/// Per-guest VM-exit counts by basic exit reason, readable by hypercall.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExitCounters(pub [u64; EXIT_REASON_COUNT]);

impl Default for ExitCounters {
    fn default() -> Self {
        Self([0; EXIT_REASON_COUNT])
    }
}

impl ExitCounters {
    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }
}

/// COM1 as guests see it: a transmitter that is always ready; bytes are forwarded line by line.
#[derive(Clone, Debug, Default)]
pub struct VirtualConsole {
    line: String,
    /// Line control register: bit 7 (DLAB) turns ports +0/+1 into the divisor latch.
    lcr: u8,
}

pub const COM1: u16 = 0x3F8;
const UART_LSR_THRE_TEMT: u8 = 0x60;
const MAX_CONSOLE_LINE: usize = 512;

/// The software state of one virtual CPU that exit handlers read and change.
#[derive(Debug, Default)]
pub struct Vcpu {
    pub regs: GuestRegisters,
    pub counters: ExitCounters,
    pub console: VirtualConsole,
    /// IA32_APIC_BASE as the guest sees it.
    pub apic_base: u64,
    /// MSRs kept in software (never loaded into the CPU).
    pub soft_msrs: SoftMsrs,
    /// CR0/CR4 bits VMX operation fixes (SDM A.7/A.8): (fixed0, fixed1) pairs.
    pub cr0_fixed: (u64, u64),
    pub cr4_fixed: (u64, u64),
    /// The virtual x2APIC, mediated IOAPIC and injection state.
    pub interrupts: GuestInterrupts,
    /// Interrupt-window exiting is on (baseline injection waits for the guest to accept interrupts).
    pub window_exiting: bool,
    /// Basic reason of the last VM exit.
    pub last_exit: u16,
    /// The PCI bus the guest sees (its assigned functions).
    pub pci: VirtualPci,
    /// The VMX-preemption timer counts once every 2^shift TSC ticks (IA32_VMX_MISC 4:0).
    pub preemption_shift: u8,
    /// The preemption-timer value last written to the VMCS.
    pub preemption_written: u32,
    /// Exception and event-delivery state (`events`).
    pub events: EventState,
}

/// MSRs the guest sees that neither the VMCS nor the CPU holds for it. (The SYSCALL/SWAPGS MSRs and
/// TSC_AUX are the CPU's own while the guest runs: `arch::guest_cpu_state`.)
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SoftMsrs {
    pub pat: u64,
}

/// The guest's view of IA32_APIC_BASE at reset: LAPIC at 0xFEE00000, enabled, bootstrap processor.
pub const APIC_BASE_RESET: u64 = 0xFEE0_0000 | (1 << 11) | (1 << 8);
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
    mem: &mut GuestMemory<'_>,
    host: &mut impl HostServices,
) -> Next {
    match dispatch(vmcs, vcpu, mem, host) {
        Ok(next) => next,
        Err(fail) => Next::End(GuestEnd::Stopped(format!(
            "VMREAD/VMWRITE failed while handling an exit: {fail}"
        ))),
    }
}

/// Outcome of one handler before RIP bookkeeping.
pub(super) enum Handled {
    /// The instruction was emulated: skip it.
    Skip,
    /// Re-run the instruction (an exception was injected or nothing was executed).
    Stay,
    End(GuestEnd),
}

fn dispatch(
    vmcs: &mut impl VmcsAccess,
    vcpu: &mut Vcpu,
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
        ExitReason::Wrmsr => wrmsr(vmcs, vcpu, host)?,
        ExitReason::IoInstruction => io(vcpu, host, qualification),
        // VMCALL exits at any CPL (SDM Vol. 3C 26.1.2); on bare metal outside VMX it is #UD, and
        // the hypercall interface is the guest kernel's alone.
        ExitReason::Vmcall if events::guest_cpl(vmcs)? != 0 => events::inject_ud(vmcs)?,
        ExitReason::Vmcall => hypercall(vcpu, mem, host),
        ExitReason::Xsetbv => xsetbv(vmcs, vcpu, host)?,
        ExitReason::Hlt => hlt(vmcs)?,
        ExitReason::CrAccess => control_register(vmcs, vcpu, host, qualification)?,
        ExitReason::PreemptionTimer | ExitReason::InterruptWindow => Handled::Stay,
        ExitReason::ExternalInterrupt => {
            let info = InterruptionInfo::decode(vmcs.read32_ro(Vmcs32Ro::ExitInterruptionInfo)?);
            vcpu.interrupts.external_interrupt(info.vector, host);
            Handled::Stay
        }
        ExitReason::EptViolation => {
            let gpa = vmcs.read64_ro(Vmcs64Ro::GuestPhysicalAddress)?;
            match irq_exits::ept_violation(vmcs, vcpu, mem, host, gpa)? {
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
        Handled::Stay => Ok(Next::Resume),
        Handled::End(end) => Ok(Next::End(end)),
    }
}

pub(super) fn stopped(why: String) -> Handled {
    Handled::End(GuestEnd::Stopped(why))
}

fn stop(why: String) -> Next {
    Next::End(GuestEnd::Stopped(why))
}

/// Advances RIP past the exiting instruction and ends STI/MOV-SS blocking, as executing it would have
/// (SDM Vol. 3C 27.3.1.5 requires no such blocking when injecting after an emulated instruction).
pub(super) fn skip_instruction(vmcs: &mut impl VmcsAccess) -> Result<(), VmFail> {
    let len = vmcs.read32_ro(Vmcs32Ro::ExitInstructionLength)?;
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
    GuestFeatures::from_cpuid(|leaf, subleaf| guest_cpuid(leaf, subleaf, host.cpuid(leaf, subleaf)))
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

fn cpuid(
    vmcs: &impl VmcsAccess,
    vcpu: &mut Vcpu,
    host: &impl HostServices,
) -> Result<Handled, VmFail> {
    let (leaf, subleaf) = (vcpu.regs.rax as u32, vcpu.regs.rcx as u32);
    let [a, b, mut c, d] = guest_cpuid(leaf, subleaf, host.cpuid(leaf, subleaf));
    if leaf == 1 {
        c &= !LEAF1_ECX_OSXSAVE;
        if guest_cr4(vmcs)? & validate::CR4_OSXSAVE != 0 {
            c |= LEAF1_ECX_OSXSAVE;
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
            Ok(Handled::Skip)
        }
        Err(refusal) => refuse(vmcs, refusal),
    }
}

fn rdmsr(
    vmcs: &mut impl VmcsAccess,
    vcpu: &mut Vcpu,
    host: &impl HostServices,
) -> Result<Handled, VmFail> {
    let soft = &vcpu.soft_msrs;
    let value = match vcpu.regs.rcx as u32 {
        msr::TSC => host.rdtsc(),
        msr::APIC_BASE => vcpu.apic_base,
        // Fast strings on (bit 0), consistent with CPUID's ERMS; nothing else enabled.
        msr::MISC_ENABLE => 1,
        msr::PLATFORM_ID | msr::BIOS_SIGN_ID => 0,
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

fn wrmsr(
    vmcs: &mut impl VmcsAccess,
    vcpu: &mut Vcpu,
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
                .write_msr(vcpu.regs.rcx as u32, value, host.rdtsc(), host)
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

fn io(vcpu: &mut Vcpu, host: &mut impl HostServices, qualification: u64) -> Handled {
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
    let pci_port = (CONFIG_ADDRESS..CONFIG_DATA + 4).contains(&access.port) && !vcpu.pci.is_empty();
    let value = match access.direction {
        IoDirection::Out if pci_port => {
            if let Some(config) = host.pci_config() {
                let data = (vcpu.regs.rax as u32) & size_mask(access.size);
                vcpu.pci.write(access.port, access.size, data, config);
            }
            if let Some(req) = vcpu.pci.take_msi_change() {
                let vector = host.route_guest_msi(req);
                vcpu.interrupts.msi_vector(req.bdf, vector);
            }
            for req in vcpu.pci.take_msix_changes() {
                let vector = host.route_guest_msix(req);
                vcpu.interrupts.msix_vector(req.bdf, req.entry, vector);
            }
            return Handled::Skip;
        }
        IoDirection::In if pci_port => host
            .pci_config()
            .and_then(|config| vcpu.pci.read(access.port, access.size, config))
            .unwrap_or(u32::MAX),
        IoDirection::Out => {
            if (COM1..COM1 + 8).contains(&access.port) {
                vcpu.console
                    .write(access.port - COM1, vcpu.regs.rax as u8, host);
            }
            return Handled::Skip;
        }
        IoDirection::In if (COM1..COM1 + 8).contains(&access.port) => {
            u32::from(vcpu.console.read(access.port - COM1))
        }
        // Nothing decodes an unassigned port: the bus floats to all ones.
        IoDirection::In => u32::MAX,
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

impl VirtualConsole {
    fn write(&mut self, register: u16, byte: u8, host: &mut impl HostServices) {
        const LCR: u16 = 3;
        match register {
            0 if self.lcr & 0x80 == 0 => match byte {
                b'\n' => {
                    host.console_line(&self.line);
                    self.line.clear();
                }
                b'\r' => {}
                _ if self.line.len() < MAX_CONSOLE_LINE => self.line.push(char::from(byte)),
                _ => {}
            },
            LCR => self.lcr = byte,
            _ => {}
        }
    }

    fn read(&self, register: u16) -> u8 {
        match register {
            3 => self.lcr,
            5 => UART_LSR_THRE_TEMT,
            _ => 0,
        }
    }

    /// What the guest printed after its last newline.
    pub fn pending(&self) -> &str {
        &self.line
    }
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
        Some(Hypercall::InterruptMode) => {
            u64::from(vcpu.interrupts.mode == crate::config::InterruptMode::Eli)
        }
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
    // Let the CPU wait inside the guest until an interrupt arrives (SDM 25.4.2 activity state).
    skip_instruction(vmcs)?;
    vmcs.write32(Vmcs32::GuestActivityState, ACTIVITY_HLT)?;
    Ok(Handled::Stay)
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
                return Ok(Handled::End(GuestEnd::Stopped(format!(
                    "guest cleared CR0 bits VMX needs ({value:#x}): leaving paged protected mode is not supported"
                ))));
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

pub(super) fn gpr_value(regs: &GuestRegisters, rsp: u64, reg: Gpr) -> u64 {
    match reg {
        Gpr::Rax => regs.rax,
        Gpr::Rcx => regs.rcx,
        Gpr::Rdx => regs.rdx,
        Gpr::Rbx => regs.rbx,
        Gpr::Rsp => rsp,
        Gpr::Rbp => regs.rbp,
        Gpr::Rsi => regs.rsi,
        Gpr::Rdi => regs.rdi,
        Gpr::R8 => regs.r8,
        Gpr::R9 => regs.r9,
        Gpr::R10 => regs.r10,
        Gpr::R11 => regs.r11,
        Gpr::R12 => regs.r12,
        Gpr::R13 => regs.r13,
        Gpr::R14 => regs.r14,
        Gpr::R15 => regs.r15,
    }
}

/// Writes a general register other than RSP (which lives in the VMCS).
pub(super) fn set_gpr(regs: &mut GuestRegisters, reg: Gpr, value: u64) {
    let slot = match reg {
        Gpr::Rax => &mut regs.rax,
        Gpr::Rcx => &mut regs.rcx,
        Gpr::Rdx => &mut regs.rdx,
        Gpr::Rbx => &mut regs.rbx,
        Gpr::Rsp => return,
        Gpr::Rbp => &mut regs.rbp,
        Gpr::Rsi => &mut regs.rsi,
        Gpr::Rdi => &mut regs.rdi,
        Gpr::R8 => &mut regs.r8,
        Gpr::R9 => &mut regs.r9,
        Gpr::R10 => &mut regs.r10,
        Gpr::R11 => &mut regs.r11,
        Gpr::R12 => &mut regs.r12,
        Gpr::R13 => &mut regs.r13,
        Gpr::R14 => &mut regs.r14,
        Gpr::R15 => &mut regs.r15,
    };
    *slot = value;
}

#[cfg(test)]
mod tests;
