//! The kernel's own GDT and TSS.
//!
//! OVMF leaves TR = 0, but VM entry requires a non-zero host TR selector (SDM Vol. 3C 27.2.3), and
//! exceptions that must not run on a possibly broken stack (#DF, NMI, #MC) need IST stacks (SDM Vol. 3A
//! 7.14.5), so the kernel installs its own GDT with a 64-bit TSS before anything else.

use spin::Once;
use x86_64::instructions::segmentation::{Segment, CS, DS, ES, SS};
use x86_64::instructions::tables::load_tss;
use x86_64::structures::gdt::{Descriptor, GlobalDescriptorTable, SegmentSelector};
use x86_64::structures::tss::TaskStateSegment;
use x86_64::VirtAddr;

/// IST slots (1-based in the IDT, 0-based here as in `TaskStateSegment::interrupt_stack_table`).
pub const IST_DOUBLE_FAULT: u16 = 0;
pub const IST_NMI: u16 = 1;
pub const IST_MACHINE_CHECK: u16 = 2;

const IST_STACK_SIZE: usize = 16 * 1024;

#[repr(C, align(16))]
struct Stack([u8; IST_STACK_SIZE]);

static mut IST_STACKS: [Stack; 3] = [const { Stack([0; IST_STACK_SIZE]) }; 3];

/// The selectors of the kernel's GDT, which the VMCS host-state area also needs.
#[derive(Clone, Copy, Debug)]
pub struct Selectors {
    pub code: SegmentSelector,
    pub data: SegmentSelector,
    pub tss: SegmentSelector,
}

static TSS: Once<TaskStateSegment> = Once::new();
static GDT: Once<(GlobalDescriptorTable, Selectors)> = Once::new();

/// Base address of the TSS (VMCS host TR base).
pub fn tss_base() -> u64 {
    TSS.get()
        .map_or(0, |tss| tss as *const TaskStateSegment as u64)
}

/// Builds and loads the GDT and TSS, and reloads every segment register.
pub fn init() -> Selectors {
    let tss = TSS.call_once(|| {
        let mut tss = TaskStateSegment::new();
        for (slot, stack) in [IST_DOUBLE_FAULT, IST_NMI, IST_MACHINE_CHECK]
            .into_iter()
            .enumerate()
        {
            // SAFETY: the IST stacks are used only by the CPU on exception entry; nothing else takes a reference.
            let base = unsafe { core::ptr::addr_of!(IST_STACKS[slot]) } as u64;
            tss.interrupt_stack_table[stack as usize] = VirtAddr::new(base + IST_STACK_SIZE as u64);
        }
        tss
    });
    let (gdt, selectors) = GDT.call_once(|| {
        let mut gdt = GlobalDescriptorTable::new();
        let code = gdt.append(Descriptor::kernel_code_segment());
        let data = gdt.append(Descriptor::kernel_data_segment());
        let tss = gdt.append(Descriptor::tss_segment(tss));
        (gdt, Selectors { code, data, tss })
    });
    gdt.load();
    // SAFETY: the selectors index the GDT just loaded, which lives forever in a static.
    unsafe {
        CS::set_reg(selectors.code);
        SS::set_reg(selectors.data);
        DS::set_reg(selectors.data);
        ES::set_reg(selectors.data);
        load_tss(selectors.tss);
    }
    *selectors
}
