//! Ring 3 for guest tests: run a short piece of code at CPL 3 and get back what ended it.
//!
//! [`init`] loads the guest's own GDT (kernel code/data at the boot selectors 0x08/0x10, user data
//! and 64-bit user code with DPL 3, a 64-bit TSS) and TR. [`run_at_cpl3`] marks the code's page and a
//! user stack user-accessible, saves the kernel stack pointer and IRETQs to CPL 3. The code there
//! ends by faulting (#UD, #AC, #GP, ...): the CPU switches to the TSS's RSP0 stack and enters the
//! guest's IDT stub at CPL 0; `idt::dispatch` sees CS.RPL = 3 in the frame and calls [`left_cpl3`],
//! which records the fault and resumes the kernel continuation saved before the IRETQ, so
//! `run_at_cpl3` returns the fault to its caller.
//!
//! Interrupts stay disabled at CPL 3 (RFLAGS.IF = 0 in the IRETQ frame), so only exceptions end a
//! run. The guest never enables SMEP/SMAP (CR4 = PAE at boot), so marking the 2 MiB image pages
//! user-accessible does not stop the kernel from using them.

use core::sync::atomic::{AtomicBool, Ordering};
use x86_64::instructions::tables::load_tss;
use x86_64::registers::control::Cr3;
use x86_64::structures::gdt::{Descriptor, GlobalDescriptorTable, SegmentSelector};
use x86_64::structures::tss::TaskStateSegment;
use x86_64::{PrivilegeLevel, VirtAddr};

/// Selectors with RPL 3 of the user segments (SDM Vol. 3A 3.4.2): the GDT is null, kernel code,
/// kernel data, user data, user code, TSS.
const USER_DATA: u64 = 0x18 | 3;
const USER_CODE: u64 = 0x20 | 3;
const KERNEL_DATA: u64 = 0x10;

/// RFLAGS bit 1 is reserved and always 1 (SDM Vol. 1 3.4.3).
const RFLAGS_RESERVED: u64 = 1 << 1;
/// RFLAGS.AC: with CR0.AM = 1, unaligned accesses at CPL 3 raise #AC (SDM Vol. 3A 6.15, Interrupt 17).
pub const RFLAGS_AC: u64 = 1 << 18;

/// How far past its entry point code run at CPL 3 may reach; both ends' pages are made user pages.
pub const USER_CODE_MAX: u64 = 256;

const STACK_SIZE: usize = 16 * 1024;

#[repr(C, align(16))]
struct Stack([u8; STACK_SIZE]);

/// The CPL-0 stack the CPU switches to when an exception arrives from CPL 3: TSS.RSP0 (SDM Vol. 3A
/// 6.12.1 "Exception- or Interrupt-Handler Procedures", 6.14.4 "Stack Switching in IA-32e Mode";
/// RSP0 is the 64-bit TSS's first stack pointer, 8.7 "Task Management in 64-bit Mode").
static mut KERNEL_STACK: Stack = Stack([0; STACK_SIZE]);
/// The stack CPL-3 code runs on; its page is a user page.
static mut USER_STACK: Stack = Stack([0; STACK_SIZE]);

static mut TSS: TaskStateSegment = TaskStateSegment::new();
static mut GDT: GlobalDescriptorTable = GlobalDescriptorTable::new();
static READY: AtomicBool = AtomicBool::new(false);

/// The kernel RSP at the IRETQ, after `ring3_enter` pushed the callee-saved registers; `ring3_resume`
/// returns from `ring3_enter` with it.
static mut RING3_KERNEL_RSP: u64 = 0;
/// Set while code runs at CPL 3, so that only faults of a run go to [`left_cpl3`].
static ACTIVE: AtomicBool = AtomicBool::new(false);
static mut LAST_EXIT: Cpl3Exit = Cpl3Exit {
    vector: 0,
    error_code: 0,
    rip: 0,
    cs: 0,
};

/// The exception that ended a run at CPL 3, as the CPU pushed it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cpl3Exit {
    pub vector: u8,
    pub error_code: u64,
    /// The faulting instruction for a fault, the next one for a trap.
    pub rip: u64,
    /// The interrupted CS: its RPL is the CPL the exception came from (SDM Vol. 3A 6.12.1).
    pub cs: u64,
}

/// Loads the ring-3-capable GDT and TR. Idempotent; call before [`run_at_cpl3`].
pub fn init() {
    if READY.swap(true, Ordering::SeqCst) {
        return;
    }
    // SAFETY: single-threaded and run once (READY); the statics live for the whole guest. The kernel
    // selectors keep their boot meaning (0x08 code64, 0x10 data), so the segment registers' cached
    // descriptors stay right and need no reload. The new TSS descriptor is available (type 9), so LTR
    // accepts it and marks it busy (SDM Vol. 3A 8.2.4 "Task Register").
    unsafe {
        let tss = &mut *core::ptr::addr_of_mut!(TSS);
        let top = core::ptr::addr_of!(KERNEL_STACK) as u64 + STACK_SIZE as u64;
        tss.privilege_stack_table[0] = VirtAddr::new(top);
        let gdt = &mut *core::ptr::addr_of_mut!(GDT);
        let code = gdt.append(Descriptor::kernel_code_segment());
        let data = gdt.append(Descriptor::kernel_data_segment());
        let user_data = gdt.append(Descriptor::user_data_segment());
        let user_code = gdt.append(Descriptor::user_code_segment());
        let tss_sel = gdt.append(Descriptor::tss_segment_unchecked(core::ptr::addr_of!(TSS)));
        debug_assert_eq!(
            (code.0, data.0, user_data.0, user_code.0),
            (0x08, 0x10, USER_DATA as u16, USER_CODE as u16)
        );
        gdt.load_unsafe();
        load_tss(SegmentSelector::new(tss_sel.index(), PrivilegeLevel::Ring0));
    }
}

/// Sets U/S in every paging-structure entry that maps `addr` (CR3 down to the leaf): a CPL-3 access
/// needs U/S = 1 at every level (SDM Vol. 3A 4.6.1 "Determination of Access Rights"). The paging
/// structures are read through the identity map (BootInfo: guest-physical memory below 4 GiB is
/// mapped 1:1). INVLPG drops the page's TLB entry and all paging-structure caches (SDM Vol. 3A
/// 4.10.4.1).
pub fn make_user_page(addr: u64) {
    const US: u64 = 1 << 2;
    const PS: u64 = 1 << 7;
    const ADDR: u64 = 0x000F_FFFF_FFFF_F000;
    let (root, _) = Cr3::read();
    let mut table = root.start_address().as_u64();
    for shift in [39u64, 30, 21, 12] {
        assert!(table < 1 << 32, "paging structure outside the identity map");
        let entry = (table + ((addr >> shift) & 511) * 8) as *mut u64;
        // SAFETY: `entry` is an entry of the live paging structures, which this single-threaded guest
        // owns; setting U/S only widens access and is flushed below.
        let value = unsafe {
            let value = entry.read_volatile();
            assert!(value & 1 != 0, "make_user_page: {addr:#x} is not mapped");
            entry.write_volatile(value | US);
            value
        };
        if shift == 12 || value & PS != 0 {
            break;
        }
        table = value & ADDR;
    }
    x86_64::instructions::tlb::flush(VirtAddr::new(addr));
}

/// Runs `entry` at CPL 3 on the user stack with RFLAGS = `rflags_extra` | 2 (IF clear) and returns
/// the exception that ended it. `entry` must be position-independent code of at most
/// [`USER_CODE_MAX`] bytes that ends in a fault; its registers start as the caller left them.
pub fn run_at_cpl3(entry: unsafe extern "C" fn() -> !, rflags_extra: u64) -> Cpl3Exit {
    init();
    let rip = entry as usize as u64;
    let stack = core::ptr::addr_of!(USER_STACK) as u64;
    for page in [
        rip,
        rip + USER_CODE_MAX,
        stack,
        stack + STACK_SIZE as u64 - 1,
    ] {
        make_user_page(page);
    }
    // Leave some room above RSP: CPL-3 code may read its stack at small positive offsets.
    let rsp = stack + STACK_SIZE as u64 - 64;
    ACTIVE.store(true, Ordering::SeqCst);
    // SAFETY: `ring3_enter` returns through `ring3_resume` once the CPL-3 code faults (left_cpl3),
    // with the callee-saved registers restored; the caller-saved ones are clobbered as by any call.
    unsafe { ring3_enter(rip, rsp, rflags_extra | RFLAGS_RESERVED) };
    // SAFETY: written by `left_cpl3` before it resumed here; nothing else runs meanwhile.
    unsafe { core::ptr::addr_of!(LAST_EXIT).read() }
}

/// Called by the IDT dispatcher for an exception whose frame shows CS.RPL = 3: records it and
/// resumes the kernel in [`run_at_cpl3`]. Never returns to the stub (its RSP0 frame is abandoned;
/// the next exception from CPL 3 starts at RSP0 again).
pub(crate) fn left_cpl3(vector: u8, error_code: u64, rip: u64, cs: u64) -> ! {
    if !ACTIVE.swap(false, Ordering::SeqCst) {
        crate::println!("guest: exception {vector} from CPL 3 outside ring3::run_at_cpl3");
        crate::finish(crate::detect_mode(), 3);
    }
    // SAFETY: single-threaded; `run_at_cpl3` reads it after the resume.
    unsafe {
        core::ptr::addr_of_mut!(LAST_EXIT).write(Cpl3Exit {
            vector,
            error_code,
            rip,
            cs,
        });
        ring3_resume()
    }
}

extern "C" {
    fn ring3_enter(rip: u64, rsp: u64, rflags: u64);
    fn ring3_resume() -> !;
}

// IRETQ to a less privileged level pops RIP, CS, RFLAGS, RSP and SS (SDM Vol. 3A 6.14.3, Vol. 2A
// IRET); CS and SS hold DPL-3 selectors with RPL 3 (privilege checks, SDM Vol. 3A 5.8). IRET nulls
// DS/ES/FS/GS that hold DPL-0 data selectors, and an exception to CPL 0 loads SS with a null selector
// (6.14.4), so the resume path reloads the kernel data selector.
core::arch::global_asm!(
    r#"
    .section .text.ring3, "ax"
    .global ring3_enter
    ring3_enter:
        push rbx
        push rbp
        push r12
        push r13
        push r14
        push r15
        mov [rip + {kernel_rsp}], rsp
        push {user_data}
        push rsi
        push rdx
        push {user_code}
        push rdi
        iretq

    .global ring3_resume
    ring3_resume:
        mov rsp, [rip + {kernel_rsp}]
        mov eax, {kernel_data}
        mov ss, ax
        mov ds, ax
        mov es, ax
        pop r15
        pop r14
        pop r13
        pop r12
        pop rbp
        pop rbx
        ret
    "#,
    kernel_rsp = sym RING3_KERNEL_RSP,
    user_data = const USER_DATA,
    user_code = const USER_CODE,
    kernel_data = const KERNEL_DATA,
);
