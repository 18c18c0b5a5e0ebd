//! Physical memory: the frame allocator built from the boot memory map, the kernel heap, the
//! [`FrameAlloc`] interface that page-table builders allocate through, and the radix page-table
//! engine EPT and VT-d second-level tables share (`page_table`).

/// Size of a base page / frame.
pub const PAGE_SIZE: u64 = 4096;

/// A source of zeroed 4 KiB frames for hardware tables, and access to their contents.
///
/// On the machine, frames come from the boot memory map and are reached through the identity map;
/// in host tests, [`test_frames::TestFrames`] backs them with heap memory at made-up addresses.
pub trait FrameAlloc {
    /// A zeroed, 4 KiB-aligned frame's physical address; `None` when memory is exhausted.
    fn alloc_zeroed(&mut self) -> Option<u64>;
    /// The 512 entries of the table stored in the frame at `phys`.
    fn table_mut(&mut self, phys: u64) -> &mut [u64; 512];
}

/// A host-test frame source: frames at fake physical addresses starting at 1 MiB.
#[cfg(test)]
pub mod test_frames {
    use super::{FrameAlloc, PAGE_SIZE};
    use alloc::boxed::Box;
    use alloc::vec::Vec;

    pub const BASE: u64 = 0x10_0000;

    #[derive(Default)]
    pub struct TestFrames {
        frames: Vec<Box<[u64; 512]>>,
        /// Fail allocations after this many (to test out-of-memory paths).
        pub limit: Option<usize>,
    }

    impl TestFrames {
        pub fn allocated(&self) -> usize {
            self.frames.len()
        }
        pub fn table(&self, phys: u64) -> &[u64; 512] {
            &self.frames[((phys - BASE) / PAGE_SIZE) as usize]
        }
    }

    impl FrameAlloc for TestFrames {
        fn alloc_zeroed(&mut self) -> Option<u64> {
            if self.limit.is_some_and(|l| self.frames.len() >= l) {
                return None;
            }
            self.frames.push(Box::new([0; 512]));
            Some(BASE + (self.frames.len() as u64 - 1) * PAGE_SIZE)
        }
        fn table_mut(&mut self, phys: u64) -> &mut [u64; 512] {
            assert_eq!(
                phys % PAGE_SIZE,
                0,
                "table address {phys:#x} not page-aligned"
            );
            &mut self.frames[((phys - BASE) / PAGE_SIZE) as usize]
        }
    }
}

pub mod frames;
pub mod heap;
pub mod page_table;
