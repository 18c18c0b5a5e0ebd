//! The host's own interrupt vectors: the host timer, the VT-d fault event and the spurious vector.
//!
//! The host keeps interrupts off except in [`service_pending`], a short window in which only host
//! vectors can be delivered (TPR raised to the host's priority class), so interrupts that belong to a
//! guest stay pending in the LAPIC for the guest.

use super::apic::{self, HOST_PRIORITY_FLOOR};
use core::sync::atomic::{AtomicU64, Ordering};

static TIMER_TICKS: AtomicU64 = AtomicU64::new(0);
static DMA_FAULT_EVENTS: AtomicU64 = AtomicU64::new(0);

/// Host timer interrupts taken so far, however they arrived (through the host IDT, or as a VM exit).
pub fn timer_ticks() -> u64 {
    TIMER_TICKS.load(Ordering::Relaxed)
}

/// Accounts one host timer interrupt; the caller has it in service and EOIs it.
pub fn timer_tick() {
    TIMER_TICKS.fetch_add(1, Ordering::Relaxed);
}

/// Accounts one VT-d fault event interrupt; the caller has it in service and EOIs it. The fault
/// records are read later, by whoever owns the units ([`take_dma_fault_events`]).
pub fn dma_fault_event() {
    DMA_FAULT_EVENTS.fetch_add(1, Ordering::Relaxed);
}

/// VT-d fault events since the last call: non-zero means the units' fault records need draining.
pub fn take_dma_fault_events() -> u64 {
    // Called after every VM exit: a plain load keeps the locked swap off that path.
    match DMA_FAULT_EVENTS.load(Ordering::Relaxed) {
        0 => 0,
        _ => DMA_FAULT_EVENTS.swap(0, Ordering::Relaxed),
    }
}

/// Lets pending host interrupts in: TPR at the host floor, one instruction with IF=1, then back.
pub fn service_pending() {
    apic::set_tpr(HOST_PRIORITY_FLOOR);
    // STI delays delivery by one instruction (SDM Vol. 2B STI), so the NOP is where interrupts arrive.
    // SAFETY: the host IDT handles every vector that can be delivered above the raised TPR.
    unsafe { core::arch::asm!("sti", "nop", "cli", options(nomem, nostack)) };
    apic::set_tpr(0);
}

/// TSC ticks between two host timer interrupts, measured from the interrupts themselves; `None` if
/// two ticks do not arrive within `limit_tsc`.
pub fn measure_timer_period(limit_tsc: u64) -> Option<u64> {
    let rdtsc = || {
        // SAFETY: RDTSC at CPL 0.
        unsafe { core::arch::x86_64::_rdtsc() }
    };
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

    .global host_spurious_stub
    host_spurious_stub:
        iretq
    "#,
    timer = sym timer_interrupt,
    dma_fault = sym dma_fault_interrupt,
);

extern "C" {
    fn host_timer_stub();
    fn host_dma_fault_stub();
    fn host_spurious_stub();
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

pub fn spurious_entry() -> u64 {
    host_spurious_stub as *const () as u64
}
