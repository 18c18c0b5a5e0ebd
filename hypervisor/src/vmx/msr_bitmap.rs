//! The 4 KiB MSR bitmap (SDM Vol. 3C 25.6.9): one bit per MSR and access; a set bit makes
//! RDMSR/WRMSR exit. Four 1 KiB quarters: read-low at 0x000 and read-high at 0x400 (MSRs
//! 0..=0x1FFF and 0xC000_0000..=0xC000_1FFF), write-low at 0x800 and write-high at 0xC00.
//! MSRs outside both ranges always exit (SDM 26.1.3).

/// The kind of MSR access a bit controls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MsrAccess {
    Read,
    Write,
}

/// The MSR lies outside the two ranges the bitmap covers; its accesses always exit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsrNotInBitmap(pub u32);

const LOW_END: u32 = 0x2000;
const HIGH_BASE: u32 = 0xC000_0000;

/// The bitmap page, 4 KiB-aligned as the MSR-bitmap address must be (SDM 27.2.1.1).
#[derive(Clone)]
#[repr(C, align(4096))]
pub struct MsrBitmap {
    bytes: [u8; 4096],
}

const _: () = assert!(core::mem::size_of::<MsrBitmap>() == 4096);

impl MsrBitmap {
    /// Every RDMSR/WRMSR exits.
    pub const fn intercept_all() -> Self {
        MsrBitmap {
            bytes: [0xFF; 4096],
        }
    }

    /// Byte offset and bit of the bit that controls `access` to `msr`.
    pub const fn bit_location(msr: u32, access: MsrAccess) -> Option<(usize, u8)> {
        let (quarter, n) = if msr < LOW_END {
            (0, msr)
        } else if msr >= HIGH_BASE && msr - HIGH_BASE < LOW_END {
            (0x400, msr - HIGH_BASE)
        } else {
            return None;
        };
        let base = match access {
            MsrAccess::Read => quarter,
            MsrAccess::Write => 0x800 + quarter,
        };
        Some((base + (n / 8) as usize, (n % 8) as u8))
    }

    fn set(&mut self, msr: u32, access: MsrAccess, exit: bool) -> Result<(), MsrNotInBitmap> {
        let (byte, bit) = Self::bit_location(msr, access).ok_or(MsrNotInBitmap(msr))?;
        if exit {
            self.bytes[byte] |= 1 << bit;
        } else {
            self.bytes[byte] &= !(1 << bit);
        }
        Ok(())
    }

    /// Make RDMSR of `msr` exit (always succeeds: MSRs outside the bitmap exit anyway).
    pub fn intercept_read(&mut self, msr: u32) {
        let _ = self.set(msr, MsrAccess::Read, true);
    }
    /// Make WRMSR of `msr` exit (always succeeds: MSRs outside the bitmap exit anyway).
    pub fn intercept_write(&mut self, msr: u32) {
        let _ = self.set(msr, MsrAccess::Write, true);
    }
    /// Let the guest RDMSR `msr` without an exit.
    pub fn pass_read(&mut self, msr: u32) -> Result<(), MsrNotInBitmap> {
        self.set(msr, MsrAccess::Read, false)
    }
    /// Let the guest WRMSR `msr` without an exit.
    pub fn pass_write(&mut self, msr: u32) -> Result<(), MsrNotInBitmap> {
        self.set(msr, MsrAccess::Write, false)
    }

    /// Whether `access` to `msr` exits.
    pub fn exits(&self, msr: u32, access: MsrAccess) -> bool {
        match Self::bit_location(msr, access) {
            Some((byte, bit)) => self.bytes[byte] & (1 << bit) != 0,
            None => true,
        }
    }

    pub fn as_bytes(&self) -> &[u8; 4096] {
        &self.bytes
    }
}

impl Default for MsrBitmap {
    fn default() -> Self {
        Self::intercept_all()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn x2apic_eoi_write_is_byte_0x901_bit_3() {
        // eli.md: 0x800 + 0x80B / 8 = 0x901, bit 0x80B % 8 = 3.
        let mut b = MsrBitmap::intercept_all();
        b.pass_write(0x80B).unwrap();
        assert_eq!(b.as_bytes()[0x901], 0b1111_0111);
        assert!(!b.exits(0x80B, MsrAccess::Write));
        assert!(b.exits(0x80B, MsrAccess::Read));
        let changed = b.as_bytes().iter().filter(|&&x| x != 0xFF).count();
        assert_eq!(changed, 1);
    }

    #[test]
    fn efer_write_is_in_the_high_write_quarter() {
        // 0xC000_0080: 0xC00 + 0x80 / 8 = 0xC10, bit 0.
        assert_eq!(
            MsrBitmap::bit_location(0xC000_0080, MsrAccess::Write),
            Some((0xC10, 0))
        );
        assert_eq!(
            MsrBitmap::bit_location(0xC000_0080, MsrAccess::Read),
            Some((0x410, 0))
        );
        let mut b = MsrBitmap::intercept_all();
        b.pass_write(0xC000_0080).unwrap();
        assert_eq!(b.as_bytes()[0xC10], 0xFE);
        b.intercept_write(0xC000_0080);
        assert_eq!(b.as_bytes()[0xC10], 0xFF);
    }

    #[test]
    fn range_edges() {
        assert_eq!(
            MsrBitmap::bit_location(0x1FFF, MsrAccess::Read),
            Some((0x3FF, 7))
        );
        assert_eq!(
            MsrBitmap::bit_location(0xC000_1FFF, MsrAccess::Write),
            Some((0xFFF, 7))
        );
        assert_eq!(MsrBitmap::bit_location(0x2000, MsrAccess::Read), None);
        assert_eq!(MsrBitmap::bit_location(0xC000_2000, MsrAccess::Read), None);
        assert_eq!(MsrBitmap::bit_location(0xBFFF_FFFF, MsrAccess::Read), None);
        let mut b = MsrBitmap::intercept_all();
        assert_eq!(b.pass_read(0x4000_0000), Err(MsrNotInBitmap(0x4000_0000)));
        assert!(b.exits(0x4000_0000, MsrAccess::Read));
    }
}
