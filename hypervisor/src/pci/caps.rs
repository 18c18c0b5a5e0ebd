//! Capability lists: the conventional list from the capabilities pointer (PCI 3.0 §6.7) and
//! the PCIe extended list from offset 0x100 (PCIe Base 4.0 §7.6).

use alloc::vec::Vec;

use super::access::ConfigAccess;
use super::bdf::Bdf;
use super::regs::{Status, EXTENDED_CAPABILITIES, STATUS};

/// Conventional capability IDs (PCI Code and ID Assignment 1.11 §2).
pub mod id {
    pub const POWER_MANAGEMENT: u8 = 0x01;
    pub const MSI: u8 = 0x05;
    pub const PCI_EXPRESS: u8 = 0x10;
    pub const MSI_X: u8 = 0x11;
}

/// Extended capability IDs (PCI Code and ID Assignment 1.11 §3).
pub mod extended_id {
    pub const ACS: u16 = 0x000D;
    pub const ARI: u16 = 0x000E;
    pub const SR_IOV: u16 = 0x0010;
}

/// Conventional capabilities live in 0x40..0x100, each at least a dword: at most 48 entries.
/// More visits than that means the list loops.
pub const MAX_CAPABILITIES: usize = (0x100 - 0x40) / 4;
/// Extended capabilities live in 0x100..0x1000, each at least a dword.
pub const MAX_EXTENDED_CAPABILITIES: usize = (0x1000 - 0x100) / 4;

/// MSI capability (PCI 3.0 §6.8.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsiCapability {
    pub offset: u16,
    /// Message Control bit 7: the Message Upper Address register exists.
    pub is_64bit: bool,
    /// Message Control bit 8: Mask Bits and Pending Bits registers exist.
    pub per_vector_masking: bool,
    /// Message Control bits 3:1: log2 of the vectors the function can request (0..=5).
    pub multiple_message_capable: u8,
    /// Message Control bit 0.
    pub enabled: bool,
}

impl MsiCapability {
    pub const fn decode(offset: u16, message_control: u16) -> MsiCapability {
        MsiCapability {
            offset,
            is_64bit: message_control & (1 << 7) != 0,
            per_vector_masking: message_control & (1 << 8) != 0,
            multiple_message_capable: ((message_control >> 1) & 0x7) as u8,
            enabled: message_control & 1 != 0,
        }
    }

    /// Vectors the function can request: 1, 2, 4, 8, 16 or 32 (encodings 6 and 7 are
    /// reserved; they are read as the maximum).
    pub const fn vectors(&self) -> u8 {
        let log2 = if self.multiple_message_capable > 5 {
            5
        } else {
            self.multiple_message_capable
        };
        1 << log2
    }

    /// Bytes the capability occupies: 10 (32-bit), 14 (64-bit), 20 / 24 with mask and
    /// pending bits (PCI 3.0 Figure 6-9).
    pub const fn length(&self) -> u16 {
        match (self.is_64bit, self.per_vector_masking) {
            (false, false) => 0x0A,
            (true, false) => 0x0E,
            (false, true) => 0x14,
            (true, true) => 0x18,
        }
    }

    /// Offset of Message Data (after the upper address dword when 64-bit).
    pub const fn message_data_offset(&self) -> u16 {
        self.offset + if self.is_64bit { 0x0C } else { 0x08 }
    }
}

/// A structure inside a memory BAR: the MSI-X table or PBA.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BarRegion {
    /// BAR Indicator Register: which BAR slot (0..=5) holds it.
    pub bir: u8,
    /// Offset inside that BAR (qword aligned).
    pub offset: u32,
}

impl BarRegion {
    /// Bits 2:0 BIR, bits 31:3 offset (PCI 3.0 §6.8.2.4 and §6.8.2.5).
    pub const fn decode(raw: u32) -> BarRegion {
        BarRegion {
            bir: (raw & 0x7) as u8,
            offset: raw & !0x7,
        }
    }
}

/// MSI-X capability (PCI 3.0 §6.8.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsixCapability {
    pub offset: u16,
    /// Table entries (Message Control bits 10:0 hold N - 1).
    pub table_size: u16,
    pub table: BarRegion,
    pub pba: BarRegion,
    /// Message Control bit 15.
    pub enabled: bool,
    /// Message Control bit 14.
    pub function_masked: bool,
}

impl MsixCapability {
    /// Bytes of the capability structure.
    pub const LENGTH: u16 = 0x0C;
    /// Bytes per table entry (address low/high, data, vector control).
    pub const ENTRY_SIZE: u32 = 16;

    pub const fn decode(offset: u16, message_control: u16, table: u32, pba: u32) -> MsixCapability {
        MsixCapability {
            offset,
            table_size: (message_control & 0x7FF) + 1,
            table: BarRegion::decode(table),
            pba: BarRegion::decode(pba),
            enabled: message_control & (1 << 15) != 0,
            function_masked: message_control & (1 << 14) != 0,
        }
    }

    /// Bytes of the table in its BAR.
    pub const fn table_bytes(&self) -> u32 {
        self.table_size as u32 * Self::ENTRY_SIZE
    }

    /// Bytes of the PBA: one bit per entry, in qwords.
    pub const fn pba_bytes(&self) -> u32 {
        (self.table_size as u32).div_ceil(64) * 8
    }
}

/// Device/Port Type of the PCI Express Capabilities register (PCIe Base 4.0 §7.5.3.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PciePortType {
    Endpoint,
    LegacyEndpoint,
    RootPort,
    SwitchUpstream,
    SwitchDownstream,
    /// PCIe-to-PCI/PCI-X bridge: devices behind it share its requester ID.
    PcieToPciBridge,
    PciToPcieBridge,
    RootComplexIntegratedEndpoint,
    RootComplexEventCollector,
    Reserved(u8),
}

impl PciePortType {
    pub const fn decode(value: u8) -> PciePortType {
        match value {
            0x0 => PciePortType::Endpoint,
            0x1 => PciePortType::LegacyEndpoint,
            0x4 => PciePortType::RootPort,
            0x5 => PciePortType::SwitchUpstream,
            0x6 => PciePortType::SwitchDownstream,
            0x7 => PciePortType::PcieToPciBridge,
            0x8 => PciePortType::PciToPcieBridge,
            0x9 => PciePortType::RootComplexIntegratedEndpoint,
            0xA => PciePortType::RootComplexEventCollector,
            other => PciePortType::Reserved(other),
        }
    }

    /// Short name for the boot summary.
    pub const fn name(self) -> &'static str {
        match self {
            PciePortType::Endpoint => "endpoint",
            PciePortType::LegacyEndpoint => "legacy_endpoint",
            PciePortType::RootPort => "root_port",
            PciePortType::SwitchUpstream => "switch_upstream",
            PciePortType::SwitchDownstream => "switch_downstream",
            PciePortType::PcieToPciBridge => "pcie_to_pci_bridge",
            PciePortType::PciToPcieBridge => "pci_to_pcie_bridge",
            PciePortType::RootComplexIntegratedEndpoint => "rc_integrated_endpoint",
            PciePortType::RootComplexEventCollector => "rc_event_collector",
            PciePortType::Reserved(_) => "reserved",
        }
    }
}

/// PCI Express capability (PCIe Base 4.0 §7.5.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PcieCapability {
    pub offset: u16,
    /// Capability version (bits 3:0 of the PCI Express Capabilities register).
    pub version: u8,
    pub port_type: PciePortType,
    /// Device Capabilities bit 28: Function Level Reset capable (§7.5.3.3).
    pub flr: bool,
}

impl PcieCapability {
    /// Device Control register, relative to the capability; bit 15 starts an FLR.
    pub const DEVICE_CONTROL: u16 = 0x08;
    pub const INITIATE_FLR: u16 = 1 << 15;

    pub const fn decode(
        offset: u16,
        capabilities: u16,
        device_capabilities: u32,
    ) -> PcieCapability {
        PcieCapability {
            offset,
            version: (capabilities & 0xF) as u8,
            port_type: PciePortType::decode(((capabilities >> 4) & 0xF) as u8),
            flr: device_capabilities & (1 << 28) != 0,
        }
    }
}

/// Power Management capability (PCI Bus Power Management 1.2 §3.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PowerManagement {
    pub offset: u16,
    /// Every function with this capability supports D0 and D3hot (PM 1.2 §3.2: D3hot is
    /// mandatory), so a D3hot-D0 cycle is always available as a reset of last resort.
    pub d3hot: bool,
    pub d1: bool,
    pub d2: bool,
    /// PMCSR bit 3: going D3hot -> D0 keeps the function's state, so that cycle is *not* a
    /// reset when set (PM 1.2 §3.2.4).
    pub no_soft_reset: bool,
}

impl PowerManagement {
    /// PMCSR, relative to the capability.
    pub const CONTROL_STATUS: u16 = 0x04;

    pub const fn decode(offset: u16, capabilities: u16, control_status: u16) -> PowerManagement {
        PowerManagement {
            offset,
            d3hot: true,
            d1: capabilities & (1 << 9) != 0,
            d2: capabilities & (1 << 10) != 0,
            no_soft_reset: control_status & (1 << 3) != 0,
        }
    }
}

/// One entry of a capability list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CapabilityEntry<Id> {
    pub id: Id,
    pub offset: u16,
}

/// Everything found in a function's capability lists.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// The conventional list in order.
    pub list: Vec<CapabilityEntry<u8>>,
    /// The extended list in order (only read through ECAM, only for PCIe functions).
    pub extended: Vec<CapabilityEntry<u16>>,
    pub msi: Option<MsiCapability>,
    pub msix: Option<MsixCapability>,
    pub pcie: Option<PcieCapability>,
    pub power_management: Option<PowerManagement>,
    /// A list was cut short because it looped or overran its space.
    pub truncated: bool,
}

impl Capabilities {
    pub fn has_extended(&self, id: u16) -> bool {
        self.extended.iter().any(|entry| entry.id == id)
    }
    pub fn acs(&self) -> bool {
        self.has_extended(extended_id::ACS)
    }
    pub fn ari(&self) -> bool {
        self.has_extended(extended_id::ARI)
    }
    pub fn sr_iov(&self) -> bool {
        self.has_extended(extended_id::SR_IOV)
    }
    /// Function Level Reset through the PCIe capability.
    pub fn flr(&self) -> bool {
        self.pcie.is_some_and(|pcie| pcie.flr)
    }
}

/// Walks `bdf`'s capability lists. `pointer_offset` is where the layout keeps the
/// capabilities pointer; `None` for layouts without one.
pub fn read_capabilities(
    access: &dyn ConfigAccess,
    bdf: Bdf,
    pointer_offset: Option<u16>,
) -> Capabilities {
    let mut caps = Capabilities::default();
    let status = Status::from_bits_retain(access.read16(bdf, STATUS));
    if let (Some(pointer_offset), true) =
        (pointer_offset, status.contains(Status::CAPABILITIES_LIST))
    {
        walk_conventional(access, bdf, pointer_offset, &mut caps);
    }
    // Extended space exists only for PCIe functions and only ECAM reaches it (§7.6).
    if caps.pcie.is_some() && access.config_size() > EXTENDED_CAPABILITIES {
        walk_extended(access, bdf, &mut caps);
    }
    caps
}

fn walk_conventional(
    access: &dyn ConfigAccess,
    bdf: Bdf,
    pointer_offset: u16,
    caps: &mut Capabilities,
) {
    // The bottom two pointer bits are reserved (PCI 3.0 §6.7); 0x00..0x3F is the header.
    let mut offset = (access.read8(bdf, pointer_offset) & 0xFC) as u16;
    let mut visits = 0;
    while offset >= 0x40 {
        if visits == MAX_CAPABILITIES {
            caps.truncated = true;
            return;
        }
        visits += 1;
        let header = access.read16(bdf, offset);
        let id = header as u8;
        caps.list.push(CapabilityEntry { id, offset });
        match id {
            id::MSI if caps.msi.is_none() => {
                caps.msi = Some(MsiCapability::decode(
                    offset,
                    access.read16(bdf, offset + 2),
                ));
            }
            id::MSI_X if caps.msix.is_none() => {
                caps.msix = Some(MsixCapability::decode(
                    offset,
                    access.read16(bdf, offset + 2),
                    access.read32(bdf, offset + 4),
                    access.read32(bdf, offset + 8),
                ));
            }
            id::PCI_EXPRESS if caps.pcie.is_none() => {
                caps.pcie = Some(PcieCapability::decode(
                    offset,
                    access.read16(bdf, offset + 2),
                    access.read32(bdf, offset + 4),
                ));
            }
            id::POWER_MANAGEMENT if caps.power_management.is_none() => {
                caps.power_management = Some(PowerManagement::decode(
                    offset,
                    access.read16(bdf, offset + 2),
                    access.read16(bdf, offset + PowerManagement::CONTROL_STATUS),
                ));
            }
            _ => {}
        }
        offset = ((header >> 8) as u8 & 0xFC) as u16;
    }
}

fn walk_extended(access: &dyn ConfigAccess, bdf: Bdf, caps: &mut Capabilities) {
    let mut offset = EXTENDED_CAPABILITIES;
    let mut visits = 0;
    loop {
        let header = access.read32(bdf, offset);
        // An empty list is a header of 0 (§7.6.3); all-ones means nothing answered.
        if header == 0 || header == u32::MAX {
            return;
        }
        if visits == MAX_EXTENDED_CAPABILITIES {
            caps.truncated = true;
            return;
        }
        visits += 1;
        caps.extended.push(CapabilityEntry {
            id: header as u16,
            offset,
        });
        // Bits 31:20: next offset, dword aligned; 0 ends the list.
        let next = ((header >> 20) & 0xFFC) as u16;
        if next < EXTENDED_CAPABILITIES {
            return;
        }
        offset = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn msi_message_control() {
        // QEMU edu: Message Control 0x0080 -> 64-bit, 1 vector, no masking (PCI 3.0 §6.8.1.3).
        let msi = MsiCapability::decode(0x40, 0x0080);
        assert!(msi.is_64bit && !msi.per_vector_masking && !msi.enabled);
        assert_eq!(msi.vectors(), 1);
        assert_eq!(msi.length(), 0x0E);
        assert_eq!(msi.message_data_offset(), 0x4C);
        // 0x018B: masking, 64-bit, MMC 0b101 = 32 vectors, enabled.
        let msi = MsiCapability::decode(0x50, 0x018B);
        assert!(msi.per_vector_masking && msi.is_64bit && msi.enabled);
        assert_eq!(msi.vectors(), 32);
        assert_eq!(msi.length(), 0x18);
        assert_eq!(MsiCapability::decode(0, 0x0004).vectors(), 4);
    }

    #[test]
    fn msix_table_and_pba() {
        // Control 0x8003: enabled, 4 entries; table 0x2000 in BAR0; PBA 0x3000 in BAR2.
        let msix = MsixCapability::decode(0x70, 0x8003, 0x0000_2000, 0x0000_3002);
        assert_eq!(msix.table_size, 4);
        assert!(msix.enabled && !msix.function_masked);
        assert_eq!(
            msix.table,
            BarRegion {
                bir: 0,
                offset: 0x2000
            }
        );
        assert_eq!(
            msix.pba,
            BarRegion {
                bir: 2,
                offset: 0x3000
            }
        );
        assert_eq!(msix.table_bytes(), 64);
        assert_eq!(msix.pba_bytes(), 8);
        assert_eq!(MsixCapability::decode(0, 0x07FF, 0, 0).table_size, 2048);
        assert_eq!(MsixCapability::decode(0, 0x07FF, 0, 0).pba_bytes(), 256);
    }

    #[test]
    fn pcie_and_power_management() {
        // Capabilities 0x0002: version 2, endpoint; DevCap bit 28 set -> FLR.
        let pcie = PcieCapability::decode(0x80, 0x0002, 0x1000_8000);
        assert_eq!(pcie.version, 2);
        assert_eq!(pcie.port_type, PciePortType::Endpoint);
        assert!(pcie.flr);
        let bridge = PcieCapability::decode(0x80, 0x0072, 0);
        assert_eq!(bridge.port_type, PciePortType::PcieToPciBridge);
        assert!(!bridge.flr);
        // PMC 0x0603: version 3, D1 and D2; PMCSR 0x0008: No_Soft_Reset.
        let pm = PowerManagement::decode(0x60, 0x0603, 0x0008);
        assert!(pm.d3hot && pm.d1 && pm.d2 && pm.no_soft_reset);
    }
}
