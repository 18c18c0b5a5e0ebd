//! `cargo xtask test`: host unit tests, lints, then the emulator tiers. Every test prints exactly one line
//! on stdout (`TIER/NAME ... ok|FAILED (...)|skipped (...)`); progress goes to stderr; the run ends
//! with `N passed, N failed, N skipped`.
//!
//! Each run writes its images and logs under its own `target/xtask/test/<run-id>/` (see
//! [`run_dirs`]; `target/xtask/test/latest` names the newest), one subdirectory per boot and `host/`.

use std::fs::{self, File};
use std::path::Path;
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use anyhow::Result;

use crate::artifacts::{self, Artifacts, Kernels};
use crate::emulator::{self, BootOutput, BootRequest, Emulator, Ending};
use crate::image;
use crate::judge::{self, SerialReport, Verdict};
use crate::kvm;
use crate::linux_kit;
use crate::paths;
use crate::prereq;
use crate::run_dirs;
use crate::suite::{Boot, Evidence, StopWhen, Tier, BOOTS};

/// Counts of printed test lines.
#[derive(Default)]
struct Tally {
    passed: u32,
    failed: u32,
    skipped: u32,
}

impl Tally {
    /// Prints one test's line and counts it. `log` is where to look when it failed.
    fn record(&mut self, tier: Tier, name: &str, verdict: &Verdict, log: Option<&Path>) {
        let name = format!("{}/{name}", tier.label());
        match verdict {
            Verdict::Ok => {
                self.passed += 1;
                println!("{name} ... ok");
            }
            Verdict::Failed(reason) => {
                self.failed += 1;
                match log {
                    Some(log) => {
                        println!("{name} ... FAILED (see {}: {reason})", paths::display(log))
                    }
                    None => println!("{name} ... FAILED ({reason})"),
                }
            }
            Verdict::Skipped(reason) => {
                self.skipped += 1;
                println!("{name} ... skipped ({reason})");
            }
        }
    }
}

pub fn test(tiers: &[Tier]) -> Result<ExitCode> {
    let started = Instant::now();
    let mut tiers: Vec<Tier> = if tiers.is_empty() {
        Tier::ALL.to_vec()
    } else {
        tiers.to_vec()
    };
    tiers.sort();
    tiers.dedup();
    let mut tally = Tally::default();
    let run = run_dirs::create(&paths::xtask_dir().join("test"))?;
    eprintln!("xtask: this run's logs: {}/", paths::display(&run));

    if tiers.contains(&Tier::Host) {
        host_tier(&mut tally, &run)?;
    }
    if tiers.contains(&Tier::Lint) {
        lint_tier(&mut tally, &run)?;
    }

    // Emulator tiers in order; one that cannot run here is skipped with its reason. The build
    // happens once, when the first tier that can run needs it.
    let mut built: Option<Result<Artifacts, String>> = None;
    let mut linux_kit: Option<Result<linux_kit::LinuxKit, String>> = None;
    // The self-test kernel is built only when a boot of these tiers starts it.
    let kernels = if BOOTS
        .iter()
        .any(|b| tiers.contains(&b.tier) && (b.config)().boots_selftest_kernel())
    {
        Kernels::WithSelfTest
    } else {
        Kernels::Production
    };
    for &tier in tiers.iter().filter(|t| t.emulator().is_some()) {
        if let Some(reason) = tier_blocker(tier) {
            skip_tier(&mut tally, tier, &reason);
            continue;
        }
        let built = built.get_or_insert_with(|| {
            prereq::ensure_rust_targets()
                .and_then(|()| artifacts::build_all(kernels))
                .map_err(|e| format!("build failed: {e:#}"))
        });
        let packages: Vec<_> = tier
            .emulator()
            .into_iter()
            .flat_map(|e| e.packages())
            .collect();
        let ready = match (&*built, prereq::ensure_packages(&packages)) {
            (Ok(built), Ok(())) => Ok(built),
            (Err(e), _) => Err(e.clone()),
            (_, Err(e)) => Err(format!("{e:#}")),
        };
        for boot in BOOTS.iter().filter(|b| b.tier == tier) {
            // A boot with a Linux guest needs the kit (downloaded once per run, cached across
            // runs); without it (no network, no apt) its tests are skipped with the reason.
            if ready.is_ok() && linux_kit::boots_linux(&(boot.config)()) {
                if let Err(reason) = linux_kit.get_or_insert_with(linux_kit::ensure) {
                    skip_boot(&mut tally, boot, reason);
                    continue;
                }
            }
            match &ready {
                Ok(built) => run_boot(&mut tally, boot, built, &run),
                Err(reason) => {
                    for check in boot.checks {
                        tally.record(tier, check.name, &Verdict::Failed(reason.clone()), None);
                    }
                }
            }
        }
    }

    println!(
        "{} passed, {} failed, {} skipped",
        tally.passed, tally.failed, tally.skipped
    );
    eprintln!("xtask: test took {} s", started.elapsed().as_secs());
    if tally.failed > 0 {
        eprintln!("xtask: logs of the failures: {}/", paths::display(&run));
    }
    Ok(if tally.failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// Why an emulator tier cannot run on this machine, if it cannot.
fn tier_blocker(tier: Tier) -> Option<String> {
    match tier {
        Tier::QemuKvm => kvm::nested_vmx(&kvm::KvmReadings::read_host()).err(),
        _ => None,
    }
}

/// Lists what the tier would have judged: each boot's checks and each guest its image runs (the
/// kernel's `guests/guest-NAME` verdict; the guest's own suite is only known once it runs).
fn skip_tier(tally: &mut Tally, tier: Tier, reason: &str) {
    for boot in BOOTS.iter().filter(|b| b.tier == tier) {
        skip_boot(tally, boot, reason);
    }
}

/// Lists one boot's checks and guests as skipped.
fn skip_boot(tally: &mut Tally, boot: &Boot, reason: &str) {
    for check in boot.checks {
        tally.record(
            boot.tier,
            check.name,
            &Verdict::Skipped(reason.into()),
            None,
        );
    }
    for (guest, _) in (boot.config)().guests {
        let name = format!("guests/guest-{guest}");
        tally.record(boot.tier, &name, &Verdict::Skipped(reason.into()), None);
    }
}

/// Images, boots and judges one [`Boot`] in `run/<boot id>/`, printing each of its tests.
fn run_boot(tally: &mut Tally, boot: &Boot, built: &Artifacts, run: &Path) {
    let emulator = boot.tier.emulator().expect("emulator tier");
    let dir = run.join(boot.id);
    match boot_once(boot, emulator, &dir, built) {
        Err(e) => {
            for check in boot.checks {
                tally.record(
                    boot.tier,
                    check.name,
                    &Verdict::Failed(format!("{e:#}")),
                    None,
                );
            }
        }
        Ok(output) => judge_boot(tally, boot, &output),
    }
}

fn boot_once(boot: &Boot, emulator: Emulator, dir: &Path, built: &Artifacts) -> Result<BootOutput> {
    fs::create_dir_all(dir)?;
    let image_path = dir.join("exitless.img");
    // Guests may name files on this machine (e.g. the Linux kit's vmlinux), absolute or relative to
    // the workspace: they are copied onto the ESP and the configuration names their ESP paths.
    let (config, files) =
        image::esp_files_resolving(built, &(boot.config)().render(), &paths::workspace_root())?;
    image::write_image(&files, &image_path)?;
    fs::write(dir.join("exitless.cfg"), &config)?;
    let done = |log: &str| match boot.stop {
        StopWhen::PowerOff => judge::powered_off(log),
        StopWhen::Log(f) => f(log),
    };
    // After POWEROFF the emulator exits by itself; a custom stop means it would run on.
    let grace = match boot.stop {
        StopWhen::PowerOff => emulator.exit_grace(),
        StopWhen::Log(_) => Duration::ZERO,
    };
    eprintln!(
        "xtask: booting {} for {} ({})...",
        emulator.label(),
        boot.id,
        emulator.expected_wall_time()
    );
    let output = emulator::boot(&BootRequest {
        emulator,
        dir,
        image: &image_path,
        timeout: emulator.default_timeout(),
        echo: false,
        done: &done,
        grace,
    })?;
    eprintln!(
        "xtask: {} done in {} s: {}",
        boot.id,
        output.elapsed.as_secs(),
        output.describe_ending()
    );
    Ok(output)
}

fn judge_boot(tally: &mut Tally, boot: &Boot, output: &BootOutput) {
    let report = SerialReport::parse(&output.serial);
    let evidence = Evidence {
        report: &report,
        boot: output,
    };
    // A failure says how the run ended when that explains it (timeout, early exit).
    let ending_note = match output.ending {
        Ending::Done { .. } => None,
        _ => Some(output.describe_ending()),
    };
    for check in boot.checks {
        let verdict = match ((check.check)(&evidence), &ending_note) {
            (Ok(()), _) => Verdict::Ok,
            (Err(reason), None) => Verdict::Failed(reason),
            (Err(reason), Some(note)) => Verdict::Failed(format!("{reason}; {note}")),
        };
        tally.record(boot.tier, check.name, &verdict, Some(&output.serial_path));
    }
    if boot.kernel_results {
        // Named after the kernel's suite (`TIER/SUITE/NAME`) so they cannot clash with the checks.
        for (name, verdict) in &report.results {
            tally.record(boot.tier, name, verdict, Some(&output.serial_path));
        }
    }
}

/// The host crates and the `cargo test` filter for each (the hypervisor's kernel binary is not a
/// host program, so only its library).
const HOST_CRATES: &[(&str, &[&str])] = &[
    ("exitless-abi", &["--lib"]),
    ("hypervisor", &["--lib"]),
    ("xtask", &[]),
];

fn host_tier(tally: &mut Tally, run: &Path) -> Result<()> {
    let dir = run.join("host");
    fs::create_dir_all(&dir)?;
    for (krate, filter) in HOST_CRATES {
        let log = dir.join(format!("{krate}.log"));
        eprintln!("xtask: host tests of {krate} (cargo test)...");
        let out = File::create(&log)?;
        let status = Command::new(paths::cargo())
            .current_dir(paths::workspace_root())
            .args(["test", "--color", "never", "-p", krate])
            .args(*filter)
            .stdin(std::process::Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .status()?;
        let text = fs::read_to_string(&log).unwrap_or_default();
        let results = libtest_results(&text);
        for (name, verdict) in &results {
            tally.record(Tier::Host, &format!("{krate}/{name}"), verdict, Some(&log));
        }
        let any_failed = results.iter().any(|(_, v)| matches!(v, Verdict::Failed(_)));
        if !status.success() && !any_failed {
            tally.record(
                Tier::Host,
                krate,
                &Verdict::Failed(format!("cargo test did not run ({status})")),
                Some(&log),
            );
        }
    }
    Ok(())
}

/// The lint tier's tests: a name and the cargo arguments. Each crate is checked for the targets it
/// is built for: the host build covers hypervisor's lib and its tests, exitless-abi, boot's lib and
/// xtask (and compiles the no_std binaries, whose kernels only exist for their own targets).
const LINTS: &[(&str, &[&str])] = &[
    ("fmt", &["fmt", "--all", "--", "--check"]),
    (
        "clippy-host",
        &[
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ],
    ),
    (
        "clippy-hypervisor-none",
        &[
            "clippy",
            "-p",
            "hypervisor",
            "--target",
            "x86_64-unknown-none",
            "--",
            "-D",
            "warnings",
        ],
    ),
    (
        "clippy-hypervisor-selftest-none",
        &[
            "clippy",
            "-p",
            "hypervisor",
            "--target",
            "x86_64-unknown-none",
            "--features",
            "selftest",
            "--",
            "-D",
            "warnings",
        ],
    ),
    (
        "clippy-guest-tests-none",
        &[
            "clippy",
            "-p",
            "guest-tests",
            "--target",
            "x86_64-unknown-none",
            "--",
            "-D",
            "warnings",
        ],
    ),
    (
        "clippy-boot-uefi",
        &[
            "clippy",
            "-p",
            "boot",
            "--target",
            "x86_64-unknown-uefi",
            "--",
            "-D",
            "warnings",
        ],
    ),
];

/// One test per entry of [`LINTS`]: ok when cargo exits 0. Logs in the run's `lint/`.
fn lint_tier(tally: &mut Tally, run: &Path) -> Result<()> {
    let dir = run.join("lint");
    fs::create_dir_all(&dir)?;
    // rustfmt and clippy, and the targets the cross-target clippy runs need.
    if let Err(e) = prereq::ensure_rust_components().and_then(|()| prereq::ensure_rust_targets()) {
        for (name, _) in LINTS {
            tally.record(Tier::Lint, name, &Verdict::Failed(format!("{e:#}")), None);
        }
        return Ok(());
    }
    for (name, args) in LINTS {
        let log = dir.join(format!("{name}.log"));
        eprintln!("xtask: lint {name} (cargo {})...", args.join(" "));
        let out = File::create(&log)?;
        let status = Command::new(paths::cargo())
            .current_dir(paths::workspace_root())
            .args(*args)
            .stdin(std::process::Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .status()?;
        let verdict = if status.success() {
            Verdict::Ok
        } else {
            Verdict::Failed(format!("`cargo {}` failed ({status})", args.join(" ")))
        };
        tally.record(Tier::Lint, name, &verdict, Some(&log));
    }
    Ok(())
}

/// libtest's `test NAME ... ok|FAILED|ignored[, reason]` lines.
fn libtest_results(output: &str) -> Vec<(String, Verdict)> {
    output
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix("test ")?;
            let (name, status) = rest.rsplit_once(" ... ")?;
            let verdict = if status == "ok" {
                Verdict::Ok
            } else if status == "FAILED" {
                Verdict::Failed("test failed".into())
            } else if let Some(reason) = status.strip_prefix("ignored") {
                let reason = reason.trim_start_matches(',').trim();
                Verdict::Skipped(if reason.is_empty() { "ignored" } else { reason }.into())
            } else {
                return None;
            };
            Some((name.to_string(), verdict))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lint_names_are_unique_and_clippy_denies_warnings() {
        let mut names: Vec<_> = LINTS.iter().map(|(n, _)| *n).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), LINTS.len());
        for (name, args) in LINTS.iter().filter(|(_, a)| a[0] == "clippy") {
            assert!(args.ends_with(&["--", "-D", "warnings"]), "{name}");
        }
    }

    #[test]
    fn libtest_lines_become_results() {
        let out = "\
   Compiling xtask v0.1.0
     Running unittests src/main.rs (target/debug/deps/xtask-abc)

running 4 tests
test judge::tests::missing_end_fails ... ok
test kvm::tests::x ... FAILED
test slow ... ignored, needs bochs
test other ... ignored
test result: FAILED. 1 passed; 1 failed; 2 ignored; 0 measured; 0 filtered out
";
        assert_eq!(
            libtest_results(out),
            vec![
                ("judge::tests::missing_end_fails".into(), Verdict::Ok),
                (
                    "kvm::tests::x".into(),
                    Verdict::Failed("test failed".into())
                ),
                ("slow".into(), Verdict::Skipped("needs bochs".into())),
                ("other".into(), Verdict::Skipped("ignored".into())),
            ]
        );
    }

    #[test]
    fn judging_a_boot_prints_checks_and_kernel_results() {
        let serial = "summary: vmx supported=yes ept=yes\nsummary: iommu units=0\n\
                      summary: ioapic base=0xfec00000\nsummary: acpi source=none\n\
                      [ERROR] device assignment refused: guest shared-line: PCI device 00:02.0 \
                      shares interrupt line 10 with 00:01.3, which it is not given\n\
                      EXITLESS-TEST BEGIN boot\nEXITLESS-TEST RESULT heap ok\n\
                      EXITLESS-TEST RESULT pci FAILED no bus\n\
                      EXITLESS-TEST END passed=1 failed=1 skipped=0\nEXITLESS-POWEROFF 1\n";
        let output = BootOutput {
            serial: serial.into(),
            serial_path: std::path::PathBuf::from("serial.log"),
            emulator_log: std::path::PathBuf::from("bochs.log"),
            ending: Ending::Done { exit: None },
            elapsed: Duration::ZERO,
        };
        let mut tally = Tally::default();
        judge_boot(&mut tally, &BOOTS[0], &output);
        // 6 checks pass, the kernel's `heap` passes and its `pci` fails.
        assert_eq!((tally.passed, tally.failed, tally.skipped), (7, 1, 0));

        let mut tally = Tally::default();
        let timed_out = BootOutput {
            serial: String::new(),
            ending: Ending::TimedOut(Duration::from_secs(300)),
            ..output
        };
        judge_boot(&mut tally, &BOOTS[0], &timed_out);
        assert_eq!((tally.passed, tally.failed), (0, 6));
    }
}
