//! PCI configuration space through configuration mechanism #1 (ports 0xCF8/0xCFC, PCI 3.0 3.2.2.3.2),
//! as a bare-metal kernel reaches it. Under Exitless the same accesses reach the guest's virtual bus,
//! which shows only its assigned functions.

use x86_64::instructions::port::Port;

/// A function on bus `bus`, device `device`, function `function`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Function {
    pub bus: u8,
    pub device: u8,
    pub function: u8,
}

/// Command register bits (PCI 3.0 6.2.2).
pub const COMMAND: u8 = 0x04;
pub const COMMAND_MEMORY_SPACE: u32 = 1 << 1;
pub const COMMAND_BUS_MASTER: u32 = 1 << 2;
/// Status bit 4: the function has a capability list starting at [`CAPABILITIES_POINTER`].
const STATUS_CAPABILITIES: u32 = 1 << 20;
const CAPABILITIES_POINTER: u8 = 0x34;
/// Capability ID of MSI (PCI 3.0 6.8.1).
pub const CAP_MSI: u8 = 0x05;

impl Function {
    pub const fn new(bus: u8, device: u8, function: u8) -> Self {
        Self {
            bus,
            device,
            function,
        }
    }

    fn address(self, offset: u8) -> u32 {
        1 << 31
            | u32::from(self.bus) << 16
            | u32::from(self.device) << 11
            | u32::from(self.function) << 8
            | u32::from(offset & 0xFC)
    }

    /// The configuration dword at `offset` (rounded down to a dword); all ones if nothing answers.
    pub fn read(self, offset: u8) -> u32 {
        // SAFETY: configuration mechanism #1; the guest is single-threaded, so CONFIG_ADDRESS is ours.
        unsafe {
            Port::<u32>::new(0xCF8).write(self.address(offset));
            Port::<u32>::new(0xCFC).read()
        }
    }

    pub fn write(self, offset: u8, value: u32) {
        // SAFETY: as in `read`.
        unsafe {
            Port::<u32>::new(0xCF8).write(self.address(offset));
            Port::<u32>::new(0xCFC).write(value);
        }
    }

    /// Vendor ID in bits 15:0, device ID in 31:16.
    pub fn id(self) -> u32 {
        self.read(0)
    }

    /// The offset of capability `id` in the capability list, if the function has it.
    pub fn capability(self, id: u8) -> Option<u8> {
        if self.read(COMMAND) & STATUS_CAPABILITIES == 0 {
            return None;
        }
        let mut at = (self.read(CAPABILITIES_POINTER) & 0xFC) as u8;
        // A list has at most 48 entries in 256 bytes; the bound stops a looping list.
        for _ in 0..48 {
            if at < 0x40 {
                return None;
            }
            let header = self.read(at);
            if header as u8 == id {
                return Some(at);
            }
            at = ((header >> 8) & 0xFC) as u8;
        }
        None
    }

    /// The base of memory BAR `index` (0..=5), if it is a memory BAR (a 64-bit one takes two slots).
    pub fn memory_bar(self, index: u8) -> Option<u64> {
        let offset = 0x10 + 4 * index;
        let low = self.read(offset);
        if low & 1 != 0 {
            return None;
        }
        let base = u64::from(low & !0xF);
        // Type bits 2:1 = 0b10: 64-bit BAR, the next slot holds the high dword (PCI 3.0 6.2.5.1).
        Some(if (low >> 1) & 0b11 == 0b10 && index < 5 {
            base | u64::from(self.read(offset + 4)) << 32
        } else {
            base
        })
    }
}

/// Every function on bus 0 that answers: all eight functions of each device (an assigned function
/// may be any one of its device's functions).
pub fn bus0() -> impl Iterator<Item = Function> {
    (0..32u8)
        .flat_map(|device| (0..8u8).map(move |function| Function::new(0, device, function)))
        .filter(|f| f.id() != u32::MAX)
}

/// The first function on bus 0 with `vendor`:`device`.
pub fn find(vendor: u16, device: u16) -> Option<Function> {
    let id = u32::from(device) << 16 | u32::from(vendor);
    bus0().find(|f| f.id() == id)
}
