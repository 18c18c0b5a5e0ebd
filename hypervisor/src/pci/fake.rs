//! A fake configuration space for host tests. Each function is 4 KiB of bytes plus a mask of
//! writable bits, which is how real hardware implements BAR sizing: the low address bits of
//! a BAR and its type bits are read-only, so writing all-ones reads back the size mask with
//! the type bits (PCI 3.0 §6.2.5.1). It also records BAR writes made while the function
//! still decoded memory or I/O, which §6.2.5.1 asks software to avoid.

use alloc::collections::BTreeMap;
use core::cell::{Cell, RefCell};

use super::access::{ConfigAccess, Mechanism};
use super::bar::BarKind;
use super::bdf::Bdf;
use super::regs::{Command, Status, BAR0, CAPABILITIES_POINTER, COMMAND, STATUS};

#[derive(Clone)]
pub struct FakeFunction {
    bytes: [u8; 4096],
    writable: [u8; 4096],
    bar_slots: u16,
}

impl FakeFunction {
    /// A function with IDs, a 24-bit class code and a header type; Command's decode,
    /// bus-master and INTx-disable bits and Interrupt Line are writable.
    pub fn new(vendor: u16, device: u16, class: u32, header_type: u8) -> FakeFunction {
        let mut function = FakeFunction {
            bytes: [0; 4096],
            writable: [0; 4096],
            bar_slots: match header_type & 0x7F {
                0 => 6,
                1 => 2,
                _ => 0,
            },
        };
        function.set32(0x00, (device as u32) << 16 | vendor as u32);
        function.set32(0x08, class << 8 | 0x01);
        function.set8(0x0E, header_type);
        function.set_writable(COMMAND, 2, 0x0407);
        function.set_writable(0x3C, 1, 0xFF);
        function
    }

    pub fn set8(&mut self, offset: u16, value: u8) -> &mut Self {
        self.bytes[offset as usize] = value;
        self
    }
    pub fn set16(&mut self, offset: u16, value: u16) -> &mut Self {
        self.set_bytes(offset, 2, value as u32)
    }
    pub fn set32(&mut self, offset: u16, value: u32) -> &mut Self {
        self.set_bytes(offset, 4, value)
    }
    fn set_bytes(&mut self, offset: u16, len: u16, value: u32) -> &mut Self {
        for i in 0..len {
            self.bytes[(offset + i) as usize] = (value >> (8 * i)) as u8;
        }
        self
    }
    pub fn set_writable(&mut self, offset: u16, len: u16, mask: u32) -> &mut Self {
        for i in 0..len {
            self.writable[(offset + i) as usize] = (mask >> (8 * i)) as u8;
        }
        self
    }

    pub fn get32(&self, offset: u16) -> u32 {
        (0..4).fold(0, |value, i| {
            value | (self.bytes[(offset + i) as usize] as u32) << (8 * i)
        })
    }
    pub fn get16(&self, offset: u16) -> u16 {
        (self.get32(offset & !3) >> ((offset & 2) * 8)) as u16
    }

    /// A BAR of `kind` at slot `index`, programmed to `base`, decoding `size` bytes.
    pub fn bar(&mut self, index: u16, kind: BarKind, base: u64, size: u64) -> &mut Self {
        let offset = BAR0 + 4 * index;
        let type_bits = match kind {
            BarKind::Io => 0x1,
            BarKind::Memory32 { prefetchable } => (prefetchable as u32) << 3,
            BarKind::Memory64 { prefetchable } => (prefetchable as u32) << 3 | 0x4,
        };
        let address_mask = !(size - 1);
        self.set32(offset, (base as u32 & !kind.type_bits()) | type_bits);
        self.set_writable(offset, 4, address_mask as u32 & !kind.type_bits());
        if let BarKind::Io = kind {
            // Like most I/O BARs, decode only 16 address bits: bits 31:16 read as zero.
            self.set_writable(offset, 4, address_mask as u32 & 0xFFFC);
        }
        if let BarKind::Memory64 { .. } = kind {
            self.set32(offset + 4, (base >> 32) as u32);
            self.set_writable(offset + 4, 4, (address_mask >> 32) as u32);
        }
        self
    }

    /// Bus numbers of a type-1 header (writable, as on real bridges).
    pub fn bridge_buses(&mut self, primary: u8, secondary: u8, subordinate: u8) -> &mut Self {
        self.set32(
            0x18,
            (subordinate as u32) << 16 | (secondary as u32) << 8 | primary as u32,
        );
        self.set_writable(0x18, 3, 0xFF_FFFF)
    }

    /// Appends a capability at `offset` with `id` and `body` (bytes from offset + 2), linking
    /// it at the end of the list and setting Status.CAPABILITIES_LIST.
    pub fn capability(&mut self, offset: u8, id: u8, body: &[u8]) -> &mut Self {
        let status = self.get16(STATUS) | Status::CAPABILITIES_LIST.bits();
        self.set16(STATUS, status);
        let mut link = CAPABILITIES_POINTER;
        while self.bytes[link as usize] != 0 {
            link = self.bytes[link as usize] as u16 + 1;
        }
        self.bytes[link as usize] = offset;
        self.set8(offset as u16, id).set8(offset as u16 + 1, 0);
        for (i, byte) in body.iter().enumerate() {
            self.bytes[offset as usize + 2 + i] = *byte;
        }
        self
    }

    /// Sets capability `at`'s next pointer directly (to build broken lists).
    pub fn link(&mut self, at: u8, next: u8) -> &mut Self {
        self.set8(at as u16 + 1, next)
    }

    /// An extended capability header: id, version 1, next.
    pub fn extended_capability(&mut self, offset: u16, id: u16, next: u16) -> &mut Self {
        self.set32(offset, (next as u32) << 20 | 1 << 16 | id as u32)
    }

    fn decodes(&self) -> bool {
        let decode = (Command::IO_SPACE | Command::MEMORY_SPACE).bits();
        self.get16(COMMAND) & decode != 0
    }
}

pub struct FakeConfigSpace {
    mechanism: Mechanism,
    functions: RefCell<BTreeMap<Bdf, FakeFunction>>,
    /// BAR writes made while the function decoded memory or I/O.
    pub writes_while_decoding: Cell<u32>,
    pub writes: Cell<u32>,
}

impl FakeConfigSpace {
    pub fn new(mechanism: Mechanism) -> FakeConfigSpace {
        FakeConfigSpace {
            mechanism,
            functions: RefCell::new(BTreeMap::new()),
            writes_while_decoding: Cell::new(0),
            writes: Cell::new(0),
        }
    }

    pub fn add(&self, bus: u8, device: u8, function: u8, fake: FakeFunction) {
        let bdf = Bdf::new(0, bus, device, function).unwrap();
        self.functions.borrow_mut().insert(bdf, fake);
    }

    pub fn get(&self, bdf: Bdf) -> FakeFunction {
        self.functions.borrow()[&bdf].clone()
    }
}

impl ConfigAccess for FakeConfigSpace {
    fn mechanism(&self) -> Mechanism {
        self.mechanism
    }
    fn segment(&self) -> u16 {
        0
    }
    fn bus_range(&self) -> (u8, u8) {
        (0, 0xFF)
    }
    fn config_size(&self) -> u16 {
        match self.mechanism {
            Mechanism::Legacy => 256,
            Mechanism::Ecam => 4096,
        }
    }

    fn read32(&self, bdf: Bdf, offset: u16) -> u32 {
        if !self.reaches(bdf, offset) {
            return u32::MAX;
        }
        match self.functions.borrow().get(&bdf) {
            Some(function) => function.get32(offset & !3),
            None => u32::MAX,
        }
    }

    fn write32(&self, bdf: Bdf, offset: u16, value: u32) {
        if !self.reaches(bdf, offset) {
            return;
        }
        self.writes.set(self.writes.get() + 1);
        let mut functions = self.functions.borrow_mut();
        let Some(function) = functions.get_mut(&bdf) else {
            return;
        };
        let offset = offset & !3;
        let bars = BAR0..BAR0 + 4 * function.bar_slots;
        if bars.contains(&offset) && function.decodes() {
            self.writes_while_decoding
                .set(self.writes_while_decoding.get() + 1);
        }
        for i in 0..4 {
            let at = (offset + i) as usize;
            let mask = function.writable[at];
            let byte = (value >> (8 * i)) as u8;
            function.bytes[at] = (function.bytes[at] & !mask) | (byte & mask);
        }
    }
}
