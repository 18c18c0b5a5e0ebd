//! The service as a whole, against `FakeVtd` units and test frames.

use super::domains::leaf_report;
use super::*;
use crate::caps::vtd::{AddressWidth, VtdCap, VtdEcap, VtdVersion};
use crate::memory::test_frames::TestFrames;
use crate::pci::{Bdf, Capabilities, ClassCode, Mechanism, PciFunction, PciTopology};
use crate::platform::dmar::{DeviceScope, Drhd, DrhdFlags, PathEntry, Rmrr, ScopeKind};
use crate::platform::IommuUnit;
use crate::vtd::regs::fake::FakeVtd;
use crate::vtd::regs::Reg64;
use crate::vtd::second_level::{Access, DomainTables};
use crate::vtd::unit::RemappingUnit;
use alloc::vec;
use alloc::vec::Vec;

/// QEMU 7.2 intel-iommu,intremap=on (shared/emulators.md): SAGAW 39-bit only, SLLPS 2 MiB +
/// 1 GiB, QI, IR, no CM.
const QEMU_CAP: u64 = 0x00d2_008c_2226_0206;
const QEMU_ECAP: u64 = 0xf0_0f4a;
const CM: u64 = 1 << 7;
const RAM_BASE: u64 = 0x4000_0000;

fn bdf(text: &str) -> Bdf {
    text.parse().unwrap()
}

fn function(at: &str) -> PciFunction {
    PciFunction {
        bdf: bdf(at),
        vendor_id: 0x1234,
        device_id: 0x11e8,
        class: ClassCode {
            base: 0,
            sub: 0xff,
            prog_if: 0,
        },
        revision: 0,
        header_type: 0,
        interrupt_pin: 1,
        interrupt_line: 0,
        bars: Vec::new(),
        capabilities: Capabilities::default(),
        bridge: None,
        upstream_bridge: None,
    }
}

fn topology() -> PciTopology {
    PciTopology {
        mechanism: Mechanism::Ecam,
        functions: vec![
            function("00:03.0"),
            function("00:08.0"),
            function("00:1d.0"),
        ],
    }
}

fn iommu(cap: u64) -> IommuUnit {
    IommuUnit {
        drhd: Drhd {
            flags: DrhdFlags::INCLUDE_PCI_ALL,
            size: 0,
            segment: 0,
            register_base: 0xfed9_0000,
            // QEMU's: IOAPIC 0 at ff:00.0 (its interrupts carry requester ID 0xff00).
            scopes: vec![DeviceScope {
                kind: ScopeKind::IoApic,
                flags: 0,
                enumeration_id: 0,
                start_bus: 0xff,
                path: vec![PathEntry {
                    device: 0,
                    function: 0,
                }],
            }],
        },
        version: VtdVersion(0x10),
        cap: VtdCap(cap),
        ecap: VtdEcap(QEMU_ECAP),
    }
}

fn usb_rmrr() -> Rmrr {
    Rmrr {
        segment: 0,
        base: 0x7f00_0000,
        limit: 0x7f0f_ffff,
        scopes: vec![DeviceScope {
            kind: ScopeKind::PciEndpoint,
            flags: 0,
            enumeration_id: 0,
            start_bus: 0,
            path: vec![PathEntry {
                device: 0x1d,
                function: 0,
            }],
        }],
    }
}

fn up(cap: u64, rmrrs: &[Rmrr], assigned: &[Bdf], f: &mut TestFrames) -> DmaRemapping<FakeVtd> {
    let mut dma = DmaRemapping::bring_up(
        &[iommu(cap)],
        rmrrs,
        &topology(),
        assigned,
        BringUpOptions {
            interrupt_remapping: true,
        },
        f,
        |u| FakeVtd::new(u.cap.0, u.ecap.0),
    )
    .unwrap();
    for unit in &mut dma.units {
        unit.hw.spin_limit = 100;
    }
    dma
}

fn edu_a() -> DmaDevice {
    DmaDevice {
        bdf: bdf("00:03.0"),
        requester: bdf("00:03.0"),
        unit: Some(0),
    }
}

const EDU_A: SourceId = SourceId::new(0, 3, 0);
const EDU_B: SourceId = SourceId::new(0, 8, 0);
const USB: SourceId = SourceId::new(0, 0x1d, 0);

#[test]
fn bring_up_blocks_every_device_and_enables_translation_and_ir() {
    let mut f = TestFrames::default();
    let mut dma = up(QEMU_CAP, &[], &[], &mut f);
    for sid in [EDU_A, EDU_B, USB] {
        assert_eq!(dma.context_domain(0, sid, &mut f), None);
    }
    let hw = dma.units[0].hw.mmio();
    assert!(hw.violations.is_empty(), "{:?}", hw.violations);
    let gsts = hw.gsts();
    use crate::vtd::regs::Gsts;
    assert!(gsts.contains(Gsts::TES | Gsts::IRES | Gsts::QIES));
    assert!(
        !gsts.contains(Gsts::CFIS),
        "compatibility format must be blocked"
    );
    // The root table latched by the unit is ours and empty.
    let root = hw.latched_root.unwrap();
    assert!(f.table(root).iter().all(|&e| e == 0));
}

#[test]
fn guest_domain_maps_exactly_its_ram_with_large_pages() {
    let mut f = TestFrames::default();
    let mut dma = up(QEMU_CAP, &[], &[], &mut f);
    // 1 GiB + 6 MiB at a 1 GiB-aligned base: one 1 GiB leaf and three 2 MiB leaves.
    let len = (1 << 30) + (6 << 20);
    let h = dma
        .attach_guest("g", (RAM_BASE, len), &[edu_a()], &mut f)
        .unwrap();
    assert_eq!(dma.domain_id(h), Some(0), "no CM: domain ids start at 0");
    let tables = &dma.guests[0].as_ref().unwrap().tables[0].1;
    assert_eq!(tables.address_width(), AddressWidth::Bits39Level3);
    assert_eq!(dma.translate(h, 0, 0, &mut f), Some(RAM_BASE));
    assert_eq!(
        dma.translate(h, 0, 0x12_3456, &mut f),
        Some(RAM_BASE + 0x12_3456)
    );
    assert_eq!(
        dma.translate(h, 0, len - 1, &mut f),
        Some(RAM_BASE + len - 1)
    );
    assert_eq!(dma.translate(h, 0, len, &mut f), None);
    assert_eq!(dma.translate(h, 0, 2 << 30, &mut f), None);
    // Leaf level: 1 GiB page at PDPE 0 of the 3-level tables.
    let tables = &dma.guests[0].as_ref().unwrap().tables[0].1;
    let l3 = f.table(tables.root())[0];
    assert_eq!(l3 & 0x83, 0x83, "PS|W|R on the 1 GiB leaf");
    assert_eq!(l3 & !0xFFF, RAM_BASE);
    // Only the edu has a context entry, pointing at the domain's tables (VT-d 9.3).
    assert_eq!(dma.context_domain(0, EDU_A, &mut f), Some(0));
    assert_eq!(dma.context_domain(0, EDU_B, &mut f), None);
    let ctx = dma.units[0].root.context_entry(&mut f, EDU_A).unwrap();
    assert_eq!(ctx.second_level_root(), tables.root());
}

#[test]
fn a_one_gib_guest_needs_one_leaf_where_the_unit_has_1g_pages() {
    // QEMU's SLLPS offers 2 MiB and 1 GiB: a 1 GiB-aligned 1 GiB guest is one PDPE in the
    // 3-level root; without large pages it takes 262144 PTEs in 512 + 1 + 1 tables.
    let mut f = TestFrames::default();
    let mut tables = DomainTables::new(&mut f, AddressWidth::Bits39Level3).unwrap();
    let sizes = RemappingUnit::new(FakeVtd::new(QEMU_CAP, QEMU_ECAP)).page_sizes();
    let stats = tables
        .map(
            &mut f,
            0,
            RAM_BASE,
            1 << 30,
            Access::READ | Access::WRITE,
            sizes,
        )
        .unwrap();
    assert_eq!(
        leaf_report(&stats),
        "leaf entries: 1 (1 x 1 GiB, 0 x 2 MiB, 0 x 4 KiB), table frames: 1"
    );
    let mut small = DomainTables::new(&mut f, AddressWidth::Bits39Level3).unwrap();
    let only_4k = crate::vtd::second_level::PageSizes::ONLY_4K;
    let stats = small
        .map(&mut f, 0, RAM_BASE, 1 << 30, Access::READ, only_4k)
        .unwrap();
    assert_eq!(
        leaf_report(&stats),
        "leaf entries: 262144 (0 x 1 GiB, 0 x 2 MiB, 262144 x 4 KiB), table frames: 514"
    );
}

#[test]
fn caching_mode_skips_domain_zero_and_invalidates_the_new_entry() {
    let mut f = TestFrames::default();
    let mut dma = up(QEMU_CAP | CM, &[], &[], &mut f);
    dma.units[0].hw.mmio().writes.clear();
    let h = dma
        .attach_guest("g", (RAM_BASE, 8 << 20), &[edu_a()], &mut f)
        .unwrap();
    assert_eq!(dma.domain_id(h), Some(1));
    // With QI on, invalidations go through the queue: IQT moved (IOTLB for the mapping, then
    // context cache + IOTLB for the new entry, each followed by a wait descriptor).
    let tail_writes = dma.units[0]
        .hw
        .mmio()
        .writes
        .iter()
        .filter(|w| {
            matches!(
                w,
                crate::vtd::regs::fake::Write::W64(Reg64::InvalidationQueueTail, _)
            )
        })
        .count();
    assert_eq!(tail_writes, 3);
}

#[test]
fn two_guests_get_two_domains_and_devices_stay_apart() {
    let mut f = TestFrames::default();
    let mut dma = up(QEMU_CAP, &[], &[], &mut f);
    let a = dma
        .attach_guest("a", (RAM_BASE, 8 << 20), &[edu_a()], &mut f)
        .unwrap();
    let edu_b = DmaDevice {
        bdf: bdf("00:08.0"),
        requester: bdf("00:08.0"),
        unit: Some(0),
    };
    let b = dma
        .attach_guest("b", (RAM_BASE + (8 << 20), 8 << 20), &[edu_b], &mut f)
        .unwrap();
    assert_ne!(dma.domain_id(a), dma.domain_id(b));
    assert_eq!(dma.translate(b, 0, 0, &mut f), Some(RAM_BASE + (8 << 20)));
    assert_eq!(dma.context_domain(0, EDU_B, &mut f), dma.domain_id(b));
    // The same device cannot be put into a second domain while it is in one.
    assert!(dma
        .attach_guest("c", (0, 2 << 20), &[edu_a()], &mut f)
        .unwrap_err()
        .contains("already in VT-d domain"));
    assert_eq!(dma.context_domain(0, EDU_A, &mut f), dma.domain_id(a));
}

#[test]
fn detach_clears_the_entries_and_invalidates() {
    let mut f = TestFrames::default();
    let mut dma = up(QEMU_CAP, &[], &[], &mut f);
    let h = dma
        .attach_guest("g", (RAM_BASE, 8 << 20), &[edu_a()], &mut f)
        .unwrap();
    let tail_before = dma.units[0]
        .hw
        .mmio()
        .get(Reg64::InvalidationQueueTail.offset());
    dma.detach_guest(h, &mut f);
    assert_eq!(dma.context_domain(0, EDU_A, &mut f), None);
    assert_eq!(dma.domain_id(h), None);
    // Context-cache (device) + IOTLB (domain) invalidation, each with a wait: 4 descriptors.
    assert_eq!(
        dma.units[0]
            .hw
            .mmio()
            .get(Reg64::InvalidationQueueTail.offset())
            - tail_before,
        4 << 4
    );
    dma.detach_guest(h, &mut f); // idempotent
                                 // The device can be attached again (a new domain).
    let again = dma
        .attach_guest("g", (RAM_BASE, 8 << 20), &[edu_a()], &mut f)
        .unwrap();
    assert_eq!(dma.domain_id(again), Some(1));
}

#[test]
fn devices_without_a_unit_are_refused_or_skipped() {
    let mut f = TestFrames::default();
    let mut dma = up(QEMU_CAP, &[], &[], &mut f);
    let uncovered = DmaDevice {
        unit: None,
        ..edu_a()
    };
    // unsafe_no_iommu planning: no unit at all, nothing to attach.
    assert_eq!(
        prepare_guest_dma::<FakeVtd>(None, "g", (RAM_BASE, 1 << 20), &[uncovered], &mut f),
        Ok(None)
    );
    // A covered device while remapping is not up: the guest must not run.
    assert!(
        prepare_guest_dma::<FakeVtd>(None, "g", (RAM_BASE, 1 << 20), &[edu_a()], &mut f).is_err()
    );
    assert!(dma
        .attach_guest("g", (RAM_BASE, 1 << 20), &[edu_a(), uncovered], &mut f)
        .is_err());
    assert_eq!(dma.context_domain(0, EDU_A, &mut f), None, "rolled back");
    let h = prepare_guest_dma(Some(&mut dma), "g", (RAM_BASE, 1 << 20), &[edu_a()], &mut f)
        .unwrap()
        .unwrap();
    assert_eq!(
        dma.translate(h, 0, 0xFFFFF, &mut f),
        Some(RAM_BASE + 0xFFFFF)
    );
}

#[test]
fn rmrr_devices_get_exactly_their_ranges_identity_mapped() {
    let mut f = TestFrames::default();
    let mut dma = up(QEMU_CAP, &[usb_rmrr()], &[], &mut f);
    let id = dma
        .context_domain(0, USB, &mut f)
        .expect("RMRR device has a context entry");
    let ctx = dma.units[0].root.context_entry(&mut f, USB).unwrap();
    assert_eq!(ctx.domain(), id);
    // Walk the installed tables (VT-d 3.7, 9.8): 0x7f000000..0x7f0fffff -> itself, nothing
    // around it.
    let root = ctx.second_level_root();
    let walk = |f: &mut TestFrames, iova: u64| -> Option<u64> {
        let mut table = root;
        for level in [3u32, 2, 1] {
            let shift = 12 + 9 * (level - 1);
            let e = f.table(table)[((iova >> shift) & 0x1FF) as usize];
            if e & 3 == 0 {
                return None;
            }
            if level == 1 || e & 0x80 != 0 {
                let size = 1u64 << shift;
                return Some((e & 0x000F_FFFF_FFFF_F000 & !(size - 1)) | (iova & (size - 1)));
            }
            table = e & 0x000F_FFFF_FFFF_F000;
        }
        None
    };
    assert_eq!(walk(&mut f, 0x7f00_0000), Some(0x7f00_0000));
    assert_eq!(walk(&mut f, 0x7f0f_fff8), Some(0x7f0f_fff8));
    assert_eq!(walk(&mut f, 0x7f10_0000), None);
    assert_eq!(walk(&mut f, 0x7eff_f000), None);
    assert_eq!(walk(&mut f, 0), None);
    // Other devices stay blocked; a guest domain gets the next id.
    assert_eq!(dma.context_domain(0, EDU_A, &mut f), None);
    let h = dma
        .attach_guest("g", (RAM_BASE, 2 << 20), &[edu_a()], &mut f)
        .unwrap();
    assert_eq!(dma.domain_id(h), Some(id + 1));
}

#[test]
fn rmrr_of_an_assigned_device_is_not_honoured() {
    let mut f = TestFrames::default();
    let mut dma = up(QEMU_CAP, &[usb_rmrr()], &[bdf("00:1d.0")], &mut f);
    assert_eq!(dma.context_domain(0, USB, &mut f), None);
    let usb = DmaDevice {
        bdf: bdf("00:1d.0"),
        requester: bdf("00:1d.0"),
        unit: Some(0),
    };
    let h = dma
        .attach_guest("g", (RAM_BASE, 2 << 20), &[usb], &mut f)
        .unwrap();
    assert_eq!(dma.context_domain(0, USB, &mut f), dma.domain_id(h));
    assert_eq!(dma.translate(h, 0, 0x7f00_0000, &mut f), None);
}

/// The edu's MSI with `vector` (`None`: off), from `requester`, to the CPU (APIC ID, x2APIC).
fn msi(vector: Option<u8>, requester: Bdf, (apic_id, x2apic): (u32, bool)) -> InterruptRequest {
    InterruptRequest {
        source: InterruptSource::Msi(bdf("00:03.0")),
        requester,
        vector,
        cpu: CpuTarget { apic_id, x2apic },
    }
}

/// Interrupt-entry-cache invalidations (selective, VT-d 6.5.2.7: type 0x4, G = 1 at bit 4,
/// IIDX at 47:32) written into the queue since `from`.
fn iec_indices(dma: &mut DmaRemapping<FakeVtd>, f: &mut TestFrames, from: u64) -> Vec<u64> {
    let hw = dma.units[0].hw.mmio();
    let tail = hw.get(Reg64::InvalidationQueueTail.offset());
    let iqa = hw.get(Reg64::InvalidationQueueAddress.offset()) & !0xFFF;
    (from / 16..tail / 16)
        .map(|i| f.table(iqa)[2 * i as usize])
        .filter(|d| d & 0xF == 0x4)
        .map(|d| {
            assert_eq!(d & 0x10, 0x10, "index-selective");
            (d >> 32) & 0xFFFF
        })
        .collect()
}

#[test]
fn guest_msi_gets_an_irte_with_its_vector_and_loses_it_when_disabled() {
    let mut f = TestFrames::default();
    let mut dma = up(QEMU_CAP, &[], &[], &mut f);
    let h = dma
        .attach_guest("g", (RAM_BASE, 8 << 20), &[edu_a()], &mut f)
        .unwrap();
    let edu = bdf("00:03.0");
    assert_eq!(dma.remaps_interrupts(h, edu), Some(true));
    let tail = dma.units[0]
        .hw
        .mmio()
        .get(Reg64::InvalidationQueueTail.offset());
    // Vector 0x41 to host xAPIC 2: the first free index, 0.
    let m = dma
        .remap_interrupt(h, &msi(Some(0x41), edu, (2, false)), &mut f)
        .unwrap()
        .unwrap();
    // VT-d 5.1.5.2: handle 0 -> 0xFEE00000 | format bit 4; data 0 (no subhandle).
    assert_eq!((m.address, m.data), (0xFEE0_0010, 0));
    // VT-d 9.10: lo = P | V 0x41 << 16 | DST (2 << 8) << 32; hi = SVT 01 << 18 | SID 0x18.
    let (unit, index, e) = dma.guest_irte(h, edu, &mut f).unwrap();
    assert_eq!((unit, index), (0, 0));
    assert_eq!((e.lo, e.hi), (0x0000_0200_0041_0001, 0x4_0018));
    assert_eq!(iec_indices(&mut dma, &mut f, tail), [0]);
    // A new vector reuses the index: cleared and invalidated, then written and invalidated.
    let tail = dma.units[0]
        .hw
        .mmio()
        .get(Reg64::InvalidationQueueTail.offset());
    let again = dma
        .remap_interrupt(h, &msi(Some(0x42), edu, (2, false)), &mut f)
        .unwrap();
    assert_eq!(again, Some(m));
    assert_eq!(dma.irte_at(0, 0, &mut f).unwrap().vector(), 0x42);
    assert_eq!(iec_indices(&mut dma, &mut f, tail), [0, 0]);
    // Disabled: the entry is cleared (and invalidated); the index is free again.
    assert_eq!(
        dma.remap_interrupt(h, &msi(None, edu, (2, false)), &mut f),
        Ok(None)
    );
    assert!(!dma.irte_at(0, 0, &mut f).unwrap().present());
    assert_eq!(dma.guest_irte(h, edu, &mut f), None);
    assert!(!dma.units[0].irte_in_use[0]);
    assert_eq!(dma.guest_irte(h, edu, &mut f), None);
    // No EIM on QEMU's unit: an APIC ID above 255 cannot be expressed.
    assert!(dma
        .remap_interrupt(h, &msi(Some(0x41), edu, (0x100, true)), &mut f)
        .unwrap_err()
        .contains("EIM"));
    // A device outside the guest's domain gets nothing.
    assert!(dma
        .remap_interrupt(h, &msi(Some(0x41), bdf("00:08.0"), (2, false)), &mut f)
        .is_err());
}

#[test]
fn detaching_the_guest_clears_its_irtes() {
    let mut f = TestFrames::default();
    let mut dma = up(QEMU_CAP, &[], &[], &mut f);
    let h = dma
        .attach_guest("g", (RAM_BASE, 8 << 20), &[edu_a()], &mut f)
        .unwrap();
    let edu = bdf("00:03.0");
    dma.remap_interrupt(h, &msi(Some(0x41), edu, (0, true)), &mut f)
        .unwrap();
    assert!(dma.irte_at(0, 0, &mut f).unwrap().present());
    dma.detach_guest(h, &mut f);
    assert!(!dma.irte_at(0, 0, &mut f).unwrap().present());
    assert!(!dma.units[0].irte_in_use[0]);
}

#[test]
fn eim_units_get_x2apic_destinations() {
    // ECAP.EIM is bit 4 (VT-d 11.4.3): the table is extended, DST holds the 32-bit ID.
    let mut f = TestFrames::default();
    let mut unit = iommu(QEMU_CAP);
    unit.ecap = VtdEcap(QEMU_ECAP | 1 << 4);
    let mut dma = DmaRemapping::bring_up(
        &[unit],
        &[],
        &topology(),
        &[],
        BringUpOptions {
            interrupt_remapping: true,
        },
        &mut f,
        |u| FakeVtd::new(u.cap.0, u.ecap.0),
    )
    .unwrap();
    let h = dma
        .attach_guest("g", (RAM_BASE, 8 << 20), &[edu_a()], &mut f)
        .unwrap();
    let edu = bdf("00:03.0");
    dma.remap_interrupt(h, &msi(Some(0x41), edu, (0x1234, true)), &mut f)
        .unwrap();
    let (_, _, e) = dma.guest_irte(h, edu, &mut f).unwrap();
    assert_eq!(e.lo, 0x0000_1234_0041_0001);
    assert!(dma
        .remap_interrupt(h, &msi(Some(0x41), edu, (1, false)), &mut f)
        .unwrap_err()
        .contains("xAPIC mode"));
}

/// Pin 3 of IOAPIC `ioapic_id`, to xAPIC 2.
fn pin3(ioapic_id: u8, vector: u8, masked: bool, level: bool) -> PinRequest {
    PinRequest {
        ioapic_id,
        pin: 3,
        vector,
        level,
        active_low: false,
        masked,
        cpu: CpuTarget {
            apic_id: 2,
            x2apic: false,
        },
    }
}

#[test]
fn ioapic_pins_get_irtes_checked_against_the_ioapic_and_remappable_entries() {
    let mut f = TestFrames::default();
    let mut dma = up(QEMU_CAP, &[], &[], &mut f);
    let rte = dma
        .ioapic_pin_entry(&pin3(0, 0x40, false, true), &mut f)
        .unwrap();
    // IRTE 0 in remappable format (bit 48), level (bit 15), vector 0x40 (VT-d 5.1.5.1).
    assert_eq!(rte, PinEntry::Remapped(0x0001_0000_0000_8040));
    // IRTE 0: P | TM (bit 4) | V 0x40 << 16 | DST xAPIC 2 in bits 47:40; SVT 01 (bits 83:82)
    // with SID 0xff00, the IOAPIC's requester ID from DMAR (VT-d 9.10).
    let e = dma.irte_at(0, 0, &mut f).unwrap();
    assert_eq!((e.lo, e.hi), (0x0000_0200_0040_0011, 1 << 18 | 0xff00));
    // Re-routing reuses the entry; masking hands it back.
    let again = dma
        .ioapic_pin_entry(&pin3(0, 0x41, false, false), &mut f)
        .unwrap();
    assert_eq!(again, PinEntry::Remapped(0x0001_0000_0000_0041));
    let masked = dma
        .ioapic_pin_entry(&pin3(0, 0x41, true, false), &mut f)
        .unwrap();
    assert_eq!(masked, PinEntry::Masked);
    assert!(!dma.irte_at(0, 0, &mut f).unwrap().present());
    // An IOAPIC DMAR does not list cannot be remapped: refused, not sent in compatibility format.
    assert!(dma
        .ioapic_pin_entry(&pin3(7, 0x40, false, false), &mut f)
        .unwrap_err()
        .contains("IOAPIC 7 is in no VT-d unit's device scope"));
    dma.ioapic_pin_entry(&pin3(0, 0x42, false, false), &mut f)
        .unwrap();
    dma.release_ioapic_pins(&mut f);
    assert!(!dma.irte_at(0, 0, &mut f).unwrap().present());
}

/// QEMU's unit with interrupt remapping left off.
fn up_without_ir(f: &mut TestFrames) -> DmaRemapping<FakeVtd> {
    let options = BringUpOptions {
        interrupt_remapping: false,
    };
    let open = |u: &IommuUnit| FakeVtd::new(u.cap.0, u.ecap.0);
    DmaRemapping::bring_up(&[iommu(QEMU_CAP)], &[], &topology(), &[], options, f, open).unwrap()
}

#[test]
fn without_interrupt_remapping_pins_use_compatibility_format() {
    let mut f = TestFrames::default();
    let mut dma = up_without_ir(&mut f);
    let rte = dma
        .ioapic_pin_entry(&pin3(0, 0x40, false, true), &mut f)
        .unwrap();
    // The caller writes it (`vmm::guest_pins`).
    assert_eq!(rte, PinEntry::Compatibility);
}

#[test]
fn without_interrupt_remapping_no_irte_is_made() {
    let mut f = TestFrames::default();
    let mut dma = up_without_ir(&mut f);
    let h = dma
        .attach_guest("g", (RAM_BASE, 8 << 20), &[edu_a()], &mut f)
        .unwrap();
    let edu = bdf("00:03.0");
    assert_eq!(dma.remaps_interrupts(h, edu), Some(false));
    assert!(dma
        .remap_interrupt(h, &msi(Some(0x41), edu, (0, true)), &mut f)
        .unwrap_err()
        .contains("interrupt remapping is off"));
}

#[test]
fn faults_are_returned_and_the_device_quarantined() {
    let mut f = TestFrames::default();
    let mut dma = up(QEMU_CAP, &[], &[], &mut f);
    dma.attach_guest("g", (RAM_BASE, 8 << 20), &[edu_a()], &mut f)
        .unwrap();
    // A write fault by 00:03.0 at 0x80_0000, reason 0x5 (VT-d 9.9 fault record: hi bit 127 F,
    // FR at 103:96, SID at 79:64; lo = the page address).
    dma.units[0]
        .hw
        .mmio()
        .inject_fault(0, 0x80_0000, 0x5 << 32 | 0x18);
    let faults = dma.drain_faults(&mut f);
    assert_eq!(faults.len(), 1);
    assert_eq!((faults[0].source, faults[0].address), (EDU_A, 0x80_0000));
    assert_eq!(dma.context_domain(0, EDU_A, &mut f), None, "quarantined");
    assert!(dma.drain_faults(&mut f).is_empty(), "records cleared");
}

#[test]
fn fault_events_go_to_the_host_vector_and_are_masked_at_shut_down() {
    use crate::vtd::regs::Reg32;
    let mut f = TestFrames::default();
    let mut dma = up(QEMU_CAP, &[], &[], &mut f);
    dma.route_fault_events(Some((0xEE, 2))).unwrap();
    let hw = dma.units[0].hw.mmio();
    assert_eq!(hw.get(Reg32::FaultEventData.offset()), 0xEE);
    assert_eq!(hw.get(Reg32::FaultEventAddress.offset()), 0xFEE0_2000);
    assert_eq!(hw.get(Reg32::FaultEventControl.offset()), 0, "unmasked");
    // QEMU's unit has no EIM: an x2APIC-only destination is refused, not truncated.
    assert!(dma.route_fault_events(Some((0xEE, 0x100))).is_err());
    dma.shut_down();
    let hw = dma.units[0].hw.mmio();
    assert_eq!(hw.get(Reg32::FaultEventControl.offset()), 1 << 31);
}

#[test]
fn fault_events_pause_while_a_guest_runs_and_resume_to_the_same_target() {
    use crate::vtd::regs::Reg32;
    let mut f = TestFrames::default();
    let mut dma = up(QEMU_CAP, &[], &[], &mut f);
    dma.route_fault_events(Some((0xFD, 2))).unwrap();
    dma.pause_fault_events();
    let control = |dma: &mut DmaRemapping<FakeVtd>| {
        dma.units[0]
            .hw
            .mmio()
            .get(Reg32::FaultEventControl.offset())
    };
    assert_eq!(control(&mut dma), 1 << 31, "masked (FECTL.IM)");
    dma.resume_fault_events().unwrap();
    assert_eq!(control(&mut dma), 0, "unmasked again");
    assert_eq!(
        dma.units[0].hw.mmio().get(Reg32::FaultEventData.offset()),
        0xFD
    );
    // Never routed: resuming leaves them masked.
    dma.route_fault_events(None).unwrap();
    dma.resume_fault_events().unwrap();
    assert_eq!(control(&mut dma), 1 << 31);
}

#[test]
fn the_service_is_reached_through_its_lock() {
    let mut f = TestFrames::default();
    let iommu = Iommu::new(up(QEMU_CAP, &[], &[], &mut f));
    let h = iommu
        .lock()
        .attach_guest("g", (RAM_BASE, 2 << 20), &[edu_a()], &mut f)
        .unwrap();
    // Held, it cannot be taken again until the guard goes.
    let guard = iommu.lock();
    assert!(iommu.service.try_lock().is_none());
    drop(guard);
    assert_eq!(iommu.lock().translate(h, 0, 0, &mut f), Some(RAM_BASE));
    let mut owned = iommu;
    owned.get_mut().detach_guest(h, &mut f);
    assert_eq!(owned.lock().domain_id(h), None);
}
