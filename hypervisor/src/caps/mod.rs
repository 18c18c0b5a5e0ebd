//! What the processor and the IOMMUs offer, decoded from raw CPUID leaves, VMX capability MSRs and
//! VT-d CAP/ECAP registers. Decoding takes the raw values as arguments so that it is unit-tested
//! on the host with values measured on the emulators (../shared/emulators.md); only the small
//! `read_*` accessors touch the hardware.

pub mod cpu;
pub mod tsc;
pub mod vmx;
pub mod vmx_controls;
pub mod vtd;

pub use cpu::CpuInfo;
pub use vmx::{VmxCaps, VmxMsrs};
pub use vtd::{AddressWidth, VtdCap, VtdEcap};

/// `yes`/`no` for boot-summary booleans (exitless_abi::protocol).
pub(crate) fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}
