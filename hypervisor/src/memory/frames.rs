//! The physical frame allocator: hands out 4 KiB frames from the usable ranges of the boot memory map.
//!
//! Memory below 1 MiB is left alone (real-mode trampolines for application processors need it later,
//! and firmware keeps structures there). Frames are never returned yet: the kernel allocates its heap
//! and hardware tables once at boot; guests get their memory as whole ranges.

use super::{FrameAlloc, PAGE_SIZE};
use exitless_abi::boot_info::{MemoryKind, MemoryRegion};

const LOW_MEMORY_END: u64 = 0x10_0000;
const MAX_RANGES: usize = 128;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Range {
    next: u64,
    end: u64,
}

/// Bump allocator over the usable ranges, lowest first.
pub struct FrameAllocator {
    ranges: [Range; MAX_RANGES],
    count: usize,
    /// Usable ranges beyond `MAX_RANGES` that were left out (reported, never silently lost).
    pub dropped_ranges: usize,
}

impl FrameAllocator {
    /// Collects the usable, page-aligned parts of `regions` at or above 1 MiB.
    pub fn new(regions: &[MemoryRegion]) -> Self {
        let mut this = Self {
            ranges: [Range::default(); MAX_RANGES],
            count: 0,
            dropped_ranges: 0,
        };
        for region in regions.iter().filter(|r| r.kind == MemoryKind::Usable) {
            let start = align_up(region.start.max(LOW_MEMORY_END), PAGE_SIZE);
            let end = region.end() & !(PAGE_SIZE - 1);
            if start >= end {
                continue;
            }
            if this.count == MAX_RANGES {
                this.dropped_ranges += 1;
                continue;
            }
            this.ranges[this.count] = Range { next: start, end };
            this.count += 1;
        }
        this.ranges[..this.count].sort_unstable_by_key(|r| r.next);
        this
    }

    /// `count` physically contiguous frames aligned to `align` bytes (a power of two, at least 4 KiB).
    pub fn alloc_contiguous(&mut self, count: u64, align: u64) -> Option<u64> {
        debug_assert!(align.is_power_of_two() && align >= PAGE_SIZE);
        let bytes = count.checked_mul(PAGE_SIZE)?;
        self.ranges[..self.count].iter_mut().find_map(|range| {
            let start = align_up(range.next, align);
            let end = start.checked_add(bytes)?;
            (end <= range.end).then(|| {
                range.next = end;
                start
            })
        })
    }

    /// Bytes still free.
    pub fn free_bytes(&self) -> u64 {
        self.ranges[..self.count]
            .iter()
            .map(|r| r.end - r.next)
            .sum()
    }

    /// Number of usable ranges being allocated from.
    pub fn range_count(&self) -> usize {
        self.count
    }
}

impl FrameAlloc for FrameAllocator {
    fn alloc_zeroed(&mut self) -> Option<u64> {
        let phys = self.alloc_contiguous(1, PAGE_SIZE)?;
        self.table_mut(phys).fill(0);
        Some(phys)
    }

    fn table_mut(&mut self, phys: u64) -> &mut [u64; 512] {
        assert_eq!(
            phys % PAGE_SIZE,
            0,
            "table address {phys:#x} is not page-aligned"
        );
        // SAFETY: all physical memory is identity-mapped (boot-info contract), and the frame was
        // handed out by this allocator to exactly one owner, the caller's table builder.
        unsafe { &mut *(phys as *mut [u64; 512]) }
    }
}

const fn align_up(value: u64, align: u64) -> u64 {
    (value + align - 1) & !(align - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn region(start: u64, len: u64, kind: MemoryKind) -> MemoryRegion {
        MemoryRegion {
            start,
            len,
            kind,
            _reserved: 0,
        }
    }

    #[test]
    fn only_usable_memory_above_1mib_is_handed_out() {
        let map = [
            region(0, 0xA0000, MemoryKind::Usable),
            region(0xF_F000, 0x3000, MemoryKind::Usable), // straddles 1 MiB: only 0x100000.. counts
            region(0x20_0000, 0x10_0000, MemoryKind::Loader),
            region(0x40_0000, 0x2000, MemoryKind::Reserved),
        ];
        let mut frames = FrameAllocator::new(&map);
        assert_eq!(frames.free_bytes(), 0x2000);
        assert_eq!(frames.alloc_contiguous(1, PAGE_SIZE), Some(0x10_0000));
        assert_eq!(frames.alloc_contiguous(1, PAGE_SIZE), Some(0x10_1000));
        assert_eq!(frames.alloc_contiguous(1, PAGE_SIZE), None);
    }

    #[test]
    fn contiguous_aligned_requests_skip_ranges_that_are_too_small() {
        let map = [
            region(0x10_0000, 0x1000, MemoryKind::Usable),
            region(0x30_1000, 0x40_0000, MemoryKind::Usable),
        ];
        let mut frames = FrameAllocator::new(&map);
        // 2 MiB aligned, 2 frames: the first range is too small, the second starts unaligned.
        assert_eq!(frames.alloc_contiguous(2, 0x20_0000), Some(0x40_0000));
        assert_eq!(frames.alloc_contiguous(1, PAGE_SIZE), Some(0x10_0000));
    }

    #[test]
    fn unaligned_region_edges_are_trimmed() {
        let map = [region(0x10_0800, 0x2000, MemoryKind::Usable)];
        let frames = FrameAllocator::new(&map);
        assert_eq!(frames.free_bytes(), 0x1000);
    }

    #[test]
    fn oversized_requests_fail_without_overflow() {
        let map = [region(0x10_0000, 0x1000, MemoryKind::Usable)];
        let mut frames = FrameAllocator::new(&map);
        assert_eq!(frames.alloc_contiguous(u64::MAX, PAGE_SIZE), None);
    }
}
