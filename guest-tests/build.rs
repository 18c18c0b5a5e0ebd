//! Guest tests are kernels of the same layout as the hypervisor: the Exitless loader starts them bare
//! metal, and the hypervisor loads them into guests the same way (see docs/guest-boot-protocol.md).
fn main() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../hypervisor/abi/kernel.ld");
    println!("cargo:rerun-if-changed={script}");
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("none") {
        println!("cargo:rustc-link-arg-bins=-T{script}");
        println!("cargo:rustc-link-arg-bins=--no-pie");
    }
}
