//! The guest boot protocol: what guest memory holds when a guest's first instruction runs.
//!
//! A guest starts exactly as the Exitless loader starts a kernel (docs/guest-boot-protocol.md), so one
//! guest binary runs bare metal and virtualized: 64-bit mode, paging on, interrupts off, `rdi` = guest-
//! physical address of an `exitless_abi::boot_info::BootInfo`, guest-physical memory below 4 GiB
//! identity-mapped with 2 MiB pages, and the image's upper-half link addresses mapped onto
//! [`IMAGE_GPA`].
//!
//! | guest-physical        | holds |
//! | --------------------- | ----- |
//! | `0x1000`              | `BootInfo`, then the memory map |
//! | `0x2000`              | GDT: null, code64 (0x08), data (0x10), TSS (0x18) |
//! | `0x3000`              | TSS (all zero: no IST stacks, no I/O map) |
//! | `0x10000..0x18000`    | page tables |
//! | `0x8000`              | top of a scratch stack for the first instructions |
//! | [`IMAGE_GPA`]         | the image (its PT_LOAD span, bss zeroed) |
//! | image end..RAM end    | free for the guest |

use exitless_abi::boot_info::{BootInfo, MemoryKind, MemoryRegion};
use exitless_abi::elf_image::ElfImage;

pub const BOOT_INFO_GPA: u64 = 0x1000;
pub const MEMORY_MAP_GPA: u64 = BOOT_INFO_GPA + 0x100;
pub const GDT_GPA: u64 = 0x2000;
pub const TSS_GPA: u64 = 0x3000;
pub const INITIAL_STACK_TOP: u64 = 0x8000;
const PML4_GPA: u64 = 0x10000;
const IDENTITY_PDPT_GPA: u64 = 0x11000;
/// Four page directories: 4 GiB of 2 MiB pages.
const IDENTITY_PD_GPA: u64 = 0x12000;
const IMAGE_PDPT_GPA: u64 = 0x16000;
// `write_identity_map` puts the PDPT and PDs in the pages after the PML4.
const _: () = assert!(
    IDENTITY_PDPT_GPA == PML4_GPA + 0x1000
        && IDENTITY_PD_GPA == PML4_GPA + 0x2000
        && IMAGE_PDPT_GPA == PML4_GPA + IDENTITY_MAP_TABLES_LEN
);
const IMAGE_PD_GPA: u64 = 0x17000;
pub const IMAGE_GPA: u64 = 0x20_0000;
/// Guest-physical memory identity-mapped by the guest's initial page tables.
pub const IDENTITY_MAP_END: u64 = 4 << 30;
/// From here up the identity map is uncached (PCD|PWT): the MMIO hole below 4 GiB (IOAPIC, LAPIC,
/// assigned devices' BARs).
const MMIO_HOLE_START: u64 = 3 << 30;

pub const CODE_SELECTOR: u16 = 0x08;
pub const DATA_SELECTOR: u16 = 0x10;
pub const TSS_SELECTOR: u16 = 0x18;
pub const GDT_LIMIT: u16 = 5 * 8 - 1;
pub const TSS_LIMIT: u32 = 0x67;
/// Page tables for the identity map: PML4, PDPT, four PDs (see [`write_identity_map`]).
pub const IDENTITY_MAP_TABLES_LEN: u64 = 6 * 4096;

const MIB2: u64 = 2 << 20;
// Page-table entry bits (SDM Vol. 3A 4.5, Tables 4-15..4-18).
const PRESENT: u64 = 1 << 0;
const WRITABLE: u64 = 1 << 1;
const WRITE_THROUGH: u64 = 1 << 3;
const CACHE_DISABLE: u64 = 1 << 4;
const PAGE_SIZE_BIT: u64 = 1 << 7;

/// Everything the VMCS needs to start the guest: our own guests (this module) and Linux
/// (`linux_boot`) start in 64-bit mode the same way and differ only in these values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestStart {
    pub rip: u64,
    pub rsp: u64,
    pub rdi: u64,
    pub rsi: u64,
    pub cr3: u64,
    pub gdt: GuestGdt,
}

/// The guest's GDT: where it is and which of its descriptors CS, the data segments and TR hold.
/// [`write_gdt`] writes the descriptors at these selectors, null everywhere else.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestGdt {
    pub base: u64,
    pub limit: u16,
    pub code_selector: u16,
    pub data_selector: u16,
    /// VM entry needs a usable TR in 64-bit mode (SDM Vol. 3C 27.3.1.2), whatever the guest wants.
    pub tss_selector: u16,
    pub tss_base: u64,
}

impl GuestGdt {
    /// Our own guests' GDT (guest boot protocol).
    pub const EXITLESS: Self = Self {
        base: GDT_GPA,
        limit: GDT_LIMIT,
        code_selector: CODE_SELECTOR,
        data_selector: DATA_SELECTOR,
        tss_selector: TSS_SELECTOR,
        tss_base: TSS_GPA,
    };
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayoutError {
    /// The image's span does not start on a 2 MiB boundary (it is mapped with 2 MiB pages).
    ImageNotAligned(u64),
    /// Guest memory is smaller than the boot structures plus the image plus 1 MiB of free memory.
    MemoryTooSmall { needed: u64, have: u64 },
    /// The image needs more than one page directory (1 GiB) of mapping.
    ImageTooLarge(u64),
}

impl core::fmt::Display for LayoutError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::ImageNotAligned(start) => {
                write!(f, "image starts at {start:#x}, not on a 2 MiB boundary: link it with hypervisor/abi/kernel.ld")
            }
            Self::MemoryTooSmall { needed, have } => write!(
                f,
                "guest needs at least {} MiB of memory for its image, has {} MiB: raise memory_mib",
                needed.div_ceil(1 << 20),
                have >> 20
            ),
            Self::ImageTooLarge(len) => write!(
                f,
                "image spans {len:#x} bytes, more than the 1 GiB a guest image may"
            ),
        }
    }
}

/// Lays out a guest's memory (`ram` is guest-physical 0..len) for `image` and returns its start state.
pub fn build(ram: &mut [u8], image: &ElfImage<'_>) -> Result<GuestStart, LayoutError> {
    let span = image.span();
    if !span.start.is_multiple_of(MIB2) {
        return Err(LayoutError::ImageNotAligned(span.start));
    }
    let image_len = image.span_len();
    if image_len > 512 * MIB2 {
        return Err(LayoutError::ImageTooLarge(image_len));
    }
    let image_end = (IMAGE_GPA + image_len).next_multiple_of(4096);
    let needed = image_end + (1 << 20);
    let ram_len = ram.len() as u64;
    if ram_len < needed {
        return Err(LayoutError::MemoryTooSmall {
            needed,
            have: ram_len,
        });
    }
    ram[..IMAGE_GPA as usize].fill(0);
    let loaded = image.load_into(&mut ram[IMAGE_GPA as usize..image_end as usize]);
    debug_assert!(loaded, "span checked above");

    write_page_tables(ram, span.start, image_len);
    write_gdt(ram, &GuestGdt::EXITLESS);

    let regions = [
        region(0, 0x10_0000, MemoryKind::Loader),
        region(0x10_0000, IMAGE_GPA - 0x10_0000, MemoryKind::Usable),
        region(IMAGE_GPA, image_end - IMAGE_GPA, MemoryKind::Loader),
        region(image_end, ram_len - image_end, MemoryKind::Usable),
    ];
    for (i, r) in regions.iter().enumerate() {
        let at = MEMORY_MAP_GPA as usize + i * core::mem::size_of::<MemoryRegion>();
        put(ram, at as u64, &r.start.to_le_bytes());
        put(ram, at as u64 + 8, &r.len.to_le_bytes());
        put(ram, at as u64 + 16, &(r.kind as u32).to_le_bytes());
    }
    let info = BootInfo {
        memory_map: MEMORY_MAP_GPA,
        memory_map_len: regions.len() as u64,
        page_table_root: PML4_GPA,
        identity_map_end: IDENTITY_MAP_END,
        kernel_phys_start: IMAGE_GPA,
        kernel_phys_len: image_len,
        ..BootInfo::empty()
    };
    // SAFETY: BootInfo is repr(C) plain data; we copy its bytes.
    let bytes = unsafe {
        core::slice::from_raw_parts(
            &info as *const BootInfo as *const u8,
            core::mem::size_of::<BootInfo>(),
        )
    };
    put(ram, BOOT_INFO_GPA, bytes);

    Ok(GuestStart {
        rip: image.entry(),
        rsp: INITIAL_STACK_TOP,
        rdi: BOOT_INFO_GPA,
        rsi: 0,
        cr3: PML4_GPA,
        gdt: GuestGdt::EXITLESS,
    })
}

fn region(start: u64, len: u64, kind: MemoryKind) -> MemoryRegion {
    MemoryRegion {
        start,
        len,
        kind,
        _reserved: 0,
    }
}

fn put(ram: &mut [u8], gpa: u64, bytes: &[u8]) {
    ram[gpa as usize..gpa as usize + bytes.len()].copy_from_slice(bytes);
}

fn put_u64(ram: &mut [u8], gpa: u64, value: u64) {
    put(ram, gpa, &value.to_le_bytes());
}

fn write_page_tables(ram: &mut [u8], image_virt: u64, image_len: u64) {
    write_identity_map(ram, PML4_GPA);
    let table = PRESENT | WRITABLE;
    // The image's link addresses: PML4[i4] -> PDPT[i3] -> PD[i2..] of 2 MiB pages onto IMAGE_GPA.
    let (i4, i3, i2) = (
        (image_virt >> 39) & 511,
        (image_virt >> 30) & 511,
        (image_virt >> 21) & 511,
    );
    put_u64(ram, PML4_GPA + i4 * 8, IMAGE_PDPT_GPA | table);
    put_u64(ram, IMAGE_PDPT_GPA + i3 * 8, IMAGE_PD_GPA | table);
    for page in 0..image_len.div_ceil(MIB2) {
        put_u64(
            ram,
            IMAGE_PD_GPA + (i2 + page) * 8,
            (IMAGE_GPA + page * MIB2) | table | PAGE_SIZE_BIT,
        );
    }
}

/// Identity-maps guest-physical 0..[`IDENTITY_MAP_END`] with 2 MiB pages, uncached from
/// [`MMIO_HOLE_START`]: the PML4 at `pml4_gpa`, then its PDPT and four PDs in the next pages
/// ([`IDENTITY_MAP_TABLES_LEN`] in all, which the caller has zeroed). Returns the CR3 value.
pub fn write_identity_map(ram: &mut [u8], pml4_gpa: u64) -> u64 {
    let table = PRESENT | WRITABLE;
    let pdpt_gpa = pml4_gpa + 0x1000;
    let pd_gpa = pml4_gpa + 0x2000;
    put_u64(ram, pml4_gpa, pdpt_gpa | table);
    for pd in 0..4u64 {
        put_u64(ram, pdpt_gpa + pd * 8, (pd_gpa + pd * 4096) | table);
        for entry in 0..512u64 {
            let gpa = (pd * 512 + entry) * MIB2;
            let cache = if gpa >= MMIO_HOLE_START {
                CACHE_DISABLE | WRITE_THROUGH
            } else {
                0
            };
            put_u64(
                ram,
                pd_gpa + pd * 4096 + entry * 8,
                gpa | table | PAGE_SIZE_BIT | cache,
            );
        }
    }
    pml4_gpa
}

/// Writes `gdt`'s descriptors (flat 64-bit code, flat data, a 64-bit TSS of [`TSS_LIMIT`]) at its
/// selectors; the caller has zeroed the rest of the table.
pub fn write_gdt(ram: &mut [u8], gdt: &GuestGdt) {
    // SDM Vol. 3A 3.4.5: code64 = L|P|S|type 0xB, data = P|S|type 0x3|D/B|G; 64-bit TSS (16 bytes) type 0xB.
    put_u64(ram, gdt.base, 0);
    put_u64(
        ram,
        gdt.base + u64::from(gdt.code_selector),
        0x00AF_9B00_0000_FFFF,
    );
    put_u64(
        ram,
        gdt.base + u64::from(gdt.data_selector),
        0x00CF_9300_0000_FFFF,
    );
    let base = gdt.tss_base;
    let low = u64::from(TSS_LIMIT)
        | ((base & 0xFF_FFFF) << 16)
        | (0x8B << 40)
        | (((base >> 24) & 0xFF) << 56);
    let tss = gdt.base + u64::from(gdt.tss_selector);
    put_u64(ram, tss, low);
    put_u64(ram, tss + 8, base >> 32);
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use alloc::vec;
    use exitless_abi::elf_image::AddressWindow;

    /// A minimal ELF64 EXEC with one RX PT_LOAD at the kernel link address, entry at its start.
    pub(in crate::vmm) fn tiny_elf(vaddr: u64, code: &[u8], mem_size: u64) -> alloc::vec::Vec<u8> {
        let mut f = vec![0u8; 0x1000 + code.len()];
        f[0..4].copy_from_slice(b"\x7fELF");
        f[4] = 2; // 64-bit
        f[5] = 1; // little-endian
        f[6] = 1; // version
        f[16..18].copy_from_slice(&2u16.to_le_bytes()); // EXEC
        f[18..20].copy_from_slice(&62u16.to_le_bytes()); // x86-64
        f[20..24].copy_from_slice(&1u32.to_le_bytes());
        f[24..32].copy_from_slice(&vaddr.to_le_bytes()); // entry
        f[32..40].copy_from_slice(&64u64.to_le_bytes()); // phoff
        f[52..54].copy_from_slice(&64u16.to_le_bytes()); // ehsize
        f[54..56].copy_from_slice(&56u16.to_le_bytes()); // phentsize
        f[56..58].copy_from_slice(&1u16.to_le_bytes()); // phnum
        let ph = 64;
        f[ph..ph + 4].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD
        f[ph + 4..ph + 8].copy_from_slice(&5u32.to_le_bytes()); // R X
        f[ph + 8..ph + 16].copy_from_slice(&0x1000u64.to_le_bytes()); // offset
        f[ph + 16..ph + 24].copy_from_slice(&vaddr.to_le_bytes());
        f[ph + 24..ph + 32].copy_from_slice(&vaddr.to_le_bytes());
        f[ph + 32..ph + 40].copy_from_slice(&(code.len() as u64).to_le_bytes());
        f[ph + 40..ph + 48].copy_from_slice(&mem_size.to_le_bytes());
        f[ph + 48..ph + 56].copy_from_slice(&0x1000u64.to_le_bytes());
        f[0x1000..].copy_from_slice(code);
        f
    }

    fn read_u64(ram: &[u8], gpa: u64) -> u64 {
        u64::from_le_bytes(ram[gpa as usize..gpa as usize + 8].try_into().unwrap())
    }

    /// Walks the guest page tables the way the CPU would (4-level, 2 MiB leaves).
    fn translate(ram: &[u8], cr3: u64, virt: u64) -> Option<u64> {
        let mut table = cr3;
        for shift in [39u64, 30, 21] {
            let entry = read_u64(ram, table + ((virt >> shift) & 511) * 8);
            if entry & PRESENT == 0 {
                return None;
            }
            if shift == 21 {
                assert_ne!(entry & PAGE_SIZE_BIT, 0);
                return Some((entry & 0x000F_FFFF_FFE0_0000) + (virt & (MIB2 - 1)));
            }
            table = entry & 0x000F_FFFF_FFFF_F000;
        }
        None
    }

    const KERNEL: u64 = 0xffff_ffff_8000_0000;

    #[test]
    fn image_is_loaded_and_mapped_at_its_link_address() {
        let elf = tiny_elf(KERNEL, &[0xF4, 0xEB, 0xFD], 0x3000);
        let image = ElfImage::parse(&elf, AddressWindow::UPPER_HALF).unwrap();
        let mut ram = vec![0xAAu8; 8 << 20];
        let start = build(&mut ram, &image).unwrap();
        assert_eq!(
            start,
            GuestStart {
                rip: KERNEL,
                rsp: INITIAL_STACK_TOP,
                rdi: BOOT_INFO_GPA,
                rsi: 0,
                cr3: PML4_GPA,
                gdt: GuestGdt::EXITLESS,
            }
        );
        assert_eq!(
            &ram[IMAGE_GPA as usize..IMAGE_GPA as usize + 3],
            &[0xF4, 0xEB, 0xFD]
        );
        assert!(
            ram[IMAGE_GPA as usize + 3..IMAGE_GPA as usize + 0x3000]
                .iter()
                .all(|&b| b == 0),
            "bss zeroed"
        );
        assert_eq!(
            translate(&ram, start.cr3, KERNEL + 0x1234),
            Some(IMAGE_GPA + 0x1234)
        );
        assert_eq!(
            translate(&ram, start.cr3, 0x1234_5678),
            Some(0x1234_5678),
            "identity map"
        );
        assert_eq!(
            translate(&ram, start.cr3, 0xFEC0_0000),
            Some(0xFEC0_0000),
            "MMIO hole mapped"
        );
        assert_eq!(
            translate(&ram, start.cr3, 0x1_0000_0000),
            None,
            "nothing above 4 GiB"
        );
        let uncached = read_u64(&ram, IDENTITY_PD_GPA + 3 * 4096 + 502 * 8);
        assert_eq!(
            uncached & (CACHE_DISABLE | WRITE_THROUGH),
            CACHE_DISABLE | WRITE_THROUGH
        );
    }

    #[test]
    fn boot_info_describes_guest_memory() {
        let elf = tiny_elf(KERNEL, &[0xF4], 0x1000);
        let image = ElfImage::parse(&elf, AddressWindow::UPPER_HALF).unwrap();
        let mut ram = vec![0u8; 4 << 20];
        build(&mut ram, &image).unwrap();
        // SAFETY: `build` wrote a BootInfo there; read it unaligned from the byte buffer.
        let info: BootInfo =
            unsafe { core::ptr::read_unaligned(ram.as_ptr().add(BOOT_INFO_GPA as usize).cast()) };
        assert_eq!(info.validate(), Ok(()));
        assert_eq!(info.kernel_phys_start, IMAGE_GPA);
        assert_eq!(info.memory_map_len, 4);
        let last = MEMORY_MAP_GPA as usize + 3 * 24;
        let start = u64::from_le_bytes(ram[last..last + 8].try_into().unwrap());
        let len = u64::from_le_bytes(ram[last + 8..last + 16].try_into().unwrap());
        assert_eq!((start, start + len), (IMAGE_GPA + 0x1000, 4 << 20));
    }

    #[test]
    fn gdt_descriptors_match_hand_encodings() {
        let elf = tiny_elf(KERNEL, &[0xF4], 0x1000);
        let image = ElfImage::parse(&elf, AddressWindow::UPPER_HALF).unwrap();
        let mut ram = vec![0u8; 4 << 20];
        build(&mut ram, &image).unwrap();
        let code = read_u64(&ram, GDT_GPA + 8);
        assert_eq!((code >> 53) & 1, 1, "L bit");
        assert_eq!(
            (code >> 40) & 0xFF,
            0x9B,
            "present, DPL0, code exec/read accessed"
        );
        let tss_low = read_u64(&ram, GDT_GPA + 24);
        assert_eq!((tss_low >> 40) & 0xF, 0xB, "busy 64-bit TSS");
        assert_eq!((tss_low >> 16) & 0xFF_FFFF, TSS_GPA);
    }

    #[test]
    fn too_little_memory_and_misaligned_images_are_refused() {
        let elf = tiny_elf(KERNEL, &[0xF4], 0x1000);
        let image = ElfImage::parse(&elf, AddressWindow::UPPER_HALF).unwrap();
        let mut ram = vec![0u8; 2 << 20];
        assert!(matches!(
            build(&mut ram, &image),
            Err(LayoutError::MemoryTooSmall { .. })
        ));
        let elf = tiny_elf(KERNEL + 0x1000, &[0xF4], 0x1000);
        let image = ElfImage::parse(&elf, AddressWindow::UPPER_HALF).unwrap();
        let mut ram = vec![0u8; 8 << 20];
        assert_eq!(
            build(&mut ram, &image),
            Err(LayoutError::ImageNotAligned(KERNEL + 0x1000))
        );
    }
}
