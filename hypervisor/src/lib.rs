//! Exitless hypervisor library: everything that knows hardware, written so that it can be
//! unit-tested on the host with plain `cargo test`. The kernel binary (`main.rs`) wires it to
//! the real machine; `unsafe` and assembly stay in `arch/` and in the few register accessors
//! that must touch MMIO or I/O ports.
#![cfg_attr(not(test), no_std)]

extern crate alloc;

pub mod arch;
pub mod caps;
pub mod config;
pub mod iommu;
pub mod memory;
pub mod pci;
pub mod platform;
/// Only in the test kernel (feature `selftest`) and host unit tests: the production kernel has none.
#[cfg(any(test, feature = "selftest"))]
pub mod selftest;
pub mod summary;
pub mod virq;
pub mod vmm;
pub mod vmx;
pub mod vtd;
