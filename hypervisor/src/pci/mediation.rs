//! Configuration-space mediation for assigned devices, in the style of Jailhouse's
//! per-register access tables: each byte range of a function's configuration space has a
//! rule, and a guest access is decided by pure functions ([`mediate_read`],
//! [`mediate_write`]) so the policy is host-tested apart from the trap plumbing.
//!
//! Rules:
//! - [`Rule::Allow`]: reads see the hardware; writes change only the region's `write_mask`
//!   bits, every other bit keeps its hardware value.
//! - [`Rule::ReadOnly`]: reads see the hardware; writes are dropped. Anything no region
//!   covers is read-only.
//! - [`Rule::Deny`]: reads see a constant (all-ones, or 0 for a defined field such as the
//!   expansion ROM BAR, where 0 means "none"); writes are dropped.
//! - [`Rule::Emulate`]: a hook answers (BARs, MSI, MSI-X, PCIe Device Control), because
//!   the guest's values differ from the hardware's: guest-physical BARs, and MSI addresses
//!   and data that become interrupt-remapping entries.

use alloc::vec::Vec;

use super::caps::{MsixCapability, PcieCapability};
use super::enumerate::PciFunction;
use super::regs::{
    Command, HeaderLayout, Status, BAR0, BIST, CACHE_LINE_SIZE, CAPABILITIES_POINTER, CARDBUS_CIS,
    COMMAND, EXPANSION_ROM, EXTENDED_CONFIG_SIZE, HEADER_TYPE, INTERRUPT_LINE, LATENCY_TIMER,
    REVISION_CLASS, STATUS, SUBSYSTEM_IDS, VENDOR_ID,
};

/// Width of one guest configuration access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccessSize {
    Byte = 1,
    Word = 2,
    Dword = 4,
}

impl AccessSize {
    pub const fn from_bytes(bytes: u8) -> Option<AccessSize> {
        match bytes {
            1 => Some(AccessSize::Byte),
            2 => Some(AccessSize::Word),
            4 => Some(AccessSize::Dword),
            _ => None,
        }
    }
    pub const fn bytes(self) -> u16 {
        self as u16
    }
    /// The value bits an access of this size carries.
    pub const fn value_mask(self) -> u32 {
        match self {
            AccessSize::Byte => 0xFF,
            AccessSize::Word => 0xFFFF,
            AccessSize::Dword => 0xFFFF_FFFF,
        }
    }
}

/// What a denied register reads as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeniedRead {
    /// As if nothing answered.
    AllOnes,
    /// The field's "not implemented" value (e.g. an expansion ROM BAR of 0).
    Zero,
}

/// Which emulation hook owns a region. The hook receives the whole access and the region's
/// start, so it sees register offsets relative to the structure it emulates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    /// The BAR block 0x10..0x28: guest-physical bases, sizing answered from the probed sizes.
    Bar,
    /// The whole MSI capability, ID/next bytes included: guest writes become IRTEs.
    Msi,
    /// The whole MSI-X capability: enable and function-mask bits (the table itself lives in
    /// BAR memory and is trapped through EPT).
    MsiX,
    /// PCIe Device Control: a guest's Initiate FLR becomes the hypervisor's reset.
    PcieDeviceControl,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rule {
    Allow,
    ReadOnly,
    Deny(DeniedRead),
    Emulate(Hook),
}

/// One byte range of configuration space and its rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Region {
    pub offset: u16,
    pub size: u16,
    pub rule: Rule,
    /// For `Allow`: bits the guest may change; bit 8*i+n is bit n of byte `offset + i`.
    pub write_mask: u32,
    /// Write-1-to-clear bits of the region. Where the guest may not change them they are
    /// written as 0 (no effect) instead of their current value, which would clear them.
    pub write_one_to_clear: u32,
}

impl Region {
    /// Regions wider than a dword can only be allowed wholesale (their mask would not fit).
    pub const fn allow(offset: u16, size: u16, write_mask: u32) -> Region {
        Region {
            offset,
            size,
            rule: Rule::Allow,
            write_mask,
            write_one_to_clear: 0,
        }
    }
    pub const fn read_only(offset: u16, size: u16) -> Region {
        Region::with_rule(offset, size, Rule::ReadOnly)
    }
    pub const fn deny(offset: u16, size: u16, reads_as: DeniedRead) -> Region {
        Region::with_rule(offset, size, Rule::Deny(reads_as))
    }
    pub const fn emulate(offset: u16, size: u16, hook: Hook) -> Region {
        Region::with_rule(offset, size, Rule::Emulate(hook))
    }
    const fn with_rule(offset: u16, size: u16, rule: Rule) -> Region {
        Region {
            offset,
            size,
            rule,
            write_mask: 0,
            write_one_to_clear: 0,
        }
    }
    /// Declares the region's write-1-to-clear bits.
    pub const fn write_one_to_clear(mut self, bits: u32) -> Region {
        self.write_one_to_clear = bits;
        self
    }

    const fn end(&self) -> u32 {
        self.offset as u32 + self.size as u32
    }
    const fn contains(&self, offset: u16) -> bool {
        offset >= self.offset && (offset as u32) < self.end()
    }
    /// The mask byte that applies to `offset` (inside the region).
    const fn byte_of(&self, mask: u32, offset: u16) -> u8 {
        if self.size > 4 {
            // Validated: wide regions carry all-ones or zero masks.
            mask as u8
        } else {
            (mask >> (8 * (offset - self.offset))) as u8
        }
    }
}

/// The type-0 header (PCI 3.0 §6.1, Figure 6-1). Bytes not listed (0x35..0x3B, 0x3D..0x3F)
/// are read-only by default.
pub const ENDPOINT_HEADER: [Region; 13] = [
    Region::read_only(VENDOR_ID, 4),
    // The guest runs its own driver: it may switch decoding, bus mastering and INTx
    // masking, nothing else (no SERR#, parity, special cycles).
    Region::allow(
        COMMAND,
        2,
        Command::IO_SPACE
            .union(Command::MEMORY_SPACE)
            .union(Command::BUS_MASTER)
            .union(Command::INTX_DISABLE)
            .bits() as u32,
    ),
    // The guest may clear its device's error bits (RW1C, §6.2.3).
    Region::allow(STATUS, 2, Status::WRITE_ONE_TO_CLEAR.bits() as u32)
        .write_one_to_clear(Status::WRITE_ONE_TO_CLEAR.bits() as u32),
    Region::read_only(REVISION_CLASS, 4),
    // Cache line size and latency timer only tune bus behaviour (§6.2.4).
    Region::allow(CACHE_LINE_SIZE, 1, 0xFF),
    Region::allow(LATENCY_TIMER, 1, 0xFF),
    Region::read_only(HEADER_TYPE, 1),
    // Starting a built-in self test would reset the device behind the hypervisor's back.
    Region::read_only(BIST, 1),
    Region::emulate(BAR0, 24, Hook::Bar),
    Region::read_only(CARDBUS_CIS, 4),
    Region::read_only(SUBSYSTEM_IDS, 4),
    // Option ROMs are firmware for the host; the guest sees none (a ROM BAR of 0).
    Region::deny(EXPANSION_ROM, 4, DeniedRead::Zero),
    Region::read_only(CAPABILITIES_POINTER, 1),
];

/// Interrupt Line is a scratch register for the guest's own bookkeeping (§6.2.4).
pub const ENDPOINT_INTERRUPT_LINE: Region = Region::allow(INTERRUPT_LINE, 1, 0xFF);

/// Why a table was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TableError {
    /// Two regions share bytes; the later one starts at `offset`.
    Overlap { offset: u16 },
    /// A region is empty or ends beyond the 4 KiB configuration space.
    OutOfRange { offset: u16 },
    /// An `Allow` region wider than a dword with a partial mask.
    PartialMaskOnWideRegion { offset: u16 },
    /// The default table is only defined for type-0 headers.
    NotAnEndpoint,
}

/// Non-overlapping regions sorted by offset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MediationTable {
    regions: Vec<Region>,
}

impl MediationTable {
    pub fn new(mut regions: Vec<Region>) -> Result<MediationTable, TableError> {
        regions.sort_by_key(|region| region.offset);
        for region in &regions {
            if region.size == 0 || region.end() > EXTENDED_CONFIG_SIZE as u32 {
                return Err(TableError::OutOfRange {
                    offset: region.offset,
                });
            }
            let uniform = |mask: u32| mask == 0 || mask == u32::MAX;
            if region.size > 4
                && !(uniform(region.write_mask) && uniform(region.write_one_to_clear))
            {
                return Err(TableError::PartialMaskOnWideRegion {
                    offset: region.offset,
                });
            }
        }
        for pair in regions.windows(2) {
            if pair[0].end() > pair[1].offset as u32 {
                return Err(TableError::Overlap {
                    offset: pair[1].offset,
                });
            }
        }
        Ok(MediationTable { regions })
    }

    /// The default table for an assigned type-0 function: [`ENDPOINT_HEADER`], Interrupt
    /// Line, and its MSI, MSI-X and PCIe Device Control registers emulated. Other
    /// capabilities and the extended space are read-only. Power Management's PMCSR stays
    /// read-only too: a D3hot -> D0 transition without No_Soft_Reset resets the function and
    /// would lose the BARs and MSI state the hypervisor programmed (PM 1.2 §5.4).
    pub fn endpoint(function: &PciFunction) -> Result<MediationTable, TableError> {
        if function.layout() != HeaderLayout::Endpoint {
            return Err(TableError::NotAnEndpoint);
        }
        let mut regions = Vec::from(ENDPOINT_HEADER);
        regions.push(ENDPOINT_INTERRUPT_LINE);
        let caps = &function.capabilities;
        if let Some(msi) = caps.msi {
            regions.push(Region::emulate(msi.offset, msi.length(), Hook::Msi));
        }
        if let Some(msix) = caps.msix {
            regions.push(Region::emulate(
                msix.offset,
                MsixCapability::LENGTH,
                Hook::MsiX,
            ));
        }
        if let Some(pcie) = caps.pcie {
            regions.push(Region::emulate(
                pcie.offset + PcieCapability::DEVICE_CONTROL,
                2,
                Hook::PcieDeviceControl,
            ));
        }
        MediationTable::new(regions)
    }

    pub fn regions(&self) -> &[Region] {
        &self.regions
    }

    /// The region covering byte `offset`, if any (uncovered bytes are read-only).
    pub fn region_at(&self, offset: u16) -> Option<&Region> {
        let index = self
            .regions
            .partition_point(|region| region.end() <= offset as u32);
        self.regions
            .get(index)
            .filter(|region| region.contains(offset))
    }
}

/// What to do with a guest read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadDecision {
    /// Return this value to the guest.
    Value(u32),
    /// Let `hook` answer; `region` is where its structure starts.
    Emulate { hook: Hook, region: u16 },
}

/// What to do with a guest write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteDecision {
    /// Write this value to the hardware with the guest's offset and size.
    Write(u32),
    /// Do nothing.
    Drop,
    /// Let `hook` handle the write; `region` is where its structure starts.
    Emulate { hook: Hook, region: u16 },
}

/// Whether an access is one the hardware could carry: naturally aligned, inside 4 KiB.
fn valid(offset: u16, size: AccessSize) -> bool {
    offset.is_multiple_of(size.bytes())
        && offset as u32 + size.bytes() as u32 <= EXTENDED_CONFIG_SIZE as u32
}

/// The hook of the first emulated byte an access touches.
fn emulated(table: &MediationTable, offset: u16, size: AccessSize) -> Option<(Hook, u16)> {
    (offset..offset + size.bytes()).find_map(|byte| match table.region_at(byte) {
        Some(Region {
            rule: Rule::Emulate(hook),
            offset,
            ..
        }) => Some((*hook, *offset)),
        _ => None,
    })
}

/// Decides a guest read of `size` bytes at `offset`; `hardware` is what the function
/// returns for the same access (right-aligned). Misaligned or out-of-range reads see
/// all-ones, like an access nothing answers.
pub fn mediate_read(
    table: &MediationTable,
    offset: u16,
    size: AccessSize,
    hardware: u32,
) -> ReadDecision {
    if !valid(offset, size) {
        return ReadDecision::Value(size.value_mask());
    }
    if let Some((hook, region)) = emulated(table, offset, size) {
        return ReadDecision::Emulate { hook, region };
    }
    let mut value = hardware & size.value_mask();
    for i in 0..size.bytes() {
        let shift = 8 * i as u32;
        if let Some(Region {
            rule: Rule::Deny(reads_as),
            ..
        }) = table.region_at(offset + i)
        {
            let byte = match reads_as {
                DeniedRead::AllOnes => 0xFF,
                DeniedRead::Zero => 0x00,
            };
            value = (value & !(0xFF << shift)) | byte << shift;
        }
    }
    ReadDecision::Value(value)
}

/// Decides a guest write of `guest` (right-aligned, `size` bytes at `offset`); `old` is the
/// hardware's current value of the same bytes. Bits the guest may not change keep `old`,
/// except write-1-to-clear bits, which are written as 0 so that they stay as they are.
pub fn mediate_write(
    table: &MediationTable,
    offset: u16,
    size: AccessSize,
    old: u32,
    guest: u32,
) -> WriteDecision {
    if !valid(offset, size) {
        return WriteDecision::Drop;
    }
    if let Some((hook, region)) = emulated(table, offset, size) {
        return WriteDecision::Emulate { hook, region };
    }
    let mut writable = 0u32;
    let mut clear_on_one = 0u32;
    for i in 0..size.bytes() {
        let byte = offset + i;
        let shift = 8 * i as u32;
        if let Some(region) = table.region_at(byte) {
            if region.rule == Rule::Allow {
                writable |= (region.byte_of(region.write_mask, byte) as u32) << shift;
            }
            clear_on_one |= (region.byte_of(region.write_one_to_clear, byte) as u32) << shift;
        }
    }
    if writable == 0 {
        return WriteDecision::Drop;
    }
    let kept = old & !writable & !clear_on_one;
    WriteDecision::Write((kept | (guest & writable)) & size.value_mask())
}

#[cfg(test)]
mod tests {
    use super::AccessSize::{Byte, Dword, Word};
    use super::*;
    use crate::pci::caps::{Capabilities, MsiCapability, PciePortType, PowerManagement};
    use crate::pci::regs::ClassCode;
    use crate::pci::Bdf;

    fn function(header_type: u8, capabilities: Capabilities) -> PciFunction {
        PciFunction {
            bdf: Bdf::new(0, 0, 3, 0).unwrap(),
            vendor_id: 0x1234,
            device_id: 0x11e8,
            class: ClassCode {
                base: 0,
                sub: 0xff,
                prog_if: 0,
            },
            revision: 0x10,
            header_type,
            interrupt_pin: 1,
            interrupt_line: 11,
            bars: Vec::new(),
            capabilities,
            bridge: None,
            upstream_bridge: None,
        }
    }

    /// The edu device: MSI at 0x40, 64-bit, no masking (14 bytes, 0x40..0x4E).
    fn edu_table() -> MediationTable {
        let caps = Capabilities {
            msi: Some(MsiCapability::decode(0x40, 0x0080)),
            ..Capabilities::default()
        };
        MediationTable::endpoint(&function(0, caps)).unwrap()
    }

    #[test]
    fn command_register_only_takes_decode_master_and_intx_bits() {
        let table = edu_table();
        // 0xFFFF & (IO 0x1 | MEM 0x2 | BM 0x4 | INTX_DISABLE 0x400) = 0x0407 (§6.2.2).
        assert_eq!(
            mediate_write(&table, 0x04, Word, 0x0000, 0xFFFF),
            WriteDecision::Write(0x0407)
        );
        // SERR# (bit 8) already set by firmware stays set; the guest clears memory decode.
        assert_eq!(
            mediate_write(&table, 0x04, Word, 0x0106, 0x0004),
            WriteDecision::Write(0x0104)
        );
        // High byte alone: only INTx disable (bit 10 = bit 2 of byte 0x05).
        assert_eq!(
            mediate_write(&table, 0x05, Byte, 0x00, 0xFF),
            WriteDecision::Write(0x04)
        );
    }

    #[test]
    fn dword_write_over_command_and_status_keeps_error_bits() {
        let table = edu_table();
        // Status 0x2010 (received master abort, capabilities list), command 0x0006.
        let old = 0x2010_0006;
        // The guest sets INTx disable and writes 0 to status: the RW1C bit 13 must be
        // written as 0, not as its current 1 (which would clear it).
        assert_eq!(
            mediate_write(&table, 0x04, Dword, old, 0x0000_0400),
            WriteDecision::Write(0x0010_0400)
        );
        // Writing 1 to bit 13 is the guest clearing it: passed on.
        assert_eq!(
            mediate_write(&table, 0x04, Dword, old, 0x2000_0000),
            WriteDecision::Write(0x2010_0000)
        );
    }

    #[test]
    fn read_only_write_one_to_clear_bits_are_written_as_zero() {
        // A table where the guest may not clear Status errors at all: a dword write that
        // changes Command must still not write bit 13's current 1 back (it would clear it).
        let table = MediationTable::new(alloc::vec![
            Region::allow(0x04, 2, 0x0407),
            Region::read_only(0x06, 2).write_one_to_clear(0xF900),
        ])
        .unwrap();
        assert_eq!(
            mediate_write(&table, 0x04, Dword, 0x2010_0006, 0xFFFF_0000),
            WriteDecision::Write(0x0010_0000)
        );
        assert_eq!(
            mediate_write(&table, 0x06, Word, 0x2010, 0xFFFF),
            WriteDecision::Drop
        );
    }

    #[test]
    fn identity_and_class_are_read_only() {
        let table = edu_table();
        assert_eq!(
            mediate_write(&table, 0x00, Dword, 0x11e8_1234, 0),
            WriteDecision::Drop
        );
        assert_eq!(
            mediate_write(&table, 0x0A, Word, 0x00ff, 0x0200),
            WriteDecision::Drop
        );
        assert_eq!(
            mediate_write(&table, 0x0F, Byte, 0, 0x40),
            WriteDecision::Drop,
            "BIST"
        );
        assert_eq!(
            mediate_write(&table, 0x34, Byte, 0x40, 0x00),
            WriteDecision::Drop
        );
        assert_eq!(
            mediate_read(&table, 0x00, Dword, 0x11e8_1234),
            ReadDecision::Value(0x11e8_1234)
        );
    }

    #[test]
    fn header_dword_0x0c_allows_cache_line_and_latency_only() {
        let table = edu_table();
        // BIST 0x00, header type 0x80, latency 0x00, cache line 0x00; the guest writes
        // all-ones: cache line and latency change, header type and BIST keep 0x80 / 0x00.
        assert_eq!(
            mediate_write(&table, 0x0C, Dword, 0x0080_0000, u32::MAX),
            WriteDecision::Write(0x0080_FFFF)
        );
    }

    #[test]
    fn bars_are_emulated() {
        let table = edu_table();
        let bar = WriteDecision::Emulate {
            hook: Hook::Bar,
            region: 0x10,
        };
        assert_eq!(mediate_write(&table, 0x10, Dword, 0, u32::MAX), bar);
        assert_eq!(mediate_write(&table, 0x24, Dword, 0, u32::MAX), bar);
        assert_eq!(mediate_write(&table, 0x13, Byte, 0, 0xFF), bar);
        assert_eq!(
            mediate_read(&table, 0x14, Dword, 0),
            ReadDecision::Emulate {
                hook: Hook::Bar,
                region: 0x10
            }
        );
        assert_eq!(
            mediate_read(&table, 0x28, Dword, 0),
            ReadDecision::Value(0),
            "CardBus CIS"
        );
    }

    #[test]
    fn expansion_rom_is_denied_and_reads_as_absent() {
        let table = edu_table();
        assert_eq!(
            mediate_read(&table, 0x30, Dword, 0xfeb0_0000),
            ReadDecision::Value(0)
        );
        assert_eq!(
            mediate_write(&table, 0x30, Dword, 0, 0xFFFF_F800),
            WriteDecision::Drop
        );
        assert_eq!(
            mediate_read(&table, 0x32, Word, 0xfeb0),
            ReadDecision::Value(0)
        );
    }

    #[test]
    fn interrupt_line_is_scratch_pin_is_read_only() {
        let table = edu_table();
        // Dword at 0x3C: Max_Lat 0, Min_Gnt 0, pin 1, line 0x0B; all-ones from the guest.
        assert_eq!(
            mediate_write(&table, 0x3C, Dword, 0x0000_010B, u32::MAX),
            WriteDecision::Write(0x0000_01FF)
        );
        assert_eq!(
            mediate_write(&table, 0x3D, Byte, 0x01, 0x02),
            WriteDecision::Drop
        );
    }

    #[test]
    fn msi_capability_is_emulated_whole() {
        let table = edu_table();
        let msi = WriteDecision::Emulate {
            hook: Hook::Msi,
            region: 0x40,
        };
        assert_eq!(mediate_write(&table, 0x42, Word, 0x0080, 0x0081), msi);
        assert_eq!(mediate_write(&table, 0x44, Dword, 0, 0xfee0_0000), msi);
        assert_eq!(
            mediate_write(&table, 0x4C, Word, 0, 0x0041),
            msi,
            "message data"
        );
        assert_eq!(
            mediate_read(&table, 0x40, Dword, 0x0080_0005),
            ReadDecision::Emulate {
                hook: Hook::Msi,
                region: 0x40
            }
        );
        // 0x4E is past the 14-byte capability: an ordinary read-only byte.
        assert_eq!(mediate_read(&table, 0x4E, Word, 0), ReadDecision::Value(0));
        assert_eq!(mediate_write(&table, 0x4E, Word, 0, 1), WriteDecision::Drop);
    }

    #[test]
    fn msix_pcie_and_power_management() {
        let caps = Capabilities {
            msix: Some(MsixCapability::decode(0xA0, 0x0004, 0x3, 0x2003)),
            pcie: Some(PcieCapability::decode(0xE0, 0x0002, 1 << 28)),
            power_management: Some(PowerManagement::decode(0xC8, 0x0603, 0)),
            ..Capabilities::default()
        };
        assert_eq!(caps.pcie.unwrap().port_type, PciePortType::Endpoint);
        let table = MediationTable::endpoint(&function(0, caps)).unwrap();
        // MSI-X Message Control (0xA2) and the table/PBA dwords (0xA4..0xAC).
        for offset in [0xA2, 0xA8] {
            assert_eq!(
                mediate_write(&table, offset, Word, 0, 0x8000),
                WriteDecision::Emulate {
                    hook: Hook::MsiX,
                    region: 0xA0
                }
            );
        }
        // Device Control at 0xE0 + 8; Device Capabilities (0xE4) stays read-only.
        assert_eq!(
            mediate_write(&table, 0xE8, Word, 0, 0x8000),
            WriteDecision::Emulate {
                hook: Hook::PcieDeviceControl,
                region: 0xE8
            }
        );
        assert_eq!(
            mediate_write(&table, 0xE4, Dword, 0, u32::MAX),
            WriteDecision::Drop
        );
        // PMCSR: read-only, so a guest cannot put the device into D3hot.
        assert_eq!(
            mediate_write(&table, 0xCC, Word, 0x0008, 0x0003),
            WriteDecision::Drop
        );
        // Extended space: read-only.
        assert_eq!(
            mediate_write(&table, 0x100, Dword, 0, u32::MAX),
            WriteDecision::Drop
        );
        assert_eq!(
            mediate_read(&table, 0x100, Dword, 0x1401_0001),
            ReadDecision::Value(0x1401_0001)
        );
    }

    #[test]
    fn misaligned_and_out_of_range_accesses() {
        let table = edu_table();
        assert_eq!(
            mediate_write(&table, 0x05, Word, 0, 0xFFFF),
            WriteDecision::Drop
        );
        assert_eq!(
            mediate_write(&table, 0x06, Dword, 0, u32::MAX),
            WriteDecision::Drop
        );
        assert_eq!(
            mediate_read(&table, 0x03, Word, 0),
            ReadDecision::Value(0xFFFF)
        );
        assert_eq!(
            mediate_read(&table, 0xFFC, Dword, 7),
            ReadDecision::Value(7)
        );
        assert_eq!(
            mediate_read(&table, 0xFFE, Dword, 7),
            ReadDecision::Value(u32::MAX)
        );
        assert_eq!(
            mediate_write(&table, 0xFFFE, Word, 0, 1),
            WriteDecision::Drop
        );
    }

    #[test]
    fn denied_bytes_compose_with_hardware_bytes() {
        let table = MediationTable::new(alloc::vec![
            Region::deny(0x40, 2, DeniedRead::AllOnes),
            Region::allow(0x42, 2, 0x00F0),
        ])
        .unwrap();
        assert_eq!(
            mediate_read(&table, 0x40, Dword, 0x1234_5678),
            ReadDecision::Value(0x1234_FFFF)
        );
        // Denied bytes keep the hardware value; allowed bits 4..7 of byte 0x42 change.
        assert_eq!(
            mediate_write(&table, 0x40, Dword, 0x1234_5678, 0xFFFF_0000),
            WriteDecision::Write(0x12F4_5678)
        );
    }

    #[test]
    fn table_validation() {
        assert_eq!(
            MediationTable::new(alloc::vec![
                Region::read_only(0x10, 8),
                Region::read_only(0x14, 4)
            ]),
            Err(TableError::Overlap { offset: 0x14 })
        );
        assert_eq!(
            MediationTable::new(alloc::vec![Region::read_only(0xFFC, 8)]),
            Err(TableError::OutOfRange { offset: 0xFFC })
        );
        assert_eq!(
            MediationTable::new(alloc::vec![Region::allow(0x40, 8, 0xFF)]),
            Err(TableError::PartialMaskOnWideRegion { offset: 0x40 })
        );
        assert_eq!(
            MediationTable::endpoint(&function(0x01, Capabilities::default())),
            Err(TableError::NotAnEndpoint)
        );
        // Multi-function bit set is still a type-0 header.
        assert!(MediationTable::endpoint(&function(0x80, Capabilities::default())).is_ok());
    }

    #[test]
    fn default_table_covers_the_header_without_gaps_where_it_matters() {
        let table = edu_table();
        // Every byte 0x00..0x35 is covered by an explicit region.
        for offset in 0x00..0x35 {
            assert!(table.region_at(offset).is_some(), "{offset:#x}");
        }
        assert!(
            table.region_at(0x38).is_none(),
            "reserved bytes fall back to read-only"
        );
    }
}
