//! The boot-info structure the loader passes to the kernel it starts, in `rdi`.
//!
//! Contract (see docs/architecture.md, "Boot flow"):
//! - Entered in 64-bit long mode, interrupts off, boot services exited, on the loader's page tables
//!   (`page_table_root`): all physical memory below `identity_map_end` is identity-mapped with
//!   writable, non-executable 2 MiB pages except where the kernel image lies, and the kernel's
//!   PT_LOAD segments are mapped at their link addresses (upper half) with their own permissions.
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
        unsafe {
            core::slice::from_raw_parts(self.modules as *const Module, self.modules_len as usize)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
