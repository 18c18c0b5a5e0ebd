//! ELF64 executables for the loader and the hypervisor: validation and the PT_LOAD layout.
//!
//! Only what a loader without a relocator can start is accepted: a little-endian ELF64 `ET_EXEC`
//! image for x86-64 (static, not PIE) whose `PT_LOAD` segments lie inside an [`AddressWindow`],
//! lie inside the file, do not share a 4 KiB page with each other, and whose entry point is in an
//! executable segment. The header and program-header parsing is the `elf` crate's; the rules are ours
//! (System V gABI, "Program Header": `p_vaddr ≡ p_offset (mod p_align)`, `p_filesz <= p_memsz`).

use core::fmt;
use core::ops::Range;

use elf::abi::{EM_X86_64, ET_DYN, ET_EXEC, PF_R, PF_W, PF_X, PT_DYNAMIC, PT_INTERP, PT_LOAD};
use elf::endian::LittleEndian;
use elf::file::Class;
use elf::parse::ParseError;
use elf::ElfBytes;

/// The page size segments are mapped with.
pub const PAGE_SIZE: u64 = 4096;
/// Most `PT_LOAD` segments an image may have (text, rodata, data, plus room).
pub const MAX_SEGMENTS: usize = 16;

const fn page_floor(x: u64) -> u64 {
    x & !(PAGE_SIZE - 1)
}

/// Where an image's segments may lie, as virtual addresses (`last` inclusive, so the window can reach
/// the top of the address space).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AddressWindow {
    pub start: u64,
    pub last: u64,
}

impl AddressWindow {
    /// The canonical upper half (4-level paging, SDM Vol. 3A 4.5), where the hypervisor is linked.
    pub const UPPER_HALF: Self = Self {
        start: 0xffff_8000_0000_0000,
        last: u64::MAX,
    };

    /// The canonical lower half (guest images linked at low addresses).
    pub const LOWER_HALF: Self = Self {
        start: 0,
        last: 0x0000_7fff_ffff_ffff,
    };

    fn contains(&self, range: &Range<u64>) -> bool {
        range.start >= self.start && range.end - 1 <= self.last
    }
}

/// Access a segment asks for (`p_flags`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SegmentFlags {
    pub read: bool,
    pub write: bool,
    pub execute: bool,
}

/// One validated `PT_LOAD` segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Segment {
    pub vaddr: u64,
    /// Offset of the segment's bytes in the file.
    pub offset: u64,
    pub file_size: u64,
    pub mem_size: u64,
    pub flags: SegmentFlags,
}

impl Segment {
    /// `[vaddr, vaddr + mem_size)`.
    pub const fn range(&self) -> Range<u64> {
        self.vaddr..self.vaddr + self.mem_size
    }

    /// The 4 KiB pages the segment touches, as a page-aligned address range.
    pub const fn pages(&self) -> Range<u64> {
        page_floor(self.vaddr)..page_floor(self.vaddr + self.mem_size + PAGE_SIZE - 1)
    }
}

/// Why an image cannot be loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ElfError {
    /// The first bytes are not `\x7fELF`.
    NotElf,
    /// ELF32 (or an unknown class).
    Not64Bit,
    /// Big-endian.
    NotLittleEndian,
    /// A header or the program-header table reaches past the end of the file.
    Truncated,
    /// Anything else the header parser refused.
    MalformedHeader,
    WrongMachine(u16),
    /// `ET_DYN` (position independent): this loader does not relocate.
    PositionIndependent,
    /// Neither `ET_EXEC` nor `ET_DYN` (e.g. an object file).
    NotExecutable(u16),
    /// `PT_INTERP` or `PT_DYNAMIC`: the image wants a dynamic linker or relocations.
    NeedsDynamicLinking,
    NoLoadSegments,
    TooManySegments,
    /// Address arithmetic of segment `index` overflows or the segment is empty in memory.
    BadSegmentSize {
        index: usize,
    },
    FileSizeExceedsMemSize {
        index: usize,
    },
    /// `[p_offset, p_offset + p_filesz)` is not inside the file.
    SegmentPastFileEnd {
        index: usize,
    },
    /// `p_vaddr` and `p_offset` disagree modulo the page size or `p_align`, or `p_align` is not a power of two.
    Misaligned {
        index: usize,
    },
    OutsideWindow {
        index: usize,
        vaddr: u64,
    },
    /// Two segments touch the same 4 KiB page (their permissions could not both hold).
    Overlap {
        first: usize,
        second: usize,
    },
    EntryNotExecutable(u64),
}

impl fmt::Display for ElfError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::NotElf => write!(f, "not an ELF file (no \\x7fELF magic)"),
            Self::Not64Bit => write!(f, "not a 64-bit ELF (build for x86_64-unknown-none)"),
            Self::NotLittleEndian => write!(f, "big-endian ELF; x86-64 images are little-endian"),
            Self::Truncated => write!(f, "file is truncated: its headers reach past its end"),
            Self::MalformedHeader => write!(f, "malformed ELF header"),
            Self::WrongMachine(m) => write!(f, "built for ELF machine {m}, not x86-64 (62)"),
            Self::PositionIndependent => write!(f, "position-independent (ET_DYN) image: link it static with --no-pie"),
            Self::NotExecutable(t) => write!(f, "ELF type {t} is not an executable (ET_EXEC)"),
            Self::NeedsDynamicLinking => write!(f, "image has PT_INTERP/PT_DYNAMIC: link it static with --no-pie"),
            Self::NoLoadSegments => write!(f, "no PT_LOAD segments"),
            Self::TooManySegments => write!(f, "more than {MAX_SEGMENTS} PT_LOAD segments"),
            Self::BadSegmentSize { index } => write!(f, "segment {index}: size is zero or its end overflows"),
            Self::FileSizeExceedsMemSize { index } => write!(f, "segment {index}: p_filesz > p_memsz"),
            Self::SegmentPastFileEnd { index } => write!(f, "segment {index}: its bytes reach past the end of the file"),
            Self::Misaligned { index } => write!(f, "segment {index}: p_vaddr and p_offset are not congruent modulo the page size/p_align"),
            Self::OutsideWindow { index, vaddr } => write!(f, "segment {index} at {vaddr:#x} is outside the allowed address window"),
            Self::Overlap { first, second } => write!(f, "segments {first} and {second} share a 4 KiB page"),
            Self::EntryNotExecutable(e) => write!(f, "entry point {e:#x} is not inside an executable segment"),
        }
    }
}

impl From<ParseError> for ElfError {
    fn from(e: ParseError) -> Self {
        match e {
            ParseError::BadMagic(_) => Self::NotElf,
            ParseError::UnsupportedElfClass(_) => Self::Not64Bit,
            ParseError::UnsupportedElfEndianness(_) => Self::NotLittleEndian,
            ParseError::SliceReadError(_) | ParseError::BadOffset(_) => Self::Truncated,
            _ => Self::MalformedHeader,
        }
    }
}

/// A validated image: borrowed file bytes plus its loadable layout.
#[derive(Clone, Debug)]
pub struct ElfImage<'a> {
    data: &'a [u8],
    entry: u64,
    segments: [Segment; MAX_SEGMENTS],
    count: usize,
}

impl<'a> ElfImage<'a> {
    /// Parses and validates `data`; every segment must lie in `window`.
    pub fn parse(data: &'a [u8], window: AddressWindow) -> Result<Self, ElfError> {
        // EI_CLASS first: the crate would parse an ELF32 file and fail later with a vaguer error.
        if data.len() > 4 && data[..4] == *b"\x7fELF" && data[4] != 2 {
            return Err(ElfError::Not64Bit);
        }
        let file = ElfBytes::<LittleEndian>::minimal_parse(data)?;
        let ehdr = &file.ehdr;
        if ehdr.class != Class::ELF64 {
            return Err(ElfError::Not64Bit);
        }
        if ehdr.e_machine != EM_X86_64 {
            return Err(ElfError::WrongMachine(ehdr.e_machine));
        }
        match ehdr.e_type {
            ET_EXEC => {}
            ET_DYN => return Err(ElfError::PositionIndependent),
            other => return Err(ElfError::NotExecutable(other)),
        }
        let phdrs = file.segments().ok_or(ElfError::NoLoadSegments)?;

        let mut segments = [Segment::default(); MAX_SEGMENTS];
        let mut count = 0;
        for ph in phdrs.iter() {
            match ph.p_type {
                PT_INTERP | PT_DYNAMIC => return Err(ElfError::NeedsDynamicLinking),
                PT_LOAD => {}
                _ => continue,
            }
            let index = count;
            if index == MAX_SEGMENTS {
                return Err(ElfError::TooManySegments);
            }
            let end = ph.p_vaddr.checked_add(ph.p_memsz);
            if ph.p_memsz == 0 || end.and_then(|e| e.checked_add(PAGE_SIZE)).is_none() {
                return Err(ElfError::BadSegmentSize { index });
            }
            if ph.p_filesz > ph.p_memsz {
                return Err(ElfError::FileSizeExceedsMemSize { index });
            }
            match ph.p_offset.checked_add(ph.p_filesz) {
                Some(end) if end <= data.len() as u64 => {}
                _ => return Err(ElfError::SegmentPastFileEnd { index }),
            }
            // Copying keeps the page offset, so the file and memory views must agree within a page
            // and within p_align when that is larger (gABI: 0 and 1 mean "no constraint").
            let align = ph.p_align.max(1);
            if !align.is_power_of_two()
                || (ph.p_vaddr ^ ph.p_offset) & (PAGE_SIZE.min(align) - 1) != 0
                || (ph.p_vaddr ^ ph.p_offset) & (align - 1) != 0
            {
                return Err(ElfError::Misaligned { index });
            }
            let segment = Segment {
                vaddr: ph.p_vaddr,
                offset: ph.p_offset,
                file_size: ph.p_filesz,
                mem_size: ph.p_memsz,
                flags: SegmentFlags {
                    read: ph.p_flags & PF_R != 0,
                    write: ph.p_flags & PF_W != 0,
                    execute: ph.p_flags & PF_X != 0,
                },
            };
            if !window.contains(&segment.range()) {
                return Err(ElfError::OutsideWindow {
                    index,
                    vaddr: ph.p_vaddr,
                });
            }
            for (first, other) in segments[..count].iter().enumerate() {
                let (a, b) = (other.pages(), segment.pages());
                if a.start < b.end && b.start < a.end {
                    return Err(ElfError::Overlap {
                        first,
                        second: index,
                    });
                }
            }
            segments[index] = segment;
            count += 1;
        }
        if count == 0 {
            return Err(ElfError::NoLoadSegments);
        }
        let entry = ehdr.e_entry;
        if !segments[..count]
            .iter()
            .any(|s| s.flags.execute && s.range().contains(&entry))
        {
            return Err(ElfError::EntryNotExecutable(entry));
        }
        segments[..count].sort_unstable_by_key(|s| s.vaddr);
        Ok(Self {
            data,
            entry,
            segments,
            count,
        })
    }

    pub fn entry(&self) -> u64 {
        self.entry
    }

    /// The `PT_LOAD` segments, sorted by address.
    pub fn segments(&self) -> &[Segment] {
        &self.segments[..self.count]
    }

    /// The page-aligned virtual range from the first segment's first page to the last one's end.
    pub fn span(&self) -> Range<u64> {
        let segs = self.segments();
        segs[0].pages().start..segs[segs.len() - 1].pages().end
    }

    /// Bytes the span occupies in memory.
    pub fn span_len(&self) -> u64 {
        let span = self.span();
        span.end - span.start
    }

    /// The file bytes of `segment` (validated to be inside the file).
    pub fn file_bytes(&self, segment: &Segment) -> &'a [u8] {
        &self.data[segment.offset as usize..(segment.offset + segment.file_size) as usize]
    }

    /// Lays the image out in `dest`, which stands for [`Self::span`]: segment bytes at their offset from
    /// the span start, everything else (bss, gaps between segments) zeroed.
    /// Returns `false` (writing nothing) if `dest` is shorter than the span.
    pub fn load_into(&self, dest: &mut [u8]) -> bool {
        if (dest.len() as u64) < self.span_len() {
            return false;
        }
        dest.fill(0);
        let base = self.span().start;
        for s in self.segments() {
            let at = (s.vaddr - base) as usize;
            dest[at..at + s.file_size as usize].copy_from_slice(self.file_bytes(s));
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KERNEL_BASE: u64 = 0xffff_ffff_8000_0000;

    struct Phdr {
        p_type: u32,
        flags: u32,
        offset: u64,
        vaddr: u64,
        filesz: u64,
        memsz: u64,
        align: u64,
    }

    fn load(flags: u32, offset: u64, vaddr: u64, filesz: u64, memsz: u64) -> Phdr {
        Phdr {
            p_type: PT_LOAD,
            flags,
            offset,
            vaddr,
            filesz,
            memsz,
            align: 0x1000,
        }
    }

    /// Builds an ELF64 file by hand after the gABI layout: 64-byte header (e_ident, e_type at 16,
    /// e_machine at 18, e_entry at 24, e_phoff at 32, e_ehsize at 52, e_phentsize at 54, e_phnum at 56),
    /// 56-byte program headers right after it, then `body` bytes up to `len`.
    fn build(
        class: u8,
        machine: u16,
        e_type: u16,
        entry: u64,
        phdrs: &[Phdr],
        len: usize,
    ) -> Vec<u8> {
        let mut f = vec![0u8; len.max(64 + 56 * phdrs.len())];
        f[..4].copy_from_slice(b"\x7fELF");
        f[4] = class;
        f[5] = 1; // little-endian
        f[6] = 1; // EV_CURRENT
        f[16..18].copy_from_slice(&e_type.to_le_bytes());
        f[18..20].copy_from_slice(&machine.to_le_bytes());
        f[20..24].copy_from_slice(&1u32.to_le_bytes());
        f[24..32].copy_from_slice(&entry.to_le_bytes());
        f[32..40].copy_from_slice(&64u64.to_le_bytes());
        f[52..54].copy_from_slice(&64u16.to_le_bytes());
        f[54..56].copy_from_slice(&56u16.to_le_bytes());
        f[56..58].copy_from_slice(&(phdrs.len() as u16).to_le_bytes());
        for (i, p) in phdrs.iter().enumerate() {
            let o = 64 + 56 * i;
            f[o..o + 4].copy_from_slice(&p.p_type.to_le_bytes());
            f[o + 4..o + 8].copy_from_slice(&p.flags.to_le_bytes());
            f[o + 8..o + 16].copy_from_slice(&p.offset.to_le_bytes());
            f[o + 16..o + 24].copy_from_slice(&p.vaddr.to_le_bytes());
            f[o + 24..o + 32].copy_from_slice(&p.vaddr.to_le_bytes());
            f[o + 32..o + 40].copy_from_slice(&p.filesz.to_le_bytes());
            f[o + 40..o + 48].copy_from_slice(&p.memsz.to_le_bytes());
            f[o + 48..o + 56].copy_from_slice(&p.align.to_le_bytes());
        }
        f
    }

    /// text RX at the base (0x100 bytes at file 0x1000), data RW two pages up with 0x10 bytes and bss.
    fn kernel_phdrs() -> Vec<Phdr> {
        vec![
            load(PF_R | PF_X, 0x1000, KERNEL_BASE, 0x100, 0x100),
            load(PF_R | PF_W, 0x2000, KERNEL_BASE + 0x2000, 0x10, 0x1800),
        ]
    }

    fn valid_kernel() -> Vec<u8> {
        let mut f = build(
            2,
            EM_X86_64,
            ET_EXEC,
            KERNEL_BASE + 0x10,
            &kernel_phdrs(),
            0x2010,
        );
        f[0x1000..0x1100].fill(0xcc);
        f[0x2000..0x2010].fill(0xdd);
        f
    }

    fn parse(f: &[u8]) -> Result<ElfImage<'_>, ElfError> {
        ElfImage::parse(f, AddressWindow::UPPER_HALF)
    }

    #[test]
    fn valid_image_is_accepted_with_its_layout() {
        let f = valid_kernel();
        let image = parse(&f).unwrap();
        assert_eq!(image.entry(), KERNEL_BASE + 0x10);
        assert_eq!(image.segments().len(), 2);
        let text = image.segments()[0];
        assert_eq!(
            text.flags,
            SegmentFlags {
                read: true,
                write: false,
                execute: true
            }
        );
        let data = image.segments()[1];
        assert_eq!(
            data.flags,
            SegmentFlags {
                read: true,
                write: true,
                execute: false
            }
        );
        assert_eq!(data.pages(), KERNEL_BASE + 0x2000..KERNEL_BASE + 0x4000);
        assert_eq!(image.span(), KERNEL_BASE..KERNEL_BASE + 0x4000);
        assert_eq!(image.span_len(), 0x4000);

        let mut dest = vec![0xaau8; 0x4000];
        assert!(image.load_into(&mut dest));
        assert!(dest[..0x100].iter().all(|&b| b == 0xcc));
        assert!(dest[0x100..0x2000].iter().all(|&b| b == 0), "gap zeroed");
        assert!(dest[0x2000..0x2010].iter().all(|&b| b == 0xdd));
        assert!(dest[0x2010..].iter().all(|&b| b == 0), "bss zeroed");
        assert!(!image.load_into(&mut vec![0u8; 0x3fff]));
    }

    #[test]
    fn truncated_files_are_refused() {
        let f = valid_kernel();
        assert_eq!(parse(&f[..40]).unwrap_err(), ElfError::Truncated);
        // Header whole, program headers cut off.
        assert_eq!(parse(&f[..100]).unwrap_err(), ElfError::Truncated);
        let mut pe = [0u8; 64];
        pe[..2].copy_from_slice(b"MZ");
        assert_eq!(parse(&pe).unwrap_err(), ElfError::NotElf);
    }

    #[test]
    fn wrong_class_machine_and_type_are_refused() {
        let f = build(1, EM_X86_64, ET_EXEC, KERNEL_BASE, &kernel_phdrs(), 0x2010);
        assert_eq!(parse(&f).unwrap_err(), ElfError::Not64Bit);
        let f = build(
            2,
            183, /* EM_AARCH64 */
            ET_EXEC,
            KERNEL_BASE,
            &kernel_phdrs(),
            0x2010,
        );
        assert_eq!(parse(&f).unwrap_err(), ElfError::WrongMachine(183));
        let f = build(2, EM_X86_64, ET_DYN, KERNEL_BASE, &kernel_phdrs(), 0x2010);
        assert_eq!(parse(&f).unwrap_err(), ElfError::PositionIndependent);
        let f = build(
            2,
            EM_X86_64,
            1, /* ET_REL */
            KERNEL_BASE,
            &kernel_phdrs(),
            0x2010,
        );
        assert_eq!(parse(&f).unwrap_err(), ElfError::NotExecutable(1));
    }

    #[test]
    fn segment_past_file_end_is_refused() {
        let f = build(
            2,
            EM_X86_64,
            ET_EXEC,
            KERNEL_BASE + 0x10,
            &kernel_phdrs(),
            0x2008,
        );
        assert_eq!(
            parse(&f).unwrap_err(),
            ElfError::SegmentPastFileEnd { index: 1 }
        );
    }

    #[test]
    fn entry_outside_executable_segments_is_refused() {
        for entry in [KERNEL_BASE + 0x100, KERNEL_BASE + 0x2000, 0x1000] {
            let f = build(2, EM_X86_64, ET_EXEC, entry, &kernel_phdrs(), 0x2010);
            assert_eq!(parse(&f).unwrap_err(), ElfError::EntryNotExecutable(entry));
        }
    }

    #[test]
    fn lower_half_segments_are_refused_for_the_kernel_but_fine_for_guests() {
        let phdrs = [load(PF_R | PF_X, 0x1000, 0x20_0000, 0x100, 0x100)];
        let f = build(2, EM_X86_64, ET_EXEC, 0x20_0000, &phdrs, 0x1100);
        assert_eq!(
            parse(&f).unwrap_err(),
            ElfError::OutsideWindow {
                index: 0,
                vaddr: 0x20_0000
            }
        );
        assert!(ElfImage::parse(&f, AddressWindow::LOWER_HALF).is_ok());
        // A segment straddling the top of the lower half is outside it.
        let phdrs = [load(PF_R | PF_X, 0x1000, 0x7fff_ffff_f000, 0x100, 0x2000)];
        let f = build(2, EM_X86_64, ET_EXEC, 0x7fff_ffff_f000, &phdrs, 0x1100);
        assert!(matches!(
            ElfImage::parse(&f, AddressWindow::LOWER_HALF),
            Err(ElfError::OutsideWindow { .. })
        ));
    }

    #[test]
    fn overlapping_segments_and_shared_pages_are_refused() {
        let phdrs = [
            load(PF_R | PF_X, 0x1000, KERNEL_BASE, 0x100, 0x2000),
            load(PF_R | PF_W, 0x2000, KERNEL_BASE + 0x1000, 0x10, 0x10),
        ];
        let f = build(2, EM_X86_64, ET_EXEC, KERNEL_BASE, &phdrs, 0x2010);
        assert_eq!(
            parse(&f).unwrap_err(),
            ElfError::Overlap {
                first: 0,
                second: 1
            }
        );
        // No byte overlaps, but both touch the page at KERNEL_BASE.
        let phdrs = [
            load(PF_R | PF_X, 0x1000, KERNEL_BASE, 0x100, 0x100),
            load(PF_R | PF_W, 0x1800, KERNEL_BASE + 0x800, 0x10, 0x10),
        ];
        let f = build(2, EM_X86_64, ET_EXEC, KERNEL_BASE, &phdrs, 0x2010);
        assert_eq!(
            parse(&f).unwrap_err(),
            ElfError::Overlap {
                first: 0,
                second: 1
            }
        );
    }

    #[test]
    fn size_and_alignment_rules_are_enforced() {
        let phdrs = [load(PF_R | PF_X, 0x1000, KERNEL_BASE, 0x200, 0x100)];
        let f = build(2, EM_X86_64, ET_EXEC, KERNEL_BASE, &phdrs, 0x1200);
        assert_eq!(
            parse(&f).unwrap_err(),
            ElfError::FileSizeExceedsMemSize { index: 0 }
        );
        let phdrs = [load(PF_R | PF_X, 0x1010, KERNEL_BASE, 0x100, 0x100)];
        let f = build(2, EM_X86_64, ET_EXEC, KERNEL_BASE, &phdrs, 0x1200);
        assert_eq!(parse(&f).unwrap_err(), ElfError::Misaligned { index: 0 });
        let phdrs = [load(PF_R | PF_X, 0x1000, u64::MAX - 0xfff, 0x100, 0x1000)];
        let f = build(2, EM_X86_64, ET_EXEC, u64::MAX - 0xfff, &phdrs, 0x1200);
        assert_eq!(
            parse(&f).unwrap_err(),
            ElfError::BadSegmentSize { index: 0 }
        );
        let mut interp = load(PF_R, 0x1000, KERNEL_BASE, 0x10, 0x10);
        interp.p_type = PT_INTERP;
        let f = build(2, EM_X86_64, ET_EXEC, KERNEL_BASE, &[interp], 0x1200);
        assert_eq!(parse(&f).unwrap_err(), ElfError::NeedsDynamicLinking);
        let f = build(2, EM_X86_64, ET_EXEC, KERNEL_BASE, &[], 0x100);
        assert_eq!(parse(&f).unwrap_err(), ElfError::NoLoadSegments);
    }
}
