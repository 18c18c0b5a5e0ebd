//! Interrupt-controller facts shared by the ACPI and the fallback paths: the IA32_APIC_BASE MSR,
//! the IOAPIC version register and the MPS INTI flags of MADT entries.

use core::fmt;

/// Architectural default physical base of the local APIC (SDM Vol. 3A 11.4.1).
pub const DEFAULT_LAPIC_BASE: u64 = 0xfee0_0000;
/// Conventional physical base of the first IOAPIC (82093AA datasheet; every PC chipset since).
pub const DEFAULT_IOAPIC_BASE: u64 = 0xfec0_0000;
/// IOAPIC registers are reached through IOREGSEL (base + 0) and IOWIN (base + 0x10).
pub const IOAPIC_IOWIN_OFFSET: u64 = 0x10;
pub const IOAPIC_REG_ID: u8 = 0;
pub const IOAPIC_REG_VERSION: u8 = 1;

/// IA32_APIC_BASE (MSR 0x1B), SDM Vol. 3A 11.4.4 and 11.12.1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ApicBaseMsr(pub u64);

impl ApicBaseMsr {
    /// Bit 8: this processor is the bootstrap processor.
    pub fn bsp(self) -> bool {
        self.0 & (1 << 8) != 0
    }
    /// Bit 10 (EXTD): x2APIC mode.
    pub fn x2apic_enabled(self) -> bool {
        self.0 & (1 << 10) != 0
    }
    /// Bit 11: the APIC is globally enabled.
    pub fn enabled(self) -> bool {
        self.0 & (1 << 11) != 0
    }
    /// Bits 12 up to MAXPHYADDR-1 (at most 51): the page-aligned register base.
    pub fn base(self) -> u64 {
        self.0 & 0x000f_ffff_ffff_f000
    }
}

/// The IOAPIC version register (index 1): version [7:0], maximum redirection entry [23:16].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IoApicVersion(pub u32);

impl IoApicVersion {
    /// An absent device reads as all ones (nothing decodes the address) or all zeros; neither is
    /// a valid version register (bits 31:24 and 15:8 are reserved zero, and every IOAPIC has pins).
    pub fn looks_present(self) -> bool {
        self.0 != 0 && self.0 != u32::MAX && self.0 & 0xff00_ff00 == 0
    }
    pub fn version(self) -> u8 {
        self.0 as u8
    }
    /// Number of redirection entries (pins): maximum redirection entry + 1.
    pub fn pins(self) -> u16 {
        ((self.0 >> 16) & 0xff) as u16 + 1
    }
}

/// Polarity of an interrupt input, MPS INTI flags bits [1:0] (ACPI 5.2.12.5, Table 5.50).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Polarity {
    /// Conforms to the bus (ISA: active high).
    Conforms,
    ActiveHigh,
    Reserved,
    ActiveLow,
}

/// Trigger mode, MPS INTI flags bits [3:2].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    /// Conforms to the bus (ISA: edge).
    Conforms,
    Edge,
    Reserved,
    Level,
}

/// Decodes MPS INTI flags.
pub fn inti_flags(flags: u16) -> (Polarity, Trigger) {
    let polarity = match flags & 0b11 {
        0 => Polarity::Conforms,
        1 => Polarity::ActiveHigh,
        2 => Polarity::Reserved,
        _ => Polarity::ActiveLow,
    };
    let trigger = match (flags >> 2) & 0b11 {
        0 => Trigger::Conforms,
        1 => Trigger::Edge,
        2 => Trigger::Reserved,
        _ => Trigger::Level,
    };
    (polarity, trigger)
}

impl fmt::Display for Polarity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Conforms => "conforms",
            Self::ActiveHigh => "high",
            Self::Reserved => "reserved",
            Self::ActiveLow => "low",
        })
    }
}

impl fmt::Display for Trigger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Conforms => "conforms",
            Self::Edge => "edge",
            Self::Reserved => "reserved",
            Self::Level => "level",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apic_base_msr() {
        // 0xFEE00900: base 0xFEE00000, BSP (bit 8), enabled (bit 11), xAPIC mode.
        let m = ApicBaseMsr(0xfee0_0900);
        assert_eq!(m.base(), 0xfee0_0000);
        assert!(m.bsp() && m.enabled() && !m.x2apic_enabled());
        assert!(ApicBaseMsr(0xfee0_0d00).x2apic_enabled());
    }

    #[test]
    fn ioapic_version() {
        // QEMU/Bochs-style 82093AA: version 0x20 (0x11 on Bochs), 24 pins (max entry 0x17).
        let v = IoApicVersion(0x0017_0020);
        assert!(v.looks_present());
        assert_eq!((v.version(), v.pins()), (0x20, 24));
        assert!(!IoApicVersion(0xffff_ffff).looks_present());
        assert!(!IoApicVersion(0).looks_present());
    }

    #[test]
    fn inti() {
        // 0xD = level (11b << 2) + active high (01b): a PCI-style override would be 0xF.
        assert_eq!(inti_flags(0x0d), (Polarity::ActiveHigh, Trigger::Level));
        assert_eq!(inti_flags(0x0f), (Polarity::ActiveLow, Trigger::Level));
        assert_eq!(inti_flags(0), (Polarity::Conforms, Trigger::Conforms));
        assert_eq!(inti_flags(0x05), (Polarity::ActiveHigh, Trigger::Edge));
    }
}
