//! `cargo xtask`: builds Exitless, makes its boot disk, runs it under the emulators and judges the tests.
//!
//! Each module does one job: [`prereq`] (rustup targets and components, Debian packages), [`artifacts`] (cargo builds),
//! [`config`] (the `exitless.cfg` text), [`image`] (GPT + FAT32 disk), [`kvm`] (is nested VT-x usable
//! here), [`emulator`] (start, watch, stop Bochs and QEMU), [`judge`] (the serial test protocol),
//! [`suite`] (the table of emulator tests), [`run_dirs`] (a log directory per run), [`svg`] (bar charts), [`linux_kit`] (a Debian kernel and initramfs for Linux guests), [`test_cmd`], [`run_cmd`] and
//! [`bench`] (the commands).

mod artifacts;
mod bench;
mod config;
mod emulator;
mod fat_fixup;
mod guest_files;
mod image;
mod judge;
mod kvm;
#[cfg(test)]
mod layering;
mod linux_kit;
mod linux_suite;
mod net_bench;
mod paths;
mod prereq;
mod run_cmd;
mod run_dirs;
mod suite;
mod svg;
mod test_cmd;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};

/// Build, image, run and test the Exitless hypervisor.
#[derive(Parser, Debug)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    after_help = "Examples:\n  cargo xtask run                      boot under QEMU/KVM where /dev/kvm offers VMX, else Bochs\n  cargo xtask test                     host tests, lints, then every emulator tier that can run here\n  cargo xtask test --tier lint         only rustfmt and clippy (every crate, each for its targets)\n  cargo xtask test --tier host,bochs   only these tiers\n  cargo xtask image --out /tmp/x.img   disk image for a real server (write it with dd)\n  cargo xtask bench                    bare vs baseline vs APICv vs ELI interrupt cost under Bochs\n  cargo xtask bench --workload net     Linux's ping and TFTP through the assigned e1000, per interrupt mode\n  cargo xtask linux-kit                Debian 12 kernel, vmlinux and initramfs for Linux guests in target/linux-kit/"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Build every crate for its target (kernel and guests: x86_64-unknown-none; loader: x86_64-unknown-uefi).
    Build,
    /// Build, then write a GPT disk image with a FAT32 EFI System Partition.
    Image {
        /// Where to write the image [default: target/xtask/exitless.img].
        #[arg(long)]
        out: Option<PathBuf>,
        /// Configuration file to put at \exitless\exitless.cfg [default: `kernel = hypervisor.elf`].
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Build, image and boot under an emulator; stream the serial console until the kernel powers off.
    Run {
        #[arg(long, value_enum, default_value_t = EmulatorChoice::Auto)]
        emulator: EmulatorChoice,
        /// QEMU accelerator (auto: KVM where /dev/kvm really offers nested VMX, else TCG).
        #[arg(long, value_enum, default_value_t = Accel::Auto)]
        accel: Accel,
        /// Give up after this many seconds [default: 300 for Bochs, 120 for QEMU].
        #[arg(long)]
        timeout: Option<u64>,
        /// Configuration file to boot with (`emulator_exit = yes` is added when missing).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Host unit tests, lints (rustfmt, clippy), then the emulator tests of every tier that can run here.
    Test {
        /// Tiers to run (repeatable or comma-separated) [default: all].
        #[arg(long = "tier", value_enum, value_delimiter = ',')]
        tiers: Vec<suite::Tier>,
    },
    /// Download Debian 12's kernel and busybox and make what a Linux guest boots with, in
    /// target/linux-kit/: bzImage, vmlinux (uncompressed), initrd.cpio, e1000.ko, VERSION.
    /// Cached: a second run downloads nothing.
    #[command(name = "linux-kit")]
    LinuxKit,
    /// Run a benchmark in Bochs, once per interrupt mode, and print a table. `uart` (default): the
    /// interrupt benchmark guest bare and under `baseline`, `apicv` and `eli`, with JSON and an SVG
    /// chart under target/bench/. `net`: the Linux guest's network workload under each mode, with
    /// JSON in target/bench/bench-net.json.
    Bench {
        /// Where to write the JSON [default: target/bench/bench.json, or bench-net.json].
        #[arg(long)]
        json: Option<PathBuf>,
        /// Also write the figures into README.md and docs/bench.md (between their bench markers)
        /// and the chart into docs/bench.svg.
        #[arg(long)]
        publish: bool,
        /// What to measure: `uart` (the micro-guest's COM2 interrupts) or `net` (Debian's Linux
        /// guest pinging and fetching a file through the assigned e1000).
        #[arg(long, value_enum, default_value_t = Workload::Uart)]
        workload: Workload,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Workload {
    Uart,
    Net,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum EmulatorChoice {
    /// QEMU/KVM where /dev/kvm really offers VMX, else Bochs.
    Auto,
    Bochs,
    Qemu,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Accel {
    Auto,
    Kvm,
    Tcg,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // An unknown command gets the whole usage text, not just clap's one-line hint.
        Err(e) if e.kind() == clap::error::ErrorKind::InvalidSubcommand => {
            let first = e.to_string();
            eprintln!("{}\n", first.lines().next().unwrap_or_default());
            let _ = Cli::command().print_help();
            return ExitCode::from(2);
        }
        Err(e) => e.exit(),
    };
    let result = match cli.command {
        Command::Build => prereq::ensure_rust_targets()
            .and_then(|()| artifacts::build_all(artifacts::Kernels::Production))
            .map(|built| {
                built.print();
                ExitCode::SUCCESS
            }),
        Command::Image { out, config } => {
            image::image_command(out, config).map(|()| ExitCode::SUCCESS)
        }
        Command::Run {
            emulator,
            accel,
            timeout,
            config,
        } => run_cmd::run(emulator, accel, timeout, config),
        Command::Test { tiers } => test_cmd::test(&tiers),
        Command::Bench {
            json,
            publish,
            workload: Workload::Uart,
        } => bench::bench(json, publish),
        Command::Bench {
            json,
            publish,
            workload: Workload::Net,
        } => net_bench::bench(json, publish),
        Command::LinuxKit => linux_kit::command().map(|()| ExitCode::SUCCESS),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
