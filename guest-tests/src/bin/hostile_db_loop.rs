//! A guest that makes #DB recur during its own delivery (the CVE-2015-8104 pattern): its #DB gate
//! switches to a stack of its own (IST 1), a data breakpoint covers the first slot that delivery
//! pushes to (SS, at the IST top), then INT1. Delivering the #DB writes that slot, which hits the
//! breakpoint and raises #DB again before the handler's first instruction, on the same fresh IST
//! stack, forever: on bare metal the CPU never retires another instruction and takes no interrupt.
//! Under Exitless every #DB exits (the exception bitmap), and the guest must be stopped with
//! "event-delivery loop" while the host and the next guests run on (the configuration expects
//! exactly that stop).
//!
//! A breakpoint on the IDT's #DB gate itself (read during delivery) does not loop in Bochs: Bochs
//! does not check data breakpoints on the IDT read of event delivery.
#![no_std]
#![no_main]

use guest_tests::{idt, println, ring3, Env};

guest_tests::entry!(main);

const VECTOR_DB: u8 = 1;
/// DR7 (SDM Vol. 3B 18.2.4, "Debug Control Register (DR7)"): L0 enables breakpoint 0; R/W0 = 11
/// breaks on data reads and writes; LEN0 = 10 covers 8 bytes (IA-32e mode; 11 would be 4 bytes).
const DR7_L0: u64 = 1 << 0;
const DR7_RW0_READ_WRITE: u64 = 0b11 << 16;
const DR7_LEN0_8_BYTES: u64 = 0b10 << 18;
const DR7_BREAKPOINT0: u64 = DR7_L0 | DR7_RW0_READ_WRITE | DR7_LEN0_8_BYTES;
/// DR6.B0: breakpoint 0 matched (SDM Vol. 3B 18.2.3).
const DR6_B0: u64 = 1 << 0;

const IST_SIZE: usize = 4096;
#[repr(C, align(16))]
struct IstStack([u8; IST_SIZE]);
static mut DB_STACK: IstStack = IstStack([0; IST_SIZE]);
static PROBE: u64 = 0;

fn set_dr0_dr7(dr0: u64, dr7: u64) {
    // SAFETY: debug registers at CPL 0; the callers arm breakpoint 0 on guest memory or disarm it.
    unsafe {
        core::arch::asm!("mov dr0, {}", "mov dr7, {}", in(reg) dr0, in(reg) dr7, options(nostack))
    };
}

fn main(_env: &Env) -> u32 {
    // First a plain data breakpoint, so that the log tells a CPU without data breakpoints from one
    // whose delivery does not loop.
    let probe = core::ptr::addr_of!(PROBE);
    idt::expect_exception_skipping(VECTOR_DB, 0);
    set_dr0_dr7(probe as u64, DR7_BREAKPOINT0);
    // SAFETY: reads a static; the breakpoint's #DB is a trap that the handler expects.
    let _ = unsafe { probe.read_volatile() };
    set_dr0_dr7(0, 0);
    let (taken, dr6) = (idt::take_exception(), idt::last_dr6());
    println!("guest: data breakpoint on a load: #DB {taken:?}, DR6 {dr6:#x}");
    if taken != Some(VECTOR_DB) || dr6 & DR6_B0 == 0 {
        println!("guest: this CPU does not report data breakpoints; nothing to loop on");
        return 1;
    }

    let top = core::ptr::addr_of!(DB_STACK) as u64 + IST_SIZE as u64;
    ring3::set_ist(1, top);
    idt::set_gate_ist(VECTOR_DB, 1);
    let slot = top - 8;
    println!("guest: #DB on IST 1, data breakpoint on its first push at {slot:#x}, then INT1");
    idt::expect_exception_skipping(VECTOR_DB, 0);
    set_dr0_dr7(slot, DR7_BREAKPOINT0);
    // SAFETY: INT1 delivers #DB through the IST gate; if the CPU does not loop, the handler expects it.
    unsafe { core::arch::asm!(".byte 0xf1", options(nostack)) };
    set_dr0_dr7(0, 0);
    println!(
        "guest: no delivery loop: #DB {:?}, DR6 {:#x}",
        idt::take_exception(),
        idt::last_dr6()
    );
    1
}
