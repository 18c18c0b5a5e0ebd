//! Interrupt remapping: the IRTEs that carry a guest's MSIs, MSI-X entries and IOAPIC pins (VT-d
//! 5.1, 9.10), each source's own entry handed out from the unit's table and given back when the
//! source is turned off, and the interrupt-entry cache invalidated after every change.

use super::{CpuTarget, DmaRemapping, DomainHandle, InterruptRequest, InterruptSource};
use super::{PinEntry, PinRequest};
use crate::memory::FrameAlloc;
use crate::pci::Bdf;
use crate::vtd::irte::{
    remappable_ioapic_entry, remappable_msi, Destination, Irte, MsiMessage, RemappedInterrupt,
};
use crate::vtd::regs::VtdMmio;
use crate::vtd::SourceId;
use alloc::format;
use alloc::string::String;
use core::fmt;

impl<M: VtdMmio> DmaRemapping<M> {
    /// Turns a guest device's interrupt `req.source` into an IRTE on the unit translating the
    /// device (VT-d 5.1.4, 9.10): fixed delivery, physical destination `req.cpu` (x2APIC format
    /// where the table is extended (ECAP.EIM) and the host in x2APIC mode, else xAPIC), the
    /// vector asked for, accepted only from `req.requester`. Each source's one IRTE is reused on
    /// every change. Returns the remappable-format message to program into the device (VT-d
    /// 5.1.5.2); `None` when the request has no vector (the interrupt is off), which clears the
    /// IRTE. Either way the interrupt-entry cache is invalidated. On error the source's IRTE is
    /// cleared too.
    pub fn remap_interrupt(
        &mut self,
        handle: DomainHandle,
        req: &InterruptRequest,
        frames: &mut impl FrameAlloc,
    ) -> Result<Option<MsiMessage>, String> {
        let bdf = req.source.bdf();
        let unit = self
            .guest_unit(handle, req.requester)
            .ok_or_else(|| format!("{bdf} is not in the guest's DMA domain"))?;
        let built = self.irte_for(unit, req);
        let existing = self.guests[handle.0].as_ref().and_then(|g| {
            let at = g.msis.iter().position(|m| m.0 == req.source)?;
            Some((at, g.msis[at].2))
        });
        let entry = match built {
            Ok(Some(entry)) => entry,
            off_or_error => {
                if let Some((at, _)) = existing {
                    if let Some(guest) = self.guests[handle.0].as_mut() {
                        let (source, u, index) = guest.msis.swap_remove(at);
                        self.release_irte(u, index, frames, source.bdf());
                    }
                }
                return off_or_error.map(|_| None);
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
                    guest.msis.push((req.source, unit, index));
                }
                index
            }
        };
        if let Err(why) = self.write_irte(unit, index, Some(entry), frames) {
            if let Some(guest) = self.guests[handle.0].as_mut() {
                guest.msis.retain(|m| m.0 != req.source);
            }
            self.release_irte(unit, index, frames, bdf);
            return Err(why);
        }
        Ok(Some(remappable_msi(index, None)))
    }

    /// The IRTE that delivers `req` on `unit`; `Ok(None)` when it is off.
    fn irte_for(&self, unit: usize, req: &InterruptRequest) -> Result<Option<Irte>, String> {
        let Some(vector) = req.vector else {
            return Ok(None);
        };
        let irq = RemappedInterrupt::fixed(
            vector,
            self.irte_destination(unit, req.cpu)?,
            SourceId(req.requester.requester_id()),
        );
        self.irte_entry(unit, &irq).map(Some)
    }

    /// `cpu` as an IRTE destination on `unit`: IRTA.EIME decides how DST is read (VT-d 9.10), as
    /// a 32-bit x2APIC ID or an 8-bit xAPIC ID in bits 15:8.
    fn irte_destination(&self, unit: usize, cpu: CpuTarget) -> Result<Destination, String> {
        let CpuTarget {
            apic_id: host_apic_id,
            x2apic,
        } = cpu;
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

    /// What to program into a guest's IOAPIC pin's physical redirection entry, delivered at
    /// `req.cpu`. Where the unit covering the IOAPIC remaps interrupts the pin gets its own IRTE
    /// (its vector and trigger mode, accepted only from the IOAPIC's requester ID) and the entry
    /// is in remappable format (VT-d 5.1.5.1); compatibility format would be blocked. A masked pin
    /// gives up its IRTE. Refused where units remap interrupts but none covers the IOAPIC.
    pub fn ioapic_pin_entry(
        &mut self,
        req: &PinRequest,
        frames: &mut impl FrameAlloc,
    ) -> Result<PinEntry, String> {
        let ioapic_id = req.ioapic_id;
        let covering = self
            .units
            .iter()
            .enumerate()
            .find_map(|(u, unit)| Some((u, unit.ioapics.iter().find(|i| i.0 == ioapic_id)?.1)));
        let remapping_units = self.units.iter().any(|u| u.interrupts.is_some());
        let (unit, source) = match covering {
            Some((u, source)) if self.units[u].interrupts.is_some() => (u, source),
            Some(_) => return Ok(PinEntry::Compatibility),
            None if remapping_units => {
                return Err(format!(
                    "IOAPIC {ioapic_id} is in no VT-d unit's device scope (DMAR), so its interrupts cannot be remapped"
                ))
            }
            None => return Ok(PinEntry::Compatibility),
        };
        let existing = self
            .pin_irtes
            .iter()
            .position(|p| (p.0, p.1) == (ioapic_id, req.pin));
        if req.masked {
            if let Some(at) = existing {
                let (_, pin, u, index) = self.pin_irtes.swap_remove(at);
                self.release_irte(u, index, frames, format_args!("IOAPIC pin {pin}"));
            }
            return Ok(PinEntry::Masked);
        }
        let irq = RemappedInterrupt {
            level_triggered: req.level,
            ..RemappedInterrupt::fixed(req.vector, self.irte_destination(unit, req.cpu)?, source)
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
                self.pin_irtes.push((ioapic_id, req.pin, unit, index));
                index
            }
        };
        if let Err(why) = self.write_irte(unit, index, Some(entry), frames) {
            self.pin_irtes
                .retain(|p| (p.0, p.1) != (ioapic_id, req.pin));
            self.release_irte(unit, index, frames, format_args!("IOAPIC pin {}", req.pin));
            return Err(why);
        }
        Ok(PinEntry::Remapped(remappable_ioapic_entry(
            index,
            req.vector,
            req.level,
            req.active_low,
            false,
        )))
    }

    /// Clears every pin IRTE (the guest that routed the pins ended; its pins are masked).
    pub fn release_ioapic_pins(&mut self, frames: &mut impl FrameAlloc) {
        for (_, pin, unit, index) in core::mem::take(&mut self.pin_irtes) {
            self.release_irte(unit, index, frames, format_args!("IOAPIC pin {pin}"));
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

    /// Clears IRTE `index` on `unit` (`owner`'s: a device, an IOAPIC pin) and hands the index back.
    pub(super) fn release_irte(
        &mut self,
        unit: usize,
        index: u16,
        frames: &mut impl FrameAlloc,
        owner: impl fmt::Display,
    ) {
        if let Err(e) = self.write_irte(unit, index, None, frames) {
            log::error!("vtd: clearing {owner}'s IRTE: {e}");
        }
        if let Some(used) = self.units[unit].irte_in_use.get_mut(usize::from(index)) {
            *used = false;
        }
    }

    /// The IRTE the guest's device `bdf` uses for its MSI, as the unit reads it: (unit, index,
    /// entry).
    pub fn guest_irte(
        &self,
        handle: DomainHandle,
        bdf: Bdf,
        frames: &mut impl FrameAlloc,
    ) -> Option<(usize, u16, Irte)> {
        self.source_irte(handle, InterruptSource::Msi(bdf), frames)
    }

    /// The IRTE MSI-X entry `entry` of the guest's device `bdf` uses: (unit, index, entry).
    pub fn guest_msix_irte(
        &self,
        handle: DomainHandle,
        bdf: Bdf,
        entry: u16,
        frames: &mut impl FrameAlloc,
    ) -> Option<(usize, u16, Irte)> {
        self.source_irte(handle, InterruptSource::Msix { bdf, entry }, frames)
    }

    fn source_irte(
        &self,
        handle: DomainHandle,
        source: InterruptSource,
        frames: &mut impl FrameAlloc,
    ) -> Option<(usize, u16, Irte)> {
        let guest = self.guests.get(handle.0)?.as_ref()?;
        let &(_, unit, index) = guest.msis.iter().find(|m| m.0 == source)?;
        let entry = self.units[unit].interrupts.as_ref()?.get(frames, index)?;
        Some((unit, index, entry))
    }

    /// IRTE `index` of `unit` as it stands (tests and the self-test look behind a cleared entry).
    pub fn irte_at(&self, unit: usize, index: u16, frames: &mut impl FrameAlloc) -> Option<Irte> {
        self.units
            .get(unit)?
            .interrupts
            .as_ref()?
            .get(frames, index)
    }
}
