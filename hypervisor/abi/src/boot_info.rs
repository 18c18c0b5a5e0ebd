//! The boot-info structure the loader passes to the kernel it starts, in `rdi`.
//!
//! Contract (see docs/architecture.md, "Boot flow"):
//! - Entered in 64-bit long mode, interrupts off, boot services exited, on the loader's page tables
//!   (`page_table_root`): all physical memory below `identity_map_end` is identity-mapped with
//!   writable, non-executable 2 MiB pages, except the pages holding firmware runtime-services code
//!   (executable, so UEFI `ResetSystem` keeps working); the kernel's PT_LOAD segments are mapped at
//!   their link addresses (upper half) with 4 KiB pages and their own permissions. CR0.WP is set.
//! - The firmware's GDT lies in memory reported Usable: load your own before allocating frames.
//! - Every pointer in this structure is a physical address (and so, through the identity map,
//!   a usable virtual one).
//! - `version` changes whenever the layout changes; a kernel refuses a version it does not know.

/// "EXITLESS" in little-endian ASCII.
pub const BOOT_INFO_MAGIC: u64 = u64::from_le_bytes(*b"EXITLESS");
/// Layout version of [`BootInfo`].
pub const BOOT_INFO_VERSION: u32 = 1;

/// What a range of physical memory is, reduced from the UEFI memory map to what the kernel needs.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemoryKind {
    /// Free for the kernel to allocate (UEFI conventional memory and boot-services memory).
    Usable = 1,
    /// Holds the kernel image, its modules, the boot info and the page tables: in use, keep.
    Loader = 2,
    /// ACPI tables: keep until they have been parsed.
    AcpiReclaimable = 3,
    /// Firmware runtime services code/data, ACPI NVS and everything else: never touch.
    Reserved = 4,
    /// Memory-mapped I/O the firmware described.
    Mmio = 5,
}

/// One range of physical memory.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryRegion {
    pub start: u64,
    pub len: u64,
    pub kind: MemoryKind,
    pub _reserved: u32,
}

impl MemoryRegion {
    pub const fn end(&self) -> u64 {
        self.start + self.len
    }
}

impl MemoryKind {
    /// Reduces a UEFI memory type (UEFI 2.10, 7.2 "EFI_MEMORY_TYPE") to what the kernel needs.
    /// Boot-services memory is free once boot services have exited; the loader's own code and data
    /// stay `Loader` (the loader's code is dead after the jump, but keeping it is harmless).
    pub const fn from_uefi_type(memory_type: u32) -> Self {
        match memory_type {
            3 | 4 | 7 => Self::Usable, // BootServicesCode/Data, ConventionalMemory
            1 | 2 => Self::Loader,     // LoaderCode/Data
            9 => Self::AcpiReclaimable,
            11 | 12 => Self::Mmio, // MemoryMappedIO, MemoryMappedIOPortSpace
            // Reserved, RuntimeServices*, Unusable, ACPI NVS, PalCode, Persistent, Unaccepted, OEM/OS.
            _ => Self::Reserved,
        }
    }
}

/// `out` has too little room for the firmware's memory map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryMapFull {
    pub capacity: usize,
}

/// Fills `out` with `entries` (any order), sorted by start, with empty ranges dropped and touching
/// ranges of the same kind merged; returns how many regions `out` holds. `out` needs room for every
/// input entry before merging.
pub fn build_memory_map(
    entries: impl IntoIterator<Item = MemoryRegion>,
    out: &mut [MemoryRegion],
) -> Result<usize, MemoryMapFull> {
    let capacity = out.len();
    let mut len = 0;
    for region in entries.into_iter().filter(|r| r.len != 0) {
        let slot = out.get_mut(len).ok_or(MemoryMapFull { capacity })?;
        *slot = region;
        len += 1;
    }
    out[..len].sort_unstable_by_key(|r| r.start);
    let mut merged = 0;
    for i in 0..len {
        let region = out[i];
        if merged > 0 {
            let last = &mut out[merged - 1];
            if last.kind == region.kind && last.end() == region.start {
                last.len += region.len;
                continue;
            }
        }
        out[merged] = region;
        merged += 1;
    }
    Ok(merged)
}

/// A file the loader brought from the ESP's `\exitless\` directory (guest images, configuration).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Module {
    /// Path relative to `\exitless\`, with `/` separators, NUL-padded (e.g. `guests/eli.elf`).
    pub name: [u8; 64],
    pub phys: u64,
    pub len: u64,
}

impl Module {
    /// The module's name, or `""` if the loader wrote bytes that are not UTF-8.
    pub fn name(&self) -> &str {
        let end = self
            .name
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(self.name.len());
        core::str::from_utf8(&self.name[..end]).unwrap_or("")
    }

    /// Builds the fixed-size name field; `None` if `name` does not fit.
    pub fn encode_name(name: &str) -> Option<[u8; 64]> {
        let mut out = [0u8; 64];
        if name.len() >= out.len() {
            return None;
        }
        out[..name.len()].copy_from_slice(name.as_bytes());
        Some(out)
    }
}

/// Handed from the loader to the kernel. All addresses are physical.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BootInfo {
    pub magic: u64,
    pub version: u32,
    /// `size_of::<BootInfo>()` as the loader knew it.
    pub size: u32,
    /// Array of [`MemoryRegion`], sorted by `start`, non-overlapping.
    pub memory_map: u64,
    pub memory_map_len: u64,
    /// Array of [`Module`].
    pub modules: u64,
    pub modules_len: u64,
    /// ACPI 2.0+ RSDP (or 1.0 if that is all there is); 0 when the firmware published none.
    pub rsdp: u64,
    /// The UEFI system table, for runtime services (ResetSystem); 0 if unknown.
    pub uefi_system_table: u64,
    /// CR3 the kernel was entered with.
    pub page_table_root: u64,
    /// Physical addresses below this are identity-mapped.
    pub identity_map_end: u64,
    /// Physical range the kernel image was loaded into.
    pub kernel_phys_start: u64,
    pub kernel_phys_len: u64,
}

/// Why a [`BootInfo`] cannot be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootInfoError {
    BadMagic(u64),
    UnknownVersion(u32),
    SizeMismatch { expected: u32, found: u32 },
}

impl core::fmt::Display for BootInfoError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::BadMagic(m) => write!(f, "boot info magic {m:#x} is not \"EXITLESS\": not started by the Exitless loader"),
            Self::UnknownVersion(v) => write!(f, "boot info version {v}, this kernel knows {BOOT_INFO_VERSION}: rebuild loader and kernel together (`cargo xtask image`)"),
            Self::SizeMismatch { expected, found } => write!(f, "boot info is {found} bytes, expected {expected}: loader and kernel disagree"),
        }
    }
}

impl BootInfo {
    pub const fn empty() -> Self {
        Self {
            magic: BOOT_INFO_MAGIC,
            version: BOOT_INFO_VERSION,
            size: core::mem::size_of::<Self>() as u32,
            memory_map: 0,
            memory_map_len: 0,
            modules: 0,
            modules_len: 0,
            rsdp: 0,
            uefi_system_table: 0,
            page_table_root: 0,
            identity_map_end: 0,
            kernel_phys_start: 0,
            kernel_phys_len: 0,
        }
    }

    /// Checks that this structure was written by a loader of the same layout.
    pub fn validate(&self) -> Result<(), BootInfoError> {
        if self.magic != BOOT_INFO_MAGIC {
            return Err(BootInfoError::BadMagic(self.magic));
        }
        if self.version != BOOT_INFO_VERSION {
            return Err(BootInfoError::UnknownVersion(self.version));
        }
        let expected = core::mem::size_of::<Self>() as u32;
        if self.size != expected {
            return Err(BootInfoError::SizeMismatch {
                expected,
                found: self.size,
            });
        }
        Ok(())
    }

    /// # Safety
    /// `memory_map`/`memory_map_len` must describe a valid array that outlives the returned slice.
    pub unsafe fn memory_regions(&self) -> &[MemoryRegion] {
        if self.memory_map_len == 0 {
            return &[];
        }
        // SAFETY: the caller guarantees `memory_map` points to `memory_map_len` valid, aligned
        // regions that outlive `&self` (this function's contract); the length is nonzero here.
        unsafe {
            core::slice::from_raw_parts(
                self.memory_map as *const MemoryRegion,
                self.memory_map_len as usize,
            )
        }
    }

    /// # Safety
    /// `modules`/`modules_len` must describe a valid array that outlives the returned slice.
    pub unsafe fn module_list(&self) -> &[Module] {
        if self.modules_len == 0 {
            return &[];
        }
        // SAFETY: the caller guarantees `modules` points to `modules_len` valid, aligned modules
        // that outlive `&self` (this function's contract); the length is nonzero here.
        unsafe {
            core::slice::from_raw_parts(self.modules as *const Module, self.modules_len as usize)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn region(start: u64, len: u64, kind: MemoryKind) -> MemoryRegion {
        MemoryRegion {
            start,
            len,
            kind,
            _reserved: 0,
        }
    }

    #[test]
    fn uefi_types_map_to_kinds() {
        // UEFI 2.10 Table 7-5 numbering.
        let expected = [
            (0, MemoryKind::Reserved),
            (1, MemoryKind::Loader),
            (2, MemoryKind::Loader),
            (3, MemoryKind::Usable),
            (4, MemoryKind::Usable),
            (5, MemoryKind::Reserved),
            (6, MemoryKind::Reserved),
            (7, MemoryKind::Usable),
            (8, MemoryKind::Reserved),
            (9, MemoryKind::AcpiReclaimable),
            (10, MemoryKind::Reserved),
            (11, MemoryKind::Mmio),
            (12, MemoryKind::Mmio),
            (13, MemoryKind::Reserved),
            (14, MemoryKind::Reserved),
            (15, MemoryKind::Reserved),
            (0x8000_0000, MemoryKind::Reserved),
        ];
        for (ty, kind) in expected {
            assert_eq!(MemoryKind::from_uefi_type(ty), kind, "type {ty}");
        }
    }

    #[test]
    fn memory_map_is_sorted_and_merged() {
        use MemoryKind::*;
        let input = [
            region(0x10_0000, 0x1000, Usable),
            region(0, 0xa0000, Usable),
            region(0x10_1000, 0x2000, Usable), // touches the previous Usable: merged
            region(0x10_3000, 0x1000, Loader),
            region(0x10_4000, 0, Usable),      // empty: dropped
            region(0x10_5000, 0x1000, Loader), // gap before it: not merged
            region(0xfee0_0000, 0x1000, Mmio),
        ];
        let mut out = [region(0, 0, Reserved); 7];
        let n = build_memory_map(input, &mut out).unwrap();
        assert_eq!(
            &out[..n],
            &[
                region(0, 0xa0000, Usable),
                region(0x10_0000, 0x3000, Usable),
                region(0x10_3000, 0x1000, Loader),
                region(0x10_5000, 0x1000, Loader),
                region(0xfee0_0000, 0x1000, Mmio),
            ]
        );
        let mut small = [region(0, 0, Reserved); 3];
        assert_eq!(
            build_memory_map(input, &mut small),
            Err(MemoryMapFull { capacity: 3 })
        );
    }

    #[test]
    fn fresh_boot_info_validates() {
        assert_eq!(BootInfo::empty().validate(), Ok(()));
    }

    #[test]
    fn wrong_magic_version_and_size_are_refused() {
        let mut b = BootInfo::empty();
        b.magic = 0;
        assert_eq!(b.validate(), Err(BootInfoError::BadMagic(0)));
        let mut b = BootInfo::empty();
        b.version = 99;
        assert_eq!(b.validate(), Err(BootInfoError::UnknownVersion(99)));
        let mut b = BootInfo::empty();
        b.size -= 8;
        assert!(matches!(
            b.validate(),
            Err(BootInfoError::SizeMismatch { .. })
        ));
    }

    #[test]
    fn layout_is_stable() {
        // The loader and kernel are separate binaries: the layout is the contract.
        assert_eq!(core::mem::size_of::<MemoryRegion>(), 24);
        assert_eq!(core::mem::size_of::<Module>(), 80);
        assert_eq!(core::mem::size_of::<BootInfo>(), 96);
    }

    #[test]
    fn module_names_round_trip_and_overlong_names_are_refused() {
        let m = Module {
            name: Module::encode_name("guests/eli.elf").unwrap(),
            phys: 0,
            len: 0,
        };
        assert_eq!(m.name(), "guests/eli.elf");
        assert!(Module::encode_name(&"x".repeat(64)).is_none());
    }
}
