//! A hostile guest against ELI's isolation (and baseline's): it owns every gate of its IDT, sends
//! itself interrupts on the host's vectors, raises TPR to block everything, never EOIs, reloads its IDT
//! at a non-RAM address and back; the host must keep its timer through all of it and never deliver a
//! vector of its own into the guest. It also checks that it started with nothing of an earlier guest
//! in the CPU (debug registers, CR2, FPU/SSE state, SYSCALL/SWAPGS MSRs), that SYSCALL and SWAPGS use
//! its own MSRs, and then dirties all of that for the next guest to check. Runs only under Exitless.
#![no_std]
#![no_main]

use core::sync::atomic::{AtomicU64, Ordering};
use guest_tests::{apic, hypervisor, idt, suite::Suite, Env, Mode};
use x86_64::registers::model_specific::Msr;

guest_tests::entry!(main);

/// Arrivals per vector, from a handler on every vector 0x20..=0xFF.
static ARRIVALS: [AtomicU64; 256] = [const { AtomicU64::new(0) }; 256];

fn count_and_eoi(vector: u8) {
    ARRIVALS[usize::from(vector)].fetch_add(1, Ordering::SeqCst);
    apic::eoi();
}

fn count_without_eoi(vector: u8) {
    ARRIVALS[usize::from(vector)].fetch_add(1, Ordering::SeqCst);
}

fn arrivals(vector: u8) -> u64 {
    ARRIVALS[usize::from(vector)].load(Ordering::SeqCst)
}

fn total_arrivals() -> u64 {
    ARRIVALS.iter().map(|a| a.load(Ordering::SeqCst)).sum()
}

fn tsc() -> u64 {
    // SAFETY: RDTSC is always available here.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// Spins `ticks` TSC ticks with interrupts enabled; returns the host ticks that passed meanwhile.
fn spin_open(ticks: u64) -> u64 {
    let before = hypervisor::host_timer_ticks();
    x86_64::instructions::interrupts::enable();
    let start = tsc();
    while tsc() - start < ticks {
        core::hint::spin_loop();
    }
    x86_64::instructions::interrupts::disable();
    hypervisor::host_timer_ticks() - before
}

/// The host's vectors (the top priority class) and a few of its ticks' worth of TSC (period 5 M).
const HOST_TIMER_VECTOR: u8 = 0xFE;
const HOST_FAULT_VECTOR: u8 = 0xFD;
const FOUR_HOST_PERIODS: u64 = 20_000_000;
const X2APIC_SELF_IPI: u32 = 0x83F;
const X2APIC_LVT_TIMER: u32 = 0x832;
const X2APIC_TIMER_INITIAL: u32 = 0x838;
const X2APIC_TIMER_DIVIDE: u32 = 0x83E;
const IA32_STAR: u32 = 0xC000_0081;
const IA32_LSTAR: u32 = 0xC000_0082;
const IA32_FMASK: u32 = 0xC000_0084;
const IA32_GS_BASE: u32 = 0xC000_0101;
const IA32_KERNEL_GS_BASE: u32 = 0xC000_0102;
const IA32_TSC_AUX: u32 = 0xC000_0103;
/// The guest boot protocol's GDT: code 0x08, data 0x10 (SYSCALL loads SS = STAR[47:32] + 8).
const KERNEL_CS: u64 = 0x08;
/// What this guest leaves behind for the next one.
const DIRT: u64 = 0xFFFF_8EC2_E7D1_2700;
// (Canonical, so that LSTAR and KERNEL_GS_BASE take it.)

fn read_msr(msr: u32) -> u64 {
    // SAFETY: architectural MSRs this guest may read.
    unsafe { Msr::new(msr).read() }
}

fn write_msr(msr: u32, value: u64) {
    // SAFETY: architectural MSRs this guest owns; the values are valid for them.
    unsafe { Msr::new(msr).write(value) }
}

fn debug_registers() -> [u64; 5] {
    let (mut d0, mut d1, mut d2, mut d3, mut d6): (u64, u64, u64, u64, u64);
    // SAFETY: CPL 0; reading debug registers has no effect.
    unsafe {
        core::arch::asm!(
            "mov {0}, dr0", "mov {1}, dr1", "mov {2}, dr2", "mov {3}, dr3", "mov {4}, dr6",
            out(reg) d0, out(reg) d1, out(reg) d2, out(reg) d3, out(reg) d6,
            options(nomem, nostack),
        );
    }
    [d0, d1, d2, d3, d6]
}

fn cr2() -> u64 {
    x86_64::registers::control::Cr2::read_raw()
}

/// The x87 control word, MXCSR and XMM0/XMM15 (low halves), with SSE enabled (CR4.OSFXSR).
fn fpu_sse_state() -> (u16, u32, u64, u64) {
    enable_sse();
    let (mut fcw, mut mxcsr, mut x0, mut x15) = (0u16, 0u32, 0u64, 0u64);
    // SAFETY: SSE is enabled; the stores go to locals.
    unsafe {
        core::arch::asm!(
            "fnstcw [{fcw}]",
            "stmxcsr [{mxcsr}]",
            "movq {x0}, xmm0",
            "movq {x15}, xmm15",
            fcw = in(reg) &mut fcw,
            mxcsr = in(reg) &mut mxcsr,
            x0 = out(reg) x0,
            x15 = out(reg) x15,
            options(nostack),
        );
    }
    (fcw, mxcsr, x0, x15)
}

fn enable_sse() {
    use x86_64::registers::control::{Cr0, Cr0Flags, Cr4, Cr4Flags};
    // SAFETY: enabling SSE as an OS does (SDM Vol. 3A 13.1.3); this guest's code uses no SSE itself.
    unsafe {
        Cr0::update(|f| {
            f.remove(Cr0Flags::EMULATE_COPROCESSOR | Cr0Flags::TASK_SWITCHED);
            f.insert(Cr0Flags::MONITOR_COPROCESSOR);
        });
        Cr4::update(|f| f.insert(Cr4Flags::OSFXSR | Cr4Flags::OSXMMEXCPT_ENABLE));
    }
}

/// Leaves this guest's values everywhere the next guest must not find them.
fn dirty_cpu_state() {
    enable_sse();
    let mxcsr = 0x1F00u32; // not the reset value: round-to-nearest, all exceptions masked but PM
                           // SAFETY: CPL 0; debug address registers without DR7 enables have no effect; CR2 is only read by
                           // a page-fault handler; the MSRs are the guest's own; SSE is enabled.
    unsafe {
        core::arch::asm!(
            "mov dr0, {v}", "mov dr1, {v}", "mov dr2, {v}", "mov dr3, {v}",
            "mov cr2, {v}",
            "movq xmm0, {v}", "movq xmm15, {v}",
            "ldmxcsr [{mxcsr}]",
            v = in(reg) DIRT,
            mxcsr = in(reg) &mxcsr,
            options(nostack),
        );
    }
    for msr in [IA32_LSTAR, IA32_KERNEL_GS_BASE] {
        write_msr(msr, DIRT);
    }
    write_msr(IA32_TSC_AUX, 0x5EC);
    write_msr(IA32_STAR, KERNEL_CS << 32);
}

core::arch::global_asm!(
    r#"
    .section .text.hostile_syscall, "ax"
    .global hostile_syscall_target
    hostile_syscall_target:
        mov r10, 0x5CA11
        jmp rcx
    "#
);

extern "C" {
    fn hostile_syscall_target();
}

/// SYSCALL through the guest's own LSTAR/STAR/FMASK: returns what the target left in R10.
fn syscall_through_own_msrs() -> u64 {
    write_msr(IA32_STAR, KERNEL_CS << 32);
    write_msr(IA32_LSTAR, hostile_syscall_target as *const () as u64);
    write_msr(IA32_FMASK, 0);
    let mut r10: u64 = 0;
    // SAFETY: SYSCALL at CPL 0 to a target that jumps straight back to RCX (the next instruction);
    // SCE is set just before; RCX and R11 are clobbered as SYSCALL defines.
    unsafe {
        let efer = Msr::new(0xC000_0080).read();
        Msr::new(0xC000_0080).write(efer | 1);
        core::arch::asm!(
            "syscall",
            inout("r10") r10,
            out("rcx") _,
            out("r11") _,
        );
        Msr::new(0xC000_0080).write(efer);
    }
    r10
}

/// SWAPGS with the guest's own KERNEL_GS_BASE: returns the GS base it produced.
fn swapgs_through_own_msr(value: u64) -> u64 {
    let gs = read_msr(IA32_GS_BASE);
    write_msr(IA32_KERNEL_GS_BASE, value);
    // SAFETY: the guest does not use GS; it is swapped back at once.
    unsafe { core::arch::asm!("swapgs", options(nomem, nostack)) };
    let swapped = read_msr(IA32_GS_BASE);
    // SAFETY: as above.
    unsafe { core::arch::asm!("swapgs", options(nomem, nostack)) };
    write_msr(IA32_GS_BASE, gs);
    swapped
}

fn check(ok: bool, why: &'static str) -> Result<(), &'static str> {
    ok.then_some(()).ok_or(why)
}

fn main(env: &Env) -> u32 {
    let mut suite = Suite::begin("hostile-irq");
    if env.mode != Mode::Exitless {
        suite.skip("all", "not under Exitless");
        return suite.end();
    }

    // Before anything else touches them: what the previous guest left must be gone.
    let dr = debug_registers();
    let (fcw, mxcsr, x0, x15) = fpu_sse_state();
    let msrs = [IA32_STAR, IA32_LSTAR, IA32_KERNEL_GS_BASE, IA32_TSC_AUX].map(read_msr);
    guest_tests::println!(
        "guest: at start dr0-3,6 {dr:x?} cr2 {:#x} fcw {fcw:#x} mxcsr {mxcsr:#x} xmm0 {x0:#x} xmm15 {x15:#x} star/lstar/kgsbase/tscaux {msrs:x?}",
        cr2()
    );
    suite.check(
        "starts-with-clean-debug-registers-and-cr2",
        check(
            dr == [0, 0, 0, 0, 0xFFFF_0FF0] && cr2() == 0,
            "an earlier guest's DR0-3/DR6/CR2 are visible",
        ),
    );
    suite.check(
        "starts-with-initial-fpu-sse-state",
        check(
            fcw == 0x37F && mxcsr == 0x1F80 && x0 == 0 && x15 == 0,
            "an earlier guest's x87/SSE state is visible",
        ),
    );
    suite.check(
        "starts-with-clean-syscall-msrs",
        check(
            msrs == [0; 4],
            "an earlier guest's STAR/LSTAR/KERNEL_GS_BASE/TSC_AUX are visible",
        ),
    );

    suite.check(
        "syscall-uses-the-guests-lstar",
        check(
            syscall_through_own_msrs() == 0x5CA11,
            "SYSCALL did not reach the guest's LSTAR target",
        ),
    );
    suite.check(
        "swapgs-uses-the-guests-kernel-gs-base",
        check(
            swapgs_through_own_msr(0xFFFF_8000_1234_5000) == 0xFFFF_8000_1234_5000,
            "SWAPGS did not load the guest's KERNEL_GS_BASE",
        ),
    );

    apic::enable_x2apic();
    for vector in 0x20..=0xFFu8 {
        idt::set_handler(vector, count_and_eoi);
    }
    // Every gate of the guest's IDT is present and its own: if any host vector were raised on this CPU
    // while the guest runs, it would land here.
    let ticks = spin_open(FOUR_HOST_PERIODS);
    guest_tests::println!(
        "guest: open spin: {ticks} host ticks, {} arrivals",
        total_arrivals()
    );
    suite.check(
        "host-vectors-never-delivered",
        check(
            total_arrivals() == 0,
            "a vector nobody of the guest's raised was delivered",
        ),
    );
    suite.check(
        "host-ticks-with-all-gates-present",
        check(ticks >= 3, "the host timer stopped"),
    );

    // An exit storm with interrupts off: every exit is short, none is the host's tick, yet the host
    // counts its ticks at each of them.
    let before = hypervisor::host_timer_ticks();
    let start = tsc();
    while tsc() - start < FOUR_HOST_PERIODS {
        let _ = core::arch::x86_64::__cpuid(0);
    }
    let ticks = hypervisor::host_timer_ticks() - before;
    suite.check(
        "host-ticks-through-an-exit-storm-with-interrupts-off",
        check(ticks >= 3, "the host timer stopped during an exit storm"),
    );

    // Its own interrupts on the host's vector numbers are just its own: each arrives once, by
    // injection, and the host's timer is not disturbed.
    for vector in [HOST_TIMER_VECTOR, HOST_FAULT_VECTOR] {
        write_msr(X2APIC_SELF_IPI, u64::from(vector));
    }
    write_msr(X2APIC_TIMER_DIVIDE, 0b1011);
    write_msr(X2APIC_LVT_TIMER, u64::from(HOST_TIMER_VECTOR));
    write_msr(X2APIC_TIMER_INITIAL, 10_000);
    let ticks = spin_open(FOUR_HOST_PERIODS);
    suite.check(
        "self-ipi-and-lvt-on-host-vectors-are-the-guests",
        check(
            arrivals(HOST_TIMER_VECTOR) == 2 && arrivals(HOST_FAULT_VECTOR) == 1,
            "self-IPIs/LVT timer on 0xFE/0xFD did not arrive exactly once each",
        ),
    );
    suite.check(
        "host-ticks-after-host-vector-self-ipis",
        check(ticks >= 3, "the host timer stopped"),
    );

    // Its own vector in service for good (never EOI'd) blocks only the guest.
    idt::set_handler(HOST_TIMER_VECTOR, count_without_eoi);
    write_msr(X2APIC_SELF_IPI, u64::from(HOST_TIMER_VECTOR));
    let ticks = spin_open(FOUR_HOST_PERIODS);
    suite.check(
        "host-ticks-while-guest-never-eois",
        check(
            arrivals(HOST_TIMER_VECTOR) == 3 && ticks >= 3,
            "the host timer stopped",
        ),
    );

    // CR8 = 15 blocks every maskable interrupt of the guest's; it keeps that value across exits, and
    // the host's time does not depend on it.
    // SAFETY: CR8 only gates interrupt delivery.
    unsafe { core::arch::asm!("mov cr8, {}", in(reg) 15u64, options(nomem, nostack)) };
    let ticks = spin_open(FOUR_HOST_PERIODS);
    let _ = core::arch::x86_64::__cpuid(0); // an exit
    let cr8: u64;
    // SAFETY: reading CR8 has no effect.
    unsafe { core::arch::asm!("mov {}, cr8", out(reg) cr8, options(nomem, nostack)) };
    // SAFETY: as above.
    unsafe { core::arch::asm!("mov cr8, {}", in(reg) 0u64, options(nomem, nostack)) };
    suite.check(
        "host-ticks-with-tpr-15",
        check(ticks >= 3, "the host timer stopped"),
    );
    suite.check(
        "cr8-kept-across-exits",
        check(cr8 == 15, "CR8 changed across exits"),
    );

    // CR8 and the x2APIC TPR are one register (SDM Vol. 3A 11.8.6.1), and a virtual interrupt waits
    // for it like any other: class 5 is held while CR8 is 6, taken once it drops. (The vector left
    // in service above is completed first, or its class would hold everything below it.)
    apic::eoi();
    idt::set_handler(HOST_TIMER_VECTOR, count_and_eoi);
    const X2APIC_TPR: u32 = 0x808;
    // SAFETY: as above.
    unsafe { core::arch::asm!("mov cr8, {}", in(reg) 6u64, options(nomem, nostack)) };
    let tpr_after_cr8 = read_msr(X2APIC_TPR);
    write_msr(X2APIC_TPR, 0x70);
    let cr8_after_tpr: u64;
    // SAFETY: as above.
    unsafe { core::arch::asm!("mov {}, cr8", out(reg) cr8_after_tpr, options(nomem, nostack)) };
    // SAFETY: as above.
    unsafe { core::arch::asm!("mov cr8, {}", in(reg) 6u64, options(nomem, nostack)) };
    suite.check(
        "cr8-and-tpr-msr-agree",
        check(
            tpr_after_cr8 == 0x60 && cr8_after_tpr == 7,
            "CR8 and the TPR MSR disagree",
        ),
    );
    write_msr(X2APIC_SELF_IPI, 0x55);
    spin_open(FOUR_HOST_PERIODS / 4);
    let held = arrivals(0x55);
    // SAFETY: as above.
    unsafe { core::arch::asm!("mov cr8, {}", in(reg) 0u64, options(nomem, nostack)) };
    spin_open(FOUR_HOST_PERIODS / 4);
    suite.check(
        "virtual-interrupt-waits-for-tpr",
        check(
            held == 0 && arrivals(0x55) == 1,
            "a self-IPI below TPR was delivered, or never after TPR dropped",
        ),
    );

    // INT n reaches the guest's own gates, on any vector, the host's numbers included.
    let before = (arrivals(0x80), arrivals(HOST_FAULT_VECTOR));
    // SAFETY: software interrupts to the guest's own handlers, which return.
    unsafe { core::arch::asm!("int 0x80", "int 0xfd", options(nomem, nostack)) };
    suite.check(
        "int-n-reaches-the-guests-gates",
        check(
            (arrivals(0x80), arrivals(HOST_FAULT_VECTOR)) == (before.0 + 1, before.1 + 1),
            "INT 0x80 / INT 0xFD did not reach the guest's handlers",
        ),
    );

    // LIDT at the non-RAM page where the hypervisor's shadow IDT used to be, and back: nothing of the
    // host's is there to unprotect; its own IDT stays as writable as it was.
    let own = x86_64::instructions::tables::sidt();
    let bogus = x86_64::structures::DescriptorTablePointer {
        limit: 0xFFF,
        base: x86_64::VirtAddr::new(0xFEB0_0000),
    };
    // SAFETY: interrupts are off and nothing faults between the two loads.
    unsafe {
        x86_64::instructions::tables::lidt(&bogus);
        x86_64::instructions::tables::lidt(&own);
    }
    idt::move_gate(0x81, 0x80);
    let before = (arrivals(0x80), arrivals(0x81));
    // SAFETY: as above.
    unsafe { core::arch::asm!("int 0x80", options(nomem, nostack)) };
    idt::move_gate(0x80, 0x80);
    suite.check(
        "lidt-elsewhere-and-back-leaves-its-idt-its-own",
        check(
            (arrivals(0x80), arrivals(0x81)) == (before.0, before.1 + 1),
            "a rewritten gate was not followed after LIDT elsewhere and back",
        ),
    );

    dirty_cpu_state();
    suite.end()
}
