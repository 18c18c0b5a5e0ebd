//! A mediated IOAPIC (Intel 82093AA datasheet, ICH/PCH datasheets "I/O APIC" chapter): the guest
//! programs its redirection entries through the usual MMIO window, exactly as on bare metal, and
//! for each pin assigned to it the model tells the caller how to program the physical entry.
//! Emulated pins have no physical pin behind them: a device model drives their input line
//! ([`VirtualIoapic::assert`]/[`VirtualIoapic::deassert`]). Other pins read as masked and ignore
//! writes.
//!
//! Register window (offsets from the base): IOREGSEL +0x00, IOWIN +0x10, EOI +0x40 (version
//! 0x20 and later). Indirect registers: 0 ID, 1 version, 2 arbitration, 0x10 + 2 * pin (low
//! dword) and 0x11 + 2 * pin (high dword) the redirection table.

/// MMIO offsets of the register window.
pub mod offset {
    pub const IOREGSEL: u64 = 0x00;
    pub const IOWIN: u64 = 0x10;
    pub const EOI: u64 = 0x40;
}

/// Indirect register indices.
pub mod index {
    pub const ID: u8 = 0x00;
    pub const VERSION: u8 = 0x01;
    pub const ARBITRATION: u8 = 0x02;
    pub const REDIRECTION_TABLE: u8 = 0x10;
}

/// The IOAPIC version the guest sees: 0x20 has the EOI register (ICH datasheets).
pub const VERSION: u8 = 0x20;

/// Pins the register index space holds: 0x10 + 2 * 119 + 1 = 0xFF.
pub const MAX_PINS: usize = 120;

/// Redirection-entry delivery mode, bits 10:8.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum DeliveryMode {
    Fixed = 0b000,
    LowestPriority = 0b001,
    Smi = 0b010,
    Reserved3 = 0b011,
    Nmi = 0b100,
    Init = 0b101,
    Reserved6 = 0b110,
    ExtInt = 0b111,
}

impl DeliveryMode {
    pub const fn from_bits(bits: u8) -> Self {
        match bits & 7 {
            0b000 => DeliveryMode::Fixed,
            0b001 => DeliveryMode::LowestPriority,
            0b010 => DeliveryMode::Smi,
            0b011 => DeliveryMode::Reserved3,
            0b100 => DeliveryMode::Nmi,
            0b101 => DeliveryMode::Init,
            0b110 => DeliveryMode::Reserved6,
            _ => DeliveryMode::ExtInt,
        }
    }
}

/// One 64-bit redirection-table entry (82093AA section 3.2.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RedirectionEntry {
    /// Bits 7:0.
    pub vector: u8,
    /// Bits 10:8.
    pub delivery_mode: DeliveryMode,
    /// Bit 11: destination is a logical (set of) APIC(s).
    pub logical_destination: bool,
    /// Bit 12, read-only: delivery status (send pending).
    pub send_pending: bool,
    /// Bit 13: input pin polarity, 1 = active low.
    pub active_low: bool,
    /// Bit 14, read-only: a level-triggered interrupt was accepted and not yet EOI'd.
    pub remote_irr: bool,
    /// Bit 15: trigger mode, 1 = level.
    pub level_triggered: bool,
    /// Bit 16.
    pub masked: bool,
    /// Bits 63:56.
    pub destination: u8,
}

impl RedirectionEntry {
    /// Bits the entry defines; 55:17 are reserved and read as 0.
    pub const DEFINED_BITS: u64 = 0xFF00_0000_0001_FFFF;
    /// Bits the guest cannot change: delivery status and remote IRR.
    pub const READ_ONLY_BITS: u64 = (1 << 12) | (1 << 14);

    /// The reset value: masked, everything else 0.
    pub const MASKED: RedirectionEntry = RedirectionEntry::from_bits(1 << 16);

    pub const fn from_bits(bits: u64) -> Self {
        RedirectionEntry {
            vector: bits as u8,
            delivery_mode: DeliveryMode::from_bits((bits >> 8) as u8),
            logical_destination: bits & (1 << 11) != 0,
            send_pending: bits & (1 << 12) != 0,
            active_low: bits & (1 << 13) != 0,
            remote_irr: bits & (1 << 14) != 0,
            level_triggered: bits & (1 << 15) != 0,
            masked: bits & (1 << 16) != 0,
            destination: (bits >> 56) as u8,
        }
    }

    pub const fn to_bits(self) -> u64 {
        self.vector as u64
            | (self.delivery_mode as u64) << 8
            | (self.logical_destination as u64) << 11
            | (self.send_pending as u64) << 12
            | (self.active_low as u64) << 13
            | (self.remote_irr as u64) << 14
            | (self.level_triggered as u64) << 15
            | (self.masked as u64) << 16
            | (self.destination as u64) << 56
    }
}

/// A set of IOAPIC pins.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PinSet(u128);

impl PinSet {
    pub const fn empty() -> Self {
        PinSet(0)
    }
    pub const fn from_pins(pins: &[u8]) -> Self {
        let mut bits = 0u128;
        let mut i = 0;
        while i < pins.len() {
            if pins[i] < 128 {
                bits |= 1 << pins[i];
            }
            i += 1;
        }
        PinSet(bits)
    }
    /// Adds `pin`; pins above 127 (beyond any IOAPIC) are ignored.
    pub fn insert(&mut self, pin: u8) {
        if pin < 128 {
            self.0 |= 1 << pin;
        }
    }
    pub const fn contains(&self, pin: u8) -> bool {
        (pin as usize) < 128 && self.0 & (1 << pin) != 0
    }
    pub const fn is_empty(&self) -> bool {
        self.0 == 0
    }
    pub fn iter(&self) -> impl Iterator<Item = u8> + '_ {
        (0..128u8).filter(|&p| self.contains(p))
    }
}

/// How to program a physical redirection entry for a guest pin: the caller adds fixed delivery,
/// physical destination mode and the host's destination (the guest's physical CPU).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PhysicalRouting {
    pub pin: u8,
    pub vector: u8,
    /// The guest masked the pin, or asked for something the host never routes to it: an
    /// illegal vector (0-15) or a delivery mode other than fixed / lowest priority (SMI, NMI,
    /// INIT, ExtINT and the reserved modes).
    pub masked: bool,
    pub level: bool,
    pub active_low: bool,
}

impl PhysicalRouting {
    /// The redirection entry in compatibility format (82093AA 3.2.4): fixed delivery, physical
    /// destination mode, the guest's vector, to the CPU with xAPIC ID `apic_id` (bits 63:56).
    pub const fn compatibility_entry(self, apic_id: u8) -> u64 {
        self.vector as u64
            | (self.active_low as u64) << 13
            | (self.level as u64) << 15
            | (self.masked as u64) << 16
            | (apic_id as u64) << 56
    }

    /// A masked entry (bit 16): nothing is delivered, whatever the format would be.
    pub const MASKED_ENTRY: u64 = 1 << 16;
}

/// Why a guest write changed nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IgnoredWrite {
    /// A redirection entry of a pin not assigned to the guest.
    UnassignedPin(u8),
    /// Version, arbitration, or an index with no register.
    ReadOnlyOrReserved(u8),
    /// An offset outside IOREGSEL/IOWIN/EOI.
    Offset(u64),
    /// Only 32-bit accesses are defined.
    Size(u8),
}

/// What a guest MMIO write asks of the caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoapicWriteEffect {
    None,
    /// An assigned pin's routing changed: program the physical entry.
    Routing(PhysicalRouting),
    /// Dropped; worth a log line.
    Ignored(IgnoredWrite),
    /// An emulated pin whose level-triggered line is asserted became deliverable (unmasked, remote
    /// IRR clear): send this interrupt, as the 82093AA sends an asserted level input.
    Deliver(IoapicInterrupt),
    /// The EOI register was written: forward to the physical IOAPIC for `outcome.cleared`.
    Eoi {
        vector: u8,
        outcome: EoiOutcome,
    },
}

/// An interrupt the IOAPIC sends on an assertion.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IoapicInterrupt {
    pub pin: u8,
    pub vector: u8,
    pub level: bool,
}

/// Result of an EOI for a vector.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EoiOutcome {
    /// Level-triggered pins whose remote IRR the EOI cleared.
    pub cleared: PinSet,
    /// Those whose line is still asserted: they were sent again (remote IRR set again).
    pub resent: PinSet,
}

/// The guest's view of one IOAPIC.
#[derive(Clone, Debug)]
pub struct VirtualIoapic {
    id: u8,
    pins: u8,
    assigned: PinSet,
    /// Pins whose input a device model drives (never also assigned).
    emulated: PinSet,
    ioregsel: u8,
    entries: [RedirectionEntry; MAX_PINS],
    /// Input lines currently asserted (for level-triggered re-sending after EOI).
    asserted: PinSet,
}

impl VirtualIoapic {
    /// An IOAPIC with APIC id `id`, `pins` inputs (at most [`MAX_PINS`]) of which the guest owns
    /// `assigned`; every entry starts masked. Pins beyond `pins` are dropped from `assigned`.
    pub fn new(id: u8, pins: u8, assigned: PinSet) -> Self {
        let pins = pins.min(MAX_PINS as u8);
        let in_range = (0..pins).filter(|&p| assigned.contains(p));
        let mut owned = PinSet::empty();
        for p in in_range {
            owned.insert(p);
        }
        VirtualIoapic {
            id: id & 0xF,
            pins,
            assigned: owned,
            emulated: PinSet::empty(),
            ioregsel: 0,
            entries: [RedirectionEntry::MASKED; MAX_PINS],
            asserted: PinSet::empty(),
        }
    }

    pub fn pins(&self) -> u8 {
        self.pins
    }

    pub fn assigned(&self) -> PinSet {
        self.assigned
    }

    /// Makes `pin` an emulated pin: the guest programs it, a device model drives it. Refused
    /// (false) for a pin out of range or assigned to a physical pin.
    pub fn emulate(&mut self, pin: u8) -> bool {
        if pin >= self.pins || self.assigned.contains(pin) {
            return false;
        }
        self.emulated.insert(pin);
        true
    }

    pub fn emulated(&self) -> PinSet {
        self.emulated
    }

    /// Whether the guest owns `pin`, assigned or emulated.
    fn owns(&self, pin: u8) -> bool {
        self.assigned.contains(pin) || self.emulated.contains(pin)
    }

    /// Whether `pin`'s input line is asserted.
    pub fn line(&self, pin: u8) -> bool {
        self.asserted.contains(pin)
    }

    /// The entry of `pin` as the guest reads it (masked for unassigned pins).
    pub fn entry(&self, pin: u8) -> Option<RedirectionEntry> {
        (pin < self.pins).then(|| self.entries[usize::from(pin)])
    }

    /// Version register: version in 7:0, maximum redirection entry (pins - 1) in 23:16.
    pub fn version_register(&self) -> u32 {
        u32::from(VERSION) | u32::from(self.pins.saturating_sub(1)) << 16
    }

    /// The physical routing of an assigned pin (to program it before the guest runs).
    pub fn routing(&self, pin: u8) -> Option<PhysicalRouting> {
        self.assigned
            .contains(pin)
            .then(|| Self::route(pin, self.entries[usize::from(pin)]))
    }

    fn route(pin: u8, e: RedirectionEntry) -> PhysicalRouting {
        let deliverable = matches!(
            e.delivery_mode,
            DeliveryMode::Fixed | DeliveryMode::LowestPriority
        ) && e.vector >= 16;
        PhysicalRouting {
            pin,
            vector: e.vector,
            masked: e.masked || !deliverable,
            level: e.level_triggered,
            active_low: e.active_low,
        }
    }

    /// A guest MMIO read of `size` bytes at `offset` from the base. Undefined offsets and sizes
    /// read as 0.
    pub fn mmio_read(&self, offset: u64, size: u8) -> u32 {
        if size != 4 {
            return 0;
        }
        match offset {
            offset::IOREGSEL => self.ioregsel.into(),
            offset::IOWIN => self.read_register(self.ioregsel),
            _ => 0,
        }
    }

    /// A guest MMIO write of `size` bytes at `offset` from the base.
    pub fn mmio_write(&mut self, offset: u64, size: u8, value: u32) -> IoapicWriteEffect {
        if size != 4 {
            return IoapicWriteEffect::Ignored(IgnoredWrite::Size(size));
        }
        match offset {
            offset::IOREGSEL => {
                self.ioregsel = value as u8;
                IoapicWriteEffect::None
            }
            offset::IOWIN => self.write_register(self.ioregsel, value),
            offset::EOI => {
                let vector = value as u8;
                IoapicWriteEffect::Eoi {
                    vector,
                    outcome: self.eoi(vector),
                }
            }
            other => IoapicWriteEffect::Ignored(IgnoredWrite::Offset(other)),
        }
    }

    /// The pin and half (high = bits 63:32) an indirect index selects.
    fn redirection_slot(&self, index: u8) -> Option<(u8, bool)> {
        let pin = index.checked_sub(index::REDIRECTION_TABLE)? / 2;
        (pin < self.pins).then_some((pin, index & 1 == 1))
    }

    pub fn read_register(&self, index: u8) -> u32 {
        match index {
            index::ID => u32::from(self.id) << 24,
            index::VERSION => self.version_register(),
            // 82093AA 3.2.3: the arbitration id is loaded from the APIC id.
            index::ARBITRATION => u32::from(self.id) << 24,
            _ => match self.redirection_slot(index) {
                Some((pin, high)) => {
                    let bits = self.entries[usize::from(pin)].to_bits();
                    if high {
                        (bits >> 32) as u32
                    } else {
                        bits as u32
                    }
                }
                None => 0,
            },
        }
    }

    pub fn write_register(&mut self, index: u8, value: u32) -> IoapicWriteEffect {
        if index == index::ID {
            self.id = (value >> 24) as u8 & 0xF;
            return IoapicWriteEffect::None;
        }
        let Some((pin, high)) = self.redirection_slot(index) else {
            return IoapicWriteEffect::Ignored(IgnoredWrite::ReadOnlyOrReserved(index));
        };
        if !self.owns(pin) {
            return IoapicWriteEffect::Ignored(IgnoredWrite::UnassignedPin(pin));
        }
        let slot = &mut self.entries[usize::from(pin)];
        let old = *slot;
        let bits = old.to_bits();
        let written = if high {
            (bits & 0xFFFF_FFFF) | u64::from(value) << 32
        } else {
            (bits & !0xFFFF_FFFF) | u64::from(value)
        };
        let keep = RedirectionEntry::READ_ONLY_BITS;
        *slot = RedirectionEntry::from_bits((written & !keep) | (bits & keep));
        let (before, after) = (Self::route(pin, old), Self::route(pin, *slot));
        if self.emulated.contains(pin) {
            // Nothing physical to program; a level input held while masked is sent on unmask.
            let level = slot.level_triggered && !slot.remote_irr;
            if level && !after.masked && self.asserted.contains(pin) {
                return self
                    .assert(pin)
                    .map_or(IoapicWriteEffect::None, IoapicWriteEffect::Deliver);
            }
            return IoapicWriteEffect::None;
        }
        if before != after {
            IoapicWriteEffect::Routing(after)
        } else {
            IoapicWriteEffect::None
        }
    }

    /// The device raised `pin`. Returns the interrupt to send, if any: not for a masked or
    /// unassigned pin, nor for a level-triggered pin whose remote IRR is still set (it waits
    /// for the EOI). A level-triggered send sets remote IRR.
    pub fn assert(&mut self, pin: u8) -> Option<IoapicInterrupt> {
        if !self.owns(pin) {
            return None;
        }
        self.asserted.insert(pin);
        let e = &mut self.entries[usize::from(pin)];
        if Self::route(pin, *e).masked || (e.level_triggered && e.remote_irr) {
            return None;
        }
        e.remote_irr = e.level_triggered;
        Some(IoapicInterrupt {
            pin,
            vector: e.vector,
            level: e.level_triggered,
        })
    }

    /// The device dropped `pin` (matters for level-triggered pins only).
    pub fn deassert(&mut self, pin: u8) {
        if self.owns(pin) {
            self.asserted.0 &= !(1 << pin);
        }
    }

    /// An EOI for `vector` (a level EOI broadcast by the LAPIC, or the EOI register): clear the
    /// remote IRR of the level-triggered pins with that vector; any still asserted and unmasked
    /// is sent again.
    pub fn eoi(&mut self, vector: u8) -> EoiOutcome {
        let mut outcome = EoiOutcome::default();
        for pin in 0..self.pins {
            let e = &mut self.entries[usize::from(pin)];
            if e.vector != vector || !e.remote_irr {
                continue;
            }
            e.remote_irr = false;
            outcome.cleared.insert(pin);
            if self.asserted.contains(pin) && self.assert(pin).is_some() {
                outcome.resent.insert(pin);
            }
        }
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compatibility_entries_by_hand() {
        // Vector 0x40, level (bit 15), active low (bit 13), unmasked, to xAPIC ID 2 (bits 63:56).
        let r = PhysicalRouting {
            pin: 3,
            vector: 0x40,
            masked: false,
            level: true,
            active_low: true,
        };
        assert_eq!(r.compatibility_entry(2), 0x0200_0000_0000_A040);
        assert_eq!(PhysicalRouting::MASKED_ENTRY, 0x1_0000);
    }

    /// 24 pins, the guest owns pins 3 and 10.
    fn ioapic() -> VirtualIoapic {
        VirtualIoapic::new(2, 24, PinSet::from_pins(&[3, 10]))
    }

    fn write(io: &mut VirtualIoapic, index: u8, value: u32) -> IoapicWriteEffect {
        assert_eq!(
            io.mmio_write(offset::IOREGSEL, 4, index.into()),
            IoapicWriteEffect::None
        );
        io.mmio_write(offset::IOWIN, 4, value)
    }

    fn read(io: &mut VirtualIoapic, index: u8) -> u32 {
        io.mmio_write(offset::IOREGSEL, 4, index.into());
        io.mmio_read(offset::IOWIN, 4)
    }

    #[test]
    fn redirection_entry_bits() {
        // Vector 0x59, lowest priority (001), logical, active low, level, masked, destination
        // 0x0F: 0x59 | 0x100 | 0x800 | 0x2000 | 0x8000 | 0x1_0000 | 0x0F << 56.
        let bits = 0x0F00_0000_0001_A959;
        let e = RedirectionEntry::from_bits(bits);
        assert_eq!(
            e,
            RedirectionEntry {
                vector: 0x59,
                delivery_mode: DeliveryMode::LowestPriority,
                logical_destination: true,
                send_pending: false,
                active_low: true,
                remote_irr: false,
                level_triggered: true,
                masked: true,
                destination: 0x0F,
            }
        );
        assert_eq!(e.to_bits(), bits);
        // Delivery status and remote IRR are bits 12 and 14.
        let status = RedirectionEntry::from_bits(0x5000);
        assert!(status.send_pending && status.remote_irr);
        assert_eq!(status.to_bits(), RedirectionEntry::READ_ONLY_BITS);
        // Reserved bits 55:17 are dropped.
        assert_eq!(
            RedirectionEntry::from_bits(0x00FF_FFFF_FFFE_0000).to_bits(),
            0
        );
        assert_eq!(RedirectionEntry::MASKED.to_bits(), 0x1_0000);
        for mode in 0..8u64 {
            let e = RedirectionEntry::from_bits(mode << 8 | 0x40);
            assert_eq!(e.delivery_mode as u64, mode);
            assert_eq!(e.to_bits(), mode << 8 | 0x40);
        }
        assert_eq!(DeliveryMode::from_bits(0b101), DeliveryMode::Init);
        assert_eq!(DeliveryMode::from_bits(0b111), DeliveryMode::ExtInt);
        // Every defined bit survives a round trip.
        for bit in 0..64 {
            let x = 1u64 << bit;
            let expect = x & RedirectionEntry::DEFINED_BITS;
            assert_eq!(
                RedirectionEntry::from_bits(x).to_bits(),
                expect,
                "bit {bit}"
            );
        }
    }

    #[test]
    fn id_version_and_arbitration_registers() {
        let mut io = ioapic();
        // Version 0x20, max redirection entry 23 = 0x17 in 23:16.
        assert_eq!(read(&mut io, index::VERSION), 0x0017_0020);
        assert_eq!(read(&mut io, index::ID), 0x0200_0000);
        assert_eq!(
            write(&mut io, index::ID, 0x0500_0000),
            IoapicWriteEffect::None
        );
        assert_eq!(read(&mut io, index::ID), 0x0500_0000);
        assert_eq!(read(&mut io, index::ARBITRATION), 0x0500_0000);
        assert_eq!(
            write(&mut io, index::VERSION, 0),
            IoapicWriteEffect::Ignored(IgnoredWrite::ReadOnlyOrReserved(1))
        );
        assert_eq!(read(&mut io, index::VERSION), 0x0017_0020);
        assert_eq!(io.mmio_read(offset::IOREGSEL, 4), 1);
    }

    #[test]
    fn assigned_pin_programming_yields_physical_routing() {
        let mut io = ioapic();
        assert_eq!(
            io.routing(3),
            Some(PhysicalRouting {
                pin: 3,
                vector: 0,
                masked: true,
                level: false,
                active_low: false
            })
        );
        // As Linux does: high dword (destination 1) first, then the low dword.
        assert_eq!(write(&mut io, 0x17, 0x0100_0000), IoapicWriteEffect::None);
        // Vector 0x33, fixed, physical, active low (bit 13), level (bit 15), unmasked.
        let routed = PhysicalRouting {
            pin: 3,
            vector: 0x33,
            masked: false,
            level: true,
            active_low: true,
        };
        assert_eq!(
            write(&mut io, 0x16, 0xA033),
            IoapicWriteEffect::Routing(routed)
        );
        assert_eq!(read(&mut io, 0x16), 0xA033);
        assert_eq!(read(&mut io, 0x17), 0x0100_0000);
        assert_eq!(io.entry(3).unwrap().destination, 1);
        assert_eq!(io.routing(3), Some(routed));
        // Unchanged rewrite: nothing to reprogram.
        assert_eq!(write(&mut io, 0x16, 0xA033), IoapicWriteEffect::None);
        // Mask.
        assert_eq!(
            write(&mut io, 0x16, 0x1_A033),
            IoapicWriteEffect::Routing(PhysicalRouting {
                masked: true,
                ..routed
            })
        );
        // Pin 10 is index 0x10 + 20 = 0x24.
        assert_eq!(
            write(&mut io, 0x24, 0x41),
            IoapicWriteEffect::Routing(PhysicalRouting {
                pin: 10,
                vector: 0x41,
                masked: false,
                level: false,
                active_low: false
            })
        );
    }

    #[test]
    fn guest_cannot_set_read_only_bits_or_route_nmi() {
        let mut io = ioapic();
        // Delivery status and remote IRR written as 1 are ignored.
        write(&mut io, 0x16, 0x5033);
        assert_eq!(read(&mut io, 0x16), 0x33);
        // NMI (100), INIT (101), ExtINT (111) and vectors 0-15 never reach the host unmasked.
        for low in [0x433, 0x533, 0x733, 0x0A] {
            write(&mut io, 0x16, 0x33);
            assert!(!io.routing(3).unwrap().masked);
            let IoapicWriteEffect::Routing(r) = write(&mut io, 0x16, low) else {
                panic!("{low:#x}")
            };
            assert!(r.masked, "{low:#x}");
            assert_eq!(read(&mut io, 0x16), low);
        }
        // Lowest priority is routed like fixed.
        write(&mut io, 0x16, 0x133);
        assert!(!io.routing(3).unwrap().masked);
    }

    #[test]
    fn unassigned_pins_read_masked_and_ignore_writes() {
        let mut io = ioapic();
        // Pin 4: index 0x18.
        assert_eq!(
            write(&mut io, 0x18, 0x31),
            IoapicWriteEffect::Ignored(IgnoredWrite::UnassignedPin(4))
        );
        assert_eq!(
            write(&mut io, 0x19, 0xFF00_0000),
            IoapicWriteEffect::Ignored(IgnoredWrite::UnassignedPin(4))
        );
        assert_eq!(read(&mut io, 0x18), 0x1_0000);
        assert_eq!(read(&mut io, 0x19), 0);
        assert_eq!(io.routing(4), None);
        assert_eq!(io.assert(4), None);
        // Beyond pin 23: index 0x10 + 48 = 0x40 has no register.
        assert_eq!(
            write(&mut io, 0x40, 0x31),
            IoapicWriteEffect::Ignored(IgnoredWrite::ReadOnlyOrReserved(0x40))
        );
        assert_eq!(read(&mut io, 0x40), 0);
        assert_eq!(read(&mut io, 0x3F), 0); // pin 23 high
                                            // Non-dword accesses and unknown offsets.
        assert_eq!(
            io.mmio_write(offset::IOWIN, 1, 0),
            IoapicWriteEffect::Ignored(IgnoredWrite::Size(1))
        );
        assert_eq!(
            io.mmio_write(0x20, 4, 0),
            IoapicWriteEffect::Ignored(IgnoredWrite::Offset(0x20))
        );
        assert_eq!(io.mmio_read(offset::IOWIN, 2), 0);
        // Assigned pins out of range are dropped.
        let small = VirtualIoapic::new(0, 8, PinSet::from_pins(&[3, 10]));
        assert_eq!(small.assigned(), PinSet::from_pins(&[3]));
        assert_eq!(small.version_register(), 0x0007_0020);
        assert!(PinSet::from_pins(&[128, 200]).is_empty());
        assert_eq!(small.assigned().iter().collect::<Vec<_>>(), [3]);
    }

    #[test]
    fn level_triggered_remote_irr_until_eoi() {
        let mut io = ioapic();
        write(&mut io, 0x16, 0xA033); // pin 3: level, active low, vector 0x33
        let irq = IoapicInterrupt {
            pin: 3,
            vector: 0x33,
            level: true,
        };
        assert_eq!(io.assert(3), Some(irq));
        assert_eq!(read(&mut io, 0x16), 0xE033); // remote IRR = bit 14
        assert_eq!(io.assert(3), None, "held until EOI");
        // EOI while the line is still asserted: cleared and sent again.
        let pin3 = PinSet::from_pins(&[3]);
        assert_eq!(
            io.eoi(0x33),
            EoiOutcome {
                cleared: pin3,
                resent: pin3
            }
        );
        assert_eq!(read(&mut io, 0x16), 0xE033);
        io.deassert(3);
        // The EOI register (+0x40) with the vector.
        assert_eq!(
            io.mmio_write(offset::EOI, 4, 0x33),
            IoapicWriteEffect::Eoi {
                vector: 0x33,
                outcome: EoiOutcome {
                    cleared: pin3,
                    resent: PinSet::empty()
                }
            }
        );
        assert_eq!(read(&mut io, 0x16), 0xA033);
        // EOI of another vector touches nothing.
        io.assert(3);
        assert_eq!(io.eoi(0x34), EoiOutcome::default());
        assert_eq!(read(&mut io, 0x16), 0xE033);
    }

    #[test]
    fn edge_triggered_and_masked_pins() {
        let mut io = ioapic();
        write(&mut io, 0x24, 0x41); // pin 10: edge, vector 0x41
        let irq = Some(IoapicInterrupt {
            pin: 10,
            vector: 0x41,
            level: false,
        });
        assert_eq!(io.assert(10), irq);
        assert_eq!(io.assert(10), irq);
        assert_eq!(read(&mut io, 0x24), 0x41);
        assert_eq!(io.eoi(0x41), EoiOutcome::default());
        write(&mut io, 0x24, 0x1_0041);
        assert_eq!(io.assert(10), None);
    }

    #[test]
    fn emulated_pins_are_programmed_by_the_guest_and_driven_by_a_model() {
        let mut io = ioapic();
        assert!(!io.emulate(3), "assigned pins stay physical");
        assert!(!io.emulate(24), "beyond the last pin");
        assert!(io.emulate(4));
        assert_eq!(io.emulated(), PinSet::from_pins(&[4]));
        // Pin 4 (index 0x18): edge, vector 0x31; programmable, nothing physical to route.
        assert_eq!(write(&mut io, 0x18, 0x31), IoapicWriteEffect::None);
        assert_eq!(read(&mut io, 0x18), 0x31);
        assert_eq!(io.routing(4), None);
        let edge = IoapicInterrupt {
            pin: 4,
            vector: 0x31,
            level: false,
        };
        assert_eq!(io.assert(4), Some(edge));
        assert!(io.line(4));
        io.deassert(4);
        assert!(!io.line(4));
        // Level, masked: an assertion is held, and sent when the guest unmasks.
        write(&mut io, 0x18, 0x1_8031);
        assert_eq!(io.assert(4), None);
        let level = IoapicInterrupt {
            level: true,
            ..edge
        };
        assert_eq!(
            write(&mut io, 0x18, 0x8031),
            IoapicWriteEffect::Deliver(level)
        );
        assert_eq!(read(&mut io, 0x18), 0xC031, "remote IRR set");
        assert_eq!(write(&mut io, 0x18, 0x8031), IoapicWriteEffect::None);
        // EOI with the line still high: sent again.
        let pin4 = PinSet::from_pins(&[4]);
        assert_eq!(
            io.eoi(0x31),
            EoiOutcome {
                cleared: pin4,
                resent: pin4
            }
        );
        io.deassert(4);
        assert_eq!(io.eoi(0x31).resent, PinSet::empty());
        assert_eq!(read(&mut io, 0x18), 0x8031);
    }
}
