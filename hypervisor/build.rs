//! Links the kernel at its upper-half address with the loader's kernel layout (bare-metal target only).
fn main() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/abi/kernel.ld");
    println!("cargo:rerun-if-changed={script}");
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("none") {
        println!("cargo:rustc-link-arg-bins=-T{script}");
        println!("cargo:rustc-link-arg-bins=--no-pie");
    }
}
