//! Cargo builds of the bare-metal crates, each for its own target, and the files they produce.

use std::fs;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

use crate::config::SELFTEST_KERNEL_FILE;
use crate::paths;

/// What goes on the boot disk.
#[derive(Debug, Clone)]
pub struct Artifacts {
    /// The UEFI loader (becomes `\EFI\BOOT\BOOTX64.EFI`).
    pub boot_efi: PathBuf,
    /// The production hypervisor kernel, without self-tests (becomes `\exitless\hypervisor.elf`).
    pub hypervisor_elf: PathBuf,
    /// The test kernel: the same kernel built with feature `selftest` (becomes
    /// `\exitless\hypervisor-selftest.elf` on images whose configuration names it). Built only
    /// for the test boots that use a self-test.
    pub hypervisor_selftest_elf: Option<PathBuf>,
    /// The guest-test kernels (become `\exitless\guests\NAME.elf`).
    pub guests: Vec<PathBuf>,
}

impl Artifacts {
    pub fn print(&self) {
        println!("loader:     {}", paths::display(&self.boot_efi));
        println!("hypervisor: {}", paths::display(&self.hypervisor_elf));
        if let Some(selftest) = &self.hypervisor_selftest_elf {
            println!("self-tests: {}", paths::display(selftest));
        }
        for guest in &self.guests {
            println!("guest:      {}", paths::display(guest));
        }
        if self.guests.is_empty() {
            println!("guests:     none (guest-tests has no binaries yet)");
        }
    }
}

/// Which hypervisor kernels to build.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernels {
    /// The production kernel only (`cargo xtask build`, `image`, `run` with a user's configuration).
    Production,
    /// The production kernel and the self-test kernel (`cargo xtask test`).
    WithSelfTest,
}

impl Kernels {
    /// What an image with this configuration needs: the self-test kernel too when it boots it
    /// (a user's `kernel = hypervisor-selftest.elf`), else the production kernel alone.
    pub fn for_config(config_text: &str) -> Self {
        if exitless_abi::config_text::top_level(config_text, "kernel") == Some(SELFTEST_KERNEL_FILE)
        {
            Kernels::WithSelfTest
        } else {
            Kernels::Production
        }
    }
}

/// What only self-test code puts in a kernel ELF: the mangled path of the `selftest` module's
/// symbols and the interrupt probe's names (its module and assembly labels). The production kernel
/// must have none of them, the self-test kernel all of them (which shows the check can see them).
pub const SELFTEST_MARKERS: &[&str] = &["10hypervisor8selftest", "irq_probe"];

/// The markers of [`SELFTEST_MARKERS`] found in `elf`.
pub fn selftest_markers_in(elf: &[u8]) -> Vec<&'static str> {
    SELFTEST_MARKERS
        .iter()
        .copied()
        .filter(|marker| elf.windows(marker.len()).any(|w| w == marker.as_bytes()))
        .collect()
}

/// Fails unless the production kernel has no self-test code and the test kernel has it.
fn check_kernels(production: &Path, selftest: Option<&Path>) -> Result<()> {
    let read = |p: &Path| fs::read(p).with_context(|| format!("reading {}", p.display()));
    let found = selftest_markers_in(&read(production)?);
    if !found.is_empty() {
        bail!(
            "the production kernel {} contains self-test code ({})",
            paths::display(production),
            found.join(", ")
        );
    }
    if let Some(selftest) = selftest {
        let found = selftest_markers_in(&read(selftest)?);
        if found.len() != SELFTEST_MARKERS.len() {
            bail!(
                "the self-test kernel {} lacks self-test code (found only: {found:?})",
                paths::display(selftest)
            );
        }
    }
    Ok(())
}

/// Builds the loader, the hypervisor kernel(s) and the guest tests in release mode.
///
/// Both kernels are the one `hypervisor` binary, the test kernel with feature `selftest`; they
/// share every dependency's build. Cargo writes both to the same file, so the test kernel is built
/// first and copied to `hypervisor-selftest.elf` beside it, and the production kernel last (the
/// file cargo names `hypervisor` is then always the production kernel).
pub fn build_all(kernels: Kernels) -> Result<Artifacts> {
    let selftest = match kernels {
        Kernels::Production => None,
        Kernels::WithSelfTest => {
            let built = cargo_build(
                "hypervisor",
                "x86_64-unknown-none",
                &["--bin", "hypervisor", "--features", "selftest"],
            )?;
            let built = only(built, "hypervisor")?;
            let copy = built.with_file_name(SELFTEST_KERNEL_FILE);
            fs::copy(&built, &copy)
                .with_context(|| format!("copying {} to {}", built.display(), copy.display()))?;
            Some(copy)
        }
    };
    let hypervisor = cargo_build(
        "hypervisor",
        "x86_64-unknown-none",
        &["--bin", "hypervisor"],
    )?;
    let hypervisor = only(hypervisor, "hypervisor")?;
    check_kernels(&hypervisor, selftest.as_deref())?;
    let boot = cargo_build("boot", "x86_64-unknown-uefi", &["--bin", "boot"])?;
    let guests = if package_has_bins("guest-tests")? {
        cargo_build("guest-tests", "x86_64-unknown-none", &["--bins"])?
    } else {
        Vec::new()
    };
    Ok(Artifacts {
        boot_efi: only(boot, "boot")?,
        hypervisor_elf: hypervisor,
        hypervisor_selftest_elf: selftest,
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
    let features = extra
        .iter()
        .position(|a| *a == "--features")
        .and_then(|at| extra.get(at + 1))
        .map(|f| format!(", features {f}"))
        .unwrap_or_default();
    eprintln!("xtask: building {package} for {target} (release{features})");
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
    fn selftest_markers_are_found_in_symbol_names() {
        let production = b"\x7fELF _ZN10hypervisor3vmm6runner3run17h0E config8SelfTest selftest";
        assert!(selftest_markers_in(production).is_empty());
        let selftest = b"\x7fELF _ZN10hypervisor8selftest3vtd3run17h0E irq_probe_stubs";
        assert_eq!(selftest_markers_in(selftest), SELFTEST_MARKERS);
    }

    #[test]
    fn kernels_are_checked_for_selftest_code() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, data: &[u8]| {
            let path = dir.path().join(name);
            fs::write(&path, data).unwrap();
            path
        };
        let clean = write("clean", b"\x7fELF _ZN10hypervisor6config5parse");
        let tests = write(
            "tests",
            b"\x7fELF _ZN10hypervisor8selftest3vtd irq_probe_stubs",
        );
        assert!(check_kernels(&clean, Some(&tests)).is_ok());
        assert!(check_kernels(&clean, None).is_ok());
        let err = check_kernels(&tests, None).unwrap_err().to_string();
        assert!(err.contains("contains self-test code"), "{err}");
        let err = check_kernels(&clean, Some(&clean)).unwrap_err().to_string();
        assert!(err.contains("lacks self-test code"), "{err}");
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
