//! Prerequisites: the rustup targets every build needs, the rustup components the lint tier needs, and
//! the Debian packages each emulator needs.
//! Installed when we can (rustup; apt-get as root), otherwise named with the exact command to run.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};

/// The targets the no_std crates are built for.
pub const RUST_TARGETS: [&str; 2] = ["x86_64-unknown-none", "x86_64-unknown-uefi"];

/// The rustup components the lint tier runs (`cargo fmt`, `cargo clippy`).
pub const RUST_COMPONENTS: [&str; 2] = ["rustfmt", "clippy"];

/// A Debian package and the files by which we tell it is installed.
#[derive(Debug)]
pub struct Package {
    pub name: &'static str,
    pub files: &'static [&'static str],
}

pub const BOCHS_ROM: &str = "/usr/share/ovmf/OVMF.fd";
pub const VGA_ROM: &str = "/usr/share/vgabios/vgabios.bin";
pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";

pub const BOCHS_PACKAGES: &[Package] = &[
    Package {
        name: "bochs",
        files: &["/usr/bin/bochs"],
    },
    Package {
        name: "bochsbios",
        files: &["/usr/share/bochs/BIOS-bochs-latest"],
    },
    Package {
        name: "vgabios",
        files: &[VGA_ROM],
    },
    Package {
        name: "bochs-term",
        files: &["/usr/lib/x86_64-linux-gnu/bochs/plugins/libbx_term_gui.so"],
    },
    Package {
        name: "ovmf",
        files: &[BOCHS_ROM],
    },
];

pub const QEMU_PACKAGES: &[Package] = &[
    Package {
        name: "qemu-system-x86",
        files: &["/usr/bin/qemu-system-x86_64"],
    },
    Package {
        name: "ovmf",
        files: &[OVMF_CODE, OVMF_VARS],
    },
];

/// Adds the rustup targets that are missing (rust-toolchain.toml names them, but an older rustup
/// may not have installed them).
pub fn ensure_rust_targets() -> Result<()> {
    let out = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .context("running `rustup target list --installed` (is rustup installed?)")?;
    let installed = String::from_utf8_lossy(&out.stdout);
    let missing = missing_targets(&installed);
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("xtask: adding rustup targets {}", missing.join(" "));
    let status = Command::new("rustup")
        .args(["target", "add"])
        .args(&missing)
        .status()
        .context("running rustup target add")?;
    if !status.success() {
        bail!(
            "could not add the rust targets; run: rustup target add {}",
            missing.join(" ")
        );
    }
    Ok(())
}

fn missing_targets(installed: &str) -> Vec<&'static str> {
    RUST_TARGETS
        .into_iter()
        .filter(|t| !installed.lines().any(|l| l.trim() == *t))
        .collect()
}

/// Adds the rustup components that are missing (rust-toolchain.toml names them, but a toolchain
/// installed some other way may lack them).
pub fn ensure_rust_components() -> Result<()> {
    let out = Command::new("rustup")
        .current_dir(crate::paths::workspace_root())
        .args(["component", "list", "--installed"])
        .output()
        .context("running `rustup component list --installed` (is rustup installed?)")?;
    let installed = String::from_utf8_lossy(&out.stdout);
    let missing = missing_components(&installed);
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("xtask: adding rustup components {}", missing.join(" "));
    let status = Command::new("rustup")
        .current_dir(crate::paths::workspace_root())
        .args(["component", "add"])
        .args(&missing)
        .status()
        .context("running rustup component add")?;
    if !status.success() {
        bail!(
            "could not add the rust components; run: rustup component add {}",
            missing.join(" ")
        );
    }
    Ok(())
}

/// rustup lists components with the host triple appended (`clippy-x86_64-unknown-linux-gnu`).
fn missing_components(installed: &str) -> Vec<&'static str> {
    RUST_COMPONENTS
        .into_iter()
        .filter(|c| {
            !installed
                .lines()
                .map(str::trim)
                .any(|l| l == *c || l.strip_prefix(*c).is_some_and(|rest| rest.starts_with('-')))
        })
        .collect()
}

/// Installs the packages that are missing, with apt-get when running as root, else fails naming the
/// exact command.
pub fn ensure_packages(packages: &[&Package]) -> Result<()> {
    let mut missing: Vec<&str> = packages
        .iter()
        .filter(|p| p.files.iter().any(|f| !Path::new(f).exists()))
        .map(|p| p.name)
        .collect();
    missing.dedup();
    if missing.is_empty() {
        return Ok(());
    }
    let command = format!("apt-get install -y {}", missing.join(" "));
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    if !root || !Path::new("/usr/bin/apt-get").exists() {
        bail!(
            "missing Debian packages: {}; install them with: sudo apt-get update && sudo {command}",
            missing.join(" ")
        );
    }
    eprintln!("xtask: installing Debian packages {}", missing.join(" "));
    for args in [
        vec!["update"],
        [vec!["install", "-y"], missing.clone()].concat(),
    ] {
        let status = Command::new("apt-get")
            .args(&args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .context("running apt-get")?;
        if !status.success() {
            bail!("`apt-get {}` failed; run: {command}", args.join(" "));
        }
    }
    if let Some(p) = packages
        .iter()
        .find(|p| p.files.iter().any(|f| !Path::new(f).exists()))
    {
        bail!(
            "package {} is installed but {:?} is still missing",
            p.name,
            p.files
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_targets_are_found_by_whole_line() {
        let listed = "x86_64-unknown-linux-gnu\nx86_64-unknown-none\n";
        assert_eq!(missing_targets(listed), vec!["x86_64-unknown-uefi"]);
        assert!(missing_targets("x86_64-unknown-uefi\nx86_64-unknown-none\n").is_empty());
    }

    #[test]
    fn missing_components_ignore_the_host_triple() {
        let listed = "cargo-x86_64-unknown-linux-gnu\nclippy-x86_64-unknown-linux-gnu\n\
                      rust-std-x86_64-unknown-none\n";
        assert_eq!(missing_components(listed), vec!["rustfmt"]);
        let both = "rustfmt-x86_64-unknown-linux-gnu\nclippy-x86_64-unknown-linux-gnu\n";
        assert!(missing_components(both).is_empty());
        assert_eq!(missing_components("clippyx\n"), vec!["rustfmt", "clippy"]);
    }
}
