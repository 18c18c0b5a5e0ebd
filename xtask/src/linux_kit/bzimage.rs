//! The uncompressed kernel inside a bzImage.
//!
//! A bzImage is the real-mode setup (`setup_sects` + 1 sectors) followed by the protected-mode code:
//! a small decompressor and the compressed vmlinux, its "payload". The setup header at 0x1f1 says
//! where the payload is (boot protocol 2.08+, Documentation/arch/x86/boot.rst): `payload_offset`
//! (0x248) and `payload_length` (0x24c), relative to the start of the protected-mode code. Debian's
//! kernels are XZ-compressed with the x86 BCJ filter (`scripts/xz_wrap.sh`), and the build appends
//! the uncompressed size as a little-endian u32 to the payload (`scripts/Makefile.lib`,
//! `size_append`), which is counted in `payload_length`.
//!
//! Loading this vmlinux instead of letting the kernel decompress itself saves ~4.5e9 emulated
//! instructions (~85 s) per Bochs boot.

use std::io::Read;

/// The XZ stream header magic (XZ file format 1.1.0, 2.1.1.1).
pub const XZ_MAGIC: [u8; 6] = [0xFD, b'7', b'z', b'X', b'Z', 0x00];

/// Where a bzImage's compressed kernel is, and how it was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Payload {
    /// Offset in the file.
    pub offset: usize,
    /// Length in bytes, including the appended size when `appended_size` is set.
    pub len: usize,
    /// The uncompressed size the build appended (the payload's last 4 bytes), if it did.
    pub appended_size: Option<u32>,
    /// True when the setup header located it; false when the file was scanned for the XZ magic.
    pub from_header: bool,
}

fn le16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn le32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// Finds the XZ payload of a bzImage: through the setup header when it is a boot protocol 2.08+
/// bzImage whose payload starts with the XZ magic, else by scanning for the magic.
pub fn locate_payload(image: &[u8]) -> Result<Payload, String> {
    if let Some(payload) = payload_from_header(image) {
        return Ok(payload);
    }
    let offset = image
        .windows(XZ_MAGIC.len())
        .position(|w| w == XZ_MAGIC)
        .ok_or("not a bzImage with an XZ-compressed kernel: no setup header pointing at one, and no XZ magic (FD 37 7A 58 5A 00) in the file")?;
    Ok(Payload {
        offset,
        len: image.len() - offset,
        appended_size: None,
        from_header: false,
    })
}

fn payload_from_header(image: &[u8]) -> Option<Payload> {
    // "HdrS" at 0x202, the protocol version at 0x206.
    if image.get(0x202..0x206)? != b"HdrS" || le16(image, 0x206)? < 0x0208 {
        return None;
    }
    // setup_sects 0 means 4 (boot.rst, "setup_sects").
    let setup_sects = match *image.get(0x1f1)? {
        0 => 4,
        n => usize::from(n),
    };
    let protected_mode = (setup_sects + 1) * 512;
    let offset = protected_mode + le32(image, 0x248)? as usize;
    let len = le32(image, 0x24c)? as usize;
    let bytes = image.get(offset..offset.checked_add(len)?)?;
    if !bytes.starts_with(&XZ_MAGIC) || len < XZ_MAGIC.len() + 4 {
        return None;
    }
    // An XZ stream ends with its footer magic "YZ"; the build's size comes after it.
    let appended_size = (bytes[len - 6..len - 4] == *b"YZ").then(|| le32(bytes, len - 4))?;
    Some(Payload {
        offset,
        len,
        appended_size,
        from_header: true,
    })
}

/// Decompresses the payload (XZ, BCJ filters included) and checks the result is an x86-64 ELF.
/// `progress` gets the number of bytes decompressed so far, now and then.
pub fn extract_vmlinux(image: &[u8], progress: &mut dyn FnMut(usize)) -> Result<Vec<u8>, String> {
    let payload = locate_payload(image)?;
    let stream = &image[payload.offset..payload.offset + payload.len];
    let mut reader = lzma_rust2::XzReader::new(stream, false);
    let mut out = Vec::with_capacity(payload.appended_size.unwrap_or(0) as usize);
    let mut chunk = vec![0u8; 1 << 20];
    loop {
        let n = reader
            .read(&mut chunk)
            .map_err(|e| format!("decompressing the XZ payload at {:#x}: {e}", payload.offset))?;
        if n == 0 {
            break;
        }
        out.extend_from_slice(&chunk[..n]);
        progress(out.len());
    }
    if let Some(size) = payload.appended_size {
        if out.len() != size as usize {
            return Err(format!(
                "the payload decompressed to {} bytes but the bzImage says {size}",
                out.len()
            ));
        }
    }
    check_elf64(&out)?;
    Ok(out)
}

/// An ELF64, little-endian, x86-64 file (System V gABI, e_ident and e_machine EM_X86_64 = 62).
pub fn check_elf64(elf: &[u8]) -> Result<(), String> {
    if elf.len() < 64 || elf[..4] != *b"\x7fELF" {
        return Err("the decompressed kernel is not an ELF file".into());
    }
    if elf[4] != 2 || elf[5] != 1 || le16(elf, 18) != Some(62) {
        return Err(format!(
            "the decompressed kernel is an ELF of class {}, data {}, machine {:?}: want ELF64 little-endian x86-64",
            elf[4],
            elf[5],
            le16(elf, 18)
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `xz --format=xz --check=crc32 --x86 --lzma2=dict=64KiB` of [`fake_elf`] (as the kernel's own
    /// payload is: XZ with the x86 BCJ filter).
    const FAKE_ELF_XZ: &[u8] = include_bytes!("testdata/fake-elf.xz");

    /// A minimal ELF64 x86-64 header, eight `call rel32` (which the BCJ filter rewrites) and a tag.
    fn fake_elf() -> Vec<u8> {
        let mut elf = b"\x7fELF\x02\x01\x01\x00".to_vec();
        elf.resize(16, 0);
        elf.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
        elf.extend_from_slice(&62u16.to_le_bytes()); // EM_X86_64
        elf.extend_from_slice(&1u32.to_le_bytes());
        elf.extend_from_slice(&0x100_0000u64.to_le_bytes());
        elf.resize(64, 0);
        for _ in 0..8 {
            elf.extend_from_slice(&[0xe8, 0, 0, 0, 0]);
        }
        elf.extend_from_slice(b"exitless test payload");
        elf
    }

    /// A bzImage-shaped file: `setup_sects` setup sectors after the boot sector, the header fields,
    /// some decompressor bytes, then the payload with the uncompressed size appended.
    fn fake_bzimage(setup_sects: u8, version: u16, decompressor: usize) -> (Vec<u8>, usize) {
        let sectors = if setup_sects == 0 { 4 } else { setup_sects };
        let setup = (usize::from(sectors) + 1) * 512;
        let mut image = vec![0u8; setup + decompressor];
        image[0x1f1] = setup_sects;
        image[0x202..0x206].copy_from_slice(b"HdrS");
        image[0x206..0x208].copy_from_slice(&version.to_le_bytes());
        let mut payload = FAKE_ELF_XZ.to_vec();
        payload.extend_from_slice(&(fake_elf().len() as u32).to_le_bytes());
        image[0x248..0x24c].copy_from_slice(&(decompressor as u32).to_le_bytes());
        image[0x24c..0x250].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        let offset = image.len();
        image.extend_from_slice(&payload);
        image.extend_from_slice(&[0xcc; 100]); // the rest of the decompressor
        (image, offset)
    }

    #[test]
    fn header_locates_the_payload_relative_to_the_protected_mode_code() {
        let (image, offset) = fake_bzimage(39, 0x020f, 0x2cc);
        assert_eq!(offset, 40 * 512 + 0x2cc);
        let p = locate_payload(&image).unwrap();
        assert_eq!(
            p,
            Payload {
                offset,
                len: FAKE_ELF_XZ.len() + 4,
                appended_size: Some(fake_elf().len() as u32),
                from_header: true,
            }
        );
    }

    #[test]
    fn zero_setup_sects_means_four() {
        let (image, offset) = fake_bzimage(0, 0x020f, 16);
        assert_eq!(offset, 5 * 512 + 16);
        let p = locate_payload(&image).unwrap();
        assert!(p.from_header);
        assert_eq!(p.offset, offset);
    }

    #[test]
    fn old_protocols_and_missing_headers_fall_back_to_the_magic() {
        let (image, offset) = fake_bzimage(39, 0x0207, 64);
        let p = locate_payload(&image).unwrap();
        assert_eq!(
            (p.offset, p.from_header, p.appended_size),
            (offset, false, None)
        );
        let err = locate_payload(&[0u8; 4096]).unwrap_err();
        assert!(err.contains("no XZ magic"), "{err}");
    }

    #[test]
    fn vmlinux_comes_out_through_the_bcj_filter_and_is_checked() {
        let (image, _) = fake_bzimage(39, 0x020f, 0x2cc);
        let mut seen = 0;
        let out = extract_vmlinux(&image, &mut |n| seen = n).unwrap();
        assert_eq!(out, fake_elf());
        assert_eq!(seen, out.len());
        // Found by scanning too (the appended size is then trailing bytes after the stream).
        let (old, _) = fake_bzimage(39, 0x0207, 8);
        assert_eq!(extract_vmlinux(&old, &mut |_| {}).unwrap(), fake_elf());
    }

    #[test]
    fn a_wrong_appended_size_and_a_non_elf_are_refused() {
        let (mut image, offset) = fake_bzimage(39, 0x020f, 0x2cc);
        let size_at = offset + FAKE_ELF_XZ.len();
        image[size_at] ^= 1;
        let err = extract_vmlinux(&image, &mut |_| {}).unwrap_err();
        assert!(err.contains("bzImage says"), "{err}");
        assert!(check_elf64(
            b"MZ not an elf at all, just bytes........................................"
        )
        .is_err());
        let mut elf32 = fake_elf();
        elf32[4] = 1;
        assert!(check_elf64(&elf32).unwrap_err().contains("class 1"));
        assert!(check_elf64(&fake_elf()).is_ok());
    }
}
