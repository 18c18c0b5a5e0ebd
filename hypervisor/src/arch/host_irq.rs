//! The host's own interrupt vectors: the host timer, the VT-d fault event and the spurious vector;
//! and [`scrub_after_guest`], which leaves the LAPIC holding nothing of a guest that ended.
//!
//! The host keeps interrupts off except in [`service_pending`], a short window in which only host
//! vectors can be delivered (TPR raised to the host's priority class), so interrupts that belong to a
//! guest stay pending in the LAPIC for the guest.
//!
//! What they count is the running CPU's (`percpu::HostIrqCounters`): each CPU takes its own
//! timer's interrupts, and the VT-d fault events go to the CPU they are routed to (the boot CPU,
//! which drains the units' fault records).

use super::apic::{self, HOST_ONLY_TPR};
use super::cpu::rdtsc;
use super::percpu::{self, HostIrqCounters};
use crate::virq::vector_set::VectorSet;
use core::sync::atomic::Ordering;

fn counters() -> &'static HostIrqCounters {
    percpu::current().irq_counters()
}

/// Host ticks that the host clock counted while a guest ran (the LAPIC timer is masked then).
pub fn add_timer_ticks(ticks: u64) {
    counters().timer_ticks.fetch_add(ticks, Ordering::Relaxed);
}

/// What [`scrub_after_guest`] did, and what it could not undo.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LapicScrub {
    /// In-service vectors completed with an EOI.
    pub completed: u32,
    /// Requested vectors taken (and discarded) through the host IDT.
    pub discarded: u32,
    /// Level-triggered TMR bits cleared by re-accepting the vector edge-triggered.
    pub tmr_cleared: u32,
    /// What was still set afterwards (all empty on a correct LAPIC).
    pub left: [VectorSet; 3],
}

impl LapicScrub {
    pub fn clean(&self) -> bool {
        self.left.iter().all(VectorSet::is_empty)
    }
}

/// Leaves this CPU's LAPIC holding nothing of the guest that ran on it: every in-service vector is
/// completed (EOI clears the highest ISR bit, SDM Vol. 3A 11.8.5), every requested one is taken and
/// dropped by the stray handler, and a TMR bit left by a level-triggered guest vector is cleared by
/// accepting the same vector once more edge-triggered (SDM 11.8.4: acceptance sets TMR for level and
/// clears it for edge; an EOI does not touch it). TPR goes back to 0. The guest's pins must already
/// be masked and its MSIs off, or its device would only raise them again.
pub fn scrub_after_guest() -> LapicScrub {
    let mut scrub = LapicScrub::default();
    // At most 256 of each: every step clears one bit or the LAPIC is not doing what the SDM says.
    for _ in 0..256 {
        if apic::in_service().is_empty() {
            break;
        }
        apic::eoi();
        scrub.completed += 1;
    }
    apic::set_tpr(0);
    let before = counters().stray_interrupts.load(Ordering::Relaxed);
    for _ in 0..256 {
        if apic::requested().is_empty() {
            break;
        }
        take_one_interrupt();
    }
    let tmr = apic::trigger_mode();
    for vector in tmr
        .iter()
        .filter(|v| crate::vmm::interrupts::GUEST_VECTORS.contains(v))
    {
        apic::self_ipi(vector);
        take_one_interrupt();
        scrub.tmr_cleared += 1;
    }
    scrub.discarded = (counters().stray_interrupts.load(Ordering::Relaxed) - before) as u32;
    scrub.left = [apic::in_service(), apic::requested(), apic::trigger_mode()];
    scrub
}

/// One instruction with IF=1 at the current TPR.
fn take_one_interrupt() {
    // STI delays delivery by one instruction (SDM Vol. 2B STI), so the NOP is where interrupts arrive.
    // SAFETY: the host IDT has a gate for every vector (the stray handler for guests' vectors).
    unsafe { core::arch::asm!("sti", "nop", "cli", options(nomem, nostack)) };
}

/// Host timer interrupts taken so far, however they arrived (through the host IDT, or as a VM exit).
pub fn timer_ticks() -> u64 {
    counters().timer_ticks.load(Ordering::Relaxed)
}

/// Accounts one host timer interrupt; the caller has it in service and EOIs it.
pub fn timer_tick() {
    counters().timer_ticks.fetch_add(1, Ordering::Relaxed);
}

/// Accounts one VT-d fault event interrupt; the caller has it in service and EOIs it. The fault
/// records are read later, by whoever owns the units ([`take_dma_fault_events`]).
pub fn dma_fault_event() {
    counters().dma_fault_events.fetch_add(1, Ordering::Relaxed);
}

/// VT-d fault events since the last call: non-zero means the units' fault records need draining.
pub fn take_dma_fault_events() -> u64 {
    // Called after every VM exit: a plain load keeps the locked swap off that path.
    let events = &counters().dma_fault_events;
    match events.load(Ordering::Relaxed) {
        0 => 0,
        _ => events.swap(0, Ordering::Relaxed),
    }
}

/// Lets pending host interrupts in: TPR just below the host's class, one instruction with IF=1, then
/// back.
pub fn service_pending() {
    apic::set_tpr(HOST_ONLY_TPR);
    take_one_interrupt();
    apic::set_tpr(0);
}

/// Takes every host interrupt already pending (after the host timer and fault events are masked, so
/// that none is left in the IRR to be delivered through a guest's IDT). Returns how many windows it took.
pub fn drain_host_vectors() -> u32 {
    let mut windows = 0;
    while apic::host_vector_pending() && windows < 64 {
        service_pending();
        windows += 1;
    }
    windows
}

/// TSC ticks between two host timer interrupts, measured from the interrupts themselves; `None` if
/// two ticks do not arrive within `limit_tsc`.
pub fn measure_timer_period(limit_tsc: u64) -> Option<u64> {
    let start = rdtsc();
    let next_tick = |after: u64| loop {
        service_pending();
        if timer_ticks() != after {
            return Some(rdtsc());
        }
        if rdtsc() - start > limit_tsc {
            return None;
        }
    };
    next_tick(timer_ticks())?;
    let first = rdtsc();
    let second = next_tick(timer_ticks())?;
    Some(second - first)
}

// Entry stubs: the timer and the fault event count and EOI; the spurious vector returns without
// EOI (SDM 11.9).
core::arch::global_asm!(
    r#"
    .section .text.host_irq, "ax"
    .macro host_irq_stub name, handler
    .global \name
    \name:
        push rax
        push rcx
        push rdx
        push rsi
        push rdi
        push r8
        push r9
        push r10
        push r11
        cld
        call \handler
        pop r11
        pop r10
        pop r9
        pop r8
        pop rdi
        pop rsi
        pop rdx
        pop rcx
        pop rax
        iretq
    .endm

    host_irq_stub host_timer_stub, {timer}
    host_irq_stub host_dma_fault_stub, {dma_fault}
    host_irq_stub host_stray_stub, {stray}

    .global host_spurious_stub
    host_spurious_stub:
        iretq
    "#,
    timer = sym timer_interrupt,
    dma_fault = sym dma_fault_interrupt,
    stray = sym stray_interrupt,
);

extern "C" {
    fn host_timer_stub();
    fn host_dma_fault_stub();
    fn host_spurious_stub();
    fn host_stray_stub();
}

/// A guest's vector that reached the host (left over when the guest ended): complete and drop it.
extern "C" fn stray_interrupt() {
    counters().stray_interrupts.fetch_add(1, Ordering::Relaxed);
    apic::eoi();
}

extern "C" fn timer_interrupt() {
    timer_tick();
    apic::eoi();
}

extern "C" fn dma_fault_interrupt() {
    dma_fault_event();
    apic::eoi();
}

/// Entry points for the IDT.
pub fn timer_entry() -> u64 {
    host_timer_stub as *const () as u64
}

pub fn dma_fault_entry() -> u64 {
    host_dma_fault_stub as *const () as u64
}

pub fn stray_entry() -> u64 {
    host_stray_stub as *const () as u64
}

pub fn spurious_entry() -> u64 {
    host_spurious_stub as *const () as u64
}
