//! The PCI bus a guest sees: configuration mechanism #1 (ports 0xCF8/0xCFC, PCI Local Bus 3.0
//! 3.2.2.3.2) showing only the functions assigned to it, at their host BDFs. Every access goes through
//! the function's mediation table (`pci::mediation`); BARs are emulated: they stay where the firmware
//! put them (the guest's EPT maps MMIO BARs 1:1 and its I/O bitmap passes I/O BARs), and the guest can
//! size them as on bare metal.
//!
//! MSI is emulated: the guest programs its own view of the capability, the hardware's stays disabled,
//! and each change is reported as an [`MsiRequest`] (guest vector and destination) for the caller to
//! turn into an interrupt-remapping entry. MSI-X likewise (`msix`): the guest's enable and function
//! mask live in a shadow, its table in the model, changes come back as [`MsixRequest`]s. Not yet
//! emulated: PCIe Device Control (FLR by the guest).

use crate::pci::mediation::{
    mediate_read, mediate_write, AccessSize, Hook, MediationTable, ReadDecision, WriteDecision,
};
use crate::pci::{Bar, BarKind, Bdf, ConfigAccess};
use crate::vmm::msi_request::MsiRequest;
use crate::vmm::msix::{GuestMsix, MsixOutcome, MsixRequest};
use alloc::vec::Vec;

pub const CONFIG_ADDRESS: u16 = 0xCF8;
pub const CONFIG_DATA: u16 = 0xCFC;
/// CONFIG_ADDRESS bit 31: enable; bits 23:16 bus, 15:11 device, 10:8 function, 7:2 register.
const ENABLE: u32 = 1 << 31;

/// The guest's view of an MSI capability: every register the guest may write, kept here.
#[derive(Clone, Copy, Debug, Default)]
struct MsiShadow {
    /// Capability offset, and the layout facts the guest cannot change.
    offset: u16,
    is_64bit: bool,
    per_vector_masking: bool,
    /// Message Control bits 0 (enable) and 6:4 (multiple message enable).
    control: u16,
    address: u32,
    upper_address: u32,
    data: u16,
    mask: u32,
}

impl MsiShadow {
    /// Register offsets relative to the capability (PCI 3.0 Figure 6-9).
    fn data_offset(&self) -> u16 {
        if self.is_64bit {
            0x0C
        } else {
            0x08
        }
    }

    fn mask_offset(&self) -> Option<u16> {
        self.per_vector_masking
            .then_some(if self.is_64bit { 0x10 } else { 0x0C })
    }

    /// A capability dword as the guest sees it; `hardware` supplies the read-only parts.
    fn read_dword(&self, relative: u16, hardware: u32) -> u32 {
        match relative {
            // ID and next pointer from hardware; Message Control: the guest's enable/MME, hardware's rest.
            0x00 => (hardware & !(0x0071 << 16)) | u32::from(self.control & 0x0071) << 16,
            0x04 => self.address,
            0x08 if self.is_64bit => self.upper_address,
            r if r == self.data_offset() => u32::from(self.data),
            r if Some(r) == self.mask_offset() => self.mask,
            _ => hardware, // pending bits: the hardware's
        }
    }

    fn write_dword(&mut self, relative: u16, value: u32) {
        match relative {
            0x00 => self.control = (value >> 16) as u16 & 0x0071,
            // Message Address bits 1:0 are reserved zero.
            0x04 => self.address = value & !0b11,
            0x08 if self.is_64bit => self.upper_address = value,
            r if r == self.data_offset() => self.data = value as u16,
            r if Some(r) == self.mask_offset() => self.mask = value,
            _ => {}
        }
    }
}

/// One function assigned to the guest.
pub struct AssignedFunction {
    pub bdf: Bdf,
    table: MediationTable,
    bars: Vec<Bar>,
    /// A BAR dword the guest set to all ones, so that it reads back the size mask (PCI 3.0 6.2.5.1).
    sizing: [bool; 6],
    msi: Option<MsiShadow>,
    msix: Option<GuestMsix>,
}

impl AssignedFunction {
    pub fn new(bdf: Bdf, table: MediationTable, bars: Vec<Bar>) -> Self {
        Self {
            bdf,
            table,
            bars,
            sizing: [false; 6],
            msi: None,
            msix: None,
        }
    }

    /// Emulates the function's MSI capability (found at `offset`) instead of exposing the hardware's.
    pub fn with_msi(mut self, offset: u16, is_64bit: bool, per_vector_masking: bool) -> Self {
        self.msi = Some(MsiShadow {
            offset,
            is_64bit,
            per_vector_masking,
            ..MsiShadow::default()
        });
        self
    }

    /// Emulates the function's MSI-X capability and table (see `msix`).
    pub fn with_msix(mut self, msix: GuestMsix) -> Self {
        self.msix = Some(msix);
        self
    }

    fn msi_request(&self) -> Option<MsiRequest> {
        let msi = self.msi?;
        Some(MsiRequest {
            bdf: self.bdf,
            enabled: msi.control & 1 != 0,
            vector: msi.data as u8,
            destination: (msi.address >> 12) as u8,
            masked: msi.per_vector_masking && msi.mask & 1 != 0,
        })
    }

    /// The BAR dword at slot `slot` as the guest reads it.
    fn bar_dword(&self, slot: usize) -> u32 {
        for bar in &self.bars {
            let low = usize::from(bar.index);
            let (type_bits, is_high) = match bar.kind {
                BarKind::Io => (0b01, false),
                BarKind::Memory32 { prefetchable } => (u32::from(prefetchable) << 3, false),
                BarKind::Memory64 { prefetchable } => {
                    (0b100 | u32::from(prefetchable) << 3, slot == low + 1)
                }
            };
            if slot != low && !is_high {
                continue;
            }
            let value = if self.sizing[slot] {
                !(bar.size - 1)
            } else {
                bar.base
            };
            return if is_high {
                (value >> 32) as u32
            } else {
                let address_mask = if bar.kind == BarKind::Io {
                    !0b11u32
                } else {
                    !0b1111u32
                };
                (value as u32 & address_mask) | type_bits
            };
        }
        0 // an unimplemented BAR reads as zero
    }
}

/// The guest's PCI bus.
#[derive(Default)]
pub struct VirtualPci {
    address: u32,
    functions: Vec<AssignedFunction>,
    /// The last MSI change the guest made, for the caller to apply (see [`VirtualPci::take_msi_change`]).
    msi_change: Option<MsiRequest>,
    /// MSI-X entries whose delivery a Message Control write changed.
    msix_changes: Vec<MsixRequest>,
    /// Whether any function has MSI-X (keeps EPT-violation handling cheap for guests without).
    has_msix: bool,
    /// A synthetic host bridge answers at 00:00.0 ([`VirtualPci::with_host_bridge`]).
    host_bridge: bool,
}

impl core::fmt::Debug for VirtualPci {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_list()
            .entries(self.functions.iter().map(|a| a.bdf))
            .finish()
    }
}

/// Where the synthetic host bridge sits.
const HOST_BRIDGE_BDF: Bdf = match Bdf::new(0, 0, 0, 0) {
    Some(bdf) => bdf,
    None => panic!("00:00.0 is a BDF"),
};

/// The synthetic host bridge's configuration space: Red Hat's generic PCIe host bridge ID
/// (1b36:0008, as QEMU's), class 06/00/00, a type-0 header with no BARs, capabilities or
/// interrupt; everything else reads 0 and writes are dropped.
fn host_bridge_dword(offset: u16) -> u32 {
    match offset {
        0x00 => 0x0008_1B36,
        0x08 => 0x0600_0000,
        _ => 0,
    }
}

impl VirtualPci {
    pub fn new(functions: Vec<AssignedFunction>) -> Self {
        Self {
            host_bridge: false,
            address: 0,
            has_msix: functions.iter().any(|f| f.msix.is_some()),
            functions,
            msi_change: None,
            msix_changes: Vec::new(),
        }
    }

    /// The MSI-X entries a guest Message Control write just turned on or off.
    pub fn take_msix_changes(&mut self) -> Vec<MsixRequest> {
        core::mem::take(&mut self.msix_changes)
    }

    /// Whether `gpa` lies in a page holding an assigned function's MSI-X table or PBA.
    pub fn msix_traps(&self, gpa: u64) -> bool {
        self.has_msix
            && self
                .functions
                .iter()
                .filter_map(|f| f.msix.as_ref())
                .any(|m| m.traps(gpa))
    }

    /// A guest access to guest-physical `gpa` (an EPT violation), if it lies in a page holding an
    /// assigned function's MSI-X table or PBA; `None` otherwise.
    pub fn msix_access(&mut self, gpa: u64, size: u8, write: Option<u64>) -> Option<MsixOutcome> {
        if !self.has_msix {
            return None;
        }
        let msix = self
            .functions
            .iter_mut()
            .filter_map(|f| f.msix.as_mut())
            .find(|m| m.traps(gpa))?;
        Some(msix.access(gpa, size, write))
    }

    /// The MSI configuration a guest write just changed, if any.
    pub fn take_msi_change(&mut self) -> Option<MsiRequest> {
        self.msi_change.take()
    }

    pub fn is_empty(&self) -> bool {
        self.functions.is_empty()
    }

    /// Shows a host bridge at 00:00.0 (unless a function sits there): Linux's type-1 probe
    /// (`pci_sanity_check`) accepts a bus only if it finds one (or an Intel or Compaq device).
    pub fn with_host_bridge(mut self) -> Self {
        self.host_bridge = !self.functions.iter().any(|f| f.bdf == HOST_BRIDGE_BDF);
        self
    }

    /// The register offset CONFIG_ADDRESS selects in the synthetic host bridge, if it does.
    fn host_bridge_selected(&self, port: u16) -> Option<u16> {
        let selects_00_00_0 = self.address & (ENABLE | 0x00FF_FF00) == ENABLE;
        (self.host_bridge && selects_00_00_0)
            .then(|| (self.address & 0xFC) as u16 + (port - CONFIG_DATA))
    }

    /// The function and register CONFIG_ADDRESS selects, if it is enabled and assigned.
    fn selected(&mut self, port: u16) -> Option<(&mut AssignedFunction, u16)> {
        if self.address & ENABLE == 0 {
            return None;
        }
        let bus = (self.address >> 16) as u8;
        let device = ((self.address >> 11) & 0x1F) as u8;
        let function = ((self.address >> 8) & 0x7) as u8;
        let offset = (self.address & 0xFC) as u16 + (port - CONFIG_DATA);
        self.functions
            .iter_mut()
            .find(|f| Bdf::new(0, bus, device, function) == Some(f.bdf))
            .map(|f| (f, offset))
    }

    /// A guest IN from 0xCF8..0xCFF; `None` if the port is not the configuration mechanism.
    pub fn read(&mut self, port: u16, size: u8, hw: &dyn ConfigAccess) -> Option<u32> {
        let size_mask = AccessSize::from_bytes(size)?.value_mask();
        match port {
            CONFIG_ADDRESS if size == 4 => Some(self.address),
            CONFIG_DATA..=0xCFF => {
                let Some(access) = AccessSize::from_bytes(size) else {
                    return Some(size_mask);
                };
                let Some((f, offset)) = self.selected(port) else {
                    if let Some(offset) = self.host_bridge_selected(port) {
                        let shift = 8 * u32::from(offset & 3);
                        return Some((host_bridge_dword(offset & !3) >> shift) & size_mask);
                    }
                    return Some(size_mask); // no such function: all ones, as on a real bus
                };
                let dword = hw.read32(f.bdf, offset & !3);
                let shift = 8 * u32::from(offset & 3);
                let hardware = (dword >> shift) & size_mask;
                Some(match mediate_read(&f.table, offset, access, hardware) {
                    ReadDecision::Value(v) => v,
                    ReadDecision::Emulate {
                        hook: Hook::Bar, ..
                    } => (f.bar_dword(usize::from((offset & !3) - 0x10) / 4) >> shift) & size_mask,
                    ReadDecision::Emulate {
                        hook: Hook::Msi,
                        region,
                    } => match f.msi {
                        Some(msi) if msi.offset == region => {
                            let relative = (offset & !3) - region;
                            (msi.read_dword(relative, dword) >> shift) & size_mask
                        }
                        _ => hardware,
                    },
                    ReadDecision::Emulate {
                        hook: Hook::MsiX,
                        region,
                    } => match &f.msix {
                        // Message Control (bits 31:16 of the first dword): the guest's 15:14.
                        Some(m) if m.capability().offset == region && offset & !3 == region => {
                            let control = m.read_control((dword >> 16) as u16);
                            let merged = (dword & 0xFFFF) | u32::from(control) << 16;
                            (merged >> shift) & size_mask
                        }
                        _ => hardware,
                    },
                    // Device Control: the guest sees the hardware's values.
                    ReadDecision::Emulate { .. } => hardware,
                })
            }
            _ => None,
        }
    }

    /// A guest OUT to 0xCF8..0xCFF; `false` if the port is not the configuration mechanism.
    pub fn write(&mut self, port: u16, size: u8, value: u32, hw: &dyn ConfigAccess) -> bool {
        match port {
            CONFIG_ADDRESS if size == 4 => self.address = value & !0b11,
            CONFIG_DATA..=0xCFF => {
                let Some(access) = AccessSize::from_bytes(size) else {
                    return true;
                };
                let Some((f, offset)) = self.selected(port) else {
                    return true;
                };
                let aligned = offset & !3;
                let shift = 8 * u32::from(offset & 3);
                let old_dword = hw.read32(f.bdf, aligned);
                let old = (old_dword >> shift) & access.value_mask();
                match mediate_write(&f.table, offset, access, old, value & access.value_mask()) {
                    WriteDecision::Write(v) => {
                        let merged = (old_dword & !(access.value_mask() << shift)) | (v << shift);
                        hw.write32(f.bdf, aligned, merged);
                    }
                    WriteDecision::Drop => {}
                    WriteDecision::Emulate {
                        hook: Hook::Bar, ..
                    } => {
                        // Only sizing is honoured; a BAR keeps its host address (guest-physical = host).
                        let slot = usize::from(aligned - 0x10) / 4;
                        f.sizing[slot] = access == AccessSize::Dword && value == u32::MAX;
                    }
                    WriteDecision::Emulate {
                        hook: Hook::Msi,
                        region,
                    } => {
                        if let Some(msi) = f.msi.as_mut().filter(|m| m.offset == region) {
                            let relative = aligned - region;
                            let current = msi.read_dword(relative, old_dword);
                            let merged = (current & !(access.value_mask() << shift))
                                | ((value & access.value_mask()) << shift);
                            msi.write_dword(relative, merged);
                            self.msi_change = f.msi_request();
                        }
                    }
                    WriteDecision::Emulate {
                        hook: Hook::MsiX,
                        region,
                    } if aligned == region => {
                        if let Some(m) = f.msix.as_mut().filter(|m| m.capability().offset == region)
                        {
                            let control = m.read_control((old_dword >> 16) as u16);
                            let current = (old_dword & 0xFFFF) | u32::from(control) << 16;
                            let merged = (current & !(access.value_mask() << shift))
                                | ((value & access.value_mask()) << shift);
                            let changes = m.write_control((merged >> 16) as u16);
                            self.msix_changes.extend(changes);
                        }
                    }
                    WriteDecision::Emulate { .. } => {}
                }
            }
            _ => return false,
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pci::fake::{FakeConfigSpace, FakeFunction};
    use crate::pci::Mechanism;

    /// Bochs' PIIX3 UHCI controller at 00:01.2 (I/O BAR4 0xc000, 32 ports) and the host bridge.
    fn machine() -> FakeConfigSpace {
        let space = FakeConfigSpace::new(Mechanism::Legacy);
        space.add(0, 0, 0, FakeFunction::new(0x8086, 0x1237, 0x060000, 0));
        space.add(0, 1, 0, FakeFunction::new(0x8086, 0x7000, 0x060100, 0x80));
        let mut uhci = FakeFunction::new(0x8086, 0x7020, 0x0c0300, 0);
        uhci.bar(4, BarKind::Io, 0xc000, 0x20);
        space.add(0, 1, 2, uhci);
        space
    }

    fn bus_with_uhci(space: &FakeConfigSpace) -> VirtualPci {
        let topology = crate::pci::enumerate(space);
        let f = topology
            .find(Bdf::new(0, 0, 1, 2).unwrap())
            .unwrap()
            .clone();
        let table = MediationTable::endpoint(&f).unwrap();
        VirtualPci::new(alloc::vec![AssignedFunction::new(
            f.bdf,
            table,
            f.bars.clone()
        )])
    }

    fn read(bus: &mut VirtualPci, space: &FakeConfigSpace, bdf: (u8, u8, u8), offset: u8) -> u32 {
        let address = ENABLE
            | u32::from(bdf.0) << 16
            | u32::from(bdf.1) << 11
            | u32::from(bdf.2) << 8
            | u32::from(offset);
        bus.write(CONFIG_ADDRESS, 4, address, space);
        bus.read(CONFIG_DATA, 4, space).unwrap()
    }

    #[test]
    fn a_host_bridge_answers_at_00_00_0_and_ignores_writes() {
        let space = machine();
        let mut bus = VirtualPci::new(Vec::new()).with_host_bridge();
        assert_eq!(read(&mut bus, &space, (0, 0, 0), 0x00), 0x0008_1B36);
        assert_eq!(
            read(&mut bus, &space, (0, 0, 0), 0x08) >> 8,
            0x06_0000,
            "class 06/00/00"
        );
        assert_eq!(read(&mut bus, &space, (0, 0, 0), 0x10), 0, "no BARs");
        assert_eq!(
            read(&mut bus, &space, (0, 0, 1), 0x00),
            u32::MAX,
            "nothing else"
        );
        assert_eq!(read(&mut bus, &space, (1, 0, 0), 0x00), u32::MAX);
        bus.write(CONFIG_ADDRESS, 4, ENABLE | 0x04, &space);
        bus.write(CONFIG_DATA, 2, 0x7, &space);
        assert_eq!(read(&mut bus, &space, (0, 0, 0), 0x04), 0, "writes dropped");
        // A word read at an odd register.
        bus.write(CONFIG_ADDRESS, 4, ENABLE, &space);
        assert_eq!(bus.read(CONFIG_DATA + 2, 2, &space), Some(0x0008));
        // Without it the bus is empty.
        let mut empty = VirtualPci::new(Vec::new());
        assert_eq!(read(&mut empty, &space, (0, 0, 0), 0x00), u32::MAX);
    }

    #[test]
    fn only_assigned_functions_are_visible() {
        let space = machine();
        let mut bus = bus_with_uhci(&space);
        assert_eq!(read(&mut bus, &space, (0, 1, 2), 0), 0x7020_8086);
        assert_eq!(
            read(&mut bus, &space, (0, 0, 0), 0),
            u32::MAX,
            "host bridge hidden"
        );
        assert_eq!(read(&mut bus, &space, (0, 5, 0), 0), u32::MAX);
    }

    #[test]
    fn bars_read_their_host_address_and_size_like_hardware() {
        let space = machine();
        let mut bus = bus_with_uhci(&space);
        assert_eq!(
            read(&mut bus, &space, (0, 1, 2), 0x20),
            0xc001,
            "I/O BAR4 at 0xc000"
        );
        bus.write(CONFIG_DATA, 4, u32::MAX, &space);
        assert_eq!(
            bus.read(CONFIG_DATA, 4, &space),
            Some(0xFFFF_FFE1),
            "32 ports, I/O type"
        );
        bus.write(CONFIG_DATA, 4, 0x1234_0000, &space);
        assert_eq!(
            bus.read(CONFIG_DATA, 4, &space),
            Some(0xc001),
            "the BAR does not move"
        );
        let bdf = Bdf::new(0, 0, 1, 2).unwrap();
        assert_eq!(
            space.get(bdf).get32(0x20) & !0b11,
            0xc000,
            "hardware untouched"
        );
    }

    #[test]
    fn msi_programming_is_kept_virtual_and_reported() {
        let space = FakeConfigSpace::new(Mechanism::Legacy);
        space.add(0, 0, 0, FakeFunction::new(0x8086, 0x1237, 0x060000, 0));
        // QEMU's edu: MSI capability at 0x40, 64-bit, one vector (Message Control 0x0080).
        let mut edu = FakeFunction::new(0x1234, 0x11e8, 0x00ff00, 0);
        edu.capability(0x40, 0x05, &[0x80, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        for dword in (0x40..0x50).step_by(4) {
            edu.set_writable(dword, 4, u32::MAX);
        }
        space.add(0, 3, 0, edu);
        let topology = crate::pci::enumerate(&space);
        let f = topology
            .find(Bdf::new(0, 0, 3, 0).unwrap())
            .unwrap()
            .clone();
        let msi = f.capabilities.msi.unwrap();
        let table = MediationTable::endpoint(&f).unwrap();
        let mut bus = VirtualPci::new(alloc::vec![AssignedFunction::new(
            f.bdf,
            table,
            f.bars.clone()
        )
        .with_msi(msi.offset, msi.is_64bit, false)]);
        // As Linux does: address (to APIC 0), upper 0, data (vector 0x41), then enable.
        read(&mut bus, &space, (0, 3, 0), 0x44);
        bus.write(CONFIG_DATA, 4, 0xFEE0_0000, &space);
        read(&mut bus, &space, (0, 3, 0), 0x4C);
        bus.write(CONFIG_DATA, 2, 0x0041, &space);
        read(&mut bus, &space, (0, 3, 0), 0x40);
        bus.write(CONFIG_DATA + 2, 2, 0x0081, &space);
        let change = bus.take_msi_change().unwrap();
        assert_eq!(
            (change.enabled, change.vector, change.destination),
            (true, 0x41, 0)
        );
        assert_eq!(
            read(&mut bus, &space, (0, 3, 0), 0x40) >> 16,
            0x0081,
            "guest sees its enable"
        );
        assert_eq!(read(&mut bus, &space, (0, 3, 0), 0x4C) & 0xFFFF, 0x41);
        let hw = space.get(f.bdf);
        assert_eq!(hw.get16(0x42) & 1, 0, "hardware MSI stays disabled");
        assert_eq!(hw.get32(0x44), 0, "hardware address untouched");
    }

    #[test]
    fn command_writes_are_masked_and_the_rom_is_hidden() {
        let space = machine();
        let mut bus = bus_with_uhci(&space);
        read(&mut bus, &space, (0, 1, 2), 0x04);
        // The guest tries to set every Command bit: only I/O, memory, bus master, INTx disable pass.
        bus.write(CONFIG_DATA, 2, 0xFFFF, &space);
        let bdf = Bdf::new(0, 0, 1, 2).unwrap();
        assert_eq!(space.get(bdf).get16(0x04) & !0x0407, 0);
        assert_eq!(
            read(&mut bus, &space, (0, 1, 2), 0x30),
            0,
            "expansion ROM denied"
        );
    }
}
