use super::*;
use crate::platform::acpi_tables;
use crate::platform::apic::{Polarity, Trigger};

/// Two xAPIC-range vCPUs and one beyond 254, the e1000 of Bochs at 00:02.0 INTA on GSI 10, a
/// two-function device at 00:03 (INTA and INTB, both functions' INTA on one GSI), one PCI GSI
/// above the ISA range, and COM1.
fn desc() -> GuestPlatformDescription {
    let intx = |device, function, pin, gsi| PciInterrupt {
        device,
        function,
        pin,
        gsi,
    };
    GuestPlatformDescription {
        apic_ids: vec![0, 2, 300],
        pci_interrupts: vec![
            intx(2, 0, 1, 10),
            intx(3, 0, 1, 11),
            intx(3, 1, 1, 11),
            intx(3, 1, 2, 20),
        ],
        pci_memory_windows: vec![
            MemoryWindow {
                base: 0xC000_0000,
                len: 0x3EC0_0000,
            },
            MemoryWindow {
                base: 0x40_0000_0000,
                len: 0x40_0000_0000,
            },
        ],
        com1: true,
    }
}

fn sum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0, |s, &b| s.wrapping_add(b))
}
fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(b[at..at + 2].try_into().unwrap())
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// The table at guest-physical `gpa` in `blob`, checked: inside the blob, its length, checksum.
fn table_at(blob: &[u8], gpa: u64, signature: &[u8; 4]) -> Vec<u8> {
    let at = usize::try_from(gpa - ACPI_TABLES_GPA).unwrap();
    assert!(
        at + HEADER_LEN <= blob.len(),
        "{signature:?} outside the blob"
    );
    let t = &blob[at..];
    assert_eq!(&t[0..4], signature);
    let len = u32_at(t, 4) as usize;
    assert!(
        at + len <= blob.len(),
        "{signature:?} ends outside the blob"
    );
    assert_eq!(sum(&t[..len]), 0, "{signature:?} checksum");
    assert_eq!(&t[10..16], b"EXITLS");
    t[..len].to_vec()
}

/// (RSDP bytes, FADT, MADT, DSDT) of `blob`, reached through the pointers as a guest would.
fn tables(blob: &[u8]) -> (Vec<u8>, Vec<u8>, Vec<u8>, Vec<u8>) {
    let rsdp = blob[..RSDP_LEN].to_vec();
    let xsdt = table_at(blob, u64_at(&rsdp, 24), b"XSDT");
    assert_eq!(xsdt.len(), HEADER_LEN + 16, "two entries");
    let fadt = table_at(blob, u64_at(&xsdt, 36), b"FACP");
    let madt = table_at(blob, u64_at(&xsdt, 44), b"APIC");
    let dsdt = table_at(blob, u64_at(&fadt, fadt::X_DSDT), b"DSDT");
    (rsdp, fadt, madt, dsdt)
}

#[test]
fn the_rsdp_is_revision_2_with_both_checksums_and_leads_to_the_xsdt() {
    let blob = build(&desc()).unwrap();
    assert!(blob.len() as u64 <= ACPI_TABLES_MAX_LEN);
    let (rsdp, ..) = tables(&blob);
    assert_eq!(&rsdp[0..8], b"RSD PTR ");
    assert_eq!(rsdp[15], 2, "revision");
    assert_eq!(sum(&rsdp[..20]), 0, "ACPI 1.0 checksum");
    assert_eq!(u32_at(&rsdp, 20), 36, "length");
    assert_eq!(sum(&rsdp), 0, "extended checksum");
    assert_eq!(u32_at(&rsdp, 16), 0, "no RSDT");
    assert_eq!(
        u64_at(&rsdp, 24),
        ACPI_TABLES_GPA + 0x30,
        "XSDT right after the RSDP"
    );
}

#[test]
fn the_fadt_is_hardware_reduced_revision_6_with_sleep_and_reset_registers() {
    let blob = build(&desc()).unwrap();
    let (_, f, _, _) = tables(&blob);
    assert_eq!(f.len(), 276);
    assert_eq!((f[8], f[fadt::MINOR_VERSION]), (6, 5), "FADT 6.5");
    let flags = u32_at(&f, fadt::FLAGS);
    assert_ne!(flags & (1 << 20), 0, "HW_REDUCED_ACPI");
    assert_ne!(flags & (1 << 10), 0, "RESET_REG_SUP");
    let boot_arch = u16_at(&f, fadt::IAPC_BOOT_ARCH);
    assert_eq!(boot_arch & 0b11, 0, "no legacy devices flag, no 8042");
    assert_eq!(boot_arch & (1 << 3), 0, "MSI supported");
    assert_ne!(boot_arch & (1 << 2), 0, "no VGA");
    assert_ne!(boot_arch & (1 << 5), 0, "no CMOS RTC");
    assert_eq!(u32_at(&f, 36), 0, "no FACS");
    assert_eq!(u64_at(&f, 132), 0, "no X_FACS");
    assert_eq!(u16_at(&f, 46), 0, "no SCI");
    let dsdt = u64_at(&f, fadt::X_DSDT);
    assert_eq!(u64::from(u32_at(&f, fadt::DSDT)), dsdt);
    let io8 = |port: u16| {
        let mut g = [1u8, 8, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0];
        g[4..6].copy_from_slice(&port.to_le_bytes());
        g
    };
    let gas = |at: usize| -> [u8; 12] { f[at..at + 12].try_into().unwrap() };
    assert_eq!(gas(fadt::RESET_REG), io8(0x604));
    assert_eq!(f[fadt::RESET_VALUE], RESET_VALUE);
    assert_eq!(gas(fadt::SLEEP_CONTROL_REG), io8(0x600));
    assert_eq!(gas(fadt::SLEEP_STATUS_REG), io8(0x601));
    assert_eq!(&f[268..276], b"Exitless");
    assert!(f[148..244].iter().all(|&b| b == 0), "no X_PM1/X_GPE blocks");
}

/// Each MADT structure as (type, bytes after type and length).
fn madt_entries(madt: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    let mut at = 44;
    while at < madt.len() {
        let len = usize::from(madt[at + 1]);
        assert!(len >= 2 && at + len <= madt.len(), "entry at {at:#x}");
        out.push((madt[at], madt[at + 2..at + len].to_vec()));
        at += len;
    }
    out
}

#[test]
fn the_madt_decodes_back_to_the_vcpus_ioapic_overrides_and_nmi() {
    let blob = build(&desc()).unwrap();
    let (_, _, m, _) = tables(&blob);
    assert_eq!(u32_at(&m, 36), 0xFEE0_0000, "LAPIC address");
    assert_eq!(u32_at(&m, 40), 0, "no PCAT_COMPAT");
    let e = madt_entries(&m);
    let flags_enabled = 1u32.to_le_bytes();
    // Processor Local APIC: UID, APIC ID, flags.
    assert_eq!(e[0], (0, [[0, 0].as_slice(), &flags_enabled].concat()));
    assert_eq!(e[1], (0, [[1, 2].as_slice(), &flags_enabled].concat()));
    // Local x2APIC: reserved, x2APIC ID, flags, UID.
    let x2 = [
        [0, 0].as_slice(),
        &300u32.to_le_bytes(),
        &flags_enabled,
        &2u32.to_le_bytes(),
    ];
    assert_eq!(e[2], (9, x2.concat()));
    // IOAPIC: ID, reserved, address, GSI base.
    let ioapic = [
        [IOAPIC_ID, 0].as_slice(),
        &0xFEC0_0000u32.to_le_bytes(),
        &[0; 4],
    ];
    assert_eq!(e[3], (1, ioapic.concat()));
    // Overrides for the PCI GSIs in the ISA range only, level and active low: bus, source, GSI,
    // flags.
    assert_eq!(e[4], (2, vec![0, 10, 10, 0, 0, 0, 0x0F, 0x00]));
    assert_eq!(e[5], (2, vec![0, 11, 11, 0, 0, 0, 0x0F, 0x00]));
    // NMI on LINT1 of every processor, once per structure kind: UID, flags, LINT#.
    assert_eq!(e[6], (4, vec![0xFF, 0x05, 0x00, 1]));
    assert_eq!(
        e[7],
        (10, vec![0x05, 0x00, 0xFF, 0xFF, 0xFF, 0xFF, 1, 0, 0, 0])
    );
    assert_eq!(e.len(), 8);
}

#[test]
fn without_pci_or_big_apic_ids_the_madt_has_no_overrides_and_one_nmi_kind() {
    let d = GuestPlatformDescription {
        apic_ids: vec![0],
        ..GuestPlatformDescription::default()
    };
    let blob = build(&d).unwrap();
    let (_, _, m, _) = tables(&blob);
    let types: Vec<u8> = madt_entries(&m).iter().map(|e| e.0).collect();
    assert_eq!(types, [0, 1, 4]);
}

/// The same tables read by the host's own ACPI reader (the `acpi` crate under
/// `platform::acpi_tables`), the blob placed at its host address so that the pointers lead there.
#[test]
fn the_hosts_acpi_reader_accepts_the_tables() {
    let mut memory = vec![0u8; ACPI_TABLES_MAX_LEN as usize];
    let base = memory.as_ptr() as u64;
    let blob = build_at(&desc(), base).unwrap();
    memory[..blob.len()].copy_from_slice(&blob);
    // SAFETY: `memory` holds the whole blob and outlives the call; nothing writes it meanwhile.
    let found = unsafe { acpi_tables::read(base) }.unwrap();
    assert_eq!(found.revision, 2);
    assert_eq!(found.tables, [*b"FACP", *b"APIC"]);
    assert!(found.problems.is_empty(), "{:?}", found.problems);
    let madt = found.madt.unwrap();
    assert_eq!(madt.lapic_base, LAPIC_GPA);
    assert!(!madt.pcat_compat);
    let cpus: Vec<(u32, u32, bool)> = madt
        .cpus
        .iter()
        .map(|c| (c.apic_id, c.processor_uid, c.enabled))
        .collect();
    assert_eq!(cpus, [(0, 0, true), (2, 1, true), (300, 2, true)]);
    assert_eq!(madt.ioapics.len(), 1);
    assert_eq!(
        (
            madt.ioapics[0].id,
            madt.ioapics[0].address,
            madt.ioapics[0].gsi_base
        ),
        (IOAPIC_ID, IOAPIC_GPA, 0)
    );
    let overrides: Vec<_> = madt
        .overrides
        .iter()
        .map(|o| (o.bus_irq, o.gsi, o.polarity, o.trigger))
        .collect();
    assert_eq!(
        overrides,
        [
            (10, 10, Polarity::ActiveLow, Trigger::Level),
            (11, 11, Polarity::ActiveLow, Trigger::Level)
        ]
    );
    let nmis: Vec<_> = madt
        .lapic_nmis
        .iter()
        .map(|n| (n.processor_uid, n.lint))
        .collect();
    assert!(nmis.iter().all(|&(_, lint)| lint == 1), "{nmis:?}");
    assert_eq!(nmis.len(), 2);
}

#[test]
fn tables_do_not_overlap_and_start_16_byte_aligned() {
    let blob = build(&desc()).unwrap();
    let xsdt = table_at(&blob, u64_at(&blob, 24), b"XSDT");
    let fadt_gpa = u64_at(&xsdt, 36);
    let fadt = table_at(&blob, fadt_gpa, b"FACP");
    let dsdt_gpa = u64_at(&fadt, fadt::X_DSDT);
    let mut spans = vec![(ACPI_TABLES_GPA, RSDP_LEN as u64)];
    for gpa in [u64_at(&blob, 24), fadt_gpa, u64_at(&xsdt, 44), dsdt_gpa] {
        let at = (gpa - ACPI_TABLES_GPA) as usize;
        spans.push((gpa, u64::from(u32_at(&blob, at + 4))));
    }
    spans.sort_unstable();
    for w in spans.windows(2) {
        assert!(w[0].0 + w[0].1 <= w[1].0, "{spans:x?}");
    }
    assert!(spans.iter().all(|s| s.0 % 16 == 0));
    let last = spans.last().unwrap();
    assert_eq!(
        last.0 + last.1,
        ACPI_TABLES_GPA + blob.len() as u64,
        "blob ends with a table"
    );
}

#[test]
fn the_dsdt_is_the_hand_assembled_aml() {
    let d = GuestPlatformDescription {
        apic_ids: vec![0],
        pci_interrupts: vec![PciInterrupt {
            device: 2,
            function: 0,
            pin: 1,
            gsi: 10,
        }],
        pci_memory_windows: vec![MemoryWindow {
            base: 0xC000_0000,
            len: 0x3EC0_0000,
        }],
        com1: true,
    };
    let blob = build(&d).unwrap();
    let (_, _, _, dsdt) = tables(&blob);
    assert_eq!(dsdt[8], 2, "revision 2: 64-bit integers");
    let mut crs = vec![0x88, 0x0D, 0, 2, 0x0C, 0, 0, 0, 0, 0, 0xFF, 0, 0, 0, 0, 1]; // bus 0-FF
    crs.extend([
        0x88, 0x0D, 0, 1, 0x0C, 3, 0, 0, 0, 0, 0xF7, 0x0C, 0, 0, 0xF8, 0x0C,
    ]); // I/O
    crs.extend([
        0x88, 0x0D, 0, 1, 0x0C, 3, 0, 0, 0, 0x0D, 0xFF, 0xFF, 0, 0, 0, 0xF3,
    ]); // I/O
    crs.extend([0x87, 0x17, 0, 0, 0x0C, 1, 0, 0, 0, 0]); // memory, granularity
    crs.extend([
        0, 0, 0, 0xC0, 0xFF, 0xFF, 0xBF, 0xFE, 0, 0, 0, 0, 0, 0, 0xC0, 0x3E,
    ]);
    crs.push(0x79);
    crs.push(0u8.wrapping_sub(sum(&crs)));
    assert_eq!(crs.len(), 76);
    // PkgLength (ACPI 20.2.4), restated for the one- and two-byte forms used here.
    let pkg = |body: &[u8]| {
        let mut out = if body.len() < 63 {
            vec![body.len() as u8 + 1]
        } else {
            let len = body.len() + 2;
            vec![0x40 | (len & 0xF) as u8, (len >> 4) as u8]
        };
        out.extend_from_slice(body);
        out
    };
    let mut pci0 = b"PCI0".to_vec();
    pci0.extend(b"\x08_HID\x0C\x41\xD0\x0A\x03"); // EISAID ("PNP0A03")
    pci0.extend(b"\x08_UID\x00\x08_SEG\x00\x08_BBN\x00");
    // Buffer: PkgLength 80 (two bytes), BufferSize 76.
    pci0.extend(b"\x08_CRS\x11\x40\x05\x0A\x4C");
    pci0.extend(&crs);
    // Name (_PRT, Package (1) { Package (4) { 0x0002FFFF, Zero, Zero, 0x0A } })
    pci0.extend(b"\x08_PRT\x12\x0E\x01\x12\x0B\x04\x0C\xFF\xFF\x02\x00\x00\x00\x0A\x0A");
    let mut com1 = b"COM1".to_vec();
    com1.extend(b"\x08_HID\x0C\x41\xD0\x05\x01\x08_UID\x00");
    // Buffer: PkgLength 17, BufferSize 14: IO (8 bytes), IRQ (4), end tag (2).
    com1.extend(b"\x08_CRS\x11\x11\x0A\x0E");
    com1.extend(b"\x47\x01\xF8\x03\xF8\x03\x01\x08\x23\x10\x00\x01\x79");
    com1.push(0u8.wrapping_sub(sum(&com1[com1.len() - 13..])));
    let mut sb = b"\\_SB_".to_vec();
    for device in [pci0, com1] {
        sb.extend([0x5B, 0x82]);
        sb.extend(pkg(&device));
    }
    let mut expected = vec![0x10];
    expected.extend(pkg(&sb));
    expected.extend(b"\x08\\_S5_\x12\x08\x04\x0A\x05\x0A\x05\x00\x00");
    assert_eq!(dsdt[HEADER_LEN..], expected[..]);
}

#[test]
fn descriptions_that_cannot_be_described_are_refused() {
    let with = |f: &dyn Fn(&mut GuestPlatformDescription)| {
        let mut d = desc();
        f(&mut d);
        build(&d)
    };
    let intx = |device, function, pin, gsi| PciInterrupt {
        device,
        function,
        pin,
        gsi,
    };
    assert_eq!(with(&|d| d.apic_ids.clear()), Err(DescriptionError::NoCpus));
    assert_eq!(
        with(&|d| d.apic_ids.push(2)),
        Err(DescriptionError::BadApicId(2))
    );
    assert_eq!(
        with(&|d| d.apic_ids.push(u32::MAX)),
        Err(DescriptionError::BadApicId(u32::MAX))
    );
    let many: Vec<u32> = (1000..1255).chain([7]).collect();
    assert_eq!(
        with(&|d| d.apic_ids = many.clone()),
        Err(DescriptionError::CpuIndexTooLarge(255))
    );
    for bad in [
        intx(32, 0, 1, 10),
        intx(2, 8, 1, 10),
        intx(2, 0, 0, 10),
        intx(2, 0, 5, 10),
    ] {
        assert_eq!(
            with(&|d| d.pci_interrupts.push(bad)),
            Err(DescriptionError::BadPciFunction(bad))
        );
    }
    let conflict = intx(3, 2, 1, 12);
    assert_eq!(
        with(&|d| d.pci_interrupts.push(conflict)),
        Err(DescriptionError::ConflictingPciRoute(conflict))
    );
    let on_com1 = intx(4, 0, 1, 4);
    assert_eq!(
        with(&|d| d.pci_interrupts.push(on_com1)),
        Err(DescriptionError::PciGsiIsCom1(on_com1))
    );
    assert!(with(&|d| {
        d.com1 = false;
        d.pci_interrupts.push(on_com1)
    })
    .is_ok());
    for w in [
        MemoryWindow { base: 0, len: 0 },
        MemoryWindow {
            base: u64::MAX,
            len: 2,
        },
    ] {
        assert_eq!(
            with(&|d| d.pci_memory_windows.push(w)),
            Err(DescriptionError::BadMemoryWindow(w))
        );
    }
}

/// A PkgLength (ACPI 20.2.4) at `b[0..]`: (value, bytes it takes).
fn read_pkg_length(b: &[u8]) -> (usize, usize) {
    let follow = usize::from(b[0] >> 6);
    if follow == 0 {
        return (usize::from(b[0]), 1);
    }
    let mut value = usize::from(b[0] & 0xF);
    for i in 0..follow {
        value |= usize::from(b[1 + i]) << (4 + 8 * i);
    }
    (value, 1 + follow)
}

/// A ComputationalData integer (20.2.3) at `b[0..]`: (value, bytes it takes).
fn read_integer(b: &[u8]) -> (u64, usize) {
    let le = |n: usize| {
        let mut v = [0u8; 8];
        v[..n].copy_from_slice(&b[1..=n]);
        (u64::from_le_bytes(v), n + 1)
    };
    match b[0] {
        0x00 => (0, 1),
        0x01 => (1, 1),
        0xFF => (u64::MAX, 1),
        0x0A => le(1),
        0x0B => le(2),
        0x0C => le(4),
        0x0E => le(8),
        op => panic!("not an integer: {op:#x}"),
    }
}

/// `_PRT` decoded from the DSDT's bytes: its Package of Packages of four integers.
fn decode_prt(dsdt: &[u8]) -> Vec<[u64; 4]> {
    let at = dsdt
        .windows(5)
        .position(|w| w == b"\x08_PRT")
        .expect("Name (_PRT, ...)")
        + 5;
    assert_eq!(dsdt[at], 0x12, "PackageOp");
    let (len, len_bytes) = read_pkg_length(&dsdt[at + 1..]);
    let end = at + 1 + len;
    let count = usize::from(dsdt[at + 1 + len_bytes]);
    let mut i = at + 2 + len_bytes;
    let mut entries = Vec::new();
    for _ in 0..count {
        assert_eq!(dsdt[i], 0x12, "PackageOp");
        let (len, len_bytes) = read_pkg_length(&dsdt[i + 1..]);
        let inner_end = i + 1 + len;
        assert_eq!(dsdt[i + 1 + len_bytes], 4, "four elements");
        let mut j = i + 2 + len_bytes;
        let mut entry = [0u64; 4];
        for e in &mut entry {
            let (v, n) = read_integer(&dsdt[j..]);
            *e = v;
            j += n;
        }
        assert_eq!(j, inner_end, "entry ends at its PkgLength");
        entries.push(entry);
        i = inner_end;
    }
    assert_eq!(i, end, "_PRT ends at its PkgLength");
    entries
}

#[test]
fn the_prt_has_one_entry_per_device_and_pin_routed_straight_to_its_gsi() {
    let blob = build(&desc()).unwrap();
    let (_, _, _, dsdt) = tables(&blob);
    // Address (device << 16 | any function), Pin (0 = INTA), Source Zero, Source Index = GSI.
    assert_eq!(
        decode_prt(&dsdt),
        [
            [0x0002_FFFF, 0, 0, 10],
            [0x0003_FFFF, 0, 0, 11],
            [0x0003_FFFF, 1, 0, 20],
        ]
    );
}

#[test]
fn a_full_bus_of_routes_fits_in_one_package() {
    let d = GuestPlatformDescription {
        apic_ids: vec![0],
        pci_interrupts: (0..32)
            .flat_map(|device| {
                (1..=4).map(move |pin| PciInterrupt {
                    device,
                    function: 0,
                    pin,
                    gsi: 16 + u32::from(device + pin) % 8,
                })
            })
            .collect(),
        ..GuestPlatformDescription::default()
    };
    let blob = build(&d).unwrap();
    let (_, _, m, dsdt) = tables(&blob);
    let prt = decode_prt(&dsdt);
    assert_eq!(prt.len(), 128);
    assert_eq!(prt[127], [0x001F_FFFF, 3, 0, 16 + (31 + 4) % 8]);
    assert!(
        madt_entries(&m).iter().all(|e| e.0 != 2),
        "GSIs >= 16 need no override"
    );
}
