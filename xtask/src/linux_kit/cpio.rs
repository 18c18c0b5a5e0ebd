//! A writer for the cpio "newc" format, the one format the Linux kernel unpacks as an initramfs
//! (Documentation/driver-api/early-userspace/buffer-format.rst; `init/initramfs.c`).
//!
//! Each entry is a 110-byte ASCII header (`070701` and 13 fields of 8 hex digits), the name with
//! its NUL, NUL padding to a multiple of 4, then the data, NUL-padded to a multiple of 4. The
//! archive ends with an entry named `TRAILER!!!`. Every timestamp is 0 and inode numbers count up
//! from 1, so the same entries give the same bytes.

/// File type bits of `st_mode` (POSIX `<sys/stat.h>`).
const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFLNK: u32 = 0o120_000;
const S_IFCHR: u32 = 0o020_000;

pub const MAGIC: &str = "070701";
pub const TRAILER: &str = "TRAILER!!!";
pub const HEADER_LEN: usize = 110;

/// An archive being built in memory.
#[derive(Default)]
pub struct Archive {
    bytes: Vec<u8>,
    next_ino: u32,
}

impl Archive {
    pub fn new() -> Self {
        Self::default()
    }

    /// A directory (the kernel needs a directory before the entries inside it).
    pub fn dir(&mut self, path: &str, perm: u32) -> &mut Self {
        self.entry(path, S_IFDIR | perm, 2, (0, 0), b"")
    }

    /// A regular file.
    pub fn file(&mut self, path: &str, perm: u32, data: &[u8]) -> &mut Self {
        self.entry(path, S_IFREG | perm, 1, (0, 0), data)
    }

    /// A symbolic link to `target` (the link's data is the target path).
    pub fn symlink(&mut self, path: &str, target: &str) -> &mut Self {
        self.entry(path, S_IFLNK | 0o777, 1, (0, 0), target.as_bytes())
    }

    /// A character device node `major:minor`.
    pub fn char_dev(&mut self, path: &str, perm: u32, major: u32, minor: u32) -> &mut Self {
        self.entry(path, S_IFCHR | perm, 1, (major, minor), b"")
    }

    /// Ends the archive with its trailer and returns its bytes.
    pub fn finish(mut self) -> Vec<u8> {
        self.header(TRAILER, 0, 0, 0, 0, (0, 0));
        self.bytes
    }

    fn entry(
        &mut self,
        path: &str,
        mode: u32,
        nlink: u32,
        rdev: (u32, u32),
        data: &[u8],
    ) -> &mut Self {
        // initramfs paths are relative to the root: `bin/sh`, not `/bin/sh`.
        let path = path.trim_start_matches('/');
        self.next_ino += 1;
        let size = u32::try_from(data.len()).expect("a cpio newc entry holds at most 4 GiB");
        self.header(path, self.next_ino, mode, nlink, size, rdev);
        self.bytes.extend_from_slice(data);
        self.pad();
        self
    }

    fn header(&mut self, name: &str, ino: u32, mode: u32, nlink: u32, size: u32, rdev: (u32, u32)) {
        let namesize = name.len() as u32 + 1;
        // ino, mode, uid, gid, nlink, mtime, filesize, devmajor, devminor, rdevmajor, rdevminor,
        // namesize, check (always 0 for 070701; 070702 would carry a checksum).
        let fields = [
            ino, mode, 0, 0, nlink, 0, size, 0, 0, rdev.0, rdev.1, namesize, 0,
        ];
        let start = self.bytes.len();
        self.bytes.extend_from_slice(MAGIC.as_bytes());
        for field in fields {
            self.bytes
                .extend_from_slice(format!("{field:08X}").as_bytes());
        }
        debug_assert_eq!(self.bytes.len() - start, HEADER_LEN);
        self.bytes.extend_from_slice(name.as_bytes());
        self.bytes.push(0);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.bytes.len().is_multiple_of(4) {
            self.bytes.push(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One parsed header: its 13 fields, name, data, and where the next header starts.
    fn parse(bytes: &[u8], at: usize) -> ([u32; 13], String, Vec<u8>, usize) {
        assert_eq!(&bytes[at..at + 6], MAGIC.as_bytes(), "magic at {at:#x}");
        let mut fields = [0u32; 13];
        for (i, f) in fields.iter_mut().enumerate() {
            let hex = std::str::from_utf8(&bytes[at + 6 + 8 * i..][..8]).unwrap();
            *f = u32::from_str_radix(hex, 16).unwrap();
        }
        let namesize = fields[11] as usize;
        let name_at = at + HEADER_LEN;
        assert_eq!(bytes[name_at + namesize - 1], 0, "name ends with NUL");
        let name = String::from_utf8(bytes[name_at..name_at + namesize - 1].to_vec()).unwrap();
        let data_at = (name_at + namesize).next_multiple_of(4);
        assert!(bytes[name_at + namesize..data_at].iter().all(|&b| b == 0));
        let size = fields[6] as usize;
        let data = bytes[data_at..data_at + size].to_vec();
        let next = (data_at + size).next_multiple_of(4);
        assert!(bytes[data_at + size..next].iter().all(|&b| b == 0));
        (fields, name, data, next)
    }

    #[test]
    fn entries_have_newc_headers_padding_and_a_trailer() {
        let mut archive = Archive::new();
        archive
            .dir("/bin", 0o755)
            .file("/bin/busybox", 0o755, b"\x7fELF12345")
            .symlink("/bin/sh", "busybox")
            .char_dev("/dev/console", 0o600, 5, 1);
        let bytes = archive.finish();
        assert_eq!(bytes.len() % 4, 0);

        let (f, name, data, next) = parse(&bytes, 0);
        assert_eq!(name, "bin");
        assert_eq!(f[0], 1, "ino");
        assert_eq!(f[1], 0o040_755, "mode");
        assert_eq!(f[4], 2, "nlink");
        assert_eq!(f[5], 0, "mtime");
        assert!(data.is_empty());
        // 110 + 4 ("bin\0") = 114, padded to 116.
        assert_eq!(next, 116);

        let (f, name, data, next) = parse(&bytes, next);
        assert_eq!(name, "bin/busybox");
        assert_eq!((f[0], f[1], f[6]), (2, 0o100_755, 9));
        assert_eq!(data, b"\x7fELF12345");
        // Header at 116: 116 + 110 + 12 = 238 -> data at 240, 9 bytes -> next at 252.
        assert_eq!(next, 252);

        let (f, name, data, next) = parse(&bytes, next);
        assert_eq!(name, "bin/sh");
        assert_eq!(f[1], 0o120_777);
        assert_eq!(data, b"busybox");

        let (f, name, _, next) = parse(&bytes, next);
        assert_eq!(name, "dev/console");
        assert_eq!(f[1], 0o020_600);
        assert_eq!((f[9], f[10]), (5, 1), "rdev major, minor");

        let (f, name, data, end) = parse(&bytes, next);
        assert_eq!(name, TRAILER);
        assert_eq!(f[0..11], [0; 11]);
        assert_eq!(f[11], 11, "namesize counts the NUL");
        assert!(data.is_empty());
        assert_eq!(end, bytes.len());
    }

    #[test]
    fn same_entries_give_the_same_bytes() {
        let build = || {
            let mut a = Archive::new();
            a.dir("tmp", 0o1777).file("init", 0o755, b"#!/bin/sh\n");
            a.finish()
        };
        assert_eq!(build(), build());
    }

    #[test]
    fn header_fields_are_eight_uppercase_hex_digits() {
        let mut a = Archive::new();
        a.file("x", 0o644, &[0xAB; 0x1234]);
        let bytes = a.finish();
        let header = std::str::from_utf8(&bytes[..HEADER_LEN]).unwrap();
        assert_eq!(&header[6 + 8 * 6..6 + 8 * 7], "00001234", "filesize");
        assert!(header[6..]
            .chars()
            .all(|c| c.is_ascii_digit() || ('A'..='F').contains(&c)));
    }
}
