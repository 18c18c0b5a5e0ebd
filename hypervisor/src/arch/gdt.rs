//! The layout of each CPU's GDT and TSS, and loading them. The tables themselves, and the IST
//! stacks, live in the CPU's per-CPU area (`percpu`).
//!
//! OVMF leaves TR = 0, but VM entry requires a non-zero host TR selector (SDM Vol. 3C 27.2.3), and
//! exceptions that must not run on a possibly broken stack (#DF, NMI, #MC) need IST stacks (SDM Vol. 3A
//! 7.14.5), so every CPU gets a GDT with a 64-bit TSS of its own before anything else. A TSS is per
//! CPU because LTR marks its descriptor busy (a second CPU's LTR of it raises #GP) and because each
//! CPU needs IST stacks of its own.

use x86_64::instructions::segmentation::{Segment, CS, DS, ES, SS};
use x86_64::instructions::tables::load_tss;
use x86_64::structures::gdt::{Descriptor, GlobalDescriptorTable, SegmentSelector};
use x86_64::structures::tss::TaskStateSegment;
use x86_64::{PrivilegeLevel, VirtAddr};

/// IST slots (1-based in the IDT, 0-based here as in `TaskStateSegment::interrupt_stack_table`).
pub const IST_DOUBLE_FAULT: u16 = 0;
pub const IST_NMI: u16 = 1;
pub const IST_MACHINE_CHECK: u16 = 2;
/// How many IST stacks each CPU has, and the size of each.
pub const IST_STACKS: usize = 3;
pub const IST_STACK_SIZE: usize = 16 * 1024;

/// The selectors of the kernel's GDT, which the VMCS host-state area also needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Selectors {
    pub code: SegmentSelector,
    pub data: SegmentSelector,
    pub tss: SegmentSelector,
}

/// Every CPU's GDT has the same layout (null, code, data, the TSS's two entries), so one set of
/// selectors serves all of them.
pub const SELECTORS: Selectors = Selectors {
    code: SegmentSelector::new(1, PrivilegeLevel::Ring0),
    data: SegmentSelector::new(2, PrivilegeLevel::Ring0),
    tss: SegmentSelector::new(3, PrivilegeLevel::Ring0),
};

/// A TSS whose IST slots hold `ist_tops`, the top (highest address) of each IST stack.
pub fn new_tss(ist_tops: [u64; IST_STACKS]) -> TaskStateSegment {
    let mut tss = TaskStateSegment::new();
    for (slot, top) in [IST_DOUBLE_FAULT, IST_NMI, IST_MACHINE_CHECK]
        .into_iter()
        .zip(ist_tops)
    {
        tss.interrupt_stack_table[slot as usize] = VirtAddr::new(top);
    }
    tss
}

/// A GDT in the layout of [`SELECTORS`] whose TSS descriptor points at `tss`.
///
/// # Safety
/// `tss` must stay valid, at that address, for as long as the GDT is loaded on some CPU.
pub unsafe fn new_gdt(tss: *const TaskStateSegment) -> GlobalDescriptorTable {
    let mut gdt = GlobalDescriptorTable::new();
    let code = gdt.append(Descriptor::kernel_code_segment());
    let data = gdt.append(Descriptor::kernel_data_segment());
    // SAFETY: the caller keeps the TSS alive for as long as the descriptor can be used.
    let tss = gdt.append(unsafe { Descriptor::tss_segment_unchecked(tss) });
    debug_assert_eq!(Selectors { code, data, tss }, SELECTORS);
    gdt
}

/// Loads `gdt` (made by [`new_gdt`]), reloads CS, SS, DS and ES from it and loads TR with its TSS.
/// FS and GS are left alone: their bases are MSRs (`percpu` owns GS).
///
/// # Safety
/// CPL 0, once per CPU with interrupts off; `gdt` and its TSS are this CPU's alone and stay where
/// they are for good (LTR marks the TSS descriptor busy, so another CPU's LTR of it would #GP).
pub unsafe fn load(gdt: &'static GlobalDescriptorTable) {
    gdt.load();
    // SAFETY: the selectors index the GDT just loaded (the caller keeps it alive), whose code and
    // data descriptors are the flat 64-bit kernel segments and whose TSS descriptor is not busy.
    unsafe {
        CS::set_reg(SELECTORS.code);
        SS::set_reg(SELECTORS.data);
        DS::set_reg(SELECTORS.data);
        ES::set_reg(SELECTORS.data);
        load_tss(SELECTORS.tss);
    }
}
