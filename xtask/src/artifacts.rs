//! Cargo builds of the bare-metal crates, each for its own target, and the files they produce.

use std::io::BufRead;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

use crate::paths;

/// What goes on the boot disk.
#[derive(Debug, Clone)]
pub struct Artifacts {
    /// The UEFI loader (becomes `\EFI\BOOT\BOOTX64.EFI`).
    pub boot_efi: PathBuf,
    /// The hypervisor kernel (becomes `\exitless\hypervisor.elf`).
    pub hypervisor_elf: PathBuf,
    /// The guest-test kernels (become `\exitless\guests\NAME.elf`).
    pub guests: Vec<PathBuf>,
}

impl Artifacts {
    pub fn print(&self) {
        println!("loader:     {}", paths::display(&self.boot_efi));
        println!("hypervisor: {}", paths::display(&self.hypervisor_elf));
        for guest in &self.guests {
            println!("guest:      {}", paths::display(guest));
        }
        if self.guests.is_empty() {
            println!("guests:     none (guest-tests has no binaries yet)");
        }
    }
}

/// Builds the loader, the hypervisor and the guest tests in release mode.
pub fn build_all() -> Result<Artifacts> {
    let hypervisor = cargo_build(
        "hypervisor",
        "x86_64-unknown-none",
        &["--bin", "hypervisor"],
    )?;
    let boot = cargo_build("boot", "x86_64-unknown-uefi", &["--bin", "boot"])?;
    let guests = if package_has_bins("guest-tests")? {
        cargo_build("guest-tests", "x86_64-unknown-none", &["--bins"])?
    } else {
        Vec::new()
    };
    Ok(Artifacts {
        boot_efi: only(boot, "boot")?,
        hypervisor_elf: only(hypervisor, "hypervisor")?,
        guests,
    })
}

fn only(mut files: Vec<PathBuf>, package: &str) -> Result<PathBuf> {
    match files.len() {
        1 => Ok(files.remove(0)),
        n => bail!("expected one executable from package {package}, cargo reported {n}"),
    }
}

/// `cargo build --release` of one package for one target; returns the executables cargo reports.
fn cargo_build(package: &str, target: &str, extra: &[&str]) -> Result<Vec<PathBuf>> {
    eprintln!("xtask: building {package} for {target} (release)");
    let mut child = Command::new(paths::cargo())
        .current_dir(paths::workspace_root())
        .args(["build", "--release", "-p", package, "--target", target])
        .args(extra)
        .arg("--message-format=json-render-diagnostics")
        .stdout(Stdio::piped())
        .spawn()
        .context("starting cargo build")?;
    let stdout = child.stdout.take().expect("piped stdout");
    let mut executables = Vec::new();
    for line in std::io::BufReader::new(stdout).lines() {
        executables.extend(executable_of(&line?));
    }
    let status = child.wait()?;
    if !status.success() {
        bail!("cargo build of {package} for {target} failed ({status})");
    }
    Ok(executables)
}

/// The `executable` of a `compiler-artifact` message, if it has one.
fn executable_of(message: &str) -> Option<PathBuf> {
    let value: serde_json::Value = serde_json::from_str(message).ok()?;
    if value["reason"] != "compiler-artifact" {
        return None;
    }
    value["executable"].as_str().map(PathBuf::from)
}

fn package_has_bins(package: &str) -> Result<bool> {
    let out = Command::new(paths::cargo())
        .current_dir(paths::workspace_root())
        .args(["metadata", "--no-deps", "--format-version", "1"])
        .output()
        .context("running cargo metadata")?;
    if !out.status.success() {
        bail!(
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    Ok(bins_of(&meta, package) > 0)
}

fn bins_of(meta: &serde_json::Value, package: &str) -> usize {
    let Some(packages) = meta["packages"].as_array() else {
        return 0;
    };
    packages
        .iter()
        .filter(|p| p["name"] == package)
        .flat_map(|p| p["targets"].as_array().into_iter().flatten())
        .filter(|t| {
            t["kind"]
                .as_array()
                .is_some_and(|kinds| kinds.iter().any(|k| k == "bin"))
        })
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn executables_come_from_compiler_artifact_messages() {
        let msg =
            r#"{"reason":"compiler-artifact","target":{"name":"boot"},"executable":"/t/boot.efi"}"#;
        assert_eq!(executable_of(msg), Some(PathBuf::from("/t/boot.efi")));
        let lib = r#"{"reason":"compiler-artifact","executable":null}"#;
        assert_eq!(executable_of(lib), None);
        assert_eq!(
            executable_of(r#"{"reason":"build-finished","success":true}"#),
            None
        );
        assert_eq!(executable_of("not json"), None);
    }

    #[test]
    fn bins_are_counted_per_package() {
        let meta: serde_json::Value = serde_json::from_str(
            r#"{"packages":[
                {"name":"guest-tests","targets":[{"kind":["lib"]}]},
                {"name":"hypervisor","targets":[{"kind":["lib"]},{"kind":["bin"]}]}]}"#,
        )
        .unwrap();
        assert_eq!(bins_of(&meta, "guest-tests"), 0);
        assert_eq!(bins_of(&meta, "hypervisor"), 1);
    }
}
