//! Configuration-space access mechanisms: legacy I/O ports 0xCF8/0xCFC and PCIe ECAM.

use core::fmt;

use crate::arch::port;

use super::bdf::Bdf;
use super::regs::{EXTENDED_CONFIG_SIZE, LEGACY_CONFIG_SIZE};

/// Which mechanism reaches configuration space.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mechanism {
    /// Configuration mechanism #1, ports 0xCF8/0xCFC (PCI Local Bus 3.0 §3.2.2.3.2).
    Legacy,
    /// Enhanced configuration access, memory mapped (PCIe Base 4.0 §7.2.2, ACPI MCFG).
    Ecam,
}

impl fmt::Display for Mechanism {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mechanism::Legacy => "legacy",
            Mechanism::Ecam => "ecam",
        })
    }
}

/// Reads and writes one segment's configuration space.
///
/// `offset` of the 32-bit accessors is dword aligned (low two bits are ignored). An access
/// outside what the mechanism reaches (another segment, a bus outside its range, an offset
/// beyond [`ConfigAccess::config_size`]) reads all-ones and drops writes, which is what
/// hardware does for a function that does not answer.
///
/// The provided 8/16-bit accessors go through the containing dword. A read-modify-write of
/// a dword writes back its other bytes, which clears write-1-to-clear bits such as the Status
/// register's errors, so the real mechanisms override `write16`/`write8` with accesses of
/// the natural width.
pub trait ConfigAccess {
    fn mechanism(&self) -> Mechanism;
    /// The PCI segment (ACPI `_SEG`, MCFG segment group) this accessor reaches.
    fn segment(&self) -> u16;
    /// The first and last bus number this accessor reaches.
    fn bus_range(&self) -> (u8, u8);
    /// Bytes of configuration space per function: 256 for legacy ports, 4096 for ECAM.
    fn config_size(&self) -> u16;

    fn read32(&self, bdf: Bdf, offset: u16) -> u32;
    fn write32(&self, bdf: Bdf, offset: u16, value: u32);

    fn read16(&self, bdf: Bdf, offset: u16) -> u16 {
        (self.read32(bdf, offset & !3) >> ((offset & 2) * 8)) as u16
    }
    fn read8(&self, bdf: Bdf, offset: u16) -> u8 {
        (self.read32(bdf, offset & !3) >> ((offset & 3) * 8)) as u8
    }
    fn write16(&self, bdf: Bdf, offset: u16, value: u16) {
        let shift = (offset & 2) * 8;
        let old = self.read32(bdf, offset & !3);
        let new = (old & !(0xFFFF << shift)) | (value as u32) << shift;
        self.write32(bdf, offset & !3, new);
    }
    fn write8(&self, bdf: Bdf, offset: u16, value: u8) {
        let shift = (offset & 3) * 8;
        let old = self.read32(bdf, offset & !3);
        let new = (old & !(0xFF << shift)) | (value as u32) << shift;
        self.write32(bdf, offset & !3, new);
    }

    /// Whether `bdf` at `offset` is inside what this accessor reaches.
    fn reaches(&self, bdf: Bdf, offset: u16) -> bool {
        let (first, last) = self.bus_range();
        bdf.segment() == self.segment()
            && (first..=last).contains(&bdf.bus())
            && offset < self.config_size()
    }
}

/// Configuration mechanism #1 through ports 0xCF8 (address) and 0xCFC (data).
///
/// The address/data pair is two separate port accesses, so a lock keeps another CPU from
/// moving CONFIG_ADDRESS in between; that is why the accessors can take `&self`.
pub struct LegacyPorts {
    lock: spin::Mutex<()>,
}

impl LegacyPorts {
    const CONFIG_ADDRESS: u16 = 0xCF8;
    const CONFIG_DATA: u16 = 0xCFC;
    /// CONFIG_ADDRESS bit 31: the next CONFIG_DATA access is a configuration cycle.
    const ENABLE: u32 = 1 << 31;

    /// # Safety
    /// The machine implements configuration mechanism #1 (every PC-compatible chipset does),
    /// and nothing else in the system uses ports 0xCF8..0xCFF except through this value.
    pub const unsafe fn new() -> LegacyPorts {
        LegacyPorts {
            lock: spin::Mutex::new(()),
        }
    }

    /// CONFIG_ADDRESS for a dword: enable, bus[23:16], device[15:11], function[10:8],
    /// register[7:2] (PCI Local Bus 3.0 §3.2.2.3.2, Figure 3-2).
    pub const fn address(bdf: Bdf, offset: u16) -> u32 {
        Self::ENABLE
            | (bdf.bus() as u32) << 16
            | (bdf.device() as u32) << 11
            | (bdf.function() as u32) << 8
            | (offset as u32 & 0xFC)
    }

    /// Selects the dword, then runs `access` on the data port of byte `offset & 3`.
    fn with_data_port<T>(&self, bdf: Bdf, offset: u16, access: impl FnOnce(u16) -> T) -> T {
        let _guard = self.lock.lock();
        // SAFETY: `new`'s contract gives us exclusive use of CONFIG_ADDRESS, and the lock
        // keeps the address/data pair together; selecting a register has no other effect.
        unsafe { port::write(Self::CONFIG_ADDRESS, Self::address(bdf, offset)) };
        access(Self::CONFIG_DATA + (offset & 3))
    }
}

impl ConfigAccess for LegacyPorts {
    fn mechanism(&self) -> Mechanism {
        Mechanism::Legacy
    }
    fn segment(&self) -> u16 {
        0
    }
    fn bus_range(&self) -> (u8, u8) {
        (0, 0xFF)
    }
    fn config_size(&self) -> u16 {
        LEGACY_CONFIG_SIZE
    }

    fn read32(&self, bdf: Bdf, offset: u16) -> u32 {
        if !self.reaches(bdf, offset) {
            return u32::MAX;
        }
        // SAFETY: a configuration read through the data port selected above.
        self.with_data_port(bdf, offset & !3, |data| unsafe { port::read::<u32>(data) })
    }
    fn write32(&self, bdf: Bdf, offset: u16, value: u32) {
        if self.reaches(bdf, offset) {
            // SAFETY: a configuration write through the data port selected above; what it
            // does to the device is the caller's intent.
            self.with_data_port(bdf, offset & !3, |data| unsafe {
                port::write::<u32>(data, value)
            });
        }
    }
    fn read16(&self, bdf: Bdf, offset: u16) -> u16 {
        if !self.reaches(bdf, offset) {
            return u16::MAX;
        }
        // SAFETY: as `read32`, on the word lane 0xCFC + (offset & 2).
        self.with_data_port(bdf, offset & !1, |data| unsafe { port::read::<u16>(data) })
    }
    fn read8(&self, bdf: Bdf, offset: u16) -> u8 {
        if !self.reaches(bdf, offset) {
            return u8::MAX;
        }
        // SAFETY: as `read32`, on the byte lane 0xCFC + (offset & 3).
        self.with_data_port(bdf, offset, |data| unsafe { port::read::<u8>(data) })
    }
    fn write16(&self, bdf: Bdf, offset: u16, value: u16) {
        if self.reaches(bdf, offset) {
            // SAFETY: as `write32`, on one word lane, so neighbouring bytes are untouched.
            self.with_data_port(bdf, offset & !1, |data| unsafe {
                port::write::<u16>(data, value)
            });
        }
    }
    fn write8(&self, bdf: Bdf, offset: u16, value: u8) {
        if self.reaches(bdf, offset) {
            // SAFETY: as `write32`, on one byte lane.
            self.with_data_port(bdf, offset, |data| unsafe {
                port::write::<u8>(data, value)
            });
        }
    }
}

/// One ECAM region (one ACPI MCFG allocation): 4 KiB of configuration space per function.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ecam {
    base: u64,
    segment: u16,
    start_bus: u8,
    end_bus: u8,
}

impl Ecam {
    /// # Safety
    /// `base` is the physical address MCFG gives for `segment` (the address of bus
    /// `start_bus`, device 0, function 0), identity mapped as uncached device memory for the
    /// whole `(end_bus - start_bus + 1)` MiB, and `start_bus <= end_bus`.
    pub const unsafe fn new(base: u64, segment: u16, start_bus: u8, end_bus: u8) -> Ecam {
        Ecam {
            base,
            segment,
            start_bus,
            end_bus,
        }
    }

    pub const fn base(&self) -> u64 {
        self.base
    }

    /// Physical address of `offset` in `bdf`'s space: bus[27:20] (relative to the start
    /// bus), device[19:15], function[14:12], register[11:0] (PCIe Base 4.0 §7.2.2, Table 7-1).
    /// `None` outside this region.
    pub fn address(&self, bdf: Bdf, offset: u16) -> Option<u64> {
        if !self.reaches(bdf, offset) {
            return None;
        }
        let relative_bus = (bdf.bus() - self.start_bus) as u64;
        Some(
            self.base
                + (relative_bus << 20
                    | (bdf.device() as u64) << 15
                    | (bdf.function() as u64) << 12
                    | offset as u64),
        )
    }

    /// Only called after `reaches` said yes.
    fn pointer<T>(&self, bdf: Bdf, offset: u16) -> *mut T {
        self.address(bdf, offset).unwrap_or_default() as *mut T
    }
}

impl ConfigAccess for Ecam {
    fn mechanism(&self) -> Mechanism {
        Mechanism::Ecam
    }
    fn segment(&self) -> u16 {
        self.segment
    }
    fn bus_range(&self) -> (u8, u8) {
        (self.start_bus, self.end_bus)
    }
    fn config_size(&self) -> u16 {
        EXTENDED_CONFIG_SIZE
    }

    fn read32(&self, bdf: Bdf, offset: u16) -> u32 {
        if !self.reaches(bdf, offset) {
            return u32::MAX;
        }
        // SAFETY: `new`'s contract maps this aligned dword inside the region as device memory.
        unsafe { self.pointer::<u32>(bdf, offset & !3).read_volatile() }
    }
    fn write32(&self, bdf: Bdf, offset: u16, value: u32) {
        if self.reaches(bdf, offset) {
            // SAFETY: as `read32`; the write's effect on the device is the caller's intent.
            unsafe { self.pointer::<u32>(bdf, offset & !3).write_volatile(value) }
        }
    }
    fn read16(&self, bdf: Bdf, offset: u16) -> u16 {
        if !self.reaches(bdf, offset) {
            return u16::MAX;
        }
        // SAFETY: as `read32`, an aligned word (ECAM accepts 1-, 2- and 4-byte accesses).
        unsafe { self.pointer::<u16>(bdf, offset & !1).read_volatile() }
    }
    fn read8(&self, bdf: Bdf, offset: u16) -> u8 {
        if !self.reaches(bdf, offset) {
            return u8::MAX;
        }
        // SAFETY: as `read32`, one byte.
        unsafe { self.pointer::<u8>(bdf, offset).read_volatile() }
    }
    fn write16(&self, bdf: Bdf, offset: u16, value: u16) {
        if self.reaches(bdf, offset) {
            // SAFETY: as `write32`, an aligned word, so neighbouring bytes are untouched.
            unsafe { self.pointer::<u16>(bdf, offset & !1).write_volatile(value) }
        }
    }
    fn write8(&self, bdf: Bdf, offset: u16, value: u8) {
        if self.reaches(bdf, offset) {
            // SAFETY: as `write32`, one byte.
            unsafe { self.pointer::<u8>(bdf, offset).write_volatile(value) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bdf(bus: u8, device: u8, function: u8) -> Bdf {
        Bdf::new(0, bus, device, function).unwrap()
    }

    #[test]
    fn legacy_address_layout() {
        // PCI 3.0 Figure 3-2: 0x8000_0000 | 0x01 << 16 | 0x03 << 11 | 0x2 << 8 | 0x10.
        assert_eq!(LegacyPorts::address(bdf(1, 3, 2), 0x10), 0x8001_1A10);
        assert_eq!(LegacyPorts::address(bdf(0, 0, 0), 0x3E), 0x8000_003C);
        assert_eq!(LegacyPorts::address(bdf(0xFF, 31, 7), 0xFC), 0x80FF_FFFC);
    }

    #[test]
    fn ecam_address_layout() {
        // SAFETY: only address arithmetic is exercised, nothing is dereferenced.
        let ecam = unsafe { Ecam::new(0xB000_0000, 0, 0x10, 0x1F) };
        // (0x12 - 0x10) << 20 | 3 << 15 | 1 << 12 | 0x104 = 0x21_9104.
        assert_eq!(ecam.address(bdf(0x12, 3, 1), 0x104), Some(0xB021_9104));
        assert_eq!(ecam.address(bdf(0x0F, 0, 0), 0), None);
        assert!(ecam.reaches(bdf(0x1F, 0, 0), 0xFFC));
        assert!(!ecam.reaches(bdf(0x0F, 0, 0), 0));
        assert!(!ecam.reaches(bdf(0x20, 0, 0), 0));
        assert!(!ecam.reaches(Bdf::new(1, 0x10, 0, 0).unwrap(), 0));
        // Unreachable reads answer like an absent function without touching memory.
        assert_eq!(ecam.read32(bdf(0x20, 0, 0), 0), u32::MAX);
    }

    #[test]
    fn legacy_reaches_only_segment_zero_and_256_bytes() {
        // SAFETY: only `reaches` runs, no port is touched.
        let ports = unsafe { LegacyPorts::new() };
        assert!(ports.reaches(bdf(0xFF, 31, 7), 0xFC));
        assert!(!ports.reaches(bdf(0, 0, 0), 0x100));
        assert!(!ports.reaches(Bdf::new(1, 0, 0, 0).unwrap(), 0));
        assert_eq!(ports.read32(bdf(0, 0, 0), 0x100), u32::MAX);
    }
}
