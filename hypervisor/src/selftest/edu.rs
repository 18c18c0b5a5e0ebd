//! QEMU's `edu` teaching device (PCI 1234:11e8; QEMU hw/misc/edu.c, docs/specs/edu.rst): a DMA
//! engine between RAM and a 4 KiB on-device buffer, and an interrupt it raises on request. Its
//! DMA and MSI writes go through the IOMMU, which makes it the self-test's DMA master.
//!
//! BAR0 registers (1 MiB window): identification 0x00, interrupt status 0x24, raise 0x60,
//! acknowledge 0x64, DMA source 0x80, destination 0x88, count 0x90, command 0x98. Registers
//! below 0x80 take 32-bit accesses only, the DMA registers 32- or 64-bit ones. The buffer sits
//! at *device* address 0x40000 and is reachable by DMA only (not through BAR0). QEMU 7.2 aborts
//! on a transfer outside the buffer and masks RAM addresses to 28 bits, so requests are checked
//! here before they reach the device.

use bitflags::bitflags;
use core::fmt;

pub const VENDOR_ID: u16 = 0x1234;
pub const DEVICE_ID: u16 = 0x11e8;

/// Device address of the on-device DMA buffer, and its size.
pub const BUFFER_ADDRESS: u64 = 0x40000;
pub const BUFFER_SIZE: u64 = 4096;
/// The device's default DMA mask (property `dma_mask`): RAM addresses above it are clamped.
pub const DMA_ADDRESS_LIMIT: u64 = 1 << 28;
/// Polls of the command register before a transfer counts as stuck: QEMU finishes a transfer
/// ~100 ms of virtual time after it starts (a timer), which takes tens of thousands of MMIO reads
/// under TCG.
pub const DMA_POLLS: u64 = 5_000_000;
/// The interrupt-status bit the self-tests raise (any non-zero value makes the edu signal).
pub const RAISE_BITS: u32 = 0x1;

/// BAR0 register offsets.
pub mod reg {
    /// Reads 0x010000ed: version 1.0, magic 0xed.
    pub const IDENTIFICATION: u64 = 0x00;
    pub const INTERRUPT_STATUS: u64 = 0x24;
    /// Writing v ORs v into the status and raises the interrupt (MSI when enabled).
    pub const INTERRUPT_RAISE: u64 = 0x60;
    /// Writing v clears v in the status.
    pub const INTERRUPT_ACK: u64 = 0x64;
    pub const DMA_SOURCE: u64 = 0x80;
    pub const DMA_DESTINATION: u64 = 0x88;
    pub const DMA_COUNT: u64 = 0x90;
    pub const DMA_COMMAND: u64 = 0x98;
}

/// The identification register's value for the QEMU 7.2 device.
pub const IDENTIFICATION_VALUE: u32 = 0x0100_00ed;
/// The interrupt-status bit the device itself sets when a DMA with [`DmaCommand::INTERRUPT`] ends.
pub const DMA_INTERRUPT: u32 = 0x100;

bitflags! {
    /// The DMA command register.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct DmaCommand: u64 {
        /// Start; the device clears it when the transfer is done (about 100 ms of virtual time
        /// later: QEMU runs the transfer from a timer).
        const START = 1 << 0;
        /// Direction: set = from the device's buffer to RAM, clear = from RAM to the buffer.
        const TO_RAM = 1 << 1;
        /// Raise the interrupt (status bit 0x100) when the transfer is done.
        const INTERRUPT = 1 << 2;
    }
}

/// Which way a transfer goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// RAM (at an IOVA) to the device's buffer: a DMA read, needs read permission.
    FromRam,
    /// The device's buffer to RAM (at an IOVA): a DMA write, needs write permission.
    ToRam,
}

/// The register values of one transfer, checked against the device's limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DmaRequest {
    pub source: u64,
    pub destination: u64,
    pub count: u64,
    pub command: DmaCommand,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EduError {
    /// The transfer would leave the 4 KiB buffer (QEMU 7.2 aborts the whole emulator on it).
    OutsideBuffer,
    /// The RAM address is not below [`DMA_ADDRESS_LIMIT`] (the device would clamp it).
    BeyondDmaMask,
    /// A transfer is still running.
    Busy,
    /// The transfer did not finish within the polling budget.
    Timeout,
}

impl fmt::Display for EduError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EduError::OutsideBuffer => "edu transfer outside the 4 KiB buffer",
            EduError::BeyondDmaMask => "edu RAM address beyond its 28-bit DMA mask",
            EduError::Busy => "edu DMA engine busy",
            EduError::Timeout => "edu DMA did not finish in time",
        })
    }
}

impl DmaRequest {
    /// A transfer of `len` bytes between RAM at `iova` and the buffer at `buffer_offset`.
    pub fn new(
        direction: Direction,
        iova: u64,
        buffer_offset: u64,
        len: u64,
        interrupt: bool,
    ) -> Result<DmaRequest, EduError> {
        let end = buffer_offset
            .checked_add(len)
            .ok_or(EduError::OutsideBuffer)?;
        if len == 0 || end > BUFFER_SIZE {
            return Err(EduError::OutsideBuffer);
        }
        match iova.checked_add(len) {
            Some(e) if e <= DMA_ADDRESS_LIMIT => {}
            _ => return Err(EduError::BeyondDmaMask),
        }
        let buffer = BUFFER_ADDRESS + buffer_offset;
        let mut command = DmaCommand::START;
        command.set(DmaCommand::INTERRUPT, interrupt);
        let (source, destination) = match direction {
            Direction::FromRam => (iova, buffer),
            Direction::ToRam => {
                command |= DmaCommand::TO_RAM;
                (buffer, iova)
            }
        };
        Ok(DmaRequest {
            source,
            destination,
            count: len,
            command,
        })
    }
}

/// One edu function's BAR0.
pub struct Edu {
    bar0: u64,
}

impl Edu {
    /// # Safety
    /// `bar0` is the physical base of an edu function's BAR0, identity-mapped uncached, with
    /// memory decoding enabled, and nothing else drives the device while this value lives.
    pub unsafe fn new(bar0: u64) -> Edu {
        Edu { bar0 }
    }

    fn read32(&mut self, offset: u64) -> u32 {
        // SAFETY: `new`'s contract; every offset used is a register inside the 1 MiB BAR.
        unsafe { core::ptr::read_volatile((self.bar0 + offset) as *const u32) }
    }
    fn write32(&mut self, offset: u64, value: u32) {
        // SAFETY: as in `read32`.
        unsafe { core::ptr::write_volatile((self.bar0 + offset) as *mut u32, value) }
    }
    fn read64(&mut self, offset: u64) -> u64 {
        // SAFETY: as in `read32`; the DMA registers take 64-bit accesses.
        unsafe { core::ptr::read_volatile((self.bar0 + offset) as *const u64) }
    }
    fn write64(&mut self, offset: u64, value: u64) {
        // SAFETY: as in `read64`.
        unsafe { core::ptr::write_volatile((self.bar0 + offset) as *mut u64, value) }
    }

    pub fn identification(&mut self) -> u32 {
        self.read32(reg::IDENTIFICATION)
    }

    pub fn busy(&mut self) -> bool {
        DmaCommand::from_bits_retain(self.read64(reg::DMA_COMMAND)).contains(DmaCommand::START)
    }

    /// Programs and starts a transfer (the device ignores register writes while one runs).
    pub fn start(&mut self, request: &DmaRequest) -> Result<(), EduError> {
        if self.busy() {
            return Err(EduError::Busy);
        }
        self.write64(reg::DMA_SOURCE, request.source);
        self.write64(reg::DMA_DESTINATION, request.destination);
        self.write64(reg::DMA_COUNT, request.count);
        self.write64(reg::DMA_COMMAND, request.command.bits());
        Ok(())
    }

    /// Polls the command register until the device clears START, at most `polls` times;
    /// returns the number of polls it took.
    pub fn wait_done(&mut self, polls: u64) -> Result<u64, EduError> {
        for n in 0..polls {
            if !self.busy() {
                return Ok(n);
            }
            core::hint::spin_loop();
        }
        Err(EduError::Timeout)
    }

    /// Starts a transfer and waits for its end.
    pub fn transfer(&mut self, request: &DmaRequest, polls: u64) -> Result<u64, EduError> {
        self.start(request)?;
        self.wait_done(polls)
    }

    pub fn interrupt_status(&mut self) -> u32 {
        self.read32(reg::INTERRUPT_STATUS)
    }
    /// Sets `bits` in the interrupt status and signals the interrupt (one MSI per write while
    /// MSI is enabled and the status is non-zero).
    pub fn raise(&mut self, bits: u32) {
        self.write32(reg::INTERRUPT_RAISE, bits);
    }
    pub fn acknowledge(&mut self, bits: u32) {
        self.write32(reg::INTERRUPT_ACK, bits);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_bits_match_edu_c() {
        // edu.c: EDU_DMA_RUN 0x1, EDU_DMA_DIR(cmd) = (cmd & 0x2) >> 1 with 1 = EDU_DMA_TO_PCI
        // (buffer to RAM), EDU_DMA_IRQ 0x4.
        let to_ram = DmaRequest::new(Direction::ToRam, 0x20_0000, 0x100, 0x200, true).unwrap();
        assert_eq!(
            to_ram,
            DmaRequest {
                source: 0x40100,
                destination: 0x20_0000,
                count: 0x200,
                command: DmaCommand::from_bits_retain(0b111),
            }
        );
        let from_ram = DmaRequest::new(Direction::FromRam, 0x10_0000, 0, 0x1000, false).unwrap();
        assert_eq!(
            (from_ram.source, from_ram.destination, from_ram.count),
            (0x10_0000, 0x40000, 0x1000)
        );
        assert_eq!(from_ram.command.bits(), 0b001);
    }

    #[test]
    fn requests_that_would_abort_or_clamp_are_refused() {
        let req = |iova, off, len| DmaRequest::new(Direction::ToRam, iova, off, len, false);
        assert_eq!(req(0, 0xF00, 0x200), Err(EduError::OutsideBuffer));
        assert_eq!(req(0, 0, 0), Err(EduError::OutsideBuffer));
        assert_eq!(req(0, u64::MAX, 2), Err(EduError::OutsideBuffer));
        assert!(req(0, 0xE00, 0x200).is_ok());
        // Last byte at 256 MiB - 1 is fine, one further is clamped by the device.
        assert!(req(0x0FFF_F000, 0, 0x1000).is_ok());
        assert_eq!(req(0x0FFF_F001, 0, 0x1000), Err(EduError::BeyondDmaMask));
        assert_eq!(req(u64::MAX, 0, 1), Err(EduError::BeyondDmaMask));
    }
}
