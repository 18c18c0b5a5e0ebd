//! Linux's x86 boot protocol for Exitless guests (Linux Documentation/arch/x86/boot.rst, "64-bit Boot
//! Protocol"; the zero page is zero-page.rst): a bzImage or an uncompressed ELF vmlinux, an optional
//! initrd, a command line and the guest's ACPI tables laid out in guest RAM, plus the state its vCPU
//! starts in.
//!
//! Both kinds of kernel start through the 64-bit entry: 64-bit mode, paging on with 0..4 GiB
//! identity-mapped, a GDT with flat `__BOOT_CS` (0x10) and `__BOOT_DS` (0x18), interrupts off, and RSI
//! = the zero page (`struct boot_params`). A bzImage is entered at its load address + 0x200 and
//! decompresses itself; a vmlinux is placed by `p_paddr` (its per-CPU segment has `p_vaddr` 0) and
//! entered at its physical `e_entry` (`startup_64`), the way Firecracker boots one. The PVH entry
//! (`XEN_ELFNOTE_PHYS32_ENTRY`, `hvm_start_info`) is not offered: it starts in 32-bit protected mode
//! with paging off, which our VMCS setup cannot enter (no unrestricted guest).
//!
//! | guest-physical        | holds |
//! | --------------------- | ----- |
//! | `0x1000`              | zero page |
//! | `0x2000`              | GDT: null, null, `__BOOT_CS` 0x10, `__BOOT_DS` 0x18, TSS 0x20 |
//! | `0x3000`              | TSS (zero: VM entry needs a usable TR; Linux loads its own) |
//! | `0x8000`              | top of the initial stack (both entries switch to their own at once) |
//! | `0x10000..0x16000`    | identity page tables (`guest_layout::write_identity_map`) |
//! | `0x20000..0x30000`    | command line, NUL-terminated |
//! | `0x9FC00..0x100000`   | reserved in e820; ACPI tables at [`ACPI_TABLES_GPA`] |
//! | kernel load address   | the kernel (16 MiB for Debian's), `init_size` bytes kept for it |
//! | below RAM's end       | the initrd, as high as the kernel's `initrd_addr_max` allows |
//!
//! Everything below 0x9FC00 is usable RAM in e820: Linux 6.1 needs some below 1 MiB for its real-mode
//! trampoline, and it has copied the zero page and command line before it allocates any.
//!
//! Use: [`Kernel::parse`] the image, [`check`] that it fits the guest's memory (before allocating
//! it), [`build`] into the guest's RAM (one range at GPA 0), then start the vCPU from
//! [`LinuxLayout::start`], loading its `rsi` into the guest's RSI.

use core::fmt;
use core::ops::Range;

use alloc::vec::Vec;

use super::guest_layout::{self, GuestGdt, GuestStart};
use super::guest_memory::RamLayout;
use super::guest_platform::{ACPI_TABLES_GPA, ACPI_TABLES_MAX_LEN};

const ZERO_PAGE_GPA: u64 = 0x1000;
const GDT_GPA: u64 = 0x2000;
const TSS_GPA: u64 = 0x3000;
const STACK_TOP: u64 = 0x8000;
const PAGE_TABLES_GPA: u64 = 0x1_0000;
const CMDLINE_GPA: u64 = 0x2_0000;
const CMDLINE_AREA_LEN: u64 = 0x1_0000;
/// Usable low memory ends here, where a PC's EBDA would start; the rest of the first MiB is reserved.
const LOW_USABLE_END: u64 = 0x9_FC00;
const HIGH_MEMORY: u64 = 0x10_0000;
// The table above, checked: nothing overlaps, the low structures are in usable RAM below 640 KiB and
// the ACPI tables in the reserved BIOS area.
const _: () = assert!(
    ZERO_PAGE_GPA + 4096 <= GDT_GPA
        && GDT_GPA + 0x30 <= TSS_GPA
        && TSS_GPA + 0x68 <= STACK_TOP - 0x1000
        && STACK_TOP <= PAGE_TABLES_GPA
        && PAGE_TABLES_GPA + guest_layout::IDENTITY_MAP_TABLES_LEN <= CMDLINE_GPA
        && CMDLINE_GPA + CMDLINE_AREA_LEN <= LOW_USABLE_END
        && ACPI_TABLES_GPA >= LOW_USABLE_END
        && ACPI_TABLES_GPA + ACPI_TABLES_MAX_LEN <= HIGH_MEMORY
);
/// The kernel's image lies below this, where the MMIO hole (IOAPIC, LAPIC, device BARs) may start
/// and the boot identity map turns uncached; RAM beyond the hole resumes at 4 GiB.
pub const MAX_RAM_LEN: u64 = 3 << 30;

/// boot.rst "64-bit Boot Protocol": CS must be `__BOOT_CS` and DS, ES, SS `__BOOT_DS`.
pub const BOOT_CS: u16 = 0x10;
pub const BOOT_DS: u16 = 0x18;
const TSS_SELECTOR: u16 = 0x20;

/// The Linux guest's GDT: null, null, `__BOOT_CS`, `__BOOT_DS`, a 16-byte TSS descriptor.
pub const LINUX_GDT: GuestGdt = GuestGdt {
    base: GDT_GPA,
    limit: 6 * 8 - 1,
    code_selector: BOOT_CS,
    data_selector: BOOT_DS,
    tss_selector: TSS_SELECTOR,
    tss_base: TSS_GPA,
};

/// Offsets in `struct boot_params` (zero-page.rst). The setup header (boot.rst "The Real-Mode Kernel
/// Header") sits at the same offsets in the bzImage file and in the zero page.
mod zp {
    pub const LEN: usize = 4096;
    pub const ACPI_RSDP_ADDR: usize = 0x070;
    pub const EXT_RAMDISK_IMAGE: usize = 0x0c0;
    pub const EXT_RAMDISK_SIZE: usize = 0x0c4;
    pub const EXT_CMD_LINE_PTR: usize = 0x0c8;
    pub const E820_ENTRIES: usize = 0x1e8;
    pub const SETUP_SECTS: usize = 0x1f1;
    pub const SYSSIZE: usize = 0x1f4;
    pub const BOOT_FLAG: usize = 0x1fe;
    /// The second byte of the jump at 0x200: the setup header ends at 0x202 + this byte.
    pub const JUMP_OFFSET: usize = 0x201;
    pub const HEADER: usize = 0x202;
    pub const VERSION: usize = 0x206;
    pub const TYPE_OF_LOADER: usize = 0x210;
    pub const LOADFLAGS: usize = 0x211;
    pub const RAMDISK_IMAGE: usize = 0x218;
    pub const RAMDISK_SIZE: usize = 0x21c;
    pub const CMD_LINE_PTR: usize = 0x228;
    pub const INITRD_ADDR_MAX: usize = 0x22c;
    pub const KERNEL_ALIGNMENT: usize = 0x230;
    pub const RELOCATABLE_KERNEL: usize = 0x234;
    pub const XLOADFLAGS: usize = 0x236;
    pub const CMDLINE_SIZE: usize = 0x238;
    pub const PREF_ADDRESS: usize = 0x258;
    pub const INIT_SIZE: usize = 0x260;
    /// `edd_mbr_sig_buffer` follows the setup header's room.
    pub const SETUP_HEADER_ROOM_END: usize = 0x290;
    pub const E820_TABLE: usize = 0x2d0;
    pub const E820_MAX_ENTRIES: usize = 128;
    pub const E820_ENTRY_LEN: usize = 20;
}

const BOOT_FLAG: u16 = 0xAA55;
const HEADER_MAGIC: &[u8; 4] = b"HdrS";
/// Protocol 2.12 added xloadflags and with it `XLF_KERNEL_64`, the 64-bit entry at load + 0x200.
const MIN_VERSION: u16 = 0x020c;
const SYNTHESIZED_VERSION: u16 = 0x020f;
const XLF_KERNEL_64: u16 = 1 << 0;
const LOADED_HIGH: u8 = 1 << 0;
const CAN_USE_HEAP: u8 = 1 << 7;
/// boot.rst `type_of_loader`: 0xFF is "undefined", for loaders without an assigned ID.
const LOADER_UNDEFINED: u8 = 0xff;
const ENTRY_64_OFFSET: u64 = 0x200;
/// What a vmlinux, which has no header, is assumed to take: x86's COMMAND_LINE_SIZE (2048) less the
/// NUL, and the initrd_addr_max every x86_64 bzImage declares.
const VMLINUX_CMDLINE_SIZE: u64 = 2047;
const VMLINUX_INITRD_ADDR_MAX: u64 = 0x7fff_ffff;
const VMLINUX_ALIGNMENT: u32 = 2 << 20;

const E820_RAM: u32 = 1;
const E820_RESERVED: u32 = 2;
const PAGE: u64 = 4096;
const MIB: u64 = 1 << 20;
/// Most program headers a vmlinux may have (Debian's has 5).
const MAX_PROGRAM_HEADERS: u16 = 64;

/// Why a Linux guest cannot be laid out; each message says what to change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinuxBootError {
    NotAKernel,
    BzImageTruncated {
        needed: u64,
        have: u64,
    },
    BadSetupHeader(&'static str),
    No64BitEntry {
        version: u16,
    },
    BadVmlinux(&'static str),
    KernelBelow1Mib {
        start: u64,
    },
    KernelBeyondRamLimit {
        end: u64,
    },
    MemoryTooLarge {
        have: u64,
    },
    MemoryTooSmall {
        kernel_start: u64,
        kernel_len: u64,
        initrd_len: u64,
        have: u64,
    },
    InitrdAboveLimit {
        initrd_len: u64,
        kernel_end: u64,
        limit: u64,
    },
    CmdlineTooLong {
        len: u64,
        max: u64,
    },
    CmdlineHasNul,
    AcpiTablesTooLong {
        len: u64,
    },
    /// The RAM layout needs the kernel elsewhere and it cannot move there.
    KernelNotMovable {
        to: u64,
    },
}

fn mib_ceil(bytes: u64) -> u64 {
    bytes.div_ceil(MIB)
}

impl fmt::Display for LinuxBootError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::NotAKernel => write!(f, "not a bzImage or an ELF vmlinux (no \\x7fELF, no boot_flag 0xAA55 with \"HdrS\" at 0x1fe/0x202): give `linux =` an x86_64 kernel image"),
            Self::BzImageTruncated { needed, have } => write!(f, "bzImage truncated: its header says {needed} bytes of setup and kernel, the file has {have}: copy the whole file again"),
            Self::BadSetupHeader(why) => write!(f, "bzImage setup header: {why}"),
            Self::No64BitEntry { version } => write!(f, "boot protocol {}.{} lacks the 64-bit entry (needs 2.12 or later with XLF_KERNEL_64): use an x86_64 kernel from Linux 3.8 or later", version >> 8, version & 0xff),
            Self::BadVmlinux(why) => write!(f, "vmlinux: {why}"),
            Self::KernelBelow1Mib { start } => write!(f, "kernel loads at {start:#x}, below 1 MiB where the boot structures and the BIOS area are: build it with a higher CONFIG_PHYSICAL_START"),
            Self::KernelBeyondRamLimit { end } => write!(f, "kernel reaches {end:#x}, beyond the {} MiB a Linux guest's RAM may have: it is not a kernel this loader can place", MAX_RAM_LEN >> 20),
            Self::MemoryTooLarge { have } => write!(f, "the guest's RAM above 1 MiB starts at {have:#x}, beyond the 4 GiB its boot page tables map: its RAM block is too high in host memory"),
            Self::MemoryTooSmall { kernel_start: start, kernel_len: len, initrd_len, have } => {
                write!(f, "guest memory too small ({} MiB): kernel needs {} MiB from {} MiB", have >> 20, mib_ceil(len), start >> 20)?;
                if initrd_len != 0 {
                    write!(f, " plus initrd {} MiB", mib_ceil(initrd_len))?;
                }
                let needed = (start + len).next_multiple_of(PAGE) + initrd_len.next_multiple_of(PAGE);
                write!(f, ": raise memory_mib to {}", mib_ceil(needed))
            }
            Self::InitrdAboveLimit { initrd_len, kernel_end, limit } => write!(f, "initrd of {} MiB does not fit between the kernel's end ({kernel_end:#x}) and the highest address the kernel takes an initrd at ({limit:#x}, initrd_addr_max): use a smaller initrd", mib_ceil(initrd_len)),
            Self::CmdlineTooLong { len, max } => write!(f, "command line is {len} bytes, the kernel takes at most {max}: shorten cmdline"),
            Self::CmdlineHasNul => write!(f, "command line contains a NUL byte"),
            Self::KernelNotMovable { to } => write!(f, "the kernel must load at {to:#x} (its devices DMA without an IOMMU, so its RAM sits at its host address) and is not relocatable there: use a relocatable kernel (CONFIG_RELOCATABLE) or a machine with an IOMMU"),
            Self::AcpiTablesTooLong { len } => write!(f, "guest ACPI tables are {len} bytes, more than the {ACPI_TABLES_MAX_LEN:#x} reserved for them at {ACPI_TABLES_GPA:#x}"),
        }
    }
}

fn read<const N: usize>(data: &[u8], at: usize) -> Option<[u8; N]> {
    data.get(at..at.checked_add(N)?)?.try_into().ok()
}

fn u16_at(data: &[u8], at: usize) -> Option<u16> {
    read(data, at).map(u16::from_le_bytes)
}

fn u32_at(data: &[u8], at: usize) -> Option<u32> {
    read(data, at).map(u32::from_le_bytes)
}

fn u64_at(data: &[u8], at: usize) -> Option<u64> {
    read(data, at).map(u64::from_le_bytes)
}

/// A parsed kernel, ready to be placed.
#[derive(Clone, Debug)]
pub enum Kernel<'a> {
    BzImage(BzImage<'a>),
    Vmlinux(Vmlinux<'a>),
}

/// A bzImage: its setup header and protected-mode code, and where that code goes.
#[derive(Clone, Debug)]
pub struct BzImage<'a> {
    /// File bytes 0x1f1..end of the setup header, copied into the zero page as they are.
    header: &'a [u8],
    protected_mode: &'a [u8],
    load: u64,
    /// `relocatable_kernel` and `kernel_alignment` (boot.rst): where else it may be loaded.
    relocation_alignment: Option<u64>,
    init_size: u64,
    cmdline_size: u64,
    initrd_addr_max: u64,
}

/// An ELF64 vmlinux: its PT_LOAD segments by physical address.
#[derive(Clone, Debug)]
pub struct Vmlinux<'a> {
    data: &'a [u8],
    entry: u64,
    /// Sorted by `paddr`, not overlapping.
    segments: Vec<LoadSegment>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct LoadSegment {
    paddr: u64,
    offset: usize,
    file_size: usize,
    mem_size: u64,
}

impl<'a> Kernel<'a> {
    /// Recognises and validates a bzImage or a vmlinux; hostile bytes give an error, never a panic.
    pub fn parse(data: &'a [u8]) -> Result<Self, LinuxBootError> {
        if data.starts_with(b"\x7fELF") {
            return Vmlinux::parse(data).map(Self::Vmlinux);
        }
        let is_bzimage = u16_at(data, zp::BOOT_FLAG) == Some(BOOT_FLAG)
            && read::<4>(data, zp::HEADER).as_ref() == Some(HEADER_MAGIC);
        if !is_bzimage {
            return Err(LinuxBootError::NotAKernel);
        }
        BzImage::parse(data).map(Self::BzImage)
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Self::BzImage(_) => "bzImage",
            Self::Vmlinux(_) => "vmlinux",
        }
    }

    /// The physical range the kernel occupies and needs for itself before it reads the e820 map
    /// (a bzImage's `init_size` from its load address; a vmlinux's PT_LOAD span).
    pub fn footprint(&self) -> Range<u64> {
        match self {
            Self::BzImage(b) => b.load..b.load + b.init_size,
            Self::Vmlinux(v) => {
                let last = v.segments[v.segments.len() - 1];
                v.segments[0].paddr..last.paddr + last.mem_size
            }
        }
    }

    /// The kernel loaded at `load` instead, if it can run there: a relocatable bzImage at a
    /// multiple of its kernel_alignment (boot.rst), a vmlinux moved as a whole by a multiple of
    /// 2 MiB, its entry with it. x86-64 Linux finds where it runs and rebuilds its page tables
    /// for that (`__startup_64` computes the load delta), so nothing in the image changes.
    pub fn moved_to(&self, load: u64) -> Option<Kernel<'a>> {
        let mut moved = self.clone();
        match &mut moved {
            Self::BzImage(b) => {
                let align = b.relocation_alignment?;
                if !load.is_multiple_of(align) {
                    return None;
                }
                b.load = load;
            }
            Self::Vmlinux(v) => {
                let first = v.segments[0].paddr;
                if !load.is_multiple_of(u64::from(VMLINUX_ALIGNMENT))
                    || !first.is_multiple_of(u64::from(VMLINUX_ALIGNMENT))
                {
                    return None;
                }
                for s in &mut v.segments {
                    s.paddr = s.paddr - first + load;
                }
                v.entry = v.entry.checked_sub(first)?.checked_add(load)?;
            }
        }
        let footprint = moved.footprint();
        check_footprint(footprint.start, Some(footprint.end)).ok()?;
        Some(moved)
    }

    /// Where the first instruction is (physical: the identity map makes it the virtual one too).
    pub fn entry(&self) -> u64 {
        match self {
            Self::BzImage(b) => b.load + ENTRY_64_OFFSET,
            Self::Vmlinux(v) => v.entry,
        }
    }

    fn cmdline_size(&self) -> u64 {
        match self {
            Self::BzImage(b) => b.cmdline_size,
            Self::Vmlinux(_) => VMLINUX_CMDLINE_SIZE,
        }
    }

    fn initrd_addr_max(&self) -> u64 {
        match self {
            Self::BzImage(b) => b.initrd_addr_max,
            Self::Vmlinux(_) => VMLINUX_INITRD_ADDR_MAX,
        }
    }

    /// Zeroes the footprint and copies the kernel's bytes into it; `ram` starts at guest-physical
    /// `ram_start`.
    fn load_into(&self, ram: &mut [u8], ram_start: u64) {
        let footprint = self.footprint();
        let at = |gpa: u64| (gpa - ram_start) as usize;
        ram[at(footprint.start)..at(footprint.end)].fill(0);
        match self {
            Self::BzImage(b) => {
                let at = at(b.load);
                ram[at..at + b.protected_mode.len()].copy_from_slice(b.protected_mode);
            }
            Self::Vmlinux(v) => {
                for s in &v.segments {
                    let at = at(s.paddr);
                    ram[at..at + s.file_size]
                        .copy_from_slice(&v.data[s.offset..s.offset + s.file_size]);
                }
            }
        }
    }

    /// The setup header part of the zero page: the bzImage's own, or one made up for a vmlinux.
    fn write_setup_header(&self, zero_page: &mut [u8]) {
        match self {
            Self::BzImage(b) => {
                zero_page[zp::SETUP_SECTS..zp::SETUP_SECTS + b.header.len()]
                    .copy_from_slice(b.header);
            }
            Self::Vmlinux(_) => {
                // The fields a kernel or a tool reading boot_params may look at (boot.rst "Details of
                // Header Fields"); the kernel sits at its link address, so it is not relocatable.
                let footprint = self.footprint();
                let len = footprint.end - footprint.start;
                put(zero_page, zp::BOOT_FLAG, &BOOT_FLAG.to_le_bytes());
                put(zero_page, zp::HEADER, HEADER_MAGIC);
                put(zero_page, zp::VERSION, &SYNTHESIZED_VERSION.to_le_bytes());
                put(
                    zero_page,
                    zp::INITRD_ADDR_MAX,
                    &(VMLINUX_INITRD_ADDR_MAX as u32).to_le_bytes(),
                );
                put(
                    zero_page,
                    zp::KERNEL_ALIGNMENT,
                    &VMLINUX_ALIGNMENT.to_le_bytes(),
                );
                put(zero_page, zp::XLOADFLAGS, &XLF_KERNEL_64.to_le_bytes());
                put(
                    zero_page,
                    zp::CMDLINE_SIZE,
                    &(VMLINUX_CMDLINE_SIZE as u32).to_le_bytes(),
                );
                put(zero_page, zp::PREF_ADDRESS, &footprint.start.to_le_bytes());
                put(zero_page, zp::INIT_SIZE, &(len as u32).to_le_bytes());
            }
        }
    }
}

impl<'a> BzImage<'a> {
    /// `data` starts with a setup header (boot_flag and "HdrS" checked by the caller).
    fn parse(data: &'a [u8]) -> Result<Self, LinuxBootError> {
        use LinuxBootError::*;
        let version = u16_at(data, zp::VERSION).ok_or(NotAKernel)?;
        if version < MIN_VERSION {
            return Err(No64BitEntry { version });
        }
        let header_end = zp::HEADER + usize::from(data[zp::JUMP_OFFSET]);
        if header_end > zp::SETUP_HEADER_ROOM_END {
            return Err(BadSetupHeader(
                "its length (byte 0x201) runs past the room boot_params has for it",
            ));
        }
        if header_end < zp::INIT_SIZE + 4 {
            return Err(BadSetupHeader(
                "it is shorter than protocol 2.12's fields (init_size at 0x260)",
            ));
        }
        let header = data
            .get(zp::SETUP_SECTS..header_end)
            .ok_or(BzImageTruncated {
                needed: header_end as u64,
                have: data.len() as u64,
            })?;
        // The header's fields, read from the file (its offsets are the zero page's).
        let u32_field = |at| u64::from(u32_at(data, at).expect("inside the header"));
        let xloadflags = u16_at(data, zp::XLOADFLAGS).expect("inside the header");
        if xloadflags & XLF_KERNEL_64 == 0 {
            return Err(No64BitEntry { version });
        }
        // boot.rst "Loading the rest of the kernel": setup_sects 0 means 4.
        let setup_sects = match data[zp::SETUP_SECTS] {
            0 => 4,
            n => u64::from(n),
        };
        let setup_len = (setup_sects + 1) * 512;
        // syssize (2.04+) counts the protected-mode code in 16-byte paragraphs.
        let kernel_len = u32_field(zp::SYSSIZE) * 16;
        if kernel_len == 0 {
            return Err(BadSetupHeader("syssize is 0: no protected-mode code"));
        }
        let needed = setup_len + kernel_len;
        if (data.len() as u64) < needed {
            return Err(BzImageTruncated {
                needed,
                have: data.len() as u64,
            });
        }
        let protected_mode = &data[setup_len as usize..(setup_len + kernel_len) as usize];

        // A relocatable kernel goes to pref_address rounded up to kernel_alignment; a fixed one moves
        // itself to pref_address, so either way that range is the one to keep for it.
        let pref = match u64_at(data, zp::PREF_ADDRESS).expect("inside the header") {
            0 => HIGH_MEMORY,
            p => p,
        };
        let relocation_alignment = if data[zp::RELOCATABLE_KERNEL] != 0 {
            let align = u32_field(zp::KERNEL_ALIGNMENT);
            if !align.is_power_of_two() {
                return Err(BadSetupHeader("kernel_alignment is not a power of two"));
            }
            Some(align)
        } else {
            None
        };
        let load = match relocation_alignment {
            Some(align) => pref
                .checked_next_multiple_of(align)
                .ok_or(BadSetupHeader("pref_address overflows"))?,
            None => pref,
        };
        let init_size = u32_field(zp::INIT_SIZE).max(kernel_len);
        check_footprint(load, load.checked_add(init_size))?;
        Ok(Self {
            header,
            protected_mode,
            load,
            relocation_alignment,
            init_size,
            cmdline_size: u32_field(zp::CMDLINE_SIZE),
            initrd_addr_max: u32_field(zp::INITRD_ADDR_MAX),
        })
    }
}

fn check_footprint(start: u64, end: Option<u64>) -> Result<(), LinuxBootError> {
    if start < HIGH_MEMORY {
        return Err(LinuxBootError::KernelBelow1Mib { start });
    }
    match end {
        Some(end) if end <= MAX_RAM_LEN => Ok(()),
        end => Err(LinuxBootError::KernelBeyondRamLimit {
            end: end.unwrap_or(u64::MAX),
        }),
    }
}

impl<'a> Vmlinux<'a> {
    /// ELF64 (System V gABI, "ELF Header" and "Program Header"), read field by field with every
    /// offset checked.
    fn parse(data: &'a [u8]) -> Result<Self, LinuxBootError> {
        use LinuxBootError::BadVmlinux;
        const ET_EXEC: u16 = 2;
        const EM_X86_64: u16 = 62;
        const PT_LOAD: u32 = 1;
        const PHDR_LEN: usize = 56;
        if data.len() < 64 {
            return Err(BadVmlinux("its ELF header is truncated"));
        }
        if data[4] != 2 {
            return Err(BadVmlinux("not ELF64: use the x86_64 kernel"));
        }
        if data[5] != 1 {
            return Err(BadVmlinux("big-endian ELF"));
        }
        let field16 = |at| u16_at(data, at).expect("inside the 64-byte header");
        if field16(16) != ET_EXEC {
            return Err(BadVmlinux("not an executable (ET_EXEC)"));
        }
        if field16(18) != EM_X86_64 {
            return Err(BadVmlinux("not built for x86-64"));
        }
        let entry = u64_at(data, 24).expect("inside the header");
        let phoff = u64_at(data, 32).expect("inside the header");
        if usize::from(field16(54)) != PHDR_LEN {
            return Err(BadVmlinux("its program headers are not 56 bytes"));
        }
        let phnum = field16(56);
        if phnum == 0 || phnum > MAX_PROGRAM_HEADERS {
            return Err(BadVmlinux("it has no program headers, or implausibly many"));
        }
        let table_end = usize::try_from(phoff)
            .ok()
            .and_then(|off| off.checked_add(usize::from(phnum) * PHDR_LEN));
        if table_end.is_none_or(|end| end > data.len()) {
            return Err(BadVmlinux(
                "its program headers reach past the end of the file",
            ));
        }
        let mut segments = Vec::new();
        for i in 0..usize::from(phnum) {
            let ph = phoff as usize + i * PHDR_LEN;
            let field = |at| u64_at(data, ph + at).expect("table checked");
            if u32_at(data, ph) != Some(PT_LOAD) {
                continue;
            }
            let (offset, paddr, file_size, mem_size) = (field(8), field(24), field(32), field(40));
            if mem_size == 0 {
                continue;
            }
            if file_size > mem_size {
                return Err(BadVmlinux("a PT_LOAD has p_filesz > p_memsz"));
            }
            if offset
                .checked_add(file_size)
                .is_none_or(|end| end > data.len() as u64)
            {
                return Err(BadVmlinux(
                    "a PT_LOAD's bytes reach past the end of the file",
                ));
            }
            let segment = LoadSegment {
                paddr,
                offset: offset as usize,
                file_size: file_size as usize,
                mem_size,
            };
            check_footprint(paddr, paddr.checked_add(mem_size))?;
            segments.push(segment);
        }
        if segments.is_empty() {
            return Err(BadVmlinux("no PT_LOAD segments"));
        }
        segments.sort_unstable_by_key(|s| s.paddr);
        if segments
            .windows(2)
            .any(|w| w[0].paddr + w[0].mem_size > w[1].paddr)
        {
            return Err(BadVmlinux(
                "two PT_LOAD segments overlap in physical memory",
            ));
        }
        if !segments
            .iter()
            .any(|s| (s.paddr..s.paddr + s.mem_size).contains(&entry))
        {
            return Err(BadVmlinux(
                "its entry point (e_entry, physical) is outside every PT_LOAD",
            ));
        }
        Ok(Self {
            data,
            entry,
            segments,
        })
    }
}

/// What to boot. The ACPI tables are the guest's RSDP first (its other tables after it, pointing at
/// [`ACPI_TABLES_GPA`]-based addresses); `None` boots Linux without ACPI.
#[derive(Clone, Copy, Debug)]
pub struct LinuxBoot<'a> {
    pub kernel: &'a Kernel<'a>,
    pub initrd: Option<&'a [u8]>,
    pub cmdline: &'a str,
    pub acpi_tables: Option<&'a [u8]>,
}

/// A laid-out Linux guest: how its vCPU starts and where things went (for the log).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinuxLayout {
    pub start: GuestStart,
    pub kernel: Range<u64>,
    pub initrd: Option<Range<u64>>,
}

/// Whether `boot` fits in a RAM block of `ram_len` bytes laid out as `layout`, as [`build`] will
/// find: for a caller to check before it allocates the RAM (any identity base gives the same answer).
pub fn check(ram_len: u64, layout: RamLayout, boot: &LinuxBoot<'_>) -> Result<(), LinuxBootError> {
    place(ram_len, layout, boot).map(|_| ())
}

/// Where the kernel and initrd go, and that everything fits.
#[derive(Debug)]
struct Placement<'a> {
    kernel: Kernel<'a>,
    initrd: Option<Range<u64>>,
    /// Guest-physical RAM above the first MiB that the kernel and initrd go in (below 4 GiB,
    /// which the boot page tables map).
    high: Range<u64>,
    /// All guest-physical RAM above the first MiB, for the e820 map.
    high_ranges: Vec<Range<u64>>,
}

fn place<'a>(
    ram_len: u64,
    layout: RamLayout,
    boot: &LinuxBoot<'a>,
) -> Result<Placement<'a>, LinuxBootError> {
    use LinuxBootError::*;
    // RAM above the first MiB; the first range holds the kernel and the initrd.
    let high_ranges: Vec<Range<u64>> = layout
        .ranges(ram_len)
        .map(|r| r.gpa.max(HIGH_MEMORY)..r.gpa + r.len)
        .filter(|r| !r.is_empty())
        .collect();
    let high = high_ranges
        .first()
        .cloned()
        .unwrap_or(HIGH_MEMORY..HIGH_MEMORY);
    if high.start >= guest_layout::IDENTITY_MAP_END {
        return Err(MemoryTooLarge { have: high.start });
    }
    let high = high.start..high.end.min(guest_layout::IDENTITY_MAP_END);
    let cmdline_max = boot.kernel.cmdline_size().min(CMDLINE_AREA_LEN - 1);
    let len = boot.cmdline.len() as u64;
    if len > cmdline_max {
        return Err(CmdlineTooLong {
            len,
            max: cmdline_max,
        });
    }
    if boot.cmdline.contains('\0') {
        return Err(CmdlineHasNul);
    }
    if let Some(tables) = boot.acpi_tables {
        if tables.len() as u64 > ACPI_TABLES_MAX_LEN {
            return Err(AcpiTablesTooLong {
                len: tables.len() as u64,
            });
        }
    }
    // The linear layout keeps the kernel where it asks to be; an identity one starts its RAM at
    // the block's host address, so the kernel moves to the start of that RAM.
    let kernel = if layout.is_linear() {
        boot.kernel.clone()
    } else {
        boot.kernel
            .moved_to(high.start)
            .ok_or(KernelNotMovable { to: high.start })?
    };
    let footprint = kernel.footprint();
    let initrd_len = boot.initrd.map_or(0, |i| i.len() as u64);
    // In block terms, so the message's "raise memory_mib to" is right for either layout.
    let too_small = MemoryTooSmall {
        kernel_start: footprint.start.saturating_sub(high.start) + layout.high_offset,
        kernel_len: footprint.end - footprint.start,
        initrd_len,
        have: ram_len,
    };
    let kernel_end = footprint.end.next_multiple_of(PAGE);
    if footprint.start < high.start || kernel_end > high.end {
        return Err(too_small);
    }
    if initrd_len == 0 {
        return Ok(Placement {
            kernel,
            initrd: None,
            high,
            high_ranges,
        });
    }
    // boot.rst: initrd_addr_max is the highest address the initrd may occupy; put it as high as
    // that and RAM allow, page-aligned, clear of the kernel's init_size.
    let limit = high.end.min(kernel.initrd_addr_max().saturating_add(1));
    let start = limit.checked_sub(initrd_len).map(|s| s & !(PAGE - 1));
    match start {
        Some(start) if start >= kernel_end => Ok(Placement {
            kernel,
            initrd: Some(start..start + initrd_len),
            high,
            high_ranges,
        }),
        _ if limit == high.end => Err(too_small),
        _ => Err(InitrdAboveLimit {
            initrd_len,
            kernel_end,
            limit,
        }),
    }
}

/// Lays out a Linux guest in the RAM block `ram`, seen by the guest as `layout` says (guest-physical
/// RAM below [`MAX_RAM_LEN`]), for the 64-bit boot protocol, and returns its start state. Writes the
/// first MiB, the kernel's footprint and the initrd; the rest of RAM is left as it is, free memory
/// in the guest's e820 map.
pub fn build(
    ram: &mut [u8],
    layout: RamLayout,
    boot: &LinuxBoot<'_>,
) -> Result<LinuxLayout, LinuxBootError> {
    let ram_len = ram.len() as u64;
    let Placement {
        kernel,
        initrd,
        high,
        high_ranges,
    } = place(ram_len, layout, boot)?;
    let (low, rest) = ram.split_at_mut(HIGH_MEMORY as usize);
    // The block from where guest-physical `high.start` is.
    let high_at = layout
        .offset(high.start, 1, ram_len)
        .ok_or(LinuxBootError::MemoryTooSmall {
            kernel_start: 0,
            kernel_len: 0,
            initrd_len: 0,
            have: ram_len,
        })?;
    let high_ram = &mut rest[high_at - HIGH_MEMORY as usize..];
    let at = |gpa: u64| (gpa - high.start) as usize;

    low.fill(0);
    kernel.load_into(high_ram, high.start);
    if let (Some(range), Some(bytes)) = (&initrd, boot.initrd) {
        high_ram[at(range.start)..at(range.end)].copy_from_slice(bytes);
    }
    let ram = low;
    let has_acpi = match boot.acpi_tables {
        Some(tables) if !tables.is_empty() => {
            put(ram, ACPI_TABLES_GPA as usize, tables);
            true
        }
        _ => false,
    };
    // NUL-terminated: boot.rst `cmd_line_ptr`; the area is zeroed above.
    put(ram, CMDLINE_GPA as usize, boot.cmdline.as_bytes());

    let zero_page = &mut ram[ZERO_PAGE_GPA as usize..ZERO_PAGE_GPA as usize + zp::LEN];
    kernel.write_setup_header(zero_page);
    zero_page[zp::TYPE_OF_LOADER] = LOADER_UNDEFINED;
    // The protected-mode code is above 1 MiB; no real-mode setup code runs, so it has no heap.
    zero_page[zp::LOADFLAGS] = (zero_page[zp::LOADFLAGS] | LOADED_HIGH) & !CAN_USE_HEAP;
    put_split(
        zero_page,
        zp::CMD_LINE_PTR,
        zp::EXT_CMD_LINE_PTR,
        CMDLINE_GPA,
    );
    if let Some(range) = &initrd {
        put_split(
            zero_page,
            zp::RAMDISK_IMAGE,
            zp::EXT_RAMDISK_IMAGE,
            range.start,
        );
        let len = range.end - range.start;
        put_split(zero_page, zp::RAMDISK_SIZE, zp::EXT_RAMDISK_SIZE, len);
    }
    if has_acpi {
        // acpi_rsdp_addr (2.14+); older kernels find the RSDP by scanning 0xE0000-0xFFFFF.
        put(
            zero_page,
            zp::ACPI_RSDP_ADDR,
            &ACPI_TABLES_GPA.to_le_bytes(),
        );
    }
    // The MMIO hole between the ranges stays out of the map: Linux takes such a gap for PCI.
    let mut e820 = alloc::vec![
        (0, LOW_USABLE_END, E820_RAM),
        (LOW_USABLE_END, HIGH_MEMORY, E820_RESERVED),
    ];
    e820.extend(high_ranges.iter().map(|r| (r.start, r.end, E820_RAM)));
    const _: () = assert!(4 <= zp::E820_MAX_ENTRIES);
    for (i, &(start, end, kind)) in e820.iter().enumerate() {
        let at = zp::E820_TABLE + i * zp::E820_ENTRY_LEN;
        put(zero_page, at, &start.to_le_bytes());
        put(zero_page, at + 8, &(end - start).to_le_bytes());
        put(zero_page, at + 16, &kind.to_le_bytes());
    }
    zero_page[zp::E820_ENTRIES] = e820.len() as u8;

    let cr3 = guest_layout::write_identity_map(ram, PAGE_TABLES_GPA);
    guest_layout::write_gdt(ram, &LINUX_GDT);
    Ok(LinuxLayout {
        start: GuestStart {
            rip: kernel.entry(),
            rsp: STACK_TOP,
            rdi: 0,
            rsi: ZERO_PAGE_GPA,
            cr3,
            gdt: LINUX_GDT,
        },
        kernel: kernel.footprint(),
        initrd,
    })
}

fn put(bytes: &mut [u8], at: usize, value: &[u8]) {
    bytes[at..at + value.len()].copy_from_slice(value);
}

/// A 64-bit value in a 32-bit setup-header field and its `ext_` high half (zero-page.rst 0x0C0..).
fn put_split(zero_page: &mut [u8], low: usize, high: usize, value: u64) {
    put(zero_page, low, &(value as u32).to_le_bytes());
    put(zero_page, high, &((value >> 32) as u32).to_le_bytes());
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use alloc::format;
    use alloc::vec;

    const LOAD: u64 = 0x100_0000;

    fn set(f: &mut [u8], at: usize, value: &[u8]) {
        f[at..at + value.len()].copy_from_slice(value);
    }

    fn get_u32(ram: &[u8], gpa: u64) -> u32 {
        u32::from_le_bytes(ram[gpa as usize..gpa as usize + 4].try_into().unwrap())
    }

    fn get_u64(ram: &[u8], gpa: u64) -> u64 {
        u64::from_le_bytes(ram[gpa as usize..gpa as usize + 8].try_into().unwrap())
    }

    fn zp_u32(ram: &[u8], field: usize) -> u32 {
        get_u32(ram, ZERO_PAGE_GPA + field as u64)
    }

    /// A bzImage with one setup sector, `code` (a multiple of 16 bytes) after it, and a 2.15 header
    /// like Debian's (relocatable, 2 MiB aligned, pref_address 16 MiB).
    pub(in crate::vmm) fn bzimage(init_size: u32, code: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; 2 * 512 + code.len()];
        f[zp::SETUP_SECTS] = 1;
        set(
            &mut f,
            zp::SYSSIZE,
            &((code.len() / 16) as u32).to_le_bytes(),
        );
        set(&mut f, zp::BOOT_FLAG, &BOOT_FLAG.to_le_bytes());
        set(&mut f, 0x200, &[0xEB, 0x6A]); // jmp: the header ends at 0x26c
        set(&mut f, zp::HEADER, HEADER_MAGIC);
        set(&mut f, zp::VERSION, &0x020fu16.to_le_bytes());
        f[zp::LOADFLAGS] = LOADED_HIGH;
        set(&mut f, zp::INITRD_ADDR_MAX, &0x7fff_ffffu32.to_le_bytes());
        set(&mut f, zp::KERNEL_ALIGNMENT, &(2u32 << 20).to_le_bytes());
        f[zp::RELOCATABLE_KERNEL] = 1;
        set(&mut f, zp::XLOADFLAGS, &0x7fu16.to_le_bytes());
        set(&mut f, zp::CMDLINE_SIZE, &2047u32.to_le_bytes());
        set(&mut f, zp::PREF_ADDRESS, &LOAD.to_le_bytes());
        set(&mut f, zp::INIT_SIZE, &init_size.to_le_bytes());
        f[0x26b] = 0x5A; // the header's last byte, to see it copied
        f[1024..].copy_from_slice(code);
        f
    }

    /// [`bzimage`] with relocatable_kernel 0: it runs only at pref_address.
    fn bzimage_fixed() -> Vec<u8> {
        let mut f = bzimage(1 << 20, &[0x90; 16]);
        f[zp::RELOCATABLE_KERNEL] = 0;
        f
    }

    /// An ELF64 vmlinux with PT_LOADs `(paddr, vaddr, bytes, memsz)`, a PT_NOTE first, entry `entry`.
    fn vmlinux(segments: &[(u64, u64, &[u8], u64)], entry: u64) -> Vec<u8> {
        let phnum = segments.len() + 1;
        let mut f = vec![0u8; 0x1000];
        set(&mut f, 0, b"\x7fELF");
        f[4] = 2;
        f[5] = 1;
        f[6] = 1;
        set(&mut f, 16, &2u16.to_le_bytes());
        set(&mut f, 18, &62u16.to_le_bytes());
        set(&mut f, 24, &entry.to_le_bytes());
        set(&mut f, 32, &64u64.to_le_bytes());
        set(&mut f, 54, &56u16.to_le_bytes());
        set(&mut f, 56, &(phnum as u16).to_le_bytes());
        set(&mut f, 64, &4u32.to_le_bytes()); // PT_NOTE, skipped
        for (i, &(paddr, vaddr, bytes, memsz)) in segments.iter().enumerate() {
            let ph = 64 + (i + 1) * 56;
            let offset = f.len() as u64;
            f.extend_from_slice(bytes);
            f.resize(f.len().next_multiple_of(0x1000), 0);
            set(&mut f, ph, &1u32.to_le_bytes());
            set(&mut f, ph + 8, &offset.to_le_bytes());
            set(&mut f, ph + 16, &vaddr.to_le_bytes());
            set(&mut f, ph + 24, &paddr.to_le_bytes());
            set(&mut f, ph + 32, &(bytes.len() as u64).to_le_bytes());
            set(&mut f, ph + 40, &memsz.to_le_bytes());
        }
        f
    }

    fn debian_like_vmlinux() -> Vec<u8> {
        vmlinux(
            &[
                (LOAD, 0xffff_ffff_8100_0000, &[0xF4, 0xEB, 0xFD], 0x2000),
                (0x120_0000, 0, &[1, 2, 3, 4], 0x3000), // .data..percpu: p_vaddr 0
                (0x130_0000, 0xffff_ffff_8130_0000, &[9; 16], 0x10_0000), // init + bss
            ],
            LOAD,
        )
    }

    fn boot<'a>(
        kernel: &'a Kernel<'a>,
        initrd: Option<&'a [u8]>,
        cmdline: &'a str,
    ) -> LinuxBoot<'a> {
        LinuxBoot {
            kernel,
            initrd,
            cmdline,
            acpi_tables: None,
        }
    }

    #[test]
    fn bzimage_zero_page_has_the_documented_fields() {
        let code: Vec<u8> = (0..0x400).map(|i| i as u8).collect();
        let file = bzimage(4 << 20, &code);
        let kernel = Kernel::parse(&file).unwrap();
        assert_eq!(kernel.kind(), "bzImage");
        let initrd = [0x11u8; 5000];
        let acpi = *b"RSD PTR \x00rest of the tables";
        let mut ram = vec![0xAAu8; 32 << 20];
        let layout = build(
            &mut ram,
            RamLayout::LINEAR,
            &LinuxBoot {
                acpi_tables: Some(&acpi),
                ..boot(&kernel, Some(&initrd), "console=ttyS0 root=/dev/ram0")
            },
        )
        .unwrap();

        assert_eq!(layout.start.rip, LOAD + 0x200, "64-bit entry");
        assert_eq!(layout.start.rsi, ZERO_PAGE_GPA);
        assert_eq!(layout.start.gdt, LINUX_GDT);
        assert_eq!(layout.kernel, LOAD..LOAD + (4 << 20));
        assert_eq!(&ram[LOAD as usize..LOAD as usize + 0x400], &code[..]);
        assert!(ram[LOAD as usize + 0x400..(LOAD + (4 << 20)) as usize]
            .iter()
            .all(|&b| b == 0));

        let initrd_at = u64::from(zp_u32(&ram, 0x218));
        let zero_page = &ram[ZERO_PAGE_GPA as usize..ZERO_PAGE_GPA as usize + zp::LEN];
        // The setup header is copied from 0x1f1 to its end (0x202 + 0x6a); the loader's fields
        // (type_of_loader, cmd_line_ptr, ramdisk_*) are the only ones changed.
        let mut header = file[..0x26c].to_vec();
        header[0x210] = 0xff;
        set(&mut header, 0x218, &(initrd_at as u32).to_le_bytes());
        set(&mut header, 0x21c, &5000u32.to_le_bytes());
        set(&mut header, 0x228, &0x2_0000u32.to_le_bytes());
        assert_eq!(&zero_page[0x1f1..0x26c], &header[0x1f1..]);
        assert!(zero_page[0x26c..0x2d0].iter().all(|&b| b == 0));
        assert!(zero_page[..0x1f1]
            .iter()
            .enumerate()
            .all(|(i, &b)| b == 0 || (0x070..0x078).contains(&i) || i == 0x1e8));
        assert_eq!(zero_page[0x210], 0xff, "type_of_loader");
        assert_eq!(
            zero_page[0x211] & 0x81,
            0x01,
            "LOADED_HIGH, no CAN_USE_HEAP"
        );
        assert_eq!(zp_u32(&ram, 0x228), 0x2_0000, "cmd_line_ptr");
        assert_eq!(zp_u32(&ram, 0x0c8), 0, "ext_cmd_line_ptr");
        assert_eq!(zp_u32(&ram, 0x21c), 5000, "ramdisk_size");
        assert_eq!(
            (zp_u32(&ram, 0x0c0), zp_u32(&ram, 0x0c4)),
            (0, 0),
            "ext_ramdisk_*"
        );
        assert_eq!(layout.initrd, Some(initrd_at..initrd_at + 5000));
        assert_eq!(
            &ram[initrd_at as usize..initrd_at as usize + 5000],
            &initrd[..]
        );
        assert_eq!(
            get_u64(&ram, ZERO_PAGE_GPA + 0x070),
            0xE_0000,
            "acpi_rsdp_addr"
        );
        assert_eq!(&ram[0xE_0000..0xE_0000 + acpi.len()], &acpi[..]);

        let cmdline = b"console=ttyS0 root=/dev/ram0\0";
        assert_eq!(&ram[0x2_0000..0x2_0000 + cmdline.len()], cmdline);
    }

    #[test]
    fn e820_map_has_low_ram_the_reserved_bios_area_and_high_ram() {
        let file = bzimage(1 << 20, &[0x90; 16]);
        let kernel = Kernel::parse(&file).unwrap();
        let mut ram = vec![0u8; 24 << 20];
        build(&mut ram, RamLayout::LINEAR, &boot(&kernel, None, "")).unwrap();
        assert_eq!(ram[ZERO_PAGE_GPA as usize + 0x1e8], 3, "e820_entries");
        let entry = |i: u64| {
            let at = ZERO_PAGE_GPA + 0x2d0 + i * 20;
            (
                get_u64(&ram, at),
                get_u64(&ram, at + 8),
                get_u32(&ram, at + 16),
            )
        };
        assert_eq!(entry(0), (0, 0x9_FC00, 1));
        assert_eq!(entry(1), (0x9_FC00, 0x10_0000 - 0x9_FC00, 2));
        assert_eq!(entry(2), (0x10_0000, (24 << 20) - 0x10_0000, 1));
        assert_eq!(entry(3), (0, 0, 0));
        let acpi = ACPI_TABLES_GPA..ACPI_TABLES_GPA + ACPI_TABLES_MAX_LEN;
        assert!(
            acpi.start >= 0x9_FC00 && acpi.end <= 0x10_0000,
            "ACPI area reserved"
        );
        assert_eq!(
            get_u64(&ram, ZERO_PAGE_GPA + 0x070),
            0,
            "no ACPI tables given"
        );
        assert_eq!(zp_u32(&ram, 0x218), 0, "no initrd");
    }

    #[test]
    fn page_tables_gdt_and_stack_are_below_640_kib_and_identity_map_4_gib() {
        let file = bzimage(1 << 20, &[0x90; 16]);
        let kernel = Kernel::parse(&file).unwrap();
        let mut ram = vec![0u8; 24 << 20];
        let start = build(&mut ram, RamLayout::LINEAR, &boot(&kernel, None, ""))
            .unwrap()
            .start;
        assert_eq!(start.cr3, PAGE_TABLES_GPA);
        for gpa in [
            start.cr3 + guest_layout::IDENTITY_MAP_TABLES_LEN,
            start.rsp,
            CMDLINE_GPA + CMDLINE_AREA_LEN,
        ] {
            assert!(gpa <= LOW_USABLE_END, "{gpa:#x}");
        }
        // PML4[0] -> PDPT, PDPT[3] -> the last PD, whose last entry maps 4 GiB - 2 MiB uncached.
        let pdpt = get_u64(&ram, start.cr3) & !0xFFF;
        let pd3 = get_u64(&ram, pdpt + 3 * 8) & !0xFFF;
        let last = get_u64(&ram, pd3 + 511 * 8);
        assert_eq!(last & !0xFFF, (4 << 30) - (2 << 20));
        assert_eq!(last & 0x9B, 0x9B, "present, writable, PWT, PCD, 2 MiB page");
        let pd0 = get_u64(&ram, pdpt) & !0xFFF;
        assert_eq!(
            get_u64(&ram, pd0 + 8) & !0xFFF,
            LOAD - (14 << 20),
            "2 MiB pages from 0"
        );
        // __BOOT_CS: 64-bit code; __BOOT_DS: flat data; a busy 64-bit TSS at 0x20.
        assert_eq!(get_u64(&ram, GDT_GPA), 0);
        assert_eq!(get_u64(&ram, GDT_GPA + 8), 0);
        assert_eq!(get_u64(&ram, GDT_GPA + 0x10), 0x00AF_9B00_0000_FFFF);
        assert_eq!(get_u64(&ram, GDT_GPA + 0x18), 0x00CF_9300_0000_FFFF);
        assert_eq!((get_u64(&ram, GDT_GPA + 0x20) >> 40) & 0xFF, 0x8B);
        assert_eq!(u64::from(LINUX_GDT.limit) + 1, 0x30);
    }

    #[test]
    fn identity_layout_moves_the_kernel_to_the_blocks_host_address() {
        let file = debian_like_vmlinux();
        let kernel = Kernel::parse(&file).unwrap();
        let base = 0x1200_0000;
        let mut ram = vec![0xAAu8; 32 << 20];
        let initrd = [7u8; 0x2000];
        let b = boot(&kernel, Some(&initrd), "");
        check(32 << 20, RamLayout::identity(0), &b).unwrap();
        let layout = build(&mut ram, RamLayout::identity(base), &b).unwrap();
        // Moved as a whole to the start of high RAM (block offset 2 MiB), entry with it.
        let high = base + (2 << 20);
        assert_eq!(layout.kernel, high..high + 0x40_0000);
        assert_eq!(layout.start.rip, high);
        assert_eq!(&ram[2 << 20..(2 << 20) + 3], &[0xF4, 0xEB, 0xFD]);
        assert_eq!(
            &ram[0x40_0000..0x40_0004],
            &[1, 2, 3, 4],
            "per-CPU segment moved too"
        );
        // The initrd at the top of the block, as the guest sees it at its host address.
        let top = base + (32 << 20);
        assert_eq!(layout.initrd, Some(top - 0x2000..top));
        assert!(ram[(32 << 20) - 0x2000..].iter().all(|&b| b == 7));
        // e820: low RAM, the BIOS area, then RAM from the block's 2 MiB at its host address.
        let entry = |i: u64| {
            let at = ZERO_PAGE_GPA + zp::E820_TABLE as u64 + i * zp::E820_ENTRY_LEN as u64;
            (get_u64(&ram, at), get_u64(&ram, at + 8))
        };
        assert_eq!(entry(0), (0, LOW_USABLE_END));
        assert_eq!(entry(2), (high, (30 << 20)));
        // A kernel that cannot move is refused with the reason.
        let fixed = bzimage_fixed();
        let fixed = Kernel::parse(&fixed).unwrap();
        assert_eq!(
            build(&mut ram, RamLayout::identity(base), &boot(&fixed, None, "")).unwrap_err(),
            LinuxBootError::KernelNotMovable { to: high }
        );
    }

    #[test]
    fn vmlinux_segments_go_by_paddr_with_bss_zeroed_and_a_made_up_header() {
        let file = debian_like_vmlinux();
        let kernel = Kernel::parse(&file).unwrap();
        assert_eq!(kernel.kind(), "vmlinux");
        let mut ram = vec![0xAAu8; 32 << 20];
        let layout = build(&mut ram, RamLayout::LINEAR, &boot(&kernel, None, "quiet")).unwrap();
        assert_eq!(layout.start.rip, LOAD, "physical e_entry");
        assert_eq!(layout.start.rsi, ZERO_PAGE_GPA);
        assert_eq!(layout.kernel, LOAD..0x140_0000);
        assert_eq!(&ram[LOAD as usize..LOAD as usize + 3], &[0xF4, 0xEB, 0xFD]);
        assert_eq!(
            &ram[0x120_0000..0x120_0004],
            &[1, 2, 3, 4],
            "per-CPU segment by paddr"
        );
        assert!(ram[0x120_0004..0x140_0000]
            .iter()
            .enumerate()
            .all(|(i, &b)| b == 0 || (0x10_0000 - 4..0x10_0000 + 12).contains(&i)));
        assert!(
            ram[0x130_0010..0x140_0000].iter().all(|&b| b == 0),
            "bss zeroed"
        );
        assert_eq!(ram[0x140_0000], 0xAA, "nothing past the kernel touched");
        assert!(ram[..0x1000].iter().all(|&b| b == 0));

        assert_eq!(
            u16::from_le_bytes([ram[0x1000 + 0x1fe], ram[0x1000 + 0x1ff]]),
            0xAA55
        );
        assert_eq!(&ram[0x1000 + 0x202..0x1000 + 0x206], b"HdrS");
        assert_eq!(
            u16::from_le_bytes([ram[0x1000 + 0x206], ram[0x1000 + 0x207]]),
            0x020f
        );
        assert_eq!(zp_u32(&ram, 0x230), 2 << 20, "kernel_alignment");
        assert_eq!(ram[0x1000 + 0x210], 0xff);
        assert_eq!(ram[0x1000 + 0x211] & 1, 1, "LOADED_HIGH");
        assert_eq!(zp_u32(&ram, 0x228), 0x2_0000);
        assert_eq!(&ram[0x2_0000..0x2_0006], b"quiet\0");
        assert_eq!(ram[0x1000 + 0x1e8], 3);
    }

    #[test]
    fn cmdline_is_checked_against_cmdline_size() {
        let mut file = bzimage(1 << 20, &[0x90; 16]);
        set(&mut file, zp::CMDLINE_SIZE, &8u32.to_le_bytes());
        let kernel = Kernel::parse(&file).unwrap();
        let mut ram = vec![0xAAu8; 24 << 20];
        build(
            &mut ram,
            RamLayout::LINEAR,
            &boot(&kernel, None, "12345678"),
        )
        .unwrap();
        assert_eq!(&ram[0x2_0000..0x2_0009], b"12345678\0");
        let err = build(
            &mut ram,
            RamLayout::LINEAR,
            &boot(&kernel, None, "123456789"),
        )
        .unwrap_err();
        assert_eq!(err, LinuxBootError::CmdlineTooLong { len: 9, max: 8 });
        assert!(format!("{err}").contains("shorten cmdline"));
        assert_eq!(
            build(&mut ram, RamLayout::LINEAR, &boot(&kernel, None, "a\0b")).unwrap_err(),
            LinuxBootError::CmdlineHasNul
        );
        // A header's cmdline_size beyond the area we give the command line is capped.
        set(&mut file, zp::CMDLINE_SIZE, &u32::MAX.to_le_bytes());
        let kernel = Kernel::parse(&file).unwrap();
        let long = "x".repeat(CMDLINE_AREA_LEN as usize);
        assert!(matches!(
            build(&mut ram, RamLayout::LINEAR, &boot(&kernel, None, &long)),
            Err(LinuxBootError::CmdlineTooLong { max, .. }) if max == CMDLINE_AREA_LEN - 1
        ));
    }

    #[test]
    fn initrd_goes_high_below_initrd_addr_max_and_clear_of_the_kernel() {
        let mut file = bzimage(8 << 20, &[0x90; 16]);
        let kernel = Kernel::parse(&file).unwrap();
        let initrd = vec![7u8; (1 << 20) + 10];
        let b = boot(&kernel, Some(&initrd), "");
        let ram_len = 64 << 20;
        let range = place(ram_len, RamLayout::LINEAR, &b)
            .unwrap()
            .initrd
            .unwrap();
        assert_eq!(range.start % PAGE, 0);
        assert!(range.end <= ram_len && range.end > ram_len - PAGE);
        // A 3 GiB guest still gets it below initrd_addr_max (2 GiB).
        let range = place(MAX_RAM_LEN, RamLayout::LINEAR, &b)
            .unwrap()
            .initrd
            .unwrap();
        assert!(range.end <= 0x8000_0000 && range.end > 0x8000_0000 - PAGE);

        // Just fits above the kernel's init_size; a page less RAM and it does not.
        let kernel_end = LOAD + (8 << 20);
        let fits = kernel_end + initrd.len().next_multiple_of(4096) as u64;
        assert_eq!(
            place(fits, RamLayout::LINEAR, &b)
                .unwrap()
                .initrd
                .unwrap()
                .start,
            kernel_end
        );
        let err = place(fits - PAGE, RamLayout::LINEAR, &b)
            .map(|p| p.initrd)
            .unwrap_err();
        assert!(matches!(err, LinuxBootError::MemoryTooSmall { .. }));
        let text = format!("{err}");
        assert!(
            text.contains(
                "kernel needs 8 MiB from 16 MiB plus initrd 2 MiB: raise memory_mib to 26"
            ),
            "{text}"
        );

        // initrd_addr_max below the end of RAM that leaves no room above the kernel.
        set(
            &mut file,
            zp::INITRD_ADDR_MAX,
            &((kernel_end + 0x1000 - 1) as u32).to_le_bytes(),
        );
        let kernel = Kernel::parse(&file).unwrap();
        let err = place(
            64 << 20,
            RamLayout::LINEAR,
            &boot(&kernel, Some(&initrd), ""),
        )
        .unwrap_err();
        assert_eq!(
            err,
            LinuxBootError::InitrdAboveLimit {
                initrd_len: initrd.len() as u64,
                kernel_end,
                limit: kernel_end + 0x1000
            }
        );
        assert!(format!("{err}").contains("smaller initrd"));
    }

    #[test]
    fn too_little_or_too_much_memory_is_refused_with_the_memory_to_set() {
        let file = bzimage(0x3f9_8000, &[0x90; 16]); // Debian's init_size
        let kernel = Kernel::parse(&file).unwrap();
        let mut ram = vec![0u8; 32 << 20];
        let err = build(&mut ram, RamLayout::LINEAR, &boot(&kernel, None, "")).unwrap_err();
        assert_eq!(
            format!("{err}"),
            "guest memory too small (32 MiB): kernel needs 64 MiB from 16 MiB: raise memory_mib to 80"
        );
        // More than fits below the MMIO hole: the rest is RAM from 4 GiB.
        let placed = place(
            MAX_RAM_LEN + (2 << 20),
            RamLayout::LINEAR,
            &boot(&kernel, None, ""),
        )
        .unwrap();
        assert_eq!(
            placed.high_ranges,
            [HIGH_MEMORY..MAX_RAM_LEN, (4 << 30)..(4 << 30) + (2 << 20)]
        );
        // A hole lowered to an assigned BAR at 2 GiB moves the RAM above it to 4 GiB.
        let placed = place(
            3 << 30,
            RamLayout::linear(2 << 30),
            &boot(&kernel, None, ""),
        )
        .unwrap();
        assert_eq!(
            placed.high_ranges,
            [HIGH_MEMORY..(2 << 30), (4 << 30)..(5 << 30)]
        );
        // An identity block above 4 GiB cannot be booted: the boot page tables map 4 GiB.
        let err = place(
            64 << 20,
            RamLayout::identity(4 << 30),
            &boot(&kernel, None, ""),
        )
        .unwrap_err();
        assert!(
            matches!(err, LinuxBootError::MemoryTooLarge { .. }),
            "{err}"
        );
    }

    #[test]
    fn acpi_tables_longer_than_their_area_are_refused() {
        let file = bzimage(1 << 20, &[0x90; 16]);
        let kernel = Kernel::parse(&file).unwrap();
        let tables = vec![0u8; ACPI_TABLES_MAX_LEN as usize + 1];
        let b = LinuxBoot {
            acpi_tables: Some(&tables),
            ..boot(&kernel, None, "")
        };
        assert!(matches!(
            place(64 << 20, RamLayout::LINEAR, &b).map(|p| p.initrd),
            Err(LinuxBootError::AcpiTablesTooLong { .. })
        ));
    }

    #[test]
    fn a_vmlinux_segment_outside_ram_is_refused() {
        let file = vmlinux(
            &[
                (LOAD, 0, &[0xF4], 0x10_0000),
                (0x3000_0000, 0, &[1], 0x1000),
            ],
            LOAD,
        );
        let kernel = Kernel::parse(&file).unwrap();
        let mut ram = vec![0u8; 64 << 20];
        let err = build(&mut ram, RamLayout::LINEAR, &boot(&kernel, None, "")).unwrap_err();
        assert!(
            format!("{err}").contains("raise memory_mib to 769"),
            "{err}"
        );
        let file = vmlinux(
            &[(LOAD, 0, &[0xF4], 0x1000), (8 << 30, 0, &[1], 0x1000)],
            LOAD,
        );
        assert!(matches!(
            Kernel::parse(&file),
            Err(LinuxBootError::KernelBeyondRamLimit { .. })
        ));
        let file = vmlinux(&[(0x8_0000, 0, &[0xF4], 0x1000)], 0x8_0000);
        assert_eq!(
            Kernel::parse(&file).unwrap_err(),
            LinuxBootError::KernelBelow1Mib { start: 0x8_0000 }
        );
    }

    #[test]
    fn broken_vmlinux_headers_are_refused() {
        use LinuxBootError::BadVmlinux;
        let good = debian_like_vmlinux();
        let broken = |edit: &dyn Fn(&mut Vec<u8>)| {
            let mut f = good.clone();
            edit(&mut f);
            Kernel::parse(&f).map(|_| ()).unwrap_err()
        };
        assert!(matches!(broken(&|f| f[4] = 1), BadVmlinux(m) if m.contains("ELF64")));
        assert!(matches!(broken(&|f| f[18] = 3), BadVmlinux(m) if m.contains("x86-64")));
        assert!(matches!(broken(&|f| f[16] = 3), BadVmlinux(m) if m.contains("ET_EXEC")));
        let ph1 = 64 + 56;
        assert!(matches!(
            broken(&|f| set(f, ph1 + 32, &u64::MAX.to_le_bytes())),
            BadVmlinux(_)
        ));
        assert!(matches!(
            broken(&|f| set(f, ph1 + 8, &u64::MAX.to_le_bytes())),
            BadVmlinux(_)
        ));
        assert!(matches!(
            broken(&|f| set(f, 32, &u64::MAX.to_le_bytes())),
            BadVmlinux(_)
        ));
        assert!(matches!(
            broken(&|f| set(f, 56, &1000u16.to_le_bytes())),
            BadVmlinux(_)
        ));
        assert!(matches!(
            broken(&|f| set(f, 24, &0x500_0000u64.to_le_bytes())),
            BadVmlinux(m) if m.contains("entry")
        ));
        let overlapping = vmlinux(
            &[(LOAD, 0, &[0xF4], 0x2000), (LOAD + 0x1000, 0, &[1], 0x1000)],
            LOAD,
        );
        assert!(matches!(Kernel::parse(&overlapping), Err(BadVmlinux(m)) if m.contains("overlap")));
    }

    #[test]
    fn garbage_is_not_a_kernel_and_truncations_never_panic() {
        for garbage in [&b""[..], b"\x7fEL", b"MZ\x90\x00", &[0xFFu8; 4096]] {
            let err = Kernel::parse(garbage).unwrap_err();
            assert!(matches!(
                err,
                LinuxBootError::NotAKernel | LinuxBootError::BadVmlinux(_)
            ));
        }
        assert!(
            format!("{}", LinuxBootError::NotAKernel).contains("not a bzImage or an ELF vmlinux")
        );
        // Every prefix and a byte flipped anywhere in the headers: an error or a kernel, no panic;
        // whatever parses also builds or fails cleanly.
        let mut ram = vec![0u8; 24 << 20];
        for file in [bzimage(1 << 20, &[0x90; 64]), debian_like_vmlinux()] {
            for len in 0..file.len() {
                let _ = Kernel::parse(&file[..len]);
            }
            for at in 0..0x300.min(file.len()) {
                let mut f = file.clone();
                f[at] ^= 0xFF;
                if let Ok(kernel) = Kernel::parse(&f) {
                    let _ = build(
                        &mut ram,
                        RamLayout::LINEAR,
                        &boot(&kernel, Some(&[1, 2, 3]), "x"),
                    );
                }
            }
        }
    }

    #[test]
    fn truncated_and_old_bzimages_are_refused() {
        let file = bzimage(1 << 20, &[0x90; 64]);
        let err = Kernel::parse(&file[..file.len() - 16]).unwrap_err();
        assert_eq!(
            err,
            LinuxBootError::BzImageTruncated {
                needed: 1024 + 64,
                have: 1024 + 48
            }
        );
        assert!(format!("{err}").starts_with("bzImage truncated: its header says 1088 bytes"));
        let err = Kernel::parse(&file[..0x300]).unwrap_err();
        assert!(matches!(err, LinuxBootError::BzImageTruncated { .. }));

        let mut old = file.clone();
        set(&mut old, zp::VERSION, &0x020au16.to_le_bytes());
        let err = Kernel::parse(&old).unwrap_err();
        assert_eq!(err, LinuxBootError::No64BitEntry { version: 0x020a });
        assert!(format!("{err}").starts_with("boot protocol 2.10 lacks the 64-bit entry"));
        let mut no64 = file.clone();
        set(&mut no64, zp::XLOADFLAGS, &0u16.to_le_bytes());
        assert!(matches!(
            Kernel::parse(&no64),
            Err(LinuxBootError::No64BitEntry { .. })
        ));

        // setup_sects 0 means 4: the code then starts at 5 * 512 and this file is too short.
        let mut zero_sects = file.clone();
        zero_sects[zp::SETUP_SECTS] = 0;
        assert!(matches!(
            Kernel::parse(&zero_sects),
            Err(LinuxBootError::BzImageTruncated { needed, .. }) if needed == 5 * 512 + 64
        ));
    }

    #[test]
    fn a_relocatable_bzimage_is_aligned_up_to_kernel_alignment() {
        let mut file = bzimage(1 << 20, &[0x90; 16]);
        set(&mut file, zp::PREF_ADDRESS, &(LOAD + 0x1000).to_le_bytes());
        let kernel = Kernel::parse(&file).unwrap();
        assert_eq!(kernel.entry(), LOAD + (2 << 20) + 0x200);
        set(&mut file, zp::KERNEL_ALIGNMENT, &3u32.to_le_bytes());
        assert!(matches!(
            Kernel::parse(&file),
            Err(LinuxBootError::BadSetupHeader(_))
        ));
    }
}
