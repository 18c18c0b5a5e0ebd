//! One DMA domain per guest: second-level tables mapping exactly its RAM on each unit its devices
//! sit behind, and the devices' context entries pointing at them (VT-d 3.4.3, 9.3).

use super::bring_up::new_tables;
use super::{ContextSlot, DmaDevice, DmaRemapping, DomainHandle, GuestDomain};
use crate::memory::FrameAlloc;
use crate::pci::Bdf;
use crate::vtd::context::ContextEntry;
use crate::vtd::regs::VtdMmio;
use crate::vtd::second_level::{Access, MapStats};
use crate::vtd::{DomainId, SourceId};
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

impl<M: VtdMmio> DmaRemapping<M> {
    /// Gives `devices` (all of one guest) a new domain mapping exactly the guest's RAM, GPA
    /// `0..ram_len` to HPA `ram_base..`, with the largest pages each unit allows, then their
    /// context entries. On error nothing stays attached.
    pub fn attach_guest(
        &mut self,
        name: &str,
        (ram_base, ram_len): (u64, u64),
        devices: &[DmaDevice],
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
        devices: &[DmaDevice],
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
        for &(source, unit, index) in &guest.msis {
            self.release_irte(unit, index, frames, source.bdf());
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
    pub(super) fn guest_unit(&self, handle: DomainHandle, requester: Bdf) -> Option<usize> {
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

    /// Clears a context entry and invalidates what the unit cached of it.
    pub(super) fn remove_entry(&mut self, slot: ContextSlot, frames: &mut impl FrameAlloc) -> bool {
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
}

/// Attaches a guest's devices when there are any to confine. `Ok(None)`: nothing to attach (no
/// devices, or assignment without an IOMMU under `unsafe_no_iommu`, planned with no unit). A
/// device behind a unit while remapping is not up is an error: the guest must not run.
pub fn prepare_guest_dma<M: VtdMmio>(
    dma: Option<&mut DmaRemapping<M>>,
    name: &str,
    ram: (u64, u64),
    devices: &[DmaDevice],
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

/// `leaf entries: N (a x 1 GiB, b x 2 MiB, c x 4 KiB), table frames: T` (T counts the root).
pub(super) fn leaf_report(stats: &MapStats) -> String {
    format!(
        "leaf entries: {} ({} x 1 GiB, {} x 2 MiB, {} x 4 KiB), table frames: {}",
        stats.leaves(),
        stats.pages_1g,
        stats.pages_2m,
        stats.pages_4k,
        stats.tables + 1
    )
}
