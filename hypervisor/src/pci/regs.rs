//! Configuration-space register layout shared by every header type
//! (PCI Local Bus 3.0 §6.1, PCI-to-PCI Bridge 1.2 §3.2).

use bitflags::bitflags;

pub const VENDOR_ID: u16 = 0x00;
pub const DEVICE_ID: u16 = 0x02;
pub const COMMAND: u16 = 0x04;
pub const STATUS: u16 = 0x06;
/// Revision ID (byte 0x08), then programming interface, subclass, base class (0x09..0x0B).
pub const REVISION_CLASS: u16 = 0x08;
pub const CACHE_LINE_SIZE: u16 = 0x0C;
pub const LATENCY_TIMER: u16 = 0x0D;
pub const HEADER_TYPE: u16 = 0x0E;
pub const BIST: u16 = 0x0F;
pub const BAR0: u16 = 0x10;
pub const CARDBUS_CIS: u16 = 0x28;
pub const SUBSYSTEM_IDS: u16 = 0x2C;
/// Type-0 expansion ROM base address.
pub const EXPANSION_ROM: u16 = 0x30;
/// Capabilities pointer for header types 0 and 1 (type 2, CardBus, keeps it at 0x14).
pub const CAPABILITIES_POINTER: u16 = 0x34;
pub const INTERRUPT_LINE: u16 = 0x3C;
pub const INTERRUPT_PIN: u16 = 0x3D;

/// Type-1 (bridge) bus numbers.
pub const PRIMARY_BUS: u16 = 0x18;
pub const SECONDARY_BUS: u16 = 0x19;
pub const SUBORDINATE_BUS: u16 = 0x1A;
/// Type-1 expansion ROM base address.
pub const BRIDGE_EXPANSION_ROM: u16 = 0x38;

/// Size of the conventional configuration space (legacy port access reaches only this).
pub const LEGACY_CONFIG_SIZE: u16 = 256;
/// Size of a PCIe function's extended configuration space (ECAM reaches all of it).
pub const EXTENDED_CONFIG_SIZE: u16 = 4096;
/// First offset of the extended capability list (PCIe Base 4.0 §7.6.3).
pub const EXTENDED_CAPABILITIES: u16 = 0x100;

/// Vendor ID read from a function that does not exist (the host bridge completes the master
/// abort with all-ones, PCI Local Bus 3.0 §6.1).
pub const ABSENT_VENDOR: u16 = 0xFFFF;

/// Header-type bit 7: the device implements functions 1..7 (PCI Local Bus 3.0 §6.2.1).
pub const HEADER_MULTI_FUNCTION: u8 = 0x80;
/// Header-type bits 6:0: the layout of bytes 0x10..0x3F.
pub const HEADER_LAYOUT_MASK: u8 = 0x7F;

bitflags! {
    /// Command register (PCI Local Bus 3.0 §6.2.2).
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Command: u16 {
        const IO_SPACE = 1 << 0;
        const MEMORY_SPACE = 1 << 1;
        const BUS_MASTER = 1 << 2;
        const SPECIAL_CYCLES = 1 << 3;
        const MEMORY_WRITE_INVALIDATE = 1 << 4;
        const VGA_PALETTE_SNOOP = 1 << 5;
        const PARITY_ERROR_RESPONSE = 1 << 6;
        const SERR = 1 << 8;
        const FAST_BACK_TO_BACK = 1 << 9;
        const INTX_DISABLE = 1 << 10;
    }
}

bitflags! {
    /// Status register (PCI Local Bus 3.0 §6.2.3). Bits 8 and 11..15 are write-1-to-clear.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Status: u16 {
        const INTERRUPT = 1 << 3;
        const CAPABILITIES_LIST = 1 << 4;
        const MHZ_66 = 1 << 5;
        const FAST_BACK_TO_BACK = 1 << 7;
        const MASTER_DATA_PARITY_ERROR = 1 << 8;
        const SIGNALED_TARGET_ABORT = 1 << 11;
        const RECEIVED_TARGET_ABORT = 1 << 12;
        const RECEIVED_MASTER_ABORT = 1 << 13;
        const SIGNALED_SYSTEM_ERROR = 1 << 14;
        const DETECTED_PARITY_ERROR = 1 << 15;
    }
}

impl Status {
    /// The error bits software clears by writing 1 (RW1C).
    pub const WRITE_ONE_TO_CLEAR: Status = Status::MASTER_DATA_PARITY_ERROR
        .union(Status::SIGNALED_TARGET_ABORT)
        .union(Status::RECEIVED_TARGET_ABORT)
        .union(Status::RECEIVED_MASTER_ABORT)
        .union(Status::SIGNALED_SYSTEM_ERROR)
        .union(Status::DETECTED_PARITY_ERROR);
}

/// Layout of bytes 0x10..0x3F (header type bits 6:0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderLayout {
    /// Type 0: endpoints, six BARs.
    Endpoint,
    /// Type 1: PCI-to-PCI bridges, two BARs and bus numbers.
    PciBridge,
    /// Type 2: CardBus bridges (no BARs decoded here).
    CardBusBridge,
    /// A reserved layout; only the common header (0x00..0x0F) is meaningful.
    Unknown(u8),
}

impl HeaderLayout {
    pub const fn from_header_type(header_type: u8) -> HeaderLayout {
        match header_type & HEADER_LAYOUT_MASK {
            0 => HeaderLayout::Endpoint,
            1 => HeaderLayout::PciBridge,
            2 => HeaderLayout::CardBusBridge,
            other => HeaderLayout::Unknown(other),
        }
    }

    /// How many BAR slots start at 0x10 (PCI 3.0 §6.2.5.1; bridge spec §3.2.5.1).
    pub const fn bar_slots(self) -> u8 {
        match self {
            HeaderLayout::Endpoint => 6,
            HeaderLayout::PciBridge => 2,
            _ => 0,
        }
    }

    /// Where the capabilities pointer lives, if this layout has one.
    pub const fn capabilities_pointer(self) -> Option<u16> {
        match self {
            HeaderLayout::Endpoint | HeaderLayout::PciBridge => Some(CAPABILITIES_POINTER),
            HeaderLayout::CardBusBridge => Some(0x14),
            HeaderLayout::Unknown(_) => None,
        }
    }
}

/// Base class, subclass and programming interface (PCI Code and ID Assignment spec).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClassCode {
    pub base: u8,
    pub sub: u8,
    pub prog_if: u8,
}

impl ClassCode {
    /// Base class 0x06 subclass 0x04: PCI-to-PCI bridge.
    pub const fn is_pci_bridge(self) -> bool {
        self.base == 0x06 && self.sub == 0x04
    }

    /// The 24-bit value as `lspci -n` prints it (`0x00ff00` for base 0x00, sub 0xff, prog-if 0).
    pub const fn as_u32(self) -> u32 {
        (self.base as u32) << 16 | (self.sub as u32) << 8 | self.prog_if as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_rw1c_bits_match_pci_3_0_section_6_2_3() {
        assert_eq!(Status::WRITE_ONE_TO_CLEAR.bits(), 0xF900);
    }

    #[test]
    fn header_layouts() {
        assert_eq!(HeaderLayout::from_header_type(0x80), HeaderLayout::Endpoint);
        assert_eq!(
            HeaderLayout::from_header_type(0x01),
            HeaderLayout::PciBridge
        );
        assert_eq!(HeaderLayout::Endpoint.bar_slots(), 6);
        assert_eq!(HeaderLayout::PciBridge.bar_slots(), 2);
        assert_eq!(
            HeaderLayout::from_header_type(0x7f),
            HeaderLayout::Unknown(0x7f)
        );
    }
}
