//! Architectural defaults for a machine without ACPI tables (OVMF under Bochs publishes none):
//! the local APIC where IA32_APIC_BASE says, one IOAPIC at 0xFEC00000 if its version register
//! answers, no MCFG (legacy 0xCF8/0xCFC configuration access) and no DMAR.

use super::apic::{ApicBaseMsr, IoApicVersion, DEFAULT_IOAPIC_BASE, IOAPIC_REG_VERSION};
use super::probe::{ioapic_id, PlatformProbe};
use super::{IoApic, IoApicSource};

/// The IOAPIC at the conventional address, when a plausible version register answers there.
pub fn probe_default_ioapic(probe: &dyn PlatformProbe) -> Option<IoApic> {
    let version = IoApicVersion(probe.read_ioapic_reg(DEFAULT_IOAPIC_BASE, IOAPIC_REG_VERSION));
    version.looks_present().then(|| IoApic {
        id: ioapic_id(probe, DEFAULT_IOAPIC_BASE),
        address: DEFAULT_IOAPIC_BASE,
        // The first IOAPIC starts at GSI 0 when the platform describes no other (ACPI 5.2.12.3).
        gsi_base: 0,
        version: Some(version),
        source: IoApicSource::DefaultProbed,
    })
}

/// The local APIC base from IA32_APIC_BASE.
pub fn lapic_base(msr: ApicBaseMsr) -> u64 {
    msr.base()
}
