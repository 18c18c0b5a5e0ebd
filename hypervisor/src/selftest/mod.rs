//! Self-tests the kernel runs after its boot summary when the configuration asks for them
//! (`selftest = ...`), for platforms where guests cannot prove a feature: QEMU TCG has VT-d and
//! DMA-capable emulated devices but no VT-x, so the VT-d layer is driven from the host side.

pub mod edu;
pub mod vtd;
pub mod vtd_guest;
