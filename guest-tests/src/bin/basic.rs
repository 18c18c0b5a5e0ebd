//! Basic exits: CPUID, MSRs, I/O, a refused ICR write, and the exit counters themselves; LIDT/SIDT
//! without exits.
#![no_std]
#![no_main]

use exitless_abi::hypercall::{Hypercall, ABI_VERSION};
use guest_tests::{apic, hypervisor, idt, suite::Suite, Env, Mode};
use x86_64::registers::model_specific::Msr;

guest_tests::entry!(main);

/// Basic exit reasons (SDM Vol. 3D Appendix C).
const EXIT_IO_INSTRUCTION: usize = 30;
const EXIT_RDMSR: usize = 31;
const EXIT_LIDT_SIDT: usize = 46;
/// An MSR no CPU implements (inside the range an MSR bitmap covers, so the bitmap decides).
const UNKNOWN_MSR: u32 = 0x1FF0;
/// A port nothing decodes: reads float to all ones.
const UNUSED_PORT: u16 = 0x2E0;

fn main(env: &Env) -> u32 {
    let mut suite = Suite::begin("basic");
    let virtualized = env.mode == Mode::Exitless;

    if virtualized {
        suite.check(
            "hypercall-version",
            (hypervisor::call(Hypercall::Version, 0, 0, 0) == ABI_VERSION)
                .then_some(())
                .ok_or("wrong ABI version"),
        );
        let vmx_visible = core::arch::x86_64::__cpuid(1).ecx & (1 << 5) != 0;
        suite.check(
            "cpuid-hides-vmx",
            (!vmx_visible)
                .then_some(())
                .ok_or("CPUID.1:ECX.VMX is set in the guest"),
        );
    } else {
        suite.skip("hypercall-version", "bare metal");
        suite.skip("cpuid-hides-vmx", "bare metal");
    }

    idt::expect_exception(13);
    // SAFETY: reading an unimplemented MSR raises #GP, which the handler expects and skips.
    let _ = unsafe { Msr::new(UNKNOWN_MSR).read() };
    suite.check(
        "unknown-msr-gp",
        (idt::take_exception() == Some(13))
            .then_some(())
            .ok_or("no #GP"),
    );

    // Each counted operation is bracketed by counter reads with nothing else between them (printing a
    // result is itself a stream of I/O exits).
    let before_io = virtualized.then(|| hypervisor::exit_counters(env));
    // SAFETY: reading an unused port has no effect.
    let value = unsafe { x86_64::instructions::port::Port::<u8>::new(UNUSED_PORT).read() };
    let after_io = virtualized.then(|| hypervisor::exit_counters(env));
    let mut idtr = x86_64::instructions::tables::sidt();
    // SAFETY: reloads the IDT that is already loaded.
    unsafe { x86_64::instructions::tables::lidt(&idtr) };
    idtr = x86_64::instructions::tables::sidt();
    let after_dt = virtualized.then(|| hypervisor::exit_counters(env));
    suite.check(
        "unused-port-reads-ones",
        (value == 0xFF)
            .then_some(())
            .ok_or("unused port did not read 0xff"),
    );
    suite.check(
        "sidt-returns-guest-idt",
        (idtr.limit == 4095 && idtr.base.as_u64() >= 0xffff_ffff_8000_0000)
            .then_some(())
            .ok_or("SIDT returned another table"),
    );
    if let (Some(before_io), Some(after_io), Some(after_dt)) = (before_io, after_io, after_dt) {
        let io = after_io[EXIT_IO_INSTRUCTION] - before_io[EXIT_IO_INSTRUCTION];
        suite.check(
            "io-exit-counted",
            (io == 1)
                .then_some(())
                .ok_or("I/O exit count did not grow by 1"),
        );
        // The guest's descriptor tables are its own: LIDT and SIDT run as on bare metal.
        let dt = after_dt[EXIT_LIDT_SIDT] - after_io[EXIT_LIDT_SIDT];
        suite.check(
            "lidt-sidt-without-exits",
            (dt == 0).then_some(()).ok_or("LIDT/SIDT exited"),
        );
        let msr = after_dt[EXIT_RDMSR];
        suite.check(
            "rdmsr-exit-counted",
            (msr >= 1).then_some(()).ok_or("no RDMSR exit counted"),
        );
        // An INIT IPI to all others (ICR: delivery mode INIT, shorthand all-excluding-self) must be refused.
        idt::expect_exception(13);
        // SAFETY: under Exitless the write is refused with #GP; it is never executed bare metal.
        unsafe { apic::write_icr((0b11 << 18) | (0b101 << 8)) };
        suite.check(
            "icr-write-refused",
            (idt::take_exception() == Some(13))
                .then_some(())
                .ok_or("ICR write accepted"),
        );
    } else {
        for name in [
            "io-exit-counted",
            "lidt-sidt-without-exits",
            "rdmsr-exit-counted",
            "icr-write-refused",
        ] {
            suite.skip(name, "bare metal");
        }
    }
    suite.end()
}
