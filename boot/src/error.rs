//! Everything that can stop the loader, each with what the user should do about it.

use alloc::string::String;
use core::fmt;

use ::boot::paging::PagingError;
use exitless_abi::elf_image::ElfError;
use uefi::Status;

const REBUILD: &str = "rebuild the image with `cargo xtask image`";

pub enum LoadError {
    /// The volume the loader came from has no readable file system.
    NoFileSystem(Status),
    /// `path` is relative to `\exitless\`.
    NotFound(String),
    Read {
        path: String,
        status: Status,
    },
    NotUtf8(String),
    /// The cfg's `kernel` value is not a plain relative path.
    BadKernelName(String),
    BadKernel {
        path: String,
        error: ElfError,
    },
    NameTooLong(String),
    OutOfMemory {
        what: String,
        bytes: u64,
    },
    /// Firmware left 5-level paging on; the loader builds 4-level tables.
    FiveLevelPaging,
    MemoryTooLarge(u64),
    Paging(PagingError),
}

impl LoadError {
    /// The status `efi_main` hands back to the firmware.
    pub fn status(&self) -> Status {
        match self {
            Self::NoFileSystem(s) | Self::Read { status: s, .. } => *s,
            Self::NotFound(_) => Status::NOT_FOUND,
            Self::NotUtf8(_) | Self::BadKernelName(_) | Self::NameTooLong(_) => {
                Status::INVALID_PARAMETER
            }
            Self::BadKernel { .. } => Status::LOAD_ERROR,
            Self::OutOfMemory { .. } | Self::MemoryTooLarge(_) | Self::Paging(_) => {
                Status::OUT_OF_RESOURCES
            }
            Self::FiveLevelPaging => Status::UNSUPPORTED,
        }
    }
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoFileSystem(s) => write!(f, "cannot open the file system of the volume this loader was started from ({s:?}): put the loader and \\exitless\\ on a FAT32 ESP ({REBUILD})"),
            Self::NotFound(p) => write!(f, "\\exitless\\{} not found on the boot volume: {REBUILD}", p.replace('/', "\\")),
            Self::Read { path, status } => write!(f, "reading \\exitless\\{} failed ({status:?}): check the boot medium, or {REBUILD}", path.replace('/', "\\")),
            Self::NotUtf8(p) => write!(f, "\\exitless\\{p} is not UTF-8 text: fix it, or {REBUILD}"),
            Self::BadKernelName(k) => write!(f, "`kernel = {k}` in \\exitless\\exitless.cfg is not a file path relative to \\exitless\\ (e.g. `kernel = hypervisor.elf`): fix the configuration"),
            Self::BadKernel { path, error } => write!(f, "\\exitless\\{} is not a loadable kernel: {error}; build it for x86_64-unknown-none and {REBUILD}", path.replace('/', "\\")),
            Self::NameTooLong(p) => write!(f, "module name `{p}` is longer than 63 bytes: rename the file under \\exitless\\"),
            Self::OutOfMemory { what, bytes } => write!(f, "not enough memory for {what} ({bytes} bytes): give the machine more RAM or remove files from \\exitless\\"),
            Self::FiveLevelPaging => write!(f, "the firmware runs with 5-level paging (CR4.LA57), which this loader does not support: disable 5-level paging in the firmware setup"),
            Self::MemoryTooLarge(end) => write!(f, "physical memory reaches {end:#x}, beyond what the identity map supports: report this machine"),
            Self::Paging(e) => write!(f, "building the page tables failed ({e:?}): this is a loader bug, please report it"),
        }
    }
}

impl From<PagingError> for LoadError {
    fn from(e: PagingError) -> Self {
        Self::Paging(e)
    }
}
