//! Per-CPU state: one [`PerCpu`] area per processor, reached through the GS segment base.
//!
//! Each area holds what must not be shared between processors: its kernel stack's bounds, its GDT
//! and TSS with the IST stacks for #DF, NMI and #MC, the physical address of its VMXON region, and
//! its host interrupt counters. The boot CPU's area is a static ([`init_boot_cpu`]); an application
//! processor's is allocated at run time ([`PerCpu::allocate`]) and filled in by the same code; each
//! CPU then calls [`PerCpu::load`] on itself, which loads its GDT and TSS and points IA32_GS_BASE
//! at the area. The area's first quadword is its own address, so `gs:[0]` yields a pointer to it
//! ([`current`]).
//!
//! # The GS rule
//! IA32_GS_BASE is written once per CPU, in [`PerCpu::load`], and the host never changes it after:
//! it never executes SWAPGS, never touches IA32_KERNEL_GS_BASE (the MSR bitmap passes it through,
//! so between a guest's exits it holds the guest's value, `vmx::msr_policy`; SWAPGS in the host
//! would install it as the host's GS base), never loads a GS selector (in 64-bit mode that may
//! clear the base) and does not enable WRGSBASE (CR4.FSGSBASE stays 0). The guest's GS base is
//! switched by VMX itself: VM entry loads it from the VMCS guest area and every VM exit loads
//! HOST_GS_BASE (SDM Vol. 3C 27.5.2), which the runner sets to this area together with HOST_TR_BASE
//! and HOST_GDTR_BASE (this CPU's TSS and GDT). So every host interrupt or exception, NMIs and #MC
//! on their IST stacks included, runs with GS pointing at the area of the CPU it arrived on.

use super::gdt::{self, Selectors, IST_STACKS, IST_STACK_SIZE};
use core::alloc::Layout;
use core::mem::{offset_of, size_of, MaybeUninit};
use core::ptr::{addr_of, addr_of_mut};
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use x86_64::structures::gdt::GlobalDescriptorTable;
use x86_64::structures::tss::TaskStateSegment;

/// The size of an application processor's kernel stack (the boot CPU runs on the boot stack).
pub const KERNEL_STACK_SIZE: usize = 256 * 1024;

/// Offsets the assembly in this module reads through GS (checked against the struct below).
const THIS_OFFSET: usize = 0;
const INDEX_OFFSET: usize = 8;

/// A kernel stack's bounds: it grows down from `top` to `bottom`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelStack {
    pub bottom: u64,
    pub top: u64,
}

/// The host interrupt counters of one CPU (`host_irq` counts, the runner reads them).
#[derive(Debug, Default)]
pub struct HostIrqCounters {
    /// Host timer interrupts taken, however they arrived (through the host IDT, or as a VM exit).
    pub timer_ticks: AtomicU64,
    /// VT-d fault events not yet taken by whoever drains the units' fault records.
    pub dma_fault_events: AtomicU64,
    /// Guests' vectors that reached the host's stray handler.
    pub stray_interrupts: AtomicU64,
}

#[repr(C, align(16))]
struct IstStack([u8; IST_STACK_SIZE]);

/// One processor's own state. Only [`PerCpu::allocate`] and [`init_boot_cpu`] make one; it lives
/// for good at the address it was made at (its TSS's IST pointers, its GDT's TSS descriptor and its
/// self-pointer name that address).
#[repr(C, align(4096))]
pub struct PerCpu {
    /// The area's own address, what `gs:[0]` reads.
    this: u64,
    /// The kernel's number for this CPU: 0 for the boot CPU.
    index: u32,
    /// The CPU's x2APIC ID (for an 8-bit xAPIC, its APIC ID).
    x2apic_id: u32,
    kernel_stack: KernelStack,
    /// Host-physical address of the VMXON region while VMX is on (SDM Vol. 3C 24.11.5), else 0.
    vmxon_region: AtomicU64,
    irq_counters: HostIrqCounters,
    tss: TaskStateSegment,
    gdt: GlobalDescriptorTable,
    ist_stacks: [IstStack; IST_STACKS],
}

// What `current` and `index` read through GS, and what the CPU reads from the area.
const _: () = assert!(offset_of!(PerCpu, this) == THIS_OFFSET);
const _: () = assert!(offset_of!(PerCpu, index) == INDEX_OFFSET);
// A 64-bit TSS is 104 bytes (SDM Vol. 3A Figure 8-11); the descriptor's limit is its size - 1.
const _: () = assert!(size_of::<TaskStateSegment>() == 0x68);
// IST stacks 16-byte aligned (the CPU aligns RSP down to 16 anyway, SDM Vol. 3A 6.14.2), and the
// area a whole number of pages so no two CPUs' areas share one.
const _: () = assert!(offset_of!(PerCpu, ist_stacks).is_multiple_of(16));
const _: () = assert!(size_of::<PerCpu>().is_multiple_of(4096));

impl PerCpu {
    /// Makes the area of CPU `index` (APIC ID `x2apic_id`) at run time, with a kernel stack of
    /// [`KERNEL_STACK_SIZE`], both from the kernel heap (identity-mapped frames); `None` if the heap
    /// has no room. The CPU itself must then [`load`](Self::load) it.
    pub fn allocate(index: u32, x2apic_id: u32) -> Option<&'static PerCpu> {
        let stack_layout = Layout::from_size_align(KERNEL_STACK_SIZE, 16).ok()?;
        // SAFETY: the layouts have non-zero sizes. Both blocks are never freed, so they live for
        // good; the area's block is zeroed, writable, sized and aligned for a `PerCpu` and used by
        // nothing else, as `init_at` requires.
        unsafe {
            let stack = alloc::alloc::alloc_zeroed(stack_layout);
            if stack.is_null() {
                return None;
            }
            let area = alloc::alloc::alloc_zeroed(Layout::new::<PerCpu>()).cast::<PerCpu>();
            if area.is_null() {
                alloc::alloc::dealloc(stack, stack_layout);
                return None;
            }
            let bottom = stack as u64;
            let stack = KernelStack {
                bottom,
                top: bottom + KERNEL_STACK_SIZE as u64,
            };
            Some(Self::init_at(area, index, x2apic_id, stack))
        }
    }

    /// Fills in the area at `area`: self-pointer, identity, stack, a TSS whose IST slots point at
    /// the tops of the area's own IST stacks, a GDT whose TSS descriptor points at that TSS.
    ///
    /// # Safety
    /// `area` is zeroed, writable memory sized and aligned for a `PerCpu`, used by nothing else,
    /// never freed and never moved.
    unsafe fn init_at(
        area: *mut PerCpu,
        index: u32,
        x2apic_id: u32,
        kernel_stack: KernelStack,
    ) -> &'static PerCpu {
        // SAFETY: the caller's contract: each field is written in place before any reference to
        // the area exists; the IST stacks stay zeroed bytes, a valid value. The TSS pointer is
        // into the area, which lives for good at this address.
        unsafe {
            addr_of_mut!((*area).this).write(area as u64);
            addr_of_mut!((*area).index).write(index);
            addr_of_mut!((*area).x2apic_id).write(x2apic_id);
            addr_of_mut!((*area).kernel_stack).write(kernel_stack);
            addr_of_mut!((*area).vmxon_region).write(AtomicU64::new(0));
            addr_of_mut!((*area).irq_counters).write(HostIrqCounters::default());
            let ist_tops = core::array::from_fn(|slot| {
                addr_of!((*area).ist_stacks[slot]) as u64 + IST_STACK_SIZE as u64
            });
            addr_of_mut!((*area).tss).write(gdt::new_tss(ist_tops));
            addr_of_mut!((*area).gdt).write(gdt::new_gdt(addr_of!((*area).tss)));
            &*area
        }
    }

    /// Makes this area the running CPU's: loads its GDT and TSS and points IA32_GS_BASE at it (the
    /// GS rule in the module comment). Returns the selectors of its GDT.
    ///
    /// # Safety
    /// CPL 0, interrupts off, once, on the CPU the area was made for; no other CPU has loaded it.
    pub unsafe fn load(&'static self) -> Selectors {
        // SAFETY: the caller's contract; the GDT and TSS live in this area, for good. GS_BASE
        // takes a canonical address (the area's), and nothing relies on the old GS base.
        unsafe {
            gdt::load(&self.gdt);
            super::msr::write(super::msr::GS_BASE, self.this);
        }
        gdt::SELECTORS
    }

    /// The kernel's number for this CPU (0: the boot CPU).
    pub fn index(&self) -> u32 {
        self.index
    }

    /// This CPU's x2APIC ID.
    pub fn x2apic_id(&self) -> u32 {
        self.x2apic_id
    }

    /// The kernel stack this CPU runs on.
    pub fn kernel_stack(&self) -> KernelStack {
        self.kernel_stack
    }

    /// The area's address: this CPU's IA32_GS_BASE, and so its VMCS HOST_GS_BASE.
    pub fn gs_base(&self) -> u64 {
        self.this
    }

    /// This CPU's TSS (VMCS HOST_TR_BASE).
    pub fn tss_base(&self) -> u64 {
        addr_of!(self.tss) as u64
    }

    /// This CPU's GDT, as LGDT was given it (VMCS HOST_GDTR_BASE).
    pub fn gdt_base(&self) -> u64 {
        self.gdt.entries().as_ptr() as u64
    }

    /// The top of IST stack `slot` (`gdt::IST_*`).
    pub fn ist_top(&self, slot: u16) -> u64 {
        // A copy: the TSS is packed, so its fields cannot be borrowed.
        let table = self.tss.interrupt_stack_table;
        table[slot as usize].as_u64()
    }

    /// The host-physical VMXON region, while this CPU is in VMX operation.
    pub fn vmxon_region(&self) -> Option<u64> {
        match self.vmxon_region.load(Ordering::Relaxed) {
            0 => None,
            region => Some(region),
        }
    }

    /// Records the VMXON region this CPU's VMXON used (`arch::vmx::vmxon`).
    pub(super) fn set_vmxon_region(&self, region: u64) {
        self.vmxon_region.store(region, Ordering::Relaxed);
    }

    /// This CPU's host interrupt counters.
    pub fn irq_counters(&self) -> &HostIrqCounters {
        &self.irq_counters
    }
}

/// The running CPU's area.
#[inline]
pub fn current() -> &'static PerCpu {
    let this: u64;
    // SAFETY: from the first instructions of boot (`init_boot_cpu`, and `PerCpu::load` on every
    // other CPU) GS base is the running CPU's area, whose first quadword is its address, and the GS
    // rule keeps it so; the read touches only that quadword.
    unsafe {
        core::arch::asm!("mov {}, qword ptr gs:[{off}]", out(reg) this, off = const THIS_OFFSET,
            options(nostack, readonly, pure, preserves_flags));
    }
    // SAFETY: areas are never freed or moved, and after `init_at` only shared references exist.
    unsafe { &*(this as *const PerCpu) }
}

/// The running CPU's index, one GS-relative load.
#[inline]
pub fn index() -> u32 {
    let index: u32;
    // SAFETY: as in `current`; the index is written before the area is loaded and never after.
    unsafe {
        core::arch::asm!("mov {:e}, dword ptr gs:[{off}]", out(reg) index, off = const INDEX_OFFSET,
            options(nostack, readonly, pure, preserves_flags));
    }
    index
}

/// The boot CPU's area. Zeroed, so it lives in .bss until `init_boot_cpu` fills it in.
static mut BOOT_CPU_AREA: MaybeUninit<PerCpu> = MaybeUninit::zeroed();
static BOOT_CPU_AREA_TAKEN: AtomicBool = AtomicBool::new(false);

/// Sets up and loads the boot CPU's area (index 0, running on `boot_stack`): its GDT, TSS and IST
/// stacks, and GS. Call first thing in boot, before any interrupt or exception can arrive and
/// before anything calls [`current`]. Returns the GDT's selectors.
pub fn init_boot_cpu(boot_stack: KernelStack) -> Selectors {
    assert!(
        !BOOT_CPU_AREA_TAKEN.swap(true, Ordering::Relaxed),
        "the boot CPU's area is set up once"
    );
    let area = (&raw mut BOOT_CPU_AREA).cast::<PerCpu>();
    // SAFETY: the static is zeroed, sized and aligned for a `PerCpu`, lives for good, and the flag
    // above hands it out once. This is the boot CPU, at CPL 0 with interrupts off (the loader
    // leaves them off), and nothing has loaded this area before.
    unsafe {
        let area = PerCpu::init_at(area, 0, super::cpu::initial_apic_id(), boot_stack);
        area.load()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::gdt::{IST_DOUBLE_FAULT, IST_MACHINE_CHECK, IST_NMI, SELECTORS};

    /// The base of the 16-byte system descriptor in GDT entries `low`, `high` (SDM Vol. 3A 8.2.3).
    fn system_descriptor_base(low: u64, high: u64) -> u64 {
        (low >> 16 & 0xFF_FFFF) | (low >> 56 & 0xFF) << 24 | (high & 0xFFFF_FFFF) << 32
    }

    #[test]
    fn the_self_pointer_and_index_are_where_the_gs_reads_look() {
        assert_eq!(offset_of!(PerCpu, this), 0);
        assert_eq!(offset_of!(PerCpu, index), 8);
        assert_eq!(core::mem::align_of::<PerCpu>(), 4096);
    }

    #[test]
    fn an_allocated_area_names_itself_its_stack_and_its_own_tables() {
        let area = PerCpu::allocate(3, 0x15).unwrap();
        let base = area as *const PerCpu as u64;
        let end = base + size_of::<PerCpu>() as u64;
        assert_eq!(area.gs_base(), base);
        assert_eq!(area.index(), 3);
        assert_eq!(area.x2apic_id(), 0x15);
        let stack = area.kernel_stack();
        assert_eq!(stack.top - stack.bottom, KERNEL_STACK_SIZE as u64);
        assert_eq!(stack.top % 16, 0);
        assert!(
            stack.top <= base || stack.bottom >= end,
            "the stack is not in the area"
        );

        let tops = [IST_DOUBLE_FAULT, IST_NMI, IST_MACHINE_CHECK].map(|slot| area.ist_top(slot));
        for (i, top) in tops.into_iter().enumerate() {
            assert!(top > base && top <= end, "IST {i} inside the area");
            assert_eq!(top % 16, 0);
            let stack_base = addr_of!(area.ist_stacks[i]) as u64;
            assert_eq!(
                top,
                stack_base + IST_STACK_SIZE as u64,
                "IST {i} is its own stack"
            );
        }

        let tss = area.tss_base();
        assert!(tss >= base && tss + 0x68 <= end);
        let entries: Vec<u64> = area.gdt.entries().iter().map(|e| e.raw()).collect();
        assert_eq!(
            entries.len(),
            5,
            "null, code, data and the TSS's two entries"
        );
        assert_eq!(area.gdt_base(), area.gdt.entries().as_ptr() as u64);
        let tss_index = usize::from(SELECTORS.tss.index());
        let (low, high) = (entries[tss_index], entries[tss_index + 1]);
        assert_eq!(
            system_descriptor_base(low, high),
            tss,
            "the descriptor names this TSS"
        );
        assert_eq!(low & 0xFFFF, 0x67, "limit: the TSS's size - 1");
        assert_eq!(low >> 40 & 0xF, 0x9, "an available (not busy) 64-bit TSS");
        assert_eq!(SELECTORS.code.index(), 1);
        assert_eq!(SELECTORS.data.index(), 2);
    }

    #[test]
    fn areas_are_separate_and_start_without_vmx_or_counts() {
        let a = PerCpu::allocate(1, 1).unwrap();
        let b = PerCpu::allocate(2, 2).unwrap();
        assert_ne!(a.gs_base(), b.gs_base());
        assert_ne!(a.tss_base(), b.tss_base());
        assert_ne!(a.ist_top(IST_NMI), b.ist_top(IST_NMI));
        assert_eq!(a.vmxon_region(), None);
        a.set_vmxon_region(0x5000);
        assert_eq!((a.vmxon_region(), b.vmxon_region()), (Some(0x5000), None));
        a.irq_counters().timer_ticks.fetch_add(1, Ordering::Relaxed);
        assert_eq!(b.irq_counters().timer_ticks.load(Ordering::Relaxed), 0);
    }
}
