//! Base Address Registers: decoding and sizing (PCI Local Bus 3.0 §6.2.5.1).

use alloc::vec::Vec;
use core::fmt;

use super::access::ConfigAccess;
use super::bdf::Bdf;
use super::regs::{Command, BAR0, COMMAND};

/// What a BAR decodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BarKind {
    Io,
    Memory32 {
        prefetchable: bool,
    },
    /// Occupies this slot and the next; the next holds address bits 63:32.
    Memory64 {
        prefetchable: bool,
    },
}

impl BarKind {
    /// Bit 0: I/O space; memory BARs: bits 2:1 type (00 32-bit, 01 below 1 MiB in PCI 2.x,
    /// 10 64-bit, 11 reserved), bit 3 prefetchable. `None` for the reserved type.
    pub const fn decode(raw: u32) -> Option<BarKind> {
        if raw & 1 != 0 {
            return Some(BarKind::Io);
        }
        let prefetchable = raw & 0x8 != 0;
        match (raw >> 1) & 0b11 {
            0b00 | 0b01 => Some(BarKind::Memory32 { prefetchable }),
            0b10 => Some(BarKind::Memory64 { prefetchable }),
            _ => None,
        }
    }

    /// Bits of the low dword that hold the type rather than the address.
    pub const fn type_bits(self) -> u32 {
        match self {
            BarKind::Io => 0x3,
            _ => 0xF,
        }
    }

    /// BAR slots this kind uses.
    pub const fn slots(self) -> u8 {
        match self {
            BarKind::Memory64 { .. } => 2,
            _ => 1,
        }
    }

    pub const fn is_io(self) -> bool {
        matches!(self, BarKind::Io)
    }
}

impl fmt::Display for BarKind {
    /// `io`, `mem32`, `mem64`, with a `pf` suffix when prefetchable (`mem64pf`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (name, prefetchable) = match *self {
            BarKind::Io => ("io", false),
            BarKind::Memory32 { prefetchable } => ("mem32", prefetchable),
            BarKind::Memory64 { prefetchable } => ("mem64", prefetchable),
        };
        f.write_str(name)?;
        if prefetchable {
            f.write_str("pf")?;
        }
        Ok(())
    }
}

/// One implemented BAR as firmware programmed it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bar {
    /// Slot index (0..6 for endpoints, 0..2 for bridges); a 64-bit BAR also owns `index + 1`.
    pub index: u8,
    pub kind: BarKind,
    /// Address assigned by firmware (I/O port or physical address).
    pub base: u64,
    /// Bytes decoded; always a power of two.
    pub size: u64,
}

impl Bar {
    /// Configuration-space offset of this BAR's (low) dword.
    pub const fn offset(&self) -> u16 {
        BAR0 + 4 * self.index as u16
    }

    /// Whether `[address, address + len)` lies inside this BAR's window.
    pub const fn contains(&self, address: u64, len: u64) -> bool {
        address >= self.base && len <= self.size && address - self.base <= self.size - len
    }
}

impl fmt::Display for Bar {
    /// `index:kind:base+size`, e.g. `0:mem32:0xfea00000+0x100000`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{:#x}+{:#x}",
            self.index, self.kind, self.base, self.size
        )
    }
}

/// The size a BAR decodes, from what it reads back after all-ones were written: the lowest
/// address bit that stayed set (PCI 3.0 §6.2.5.1). Using the lowest set bit instead of
/// `!mask + 1` also works for I/O BARs whose upper 16 bits are hard-wired to zero.
/// `None` when no address bit is writable, i.e. the BAR is not implemented.
pub const fn size_from_mask(address_mask: u64) -> Option<u64> {
    if address_mask == 0 {
        None
    } else {
        Some(address_mask & address_mask.wrapping_neg())
    }
}

/// Reads and sizes the first `slots` BARs of `bdf`.
///
/// Sizing writes all-ones and reads back, so memory and I/O decoding are turned off in the
/// Command register meanwhile (a half-written BAR must not claim addresses) and both the
/// BARs and Command are restored afterwards (PCI 3.0 §6.2.5.1, "Address Maps").
/// Host bridges keep decoding on, as Linux does: switching off a host bridge's decode can
/// cut off the path to memory on some chipsets.
pub fn probe_bars(
    access: &dyn ConfigAccess,
    bdf: Bdf,
    slots: u8,
    keep_decode_on: bool,
) -> Vec<Bar> {
    let mut bars = Vec::new();
    if slots == 0 {
        return bars;
    }
    let command = access.read16(bdf, COMMAND);
    let decode = Command::IO_SPACE | Command::MEMORY_SPACE;
    let must_disable = !keep_decode_on && command & decode.bits() != 0;
    if must_disable {
        access.write16(bdf, COMMAND, command & !decode.bits());
    }

    let mut index = 0;
    while index < slots {
        let offset = BAR0 + 4 * index as u16;
        let original = access.read32(bdf, offset);
        let Some(kind) = BarKind::decode(original) else {
            index += 1;
            continue;
        };
        if kind.slots() == 2 && index + 1 >= slots {
            // A 64-bit BAR in the last slot has no upper half: malformed, skip it.
            break;
        }
        let (base, mask) = if kind.slots() == 2 {
            let original_high = access.read32(bdf, offset + 4);
            access.write32(bdf, offset, u32::MAX);
            access.write32(bdf, offset + 4, u32::MAX);
            let low = access.read32(bdf, offset);
            let high = access.read32(bdf, offset + 4);
            access.write32(bdf, offset, original);
            access.write32(bdf, offset + 4, original_high);
            let address =
                |low: u32, high: u32| (high as u64) << 32 | (low & !kind.type_bits()) as u64;
            (address(original, original_high), address(low, high))
        } else {
            access.write32(bdf, offset, u32::MAX);
            let readback = access.read32(bdf, offset);
            access.write32(bdf, offset, original);
            let address_bits = !kind.type_bits();
            (
                (original & address_bits) as u64,
                (readback & address_bits) as u64,
            )
        };
        if let Some(size) = size_from_mask(mask) {
            bars.push(Bar {
                index,
                kind,
                base,
                size,
            });
        }
        index += kind.slots();
    }

    if must_disable {
        access.write16(bdf, COMMAND, command);
    }
    bars
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    #[test]
    fn decodes_type_bits() {
        assert_eq!(
            BarKind::decode(0xFEA0_0000),
            Some(BarKind::Memory32 {
                prefetchable: false
            })
        );
        assert_eq!(
            BarKind::decode(0xC000_000C),
            Some(BarKind::Memory64 { prefetchable: true })
        );
        assert_eq!(BarKind::decode(0x0000_C001), Some(BarKind::Io));
        assert_eq!(BarKind::decode(0x0000_0006), None);
    }

    #[test]
    fn size_is_lowest_writable_address_bit() {
        // 1 MiB memory BAR reads back 0xFFF0_0000 (type bits masked off).
        assert_eq!(size_from_mask(0xFFF0_0000), Some(0x10_0000));
        // 32-byte I/O BAR with bits 31:16 hard-wired to 0 reads back 0x0000_FFE1.
        assert_eq!(size_from_mask(0x0000_FFE0), Some(0x20));
        // 16 GiB 64-bit BAR: 0xFFFF_FFFC_0000_0000.
        assert_eq!(size_from_mask(0xFFFF_FFFC_0000_0000), Some(0x4_0000_0000));
        assert_eq!(size_from_mask(0), None);
    }

    #[test]
    fn display_and_window() {
        let bar = Bar {
            index: 2,
            kind: BarKind::Memory64 { prefetchable: true },
            base: 0x8_0000_0000,
            size: 0x4000,
        };
        assert_eq!(bar.to_string(), "2:mem64pf:0x800000000+0x4000");
        assert_eq!(bar.offset(), 0x18);
        assert!(bar.contains(0x8_0000_3FFC, 4));
        assert!(!bar.contains(0x8_0000_3FFE, 4));
        assert!(!bar.contains(0x7_FFFF_FFFF, 1));
    }
}
