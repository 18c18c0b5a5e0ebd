//! The guest's ACPI tables, built from a [`GuestPlatformDescription`] into one blob for
//! [`ACPI_TABLES_GPA`]: RSDP, XSDT, FADT (hardware-reduced), MADT and a DSDT in AML ([`aml`]).
//! The opposite direction, reading the host's tables, is `platform::acpi_tables`.
//!
//! What Linux gets from them: IOAPIC + x2APIC interrupts without 8259 or PIT (MADT, FADT
//! `HW_REDUCED_ACPI`), PCI INTx routed straight to IOAPIC pins (`_PRT`), COM1 with its IRQ, power
//! off through `\_S5` and the sleep registers, and reset through the FADT reset register.
//! No MCFG: the guest reaches PCI configuration space through ports 0xCF8/0xCFC.
//!
//! Hand-written rather than rust-vmm's `acpi_tables` crate: its MADT has no Local x2APIC,
//! Interrupt Source Override or NMI structures, and the rest is a few offsets; the AML needed
//! here is a page of encoder.

pub mod aml;

use crate::vmm::guest_platform::{
    ACPI_TABLES_GPA, ACPI_TABLES_MAX_LEN, COM1_GSI, COM1_PORT, IOAPIC_GPA, IOAPIC_ID, LAPIC_GPA,
    RESET_PORT, RESET_VALUE, S5_SLEEP_TYPE, SLEEP_CONTROL_PORT, SLEEP_STATUS_PORT,
};
use alloc::vec;
use alloc::vec::Vec;
use core::fmt;

/// The platform the tables describe.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GuestPlatformDescription {
    /// The vCPUs' x2APIC IDs, the bootstrap processor first (ACPI 5.2.12.12 asks for that order);
    /// a vCPU's index here is its ACPI processor UID.
    pub apic_ids: Vec<u32>,
    /// The INTx lines of the PCI functions on bus 0.
    pub pci_interrupts: Vec<PciInterrupt>,
    /// Guest-physical ranges the PCI host bridge forwards to devices (`_CRS` memory windows):
    /// they must hold every memory BAR (BARs stay where the host firmware put them) and no RAM.
    pub pci_memory_windows: Vec<MemoryWindow>,
    /// A 16550 at [`COM1_PORT`] on ISA IRQ [`COM1_GSI`].
    pub com1: bool,
}

/// One PCI function's INTx pin and the IOAPIC pin (GSI) it is wired to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PciInterrupt {
    pub device: u8,
    pub function: u8,
    /// The Interrupt Pin register's value: 1..=4 for INTA#..INTD#.
    pub pin: u8,
    pub gsi: u32,
}

/// `base..base + len` in guest-physical memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryWindow {
    pub base: u64,
    pub len: u64,
}

/// Why a description cannot be turned into tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DescriptionError {
    NoCpus,
    /// An x2APIC ID listed twice, or 0xFFFF_FFFF (the "all processors" value).
    BadApicId(u32),
    /// A vCPU with an APIC ID below 255 at index 255 or more: its Processor Local APIC structure
    /// has an 8-bit UID, and 0xFF means "all processors".
    CpuIndexTooLarge(usize),
    /// Device above 31, function above 7, or pin outside 1..=4.
    BadPciFunction(PciInterrupt),
    /// Two functions of one device give one pin two GSIs: `_PRT` routes per device and pin.
    ConflictingPciRoute(PciInterrupt),
    /// A PCI INTx (level, active low) on COM1's edge-triggered GSI.
    PciGsiIsCom1(PciInterrupt),
    /// Empty, or wrapping past 2^64.
    BadMemoryWindow(MemoryWindow),
    TablesTooLarge(usize),
}

impl fmt::Display for DescriptionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoCpus => write!(f, "no vCPUs"),
            Self::BadApicId(id) => write!(f, "x2APIC ID {id:#x} repeated or invalid"),
            Self::CpuIndexTooLarge(i) => write!(f, "vCPU {i} has an APIC ID below 255"),
            Self::BadPciFunction(p) => write!(f, "bad PCI function {p:?}"),
            Self::ConflictingPciRoute(p) => write!(f, "conflicting INTx route {p:?}"),
            Self::PciGsiIsCom1(p) => write!(f, "PCI INTx on COM1's GSI {p:?}"),
            Self::BadMemoryWindow(w) => write!(f, "bad PCI memory window {w:?}"),
            Self::TablesTooLarge(n) => write!(f, "ACPI tables of {n} bytes"),
        }
    }
}

const OEM_ID: [u8; 6] = *b"EXITLS";
const OEM_TABLE_ID: [u8; 8] = *b"EXITLESS";
const CREATOR_ID: [u8; 4] = *b"EXLS";
/// System description table header (ACPI 5.2.6).
const HEADER_LEN: usize = 36;
/// RSDP revision 2 (ACPI 5.2.5.3).
const RSDP_LEN: usize = 36;
/// FADT revision 6 (ACPI 6.5 5.2.9, Table 5.9): through the Hypervisor Vendor Identity.
const FADT_LEN: usize = 276;
/// Tables start 16-byte aligned: the RSDP must be (5.2.5.1), the rest are for neatness.
const TABLE_ALIGN: usize = 16;

/// FADT field offsets (ACPI 5.2.9, Table 5.9).
mod fadt {
    pub const DSDT: usize = 40;
    pub const IAPC_BOOT_ARCH: usize = 109;
    pub const FLAGS: usize = 112;
    pub const RESET_REG: usize = 116;
    pub const RESET_VALUE: usize = 128;
    pub const MINOR_VERSION: usize = 131;
    pub const X_DSDT: usize = 140;
    pub const SLEEP_CONTROL_REG: usize = 244;
    pub const SLEEP_STATUS_REG: usize = 256;
    pub const HYPERVISOR_VENDOR_IDENTITY: usize = 268;

    /// Fixed feature flags (5.2.9.1): WBINVD works; no fixed power or sleep button (a
    /// hardware-reduced platform has none); RESET_REG_SUP; HW_REDUCED_ACPI, which also makes
    /// Linux drop the 8259 and the PIT-based timer setup (`acpi_reduced_hw_init`).
    pub const WBINVD: u32 = 1 << 0;
    pub const PWR_BUTTON: u32 = 1 << 4;
    pub const SLP_BUTTON: u32 = 1 << 5;
    pub const RESET_REG_SUP: u32 = 1 << 10;
    pub const HW_REDUCED_ACPI: u32 = 1 << 20;

    /// IA-PC boot architecture flags (5.2.9.3). Left clear: LEGACY_DEVICES (COM1 is in the
    /// DSDT), 8042 (clear means absent), MSI not supported (MSI works). Set: no VGA, no CMOS RTC,
    /// and ASPM controls off: the guest must not change the link power state of assigned host
    /// devices.
    pub const VGA_NOT_PRESENT: u16 = 1 << 2;
    pub const PCIE_ASPM_CONTROLS: u16 = 1 << 4;
    pub const CMOS_RTC_NOT_PRESENT: u16 = 1 << 5;
}

/// MADT structure types (ACPI 5.2.12, Table 5.21) and MPS INTI flags (Table 5.26).
mod madt {
    pub const LOCAL_APIC: u8 = 0;
    pub const IO_APIC: u8 = 1;
    pub const INTERRUPT_SOURCE_OVERRIDE: u8 = 2;
    pub const LOCAL_APIC_NMI: u8 = 4;
    pub const LOCAL_X2APIC: u8 = 9;
    pub const LOCAL_X2APIC_NMI: u8 = 10;
    pub const ENABLED: u32 = 1;
    /// Polarity bits 1:0 = 11 active low, trigger bits 3:2 = 11 level: how PCI INTx is wired.
    pub const LEVEL_ACTIVE_LOW: u16 = 0b1111;
    /// Active high, edge: how LINT1 receives NMI.
    pub const EDGE_ACTIVE_HIGH: u16 = 0b0101;
    pub const LINT1: u8 = 1;
}

/// The tables for `desc`, RSDP at offset 0, to be copied to [`ACPI_TABLES_GPA`].
pub fn build(desc: &GuestPlatformDescription) -> Result<Vec<u8>, DescriptionError> {
    build_at(desc, ACPI_TABLES_GPA)
}

/// [`build`] for a blob placed at `base` (host tests place it where a host-side parser can
/// follow its pointers).
fn build_at(desc: &GuestPlatformDescription, base: u64) -> Result<Vec<u8>, DescriptionError> {
    let routes = check(desc)?;
    let madt = madt(desc, &routes);
    let dsdt = dsdt(desc, &routes);

    // Layout: RSDP, XSDT, FADT, MADT, DSDT, each 16-byte aligned.
    let xsdt_at = align(RSDP_LEN);
    let fadt_at = align(xsdt_at + HEADER_LEN + 2 * 8);
    let madt_at = align(fadt_at + FADT_LEN);
    let dsdt_at = align(madt_at + madt.len());
    let total = dsdt_at + dsdt.len();
    if total as u64 > ACPI_TABLES_MAX_LEN {
        return Err(DescriptionError::TablesTooLarge(total));
    }
    let gpa = |offset: usize| base + offset as u64;

    let mut blob = vec![0u8; total];
    blob[..RSDP_LEN].copy_from_slice(&rsdp(gpa(xsdt_at)));
    let mut xsdt_body = gpa(fadt_at).to_le_bytes().to_vec();
    xsdt_body.extend_from_slice(&gpa(madt_at).to_le_bytes());
    let xsdt = table(*b"XSDT", 1, &xsdt_body);
    blob[xsdt_at..xsdt_at + xsdt.len()].copy_from_slice(&xsdt);
    blob[fadt_at..fadt_at + FADT_LEN].copy_from_slice(&fadt(gpa(dsdt_at)));
    blob[madt_at..madt_at + madt.len()].copy_from_slice(&madt);
    blob[dsdt_at..].copy_from_slice(&dsdt);
    Ok(blob)
}

fn align(offset: usize) -> usize {
    offset.next_multiple_of(TABLE_ALIGN)
}

/// The `_PRT` routes, one per (device, pin) in first-seen order, after checking the description.
fn check(desc: &GuestPlatformDescription) -> Result<Vec<PciInterrupt>, DescriptionError> {
    if desc.apic_ids.is_empty() {
        return Err(DescriptionError::NoCpus);
    }
    for (i, &id) in desc.apic_ids.iter().enumerate() {
        if id == u32::MAX || desc.apic_ids[..i].contains(&id) {
            return Err(DescriptionError::BadApicId(id));
        }
        if id < 255 && i >= 255 {
            return Err(DescriptionError::CpuIndexTooLarge(i));
        }
    }
    let mut routes: Vec<PciInterrupt> = Vec::new();
    for &p in &desc.pci_interrupts {
        if p.device > 31 || p.function > 7 || !(1..=4).contains(&p.pin) {
            return Err(DescriptionError::BadPciFunction(p));
        }
        if desc.com1 && p.gsi == u32::from(COM1_GSI) {
            return Err(DescriptionError::PciGsiIsCom1(p));
        }
        match routes
            .iter()
            .find(|r| (r.device, r.pin) == (p.device, p.pin))
        {
            Some(r) if r.gsi != p.gsi => return Err(DescriptionError::ConflictingPciRoute(p)),
            Some(_) => {}
            None => routes.push(p),
        }
    }
    for &w in &desc.pci_memory_windows {
        if w.len == 0 || w.base.checked_add(w.len - 1).is_none() {
            return Err(DescriptionError::BadMemoryWindow(w));
        }
    }
    Ok(routes)
}

fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |s, &b| s.wrapping_add(b)))
}

/// RSDP revision 2 (ACPI 5.2.5.3). RSDT address 0: an OS that reads revision 2 uses the XSDT
/// (Linux's `acpi_tb_parse_root_table` does whenever the XSDT address is non-zero).
fn rsdp(xsdt: u64) -> [u8; RSDP_LEN] {
    let mut r = [0u8; RSDP_LEN];
    r[0..8].copy_from_slice(b"RSD PTR ");
    r[9..15].copy_from_slice(&OEM_ID);
    r[15] = 2;
    r[20..24].copy_from_slice(&(RSDP_LEN as u32).to_le_bytes());
    r[24..32].copy_from_slice(&xsdt.to_le_bytes());
    r[8] = checksum(&r[..20]);
    r[32] = checksum(&r);
    r
}

/// A system description table: header (ACPI 5.2.6) then `body`, checksummed.
fn table(signature: [u8; 4], revision: u8, body: &[u8]) -> Vec<u8> {
    let mut t = vec![0u8; HEADER_LEN];
    t[0..4].copy_from_slice(&signature);
    t[4..8].copy_from_slice(&((HEADER_LEN + body.len()) as u32).to_le_bytes());
    t[8] = revision;
    t[10..16].copy_from_slice(&OEM_ID);
    t[16..24].copy_from_slice(&OEM_TABLE_ID);
    t[24..28].copy_from_slice(&1u32.to_le_bytes());
    t[28..32].copy_from_slice(&CREATOR_ID);
    t[32..36].copy_from_slice(&1u32.to_le_bytes());
    t.extend_from_slice(body);
    t[9] = checksum(&t);
    t
}

/// A Generic Address Structure (ACPI 5.2.3.2) for an 8-bit register in System I/O space, accessed
/// a byte at a time: Linux's `acpi_reboot` requires exactly that width and offset 0.
fn io_register(port: u16) -> [u8; 12] {
    let mut g = [0u8; 12];
    g[0] = 1; // System I/O
    g[1] = 8; // Register Bit Width
    g[3] = 1; // Access Size: byte
    g[4..12].copy_from_slice(&u64::from(port).to_le_bytes());
    g
}

/// The FADT, revision 6.5, hardware-reduced (ACPI 4.1): no FACS, no PM1/GPE blocks, no SCI
/// (nothing raises ACPI events); sleep and reset through the registers of 5.2.9's
/// SLEEP_CONTROL_REG, SLEEP_STATUS_REG and RESET_REG.
fn fadt(dsdt: u64) -> Vec<u8> {
    let mut body = vec![0u8; FADT_LEN - HEADER_LEN];
    let mut put = |offset: usize, bytes: &[u8]| {
        body[offset - HEADER_LEN..offset - HEADER_LEN + bytes.len()].copy_from_slice(bytes)
    };
    // The 32-bit DSDT field as well: ACPICA prefers X_DSDT but reads both.
    put(fadt::DSDT, &(dsdt as u32).to_le_bytes());
    let boot_arch = fadt::VGA_NOT_PRESENT | fadt::PCIE_ASPM_CONTROLS | fadt::CMOS_RTC_NOT_PRESENT;
    put(fadt::IAPC_BOOT_ARCH, &boot_arch.to_le_bytes());
    let flags = fadt::WBINVD
        | fadt::PWR_BUTTON
        | fadt::SLP_BUTTON
        | fadt::RESET_REG_SUP
        | fadt::HW_REDUCED_ACPI;
    put(fadt::FLAGS, &flags.to_le_bytes());
    put(fadt::RESET_REG, &io_register(RESET_PORT));
    put(fadt::RESET_VALUE, &[RESET_VALUE]);
    put(fadt::MINOR_VERSION, &[5]);
    put(fadt::X_DSDT, &dsdt.to_le_bytes());
    put(fadt::SLEEP_CONTROL_REG, &io_register(SLEEP_CONTROL_PORT));
    put(fadt::SLEEP_STATUS_REG, &io_register(SLEEP_STATUS_PORT));
    put(fadt::HYPERVISOR_VENDOR_IDENTITY, b"Exitless");
    table(*b"FACP", 6, &body)
}

/// The MADT (ACPI 5.2.12), revision 5; flags 0: no 8259s (PCAT_COMPAT clear).
///
/// Each vCPU gets one structure: a Processor Local APIC (type 0) when its ID is below 255, a
/// Local x2APIC (type 9) otherwise, as 5.2.12.12 requires. Listing a CPU as both would count it
/// twice in kernels before "x86/acpi: Ignore invalid x2APIC entries" (6.1 among them), and later
/// ones drop x2APIC entries below 255 once type-0 entries exist. Linux 6.1 reads both types
/// (`acpi_parse_madt_lapic_entries`) whichever APIC mode it then runs in. The LINT1 NMI entry
/// follows the same split (type 4 for type-0 processors, type 10 for x2APIC ones).
///
/// No override for ISA IRQ 0: there is no PIT. Each PCI INTx GSI below 16 gets an Interrupt
/// Source Override to level, active low, or the ISA default (edge, high) would apply to it.
fn madt(desc: &GuestPlatformDescription, routes: &[PciInterrupt]) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&(LAPIC_GPA as u32).to_le_bytes());
    body.extend_from_slice(&0u32.to_le_bytes());
    for (uid, &id) in desc.apic_ids.iter().enumerate() {
        if id < 255 {
            body.extend_from_slice(&[madt::LOCAL_APIC, 8, uid as u8, id as u8]);
            body.extend_from_slice(&madt::ENABLED.to_le_bytes());
        } else {
            body.extend_from_slice(&[madt::LOCAL_X2APIC, 16, 0, 0]);
            body.extend_from_slice(&id.to_le_bytes());
            body.extend_from_slice(&madt::ENABLED.to_le_bytes());
            body.extend_from_slice(&(uid as u32).to_le_bytes());
        }
    }
    body.extend_from_slice(&[madt::IO_APIC, 12, IOAPIC_ID, 0]);
    body.extend_from_slice(&(IOAPIC_GPA as u32).to_le_bytes());
    body.extend_from_slice(&0u32.to_le_bytes());
    let mut isa_gsis: Vec<u32> = routes.iter().map(|r| r.gsi).filter(|&g| g < 16).collect();
    isa_gsis.sort_unstable();
    isa_gsis.dedup();
    for gsi in isa_gsis {
        body.extend_from_slice(&[madt::INTERRUPT_SOURCE_OVERRIDE, 10, 0, gsi as u8]);
        body.extend_from_slice(&gsi.to_le_bytes());
        body.extend_from_slice(&madt::LEVEL_ACTIVE_LOW.to_le_bytes());
    }
    if desc.apic_ids.iter().any(|&id| id < 255) {
        body.extend_from_slice(&[madt::LOCAL_APIC_NMI, 6, 0xFF]);
        body.extend_from_slice(&madt::EDGE_ACTIVE_HIGH.to_le_bytes());
        body.push(madt::LINT1);
    }
    if desc.apic_ids.iter().any(|&id| id >= 255) {
        body.extend_from_slice(&[madt::LOCAL_X2APIC_NMI, 12]);
        body.extend_from_slice(&madt::EDGE_ACTIVE_HIGH.to_le_bytes());
        body.extend_from_slice(&u32::MAX.to_le_bytes());
        body.extend_from_slice(&[madt::LINT1, 0, 0, 0]);
    }
    table(*b"APIC", 5, &body)
}

/// The DSDT, revision 2 (64-bit AML integers).
fn dsdt(desc: &GuestPlatformDescription, routes: &[PciInterrupt]) -> Vec<u8> {
    let mut sb = [pci_host_bridge(desc, routes)].to_vec();
    if desc.com1 {
        sb.push(com1());
    }
    // \_S5: SLP_TYPa, SLP_TYPb, reserved. ACPICA's acpi_hw_extended_sleep writes
    // SLP_TYPa << 2 | SLP_EN to SLEEP_CONTROL_REG.
    let s5 = aml::package(&[
        aml::integer(S5_SLEEP_TYPE.into()),
        aml::integer(S5_SLEEP_TYPE.into()),
        aml::integer(0),
        aml::integer(0),
    ]);
    let terms = [aml::scope("\\_SB", &sb), aml::name("\\_S5", &s5)].concat();
    table(*b"DSDT", 2, &terms)
}

/// `\_SB.PCI0`, the host bridge of bus 0.
///
/// `_HID` PNP0A03 (PCI, not PNP0A08 PCI Express): configuration goes through 0xCF8 without
/// extended space, and Linux then expects no `_OSC`. No `_ADR`: a device has `_HID` or `_ADR`,
/// not both (ACPI 6.1.5).
///
/// `_CRS` is needed: Linux 6.1 on x86_64 trusts `_CRS` (`pci_use_crs` is only cleared for
/// pre-2008 BIOSes with 32-bit address spaces), and a root bus whose `_CRS` lists no windows gets
/// none (`pci_acpi_root_prepare_resources` adds no defaults then), so no BAR could be claimed.
/// Bus range 0-0xFF, all I/O but the configuration ports 0xCF8-0xCFF, and the description's
/// memory windows.
fn pci_host_bridge(desc: &GuestPlatformDescription, routes: &[PciInterrupt]) -> Vec<u8> {
    use aml::resource;
    let mut crs = [
        resource::word_bus_number(0, 0xFF),
        resource::word_io(0, 0xCF7),
        resource::word_io(0xD00, 0xFFFF),
    ]
    .to_vec();
    for w in &desc.pci_memory_windows {
        let last = w.base + (w.len - 1);
        crs.push(match (u32::try_from(w.base), u32::try_from(last)) {
            (Ok(min), Ok(max)) => resource::dword_memory(min, max),
            _ => resource::qword_memory(w.base, last),
        });
    }
    // _PRT (ACPI 6.2.13): Address (device << 16, any function), Pin (0 = INTA), Source Zero (no
    // link device: the pin is wired to a GSI, level and active low), Source Index = the GSI.
    let prt: Vec<Vec<u8>> = routes
        .iter()
        .map(|r| {
            aml::package(&[
                aml::integer((u64::from(r.device) << 16) | 0xFFFF),
                aml::integer(u64::from(r.pin - 1)),
                aml::integer(0),
                aml::integer(r.gsi.into()),
            ])
        })
        .collect();
    aml::device(
        "PCI0",
        &[
            aml::name("_HID", &aml::eisa_id("PNP0A03")),
            aml::name("_UID", &aml::integer(0)),
            aml::name("_SEG", &aml::integer(0)),
            aml::name("_BBN", &aml::integer(0)),
            aml::name("_CRS", &resource::template(&crs)),
            aml::name("_PRT", &aml::package(&prt)),
        ],
    )
}

/// `\_SB.COM1`, a PNP0501 16550 (Linux's 8250_pnp binds it) with its ports and ISA IRQ.
fn com1() -> Vec<u8> {
    use aml::resource;
    let crs = resource::template(&[
        resource::io(COM1_PORT, COM1_PORT, 1, 8),
        resource::irq_edge_high_exclusive(COM1_GSI),
    ]);
    aml::device(
        "COM1",
        &[
            aml::name("_HID", &aml::eisa_id("PNP0501")),
            aml::name("_UID", &aml::integer(0)),
            aml::name("_CRS", &crs),
        ],
    )
}

#[cfg(test)]
mod tests;
