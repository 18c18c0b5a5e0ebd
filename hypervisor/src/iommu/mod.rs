//! The machine's IOMMU service: every VT-d unit brought up at boot with no device allowed any
//! memory, except the devices firmware needs (RMRR identity maps, VT-d 8.4) and, per guest, the
//! devices assigned to it, whose domain maps exactly that guest's RAM (GPA 0..len -> HPA
//! ram_base..). One job a module:
//!
//! - `bring_up`: the units (root table, queued invalidation, interrupt remapping, translation on),
//!   RMRR identity domains, shutting down;
//! - `domains`: one DMA domain per guest, attached and detached; a device without a context entry
//!   is blocked (VT-d 3.4.3: fault reason 0x1/0x2), so an unassigned device reaches no memory at
//!   all, and an assigned one only its guest's RAM;
//! - `interrupts`: interrupt remapping, the IRTEs a guest's MSIs, MSI-X entries and IOAPIC pins go
//!   through (compatibility-format interrupts are blocked) and their allocation;
//! - `faults`: the fault records, drained when a unit's fault event interrupt arrives and when a
//!   guest ends, logged as `vtd fault: bdf=... address=... reason=...`, the faulting device
//!   quarantined (its context entry cleared and invalidated); where fault events are sent;
//! - `scope`: which unit covers a device, from DMAR's device scopes;
//! - `requests`: what callers ask for, in the IOMMU's own terms (the device and its source-id, the
//!   interrupt and its vector and CPU, the IOAPIC pin).
//!
//! One lock: the service is one [`DmaRemapping`], and on the machine it exists only inside an
//! [`Iommu`] ([`Iommu::bring_up_machine`]), a `spin::Mutex`. Whoever holds the guard has the
//! `&mut DmaRemapping` every operation takes and may lend it down, never keep it: today the boot
//! CPU locks it once and lends it to each guest's run (the runner, its exit handlers, the MSI and
//! pin routing). Every method is one whole operation that leaves tables, IRTEs and units
//! consistent, so when several CPUs share the service each can take the lock per operation
//! instead, and this lock is the one place that serializes them.

mod bring_up;
mod domains;
mod faults;
mod interrupts;
mod requests;
pub mod scope;

pub use bring_up::platform_rmrrs;
pub use domains::prepare_guest_dma;
pub use requests::{CpuTarget, DmaDevice, InterruptRequest, InterruptSource, PinEntry, PinRequest};

use crate::vtd::context::RootTable;
use crate::vtd::irte::InterruptRemapTable;
use crate::vtd::regs::VtdMmio;
use crate::vtd::second_level::DomainTables;
use crate::vtd::unit::RemappingUnit;
use crate::vtd::{DomainId, SourceId};
use alloc::string::String;
use alloc::vec::Vec;

/// What to turn on besides DMA remapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BringUpOptions {
    /// Interrupt remapping with an empty table and compatibility-format interrupts blocked
    /// (where ECAP.IR and ECAP.QI). Off while guests route IOAPIC pins: the physical IOAPIC is
    /// programmed in compatibility format, which IR would then block.
    pub interrupt_remapping: bool,
}

/// The IOMMU service behind its one lock (see the module doc).
pub struct Iommu<M: VtdMmio> {
    service: spin::Mutex<DmaRemapping<M>>,
}

impl<M: VtdMmio> Iommu<M> {
    pub fn new(service: DmaRemapping<M>) -> Self {
        Iommu {
            service: spin::Mutex::new(service),
        }
    }

    /// The service, for as long as the guard lives.
    pub fn lock(&self) -> spin::MutexGuard<'_, DmaRemapping<M>> {
        self.service.lock()
    }

    /// The service without locking: `&mut self` already proves no one else holds it (an owner
    /// that never shares it, such as a self-test).
    pub fn get_mut(&mut self) -> &mut DmaRemapping<M> {
        self.service.get_mut()
    }
}

/// One remapping unit as the hypervisor drives it.
struct Unit<M: VtdMmio> {
    register_base: u64,
    hw: RemappingUnit<M>,
    root: RootTable,
    /// The interrupt-remapping table, while IR is on (the hardware reads it).
    interrupts: Option<InterruptRemapTable>,
    /// Which IRTE indices are handed out (one per entry of `interrupts`).
    irte_in_use: Vec<bool>,
    /// The IOAPICs in the unit's device scope: (IOAPIC id, the requester ID its interrupts carry).
    ioapics: Vec<(u8, SourceId)>,
}

/// A device's context entry on one unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ContextSlot {
    unit: usize,
    requester: SourceId,
}

/// One guest's DMA domain.
struct GuestDomain {
    name: String,
    id: DomainId,
    /// The domain's second-level tables on each unit its devices sit behind (each unit gets its
    /// own, built for its SAGAW and page sizes).
    tables: Vec<(usize, DomainTables)>,
    /// The context entries pointing at the domain.
    slots: Vec<ContextSlot>,
    /// IRTEs carrying the guest's MSIs and MSI-X entries: (source, unit, index).
    msis: Vec<(InterruptSource, usize, u16)>,
}

/// A guest attached by [`DmaRemapping::attach_guest`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DomainHandle(usize);

/// Every VT-d unit of the machine, translating.
pub struct DmaRemapping<M: VtdMmio> {
    units: Vec<Unit<M>>,
    guests: Vec<Option<GuestDomain>>,
    /// Identity domains made for RMRR devices: their context entries, ids and tables (kept for
    /// as long as the entries point at them: forever).
    rmrr_domains: Vec<(ContextSlot, DomainId, DomainTables)>,
    next_domain: DomainId,
    /// IRTEs carrying guests' IOAPIC pins: (IOAPIC id, pin, unit, index).
    pin_irtes: Vec<(u8, u8, usize, u16)>,
    /// Where fault events go while they are on: (vector, APIC ID).
    fault_target: Option<(u8, u32)>,
}

#[cfg(test)]
mod tests;
