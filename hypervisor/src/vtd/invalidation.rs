//! Invalidation of the unit's caches: queued-invalidation descriptors (VT-d 6.5.2), their
//! register-based equivalents (CCMD_REG 11.4.7, IOTLB_REG/IVA_REG 11.4.8), and the
//! invalidation queue (6.5.2, IQA/IQH/IQT registers).

use super::regs::{Fsts, Ics, Reg32, Reg64, VtdMmio};
use super::second_level::UnmappedPage;
use super::{DomainId, SourceId, VtdError};
use crate::memory::FrameAlloc;
use alloc::vec::Vec;

/// What to drop from the context cache (VT-d 6.5.2.1 granularity G, CCMD.CIRG).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContextInvalidation {
    Global,
    Domain(DomainId),
    /// One device's entry, cached under `domain`. `function_mask` (FM, 0-3) ignores that many
    /// low bits of the function number.
    Device {
        domain: DomainId,
        source: SourceId,
        function_mask: u8,
    },
}

/// What to drop from the IOTLB (VT-d 6.5.2.3 granularity G, IOTLB_REG.IIRG).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IotlbInvalidation {
    Global,
    Domain(DomainId),
    /// 2^`address_mask` pages of 4 KiB at `address` (aligned to that size) in `domain`.
    /// `leaf_only` (IH) says no paging-structure entry changed, only leaves.
    Pages {
        domain: DomainId,
        address: u64,
        address_mask: u8,
        leaf_only: bool,
    },
}

/// What to drop from the interrupt entry cache (VT-d 6.5.2.7).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InterruptEntryInvalidation {
    Global,
    /// 2^`index_mask` entries starting at `index` (aligned to that count).
    Index {
        index: u16,
        index_mask: u8,
    },
}

impl IotlbInvalidation {
    /// The invalidations that cover `pages` in `domain`: page-selective ones where the unit has
    /// PSI and every page fits the address mask limit (CAP.MAMV), else one domain-selective
    /// invalidation, which is also cheaper than many page-selective ones.
    pub fn covering(
        domain: DomainId,
        pages: &[UnmappedPage],
        psi: bool,
        mamv: u8,
    ) -> Vec<IotlbInvalidation> {
        const MAX_PAGE_INVALIDATIONS: usize = 32;
        let masks: Option<Vec<u8>> = pages
            .iter()
            .map(|p| {
                // AM = log2(pages of 4 KiB); the range must be aligned to its size (6.5.2.3).
                let am = p.size.trailing_zeros().checked_sub(12)? as u8;
                (p.size.is_power_of_two() && p.iova.is_multiple_of(p.size) && am <= mamv)
                    .then_some(am)
            })
            .collect();
        match masks {
            Some(masks) if psi && pages.len() <= MAX_PAGE_INVALIDATIONS => pages
                .iter()
                .zip(masks)
                .map(|(p, address_mask)| IotlbInvalidation::Pages {
                    domain,
                    address: p.iova,
                    address_mask,
                    leaf_only: true,
                })
                .collect(),
            _ if pages.is_empty() => Vec::new(),
            _ => alloc::vec![IotlbInvalidation::Domain(domain)],
        }
    }
}

/// A 128-bit queued-invalidation descriptor; bits 3:0 hold the type (VT-d 6.5.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Descriptor {
    pub lo: u64,
    pub hi: u64,
}

impl Descriptor {
    const CONTEXT_CACHE: u64 = 0x1;
    const IOTLB: u64 = 0x2;
    const INTERRUPT_ENTRY_CACHE: u64 = 0x4;
    const WAIT: u64 = 0x5;

    /// 6.5.2.1: G 5:4 (01 global, 10 domain, 11 device), DID 31:16, SID 47:32, FM 49:48.
    pub const fn context_cache(inv: ContextInvalidation) -> Descriptor {
        let lo = match inv {
            ContextInvalidation::Global => 0b01 << 4,
            ContextInvalidation::Domain(did) => 0b10 << 4 | (did as u64) << 16,
            ContextInvalidation::Device {
                domain,
                source,
                function_mask,
            } => {
                0b11 << 4
                    | (domain as u64) << 16
                    | (source.0 as u64) << 32
                    | ((function_mask & 3) as u64) << 48
            }
        };
        Descriptor {
            lo: lo | Self::CONTEXT_CACHE,
            hi: 0,
        }
    }

    /// 6.5.2.3: G 5:4 (01 global, 10 domain, 11 page), DW 6, DR 7, DID 31:16;
    /// high half: AM 5:0, IH 6, ADDR 63:12.
    pub const fn iotlb(inv: IotlbInvalidation, drain: bool) -> Descriptor {
        let drain_bits = if drain { 0b11 << 6 } else { 0 };
        let (lo, hi) = match inv {
            IotlbInvalidation::Global => (0b01 << 4, 0),
            IotlbInvalidation::Domain(did) => (0b10 << 4 | (did as u64) << 16, 0),
            IotlbInvalidation::Pages {
                domain,
                address,
                address_mask,
                leaf_only,
            } => (
                0b11 << 4 | (domain as u64) << 16,
                invalidate_address(address, address_mask, leaf_only),
            ),
        };
        Descriptor {
            lo: lo | drain_bits | Self::IOTLB,
            hi,
        }
    }

    /// 6.5.2.7: G bit 4 (0 global, 1 index-selective), IM 31:27, IIDX 47:32.
    pub const fn interrupt_entry_cache(inv: InterruptEntryInvalidation) -> Descriptor {
        let lo = match inv {
            InterruptEntryInvalidation::Global => 0,
            InterruptEntryInvalidation::Index { index, index_mask } => {
                1 << 4 | ((index_mask & 0x1F) as u64) << 27 | (index as u64) << 32
            }
        };
        Descriptor {
            lo: lo | Self::INTERRUPT_ENTRY_CACHE,
            hi: 0,
        }
    }

    /// 6.5.2.8: IF 4, SW 5, FN 6; status data 63:32, status address 127:66 (4-byte aligned).
    /// `status` = (address, data) asks for a status write; `interrupt` sets ICS.IWC (and, if
    /// unmasked, sends the invalidation completion event); `fence` holds later descriptors
    /// until everything before has completed.
    pub const fn wait(status: Option<(u64, u32)>, interrupt: bool, fence: bool) -> Descriptor {
        let (sw, data, addr) = match status {
            Some((addr, data)) => (1u64, data as u64, addr & !3),
            None => (0, 0, 0),
        };
        Descriptor {
            lo: Self::WAIT | (interrupt as u64) << 4 | sw << 5 | (fence as u64) << 6 | data << 32,
            hi: addr,
        }
    }
}

/// IVA_REG and the high half of the IOTLB descriptor: ADDR 63:12, IH 6, AM 5:0.
const fn invalidate_address(address: u64, address_mask: u8, leaf_only: bool) -> u64 {
    (address & !0xFFF) | (leaf_only as u64) << 6 | (address_mask & 0x3F) as u64
}

/// CCMD_REG value (VT-d 11.4.7): ICC 63, CIRG 62:61, FM 33:32, SID 31:16, DID 15:0.
pub const fn context_command(inv: ContextInvalidation) -> u64 {
    const ICC: u64 = 1 << 63;
    match inv {
        ContextInvalidation::Global => ICC | 0b01 << 61,
        ContextInvalidation::Domain(did) => ICC | 0b10 << 61 | did as u64,
        ContextInvalidation::Device {
            domain,
            source,
            function_mask,
        } => {
            ICC | 0b11 << 61
                | ((function_mask & 3) as u64) << 32
                | (source.0 as u64) << 16
                | domain as u64
        }
    }
}

/// IOTLB_REG value and, for page-selective requests, the IVA_REG value to write first
/// (VT-d 11.4.8): IVT 63, IIRG 61:60, DR 49, DW 48, DID 47:32.
pub const fn iotlb_command(inv: IotlbInvalidation, drain: bool) -> (u64, Option<u64>) {
    const IVT: u64 = 1 << 63;
    let drain_bits = if drain { 0b11 << 48 } else { 0 };
    match inv {
        IotlbInvalidation::Global => (IVT | 0b01 << 60 | drain_bits, None),
        IotlbInvalidation::Domain(did) => {
            (IVT | 0b10 << 60 | drain_bits | (did as u64) << 32, None)
        }
        IotlbInvalidation::Pages {
            domain,
            address,
            address_mask,
            leaf_only,
        } => (
            IVT | 0b11 << 60 | drain_bits | (domain as u64) << 32,
            Some(invalidate_address(address, address_mask, leaf_only)),
        ),
    }
}

/// Descriptors in the queue: one 4 KiB page of 16-byte descriptors (IQA.QS = 0).
pub const QUEUE_ENTRIES: usize = 256;

/// The invalidation queue: a ring of descriptors that software fills at the tail (IQT) and the
/// unit consumes from the head (IQH). One slot stays empty so that head == tail means empty.
#[derive(Debug)]
pub struct InvalidationQueue {
    phys: u64,
    tail: usize,
    /// Register polls before a command counts as timed out.
    pub spin_limit: u32,
}

impl InvalidationQueue {
    pub fn new(alloc: &mut impl FrameAlloc) -> Result<InvalidationQueue, VtdError> {
        Ok(InvalidationQueue {
            phys: alloc.alloc_zeroed().ok_or(VtdError::OutOfMemory)?,
            tail: 0,
            spin_limit: 10_000_000,
        })
    }

    /// IQA_REG value: base 63:12, DW (bit 11) = 0 for 128-bit descriptors, QS (2:0) = 0 for
    /// one page.
    pub fn iqa_value(&self) -> u64 {
        self.phys
    }
    pub fn phys(&self) -> u64 {
        self.phys
    }
    /// The next free slot (what IQT holds once the queue is idle).
    pub fn tail(&self) -> usize {
        self.tail
    }

    /// Points the unit at the queue and enables it is the unit driver's job; this only resets
    /// the software tail to match the IQT = 0 that must precede enabling.
    pub fn reset(&mut self) {
        self.tail = 0;
    }

    /// Queues `descriptors` followed by a fenced wait descriptor with IF = 1, publishes the
    /// tail, and polls ICS.IWC until the unit has completed all of them.
    ///
    /// The IF/ICS.IWC handshake needs no status memory; with IECTL.IM set (its reset value)
    /// no completion interrupt is sent. Callers serialize queue use per unit (IWC is one bit).
    pub fn submit_and_wait(
        &mut self,
        alloc: &mut impl FrameAlloc,
        mmio: &mut impl VtdMmio,
        descriptors: &[Descriptor],
    ) -> Result<(), VtdError> {
        let wait = Descriptor::wait(None, true, true);
        for d in descriptors.iter().chain(core::iter::once(&wait)) {
            self.push(alloc, mmio, *d)?;
        }
        mmio.write64(Reg64::InvalidationQueueTail, (self.tail as u64) << 4);
        for _ in 0..self.spin_limit {
            let fsts = mmio.fault_status();
            if fsts.intersects(Fsts::IQE | Fsts::ICE | Fsts::ITE) {
                return Err(VtdError::QueueError(fsts.bits()));
            }
            if mmio.read32(Reg32::InvalidationCompletionStatus) & Ics::IWC.bits() != 0 {
                mmio.write32(Reg32::InvalidationCompletionStatus, Ics::IWC.bits());
                return Ok(());
            }
            core::hint::spin_loop();
        }
        Err(VtdError::Timeout("invalidation wait descriptor"))
    }

    /// Writes one descriptor at the tail, first waiting for a free slot if the ring is full.
    fn push(
        &mut self,
        alloc: &mut impl FrameAlloc,
        mmio: &mut impl VtdMmio,
        d: Descriptor,
    ) -> Result<(), VtdError> {
        let next = (self.tail + 1) % QUEUE_ENTRIES;
        if next == head(mmio) {
            // Full: publish what is queued so the unit makes room, then wait for it.
            mmio.write64(Reg64::InvalidationQueueTail, (self.tail as u64) << 4);
            let mut spins = 0;
            while next == head(mmio) {
                spins += 1;
                if spins >= self.spin_limit {
                    return Err(VtdError::Timeout("invalidation queue full"));
                }
                core::hint::spin_loop();
            }
        }
        let table = alloc.table_mut(self.phys);
        table[2 * self.tail] = d.lo;
        table[2 * self.tail + 1] = d.hi;
        self.tail = next;
        Ok(())
    }
}

/// IQH_REG bits 18:4: index of the next descriptor the unit will fetch.
fn head(mmio: &mut impl VtdMmio) -> usize {
    ((mmio.read64(Reg64::InvalidationQueueHead) >> 4) & 0x7FFF) as usize % QUEUE_ENTRIES
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::test_frames::TestFrames;
    use crate::vtd::regs::fake::{FakeVtd, Write};
    use crate::vtd::regs::Gcmd;

    const EDU: SourceId = SourceId::new(0, 3, 0);

    #[test]
    fn descriptors_encoded_by_hand() {
        // Context cache (type 1): global = G 01 -> 0x11; domain 7 = 0x21 | 7 << 16 = 0x7_0021;
        // device 00:03.0 in domain 7, FM 0 = 0x31 | 7 << 16 | 0x18 << 32 = 0x18_0007_0031.
        assert_eq!(
            Descriptor::context_cache(ContextInvalidation::Global),
            Descriptor { lo: 0x11, hi: 0 }
        );
        assert_eq!(
            Descriptor::context_cache(ContextInvalidation::Domain(7)).lo,
            0x7_0021
        );
        let dev = ContextInvalidation::Device {
            domain: 7,
            source: EDU,
            function_mask: 0,
        };
        assert_eq!(Descriptor::context_cache(dev).lo, 0x18_0007_0031);
        // IOTLB (type 2): global with drain = 0x12 | DW 0x40 | DR 0x80 = 0xD2;
        // domain 3 without drain = 0x22 | 3 << 16 = 0x3_0022.
        assert_eq!(
            Descriptor::iotlb(IotlbInvalidation::Global, true),
            Descriptor { lo: 0xD2, hi: 0 }
        );
        assert_eq!(
            Descriptor::iotlb(IotlbInvalidation::Domain(3), false).lo,
            0x3_0022
        );
        // Page-selective, 2 MiB (AM 9) at 0x4020_0000, IH: lo = 0x32 | 3 << 16 = 0x3_0032;
        // hi = 0x4020_0000 | IH 0x40 | 9 = 0x4020_0049.
        let pages = IotlbInvalidation::Pages {
            domain: 3,
            address: 0x4020_0000,
            address_mask: 9,
            leaf_only: true,
        };
        assert_eq!(
            Descriptor::iotlb(pages, false),
            Descriptor {
                lo: 0x3_0032,
                hi: 0x4020_0049
            }
        );
        // Interrupt entry cache (type 4): global = 0x4; index 0x20, mask 2 (4 entries):
        // 0x4 | G 0x10 | 2 << 27 (0x1000_0000) | 0x20 << 32 = 0x20_1000_0014.
        assert_eq!(
            Descriptor::interrupt_entry_cache(InterruptEntryInvalidation::Global).lo,
            0x4
        );
        let idx = InterruptEntryInvalidation::Index {
            index: 0x20,
            index_mask: 2,
        };
        assert_eq!(Descriptor::interrupt_entry_cache(idx).lo, 0x20_1000_0014);
        // Wait (type 5): IF|FN = 0x5 | 0x10 | 0x40 = 0x55; status write of 0xCAFE to 0x9000
        // with fence = 0x5 | SW 0x20 | FN 0x40 | 0xCAFE << 32 = 0xCAFE_0000_0065, hi = 0x9000.
        assert_eq!(
            Descriptor::wait(None, true, true),
            Descriptor { lo: 0x55, hi: 0 }
        );
        assert_eq!(
            Descriptor::wait(Some((0x9000, 0xCAFE)), false, true),
            Descriptor {
                lo: 0xCAFE_0000_0065,
                hi: 0x9000
            }
        );
    }

    #[test]
    fn register_commands_encoded_by_hand() {
        // CCMD global: ICC (63) | CIRG 01 (61) = 0xA000_0000_0000_0000.
        assert_eq!(
            context_command(ContextInvalidation::Global),
            0xA000_0000_0000_0000
        );
        // Domain 5: ICC | CIRG 10 (0x4000..) | 5 = 0xC000_0000_0000_0005.
        assert_eq!(
            context_command(ContextInvalidation::Domain(5)),
            0xC000_0000_0000_0005
        );
        // Device 00:03.0, domain 5, FM 3: ICC | CIRG 11 | 3 << 32 | 0x18 << 16 | 5.
        let dev = ContextInvalidation::Device {
            domain: 5,
            source: EDU,
            function_mask: 3,
        };
        assert_eq!(context_command(dev), 0xE000_0003_0018_0005);
        // IOTLB global with drain: IVT | IIRG 01 (60) | DR (49) | DW (48) = 0x9003_0000_0000_0000.
        assert_eq!(
            iotlb_command(IotlbInvalidation::Global, true),
            (0x9003_0000_0000_0000, None)
        );
        // Domain 5: IVT | IIRG 10 | 5 << 32 = 0xA000_0005_0000_0000.
        assert_eq!(
            iotlb_command(IotlbInvalidation::Domain(5), false),
            (0xA000_0005_0000_0000, None)
        );
        // One 4 KiB page at 0x1234_5000 in domain 5: IVT | IIRG 11 | 5 << 32; IVA = address.
        let page = IotlbInvalidation::Pages {
            domain: 5,
            address: 0x1234_5000,
            address_mask: 0,
            leaf_only: false,
        };
        assert_eq!(
            iotlb_command(page, false),
            (0xB000_0005_0000_0000, Some(0x1234_5000))
        );
    }

    #[test]
    fn page_invalidations_fall_back_to_domain() {
        let pages = [
            UnmappedPage {
                iova: 0x20_0000,
                size: 0x20_0000,
            },
            UnmappedPage {
                iova: 0x40_0000,
                size: 0x1000,
            },
        ];
        let inv = IotlbInvalidation::covering(4, &pages, true, 18);
        assert_eq!(
            inv,
            [
                IotlbInvalidation::Pages {
                    domain: 4,
                    address: 0x20_0000,
                    address_mask: 9,
                    leaf_only: true
                },
                IotlbInvalidation::Pages {
                    domain: 4,
                    address: 0x40_0000,
                    address_mask: 0,
                    leaf_only: true
                },
            ]
        );
        // No PSI, or a 2 MiB page beyond MAMV 8: one domain-selective invalidation.
        assert_eq!(
            IotlbInvalidation::covering(4, &pages, false, 18),
            [IotlbInvalidation::Domain(4)]
        );
        assert_eq!(
            IotlbInvalidation::covering(4, &pages, true, 8),
            [IotlbInvalidation::Domain(4)]
        );
        assert!(IotlbInvalidation::covering(4, &[], true, 18).is_empty());
        // A misaligned or odd-sized range cannot be expressed with an address mask.
        let odd = [UnmappedPage {
            iova: 0x1000,
            size: 0x2000,
        }];
        assert_eq!(
            IotlbInvalidation::covering(4, &odd, true, 18),
            [IotlbInvalidation::Domain(4)]
        );
        let tiny = [UnmappedPage {
            iova: 0,
            size: 0x800,
        }];
        assert_eq!(
            IotlbInvalidation::covering(4, &tiny, true, 18),
            [IotlbInvalidation::Domain(4)]
        );
    }

    fn enabled_queue() -> (TestFrames, FakeVtd, InvalidationQueue) {
        let mut f = TestFrames::default();
        let mut hw = FakeVtd::new(0x00d2_008c_2226_0206, 0xf0_0f4a);
        let mut q = InvalidationQueue::new(&mut f).unwrap();
        q.spin_limit = 100;
        hw.write64(Reg64::InvalidationQueueTail, 0);
        hw.write64(Reg64::InvalidationQueueAddress, q.iqa_value());
        hw.write32(Reg32::GlobalCommand, Gcmd::QIE.bits());
        hw.writes.clear();
        (f, hw, q)
    }

    #[test]
    fn submit_writes_ring_then_tail_then_clears_completion() {
        let (mut f, mut hw, mut q) = enabled_queue();
        let cc = Descriptor::context_cache(ContextInvalidation::Global);
        let tlb = Descriptor::iotlb(IotlbInvalidation::Global, true);
        q.submit_and_wait(&mut f, &mut hw, &[cc, tlb]).unwrap();
        let ring = f.table(q.phys());
        assert_eq!(&ring[..6], &[0x11, 0, 0xD2, 0, 0x55, 0]);
        assert_eq!(
            hw.writes,
            [
                Write::W64(Reg64::InvalidationQueueTail, 0x30),
                Write::W32(Reg32::InvalidationCompletionStatus, 1),
            ]
        );
        assert_eq!(hw.read32(Reg32::InvalidationCompletionStatus), 0);
        assert!(hw.violations.is_empty());
    }

    #[test]
    fn tail_wraps_around_the_ring() {
        let (mut f, mut hw, mut q) = enabled_queue();
        let cc = Descriptor::context_cache(ContextInvalidation::Domain(1));
        for _ in 0..100 {
            q.submit_and_wait(&mut f, &mut hw, &[cc, cc]).unwrap();
        }
        // 300 descriptors: the tail went round once and sits at 300 - 256 = 44.
        assert_eq!(q.tail(), 44);
        assert_eq!(hw.get(0x88), 44 << 4);
        // Slot 43 holds the last wait descriptor, 255 a context invalidation from round one.
        assert_eq!(f.table(q.phys())[2 * 43], 0x55);
        assert_eq!(f.table(q.phys())[2 * 42], 0x1_0021);
    }

    #[test]
    fn full_queue_publishes_and_times_out_when_the_unit_stalls() {
        let (mut f, mut hw, mut q) = enabled_queue();
        hw.queue_stalled = true;
        let cc = Descriptor::context_cache(ContextInvalidation::Global);
        let many = [cc; QUEUE_ENTRIES - 1];
        assert_eq!(
            q.submit_and_wait(&mut f, &mut hw, &many),
            Err(VtdError::Timeout("invalidation queue full"))
        );
        // 255 descriptors were published before waiting for room.
        assert_eq!(
            hw.writes,
            [Write::W64(Reg64::InvalidationQueueTail, 255 << 4)]
        );
        // Once the unit consumes them, the queue works again.
        hw.queue_stalled = false;
        hw.advance_head(255);
        q.submit_and_wait(&mut f, &mut hw, &[]).unwrap();
        assert_eq!(q.tail(), 0);
    }

    #[test]
    fn queue_error_is_reported() {
        let (mut f, mut hw, mut q) = enabled_queue();
        hw.queue_stalled = true; // no completion
        hw.inject_iqe();
        let cc = Descriptor::context_cache(ContextInvalidation::Global);
        assert_eq!(
            q.submit_and_wait(&mut f, &mut hw, &[cc]),
            Err(VtdError::QueueError(0x10))
        );
    }
}
