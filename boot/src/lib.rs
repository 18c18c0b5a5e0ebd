//! Host-testable parts of the Exitless UEFI loader: the page tables it hands the kernel.
//! The UEFI application itself is `main.rs`.
#![cfg_attr(not(test), no_std)]

pub mod paging;
