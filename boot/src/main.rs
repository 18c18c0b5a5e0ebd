//! Exitless UEFI loader: loads `\exitless\` from its own volume and starts the kernel with a
//! `BootInfo` (contract: `exitless_abi::boot_info`), or explains what is wrong and returns to the
//! firmware. Built for x86_64-unknown-uefi; on the host only the `boot` library (page tables) is
//! meaningful, so the binary there just says how to build it.
#![cfg_attr(target_os = "uefi", no_std, no_main)]

#[cfg(target_os = "uefi")]
extern crate alloc;

#[cfg(target_os = "uefi")]
mod console;
#[cfg(target_os = "uefi")]
mod error;
#[cfg(target_os = "uefi")]
mod files;
#[cfg(target_os = "uefi")]
mod handoff;
#[cfg(target_os = "uefi")]
mod loader;

#[cfg(not(target_os = "uefi"))]
fn main() {
    eprintln!(
        "boot is a UEFI application: cargo build -p boot --target x86_64-unknown-uefi --release"
    );
    std::process::exit(1);
}
