//! PCI: configuration-space access (legacy ports or ECAM), enumeration with BAR sizing and
//! capability decoding, and the config-space mediation table for assigned devices.
//!
//! The kernel picks an accessor ([`Ecam`] per MCFG entry, [`LegacyPorts`] without MCFG), calls
//! [`enumerate`] (or [`enumerate_all`]) once at boot and prints [`PciTopology::write_summary`].

mod access;
mod bar;
mod bdf;
pub mod caps;
mod enumerate;
pub mod mediation;
pub mod regs;
pub mod reset;

#[cfg(test)]
pub(crate) mod fake;
#[cfg(test)]
mod tests;

pub use access::{ConfigAccess, Ecam, LegacyPorts, Mechanism};
pub use bar::{probe_bars, size_from_mask, Bar, BarKind};
pub use bdf::{Bdf, ParseBdfError, DEVICES_PER_BUS, FUNCTIONS_PER_DEVICE};
pub use caps::{
    BarRegion, Capabilities, MsiCapability, MsixCapability, PcieCapability, PciePortType,
    PowerManagement,
};
pub use enumerate::{
    enumerate, enumerate_all, probe_function, BridgeBuses, PciFunction, PciTopology,
};
pub use regs::{ClassCode, Command, HeaderLayout, Status};
