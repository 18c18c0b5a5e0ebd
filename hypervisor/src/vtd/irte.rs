//! Interrupt remapping: the remapped-format IRTE (VT-d 9.10), the table and its IRTA_REG value,
//! and the remappable-format MSI a device is programmed with (VT-d 5.1.5.2).

use super::{store_entry128, SourceId, VtdError};
use crate::memory::FrameAlloc;

/// Delivery mode (IRTE bits 7:5), with the same encodings as the MSI data register.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeliveryMode {
    Fixed = 0b000,
    LowestPriority = 0b001,
    Smi = 0b010,
    Nmi = 0b100,
    Init = 0b101,
    ExtInt = 0b111,
}

/// The CPU an interrupt goes to (IRTE DST, bits 63:32).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Destination {
    /// 8-bit xAPIC ID, placed in DST bits 15:8 (IRTE bits 47:40), IRTA.EIME = 0.
    XApic(u8),
    /// 32-bit x2APIC ID, all of DST; needs IRTA.EIME = 1 (ECAP.EIM).
    X2Apic(u32),
}

/// Which requesters may use the entry (IRTE SVT/SQ/SID, bits 83:64).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceValidation {
    /// SVT 00: anyone.
    None,
    /// SVT 01: the requester ID must equal `sid` (SQ = 00: compare all 16 bits).
    RequesterId(SourceId),
    /// SVT 10: the requester's bus must be within `first..=last` (for devices behind a
    /// PCIe-to-PCI bridge, whose requests carry the bridge's bus numbers).
    BusRange { first: u8, last: u8 },
}

/// A remapped interrupt: what the IRTE turns the device's message into.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RemappedInterrupt {
    pub vector: u8,
    pub destination: Destination,
    /// Logical destination mode (DM = 1) instead of physical.
    pub logical: bool,
    /// Redirection hint (RH): lowest-priority among the destinations.
    pub redirection_hint: bool,
    /// Level-triggered (TM = 1) instead of edge.
    pub level_triggered: bool,
    pub delivery: DeliveryMode,
    pub source: SourceValidation,
}

impl RemappedInterrupt {
    /// A fixed, edge-triggered, physical-mode interrupt accepted only from `sid`.
    pub fn fixed(vector: u8, destination: Destination, sid: SourceId) -> RemappedInterrupt {
        RemappedInterrupt {
            vector,
            destination,
            logical: false,
            redirection_hint: false,
            level_triggered: false,
            delivery: DeliveryMode::Fixed,
            source: SourceValidation::RequesterId(sid),
        }
    }
}

/// An interrupt-remapping table entry, remapped format (VT-d 9.10):
/// P 0, FPD 1, DM 2, RH 3, TM 4, DLM 7:5, IM 15 (0 = remapped), V 23:16, DST 63:32,
/// SID 79:64, SQ 81:80, SVT 83:82.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Irte {
    pub lo: u64,
    pub hi: u64,
}

impl Irte {
    pub const NOT_PRESENT: Irte = Irte { lo: 0, hi: 0 };
    const PRESENT: u64 = 1 << 0;
    const FPD: u64 = 1 << 1;

    pub fn remapped(irq: &RemappedInterrupt) -> Irte {
        let dst = match irq.destination {
            Destination::XApic(id) => (id as u64) << 8,
            Destination::X2Apic(id) => id as u64,
        };
        let lo = Self::PRESENT
            | (irq.logical as u64) << 2
            | (irq.redirection_hint as u64) << 3
            | (irq.level_triggered as u64) << 4
            | (irq.delivery as u64) << 5
            | (irq.vector as u64) << 16
            | dst << 32;
        let hi = match irq.source {
            SourceValidation::None => 0,
            SourceValidation::RequesterId(sid) => 0b01 << 18 | sid.0 as u64,
            SourceValidation::BusRange { first, last } => {
                0b10 << 18 | (first as u64) << 8 | last as u64
            }
        };
        Irte { lo, hi }
    }

    /// Suppress fault recording for this entry (FPD).
    pub const fn without_fault_reports(mut self) -> Irte {
        self.lo |= Self::FPD;
        self
    }
    pub const fn present(&self) -> bool {
        self.lo & Self::PRESENT != 0
    }
    pub const fn vector(&self) -> u8 {
        (self.lo >> 16) as u8
    }
    /// The raw 32-bit DST field.
    pub const fn destination_field(&self) -> u32 {
        (self.lo >> 32) as u32
    }
}

/// Entries in one 4 KiB frame (16 bytes each).
pub const ENTRIES_PER_FRAME: usize = 256;

/// A unit's interrupt-remapping table: one frame, 256 entries (IRTA.S = 7).
///
/// Larger tables need physically contiguous frames, which `FrameAlloc` does not offer yet.
#[derive(Debug)]
pub struct InterruptRemapTable {
    phys: u64,
    /// IRTA.EIME: x2APIC (32-bit) destinations.
    extended: bool,
}

impl InterruptRemapTable {
    /// An empty table: every remappable interrupt faults (reason 0x22) until entries are set.
    /// `extended` selects x2APIC destinations and must only be set where ECAP.EIM = 1.
    pub fn new(
        alloc: &mut impl FrameAlloc,
        extended: bool,
    ) -> Result<InterruptRemapTable, VtdError> {
        Ok(InterruptRemapTable {
            phys: alloc.alloc_zeroed().ok_or(VtdError::OutOfMemory)?,
            extended,
        })
    }

    pub fn phys(&self) -> u64 {
        self.phys
    }
    /// IRTA.EIME: entries hold x2APIC (32-bit) destinations.
    pub fn extended(&self) -> bool {
        self.extended
    }
    pub fn len(&self) -> usize {
        ENTRIES_PER_FRAME
    }
    pub fn is_empty(&self) -> bool {
        false
    }

    /// IRTA_REG (VT-d 11.4, IRTA_REG): table address 63:12, EIME bit 11, S in 3:0 where the
    /// table holds 2^(S+1) entries.
    pub fn irta_value(&self) -> u64 {
        irta_value(self.phys, self.extended, ENTRIES_PER_FRAME)
    }

    /// Writes entry `index`. An xAPIC destination in an extended table (or the reverse) is a
    /// programming error. A present entry must be cleared and the interrupt-entry cache
    /// invalidated before it is rewritten, as hardware may hold the old entry.
    pub fn set(
        &mut self,
        alloc: &mut impl FrameAlloc,
        index: u16,
        entry: Irte,
    ) -> Result<(), VtdError> {
        let i = index as usize;
        if i >= ENTRIES_PER_FRAME {
            return Err(VtdError::Unsupported("IRTE index beyond the table"));
        }
        store_entry128(alloc.table_mut(self.phys), i, entry.lo, entry.hi);
        Ok(())
    }

    pub fn clear(&mut self, alloc: &mut impl FrameAlloc, index: u16) -> Result<(), VtdError> {
        self.set(alloc, index, Irte::NOT_PRESENT)
    }

    pub fn get(&self, alloc: &mut impl FrameAlloc, index: u16) -> Option<Irte> {
        let i = index as usize;
        (i < ENTRIES_PER_FRAME).then(|| {
            let t = alloc.table_mut(self.phys);
            Irte {
                lo: t[2 * i],
                hi: t[2 * i + 1],
            }
        })
    }

    /// The entry for `irq`, checked against the table's destination mode.
    pub fn entry_for(&self, irq: &RemappedInterrupt) -> Result<Irte, VtdError> {
        match (irq.destination, self.extended) {
            (Destination::X2Apic(_), false) => {
                Err(VtdError::Unsupported("x2APIC destination without EIM"))
            }
            (Destination::XApic(_), true) => {
                Err(VtdError::Unsupported("xAPIC destination in an EIM table"))
            }
            _ => Ok(Irte::remapped(irq)),
        }
    }
}

/// IRTA_REG value for a table of `entries` (a power of two, 2..=65536) at `phys`.
pub const fn irta_value(phys: u64, extended: bool, entries: usize) -> u64 {
    let s = entries.trailing_zeros() as u64 - 1;
    (phys & !0xFFF) | (extended as u64) << 11 | s
}

/// An MSI address/data pair, as written to the device's MSI capability or MSI-X table entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsiMessage {
    pub address: u64,
    pub data: u32,
}

/// The remappable-format MSI for interrupt `handle` (VT-d 5.1.5.2): address 0xFEE in 31:20,
/// handle[14:0] in 19:5, interrupt format (1) in bit 4, SHV in bit 3, handle[15] in bit 2.
/// With a subhandle (multi-message MSI), the data holds it and the interrupt index is
/// handle + subhandle; without one, data is 0.
pub const fn remappable_msi(handle: u16, subhandle: Option<u16>) -> MsiMessage {
    let shv = subhandle.is_some() as u64;
    let address = 0xFEE0_0000
        | ((handle as u64) & 0x7FFF) << 5
        | 1 << 4
        | shv << 3
        | ((handle as u64) >> 15) << 2;
    let data = match subhandle {
        Some(s) => s as u32,
        None => 0,
    };
    MsiMessage { address, data }
}

/// An I/O APIC redirection entry in remappable format (VT-d 5.1.5.1): interrupt_index[14:0] in
/// 63:49, interrupt format (1) in 48, mask 16, trigger mode 15, polarity 13, interrupt_index[15]
/// in 11, delivery mode 10:8 zero. The vector (7:0) must equal the IRTE's: the IOAPIC matches the
/// EOI broadcast of a level-triggered interrupt against it.
pub const fn remappable_ioapic_entry(
    index: u16,
    vector: u8,
    level: bool,
    active_low: bool,
    masked: bool,
) -> u64 {
    ((index as u64) & 0x7FFF) << 49
        | 1 << 48
        | (masked as u64) << 16
        | (level as u64) << 15
        | (active_low as u64) << 13
        | ((index as u64) >> 15) << 11
        | vector as u64
}

/// The interrupt index a remappable-format MSI selects, `None` for compatibility format
/// (VT-d 5.1.5.2; used by tests and by MSI emulation to recognise the hypervisor's own
/// programming).
pub const fn interrupt_index(msg: MsiMessage) -> Option<u32> {
    if msg.address & (1 << 4) == 0 {
        return None;
    }
    let handle = ((msg.address >> 5) & 0x7FFF) as u32 | (((msg.address >> 2) & 1) as u32) << 15;
    if msg.address & (1 << 3) != 0 {
        Some(handle + (msg.data & 0xFFFF))
    } else {
        Some(handle)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::test_frames::TestFrames;

    const EDU: SourceId = SourceId::new(0, 3, 0); // 0x0018

    #[test]
    fn remappable_ioapic_entries_by_hand() {
        // IRTE 5, vector 0x40, edge, active high, unmasked: 5 << 49 = 0xA << 48, format bit 48.
        assert_eq!(
            remappable_ioapic_entry(5, 0x40, false, false, false),
            0x000B_0000_0000_0040
        );
        // IRTE 0x8001 (index bit 15 goes to bit 11), vector 0x52, level, active low, masked:
        // 1 << 49 | 1 << 48 | 1 << 16 | 1 << 15 | 1 << 13 | 1 << 11 | 0x52.
        assert_eq!(
            remappable_ioapic_entry(0x8001, 0x52, true, true, true),
            0x0003_0000_0001_A852
        );
    }

    #[test]
    fn irte_encoded_by_hand() {
        // Vector 0x41 to xAPIC 3, fixed, edge, physical, only from 00:03.0:
        // lo = P | V 0x41 << 16 | (3 << 8) << 32 = 0x0000_0300_0041_0001;
        // hi = SVT 01 << 18 | SID 0x0018 = 0x4_0018.
        let e = Irte::remapped(&RemappedInterrupt::fixed(0x41, Destination::XApic(3), EDU));
        assert_eq!((e.lo, e.hi), (0x0000_0300_0041_0001, 0x4_0018));
        assert_eq!((e.vector(), e.destination_field()), (0x41, 0x300));

        // x2APIC 0x12345678, level, logical, lowest priority, RH, bus range 2..=5, FPD:
        // lo = P | FPD 0x2 | DM 0x4 | RH 0x8 | TM 0x10 | DLM 001 << 5 = 0x20 -> 0x3F,
        //      | 0xEC << 16 | 0x12345678 << 32; hi = SVT 10 << 18 | 0x02 << 8 | 0x05 = 0x8_0205.
        let e = Irte::remapped(&RemappedInterrupt {
            vector: 0xEC,
            destination: Destination::X2Apic(0x1234_5678),
            logical: true,
            redirection_hint: true,
            level_triggered: true,
            delivery: DeliveryMode::LowestPriority,
            source: SourceValidation::BusRange { first: 2, last: 5 },
        })
        .without_fault_reports();
        assert_eq!((e.lo, e.hi), (0x1234_5678_00EC_003F, 0x8_0205));
        // NMI delivery mode 100 lands in bits 7:5 -> 0x80.
        let mut nmi = RemappedInterrupt::fixed(2, Destination::XApic(0), EDU);
        nmi.delivery = DeliveryMode::Nmi;
        nmi.source = SourceValidation::None;
        assert_eq!(
            Irte::remapped(&nmi),
            Irte {
                lo: 0x0002_0081,
                hi: 0
            }
        );
    }

    #[test]
    fn irta_encoded_by_hand() {
        // 256 entries = 2^(7+1) -> S = 7; EIME is bit 11.
        assert_eq!(irta_value(0x1234_5000, false, 256), 0x1234_5007);
        assert_eq!(irta_value(0x1234_5000, true, 256), 0x1234_5807);
        assert_eq!(irta_value(0x1000, false, 65536), 0x100F);
        assert_eq!(irta_value(0x1000, false, 2), 0x1000);
    }

    #[test]
    fn remappable_msi_by_hand() {
        // Handle 5, no subhandle: 0xFEE00000 | 5 << 5 (0xA0) | format bit 0x10 = 0xFEE000B0.
        let m = remappable_msi(5, None);
        assert_eq!((m.address, m.data), (0xFEE0_00B0, 0));
        assert_eq!(interrupt_index(m), Some(5));
        // Handle 0x8001, subhandle 3: 1 << 5 | 0x10 | SHV 0x8 | handle[15] 0x4 = 0xFEE0003C.
        let m = remappable_msi(0x8001, Some(3));
        assert_eq!((m.address, m.data), (0xFEE0_003C, 3));
        assert_eq!(interrupt_index(m), Some(0x8004));
        // Handle 0x7FFF fills bits 19:5.
        assert_eq!(remappable_msi(0x7FFF, None).address, 0xFEEF_FFF0);
        // A compatibility-format MSI (bit 4 clear) selects no entry.
        assert_eq!(
            interrupt_index(MsiMessage {
                address: 0xFEE0_1000,
                data: 0x41
            }),
            None
        );
    }

    #[test]
    fn table_set_get_clear() {
        let mut f = TestFrames::default();
        let mut t = InterruptRemapTable::new(&mut f, false).unwrap();
        assert_eq!(t.irta_value(), t.phys() | 7);
        let irq = RemappedInterrupt::fixed(0x41, Destination::XApic(1), EDU);
        let e = t.entry_for(&irq).unwrap();
        t.set(&mut f, 255, e).unwrap();
        assert_eq!(
            (f.table(t.phys())[510], f.table(t.phys())[511]),
            (e.lo, e.hi)
        );
        assert_eq!(t.get(&mut f, 255), Some(e));
        assert!(t.set(&mut f, 256, e).is_err());
        t.clear(&mut f, 255).unwrap();
        assert!(!t.get(&mut f, 255).unwrap().present());
        let x2 = RemappedInterrupt::fixed(0x41, Destination::X2Apic(1), EDU);
        assert!(t.entry_for(&x2).is_err());
        let ext = InterruptRemapTable::new(&mut f, true).unwrap();
        assert!(ext.entry_for(&irq).is_err());
        assert_eq!(ext.entry_for(&x2).unwrap().destination_field(), 1);
        assert_eq!(ext.irta_value() & 0x800, 0x800);
    }
}
