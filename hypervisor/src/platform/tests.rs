//! Discovery tests: ACPI tables built by hand in host memory (the identity handler reads them at
//! their host addresses, as the kernel reads firmware memory) and a fake probe for the hardware.

use super::dmar::build as dmar_build;
use super::*;
use alloc::string::String;
use alloc::vec;
use exitless_abi::protocol::{parse_line, Line};

/// QEMU 7.2 VT-d unit registers (emulators.md); VER 0x10 = version 1.0.
const QEMU_DRHD: DrhdRegisters = DrhdRegisters {
    version: 0x10,
    cap: 0x00d2_008c_2226_0206,
    ecap: 0x00f0_0f4a,
};

struct FakeProbe {
    apic_base: u64,
    apic_id: u32,
    /// IOAPIC (base, register) -> value; anything else reads as all ones (nothing there).
    ioapic: Vec<((u64, u8), u32)>,
    drhd: DrhdRegisters,
}

impl FakeProbe {
    /// One xAPIC BSP (IA32_APIC_BASE 0xFEE00900: BSP, enabled) and a 24-pin IOAPIC, version
    /// `version`, at 0xFEC00000.
    fn pc(version: u32) -> Self {
        Self {
            apic_base: 0xfee0_0900,
            apic_id: 0,
            ioapic: vec![
                ((0xfec0_0000, 0), 0),
                ((0xfec0_0000, 1), 0x0017_0000 | version),
            ],
            drhd: QEMU_DRHD,
        }
    }
}

impl PlatformProbe for FakeProbe {
    fn read_apic_base_msr(&self) -> u64 {
        self.apic_base
    }
    fn current_apic_id(&self) -> u32 {
        self.apic_id
    }
    fn read_ioapic_reg(&self, base: u64, reg: u8) -> u32 {
        self.ioapic
            .iter()
            .find(|(k, _)| *k == (base, reg))
            .map_or(u32::MAX, |(_, v)| *v)
    }
    fn read_drhd_regs(&self, base: u64) -> DrhdRegisters {
        assert_eq!(
            base, 0xfed9_0000,
            "DRHD registers read at the wrong address"
        );
        self.drhd
    }
}

fn sum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |s, b| s.wrapping_add(*b))
}

/// An ACPI table: 36-byte header (ACPI 5.2.6) with a correct checksum, then `body`.
fn table(signature: &[u8; 4], body: &[u8]) -> Vec<u8> {
    let mut t = Vec::new();
    t.extend_from_slice(signature);
    t.extend_from_slice(&((36 + body.len()) as u32).to_le_bytes());
    t.extend_from_slice(&[1, 0]);
    t.extend_from_slice(b"BOCHS ");
    t.extend_from_slice(b"BXPC    ");
    t.extend_from_slice(&1u32.to_le_bytes());
    t.extend_from_slice(b"BXPC");
    t.extend_from_slice(&1u32.to_le_bytes());
    t.extend_from_slice(body);
    t[9] = 0u8.wrapping_sub(sum(&t));
    t
}

fn madt_body(lapic_base: u32, entries: &[Vec<u8>]) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&lapic_base.to_le_bytes());
    b.extend_from_slice(&1u32.to_le_bytes()); // PCAT_COMPAT
    for e in entries {
        b.extend_from_slice(e);
    }
    b
}

fn lapic(uid: u8, id: u8, flags: u32) -> Vec<u8> {
    let mut e = vec![0, 8, uid, id];
    e.extend_from_slice(&flags.to_le_bytes());
    e
}

fn x2apic(id: u32, flags: u32, uid: u32) -> Vec<u8> {
    let mut e = vec![9, 16, 0, 0];
    e.extend_from_slice(&id.to_le_bytes());
    e.extend_from_slice(&flags.to_le_bytes());
    e.extend_from_slice(&uid.to_le_bytes());
    e
}

fn ioapic(id: u8, address: u32, gsi_base: u32) -> Vec<u8> {
    let mut e = vec![1, 12, id, 0];
    e.extend_from_slice(&address.to_le_bytes());
    e.extend_from_slice(&gsi_base.to_le_bytes());
    e
}

fn iso(irq: u8, gsi: u32, flags: u16) -> Vec<u8> {
    let mut e = vec![2, 10, 0, irq];
    e.extend_from_slice(&gsi.to_le_bytes());
    e.extend_from_slice(&flags.to_le_bytes());
    e
}

fn lapic_nmi(uid: u8, flags: u16, lint: u8) -> Vec<u8> {
    let mut e = vec![4, 6, uid];
    e.extend_from_slice(&flags.to_le_bytes());
    e.push(lint);
    e
}

/// QEMU q35's MADT: BSP enabled plus a disabled second CPU, one IOAPIC, IRQ0 -> GSI 2,
/// SCI (IRQ 9) level/active-high, LINT1 NMI on all processors.
fn qemu_madt() -> Vec<u8> {
    table(
        b"APIC",
        &madt_body(
            0xfee0_0000,
            &[
                lapic(0, 0, 1),
                lapic(1, 1, 0),
                ioapic(0, 0xfec0_0000, 0),
                iso(0, 2, 0),
                iso(9, 9, 0x0d),
                lapic_nmi(0xff, 0, 1),
            ],
        ),
    )
}

fn qemu_mcfg() -> Vec<u8> {
    let mut b = vec![0u8; 8];
    b.extend_from_slice(&0xb000_0000u64.to_le_bytes());
    b.extend_from_slice(&[0, 0, 0, 255, 0, 0, 0, 0]);
    table(b"MCFG", &b)
}

/// Firmware memory: tables placed in one host buffer that lives as long as the test needs it.
struct Firmware {
    mem: Vec<u8>,
    used: usize,
}

impl Firmware {
    fn new() -> Self {
        Self {
            mem: vec![0; 64 * 1024],
            used: 0,
        }
    }

    fn place(&mut self, bytes: &[u8]) -> u64 {
        let at = (self.used + 15) & !15;
        self.mem[at..at + bytes.len()].copy_from_slice(bytes);
        self.used = at + bytes.len();
        self.mem.as_ptr() as u64 + at as u64
    }

    /// Places `tables`, an XSDT listing them and a revision-2 RSDP; returns the RSDP address.
    fn publish(&mut self, tables: &[Vec<u8>]) -> u64 {
        let addresses: Vec<u64> = tables.iter().map(|t| self.place(t)).collect();
        let body: Vec<u8> = addresses.iter().flat_map(|a| a.to_le_bytes()).collect();
        let xsdt = self.place(&table(b"XSDT", &body));
        self.place(&rsdp(xsdt))
    }
}

/// ACPI 5.2.5.3: checksum over the first 20 bytes, extended checksum over all 36.
fn rsdp(xsdt: u64) -> Vec<u8> {
    let mut r = Vec::new();
    r.extend_from_slice(b"RSD PTR ");
    r.push(0);
    r.extend_from_slice(b"BOCHS ");
    r.push(2);
    r.extend_from_slice(&0u32.to_le_bytes());
    r.extend_from_slice(&36u32.to_le_bytes());
    r.extend_from_slice(&xsdt.to_le_bytes());
    r.extend_from_slice(&[0, 0, 0, 0]);
    r[8] = 0u8.wrapping_sub(sum(&r[..20]));
    r[32] = 0u8.wrapping_sub(sum(&r));
    r
}

fn qemu_tables() -> Vec<Vec<u8>> {
    vec![
        table(b"FACP", &[0; 80]),
        qemu_madt(),
        table(b"HPET", &[0; 20]),
        qemu_mcfg(),
        dmar_build::qemu_like(),
    ]
}

fn summary(p: &Platform) -> String {
    let mut s = String::new();
    p.write_summary(&mut s).unwrap();
    for line in s.lines() {
        assert!(
            matches!(parse_line(line), Some(Line::Fact { .. })),
            "not a fact line: {line}"
        );
    }
    s
}

fn discover(fw_rsdp: Option<u64>, probe: &FakeProbe) -> Platform {
    // SAFETY: the tests' RSDPs point into their live `Firmware` buffers.
    unsafe { Platform::discover_with(fw_rsdp, probe) }
}

#[test]
fn qemu_q35_with_intel_iommu() {
    let mut fw = Firmware::new();
    let rsdp = fw.publish(&qemu_tables());
    let p = discover(Some(rsdp), &FakeProbe::pc(0x20));
    assert_eq!(
        summary(&p),
        "summary: acpi source=rsdp revision=2 oem=BOCHS tables=FACP,APIC,HPET,MCFG,DMAR\n\
         summary: lapic base=0xfee00000 source=madt cpus=1 bsp_id=0 x2apic_enabled=no ids=0\n\
         summary: ioapic id=0 base=0xfec00000 gsi_base=0 pins=24 version=0x20 source=madt\n\
         summary: irq_override bus_irq=0 gsi=2 polarity=conforms trigger=conforms\n\
         summary: irq_override bus_irq=9 gsi=9 polarity=high trigger=level\n\
         summary: lapic_nmi uid=all lint=1 polarity=conforms trigger=conforms\n\
         summary: mcfg segment=0 base=0xb0000000 buses=0-255\n\
         summary: iommu units=1 source=dmar haw=39 intr_remap=yes x2apic_opt_out=yes dma_ctrl_opt_in=no\n\
         summary: drhd index=0 base=0xfed90000 segment=0 include_all=yes version=0x10 cap=0xd2008c22260206 \
         ecap=0xf00f4a sagaw=39 fault_regs=1 fro=0x220 iro=0xf0 qi=yes ir=yes eim=no pi=no cm=no \
         rwbf=no pt=yes sllps=2m,1g scopes=ioapic:0:ff:00.0 mgaw=39 sc=no c=no psi=yes domains=65536\n\
         summary: rmrr base=0x7f000000 limit=0x7f0fffff devices=pci:0:00:1d.0 segment=0\n"
    );
    assert_eq!(p.lapic.cpus.len(), 2);
    assert!(!p.lapic.cpus[1].enabled);
    assert!(p.pcat_compat);
    assert_eq!(
        p.iommus[0].cap.choose_address_width(39),
        Some(crate::caps::AddressWidth::Bits39Level3)
    );
}

#[test]
fn bochs_without_acpi_uses_probed_defaults() {
    // Bochs' IOAPIC reports version 0x11 with 24 pins.
    let p = discover(None, &FakeProbe::pc(0x11));
    assert_eq!(
        summary(&p),
        "summary: acpi source=none fallback=architectural-defaults\n\
         summary: lapic base=0xfee00000 source=ia32_apic_base cpus=1 bsp_id=0 x2apic_enabled=no ids=0\n\
         summary: ioapic id=0 base=0xfec00000 gsi_base=0 pins=24 version=0x11 source=default-probed\n\
         summary: mcfg none=yes pci_config=legacy-cf8\n\
         summary: iommu units=0 source=no-dmar\n"
    );
}

#[test]
fn fallback_reports_a_missing_ioapic_and_x2apic_mode() {
    let probe = FakeProbe {
        apic_base: 0xfee0_0d00, // x2APIC enabled (bit 10)
        apic_id: 3,
        ioapic: Vec::new(),
        drhd: QEMU_DRHD,
    };
    let s = summary(&discover(None, &probe));
    assert!(s.contains("summary: lapic base=0xfee00000 source=ia32_apic_base cpus=1 bsp_id=3 x2apic_enabled=yes ids=3\n"), "{s}");
    assert!(
        s.contains("summary: ioapic none=yes base=0xfec00000 source=default-probed\n"),
        "{s}"
    );
}

#[test]
fn bad_rsdp_falls_back() {
    let mut fw = Firmware::new();
    let rsdp = fw.publish(&qemu_tables());
    let at = (rsdp - fw.mem.as_ptr() as u64) as usize;
    fw.mem[at + 8] ^= 0x55;
    let s = summary(&discover(Some(rsdp), &FakeProbe::pc(0x20)));
    assert!(
        s.starts_with(
            "summary: acpi source=rsdp error=rsdp-bad-checksum fallback=architectural-defaults\n"
        ),
        "{s}"
    );
    assert!(
        s.contains("source=ia32_apic_base")
            && s.contains("source=default-probed")
            && s.contains("source=no-dmar")
    );
    // Not an RSDP at all.
    fw.mem[at] = b'X';
    let s = summary(&discover(Some(rsdp), &FakeProbe::pc(0x20)));
    assert!(
        s.starts_with("summary: acpi source=rsdp error=rsdp-bad-signature "),
        "{s}"
    );
}

#[test]
fn null_xsdt_entry_is_refused() {
    let mut fw = Firmware::new();
    let madt = fw.place(&qemu_madt());
    let mut body = madt.to_le_bytes().to_vec();
    body.extend_from_slice(&0u64.to_le_bytes());
    let xsdt = fw.place(&table(b"XSDT", &body));
    let rsdp = fw.place(&rsdp(xsdt));
    let s = summary(&discover(Some(rsdp), &FakeProbe::pc(0x20)));
    assert!(s.starts_with("summary: acpi source=rsdp error=xsdt-null-entry@0x2c fallback=architectural-defaults\n"), "{s}");
}

#[test]
fn malformed_madt_keeps_the_other_tables() {
    let mut tables = qemu_tables();
    // A zero-length entry after the first LAPIC: MADT offset 44 + 8 = 52, its length byte at 53.
    tables[1] = table(
        b"APIC",
        &madt_body(0xfee0_0000, &[lapic(0, 0, 1), vec![0x7f, 0, 0, 0]]),
    );
    let mut fw = Firmware::new();
    let rsdp = fw.publish(&tables);
    let s = summary(&discover(Some(rsdp), &FakeProbe::pc(0x20)));
    assert!(
        s.starts_with(
            "summary: acpi source=rsdp revision=2 oem=BOCHS tables=FACP,APIC,HPET,MCFG,DMAR \
             error=apic-entry-length-zero@0x35 fallback=architectural-defaults\n"
        ),
        "{s}"
    );
    assert!(s.contains("summary: lapic base=0xfee00000 source=ia32_apic_base "));
    assert!(s.contains("source=default-probed\n"));
    assert!(s.contains("summary: mcfg segment=0 base=0xb0000000 buses=0-255\n"));
    assert!(s.contains("summary: iommu units=1 source=dmar "));
}

#[test]
fn bad_table_checksums_are_reported() {
    let mut tables = qemu_tables();
    tables[3][40] ^= 1; // MCFG
    tables[4][60] ^= 1; // DMAR
    let mut fw = Firmware::new();
    let rsdp = fw.publish(&tables);
    let s = summary(&discover(Some(rsdp), &FakeProbe::pc(0x20)));
    assert!(s.starts_with("summary: acpi source=rsdp revision=2 oem=BOCHS tables=FACP,APIC,HPET,MCFG,DMAR error=mcfg-bad-checksum\n"), "{s}");
    assert!(s.contains("summary: mcfg none=yes pci_config=legacy-cf8\n"));
    assert!(
        s.contains("summary: iommu units=0 source=dmar error=dmar-bad-checksum@0x9\n"),
        "{s}"
    );
}

#[test]
fn x2apic_entries_and_address_override() {
    let mut ovr = vec![5, 12, 0, 0];
    ovr.extend_from_slice(&0xfee0_0000u64.to_le_bytes());
    let madt = table(
        b"APIC",
        &madt_body(
            0xdead_0000,
            &[
                lapic(0, 0, 1),
                x2apic(0x100, 1, 1),
                x2apic(0x101, 2, 2),
                ioapic(2, 0xfec0_1000, 24),
                ovr,
            ],
        ),
    );
    let mut fw = Firmware::new();
    let rsdp = fw.publish(&[madt]);
    let mut probe = FakeProbe::pc(0x20);
    probe.ioapic.push(((0xfec0_1000, 1), 0x0007_0020)); // 8 pins
    let p = discover(Some(rsdp), &probe);
    let s = summary(&p);
    assert!(s.contains("summary: lapic base=0xfee00000 source=madt cpus=2 bsp_id=0 x2apic_enabled=no ids=0,256\n"), "{s}");
    assert!(
        s.contains(
            "summary: ioapic id=2 base=0xfec01000 gsi_base=24 pins=8 version=0x20 source=madt\n"
        ),
        "{s}"
    );
    assert!(p.lapic.cpus[2].online_capable && !p.lapic.cpus[2].enabled);
    assert!(s.contains("summary: mcfg none=yes") && s.contains("source=no-dmar"));
}

#[test]
fn madt_ioapic_that_does_not_answer() {
    let mut fw = Firmware::new();
    let rsdp = fw.publish(&[qemu_madt()]);
    let probe = FakeProbe {
        ioapic: Vec::new(),
        ..FakeProbe::pc(0x20)
    };
    let s = summary(&discover(Some(rsdp), &probe));
    assert!(
        s.contains(
            "summary: ioapic id=0 base=0xfec00000 gsi_base=0 pins=0 version=absent source=madt\n"
        ),
        "{s}"
    );
}

/// Every MADT length from 0 to the real one, with its checksum fixed up, and pseudo-random
/// corruption of its entries: discovery must finish without panicking or hanging.
#[test]
fn madt_truncations_and_corruption_never_panic() {
    let full = qemu_madt();
    let probe = FakeProbe::pc(0x20);
    for n in 0..=full.len() {
        let mut t = full.clone();
        t[4..8].copy_from_slice(&(n as u32).to_le_bytes());
        t[9] = 0;
        let cut = n.clamp(10, full.len());
        t[9] = 0u8.wrapping_sub(sum(&t[..cut]));
        let mut fw = Firmware::new();
        let rsdp = fw.publish(&[t]);
        let _ = summary(&discover(Some(rsdp), &probe));
    }
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for _ in 0..2000 {
        let mut t = full.clone();
        for _ in 0..(next() % 3 + 1) {
            let i = 36 + (next() as usize % (t.len() - 36));
            t[i] = next() as u8;
        }
        t[9] = 0;
        t[9] = 0u8.wrapping_sub(sum(&t));
        let mut fw = Firmware::new();
        let rsdp = fw.publish(&[t]);
        let _ = summary(&discover(Some(rsdp), &probe));
    }
}
