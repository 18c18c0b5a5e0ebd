//! The radix page-table engine that EPT (SDM Vol. 3C 29.3) and VT-d second-level tables (VT-d 3.7,
//! 9.8) share: 512-entry tables of 64-bit entries, 9 address bits a level above a 4 KiB page, leaves
//! of 4 KiB (level 1), 2 MiB (level 2) or 1 GiB (level 3, PS bit set). The engine walks, creates
//! tables, maps with the largest page sizes allowed, splits large pages, unmaps, translates and
//! counts leaves; a [`Format`] says how entries are encoded and what an edit may do to a live
//! mapping. The number of levels is the table's own (EPT 4; VT-d 3, 4 or 5 from the AGAW).
//!
//! Frames are never returned: unmapping leaves empty tables behind, and a large leaf written over a
//! table leaks it. Invalidating what the hardware cached of a changed entry is the caller's job.

use super::{FrameAlloc, PAGE_SIZE};
use core::marker::PhantomData;

/// How one table format encodes its entries, and how its tables may be edited.
pub trait Format {
    /// What a leaf carries besides its address (rights, memory type, snooping...).
    type Leaf: Copy;
    /// Address bits of an entry: the page's or the next table's.
    const ADDRESS_MASK: u64;
    /// The bit of a level-2/3 entry that makes it a leaf (a 2 MiB / 1 GiB page).
    const PAGE_SIZE_BIT: u64;
    /// Whether `map` replaces what its range already maps (splitting a large page it maps inside
    /// of); otherwise it refuses to touch a mapped page.
    const REPLACES: bool;
    /// Whether an edit of part of a large page splits it; otherwise the edit is refused.
    const SPLITS: bool;

    /// Whether `entry` maps a page or points at a table.
    fn is_present(entry: u64) -> bool;
    /// An entry pointing at the table in the frame at `table`.
    fn table_entry(table: u64) -> u64;
    /// A leaf mapping the page of `size` at `output` (aligned to `size`).
    fn leaf_entry(output: u64, size: PageSize, leaf: Self::Leaf) -> u64;
    /// Whether `leaf` may be written at all (EPT: write without read is a misconfiguration).
    fn valid_leaf(_leaf: Self::Leaf) -> bool {
        true
    }
}

/// Output addresses are at most 52 bits in both formats (bits 51:12 of an entry).
const OUTPUT_LIMIT: u64 = 1 << 52;

/// Size of one leaf translation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum PageSize {
    Size4K,
    Size2M,
    Size1G,
}

impl PageSize {
    pub const fn bytes(self) -> u64 {
        1 << level_shift(self.level())
    }
    /// Table level whose entries map this size (1 = PT, 2 = PD, 3 = PDPT).
    pub const fn level(self) -> u8 {
        match self {
            PageSize::Size4K => 1,
            PageSize::Size2M => 2,
            PageSize::Size1G => 3,
        }
    }
    /// The leaf size at `level` (1..=3).
    pub const fn at_level(level: u8) -> Self {
        match level {
            1 => PageSize::Size4K,
            2 => PageSize::Size2M,
            _ => PageSize::Size1G,
        }
    }
}

/// The page sizes a mapping may use. 4 KiB is always allowed; larger sizes only where the hardware
/// reports them (EPT: IA32_VMX_EPT_VPID_CAP bits 16/17; VT-d: CAP.SLLPS).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageSizes {
    pub size_2m: bool,
    pub size_1g: bool,
}

impl PageSizes {
    pub const ONLY_4K: Self = PageSizes {
        size_2m: false,
        size_1g: false,
    };
    pub const UP_TO_2M: Self = PageSizes {
        size_2m: true,
        size_1g: false,
    };
    pub const ALL: Self = PageSizes {
        size_2m: true,
        size_1g: true,
    };

    /// As a bit mask: 4 KiB bit 0, 2 MiB bit 1, 1 GiB bit 2 (the summary lines' `pages=`).
    pub const fn bits(self) -> u8 {
        1 | (self.size_2m as u8) << 1 | (self.size_1g as u8) << 2
    }

    const fn allows(self, size: PageSize) -> bool {
        match size {
            PageSize::Size4K => true,
            PageSize::Size2M => self.size_2m,
            PageSize::Size1G => self.size_1g,
        }
    }
}

/// Leaves written (or found) by size, and table frames allocated.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MapStats {
    pub pages_4k: u64,
    pub pages_2m: u64,
    pub pages_1g: u64,
    /// Table frames allocated by this call (by [`PageTable::leaf_counts`]: tables below the root).
    pub tables: u64,
}

impl MapStats {
    pub fn leaves(&self) -> u64 {
        self.pages_4k + self.pages_2m + self.pages_1g
    }
    fn count(&mut self, size: PageSize) {
        match size {
            PageSize::Size4K => self.pages_4k += 1,
            PageSize::Size2M => self.pages_2m += 1,
            PageSize::Size1G => self.pages_1g += 1,
        }
    }
}

/// A leaf found by [`PageTable::translate`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mapping {
    /// The output address of the input address asked for (offset included).
    pub output: u64,
    pub size: PageSize,
    /// The leaf entry as stored, for the format to decode.
    pub entry: u64,
}

/// Why an edit of the tables was refused or failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    OutOfFrames,
    /// An address or the length is not 4 KiB-aligned.
    Unaligned,
    /// The input range wraps or goes past what the tables' levels translate.
    InputOutOfRange,
    /// The output range wraps or goes past 52 bits.
    OutputOutOfRange,
    /// The format does not allow this leaf ([`Format::valid_leaf`]).
    InvalidLeaf,
    /// A page in the range is already mapped and the format does not replace mappings.
    AlreadyMapped {
        at: u64,
    },
    /// The range covers part of a large page and the format does not split.
    PartialLargePage {
        at: u64,
    },
}

const fn level_shift(level: u8) -> u32 {
    12 + 9 * (level as u32 - 1)
}
const fn level_bytes(level: u8) -> u64 {
    1 << level_shift(level)
}
const fn index(input: u64, level: u8) -> usize {
    ((input >> level_shift(level)) & 0x1FF) as usize
}

/// One hierarchy of `levels` levels in frames from a [`FrameAlloc`].
#[derive(Debug)]
pub struct PageTable<F: Format> {
    root: u64,
    levels: u8,
    format: PhantomData<F>,
}

impl<F: Format> PageTable<F> {
    /// An empty hierarchy of `levels` levels (3 to 5; the root is one zeroed frame).
    pub fn new(frames: &mut impl FrameAlloc, levels: u8) -> Result<Self, Error> {
        assert!((3..=5).contains(&levels), "{levels}-level tables");
        let root = frames.alloc_zeroed().ok_or(Error::OutOfFrames)?;
        Ok(PageTable {
            root,
            levels,
            format: PhantomData,
        })
    }

    /// Physical address of the top-level table.
    pub fn root(&self) -> u64 {
        self.root
    }

    /// The first input address the tables cannot translate: 2^(12 + 9 x levels).
    pub fn input_limit(&self) -> u64 {
        1 << level_shift(self.levels + 1)
    }

    /// `[start, start + len)` is page-aligned and inside what the tables translate. An empty range
    /// passes (an edit of it changes nothing).
    pub fn check_range(&self, start: u64, len: u64) -> Result<(), Error> {
        if !start.is_multiple_of(PAGE_SIZE) || !len.is_multiple_of(PAGE_SIZE) {
            return Err(Error::Unaligned);
        }
        if start
            .checked_add(len)
            .is_none_or(|end| end > self.input_limit())
        {
            return Err(Error::InputOutOfRange);
        }
        Ok(())
    }

    /// Maps `[input, input + len)` to `[output, output + len)`, each piece with the largest page in
    /// `sizes` that both addresses' alignment and the remaining length allow. What is already
    /// mapped is replaced or refused as the format says ([`Format::REPLACES`]). On error the range
    /// may be partly mapped; every entry is either old or new, never torn.
    pub fn map(
        &mut self,
        frames: &mut impl FrameAlloc,
        input: u64,
        output: u64,
        len: u64,
        leaf: F::Leaf,
        sizes: PageSizes,
    ) -> Result<MapStats, Error> {
        self.check_range(input, len)?;
        if !F::valid_leaf(leaf) {
            return Err(Error::InvalidLeaf);
        }
        if !output.is_multiple_of(PAGE_SIZE) {
            return Err(Error::Unaligned);
        }
        if output.checked_add(len).is_none_or(|end| end > OUTPUT_LIMIT) {
            return Err(Error::OutputOutOfRange);
        }
        let mut stats = MapStats::default();
        let mut done = 0;
        while done < len {
            let (at, to, rest) = (input + done, output + done, len - done);
            let fits = |s: PageSize| {
                sizes.allows(s)
                    && at.is_multiple_of(s.bytes())
                    && to.is_multiple_of(s.bytes())
                    && rest >= s.bytes()
            };
            let size = [PageSize::Size1G, PageSize::Size2M]
                .into_iter()
                .find(|&s| fits(s))
                .unwrap_or(PageSize::Size4K);
            let table = self.table_for(frames, at, size.level(), &mut stats)?;
            let slot = &mut frames.table_mut(table)[index(at, size.level())];
            if !F::REPLACES && F::is_present(*slot) {
                return Err(Error::AlreadyMapped { at });
            }
            *slot = F::leaf_entry(to, size, leaf);
            stats.count(size);
            done += size.bytes();
        }
        Ok(stats)
    }

    /// Calls `edit` on every present leaf in `[start, start + len)` with its input address and
    /// size; a large leaf only partly inside is split first, or the call refused, as the format
    /// says ([`Format::SPLITS`]). Holes are skipped. Returns the number of leaves edited.
    pub fn edit_leaves(
        &mut self,
        frames: &mut impl FrameAlloc,
        start: u64,
        len: u64,
        edit: &mut dyn FnMut(&mut u64, u64, PageSize),
    ) -> Result<usize, Error> {
        self.check_range(start, len)?;
        let end = start + len;
        let mut at = start;
        let mut edited = 0;
        while at < end {
            let mut table = self.root;
            let mut level = self.levels;
            loop {
                let idx = index(at, level);
                let entry = frames.table_mut(table)[idx];
                let bytes = level_bytes(level);
                if !F::is_present(entry) {
                    at = (at & !(bytes - 1)) + bytes;
                    break;
                }
                if !is_leaf::<F>(entry, level) {
                    table = entry & F::ADDRESS_MASK;
                    level -= 1;
                } else if at.is_multiple_of(bytes) && at + bytes <= end {
                    edit(
                        &mut frames.table_mut(table)[idx],
                        at,
                        PageSize::at_level(level),
                    );
                    edited += 1;
                    at += bytes;
                    break;
                } else if F::SPLITS {
                    table = split::<F>(frames, table, idx, level)?;
                    level -= 1;
                } else {
                    return Err(Error::PartialLargePage { at });
                }
            }
        }
        Ok(edited)
    }

    /// Removes every leaf in `[start, start + len)` ([`Self::edit_leaves`] clearing each), telling
    /// `removed` each page's input address and size. Returns the number removed.
    pub fn unmap(
        &mut self,
        frames: &mut impl FrameAlloc,
        start: u64,
        len: u64,
        removed: &mut dyn FnMut(u64, PageSize),
    ) -> Result<usize, Error> {
        self.edit_leaves(frames, start, len, &mut |entry, at, size| {
            *entry = 0;
            removed(at, size);
        })
    }

    /// Walks the tables as the hardware does for `input`.
    pub fn translate(&self, frames: &mut impl FrameAlloc, input: u64) -> Option<Mapping> {
        if input >= self.input_limit() {
            return None;
        }
        let mut table = self.root;
        for level in (1..=self.levels).rev() {
            let entry = frames.table_mut(table)[index(input, level)];
            if !F::is_present(entry) {
                return None;
            }
            if is_leaf::<F>(entry, level) {
                let size = PageSize::at_level(level);
                let offset = input & (size.bytes() - 1);
                return Some(Mapping {
                    output: (entry & F::ADDRESS_MASK & !(size.bytes() - 1)) | offset,
                    size,
                    entry,
                });
            }
            table = entry & F::ADDRESS_MASK;
        }
        None
    }

    /// Present leaves by size, and the tables below the root.
    pub fn leaf_counts(&self, frames: &mut impl FrameAlloc) -> MapStats {
        let mut counts = MapStats::default();
        count_leaves::<F>(frames, self.root, self.levels, &mut counts);
        counts
    }

    /// The table at `level` that holds `input`'s entry, creating missing tables and splitting (or
    /// refusing, as the format says) large pages on the way down.
    fn table_for(
        &mut self,
        frames: &mut impl FrameAlloc,
        input: u64,
        level: u8,
        stats: &mut MapStats,
    ) -> Result<u64, Error> {
        let mut table = self.root;
        for l in (level + 1..=self.levels).rev() {
            let idx = index(input, l);
            let entry = frames.table_mut(table)[idx];
            table = if !F::is_present(entry) {
                let next = frames.alloc_zeroed().ok_or(Error::OutOfFrames)?;
                stats.tables += 1;
                frames.table_mut(table)[idx] = F::table_entry(next);
                next
            } else if !is_leaf::<F>(entry, l) {
                entry & F::ADDRESS_MASK
            } else if F::REPLACES {
                stats.tables += 1;
                split::<F>(frames, table, idx, l)?
            } else {
                return Err(Error::AlreadyMapped { at: input });
            };
        }
        Ok(table)
    }
}

/// Whether `entry` (present, at `level`) maps a page: every PTE does, a PDE or PDPTE with PS set.
fn is_leaf<F: Format>(entry: u64, level: u8) -> bool {
    level == 1 || (level <= 3 && entry & F::PAGE_SIZE_BIT != 0)
}

/// Replaces the large leaf at `table[idx]` (a `level` entry) by a table of 512 leaves of the next
/// size down with the same attributes; returns the new table. The new table is filled before it is
/// linked in, so the translation never changes during the split.
fn split<F: Format>(
    frames: &mut impl FrameAlloc,
    table: u64,
    idx: usize,
    level: u8,
) -> Result<u64, Error> {
    let entry = frames.table_mut(table)[idx];
    let child = PageSize::at_level(level - 1);
    let base = entry & F::ADDRESS_MASK & !(level_bytes(level) - 1);
    // Every attribute bit stays; the page-size bit only where it still means "large" (2 MiB).
    let attrs = entry & !F::ADDRESS_MASK & !F::PAGE_SIZE_BIT;
    let large = if child == PageSize::Size4K {
        0
    } else {
        F::PAGE_SIZE_BIT
    };
    let new = frames.alloc_zeroed().ok_or(Error::OutOfFrames)?;
    for (i, slot) in frames.table_mut(new).iter_mut().enumerate() {
        *slot = (base + i as u64 * child.bytes()) | attrs | large;
    }
    frames.table_mut(table)[idx] = F::table_entry(new);
    Ok(new)
}

fn count_leaves<F: Format>(
    frames: &mut impl FrameAlloc,
    table: u64,
    level: u8,
    counts: &mut MapStats,
) {
    for i in 0..512 {
        let entry = frames.table_mut(table)[i];
        if !F::is_present(entry) {
            continue;
        }
        if is_leaf::<F>(entry, level) {
            counts.count(PageSize::at_level(level));
        } else {
            counts.tables += 1;
            count_leaves::<F>(frames, entry & F::ADDRESS_MASK, level - 1, counts);
        }
    }
}

#[cfg(test)]
mod tests;
