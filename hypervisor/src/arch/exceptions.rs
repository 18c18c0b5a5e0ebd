//! CPU exceptions: every one prints vector, error code, RIP, CR2 and all registers, then stops the
//! machine cleanly (power-off in test images, halt otherwise): never a triple fault.
//!
//! Stable Rust has no `x86-interrupt` ABI, so each vector has a tiny assembly stub that pushes a dummy
//! error code where the CPU pushes none (SDM Vol. 3A Table 6-1), then the vector, then the general
//! registers, and calls [`exception_dispatch`] with a pointer to the resulting [`ExceptionFrame`].
//! #DF, NMI and #MC run on their own IST stacks so a corrupt stack still gets a report.

use super::gdt::{IST_DOUBLE_FAULT, IST_MACHINE_CHECK, IST_NMI};
use spin::Once;
use x86_64::structures::idt::InterruptDescriptorTable;
use x86_64::VirtAddr;

/// Mnemonic of an architectural exception vector (SDM Vol. 3A Table 6-1).
pub const fn mnemonic(vector: u8) -> &'static str {
    match vector {
        0 => "#DE",
        1 => "#DB",
        2 => "NMI",
        3 => "#BP",
        4 => "#OF",
        5 => "#BR",
        6 => "#UD",
        7 => "#NM",
        8 => "#DF",
        9 => "coprocessor-segment-overrun",
        10 => "#TS",
        11 => "#NP",
        12 => "#SS",
        13 => "#GP",
        14 => "#PF",
        16 => "#MF",
        17 => "#AC",
        18 => "#MC",
        19 => "#XM",
        20 => "#VE",
        21 => "#CP",
        28 => "#HV",
        29 => "#VC",
        30 => "#SX",
        _ => "reserved",
    }
}

/// Whether the CPU pushes an error code for this vector (SDM Vol. 3A 6.13 and Table 6-1).
pub const fn pushes_error_code(vector: u8) -> bool {
    matches!(vector, 8 | 10..=14 | 17 | 21 | 29 | 30)
}

/// What the stubs leave on the stack, lowest address first.
#[repr(C)]
#[derive(Debug)]
pub struct ExceptionFrame {
    pub rax: u64,
    pub rbx: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub rbp: u64,
    pub r8: u64,
    pub r9: u64,
    pub r10: u64,
    pub r11: u64,
    pub r12: u64,
    pub r13: u64,
    pub r14: u64,
    pub r15: u64,
    pub vector: u64,
    pub error_code: u64,
    pub rip: u64,
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
}

// The stubs. `exception_stub_table` lists their addresses by vector 0..31.
core::arch::global_asm!(
    r#"
    .macro EXCEPTION_STUB vec
    .if (\vec == 8) || (\vec >= 10 && \vec <= 14) || (\vec == 17) || (\vec == 21) || (\vec == 29) || (\vec == 30)
    exception_stub_\vec:
        push \vec
        jmp exception_common
    .else
    exception_stub_\vec:
        push 0
        push \vec
        jmp exception_common
    .endif
    .endm

    .section .text.exceptions, "ax"
    .irp vec, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    EXCEPTION_STUB \vec
    .endr

    exception_common:
        push r15
        push r14
        push r13
        push r12
        push r11
        push r10
        push r9
        push r8
        push rbp
        push rdi
        push rsi
        push rdx
        push rcx
        push rbx
        push rax
        mov rdi, rsp
        cld
        call {dispatch}
    2:  hlt
        jmp 2b

    .section .rodata.exceptions, "a"
    .balign 8
    .global exception_stub_table
    exception_stub_table:
    .irp vec, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    .quad exception_stub_\vec
    .endr
    "#,
    dispatch = sym exception_dispatch,
);

extern "C" {
    static exception_stub_table: [u64; 32];
}

static IDT: Once<InterruptDescriptorTable> = Once::new();

/// Builds the IDT with a handler for every architectural exception and the host's own vectors, and loads it.
pub fn init() {
    let idt = IDT.call_once(|| {
        let mut idt = InterruptDescriptorTable::new();
        // SAFETY: the table is emitted by the global_asm above and never written.
        let stubs = unsafe { &exception_stub_table };
        let at = |v: usize| VirtAddr::new(stubs[v]);
        // SAFETY: each address is an exception stub that never returns to a wrong frame (it stops the CPU),
        // and the IST indices name stacks every CPU's TSS holds (`percpu`). One IDT serves all CPUs:
        // an IST index selects a stack in the TSS of the CPU the event arrives on.
        unsafe {
            idt.divide_error.set_handler_addr(at(0));
            idt.debug.set_handler_addr(at(1));
            idt.non_maskable_interrupt
                .set_handler_addr(at(2))
                .set_stack_index(IST_NMI);
            idt.breakpoint.set_handler_addr(at(3));
            idt.overflow.set_handler_addr(at(4));
            idt.bound_range_exceeded.set_handler_addr(at(5));
            idt.invalid_opcode.set_handler_addr(at(6));
            idt.device_not_available.set_handler_addr(at(7));
            idt.double_fault
                .set_handler_addr(at(8))
                .set_stack_index(IST_DOUBLE_FAULT);
            idt.invalid_tss.set_handler_addr(at(10));
            idt.segment_not_present.set_handler_addr(at(11));
            idt.stack_segment_fault.set_handler_addr(at(12));
            idt.general_protection_fault.set_handler_addr(at(13));
            idt.page_fault.set_handler_addr(at(14));
            idt.x87_floating_point.set_handler_addr(at(16));
            idt.alignment_check.set_handler_addr(at(17));
            idt.machine_check
                .set_handler_addr(at(18))
                .set_stack_index(IST_MACHINE_CHECK);
            idt.simd_floating_point.set_handler_addr(at(19));
            idt.virtualization.set_handler_addr(at(20));
            idt.cp_protection_exception.set_handler_addr(at(21));
            idt.hv_injection_exception.set_handler_addr(at(28));
            idt.vmm_communication_exception.set_handler_addr(at(29));
            idt.security_exception.set_handler_addr(at(30));
            // Every other vector is a stray: a guest's left behind (host_irq's scrub), or one a device
            // without interrupt remapping raised on its own; completed and dropped, never fatal.
            for vector in 0x20..=0xFFu8 {
                idt[vector].set_handler_addr(VirtAddr::new(super::host_irq::stray_entry()));
            }
            idt[super::apic::HOST_TIMER_VECTOR]
                .set_handler_addr(VirtAddr::new(super::host_irq::timer_entry()));
            idt[super::apic::DMA_FAULT_VECTOR]
                .set_handler_addr(VirtAddr::new(super::host_irq::dma_fault_entry()));
            idt[super::apic::SPURIOUS_VECTOR]
                .set_handler_addr(VirtAddr::new(super::host_irq::spurious_entry()));
        }
        idt
    });
    idt.load();
}

/// Called by the stubs; reports the exception and stops the machine.
extern "C" fn exception_dispatch(frame: &ExceptionFrame) -> ! {
    let cr2 = x86_64::registers::control::Cr2::read_raw();
    let vector = frame.vector as u8;
    super::serial::print_emergency(format_args!(
        "\nEXCEPTION {} vector={} error={:#x} rip={:#x} cs={:#x} rflags={:#x} rsp={:#x} ss={:#x} cr2={:#x}\n\
         rax={:#018x} rbx={:#018x} rcx={:#018x} rdx={:#018x}\n\
         rsi={:#018x} rdi={:#018x} rbp={:#018x} r8 ={:#018x}\n\
         r9 ={:#018x} r10={:#018x} r11={:#018x} r12={:#018x}\n\
         r13={:#018x} r14={:#018x} r15={:#018x}\n",
        mnemonic(vector),
        vector,
        frame.error_code,
        frame.rip,
        frame.cs,
        frame.rflags,
        frame.rsp,
        frame.ss,
        cr2,
        frame.rax,
        frame.rbx,
        frame.rcx,
        frame.rdx,
        frame.rsi,
        frame.rdi,
        frame.rbp,
        frame.r8,
        frame.r9,
        frame.r10,
        frame.r11,
        frame.r12,
        frame.r13,
        frame.r14,
        frame.r15,
    ));
    super::power::stop_after_fatal_error()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_code_vectors_match_sdm_table_6_1() {
        let with_code: Vec<u8> = (0..32).filter(|&v| pushes_error_code(v)).collect();
        assert_eq!(with_code, [8, 10, 11, 12, 13, 14, 17, 21, 29, 30]);
    }

    #[test]
    fn frame_layout_matches_the_stub_push_order() {
        // 15 general registers, vector, error code, then the 5 qwords the CPU pushes.
        assert_eq!(core::mem::size_of::<ExceptionFrame>(), 22 * 8);
        assert_eq!(core::mem::offset_of!(ExceptionFrame, vector), 15 * 8);
        assert_eq!(core::mem::offset_of!(ExceptionFrame, rip), 17 * 8);
    }

    #[test]
    fn mnemonics() {
        assert_eq!(mnemonic(6), "#UD");
        assert_eq!(mnemonic(14), "#PF");
        assert_eq!(mnemonic(15), "reserved");
    }
}
