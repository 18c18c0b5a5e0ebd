//! Root and context tables (legacy mode, VT-d 3.4.2, 9.1 and 9.3): requester ID -> domain.
//!
//! The root table has one 128-bit entry per bus pointing at that bus's context table; a context
//! table has one 128-bit entry per devfn naming the device's domain, the domain's second-level
//! tables and their width. A device whose entry is not present is blocked (fault reason 0x1/0x2).

use super::second_level::DomainTables;
use super::{store_entry128, DomainId, SourceId, VtdError};
use crate::caps::vtd::AddressWidth;
use crate::memory::FrameAlloc;

const PRESENT: u64 = 1 << 0;
const ADDR_MASK: u64 = 0xFFFF_FFFF_FFFF_F000;

/// A root entry (VT-d 9.1): P = bit 0, context-table pointer = bits 63:12; bits 127:64 reserved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RootEntry {
    pub lo: u64,
    pub hi: u64,
}

impl RootEntry {
    pub const fn new(context_table: u64) -> RootEntry {
        RootEntry {
            lo: (context_table & ADDR_MASK) | PRESENT,
            hi: 0,
        }
    }
    pub const fn present(&self) -> bool {
        self.lo & PRESENT != 0
    }
    pub const fn context_table(&self) -> u64 {
        self.lo & ADDR_MASK
    }
}

/// Context-entry TT field (VT-d 9.3, bits 3:2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TranslationType {
    /// 00: untranslated requests go through the second-level tables; device-TLB off.
    SecondLevel = 0b00,
    /// 10: untranslated requests pass through untranslated (needs ECAP.PT).
    PassThrough = 0b10,
}

/// A context entry (VT-d 9.3). Low half: P (0), FPD (1), TT (3:2), SLPTPTR (63:12).
/// High half: AW (66:64), DID (87:72).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ContextEntry {
    pub lo: u64,
    pub hi: u64,
}

impl ContextEntry {
    const FPD: u64 = 1 << 1;

    /// Untranslated DMA of the device goes through `tables` under domain `domain`.
    pub fn translated(domain: DomainId, tables: &DomainTables) -> ContextEntry {
        ContextEntry::new(
            domain,
            tables.root(),
            tables.address_width(),
            TranslationType::SecondLevel,
        )
    }

    /// DMA passes through untranslated. `widest` must be the largest width the unit supports
    /// (`VtdCap::supported_widths().max()`; VT-d 9.3, AW field, for TT = 10).
    pub fn pass_through(domain: DomainId, widest: AddressWidth) -> ContextEntry {
        ContextEntry::new(domain, 0, widest, TranslationType::PassThrough)
    }

    pub const fn new(
        domain: DomainId,
        slptptr: u64,
        width: AddressWidth,
        tt: TranslationType,
    ) -> ContextEntry {
        ContextEntry {
            lo: (slptptr & ADDR_MASK) | (tt as u64) << 2 | PRESENT,
            // AW = the SAGAW bit index: 1 = 39-bit, 2 = 48-bit, 3 = 57-bit (VT-d 9.3).
            hi: width as u64 | (domain as u64) << 8,
        }
    }

    /// Suppress fault recording for this device (FPD, bit 1): for quarantined devices that
    /// would otherwise flood the fault log.
    pub const fn without_fault_reports(mut self) -> ContextEntry {
        self.lo |= Self::FPD;
        self
    }

    pub const fn present(&self) -> bool {
        self.lo & PRESENT != 0
    }
    pub const fn domain(&self) -> DomainId {
        (self.hi >> 8) as u16
    }
    pub const fn second_level_root(&self) -> u64 {
        self.lo & ADDR_MASK
    }
    pub const fn aw_field(&self) -> u64 {
        self.hi & 0x7
    }
    pub const fn translation_type(&self) -> u64 {
        (self.lo >> 2) & 0x3
    }
    pub const fn faults_reported(&self) -> bool {
        self.lo & Self::FPD == 0
    }
}

/// Why [`RootTable::assign`] refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AssignError {
    OutOfMemory,
    /// The device already has a present entry; remove it (and invalidate) first, since
    /// hardware may cache the old entry (VT-d 6.5.3.3 rule for present-entry changes).
    AlreadyAssigned {
        domain: DomainId,
    },
}

impl From<AssignError> for VtdError {
    fn from(e: AssignError) -> VtdError {
        match e {
            AssignError::OutOfMemory => VtdError::OutOfMemory,
            AssignError::AlreadyAssigned { .. } => {
                VtdError::Unsupported("re-assigning a present context entry")
            }
        }
    }
}

/// A unit's root table and the context tables below it.
#[derive(Debug)]
pub struct RootTable {
    phys: u64,
}

impl RootTable {
    /// An empty root table: every device is blocked.
    pub fn new(alloc: &mut impl FrameAlloc) -> Result<RootTable, VtdError> {
        Ok(RootTable {
            phys: alloc.alloc_zeroed().ok_or(VtdError::OutOfMemory)?,
        })
    }

    /// The physical address to program into RTADDR_REG.
    pub fn phys(&self) -> u64 {
        self.phys
    }

    pub fn root_entry(&self, alloc: &mut impl FrameAlloc, bus: u8) -> RootEntry {
        let t = alloc.table_mut(self.phys);
        RootEntry {
            lo: t[2 * bus as usize],
            hi: t[2 * bus as usize + 1],
        }
    }

    /// The device's context entry, if its bus has a context table.
    pub fn context_entry(
        &self,
        alloc: &mut impl FrameAlloc,
        sid: SourceId,
    ) -> Option<ContextEntry> {
        let root = self.root_entry(alloc, sid.bus());
        if !root.present() {
            return None;
        }
        let t = alloc.table_mut(root.context_table());
        let i = 2 * sid.devfn() as usize;
        Some(ContextEntry {
            lo: t[i],
            hi: t[i + 1],
        })
    }

    /// Makes `entry` the device's context entry. The entry goes from not-present to present,
    /// so afterwards the caller needs a write-buffer flush (CAP.RWBF) or, under caching mode
    /// (CAP.CM), a context-cache invalidation for domain 0 (VT-d 6.1).
    pub fn assign(
        &mut self,
        alloc: &mut impl FrameAlloc,
        sid: SourceId,
        entry: ContextEntry,
    ) -> Result<(), AssignError> {
        let root = self.root_entry(alloc, sid.bus());
        let context_table = if root.present() {
            root.context_table()
        } else {
            let table = alloc.alloc_zeroed().ok_or(AssignError::OutOfMemory)?;
            let r = RootEntry::new(table);
            store_entry128(alloc.table_mut(self.phys), sid.bus() as usize, r.lo, r.hi);
            table
        };
        let t = alloc.table_mut(context_table);
        let i = sid.devfn() as usize;
        if t[2 * i] & PRESENT != 0 {
            return Err(AssignError::AlreadyAssigned {
                domain: (t[2 * i + 1] >> 8) as u16,
            });
        }
        store_entry128(t, i, entry.lo, entry.hi);
        Ok(())
    }

    /// Clears the device's context entry so that its DMA is blocked, returning the old entry.
    /// The caller must then invalidate the context cache (device-selective) and the IOTLB for
    /// the old domain before the removal is in force (VT-d 6.5.3.3).
    pub fn remove(&mut self, alloc: &mut impl FrameAlloc, sid: SourceId) -> Option<ContextEntry> {
        let old = self
            .context_entry(alloc, sid)
            .filter(ContextEntry::present)?;
        let table = self.root_entry(alloc, sid.bus()).context_table();
        store_entry128(alloc.table_mut(table), sid.devfn() as usize, 0, 0);
        Some(old)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::test_frames::TestFrames;

    #[test]
    fn entries_encoded_by_hand() {
        // Root entry: context table at 0x12_3456_7000, present -> lo 0x12_3456_7001, hi 0.
        let r = RootEntry::new(0x12_3456_7000);
        assert_eq!((r.lo, r.hi), (0x12_3456_7001, 0));
        // Context entry, domain 5, SLPTPTR 0xABC000, 48-bit: lo = ptr | TT 00 | P = 0xABC001;
        // hi = DID 5 << 8 | AW 010 = 0x502.
        let c = ContextEntry::new(
            5,
            0xABC000,
            AddressWidth::Bits48Level4,
            TranslationType::SecondLevel,
        );
        assert_eq!((c.lo, c.hi), (0xABC001, 0x502));
        // Pass-through, domain 0x1234, 39-bit, FPD: lo = TT 10 (bits 3:2 = 0x8) | FPD | P = 0xB;
        // hi = 0x1234 << 8 | 001 = 0x12_3401.
        let p =
            ContextEntry::pass_through(0x1234, AddressWidth::Bits39Level3).without_fault_reports();
        assert_eq!((p.lo, p.hi), (0xB, 0x12_3401));
        assert_eq!(
            (p.domain(), p.translation_type(), p.aw_field()),
            (0x1234, 2, 1)
        );
        assert!(!p.faults_reported());
    }

    #[test]
    fn assign_and_remove() {
        let mut f = TestFrames::default();
        let mut root = RootTable::new(&mut f).unwrap();
        let tables = DomainTables::new(&mut f, AddressWidth::Bits39Level3).unwrap();
        let edu = SourceId::new(0, 3, 0); // devfn 0x18
        assert_eq!(root.context_entry(&mut f, edu), None);

        root.assign(&mut f, edu, ContextEntry::translated(7, &tables))
            .unwrap();
        let rt = f.table(root.phys());
        assert_eq!(rt[0] & 1, 1, "bus 0 root entry present");
        assert!(rt[2..].iter().all(|&e| e == 0), "other buses untouched");
        let ct = rt[0] & !0xFFF;
        // devfn 0x18 -> qwords 0x30, 0x31.
        assert_eq!(f.table(ct)[0x30], tables.root() | 1);
        assert_eq!(f.table(ct)[0x31], 7 << 8 | 1);

        // A second device on the same bus reuses the context table.
        let other = SourceId::new(0, 4, 0);
        root.assign(&mut f, other, ContextEntry::translated(8, &tables))
            .unwrap();
        assert_eq!(f.allocated(), 3); // root table, SL top table, one context table
        assert_eq!(
            root.assign(&mut f, edu, ContextEntry::translated(9, &tables)),
            Err(AssignError::AlreadyAssigned { domain: 7 })
        );

        let old = root.remove(&mut f, edu).unwrap();
        assert_eq!(old.domain(), 7);
        assert_eq!((f.table(ct)[0x30], f.table(ct)[0x31]), (0, 0));
        assert_eq!(root.remove(&mut f, edu), None);
        assert_eq!(
            root.context_entry(&mut f, other).map(|c| c.domain()),
            Some(8)
        );

        // A device on another bus gets its own context table.
        root.assign(
            &mut f,
            SourceId::new(2, 0, 1),
            ContextEntry::translated(7, &tables),
        )
        .unwrap();
        assert_eq!(f.table(root.phys())[4] & 1, 1);
    }
}
