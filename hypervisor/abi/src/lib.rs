//! Interfaces shared by every part of Exitless.
//!
//! - [`boot_info`]: what the UEFI loader hands the kernel it starts (hypervisor or bare-metal guest test).
//! - [`protocol`]: the machine-readable serial lines that `cargo xtask test` judges runs by.
//! - [`elf_image`]: validation and layout of the ELF64 images the loader and the hypervisor load.
//!
//! `no_std` so the loader, the hypervisor and guests can use it; unit-tested on the host.
#![cfg_attr(not(test), no_std)]

pub mod boot_info;
pub mod config_text;
pub mod elf_image;
pub mod hypercall;
pub mod protocol;
