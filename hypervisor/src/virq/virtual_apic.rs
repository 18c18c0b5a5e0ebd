//! The virtual-APIC page and the guest interrupt status of VMX virtual-interrupt delivery (SDM Vol.
//! 3C 29.1, 29.2): the page holds the vCPU's virtual TPR, PPR, ISR, TMR and IRR at their xAPIC
//! offsets (Vol. 3A 11.4.1, Table 11-1), which the CPU reads and writes while the guest runs; RVI
//! and SVI (the guest interrupt status) say which of those vectors are the highest.
//!
//! The host writes the page only between a VM exit and the next entry, on the one CPU that runs the
//! vCPU: the entry and exit are `asm!` blocks, which the compiler treats as reading and writing all
//! memory, so the CPU's writes during the guest are never cached across them.

use alloc::boxed::Box;

/// Byte offsets in the page (Table 11-1).
const TPR: usize = 0x80;
const PPR: usize = 0xA0;
const ISR: usize = 0x100;
const TMR: usize = 0x180;
const IRR: usize = 0x200;

/// One vCPU's virtual-APIC page: 4 KiB, 4 KiB-aligned (SDM Vol. 3C 25.6.8), its address given to
/// the VMCS. The host heap is identity-mapped, so its address is its physical address.
#[repr(C, align(4096))]
pub struct VirtualApicPage([u32; 1024]);

impl core::fmt::Debug for VirtualApicPage {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("VirtualApicPage")
            .field("tpr", &self.tpr())
            .field("highest_requested", &self.highest_requested())
            .finish_non_exhaustive()
    }
}

impl VirtualApicPage {
    /// A zeroed page: TPR 0, nothing requested or in service.
    pub fn new() -> Box<Self> {
        Box::new(VirtualApicPage([0; 1024]))
    }

    /// The page's physical address (the identity-mapped heap's virtual address).
    pub fn address(&self) -> u64 {
        self as *const Self as u64
    }

    fn register(&self, offset: usize) -> u32 {
        self.0[offset / 4]
    }

    /// The vector register (ISR, TMR, IRR) at `base`: its 32-bit words are 16 bytes apart.
    fn vector_word(&mut self, base: usize, vector: u8) -> &mut u32 {
        &mut self.0[(base + usize::from(vector / 32) * 0x10) / 4]
    }

    fn vector_bit(&self, base: usize, vector: u8) -> bool {
        self.register(base + usize::from(vector / 32) * 0x10) & (1 << (vector % 32)) != 0
    }

    fn highest(&self, base: usize) -> Option<u8> {
        (0..8usize).rev().find_map(|word| {
            let bits = self.register(base + word * 0x10);
            (bits != 0).then(|| (word * 32 + 31 - bits.leading_zeros() as usize) as u8)
        })
    }

    /// The virtual TPR (VTPR), which the guest's CR8 and TPR MSR reach without exits.
    pub fn tpr(&self) -> u8 {
        self.register(TPR) as u8
    }

    /// The virtual PPR as the CPU last wrote it.
    pub fn ppr(&self) -> u8 {
        self.register(PPR) as u8
    }

    /// Requests `vector` (VIRR), with its trigger mode in the TMR (SDM Vol. 3A 11.8.4), as a local
    /// APIC accepting an interrupt would. The caller then raises RVI ([`InterruptStatus::request`]).
    pub fn request(&mut self, vector: u8, level_triggered: bool) {
        *self.vector_word(IRR, vector) |= 1 << (vector % 32);
        let tmr = self.vector_word(TMR, vector);
        if level_triggered {
            *tmr |= 1 << (vector % 32);
        } else {
            *tmr &= !(1 << (vector % 32));
        }
    }

    pub fn is_requested(&self, vector: u8) -> bool {
        self.vector_bit(IRR, vector)
    }

    pub fn is_in_service(&self, vector: u8) -> bool {
        self.vector_bit(ISR, vector)
    }

    pub fn is_level_triggered(&self, vector: u8) -> bool {
        self.vector_bit(TMR, vector)
    }

    /// The highest vector in VIRR: what RVI must be at least.
    pub fn highest_requested(&self) -> Option<u8> {
        self.highest(IRR)
    }

    pub fn highest_in_service(&self) -> Option<u8> {
        self.highest(ISR)
    }

    /// What the CPU does to the page when it delivers `vector` (SDM Vol. 3C 29.2.2: VIRR bit to
    /// VISR), for host tests of the code around it.
    #[cfg(test)]
    pub fn deliver_as_the_cpu_does(&mut self, vector: u8) {
        *self.vector_word(IRR, vector) &= !(1 << (vector % 32));
        *self.vector_word(ISR, vector) |= 1 << (vector % 32);
    }

    /// Whether a requested vector would be delivered were the guest interruptible: RVI's priority
    /// class above VPPR's, where VPPR follows from VTPR and SVI (SDM Vol. 3C 29.1.3, 29.2.1).
    pub fn deliverable(&self, status: InterruptStatus) -> bool {
        let svi_class = status.svi & 0xF0;
        let tpr = self.tpr();
        let ppr = if tpr & 0xF0 >= svi_class {
            tpr
        } else {
            svi_class
        };
        status.rvi >> 4 > ppr >> 4
    }
}

/// The guest interrupt status VMCS field (SDM Vol. 3C 25.4.2): RVI in bits 7:0, SVI in 15:8.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InterruptStatus {
    /// Requesting virtual interrupt: the highest vector in VIRR (0: none).
    pub rvi: u8,
    /// Servicing virtual interrupt: the highest vector in VISR (0: none).
    pub svi: u8,
}

impl InterruptStatus {
    pub fn decode(raw: u16) -> Self {
        InterruptStatus {
            rvi: raw as u8,
            svi: (raw >> 8) as u8,
        }
    }

    pub fn encode(self) -> u16 {
        u16::from(self.rvi) | u16::from(self.svi) << 8
    }

    /// RVI after the host requested vectors up to `highest`: the CPU evaluates pending virtual
    /// interrupts from RVI at VM entry, not from VIRR (29.2.1), so RVI must name the highest.
    pub fn request(self, highest: u8) -> Self {
        InterruptStatus {
            rvi: self.rvi.max(highest),
            ..self
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_is_one_aligned_frame() {
        assert_eq!(core::mem::size_of::<VirtualApicPage>(), 4096);
        let page = VirtualApicPage::new();
        assert_eq!(page.address() % 4096, 0);
    }

    #[test]
    fn requests_land_in_irr_and_tmr_at_the_sdm_offsets() {
        let mut page = VirtualApicPage::new();
        page.request(0x31, false);
        page.request(0xE5, true);
        // Vector 0x31 is bit 17 of IRR word 1 (offset 0x210); 0xE5 bit 5 of word 7 (0x270).
        assert_eq!(page.0[0x210 / 4], 1 << 17);
        assert_eq!(page.0[0x270 / 4], 1 << 5);
        assert_eq!(page.0[0x1F0 / 4], 1 << 5);
        assert_eq!(page.0[0x190 / 4], 0);
        assert!(page.is_requested(0x31) && page.is_requested(0xE5));
        assert!(page.is_level_triggered(0xE5) && !page.is_level_triggered(0x31));
        assert_eq!(page.highest_requested(), Some(0xE5));
        // An edge request of a vector clears the level recorded for it before.
        page.request(0xE5, false);
        assert!(!page.is_level_triggered(0xE5));
    }

    #[test]
    fn in_service_and_tpr_are_read_where_the_cpu_writes_them() {
        let mut page = VirtualApicPage::new();
        page.0[TPR / 4] = 0x40;
        page.0[PPR / 4] = 0x50;
        page.0[(ISR + 0x20) / 4] = 1 << 16; // vector 0x50
        assert_eq!((page.tpr(), page.ppr()), (0x40, 0x50));
        assert!(page.is_in_service(0x50));
        assert_eq!(page.highest_in_service(), Some(0x50));
        assert_eq!(VirtualApicPage::new().highest_in_service(), None);
    }

    #[test]
    fn delivery_needs_rvi_above_the_class_of_tpr_and_svi() {
        let mut page = VirtualApicPage::new();
        let status = |rvi, svi| InterruptStatus { rvi, svi };
        assert!(page.deliverable(status(0x31, 0)));
        assert!(!page.deliverable(status(0, 0)));
        // SVI 0x35 is class 3: 0x3F waits, 0x41 goes.
        assert!(!page.deliverable(status(0x3F, 0x35)));
        assert!(page.deliverable(status(0x41, 0x35)));
        page.0[TPR / 4] = 0x4A;
        assert!(!page.deliverable(status(0x4F, 0)));
        assert!(page.deliverable(status(0x50, 0)));
    }

    #[test]
    fn interrupt_status_packs_rvi_low_and_svi_high_and_rvi_only_rises() {
        let s = InterruptStatus::decode(0x3541);
        assert_eq!((s.rvi, s.svi), (0x41, 0x35));
        assert_eq!(s.encode(), 0x3541);
        assert_eq!(s.request(0x30).rvi, 0x41);
        assert_eq!(
            s.request(0x60),
            InterruptStatus {
                rvi: 0x60,
                svi: 0x35
            }
        );
    }
}
