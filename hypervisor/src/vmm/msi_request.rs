//! A guest's MSI programming of an assigned function, as the virtual PCI bus (MSI capability) and the
//! MSI-X table model both report it to whoever routes it (`guest_msi`).

use crate::pci::Bdf;

/// What the guest asked of an assigned function's MSI (PCI 3.0 6.8.1), in its own terms: the caller
/// maps it to the physical interrupt (an interrupt-remapping entry carrying the guest's vector).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsiRequest {
    pub bdf: Bdf,
    pub enabled: bool,
    /// Message Data bits 7:0.
    pub vector: u8,
    /// Message Address bits 19:12: the destination APIC ID (xAPIC format, SDM 11.11.1).
    pub destination: u8,
    /// Per-vector mask bit 0 (when the function has per-vector masking).
    pub masked: bool,
}
