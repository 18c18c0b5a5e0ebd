//! The ELI shadow IDT (eli.md; Gordon et al., ASPLOS 2012). The guest runs on a copy of its own
//! IDT in which only its assigned device vectors and its exceptions are present; every other
//! vector's gate is not present, so a host interrupt arriving while the guest runs raises #NP,
//! which the exception bitmap turns into a VM exit. Gate format: SDM Vol. 3A 6.14.1 (64-bit IDT
//! gate descriptors); error codes: SDM Vol. 3A 6.13.

use super::exit::{EventType, InterruptionInfo};

/// IDTR limit to load into GUEST_IDTR_LIMIT for the shadow: all 256 gates, so no vector ever
/// exceeds the limit (which would give #GP instead of #NP).
pub const SHADOW_IDT_LIMIT: u16 = 256 * 16 - 1;

/// #NP, the exception a not-present gate raises.
pub const NP_VECTOR: u8 = 11;
/// #GP, raised for a vector beyond IDTR.limit.
pub const GP_VECTOR: u8 = 13;

/// A set of interrupt vectors, one bit each.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VectorSet([u64; 4]);

impl VectorSet {
    pub const fn new() -> Self {
        VectorSet([0; 4])
    }
    pub fn insert(&mut self, v: u8) {
        self.0[usize::from(v / 64)] |= 1 << (v % 64);
    }
    pub fn remove(&mut self, v: u8) {
        self.0[usize::from(v / 64)] &= !(1 << (v % 64));
    }
    pub const fn contains(&self, v: u8) -> bool {
        self.0[(v / 64) as usize] & (1 << (v % 64)) != 0
    }
    pub fn len(&self) -> usize {
        self.0.iter().map(|w| w.count_ones() as usize).sum()
    }
    pub fn is_empty(&self) -> bool {
        self.0 == [0; 4]
    }
    pub fn iter(&self) -> impl Iterator<Item = u8> + '_ {
        (0..=255u8).filter(|&v| self.contains(v))
    }
    pub fn union(&self, other: &Self) -> Self {
        let mut out = *self;
        for (o, x) in out.0.iter_mut().zip(other.0) {
            *o |= x;
        }
        out
    }
}

impl FromIterator<u8> for VectorSet {
    fn from_iter<I: IntoIterator<Item = u8>>(iter: I) -> Self {
        let mut s = VectorSet::new();
        for v in iter {
            s.insert(v);
        }
        s
    }
}

/// Gate types of 64-bit mode (SDM Vol. 3A 3.5, Table 3-2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GateType {
    /// 0xE: IF is cleared on entry.
    Interrupt,
    /// 0xF: IF is left as is.
    Trap,
}

/// A 64-bit IDT gate descriptor (SDM Vol. 3A 6.14.1, Figure 6-8): offset 15:0 in bytes 0-1,
/// selector in bytes 2-3, IST in byte 4 bits 2:0, type/DPL/P in byte 5 (type 3:0, 0 in bit 4,
/// DPL 6:5, P 7), offset 31:16 in bytes 6-7, offset 63:32 in bytes 8-11, bytes 12-15 reserved.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct GateDescriptor {
    offset_low: u16,
    selector: u16,
    ist: u8,
    attributes: u8,
    offset_mid: u16,
    offset_high: u32,
    reserved: u32,
}

const _: () = assert!(core::mem::size_of::<GateDescriptor>() == 16);
const _: () = assert!(core::mem::size_of::<[GateDescriptor; 256]>() == 4096);

impl GateDescriptor {
    /// The all-zero, not-present gate.
    pub const NOT_PRESENT: Self = GateDescriptor {
        offset_low: 0,
        selector: 0,
        ist: 0,
        attributes: 0,
        offset_mid: 0,
        offset_high: 0,
        reserved: 0,
    };

    /// A hidden shadow gate: a 64-bit interrupt gate (type 0xE) with P = 0. The type matters: the CPU
    /// checks the gate type before the present bit, so an all-zero gate raises #GP, not the #NP that
    /// ELI's exception bitmap turns into an exit (SDM Vol. 3A 6.14.1 and the #GP/#NP conditions of
    /// INT n in Vol. 2A: "gate type is not valid" comes before "not present"). Found by Bochs.
    pub const HIDDEN: Self = GateDescriptor {
        attributes: 0x0E,
        ..Self::NOT_PRESENT
    };

    pub const fn new(offset: u64, selector: u16, ist: u8, kind: GateType, dpl: u8) -> Self {
        let type_bits = match kind {
            GateType::Interrupt => 0xE,
            GateType::Trap => 0xF,
        };
        GateDescriptor {
            offset_low: offset as u16,
            selector,
            ist: ist & 7,
            attributes: 0x80 | ((dpl & 3) << 5) | type_bits,
            offset_mid: (offset >> 16) as u16,
            offset_high: (offset >> 32) as u32,
            reserved: 0,
        }
    }

    pub const fn from_bytes(b: [u8; 16]) -> Self {
        GateDescriptor {
            offset_low: u16::from_le_bytes([b[0], b[1]]),
            selector: u16::from_le_bytes([b[2], b[3]]),
            ist: b[4],
            attributes: b[5],
            offset_mid: u16::from_le_bytes([b[6], b[7]]),
            offset_high: u32::from_le_bytes([b[8], b[9], b[10], b[11]]),
            reserved: u32::from_le_bytes([b[12], b[13], b[14], b[15]]),
        }
    }

    pub const fn to_bytes(self) -> [u8; 16] {
        let lo = self.low_qword().to_le_bytes();
        let hi = self.high_qword().to_le_bytes();
        [
            lo[0], lo[1], lo[2], lo[3], lo[4], lo[5], lo[6], lo[7], hi[0], hi[1], hi[2], hi[3],
            hi[4], hi[5], hi[6], hi[7],
        ]
    }

    /// Bytes 0-7 as a little-endian quadword.
    pub const fn low_qword(self) -> u64 {
        (self.offset_low as u64)
            | ((self.selector as u64) << 16)
            | ((self.ist as u64) << 32)
            | ((self.attributes as u64) << 40)
            | ((self.offset_mid as u64) << 48)
    }

    /// Bytes 8-15 as a little-endian quadword.
    pub const fn high_qword(self) -> u64 {
        (self.offset_high as u64) | ((self.reserved as u64) << 32)
    }

    pub const fn offset(self) -> u64 {
        (self.offset_low as u64)
            | ((self.offset_mid as u64) << 16)
            | ((self.offset_high as u64) << 32)
    }
    pub const fn selector(self) -> u16 {
        self.selector
    }
    pub const fn ist(self) -> u8 {
        self.ist & 7
    }
    /// Type field (bits 3:0 of byte 5): 0xE interrupt gate, 0xF trap gate in 64-bit mode.
    pub const fn type_bits(self) -> u8 {
        self.attributes & 0xF
    }
    pub const fn gate_type(self) -> Option<GateType> {
        match self.type_bits() {
            0xE => Some(GateType::Interrupt),
            0xF => Some(GateType::Trap),
            _ => None,
        }
    }
    pub const fn dpl(self) -> u8 {
        (self.attributes >> 5) & 3
    }
    pub const fn present(self) -> bool {
        self.attributes & 0x80 != 0
    }
}

/// Whether the 16-byte gate of `vector` lies within an IDT of limit `limit` (SDM Vol. 3A 6.10:
/// a gate beyond the limit raises #GP).
pub const fn within_limit(vector: u8, limit: u16) -> bool {
    (vector as u32) * 16 + 15 <= limit as u32
}

/// The guest's gate for `vector` if its IDT holds it within `limit`.
fn guest_gate(guest_idt: &[GateDescriptor], limit: u16, vector: u8) -> Option<GateDescriptor> {
    if within_limit(vector, limit) {
        guest_idt.get(usize::from(vector)).copied()
    } else {
        None
    }
}

/// Shadow gate for `vector`.
///
/// Exceptions 0-31 keep the guest's own gates: they are the guest's events. The ones the
/// hypervisor must see are caught by the exception bitmap before the IDT is consulted: #NP (11)
/// for host interrupts arriving in ELI mode, and #DB (1) and #AC (17) against endless
/// event-delivery loops (CVE-2015-8104, CVE-2015-5307). #GP (13) is not needed: the shadow's limit
/// covers all 256 vectors. Vectors 32-255 are present only when assigned to the guest and present
/// within the guest's own IDT.
fn shadow_gate(
    guest_idt: &[GateDescriptor],
    limit: u16,
    assigned: &VectorSet,
    v: u8,
) -> GateDescriptor {
    match guest_gate(guest_idt, limit, v) {
        Some(g) if v < 32 => g,
        Some(g) if assigned.contains(v) && g.present() => g,
        _ => GateDescriptor::HIDDEN,
    }
}

/// Build the 256-gate shadow IDT from the guest's IDT (`guest_idt` may be shorter than 256 gates;
/// `guest_limit` is the guest's IDTR.limit).
pub fn build_shadow(
    guest_idt: &[GateDescriptor],
    guest_limit: u16,
    assigned: &VectorSet,
) -> [GateDescriptor; 256] {
    core::array::from_fn(|v| shadow_gate(guest_idt, guest_limit, assigned, v as u8))
}

/// A selector error code (SDM Vol. 3A 6.13, Figure 6-7): EXT bit 0, IDT bit 1, TI bit 2,
/// segment selector index 15:3 (the vector when IDT = 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SelectorErrorCode {
    /// The exception arose while delivering an event external to the program (e.g. an interrupt).
    pub ext: bool,
    /// The index refers to a gate in the IDT.
    pub idt: bool,
    /// With IDT = 0: the index refers to the LDT (else the GDT).
    pub ti: bool,
    pub index: u16,
}

impl SelectorErrorCode {
    pub const fn decode(code: u32) -> Self {
        SelectorErrorCode {
            ext: code & 1 != 0,
            idt: code & 2 != 0,
            ti: code & 4 != 0,
            index: ((code >> 3) & 0x1FFF) as u16,
        }
    }
    pub const fn encode(self) -> u32 {
        ((self.index as u32) << 3)
            | ((self.ti as u32) << 2)
            | ((self.idt as u32) << 1)
            | self.ext as u32
    }
}

/// The vector of an external interrupt that hit a not-present gate, from the #NP error code
/// `(v << 3) | IDT | EXT` (eli.md, SDM Vol. 3A 6.13).
pub const fn host_vector(np_error_code: u32) -> Option<u8> {
    let e = SelectorErrorCode::decode(np_error_code);
    if e.ext && e.idt && e.index < 256 {
        Some(e.index as u8)
    } else {
        None
    }
}

/// What a #NP exit in ELI mode means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NpCause {
    /// A host interrupt: it is already in the LAPIC's ISR; handle it and EOI it in the host,
    /// never inject it.
    HostInterrupt(u8),
    /// The guest executed INT n for a vector the shadow hides; deliver it through the guest's own
    /// IDT (injection mode) if the guest's gate is present.
    GuestSoftwareInterrupt(u8),
    /// The guest's own fault: inject exception `vector` (#NP or #GP) with `error_code`, as bare
    /// metal would have raised it.
    Reflect { vector: u8, error_code: u32 },
}

/// A guest's IDT mirrored, and the shadow derived from it.
#[derive(Clone, Debug)]
pub struct ShadowIdt {
    guest: [GateDescriptor; 256],
    guest_limit: u16,
    assigned: VectorSet,
    shadow: [GateDescriptor; 256],
}

impl ShadowIdt {
    /// Start from the guest's IDT contents (as many gates as it has, up to 256) and IDTR.limit.
    pub fn new(guest_idt: &[GateDescriptor], guest_limit: u16, assigned: VectorSet) -> Self {
        let mut s = ShadowIdt {
            guest: [GateDescriptor::NOT_PRESENT; 256],
            guest_limit: 0,
            assigned,
            shadow: [GateDescriptor::NOT_PRESENT; 256],
        };
        s.load(guest_idt, guest_limit);
        s
    }

    /// The guest executed LIDT: mirror its new table and rebuild the shadow.
    pub fn load(&mut self, guest_idt: &[GateDescriptor], guest_limit: u16) {
        self.guest = [GateDescriptor::NOT_PRESENT; 256];
        for (m, g) in self.guest.iter_mut().zip(guest_idt) {
            *m = *g;
        }
        self.guest_limit = guest_limit;
        self.shadow = build_shadow(&self.guest, guest_limit, &self.assigned);
    }

    /// Change the set of assigned vectors; returns the vectors whose shadow gate changed.
    pub fn set_assigned(&mut self, assigned: VectorSet) -> VectorSet {
        self.assigned = assigned;
        self.refresh((0..=255u8).collect())
    }

    /// The guest wrote `bytes` at byte `offset` of its IDT (caught by the EPT write protection);
    /// mirror the write and update the shadow. Returns the vectors whose shadow gate changed. A
    /// write may straddle two gates; bytes beyond gate 255 are ignored.
    pub fn guest_write(&mut self, offset: u64, bytes: &[u8]) -> VectorSet {
        let mut touched = VectorSet::new();
        for (i, &b) in bytes.iter().enumerate() {
            let pos = offset + i as u64;
            let Ok(v) = u8::try_from(pos / 16) else { break };
            let mut raw = self.guest[usize::from(v)].to_bytes();
            raw[(pos % 16) as usize] = b;
            self.guest[usize::from(v)] = GateDescriptor::from_bytes(raw);
            touched.insert(v);
        }
        self.refresh(touched)
    }

    fn refresh(&mut self, vectors: VectorSet) -> VectorSet {
        let mut changed = VectorSet::new();
        for v in vectors.iter() {
            let new = shadow_gate(&self.guest, self.guest_limit, &self.assigned, v);
            if self.shadow[usize::from(v)] != new {
                self.shadow[usize::from(v)] = new;
                changed.insert(v);
            }
        }
        changed
    }

    /// The table the CPU runs on; copy it to the shadow page (GUEST_IDTR_BASE, limit
    /// [`SHADOW_IDT_LIMIT`]).
    pub fn shadow(&self) -> &[GateDescriptor; 256] {
        &self.shadow
    }
    pub fn guest_gate(&self, vector: u8) -> GateDescriptor {
        self.guest[usize::from(vector)]
    }
    /// The guest's IDTR.limit, for SIDT emulation.
    pub fn guest_limit(&self) -> u16 {
        self.guest_limit
    }
    pub fn assigned(&self) -> &VectorSet {
        &self.assigned
    }

    /// Decide what a #NP exit means from its error code and the IDT-vectoring information
    /// (which names the event being delivered; SDM Vol. 3C 28.2.4).
    pub fn classify_np(&self, error_code: u32, idt_vectoring: Option<InterruptionInfo>) -> NpCause {
        let e = SelectorErrorCode::decode(error_code);
        let reflect_np = NpCause::Reflect {
            vector: NP_VECTOR,
            error_code,
        };
        if !e.idt || e.index > 255 {
            // A segment-not-present fault of the guest's own code.
            return reflect_np;
        }
        let v = e.index as u8;
        let guest_owns = v < 32 || self.assigned.contains(v);
        let software = matches!(
            idt_vectoring.map(|i| i.event_type),
            Some(EventType::SoftwareInterrupt)
        );
        if !guest_owns && e.ext && !software {
            return NpCause::HostInterrupt(v);
        }
        if !within_limit(v, self.guest_limit) {
            NpCause::Reflect {
                vector: GP_VECTOR,
                error_code,
            }
        } else if !self.guest[usize::from(v)].present() {
            reflect_np
        } else {
            // The guest's gate is present but the shadow hides it: a guest INT n to a
            // non-assigned vector.
            NpCause::GuestSoftwareInterrupt(v)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;

    fn handler(v: u8) -> GateDescriptor {
        GateDescriptor::new(
            0xFFFF_8000_0010_0000 + u64::from(v) * 0x10,
            0x08,
            0,
            GateType::Interrupt,
            0,
        )
    }

    #[test]
    fn gate_encoding_by_hand() {
        // SDM 6.14.1: offset 0xFFFF_8000_1234_5678, selector 8, IST 0, interrupt gate (0xE),
        // DPL 0, P -> byte 5 = 0x8E.
        let g = GateDescriptor::new(0xFFFF_8000_1234_5678, 0x08, 0, GateType::Interrupt, 0);
        assert_eq!(
            g.to_bytes(),
            [0x78, 0x56, 0x08, 0x00, 0x00, 0x8E, 0x34, 0x12, 0x00, 0x80, 0xFF, 0xFF, 0, 0, 0, 0]
        );
        assert_eq!(g.low_qword(), 0x1234_8E00_0008_5678);
        assert_eq!(g.high_qword(), 0xFFFF_8000);
        // Trap gate, DPL 3, IST 2: byte 5 = 0x80 | 3 << 5 | 0xF = 0xEF.
        let t = GateDescriptor::new(0x1000, 0x10, 2, GateType::Trap, 3);
        assert_eq!(t.to_bytes()[4..6], [0x02, 0xEF]);
        let back = GateDescriptor::from_bytes(t.to_bytes());
        assert_eq!(back, t);
        assert_eq!(
            (back.offset(), back.selector(), back.ist()),
            (0x1000, 0x10, 2)
        );
        assert_eq!(
            (back.gate_type(), back.dpl(), back.present()),
            (Some(GateType::Trap), 3, true)
        );
        assert!(!GateDescriptor::NOT_PRESENT.present());
    }

    #[test]
    fn shadow_keeps_exceptions_and_assigned_vectors_only() {
        let guest: Vec<_> = (0..=255u8).map(handler).collect();
        let assigned: VectorSet = [0x41, 0x42].into_iter().collect();
        let s = build_shadow(&guest, 0xFFF, &assigned);
        for v in 0..=255u8 {
            let expect_present = v < 32 || v == 0x41 || v == 0x42;
            assert_eq!(s[usize::from(v)].present(), expect_present, "vector {v:#x}");
            if expect_present {
                assert_eq!(s[usize::from(v)], guest[usize::from(v)]);
            } else {
                assert_eq!(s[usize::from(v)], GateDescriptor::HIDDEN);
            }
        }
    }

    #[test]
    fn shadow_respects_guest_limit_and_present_bit() {
        let mut guest: Vec<_> = (0..=255u8).map(handler).collect();
        guest[0x41] = GateDescriptor::NOT_PRESENT;
        let assigned: VectorSet = [0x41, 0x42, 0x50].into_iter().collect();
        // Limit 0x42 * 16 + 15 = 0x42F covers vectors 0..=0x42.
        let s = build_shadow(&guest, 0x42F, &assigned);
        assert!(!s[0x41].present());
        assert!(s[0x42].present());
        assert!(!s[0x50].present());
        // Limit one byte short of gate 0x42's end excludes it.
        let s = build_shadow(&guest, 0x42E, &assigned);
        assert!(!s[0x42].present());
        // A guest IDT with only 32 gates.
        let s = build_shadow(&guest[..32], 0xFFF, &assigned);
        assert!(s[31].present() && !s[0x42].present());
    }

    #[test]
    fn np_error_code_of_host_interrupt() {
        // eli.md: vector 0x30 arriving on a not-present gate: (0x30 << 3) | 2 | 1 = 0x183.
        assert_eq!(host_vector(0x183), Some(0x30));
        let e = SelectorErrorCode::decode(0x183);
        assert_eq!(
            e,
            SelectorErrorCode {
                ext: true,
                idt: true,
                ti: false,
                index: 0x30
            }
        );
        assert_eq!(e.encode(), 0x183);
        assert_eq!(host_vector(0x182), None); // EXT clear: a software INT
        assert_eq!(host_vector(0x0019), None); // GDT selector 3 with EXT: not an IDT gate
        assert_eq!(host_vector((0xFF << 3) | 3), Some(0xFF));
    }

    #[test]
    fn classify_np_exits() {
        let guest: Vec<_> = (0..=255u8).map(handler).collect();
        let mut idt = ShadowIdt::new(&guest[..0x60], 0x5FF, [0x41].into_iter().collect());
        let ext = |v: u8| Some(InterruptionInfo::decode(0x8000_0000 | u32::from(v)));
        assert_eq!(
            idt.classify_np(0x183, ext(0x30)),
            NpCause::HostInterrupt(0x30)
        );
        assert_eq!(
            idt.classify_np((0xEF << 3) | 3, ext(0xEF)),
            NpCause::HostInterrupt(0xEF)
        );
        // Guest `int 0x50` (EXT = 0, type 4 software interrupt) to a gate it has.
        let swint = Some(InterruptionInfo::inject(
            0x50,
            EventType::SoftwareInterrupt,
            false,
        ));
        assert_eq!(
            idt.classify_np((0x50 << 3) | 2, swint),
            NpCause::GuestSoftwareInterrupt(0x50)
        );
        // Guest `int 0x70` beyond its limit: #GP with the same error code.
        assert_eq!(
            idt.classify_np((0x70 << 3) | 2, None),
            NpCause::Reflect {
                vector: GP_VECTOR,
                error_code: 0x382
            }
        );
        // Assigned vector whose guest gate was removed: the guest's own #NP.
        idt.guest_write(0x41 * 16, &[0; 8]);
        assert_eq!(
            idt.classify_np((0x41 << 3) | 3, ext(0x41)),
            NpCause::Reflect {
                vector: NP_VECTOR,
                error_code: 0x20B
            }
        );
        // Segment-not-present from a data-segment load (GDT selector 0x18).
        assert_eq!(
            idt.classify_np(0x18, None),
            NpCause::Reflect {
                vector: NP_VECTOR,
                error_code: 0x18
            }
        );
    }

    #[test]
    fn guest_write_keeps_the_shadow_in_sync() {
        let guest: Vec<_> = (0..=255u8).map(handler).collect();
        let mut idt = ShadowIdt::new(&guest, 0xFFF, [0x41].into_iter().collect());
        let new = GateDescriptor::new(0xFFFF_8000_00AB_CDEF, 0x08, 0, GateType::Interrupt, 0);
        // Low 8 bytes of gate 0x41 at offset 0x410: only vector 0x41 changes.
        let changed = idt.guest_write(0x410, &new.low_qword().to_le_bytes());
        assert_eq!(changed.iter().collect::<Vec<_>>(), [0x41]);
        assert_eq!(idt.shadow()[0x41].offset() & 0xFFFF_FFFF, 0x00AB_CDEF);
        // High 8 bytes: offset 63:32 unchanged, so the shadow does not change.
        assert!(idt
            .guest_write(0x418, &new.high_qword().to_le_bytes())
            .is_empty());
        assert_eq!(idt.shadow()[0x41], new);
        // A write to a non-assigned vector changes the mirror but not the (not-present) shadow.
        assert!(idt.guest_write(0x500, &[0xFF; 8]).is_empty());
        assert_eq!(idt.guest_gate(0x50).low_qword(), u64::MAX);
        // A misaligned write straddling gates 0x41 and 0x42 (offset 0x41C..0x424): bytes 12-15 of
        // 0x41 (reserved) are copied into its shadow gate; bytes 0-3 of 0x42 (not assigned) leave
        // the shadow as it was.
        let changed = idt.guest_write(0x41C, &[1, 0, 0, 0, 0x34, 0x12, 0, 0]);
        assert_eq!(changed.iter().collect::<Vec<_>>(), [0x41]);
        // Clearing P of an exception gate (byte 5 of gate 14 at 0xE5) mirrors into the shadow.
        let changed = idt.guest_write(0xE0, &[0x78, 0x56, 0x08, 0x00, 0x00, 0x0E, 0x34, 0x12]);
        assert_eq!(changed.iter().collect::<Vec<_>>(), [14]);
        assert!(!idt.shadow()[14].present());
        // Writes past gate 255 are ignored.
        assert!(idt.guest_write(0x1000, &[0; 8]).is_empty());
    }

    #[test]
    fn assigning_a_vector_exposes_its_gate() {
        let guest: Vec<_> = (0..=255u8).map(handler).collect();
        let mut idt = ShadowIdt::new(&guest, 0xFFF, VectorSet::new());
        assert!(!idt.shadow()[0x41].present());
        let changed = idt.set_assigned([0x41, 0x42].into_iter().collect());
        assert_eq!(changed.len(), 2);
        assert_eq!(idt.shadow()[0x42], guest[0x42]);
        let mut s = *idt.assigned();
        s.remove(0x42);
        assert_eq!(idt.set_assigned(s).iter().collect::<Vec<_>>(), [0x42]);
        // LIDT of a smaller table hides gates beyond its limit.
        idt.load(&guest, 0x3FF);
        assert!(!idt.shadow()[0x41].present());
        assert_eq!(idt.guest_limit(), 0x3FF);
    }

    #[test]
    fn vector_set() {
        let mut s = VectorSet::new();
        for v in [0, 63, 64, 255] {
            s.insert(v);
        }
        assert_eq!(s.len(), 4);
        assert!(s.contains(63) && s.contains(64) && !s.contains(65));
        s.remove(63);
        assert_eq!(s.iter().collect::<Vec<_>>(), [0, 64, 255]);
        let u = s.union(&[1].into_iter().collect());
        assert_eq!(u.len(), 4);
    }

    #[test]
    fn hidden_gates_are_valid_interrupt_gates_without_p() {
        // Bytes 5 of a 64-bit gate: P (bit 7), DPL, 0, type 0xE (SDM Vol. 3A Figure 6-8).
        let bytes = GateDescriptor::HIDDEN.to_bytes();
        assert_eq!(bytes[5], 0x0E);
        assert!(!GateDescriptor::HIDDEN.present());
        assert_eq!(
            GateDescriptor::HIDDEN.gate_type(),
            Some(GateType::Interrupt)
        );
    }
}
