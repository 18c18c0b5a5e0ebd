//! A guest's RAM as the host sees it (guest-physical 0..len, one contiguous host range), with bounds-
//! checked access and a walk of the guest's own page tables for operands given as guest-virtual addresses.

/// Guest RAM. On the machine it is the identity-mapped host range backing guest-physical 0..len.
pub struct GuestMemory<'a> {
    ram: &'a mut [u8],
    layout: RamLayout,
}

/// Where a guest's RAM block appears in its guest-physical space: block offsets below
/// [`LOW_MEMORY_END`] at the same guest-physical addresses; block offsets from `high_offset` on at
/// `high_start` and up to `hole_start`, where the MMIO hole below 4 GiB begins; the rest of the
/// block from 4 GiB. The usual layout is linear up to the hole ([`RamLayout::linear`]); a guest
/// whose devices DMA without an IOMMU sees its high memory at its host address
/// ([`RamLayout::identity`]), which never meets MMIO.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RamLayout {
    pub high_start: u64,
    pub high_offset: u64,
    pub hole_start: u64,
}

/// The end of the first MiB, which Linux reserves whole (and so never gives a device to DMA to).
pub const LOW_MEMORY_END: u64 = 1 << 20;
/// Where RAM resumes above the MMIO hole.
pub const HIGH_RAM_START: u64 = 4 << 30;
/// The lowest the MMIO hole starts: the IOAPIC, the LAPIC and 64-bit-capable BARs live above it.
pub const DEFAULT_HOLE_START: u64 = 3 << 30;

/// One guest-physical range of RAM and the block offset it starts at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RamRange {
    pub gpa: u64,
    pub offset: u64,
    pub len: u64,
}

impl RamLayout {
    /// Guest-physical 0..[`DEFAULT_HOLE_START`] is the block's start, the rest above 4 GiB.
    pub const LINEAR: Self = Self::linear(DEFAULT_HOLE_START);

    /// Linear, with the MMIO hole from `hole_start` (2 MiB-aligned, at most 4 GiB) to 4 GiB.
    pub const fn linear(hole_start: u64) -> Self {
        Self {
            high_start: LOW_MEMORY_END,
            high_offset: LOW_MEMORY_END,
            hole_start,
        }
    }

    /// For a block at host `base` (2 MiB-aligned): the first MiB at guest-physical 0, the block
    /// from 2 MiB on at its own host address, so a device that DMAs to a guest-physical address
    /// with no IOMMU reaches the right memory. The block's second MiB is unused.
    pub const fn identity(base: u64) -> Self {
        Self {
            high_start: base + IDENTITY_HIGH_OFFSET,
            high_offset: IDENTITY_HIGH_OFFSET,
            hole_start: u64::MAX,
        }
    }

    /// Whether the block's offsets are its guest-physical addresses (below the hole).
    pub const fn is_linear(&self) -> bool {
        self.high_start == self.high_offset
    }

    /// The guest-physical RAM of a block of `ram_len` bytes, in address order, ranges that follow
    /// each other in both spaces merged (a small linear guest is one range).
    pub fn ranges(&self, ram_len: u64) -> impl Iterator<Item = RamRange> {
        let low = RamRange {
            gpa: 0,
            offset: 0,
            len: LOW_MEMORY_END.min(ram_len),
        };
        let high_len = ram_len.saturating_sub(self.high_offset);
        let below_hole = high_len.min(self.hole_start.saturating_sub(self.high_start));
        let high = RamRange {
            gpa: self.high_start,
            offset: self.high_offset,
            len: below_hole,
        };
        let above = RamRange {
            gpa: HIGH_RAM_START,
            offset: self.high_offset + below_hole,
            len: high_len - below_hole,
        };
        let mut merged: [Option<RamRange>; 3] = [None; 3];
        let mut n: usize = 0;
        for r in [low, high, above].into_iter().filter(|r| r.len != 0) {
            match n.checked_sub(1).and_then(|i| merged[i].as_mut()) {
                Some(last)
                    if last.gpa + last.len == r.gpa && last.offset + last.len == r.offset =>
                {
                    last.len += r.len;
                }
                _ => {
                    merged[n] = Some(r);
                    n += 1;
                }
            }
        }
        merged.into_iter().flatten()
    }

    /// The block offset of `len` bytes at guest-physical `gpa` in a block of `ram_len` bytes, if
    /// they are all RAM of one range.
    pub fn offset(&self, gpa: u64, len: u64, ram_len: u64) -> Option<usize> {
        let end = gpa.checked_add(len)?;
        self.ranges(ram_len)
            .find(|r| r.gpa <= gpa && end <= r.gpa + r.len)
            .map(|r| (gpa - r.gpa + r.offset) as usize)
    }
}

/// Where [`RamLayout::identity`] starts the block's high part: EPT maps it with 2 MiB pages.
pub const IDENTITY_HIGH_OFFSET: u64 = 2 << 20;

// Paging-structure entry bits (SDM Vol. 3A 4.5).
const PRESENT: u64 = 1 << 0;
const PAGE_SIZE: u64 = 1 << 7;
const ADDRESS_MASK: u64 = 0x000F_FFFF_FFFF_F000;

impl<'a> GuestMemory<'a> {
    pub fn new(ram: &'a mut [u8]) -> Self {
        Self::with_layout(ram, RamLayout::LINEAR)
    }

    pub fn with_layout(ram: &'a mut [u8], layout: RamLayout) -> Self {
        Self { ram, layout }
    }

    pub fn len(&self) -> u64 {
        self.ram.len() as u64
    }

    pub fn is_empty(&self) -> bool {
        self.ram.is_empty()
    }

    /// `len` bytes at guest-physical `gpa`, if they are all guest RAM.
    pub fn slice(&self, gpa: u64, len: u64) -> Option<&[u8]> {
        let at = self.layout.offset(gpa, len, self.len())?;
        Some(&self.ram[at..at + len as usize])
    }

    pub fn slice_mut(&mut self, gpa: u64, len: u64) -> Option<&mut [u8]> {
        let at = self.layout.offset(gpa, len, self.len())?;
        Some(&mut self.ram[at..at + len as usize])
    }

    pub fn read_u64(&self, gpa: u64) -> Option<u64> {
        Some(u64::from_le_bytes(self.slice(gpa, 8)?.try_into().ok()?))
    }

    /// Translates a guest-virtual address through the guest's 4-level page tables at `cr3`
    /// (4 KiB, 2 MiB and 1 GiB pages; SDM Vol. 3A 4.5). `None` if not mapped or a table lies outside RAM.
    pub fn translate(&self, cr3: u64, virt: u64) -> Option<u64> {
        let mut table = cr3 & ADDRESS_MASK;
        for (level, shift) in [(4, 39u64), (3, 30), (2, 21), (1, 12)] {
            let entry = self.read_u64(table + ((virt >> shift) & 511) * 8)?;
            if entry & PRESENT == 0 {
                return None;
            }
            let leaf = level == 1 || ((level == 3 || level == 2) && entry & PAGE_SIZE != 0);
            if leaf {
                let page_mask = (1u64 << shift) - 1;
                return Some((entry & ADDRESS_MASK & !page_mask) | (virt & page_mask));
            }
            table = entry & ADDRESS_MASK;
        }
        None
    }

    /// Reads `N` bytes at a guest-virtual address; the range may cross a page boundary.
    pub fn read_virt<const N: usize>(&self, cr3: u64, virt: u64) -> Option<[u8; N]> {
        let mut out = [0u8; N];
        for (i, byte) in out.iter_mut().enumerate() {
            let gpa = self.translate(cr3, virt.wrapping_add(i as u64))?;
            *byte = self.slice(gpa, 1)?[0];
        }
        Some(out)
    }

    /// Writes bytes at a guest-virtual address; nothing is written unless every byte is mapped.
    pub fn write_virt(&mut self, cr3: u64, virt: u64, bytes: &[u8]) -> Option<()> {
        let mut gpas = [0u64; 16];
        assert!(
            bytes.len() <= gpas.len(),
            "write_virt takes at most 16 bytes"
        );
        for (i, gpa) in gpas.iter_mut().enumerate().take(bytes.len()) {
            *gpa = self
                .translate(cr3, virt.wrapping_add(i as u64))
                .filter(|&g| g < self.len())?;
        }
        for (byte, gpa) in bytes.iter().zip(gpas) {
            self.ram[gpa as usize] = *byte;
        }
        Some(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_layout_puts_the_first_mib_low_and_the_rest_at_its_host_address() {
        let base = 0x1200_0000;
        let layout = RamLayout::identity(base);
        let len = 8 << 20;
        assert_eq!(layout.offset(0x9_F000, 0x1000, len), Some(0x9_F000));
        assert_eq!(
            layout.offset(0xF_FFF8, 16, len),
            None,
            "straddles the first MiB's end"
        );
        assert_eq!(layout.offset(0x10_0000, 8, len), None, "not guest memory");
        assert_eq!(
            layout.offset(base, 8, len),
            None,
            "the block's low part is not aliased"
        );
        assert_eq!(layout.offset(base + (2 << 20), 8, len), Some(2 << 20));
        assert_eq!(
            layout.offset(base + len - 8, 8, len),
            Some(len as usize - 8)
        );
        assert_eq!(layout.offset(base + len - 4, 8, len), None);
        // Linear: guest-physical is the offset, straddling the first MiB's end included.
        let linear = RamLayout::LINEAR;
        for gpa in [0, 0xF_FFF8, 0x10_0000, len - 8] {
            assert_eq!(linear.offset(gpa, 8, len), Some(gpa as usize));
        }
        assert_eq!(linear.offset(0xF_FFF8, 16, len), Some(0xF_FFF8));
        assert_eq!(linear.offset(len - 4, 8, len), None);
        assert_eq!(
            linear.ranges(len).collect::<alloc::vec::Vec<_>>(),
            [RamRange {
                gpa: 0,
                offset: 0,
                len
            }]
        );
    }

    #[test]
    fn ram_past_the_hole_resumes_at_4_gib() {
        // 3 GiB of RAM with an assigned BAR at 2 GiB: 2 GiB below it, the last GiB from 4 GiB.
        let layout = RamLayout::linear(2 << 30);
        let len = 3 << 30;
        assert_eq!(
            layout.ranges(len).collect::<alloc::vec::Vec<_>>(),
            [
                RamRange {
                    gpa: 0,
                    offset: 0,
                    len: 2 << 30
                },
                RamRange {
                    gpa: 4 << 30,
                    offset: 2 << 30,
                    len: 1 << 30
                },
            ]
        );
        assert_eq!(layout.offset((2 << 30) - 8, 8, len), Some((2 << 30) - 8));
        assert_eq!(layout.offset(2 << 30, 8, len), None, "the hole");
        assert_eq!(
            layout.offset((2 << 30) - 4, 8, len),
            None,
            "straddles the hole"
        );
        assert_eq!(layout.offset(4 << 30, 8, len), Some(2 << 30));
        assert_eq!(layout.offset((5 << 30) - 8, 8, len), Some(len as usize - 8));
        assert_eq!(layout.offset(5 << 30, 8, len), None);
        // The identity layout has no hole: host RAM never overlaps MMIO.
        let identity = RamLayout::identity(0x1_2000_0000);
        assert_eq!(identity.ranges(len).count(), 2);
    }
    use alloc::vec;

    fn put(ram: &mut [u8], at: u64, value: u64) {
        ram[at as usize..at as usize + 8].copy_from_slice(&value.to_le_bytes());
    }

    /// PML4 at 0x1000 -> PDPT 0x2000 -> PD 0x3000 -> PT 0x4000; virt 0x40_0000 (4K) -> 0x9000,
    /// virt 0x20_0000 (2M) -> 0x60_0000, virt 0x4000_0000 (1G) -> 0.
    fn tables() -> alloc::vec::Vec<u8> {
        let mut ram = vec![0u8; 8 << 20];
        put(&mut ram, 0x1000, 0x2000 | 3);
        put(&mut ram, 0x2000, 0x3000 | 3);
        put(&mut ram, 0x2008, 0x83);
        put(&mut ram, 0x3000 + 8, 0x60_0000 | 0x83);
        put(&mut ram, 0x3000 + 16, 0x4000 | 3);
        put(&mut ram, 0x4000, 0x9000 | 3);
        ram
    }

    #[test]
    fn walks_4k_2m_and_1g_pages() {
        let mut ram = tables();
        let mem = GuestMemory::new(&mut ram);
        assert_eq!(mem.translate(0x1000, 0x40_0123), Some(0x9123));
        assert_eq!(mem.translate(0x1000, 0x20_0456), Some(0x60_0456));
        assert_eq!(mem.translate(0x1000, 0x4000_0789), Some(0x789));
        assert_eq!(
            mem.translate(0x1000, 0x40_1000),
            None,
            "PT entry 1 not present"
        );
        assert_eq!(
            mem.translate(0x1000, 0x80_0000_0000),
            None,
            "PML4 entry 1 not present"
        );
    }

    #[test]
    fn virtual_reads_and_writes_cross_pages_and_refuse_unmapped_bytes() {
        let mut ram = tables();
        let mut mem = GuestMemory::new(&mut ram);
        mem.write_virt(0x1000, 0x40_0000, &[1, 2, 3]).unwrap();
        assert_eq!(mem.read_virt::<3>(0x1000, 0x40_0000), Some([1, 2, 3]));
        assert_eq!(
            mem.write_virt(0x1000, 0x40_0FFE, &[9, 9, 9, 9]),
            None,
            "runs into an unmapped page"
        );
        assert_eq!(
            mem.slice(0x9FFE, 2),
            Some(&[0u8, 0][..]),
            "nothing written by the refused write"
        );
    }

    #[test]
    fn physical_access_is_bounds_checked() {
        let mut ram = vec![0u8; 4096];
        let mem = GuestMemory::new(&mut ram);
        assert!(mem.slice(4090, 6).is_some());
        assert!(mem.slice(4090, 7).is_none());
        assert!(mem.slice(u64::MAX, 2).is_none());
    }
}
