//! Second-level paging structures: the per-domain IOVA (guest-physical) to host-physical map
//! (VT-d 3.7 translation, 9.8 entry formats), the shared engine (`memory::page_table`) in the
//! second-level format.

use super::VtdError;
use crate::caps::vtd::{AddressWidth, VtdCap};
use crate::memory::page_table::{self, Format, PageSize, PageTable};
use crate::memory::FrameAlloc;
use alloc::vec::Vec;
use bitflags::bitflags;

pub use crate::memory::page_table::{MapStats, PageSizes};

bitflags! {
    /// Access rights of a mapping (second-level entry bits 0 and 1).
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Access: u64 {
        const READ = 1 << 0;
        const WRITE = 1 << 1;
    }
}

/// The sizes a unit supports: 4 KiB plus CAP.SLLPS's 2 MiB / 1 GiB (VT-d 11.4.2).
pub fn supported_page_sizes(cap: VtdCap) -> PageSizes {
    let large = cap.large_pages();
    PageSizes {
        size_2m: large.size_2m,
        size_1g: large.size_1g,
    }
}

// Second-level entry bits (VT-d 9.8).
const READ: u64 = 1 << 0;
const WRITE: u64 = 1 << 1;
/// PS: this PDE/PDPE maps a 2 MiB / 1 GiB page.
const PAGE_SIZE_BIT: u64 = 1 << 7;
/// SNP: force snooping (only where ECAP.SC = 1).
pub const SNOOP: u64 = 1 << 11;
/// Address bits 51:12.
const ADDR_MASK: u64 = 0x000F_FFFF_FFFF_F000;

/// The second-level format for the shared engine. An entry is present when R or W is set (VT-d
/// 3.7.1). Mappings are never overwritten and large pages never split: the caller invalidates
/// exactly the pages `unmap` reports (VT-d 6.5), so an edit must not change any other.
#[derive(Debug)]
pub struct SecondLevelFormat;

/// A second-level leaf's bits besides its address: R/W and, where ECAP.SC allows, SNP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SecondLevelLeaf {
    pub access: Access,
    pub snoop: bool,
}

impl Format for SecondLevelFormat {
    type Leaf = SecondLevelLeaf;
    const ADDRESS_MASK: u64 = ADDR_MASK;
    const PAGE_SIZE_BIT: u64 = PAGE_SIZE_BIT;
    const REPLACES: bool = false;
    const SPLITS: bool = false;

    fn is_present(entry: u64) -> bool {
        entry & (READ | WRITE) != 0
    }
    /// Non-leaf entries grant R+W; the leaf decides (VT-d 3.7.1: rights are ANDed).
    fn table_entry(table: u64) -> u64 {
        (table & ADDR_MASK) | READ | WRITE
    }
    fn leaf_entry(output: u64, size: PageSize, leaf: SecondLevelLeaf) -> u64 {
        let ps = if size == PageSize::Size4K {
            0
        } else {
            PAGE_SIZE_BIT
        };
        let snoop = if leaf.snoop { SNOOP } else { 0 };
        (output & ADDR_MASK) | leaf.access.bits() | ps | snoop
    }
}

/// One translation found by [`DomainTables::translate`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Translation {
    pub hpa: u64,
    /// Size of the page that maps it.
    pub page_size: u64,
    pub access: Access,
}

/// A page that [`DomainTables::unmap`] removed and that the IOTLB must forget.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnmappedPage {
    pub iova: u64,
    pub size: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapError {
    OutOfMemory,
    /// iova, hpa or len is not 4 KiB-aligned, or the host range wraps or passes 52 bits.
    Misaligned,
    /// The range goes past the domain's address width.
    BeyondAddressWidth,
    /// A page in the range is already mapped (mappings are never overwritten silently).
    AlreadyMapped {
        iova: u64,
    },
    /// Unmapping part of a large page (splitting is not supported).
    PartialLargePage {
        iova: u64,
    },
}

impl From<page_table::Error> for MapError {
    fn from(e: page_table::Error) -> MapError {
        use page_table::Error as E;
        match e {
            E::OutOfFrames => MapError::OutOfMemory,
            E::Unaligned | E::OutputOutOfRange | E::InvalidLeaf => MapError::Misaligned,
            E::InputOutOfRange => MapError::BeyondAddressWidth,
            E::AlreadyMapped { at } => MapError::AlreadyMapped { iova: at },
            E::PartialLargePage { at } => MapError::PartialLargePage { iova: at },
        }
    }
}

impl From<MapError> for VtdError {
    fn from(e: MapError) -> VtdError {
        match e {
            MapError::OutOfMemory => VtdError::OutOfMemory,
            _ => VtdError::Unsupported("second-level mapping request"),
        }
    }
}

/// One domain's second-level tables.
#[derive(Debug)]
pub struct DomainTables {
    tables: PageTable<SecondLevelFormat>,
    width: AddressWidth,
    /// SNP on every leaf, where ECAP.SC allows it.
    snoop: bool,
}

impl DomainTables {
    /// Empty tables with `width`'s number of levels (3 for 39-bit, 4 for 48-bit, 5 for 57-bit;
    /// VT-d 3.6), chosen with `VtdCap::choose_address_width`.
    pub fn new(alloc: &mut impl FrameAlloc, width: AddressWidth) -> Result<DomainTables, MapError> {
        Ok(DomainTables {
            tables: PageTable::new(alloc, width.levels())?,
            width,
            snoop: false,
        })
    }

    /// Sets SNP on future leaves; only valid when ECAP.SC = 1 (VT-d 9.8).
    pub fn with_snoop(mut self) -> DomainTables {
        self.snoop = true;
        self
    }

    /// The context-entry SLPTPTR: physical address of the top-level table.
    pub fn root(&self) -> u64 {
        self.tables.root()
    }
    pub fn address_width(&self) -> AddressWidth {
        self.width
    }

    /// Maps `[iova, iova + len)` to `[hpa, hpa + len)`, each step using the largest page in
    /// `sizes` that the alignment of both addresses and the remaining length allow.
    pub fn map(
        &mut self,
        alloc: &mut impl FrameAlloc,
        iova: u64,
        hpa: u64,
        len: u64,
        access: Access,
        sizes: PageSizes,
    ) -> Result<MapStats, MapError> {
        let leaf = SecondLevelLeaf {
            access,
            snoop: self.snoop,
        };
        Ok(self.tables.map(alloc, iova, hpa, len, leaf, sizes)?)
    }

    /// Removes every mapping in `[iova, iova + len)` and returns the pages the IOTLB must
    /// invalidate. Table frames stay allocated (they are reused by later maps).
    pub fn unmap(
        &mut self,
        alloc: &mut impl FrameAlloc,
        iova: u64,
        len: u64,
    ) -> Result<Vec<UnmappedPage>, MapError> {
        let mut removed = Vec::new();
        self.tables.unmap(alloc, iova, len, &mut |at, size| {
            removed.push(UnmappedPage {
                iova: at,
                size: size.bytes(),
            })
        })?;
        Ok(removed)
    }

    /// The host-physical address `iova` maps to, as the hardware walk would find it.
    pub fn translate(&self, alloc: &mut impl FrameAlloc, iova: u64) -> Option<Translation> {
        let found = self.tables.translate(alloc, iova)?;
        Some(Translation {
            hpa: found.output,
            page_size: found.size.bytes(),
            access: Access::from_bits_truncate(found.entry),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::test_frames::TestFrames;

    const GIB: u64 = 1 << 30;
    const MIB2: u64 = 2 << 20;
    const ALL: PageSizes = PageSizes::ALL;

    #[test]
    fn page_sizes_from_sllps() {
        // QEMU CAP 0x00d2008c22260206: SLLPS (37:34) = 0b0011, 2 MiB and 1 GiB.
        assert_eq!(supported_page_sizes(VtdCap(0x00d2_008c_2226_0206)), ALL);
        // SLLPS = 0b0001: 2 MiB only.
        let only_2m = VtdCap(1 << 34);
        assert_eq!(supported_page_sizes(only_2m), PageSizes::UP_TO_2M);
        assert_eq!(supported_page_sizes(VtdCap(0)), PageSizes::ONLY_4K);
    }

    #[test]
    fn entries_encoded_by_hand() {
        // 4-level: iova 0x4020_3000 -> PML4[0] -> PDPT[1] -> PD[1] -> PT[3].
        let mut f = TestFrames::default();
        let mut d = DomainTables::new(&mut f, AddressWidth::Bits48Level4).unwrap();
        let s = d
            .map(
                &mut f,
                0x4020_3000,
                0x8_0000_5000,
                0x1000,
                Access::READ | Access::WRITE,
                ALL,
            )
            .unwrap();
        assert_eq!((s.pages_4k, s.tables), (1, 3));
        let root = d.root();
        let pdpt = f.table(root)[0];
        assert_eq!(pdpt & 0xFFF, 0b11, "non-leaf: R|W");
        let pd = f.table(pdpt & ADDR_MASK)[1];
        let pt = f.table(pd & ADDR_MASK)[1];
        // Leaf: address | W (bit 1) | R (bit 0), no PS.
        assert_eq!(f.table(pt & ADDR_MASK)[3], 0x8_0000_5003);

        // A 2 MiB read-only leaf: address | PS (bit 7) | R = 0x4000_0081.
        let mut d3 = DomainTables::new(&mut f, AddressWidth::Bits39Level3).unwrap();
        d3.map(&mut f, 0x20_0000, 0x4000_0000, MIB2, Access::READ, ALL)
            .unwrap();
        let pd = f.table(d3.root())[0] & ADDR_MASK;
        assert_eq!(f.table(pd)[1], 0x4000_0081);
        // A 1 GiB leaf at the top of a 3-level walk, with snoop: addr | SNP | PS | W | R.
        let mut d3s = DomainTables::new(&mut f, AddressWidth::Bits39Level3)
            .unwrap()
            .with_snoop();
        d3s.map(&mut f, GIB, 2 * GIB, GIB, Access::READ | Access::WRITE, ALL)
            .unwrap();
        assert_eq!(f.table(d3s.root())[1], 0x8000_0883);
    }

    /// Performance note for the issue: leaf entries for a 1 GiB guest.
    #[test]
    fn one_gib_guest_leaf_counts() {
        let mut f = TestFrames::default();
        let rw = Access::READ | Access::WRITE;
        let mut d = DomainTables::new(&mut f, AddressWidth::Bits48Level4).unwrap();
        let s = d.map(&mut f, 0, GIB, GIB, rw, ALL).unwrap();
        assert_eq!((s.leaves(), s.pages_1g), (1, 1));
        let mut d = DomainTables::new(&mut f, AddressWidth::Bits48Level4).unwrap();
        let s = d.map(&mut f, 0, GIB, GIB, rw, PageSizes::UP_TO_2M).unwrap();
        assert_eq!((s.leaves(), s.pages_2m), (512, 512));
        let mut d = DomainTables::new(&mut f, AddressWidth::Bits48Level4).unwrap();
        let s = d.map(&mut f, 0, GIB, GIB, rw, PageSizes::ONLY_4K).unwrap();
        assert_eq!((s.leaves(), s.pages_4k), (262_144, 262_144));
        assert_eq!(s.tables, 2 + 512); // PDPT, PD and 512 page tables
        assert_eq!(
            d.translate(&mut f, 0x1234_5678).unwrap().hpa,
            GIB + 0x1234_5678
        );
    }

    #[test]
    fn mixed_alignment_uses_largest_fitting_pages() {
        // [2M - 4K, 2G + 2M + 4K), host = iova + 256G: 1 x 4K, 511 x 2M up to 1G, 1 x 1G,
        // 1 x 2M, 1 x 4K.
        let mut f = TestFrames::default();
        let mut d = DomainTables::new(&mut f, AddressWidth::Bits39Level3).unwrap();
        let start = MIB2 - 0x1000;
        let len = 2 * GIB + MIB2 + 0x1000 - start;
        let s = d
            .map(
                &mut f,
                start,
                0x40_0000_0000 + start,
                len,
                Access::READ,
                ALL,
            )
            .unwrap();
        assert_eq!((s.pages_4k, s.pages_2m, s.pages_1g), (2, 512, 1));
        // Misaligned host address: only 4K pages possible.
        let mut d2 = DomainTables::new(&mut f, AddressWidth::Bits39Level3).unwrap();
        let s = d2
            .map(&mut f, 0, 0x1000 + GIB, MIB2, Access::READ, ALL)
            .unwrap();
        assert_eq!(s.pages_4k, 512);
        let t = d.translate(&mut f, GIB + 5).unwrap();
        assert_eq!(
            (t.hpa, t.page_size, t.access),
            (0x40_4000_0005, GIB, Access::READ)
        );
    }

    #[test]
    fn unmap_reports_pages_and_blocks_translation() {
        let mut f = TestFrames::default();
        let mut d = DomainTables::new(&mut f, AddressWidth::Bits39Level3).unwrap();
        d.map(
            &mut f,
            0,
            GIB,
            2 * MIB2 + 0x2000,
            Access::READ | Access::WRITE,
            ALL,
        )
        .unwrap();
        assert_eq!(
            d.unmap(&mut f, 0x1000, 0x1000),
            Err(MapError::PartialLargePage { iova: 0x1000 })
        );
        let gone = d.unmap(&mut f, MIB2, MIB2 + 0x2000 + MIB2).unwrap();
        assert_eq!(
            gone,
            [
                UnmappedPage {
                    iova: MIB2,
                    size: MIB2
                },
                UnmappedPage {
                    iova: 2 * MIB2,
                    size: 0x1000
                },
                UnmappedPage {
                    iova: 2 * MIB2 + 0x1000,
                    size: 0x1000
                },
            ]
        );
        assert_eq!(d.translate(&mut f, MIB2 + 8), None);
        assert!(d.translate(&mut f, 8).is_some());
        // Remapping the freed range works, overlapping an existing mapping does not.
        d.map(&mut f, MIB2, 0x1000_0000, MIB2, Access::READ, ALL)
            .unwrap();
        assert_eq!(
            d.map(&mut f, 0x1000, 0, 0x1000, Access::READ, ALL),
            Err(MapError::AlreadyMapped { iova: 0x1000 })
        );
    }

    #[test]
    fn range_checks() {
        let mut f = TestFrames::default();
        let mut d = DomainTables::new(&mut f, AddressWidth::Bits39Level3).unwrap();
        assert_eq!(
            d.map(&mut f, 0x10, 0, 0x1000, Access::READ, ALL),
            Err(MapError::Misaligned)
        );
        assert_eq!(
            d.map(&mut f, (1 << 39) - 0x1000, 0, 0x2000, Access::READ, ALL),
            Err(MapError::BeyondAddressWidth)
        );
        assert_eq!(d.translate(&mut f, 1 << 39), None);
        f.limit = Some(f.allocated());
        assert_eq!(
            d.map(&mut f, 0, 0, 0x1000, Access::READ, ALL),
            Err(MapError::OutOfMemory)
        );
    }
}
