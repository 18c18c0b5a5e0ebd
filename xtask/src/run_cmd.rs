//! `cargo xtask run`: build, image, boot one emulator and stream its serial console until the
//! kernel powers off.

use std::fs;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::config::{self, ImageConfig};
use crate::emulator::{self, BootRequest, Emulator, Ending};
use crate::judge::{self, SerialReport};
use crate::kvm::{self, KvmReadings};
use crate::{artifacts, image, paths, prereq, run_dirs, Accel, EmulatorChoice};

/// Picks the emulator: QEMU/KVM where /dev/kvm really offers nested VMX, else Bochs (or QEMU TCG
/// when QEMU is asked for). `kvm` is the KVM verdict, passed in so the rule is testable.
pub fn choose(choice: EmulatorChoice, accel: Accel, kvm: Result<(), String>) -> Result<Emulator> {
    Ok(match (choice, accel) {
        (EmulatorChoice::Bochs, Accel::Auto) => Emulator::Bochs,
        (EmulatorChoice::Bochs, _) => bail!("--accel applies to QEMU only"),
        (_, Accel::Tcg) => Emulator::QemuTcg,
        (_, Accel::Kvm) => match kvm {
            Ok(()) => Emulator::QemuKvm,
            Err(reason) => bail!("QEMU/KVM cannot run a VT-x hypervisor here: {reason}"),
        },
        (EmulatorChoice::Qemu, Accel::Auto) => match kvm {
            Ok(()) => Emulator::QemuKvm,
            Err(_) => Emulator::QemuTcg,
        },
        (EmulatorChoice::Auto, Accel::Auto) => match kvm {
            Ok(()) => Emulator::QemuKvm,
            Err(reason) => {
                eprintln!("xtask: using Bochs: {reason}");
                Emulator::Bochs
            }
        },
    })
}

pub fn run(
    choice: EmulatorChoice,
    accel: Accel,
    timeout: Option<u64>,
    config_file: Option<PathBuf>,
) -> Result<ExitCode> {
    let emulator = choose(choice, accel, kvm::nested_vmx(&KvmReadings::read_host()))?;
    prereq::ensure_rust_targets()?;
    prereq::ensure_packages(&emulator.packages().iter().collect::<Vec<_>>())?;
    let config_text = match &config_file {
        Some(path) => config::with_emulator_exit(
            &fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?,
        ),
        // The demo guest needs VT-x: QEMU TCG has none, so it boots the hypervisor alone.
        None if emulator == Emulator::QemuTcg => ImageConfig::emulator().render(),
        None => ImageConfig::emulator()
            .guest(
                "basic",
                &[("image", "guests/basic.elf"), ("memory_mib", "8")],
            )
            .render(),
    };
    let built = artifacts::build_all(artifacts::Kernels::for_config(&config_text))?;
    // Its own directory, target/xtask/run/<run-id>/ (target/xtask/run/latest names the newest).
    let dir = run_dirs::create(&paths::xtask_dir().join("run"))?;
    let image_path = dir.join("exitless.img");
    // A user's configuration may name files on this machine (relative to its own directory).
    let base = config_file
        .as_deref()
        .map_or_else(paths::workspace_root, image::config_dir);
    let (_, files) =
        image::esp_files_resolving(&built, &config_text, &base).with_context(|| {
            format!(
                "in {}",
                config_file
                    .as_deref()
                    .map_or("the configuration".into(), |p| p.display().to_string())
            )
        })?;
    image::write_image(&files, &image_path)?;
    let timeout = timeout
        .map(Duration::from_secs)
        .unwrap_or(emulator.default_timeout());
    eprintln!(
        "xtask: booting {} ({}; timeout {} s); serial log: {}",
        emulator.label(),
        emulator.expected_wall_time(),
        timeout.as_secs(),
        paths::display(&dir.join("serial.log"))
    );
    let output = emulator::boot(&BootRequest {
        emulator,
        dir: &dir,
        image: &image_path,
        timeout,
        echo: true,
        done: &judge::powered_off,
        grace: emulator.exit_grace(),
    })?;
    let serial = paths::display(&output.serial_path);
    match output.ending {
        Ending::Done { .. } => {
            let code = SerialReport::parse(&output.serial)
                .poweroff
                .unwrap_or(u32::MAX);
            eprintln!(
                "xtask: kernel powered off with code {code} after {} s ({}); serial log: {serial}",
                output.elapsed.as_secs(),
                output.describe_ending()
            );
            Ok(if code == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Ending::Exited(_) | Ending::TimedOut(_) => bail!(
            "{} before the kernel powered off; serial log: {serial}",
            output.describe_ending()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_kvm_where_usable_else_bochs() {
        let no = || Err("no VMX in /proc/cpuinfo".to_string());
        assert_eq!(
            choose(EmulatorChoice::Auto, Accel::Auto, Ok(())).unwrap(),
            Emulator::QemuKvm
        );
        assert_eq!(
            choose(EmulatorChoice::Auto, Accel::Auto, no()).unwrap(),
            Emulator::Bochs
        );
        assert_eq!(
            choose(EmulatorChoice::Qemu, Accel::Auto, no()).unwrap(),
            Emulator::QemuTcg
        );
        assert_eq!(
            choose(EmulatorChoice::Qemu, Accel::Tcg, Ok(())).unwrap(),
            Emulator::QemuTcg
        );
        assert_eq!(
            choose(EmulatorChoice::Bochs, Accel::Auto, Ok(())).unwrap(),
            Emulator::Bochs
        );
        let err = choose(EmulatorChoice::Qemu, Accel::Kvm, no())
            .unwrap_err()
            .to_string();
        assert!(err.contains("no VMX"), "{err}");
        assert!(choose(EmulatorChoice::Bochs, Accel::Kvm, Ok(())).is_err());
    }
}
