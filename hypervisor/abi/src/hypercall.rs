//! The hypercall ABI between Exitless and its guests.
//!
//! A guest detects Exitless with CPUID: leaf 1 ECX bit 31 (hypervisor present) and leaf 0x4000_0000
//! returning [`CPUID_SIGNATURE`] in EBX, ECX, EDX. It calls the hypervisor with `VMCALL`:
//! `rax` = [`Hypercall`] number, arguments in `rdi`, `rsi`, `rdx`; the result comes back in `rax`
//! (values at or above [`ERROR_BASE`] are [`HypercallError`]s). Guests print through COM1 as on bare
//! metal; the hypervisor forwards their output to the machine's console.

/// CPUID leaf of the hypervisor's vendor signature (the range reserved for hypervisors).
pub const CPUID_VENDOR_LEAF: u32 = 0x4000_0000;
/// EBX, ECX, EDX of [`CPUID_VENDOR_LEAF`], as bytes.
pub const CPUID_SIGNATURE: [u8; 12] = *b"ExitlessHV\0\0";
/// Version returned by [`Hypercall::Version`]; bumped on incompatible changes.
pub const ABI_VERSION: u64 = 1;

/// Hypercall numbers (`rax` on `VMCALL`).
#[repr(u64)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hypercall {
    /// Returns [`ABI_VERSION`].
    Version = 0,
    /// Ends the calling guest; `rdi` = exit code (0 = all its tests passed). Does not return.
    PowerOff = 1,
    /// Zeroes the caller's VM-exit counters (start of a measured interval).
    ResetExitCounters = 2,
    /// Copies the caller's exit counters, one `u64` per basic exit reason (index = reason), to guest-physical
    /// `rdi`, at most `rsi` entries; returns the number of entries written.
    ReadExitCounters = 3,
    /// Returns how many host timer interrupts the host has taken so far (the host keeps its timer
    /// whatever the guest does; tests use this to see it tick).
    HostTimerTicks = 4,
    /// Returns how the guest's device interrupts are delivered: 0 `baseline`, 1 `eli`, 2 `apicv`.
    InterruptMode = 5,
}

impl Hypercall {
    pub const fn from_raw(raw: u64) -> Option<Self> {
        Some(match raw {
            0 => Self::Version,
            1 => Self::PowerOff,
            2 => Self::ResetExitCounters,
            3 => Self::ReadExitCounters,
            4 => Self::HostTimerTicks,
            5 => Self::InterruptMode,
            _ => return None,
        })
    }
}

/// The measurement port: a byte written here opens ([`MEASURE_BEGIN`]) or closes ([`MEASURE_END`])
/// the guest's measured window, over which the hypervisor counts its exits and interrupt work and
/// reports them when the guest ends (`summary: guest_window`). An I/O port rather than a hypercall,
/// so that a guest's user space can mark its own workload (Linux: a byte written to `/dev/port` at
/// this offset). On bare metal, or under another hypervisor, the write reaches no device. No PC
/// device decodes it (the range 0x5E0-0x5EF is unassigned).
pub const MEASURE_PORT: u16 = 0x5E1;
pub const MEASURE_BEGIN: u8 = 1;
pub const MEASURE_END: u8 = 2;

/// Results at or above this are errors.
pub const ERROR_BASE: u64 = u64::MAX - 0xFF;

#[repr(u64)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HypercallError {
    UnknownCall = ERROR_BASE,
    /// A guest-physical buffer outside the guest's memory.
    BadAddress = ERROR_BASE + 1,
}

impl HypercallError {
    pub const fn from_raw(raw: u64) -> Option<Self> {
        match raw {
            r if r == Self::UnknownCall as u64 => Some(Self::UnknownCall),
            r if r == Self::BadAddress as u64 => Some(Self::BadAddress),
            _ => None,
        }
    }
}

/// Number of basic VM-exit reasons counted (SDM Vol. 3D Appendix C lists reasons 0..=77).
pub const EXIT_REASON_COUNT: usize = 80;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_round_trip() {
        for call in [
            Hypercall::Version,
            Hypercall::PowerOff,
            Hypercall::ResetExitCounters,
            Hypercall::ReadExitCounters,
            Hypercall::HostTimerTicks,
            Hypercall::InterruptMode,
        ] {
            assert_eq!(Hypercall::from_raw(call as u64), Some(call));
        }
        assert_eq!(Hypercall::from_raw(99), None);
        assert_eq!(
            HypercallError::from_raw(HypercallError::BadAddress as u64),
            Some(HypercallError::BadAddress)
        );
        assert_eq!(HypercallError::from_raw(7), None);
    }

    #[test]
    fn signature_fits_three_registers() {
        assert_eq!(CPUID_SIGNATURE.len(), 12);
    }
}
