//! A guest that does what a hostile or buggy kernel does with the CPU, and checks from inside that
//! each ends as on bare metal: debug exceptions reach its own handler with DR6 right (the hypervisor
//! intercepts #DB), and invalid MSR, CR4 and XCR0 writes raise #GP in the guest instead of being
//! accepted or breaking the next VM entry. At CPL 3 (`guest_tests::ring3`), VMCALL raises #UD instead
//! of reaching the hypercall interface, and an unaligned load with alignment checking on raises #AC.
#![no_std]
#![no_main]

use guest_tests::{hypervisor, idt, ring3, suite::Suite, Env, Mode};
use x86_64::registers::model_specific::Msr;

guest_tests::entry!(main);

const VECTOR_DB: u8 = 1;
const VECTOR_UD: u8 = 6;
const VECTOR_GP: u8 = 13;
const VECTOR_AC: u8 = 17;
/// CR0.AM: alignment checking at CPL 3 when RFLAGS.AC is also set (SDM Vol. 3A 2.5).
const CR0_AM: u64 = 1 << 18;
/// The exit code the CPL-3 VMCALL asks to power off with, were it accepted.
const CPL3_POWER_OFF_CODE: u32 = 0x33;
/// Basic exit reason 0, exception or NMI (SDM Vol. 3D Appendix C).
const EXIT_EXCEPTION: usize = 0;
/// DR6.BS: the #DB was a single-step trap (SDM Vol. 3A 19.2.3).
const DR6_BS: u64 = 1 << 14;
/// DR6 after reset (SDM Vol. 3A 19.2.3), so no stale BS can pass the check.
const DR6_INIT: u64 = 0xFFFF_0FF0;
const MSR_PAT: u32 = 0x277;
const MSR_EFER: u32 = 0xC000_0080;
const MSR_FS_BASE: u32 = 0xC000_0100;
const CR4_VMXE: u64 = 1 << 13;
const CR4_OSXSAVE: u64 = 1 << 18;
/// Length of `mov cr4, rax` (0F 22 E0) and of `xsetbv` (0F 01 D1).
const THREE_BYTES: u64 = 3;

fn main(env: &Env) -> u32 {
    let virtualized = env.mode == Mode::Exitless;
    let name = match (virtualized, virtualized && hypervisor::eli_mode()) {
        (false, _) => "hostile-bare",
        (true, false) => "hostile-baseline",
        (true, true) => "hostile-eli",
    };
    let mut suite = Suite::begin(name);

    single_step(env, &mut suite);
    icebp(&mut suite);
    msr_writes(&mut suite);
    cr4_vmxe(&mut suite);
    xsetbv(&mut suite);

    vmcall_cpl3(&mut suite);
    ac_cpl3(env, &mut suite);
    suite.end()
}

fn set_dr6(value: u64) {
    // SAFETY: writing DR6 at CPL 0 only changes debug status bits.
    unsafe { core::arch::asm!("mov dr6, {}", in(reg) value, options(nomem, nostack)) };
}

/// RFLAGS.TF set by POPF traps after the next instruction (SDM Vol. 3A 19.3.1.4); the handler
/// records DR6 and clears TF.
fn single_step(env: &Env, suite: &mut Suite) {
    set_dr6(DR6_INIT);
    let before = (env.mode == Mode::Exitless).then(|| hypervisor::exit_counters(env));
    idt::expect_exception_skipping(VECTOR_DB, 0);
    // SAFETY: sets TF for one instruction; the expected #DB handler clears it again.
    unsafe { core::arch::asm!("pushfq", "or qword ptr [rsp], 0x100", "popfq", "nop",) };
    let after = before.map(|_| hypervisor::exit_counters(env));
    let taken = idt::take_exception();
    let dr6 = idt::last_dr6();
    suite.check(
        "db-single-step",
        match taken {
            Some(VECTOR_DB) if dr6 & DR6_BS != 0 => Ok(()),
            Some(VECTOR_DB) => Err("#DB reached the handler without DR6.BS"),
            _ => Err("no #DB after a single step"),
        },
    );
    match (before, after) {
        (Some(b), Some(a)) => suite.check(
            "db-intercepted",
            (a[EXIT_EXCEPTION] > b[EXIT_EXCEPTION])
                .then_some(())
                .ok_or("the #DB did not exit to the hypervisor"),
        ),
        _ => suite.skip("db-intercepted", "bare metal"),
    }
}

/// INT1 (ICEBP, F1) raises #DB as a trap; reflected, it needs its instruction length (SDM Vol. 3C
/// 26.6.1.3), or the VM entry fails.
fn icebp(suite: &mut Suite) {
    idt::expect_exception_skipping(VECTOR_DB, 0);
    // SAFETY: INT1 at CPL 0 delivers #DB, which the handler expects.
    unsafe { core::arch::asm!(".byte 0xf1") };
    suite.check(
        "icebp-db",
        (idt::take_exception() == Some(VECTOR_DB))
            .then_some(())
            .ok_or("no #DB from INT1"),
    );
}

/// WRMSR `value` to `msr`, expecting #GP and the MSR unchanged.
fn wrmsr_refused(msr: u32, value: u64) -> Result<(), &'static str> {
    // SAFETY: these MSRs are readable; a refused write does nothing.
    let old = unsafe { Msr::new(msr).read() };
    idt::expect_exception(VECTOR_GP);
    // SAFETY: the write is invalid and raises #GP, which the handler expects and skips.
    unsafe { Msr::new(msr).write(value) };
    // SAFETY: as above.
    let now = unsafe { Msr::new(msr).read() };
    match idt::take_exception() {
        Some(VECTOR_GP) if now == old => Ok(()),
        Some(VECTOR_GP) => Err("#GP, but the MSR changed"),
        _ => Err("the write was accepted"),
    }
}

fn msr_writes(suite: &mut Suite) {
    // SAFETY: EFER is readable at CPL 0.
    let efer = unsafe { Msr::new(MSR_EFER).read() };
    // Bit 12 (SVME on AMD) is reserved on Intel (SDM Vol. 3A 2.2.1).
    suite.check("efer-reserved-gp", wrmsr_refused(MSR_EFER, efer | 1 << 12));
    suite.check(
        "fs-base-noncanonical-gp",
        wrmsr_refused(MSR_FS_BASE, 0x0000_8000_0000_0000),
    );
    // Memory type 2 in PAT entry 0 is reserved (SDM Vol. 3A Table 13-10).
    suite.check(
        "pat-invalid-gp",
        wrmsr_refused(MSR_PAT, 0x0007_0406_0007_0402),
    );
}

fn read_cr4() -> u64 {
    let cr4: u64;
    // SAFETY: reading CR4 at CPL 0 has no side effects.
    unsafe { core::arch::asm!("mov {}, cr4", out(reg) cr4, options(nomem, nostack)) };
    cr4
}

/// MOV to CR4 with `value`; `Some(vector)` if it faulted.
fn write_cr4(value: u64, expect: u8) -> Option<u8> {
    idt::expect_exception_skipping(expect, THREE_BYTES);
    // SAFETY: the callers change only VMXE (refused) or OSXSAVE (harmless to this guest).
    unsafe { core::arch::asm!("mov cr4, rax", in("rax") value, options(nostack)) };
    idt::take_exception()
}

/// VMX is hidden from the guest (CPUID.1:ECX.VMX = 0), so CR4.VMXE is a reserved bit to it.
fn cr4_vmxe(suite: &mut Suite) {
    if core::arch::x86_64::__cpuid(1).ecx & (1 << 5) != 0 {
        suite.skip(
            "cr4-vmxe-gp",
            "this CPU shows VMX: VMXE is a valid CR4 bit here",
        );
        return;
    }
    let before = read_cr4();
    let fault = write_cr4(before | CR4_VMXE, VECTOR_GP);
    suite.check(
        "cr4-vmxe-gp",
        match fault {
            Some(VECTOR_GP) if read_cr4() == before => Ok(()),
            Some(VECTOR_GP) => Err("#GP, but CR4 changed"),
            _ => Err("CR4.VMXE was accepted"),
        },
    );
}

/// XSETBV `value` to XCR0; `Some(vector)` if it faulted.
fn xsetbv0(value: u64) -> Option<u8> {
    idt::expect_exception_skipping(VECTOR_GP, THREE_BYTES);
    // SAFETY: x87 and SSE state only, or an invalid value that faults; the guest uses no FPU state.
    unsafe {
        core::arch::asm!("xsetbv", in("ecx") 0, in("eax") value as u32, in("edx") (value >> 32) as u32,
            options(nostack))
    };
    idt::take_exception()
}

fn xgetbv0() -> u64 {
    let (eax, edx): (u32, u32);
    // SAFETY: XGETBV with ECX = 0 reads XCR0; CR4.OSXSAVE is set by the caller.
    unsafe {
        core::arch::asm!("xgetbv", in("ecx") 0, out("eax") eax, out("edx") edx, options(nomem, nostack))
    };
    u64::from(eax) | u64::from(edx) << 32
}

/// XSETBV's checks (SDM Vol. 2C XSETBV, Vol. 1 13.3) and a valid XCR0 = x87 | SSE.
fn xsetbv(suite: &mut Suite) {
    let names = [
        "cpuid-osxsave-follows-cr4",
        "xsetbv-x87-clear-gp",
        "xsetbv-avx-without-sse-gp",
        "xsetbv-xcr0-3",
    ];
    if core::arch::x86_64::__cpuid(1).ecx & (1 << 26) == 0 {
        for name in names {
            suite.skip(name, "CPUID shows no XSAVE");
        }
        return;
    }
    let osxsave_shown = || core::arch::x86_64::__cpuid(1).ecx & (1 << 27) != 0;
    let shown_before = osxsave_shown();
    let cr4 = read_cr4();
    let enabled = write_cr4(cr4 | CR4_OSXSAVE, VECTOR_UD).is_none();
    suite.check(
        names[0],
        match (
            cr4 & CR4_OSXSAVE != 0,
            shown_before,
            enabled,
            osxsave_shown(),
        ) {
            (_, _, false, _) => Err("setting CR4.OSXSAVE faulted"),
            (was, before, true, after) if before == was && after => Ok(()),
            _ => Err("CPUID.1:ECX.OSXSAVE does not follow CR4.OSXSAVE"),
        },
    );
    suite.check(
        names[1],
        (xsetbv0(0b10) == Some(VECTOR_GP))
            .then_some(())
            .ok_or("XCR0 without x87 was accepted"),
    );
    suite.check(
        names[2],
        (xsetbv0(0b101) == Some(VECTOR_GP))
            .then_some(())
            .ok_or("XCR0 with AVX but no SSE was accepted"),
    );
    suite.check(
        names[3],
        match (xsetbv0(0b11), xgetbv0()) {
            (Some(_), _) => Err("XSETBV of x87|SSE faulted"),
            (None, 0b11) => Ok(()),
            (None, _) => Err("XGETBV does not read back x87|SSE"),
        },
    );
}

// Code run at CPL 3 by `ring3::run_at_cpl3`. Each ends in HLT, which at CPL 3 raises #GP(0) (SDM
// Vol. 3A 5.9, "Privileged Instructions"), so an instruction that should have faulted but did not
// shows up as a #GP one instruction later.
core::arch::global_asm!(
    r#"
    .section .text.hostile_cpl3, "ax"
    .global cpl3_vmcall
    cpl3_vmcall:
        mov eax, {power_off}
        mov edi, {code}
    .global cpl3_vmcall_insn
    cpl3_vmcall_insn:
        vmcall
        hlt
    .global cpl3_unaligned_load
    cpl3_unaligned_load:
        mov eax, dword ptr [rsp + 1]
        hlt
    "#,
    power_off = const exitless_abi::hypercall::Hypercall::PowerOff as u32,
    code = const CPL3_POWER_OFF_CODE,
);

extern "C" {
    fn cpl3_vmcall() -> !;
    fn cpl3_vmcall_insn() -> !;
    fn cpl3_unaligned_load() -> !;
}

/// VMCALL at CPL 3 with RAX = PowerOff: the hypervisor refuses hypercalls from CPL > 0 with #UD (as
/// bare metal outside VMX, SDM Vol. 2C VMCALL), so the guest's handler gets #UD at the VMCALL and the
/// guest goes on; accepted, the guest would be powered off here and never report.
fn vmcall_cpl3(suite: &mut Suite) {
    let exit = ring3::run_at_cpl3(cpl3_vmcall, 0);
    let at = cpl3_vmcall_insn as *const () as u64;
    suite.check(
        "vmcall-cpl3-ud",
        match exit {
            e if e.cs & 3 != 3 => Err("the exception did not come from CPL 3"),
            e if e.vector == VECTOR_UD && e.rip == at => Ok(()),
            e if e.vector == VECTOR_UD => Err("#UD, but not at the VMCALL"),
            e if e.vector == VECTOR_GP && e.rip == at + 3 => {
                Err("VMCALL at CPL 3 returned instead of raising #UD")
            }
            _ => Err("VMCALL at CPL 3 raised something other than #UD"),
        },
    );
}

/// CR0.AM = 1 and RFLAGS.AC = 1: a 4-byte load from an odd address at CPL 3 raises #AC(0) (SDM
/// Vol. 3A 6.15, "Interrupt 17—Alignment Check Exception"). The hypervisor intercepts #AC (its
/// exception bitmap) and reflects it; under Exitless the exit counters show the exception exit.
fn ac_cpl3(env: &Env, suite: &mut Suite) {
    use x86_64::registers::control::Cr0;
    let cr0 = Cr0::read_raw();
    // SAFETY: AM only enables alignment checking at CPL 3, where nothing but this test runs.
    unsafe { Cr0::write_raw(cr0 | CR0_AM) };
    let before = (env.mode == Mode::Exitless).then(|| hypervisor::exit_counters(env));
    let exit = ring3::run_at_cpl3(cpl3_unaligned_load, ring3::RFLAGS_AC);
    let after = before.map(|_| hypervisor::exit_counters(env));
    // SAFETY: restores CR0 as it was.
    unsafe { Cr0::write_raw(cr0) };
    let at = cpl3_unaligned_load as *const () as u64;
    suite.check(
        "ac-cpl3",
        match exit {
            e if e.cs & 3 != 3 => Err("the exception did not come from CPL 3"),
            e if e.vector == VECTOR_AC && e.rip == at && e.error_code == 0 => Ok(()),
            e if e.vector == VECTOR_AC && e.rip == at => Err("#AC with a nonzero error code"),
            e if e.vector == VECTOR_AC => Err("#AC, but not at the unaligned load"),
            _ => Err("no #AC from an unaligned load at CPL 3 with CR0.AM and RFLAGS.AC"),
        },
    );
    match (before, after) {
        (Some(b), Some(a)) => suite.check(
            "ac-cpl3-intercepted",
            (a[EXIT_EXCEPTION] > b[EXIT_EXCEPTION])
                .then_some(())
                .ok_or("the #AC did not exit to the hypervisor"),
        ),
        _ => suite.skip("ac-cpl3-intercepted", "bare metal"),
    }
}
