//! The interrupt workload: COM2's 16550 raises a transmit-empty interrupt (IRQ 3, through the IOAPIC)
//! after each byte it sends; the handler counts it, sends the next byte and EOIs. Meanwhile the guest
//! counts loop iterations: the CPU time interrupt handling (and, virtualized, its exits) leaves over.

use crate::apic::{self, Com2, IoApic};
use crate::idt;
use core::sync::atomic::{AtomicU64, Ordering};

/// The guest's device vector (below the host's reserved range, see the hypervisor's `interrupts`).
pub const DEVICE_VECTOR: u8 = 0x40;
/// A second vector whose handler the IDT-rewrite test moves onto [`DEVICE_VECTOR`]'s gate.
pub const ALTERNATE_VECTOR: u8 = 0x41;

static HANDLED_A: AtomicU64 = AtomicU64::new(0);
static HANDLED_B: AtomicU64 = AtomicU64::new(0);
static TARGET: AtomicU64 = AtomicU64::new(0);
static SENT: AtomicU64 = AtomicU64::new(0);
static OTHER: AtomicU64 = AtomicU64::new(0);

/// What one run of the workload measured.
#[derive(Clone, Copy, Debug)]
pub struct Measured {
    /// Interrupts handled through the original handler (A) and the alternate one (B).
    pub handled_a: u64,
    pub handled_b: u64,
    /// Bytes sent (one per handled interrupt, plus the first).
    pub sent: u64,
    /// Interrupts on any other vector.
    pub other: u64,
    /// Guest TSC ticks from the first byte to the last interrupt.
    pub cycles: u64,
    /// Loop iterations the guest completed meanwhile.
    pub work: u64,
    pub timed_out: bool,
}

fn on_device(which: &AtomicU64) {
    // Reading IIR acknowledges the transmit-empty interrupt (16550 datasheet, IIR).
    let _ = Com2::interrupt_id();
    let handled = which.fetch_add(1, Ordering::Relaxed) + 1;
    if HANDLED_A.load(Ordering::Relaxed) + HANDLED_B.load(Ordering::Relaxed)
        < TARGET.load(Ordering::Relaxed)
    {
        SENT.fetch_add(1, Ordering::Relaxed);
        Com2::send(b'0' + (handled % 10) as u8);
    }
    apic::eoi();
}

fn handler_a(_: u8) {
    on_device(&HANDLED_A);
}

fn handler_b(_: u8) {
    on_device(&HANDLED_B);
}

fn handler_other(_: u8) {
    OTHER.fetch_add(1, Ordering::Relaxed);
    apic::eoi();
}

/// Programs the x2APIC, the IOAPIC pin of COM2 and the handlers. Returns the APIC ID.
pub fn setup() -> u32 {
    let apic_id = apic::enable_x2apic();
    apic::mask_legacy_pics();
    for vector in 0x20..=0xFEu8 {
        idt::set_handler(vector, handler_other);
    }
    idt::set_handler(DEVICE_VECTOR, handler_a);
    idt::set_handler(ALTERNATE_VECTOR, handler_b);
    Com2::init();
    IoApic::new(IoApic::DEFAULT_BASE).route(Com2::IRQ, DEVICE_VECTOR, apic_id);
    apic_id
}

/// Runs `count` interrupts (or until `limit_tsc` ticks pass), with interrupts enabled only meanwhile.
pub fn run(count: u64, limit_tsc: u64) -> Measured {
    for counter in [&HANDLED_A, &HANDLED_B, &SENT, &OTHER] {
        counter.store(0, Ordering::Relaxed);
    }
    TARGET.store(count, Ordering::Relaxed);
    let mut work = 0u64;
    // SAFETY: RDTSC is unprivileged and always available here.
    let start = unsafe { core::arch::x86_64::_rdtsc() };
    SENT.store(1, Ordering::Relaxed);
    Com2::send(b'>');
    Com2::set_tx_interrupt(true);
    x86_64::instructions::interrupts::enable();
    let mut now = start;
    while HANDLED_A.load(Ordering::Relaxed) + HANDLED_B.load(Ordering::Relaxed) < count {
        work += 1;
        if work.is_multiple_of(64) {
            // SAFETY: as above.
            now = unsafe { core::arch::x86_64::_rdtsc() };
            if now - start > limit_tsc {
                break;
            }
        }
    }
    // SAFETY: as above.
    let end = unsafe { core::arch::x86_64::_rdtsc() };
    x86_64::instructions::interrupts::disable();
    Com2::set_tx_interrupt(false);
    let handled_a = HANDLED_A.load(Ordering::Relaxed);
    let handled_b = HANDLED_B.load(Ordering::Relaxed);
    Measured {
        handled_a,
        handled_b,
        sent: SENT.load(Ordering::Relaxed),
        other: OTHER.load(Ordering::Relaxed),
        cycles: end - start,
        work,
        timed_out: handled_a + handled_b < count && now - start > limit_tsc,
    }
}

/// Spins with interrupts off for `ticks` TSC ticks (a guest that never lets interrupts in).
pub fn spin_masked(ticks: u64) {
    x86_64::instructions::interrupts::disable();
    // SAFETY: as above.
    let start = unsafe { core::arch::x86_64::_rdtsc() };
    // SAFETY: as above.
    while unsafe { core::arch::x86_64::_rdtsc() } - start < ticks {
        core::hint::spin_loop();
    }
}
