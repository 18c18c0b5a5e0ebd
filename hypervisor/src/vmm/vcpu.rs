//! The state exit handlers work on and the contract they work through: one virtual CPU's state
//! ([`Vcpu`]; what its VM shares is `vm::Vm`), what the machine provides ([`HostServices`]), and
//! what a handler decides ([`Handled`], then [`Next`]). Kept apart from the handlers so that
//! `exits`, `irq_exits` and `events` depend on it and not on each other.

use super::cpuid::CpuidContext;
pub use super::exit_counters::ExitCounters;
use super::guest_events::EventState;
use super::interrupts::{InterruptHardware, VcpuInterrupts};
use super::measure_window::MeasureWindow;
use super::msi_request::MsiRequest;
use super::msix::MsixRequest;
use crate::arch::vmx::GuestRegisters;
use crate::pci::ConfigAccess;
use crate::vmx::exit::Gpr;
use alloc::string::String;

/// What the machine outside the guest provides to exit handlers.
pub trait HostServices: InterruptHardware {
    /// One complete line the guest printed on its console.
    fn console_line(&mut self, line: &str);
    /// The host CPU's CPUID.
    fn cpuid(&self, leaf: u32, subleaf: u32) -> [u32; 4];
    /// What the guest's CPUID is computed from besides the host's (`cpuid::guest_cpuid`).
    fn cpuid_context(&self) -> CpuidContext;
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

/// The state of one virtual CPU: its VMCS (the frame; VMPTRLD makes it current), the registers the
/// VMCS does not hold, its virtual x2APIC and injection state, and what its exits counted.
#[derive(Debug, Default)]
pub struct Vcpu {
    /// Host-physical address of this vCPU's VMCS (owned by it for as long as the VM exists).
    pub vmcs_frame: u64,
    /// Its MSR bitmap's frame: the x2APIC EOI write's interception is decided per vCPU.
    pub msr_bitmap: u64,
    pub regs: GuestRegisters,
    pub counters: ExitCounters,
    /// IA32_APIC_BASE as the guest sees it.
    pub apic_base: u64,
    /// XCR0 as the guest's last XSETBV set it (`arch::guest_cpu_state` starts every guest at 1;
    /// 0 here reads the same: both need only the legacy XSAVE area).
    pub xcr0: u64,
    /// MSRs kept in software (never loaded into the CPU).
    pub soft_msrs: SoftMsrs,
    /// CR0/CR4 bits VMX operation fixes (SDM A.7/A.8): (fixed0, fixed1) pairs.
    pub cr0_fixed: (u64, u64),
    pub cr4_fixed: (u64, u64),
    /// The virtual x2APIC and injection state.
    pub interrupts: VcpuInterrupts,
    /// Interrupt-window exiting is on (baseline injection waits for the guest to accept interrupts).
    pub window_exiting: bool,
    /// Basic reason of the last VM exit.
    pub last_exit: u16,
    /// The VMX-preemption timer counts once every 2^shift TSC ticks (IA32_VMX_MISC 4:0).
    pub preemption_shift: u8,
    /// The preemption-timer value last written to the VMCS.
    pub preemption_written: u32,
    /// Whether the CPU saves the timer's remaining count at each exit ("save VMX-preemption timer
    /// value", SDM Vol. 3C 24.7.1): then the count already aims at the last deadline written and
    /// needs no rewrite until the deadline moves.
    pub preemption_saved: bool,
    /// The TSC deadline the preemption timer was last aimed at.
    pub preemption_deadline: u64,
    /// Exception and event-delivery state (`events`).
    pub events: EventState,
    /// The window the guest measures its workload in (`measure_window`).
    pub window: MeasureWindow,
}

/// MSRs the guest sees that neither the VMCS nor the CPU holds for it. (The SYSCALL/SWAPGS MSRs and
/// TSC_AUX are the CPU's own while the guest runs: `arch::guest_cpu_state`.)
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SoftMsrs {
    pub pat: u64,
}

/// The guest's view of IA32_APIC_BASE at reset: LAPIC at 0xFEE00000, enabled, bootstrap processor.
pub const APIC_BASE_RESET: u64 = 0xFEE0_0000 | (1 << 11) | (1 << 8);
/// IA32_APIC_BASE.EXTD (SDM Vol. 3A 11.12.1): x2APIC mode.
pub const APIC_BASE_EXTD: u64 = 1 << 10;

/// Outcome of one handler before RIP bookkeeping.
pub enum Handled {
    /// The instruction was emulated: skip it (its length is the exit's instruction length).
    Skip,
    /// An instruction whose exit reports no length (an EPT violation: SDM Vol. 3C 28.2.5 defines the
    /// field only for some exits) was decoded and emulated: skip its `len` bytes.
    SkipDecoded(u8),
    /// Re-run the instruction (an exception was injected or nothing was executed).
    Stay,
    End(GuestEnd),
}

pub fn stopped(why: String) -> Handled {
    Handled::End(GuestEnd::Stopped(why))
}

pub fn gpr_value(regs: &GuestRegisters, rsp: u64, reg: Gpr) -> u64 {
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
pub fn set_gpr(regs: &mut GuestRegisters, reg: Gpr, value: u64) {
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
