//! The run loop of one vCPU: prepare the entry, enter the guest, handle the exit (dispatched,
//! RIP moved in one place: `exits`), account the host's time, and stop on an end.

use super::exits;
use super::guest_memory::GuestMemory;
use super::host_clock::HostClock;
use super::irq_exits;
use super::machine::{tsc_per_ms, MachineServices, HOST_TIMER_PERIOD_TSC};
use super::vcpu::{GuestEnd, HostServices, Next, Vcpu};
use super::vm::Vm;
use crate::arch::host_irq;
use crate::arch::vmx::{self as hw, EntryResult};
use crate::vmx::vmcs::{self, CurrentVmcs, VmcsAccess};
use crate::vmx::vmcs_fields::Vmcs32Ro;
use alloc::format;
use alloc::string::String;

/// Runs `vcpu` of `vm` until the guest ends. Its VMCS (`vmcs`) is current and programmed, and no
/// host interrupt source is armed on this CPU (`host_clock`).
pub(super) fn run(
    vmcs: &mut CurrentVmcs,
    vcpu: &mut Vcpu,
    vm: &mut Vm,
    services: &mut MachineServices<'_, '_>,
) -> GuestEnd {
    services.clock = HostClock::start(services.rdtsc(), HOST_TIMER_PERIOD_TSC, vm.timeout_tsc);
    let mut launched = false;
    loop {
        if let Err(e) = irq_exits::prepare_entry(vmcs, vcpu, services) {
            return GuestEnd::Stopped(format!("VMREAD/VMWRITE failed before VM entry: {e}"));
        }
        // SAFETY: this vCPU's VMCS is current and fully programmed; HOST_RIP is the exit stub.
        match unsafe { hw::enter_guest(&mut vcpu.regs, launched) } {
            EntryResult::Exited => launched = true,
            failure => return entry_failed(vmcs, failure),
        }
        // SAFETY: the guest's RAM is identity-mapped host memory owned by this VM, and nothing
        // else holds a view of it while the exit is handled.
        let ram = unsafe {
            core::slice::from_raw_parts_mut(vm.ram.host_base as *mut u8, vm.ram.len as usize)
        };
        let mut memory = GuestMemory::with_layout(ram, vm.ram.layout);
        let next = exits::handle_exit(vmcs, vcpu, vm, &mut memory, services);
        if let Some(end) = after_exit(next, vm, services) {
            if !vm.console.pending().is_empty() {
                services.console_line(&String::from(vm.console.pending()));
            }
            return end;
        }
    }
}

/// The host's share of every exit: its ticks that fell due, VT-d faults, and the guest's run
/// budget. Returns how the guest ends, if it does.
fn after_exit(next: Next, vm: &Vm, services: &mut MachineServices<'_, '_>) -> Option<GuestEnd> {
    let now = services.rdtsc();
    let ticks = services.clock.advance(now);
    if ticks != 0 {
        services.host_tick(ticks);
    }
    if host_irq::take_dma_fault_events() != 0 {
        services.drain_dma_faults();
    }
    match next {
        Next::End(end) => Some(end),
        Next::Resume if services.clock.budget_spent(now) => Some(GuestEnd::Stopped(format!(
            "run budget spent: timeout_ms = {} ms of TSC time, and the guest was still running",
            vm.timeout_tsc.unwrap_or(0) / tsc_per_ms()
        ))),
        Next::Resume => None,
    }
}

fn entry_failed(vmcs: &CurrentVmcs, failure: EntryResult) -> GuestEnd {
    let error = vmcs.read32_ro(Vmcs32Ro::VmInstructionError).unwrap_or(0);
    let message = vmcs::VmInstructionError::from_number(error).message();
    log::error!(
        "VM entry failed ({failure:?}): VM-instruction error {error}: {message}; VMCS follows"
    );
    let _ = vmcs::dump(vmcs, &mut crate::arch::serial::Console);
    GuestEnd::Stopped(format!(
        "VM entry failed: VM-instruction error {error} ({message})"
    ))
}
