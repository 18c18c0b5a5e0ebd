//! The guest's own IDT: a stub for each of the 256 vectors (stable Rust has no `x86-interrupt` ABI).
//!
//! Each stub pushes a dummy error code where the CPU pushes none (SDM Vol. 3A Table 6-1), the vector,
//! and the caller-saved registers, then calls [`dispatch`]: exceptions are reported and end the test;
//! other vectors run the handler registered with [`set_handler`] and return with `iretq`.
//! The guest's EOI is the handler's business (x2APIC EOI MSR), as on bare metal.

use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use x86_64::structures::idt::InterruptDescriptorTable;

/// An interrupt handler: gets the vector.
pub type Handler = fn(u8);

static HANDLERS: [AtomicUsize; 256] = [const { AtomicUsize::new(0) }; 256];
/// The IDT on pages of its own: under ELI the hypervisor write-protects the guest's IDT pages, and
/// other data there would make every write to it exit.
#[repr(C, align(4096))]
struct PageAlignedIdt(InterruptDescriptorTable);

static mut IDT: PageAlignedIdt = PageAlignedIdt(InterruptDescriptorTable::new());

#[repr(C)]
pub struct InterruptFrame {
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rdi: u64,
    pub rsi: u64,
    pub rdx: u64,
    pub rcx: u64,
    pub rax: u64,
    pub vector: u64,
    pub error_code: u64,
    pub rip: u64,
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
}

core::arch::global_asm!(
    r#"
    .macro GUEST_STUB vec
    guest_stub_\vec:
    .if (\vec == 8) || (\vec >= 10 && \vec <= 14) || (\vec == 17) || (\vec == 21) || (\vec == 29) || (\vec == 30)
        push \vec
    .else
        push 0
        push \vec
    .endif
        jmp guest_stub_common
    .endm

    .section .text.guest_idt, "ax"
    .altmacro
    .set i, 0
    .rept 256
    GUEST_STUB %i
    .set i, i + 1
    .endr

    guest_stub_common:
        push rax
        push rcx
        push rdx
        push rsi
        push rdi
        push r8
        push r9
        push r10
        push r11
        mov rdi, rsp
        cld
        call {dispatch}
        pop r11
        pop r10
        pop r9
        pop r8
        pop rdi
        pop rsi
        pop rdx
        pop rcx
        pop rax
        add rsp, 16
        iretq

    .section .rodata.guest_idt, "a"
    .balign 8
    .global guest_stub_table
    guest_stub_table:
    .macro STUB_ADDR vec
    .quad guest_stub_\vec
    .endm
    .set i, 0
    .rept 256
    STUB_ADDR %i
    .set i, i + 1
    .endr
    "#,
    dispatch = sym dispatch,
);

extern "C" {
    static guest_stub_table: [u64; 256];
}

/// Fills every gate and loads the IDT.
pub fn init() {
    // SAFETY: single-threaded guest start-up, before interrupts are enabled; the table is a static.
    unsafe {
        let idt = &mut (*core::ptr::addr_of_mut!(IDT)).0;
        let stubs = &guest_stub_table;
        for vector in 0..=255u8 {
            let addr = x86_64::VirtAddr::new(stubs[vector as usize]);
            match vector {
                8 => {
                    idt.double_fault.set_handler_addr(addr);
                }
                0..=31 => set_exception_gate(idt, vector, addr),
                _ => {
                    idt[vector].set_handler_addr(addr);
                }
            }
        }
        idt.load();
    }
}

/// Routes `vector` (32..=255) to `handler`.
pub fn set_handler(vector: u8, handler: Handler) {
    HANDLERS[vector as usize].store(handler as usize, Ordering::Release);
}

/// Rewrites `vector`'s gate at run time (tests that the hypervisor's shadow IDT follows the guest's IDT).
pub fn move_gate(from: u8, to: u8) {
    // SAFETY: single-threaded; interrupts for these vectors must be quiet while the gate moves.
    unsafe {
        let idt = &mut (*core::ptr::addr_of_mut!(IDT)).0;
        let addr = x86_64::VirtAddr::new(guest_stub_table[from as usize]);
        idt[to].set_handler_addr(addr);
    }
}

unsafe fn set_exception_gate(
    idt: &mut InterruptDescriptorTable,
    vector: u8,
    addr: x86_64::VirtAddr,
) {
    // SAFETY: the stubs handle their vector's error-code convention.
    unsafe {
        match vector {
            0 => drop(idt.divide_error.set_handler_addr(addr)),
            1 => drop(idt.debug.set_handler_addr(addr)),
            2 => drop(idt.non_maskable_interrupt.set_handler_addr(addr)),
            3 => drop(idt.breakpoint.set_handler_addr(addr)),
            4 => drop(idt.overflow.set_handler_addr(addr)),
            5 => drop(idt.bound_range_exceeded.set_handler_addr(addr)),
            6 => drop(idt.invalid_opcode.set_handler_addr(addr)),
            7 => drop(idt.device_not_available.set_handler_addr(addr)),
            10 => drop(idt.invalid_tss.set_handler_addr(addr)),
            11 => drop(idt.segment_not_present.set_handler_addr(addr)),
            12 => drop(idt.stack_segment_fault.set_handler_addr(addr)),
            13 => drop(idt.general_protection_fault.set_handler_addr(addr)),
            14 => drop(idt.page_fault.set_handler_addr(addr)),
            16 => drop(idt.x87_floating_point.set_handler_addr(addr)),
            17 => drop(idt.alignment_check.set_handler_addr(addr)),
            18 => drop(idt.machine_check.set_handler_addr(addr)),
            19 => drop(idt.simd_floating_point.set_handler_addr(addr)),
            20 => drop(idt.virtualization.set_handler_addr(addr)),
            _ => {}
        }
    }
}

/// Exception vectors a test expects (e.g. #GP from a refused MSR write); others end the test.
static EXPECTED_EXCEPTION: AtomicUsize = AtomicUsize::new(usize::MAX);
static LAST_EXCEPTION: AtomicUsize = AtomicUsize::new(usize::MAX);

/// Expects one exception `vector` from the next `rdmsr`/`wrmsr`, which is then skipped.
pub fn expect_exception(vector: u8) {
    expect_exception_skipping(vector, EXPECTED_FAULT_INSTRUCTION_LEN);
}

/// Expects one exception `vector`; the handler then resumes `skip` bytes past the address the CPU
/// pushed: the faulting instruction's length for a fault (e.g. 3 for `mov cr4, rax` or `xsetbv`),
/// 0 for a trap, whose pushed RIP is already past the instruction (#DB single-step, INT1).
/// A #DB handled this way records DR6 ([`last_dr6`]) and clears RFLAGS.TF in the interrupted frame.
pub fn expect_exception_skipping(vector: u8, skip: u64) {
    LAST_EXCEPTION.store(usize::MAX, Ordering::SeqCst);
    EXPECTED_SKIP.store(skip, Ordering::SeqCst);
    EXPECTED_EXCEPTION.store(vector as usize, Ordering::SeqCst);
}

/// DR6 as the last expected #DB's handler read it.
pub fn last_dr6() -> u64 {
    LAST_DR6.load(Ordering::SeqCst)
}

static EXPECTED_SKIP: AtomicU64 = AtomicU64::new(EXPECTED_FAULT_INSTRUCTION_LEN);
static LAST_DR6: AtomicU64 = AtomicU64::new(0);
const VECTOR_DB: u8 = 1;
const RFLAGS_TF: u64 = 1 << 8;

/// The expected exception that happened since [`expect_exception`], if any.
pub fn take_exception() -> Option<u8> {
    EXPECTED_EXCEPTION.store(usize::MAX, Ordering::SeqCst);
    let v = LAST_EXCEPTION.swap(usize::MAX, Ordering::SeqCst);
    (v != usize::MAX).then_some(v as u8)
}

/// Length of the instruction that [`expect_exception`] skips: `rdmsr`/`wrmsr` (2 bytes).
const EXPECTED_FAULT_INSTRUCTION_LEN: u64 = 2;

extern "C" fn dispatch(frame: &mut InterruptFrame) {
    let vector = frame.vector as u8;
    if frame.cs & 3 == 3 {
        // From CPL 3 (the pushed CS's RPL is the interrupted CPL): only `ring3::run_at_cpl3` runs
        // code there, and whatever stops that code ends its run.
        crate::ring3::left_cpl3(vector, frame.error_code, frame.rip, frame.cs);
    }
    if vector < 32 {
        if EXPECTED_EXCEPTION.load(Ordering::SeqCst) == vector as usize {
            if vector == VECTOR_DB {
                let dr6: u64;
                // SAFETY: reading DR6 at CPL 0 has no side effects.
                unsafe { core::arch::asm!("mov {}, dr6", out(reg) dr6, options(nomem, nostack)) };
                LAST_DR6.store(dr6, Ordering::SeqCst);
                frame.rflags &= !RFLAGS_TF;
            }
            LAST_EXCEPTION.store(vector as usize, Ordering::SeqCst);
            EXPECTED_EXCEPTION.store(usize::MAX, Ordering::SeqCst);
            frame.rip += EXPECTED_SKIP.load(Ordering::SeqCst);
            return;
        }
        crate::println!(
            "guest EXCEPTION vector={} error={:#x} rip={:#x} rsp={:#x}",
            vector,
            frame.error_code,
            frame.rip,
            frame.rsp
        );
        crate::finish(crate::detect_mode(), 3);
    }
    match HANDLERS[vector as usize].load(Ordering::Acquire) {
        0 => crate::println!("guest: unexpected interrupt vector {vector}"),
        // SAFETY: only `set_handler` stores here, and it stores `Handler`s.
        f => unsafe { core::mem::transmute::<usize, Handler>(f)(vector) },
    }
}
