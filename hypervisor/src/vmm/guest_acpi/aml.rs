//! A small AML encoder (ACPI 6.5 chapter 20, "ACPI Machine Language Specification"): just the
//! terms a static DSDT needs (names, integers, strings, buffers, packages, scopes, devices) and the
//! resource descriptors of a `_CRS` (ACPI 6.4). Each function returns the term's encoding; callers
//! concatenate them into term lists.
//!
//! Names are `&'static str` literals of this module's callers, so a malformed name is a bug here,
//! not a guest's or a configuration's: it panics (and the host tests build every name used).

use alloc::vec::Vec;

const ZERO_OP: u8 = 0x00;
const ONE_OP: u8 = 0x01;
const NAME_OP: u8 = 0x08;
const BYTE_PREFIX: u8 = 0x0A;
const WORD_PREFIX: u8 = 0x0B;
const DWORD_PREFIX: u8 = 0x0C;
const STRING_PREFIX: u8 = 0x0D;
const QWORD_PREFIX: u8 = 0x0E;
const SCOPE_OP: u8 = 0x10;
const BUFFER_OP: u8 = 0x11;
const PACKAGE_OP: u8 = 0x12;
const DUAL_NAME_PREFIX: u8 = 0x2E;
const MULTI_NAME_PREFIX: u8 = 0x2F;
const EXT_OP_PREFIX: u8 = 0x5B;
const DEVICE_OP: u8 = 0x82;
const ROOT_CHAR: u8 = b'\\';
const ONES_OP: u8 = 0xFF;

/// The PkgLength encoding of `value` (20.2.4): one byte up to 63, else a lead byte holding the
/// count of following bytes (bits 7:6) and the low nibble, then the rest 8 bits at a time.
pub fn pkg_length(value: usize) -> Vec<u8> {
    assert!(value < 1 << 28, "PkgLength {value:#x} exceeds 28 bits");
    if value < 1 << 6 {
        return [value as u8].to_vec();
    }
    let following = if value < 1 << 12 {
        1
    } else if value < 1 << 20 {
        2
    } else {
        3
    };
    let mut out = Vec::with_capacity(following + 1);
    out.push(((following as u8) << 6) | (value & 0xF) as u8);
    for i in 0..following {
        out.push((value >> (4 + 8 * i)) as u8);
    }
    out
}

/// `contents` preceded by its PkgLength, which counts itself too (20.2.4).
fn with_pkg_length(contents: &[u8]) -> Vec<u8> {
    let mut length_bytes = 1;
    while pkg_length(contents.len() + length_bytes).len() != length_bytes {
        length_bytes += 1;
    }
    let mut out = pkg_length(contents.len() + length_bytes);
    out.extend_from_slice(contents);
    out
}

/// A NameSeg (20.2.2): a lead character `A-Z` or `_`, then up to three of `A-Z`, `0-9`, `_`,
/// padded with `_` to four.
fn name_seg(seg: &str) -> [u8; 4] {
    let bytes = seg.as_bytes();
    let valid = (1..=4).contains(&bytes.len())
        && (bytes[0].is_ascii_uppercase() || bytes[0] == b'_')
        && bytes
            .iter()
            .all(|&b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
    assert!(valid, "bad AML NameSeg {seg:?}");
    let mut out = [b'_'; 4];
    out[..bytes.len()].copy_from_slice(bytes);
    out
}

/// A NameString (20.2.2): an optional root prefix `\`, then dot-separated NameSegs as one seg, a
/// DualNamePath or a MultiNamePath.
pub fn name_string(path: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let relative = match path.strip_prefix('\\') {
        Some(rest) => {
            out.push(ROOT_CHAR);
            rest
        }
        None => path,
    };
    let segs: Vec<[u8; 4]> = relative.split('.').map(name_seg).collect();
    match segs.len() {
        1 => {}
        2 => out.push(DUAL_NAME_PREFIX),
        n => {
            assert!(n <= 255, "AML name path of {n} segments");
            out.push(MULTI_NAME_PREFIX);
            out.push(n as u8);
        }
    }
    for seg in segs {
        out.extend_from_slice(&seg);
    }
    out
}

/// An integer in its shortest encoding (20.2.3): ZeroOp, OneOp, OnesOp (all ones: the DSDT is
/// revision 2, so integers are 64-bit), or a Byte/Word/DWord/QWord constant.
pub fn integer(value: u64) -> Vec<u8> {
    match value {
        0 => [ZERO_OP].to_vec(),
        1 => [ONE_OP].to_vec(),
        u64::MAX => [ONES_OP].to_vec(),
        v if v <= 0xFF => [BYTE_PREFIX, v as u8].to_vec(),
        v if v <= 0xFFFF => prefixed(WORD_PREFIX, &(v as u16).to_le_bytes()),
        v if v <= 0xFFFF_FFFF => prefixed(DWORD_PREFIX, &(v as u32).to_le_bytes()),
        v => prefixed(QWORD_PREFIX, &v.to_le_bytes()),
    }
}

fn prefixed(prefix: u8, bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() + 1);
    out.push(prefix);
    out.extend_from_slice(bytes);
    out
}

/// A String (20.2.3): ASCII 0x01-0x7F, NUL-terminated.
pub fn string(s: &str) -> Vec<u8> {
    assert!(
        s.bytes().all(|b| (0x01..=0x7F).contains(&b)),
        "AML strings are ASCII without NUL"
    );
    let mut out = prefixed(STRING_PREFIX, s.as_bytes());
    out.push(0);
    out
}

/// The 32-bit compressed EISA ID of a PNP ID such as `PNP0A03` (ASL `EISAID()`, 19.6.35): three
/// letters of 5 bits each (`A` = 1) and four hex digits, stored most significant byte first.
pub fn eisa_id_value(id: &str) -> u32 {
    let b = id.as_bytes();
    assert!(
        b.len() == 7
            && b[..3].iter().all(u8::is_ascii_uppercase)
            && b[3..]
                .iter()
                .all(|c| c.is_ascii_digit() || (b'A'..=b'F').contains(c)),
        "bad EISA ID {id:?}"
    );
    let letters = b[..3]
        .iter()
        .fold(0u32, |acc, &c| (acc << 5) | u32::from(c - b'@'));
    let digits = u32::from_str_radix(&id[3..], 16).unwrap_or(0);
    ((letters << 16) | digits).swap_bytes()
}

/// `EISAID(id)` as an integer term.
pub fn eisa_id(id: &str) -> Vec<u8> {
    integer(u64::from(eisa_id_value(id)))
}

/// DefBuffer (20.2.5.4): BufferOp PkgLength BufferSize ByteList.
pub fn buffer(bytes: &[u8]) -> Vec<u8> {
    let mut contents = integer(bytes.len() as u64);
    contents.extend_from_slice(bytes);
    prefixed(BUFFER_OP, &with_pkg_length(&contents))
}

/// DefPackage (20.2.5.4): PackageOp PkgLength NumElements PackageElementList. NumElements is one
/// byte: the packages here (at most 128 `_PRT` entries) stay below 256 elements.
pub fn package(elements: &[Vec<u8>]) -> Vec<u8> {
    assert!(
        elements.len() <= 255,
        "AML Package of {} elements",
        elements.len()
    );
    let mut contents = [elements.len() as u8].to_vec();
    for e in elements {
        contents.extend_from_slice(e);
    }
    prefixed(PACKAGE_OP, &with_pkg_length(&contents))
}

/// DefName (20.2.5.1): NameOp NameString DataRefObject.
pub fn name(path: &str, object: &[u8]) -> Vec<u8> {
    let mut out = prefixed(NAME_OP, &name_string(path));
    out.extend_from_slice(object);
    out
}

/// DefScope (20.2.5.1): ScopeOp PkgLength NameString TermList.
pub fn scope(path: &str, terms: &[Vec<u8>]) -> Vec<u8> {
    prefixed(SCOPE_OP, &named_term_list(path, terms))
}

/// DefDevice (20.2.5.2): ExtOpPrefix DeviceOp PkgLength NameString TermList.
pub fn device(path: &str, terms: &[Vec<u8>]) -> Vec<u8> {
    let mut out = [EXT_OP_PREFIX, DEVICE_OP].to_vec();
    out.extend_from_slice(&named_term_list(path, terms));
    out
}

fn named_term_list(path: &str, terms: &[Vec<u8>]) -> Vec<u8> {
    let mut contents = name_string(path);
    for t in terms {
        contents.extend_from_slice(t);
    }
    with_pkg_length(&contents)
}

/// Resource data descriptors (ACPI 6.4) for `ResourceTemplate()` buffers.
pub mod resource {
    use super::buffer;
    use alloc::vec::Vec;

    /// Address space descriptors' Resource Type (6.4.3.5, byte 3).
    const MEMORY_RANGE: u8 = 0;
    const IO_RANGE: u8 = 1;
    const BUS_NUMBER_RANGE: u8 = 2;
    /// General flags (6.4.3.5.1, byte 4): min and max fixed (_MIF, _MAF), positive decode, and
    /// bit 0 clear: the bridge produces the range for the devices below it.
    const PRODUCER_FIXED: u8 = 0b1100;
    /// I/O type-specific flags (6.4.3.5.4): _RNG = 3, both ISA and non-ISA ranges.
    const IO_ENTIRE_RANGE: u8 = 0b11;
    /// Memory type-specific flags (6.4.3.5.4): read-write, non-cacheable (a prefetchable window
    /// would refuse non-prefetchable BARs), memory type AddressRangeMemory.
    const MEMORY_READ_WRITE: u8 = 0b1;

    /// `IO(Decode16, min, max, align, len)` (6.4.2.5, I/O Port Descriptor).
    pub fn io(min: u16, max: u16, align: u8, len: u8) -> Vec<u8> {
        let mut d = [0x47, 0x01].to_vec();
        d.extend_from_slice(&min.to_le_bytes());
        d.extend_from_slice(&max.to_le_bytes());
        d.extend_from_slice(&[align, len]);
        d
    }

    /// `IRQ(Edge, ActiveHigh, Exclusive) {irq}` (6.4.2.1, IRQ Descriptor with its flags byte:
    /// bit 0 _HE edge, bit 3 _LL clear = active high, bit 4 _SHR clear = exclusive).
    pub fn irq_edge_high_exclusive(irq: u8) -> Vec<u8> {
        assert!(irq < 16, "an IRQ descriptor names ISA IRQs 0-15");
        let mut d = [0x23].to_vec();
        d.extend_from_slice(&(1u16 << irq).to_le_bytes());
        d.push(0x01);
        d
    }

    /// Word Address Space Descriptor (6.4.3.5.3): granularity 0, no translation.
    fn word_space(resource_type: u8, type_flags: u8, min: u16, max: u16) -> Vec<u8> {
        let len = u16::try_from(u32::from(max) + 1 - u32::from(min));
        let len = len.expect("a Word address range is at most 0xFFFF long");
        let mut d = [0x88, 0x0D, 0x00, resource_type, PRODUCER_FIXED, type_flags].to_vec();
        for v in [0, min, max, 0, len] {
            d.extend_from_slice(&v.to_le_bytes());
        }
        d
    }

    /// `WordBusNumber(ResourceProducer, MinFixed, MaxFixed, PosDecode, 0, min, max, 0, len)`.
    pub fn word_bus_number(min: u8, max: u8) -> Vec<u8> {
        word_space(BUS_NUMBER_RANGE, 0, min.into(), max.into())
    }

    /// `WordIO(ResourceProducer, MinFixed, MaxFixed, PosDecode, EntireRange, 0, min, max, 0, len)`.
    pub fn word_io(min: u16, max: u16) -> Vec<u8> {
        word_space(IO_RANGE, IO_ENTIRE_RANGE, min, max)
    }

    /// `DWordMemory(ResourceProducer, PosDecode, MinFixed, MaxFixed, NonCacheable, ReadWrite, 0,
    /// min, max, 0, len)` (6.4.3.5.2).
    pub fn dword_memory(min: u32, max: u32) -> Vec<u8> {
        let len = u32::try_from(u64::from(max) + 1 - u64::from(min));
        let len = len.expect("a DWord address range is at most 0xFFFF_FFFF long");
        let mut d = [
            0x87,
            0x17,
            0x00,
            MEMORY_RANGE,
            PRODUCER_FIXED,
            MEMORY_READ_WRITE,
        ]
        .to_vec();
        for v in [0, min, max, 0, len] {
            d.extend_from_slice(&v.to_le_bytes());
        }
        d
    }

    /// `QWordMemory(...)`, as [`dword_memory`] with 64-bit fields (6.4.3.5.1).
    pub fn qword_memory(min: u64, max: u64) -> Vec<u8> {
        let len = (max - min).checked_add(1);
        let len = len.expect("a QWord address range is shorter than 2^64");
        let mut d = [
            0x8A,
            0x2B,
            0x00,
            MEMORY_RANGE,
            PRODUCER_FIXED,
            MEMORY_READ_WRITE,
        ]
        .to_vec();
        for v in [0, min, max, 0, len] {
            d.extend_from_slice(&v.to_le_bytes());
        }
        d
    }

    /// `ResourceTemplate() { descriptors }`: a Buffer of the descriptors and an End Tag (6.4.2.9)
    /// whose checksum byte makes the whole template sum to zero.
    pub fn template(descriptors: &[Vec<u8>]) -> Vec<u8> {
        let mut bytes: Vec<u8> = descriptors.concat();
        bytes.push(0x79);
        let sum = bytes.iter().fold(0u8, |s, &b| s.wrapping_add(b));
        bytes.push(0u8.wrapping_sub(sum));
        buffer(&bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::resource::*;
    use super::*;

    #[test]
    fn pkg_length_uses_one_to_four_bytes_at_the_spec_boundaries() {
        assert_eq!(pkg_length(0x3F), [0x3F]);
        assert_eq!(pkg_length(0x40), [0x40, 0x04]);
        assert_eq!(pkg_length(0xFFF), [0x4F, 0xFF]);
        assert_eq!(pkg_length(0x1000), [0x80, 0x00, 0x01]);
        assert_eq!(pkg_length(0xF_FFFF), [0x8F, 0xFF, 0xFF]);
        assert_eq!(pkg_length(0x10_0000), [0xC0, 0x00, 0x00, 0x01]);
        assert_eq!(pkg_length(0xFFF_FFFF), [0xCF, 0xFF, 0xFF, 0xFF]);
    }

    #[test]
    fn a_pkg_length_counts_its_own_bytes() {
        // 62 bytes + 1 length byte = 63: still one byte. 63 bytes need two: 65.
        assert_eq!(with_pkg_length(&[0; 62])[..1], [0x3F]);
        assert_eq!(with_pkg_length(&[0; 63])[..2], [0x41, 0x04]);
        assert_eq!(with_pkg_length(&[0; 64])[..2], [0x42, 0x04]);
        // 4093 + 2 = 4095 is the last two-byte length; 4094 bytes need three: 4097.
        assert_eq!(with_pkg_length(&[0; 4093])[..2], [0x4F, 0xFF]);
        assert_eq!(with_pkg_length(&[0; 4094])[..3], [0x81, 0x00, 0x01]);
        assert_eq!(with_pkg_length(&[0; 4096])[..3], [0x83, 0x00, 0x01]);
        assert_eq!(with_pkg_length(&[0; 4096]).len(), 4099);
    }

    #[test]
    fn integers_take_the_shortest_prefix() {
        assert_eq!(integer(0), [0x00]);
        assert_eq!(integer(1), [0x01]);
        assert_eq!(integer(2), [0x0A, 0x02]);
        assert_eq!(integer(0xFF), [0x0A, 0xFF]);
        assert_eq!(integer(0x100), [0x0B, 0x00, 0x01]);
        assert_eq!(integer(0x2_FFFF), [0x0C, 0xFF, 0xFF, 0x02, 0x00]);
        assert_eq!(
            integer(0x1_0000_0000),
            [0x0E, 0, 0, 0, 0, 1, 0, 0, 0],
            "QWordConst"
        );
        assert_eq!(integer(u64::MAX), [0xFF]);
    }

    #[test]
    fn names_strings_and_eisa_ids_encode_as_iasl_does() {
        assert_eq!(name_string("_HID"), *b"_HID");
        assert_eq!(name_string("S5"), *b"S5__");
        assert_eq!(name_string("\\_S5"), *b"\\_S5_");
        assert_eq!(name_string("\\_SB.PCI0"), *b"\\\x2E_SB_PCI0");
        assert_eq!(name_string("\\_SB.PCI0.COM1"), *b"\\\x2F\x03_SB_PCI0COM1");
        assert_eq!(string("PNP0A03"), *b"\x0DPNP0A03\0");
        assert_eq!(eisa_id_value("PNP0A03"), 0x030A_D041);
        assert_eq!(eisa_id_value("PNP0A08"), 0x080A_D041);
        assert_eq!(eisa_id_value("PNP0501"), 0x0105_D041);
        assert_eq!(eisa_id("PNP0A03"), [0x0C, 0x41, 0xD0, 0x0A, 0x03]);
    }

    #[test]
    #[should_panic(expected = "bad AML NameSeg")]
    fn a_name_seg_may_not_start_with_a_digit() {
        name_string("0ABC");
    }

    #[test]
    fn named_objects_and_containers() {
        // Name (_UID, Zero)
        assert_eq!(name("_UID", &integer(0)), *b"\x08_UID\x00");
        // Package () { One, 0x05 }
        assert_eq!(
            package(&[integer(1), integer(5)]),
            [0x12, 0x05, 0x02, 0x01, 0x0A, 0x05]
        );
        // Buffer () { 0x79, 0x00 }: BufferSize is a ByteConst here.
        assert_eq!(buffer(&[0x79, 0x00]), [0x11, 0x05, 0x0A, 0x02, 0x79, 0x00]);
        // Device (COM1) { Name (_UID, Zero) }
        assert_eq!(
            device("COM1", &[name("_UID", &integer(0))]),
            *b"\x5B\x82\x0BCOM1\x08_UID\x00"
        );
        // Scope (\_SB) {}
        assert_eq!(scope("\\_SB", &[]), *b"\x10\x06\\_SB_");
    }

    #[test]
    fn resource_descriptors_match_their_spec_layouts() {
        assert_eq!(
            io(0x3F8, 0x3F8, 1, 8),
            [0x47, 0x01, 0xF8, 0x03, 0xF8, 0x03, 0x01, 0x08]
        );
        assert_eq!(irq_edge_high_exclusive(4), [0x23, 0x10, 0x00, 0x01]);
        assert_eq!(
            word_bus_number(0, 0xFF),
            [0x88, 0x0D, 0x00, 0x02, 0x0C, 0x00, 0, 0, 0, 0, 0xFF, 0, 0, 0, 0x00, 0x01]
        );
        assert_eq!(
            word_io(0xD00, 0xFFFF),
            [0x88, 0x0D, 0x00, 0x01, 0x0C, 0x03, 0, 0, 0x00, 0x0D, 0xFF, 0xFF, 0, 0, 0x00, 0xF3]
        );
        let d = dword_memory(0x8000_0000, 0xFEBF_FFFF);
        assert_eq!(d.len(), 3 + 0x17);
        assert_eq!(d[..6], [0x87, 0x17, 0x00, 0x00, 0x0C, 0x01]);
        assert_eq!(d[10..14], 0x8000_0000u32.to_le_bytes(), "_MIN");
        assert_eq!(d[14..18], 0xFEBF_FFFFu32.to_le_bytes(), "_MAX");
        assert_eq!(d[22..26], 0x7EC0_0000u32.to_le_bytes(), "_LEN");
        let q = qword_memory(0x40_0000_0000, 0x7F_FFFF_FFFF);
        assert_eq!(q.len(), 3 + 0x2B);
        assert_eq!(q[..6], [0x8A, 0x2B, 0x00, 0x00, 0x0C, 0x01]);
        assert_eq!(q[38..46], 0x40_0000_0000u64.to_le_bytes(), "_LEN");
    }

    #[test]
    fn a_resource_template_ends_with_a_checksummed_end_tag() {
        let t = template(&[io(0x3F8, 0x3F8, 1, 8)]);
        assert_eq!(t[..3], [0x11, 0x0D, 0x0A]);
        assert_eq!(t[3], 10, "BufferSize: 8 + end tag");
        assert_eq!(t[12], 0x79);
        assert_eq!(t[4..].iter().fold(0u8, |s, &b| s.wrapping_add(b)), 0);
    }
}
