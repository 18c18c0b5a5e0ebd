//! The guest's view of an assigned function's MSI-X (PCI Local Bus 3.0 6.8.2): its own copy of the
//! table (address, data, per-vector mask for each entry) and of the capability's enable and
//! function-mask bits. The hardware's table and Message Control stay under host control: the pages
//! holding the table and the PBA are left out of the guest's EPT, guest accesses to them arrive as
//! EPT violations and come here; each change that alters what an entry should deliver is reported as
//! an [`MsixRequest`] for the caller to turn into an interrupt-remapping entry (`guest_msi`).
//!
//! Accesses in those pages but outside the table are forwarded to the device (the PBA is read from
//! the hardware, which is where pending bits live; other registers sharing the page are the
//! device's). PCI 3.0 6.8.2 allows DWORD and aligned QWORD table accesses; this model accepts any
//! access inside one entry, so a guest doing byte accesses is not stopped.

use crate::pci::{Bar, BarKind, Bdf, MsixCapability};
use crate::vmm::msi_request::MsiRequest;
use crate::vtd::irte::MsiMessage;
use alloc::vec::Vec;

const PAGE: u64 = 4096;
/// Message Control bit 15: MSI-X Enable; bit 14: Function Mask (PCI 3.0 6.8.2.3).
pub const CONTROL_ENABLE: u16 = 1 << 15;
pub const CONTROL_FUNCTION_MASK: u16 = 1 << 14;
/// Vector Control bit 0: Mask Bit (PCI 3.0 6.8.2.9); set at reset.
const VECTOR_MASKED: u32 = 1;
/// Entry layout (PCI 3.0 Figure 6-11): address low, address high, data, vector control.
const ENTRY_BYTES: u64 = MsixCapability::ENTRY_SIZE as u64;

/// What the guest asked of one MSI-X table entry, in its own terms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsixRequest {
    pub bdf: Bdf,
    pub entry: u16,
    /// The capability's MSI-X Enable.
    pub enabled: bool,
    /// The entry's mask bit or the function mask.
    pub masked: bool,
    /// Message Data bits 7:0.
    pub vector: u8,
    /// Message Address bits 19:12: the destination APIC ID (xAPIC format, SDM 11.11.1).
    pub destination: u8,
}

impl MsixRequest {
    /// Whether the entry should deliver interrupts.
    pub const fn live(&self) -> bool {
        self.enabled && !self.masked
    }

    /// The same request in MSI terms (the IRTE is built from the same facts).
    pub const fn as_msi(&self) -> MsiRequest {
        MsiRequest {
            bdf: self.bdf,
            enabled: self.enabled,
            vector: self.vector,
            destination: self.destination,
            masked: self.masked,
        }
    }
}

/// One table entry as the guest wrote it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Entry {
    address: u64,
    data: u32,
    vector_control: u32,
}

impl Entry {
    const RESET: Entry = Entry {
        address: 0,
        data: 0,
        vector_control: VECTOR_MASKED,
    };

    fn to_bytes(self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&self.address.to_le_bytes());
        b[8..12].copy_from_slice(&self.data.to_le_bytes());
        b[12..].copy_from_slice(&self.vector_control.to_le_bytes());
        b
    }

    fn from_bytes(b: [u8; 16]) -> Entry {
        let word = |at: usize| u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
        Entry {
            // Message Address bits 1:0 are reserved zero (PCI 3.0 6.8.2.6).
            address: (u64::from(word(4)) << 32 | u64::from(word(0))) & !0b11,
            data: word(8),
            // Vector Control: only the mask bit is defined; the rest reads as zero.
            vector_control: word(12) & VECTOR_MASKED,
        }
    }
}

/// What a guest access to a trapped MSI-X page comes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MsixOutcome {
    /// Perform the access on the device at this host-physical address (guest-physical = host).
    Forward { hpa: u64 },
    /// Emulated: the value a read returns (0 for a write that changed nothing the device sees).
    Emulated(u64),
    /// A write changed what this entry delivers.
    Request(MsixRequest),
}

/// An assigned function's MSI-X as its guest sees it.
#[derive(Clone, Debug)]
pub struct GuestMsix {
    bdf: Bdf,
    cap: MsixCapability,
    /// Host-physical (= guest-physical) addresses of the table and the PBA.
    table: u64,
    pba: u64,
    /// The BARs holding them (start, end): accesses are forwarded only inside these.
    bars: [(u64, u64); 2],
    /// Message Control bits 15:14 as the guest wrote them.
    control: u16,
    entries: Vec<Entry>,
}

/// The memory BAR `bir` of `bars` as (start, end).
fn memory_bar(bars: &[Bar], bir: u8) -> Option<(u64, u64)> {
    bars.iter()
        .find(|b| b.index == bir && !matches!(b.kind, BarKind::Io))
        .map(|b| (b.base, b.base + b.size))
}

/// The 4 KiB pages (BAR index, offset of the page in the BAR) holding `cap`'s table and PBA: the
/// ones that must stay out of the guest's EPT.
pub fn trapped_pages(cap: &MsixCapability) -> Vec<(u8, u64)> {
    let mut pages = Vec::new();
    for (bir, offset, bytes) in [
        (cap.table.bir, cap.table.offset, cap.table_bytes()),
        (cap.pba.bir, cap.pba.offset, cap.pba_bytes()),
    ] {
        let first = u64::from(offset) & !(PAGE - 1);
        let end = u64::from(offset) + u64::from(bytes.max(1));
        let mut page = first;
        while page < end {
            if !pages.contains(&(bir, page)) {
                pages.push((bir, page));
            }
            page += PAGE;
        }
    }
    pages
}

impl GuestMsix {
    /// The guest's MSI-X of `bdf`, in its reset state (disabled, every entry masked); `None` if the
    /// table or PBA does not lie in one of the function's memory BARs.
    pub fn new(bdf: Bdf, cap: MsixCapability, bars: &[Bar]) -> Option<GuestMsix> {
        let table_bar = memory_bar(bars, cap.table.bir)?;
        let pba_bar = memory_bar(bars, cap.pba.bir)?;
        Some(GuestMsix {
            bdf,
            table: table_bar.0 + u64::from(cap.table.offset),
            pba: pba_bar.0 + u64::from(cap.pba.offset),
            bars: [table_bar, pba_bar],
            cap,
            control: 0,
            entries: alloc::vec![Entry::RESET; usize::from(cap.table_size)],
        })
    }

    pub fn capability(&self) -> &MsixCapability {
        &self.cap
    }

    /// Host-physical address of the device's table.
    pub fn table_address(&self) -> u64 {
        self.table
    }

    /// Whether `gpa` lies in a page this model traps.
    pub fn traps(&self, gpa: u64) -> bool {
        let page = gpa & !(PAGE - 1);
        let covers = |start: u64, bytes: u32| {
            let first = start & !(PAGE - 1);
            (first..start + u64::from(bytes.max(1))).contains(&page)
        };
        covers(self.table, self.cap.table_bytes()) || covers(self.pba, self.cap.pba_bytes())
    }

    /// Message Control as the guest reads it: the hardware's (table size) with the guest's enable
    /// and function mask.
    pub fn read_control(&self, hardware: u16) -> u16 {
        (hardware & !(CONTROL_ENABLE | CONTROL_FUNCTION_MASK)) | self.control
    }

    /// The guest wrote Message Control: returns the entries whose delivery changed (turned on or
    /// off by the enable or the function mask).
    pub fn write_control(&mut self, value: u16) -> Vec<MsixRequest> {
        let before: Vec<bool> = (0..self.entries.len())
            .map(|i| self.request(i as u16).live())
            .collect();
        self.control = value & (CONTROL_ENABLE | CONTROL_FUNCTION_MASK);
        (0..self.entries.len() as u16)
            .map(|i| self.request(i))
            .zip(before)
            .filter(|(now, was)| now.live() != *was)
            .map(|(now, _)| now)
            .collect()
    }

    /// What entry `entry` should deliver now.
    pub fn request(&self, entry: u16) -> MsixRequest {
        let e = self.entries[usize::from(entry)];
        MsixRequest {
            bdf: self.bdf,
            entry,
            enabled: self.control & CONTROL_ENABLE != 0,
            masked: e.vector_control & VECTOR_MASKED != 0
                || self.control & CONTROL_FUNCTION_MASK != 0,
            vector: e.data as u8,
            destination: (e.address >> 12) as u8,
        }
    }

    /// A guest access of `size` bytes (1, 2, 4 or 8) at `gpa` in a trapped page; `write` holds the
    /// value written.
    pub fn access(&mut self, gpa: u64, size: u8, write: Option<u64>) -> MsixOutcome {
        let table_end = self.table + u64::from(self.cap.table_bytes());
        let pba_end = self.pba + u64::from(self.cap.pba_bytes());
        let size = u64::from(size.clamp(1, 8));
        if (self.table..table_end).contains(&gpa) {
            let index = ((gpa - self.table) / ENTRY_BYTES) as u16;
            let within = ((gpa - self.table) % ENTRY_BYTES) as usize;
            if within as u64 + size > ENTRY_BYTES {
                // Straddles two entries: not an access PCI 3.0 6.8.2 allows. Reads see ones.
                return MsixOutcome::Emulated(if write.is_some() { 0 } else { u64::MAX });
            }
            let old = self.entries[usize::from(index)];
            let mut bytes = old.to_bytes();
            let span = within..within + size as usize;
            let Some(value) = write else {
                let mut out = [0u8; 8];
                out[..size as usize].copy_from_slice(&bytes[span]);
                return MsixOutcome::Emulated(u64::from_le_bytes(out));
            };
            bytes[span].copy_from_slice(&value.to_le_bytes()[..size as usize]);
            let before = self.request(index);
            self.entries[usize::from(index)] = Entry::from_bytes(bytes);
            let after = self.request(index);
            // The hardware only needs telling when delivery or its message changes: a masked
            // entry's address and data are applied when it is unmasked.
            if after != before && (after.live() || before.live()) {
                return MsixOutcome::Request(after);
            }
            return MsixOutcome::Emulated(0);
        }
        if (self.pba..pba_end).contains(&gpa) && write.is_some() {
            return MsixOutcome::Emulated(0); // the PBA is read-only (PCI 3.0 6.8.2.10)
        }
        // Only inside the device's BAR: a trapped page may reach past a small BAR.
        if self
            .bars
            .iter()
            .any(|&(start, end)| gpa >= start && gpa + size <= end)
        {
            return MsixOutcome::Forward { hpa: gpa };
        }
        MsixOutcome::Emulated(if write.is_some() { 0 } else { u64::MAX })
    }
}

/// Byte offset of entry `entry`'s Vector Control in the table.
const fn vector_control_at(entry: u16) -> u64 {
    entry as u64 * ENTRY_BYTES + 12
}

/// The device's MSI-X table, as the host reaches it.
pub trait MsixTable {
    /// Reads the dword at byte `offset` of the table.
    fn read32(&self, offset: u64) -> u32;
    fn write32(&mut self, offset: u64, value: u32);
}

/// Programs entry `entry` of the device's table with `message` and unmasks it; `None` masks it.
/// The entry is masked while address and data change, so the device never signals a half-written
/// message (PCI 3.0 6.8.2.9: changing an unmasked entry's message is undefined).
pub fn program_table_entry(table: &mut impl MsixTable, entry: u16, message: Option<MsiMessage>) {
    let base = u64::from(entry) * ENTRY_BYTES;
    let control = table.read32(vector_control_at(entry));
    table.write32(vector_control_at(entry), control | VECTOR_MASKED);
    let Some(m) = message else { return };
    table.write32(base, m.address as u32);
    table.write32(base + 4, (m.address >> 32) as u32);
    table.write32(base + 8, m.data);
    table.write32(vector_control_at(entry), control & !VECTOR_MASKED);
}

/// Masks every entry of the device's table (before the host enables MSI-X, and when the guest
/// gives the device up).
pub fn mask_all(table: &mut impl MsixTable, entries: u16) {
    for entry in 0..entries {
        program_table_entry(table, entry, None);
    }
}

/// The device's table through the host's identity map of MMIO.
pub struct PhysicalMsixTable {
    base: u64,
}

impl PhysicalMsixTable {
    /// # Safety
    /// `base` must be the host-physical address of a device's MSI-X table, identity-mapped uncached,
    /// with the device enabled for memory decoding.
    pub unsafe fn new(base: u64) -> Self {
        Self { base }
    }
}

impl MsixTable for PhysicalMsixTable {
    fn read32(&self, offset: u64) -> u32 {
        // SAFETY: `new`'s contract; table offsets are dword-aligned.
        unsafe { core::ptr::read_volatile((self.base + offset) as *const u32) }
    }
    fn write32(&mut self, offset: u64, value: u32) {
        // SAFETY: as above.
        unsafe { core::ptr::write_volatile((self.base + offset) as *mut u32, value) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// QEMU's e1000e: MSI-X with 5 entries, table at BAR3 + 0, PBA at BAR3 + 0x2000
    /// (pci/tests.rs measured it), BAR3 at 0xfebd0000 (16 KiB).
    fn e1000e() -> GuestMsix {
        let cap = MsixCapability::decode(0xA0, 0x0004, 0x3, 0x2003);
        let bars = [Bar {
            index: 3,
            kind: BarKind::Memory32 {
                prefetchable: false,
            },
            base: 0xfebd_0000,
            size: 0x4000,
        }];
        GuestMsix::new(Bdf::new(0, 0, 2, 0).unwrap(), cap, &bars).unwrap()
    }

    const TABLE: u64 = 0xfebd_0000;

    #[test]
    fn trapped_pages_are_the_table_and_pba_pages() {
        let m = e1000e();
        assert_eq!(trapped_pages(m.capability()), [(3, 0), (3, 0x2000)]);
        assert!(m.traps(TABLE + 0x10) && m.traps(TABLE + 0xFFF) && m.traps(TABLE + 0x2008));
        assert!(!m.traps(TABLE + 0x1000) && !m.traps(TABLE + 0x3000));
        // 300 entries (4800 bytes) span two pages.
        let big = MsixCapability::decode(0, 299, 0x1000, 0x0);
        assert_eq!(trapped_pages(&big), [(0, 0x1000), (0, 0x2000), (0, 0)]);
    }

    #[test]
    fn entries_reset_masked_and_read_back_what_the_guest_wrote() {
        let mut m = e1000e();
        // PCI 3.0 6.8.2.9: mask bit set at reset.
        assert_eq!(m.access(TABLE + 12, 4, None), MsixOutcome::Emulated(1));
        assert_eq!(
            m.access(TABLE + 0x10, 4, Some(0xFEE0_1003)),
            MsixOutcome::Emulated(0),
            "a masked entry's address is kept, nothing to do yet"
        );
        assert_eq!(
            m.access(TABLE + 0x10, 8, None),
            MsixOutcome::Emulated(0xFEE0_1000),
            "bits 1:0 reserved, high dword 0"
        );
        m.access(TABLE + 0x18, 2, Some(0x4041));
        assert_eq!(
            m.access(TABLE + 0x18, 4, None),
            MsixOutcome::Emulated(0x4041)
        );
        assert_eq!(m.access(TABLE + 0x19, 1, None), MsixOutcome::Emulated(0x40));
        assert_eq!(
            m.access(TABLE + 0x1C, 8, None),
            MsixOutcome::Emulated(u64::MAX),
            "straddles entries 1 and 2"
        );
    }

    #[test]
    fn unmasking_an_enabled_entry_asks_for_its_vector() {
        let mut m = e1000e();
        assert!(m.write_control(CONTROL_ENABLE).is_empty(), "all masked");
        m.access(TABLE, 4, Some(0xFEE0_2000));
        m.access(TABLE + 8, 4, Some(0x51));
        let MsixOutcome::Request(r) = m.access(TABLE + 12, 4, Some(0)) else {
            panic!("unmask must be reported")
        };
        assert_eq!(
            (r.entry, r.vector, r.destination, r.live()),
            (0, 0x51, 2, true)
        );
        // Rewriting the data of a live entry is a change too.
        let MsixOutcome::Request(r) = m.access(TABLE + 8, 4, Some(0x52)) else {
            panic!()
        };
        assert_eq!(r.vector, 0x52);
        // The function mask turns it off, clearing it back on.
        let off = m.write_control(CONTROL_ENABLE | CONTROL_FUNCTION_MASK);
        assert_eq!(off.len(), 1);
        assert!(off[0].masked && !off[0].live());
        let on = m.write_control(CONTROL_ENABLE);
        assert!(on[0].live());
        // Disabling: entry 0 goes off; entries that were masked are not mentioned.
        let off = m.write_control(0);
        assert_eq!((off.len(), off[0].enabled), (1, false));
        // Message Control: hardware's table size (bits 10:0) with the guest's bits 15:14.
        m.write_control(CONTROL_ENABLE);
        assert_eq!(m.read_control(0x4004), 0x8004);
    }

    #[test]
    fn pba_and_other_registers_are_forwarded_pba_writes_dropped() {
        let mut m = e1000e();
        assert_eq!(
            m.access(TABLE + 0x2000, 8, None),
            MsixOutcome::Forward {
                hpa: TABLE + 0x2000
            }
        );
        assert_eq!(
            m.access(TABLE + 0x2000, 8, Some(1)),
            MsixOutcome::Emulated(0)
        );
        assert_eq!(
            m.access(TABLE + 0x50, 4, Some(7)),
            MsixOutcome::Forward { hpa: TABLE + 0x50 },
            "past the 5 entries: the device's own register"
        );
        // A 4 KiB BAR whose page the table shares with nothing else: beyond it is no device.
        let cap = MsixCapability::decode(0xA0, 0x0000, 0x0, 0x800);
        let small = [Bar {
            index: 0,
            kind: BarKind::Memory64 {
                prefetchable: false,
            },
            base: 0x1_0000_0000,
            size: 0x1000,
        }];
        let mut m = GuestMsix::new(Bdf::new(0, 0, 2, 0).unwrap(), cap, &small).unwrap();
        assert!(m.traps(0x1_0000_0FFC));
        assert_eq!(
            m.access(0x1_0000_0FFC, 8, None),
            MsixOutcome::Emulated(u64::MAX),
            "would reach past the BAR"
        );
    }

    #[derive(Default)]
    struct FakeTable(alloc::vec::Vec<(u64, u32)>, [u32; 20]);

    impl MsixTable for FakeTable {
        fn read32(&self, offset: u64) -> u32 {
            self.1[(offset / 4) as usize]
        }
        fn write32(&mut self, offset: u64, value: u32) {
            self.0.push((offset, value));
            self.1[(offset / 4) as usize] = value;
        }
    }

    #[test]
    fn programming_masks_writes_the_message_then_unmasks() {
        let mut t = FakeTable::default();
        t.1[7] = 1; // entry 1 masked, as at reset
        let m = MsiMessage {
            address: 0xFEE0_0030,
            data: 0,
        };
        program_table_entry(&mut t, 1, Some(m));
        // Entry 1 at 0x10: mask (0x1C), address 0x10/0x14, data 0x18, unmask (0x1C).
        assert_eq!(
            t.0,
            [
                (0x1C, 1),
                (0x10, 0xFEE0_0030),
                (0x14, 0),
                (0x18, 0),
                (0x1C, 0)
            ]
        );
        program_table_entry(&mut t, 1, None);
        assert_eq!(t.1[7], 1);
        mask_all(&mut t, 5);
        assert!((0..5).all(|e| t.1[e * 4 + 3] & 1 == 1));
    }
}
