//! Intel VT-d (DMA and interrupt remapping), legacy translation mode.
//!
//! Section numbers refer to the Intel Virtualization Technology for Directed I/O Architecture
//! Specification, rev. 4.x: chapter 9 (translation structure formats), chapter 11 (registers),
//! 6.5 (invalidation), 5.1 (interrupt remapping), Appendix A (fault reasons).
//!
//! Everything except [`regs::MmioRegisters`] is plain data manipulation, host-tested against
//! encodings worked out by hand and against `regs::fake::FakeVtd` (tests only), a register
//! model that acts like hardware for the command/status handshakes.

pub mod context;
pub mod fault;
pub mod invalidation;
pub mod irte;
pub mod regs;
pub mod second_level;
pub mod unit;

use core::fmt;
use core::sync::atomic::{compiler_fence, Ordering};

/// A PCI requester ID as VT-d sees it (source-id, VT-d 3.4.1): bus in bits 15:8, device in
/// 7:3, function in 2:0. `pci::bdf::Bdf::requester_id()` produces it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SourceId(pub u16);

impl SourceId {
    pub const fn new(bus: u8, device: u8, function: u8) -> SourceId {
        SourceId((bus as u16) << 8 | ((device as u16) & 0x1F) << 3 | (function as u16) & 0x7)
    }
    pub const fn bus(self) -> u8 {
        (self.0 >> 8) as u8
    }
    /// Device and function: the index into the bus's context table (VT-d 3.4.2).
    pub const fn devfn(self) -> u8 {
        self.0 as u8
    }
    pub const fn device(self) -> u8 {
        (self.0 >> 3) as u8 & 0x1F
    }
    pub const fn function(self) -> u8 {
        self.0 as u8 & 0x7
    }
}

impl fmt::Display for SourceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:02x}:{:02x}.{:x}",
            self.bus(),
            self.device(),
            self.function()
        )
    }
}

/// A domain identifier (VT-d 3.4.3). With CAP.CM set, hardware caches not-present entries under
/// domain 0, so domain 0 must not be used for a real domain then (VT-d 6.2.2).
pub type DomainId = u16;

/// Why a VT-d operation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VtdError {
    /// No frame left for a table.
    OutOfMemory,
    /// The hardware did not acknowledge a command within the polling budget.
    Timeout(&'static str),
    /// The invalidation queue reported an error (FSTS.IQE/ICE/ITE bits).
    QueueError(u32),
    /// The request needs a feature CAP/ECAP does not report.
    Unsupported(&'static str),
}

impl fmt::Display for VtdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VtdError::OutOfMemory => write!(f, "out of memory for VT-d tables"),
            VtdError::Timeout(what) => write!(f, "VT-d hardware timed out: {what}"),
            VtdError::QueueError(fsts) => write!(f, "invalidation queue error, FSTS={fsts:#x}"),
            VtdError::Unsupported(what) => write!(f, "not supported by this unit: {what}"),
        }
    }
}

/// Stores a 128-bit table entry (root, context, IRTE) as two 64-bit halves in the order that
/// keeps the hardware from seeing a half-written present entry: the half holding the Present bit
/// (`lo`) goes last when the entry becomes present and first when it becomes not-present. The
/// compiler fences keep the stores in program order; x86 stores are not reordered with each
/// other (SDM Vol. 3A 9.2.2).
fn store_entry128(table: &mut [u64; 512], index: usize, lo: u64, hi: u64) {
    let (lo_i, hi_i) = (2 * index, 2 * index + 1);
    if lo & 1 != 0 {
        table[hi_i] = hi;
        compiler_fence(Ordering::SeqCst);
        table[lo_i] = lo;
    } else {
        table[lo_i] = lo;
        compiler_fence(Ordering::SeqCst);
        table[hi_i] = hi;
    }
    compiler_fence(Ordering::SeqCst);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_id_layout() {
        // 00:02.0 -> 0x0010; 3a:1f.7 -> 0x3aff (bus 15:8, device 7:3, function 2:0).
        assert_eq!(SourceId::new(0, 2, 0).0, 0x0010);
        let s = SourceId::new(0x3a, 0x1f, 7);
        assert_eq!(s.0, 0x3aff);
        assert_eq!(
            (s.bus(), s.device(), s.function(), s.devfn()),
            (0x3a, 0x1f, 7, 0xff)
        );
        assert_eq!(alloc::format!("{}", SourceId(0x0018)), "00:03.0");
    }

    #[test]
    fn entry_store_order_keeps_present_half_for_last() {
        let mut t = [0u64; 512];
        store_entry128(&mut t, 3, 0x1001, 0x0201);
        assert_eq!((t[6], t[7]), (0x1001, 0x0201));
        store_entry128(&mut t, 3, 0, 0);
        assert_eq!((t[6], t[7]), (0, 0));
    }
}
