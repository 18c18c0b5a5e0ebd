//! The kernel heap: one contiguous run of frames handed to `linked_list_allocator`.
//!
//! The `#[global_allocator]` itself is declared by the kernel binary (the host test build uses std's).

use linked_list_allocator::LockedHeap;

/// Heap size: enough for ACPI/DMAR/PCI bookkeeping and guest metadata; guest memory is not on the heap.
pub const HEAP_SIZE: u64 = 16 * 1024 * 1024;

/// Gives `heap` the identity-mapped range `[phys, phys + HEAP_SIZE)`.
///
/// # Safety
/// The range must be unused RAM that nothing else will ever touch, and this must be called once.
pub unsafe fn init(heap: &LockedHeap, phys: u64) {
    // SAFETY: the caller guarantees the range is identity-mapped RAM that nothing else uses and
    // that this runs once, which is what `Heap::init` requires (valid, unused, given once).
    unsafe { heap.lock().init(phys as *mut u8, HEAP_SIZE as usize) };
}
