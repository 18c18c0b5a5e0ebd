//! Enumeration tests against the fake configuration space.

use alloc::string::String;
use alloc::vec::Vec;

use super::caps::{extended_id, id};
use super::fake::{FakeConfigSpace, FakeFunction};
use super::*;

fn bdf(bus: u8, device: u8, function: u8) -> Bdf {
    Bdf::new(0, bus, device, function).unwrap()
}

fn summary(topology: &PciTopology) -> Vec<String> {
    let mut text = String::new();
    topology.write_summary(&mut text).unwrap();
    text.lines().map(String::from).collect()
}

fn found(topology: &PciTopology) -> Vec<String> {
    use alloc::string::ToString;
    topology
        .functions
        .iter()
        .map(|f| f.bdf.to_string())
        .collect()
}

/// QEMU's `edu` device as its source builds it: 1234:11e8 revision 0x10, class 00/ff/00,
/// INTA#, BAR0 1 MiB non-prefetchable 32-bit memory, MSI with one vector and 64-bit
/// addresses at the first free capability offset 0x40.
fn edu() -> FakeFunction {
    let mut edu = FakeFunction::new(0x1234, 0x11e8, 0x00ff00, 0x00);
    edu.set8(0x08, 0x10)
        .set8(0x3D, 1)
        .set8(0x3C, 11)
        .set16(COMMAND, 0x0003)
        .bar(
            0,
            BarKind::Memory32 {
                prefetchable: false,
            },
            0xfea0_0000,
            0x10_0000,
        )
        .capability(0x40, id::MSI, &[0x80, 0x00]);
    edu
}

const COMMAND: u16 = 0x04;

#[test]
fn empty_bus() {
    let fake = FakeConfigSpace::new(Mechanism::Legacy);
    let topology = enumerate(&fake);
    assert!(topology.functions.is_empty());
    assert_eq!(
        summary(&topology),
        ["summary: pci access=legacy functions=0"]
    );
    assert_eq!(fake.writes.get(), 0, "enumerating nothing writes nothing");
}

#[test]
fn multi_function_device_scans_all_eight_functions() {
    let fake = FakeConfigSpace::new(Mechanism::Legacy);
    fake.add(0, 1, 0, FakeFunction::new(0x8086, 0x7000, 0x060100, 0x80));
    fake.add(0, 1, 1, FakeFunction::new(0x8086, 0x7010, 0x010180, 0x00));
    fake.add(0, 1, 5, FakeFunction::new(0x8086, 0x7113, 0x068000, 0x00));
    let topology = enumerate(&fake);
    assert_eq!(found(&topology), ["00:01.0", "00:01.1", "00:01.5"]);
}

#[test]
fn single_function_device_is_not_probed_beyond_function_0() {
    // Some single-function devices answer on every function number; header bit 7 clear
    // says function 0 is all there is (PCI 3.0 §6.2.1).
    let fake = FakeConfigSpace::new(Mechanism::Legacy);
    fake.add(0, 2, 0, FakeFunction::new(0x1af4, 0x1000, 0x020000, 0x00));
    fake.add(0, 2, 1, FakeFunction::new(0x1af4, 0x1000, 0x020000, 0x00));
    assert_eq!(found(&enumerate(&fake)), ["00:02.0"]);
}

#[test]
fn function_0_absent_means_device_absent() {
    let fake = FakeConfigSpace::new(Mechanism::Legacy);
    fake.add(0, 4, 1, FakeFunction::new(0x8086, 0x1234, 0x020000, 0x80));
    assert!(enumerate(&fake).functions.is_empty());
}

#[test]
fn bridge_leads_to_its_secondary_bus() {
    let fake = FakeConfigSpace::new(Mechanism::Legacy);
    fake.add(0, 0, 0, FakeFunction::new(0x8086, 0x1237, 0x060000, 0x00));
    let mut bridge = FakeFunction::new(0x1b36, 0x0001, 0x060400, 0x01);
    bridge.bridge_buses(0, 1, 1);
    fake.add(0, 0x1e, 0, bridge);
    // An unconfigured bridge (secondary 0) is not followed, and does not rescan bus 0.
    let mut unconfigured = FakeFunction::new(0x1b36, 0x0001, 0x060400, 0x01);
    unconfigured.bridge_buses(0, 0, 0);
    fake.add(0, 0x1f, 0, unconfigured);
    fake.add(1, 3, 0, edu());
    // Bus 2 is reachable from no bridge.
    fake.add(2, 0, 0, edu());

    let topology = enumerate(&fake);
    assert_eq!(
        found(&topology),
        ["00:00.0", "00:1e.0", "00:1f.0", "01:03.0"]
    );
    let bridge = topology.find(bdf(0, 0x1e, 0)).unwrap();
    assert_eq!(
        bridge.bridge,
        Some(BridgeBuses {
            primary: 0,
            secondary: 1,
            subordinate: 1
        })
    );
    let behind = topology.find(bdf(1, 3, 0)).unwrap();
    assert_eq!(behind.upstream_bridge, Some(bdf(0, 0x1e, 0)));
    assert_eq!(topology.find(bdf(0, 0, 0)).unwrap().upstream_bridge, None);
    assert!(summary(&topology)[2].ends_with("secondary_bus=0x01 subordinate_bus=0x01"));
}

#[test]
fn bridge_cycle_terminates() {
    // Bus 1's bridge claims bus 1 again as its secondary: scanned once.
    let fake = FakeConfigSpace::new(Mechanism::Legacy);
    let mut root = FakeFunction::new(0x1b36, 0x0001, 0x060400, 0x01);
    root.bridge_buses(0, 1, 2);
    fake.add(0, 1, 0, root);
    let mut looped = FakeFunction::new(0x1b36, 0x0001, 0x060400, 0x01);
    looped.bridge_buses(1, 1, 1);
    fake.add(1, 0, 0, looped);
    assert_eq!(found(&enumerate(&fake)), ["00:01.0", "01:00.0"]);
}

#[test]
fn bars_are_sized_and_restored() {
    let fake = FakeConfigSpace::new(Mechanism::Legacy);
    let mut nic = FakeFunction::new(0x8086, 0x10d3, 0x020000, 0x00);
    nic.set16(COMMAND, 0x0007)
        .bar(
            0,
            BarKind::Memory32 {
                prefetchable: false,
            },
            0xfebc_0000,
            0x2_0000,
        )
        .bar(
            1,
            BarKind::Memory64 { prefetchable: true },
            0x8_0000_0000,
            0x4_0000_0000,
        )
        .bar(3, BarKind::Io, 0xc000, 0x20)
        .bar(
            4,
            BarKind::Memory32 { prefetchable: true },
            0xe000_0000,
            0x1000,
        );
    // Slot 5 is unimplemented: reads 0, nothing writable.
    let before = nic.clone();
    fake.add(0, 2, 0, nic);

    let topology = enumerate(&fake);
    let function = &topology.functions[0];
    assert_eq!(
        function.bars,
        [
            Bar {
                index: 0,
                kind: BarKind::Memory32 {
                    prefetchable: false
                },
                base: 0xfebc_0000,
                size: 0x2_0000
            },
            Bar {
                index: 1,
                kind: BarKind::Memory64 { prefetchable: true },
                base: 0x8_0000_0000,
                size: 0x4_0000_0000
            },
            Bar {
                index: 3,
                kind: BarKind::Io,
                base: 0xc000,
                size: 0x20
            },
            Bar {
                index: 4,
                kind: BarKind::Memory32 { prefetchable: true },
                base: 0xe000_0000,
                size: 0x1000
            },
        ]
    );
    let after = fake.get(bdf(0, 2, 0));
    for offset in (0x04..0x28).step_by(4) {
        assert_eq!(
            after.get32(offset),
            before.get32(offset),
            "offset {offset:#x} restored"
        );
    }
    assert_eq!(after.get16(COMMAND), 0x0007);
    assert_eq!(
        fake.writes_while_decoding.get(),
        0,
        "decode was off while sizing"
    );
    assert!(summary(&topology)[1].contains(
        "bars=0:mem32:0xfebc0000+0x20000,1:mem64pf:0x800000000+0x400000000,3:io:0xc000+0x20,4:mem32pf:0xe0000000+0x1000 "
    ));
}

#[test]
fn bar_sizing_leaves_command_alone_when_decode_is_off() {
    let fake = FakeConfigSpace::new(Mechanism::Legacy);
    let mut dev = FakeFunction::new(0x8086, 0x10d3, 0x020000, 0x00);
    dev.bar(
        0,
        BarKind::Memory32 {
            prefetchable: false,
        },
        0xfebc_0000,
        0x2_0000,
    );
    fake.add(0, 2, 0, dev);
    enumerate(&fake);
    // All-ones then the original, for each of the six slots (an unimplemented BAR only
    // shows itself by reading back 0); no Command writes.
    assert_eq!(fake.writes.get(), 12);
}

#[test]
fn host_bridge_keeps_decoding_while_sized() {
    let fake = FakeConfigSpace::new(Mechanism::Legacy);
    let mut host = FakeFunction::new(0x8086, 0x29c0, 0x060000, 0x00);
    host.set16(COMMAND, 0x0006).bar(
        0,
        BarKind::Memory32 {
            prefetchable: false,
        },
        0xfed1_0000,
        0x4000,
    );
    fake.add(0, 0, 0, host);
    let topology = enumerate(&fake);
    assert_eq!(topology.functions[0].bars[0].size, 0x4000);
    assert_eq!(fake.writes_while_decoding.get(), 12);
    assert_eq!(fake.get(bdf(0, 0, 0)).get16(COMMAND), 0x0006);
}

#[test]
fn sixty_four_bit_bar_in_last_slot_is_ignored() {
    let fake = FakeConfigSpace::new(Mechanism::Legacy);
    let mut dev = FakeFunction::new(0x8086, 0x10d3, 0x020000, 0x00);
    dev.set32(0x24, 0x0000_0004);
    fake.add(0, 2, 0, dev);
    assert!(enumerate(&fake).functions[0].bars.is_empty());
}

#[test]
fn qemu_edu_device() {
    let fake = FakeConfigSpace::new(Mechanism::Ecam);
    fake.add(0, 3, 0, edu());
    let topology = enumerate(&fake);
    let edu = topology.find(bdf(0, 3, 0)).unwrap();
    assert_eq!(
        (edu.vendor_id, edu.device_id, edu.revision),
        (0x1234, 0x11e8, 0x10)
    );
    assert_eq!(
        edu.class,
        ClassCode {
            base: 0x00,
            sub: 0xff,
            prog_if: 0x00
        }
    );
    assert_eq!((edu.interrupt_pin, edu.interrupt_line), (1, 11));
    let msi = edu.capabilities.msi.unwrap();
    assert_eq!((msi.offset, msi.vectors(), msi.is_64bit), (0x40, 1, true));
    assert!(edu.capabilities.msix.is_none() && edu.capabilities.pcie.is_none());
    // Conventional PCI: the extended space is not walked.
    assert!(edu.capabilities.extended.is_empty());
    assert_eq!(
        summary(&topology),
        [
            "summary: pci access=ecam functions=1",
            "summary: pci_function bdf=00:03.0 id=1234:11e8 class=0x00ff00 header=0 irq_pin=1 \
             bars=0:mem32:0xfea00000+0x100000 msi=yes msi_vectors=1 msi_64bit=yes msix=no \
             pcie=no flr=no pm=no",
        ]
    );
    // The summary parses with the shared protocol helpers.
    let line = &summary(&topology)[1];
    match exitless_abi::protocol::parse_line(line) {
        Some(exitless_abi::protocol::Line::Fact { topic, fields }) => {
            assert_eq!(topic, "pci_function");
            assert_eq!(
                exitless_abi::protocol::field(fields, "id"),
                Some("1234:11e8")
            );
        }
        other => panic!("not a fact: {other:?}"),
    }
}

/// A PCIe NIC in the style of an Intel 82574 (e1000e): PM, MSI, PCIe with FLR, MSI-X.
fn pcie_nic() -> FakeFunction {
    let mut nic = FakeFunction::new(0x8086, 0x10d3, 0x020000, 0x00);
    nic.bar(
        0,
        BarKind::Memory32 {
            prefetchable: false,
        },
        0xfeb8_0000,
        0x2_0000,
    )
    .bar(
        3,
        BarKind::Memory32 {
            prefetchable: false,
        },
        0xfebd_0000,
        0x4000,
    )
    .set8(0x3D, 1)
    // PMC 0x0603 (D1, D2), PMCSR 0x0008 (No_Soft_Reset).
    .capability(0xC8, id::POWER_MANAGEMENT, &[0x03, 0x06, 0x08, 0x00])
    // MSI: 32-bit, per-vector masking, MMC 0b010 = 4 vectors.
    .capability(0xD0, id::MSI, &[0x04, 0x01])
    // PCIe v2 endpoint; Device Capabilities with FLR (bit 28).
    .capability(0xE0, id::PCI_EXPRESS, &[0x02, 0x00, 0x00, 0x80, 0x00, 0x10])
    // MSI-X: 5 entries (N-1 = 4); table BAR3 + 0x0, PBA BAR3 + 0x2000.
    .capability(
        0xA0,
        id::MSI_X,
        &[0x04, 0x00, 0x03, 0, 0, 0, 0x03, 0x20, 0, 0],
    )
    .extended_capability(0x100, 0x0001, 0x140)
    .extended_capability(0x140, extended_id::ACS, 0x150)
    .extended_capability(0x150, extended_id::ARI, 0x160)
    .extended_capability(0x160, extended_id::SR_IOV, 0);
    nic
}

#[test]
fn msi_msix_pcie_and_power_management() {
    let fake = FakeConfigSpace::new(Mechanism::Ecam);
    fake.add(0, 2, 0, pcie_nic());
    let topology = enumerate(&fake);
    let caps = &topology.functions[0].capabilities;
    let offsets: Vec<(u8, u16)> = caps.list.iter().map(|e| (e.id, e.offset)).collect();
    assert_eq!(
        offsets,
        [(0x01, 0xC8), (0x05, 0xD0), (0x10, 0xE0), (0x11, 0xA0)]
    );
    let msi = caps.msi.unwrap();
    assert!(!msi.is_64bit && msi.per_vector_masking);
    assert_eq!(msi.vectors(), 4);
    let msix = caps.msix.unwrap();
    assert_eq!(msix.table_size, 5);
    assert_eq!(msix.table, BarRegion { bir: 3, offset: 0 });
    assert_eq!(
        msix.pba,
        BarRegion {
            bir: 3,
            offset: 0x2000
        }
    );
    let pcie = caps.pcie.unwrap();
    assert_eq!(
        (pcie.version, pcie.port_type, pcie.flr),
        (2, PciePortType::Endpoint, true)
    );
    let pm = caps.power_management.unwrap();
    assert!(pm.d3hot && pm.d1 && pm.d2 && pm.no_soft_reset);
    let extended: Vec<u16> = caps.extended.iter().map(|e| e.id).collect();
    assert_eq!(extended, [0x0001, 0x000D, 0x000E, 0x0010]);
    assert!(caps.acs() && caps.ari() && caps.sr_iov() && !caps.truncated);
    assert_eq!(
        summary(&topology)[1],
        "summary: pci_function bdf=00:02.0 id=8086:10d3 class=0x020000 header=0 irq_pin=1 \
         bars=0:mem32:0xfeb80000+0x20000,3:mem32:0xfebd0000+0x4000 msi=yes msi_vectors=4 \
         msi_64bit=no msix=yes msix_table=bar3+0x0 msix_size=5 msix_pba=bar3+0x2000 pcie=yes \
         pcie_type=endpoint flr=yes pm=yes ext_caps=0x0001,0x000d,0x000e,0x0010"
    );
}

#[test]
fn legacy_access_does_not_walk_extended_capabilities() {
    let fake = FakeConfigSpace::new(Mechanism::Legacy);
    fake.add(0, 2, 0, pcie_nic());
    let topology = enumerate(&fake);
    assert!(topology.functions[0].capabilities.pcie.is_some());
    assert!(topology.functions[0].capabilities.extended.is_empty());
}

#[test]
fn capability_loop_does_not_hang() {
    let fake = FakeConfigSpace::new(Mechanism::Ecam);
    let mut dev = FakeFunction::new(0x8086, 0x10d3, 0x020000, 0x00);
    dev.capability(0x40, id::POWER_MANAGEMENT, &[0x03, 0x00])
        .capability(0x50, id::PCI_EXPRESS, &[0x02, 0x00])
        .link(0x50, 0x40)
        .extended_capability(0x100, extended_id::ACS, 0x100);
    fake.add(0, 2, 0, dev);
    let topology = enumerate(&fake);
    let caps = &topology.functions[0].capabilities;
    assert!(caps.truncated);
    assert_eq!(caps.list.len(), caps::MAX_CAPABILITIES);
    assert_eq!(caps.extended.len(), caps::MAX_EXTENDED_CAPABILITIES);
    assert!(summary(&topology)[1].ends_with(" caps_truncated=yes"));
}

#[test]
fn capability_pointer_into_header_ends_the_list() {
    // Pointers below 0x40 are not capabilities (the header lives there); the low two bits
    // are reserved and masked (PCI 3.0 §6.7).
    let fake = FakeConfigSpace::new(Mechanism::Legacy);
    let mut dev = FakeFunction::new(0x8086, 0x10d3, 0x020000, 0x00);
    dev.capability(0x40, id::MSI, &[0x80, 0x00])
        .link(0x40, 0x3C);
    dev.set8(0x34, 0x43);
    fake.add(0, 2, 0, dev);
    let caps = &enumerate(&fake).functions[0].capabilities;
    assert_eq!(caps.list.len(), 1);
    assert!(!caps.truncated);
}

#[test]
fn no_capabilities_without_status_bit() {
    let fake = FakeConfigSpace::new(Mechanism::Legacy);
    let mut dev = edu();
    dev.set16(0x06, 0);
    fake.add(0, 3, 0, dev);
    assert!(enumerate(&fake).functions[0].capabilities.msi.is_none());
}

#[test]
fn requester_id_behind_pcie_to_pci_bridge_is_shared() {
    let fake = FakeConfigSpace::new(Mechanism::Ecam);
    // 00:1c.0 root port -> bus 1: 01:00.0 PCIe-to-PCI bridge -> bus 2: two conventional devices.
    let mut root_port = FakeFunction::new(0x8086, 0x2940, 0x060400, 0x01);
    root_port
        .bridge_buses(0, 1, 2)
        .capability(0x40, id::PCI_EXPRESS, &[0x42, 0x00]);
    fake.add(0, 0x1c, 0, root_port);
    let mut pcie_to_pci = FakeFunction::new(0x8086, 0x244e, 0x060400, 0x01);
    pcie_to_pci
        .bridge_buses(1, 2, 2)
        .capability(0x40, id::PCI_EXPRESS, &[0x72, 0x00]);
    fake.add(1, 0, 0, pcie_to_pci);
    fake.add(2, 1, 0, edu());
    fake.add(2, 2, 0, edu());
    fake.add(0, 2, 0, pcie_nic());
    let topology = enumerate(&fake);
    assert_eq!(topology.iommu_requester(bdf(2, 1, 0)), Some(bdf(2, 0, 0)));
    assert_eq!(topology.iommu_requester(bdf(2, 2, 0)), Some(bdf(2, 0, 0)));
    assert_eq!(topology.iommu_requester(bdf(1, 0, 0)), Some(bdf(1, 0, 0)));
    assert_eq!(topology.iommu_requester(bdf(0, 2, 0)), Some(bdf(0, 2, 0)));
    assert_eq!(topology.iommu_requester(bdf(0, 9, 0)), None);
}

#[test]
fn conventional_bridge_substitutes_its_own_id() {
    let fake = FakeConfigSpace::new(Mechanism::Legacy);
    let mut bridge = FakeFunction::new(0x1b36, 0x0001, 0x060400, 0x01);
    bridge.bridge_buses(0, 1, 1);
    fake.add(0, 5, 0, bridge);
    fake.add(1, 3, 0, edu());
    let topology = enumerate(&fake);
    assert_eq!(topology.iommu_requester(bdf(1, 3, 0)), Some(bdf(0, 5, 0)));
}

#[test]
fn enumerate_all_merges_regions() {
    let a = FakeConfigSpace::new(Mechanism::Ecam);
    a.add(0, 3, 0, edu());
    let b = FakeConfigSpace::new(Mechanism::Ecam);
    b.add(0, 2, 0, pcie_nic());
    let topology = enumerate_all(&[&a, &b]).unwrap();
    assert_eq!(found(&topology), ["00:02.0", "00:03.0"]);
    assert!(enumerate_all(&[]).is_none());
}
