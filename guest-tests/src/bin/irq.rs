//! Device interrupts from an emulated device (COM2's 16550 on IRQ 3 via the IOAPIC), in whatever mode
//! the hypervisor delivers them (or bare metal): each arrives exactly once, on the programmed vector;
//! the host's timer is never seen; a rewritten IDT gate takes effect; under Exitless, ELI takes no exit
//! per interrupt while baseline takes at least two and APICv one (its EOI virtualized), and a guest that keeps interrupts off for good is
//! still preempted by the host's timer.
#![no_std]
#![no_main]

use core::sync::atomic::{AtomicU64, Ordering};
use guest_tests::workload::{self, ALTERNATE_VECTOR, DEVICE_VECTOR};
use guest_tests::{hypervisor, idt, suite::Suite, Env, Mode};

guest_tests::entry!(main);

static TIMER_FIRED: AtomicU64 = AtomicU64::new(0);
static UNACKED: AtomicU64 = AtomicU64::new(0);

/// Takes a device interrupt and never EOIs it: the vector stays in service for good.
fn on_device_without_eoi(_: u8) {
    let _ = guest_tests::apic::Com2::interrupt_id();
    guest_tests::apic::Com2::set_tx_interrupt(false);
    UNACKED.fetch_add(1, Ordering::Relaxed);
}

fn on_timer(_: u8) {
    TIMER_FIRED.fetch_add(1, Ordering::Relaxed);
    guest_tests::apic::eoi();
}

fn tsc() -> u64 {
    // SAFETY: RDTSC is always available here.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// Long enough (about 10 M TSC ticks) that the host timer (every 5 M) fires during the storm.
const INTERRUPTS: u64 = 2500;
const TIMER_VECTOR: u8 = 0x50;
/// Generous: at 115200 baud a byte takes ~4,400 TSC ticks in Bochs (50 M instructions per second).
const LIMIT_TSC: u64 = 200_000_000;
const EXIT_EXTERNAL_INTERRUPT: usize = 1;
const EXIT_WRMSR: usize = 32;

fn main(env: &Env) -> u32 {
    let mut suite = Suite::begin("irq");
    let virtualized = env.mode == Mode::Exitless;
    workload::setup();

    let ticks_before = virtualized.then(hypervisor::host_timer_ticks);
    let before = virtualized.then(|| hypervisor::exit_counters(env));
    let first = workload::run(INTERRUPTS, LIMIT_TSC);
    let after = virtualized.then(|| hypervisor::exit_counters(env));
    let ticks_during = ticks_before.map(|t| hypervisor::host_timer_ticks() - t);
    suite.check(
        "all-arrived",
        (first.handled_a == INTERRUPTS)
            .then_some(())
            .ok_or("not every interrupt arrived in time"),
    );
    suite.check(
        "each-exactly-once",
        (first.sent == first.handled_a + first.handled_b)
            .then_some(())
            .ok_or("interrupts and bytes sent disagree"),
    );
    suite.check(
        "right-vector",
        (first.other == 0)
            .then_some(())
            .ok_or("an interrupt arrived on another vector"),
    );
    guest_tests::println!(
        "guest: {} interrupts in {} TSC ticks ({} per interrupt), work {}",
        first.handled_a,
        first.cycles,
        first.cycles / first.handled_a.max(1),
        first.work
    );

    // Point the device vector's gate at the other stub: interrupts must follow the IDT as written.
    idt::move_gate(ALTERNATE_VECTOR, DEVICE_VECTOR);
    let second = workload::run(INTERRUPTS / 5, LIMIT_TSC);
    suite.check(
        "idt-rewrite-followed",
        (second.handled_b == INTERRUPTS / 5 && second.handled_a == 0)
            .then_some(())
            .ok_or("interrupts did not follow the rewritten gate"),
    );
    idt::move_gate(DEVICE_VECTOR, DEVICE_VECTOR);

    // The LAPIC timer: the real one bare metal, the virtual one under Exitless (in ELI mode this is
    // an injected interrupt: the fallback path).
    idt::set_handler(TIMER_VECTOR, on_timer);
    guest_tests::apic::start_oneshot_timer(TIMER_VECTOR, 100_000);
    x86_64::instructions::interrupts::enable();
    let start = tsc();
    while TIMER_FIRED.load(Ordering::Relaxed) == 0 && tsc() - start < LIMIT_TSC {
        core::hint::spin_loop();
    }
    x86_64::instructions::interrupts::disable();
    suite.check(
        "lapic-timer-once",
        (TIMER_FIRED.load(Ordering::Relaxed) == 1)
            .then_some(())
            .ok_or("the one-shot LAPIC timer did not fire exactly once"),
    );

    if let (Some(before), Some(after)) = (before, after) {
        let external = after[EXIT_EXTERNAL_INTERRUPT] - before[EXIT_EXTERNAL_INTERRUPT];
        let wrmsr = after[EXIT_WRMSR] - before[EXIT_WRMSR];
        guest_tests::println!(
            "guest: exits over the workload: external-interrupt {external}, wrmsr {wrmsr}"
        );
        if hypervisor::eli_mode() {
            // Host timer interrupts may add a handful; device interrupts and EOIs add none.
            suite.check(
                "eli-exitless",
                (external * 100 < INTERRUPTS && wrmsr == 0)
                    .then_some(())
                    .ok_or("ELI took exits per interrupt"),
            );
        } else if hypervisor::apicv_mode() {
            // Each (edge-triggered) interrupt exits once to be posted; its EOI is virtualized.
            suite.check(
                "apicv-one-exit",
                ((INTERRUPTS..=INTERRUPTS + INTERRUPTS / 100).contains(&external) && wrmsr == 0)
                    .then_some(())
                    .ok_or("APICv did not take exactly one exit per interrupt and none per EOI"),
            );
        } else {
            suite.check(
                "baseline-exits",
                (external >= INTERRUPTS && wrmsr >= INTERRUPTS)
                    .then_some(())
                    .ok_or("baseline delivered interrupts without exits"),
            );
        }
        let during = ticks_during.unwrap_or(0);
        guest_tests::println!(
            "guest: the host timer ticked {during} times during the interrupt storm"
        );
        suite.check(
            "host-timer-through-storm",
            (during >= 1)
                .then_some(())
                .ok_or("the host timer did not tick during the interrupt storm"),
        );
        let ticks = hypervisor::host_timer_ticks();
        workload::spin_masked(40_000_000);
        let ticked = hypervisor::host_timer_ticks() - ticks;
        guest_tests::println!(
            "guest: the host timer ticked {ticked} times while interrupts were off"
        );
        suite.check(
            "masked-guest-preempted",
            (ticked >= 3)
                .then_some(())
                .ok_or("the host timer stopped while the guest kept interrupts off"),
        );
        // Last: a guest that takes its device interrupt and never EOIs it, then runs with interrupts
        // on. Its vector stays in service (virtually, or in the LAPIC under ELI); the host's timer,
        // of a higher priority class, must still get through.
        idt::set_handler(DEVICE_VECTOR, on_device_without_eoi);
        guest_tests::apic::Com2::send(b'!');
        guest_tests::apic::Com2::set_tx_interrupt(true);
        x86_64::instructions::interrupts::enable();
        let start = tsc();
        while UNACKED.load(Ordering::Relaxed) == 0 && tsc() - start < LIMIT_TSC {
            core::hint::spin_loop();
        }
        let ticks = hypervisor::host_timer_ticks();
        while tsc() - start < 30_000_000 {
            core::hint::spin_loop();
        }
        x86_64::instructions::interrupts::disable();
        let ticked = hypervisor::host_timer_ticks() - ticks;
        guest_tests::println!("guest: without EOI, the host timer ticked {ticked} times");
        suite.check(
            "no-eoi-guest-preempted",
            (UNACKED.load(Ordering::Relaxed) == 1 && ticked >= 2)
                .then_some(())
                .ok_or("a guest that never EOIs stopped the host timer"),
        );
    } else {
        suite.skip("mode-exits", "bare metal");
        suite.skip("no-eoi-guest-preempted", "bare metal");
        suite.skip("host-timer-through-storm", "bare metal");
        suite.skip("masked-guest-preempted", "bare metal");
    }
    suite.end()
}
