//! Reading `\exitless\` from the volume the loader was started from into LOADER_DATA pages.

use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::ptr::NonNull;

use uefi::boot::{self, AllocateType, MemoryType, ScopedProtocol};
use uefi::proto::media::file::FileHandle;
use uefi::proto::media::file::{
    Directory, File, FileAttribute, FileInfo, FileMode, FileType, RegularFile,
};
use uefi::proto::media::fs::SimpleFileSystem;
use uefi::{cstr16, CString16, Status};

use crate::error::LoadError;

pub const PAGE: u64 = 4096;

/// Pages of LOADER_DATA holding one file (or other loader product).
pub struct Pages {
    pub phys: u64,
    pub count: usize,
}

impl Pages {
    /// `bytes` rounded up to whole pages (at least one), zeroed.
    pub fn allocate(bytes: u64, what: &str) -> Result<Self, LoadError> {
        let count = bytes.div_ceil(PAGE).max(1) as usize;
        let oom = || LoadError::OutOfMemory {
            what: what.to_string(),
            bytes,
        };
        let ptr = boot::allocate_pages(AllocateType::AnyPages, MemoryType::LOADER_DATA, count)
            .map_err(|_| oom())?;
        // SAFETY: the firmware just gave us `count` pages at `ptr` (identity-mapped under UEFI).
        unsafe { ptr.as_ptr().write_bytes(0, count * PAGE as usize) };
        Ok(Self {
            phys: ptr.as_ptr() as u64,
            count,
        })
    }

    /// The pages as bytes.
    pub fn bytes(&mut self) -> &mut [u8] {
        // SAFETY: we own these pages until `free` or the hand-off.
        unsafe { core::slice::from_raw_parts_mut(self.phys as *mut u8, self.count * PAGE as usize) }
    }

    /// The pages as read-only bytes.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: as for `bytes`.
        unsafe { core::slice::from_raw_parts(self.phys as *const u8, self.count * PAGE as usize) }
    }

    /// Gives the pages back to the firmware.
    pub fn free(self) {
        if let Some(ptr) = NonNull::new(self.phys as *mut u8) {
            // SAFETY: allocated by `allocate`, no references remain (`self` is consumed).
            let _ = unsafe { boot::free_pages(ptr, self.count) };
        }
    }
}

/// A file read into memory.
pub struct LoadedFile {
    /// Relative to `\exitless\`, `/`-separated.
    pub name: String,
    pub pages: Pages,
    pub len: u64,
}

impl LoadedFile {
    pub fn bytes(&self) -> &[u8] {
        &self.pages.as_slice()[..self.len as usize]
    }
}

/// `\exitless\` on the loader's own volume.
pub struct ExitlessDir {
    // Kept open while the directory handle is used.
    _fs: ScopedProtocol<SimpleFileSystem>,
    dir: Directory,
}

impl ExitlessDir {
    pub fn open() -> Result<Self, LoadError> {
        let mut fs = boot::get_image_file_system(boot::image_handle())
            .map_err(|e| LoadError::NoFileSystem(e.status()))?;
        let mut root = fs
            .open_volume()
            .map_err(|e| LoadError::NoFileSystem(e.status()))?;
        let not_found = |_| LoadError::NotFound(String::new());
        let dir = root
            .open(
                cstr16!("\\exitless"),
                FileMode::Read,
                FileAttribute::empty(),
            )
            .map_err(not_found)?
            .into_directory()
            .ok_or_else(|| LoadError::NotFound(String::new()))?;
        Ok(Self { _fs: fs, dir })
    }

    /// Reads `relative` (e.g. `guests/eli.elf`) into fresh LOADER_DATA pages.
    pub fn read(&mut self, relative: &str) -> Result<LoadedFile, LoadError> {
        let handle = open_in(&mut self.dir, relative)?;
        let mut file = handle
            .into_regular_file()
            .ok_or_else(|| LoadError::NotFound(relative.to_string()))?;
        read_whole(&mut file, relative)
    }

    /// Names (relative to `\exitless\`) of the regular files directly in `\exitless\` and in
    /// `\exitless\guests\` (absent is fine).
    pub fn list(&mut self) -> Result<Vec<String>, LoadError> {
        let mut names = Vec::new();
        list_dir(&mut self.dir, "", &mut names)?;
        if let Ok(FileType::Dir(mut guests)) = open_in(&mut self.dir, "guests").and_then(|h| {
            h.into_type().map_err(|e| LoadError::Read {
                path: "guests".to_string(),
                status: e.status(),
            })
        }) {
            list_dir(&mut guests, "guests/", &mut names)?;
        }
        Ok(names)
    }
}

/// Opens `relative` below the `\exitless\` directory handle.
fn open_in(dir: &mut Directory, relative: &str) -> Result<FileHandle, LoadError> {
    let path = CString16::try_from(relative.replace('/', "\\").as_str())
        .map_err(|_| LoadError::BadKernelName(relative.to_string()))?;
    dir.open(&path, FileMode::Read, FileAttribute::empty())
        .map_err(|e| match e.status() {
            Status::NOT_FOUND => LoadError::NotFound(relative.to_string()),
            status => LoadError::Read {
                path: relative.to_string(),
                status,
            },
        })
}

fn list_dir(dir: &mut Directory, prefix: &str, names: &mut Vec<String>) -> Result<(), LoadError> {
    let read_error = |status| LoadError::Read {
        path: prefix.to_string(),
        status,
    };
    dir.reset_entry_readout()
        .map_err(|e| read_error(e.status()))?;
    while let Some(info) = dir.read_entry_boxed().map_err(|e| read_error(e.status()))? {
        if info.is_directory() {
            continue;
        }
        let mut name = String::from(prefix);
        name.push_str(&info.file_name().to_string());
        names.push(name);
    }
    Ok(())
}

fn read_whole(file: &mut RegularFile, relative: &str) -> Result<LoadedFile, LoadError> {
    let read_error = |status| LoadError::Read {
        path: relative.to_string(),
        status,
    };
    let info = file
        .get_boxed_info::<FileInfo>()
        .map_err(|e| read_error(e.status()))?;
    let len = info.file_size();
    let mut pages = Pages::allocate(len, &alloc::format!("\\exitless\\{relative}"))?;
    let result = {
        let buf = &mut pages.bytes()[..len as usize];
        let mut done = 0;
        loop {
            match file.read(&mut buf[done..]) {
                Ok(0) => break Ok(done),
                Ok(n) => done += n,
                Err(e) => break Err(e.status()),
            }
        }
    };
    match result {
        Ok(done) if done as u64 == len => {}
        Ok(_) => {
            pages.free();
            return Err(read_error(Status::END_OF_FILE));
        }
        Err(status) => {
            pages.free();
            return Err(read_error(status));
        }
    }
    Ok(LoadedFile {
        name: relative.to_string(),
        pages,
        len,
    })
}
