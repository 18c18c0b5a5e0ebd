//! The I/O bitmaps (SDM Vol. 3C 25.6.4): bitmap A covers ports 0..=0x7FFF, bitmap B ports
//! 0x8000..=0xFFFF, one bit per port; a set bit makes IN/OUT/INS/OUTS exit. An access of several
//! bytes exits if the bit of any byte's port is set, and always exits if it wraps past 0xFFFF
//! (SDM 26.1.3).

/// Both bitmaps in one 8 KiB block: A at offset 0, B at 0x1000; each page is 4 KiB-aligned as the
/// VMCS requires (SDM 27.2.1.1).
#[derive(Clone)]
#[repr(C, align(4096))]
pub struct IoBitmaps {
    a: [u8; 4096],
    b: [u8; 4096],
}

const _: () = assert!(core::mem::size_of::<IoBitmaps>() == 8192);
const _: () = assert!(core::mem::offset_of!(IoBitmaps, b) == 4096);

impl IoBitmaps {
    /// Every port access exits.
    pub const fn intercept_all() -> Self {
        IoBitmaps {
            a: [0xFF; 4096],
            b: [0xFF; 4096],
        }
    }

    fn byte_mut(&mut self, port: u16) -> (&mut u8, u8) {
        let bit = (port % 8) as u8;
        let idx = usize::from(port & 0x7FFF) / 8;
        if port < 0x8000 {
            (&mut self.a[idx], bit)
        } else {
            (&mut self.b[idx], bit)
        }
    }

    /// Whether the bit of `port` is set.
    pub fn intercepted(&self, port: u16) -> bool {
        let idx = usize::from(port & 0x7FFF) / 8;
        let byte = if port < 0x8000 {
            self.a[idx]
        } else {
            self.b[idx]
        };
        byte & (1 << (port % 8)) != 0
    }

    /// Make accesses to `count` ports from `first` exit.
    pub fn intercept(&mut self, first: u16, count: u32) {
        for p in ports(first, count) {
            let (byte, bit) = self.byte_mut(p);
            *byte |= 1 << bit;
        }
    }

    /// Let the guest access `count` ports from `first` directly (assigned devices).
    pub fn pass(&mut self, first: u16, count: u32) {
        for p in ports(first, count) {
            let (byte, bit) = self.byte_mut(p);
            *byte &= !(1 << bit);
        }
    }

    /// Whether an access of `size` bytes (1, 2 or 4) at `port` exits.
    pub fn access_exits(&self, port: u16, size: u8) -> bool {
        let last = u32::from(port) + u32::from(size.max(1)) - 1;
        if last > 0xFFFF {
            return true;
        }
        (u32::from(port)..=last).any(|p| self.intercepted(p as u16))
    }

    /// Bitmap A (ports 0..=0x7FFF), for the VMCS field I/O-bitmap A address.
    pub fn a(&self) -> &[u8; 4096] {
        &self.a
    }
    /// Bitmap B (ports 0x8000..=0xFFFF).
    pub fn b(&self) -> &[u8; 4096] {
        &self.b
    }
}

impl Default for IoBitmaps {
    fn default() -> Self {
        Self::intercept_all()
    }
}

fn ports(first: u16, count: u32) -> impl Iterator<Item = u16> {
    let end = u32::from(first).saturating_add(count).min(0x1_0000);
    (u32::from(first)..end).map(|p| p as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn com2_passthrough_clears_bits_in_a() {
        // COM2 0x2F8..=0x2FF: byte 0x2F8 / 8 = 0x5F of bitmap A, all 8 bits.
        let mut io = IoBitmaps::intercept_all();
        io.pass(0x2F8, 8);
        assert_eq!(io.a()[0x5F], 0x00);
        assert_eq!(io.a()[0x5E], 0xFF);
        assert_eq!(io.a()[0x60], 0xFF);
        assert!(io.b().iter().all(|&x| x == 0xFF));
        assert!(!io.access_exits(0x2F8, 1));
        assert!(io.access_exits(0x2F7, 1));
        // A 2-byte access at 0x2FF also touches 0x300, which is intercepted.
        assert!(io.access_exits(0x2FF, 2));
    }

    #[test]
    fn high_ports_are_in_b() {
        // Port 0xC00A: bitmap B byte (0xC00A - 0x8000) / 8 = 0x801, bit 2.
        let mut io = IoBitmaps::intercept_all();
        io.pass(0xC00A, 1);
        assert_eq!(io.b()[0x801], 0b1111_1011);
        assert!(!io.intercepted(0xC00A));
        io.intercept(0xC00A, 1);
        assert!(io.intercepted(0xC00A));
    }

    #[test]
    fn wrap_always_exits() {
        let mut io = IoBitmaps::intercept_all();
        io.pass(0xFFFC, u32::MAX); // clamps at 0xFFFF
        assert_eq!(io.b()[0xFFF], 0x0F);
        assert!(!io.access_exits(0xFFFC, 4));
        io.pass(0, 4);
        assert!(io.access_exits(0xFFFE, 4));
    }
}
