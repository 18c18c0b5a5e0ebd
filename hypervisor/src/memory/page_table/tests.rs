//! The engine in both formats: EPT (replaces, splits) and VT-d second level (refuses).

use super::*;
use crate::memory::test_frames::TestFrames;
use crate::vmx::ept::{EptFormat, EptPerms, Leaf};
use crate::vtd::second_level::{Access, SecondLevelFormat, SecondLevelLeaf};

const K4: u64 = 1 << 12;
const M2: u64 = 1 << 21;
const G1: u64 = 1 << 30;

const RAM: Leaf = Leaf::ram(EptPerms::RWX);
const RW: SecondLevelLeaf = SecondLevelLeaf {
    access: Access::READ.union(Access::WRITE),
    snoop: false,
};

fn ept(f: &mut TestFrames) -> PageTable<EptFormat> {
    PageTable::new(f, 4).unwrap()
}

#[test]
fn leaves_of_each_size_in_both_formats() {
    let mut f = TestFrames::default();
    // [1G - 4K, 2G + 2M + 4K) at output + 4G: one 4K leaf, one 1G, one 2M, one 4K.
    let (start, len) = (G1 - K4, G1 + M2 + 2 * K4);
    let mut e = ept(&mut f);
    let stats = e
        .map(&mut f, start, 4 * G1 + start, len, RAM, PageSizes::ALL)
        .unwrap();
    assert_eq!((stats.pages_4k, stats.pages_2m, stats.pages_1g), (2, 1, 1));
    let counts = e.leaf_counts(&mut f);
    assert_eq!(
        (counts.pages_4k, counts.pages_2m, counts.pages_1g),
        (2, 1, 1)
    );
    let mut s: PageTable<SecondLevelFormat> = PageTable::new(&mut f, 4).unwrap();
    let stats = s
        .map(&mut f, start, 4 * G1 + start, len, RW, PageSizes::ALL)
        .unwrap();
    assert_eq!((stats.pages_4k, stats.pages_2m, stats.pages_1g), (2, 1, 1));
    for (at, size) in [
        (G1 - K4, PageSize::Size4K),
        (G1 + 0x1234, PageSize::Size1G),
        (2 * G1 + 5, PageSize::Size2M),
        (2 * G1 + M2 + 8, PageSize::Size4K),
    ] {
        let a = e.translate(&mut f, at).unwrap();
        let b = s.translate(&mut f, at).unwrap();
        assert_eq!((a.output, a.size), (4 * G1 + at, size));
        assert_eq!((b.output, b.size), (4 * G1 + at, size));
    }
    assert_eq!(e.translate(&mut f, start - K4), None);
    assert_eq!(s.translate(&mut f, start + len), None);
    // Sizes the hardware lacks are not used: 2 MiB only.
    let mut small: PageTable<SecondLevelFormat> = PageTable::new(&mut f, 3).unwrap();
    let stats = small
        .map(&mut f, 0, 0, G1, RW, PageSizes::UP_TO_2M)
        .unwrap();
    assert_eq!((stats.pages_2m, stats.leaves()), (512, 512));
}

#[test]
fn a_partial_unmap_splits_a_large_page_in_the_ept_format() {
    let mut f = TestFrames::default();
    let mut e = ept(&mut f);
    e.map(&mut f, 0, G1, G1, RAM, PageSizes::ALL).unwrap();
    let mut removed = alloc::vec::Vec::new();
    let n = e
        .unmap(&mut f, M2 + K4, K4, &mut |at, size| {
            removed.push((at, size))
        })
        .unwrap();
    assert_eq!(n, 1);
    assert_eq!(removed, [(M2 + K4, PageSize::Size4K)]);
    // 1G -> 511 x 2M + 512 x 4K, one of which is gone; the rest still maps where it did.
    let c = e.leaf_counts(&mut f);
    assert_eq!((c.pages_4k, c.pages_2m, c.pages_1g), (511, 511, 0));
    assert_eq!(e.translate(&mut f, M2 + K4), None);
    assert_eq!(e.translate(&mut f, M2).unwrap().output, G1 + M2);
    let t = e.translate(&mut f, 5 * M2 + 3).unwrap();
    assert_eq!((t.output, t.size), (G1 + 5 * M2 + 3, PageSize::Size2M));
    // The split children keep the leaf's attributes (rights, memory type).
    assert_eq!(
        t.entry & 0x7F,
        Leaf::ram(EptPerms::RWX).perms.bits() | 6 << 3
    );
}

#[test]
fn the_second_level_format_refuses_partial_and_overlapping_edits() {
    let mut f = TestFrames::default();
    let mut s: PageTable<SecondLevelFormat> = PageTable::new(&mut f, 3).unwrap();
    s.map(&mut f, 0, G1, M2, RW, PageSizes::ALL).unwrap();
    assert_eq!(
        s.unmap(&mut f, K4, K4, &mut |_, _| {}),
        Err(Error::PartialLargePage { at: K4 })
    );
    // Inside the 2M page, and on top of it.
    assert_eq!(
        s.map(&mut f, K4, 0, K4, RW, PageSizes::ALL),
        Err(Error::AlreadyMapped { at: K4 })
    );
    assert_eq!(
        s.map(&mut f, 0, 0, M2, RW, PageSizes::ALL),
        Err(Error::AlreadyMapped { at: 0 })
    );
    assert_eq!(s.translate(&mut f, 8).unwrap().output, G1 + 8);
    // EPT replaces instead, splitting the large page around the new 4K leaf.
    let mut e = ept(&mut f);
    e.map(&mut f, 0, G1, M2, RAM, PageSizes::ALL).unwrap();
    e.map(&mut f, K4, 0x7000, K4, RAM, PageSizes::ALL).unwrap();
    assert_eq!(e.translate(&mut f, K4 + 1).unwrap().output, 0x7001);
    assert_eq!(e.translate(&mut f, 2 * K4).unwrap().output, G1 + 2 * K4);
}

#[test]
fn out_of_range_requests_are_refused() {
    let mut f = TestFrames::default();
    let mut e = ept(&mut f);
    assert_eq!(e.input_limit(), 1 << 48);
    assert_eq!(
        e.map(&mut f, 0x800, 0, K4, RAM, PageSizes::ALL),
        Err(Error::Unaligned)
    );
    assert_eq!(
        e.map(&mut f, 0, 0x800, K4, RAM, PageSizes::ALL),
        Err(Error::Unaligned)
    );
    assert_eq!(
        e.map(&mut f, (1 << 48) - K4, 0, 2 * K4, RAM, PageSizes::ALL),
        Err(Error::InputOutOfRange)
    );
    assert_eq!(
        e.map(&mut f, u64::MAX - 0xFFF, 0, 2 * K4, RAM, PageSizes::ALL),
        Err(Error::InputOutOfRange)
    );
    assert_eq!(
        e.map(&mut f, 0, (1 << 52) - K4, 2 * K4, RAM, PageSizes::ALL),
        Err(Error::OutputOutOfRange)
    );
    let write_only = Leaf::ram(EptPerms::WRITE);
    assert_eq!(
        e.map(&mut f, 0, 0, K4, write_only, PageSizes::ALL),
        Err(Error::InvalidLeaf)
    );
    assert_eq!(e.translate(&mut f, 1 << 48), None);
    // An empty range is no edit at all.
    assert_eq!(
        e.map(&mut f, 0, 0, 0, RAM, PageSizes::ALL)
            .unwrap()
            .leaves(),
        0
    );
    assert_eq!(e.leaf_counts(&mut f), MapStats::default());
}

#[test]
fn a_three_level_second_level_table_covers_39_bits() {
    // VT-d 3.6: AGAW 39 is a 3-level walk, whose root is a PDPT: a 1G leaf sits in the root.
    let mut f = TestFrames::default();
    let mut s: PageTable<SecondLevelFormat> = PageTable::new(&mut f, 3).unwrap();
    assert_eq!(s.input_limit(), 1 << 39);
    let top = (1 << 39) - G1;
    let stats = s.map(&mut f, top, G1, G1, RW, PageSizes::ALL).unwrap();
    assert_eq!((stats.pages_1g, stats.tables), (1, 0));
    assert_eq!(f.table(s.root())[511], G1 | 0x83, "PS | W | R in PDPT[511]");
    assert_eq!(
        s.map(&mut f, 1 << 39, 0, K4, RW, PageSizes::ALL),
        Err(Error::InputOutOfRange)
    );
    assert_eq!(s.translate(&mut f, 1 << 39), None);
    // Five levels reach 57 bits: a 4K leaf there takes four tables below the root.
    let mut five: PageTable<SecondLevelFormat> = PageTable::new(&mut f, 5).unwrap();
    assert_eq!(five.input_limit(), 1 << 57);
    let stats = five
        .map(&mut f, (1 << 57) - K4, 0, K4, RW, PageSizes::ALL)
        .unwrap();
    assert_eq!((stats.pages_4k, stats.tables), (1, 4));
    assert_eq!(five.leaf_counts(&mut f).tables, 4);
}

#[test]
fn running_out_of_frames_leaves_what_was_mapped() {
    let mut f = TestFrames::default();
    f.limit = Some(3); // root, PDPT, PD: no frame for the 4K edge's PT
    let mut e = ept(&mut f);
    assert_eq!(
        e.map(&mut f, 0, 0, M2 + K4, RAM, PageSizes::ALL),
        Err(Error::OutOfFrames)
    );
    assert!(e.translate(&mut f, 0).is_some());
    // Splitting needs a frame too.
    assert_eq!(
        e.edit_leaves(&mut f, 0, K4, &mut |_, _, _| {}),
        Err(Error::OutOfFrames)
    );
}
