//! ACPI tables through the `acpi` crate (5.x, no allocator features): RSDP and root-table
//! validation, typed MADT entries and MCFG entries; the DMAR's raw bytes go to [`super::dmar`].
//!
//! `acpi` 5.2 trusts the lengths it reads (a MADT entry of length 0 loops forever, a table
//! shorter than its header underflows), so every table this module hands to it has first been
//! bounds-checked here on its raw bytes. Problems become [`AcpiProblem`]s, never panics.

use super::apic::inti_flags;
use super::{IoApic, IoApicSource, IrqOverride, LapicNmi, LocalApic, McfgRegion, NmiSource};
use ::acpi::madt::{self, Madt, MadtEntry};
use ::acpi::mcfg::Mcfg;
use ::acpi::rsdp::Rsdp;
use ::acpi::{AcpiError, AcpiHandler, AcpiTables, PhysicalMapping};
use alloc::vec::Vec;
use core::fmt;
use core::mem::size_of;
use core::ptr::NonNull;

/// ACPI table header (ACPI 5.2.6).
const SDT_HEADER_LEN: usize = 36;
/// MADT: header + Local Interrupt Controller Address (4) + Flags (4) (ACPI 5.2.12).
const MADT_FIXED_LEN: usize = 44;
/// MCFG: header + 8 reserved bytes (PCI Firmware spec 4.1.2), then 16-byte entries.
const MCFG_FIXED_LEN: usize = 44;
/// RSDP rev. 2+ length (ACPI 5.2.5.3).
const RSDP_V2_LEN: u32 = 36;
/// Upper bound on the tables this module reads whole; real MADT/MCFG/DMAR/XSDT are a few KiB.
const MAX_TABLE_LEN: u32 = 1 << 20;

/// Maps ACPI tables where they are: the kernel identity-maps all physical memory.
#[derive(Clone, Copy, Debug, Default)]
pub struct IdentityHandler;

impl AcpiHandler for IdentityHandler {
    unsafe fn map_physical_region<T>(
        &self,
        physical_address: usize,
        size: usize,
    ) -> PhysicalMapping<Self, T> {
        // Address 0 never reaches here: `read` rejects null table pointers first.
        let virt = NonNull::new(physical_address as *mut T).unwrap_or(NonNull::dangling());
        // SAFETY: identity mapping; the caller of `read` vouches that the tables are mapped.
        unsafe { PhysicalMapping::new(physical_address, virt, size, size, *self) }
    }

    fn unmap_physical_region<T>(_region: &PhysicalMapping<Self, T>) {}
}

/// One thing wrong with the ACPI tables: `<table>-<what>[@<offset>]`, a single summary token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AcpiProblem {
    /// Signature of the table at fault (`RSDP` for the RSDP).
    pub table: [u8; 4],
    pub what: &'static str,
    /// Byte offset in that table, when it is known.
    pub offset: Option<usize>,
}

impl AcpiProblem {
    fn new(table: [u8; 4], what: &'static str) -> Self {
        Self {
            table,
            what,
            offset: None,
        }
    }
    fn at(table: [u8; 4], what: &'static str, offset: usize) -> Self {
        Self {
            table,
            what,
            offset: Some(offset),
        }
    }
}

impl fmt::Display for AcpiProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.table {
            let c = if b.is_ascii_alphanumeric() {
                b.to_ascii_lowercase()
            } else {
                b'_'
            };
            write!(f, "{}", c as char)?;
        }
        write!(f, "-{}", self.what)?;
        if let Some(off) = self.offset {
            write!(f, "@{off:#x}")?;
        }
        Ok(())
    }
}

/// What the MADT says (ACPI 5.2.12).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MadtInfo {
    /// The Local Interrupt Controller Address, or the 64-bit override (entry type 5).
    pub lapic_base: u64,
    /// Flags bit 0, PCAT_COMPAT: dual 8259s are present (mask them).
    pub pcat_compat: bool,
    pub cpus: Vec<LocalApic>,
    pub ioapics: Vec<IoApic>,
    pub overrides: Vec<IrqOverride>,
    pub nmi_sources: Vec<NmiSource>,
    pub lapic_nmis: Vec<LapicNmi>,
}

/// Everything read from ACPI.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AcpiFindings {
    pub revision: u8,
    pub oem_id: [u8; 6],
    /// Signatures of the tables the root table lists, in its order.
    pub tables: Vec<[u8; 4]>,
    /// `None` when the MADT is absent or malformed (see `problems`).
    pub madt: Option<MadtInfo>,
    /// `None` when the MCFG is absent or malformed.
    pub mcfg: Option<Vec<McfgRegion>>,
    /// The DMAR's bytes, checked later by `dmar::parse`.
    pub dmar: Option<Vec<u8>>,
    /// Tables that were skipped, and why.
    pub problems: Vec<AcpiProblem>,
}

/// A table listed in the root table.
struct TableRef {
    signature: [u8; 4],
    address: u64,
    length: u32,
}

/// # Safety
/// `address..address+len` is identity-mapped readable memory.
unsafe fn raw<'a>(address: u64, len: usize) -> &'a [u8] {
    // SAFETY: the caller guarantees `address..address+len` is identity-mapped readable memory
    // (firmware tables nobody writes while we read them); bytes need no alignment.
    unsafe { core::slice::from_raw_parts(address as *const u8, len) }
}

fn checksum_ok(bytes: &[u8]) -> bool {
    bytes.iter().fold(0u8, |s, b| s.wrapping_add(*b)) == 0
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn rsdp_problem(e: AcpiError) -> AcpiProblem {
    let what = match e {
        AcpiError::RsdpIncorrectSignature => "bad-signature",
        AcpiError::RsdpInvalidOemId => "bad-oem-id",
        AcpiError::RsdpInvalidChecksum => "bad-checksum",
        _ => "invalid",
    };
    AcpiProblem::new(*b"RSDP", what)
}

fn root_problem(signature: [u8; 4], e: AcpiError) -> AcpiProblem {
    let what = match e {
        AcpiError::SdtInvalidSignature(_) => "bad-signature",
        AcpiError::SdtInvalidOemId(_) => "bad-oem-id",
        AcpiError::SdtInvalidTableId(_) => "bad-table-id",
        AcpiError::SdtInvalidChecksum(_) => "bad-checksum",
        _ => "invalid",
    };
    AcpiProblem::new(signature, what)
}

/// Reads the ACPI tables from the RSDP at `rsdp`. `Err` when the RSDP or the root table is
/// unusable (then nothing from ACPI can be trusted); problems with single tables are collected
/// in [`AcpiFindings::problems`] and those tables are left out.
///
/// # Safety
/// Physical memory is identity-mapped, and `rsdp` and the tables it leads to are readable (as
/// firmware leaves them: the address came from the UEFI configuration table).
pub unsafe fn read(rsdp: u64) -> Result<AcpiFindings, AcpiProblem> {
    if rsdp == 0 {
        return Err(AcpiProblem::new(*b"RSDP", "null"));
    }
    let handler = IdentityHandler;
    // SAFETY: identity mapping, and `rsdp` is readable (caller).
    let rsdp_map = unsafe { handler.map_physical_region::<Rsdp>(rsdp as usize, size_of::<Rsdp>()) };
    // `Rsdp::validate` checksums `length` bytes for revision 2+: bound it first.
    if rsdp_map.revision() > 0 && !(RSDP_V2_LEN..=4096).contains(&rsdp_map.length()) {
        return Err(AcpiProblem::new(*b"RSDP", "bad-length"));
    }
    rsdp_map.validate().map_err(rsdp_problem)?;
    let revision = rsdp_map.revision();
    let mut oem_id = [0u8; 6];
    oem_id.copy_from_slice(rsdp_map.oem_id().as_bytes());
    let (root_sig, root, entry_size) = if revision == 0 {
        (*b"RSDT", rsdp_map.rsdt_address() as u64, 4)
    } else {
        (*b"XSDT", rsdp_map.xsdt_address(), 8)
    };
    drop(rsdp_map);

    // The root table: checked here so that the crate's walk over it stays in bounds.
    if root == 0 {
        return Err(AcpiProblem::new(root_sig, "null"));
    }
    // SAFETY: the header of the root table is readable (caller).
    let root_len = u32_at(unsafe { raw(root, SDT_HEADER_LEN) }, 4);
    if (root_len as usize) < SDT_HEADER_LEN || root_len > MAX_TABLE_LEN {
        return Err(AcpiProblem::new(root_sig, "bad-length"));
    }
    // SAFETY: as above, now with the bounded length.
    let root_bytes = unsafe { raw(root, root_len as usize) };
    let mut tables = Vec::new();
    for (i, entry) in root_bytes[SDT_HEADER_LEN..]
        .chunks_exact(entry_size)
        .enumerate()
    {
        let mut a = [0u8; 8];
        a[..entry_size].copy_from_slice(entry);
        let address = u64::from_le_bytes(a);
        if address == 0 {
            return Err(AcpiProblem::at(
                root_sig,
                "null-entry",
                SDT_HEADER_LEN + i * entry_size,
            ));
        }
        // SAFETY: every table the root table lists has a readable header (caller).
        let header = unsafe { raw(address, SDT_HEADER_LEN) };
        let mut signature = [0u8; 4];
        signature.copy_from_slice(&header[0..4]);
        tables.push(TableRef {
            signature,
            address,
            length: u32_at(header, 4),
        });
    }
    // SAFETY: root checked above; the crate validates its signature and checksum.
    let acpi = unsafe { AcpiTables::from_rsdt(handler, revision, root as usize) }
        .map_err(|e| root_problem(root_sig, e))?;

    let mut found = AcpiFindings {
        revision,
        oem_id,
        tables: tables.iter().map(|t| t.signature).collect(),
        ..AcpiFindings::default()
    };

    if let Some(bytes) =
        // SAFETY: `tables` lists the tables of the root table, which `read`'s caller guarantees
        // are identity-mapped and readable.
        unsafe { checked_table(&tables, *b"APIC", MADT_FIXED_LEN, &mut found.problems) }
    {
        match check_madt_entries(bytes) {
            Ok(()) => found.madt = read_madt(&acpi),
            Err(p) => found.problems.push(p),
        }
    }
    // SAFETY: as for the MADT: the tables listed in the root table are readable (`read`'s caller).
    if unsafe { checked_table(&tables, *b"MCFG", MCFG_FIXED_LEN, &mut found.problems) }.is_some() {
        found.mcfg = read_mcfg(&acpi);
    }
    // DMAR: its own parser checks the checksum and everything else; only bound the length.
    if let Some(t) = tables.iter().find(|t| &t.signature == b"DMAR") {
        if t.length <= MAX_TABLE_LEN {
            // SAFETY: listed table, bounded length.
            found.dmar = Some(unsafe { raw(t.address, t.length as usize) }.to_vec());
        } else {
            found
                .problems
                .push(AcpiProblem::new(*b"DMAR", "bad-length"));
        }
    }
    Ok(found)
}

/// The bytes of the table `signature` when every table with that signature has a sane length and
/// checksum (the crate picks the first that validates, so all must be safe to hand to it).
///
/// # Safety
/// The tables in `tables` are readable.
unsafe fn checked_table<'a>(
    tables: &[TableRef],
    signature: [u8; 4],
    min_len: usize,
    problems: &mut Vec<AcpiProblem>,
) -> Option<&'a [u8]> {
    let mut first = None;
    for t in tables.iter().filter(|t| t.signature == signature) {
        if (t.length as usize) < min_len || t.length > MAX_TABLE_LEN {
            problems.push(AcpiProblem::new(signature, "bad-length"));
            return None;
        }
        // SAFETY: caller; the length is bounded.
        let bytes = unsafe { raw(t.address, t.length as usize) };
        if !checksum_ok(bytes) {
            problems.push(AcpiProblem::new(signature, "bad-checksum"));
            return None;
        }
        first.get_or_insert(bytes);
    }
    first
}

/// Minimum length of each MADT entry type the crate turns into a reference (ACPI 5.2.12.x).
fn madt_entry_min_len(entry_type: u8) -> usize {
    match entry_type {
        0x0 => size_of::<madt::LocalApicEntry>(),
        0x1 => size_of::<madt::IoApicEntry>(),
        0x2 => size_of::<madt::InterruptSourceOverrideEntry>(),
        0x3 => size_of::<madt::NmiSourceEntry>(),
        0x4 => size_of::<madt::LocalApicNmiEntry>(),
        0x5 => size_of::<madt::LocalApicAddressOverrideEntry>(),
        0x6 => size_of::<madt::IoSapicEntry>(),
        0x7 => size_of::<madt::LocalSapicEntry>(),
        0x8 => size_of::<madt::PlatformInterruptSourceEntry>(),
        0x9 => size_of::<madt::LocalX2ApicEntry>(),
        0xa => size_of::<madt::X2ApicNmiEntry>(),
        0xb => size_of::<madt::GiccEntry>(),
        0xc => size_of::<madt::GicdEntry>(),
        0xd => size_of::<madt::GicMsiFrameEntry>(),
        0xe => size_of::<madt::GicRedistributorEntry>(),
        0xf => size_of::<madt::GicInterruptTranslationServiceEntry>(),
        0x10 => size_of::<madt::MultiprocessorWakeupEntry>(),
        _ => 2,
    }
}

/// Walks the MADT's entry chain (each entry: Type, Length, ...) and checks that every entry is at
/// least as long as its type's structure and ends inside the table.
fn check_madt_entries(table: &[u8]) -> Result<(), AcpiProblem> {
    let mut at = MADT_FIXED_LEN;
    while at < table.len() {
        if table.len() - at < 2 {
            return Err(AcpiProblem::at(*b"APIC", "entry-truncated", at));
        }
        let (entry_type, len) = (table[at], table[at + 1] as usize);
        if len == 0 {
            return Err(AcpiProblem::at(*b"APIC", "entry-length-zero", at + 1));
        }
        if len < madt_entry_min_len(entry_type) {
            return Err(AcpiProblem::at(*b"APIC", "entry-too-short", at + 1));
        }
        if len > table.len() - at {
            return Err(AcpiProblem::at(*b"APIC", "entry-beyond-table", at + 1));
        }
        at += len;
    }
    Ok(())
}

fn read_madt(acpi: &AcpiTables<IdentityHandler>) -> Option<MadtInfo> {
    let mapping = acpi.find_table::<Madt>().ok()?;
    let madt = mapping.get();
    let mut info = MadtInfo {
        lapic_base: { madt.local_apic_address } as u64,
        pcat_compat: madt.supports_8259(),
        ..MadtInfo::default()
    };
    for entry in madt.entries() {
        match entry {
            MadtEntry::LocalApic(e) => info.cpus.push(LocalApic {
                apic_id: e.apic_id as u32,
                processor_uid: e.processor_id as u32,
                enabled: { e.flags } & 1 != 0,
                online_capable: { e.flags } & 2 != 0,
            }),
            MadtEntry::LocalX2Apic(e) => info.cpus.push(LocalApic {
                apic_id: e.x2apic_id,
                processor_uid: e.processor_uid,
                enabled: { e.flags } & 1 != 0,
                online_capable: { e.flags } & 2 != 0,
            }),
            MadtEntry::IoApic(e) => info.ioapics.push(IoApic {
                id: e.io_apic_id,
                address: { e.io_apic_address } as u64,
                gsi_base: e.global_system_interrupt_base,
                version: None,
                source: IoApicSource::Madt,
            }),
            MadtEntry::InterruptSourceOverride(e) => {
                let (polarity, trigger) = inti_flags(e.flags);
                info.overrides.push(IrqOverride {
                    bus: e.bus,
                    bus_irq: e.irq,
                    gsi: e.global_system_interrupt,
                    polarity,
                    trigger,
                });
            }
            MadtEntry::NmiSource(e) => {
                let (polarity, trigger) = inti_flags(e.flags);
                info.nmi_sources.push(NmiSource {
                    gsi: e.global_system_interrupt,
                    polarity,
                    trigger,
                });
            }
            MadtEntry::LocalApicNmi(e) => {
                let (polarity, trigger) = inti_flags(e.flags);
                let uid = if e.processor_id == 0xff {
                    u32::MAX
                } else {
                    e.processor_id as u32
                };
                info.lapic_nmis.push(LapicNmi {
                    processor_uid: uid,
                    lint: e.nmi_line,
                    polarity,
                    trigger,
                });
            }
            MadtEntry::X2ApicNmi(e) => {
                let (polarity, trigger) = inti_flags(e.flags);
                info.lapic_nmis.push(LapicNmi {
                    processor_uid: e.processor_uid,
                    lint: e.nmi_line,
                    polarity,
                    trigger,
                });
            }
            MadtEntry::LocalApicAddressOverride(e) => info.lapic_base = e.local_apic_address,
            _ => {}
        }
    }
    Some(info)
}

fn read_mcfg(acpi: &AcpiTables<IdentityHandler>) -> Option<Vec<McfgRegion>> {
    let mapping = acpi.find_table::<Mcfg>().ok()?;
    Some(
        mapping
            .entries()
            .iter()
            .map(|e| McfgRegion {
                segment: e.pci_segment_group,
                base: e.base_address,
                bus_start: e.bus_number_start,
                bus_end: e.bus_number_end,
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn madt_entry_chain() {
        let mut t = alloc::vec![0u8; MADT_FIXED_LEN];
        t.extend_from_slice(&[0, 8, 0, 0, 1, 0, 0, 0]); // LAPIC
        assert!(check_madt_entries(&t).is_ok());
        let mut zero = t.clone();
        zero.extend_from_slice(&[0x7f, 0]);
        assert_eq!(
            check_madt_entries(&zero).unwrap_err().to_string(),
            "apic-entry-length-zero@0x35"
        );
        let mut short = t.clone();
        short.extend_from_slice(&[1, 6, 0, 0, 0, 0]); // IOAPIC needs 12
        assert_eq!(
            check_madt_entries(&short).unwrap_err().what,
            "entry-too-short"
        );
        let mut past = t.clone();
        past.extend_from_slice(&[0x80, 9, 0, 0]);
        assert_eq!(
            check_madt_entries(&past).unwrap_err().what,
            "entry-beyond-table"
        );
        let mut odd = t.clone();
        odd.push(0);
        assert_eq!(
            check_madt_entries(&odd).unwrap_err().what,
            "entry-truncated"
        );
        // Struct sizes the checks rely on (ACPI 5.2.12.2-5.2.12.12).
        assert_eq!(madt_entry_min_len(0), 8);
        assert_eq!(madt_entry_min_len(1), 12);
        assert_eq!(madt_entry_min_len(2), 10);
        assert_eq!(madt_entry_min_len(9), 16);
    }

    use alloc::string::ToString;
}
