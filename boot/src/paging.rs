//! The 4-level page tables the loader hands the kernel (SDM Vol. 3A 4.5, "4-Level Paging"):
//! an identity map of physical memory with 2 MiB pages, plus the kernel's segments at their link
//! addresses with 4 KiB pages and per-segment permissions.
//!
//! Tables come from a [`FrameSource`] so the same code runs on host memory in tests.

use core::ops::Range;

use exitless_abi::elf_image::{ElfImage, PAGE_SIZE};
use x86_64::structures::paging::{PageTable, PageTableFlags as Flags};
use x86_64::PhysAddr;

pub const SIZE_2M: u64 = 2 << 20;
pub const SIZE_1G: u64 = 1 << 30;
const SIZE_512G: u64 = 512 * SIZE_1G;
/// The identity map always covers the 32-bit space: LAPIC, IOAPIC, VT-d, ECAM live below 4 GiB.
pub const MIN_IDENTITY_END: u64 = 4 * SIZE_1G;
/// Above this the identity map would reach the upper half of 4-level paging.
pub const MAX_IDENTITY_END: u64 = 128 << 40;

/// Zeroed, 4 KiB-aligned frames for page tables, addressed by physical address.
pub trait FrameSource {
    /// A zeroed frame's physical address, or `None` when exhausted.
    fn allocate(&mut self) -> Option<u64>;
    /// The table stored in the frame at `phys` (one this source handed out).
    fn table(&mut self, phys: u64) -> &mut PageTable;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PagingError {
    /// The frame source ran dry ([`frames_needed`] was too small).
    OutOfFrames,
    /// A 4 KiB page is already mapped, or lies inside a 2 MiB mapping.
    AlreadyMapped(u64),
}

/// Where the identity map ends for memory (or MMIO) reaching up to `highest_phys`: at least 4 GiB,
/// rounded up to whole 1 GiB page directories.
pub const fn identity_map_end(highest_phys: u64) -> u64 {
    let end = if highest_phys > MIN_IDENTITY_END {
        highest_phys
    } else {
        MIN_IDENTITY_END
    };
    end.div_ceil(SIZE_1G) * SIZE_1G
}

/// Upper bound on the table frames [`Mapper`] needs for an identity map to `identity_end` plus
/// 4 KiB mappings anywhere in `kernel_span`.
pub fn frames_needed(identity_end: u64, kernel_span: Range<u64>) -> usize {
    let count = |size: u64| {
        let first = kernel_span.start / size;
        let last = (kernel_span.end.max(kernel_span.start + 1) - 1) / size;
        (last - first + 1) as usize
    };
    let identity = identity_end.div_ceil(SIZE_512G) + identity_end.div_ceil(SIZE_1G);
    1 + identity as usize + count(SIZE_512G) + count(SIZE_1G) + count(SIZE_2M)
}

/// Builds one address space.
pub struct Mapper<'a, F: FrameSource> {
    frames: &'a mut F,
    root: u64,
    /// Whether leaf entries may carry the XD bit (needs CPUID.80000001H:EDX.NX and EFER.NXE, SDM 4.1.1).
    use_nx: bool,
}

fn index(vaddr: u64, level: u32) -> usize {
    ((vaddr >> (12 + 9 * (level - 1))) & 0x1ff) as usize
}

impl<'a, F: FrameSource> Mapper<'a, F> {
    pub fn new(frames: &'a mut F, use_nx: bool) -> Result<Self, PagingError> {
        let root = frames.allocate().ok_or(PagingError::OutOfFrames)?;
        Ok(Self {
            frames,
            root,
            use_nx,
        })
    }

    /// Physical address of the PML4 (the CR3 value, with PCD/PWT clear).
    pub fn root(&self) -> u64 {
        self.root
    }

    fn leaf_flags(&self, writable: bool, executable: bool) -> Flags {
        let mut flags = Flags::PRESENT;
        if writable {
            flags |= Flags::WRITABLE;
        }
        if !executable && self.use_nx {
            flags |= Flags::NO_EXECUTE;
        }
        flags
    }

    /// The table one level below entry `idx` of the table at `table`, created if absent. Non-leaf
    /// entries grant everything; the leaf decides (rights are the AND along the walk, SDM 4.6.1).
    fn next_table(&mut self, table: u64, idx: usize, vaddr: u64) -> Result<u64, PagingError> {
        let entry = &self.frames.table(table)[idx];
        if entry.flags().contains(Flags::HUGE_PAGE) {
            return Err(PagingError::AlreadyMapped(vaddr));
        }
        if !entry.is_unused() {
            return Ok(entry.addr().as_u64());
        }
        let frame = self.frames.allocate().ok_or(PagingError::OutOfFrames)?;
        self.frames.table(table)[idx]
            .set_addr(PhysAddr::new(frame), Flags::PRESENT | Flags::WRITABLE);
        Ok(frame)
    }

    /// Identity-maps `[0, end)` (`end` a multiple of 2 MiB) with writable 2 MiB pages, non-executable
    /// except the pages that overlap one of `executable` (the loader's own code, which runs until the
    /// jump, and the firmware's runtime-services code, which the kernel calls to reset/power off).
    pub fn identity_map(&mut self, end: u64, executable: &[Range<u64>]) -> Result<(), PagingError> {
        let mut phys = 0;
        while phys < end {
            let pdpt = self.next_table(self.root, index(phys, 4), phys)?;
            let pd = self.next_table(pdpt, index(phys, 3), phys)?;
            let exec = executable
                .iter()
                .any(|r| phys < r.end && r.start < phys + SIZE_2M);
            let flags = self.leaf_flags(true, exec) | Flags::HUGE_PAGE;
            let entry = &mut self.frames.table(pd)[index(phys, 2)];
            if !entry.is_unused() {
                return Err(PagingError::AlreadyMapped(phys));
            }
            entry.set_addr(PhysAddr::new(phys), flags);
            phys += SIZE_2M;
        }
        Ok(())
    }

    /// Maps the 4 KiB page at `vaddr` to `phys`.
    pub fn map_4k(
        &mut self,
        vaddr: u64,
        phys: u64,
        writable: bool,
        executable: bool,
    ) -> Result<(), PagingError> {
        let pdpt = self.next_table(self.root, index(vaddr, 4), vaddr)?;
        let pd = self.next_table(pdpt, index(vaddr, 3), vaddr)?;
        let pt = self.next_table(pd, index(vaddr, 2), vaddr)?;
        let flags = self.leaf_flags(writable, executable);
        let entry = &mut self.frames.table(pt)[index(vaddr, 1)];
        if !entry.is_unused() {
            return Err(PagingError::AlreadyMapped(vaddr));
        }
        entry.set_addr(PhysAddr::new(phys), flags);
        Ok(())
    }

    /// Maps every page of `image`'s segments, the span laid out from `phys_base` as
    /// [`ElfImage::load_into`] does, with each segment's write/execute rights.
    pub fn map_image(&mut self, image: &ElfImage<'_>, phys_base: u64) -> Result<(), PagingError> {
        let base = image.span().start;
        for segment in image.segments() {
            for page in segment.pages().step_by(PAGE_SIZE as usize) {
                self.map_4k(
                    page,
                    phys_base + (page - base),
                    segment.flags.write,
                    segment.flags.execute,
                )?;
            }
        }
        Ok(())
    }

    /// Walks the tables: the physical address `vaddr` maps to and the leaf entry's flags.
    pub fn translate(&mut self, vaddr: u64) -> Option<(u64, Flags)> {
        let mut table = self.root;
        for level in (1..=4).rev() {
            let entry = &self.frames.table(table)[index(vaddr, level)];
            if entry.is_unused() {
                return None;
            }
            let flags = entry.flags();
            let leaf = level == 1 || flags.contains(Flags::HUGE_PAGE);
            if leaf {
                let page_mask = (1u64 << (12 + 9 * (level - 1))) - 1;
                return Some((entry.addr().as_u64() + (vaddr & page_mask), flags));
            }
            table = entry.addr().as_u64();
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use exitless_abi::elf_image::AddressWindow;

    /// Frames live in a Vec; frame i has the made-up physical address 0x1000 * (i + 1).
    struct HostFrames {
        tables: Vec<Box<PageTable>>,
        limit: usize,
    }

    impl HostFrames {
        fn new(limit: usize) -> Self {
            Self {
                tables: Vec::new(),
                limit,
            }
        }
    }

    impl FrameSource for HostFrames {
        fn allocate(&mut self) -> Option<u64> {
            if self.tables.len() == self.limit {
                return None;
            }
            self.tables.push(Box::new(PageTable::new()));
            Some(0x1000 * self.tables.len() as u64)
        }
        fn table(&mut self, phys: u64) -> &mut PageTable {
            &mut self.tables[(phys / 0x1000 - 1) as usize]
        }
    }

    #[test]
    fn identity_end_is_at_least_4g_and_whole_gigabytes() {
        assert_eq!(identity_map_end(0x2000_0000), 4 << 30);
        assert_eq!(identity_map_end(0x1_0000_0001), 5 << 30);
        assert_eq!(identity_map_end(8 << 30), 8 << 30);
    }

    #[test]
    fn identity_map_uses_writable_nx_2m_pages_except_loader_code() {
        let end = 4 << 30;
        let span = 0xffff_ffff_8000_0000..0xffff_ffff_8000_4000;
        let mut frames = HostFrames::new(frames_needed(end, span));
        let mut m = Mapper::new(&mut frames, true).unwrap();
        m.identity_map(end, &[0x3e0_1000..0x3e0_3000, 0x7fe0_0000..0x7fe0_1000])
            .unwrap();
        // PML4 + 1 PDPT + 4 PDs.
        assert_eq!(m.frames.tables.len(), 6);
        let (phys, flags) = m.translate(0xfee0_0123).unwrap();
        assert_eq!(phys, 0xfee0_0123);
        assert_eq!(
            flags,
            Flags::PRESENT | Flags::WRITABLE | Flags::HUGE_PAGE | Flags::NO_EXECUTE
        );
        // The 2 MiB page holding the loader's code stays executable, its neighbours do not.
        let (_, flags) = m.translate(0x3e0_0000).unwrap();
        assert!(!flags.contains(Flags::NO_EXECUTE));
        assert!(m
            .translate(0x3c0_0000)
            .unwrap()
            .1
            .contains(Flags::NO_EXECUTE));
        assert!(m
            .translate(0x400_0000)
            .unwrap()
            .1
            .contains(Flags::NO_EXECUTE));
        assert!(!m
            .translate(0x7fe0_0000)
            .unwrap()
            .1
            .contains(Flags::NO_EXECUTE));
        assert_eq!(m.translate(end), None);
        // The raw PDE for 0xfee00000: base | PS(7) | RW(1) | P(0) | XD(63), SDM Table 4-18.
        let pde = &m.frames.tables[2 + 3][index(0xfee0_0000, 2)];
        assert_eq!(pde.addr().as_u64(), 0xfee0_0000);
        assert_eq!(pde.flags().bits(), 0x8000_0000_0000_0083);
    }

    #[test]
    fn without_nx_nothing_carries_the_xd_bit() {
        let mut frames = HostFrames::new(16);
        let mut m = Mapper::new(&mut frames, false).unwrap();
        m.identity_map(SIZE_1G, &[]).unwrap();
        m.map_4k(0xffff_ffff_8000_0000, 0x20_0000, true, false)
            .unwrap();
        assert!(!m.translate(0x1000).unwrap().1.contains(Flags::NO_EXECUTE));
        assert!(!m
            .translate(0xffff_ffff_8000_0000)
            .unwrap()
            .1
            .contains(Flags::NO_EXECUTE));
    }

    /// A kernel-like image: text RX (1 page), rodata R (1 page), data+bss RW (2 pages).
    fn kernel_image() -> Vec<u8> {
        const BASE: u64 = 0xffff_ffff_8000_0000;
        let segs: [(u32, u64, u64, u64, u64); 3] = [
            (5, 0x1000, BASE, 0x100, 0x100),
            (4, 0x2000, BASE + 0x1000, 0x80, 0x80),
            (6, 0x3000, BASE + 0x2000, 0x10, 0x2000),
        ];
        let mut f = vec![0u8; 0x3010];
        f[..4].copy_from_slice(b"\x7fELF");
        f[4] = 2;
        f[5] = 1;
        f[6] = 1;
        f[16..18].copy_from_slice(&2u16.to_le_bytes());
        f[18..20].copy_from_slice(&62u16.to_le_bytes());
        f[20..24].copy_from_slice(&1u32.to_le_bytes());
        f[24..32].copy_from_slice(&BASE.to_le_bytes());
        f[32..40].copy_from_slice(&64u64.to_le_bytes());
        f[52..54].copy_from_slice(&64u16.to_le_bytes());
        f[54..56].copy_from_slice(&56u16.to_le_bytes());
        f[56..58].copy_from_slice(&3u16.to_le_bytes());
        for (i, (flags, off, va, filesz, memsz)) in segs.into_iter().enumerate() {
            let o = 64 + 56 * i;
            f[o..o + 4].copy_from_slice(&1u32.to_le_bytes());
            f[o + 4..o + 8].copy_from_slice(&flags.to_le_bytes());
            for (k, v) in [off, va, va, filesz, memsz, 0x1000].into_iter().enumerate() {
                f[o + 8 + 8 * k..o + 16 + 8 * k].copy_from_slice(&v.to_le_bytes());
            }
        }
        f
    }

    #[test]
    fn kernel_segments_get_4k_pages_with_their_rights() {
        let file = kernel_image();
        let image = ElfImage::parse(&file, AddressWindow::UPPER_HALF).unwrap();
        let end = 4 << 30;
        let mut frames = HostFrames::new(frames_needed(end, image.span()));
        let mut m = Mapper::new(&mut frames, true).unwrap();
        m.identity_map(end, &[]).unwrap();
        let phys = 0x123_4000;
        m.map_image(&image, phys).unwrap();
        let base = image.span().start;
        let text = m.translate(base + 0x10).unwrap();
        assert_eq!(text, (phys + 0x10, Flags::PRESENT));
        let rodata = m.translate(base + 0x1008).unwrap();
        assert_eq!(rodata, (phys + 0x1008, Flags::PRESENT | Flags::NO_EXECUTE));
        for off in [0x2000, 0x3ff8] {
            let data = m.translate(base + off).unwrap();
            let rw_nx = Flags::PRESENT | Flags::WRITABLE | Flags::NO_EXECUTE;
            assert_eq!(data, (phys + off, rw_nx));
        }
        assert_eq!(m.translate(base + 0x4000), None);
        // Mapping twice is refused, as is a 4 KiB page inside the 2 MiB identity map.
        assert_eq!(
            m.map_image(&image, phys),
            Err(PagingError::AlreadyMapped(base))
        );
        assert_eq!(
            m.map_4k(0x20_0000, 0x20_0000, true, false),
            Err(PagingError::AlreadyMapped(0x20_0000))
        );
    }

    #[test]
    fn frames_needed_is_enough_even_across_table_boundaries() {
        // A span straddling a 1 GiB (and so 2 MiB) boundary needs two PDs and two PTs.
        let span = 0xffff_ffff_bfff_f000..0xffff_ffff_c000_1000;
        let end = 4 << 30;
        let needed = frames_needed(end, span.clone());
        assert_eq!(needed, 1 + (1 + 4) + 1 + 2 + 2);
        let mut frames = HostFrames::new(needed);
        let mut m = Mapper::new(&mut frames, true).unwrap();
        m.identity_map(end, &[]).unwrap();
        for page in span.step_by(0x1000) {
            m.map_4k(page, 0x10_0000, false, true).unwrap();
        }
        let mut frames = HostFrames::new(3);
        let mut m = Mapper::new(&mut frames, true).unwrap();
        assert_eq!(m.identity_map(end, &[]), Err(PagingError::OutOfFrames));
    }
}
