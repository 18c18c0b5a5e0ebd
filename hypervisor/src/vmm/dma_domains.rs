//! DMA remapping for guests: every VT-d unit brought up at boot with no device allowed any memory,
//! except the devices firmware needs (RMRR identity maps, VT-d 8.4) and, per guest, the devices
//! assigned to it, whose domain maps exactly that guest's RAM (GPA 0..len -> HPA ram_base..).
//!
//! A device without a context entry is blocked (VT-d 3.4.3: fault reason 0x1/0x2), so an
//! unassigned device reaches no memory at all, and an assigned one only its guest's RAM.
//! Faults are drained when a unit's fault event interrupt arrives and when a guest ends, logged
//! as `vtd fault: bdf=... address=... reason=...`, and the faulting device is quarantined (its
//! context entry cleared and invalidated).
//!
//! Interrupt remapping: every interrupt a guest's devices raise goes through an IRTE the host
//! wrote, its MSIs and MSI-X entries (`route_guest_msi`) and its IOAPIC pins (`ioapic_pin_entry`);
//! compatibility-format interrupts are blocked.

use crate::caps::vtd::AddressWidth;
use crate::memory::FrameAlloc;
use crate::pci::{Bdf, PciTopology};
use crate::platform::dmar::{Rmrr, ScopeKind};
use crate::platform::{DmarStatus, IommuUnit, Platform};
use crate::virq::ioapic::PhysicalRouting;
use crate::vmm::assignment::{covering_unit, resolve_scope, AssignedDevice};
use crate::vmm::interrupts::GUEST_VECTORS;
use crate::vmm::msi_request::MsiRequest;
use crate::vmm::msix::MsixRequest;
use crate::vtd::context::{ContextEntry, RootTable};
use crate::vtd::fault::{Fault, FaultEventMessage, FaultKind};
use crate::vtd::invalidation::InvalidationQueue;
use crate::vtd::irte::{
    remappable_ioapic_entry, remappable_msi, Destination, InterruptRemapTable, Irte, MsiMessage,
    RemappedInterrupt,
};
use crate::vtd::regs::{MmioRegisters, VtdMmio};
use crate::vtd::second_level::{Access, DomainTables, MapStats};
use crate::vtd::unit::RemappingUnit;
use crate::vtd::{DomainId, SourceId};
use alloc::format;
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

/// What one IRTE serves: a device's MSI (`None`) or one of its MSI-X table entries.
type InterruptSource = (Bdf, Option<u16>);

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

/// The RMRRs of the machine's DMAR (none without one).
pub fn platform_rmrrs(platform: &Platform) -> &[Rmrr] {
    match &platform.dmar {
        DmarStatus::Present(dmar) => &dmar.rmrrs,
        _ => &[],
    }
}

impl DmaRemapping<MmioRegisters> {
    /// [`DmaRemapping::bring_up`] on the machine's units, at the register bases DMAR gives.
    /// `assigned` are the requester IDs of every device some guest will be given.
    pub fn bring_up_machine(
        platform: &Platform,
        topology: &PciTopology,
        assigned: &[Bdf],
        options: BringUpOptions,
        frames: &mut impl FrameAlloc,
    ) -> Result<Self, String> {
        Self::bring_up(
            &platform.iommus,
            platform_rmrrs(platform),
            topology,
            assigned,
            options,
            frames,
            // SAFETY: the DRHD register bases come from DMAR and are identity-mapped; from here on
            // only this value drives the units.
            |unit| unsafe { MmioRegisters::new(unit.drhd.register_base) },
        )
    }
}

impl<M: VtdMmio> DmaRemapping<M> {
    /// Brings every unit up: root table, the RMRR identity domains of devices no guest is given,
    /// queued invalidation where ECAP.QI, interrupt remapping as `options` asks, translation on.
    /// `assigned` are the requester IDs of every device some guest will be given: their RMRRs are
    /// not honoured (logged).
    pub fn bring_up(
        iommus: &[IommuUnit],
        rmrrs: &[Rmrr],
        topology: &PciTopology,
        assigned: &[Bdf],
        options: BringUpOptions,
        frames: &mut impl FrameAlloc,
        mut open: impl FnMut(&IommuUnit) -> M,
    ) -> Result<Self, String> {
        if iommus.is_empty() {
            return Err(String::from("no VT-d remapping unit (DMAR DRHD)"));
        }
        let mut this = DmaRemapping {
            units: Vec::new(),
            guests: Vec::new(),
            rmrr_domains: Vec::new(),
            next_domain: 0,
            pin_irtes: Vec::new(),
            fault_target: None,
        };
        for iommu in iommus {
            let hw = RemappingUnit::new(open(iommu));
            let root = RootTable::new(frames).map_err(|e| format!("VT-d root table: {e}"))?;
            // Under caching mode domain 0 tags cached not-present entries (VT-d 6.2.2).
            this.next_domain = this.next_domain.max(hw.first_domain_id());
            let ioapics = iommu
                .drhd
                .scopes
                .iter()
                .filter(|scope| scope.kind == ScopeKind::IoApic)
                .filter_map(|scope| {
                    let bdf = resolve_scope(scope, iommu.drhd.segment, topology)?;
                    Some((scope.enumeration_id, SourceId(bdf.requester_id())))
                })
                .collect();
            this.units.push(Unit {
                register_base: iommu.drhd.register_base,
                hw,
                root,
                interrupts: None,
                irte_in_use: Vec::new(),
                ioapics,
            });
        }
        // Identity maps go in before translation is turned on: firmware's DMA to them never stops.
        this.add_rmrr_domains(iommus, rmrrs, topology, assigned, frames)?;
        for (index, iommu) in iommus.iter().enumerate() {
            let unit = &mut this.units[index];
            let qi = iommu.ecap.queued_invalidation();
            let queue = if qi {
                Some(InvalidationQueue::new(frames).map_err(|e| format!("VT-d queue: {e}"))?)
            } else {
                None
            };
            let ir = options.interrupt_remapping && qi && iommu.ecap.interrupt_remapping();
            let interrupts = if ir {
                let table = InterruptRemapTable::new(frames, iommu.ecap.eim())
                    .map_err(|e| format!("VT-d interrupt remapping table: {e}"))?;
                Some(table)
            } else {
                None
            };
            unit.hw
                .init(frames, &unit.root, interrupts.as_ref(), queue)
                .map_err(|e| {
                    format!(
                        "bringing up the VT-d unit at {:#x}: {e}",
                        iommu.drhd.register_base
                    )
                })?;
            unit.irte_in_use = alloc::vec![false; interrupts.as_ref().map_or(0, |t| t.len())];
            unit.interrupts = interrupts;
            let mut summary = String::new();
            let _ = unit.hw.write_summary(&mut summary);
            log::info!(
                "vtd: unit {index} at {:#x} translating, no device allowed DMA unless assigned or named by an RMRR: {}",
                unit.register_base,
                summary.trim_end()
            );
        }
        if options.interrupt_remapping {
            log::info!(
                "vtd: interrupt remapping on where offered: compatibility-format interrupts blocked"
            );
        }
        Ok(this)
    }

    /// One identity domain per RMRR device (its requester ID) on its covering unit, mapping
    /// exactly its RMRR ranges (VT-d 8.4), unless a guest is given the device.
    fn add_rmrr_domains(
        &mut self,
        iommus: &[IommuUnit],
        rmrrs: &[Rmrr],
        topology: &PciTopology,
        assigned: &[Bdf],
        frames: &mut impl FrameAlloc,
    ) -> Result<(), String> {
        // (unit, requester) -> page-aligned [start, end) ranges.
        let mut wanted: Vec<(ContextSlot, Vec<(u64, u64)>)> = Vec::new();
        for rmrr in rmrrs {
            let range = (rmrr.base & !0xFFF, (rmrr.limit | 0xFFF).saturating_add(1));
            for scope in &rmrr.scopes {
                if !matches!(
                    scope.kind,
                    ScopeKind::PciEndpoint | ScopeKind::PciSubHierarchy
                ) {
                    continue;
                }
                let Some(bdf) = resolve_scope(scope, rmrr.segment, topology) else {
                    log::warn!(
                        "vtd: RMRR {:#x}-{:#x} names {scope}, which is not on this machine: ignored",
                        rmrr.base,
                        rmrr.limit
                    );
                    continue;
                };
                let requester = topology.iommu_requester(bdf).unwrap_or(bdf);
                if assigned.contains(&requester) {
                    log::warn!(
                        "vtd: RMRR {:#x}-{:#x} of {bdf} not honoured: the device is assigned to a guest, \
                         whose domain maps only the guest's RAM; an identity map of this host memory would \
                         let the guest's device reach it (firmware's use of the region, e.g. USB legacy \
                         emulation, stops)",
                        rmrr.base,
                        rmrr.limit
                    );
                    continue;
                }
                let Some(unit) = covering_unit(bdf, topology, iommus) else {
                    log::warn!(
                        "vtd: RMRR {:#x}-{:#x} names {bdf}, which no VT-d unit covers: ignored",
                        rmrr.base,
                        rmrr.limit
                    );
                    continue;
                };
                let slot = ContextSlot {
                    unit,
                    requester: SourceId(requester.requester_id()),
                };
                match wanted.iter_mut().find(|(s, _)| *s == slot) {
                    Some((_, ranges)) => ranges.push(range),
                    None => wanted.push((slot, alloc::vec![range])),
                }
            }
        }
        for (slot, mut ranges) in wanted {
            ranges.sort_unstable();
            let mut merged: Vec<(u64, u64)> = Vec::new();
            for (start, end) in ranges {
                match merged.last_mut() {
                    Some(last) if start <= last.1 => last.1 = last.1.max(end),
                    _ => merged.push((start, end)),
                }
            }
            let top = merged.last().map_or(0, |r| r.1);
            let id = self.allocate_domain(&[slot.unit])?;
            let unit = &mut self.units[slot.unit];
            let mut tables = new_tables(&unit.hw, top, frames)?;
            for &(start, end) in &merged {
                tables
                    .map(
                        frames,
                        start,
                        start,
                        end - start,
                        Access::READ | Access::WRITE,
                        unit.hw.page_sizes(),
                    )
                    .map_err(|e| format!("RMRR identity map {start:#x}-{end:#x}: {e:?}"))?;
                log::info!(
                    "vtd: RMRR {start:#x}-{:#x} identity-mapped for {} (domain {id}, unit {})",
                    end - 1,
                    slot.requester,
                    slot.unit
                );
            }
            unit.root
                .assign(
                    frames,
                    slot.requester,
                    ContextEntry::translated(id, &tables),
                )
                .map_err(|e| format!("RMRR context entry for {}: {e:?}", slot.requester))?;
            self.rmrr_domains.push((slot, id, tables));
        }
        Ok(())
    }

    /// The next domain id, valid on every unit in `units` (CAP.ND).
    fn allocate_domain(&mut self, units: &[usize]) -> Result<DomainId, String> {
        let id = self.next_domain;
        for &u in units {
            let limit = self.units[u].hw_domains();
            if u32::from(id) >= limit {
                return Err(format!(
                    "VT-d unit {u} supports {limit} domains, all in use"
                ));
            }
        }
        self.next_domain = id
            .checked_add(1)
            .ok_or_else(|| String::from("out of VT-d domain ids"))?;
        Ok(id)
    }

    /// Gives `devices` (all of one guest) a new domain mapping exactly the guest's RAM, GPA
    /// `0..ram_len` to HPA `ram_base..`, with the largest pages each unit allows, then their
    /// context entries. On error nothing stays attached.
    pub fn attach_guest(
        &mut self,
        name: &str,
        (ram_base, ram_len): (u64, u64),
        devices: &[AssignedDevice],
        frames: &mut impl FrameAlloc,
    ) -> Result<DomainHandle, String> {
        let mut units: Vec<usize> = Vec::new();
        for device in devices {
            match device.unit {
                Some(u) if u < self.units.len() => {
                    if !units.contains(&u) {
                        units.push(u);
                    }
                }
                _ => {
                    return Err(format!(
                        "{} is covered by no VT-d unit, so its DMA cannot be confined",
                        device.bdf
                    ))
                }
            }
        }
        if units.is_empty() {
            return Err(format!("guest {name} has no device to attach"));
        }
        let id = self.allocate_domain(&units)?;
        let handle = DomainHandle(self.guests.len());
        self.guests.push(Some(GuestDomain {
            name: String::from(name),
            id,
            tables: Vec::new(),
            slots: Vec::new(),
            msis: Vec::new(),
        }));
        match self.fill_domain(handle, (ram_base, ram_len), devices, &units, frames) {
            Ok(()) => Ok(handle),
            Err(why) => {
                self.detach_guest(handle, frames);
                Err(why)
            }
        }
    }

    fn fill_domain(
        &mut self,
        handle: DomainHandle,
        (ram_base, ram_len): (u64, u64),
        devices: &[AssignedDevice],
        units: &[usize],
        frames: &mut impl FrameAlloc,
    ) -> Result<(), String> {
        let Some(guest) = self.guests[handle.0].as_mut() else {
            return Err(String::from("domain already detached"));
        };
        let id = guest.id;
        for &u in units {
            let unit = &mut self.units[u];
            let mut tables = new_tables(&unit.hw, ram_len, frames)?;
            let stats = tables
                .map(
                    frames,
                    0,
                    ram_base,
                    ram_len,
                    Access::READ | Access::WRITE,
                    unit.hw.page_sizes(),
                )
                .map_err(|e| format!("mapping the guest's RAM for DMA: {e:?}"))?;
            unit.hw
                .mappings_added(frames, id)
                .map_err(|e| format!("VT-d unit {u}: {e}"))?;
            log::info!(
                "vtd: guest {}: domain {id} on unit {u} maps GPA 0x0-{:#x} -> HPA {ram_base:#x} with {}",
                guest.name,
                ram_len.saturating_sub(1),
                leaf_report(&stats)
            );
            guest.tables.push((u, tables));
        }
        for device in devices {
            let u = device.unit.unwrap_or_default();
            let slot = ContextSlot {
                unit: u,
                requester: SourceId(device.requester.requester_id()),
            };
            let unit = &mut self.units[u];
            if let Some(entry) = unit
                .root
                .context_entry(frames, slot.requester)
                .filter(ContextEntry::present)
            {
                if entry.domain() == id {
                    continue; // another function behind the same requester ID
                }
                return Err(format!(
                    "{} (requester {}) is already in VT-d domain {} on unit {u}",
                    device.bdf,
                    slot.requester,
                    entry.domain()
                ));
            }
            let Some(tables) = guest.tables.iter().find(|(tu, _)| *tu == u) else {
                return Err(format!("no tables for unit {u}"));
            };
            unit.root
                .assign(
                    frames,
                    slot.requester,
                    ContextEntry::translated(id, &tables.1),
                )
                .map_err(|e| format!("context entry for {}: {e:?}", device.bdf))?;
            guest.slots.push(slot);
            unit.hw
                .context_entry_added(frames, slot.requester, id)
                .map_err(|e| format!("VT-d unit {u}: {e}"))?;
            log::info!(
                "vtd: guest {}: {} (requester {}) -> domain {id} on unit {u}",
                guest.name,
                device.bdf,
                slot.requester
            );
        }
        Ok(())
    }

    /// Takes the guest's devices out of its domain (context entries cleared, context cache and
    /// the domain's IOTLB invalidated): they are blocked from then on. Idempotent; the tables'
    /// frames are not reused.
    pub fn detach_guest(&mut self, handle: DomainHandle, frames: &mut impl FrameAlloc) {
        let Some(guest) = self.guests.get_mut(handle.0).and_then(Option::take) else {
            return;
        };
        // Interrupts first: the device must not raise the guest's vectors once it is gone.
        for &((bdf, _), unit, index) in &guest.msis {
            self.release_irte(unit, index, frames, bdf);
        }
        for slot in &guest.slots {
            self.remove_entry(*slot, frames);
        }
        log::info!(
            "vtd: guest {}: domain {} detached, its devices blocked",
            guest.name,
            guest.id
        );
    }

    /// The unit translating `requester` for the guest, if the guest's domain has it.
    fn guest_unit(&self, handle: DomainHandle, requester: Bdf) -> Option<usize> {
        let sid = SourceId(requester.requester_id());
        let guest = self.guests.get(handle.0)?.as_ref()?;
        guest
            .slots
            .iter()
            .find(|s| s.requester == sid)
            .map(|s| s.unit)
    }

    /// Whether the unit translating the guest's `requester` remaps interrupts (IR on, so
    /// compatibility-format interrupts are blocked there); `None` if the guest's domain does not
    /// hold the device.
    pub fn remaps_interrupts(&self, handle: DomainHandle, requester: Bdf) -> Option<bool> {
        let unit = self.guest_unit(handle, requester)?;
        Some(self.units[unit].interrupts.is_some())
    }

    /// Turns the guest's MSI programming of `req.bdf` (requester ID `requester`) into an IRTE on
    /// the unit translating the device (VT-d 5.1.4, 9.10): fixed delivery, physical destination
    /// `host_apic_id` (x2APIC format where the table is extended (ECAP.EIM) and the host in
    /// x2APIC mode, else xAPIC), the guest's own vector, accepted only from `requester`. The
    /// device's one IRTE is reused on every change. Returns the remappable-format message to
    /// program into the device (VT-d 5.1.5.2); `None` when the guest disabled or masked its MSI,
    /// which clears the IRTE. Either way the interrupt-entry cache is invalidated. On error the
    /// device's IRTE is cleared too.
    pub fn route_guest_msi(
        &mut self,
        handle: DomainHandle,
        req: &MsiRequest,
        requester: Bdf,
        cpu: (u32, bool),
        frames: &mut impl FrameAlloc,
    ) -> Result<Option<MsiMessage>, String> {
        self.route_source(handle, (req.bdf, None), req, requester, cpu, frames)
    }

    /// [`Self::route_guest_msi`] for MSI-X table entry `req.entry`: each entry has its own IRTE.
    pub fn route_guest_msix(
        &mut self,
        handle: DomainHandle,
        req: &MsixRequest,
        requester: Bdf,
        cpu: (u32, bool),
        frames: &mut impl FrameAlloc,
    ) -> Result<Option<MsiMessage>, String> {
        let msi = req.as_msi();
        self.route_source(
            handle,
            (req.bdf, Some(req.entry)),
            &msi,
            requester,
            cpu,
            frames,
        )
    }

    fn route_source(
        &mut self,
        handle: DomainHandle,
        source: InterruptSource,
        req: &MsiRequest,
        requester: Bdf,
        (host_apic_id, x2apic): (u32, bool),
        frames: &mut impl FrameAlloc,
    ) -> Result<Option<MsiMessage>, String> {
        let unit = self
            .guest_unit(handle, requester)
            .ok_or_else(|| format!("{} is not in the guest's DMA domain", req.bdf))?;
        let built = self.irte_for(unit, req, requester, (host_apic_id, x2apic));
        let existing = self.guests[handle.0].as_ref().and_then(|g| {
            let at = g.msis.iter().position(|m| m.0 == source)?;
            Some((at, g.msis[at].2))
        });
        let entry = match built {
            Ok(Some(entry)) => entry,
            disabled_or_error => {
                if let Some((at, _)) = existing {
                    if let Some(guest) = self.guests[handle.0].as_mut() {
                        let ((bdf, _), u, index) = guest.msis.swap_remove(at);
                        self.release_irte(u, index, frames, bdf);
                    }
                }
                return disabled_or_error.map(|_| None);
            }
        };
        let index = match existing {
            Some((_, index)) => {
                // A present entry is cleared and invalidated before it is rewritten (irte.rs).
                self.write_irte(unit, index, None, frames)?;
                index
            }
            None => {
                let index = self.claim_irte(unit)?;
                if let Some(guest) = self.guests[handle.0].as_mut() {
                    guest.msis.push((source, unit, index));
                }
                index
            }
        };
        if let Err(why) = self.write_irte(unit, index, Some(entry), frames) {
            if let Some(guest) = self.guests[handle.0].as_mut() {
                guest.msis.retain(|m| m.0 != source);
            }
            self.release_irte(unit, index, frames, req.bdf);
            return Err(why);
        }
        Ok(Some(remappable_msi(index, None)))
    }

    /// The IRTE that delivers `req` on `unit`; `Ok(None)` when the guest disabled or masked it.
    fn irte_for(
        &self,
        unit: usize,
        req: &MsiRequest,
        requester: Bdf,
        (host_apic_id, x2apic): (u32, bool),
    ) -> Result<Option<Irte>, String> {
        if !req.enabled || req.masked {
            return Ok(None);
        }
        if !GUEST_VECTORS.contains(&req.vector) {
            return Err(format!(
                "vector {:#x} is not one a guest may use ({:#x}..{:#x})",
                req.vector, GUEST_VECTORS.start, GUEST_VECTORS.end
            ));
        }
        let irq = RemappedInterrupt::fixed(
            req.vector,
            self.irte_destination(unit, (host_apic_id, x2apic))?,
            SourceId(requester.requester_id()),
        );
        self.irte_entry(unit, &irq).map(Some)
    }

    /// The CPU with `host_apic_id` as an IRTE destination on `unit`: IRTA.EIME decides how DST is
    /// read (VT-d 9.10), as a 32-bit x2APIC ID or an 8-bit xAPIC ID in bits 15:8.
    fn irte_destination(
        &self,
        unit: usize,
        (host_apic_id, x2apic): (u32, bool),
    ) -> Result<Destination, String> {
        let table = self.units[unit]
            .interrupts
            .as_ref()
            .ok_or_else(|| format!("interrupt remapping is off on VT-d unit {unit}"))?;
        match (table.extended(), x2apic) {
            (true, true) => Ok(Destination::X2Apic(host_apic_id)),
            (true, false) => Err(format!(
                "VT-d unit {unit} uses x2APIC-format IRTEs (EIM) but the host APIC is in xAPIC mode"
            )),
            (false, _) => u8::try_from(host_apic_id).map(Destination::XApic).map_err(|_| {
                format!(
                    "APIC ID {host_apic_id} needs x2APIC-format IRTEs, which VT-d unit {unit} lacks (ECAP.EIM)"
                )
            }),
        }
    }

    fn irte_entry(&self, unit: usize, irq: &RemappedInterrupt) -> Result<Irte, String> {
        let table = self.units[unit]
            .interrupts
            .as_ref()
            .ok_or_else(|| format!("interrupt remapping is off on VT-d unit {unit}"))?;
        table.entry_for(irq).map_err(|e| format!("{e}"))
    }

    /// Hands out a free IRTE index on `unit`.
    fn claim_irte(&mut self, unit: usize) -> Result<u16, String> {
        let used = &mut self.units[unit].irte_in_use;
        let free = used
            .iter()
            .position(|u| !u)
            .ok_or_else(|| format!("unit {unit}'s interrupt-remapping table is full"))?;
        used[free] = true;
        Ok(free as u16)
    }

    /// The physical redirection entry for a guest's IOAPIC pin, delivered at the CPU with
    /// `host` = (APIC ID, x2APIC mode). Where the unit covering the IOAPIC remaps interrupts the
    /// pin gets its own IRTE (the guest's vector and trigger mode, accepted only from the IOAPIC's
    /// requester ID) and the entry is in remappable format (VT-d 5.1.5.1); compatibility format
    /// would be blocked. A masked pin gives up its IRTE.
    pub fn ioapic_pin_entry(
        &mut self,
        ioapic_id: u8,
        routing: PhysicalRouting,
        host: (u32, bool),
        frames: &mut impl FrameAlloc,
    ) -> Result<u64, String> {
        let covering = self
            .units
            .iter()
            .enumerate()
            .find_map(|(u, unit)| Some((u, unit.ioapics.iter().find(|i| i.0 == ioapic_id)?.1)));
        let remapping_units = self.units.iter().any(|u| u.interrupts.is_some());
        let (unit, source) = match covering {
            Some((u, source)) if self.units[u].interrupts.is_some() => (u, source),
            Some(_) => return compatibility_pin_entry(routing, host),
            None if remapping_units => {
                return Err(format!(
                    "IOAPIC {ioapic_id} is in no VT-d unit's device scope (DMAR), so its interrupts cannot be remapped"
                ))
            }
            None => return compatibility_pin_entry(routing, host),
        };
        let existing = self
            .pin_irtes
            .iter()
            .position(|p| (p.0, p.1) == (ioapic_id, routing.pin));
        if routing.masked {
            if let Some(at) = existing {
                let (_, pin, u, index) = self.pin_irtes.swap_remove(at);
                self.release_pin_irte(u, index, pin, frames);
            }
            return Ok(PhysicalRouting::MASKED_ENTRY);
        }
        let irq = RemappedInterrupt {
            level_triggered: routing.level,
            ..RemappedInterrupt::fixed(routing.vector, self.irte_destination(unit, host)?, source)
        };
        let entry = self.irte_entry(unit, &irq)?;
        let index = match existing {
            Some(at) => {
                let index = self.pin_irtes[at].3;
                // A present entry is cleared and invalidated before it is rewritten (irte.rs).
                self.write_irte(unit, index, None, frames)?;
                index
            }
            None => {
                let index = self.claim_irte(unit)?;
                self.pin_irtes.push((ioapic_id, routing.pin, unit, index));
                index
            }
        };
        if let Err(why) = self.write_irte(unit, index, Some(entry), frames) {
            self.pin_irtes
                .retain(|p| (p.0, p.1) != (ioapic_id, routing.pin));
            self.release_pin_irte(unit, index, routing.pin, frames);
            return Err(why);
        }
        Ok(remappable_ioapic_entry(
            index,
            routing.vector,
            routing.level,
            routing.active_low,
            false,
        ))
    }

    /// Clears every pin IRTE (the guest that routed the pins ended; its pins are masked).
    pub fn release_ioapic_pins(&mut self, frames: &mut impl FrameAlloc) {
        for (_, pin, unit, index) in core::mem::take(&mut self.pin_irtes) {
            self.release_pin_irte(unit, index, pin, frames);
        }
    }

    fn release_pin_irte(&mut self, unit: usize, index: u16, pin: u8, frames: &mut impl FrameAlloc) {
        if let Err(e) = self.write_irte(unit, index, None, frames) {
            log::error!("vtd: clearing IOAPIC pin {pin}'s IRTE: {e}");
        }
        if let Some(used) = self.units[unit].irte_in_use.get_mut(usize::from(index)) {
            *used = false;
        }
    }

    /// Writes (or clears) IRTE `index` on `unit` and invalidates the unit's cached copy.
    fn write_irte(
        &mut self,
        unit: usize,
        index: u16,
        entry: Option<Irte>,
        frames: &mut impl FrameAlloc,
    ) -> Result<(), String> {
        let u = &mut self.units[unit];
        let table = u
            .interrupts
            .as_mut()
            .ok_or_else(|| format!("interrupt remapping is off on VT-d unit {unit}"))?;
        table
            .set(frames, index, entry.unwrap_or(Irte::NOT_PRESENT))
            .map_err(|e| format!("IRTE {index}: {e}"))?;
        u.hw.interrupt_entry_changed(frames, index)
            .map_err(|e| format!("VT-d unit {unit}: invalidating IRTE {index}: {e}"))
    }

    /// Clears IRTE `index` of `bdf` on `unit` and hands the index back.
    fn release_irte(&mut self, unit: usize, index: u16, frames: &mut impl FrameAlloc, bdf: Bdf) {
        if let Err(e) = self.write_irte(unit, index, None, frames) {
            log::error!("vtd: clearing {bdf}'s IRTE: {e}");
        }
        if let Some(used) = self.units[unit].irte_in_use.get_mut(usize::from(index)) {
            *used = false;
        }
    }

    /// The IRTE the guest's device `bdf` uses, as the unit reads it: (unit, index, entry).
    pub fn guest_irte(
        &self,
        handle: DomainHandle,
        bdf: Bdf,
        frames: &mut impl FrameAlloc,
    ) -> Option<(usize, u16, Irte)> {
        let guest = self.guests.get(handle.0)?.as_ref()?;
        let &(_, unit, index) = guest.msis.iter().find(|m| m.0 == (bdf, None))?;
        let entry = self.units[unit].interrupts.as_ref()?.get(frames, index)?;
        Some((unit, index, entry))
    }

    /// The IRTE MSI-X entry `entry` of the guest's device `bdf` uses: (unit, index, entry).
    pub fn guest_msix_irte(
        &self,
        handle: DomainHandle,
        bdf: Bdf,
        entry: u16,
        frames: &mut impl FrameAlloc,
    ) -> Option<(usize, u16, Irte)> {
        let guest = self.guests.get(handle.0)?.as_ref()?;
        let &(_, unit, index) = guest.msis.iter().find(|m| m.0 == (bdf, Some(entry)))?;
        let irte = self.units[unit].interrupts.as_ref()?.get(frames, index)?;
        Some((unit, index, irte))
    }

    /// IRTE `index` of `unit` as it stands (tests and the self-test look behind a cleared entry).
    pub fn irte_at(&self, unit: usize, index: u16, frames: &mut impl FrameAlloc) -> Option<Irte> {
        self.units
            .get(unit)?
            .interrupts
            .as_ref()?
            .get(frames, index)
    }

    /// Clears a context entry and invalidates what the unit cached of it.
    fn remove_entry(&mut self, slot: ContextSlot, frames: &mut impl FrameAlloc) -> bool {
        let unit = &mut self.units[slot.unit];
        let Some(old) = unit.root.remove(frames, slot.requester) else {
            return false;
        };
        if let Err(e) = unit
            .hw
            .context_entry_removed(frames, slot.requester, old.domain())
        {
            log::error!(
                "vtd: unit {}: invalidating after removing {}: {e}",
                slot.unit,
                slot.requester
            );
        }
        true
    }

    /// Reads and clears every unit's fault records: each is logged (`vtd fault: bdf=... address=...
    /// reason=...`) and a device that faulted on DMA is quarantined (context entry cleared).
    pub fn drain_faults(&mut self, frames: &mut impl FrameAlloc) -> Vec<Fault> {
        let mut all = Vec::new();
        for u in 0..self.units.len() {
            let drained = self.units[u].hw.drain_faults();
            if drained.overflowed {
                log::warn!("vtd: unit {u}: fault records overflowed; some faults were lost");
            }
            for fault in drained.faults {
                log::warn!("{fault}");
                if matches!(fault.kind, FaultKind::Dma(_)) {
                    self.quarantine(u, fault.source, frames);
                }
                all.push(fault);
            }
        }
        all
    }

    fn quarantine(&mut self, unit: usize, requester: SourceId, frames: &mut impl FrameAlloc) {
        let slot = ContextSlot { unit, requester };
        let owner = self
            .guests
            .iter()
            .flatten()
            .find(|g| g.slots.contains(&slot))
            .map(|g| g.name.clone());
        if self.remove_entry(slot, frames) {
            match owner {
                Some(guest) => log::warn!(
                    "vtd: quarantined {requester} (guest {guest}'s device): context entry cleared, its DMA is blocked"
                ),
                None => log::warn!(
                    "vtd: quarantined {requester}: context entry cleared, its DMA is blocked"
                ),
            }
        }
    }

    /// The domain `requester` is in on `unit`, if it has a present context entry.
    pub fn context_domain(
        &self,
        unit: usize,
        requester: SourceId,
        frames: &mut impl FrameAlloc,
    ) -> Option<DomainId> {
        self.units
            .get(unit)?
            .root
            .context_entry(frames, requester)
            .filter(ContextEntry::present)
            .map(|e| e.domain())
    }

    /// Where the guest's domain sends a DMA to `gpa` on `unit`, as the hardware walk finds it.
    pub fn translate(
        &self,
        handle: DomainHandle,
        unit: usize,
        gpa: u64,
        frames: &mut impl FrameAlloc,
    ) -> Option<u64> {
        let guest = self.guests.get(handle.0)?.as_ref()?;
        let (_, tables) = guest.tables.iter().find(|(u, _)| *u == unit)?;
        tables.translate(frames, gpa).map(|t| t.hpa)
    }

    /// The guest's domain id.
    pub fn domain_id(&self, handle: DomainHandle) -> Option<DomainId> {
        Some(self.guests.get(handle.0)?.as_ref()?.id)
    }

    /// Sends every unit's fault event interrupt to `vector` at the CPU with APIC ID `apic_id`, so a
    /// fault is drained (logged, its device quarantined) when it happens rather than when the
    /// guest ends. `None` masks the interrupt again; faults are still recorded.
    pub fn route_fault_events(&mut self, target: Option<(u8, u32)>) -> Result<(), String> {
        self.fault_target = target;
        self.send_fault_events(target)
    }

    /// Masks the fault event interrupt while a guest runs on the CPU it targets: raised there, it
    /// would be delivered through the guest's IDT (`vmm::host_clock`). Faults are still recorded and
    /// the runner drains them at each host tick; [`Self::resume_fault_events`] turns it back on.
    pub fn pause_fault_events(&mut self) {
        let _ = self.send_fault_events(None);
    }

    /// Sends fault events where [`Self::route_fault_events`] last said (nowhere if it said none).
    pub fn resume_fault_events(&mut self) -> Result<(), String> {
        self.send_fault_events(self.fault_target)
    }

    fn send_fault_events(&mut self, target: Option<(u8, u32)>) -> Result<(), String> {
        for (u, unit) in self.units.iter_mut().enumerate() {
            match target {
                Some((vector, apic_id)) => {
                    let eim = crate::caps::vtd::VtdEcap(unit.hw.ecap()).eim();
                    let message = FaultEventMessage::fixed(vector, apic_id, eim)
                        .map_err(|e| format!("unit {u}'s fault event: {e}"))?;
                    unit.hw.enable_fault_events(message);
                }
                None => unit.hw.mask_fault_events(),
            }
        }
        Ok(())
    }

    /// Turns translation off and masks fault events on every unit (before power-off: firmware
    /// runtime services may expect the machine as they left it).
    pub fn shut_down(&mut self) {
        for (u, unit) in self.units.iter_mut().enumerate() {
            unit.hw.mask_fault_events();
            if let Err(e) = unit.hw.disable_translation() {
                log::warn!("vtd: unit {u}: disabling translation: {e}");
            }
        }
    }
}

impl<M: VtdMmio> Unit<M> {
    fn hw_domains(&self) -> u32 {
        crate::caps::vtd::VtdCap(self.hw.cap()).domains()
    }
}

/// A compatibility-format entry, where no unit remaps the IOAPIC's interrupts.
fn compatibility_pin_entry(
    routing: PhysicalRouting,
    (apic_id, _): (u32, bool),
) -> Result<u64, String> {
    let apic_id = u8::try_from(apic_id).map_err(|_| {
        format!("APIC ID {apic_id} does not fit a compatibility-format IOAPIC entry (8 bits)")
    })?;
    Ok(routing.compatibility_entry(apic_id))
}

/// Attaches a guest's devices when there are any to confine. `Ok(None)`: nothing to attach (no
/// devices, or assignment without an IOMMU under `unsafe_no_iommu`, planned with no unit). A
/// device behind a unit while remapping is not up is an error: the guest must not run.
pub fn prepare_guest_dma<M: VtdMmio>(
    dma: Option<&mut DmaRemapping<M>>,
    name: &str,
    ram: (u64, u64),
    devices: &[AssignedDevice],
    frames: &mut impl FrameAlloc,
) -> Result<Option<DomainHandle>, String> {
    if devices.iter().all(|d| d.unit.is_none()) {
        return Ok(None);
    }
    match dma {
        Some(dma) => dma.attach_guest(name, ram, devices, frames).map(Some),
        None => Err(String::from(
            "its devices need DMA remapping, which is not up (see the log)",
        )),
    }
}

/// Empty second-level tables for addresses below `top` on `unit`.
fn new_tables<M: VtdMmio>(
    unit: &RemappingUnit<M>,
    top: u64,
    frames: &mut impl FrameAlloc,
) -> Result<DomainTables, String> {
    let bits = (64 - top.saturating_sub(1).leading_zeros()).max(12) as u8;
    let width: AddressWidth = unit.address_width_for(bits).ok_or_else(|| {
        format!("the VT-d unit supports no address width covering {bits} bits (CAP.SAGAW/MGAW)")
    })?;
    DomainTables::new(frames, width).map_err(|e| format!("VT-d tables: {e:?}"))
}

/// `leaf entries: N (a x 1 GiB, b x 2 MiB, c x 4 KiB), table frames: T` (T counts the root).
fn leaf_report(stats: &MapStats) -> String {
    format!(
        "leaf entries: {} ({} x 1 GiB, {} x 2 MiB, {} x 4 KiB), table frames: {}",
        stats.leaves(),
        stats.pages_1g,
        stats.pages_2m,
        stats.pages_4k,
        stats.tables + 1
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::caps::vtd::{VtdCap, VtdEcap, VtdVersion};
    use crate::memory::test_frames::TestFrames;
    use crate::pci::{Capabilities, ClassCode, Mechanism, PciFunction};
    use crate::platform::dmar::{DeviceScope, Drhd, DrhdFlags, PathEntry};
    use crate::vtd::regs::fake::FakeVtd;
    use crate::vtd::regs::Reg64;
    use alloc::vec;

    /// QEMU 7.2 intel-iommu,intremap=on (shared/emulators.md): SAGAW 39-bit only, SLLPS 2 MiB +
    /// 1 GiB, QI, IR, no CM.
    const QEMU_CAP: u64 = 0x00d2_008c_2226_0206;
    const QEMU_ECAP: u64 = 0xf0_0f4a;
    const CM: u64 = 1 << 7;
    const RAM_BASE: u64 = 0x4000_0000;

    fn bdf(text: &str) -> Bdf {
        text.parse().unwrap()
    }

    fn function(at: &str) -> PciFunction {
        PciFunction {
            bdf: bdf(at),
            vendor_id: 0x1234,
            device_id: 0x11e8,
            class: ClassCode {
                base: 0,
                sub: 0xff,
                prog_if: 0,
            },
            revision: 0,
            header_type: 0,
            interrupt_pin: 1,
            interrupt_line: 0,
            bars: Vec::new(),
            capabilities: Capabilities::default(),
            bridge: None,
            upstream_bridge: None,
        }
    }

    fn topology() -> PciTopology {
        PciTopology {
            mechanism: Mechanism::Ecam,
            functions: vec![
                function("00:03.0"),
                function("00:08.0"),
                function("00:1d.0"),
            ],
        }
    }

    fn iommu(cap: u64) -> IommuUnit {
        IommuUnit {
            drhd: Drhd {
                flags: DrhdFlags::INCLUDE_PCI_ALL,
                size: 0,
                segment: 0,
                register_base: 0xfed9_0000,
                // QEMU's: IOAPIC 0 at ff:00.0 (its interrupts carry requester ID 0xff00).
                scopes: vec![DeviceScope {
                    kind: ScopeKind::IoApic,
                    flags: 0,
                    enumeration_id: 0,
                    start_bus: 0xff,
                    path: vec![PathEntry {
                        device: 0,
                        function: 0,
                    }],
                }],
            },
            version: VtdVersion(0x10),
            cap: VtdCap(cap),
            ecap: VtdEcap(QEMU_ECAP),
        }
    }

    fn usb_rmrr() -> Rmrr {
        Rmrr {
            segment: 0,
            base: 0x7f00_0000,
            limit: 0x7f0f_ffff,
            scopes: vec![DeviceScope {
                kind: ScopeKind::PciEndpoint,
                flags: 0,
                enumeration_id: 0,
                start_bus: 0,
                path: vec![PathEntry {
                    device: 0x1d,
                    function: 0,
                }],
            }],
        }
    }

    fn up(cap: u64, rmrrs: &[Rmrr], assigned: &[Bdf], f: &mut TestFrames) -> DmaRemapping<FakeVtd> {
        let mut dma = DmaRemapping::bring_up(
            &[iommu(cap)],
            rmrrs,
            &topology(),
            assigned,
            BringUpOptions {
                interrupt_remapping: true,
            },
            f,
            |u| FakeVtd::new(u.cap.0, u.ecap.0),
        )
        .unwrap();
        for unit in &mut dma.units {
            unit.hw.spin_limit = 100;
        }
        dma
    }

    fn edu_a() -> AssignedDevice {
        AssignedDevice {
            bdf: bdf("00:03.0"),
            requester: bdf("00:03.0"),
            unit: Some(0),
        }
    }

    const EDU_A: SourceId = SourceId::new(0, 3, 0);
    const EDU_B: SourceId = SourceId::new(0, 8, 0);
    const USB: SourceId = SourceId::new(0, 0x1d, 0);

    #[test]
    fn bring_up_blocks_every_device_and_enables_translation_and_ir() {
        let mut f = TestFrames::default();
        let mut dma = up(QEMU_CAP, &[], &[], &mut f);
        for sid in [EDU_A, EDU_B, USB] {
            assert_eq!(dma.context_domain(0, sid, &mut f), None);
        }
        let hw = dma.units[0].hw.mmio();
        assert!(hw.violations.is_empty(), "{:?}", hw.violations);
        let gsts = hw.gsts();
        use crate::vtd::regs::Gsts;
        assert!(gsts.contains(Gsts::TES | Gsts::IRES | Gsts::QIES));
        assert!(
            !gsts.contains(Gsts::CFIS),
            "compatibility format must be blocked"
        );
        // The root table latched by the unit is ours and empty.
        let root = hw.latched_root.unwrap();
        assert!(f.table(root).iter().all(|&e| e == 0));
    }

    #[test]
    fn guest_domain_maps_exactly_its_ram_with_large_pages() {
        let mut f = TestFrames::default();
        let mut dma = up(QEMU_CAP, &[], &[], &mut f);
        // 1 GiB + 6 MiB at a 1 GiB-aligned base: one 1 GiB leaf and three 2 MiB leaves.
        let len = (1 << 30) + (6 << 20);
        let h = dma
            .attach_guest("g", (RAM_BASE, len), &[edu_a()], &mut f)
            .unwrap();
        assert_eq!(dma.domain_id(h), Some(0), "no CM: domain ids start at 0");
        let tables = &dma.guests[0].as_ref().unwrap().tables[0].1;
        assert_eq!(tables.address_width(), AddressWidth::Bits39Level3);
        assert_eq!(dma.translate(h, 0, 0, &mut f), Some(RAM_BASE));
        assert_eq!(
            dma.translate(h, 0, 0x12_3456, &mut f),
            Some(RAM_BASE + 0x12_3456)
        );
        assert_eq!(
            dma.translate(h, 0, len - 1, &mut f),
            Some(RAM_BASE + len - 1)
        );
        assert_eq!(dma.translate(h, 0, len, &mut f), None);
        assert_eq!(dma.translate(h, 0, 2 << 30, &mut f), None);
        // Leaf level: 1 GiB page at PDPE 0 of the 3-level tables.
        let tables = &dma.guests[0].as_ref().unwrap().tables[0].1;
        let l3 = f.table(tables.root())[0];
        assert_eq!(l3 & 0x83, 0x83, "PS|W|R on the 1 GiB leaf");
        assert_eq!(l3 & !0xFFF, RAM_BASE);
        // Only the edu has a context entry, pointing at the domain's tables (VT-d 9.3).
        assert_eq!(dma.context_domain(0, EDU_A, &mut f), Some(0));
        assert_eq!(dma.context_domain(0, EDU_B, &mut f), None);
        let ctx = dma.units[0].root.context_entry(&mut f, EDU_A).unwrap();
        assert_eq!(ctx.second_level_root(), tables.root());
    }

    #[test]
    fn a_one_gib_guest_needs_one_leaf_where_the_unit_has_1g_pages() {
        // QEMU's SLLPS offers 2 MiB and 1 GiB: a 1 GiB-aligned 1 GiB guest is one PDPE in the
        // 3-level root; without large pages it takes 262144 PTEs in 512 + 1 + 1 tables.
        let mut f = TestFrames::default();
        let mut tables = DomainTables::new(&mut f, AddressWidth::Bits39Level3).unwrap();
        let sizes = RemappingUnit::new(FakeVtd::new(QEMU_CAP, QEMU_ECAP)).page_sizes();
        let stats = tables
            .map(
                &mut f,
                0,
                RAM_BASE,
                1 << 30,
                Access::READ | Access::WRITE,
                sizes,
            )
            .unwrap();
        assert_eq!(
            leaf_report(&stats),
            "leaf entries: 1 (1 x 1 GiB, 0 x 2 MiB, 0 x 4 KiB), table frames: 1"
        );
        let mut small = DomainTables::new(&mut f, AddressWidth::Bits39Level3).unwrap();
        let only_4k = crate::vtd::second_level::PageSizes::ONLY_4K;
        let stats = small
            .map(&mut f, 0, RAM_BASE, 1 << 30, Access::READ, only_4k)
            .unwrap();
        assert_eq!(
            leaf_report(&stats),
            "leaf entries: 262144 (0 x 1 GiB, 0 x 2 MiB, 262144 x 4 KiB), table frames: 514"
        );
    }

    #[test]
    fn caching_mode_skips_domain_zero_and_invalidates_the_new_entry() {
        let mut f = TestFrames::default();
        let mut dma = up(QEMU_CAP | CM, &[], &[], &mut f);
        dma.units[0].hw.mmio().writes.clear();
        let h = dma
            .attach_guest("g", (RAM_BASE, 8 << 20), &[edu_a()], &mut f)
            .unwrap();
        assert_eq!(dma.domain_id(h), Some(1));
        // With QI on, invalidations go through the queue: IQT moved (IOTLB for the mapping, then
        // context cache + IOTLB for the new entry, each followed by a wait descriptor).
        let tail_writes = dma.units[0]
            .hw
            .mmio()
            .writes
            .iter()
            .filter(|w| {
                matches!(
                    w,
                    crate::vtd::regs::fake::Write::W64(Reg64::InvalidationQueueTail, _)
                )
            })
            .count();
        assert_eq!(tail_writes, 3);
    }

    #[test]
    fn two_guests_get_two_domains_and_devices_stay_apart() {
        let mut f = TestFrames::default();
        let mut dma = up(QEMU_CAP, &[], &[], &mut f);
        let a = dma
            .attach_guest("a", (RAM_BASE, 8 << 20), &[edu_a()], &mut f)
            .unwrap();
        let edu_b = AssignedDevice {
            bdf: bdf("00:08.0"),
            requester: bdf("00:08.0"),
            unit: Some(0),
        };
        let b = dma
            .attach_guest("b", (RAM_BASE + (8 << 20), 8 << 20), &[edu_b], &mut f)
            .unwrap();
        assert_ne!(dma.domain_id(a), dma.domain_id(b));
        assert_eq!(dma.translate(b, 0, 0, &mut f), Some(RAM_BASE + (8 << 20)));
        assert_eq!(dma.context_domain(0, EDU_B, &mut f), dma.domain_id(b));
        // The same device cannot be put into a second domain while it is in one.
        assert!(dma
            .attach_guest("c", (0, 2 << 20), &[edu_a()], &mut f)
            .unwrap_err()
            .contains("already in VT-d domain"));
        assert_eq!(dma.context_domain(0, EDU_A, &mut f), dma.domain_id(a));
    }

    #[test]
    fn detach_clears_the_entries_and_invalidates() {
        let mut f = TestFrames::default();
        let mut dma = up(QEMU_CAP, &[], &[], &mut f);
        let h = dma
            .attach_guest("g", (RAM_BASE, 8 << 20), &[edu_a()], &mut f)
            .unwrap();
        let tail_before = dma.units[0]
            .hw
            .mmio()
            .get(Reg64::InvalidationQueueTail.offset());
        dma.detach_guest(h, &mut f);
        assert_eq!(dma.context_domain(0, EDU_A, &mut f), None);
        assert_eq!(dma.domain_id(h), None);
        // Context-cache (device) + IOTLB (domain) invalidation, each with a wait: 4 descriptors.
        assert_eq!(
            dma.units[0]
                .hw
                .mmio()
                .get(Reg64::InvalidationQueueTail.offset())
                - tail_before,
            4 << 4
        );
        dma.detach_guest(h, &mut f); // idempotent
                                     // The device can be attached again (a new domain).
        let again = dma
            .attach_guest("g", (RAM_BASE, 8 << 20), &[edu_a()], &mut f)
            .unwrap();
        assert_eq!(dma.domain_id(again), Some(1));
    }

    #[test]
    fn devices_without_a_unit_are_refused_or_skipped() {
        let mut f = TestFrames::default();
        let mut dma = up(QEMU_CAP, &[], &[], &mut f);
        let uncovered = AssignedDevice {
            unit: None,
            ..edu_a()
        };
        // unsafe_no_iommu planning: no unit at all, nothing to attach.
        assert_eq!(
            prepare_guest_dma::<FakeVtd>(None, "g", (RAM_BASE, 1 << 20), &[uncovered], &mut f),
            Ok(None)
        );
        // A covered device while remapping is not up: the guest must not run.
        assert!(
            prepare_guest_dma::<FakeVtd>(None, "g", (RAM_BASE, 1 << 20), &[edu_a()], &mut f)
                .is_err()
        );
        assert!(dma
            .attach_guest("g", (RAM_BASE, 1 << 20), &[edu_a(), uncovered], &mut f)
            .is_err());
        assert_eq!(dma.context_domain(0, EDU_A, &mut f), None, "rolled back");
        let h = prepare_guest_dma(Some(&mut dma), "g", (RAM_BASE, 1 << 20), &[edu_a()], &mut f)
            .unwrap()
            .unwrap();
        assert_eq!(
            dma.translate(h, 0, 0xFFFFF, &mut f),
            Some(RAM_BASE + 0xFFFFF)
        );
    }

    #[test]
    fn rmrr_devices_get_exactly_their_ranges_identity_mapped() {
        let mut f = TestFrames::default();
        let mut dma = up(QEMU_CAP, &[usb_rmrr()], &[], &mut f);
        let id = dma
            .context_domain(0, USB, &mut f)
            .expect("RMRR device has a context entry");
        let ctx = dma.units[0].root.context_entry(&mut f, USB).unwrap();
        assert_eq!(ctx.domain(), id);
        // Walk the installed tables (VT-d 3.7, 9.8): 0x7f000000..0x7f0fffff -> itself, nothing
        // around it.
        let root = ctx.second_level_root();
        let walk = |f: &mut TestFrames, iova: u64| -> Option<u64> {
            let mut table = root;
            for level in [3u32, 2, 1] {
                let shift = 12 + 9 * (level - 1);
                let e = f.table(table)[((iova >> shift) & 0x1FF) as usize];
                if e & 3 == 0 {
                    return None;
                }
                if level == 1 || e & 0x80 != 0 {
                    let size = 1u64 << shift;
                    return Some((e & 0x000F_FFFF_FFFF_F000 & !(size - 1)) | (iova & (size - 1)));
                }
                table = e & 0x000F_FFFF_FFFF_F000;
            }
            None
        };
        assert_eq!(walk(&mut f, 0x7f00_0000), Some(0x7f00_0000));
        assert_eq!(walk(&mut f, 0x7f0f_fff8), Some(0x7f0f_fff8));
        assert_eq!(walk(&mut f, 0x7f10_0000), None);
        assert_eq!(walk(&mut f, 0x7eff_f000), None);
        assert_eq!(walk(&mut f, 0), None);
        // Other devices stay blocked; a guest domain gets the next id.
        assert_eq!(dma.context_domain(0, EDU_A, &mut f), None);
        let h = dma
            .attach_guest("g", (RAM_BASE, 2 << 20), &[edu_a()], &mut f)
            .unwrap();
        assert_eq!(dma.domain_id(h), Some(id + 1));
    }

    #[test]
    fn rmrr_of_an_assigned_device_is_not_honoured() {
        let mut f = TestFrames::default();
        let mut dma = up(QEMU_CAP, &[usb_rmrr()], &[bdf("00:1d.0")], &mut f);
        assert_eq!(dma.context_domain(0, USB, &mut f), None);
        let usb = AssignedDevice {
            bdf: bdf("00:1d.0"),
            requester: bdf("00:1d.0"),
            unit: Some(0),
        };
        let h = dma
            .attach_guest("g", (RAM_BASE, 2 << 20), &[usb], &mut f)
            .unwrap();
        assert_eq!(dma.context_domain(0, USB, &mut f), dma.domain_id(h));
        assert_eq!(dma.translate(h, 0, 0x7f00_0000, &mut f), None);
    }

    fn msi(enabled: bool, vector: u8) -> MsiRequest {
        MsiRequest {
            bdf: bdf("00:03.0"),
            enabled,
            vector,
            destination: 0,
            masked: false,
        }
    }

    /// Interrupt-entry-cache invalidations (selective, VT-d 6.5.2.7: type 0x4, G = 1 at bit 4,
    /// IIDX at 47:32) written into the queue since `from`.
    fn iec_indices(dma: &mut DmaRemapping<FakeVtd>, f: &mut TestFrames, from: u64) -> Vec<u64> {
        let hw = dma.units[0].hw.mmio();
        let tail = hw.get(Reg64::InvalidationQueueTail.offset());
        let iqa = hw.get(Reg64::InvalidationQueueAddress.offset()) & !0xFFF;
        (from / 16..tail / 16)
            .map(|i| f.table(iqa)[2 * i as usize])
            .filter(|d| d & 0xF == 0x4)
            .map(|d| {
                assert_eq!(d & 0x10, 0x10, "index-selective");
                (d >> 32) & 0xFFFF
            })
            .collect()
    }

    #[test]
    fn guest_msi_gets_an_irte_with_its_vector_and_loses_it_when_disabled() {
        let mut f = TestFrames::default();
        let mut dma = up(QEMU_CAP, &[], &[], &mut f);
        let h = dma
            .attach_guest("g", (RAM_BASE, 8 << 20), &[edu_a()], &mut f)
            .unwrap();
        let edu = bdf("00:03.0");
        assert_eq!(dma.remaps_interrupts(h, edu), Some(true));
        let tail = dma.units[0]
            .hw
            .mmio()
            .get(Reg64::InvalidationQueueTail.offset());
        // Vector 0x41 to host xAPIC 2: the first free index, 0.
        let m = dma
            .route_guest_msi(h, &msi(true, 0x41), edu, (2, false), &mut f)
            .unwrap()
            .unwrap();
        // VT-d 5.1.5.2: handle 0 -> 0xFEE00000 | format bit 4; data 0 (no subhandle).
        assert_eq!((m.address, m.data), (0xFEE0_0010, 0));
        // VT-d 9.10: lo = P | V 0x41 << 16 | DST (2 << 8) << 32; hi = SVT 01 << 18 | SID 0x18.
        let (unit, index, e) = dma.guest_irte(h, edu, &mut f).unwrap();
        assert_eq!((unit, index), (0, 0));
        assert_eq!((e.lo, e.hi), (0x0000_0200_0041_0001, 0x4_0018));
        assert_eq!(iec_indices(&mut dma, &mut f, tail), [0]);
        // A new vector reuses the index: cleared and invalidated, then written and invalidated.
        let tail = dma.units[0]
            .hw
            .mmio()
            .get(Reg64::InvalidationQueueTail.offset());
        let again = dma
            .route_guest_msi(h, &msi(true, 0x42), edu, (2, false), &mut f)
            .unwrap();
        assert_eq!(again, Some(m));
        assert_eq!(dma.irte_at(0, 0, &mut f).unwrap().vector(), 0x42);
        assert_eq!(iec_indices(&mut dma, &mut f, tail), [0, 0]);
        // Disabled: the entry is cleared (and invalidated); the index is free again.
        assert_eq!(
            dma.route_guest_msi(h, &msi(false, 0x42), edu, (2, false), &mut f),
            Ok(None)
        );
        assert!(!dma.irte_at(0, 0, &mut f).unwrap().present());
        assert_eq!(dma.guest_irte(h, edu, &mut f), None);
        assert!(!dma.units[0].irte_in_use[0]);
        // Masked counts as disabled; a host vector is refused and leaves no entry.
        let mut masked = msi(true, 0x41);
        masked.masked = true;
        assert_eq!(
            dma.route_guest_msi(h, &masked, edu, (2, false), &mut f),
            Ok(None)
        );
        assert!(dma
            .route_guest_msi(h, &msi(true, 0xF5), edu, (2, false), &mut f)
            .is_err());
        assert_eq!(dma.guest_irte(h, edu, &mut f), None);
        // No EIM on QEMU's unit: an APIC ID above 255 cannot be expressed.
        assert!(dma
            .route_guest_msi(h, &msi(true, 0x41), edu, (0x100, true), &mut f)
            .unwrap_err()
            .contains("EIM"));
        // A device outside the guest's domain gets nothing.
        assert!(dma
            .route_guest_msi(h, &msi(true, 0x41), bdf("00:08.0"), (2, false), &mut f)
            .is_err());
    }

    #[test]
    fn detaching_the_guest_clears_its_irtes() {
        let mut f = TestFrames::default();
        let mut dma = up(QEMU_CAP, &[], &[], &mut f);
        let h = dma
            .attach_guest("g", (RAM_BASE, 8 << 20), &[edu_a()], &mut f)
            .unwrap();
        let edu = bdf("00:03.0");
        dma.route_guest_msi(h, &msi(true, 0x41), edu, (0, true), &mut f)
            .unwrap();
        assert!(dma.irte_at(0, 0, &mut f).unwrap().present());
        dma.detach_guest(h, &mut f);
        assert!(!dma.irte_at(0, 0, &mut f).unwrap().present());
        assert!(!dma.units[0].irte_in_use[0]);
    }

    #[test]
    fn eim_units_get_x2apic_destinations() {
        // ECAP.EIM is bit 4 (VT-d 11.4.3): the table is extended, DST holds the 32-bit ID.
        let mut f = TestFrames::default();
        let mut unit = iommu(QEMU_CAP);
        unit.ecap = VtdEcap(QEMU_ECAP | 1 << 4);
        let mut dma = DmaRemapping::bring_up(
            &[unit],
            &[],
            &topology(),
            &[],
            BringUpOptions {
                interrupt_remapping: true,
            },
            &mut f,
            |u| FakeVtd::new(u.cap.0, u.ecap.0),
        )
        .unwrap();
        let h = dma
            .attach_guest("g", (RAM_BASE, 8 << 20), &[edu_a()], &mut f)
            .unwrap();
        let edu = bdf("00:03.0");
        dma.route_guest_msi(h, &msi(true, 0x41), edu, (0x1234, true), &mut f)
            .unwrap();
        let (_, _, e) = dma.guest_irte(h, edu, &mut f).unwrap();
        assert_eq!(e.lo, 0x0000_1234_0041_0001);
        assert!(dma
            .route_guest_msi(h, &msi(true, 0x41), edu, (1, false), &mut f)
            .unwrap_err()
            .contains("xAPIC mode"));
    }

    fn pin3(vector: u8, masked: bool, level: bool) -> PhysicalRouting {
        PhysicalRouting {
            pin: 3,
            vector,
            masked,
            level,
            active_low: false,
        }
    }

    #[test]
    fn ioapic_pins_get_irtes_checked_against_the_ioapic_and_remappable_entries() {
        let mut f = TestFrames::default();
        let mut dma = up(QEMU_CAP, &[], &[], &mut f);
        let rte = dma
            .ioapic_pin_entry(0, pin3(0x40, false, true), (2, false), &mut f)
            .unwrap();
        // IRTE 0 in remappable format (bit 48), level (bit 15), vector 0x40 (VT-d 5.1.5.1).
        assert_eq!(rte, 0x0001_0000_0000_8040);
        // IRTE 0: P | TM (bit 4) | V 0x40 << 16 | DST xAPIC 2 in bits 47:40; SVT 01 (bits 83:82)
        // with SID 0xff00, the IOAPIC's requester ID from DMAR (VT-d 9.10).
        let e = dma.irte_at(0, 0, &mut f).unwrap();
        assert_eq!((e.lo, e.hi), (0x0000_0200_0040_0011, 1 << 18 | 0xff00));
        // Re-routing reuses the entry; masking hands it back.
        let again = dma
            .ioapic_pin_entry(0, pin3(0x41, false, false), (2, false), &mut f)
            .unwrap();
        assert_eq!(again, 0x0001_0000_0000_0041);
        let masked = dma
            .ioapic_pin_entry(0, pin3(0x41, true, false), (2, false), &mut f)
            .unwrap();
        assert_eq!(masked, 1 << 16);
        assert!(!dma.irte_at(0, 0, &mut f).unwrap().present());
        // An IOAPIC DMAR does not list cannot be remapped: refused, not sent in compatibility format.
        assert!(dma
            .ioapic_pin_entry(7, pin3(0x40, false, false), (2, false), &mut f)
            .unwrap_err()
            .contains("IOAPIC 7 is in no VT-d unit's device scope"));
        dma.ioapic_pin_entry(0, pin3(0x42, false, false), (2, false), &mut f)
            .unwrap();
        dma.release_ioapic_pins(&mut f);
        assert!(!dma.irte_at(0, 0, &mut f).unwrap().present());
    }

    #[test]
    fn without_interrupt_remapping_pins_use_compatibility_format() {
        let mut f = TestFrames::default();
        let mut dma = DmaRemapping::bring_up(
            &[iommu(QEMU_CAP)],
            &[],
            &topology(),
            &[],
            BringUpOptions {
                interrupt_remapping: false,
            },
            &mut f,
            |u| FakeVtd::new(u.cap.0, u.ecap.0),
        )
        .unwrap();
        let rte = dma
            .ioapic_pin_entry(0, pin3(0x40, false, true), (2, false), &mut f)
            .unwrap();
        assert_eq!(rte, 0x0200_0000_0000_8040);
    }

    #[test]
    fn without_interrupt_remapping_no_irte_is_made() {
        let mut f = TestFrames::default();
        let mut dma = DmaRemapping::bring_up(
            &[iommu(QEMU_CAP)],
            &[],
            &topology(),
            &[],
            BringUpOptions {
                interrupt_remapping: false,
            },
            &mut f,
            |u| FakeVtd::new(u.cap.0, u.ecap.0),
        )
        .unwrap();
        let h = dma
            .attach_guest("g", (RAM_BASE, 8 << 20), &[edu_a()], &mut f)
            .unwrap();
        let edu = bdf("00:03.0");
        assert_eq!(dma.remaps_interrupts(h, edu), Some(false));
        assert!(dma
            .route_guest_msi(h, &msi(true, 0x41), edu, (0, true), &mut f)
            .unwrap_err()
            .contains("interrupt remapping is off"));
    }

    #[test]
    fn faults_are_returned_and_the_device_quarantined() {
        let mut f = TestFrames::default();
        let mut dma = up(QEMU_CAP, &[], &[], &mut f);
        dma.attach_guest("g", (RAM_BASE, 8 << 20), &[edu_a()], &mut f)
            .unwrap();
        // A write fault by 00:03.0 at 0x80_0000, reason 0x5 (VT-d 9.9 fault record: hi bit 127 F,
        // FR at 103:96, SID at 79:64; lo = the page address).
        dma.units[0]
            .hw
            .mmio()
            .inject_fault(0, 0x80_0000, 0x5 << 32 | 0x18);
        let faults = dma.drain_faults(&mut f);
        assert_eq!(faults.len(), 1);
        assert_eq!((faults[0].source, faults[0].address), (EDU_A, 0x80_0000));
        assert_eq!(dma.context_domain(0, EDU_A, &mut f), None, "quarantined");
        assert!(dma.drain_faults(&mut f).is_empty(), "records cleared");
    }

    #[test]
    fn fault_events_go_to_the_host_vector_and_are_masked_at_shut_down() {
        use crate::vtd::regs::Reg32;
        let mut f = TestFrames::default();
        let mut dma = up(QEMU_CAP, &[], &[], &mut f);
        dma.route_fault_events(Some((0xEE, 2))).unwrap();
        let hw = dma.units[0].hw.mmio();
        assert_eq!(hw.get(Reg32::FaultEventData.offset()), 0xEE);
        assert_eq!(hw.get(Reg32::FaultEventAddress.offset()), 0xFEE0_2000);
        assert_eq!(hw.get(Reg32::FaultEventControl.offset()), 0, "unmasked");
        // QEMU's unit has no EIM: an x2APIC-only destination is refused, not truncated.
        assert!(dma.route_fault_events(Some((0xEE, 0x100))).is_err());
        dma.shut_down();
        let hw = dma.units[0].hw.mmio();
        assert_eq!(hw.get(Reg32::FaultEventControl.offset()), 1 << 31);
    }

    #[test]
    fn fault_events_pause_while_a_guest_runs_and_resume_to_the_same_target() {
        use crate::vtd::regs::Reg32;
        let mut f = TestFrames::default();
        let mut dma = up(QEMU_CAP, &[], &[], &mut f);
        dma.route_fault_events(Some((0xFD, 2))).unwrap();
        dma.pause_fault_events();
        let control = |dma: &mut DmaRemapping<FakeVtd>| {
            dma.units[0]
                .hw
                .mmio()
                .get(Reg32::FaultEventControl.offset())
        };
        assert_eq!(control(&mut dma), 1 << 31, "masked (FECTL.IM)");
        dma.resume_fault_events().unwrap();
        assert_eq!(control(&mut dma), 0, "unmasked again");
        assert_eq!(
            dma.units[0].hw.mmio().get(Reg32::FaultEventData.offset()),
            0xFD
        );
        // Never routed: resuming leaves them masked.
        dma.route_fault_events(None).unwrap();
        dma.resume_fault_events().unwrap();
        assert_eq!(control(&mut dma), 1 << 31);
    }
}
