//! What the IOMMU's callers ask of it, in its own terms: which device, the source-id its DMA and
//! interrupts carry, which of its interrupts, with which vector to which CPU.

use crate::pci::Bdf;

/// A PCI function as the IOMMU confines it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DmaDevice {
    pub bdf: Bdf,
    /// The source-id VT-d sees for the function's DMA and MSIs (its own BDF, or a bridge's alias).
    pub requester: Bdf,
    /// Index (in DMAR order, as `summary: drhd index=`) of the unit that translates for it;
    /// `None` when no unit covers it (refused, or no IOMMU at all with `unsafe_no_iommu`).
    pub unit: Option<usize>,
}

/// The CPU an interrupt is delivered to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuTarget {
    pub apic_id: u32,
    /// The host's local APIC is in x2APIC mode.
    pub x2apic: bool,
}

/// Which of a device's interrupts: each has its own IRTE.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InterruptSource {
    /// Its MSI (one vector: Multiple Message Enable stays 0).
    Msi(Bdf),
    /// One entry of its MSI-X table.
    Msix { bdf: Bdf, entry: u16 },
}

impl InterruptSource {
    pub const fn bdf(self) -> Bdf {
        match self {
            InterruptSource::Msi(bdf) | InterruptSource::Msix { bdf, .. } => bdf,
        }
    }
}

/// An interrupt of a guest's device to remap (VT-d 5.1.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InterruptRequest {
    pub source: InterruptSource,
    /// The source-id the device's messages carry: the only one the IRTE accepts (SVT/SID).
    pub requester: Bdf,
    /// The vector to deliver; `None` when the interrupt is off (disabled or masked), which clears
    /// its IRTE.
    pub vector: Option<u8>,
    pub cpu: CpuTarget,
}

/// A guest's IOAPIC pin, as the physical IOAPIC is to deliver it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PinRequest {
    /// The IOAPIC (its id names it in DMAR's device scopes) and the pin.
    pub ioapic_id: u8,
    pub pin: u8,
    pub vector: u8,
    pub level: bool,
    pub active_low: bool,
    /// Nothing to deliver: the pin's IRTE, if any, is given up.
    pub masked: bool,
    pub cpu: CpuTarget,
}

/// What to program into the pin's physical redirection entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PinEntry {
    /// This entry, in remappable format (VT-d 5.1.5.1).
    Remapped(u64),
    /// A masked entry: the pin was masked, and its IRTE is free again.
    Masked,
    /// No unit remaps the IOAPIC's interrupts: a compatibility-format entry.
    Compatibility,
}
