//! `cargo xtask bench --workload net`: the ELI paper's experiment on these machines. Debian's Linux
//! guest, with the e1000 assigned, runs one fixed network workload per interrupt mode in one
//! deterministic Bochs configuration. The workload is `ping -A` to vnet's host, then a 1 MiB TFTP
//! transfer (the kit's /init with `exitless_bench=net`).
//!
//! Everything comes from one run:
//! - the guest's own figures, in its monotonic time, which is the emulated time of the deterministic
//!   configuration: echoes per second, RTT, transfer rate, eth0's interrupts, idle ticks;
//! - the hypervisor's counters over exactly that workload, from the measured window the guest opens
//!   and closes (`summary: guest_window`): exits by reason, and interrupt work.
//!
//! `bare` (the same kernel on the bare machine, no hypervisor) is not measured yet: the Exitless
//! loader cannot boot a Linux kernel bare, so the mode is reported as missing, with that reason,
//! and no figure is relative to it.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::artifacts::{self, Artifacts};
use crate::bench::{ratio, Mode};
use crate::config::ImageConfig;
use crate::emulator::{self, BootRequest, Emulator, Ending};
use crate::judge;
use crate::{image, linux_kit, linux_suite, paths, prereq, run_dirs};

/// Echoes per run: about a second of emulated time at bare metal's ~2,400 per second.
pub const BENCH_PINGS: u32 = 2000;
/// Why there is no `bare` column yet.
pub const BARE_MISSING: &str = "not measured: the Exitless loader does not boot a Linux kernel \
     bare yet, so there is no bare figure to compare with";
/// A Linux boot, DHCP, 20 pings and the workload, with room to spare.
const BOOT_TIMEOUT: Duration = Duration::from_secs(900);
/// The guest's name in every mode's configuration.
const GUEST: &str = "linux-net";
/// The hypervisor modes the bench runs, in table order.
pub const MODES: [Mode; 3] = [Mode::Baseline, Mode::Apicv, Mode::Eli];

/// The configuration of one mode: the Linux guest of the test suite with the workload switched on.
pub fn config(mode: Mode, pings: u32) -> ImageConfig {
    let kit = linux_kit::kit_paths();
    let extra = format!("exitless_bench=net bench_pings={pings}");
    ImageConfig::emulator()
        .with("unsafe_no_iommu", "yes")
        .guest_owned(
            GUEST,
            linux_suite::linux_guest_with(&kit, mode.label(), &extra),
        )
}

/// The guest's `EXITLESS-LINUX: bench ...` lines, parsed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GuestFigures {
    pub pings_sent: u64,
    pub pings: u64,
    pub ping_ns: u64,
    pub rtt_avg_us: u64,
    pub rtt_max_us: u64,
    pub transfer_bytes: u64,
    pub transfer_ns: u64,
    pub transfer_sha256: String,
    pub window_ns: u64,
    pub device_interrupts: u64,
    pub idle_ticks: u64,
    pub total_ticks: u64,
}

/// The hypervisor's `summary: guest_window` lines for the guest.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HypervisorWindow {
    pub tsc: u64,
    pub exits_by_reason: BTreeMap<String, u64>,
    pub injected: u64,
    pub posted: u64,
    pub eoi_exits: u64,
}

/// One mode's run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NetRun {
    pub guest: GuestFigures,
    pub hypervisor: HypervisorWindow,
}

/// `key=value` fields of a line, in order.
fn fields(line: &str) -> BTreeMap<&str, &str> {
    line.split_whitespace()
        .filter_map(|f| f.split_once('='))
        .collect()
}

fn number(map: &BTreeMap<&str, &str>, key: &str, line: &str) -> Result<u64, String> {
    map.get(key)
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("no number `{key}=` in `{line}`"))
}

/// The text after `EXITLESS-LINUX: bench WHAT ` in guest `guest`'s console lines (behind the
/// hypervisor's `[guest NAME] ` prefix).
fn bench_line<'a>(serial: &'a str, guest: &str, what: &str) -> Result<&'a str, String> {
    let prefix = format!("[guest {guest}] EXITLESS-LINUX: bench ");
    let lines = || {
        serial
            .lines()
            .filter_map(|l| l.strip_prefix(prefix.as_str()))
    };
    if let Some(failed) = lines().find_map(|l| l.strip_prefix("failed")) {
        return Err(format!("the guest's workload failed:{failed}"));
    }
    let head = format!("{what} ");
    lines()
        .find_map(|l| l.strip_prefix(head.as_str()).map(str::trim_end))
        .ok_or_else(|| format!("no `{prefix}{what}` line"))
}

impl GuestFigures {
    pub fn parse(serial: &str, guest: &str) -> Result<Self, String> {
        let ping = bench_line(serial, guest, "ping")?;
        let transfer = bench_line(serial, guest, "transfer")?;
        let window = bench_line(serial, guest, "window")?;
        let (p, t, w) = (fields(ping), fields(transfer), fields(window));
        Ok(Self {
            pings_sent: number(&p, "sent", ping)?,
            pings: number(&p, "received", ping)?,
            ping_ns: number(&p, "ns", ping)?,
            rtt_avg_us: number(&p, "rtt_avg_us", ping)?,
            rtt_max_us: number(&p, "rtt_max_us", ping)?,
            transfer_bytes: number(&t, "bytes", transfer)?,
            transfer_ns: number(&t, "ns", transfer)?,
            transfer_sha256: t.get("sha256").map(|s| s.to_string()).unwrap_or_default(),
            window_ns: number(&w, "ns", window)?,
            device_interrupts: number(&w, "eth0", window)?,
            idle_ticks: number(&w, "idle_ticks", window)?,
            total_ticks: number(&w, "total_ticks", window)?,
        })
    }
}

impl HypervisorWindow {
    pub fn parse(serial: &str, guest: &str) -> Result<Self, String> {
        let find = |name: &str| {
            let head = format!("summary: {name} guest={guest} ");
            serial
                .lines()
                .find(|l| l.starts_with(&head))
                .ok_or_else(|| {
                    format!(
                        "no `{}` line: the guest closed no measured window",
                        head.trim_end()
                    )
                })
        };
        let exits = find("guest_window")?;
        let irq = find("guest_window_interrupts")?;
        let (e, i) = (fields(exits), fields(irq));
        let exits_by_reason = e
            .iter()
            .filter(|(k, _)| !matches!(**k, "guest" | "tsc" | "total"))
            .map(|(k, v)| {
                v.parse()
                    .map(|n| (k.to_string(), n))
                    .map_err(|_| format!("`{k}={v}` is not a count in `{exits}`"))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            tsc: number(&e, "tsc", exits)?,
            exits_by_reason,
            injected: number(&i, "injected", irq)?,
            posted: number(&i, "posted", irq)?,
            eoi_exits: number(&i, "eoi_exits", irq)?,
        })
    }
}

impl NetRun {
    /// Judges one run: it powered off cleanly, and [`Self::parse`] accepts it.
    pub fn measure(
        serial: &str,
        ending: &Ending,
        ending_text: &str,
        bulk_sha256: &str,
    ) -> Result<Self, String> {
        if !matches!(ending, Ending::Done { .. }) {
            return Err(format!("no EXITLESS-POWEROFF: {ending_text}"));
        }
        Self::parse(serial, GUEST, bulk_sha256)
    }

    /// Guest `guest`'s workload from a serial log: it completed with every echo answered and the
    /// file intact (`bulk_sha256`), and the hypervisor measured the window.
    pub fn parse(serial: &str, guest: &str, bulk_sha256: &str) -> Result<Self, String> {
        let figures = GuestFigures::parse(serial, guest)?;
        if figures.pings == 0 || figures.pings != figures.pings_sent {
            return Err(format!(
                "{} of {} echoes answered",
                figures.pings, figures.pings_sent
            ));
        }
        if figures.transfer_sha256 != bulk_sha256 {
            return Err(format!(
                "bulk.bin arrived as sha256 {} ({} bytes), not {bulk_sha256}",
                figures.transfer_sha256, figures.transfer_bytes
            ));
        }
        let hypervisor = HypervisorWindow::parse(serial, guest)?;
        Ok(Self {
            guest: figures,
            hypervisor,
        })
    }

    fn seconds(ns: u64) -> f64 {
        ns as f64 / 1e9
    }

    pub fn pings_per_s(&self) -> Option<f64> {
        ratio(self.guest.pings as f64, Self::seconds(self.guest.ping_ns))
    }

    pub fn transfer_kib_per_s(&self) -> Option<f64> {
        ratio(
            self.guest.transfer_bytes as f64 / 1024.0,
            Self::seconds(self.guest.transfer_ns),
        )
    }

    pub fn exits(&self) -> u64 {
        self.hypervisor.exits_by_reason.values().sum()
    }

    pub fn exits_per_device_interrupt(&self) -> Option<f64> {
        ratio(self.exits() as f64, self.guest.device_interrupts as f64)
    }

    pub fn idle_fraction(&self) -> Option<f64> {
        ratio(self.guest.idle_ticks as f64, self.guest.total_ticks as f64)
    }

    /// Exits per second of the window, by reason.
    pub fn exits_per_s(&self) -> BTreeMap<String, f64> {
        let s = Self::seconds(self.guest.window_ns);
        self.hypervisor
            .exits_by_reason
            .iter()
            .filter_map(|(reason, &n)| ratio(n as f64, s).map(|r| (reason.clone(), r)))
            .collect()
    }

    pub fn to_json(&self) -> Value {
        let g = &self.guest;
        json!({
            "pings": g.pings,
            "ping_rtt_us_avg": g.rtt_avg_us,
            "ping_rtt_us_max": g.rtt_max_us,
            "pings_per_s": self.pings_per_s(),
            "transfer_bytes": g.transfer_bytes,
            "transfer_kib_per_s": self.transfer_kib_per_s(),
            "device_interrupts": g.device_interrupts,
            "exits": self.exits(),
            "exits_by_reason": self.hypervisor.exits_by_reason,
            "exits_per_s_by_reason": self.exits_per_s(),
            "exits_per_device_interrupt": self.exits_per_device_interrupt(),
            "injected": self.hypervisor.injected,
            "posted": self.hypervisor.posted,
            "eoi_exits": self.hypervisor.eoi_exits,
            "idle_fraction": self.idle_fraction(),
            "window_ns": g.window_ns,
        })
    }
}

/// The runs of one bench, in [`MODES`] order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NetResults {
    pub runs: Vec<(Mode, NetRun)>,
}

impl NetResults {
    fn get(&self, mode: Mode) -> Option<&NetRun> {
        self.runs.iter().find(|(m, _)| *m == mode).map(|(_, r)| r)
    }

    /// `{"workload": "net", "modes": {"bare": {...}, "baseline": {...}, ...}}`; `bare` says why it
    /// has no figures.
    pub fn to_json(&self) -> Value {
        let mut modes = serde_json::Map::new();
        modes.insert(
            "bare".into(),
            json!({ "measured": false, "why": BARE_MISSING }),
        );
        for (mode, run) in &self.runs {
            modes.insert(mode.label().into(), run.to_json());
        }
        json!({ "workload": "net", "emulator": "bochs", "modes": modes })
    }

    /// A Markdown table, then each mode's exits per second by reason.
    pub fn table(&self) -> String {
        let header = [
            "mode",
            "pings",
            "pings/s",
            "RTT avg us",
            "RTT max us",
            "transfer KiB/s",
            "device interrupts",
            "exits",
            "exits/device interrupt",
            "idle",
        ];
        let fixed = |v: Option<f64>, d: usize| v.map_or("-".into(), |v| format!("{v:.d$}"));
        let mut rows = vec![header.map(String::from).to_vec()];
        for (mode, r) in &self.runs {
            rows.push(vec![
                mode.label().into(),
                r.guest.pings.to_string(),
                fixed(r.pings_per_s(), 1),
                r.guest.rtt_avg_us.to_string(),
                r.guest.rtt_max_us.to_string(),
                fixed(r.transfer_kib_per_s(), 1),
                r.guest.device_interrupts.to_string(),
                r.exits().to_string(),
                fixed(r.exits_per_device_interrupt(), 3),
                fixed(r.idle_fraction(), 3),
            ]);
        }
        let widths: Vec<usize> = (0..header.len())
            .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
            .collect();
        let line = |cells: &[String]| {
            let padded: Vec<String> = cells
                .iter()
                .zip(&widths)
                .enumerate()
                .map(|(c, (cell, &w))| {
                    if c == 0 {
                        format!("{cell:<w$}")
                    } else {
                        format!("{cell:>w$}")
                    }
                })
                .collect();
            format!("| {} |\n", padded.join(" | "))
        };
        let mut out = line(&rows[0]);
        let rule: Vec<String> = widths
            .iter()
            .enumerate()
            .map(|(c, &w)| {
                if c == 0 {
                    "-".repeat(w)
                } else {
                    format!("{}:", "-".repeat(w - 1))
                }
            })
            .collect();
        out.push_str(&line(&rule));
        for row in &rows[1..] {
            out.push_str(&line(row));
        }
        out.push_str(&format!("\nbare: {BARE_MISSING}\n"));
        for (mode, r) in &self.runs {
            let each: Vec<String> = r
                .exits_per_s()
                .iter()
                .map(|(reason, per_s)| format!("{reason}={per_s:.1}"))
                .collect();
            out.push_str(&format!(
                "{} exits per second by reason: {}\n",
                mode.label(),
                if each.is_empty() {
                    "none".into()
                } else {
                    each.join(" ")
                }
            ));
        }
        out
    }

    /// The goals that this run can judge without bare, each with whether it is met.
    pub fn goals(&self) -> Vec<String> {
        let met = |ok: bool| if ok { "met" } else { "NOT met" };
        let per = |m| self.get(m).and_then(NetRun::exits_per_device_interrupt);
        let fixed = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.3}"));
        let eli = self.get(Mode::Eli);
        let eli_device = eli.map(|r| {
            let e = &r.hypervisor.exits_by_reason;
            e.get("ExternalInterrupt").copied().unwrap_or(0)
                + e.get("VirtualizedEoi").copied().unwrap_or(0)
        });
        vec![
            format!(
                "goal: eli exits per device interrupt below 0.01: {} ({})",
                met(per(Mode::Eli).is_some_and(|e| e < 0.01)),
                fixed(per(Mode::Eli))
            ),
            format!(
                "goal: eli device-interrupt and EOI exits zero: {} ({} external-interrupt or EOI exits)",
                met(eli_device == Some(0)),
                eli_device.map_or("-".into(), |n| n.to_string())
            ),
            format!(
                "goal: baseline at least 2 exits per device interrupt: {} ({})",
                met(per(Mode::Baseline).is_some_and(|e| e >= 2.0)),
                fixed(per(Mode::Baseline))
            ),
            format!(
                "goal: apicv about 1 exit per device interrupt: {} ({}; the e1000's INTx is \
                 level-triggered, so each EOI exits too)",
                met(per(Mode::Apicv).is_some_and(|e| (0.9..1.1).contains(&e))),
                fixed(per(Mode::Apicv))
            ),
            format!("goal: eli ping and transfer rates at least 0.99 of bare: not judged ({BARE_MISSING})"),
        ]
    }

    pub fn published(&self, date: &str) -> String {
        let mut out =
            format!(
            "Measured by one run of `cargo xtask bench --workload net` on {date} ({} echoes, then \
             bulk.bin, {} KiB, by TFTP):\n\n",
            self.runs.first().map_or(0, |(_, r)| r.guest.pings_sent),
            self.runs.first().map_or(0, |(_, r)| r.guest.transfer_bytes / 1024),
        );
        out.push_str(&self.table());
        out.push('\n');
        for goal in self.goals() {
            out.push_str(&format!("- {goal}\n"));
        }
        out
    }
}

/// Where the published block goes: README.md and docs/bench.md, between these markers.
const BEGIN_MARK: &str =
    "<!-- bench-net:begin (written by `cargo xtask bench --workload net --publish`; do not edit) -->";
const END_MARK: &str = "<!-- bench-net:end -->";
const PUBLISHED: [&str; 2] = ["README.md", "docs/bench.md"];

/// The command: build, run each mode under Bochs, print the table and goals, write the JSON; with
/// `publish`, the figures into README.md and docs/bench.md.
pub fn bench(json_path: Option<PathBuf>, publish: bool) -> Result<ExitCode> {
    prereq::ensure_rust_targets()?;
    prereq::ensure_packages(&Emulator::Bochs.packages().iter().collect::<Vec<_>>())?;
    linux_kit::ensure().map_err(|why| anyhow::anyhow!("the Linux kit: {why}"))?;
    let built = artifacts::build_all(artifacts::Kernels::Production)?;
    let run = run_dirs::create(&paths::xtask_dir().join("bench-net"))?;
    eprintln!("bench: this run's logs: {}/", paths::display(&run));
    let bulk_sha256 = sha256_hex(&emulator::vnet_bulk_bytes());
    let mut results = NetResults::default();
    let mut failures = Vec::new();
    for mode in MODES {
        match run_mode(mode, BENCH_PINGS, &built, &run, &bulk_sha256) {
            Ok(r) => results.runs.push((mode, r)),
            Err(e) => {
                eprintln!("bench: {} FAILED: {e:#}", mode.label());
                failures.push(format!("{}: {e:#}", mode.label()));
            }
        }
    }
    if !failures.is_empty() {
        bail!("bench failed:\n  {}", failures.join("\n  "));
    }
    print!("{}", results.table());
    println!();
    for goal in results.goals() {
        println!("{goal}");
    }
    let json_path = json_path.unwrap_or_else(|| crate::bench::output_dir().join("bench-net.json"));
    write(&json_path, &format!("{:#}\n", results.to_json()))?;
    println!("\nbench: wrote {}", paths::display(&json_path));
    if publish {
        let block = results.published(&crate::bench::today_utc());
        for file in PUBLISHED {
            let path = paths::workspace_root().join(file);
            let text =
                fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
            let new = crate::bench::replace_between(&text, BEGIN_MARK, END_MARK, &block)
                .map_err(|why| anyhow::anyhow!("{}: {why}", path.display()))?;
            write(&path, &new)?;
            println!("bench: published the figures in {file}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Images and boots one mode under Bochs in `run/MODE/` and measures it.
pub fn run_mode(
    mode: Mode,
    pings: u32,
    built: &Artifacts,
    run: &Path,
    bulk_sha256: &str,
) -> Result<NetRun> {
    let dir = run.join(mode.label());
    fs::create_dir_all(&dir)?;
    let image_path = dir.join("exitless.img");
    let (config, files) = image::esp_files_resolving(
        built,
        &config(mode, pings).render(),
        &paths::workspace_root(),
    )?;
    image::write_image(&files, &image_path)?;
    fs::write(dir.join("exitless.cfg"), &config)?;
    eprintln!(
        "bench: running {} (Linux, {pings} echoes and a 1 MiB transfer) under Bochs (a Linux boot: about 1-2 min)...",
        mode.label()
    );
    let output = emulator::boot(&BootRequest {
        emulator: Emulator::Bochs,
        dir: &dir,
        image: &image_path,
        timeout: BOOT_TIMEOUT,
        echo: false,
        done: &judge::powered_off,
        grace: Emulator::Bochs.exit_grace(),
    })?;
    let log = paths::display(&output.serial_path);
    let r = NetRun::measure(
        &output.serial,
        &output.ending,
        &output.describe_ending(),
        bulk_sha256,
    )
    .map_err(|reason| anyhow::anyhow!("{reason}; serial log: {log}"))?;
    eprintln!(
        "bench: {} done in {} s: {} echoes, {} device interrupts, {} exits",
        mode.label(),
        output.elapsed.as_secs(),
        r.guest.pings,
        r.guest.device_interrupts,
        r.exits()
    );
    Ok(r)
}

/// SHA-256 of `bytes` as lowercase hex, what busybox `sha256sum` prints (FIPS 180-4).
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn write(path: &Path, text: &str) -> Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA: &str = "ab12";

    fn serial(mode: &str, exits: &str) -> String {
        format!(
            "\
[guest {GUEST}] EXITLESS-LINUX: bench ping sent=2000 received=2000 ns=900000000 rtt_avg_us=410 rtt_max_us=1279
[guest {GUEST}] EXITLESS-LINUX: bench transfer bytes=1048576 ns=1250000000 sha256={SHA}
[guest {GUEST}] EXITLESS-LINUX: bench window ns=2200000000 eth0=8100 idle_ticks=11 total_ticks=220
summary: guest_window guest={GUEST} tsc=110000000 total=9 {exits}
summary: guest_window_interrupts guest={GUEST} injected=0 posted=16200 host_interrupts=0 stray=0 refused_routings=0 eoi_exits=8100
EXITLESS-POWEROFF 0
# {mode}
"
        )
    }

    fn run(mode: &str, exits: &str) -> NetRun {
        NetRun::measure(
            &serial(mode, exits),
            &Ending::Done { exit: None },
            "done",
            SHA,
        )
        .unwrap()
    }

    #[test]
    fn a_run_is_read_from_the_guests_lines_and_the_hypervisors_window() {
        let r = run(
            "apicv",
            "ExternalInterrupt=8100 VirtualizedEoi=8100 Wrmsr=20",
        );
        assert_eq!(r.guest.pings, 2000);
        assert_eq!(r.guest.device_interrupts, 8100);
        assert_eq!(r.hypervisor.tsc, 110_000_000);
        assert_eq!(r.exits(), 16_220);
        assert_eq!(r.pings_per_s().map(|p| p.round()), Some(2222.0));
        assert_eq!(r.transfer_kib_per_s(), Some(819.2));
        assert_eq!(r.idle_fraction(), Some(0.05));
        assert_eq!(r.exits_per_s()["Wrmsr"].round(), 9.0);
        let per = r.exits_per_device_interrupt().unwrap();
        assert!((per - 16_220.0 / 8100.0).abs() < 1e-9);
        let j = r.to_json();
        for key in [
            "pings",
            "ping_rtt_us_avg",
            "pings_per_s",
            "transfer_kib_per_s",
            "device_interrupts",
            "exits",
            "exits_by_reason",
            "exits_per_device_interrupt",
            "idle_fraction",
        ] {
            assert!(!j[key].is_null(), "{key}");
        }
        assert_eq!(j["exits_by_reason"]["VirtualizedEoi"], 8100);
    }

    #[test]
    fn a_run_that_lost_echoes_or_bytes_or_its_window_is_refused() {
        let good = serial("eli", "PreemptionTimer=9");
        let done = Ending::Done { exit: None };
        assert!(NetRun::measure(&good, &done, "", SHA).is_ok());
        let broken = [
            good.replace("received=2000", "received=1999"),
            good.replace(&format!("sha256={SHA}"), "sha256=ffff"),
            good.replace("summary: guest_window guest", "summary: other guest"),
            good.replace("bench window ns", "bench windows ns"),
            format!(
                "[guest {GUEST}] EXITLESS-LINUX: bench failed ping=none tftp=1 clock=1\n{good}"
            ),
        ];
        for s in &broken {
            assert!(NetRun::measure(s, &done, "", SHA).is_err(), "passed: {s}");
        }
        let timed_out = Ending::TimedOut(Duration::from_secs(900));
        assert!(NetRun::measure(&good, &timed_out, "timed out", SHA).is_err());
    }

    #[test]
    fn json_table_and_goals_cover_every_mode_and_say_bare_is_missing() {
        let results = NetResults {
            runs: vec![
                (
                    Mode::Baseline,
                    run(
                        "baseline",
                        "ExternalInterrupt=8100 Wrmsr=8200 InterruptWindow=100",
                    ),
                ),
                (
                    Mode::Apicv,
                    run("apicv", "ExternalInterrupt=8100 VirtualizedEoi=8100"),
                ),
                (Mode::Eli, run("eli", "PreemptionTimer=9 Wrmsr=30")),
            ],
        };
        let j = results.to_json();
        assert_eq!(j["workload"], "net");
        assert_eq!(j["modes"]["bare"]["measured"], false);
        for mode in ["baseline", "apicv", "eli"] {
            assert!(j["modes"][mode]["pings_per_s"].is_number(), "{mode}");
        }
        let table = results.table();
        assert!(table.lines().nth(2).unwrap().starts_with("| baseline "));
        assert!(table.contains("bare: not measured"));
        assert!(table.contains("eli exits per second by reason: PreemptionTimer=4.1 Wrmsr=13.6"));
        let goals = results.goals();
        assert!(goals[0].contains(": met (0.005)"), "{}", goals[0]);
        assert!(goals[1].contains(": met (0 "), "{}", goals[1]);
        assert!(goals[2].contains(": met (2.025)"), "{}", goals[2]);
        assert!(goals[3].contains("NOT met (2.000"), "{}", goals[3]);
        assert!(goals[4].contains("not judged"));
        let block = results.published("2026-12-04");
        assert!(block.starts_with(
            "Measured by one run of `cargo xtask bench --workload net` on 2026-12-04 (2000 echoes"
        ));
    }

    #[test]
    fn the_guest_gets_the_workload_on_its_command_line_in_each_mode() {
        for mode in MODES {
            let text = config(mode, 100).render();
            assert!(
                text.contains("exitless_bench=net bench_pings=100"),
                "{text}"
            );
            assert!(text.contains(&format!("interrupts = {}", mode.label())));
            assert!(text.contains("pci = 00:02.0"));
        }
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
