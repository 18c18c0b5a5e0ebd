//! The driver for one remapping unit (one DMAR DRHD): bring-up and the invalidations that
//! table changes require, over [`VtdMmio`].

use super::context::RootTable;
use super::fault::{drain_faults, DrainedFaults, FaultEventMessage};
use super::invalidation::{
    context_command, iotlb_command, ContextInvalidation, Descriptor, InterruptEntryInvalidation,
    InvalidationQueue, IotlbInvalidation,
};
use super::irte::InterruptRemapTable;
use super::regs::{rtaddr_legacy, Fectl, Gcmd, Gsts, Reg32, Reg64, VtdMmio, GSTS_ONE_SHOT_MASK};
use super::second_level::{supported_page_sizes, PageSizes, UnmappedPage};
use super::{DomainId, SourceId, VtdError};
use crate::caps::vtd::{AddressWidth, VtdCap, VtdEcap};
use crate::memory::FrameAlloc;
use core::fmt;

/// One remapping unit.
pub struct RemappingUnit<M: VtdMmio> {
    mmio: M,
    cap: VtdCap,
    ecap: VtdEcap,
    queue: Option<InvalidationQueue>,
    /// Register polls before a command counts as timed out.
    pub spin_limit: u32,
}

impl<M: VtdMmio> RemappingUnit<M> {
    pub fn new(mut mmio: M) -> RemappingUnit<M> {
        let cap = VtdCap(mmio.read64(Reg64::Capability));
        let ecap = VtdEcap(mmio.read64(Reg64::ExtendedCapability));
        RemappingUnit {
            mmio,
            cap,
            ecap,
            queue: None,
            spin_limit: 10_000_000,
        }
    }

    pub fn cap(&self) -> u64 {
        self.cap.0
    }
    pub fn ecap(&self) -> u64 {
        self.ecap.0
    }
    pub fn mmio(&mut self) -> &mut M {
        &mut self.mmio
    }
    /// Second-level page sizes the unit supports (CAP.SLLPS).
    pub fn page_sizes(&self) -> PageSizes {
        supported_page_sizes(self.cap)
    }
    /// The table geometry for a domain whose addresses are `guest_bits` wide.
    pub fn address_width_for(&self, guest_bits: u8) -> Option<AddressWidth> {
        self.cap.choose_address_width(guest_bits)
    }
    /// Under caching mode, domain 0 is reserved for cached not-present entries (VT-d 6.2.2).
    pub fn first_domain_id(&self) -> DomainId {
        if self.cap.caching_mode() {
            1
        } else {
            0
        }
    }

    /// Brings the unit up (VT-d 10.4-style sequence used by Linux and NOVA):
    /// queued invalidation (if ECAP.QI) -> write-buffer flush (if CAP.RWBF) -> root table
    /// (RTADDR + SRTP) -> global context-cache and IOTLB invalidation -> interrupt remapping
    /// table (IRTA + SIRTP), global interrupt-entry-cache invalidation and IRE, with
    /// compatibility-format interrupts blocked -> translation (TE).
    pub fn init(
        &mut self,
        alloc: &mut impl FrameAlloc,
        root: &RootTable,
        interrupts: Option<&InterruptRemapTable>,
        queue: Option<InvalidationQueue>,
    ) -> Result<(), VtdError> {
        if let Some(q) = queue {
            self.enable_queued_invalidation(q)?;
        }
        self.flush_write_buffer()?;
        self.set_root_table(root.phys())?;
        self.invalidate_context(alloc, ContextInvalidation::Global)?;
        self.invalidate_iotlb(alloc, &[IotlbInvalidation::Global])?;
        if let Some(table) = interrupts {
            self.enable_interrupt_remapping(alloc, table)?;
        }
        self.enable_translation()
    }

    /// Sets or clears one level-type GCMD bit and waits for its GSTS status (VT-d 11.4.4:
    /// the other enables are restated from GSTS with the one-shot status bits masked off).
    fn command(&mut self, bit: Gcmd, enable: bool, status: Gsts) -> Result<(), VtdError> {
        let current = self.mmio.read32(Reg32::GlobalStatus) & GSTS_ONE_SHOT_MASK;
        let value = if enable {
            current | bit.bits()
        } else {
            current & !bit.bits()
        };
        self.mmio.write32(Reg32::GlobalCommand, value);
        self.poll(
            |m| m.global_status().contains(status) == enable,
            "GSTS status",
        )
    }

    /// Issues a one-shot GCMD command and waits until `done` holds for GSTS.
    fn one_shot(&mut self, bit: Gcmd, done: fn(Gsts) -> bool) -> Result<(), VtdError> {
        let current = self.mmio.read32(Reg32::GlobalStatus) & GSTS_ONE_SHOT_MASK;
        self.mmio
            .write32(Reg32::GlobalCommand, current | bit.bits());
        self.poll(|m| done(m.global_status()), "one-shot GCMD command")
    }

    fn poll(
        &mut self,
        mut done: impl FnMut(&mut M) -> bool,
        what: &'static str,
    ) -> Result<(), VtdError> {
        for _ in 0..self.spin_limit {
            if done(&mut self.mmio) {
                return Ok(());
            }
            core::hint::spin_loop();
        }
        Err(VtdError::Timeout(what))
    }

    /// IQT = 0, IQA, then QIE (11.4 IQA_REG/IQT_REG: the tail must be 0 when enabling).
    pub fn enable_queued_invalidation(
        &mut self,
        mut queue: InvalidationQueue,
    ) -> Result<(), VtdError> {
        if !self.ecap.queued_invalidation() {
            return Err(VtdError::Unsupported("queued invalidation"));
        }
        queue.reset();
        queue.spin_limit = self.spin_limit;
        self.mmio.write64(Reg64::InvalidationQueueTail, 0);
        self.mmio
            .write64(Reg64::InvalidationQueueAddress, queue.iqa_value());
        self.command(Gcmd::QIE, true, Gsts::QIES)?;
        self.queue = Some(queue);
        Ok(())
    }

    /// RTADDR (legacy mode) then SRTP; done when RTPS is set (11.4.4).
    pub fn set_root_table(&mut self, root: u64) -> Result<(), VtdError> {
        self.mmio
            .write64(Reg64::RootTableAddress, rtaddr_legacy(root));
        self.one_shot(Gcmd::SRTP, |s| s.contains(Gsts::RTPS))
    }

    /// Flushes the unit's write buffer where CAP.RWBF asks for it (VT-d 6.8); a no-op elsewhere.
    pub fn flush_write_buffer(&mut self) -> Result<(), VtdError> {
        if !self.cap.rwbf() {
            return Ok(());
        }
        self.one_shot(Gcmd::WBF, |s| !s.contains(Gsts::WBFS))
    }

    /// IRTA, SIRTP, a global interrupt-entry-cache invalidation, then IRE; CFI is left clear
    /// (and cleared if firmware had set it) so compatibility-format interrupts are blocked.
    pub fn enable_interrupt_remapping(
        &mut self,
        alloc: &mut impl FrameAlloc,
        table: &InterruptRemapTable,
    ) -> Result<(), VtdError> {
        if !self.ecap.interrupt_remapping() {
            return Err(VtdError::Unsupported("interrupt remapping"));
        }
        if table.irta_value() & (1 << 11) != 0 && !self.ecap.eim() {
            return Err(VtdError::Unsupported(
                "x2APIC interrupt remapping (ECAP.EIM)",
            ));
        }
        self.mmio
            .write64(Reg64::InterruptRemapTableAddress, table.irta_value());
        self.one_shot(Gcmd::SIRTP, |s| s.contains(Gsts::IRTPS))?;
        self.invalidate_interrupt_entries(alloc, InterruptEntryInvalidation::Global)?;
        self.command(Gcmd::IRE, true, Gsts::IRES)?;
        if self.mmio.global_status().contains(Gsts::CFIS) {
            self.command(Gcmd::CFI, false, Gsts::CFIS)?;
        }
        Ok(())
    }

    pub fn enable_translation(&mut self) -> Result<(), VtdError> {
        self.command(Gcmd::TE, true, Gsts::TES)
    }

    pub fn disable_translation(&mut self) -> Result<(), VtdError> {
        self.command(Gcmd::TE, false, Gsts::TES)
    }

    /// Context-cache invalidation: queued where enabled, else through CCMD_REG, polling ICC
    /// until clear and checking CAIG (11.4.7).
    pub fn invalidate_context(
        &mut self,
        alloc: &mut impl FrameAlloc,
        inv: ContextInvalidation,
    ) -> Result<(), VtdError> {
        if let Some(q) = self.queue.as_mut() {
            return q.submit_and_wait(alloc, &mut self.mmio, &[Descriptor::context_cache(inv)]);
        }
        self.mmio
            .write64(Reg64::ContextCommand, context_command(inv));
        self.poll(|m| m.read64(Reg64::ContextCommand) >> 63 == 0, "CCMD.ICC")?;
        if (self.mmio.read64(Reg64::ContextCommand) >> 59) & 3 == 0 {
            return Err(VtdError::Unsupported(
                "context invalidation rejected (CAIG = 0)",
            ));
        }
        Ok(())
    }

    /// IOTLB invalidations, draining reads and writes where CAP.DRD/DWD allow: queued where
    /// enabled (one batch), else through IVA_REG/IOTLB_REG, polling IVT and checking IAIG
    /// (11.4.8). Page-selective requests need CAP.PSI; see [`IotlbInvalidation::covering`].
    pub fn invalidate_iotlb(
        &mut self,
        alloc: &mut impl FrameAlloc,
        invs: &[IotlbInvalidation],
    ) -> Result<(), VtdError> {
        let drain = self.cap.drd() && self.cap.dwd();
        if let Some(q) = self.queue.as_mut() {
            let mut batch = [Descriptor { lo: 0, hi: 0 }; 32];
            for chunk in invs.chunks(batch.len()) {
                for (slot, inv) in batch.iter_mut().zip(chunk) {
                    *slot = Descriptor::iotlb(*inv, drain);
                }
                q.submit_and_wait(alloc, &mut self.mmio, &batch[..chunk.len()])?;
            }
            return Ok(());
        }
        let iro = self.ecap.iotlb_offset() as usize;
        for inv in invs {
            let (command, address) = iotlb_command(*inv, drain);
            if let Some(address) = address {
                self.mmio.write64(Reg64::InvalidateAddress { iro }, address);
            }
            self.mmio.write64(Reg64::IotlbInvalidate { iro }, command);
            self.poll(
                |m| m.read64(Reg64::IotlbInvalidate { iro }) >> 63 == 0,
                "IOTLB.IVT",
            )?;
            if (self.mmio.read64(Reg64::IotlbInvalidate { iro }) >> 57) & 3 == 0 {
                return Err(VtdError::Unsupported(
                    "IOTLB invalidation rejected (IAIG = 0)",
                ));
            }
        }
        Ok(())
    }

    /// Interrupt-entry-cache invalidation; only the queue offers it (VT-d 6.5.2.7).
    pub fn invalidate_interrupt_entries(
        &mut self,
        alloc: &mut impl FrameAlloc,
        inv: InterruptEntryInvalidation,
    ) -> Result<(), VtdError> {
        let q = self.queue.as_mut().ok_or(VtdError::Unsupported(
            "interrupt entry invalidation without QI",
        ))?;
        q.submit_and_wait(
            alloc,
            &mut self.mmio,
            &[Descriptor::interrupt_entry_cache(inv)],
        )
    }

    /// After a context entry went from not-present to present: under caching mode the unit
    /// may have cached the not-present entry (under domain 0) and must forget it; otherwise
    /// only the write buffer needs flushing (VT-d 6.1, 6.2.2, 6.8).
    pub fn context_entry_added(
        &mut self,
        alloc: &mut impl FrameAlloc,
        source: SourceId,
        domain: DomainId,
    ) -> Result<(), VtdError> {
        if self.cap.caching_mode() {
            let inv = ContextInvalidation::Device {
                domain: 0,
                source,
                function_mask: 0,
            };
            self.invalidate_context(alloc, inv)?;
            self.invalidate_iotlb(alloc, &[IotlbInvalidation::Domain(domain)])
        } else {
            self.flush_write_buffer()
        }
    }

    /// After a context entry was cleared: the device's cached context and its domain's IOTLB
    /// entries must go before the device counts as blocked.
    pub fn context_entry_removed(
        &mut self,
        alloc: &mut impl FrameAlloc,
        source: SourceId,
        old_domain: DomainId,
    ) -> Result<(), VtdError> {
        let inv = ContextInvalidation::Device {
            domain: old_domain,
            source,
            function_mask: 0,
        };
        self.invalidate_context(alloc, inv)?;
        self.invalidate_iotlb(alloc, &[IotlbInvalidation::Domain(old_domain)])
    }

    /// After second-level mappings were added: under caching mode, not-present entries may
    /// be cached, so the domain's IOTLB is invalidated; otherwise a write-buffer flush.
    pub fn mappings_added(
        &mut self,
        alloc: &mut impl FrameAlloc,
        domain: DomainId,
    ) -> Result<(), VtdError> {
        if self.cap.caching_mode() {
            self.invalidate_iotlb(alloc, &[IotlbInvalidation::Domain(domain)])
        } else {
            self.flush_write_buffer()
        }
    }

    /// After [`super::second_level::DomainTables::unmap`]: page-selective invalidation of the
    /// removed pages where possible, else domain-selective.
    pub fn mappings_removed(
        &mut self,
        alloc: &mut impl FrameAlloc,
        domain: DomainId,
        pages: &[UnmappedPage],
    ) -> Result<(), VtdError> {
        let invs = IotlbInvalidation::covering(domain, pages, self.cap.psi(), self.cap.mamv());
        self.invalidate_iotlb(alloc, &invs)
    }

    /// After IRTE `index` changed.
    pub fn interrupt_entry_changed(
        &mut self,
        alloc: &mut impl FrameAlloc,
        index: u16,
    ) -> Result<(), VtdError> {
        self.invalidate_interrupt_entries(
            alloc,
            InterruptEntryInvalidation::Index {
                index,
                index_mask: 0,
            },
        )
    }

    /// Programs the fault event message, then unmasks it (VT-d 7.3.1: the unit sends it when it
    /// records a fault while no earlier fault is outstanding; a fault already pending sends it now).
    pub fn enable_fault_events(&mut self, message: FaultEventMessage) {
        self.mmio.write32(Reg32::FaultEventData, message.data);
        self.mmio.write32(Reg32::FaultEventAddress, message.address);
        self.mmio
            .write32(Reg32::FaultEventUpperAddress, message.upper_address);
        self.mmio.write32(Reg32::FaultEventControl, 0);
    }

    /// Masks the fault event interrupt (FECTL.IM, its reset value): faults are still recorded.
    pub fn mask_fault_events(&mut self) {
        self.mmio
            .write32(Reg32::FaultEventControl, Fectl::IM.bits());
    }

    /// Reads and clears all recorded faults.
    pub fn drain_faults(&mut self) -> DrainedFaults {
        drain_faults(&mut self.mmio, self.cap.0)
    }

    /// `summary: vtd-unit cap=0x... ecap=0x... qi=yes ir=yes eim=no cm=no rwbf=no sagaw=0x2
    /// pages=0x7 translation=yes interrupt-remapping=yes`.
    pub fn write_summary(&mut self, out: &mut dyn fmt::Write) -> fmt::Result {
        let yes = |b: bool| if b { "yes" } else { "no" };
        let gsts = self.mmio.global_status();
        writeln!(
            out,
            "summary: vtd-unit cap={:#x} ecap={:#x} qi={} ir={} eim={} cm={} rwbf={} sagaw={:#x} pages={:#x} translation={} interrupt-remapping={}",
            self.cap.0,
            self.ecap.0,
            yes(self.ecap.queued_invalidation()),
            yes(self.ecap.interrupt_remapping()),
            yes(self.ecap.eim()),
            yes(self.cap.caching_mode()),
            yes(self.cap.rwbf()),
            self.cap.sagaw(),
            self.page_sizes().bits(),
            yes(gsts.contains(Gsts::TES)),
            yes(gsts.contains(Gsts::IRES)),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::test_frames::TestFrames;
    use crate::vtd::context::ContextEntry;
    use crate::vtd::regs::fake::{FakeVtd, Write};
    use crate::vtd::second_level::{Access, DomainTables};
    use Reg32::*;
    use Reg64::*;

    /// QEMU 7.2 intel-iommu,intremap=on (shared/emulators.md).
    const QEMU_CAP: u64 = 0x00d2_008c_2226_0206;
    const QEMU_ECAP: u64 = 0xf0_0f4a;
    const RWBF: u64 = 1 << 4;
    const CM: u64 = 1 << 7;

    fn unit(cap: u64, ecap: u64) -> RemappingUnit<FakeVtd> {
        let mut u = RemappingUnit::new(FakeVtd::new(cap, ecap));
        u.spin_limit = 100;
        u
    }

    #[test]
    fn qemu_bring_up_writes_registers_in_order() {
        let mut f = TestFrames::default();
        let root = RootTable::new(&mut f).unwrap();
        let irt = InterruptRemapTable::new(&mut f, false).unwrap();
        let queue = InvalidationQueue::new(&mut f).unwrap();
        let (root_phys, irta, iqa) = (root.phys(), irt.irta_value(), queue.iqa_value());
        let mut u = unit(QEMU_CAP, QEMU_ECAP);
        u.init(&mut f, &root, Some(&irt), Some(queue)).unwrap();
        let hw = u.mmio();
        assert_eq!(
            hw.writes,
            [
                Write::W64(InvalidationQueueTail, 0),
                Write::W64(InvalidationQueueAddress, iqa),
                Write::W32(GlobalCommand, 0x0400_0000), // QIE
                Write::W64(RootTableAddress, root_phys),
                Write::W32(GlobalCommand, 0x4400_0000), // QIE kept, SRTP
                // Context-cache global + wait, then IOTLB global (drained) + wait.
                Write::W64(InvalidationQueueTail, 2 << 4),
                Write::W32(InvalidationCompletionStatus, 1),
                Write::W64(InvalidationQueueTail, 4 << 4),
                Write::W32(InvalidationCompletionStatus, 1),
                Write::W64(InterruptRemapTableAddress, irta),
                Write::W32(GlobalCommand, 0x0500_0000), // QIE kept, SIRTP (RTPS masked off)
                Write::W64(InvalidationQueueTail, 6 << 4), // interrupt entry cache global, wait
                Write::W32(InvalidationCompletionStatus, 1),
                Write::W32(GlobalCommand, 0x0600_0000), // QIE, IRE; CFI clear
                Write::W32(GlobalCommand, 0x8600_0000), // QIE, IRE, TE
            ]
        );
        assert_eq!(hw.latched_root, Some(root_phys));
        assert_eq!(hw.latched_irta, Some(irta));
        assert_eq!(
            hw.gsts() & !(Gsts::RTPS | Gsts::IRTPS),
            Gsts::QIES | Gsts::IRES | Gsts::TES
        );
        assert!(!hw.gsts().contains(Gsts::CFIS));
        assert!(hw.violations.is_empty(), "{:?}", hw.violations);
        // The queue holds, in order: cc global, wait, IOTLB global drained, wait, IEC global, wait.
        let ring: alloc::vec::Vec<u64> = (0..6).map(|i| f.table(iqa)[2 * i]).collect();
        assert_eq!(ring, [0x11, 0x55, 0xD2, 0x55, 0x4, 0x55]);
        let mut summary = alloc::string::String::new();
        u.write_summary(&mut summary).unwrap();
        assert!(summary
            .contains(" qi=yes ir=yes eim=no cm=no rwbf=no sagaw=0x2 pages=0x7 translation=yes"));
    }

    #[test]
    fn register_based_bring_up_with_write_buffer_flush() {
        // No QI, no IR, RWBF set, IOTLB registers at IRO 0x10 * 16 = 0x100.
        let mut f = TestFrames::default();
        let root = RootTable::new(&mut f).unwrap();
        let mut u = unit(QEMU_CAP | RWBF, 0x1000);
        u.init(&mut f, &root, None, None).unwrap();
        let iro = 0x100;
        assert_eq!(
            u.mmio().writes,
            [
                Write::W32(GlobalCommand, 0x0800_0000), // WBF
                Write::W64(RootTableAddress, root.phys()),
                Write::W32(GlobalCommand, 0x4000_0000), // SRTP
                Write::W64(ContextCommand, 0xA000_0000_0000_0000),
                Write::W64(IotlbInvalidate { iro }, 0x9003_0000_0000_0000),
                Write::W32(GlobalCommand, 0x8000_0000), // TE
            ]
        );
        assert_eq!(u.mmio().write_buffer_flushes, 1);
        // Interrupt remapping needs ECAP.IR (and QI).
        let irt = InterruptRemapTable::new(&mut f, false).unwrap();
        assert_eq!(
            u.enable_interrupt_remapping(&mut f, &irt),
            Err(VtdError::Unsupported("interrupt remapping"))
        );
    }

    #[test]
    fn gcmd_writes_preserve_enabled_features() {
        let mut u = unit(QEMU_CAP, QEMU_ECAP);
        u.mmio().write64(RootTableAddress, 0x5000);
        u.mmio()
            .write32(GlobalCommand, (Gcmd::SRTP | Gcmd::TE | Gcmd::CFI).bits());
        u.mmio().writes.clear();
        // Firmware left CFI on: a later command must restate TE and CFI, not SRTP.
        u.set_root_table(0x6000).unwrap();
        assert_eq!(
            u.mmio().writes[1],
            Write::W32(GlobalCommand, (Gcmd::TE | Gcmd::CFI | Gcmd::SRTP).bits())
        );
        u.disable_translation().unwrap();
        assert_eq!(
            u.mmio().writes[2],
            Write::W32(GlobalCommand, Gcmd::CFI.bits())
        );
        assert_eq!(u.mmio().gsts() & (Gsts::TES | Gsts::CFIS), Gsts::CFIS);
    }

    #[test]
    fn cfi_left_by_firmware_is_cleared_when_enabling_ir() {
        let mut f = TestFrames::default();
        let irt = InterruptRemapTable::new(&mut f, false).unwrap();
        let mut u = unit(QEMU_CAP, QEMU_ECAP);
        u.enable_queued_invalidation(InvalidationQueue::new(&mut f).unwrap())
            .unwrap();
        u.mmio()
            .write32(GlobalCommand, (Gcmd::QIE | Gcmd::CFI).bits());
        u.enable_interrupt_remapping(&mut f, &irt).unwrap();
        let gsts = u.mmio().gsts();
        assert!(gsts.contains(Gsts::IRES | Gsts::QIES) && !gsts.contains(Gsts::CFIS));
        // EIM tables are refused where ECAP.EIM is clear (QEMU TCG without x-buggy-eim).
        let x2 = InterruptRemapTable::new(&mut f, true).unwrap();
        assert!(u.enable_interrupt_remapping(&mut f, &x2).is_err());
    }

    #[test]
    fn caching_mode_invalidates_new_entries() {
        let mut f = TestFrames::default();
        let mut root = RootTable::new(&mut f).unwrap();
        let mut u = unit(QEMU_CAP | CM, 0x1000); // register-based, IOTLB at 0x100
        assert_eq!(u.first_domain_id(), 1);
        let mut tables = DomainTables::new(&mut f, AddressWidth::Bits39Level3).unwrap();
        let edu = SourceId::new(0, 3, 0);
        root.assign(&mut f, edu, ContextEntry::translated(1, &tables))
            .unwrap();
        u.context_entry_added(&mut f, edu, 1).unwrap();
        tables
            .map(&mut f, 0, 0x100_0000, 0x1000, Access::READ, u.page_sizes())
            .unwrap();
        u.mappings_added(&mut f, 1).unwrap();
        let iro = 0x100;
        assert_eq!(
            u.mmio().writes,
            [
                // Device-selective for 00:03.0 under domain 0: ICC | CIRG 11 | 0x18 << 16.
                Write::W64(ContextCommand, 0xE000_0000_0018_0000),
                // Domain 1, drained: IVT | IIRG 10 | DR | DW | 1 << 32.
                Write::W64(IotlbInvalidate { iro }, 0xA003_0001_0000_0000),
                Write::W64(IotlbInvalidate { iro }, 0xA003_0001_0000_0000),
            ]
        );
    }

    #[test]
    fn removal_and_unmap_invalidate_by_device_domain_and_page() {
        let mut f = TestFrames::default();
        let mut u = unit(QEMU_CAP, 0x1000);
        let edu = SourceId::new(0, 3, 0);
        u.context_entry_added(&mut f, edu, 2).unwrap();
        assert!(u.mmio().writes.is_empty(), "no CM, no RWBF: nothing to do");
        u.context_entry_removed(&mut f, edu, 2).unwrap();
        let pages = [UnmappedPage {
            iova: 0x20_0000,
            size: 0x20_0000,
        }];
        u.mappings_removed(&mut f, 2, &pages).unwrap();
        let iro = 0x100;
        assert_eq!(
            u.mmio().writes,
            [
                Write::W64(ContextCommand, 0xE000_0000_0018_0002),
                Write::W64(IotlbInvalidate { iro }, 0xA003_0002_0000_0000),
                // Page-selective: IVA = 0x20_0000 | IH | AM 9, then IVT | IIRG 11 | drain | DID 2.
                Write::W64(InvalidateAddress { iro }, 0x20_0049),
                Write::W64(IotlbInvalidate { iro }, 0xB003_0002_0000_0000),
            ]
        );
    }

    #[test]
    fn fault_events_are_unmasked_after_their_message_is_set() {
        let mut u = unit(QEMU_CAP, QEMU_ECAP);
        let message = FaultEventMessage::fixed(0xEE, 0, false).unwrap();
        u.enable_fault_events(message);
        // Message first, unmask (IM = bit 31 clear) last: an unmask with a stale message would
        // send a pending fault's interrupt somewhere else (VT-d 11.4.10).
        assert_eq!(
            u.mmio().writes,
            [
                Write::W32(FaultEventData, 0xEE),
                Write::W32(FaultEventAddress, 0xFEE0_0000),
                Write::W32(FaultEventUpperAddress, 0),
                Write::W32(FaultEventControl, 0),
            ]
        );
        u.mask_fault_events();
        assert_eq!(u.mmio().get(FaultEventControl.offset()), 1 << 31);
    }

    #[test]
    fn stuck_hardware_times_out() {
        struct Stuck;
        impl VtdMmio for Stuck {
            fn read32(&mut self, _: Reg32) -> u32 {
                0
            }
            fn write32(&mut self, _: Reg32, _: u32) {}
            fn read64(&mut self, _: Reg64) -> u64 {
                0
            }
            fn write64(&mut self, _: Reg64, _: u64) {}
        }
        let mut u = RemappingUnit::new(Stuck);
        u.spin_limit = 10;
        assert_eq!(
            u.set_root_table(0x1000),
            Err(VtdError::Timeout("one-shot GCMD command"))
        );
        assert_eq!(
            u.enable_translation(),
            Err(VtdError::Timeout("GSTS status"))
        );
    }
}
