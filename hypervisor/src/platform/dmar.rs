//! The ACPI DMA Remapping table (DMAR), Intel VT-d specification section 8.
//!
//! Parsed from its raw bytes into owned data. Every length is checked before it is used, so a
//! malformed table gives a [`DmarError`] naming the byte offset and the fault, never a panic
//! or an endless loop.

use alloc::vec::Vec;
use bitflags::bitflags;
use core::fmt;

/// Standard ACPI header (36 bytes) + Host Address Width (1) + Flags (1) + Reserved (10), VT-d 8.1.
pub const DMAR_HEADER_LEN: usize = 48;
const ACPI_HEADER_LEN: usize = 36;
/// Type (2) + Length (2) common to every remapping structure (VT-d 8.2).
const STRUCTURE_HEADER_LEN: usize = 4;
/// Type, Length, Flags, Reserved, Enumeration ID, Start Bus Number (VT-d 8.3.1).
const SCOPE_HEADER_LEN: usize = 6;
/// DRHD fixed part: header, Flags, Size, Segment, Register Base Address (VT-d 8.3).
const DRHD_FIXED_LEN: usize = 16;
/// RMRR fixed part: header, Reserved, Segment, Base, Limit (VT-d 8.4).
const RMRR_FIXED_LEN: usize = 24;

bitflags! {
    /// DMAR Flags (VT-d 8.1).
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct DmarFlags: u8 {
        const INTR_REMAP = 1 << 0;
        const X2APIC_OPT_OUT = 1 << 1;
        const DMA_CTRL_PLATFORM_OPT_IN = 1 << 2;
    }
}

bitflags! {
    /// DRHD Flags (VT-d 8.3).
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct DrhdFlags: u8 {
        /// The unit covers every PCI device of its segment not claimed by another DRHD.
        const INCLUDE_PCI_ALL = 1 << 0;
    }
}

/// Remapping structure types (VT-d 8.2, Table 8-2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StructureKind {
    Drhd,
    Rmrr,
    Atsr,
    Rhsa,
    Andd,
    Satc,
    Unknown(u16),
}

impl StructureKind {
    fn from_type(t: u16) -> Self {
        match t {
            0 => Self::Drhd,
            1 => Self::Rmrr,
            2 => Self::Atsr,
            3 => Self::Rhsa,
            4 => Self::Andd,
            5 => Self::Satc,
            other => Self::Unknown(other),
        }
    }
}

/// Device scope types (VT-d 8.3.1, Table 8-4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScopeKind {
    PciEndpoint,
    PciSubHierarchy,
    IoApic,
    Hpet,
    AcpiNamespace,
    Reserved(u8),
}

impl ScopeKind {
    fn from_type(t: u8) -> Self {
        match t {
            1 => Self::PciEndpoint,
            2 => Self::PciSubHierarchy,
            3 => Self::IoApic,
            4 => Self::Hpet,
            5 => Self::AcpiNamespace,
            other => Self::Reserved(other),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::PciEndpoint => "pci",
            Self::PciSubHierarchy => "bridge",
            Self::IoApic => "ioapic",
            Self::Hpet => "hpet",
            Self::AcpiNamespace => "acpi",
            Self::Reserved(_) => "reserved",
        }
    }
}

/// One hop of a device-scope path: the device and function on the bus reached so far.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PathEntry {
    pub device: u8,
    pub function: u8,
}

/// A device scope (VT-d 8.3.1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceScope {
    pub kind: ScopeKind,
    pub flags: u8,
    /// IOAPIC id, HPET number or ACPI device number, depending on `kind`.
    pub enumeration_id: u8,
    pub start_bus: u8,
    pub path: Vec<PathEntry>,
}

/// Formats as `kind:enumeration_id:bus:dd.f[/dd.f...]`, e.g. `ioapic:0:ff:00.0`.
impl fmt::Display for DeviceScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{:02x}:",
            self.kind.as_str(),
            self.enumeration_id,
            self.start_bus
        )?;
        for (i, hop) in self.path.iter().enumerate() {
            let sep = if i == 0 { "" } else { "/" };
            write!(f, "{sep}{:02x}.{:x}", hop.device, hop.function)?;
        }
        Ok(())
    }
}

/// A DMA-remapping hardware unit definition (VT-d 8.3).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Drhd {
    pub flags: DrhdFlags,
    /// Size of the register set: 2^size 4 KiB pages (rev. 3.x; 0 in older tables means one page).
    pub size: u8,
    pub segment: u16,
    pub register_base: u64,
    pub scopes: Vec<DeviceScope>,
}

impl Drhd {
    pub fn include_pci_all(&self) -> bool {
        self.flags.contains(DrhdFlags::INCLUDE_PCI_ALL)
    }
}

/// A reserved memory region that devices in its scopes keep accessing (VT-d 8.4): it must stay
/// identity-mapped for them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rmrr {
    pub segment: u16,
    pub base: u64,
    /// Last byte of the region (inclusive).
    pub limit: u64,
    pub scopes: Vec<DeviceScope>,
}

/// A remapping structure that was recognised (or not) and skipped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SkippedStructure {
    pub kind: StructureKind,
    pub offset: usize,
    pub length: u16,
}

/// A parsed DMAR.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dmar {
    /// Maximum DMA physical address width, HAW + 1.
    pub host_address_width: u8,
    pub flags: DmarFlags,
    pub drhds: Vec<Drhd>,
    pub rmrrs: Vec<Rmrr>,
    /// ATSR, RHSA, ANDD, SATC and unknown structures, skipped by their length.
    pub skipped: Vec<SkippedStructure>,
}

/// What is wrong with a DMAR, and where.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DmarError {
    /// Byte offset in the table of the field or structure at fault.
    pub offset: usize,
    pub kind: DmarErrorKind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DmarErrorKind {
    /// Fewer bytes than the 48-byte DMAR header.
    HeaderTruncated,
    BadSignature,
    /// The header's Length field is below 48.
    LengthTooSmall,
    /// The header's Length field exceeds the bytes available.
    LengthBeyondData,
    /// The bytes of the table do not sum to 0 (ACPI 5.2.6).
    BadChecksum,
    /// Fewer than 4 bytes left for a structure header.
    StructureHeaderTruncated,
    /// A structure's Length is 0 or shorter than its fixed fields.
    StructureTooShort,
    /// A structure's Length runs past the end of the table.
    StructureBeyondTable,
    /// Fewer than 6 bytes left for a device scope header.
    ScopeHeaderTruncated,
    /// A device scope's Length is shorter than its 6-byte header.
    ScopeTooShort,
    /// A device scope's Length runs past the end of its structure.
    ScopeBeyondStructure,
    /// A device scope's path is not a whole number of (device, function) pairs.
    OddPathLength,
}

impl DmarErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::HeaderTruncated => "header-truncated",
            Self::BadSignature => "bad-signature",
            Self::LengthTooSmall => "length-too-small",
            Self::LengthBeyondData => "length-beyond-data",
            Self::BadChecksum => "bad-checksum",
            Self::StructureHeaderTruncated => "structure-header-truncated",
            Self::StructureTooShort => "structure-too-short",
            Self::StructureBeyondTable => "structure-beyond-table",
            Self::ScopeHeaderTruncated => "scope-header-truncated",
            Self::ScopeTooShort => "scope-too-short",
            Self::ScopeBeyondStructure => "scope-beyond-structure",
            Self::OddPathLength => "odd-path-length",
        }
    }
}

/// `dmar-<kind>@<offset>`, a single token for the boot summary.
impl fmt::Display for DmarError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "dmar-{}@{:#x}", self.kind.as_str(), self.offset)
    }
}

fn err(offset: usize, kind: DmarErrorKind) -> DmarError {
    DmarError { offset, kind }
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(v)
}

/// Parses a DMAR from its bytes (the table itself; trailing bytes beyond its Length are ignored).
pub fn parse(bytes: &[u8]) -> Result<Dmar, DmarError> {
    if bytes.len() < DMAR_HEADER_LEN {
        return Err(err(bytes.len(), DmarErrorKind::HeaderTruncated));
    }
    if &bytes[0..4] != b"DMAR" {
        return Err(err(0, DmarErrorKind::BadSignature));
    }
    let length = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]) as usize;
    if length < DMAR_HEADER_LEN {
        return Err(err(4, DmarErrorKind::LengthTooSmall));
    }
    if length > bytes.len() {
        return Err(err(4, DmarErrorKind::LengthBeyondData));
    }
    let table = &bytes[..length];
    if table.iter().fold(0u8, |s, b| s.wrapping_add(*b)) != 0 {
        return Err(err(9, DmarErrorKind::BadChecksum));
    }

    let mut dmar = Dmar {
        host_address_width: table[ACPI_HEADER_LEN].wrapping_add(1),
        flags: DmarFlags::from_bits_retain(table[ACPI_HEADER_LEN + 1]),
        drhds: Vec::new(),
        rmrrs: Vec::new(),
        skipped: Vec::new(),
    };

    let mut at = DMAR_HEADER_LEN;
    while at < length {
        if length - at < STRUCTURE_HEADER_LEN {
            return Err(err(at, DmarErrorKind::StructureHeaderTruncated));
        }
        let kind = StructureKind::from_type(u16_at(table, at));
        let len = u16_at(table, at + 2) as usize;
        let minimum = match kind {
            StructureKind::Drhd => DRHD_FIXED_LEN,
            StructureKind::Rmrr => RMRR_FIXED_LEN,
            _ => STRUCTURE_HEADER_LEN,
        };
        if len < minimum {
            return Err(err(at + 2, DmarErrorKind::StructureTooShort));
        }
        if len > length - at {
            return Err(err(at + 2, DmarErrorKind::StructureBeyondTable));
        }
        let s = &table[at..at + len];
        match kind {
            StructureKind::Drhd => dmar.drhds.push(Drhd {
                flags: DrhdFlags::from_bits_retain(s[4]),
                size: s[5],
                segment: u16_at(s, 6),
                register_base: u64_at(s, 8),
                scopes: parse_scopes(s, DRHD_FIXED_LEN, at)?,
            }),
            StructureKind::Rmrr => dmar.rmrrs.push(Rmrr {
                segment: u16_at(s, 6),
                base: u64_at(s, 8),
                limit: u64_at(s, 16),
                scopes: parse_scopes(s, RMRR_FIXED_LEN, at)?,
            }),
            other => dmar.skipped.push(SkippedStructure {
                kind: other,
                offset: at,
                length: len as u16,
            }),
        }
        at += len;
    }
    Ok(dmar)
}

/// Device scopes from `from` to the end of structure `s`, which starts at table offset `base`.
fn parse_scopes(s: &[u8], from: usize, base: usize) -> Result<Vec<DeviceScope>, DmarError> {
    let mut scopes = Vec::new();
    let mut at = from;
    while at < s.len() {
        if s.len() - at < SCOPE_HEADER_LEN {
            return Err(err(base + at, DmarErrorKind::ScopeHeaderTruncated));
        }
        let len = s[at + 1] as usize;
        if len < SCOPE_HEADER_LEN {
            return Err(err(base + at + 1, DmarErrorKind::ScopeTooShort));
        }
        if len > s.len() - at {
            return Err(err(base + at + 1, DmarErrorKind::ScopeBeyondStructure));
        }
        let path_bytes = &s[at + SCOPE_HEADER_LEN..at + len];
        if !path_bytes.len().is_multiple_of(2) {
            return Err(err(base + at + 1, DmarErrorKind::OddPathLength));
        }
        scopes.push(DeviceScope {
            kind: ScopeKind::from_type(s[at]),
            flags: s[at + 2],
            enumeration_id: s[at + 4],
            start_bus: s[at + 5],
            path: path_bytes
                .chunks_exact(2)
                .map(|p| PathEntry {
                    device: p[0],
                    function: p[1],
                })
                .collect(),
        });
        at += len;
    }
    Ok(scopes)
}

/// Builders for hand-made DMARs, shared with the platform discovery tests.
#[cfg(test)]
pub(crate) mod build {
    use alloc::vec::Vec;

    pub fn scope(kind: u8, enumeration_id: u8, start_bus: u8, path: &[(u8, u8)]) -> Vec<u8> {
        let mut v = alloc::vec![
            kind,
            (6 + 2 * path.len()) as u8,
            0,
            0,
            enumeration_id,
            start_bus
        ];
        for (d, f) in path {
            v.extend_from_slice(&[*d, *f]);
        }
        v
    }

    pub fn drhd(flags: u8, segment: u16, base: u64, scopes: &[Vec<u8>]) -> Vec<u8> {
        let body: Vec<u8> = scopes.concat();
        let mut v = Vec::new();
        v.extend_from_slice(&0u16.to_le_bytes());
        v.extend_from_slice(&((16 + body.len()) as u16).to_le_bytes());
        v.extend_from_slice(&[flags, 0]);
        v.extend_from_slice(&segment.to_le_bytes());
        v.extend_from_slice(&base.to_le_bytes());
        v.extend_from_slice(&body);
        v
    }

    pub fn rmrr(segment: u16, base: u64, limit: u64, scopes: &[Vec<u8>]) -> Vec<u8> {
        let body: Vec<u8> = scopes.concat();
        let mut v = Vec::new();
        v.extend_from_slice(&1u16.to_le_bytes());
        v.extend_from_slice(&((24 + body.len()) as u16).to_le_bytes());
        v.extend_from_slice(&[0, 0]);
        v.extend_from_slice(&segment.to_le_bytes());
        v.extend_from_slice(&base.to_le_bytes());
        v.extend_from_slice(&limit.to_le_bytes());
        v.extend_from_slice(&body);
        v
    }

    /// A complete table: ACPI header with the checksum fixed up, HAW, flags, structures.
    pub fn dmar(haw: u8, flags: u8, structures: &[Vec<u8>]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(b"DMAR");
        v.extend_from_slice(&0u32.to_le_bytes());
        v.extend_from_slice(&[1, 0]);
        v.extend_from_slice(b"BOCHS ");
        v.extend_from_slice(b"BXPC    ");
        v.extend_from_slice(&1u32.to_le_bytes());
        v.extend_from_slice(b"BXPC");
        v.extend_from_slice(&1u32.to_le_bytes());
        v.push(haw);
        v.push(flags);
        v.extend_from_slice(&[0; 10]);
        for s in structures {
            v.extend_from_slice(s);
        }
        let len = v.len() as u32;
        v[4..8].copy_from_slice(&len.to_le_bytes());
        fix_checksum(&mut v);
        v
    }

    /// Sets byte 9 so that the table sums to 0.
    pub fn fix_checksum(v: &mut [u8]) {
        v[9] = 0;
        let sum = v.iter().fold(0u8, |s, b| s.wrapping_add(*b));
        v[9] = 0u8.wrapping_sub(sum);
    }

    /// Like QEMU 7.2 q35 with `intel-iommu,intremap=on`: HAW 38 (39 bits), INTR_REMAP and
    /// X2APIC_OPT_OUT, one DRHD at 0xFED90000 with INCLUDE_PCI_ALL whose scope is the IOAPIC
    /// (id 0, bus 0xFF, 00.0), then an RMRR for a USB controller at 00:1d.0 (hand-made), an
    /// ATSR and a structure of an unknown type 0x40.
    pub fn qemu_like() -> Vec<u8> {
        let atsr = alloc::vec![2, 0, 8, 0, 0, 0, 0, 0];
        let unknown = alloc::vec![0x40, 0, 12, 0, 1, 2, 3, 4, 5, 6, 7, 8];
        dmar(
            38,
            0b011,
            &[
                drhd(1, 0, 0xfed9_0000, &[scope(3, 0, 0xff, &[(0, 0)])]),
                rmrr(0, 0x7f00_0000, 0x7f0f_ffff, &[scope(1, 0, 0, &[(0x1d, 0)])]),
                atsr,
                unknown,
            ],
        )
    }
}

#[cfg(test)]
mod tests {
    use super::build::*;
    use super::*;
    use alloc::string::ToString;
    use alloc::vec;

    #[test]
    fn qemu_like_table() {
        let t = qemu_like();
        let d = parse(&t).unwrap();
        assert_eq!(d.host_address_width, 39);
        assert_eq!(d.flags, DmarFlags::INTR_REMAP | DmarFlags::X2APIC_OPT_OUT);
        assert_eq!(d.drhds.len(), 1);
        let u = &d.drhds[0];
        assert!(u.include_pci_all());
        assert_eq!((u.segment, u.register_base, u.size), (0, 0xfed9_0000, 0));
        assert_eq!(
            u.scopes,
            vec![DeviceScope {
                kind: ScopeKind::IoApic,
                flags: 0,
                enumeration_id: 0,
                start_bus: 0xff,
                path: vec![PathEntry {
                    device: 0,
                    function: 0
                }],
            }]
        );
        assert_eq!(u.scopes[0].to_string(), "ioapic:0:ff:00.0");
        assert_eq!(d.rmrrs.len(), 1);
        let r = &d.rmrrs[0];
        assert_eq!((r.segment, r.base, r.limit), (0, 0x7f00_0000, 0x7f0f_ffff));
        assert_eq!(r.scopes[0].to_string(), "pci:0:00:1d.0");
        // Offsets: header 48, DRHD 24 bytes, RMRR 32 bytes -> ATSR at 104, unknown at 112.
        assert_eq!(
            d.skipped,
            vec![
                SkippedStructure {
                    kind: StructureKind::Atsr,
                    offset: 104,
                    length: 8
                },
                SkippedStructure {
                    kind: StructureKind::Unknown(0x40),
                    offset: 112,
                    length: 12
                },
            ]
        );
    }

    #[test]
    fn multi_hop_path_and_sub_hierarchy() {
        let t = dmar(
            45,
            0,
            &[drhd(
                0,
                1,
                0xfed9_1000,
                &[
                    scope(2, 0, 0x10, &[(0x1c, 4), (0, 0)]),
                    scope(4, 3, 0, &[(0x1f, 0)]),
                ],
            )],
        );
        let d = parse(&t).unwrap();
        assert_eq!(d.host_address_width, 46);
        assert!(!d.drhds[0].include_pci_all());
        assert_eq!(d.drhds[0].segment, 1);
        assert_eq!(d.drhds[0].scopes[0].to_string(), "bridge:0:10:1c.4/00.0");
        assert_eq!(d.drhds[0].scopes[1].to_string(), "hpet:3:00:1f.0");
    }

    #[test]
    fn bad_checksum() {
        let mut t = qemu_like();
        t[60] ^= 1;
        assert_eq!(
            parse(&t),
            Err(DmarError {
                offset: 9,
                kind: DmarErrorKind::BadChecksum
            })
        );
        assert_eq!(parse(&t).unwrap_err().to_string(), "dmar-bad-checksum@0x9");
    }

    #[test]
    fn truncated_header_and_lengths() {
        let t = qemu_like();
        assert_eq!(
            parse(&t[..47]).unwrap_err().kind,
            DmarErrorKind::HeaderTruncated
        );
        assert_eq!(
            parse(&t[..100]).unwrap_err(),
            DmarError {
                offset: 4,
                kind: DmarErrorKind::LengthBeyondData
            }
        );
        let mut short = t.clone();
        short[4..8].copy_from_slice(&40u32.to_le_bytes());
        fix_checksum(&mut short);
        assert_eq!(
            parse(&short).unwrap_err().kind,
            DmarErrorKind::LengthTooSmall
        );
        let mut sig = t.clone();
        sig[0] = b'X';
        assert_eq!(parse(&sig).unwrap_err().kind, DmarErrorKind::BadSignature);
        // Trailing bytes after Length are not part of the table.
        let mut longer = t.clone();
        longer.extend_from_slice(&[0xff; 7]);
        assert!(parse(&longer).is_ok());
    }

    #[test]
    fn structure_length_zero_is_an_error_not_a_loop() {
        let t = dmar(38, 0, &[vec![0x40, 0, 0, 0, 0, 0, 0, 0]]);
        assert_eq!(
            parse(&t),
            Err(DmarError {
                offset: 50,
                kind: DmarErrorKind::StructureTooShort
            })
        );
    }

    #[test]
    fn structure_shorter_than_its_fixed_part() {
        let mut s = drhd(1, 0, 0xfed9_0000, &[]);
        s[2] = 12;
        s.truncate(12);
        let t = dmar(38, 0, &[s]);
        assert_eq!(
            parse(&t).unwrap_err(),
            DmarError {
                offset: 50,
                kind: DmarErrorKind::StructureTooShort
            }
        );
    }

    #[test]
    fn structure_running_past_the_table() {
        let mut s = drhd(1, 0, 0xfed9_0000, &[scope(3, 0, 0xff, &[(0, 0)])]);
        s[2] += 8;
        let t = dmar(38, 0, &[s]);
        assert_eq!(
            parse(&t).unwrap_err(),
            DmarError {
                offset: 50,
                kind: DmarErrorKind::StructureBeyondTable
            }
        );
        // Three stray bytes after the last structure: not even a structure header.
        let t = dmar(38, 0, &[drhd(1, 0, 0xfed9_0000, &[]), vec![0, 0, 0]]);
        assert_eq!(
            parse(&t).unwrap_err(),
            DmarError {
                offset: 64,
                kind: DmarErrorKind::StructureHeaderTruncated
            }
        );
    }

    #[test]
    fn scope_shorter_than_its_header() {
        let mut sc = scope(3, 0, 0xff, &[(0, 0)]);
        sc[1] = 4;
        let t = dmar(38, 0, &[drhd(1, 0, 0xfed9_0000, &[sc])]);
        // Scope starts at 48 + 16 = 64; its Length byte is at 65.
        assert_eq!(
            parse(&t).unwrap_err(),
            DmarError {
                offset: 65,
                kind: DmarErrorKind::ScopeTooShort
            }
        );
        let mut sc = scope(3, 0, 0xff, &[(0, 0)]);
        sc[1] = 0;
        let t = dmar(38, 0, &[drhd(1, 0, 0xfed9_0000, &[sc])]);
        assert_eq!(parse(&t).unwrap_err().kind, DmarErrorKind::ScopeTooShort);
    }

    #[test]
    fn scope_errors() {
        // Path of 3 bytes: scope length 9.
        let mut sc = scope(1, 0, 0, &[(1, 0)]);
        sc.push(7);
        sc[1] = 9;
        let t = dmar(38, 0, &[drhd(0, 0, 0xfed9_0000, &[sc])]);
        assert_eq!(
            parse(&t).unwrap_err(),
            DmarError {
                offset: 65,
                kind: DmarErrorKind::OddPathLength
            }
        );
        // Scope claims 10 bytes but the structure ends after 8.
        let mut sc = scope(1, 0, 0, &[(1, 0)]);
        sc[1] = 10;
        let t = dmar(38, 0, &[drhd(0, 0, 0xfed9_0000, &[sc])]);
        assert_eq!(
            parse(&t).unwrap_err().kind,
            DmarErrorKind::ScopeBeyondStructure
        );
        // Four bytes left in the structure: less than a scope header.
        let t = dmar(38, 0, &[drhd(0, 0, 0xfed9_0000, &[vec![1, 6, 0, 0]])]);
        assert_eq!(
            parse(&t).unwrap_err().kind,
            DmarErrorKind::ScopeHeaderTruncated
        );
    }

    /// Every prefix of a valid table, with its Length and checksum made to agree (so parsing gets
    /// past the header), must give Ok or Err and never panic or hang.
    #[test]
    fn every_truncation_is_handled() {
        let t = qemu_like();
        for n in 0..=t.len() {
            let _ = parse(&t[..n]);
            if n >= DMAR_HEADER_LEN {
                let mut p = t[..n].to_vec();
                p[4..8].copy_from_slice(&(n as u32).to_le_bytes());
                fix_checksum(&mut p);
                let r = parse(&p);
                if n == t.len() {
                    assert!(r.is_ok());
                }
            }
        }
    }

    /// Pseudo-random byte corruption (fixed seed): no panics, whatever the bytes say.
    #[test]
    fn corrupted_bytes_never_panic() {
        let base = qemu_like();
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..20_000 {
            let mut t = base.clone();
            for _ in 0..(next() % 4 + 1) {
                let i = DMAR_HEADER_LEN + (next() as usize % (t.len() - DMAR_HEADER_LEN));
                t[i] = next() as u8;
            }
            fix_checksum(&mut t);
            let _ = parse(&t);
        }
    }
}
