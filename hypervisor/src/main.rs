//! Exitless kernel entry (x86_64-unknown-none).
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!("the hypervisor kernel runs bare metal: build it with `cargo xtask build`");
}
