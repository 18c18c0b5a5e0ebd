//! Memory-mapped device registers reached at a width chosen at run time (a guest's instruction
//! decides it, `vmm::mmio_decode`). Registers with a fixed layout have typed accessors of their
//! own next to their model (`vtd::regs`, `pci::access`, `vmm::msix`, `arch::apic`).

/// Reads `bytes` (1, 2, 4 or 8) at `addr` as one access of that width; `None` for another size.
///
/// # Safety
/// `addr..addr + bytes` must be identity-mapped device memory (uncached) or RAM the caller may
/// read, naturally aligned unless the device accepts otherwise, and reading it must have no
/// effect the caller has not accounted for.
pub unsafe fn read(addr: u64, bytes: u8) -> Option<u64> {
    // SAFETY: the caller's contract, for exactly one access of the width asked for.
    unsafe {
        Some(match bytes {
            1 => u64::from(core::ptr::read_volatile(addr as *const u8)),
            2 => u64::from(core::ptr::read_volatile(addr as *const u16)),
            4 => u64::from(core::ptr::read_volatile(addr as *const u32)),
            8 => core::ptr::read_volatile(addr as *const u64),
            _ => return None,
        })
    }
}

/// Writes the low `bytes` (1, 2, 4 or 8) of `value` at `addr` as one access of that width;
/// `false` (and nothing written) for another size.
///
/// # Safety
/// As [`read`], for a write the caller intends.
pub unsafe fn write(addr: u64, bytes: u8, value: u64) -> bool {
    // SAFETY: the caller's contract, for exactly one access of the width asked for.
    unsafe {
        match bytes {
            1 => core::ptr::write_volatile(addr as *mut u8, value as u8),
            2 => core::ptr::write_volatile(addr as *mut u16, value as u16),
            4 => core::ptr::write_volatile(addr as *mut u32, value as u32),
            8 => core::ptr::write_volatile(addr as *mut u64, value),
            _ => return false,
        }
    }
    true
}
