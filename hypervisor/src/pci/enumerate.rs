//! Bus enumeration: every function reachable from the root bus through the bridges' bus
//! numbers as firmware assigned them (nothing is renumbered or reprogrammed).

use alloc::vec::Vec;
use core::fmt::{self, Write};

use super::access::{ConfigAccess, Mechanism};
use super::bar::{probe_bars, Bar};
use super::bdf::{Bdf, DEVICES_PER_BUS, FUNCTIONS_PER_DEVICE};
use super::caps::{read_capabilities, Capabilities, PciePortType};
use super::regs::{
    ClassCode, HeaderLayout, ABSENT_VENDOR, HEADER_MULTI_FUNCTION, HEADER_TYPE, INTERRUPT_LINE,
    INTERRUPT_PIN, PRIMARY_BUS, REVISION_CLASS, SECONDARY_BUS, SUBORDINATE_BUS, VENDOR_ID,
};

/// Bus numbers of a PCI-to-PCI bridge (bridge spec 1.2 §3.2.5.2-3.2.5.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BridgeBuses {
    pub primary: u8,
    pub secondary: u8,
    pub subordinate: u8,
}

/// One function as found at boot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PciFunction {
    pub bdf: Bdf,
    pub vendor_id: u16,
    pub device_id: u16,
    pub class: ClassCode,
    pub revision: u8,
    /// The raw Header Type register (bit 7: multi-function device).
    pub header_type: u8,
    /// Interrupt Pin: 0 none, 1..4 INTA#..INTD#.
    pub interrupt_pin: u8,
    /// Interrupt Line as firmware left it (a scratch register, PCI 3.0 §6.2.4).
    pub interrupt_line: u8,
    pub bars: Vec<Bar>,
    pub capabilities: Capabilities,
    /// Present for type-1 headers.
    pub bridge: Option<BridgeBuses>,
    /// The bridge whose secondary bus this function sits on; `None` on a root bus.
    pub upstream_bridge: Option<Bdf>,
}

impl PciFunction {
    pub fn layout(&self) -> HeaderLayout {
        HeaderLayout::from_header_type(self.header_type)
    }

    /// The BAR in slot `index` (the low slot of a 64-bit BAR).
    pub fn bar(&self, index: u8) -> Option<&Bar> {
        self.bars.iter().find(|bar| bar.index == index)
    }

    /// `pci_function bdf=... id=... ...` (without the `summary: ` prefix).
    pub fn write_summary_fields(&self, out: &mut dyn Write) -> fmt::Result {
        write!(
            out,
            "bdf={} id={:04x}:{:04x} class={:#08x} header={} irq_pin={} bars=",
            self.bdf,
            self.vendor_id,
            self.device_id,
            self.class.as_u32(),
            self.header_type & 0x7F,
            self.interrupt_pin
        )?;
        if self.bars.is_empty() {
            out.write_str("none")?;
        }
        for (n, bar) in self.bars.iter().enumerate() {
            if n > 0 {
                out.write_char(',')?;
            }
            write!(out, "{bar}")?;
        }
        let caps = &self.capabilities;
        match caps.msi {
            Some(msi) => write!(
                out,
                " msi=yes msi_vectors={} msi_64bit={}",
                msi.vectors(),
                yes_no(msi.is_64bit)
            )?,
            None => out.write_str(" msi=no")?,
        }
        match caps.msix {
            Some(msix) => write!(
                out,
                " msix=yes msix_table=bar{}+{:#x} msix_size={} msix_pba=bar{}+{:#x}",
                msix.table.bir, msix.table.offset, msix.table_size, msix.pba.bir, msix.pba.offset
            )?,
            None => out.write_str(" msix=no")?,
        }
        match caps.pcie {
            Some(pcie) => write!(out, " pcie=yes pcie_type={}", pcie.port_type.name())?,
            None => out.write_str(" pcie=no")?,
        }
        write!(
            out,
            " flr={} pm={}",
            yes_no(caps.flr()),
            yes_no(caps.power_management.is_some())
        )?;
        if let Some(bridge) = self.bridge {
            write!(
                out,
                " secondary_bus={:#04x} subordinate_bus={:#04x}",
                bridge.secondary, bridge.subordinate
            )?;
        }
        if !caps.extended.is_empty() {
            out.write_str(" ext_caps=")?;
            for (n, entry) in caps.extended.iter().enumerate() {
                if n > 0 {
                    out.write_char(',')?;
                }
                write!(out, "{:#06x}", entry.id)?;
            }
        }
        if caps.truncated {
            out.write_str(" caps_truncated=yes")?;
        }
        Ok(())
    }
}

fn yes_no(value: bool) -> &'static str {
    if value {
        "yes"
    } else {
        "no"
    }
}

/// Every function found, sorted by BDF.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PciTopology {
    pub mechanism: Mechanism,
    pub functions: Vec<PciFunction>,
}

impl PciTopology {
    pub fn find(&self, bdf: Bdf) -> Option<&PciFunction> {
        self.functions
            .binary_search_by(|function| function.bdf.cmp(&bdf))
            .ok()
            .map(|index| &self.functions[index])
    }

    /// The requester ID the root complex (and so VT-d) sees for DMA and MSIs from `bdf`.
    ///
    /// PCIe switch and root ports forward requester IDs unchanged. A PCIe-to-PCI bridge
    /// takes ownership of transactions from its conventional side and tags them with its
    /// secondary bus number, device 0, function 0 (PCIe-to-PCI/PCI-X Bridge 1.0 §2.3); a
    /// conventional PCI bridge uses its own ID. Every function behind such a bridge
    /// therefore shares one ID and can only be isolated as a group. `None` for an unknown BDF.
    pub fn iommu_requester(&self, bdf: Bdf) -> Option<Bdf> {
        let mut alias = self.find(bdf)?.bdf;
        let mut current = self.find(bdf)?;
        // Bounded by the bus count in case firmware left a bridge cycle.
        for _ in 0..=u8::MAX as usize {
            let Some(bridge) = current.upstream_bridge.and_then(|up| self.find(up)) else {
                return Some(alias);
            };
            match bridge.capabilities.pcie.map(|pcie| pcie.port_type) {
                Some(PciePortType::PcieToPciBridge) => {
                    let secondary = bridge
                        .bridge
                        .map_or(bridge.bdf.bus(), |buses| buses.secondary);
                    alias = Bdf::new(bridge.bdf.segment(), secondary, 0, 0)?;
                }
                Some(PciePortType::PciToPcieBridge) | None => alias = bridge.bdf,
                Some(_) => {}
            }
            current = bridge;
        }
        Some(alias)
    }

    /// `summary: pci ...` and one `summary: pci_function ...` line per function.
    pub fn write_summary(&self, out: &mut dyn Write) -> fmt::Result {
        writeln!(
            out,
            "summary: pci access={} functions={}",
            self.mechanism,
            self.functions.len()
        )?;
        for function in &self.functions {
            out.write_str("summary: pci_function ")?;
            function.write_summary_fields(out)?;
            out.write_char('\n')?;
        }
        Ok(())
    }
}

/// Enumerates what `access` reaches, starting at the first bus of its range and following
/// each PCI-to-PCI bridge's secondary bus. BARs are sized on the way (see [`probe_bars`]).
pub fn enumerate(access: &dyn ConfigAccess) -> PciTopology {
    let mut functions = Vec::new();
    enumerate_into(access, &mut functions);
    functions.sort_by_key(|function: &PciFunction| function.bdf);
    PciTopology {
        mechanism: access.mechanism(),
        functions,
    }
}

/// Enumerates several accessors (one ECAM region per MCFG entry) into one topology.
/// `None` when the list is empty.
pub fn enumerate_all(accesses: &[&dyn ConfigAccess]) -> Option<PciTopology> {
    let mechanism = accesses.first()?.mechanism();
    let mut functions = Vec::new();
    for access in accesses {
        enumerate_into(*access, &mut functions);
    }
    functions.sort_by_key(|function: &PciFunction| function.bdf);
    functions.dedup_by_key(|function| function.bdf);
    Some(PciTopology {
        mechanism,
        functions,
    })
}

fn enumerate_into(access: &dyn ConfigAccess, out: &mut Vec<PciFunction>) {
    let segment = access.segment();
    let (first_bus, last_bus) = access.bus_range();
    let mut visited = [false; 256];
    // Buses still to scan, with the bridge that leads to each; a worklist keeps the kernel
    // stack flat however deep the bridge hierarchy is.
    let mut pending: Vec<(u8, Option<Bdf>)> = alloc::vec![(first_bus, None)];
    while let Some((bus, upstream)) = pending.pop() {
        if visited[bus as usize] || !(first_bus..=last_bus).contains(&bus) {
            continue;
        }
        visited[bus as usize] = true;
        for device in 0..DEVICES_PER_BUS {
            let Some(function0) = Bdf::new(segment, bus, device, 0) else {
                continue;
            };
            // Function 0 must exist for the device to exist (PCI 3.0 §6.2.1).
            if access.read16(function0, VENDOR_ID) == ABSENT_VENDOR {
                continue;
            }
            let multi_function = access.read8(function0, HEADER_TYPE) & HEADER_MULTI_FUNCTION != 0;
            let functions = if multi_function {
                FUNCTIONS_PER_DEVICE
            } else {
                1
            };
            for number in 0..functions {
                let Some(bdf) = function0.with_function(number) else {
                    continue;
                };
                if access.read16(bdf, VENDOR_ID) == ABSENT_VENDOR {
                    continue;
                }
                let function = probe_function(access, bdf, upstream);
                if let Some(buses) = function.bridge {
                    // 0 means firmware left the bridge unconfigured; a secondary bus at or
                    // above ours cannot be downstream of it.
                    if buses.secondary > bus {
                        pending.push((buses.secondary, Some(bdf)));
                    }
                }
                out.push(function);
            }
        }
    }
}

/// Reads one present function's header, BARs and capabilities.
pub fn probe_function(
    access: &dyn ConfigAccess,
    bdf: Bdf,
    upstream_bridge: Option<Bdf>,
) -> PciFunction {
    let id = access.read32(bdf, VENDOR_ID);
    let revision_class = access.read32(bdf, REVISION_CLASS);
    let class = ClassCode {
        base: (revision_class >> 24) as u8,
        sub: (revision_class >> 16) as u8,
        prog_if: (revision_class >> 8) as u8,
    };
    let header_type = access.read8(bdf, HEADER_TYPE);
    let layout = HeaderLayout::from_header_type(header_type);
    // Host bridges (class 06/00) keep decoding while their BARs are sized.
    let is_host_bridge = class.base == 0x06 && class.sub == 0x00;
    let bars = probe_bars(access, bdf, layout.bar_slots(), is_host_bridge);
    let bridge = (layout == HeaderLayout::PciBridge).then(|| BridgeBuses {
        primary: access.read8(bdf, PRIMARY_BUS),
        secondary: access.read8(bdf, SECONDARY_BUS),
        subordinate: access.read8(bdf, SUBORDINATE_BUS),
    });
    let (interrupt_line, interrupt_pin) = match layout {
        HeaderLayout::Unknown(_) => (0, 0),
        _ => (
            access.read8(bdf, INTERRUPT_LINE),
            access.read8(bdf, INTERRUPT_PIN),
        ),
    };
    PciFunction {
        bdf,
        vendor_id: id as u16,
        device_id: (id >> 16) as u16,
        class,
        revision: revision_class as u8,
        header_type,
        interrupt_pin,
        interrupt_line,
        bars,
        capabilities: read_capabilities(access, bdf, layout.capabilities_pointer()),
        bridge,
        upstream_bridge,
    }
}
