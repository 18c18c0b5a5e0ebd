//! Fault handling: every unit's fault records drained and logged, a device that faulted on DMA
//! quarantined; the fault event interrupt sent to the host, or masked while a guest runs on the
//! CPU it targets (VT-d 7.3).

use super::{ContextSlot, DmaRemapping};
use crate::memory::FrameAlloc;
use crate::vtd::fault::{Fault, FaultEventMessage, FaultKind};
use crate::vtd::regs::VtdMmio;
use crate::vtd::SourceId;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

impl<M: VtdMmio> DmaRemapping<M> {
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
}
