//! Bringing the units up and down: root tables, queued invalidation, interrupt remapping,
//! translation on with no device in any domain except the RMRR identity maps (VT-d 8.4).

use super::scope::{covering_unit, resolve_scope};
use super::{BringUpOptions, ContextSlot, DmaRemapping, Iommu, Unit};
use crate::caps::vtd::AddressWidth;
use crate::memory::FrameAlloc;
use crate::pci::{Bdf, PciTopology};
use crate::platform::dmar::{Rmrr, ScopeKind};
use crate::platform::{DmarStatus, IommuUnit, Platform};
use crate::vtd::context::{ContextEntry, RootTable};
use crate::vtd::invalidation::InvalidationQueue;
use crate::vtd::irte::InterruptRemapTable;
use crate::vtd::regs::{MmioRegisters, VtdMmio};
use crate::vtd::second_level::{Access, DomainTables};
use crate::vtd::unit::RemappingUnit;
use crate::vtd::{DomainId, SourceId};
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

/// The RMRRs of the machine's DMAR (none without one).
pub fn platform_rmrrs(platform: &Platform) -> &[Rmrr] {
    match &platform.dmar {
        DmarStatus::Present(dmar) => &dmar.rmrrs,
        _ => &[],
    }
}

impl Iommu<MmioRegisters> {
    /// [`DmaRemapping::bring_up`] on the machine's units, at the register bases DMAR gives, the
    /// service behind its lock. `assigned` are the requester IDs of every device some guest will
    /// be given.
    pub fn bring_up_machine(
        platform: &Platform,
        topology: &PciTopology,
        assigned: &[Bdf],
        options: BringUpOptions,
        frames: &mut impl FrameAlloc,
    ) -> Result<Self, String> {
        let service = DmaRemapping::bring_up(
            &platform.iommus,
            platform_rmrrs(platform),
            topology,
            assigned,
            options,
            frames,
            // SAFETY: the DRHD register bases come from DMAR and are identity-mapped; from here on
            // only this value, inside the lock, drives the units.
            |unit| unsafe { MmioRegisters::new(unit.drhd.register_base) },
        )?;
        Ok(Iommu::new(service))
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
    pub(super) fn allocate_domain(&mut self, units: &[usize]) -> Result<DomainId, String> {
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

/// Empty second-level tables for addresses below `top` on `unit`.
pub(super) fn new_tables<M: VtdMmio>(
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
