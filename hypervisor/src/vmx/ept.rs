//! Extended page tables (SDM Vol. 3C 29.3): the entry format, the EPT pointer, and 4-level tables
//! (the shared engine, `memory::page_table`, in EPT's format) with 4 KiB / 2 MiB / 1 GiB pages,
//! unmapping, translation and write protection.
//!
//! Changing or removing a present translation requires an INVEPT by the caller before the guest
//! runs again (SDM 29.4.3.1); this module only edits memory.

use crate::memory::page_table::{self, Format, PageTable};
use crate::memory::{FrameAlloc, PAGE_SIZE};
use bitflags::bitflags;

pub use crate::memory::page_table::{PageSize, PageSizes};

bitflags! {
    /// Access rights of an EPT entry (SDM 29.3.2): bits 0-2, and bit 10 (execute for user-mode
    /// linear addresses) with mode-based execute control.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct EptPerms: u64 {
        const READ = 1 << 0;
        const WRITE = 1 << 1;
        const EXECUTE = 1 << 2;
        const USER_EXECUTE = 1 << 10;
    }
}

impl EptPerms {
    pub const RW: Self = Self::READ.union(Self::WRITE);
    pub const RX: Self = Self::READ.union(Self::EXECUTE);
    pub const RWX: Self = Self::RW.union(Self::EXECUTE);
}

/// EPT memory types (SDM 29.3.7, encodings as in IA32_PAT / MTRRs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum MemType {
    Uncacheable = 0,
    WriteCombining = 1,
    WriteThrough = 4,
    WriteProtected = 5,
    WriteBack = 6,
}

impl MemType {
    pub const fn from_bits(n: u64) -> Option<Self> {
        match n {
            0 => Some(MemType::Uncacheable),
            1 => Some(MemType::WriteCombining),
            4 => Some(MemType::WriteThrough),
            5 => Some(MemType::WriteProtected),
            6 => Some(MemType::WriteBack),
            _ => None,
        }
    }
}

/// Attributes of the leaf entries a mapping creates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Leaf {
    pub perms: EptPerms,
    pub mem_type: MemType,
    /// Bit 6: ignore the guest's PAT, use `mem_type` as is (SDM 29.3.7.2).
    pub ignore_pat: bool,
}

impl Leaf {
    /// Guest RAM: write-back, combined with the guest's PAT.
    pub const fn ram(perms: EptPerms) -> Self {
        Leaf {
            perms,
            mem_type: MemType::WriteBack,
            ignore_pat: false,
        }
    }
    /// Device memory: uncacheable whatever the guest's PAT says.
    pub const fn mmio(perms: EptPerms) -> Self {
        Leaf {
            perms,
            mem_type: MemType::Uncacheable,
            ignore_pat: true,
        }
    }
}

/// One EPT paging-structure entry (SDM 29.3.2, Tables 29-1 .. 29-6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(transparent)]
pub struct EptEntry(pub u64);

const _: () = assert!(core::mem::size_of::<[EptEntry; 512]>() == PAGE_SIZE as usize);

impl EptEntry {
    /// Bits 51:12: physical address of a 4 KiB page or of the next table.
    pub const ADDR_MASK: u64 = 0x000F_FFFF_FFFF_F000;
    const PERMS_MASK: u64 = EptPerms::all().bits();
    const MEM_TYPE_SHIFT: u32 = 3;
    pub const IGNORE_PAT: u64 = 1 << 6;
    /// Bit 7 in a PDPTE/PDE: the entry maps a 1 GiB / 2 MiB page.
    pub const LARGE: u64 = 1 << 7;
    pub const ACCESSED: u64 = 1 << 8;
    /// Leaf entries only.
    pub const DIRTY: u64 = 1 << 9;
    pub const SUPPRESS_VE: u64 = 1 << 63;

    /// Entry referencing the next table: full rights, leaves below restrict them.
    pub const fn table(phys: u64) -> Self {
        EptEntry((phys & Self::ADDR_MASK) | EptPerms::RWX.bits() | EptPerms::USER_EXECUTE.bits())
    }

    /// Leaf entry for a page of `size` at `hpa` (aligned to `size`).
    pub const fn leaf(hpa: u64, size: PageSize, leaf: Leaf) -> Self {
        let large = match size {
            PageSize::Size4K => 0,
            _ => Self::LARGE,
        };
        EptEntry(
            (hpa & Self::ADDR_MASK)
                | leaf.perms.bits()
                | ((leaf.mem_type as u64) << Self::MEM_TYPE_SHIFT)
                | if leaf.ignore_pat { Self::IGNORE_PAT } else { 0 }
                | large,
        )
    }

    /// An entry is present if any of bits 2:0 is set, or bit 10 with mode-based execute
    /// control (SDM 29.3.2).
    pub const fn is_present(self) -> bool {
        self.0 & Self::PERMS_MASK != 0
    }
    pub const fn perms(self) -> EptPerms {
        EptPerms::from_bits_truncate(self.0)
    }
    pub const fn is_large(self) -> bool {
        self.0 & Self::LARGE != 0
    }
    /// Bits 5:3 of a leaf.
    pub const fn mem_type(self) -> Option<MemType> {
        MemType::from_bits((self.0 >> Self::MEM_TYPE_SHIFT) & 7)
    }
    pub const fn ignore_pat(self) -> bool {
        self.0 & Self::IGNORE_PAT != 0
    }
    pub const fn accessed(self) -> bool {
        self.0 & Self::ACCESSED != 0
    }
    pub const fn dirty(self) -> bool {
        self.0 & Self::DIRTY != 0
    }
    /// Address of the next table, or of the page for a leaf of `size`.
    pub const fn addr(self, size: PageSize) -> u64 {
        self.0 & Self::ADDR_MASK & !(size.bytes() - 1)
    }
}

/// The EPT pointer (VMCS field 0x201A; SDM 25.6.11, Table 25-9): memory type of the paging
/// structures in bits 2:0, page-walk length minus 1 in bits 5:3, accessed/dirty enable in bit 6,
/// PML4 table address in bits 51:12.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Eptp(pub u64);

impl Eptp {
    /// A 4-level EPTP with write-back paging structures.
    pub const fn new(pml4: u64, accessed_dirty: bool) -> Self {
        Eptp(
            (pml4 & EptEntry::ADDR_MASK)
                | MemType::WriteBack as u64
                | ((4 - 1) << 3)
                | if accessed_dirty { 1 << 6 } else { 0 },
        )
    }
    pub const fn mem_type(self) -> Option<MemType> {
        MemType::from_bits(self.0 & 7)
    }
    pub const fn walk_length(self) -> u64 {
        ((self.0 >> 3) & 7) + 1
    }
    pub const fn accessed_dirty(self) -> bool {
        self.0 & (1 << 6) != 0
    }
    pub const fn pml4(self) -> u64 {
        self.0 & EptEntry::ADDR_MASK
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EptError {
    OutOfFrames,
    /// Address or length not 4 KiB-aligned, or zero length.
    Unaligned,
    /// Guest-physical range beyond the 48 bits a 4-level walk covers, or host address beyond
    /// 52 bits.
    OutOfRange,
    /// Write without read access is an EPT misconfiguration (SDM 29.3.3.1).
    WriteWithoutRead,
}

/// A translation found by [`Ept::translate`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Translation {
    /// Host-physical address of the guest-physical address asked for (offset included).
    pub hpa: u64,
    pub perms: EptPerms,
    pub size: PageSize,
    pub mem_type: Option<MemType>,
}

/// 4-level guest-physical address space covers 48 bits.
pub const GPA_LIMIT: u64 = 1 << 48;
/// Levels of an EPT walk (the EPTP's page-walk length, SDM 25.6.11).
const LEVELS: u8 = 4;

/// EPT's entries for the shared engine. A mapping replaces what was there and an edit splits large
/// pages: every change is followed by the caller's INVEPT (SDM 29.4.3.1).
#[derive(Debug)]
pub struct EptFormat;

impl Format for EptFormat {
    type Leaf = Leaf;
    const ADDRESS_MASK: u64 = EptEntry::ADDR_MASK;
    const PAGE_SIZE_BIT: u64 = EptEntry::LARGE;
    const REPLACES: bool = true;
    const SPLITS: bool = true;

    fn is_present(entry: u64) -> bool {
        EptEntry(entry).is_present()
    }
    fn table_entry(table: u64) -> u64 {
        EptEntry::table(table).0
    }
    fn leaf_entry(output: u64, size: PageSize, leaf: Leaf) -> u64 {
        EptEntry::leaf(output, size, leaf).0
    }
    fn valid_leaf(leaf: Leaf) -> bool {
        readable_if_writable(leaf.perms)
    }
}

/// Write without read is an EPT misconfiguration (SDM 29.3.3.1).
const fn readable_if_writable(perms: EptPerms) -> bool {
    !perms.contains(EptPerms::WRITE) || perms.contains(EptPerms::READ)
}

impl From<page_table::Error> for EptError {
    fn from(e: page_table::Error) -> EptError {
        use page_table::Error as E;
        match e {
            E::OutOfFrames => EptError::OutOfFrames,
            E::Unaligned => EptError::Unaligned,
            E::InvalidLeaf => EptError::WriteWithoutRead,
            // EPT replaces and splits: neither refusal arises.
            E::InputOutOfRange
            | E::OutputOutOfRange
            | E::AlreadyMapped { .. }
            | E::PartialLargePage { .. } => EptError::OutOfRange,
        }
    }
}

/// A 4-level EPT hierarchy whose tables live in frames from a [`FrameAlloc`]. Frames are never
/// returned: unmapping leaves empty tables behind, and replacing a table by a large leaf leaks it.
#[derive(Debug)]
pub struct Ept {
    tables: PageTable<EptFormat>,
}

impl Ept {
    pub fn new(frames: &mut impl FrameAlloc) -> Result<Self, EptError> {
        Ok(Ept {
            tables: PageTable::new(frames, LEVELS)?,
        })
    }

    /// Physical address of the PML4 table.
    pub fn root(&self) -> u64 {
        self.tables.root()
    }

    pub fn eptp(&self, accessed_dirty: bool) -> Eptp {
        Eptp::new(self.root(), accessed_dirty)
    }

    /// Map `[gpa, gpa + len)` to `[hpa, hpa + len)`, each piece with the largest page size that
    /// `sizes` allows and both addresses' alignment and the remaining length permit. Existing
    /// translations in the range are replaced. Returns the number of leaf entries written. On
    /// error the range may be partly mapped; every entry is either old or new, never torn.
    pub fn map(
        &mut self,
        frames: &mut impl FrameAlloc,
        gpa: u64,
        hpa: u64,
        len: u64,
        leaf: Leaf,
        sizes: PageSizes,
    ) -> Result<usize, EptError> {
        not_empty(len)?;
        let stats = self.tables.map(frames, gpa, hpa, len, leaf, sizes)?;
        Ok(stats.leaves() as usize)
    }

    /// Remove every translation in `[gpa, gpa + len)`, splitting large pages that straddle the
    /// range's edges. Returns the number of leaves removed.
    pub fn unmap(
        &mut self,
        frames: &mut impl FrameAlloc,
        gpa: u64,
        len: u64,
    ) -> Result<usize, EptError> {
        not_empty(len)?;
        Ok(self.tables.unmap(frames, gpa, len, &mut |_, _| {})?)
    }

    /// Remove write permission from every translation in `[gpa, gpa + len)`, splitting large pages
    /// so that pages outside the range keep theirs (ELI: protect the guest IDT, SDM 29.3.3).
    /// Returns the number of leaves changed.
    pub fn write_protect(
        &mut self,
        frames: &mut impl FrameAlloc,
        gpa: u64,
        len: u64,
    ) -> Result<usize, EptError> {
        not_empty(len)?;
        let clear_write = &mut |e: &mut u64, _, _| *e &= !EptPerms::WRITE.bits();
        Ok(self.tables.edit_leaves(frames, gpa, len, clear_write)?)
    }

    /// Replace the access rights of every translation in `[gpa, gpa + len)` (e.g. to restore write
    /// access), splitting large pages at the edges. Returns the number of leaves changed.
    pub fn set_perms(
        &mut self,
        frames: &mut impl FrameAlloc,
        gpa: u64,
        len: u64,
        perms: EptPerms,
    ) -> Result<usize, EptError> {
        not_empty(len)?;
        if !readable_if_writable(perms) {
            return Err(EptError::WriteWithoutRead);
        }
        let mask = EptPerms::all().bits();
        let set = &mut |e: &mut u64, _, _| *e = (*e & !mask) | perms.bits();
        Ok(self.tables.edit_leaves(frames, gpa, len, set)?)
    }

    /// Walk the tables like the CPU does for `gpa`.
    pub fn translate(&self, frames: &mut impl FrameAlloc, gpa: u64) -> Option<Translation> {
        let found = self.tables.translate(frames, gpa)?;
        let e = EptEntry(found.entry);
        Some(Translation {
            hpa: found.output,
            perms: e.perms(),
            size: found.size,
            mem_type: e.mem_type(),
        })
    }

    /// Number of present leaf entries, by size: (4 KiB, 2 MiB, 1 GiB).
    pub fn leaf_counts(&self, frames: &mut impl FrameAlloc) -> (usize, usize, usize) {
        let c = self.tables.leaf_counts(frames);
        (
            c.pages_4k as usize,
            c.pages_2m as usize,
            c.pages_1g as usize,
        )
    }
}

/// EPT edits refuse an empty range (a caller's mistake), as an unaligned length.
fn not_empty(len: u64) -> Result<(), EptError> {
    if len == 0 {
        return Err(EptError::Unaligned);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::test_frames::TestFrames;

    const GIB: u64 = 1 << 30;
    const MIB2: u64 = 1 << 21;
    const K4: u64 = 1 << 12;

    #[test]
    fn eptp_by_hand() {
        // SDM 25.6.11: WB (6) in 2:0, walk length 4 - 1 = 3 in 5:3 (0x18), A/D bit 6 (0x40).
        assert_eq!(Eptp::new(0x1234_5000, false).0, 0x1234_501E);
        assert_eq!(Eptp::new(0x1234_5000, true).0, 0x1234_505E);
        let p = Eptp(0x1234_505E);
        assert_eq!(p.mem_type(), Some(MemType::WriteBack));
        assert_eq!(p.walk_length(), 4);
        assert!(p.accessed_dirty());
        assert_eq!(p.pml4(), 0x1234_5000);
    }

    #[test]
    fn entry_encoding_by_hand() {
        // 2 MiB RWX WB leaf at 0x4020_0000: 7 | 6 << 3 (0x30) | bit 7 (0x80) = 0xB7.
        let e = EptEntry::leaf(0x4020_0000, PageSize::Size2M, Leaf::ram(EptPerms::RWX));
        assert_eq!(e.0, 0x4020_00B7);
        // 4 KiB read-only UC leaf with ignore-PAT: 1 | 0 | 0x40 = 0x41, no bit 7.
        let e = EptEntry::leaf(0xFEE0_0000, PageSize::Size4K, Leaf::mmio(EptPerms::READ));
        assert_eq!(e.0, 0xFEE0_0041);
        assert_eq!(e.mem_type(), Some(MemType::Uncacheable));
        assert!(e.ignore_pat() && !e.is_large());
        // Non-leaf: address plus R/W/X and user-execute (bit 10).
        assert_eq!(EptEntry::table(0x20_3000).0, 0x20_3407);
    }

    #[test]
    fn one_gib_identity_with_1g_pages_is_one_leaf() {
        let mut f = TestFrames::default();
        let mut ept = Ept::new(&mut f).unwrap();
        let n = ept
            .map(&mut f, 0, 0, GIB, Leaf::ram(EptPerms::RWX), PageSizes::ALL)
            .unwrap();
        assert_eq!(n, 1);
        assert_eq!(ept.leaf_counts(&mut f), (0, 0, 1));
        assert_eq!(f.allocated(), 2); // PML4 + PDPT
        let pdpt = EptEntry(f.table(ept.root())[0]).addr(PageSize::Size4K);
        assert_eq!(f.table(pdpt)[0], 0xB7);
        let t = ept.translate(&mut f, 0x1234_5678).unwrap();
        assert_eq!((t.hpa, t.size), (0x1234_5678, PageSize::Size1G));
    }

    #[test]
    fn one_gib_with_2m_pages_is_512_leaves() {
        let mut f = TestFrames::default();
        let mut ept = Ept::new(&mut f).unwrap();
        let n = ept
            .map(
                &mut f,
                0,
                0,
                GIB,
                Leaf::ram(EptPerms::RWX),
                PageSizes::UP_TO_2M,
            )
            .unwrap();
        assert_eq!(n, 512);
        assert_eq!(ept.leaf_counts(&mut f), (0, 512, 0));
        let t = ept.translate(&mut f, GIB - 1).unwrap();
        assert_eq!((t.hpa, t.size), (GIB - 1, PageSize::Size2M));
        assert_eq!(ept.translate(&mut f, GIB), None);
    }

    #[test]
    fn unaligned_range_uses_4k_at_the_edges() {
        let mut f = TestFrames::default();
        let mut ept = Ept::new(&mut f).unwrap();
        // [2M - 8K, 6M + 12K): 2 x 4K, then 2 x 2M, then 3 x 4K.
        let gpa = MIB2 - 2 * K4;
        let len = 2 * K4 + 2 * MIB2 + 3 * K4;
        let hpa = 0x8000_0000 + gpa;
        let n = ept
            .map(
                &mut f,
                gpa,
                hpa,
                len,
                Leaf::ram(EptPerms::RW),
                PageSizes::ALL,
            )
            .unwrap();
        assert_eq!(n, 7);
        assert_eq!(ept.leaf_counts(&mut f), (5, 2, 0));
        // Differently aligned host address: everything in 4K pages.
        let mut f2 = TestFrames::default();
        let mut ept2 = Ept::new(&mut f2).unwrap();
        let n = ept2
            .map(
                &mut f2,
                0,
                K4,
                4 * MIB2,
                Leaf::ram(EptPerms::RW),
                PageSizes::ALL,
            )
            .unwrap();
        assert_eq!(n, 4 * 512);
    }

    #[test]
    fn translate_agrees_with_map() {
        let mut f = TestFrames::default();
        let mut ept = Ept::new(&mut f).unwrap();
        let gpa = GIB - 3 * K4;
        let len = 3 * K4 + MIB2 + K4;
        let hpa = 0x1_0000_0000 - 3 * K4;
        ept.map(
            &mut f,
            gpa,
            hpa,
            len,
            Leaf::ram(EptPerms::RX),
            PageSizes::ALL,
        )
        .unwrap();
        let mut a = gpa;
        while a < gpa + len {
            let t = ept.translate(&mut f, a + 0x10).unwrap();
            assert_eq!(t.hpa, hpa + (a - gpa) + 0x10);
            assert_eq!(t.perms, EptPerms::RX);
            assert_eq!(t.mem_type, Some(MemType::WriteBack));
            a += K4;
        }
        assert_eq!(ept.translate(&mut f, gpa - K4), None);
        assert_eq!(ept.translate(&mut f, gpa + len), None);
        assert_eq!(ept.translate(&mut f, GPA_LIMIT), None);
    }

    #[test]
    fn write_protect_splits_a_2m_page() {
        let mut f = TestFrames::default();
        let mut ept = Ept::new(&mut f).unwrap();
        ept.map(
            &mut f,
            0,
            0x4000_0000,
            MIB2,
            Leaf::ram(EptPerms::RWX),
            PageSizes::ALL,
        )
        .unwrap();
        let idt = 0x5000;
        assert_eq!(ept.write_protect(&mut f, idt, K4), Ok(1));
        assert_eq!(ept.leaf_counts(&mut f), (512, 0, 0));
        let t = ept.translate(&mut f, idt + 8).unwrap();
        assert_eq!(t.perms, EptPerms::RX);
        assert_eq!((t.hpa, t.size), (0x4000_5008, PageSize::Size4K));
        for page in (0..512).filter(|&p| p != 5) {
            let t = ept.translate(&mut f, page * K4).unwrap();
            assert_eq!(t.perms, EptPerms::RWX, "page {page}");
            assert_eq!(t.hpa, 0x4000_0000 + page * K4);
            assert_eq!(t.mem_type, Some(MemType::WriteBack));
        }
        // Restore write access.
        assert_eq!(ept.set_perms(&mut f, idt, K4, EptPerms::RWX), Ok(1));
        assert_eq!(ept.translate(&mut f, idt).unwrap().perms, EptPerms::RWX);
    }

    #[test]
    fn write_protect_splits_1g_down_to_4k() {
        let mut f = TestFrames::default();
        let mut ept = Ept::new(&mut f).unwrap();
        ept.map(&mut f, 0, 0, GIB, Leaf::ram(EptPerms::RWX), PageSizes::ALL)
            .unwrap();
        ept.write_protect(&mut f, 3 * MIB2 + K4, K4).unwrap();
        assert_eq!(ept.leaf_counts(&mut f), (512, 511, 0));
        assert_eq!(
            ept.translate(&mut f, 3 * MIB2 + K4).unwrap().perms,
            EptPerms::RX
        );
        let t = ept.translate(&mut f, 7 * MIB2).unwrap();
        assert_eq!((t.size, t.perms), (PageSize::Size2M, EptPerms::RWX));
    }

    #[test]
    fn unmap_splits_edges_and_skips_holes() {
        let mut f = TestFrames::default();
        let mut ept = Ept::new(&mut f).unwrap();
        ept.map(
            &mut f,
            0,
            0,
            2 * MIB2,
            Leaf::ram(EptPerms::RWX),
            PageSizes::ALL,
        )
        .unwrap();
        // Unmap [1M, 3M + 4K): splits both 2M pages, removes 256 + 257 4K pages.
        let removed = ept.unmap(&mut f, MIB2 / 2, MIB2 + K4).unwrap();
        assert_eq!(removed, 256 + 257);
        assert!(ept.translate(&mut f, MIB2 / 2 - K4).is_some());
        assert_eq!(ept.translate(&mut f, MIB2 / 2), None);
        assert_eq!(ept.translate(&mut f, 3 * MIB2 / 2), None);
        assert!(ept.translate(&mut f, 3 * MIB2 / 2 + K4).is_some());
        assert_eq!(ept.unmap(&mut f, 8 * GIB, GIB), Ok(0));
    }

    #[test]
    fn out_of_frames_is_an_error() {
        let mut f = TestFrames::default();
        f.limit = Some(0);
        assert_eq!(Ept::new(&mut f).unwrap_err(), EptError::OutOfFrames);
        // PML4 + PDPT + PD fit; the PT for the 4K edge does not.
        let mut f = TestFrames::default();
        f.limit = Some(3);
        let mut ept = Ept::new(&mut f).unwrap();
        let r = ept.map(
            &mut f,
            0,
            0,
            MIB2 + K4,
            Leaf::ram(EptPerms::RW),
            PageSizes::ALL,
        );
        assert_eq!(r, Err(EptError::OutOfFrames));
        // The part done before the failure stands.
        assert!(ept.translate(&mut f, 0).is_some());
        // Splitting needs a frame too.
        assert_eq!(ept.write_protect(&mut f, 0, K4), Err(EptError::OutOfFrames));
        assert_eq!(ept.translate(&mut f, 0).unwrap().perms, EptPerms::RW);
    }

    #[test]
    fn bad_arguments() {
        let mut f = TestFrames::default();
        let mut ept = Ept::new(&mut f).unwrap();
        let l = Leaf::ram(EptPerms::RW);
        assert_eq!(
            ept.map(&mut f, 1, 0, K4, l, PageSizes::ALL),
            Err(EptError::Unaligned)
        );
        assert_eq!(
            ept.map(&mut f, 0, 8, K4, l, PageSizes::ALL),
            Err(EptError::Unaligned)
        );
        assert_eq!(
            ept.map(&mut f, 0, 0, 0, l, PageSizes::ALL),
            Err(EptError::Unaligned)
        );
        assert_eq!(
            ept.map(&mut f, GPA_LIMIT - K4, 0, 2 * K4, l, PageSizes::ALL),
            Err(EptError::OutOfRange)
        );
        let w = Leaf::ram(EptPerms::WRITE);
        assert_eq!(
            ept.map(&mut f, 0, 0, K4, w, PageSizes::ALL),
            Err(EptError::WriteWithoutRead)
        );
    }
}
