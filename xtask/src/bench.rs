//! `cargo xtask bench`: one interrupt-heavy guest workload (`guests/bench.elf`) run three ways in one
//! deterministic Bochs configuration (emulator.rs: `clock: sync=none`, fixed `time0`):
//!
//! - `bare`: the loader starts the guest directly, no hypervisor;
//! - `baseline`: the hypervisor runs it with `interrupts = baseline` (external-interrupt exiting);
//! - `apicv`: the same with `interrupts = apicv` (one exit per interrupt, delivery and EOI through
//!   the virtual APIC);
//! - `eli`: the same with `interrupts = eli` (exitless delivery and EOI).
//!
//! The guest prints one line, possibly behind the hypervisor's `[guest bench] ` prefix:
//! `summary: bench interrupts=N cycles=N work=N exits=REASON:COUNT,...` (`exits=` only under the
//! hypervisor, counted over the workload only; REASON is a basic exit reason, SDM Vol. 3D
//! Appendix C). Every figure written comes from those lines, never from constants.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use hypervisor::vmx::exit::ExitReason;
use serde_json::{json, Value};

use crate::artifacts::{self, Artifacts};
use crate::config::ImageConfig;
use crate::emulator::{self, BootRequest, Emulator, Ending};
use crate::judge::{self, SerialReport};
use crate::svg::{self, Bar, Panel};
use crate::{image, paths, prereq, run_dirs};

/// The guest image, relative to `\exitless\`.
pub const GUEST_IMAGE: &str = "guests/bench.elf";
/// What starts the guest's result line (anywhere in a serial line, after any prefix).
const MARKER: &str = "summary: bench ";
/// A bound far above one bench boot (boot 15-60 s plus the workload).
const BOOT_TIMEOUT: Duration = Duration::from_secs(600);

/// How the workload runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Mode {
    Bare,
    Baseline,
    Apicv,
    Eli,
}

impl Mode {
    pub const ALL: [Mode; 4] = [Mode::Bare, Mode::Baseline, Mode::Apicv, Mode::Eli];

    pub fn label(self) -> &'static str {
        match self {
            Mode::Bare => "bare",
            Mode::Baseline => "baseline",
            Mode::Apicv => "apicv",
            Mode::Eli => "eli",
        }
    }

    /// Whether the hypervisor runs the guest (and the guest reports its exits).
    pub fn virtualized(self) -> bool {
        self != Mode::Bare
    }

    /// The boot configuration. The guest gets COM2 (ports 0x2f8-0x2ff) and its IOAPIC pin 3:
    /// the UART's transmit-empty interrupts are the workload.
    pub fn config(self) -> ImageConfig {
        let interrupts = match self {
            Mode::Bare => return ImageConfig::emulator().kernel(GUEST_IMAGE),
            Mode::Baseline => "baseline",
            Mode::Apicv => "apicv",
            Mode::Eli => "eli",
        };
        ImageConfig::emulator().guest(
            "bench",
            &[
                ("image", GUEST_IMAGE),
                ("memory_mib", "8"),
                ("interrupts", interrupts),
                ("ports", "0x2f8-0x2ff"),
                ("ioapic_pins", "3"),
            ],
        )
    }

    fn color(self) -> &'static str {
        match self {
            Mode::Bare => "#7a7a7a",
            Mode::Baseline => "#d9822b",
            Mode::Apicv => "#8e6bbf",
            Mode::Eli => "#2b6cb0",
        }
    }
}

/// The figures of one `summary: bench` line.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BenchLine {
    pub interrupts: u64,
    /// Guest TSC ticks over the workload.
    pub cycles: u64,
    /// Guest loop iterations completed during the workload.
    pub work: u64,
    /// `exits=`: count per basic exit reason; `None` when the line has no `exits=` (bare metal).
    pub exits: Option<BTreeMap<u16, u64>>,
}

/// Finds the one bench line in a serial log and parses it.
pub fn parse_bench_line(serial: &str) -> Result<BenchLine, String> {
    let found: Vec<&str> = serial
        .lines()
        .filter_map(|l| l.find(MARKER).map(|at| &l[at + MARKER.len()..]))
        .collect();
    let text = match found.as_slice() {
        [] => return Err(format!("no `{}` line", MARKER.trim_end())),
        [one] => one.trim_end_matches(['\r', '\n']),
        many => {
            return Err(format!(
                "{} `{}` lines (want one; did the machine restart?)",
                many.len(),
                MARKER.trim_end()
            ))
        }
    };
    let number = |key: &str| -> Result<u64, String> {
        let value = exitless_abi::protocol::field(text, key)
            .ok_or_else(|| format!("bench line `{text}` has no `{key}=`"))?;
        parse_number(value).ok_or_else(|| format!("bench line: `{key}={value}` is not a number"))
    };
    Ok(BenchLine {
        interrupts: number("interrupts")?,
        cycles: number("cycles")?,
        work: number("work")?,
        exits: exitless_abi::protocol::field(text, "exits")
            .map(parse_exits)
            .transpose()?,
    })
}

/// `REASON:COUNT,REASON:COUNT,...`; empty means no exits.
fn parse_exits(value: &str) -> Result<BTreeMap<u16, u64>, String> {
    let mut exits = BTreeMap::new();
    for entry in value.split(',').filter(|e| !e.is_empty()) {
        let parsed = entry
            .split_once(':')
            .and_then(|(r, c)| Some((u16::try_from(parse_number(r)?).ok()?, parse_number(c)?)));
        let Some((reason, count)) = parsed else {
            return Err(format!(
                "bench line: exits entry `{entry}` is not REASON:COUNT"
            ));
        };
        if exits.insert(reason, count).is_some() {
            return Err(format!("bench line: exit reason {reason} listed twice"));
        }
    }
    Ok(exits)
}

/// Decimal, or hexadecimal with `0x`.
fn parse_number(text: &str) -> Option<u64> {
    match text.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => text.parse().ok(),
    }
}

/// The name of a basic exit reason (its `ExitReason` variant), `Unknown<N>` for undefined numbers.
pub fn reason_name(basic: u16) -> String {
    match ExitReason::from_basic(basic) {
        Some(reason) => format!("{reason:?}"),
        None => format!("Unknown{basic}"),
    }
}

/// One mode's measurement.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Measurement {
    pub interrupts: u64,
    pub cycles: u64,
    pub work: u64,
    /// Exit-reason name to count; empty for `bare`.
    pub exits_by_reason: BTreeMap<String, u64>,
}

impl Measurement {
    /// Checks the line fits the mode: a workload with interrupts, and exit counts exactly when the
    /// hypervisor ran it.
    pub fn from_line(mode: Mode, line: &BenchLine) -> Result<Self, String> {
        if line.interrupts == 0 {
            return Err("the bench line reports interrupts=0".into());
        }
        let exits_by_reason = match (&line.exits, mode.virtualized()) {
            (Some(exits), true) => exits
                .iter()
                .map(|(&reason, &count)| (reason_name(reason), count))
                .collect(),
            (None, false) => BTreeMap::new(),
            (None, true) => {
                return Err("the bench line has no `exits=` under the hypervisor".into())
            }
            (Some(_), false) => return Err("the bench line has `exits=` on bare metal".into()),
        };
        Ok(Self {
            interrupts: line.interrupts,
            cycles: line.cycles,
            work: line.work,
            exits_by_reason,
        })
    }

    pub fn exits(&self) -> u64 {
        self.exits_by_reason.values().sum()
    }

    fn per_interrupt(&self, value: u64) -> Option<f64> {
        ratio(value as f64, self.interrupts as f64)
    }

    pub fn cycles_per_interrupt(&self) -> Option<f64> {
        self.per_interrupt(self.cycles)
    }

    pub fn exits_per_interrupt(&self) -> Option<f64> {
        self.per_interrupt(self.exits())
    }

    pub fn work_per_interrupt(&self) -> Option<f64> {
        self.per_interrupt(self.work)
    }
}

/// `num / den`, or `None` when that is not a finite number (a zero denominator).
pub fn ratio(num: f64, den: f64) -> Option<f64> {
    let r = num / den;
    (den != 0.0 && r.is_finite()).then_some(r)
}

fn ratio_of(num: Option<f64>, den: Option<f64>) -> Option<f64> {
    ratio(num?, den?)
}

/// The measurements of one bench run, one per mode.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Results {
    pub bare: Measurement,
    pub baseline: Measurement,
    pub apicv: Measurement,
    pub eli: Measurement,
}

impl Results {
    pub fn get(&self, mode: Mode) -> &Measurement {
        match mode {
            Mode::Bare => &self.bare,
            Mode::Baseline => &self.baseline,
            Mode::Apicv => &self.apicv,
            Mode::Eli => &self.eli,
        }
    }

    /// Cycles per interrupt relative to bare (1.0 = as fast as bare metal, higher is slower).
    pub fn cycles_vs_bare(&self, mode: Mode) -> Option<f64> {
        ratio_of(
            self.get(mode).cycles_per_interrupt(),
            self.bare.cycles_per_interrupt(),
        )
    }

    /// Guest work per interrupt relative to bare (1.0 = the guest got as much done as bare metal).
    pub fn work_vs_bare(&self, mode: Mode) -> Option<f64> {
        ratio_of(
            self.get(mode).work_per_interrupt(),
            self.bare.work_per_interrupt(),
        )
    }

    /// Cycles the host takes per VM exit, round trip (exit, handler, entry), from guest work lost:
    /// with the interrupt rate fixed by the device, every cycle the host spends is one the guest's
    /// work loop does not get. `(bare work - baseline work) x (bare cycles per work unit) / baseline
    /// exits`. In Bochs a cycle is an emulated instruction, so this is the exit path's instruction
    /// count, VMX transitions included; it does not capture real hardware's transition latency.
    pub fn cycles_per_exit(&self) -> Option<f64> {
        let lost_work = self.bare.work_per_interrupt()? - self.baseline.work_per_interrupt()?;
        let cycles_per_work = ratio(self.bare.cycles as f64, self.bare.work as f64)?;
        ratio(
            lost_work * cycles_per_work,
            self.baseline.exits_per_interrupt()?,
        )
    }

    /// `{"emulator": "bochs", "modes": {"bare": M, "baseline": M, "apicv": M, "eli": M}}`, plus
    /// `work`, `work_per_interrupt`, `work_vs_bare` and `cycles_vs_bare` in each M. A ratio with
    /// a zero denominator is `null`.
    pub fn to_json(&self) -> Value {
        let modes: serde_json::Map<String, Value> = Mode::ALL
            .iter()
            .map(|&mode| {
                let m = self.get(mode);
                let value = json!({
                    "interrupts": m.interrupts,
                    "cycles": m.cycles,
                    "cycles_per_interrupt": m.cycles_per_interrupt(),
                    "exits": m.exits(),
                    "exits_per_interrupt": m.exits_per_interrupt(),
                    "exits_by_reason": m.exits_by_reason,
                    "work": m.work,
                    "work_per_interrupt": m.work_per_interrupt(),
                    "work_vs_bare": self.work_vs_bare(mode),
                    "cycles_vs_bare": self.cycles_vs_bare(mode),
                });
                (mode.label().to_string(), value)
            })
            .collect();
        json!({ "emulator": "bochs", "modes": modes, "cycles_per_exit": self.cycles_per_exit() })
    }

    /// A Markdown table (readable on a terminal, pasteable into docs/), then each mode's exits by
    /// reason.
    pub fn table(&self) -> String {
        let header = [
            "mode",
            "interrupts",
            "cycles",
            "cycles/interrupt",
            "exits",
            "exits/interrupt",
            "work/interrupt",
            "cycles/interrupt vs bare",
            "work vs bare",
        ];
        let rows: Vec<[String; 9]> = Mode::ALL
            .iter()
            .map(|&mode| {
                let m = self.get(mode);
                [
                    mode.label().to_string(),
                    m.interrupts.to_string(),
                    m.cycles.to_string(),
                    fixed(m.cycles_per_interrupt(), 1),
                    m.exits().to_string(),
                    fixed(m.exits_per_interrupt(), 3),
                    fixed(m.work_per_interrupt(), 1),
                    fixed(self.cycles_vs_bare(mode), 3),
                    fixed(self.work_vs_bare(mode), 3),
                ]
            })
            .collect();
        let widths: Vec<usize> = (0..header.len())
            .map(|c| {
                rows.iter()
                    .map(|r| r[c].len())
                    .fold(header[c].len(), usize::max)
            })
            .collect();
        let line = |cells: &[&str]| {
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
        let mut out = line(&header);
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
        out.push_str(&line(&rule.iter().map(String::as_str).collect::<Vec<_>>()));
        for row in &rows {
            out.push_str(&line(&row.iter().map(String::as_str).collect::<Vec<_>>()));
        }
        out.push('\n');
        for mode in Mode::ALL.into_iter().filter(|m| m.virtualized()) {
            let m = self.get(mode);
            let reasons: Vec<String> = m
                .exits_by_reason
                .iter()
                .map(|(name, count)| format!("{name}={count}"))
                .collect();
            out.push_str(&format!(
                "{} exits by reason: {}\n",
                mode.label(),
                if reasons.is_empty() {
                    "none".to_string()
                } else {
                    reasons.join(" ")
                }
            ));
        }
        out
    }

    /// The figures issue 3 asks for, each with whether this run reaches it.
    pub fn goals(&self) -> Vec<String> {
        let met = |ok: bool| if ok { "met" } else { "NOT met" };
        let eli_exits = self.eli.exits_per_interrupt().unwrap_or(f64::INFINITY);
        let eli_cycles = self.cycles_vs_bare(Mode::Eli);
        let baseline_exits = self.baseline.exits_per_interrupt().unwrap_or(0.0);
        let apicv_exits = self.apicv.exits_per_interrupt();
        vec![
            format!(
                "goal: eli exits/interrupt below 0.01 over at least 10000 interrupts: {} ({} over {})",
                met(eli_exits < 0.01 && self.eli.interrupts >= 10_000),
                fixed(self.eli.exits_per_interrupt(), 4),
                self.eli.interrupts
            ),
            format!(
                "goal: eli cycles/interrupt within 1% of bare: {} ({})",
                met(eli_cycles.is_some_and(|r| (r - 1.0).abs() <= 0.01)),
                eli_cycles.map_or("-".into(), |r| format!("{:+.2}%", (r - 1.0) * 100.0))
            ),
            format!(
                "goal: baseline at least 2 exits/interrupt: {} ({})",
                met(baseline_exits >= 2.0),
                fixed(self.baseline.exits_per_interrupt(), 3)
            ),
            format!(
                "goal: apicv about 1 exit/interrupt (delivery only; the EOI virtualized): {} ({})",
                met(apicv_exits.is_some_and(|e| (0.99..1.01).contains(&e))),
                fixed(apicv_exits, 3)
            ),
            format!(
                "exit path: {} cycles per VM exit round trip (guest work baseline loses per exit)",
                fixed(self.cycles_per_exit(), 0)
            ),
        ]
    }

    /// The SVG chart: cycles per interrupt and exits per interrupt, one bar per mode.
    pub fn chart(&self) -> String {
        let bars = |value: fn(&Measurement) -> Option<f64>| {
            Mode::ALL
                .iter()
                .map(|&mode| Bar {
                    label: mode.label().into(),
                    value: value(self.get(mode)).unwrap_or(0.0),
                    color: mode.color(),
                })
                .collect()
        };
        let counts: Vec<u64> = Mode::ALL.iter().map(|&m| self.get(m).interrupts).collect();
        let interrupts = if counts.iter().all(|&c| c == counts[0]) {
            format!("{} device interrupts per mode", counts[0])
        } else {
            let each: Vec<String> = Mode::ALL
                .iter()
                .zip(&counts)
                .map(|(m, c)| format!("{} {c}", m.label()))
                .collect();
            format!("device interrupts: {}", each.join(", "))
        };
        svg::bar_chart(
            "Exitless: interrupt cost, bare metal vs baseline vs APICv vs ELI",
            &format!("Bochs 2.7, deterministic clock; {interrupts}"),
            &[
                Panel {
                    title: "guest cycles per interrupt (lower is better)".into(),
                    decimals: 1,
                    bars: bars(Measurement::cycles_per_interrupt),
                },
                Panel {
                    title: "VM exits per interrupt (lower is better)".into(),
                    decimals: 3,
                    bars: bars(Measurement::exits_per_interrupt),
                },
                // Cycles are paced by the device; the CPU left to the guest shows what delivery costs.
                Panel {
                    title: "guest work per interrupt (higher is better)".into(),
                    decimals: 1,
                    bars: bars(Measurement::work_per_interrupt),
                },
            ],
        )
    }
}

/// A figure with `decimals` decimals, `-` when there is none.
fn fixed(value: Option<f64>, decimals: usize) -> String {
    value.map_or("-".into(), |v| format!("{v:.decimals$}"))
}

/// Judges one run from its serial log and how it ended.
pub fn measure(
    mode: Mode,
    serial: &str,
    ending: &Ending,
    ending_text: &str,
) -> Result<Measurement, String> {
    if !matches!(ending, Ending::Done { .. }) {
        return Err(format!("no EXITLESS-POWEROFF: {ending_text}"));
    }
    let line = parse_bench_line(serial)?;
    match SerialReport::parse(serial).poweroff {
        Some(0) => {}
        Some(code) => return Err(format!("powered off with code {code} (want 0)")),
        None => return Err("no EXITLESS-POWEROFF line".into()),
    }
    Measurement::from_line(mode, &line)
}

/// `target/bench/` in the workspace.
pub fn output_dir() -> PathBuf {
    paths::workspace_root().join("target").join("bench")
}

/// Where the bench writes its published figures: a block between these markers in each file.
const PUBLISHED: [&str; 2] = ["README.md", "docs/bench.md"];
const BEGIN_MARK: &str =
    "<!-- bench:begin (written by `cargo xtask bench --publish`; do not edit) -->";
const END_MARK: &str = "<!-- bench:end -->";

/// `text` with the block between [`BEGIN_MARK`] and [`END_MARK`] replaced by `block`; an error if the
/// markers are missing or out of order (the file says where the figures go, never the bench).
pub fn replace_published(text: &str, block: &str) -> Result<String, String> {
    replace_between(text, BEGIN_MARK, END_MARK, block)
}

/// `text` with what lies between the markers `begin` and `end` replaced by `block`.
pub fn replace_between(text: &str, begin: &str, end: &str, block: &str) -> Result<String, String> {
    let start = text
        .find(begin)
        .ok_or_else(|| format!("no `{begin}` marker"))?;
    let after_begin = start + begin.len();
    let stop = text[after_begin..]
        .find(end)
        .map(|e| after_begin + e)
        .ok_or_else(|| format!("no `{end}` marker after the begin marker"))?;
    Ok(format!(
        "{}\n{}{}",
        &text[..after_begin],
        block,
        &text[stop..]
    ))
}

impl Results {
    /// The published block: the date, the table, exits by reason, the goals and the exit path.
    pub fn published(&self, date: &str) -> String {
        let mut out = format!("Measured by one run of `cargo xtask bench` on {date}:\n\n");
        out.push_str(&self.table());
        out.push('\n');
        for goal in self.goals() {
            out.push_str(&format!("- {goal}\n"));
        }
        out
    }
}

/// The command: build, run the three modes under Bochs, print the table, write JSON and SVG; with
/// `publish`, also the figures in README.md and docs/bench.md.
pub fn bench(json_path: Option<PathBuf>, publish: bool) -> Result<ExitCode> {
    prereq::ensure_rust_targets()?;
    prereq::ensure_packages(&Emulator::Bochs.packages().iter().collect::<Vec<_>>())?;
    let built = artifacts::build_all(artifacts::Kernels::Production)?;
    let has_guest = built
        .guests
        .iter()
        .any(|g| g.file_stem().and_then(|s| s.to_str()) == Some("bench"));
    if !has_guest {
        bail!(
            "guest-tests has no `bench` binary (guest-tests/src/bin/bench.rs): nothing to measure"
        );
    }
    // The emulator runs go to target/xtask/bench/<run-id>/MODE/ (the published outputs stay fixed).
    let run = run_dirs::create(&paths::xtask_dir().join("bench"))?;
    eprintln!("bench: this run's logs: {}/", paths::display(&run));
    let mut measured = Vec::new();
    let mut failures = Vec::new();
    for mode in Mode::ALL {
        match run_mode(mode, &built, &run) {
            Ok(m) => measured.push(m),
            Err(e) => {
                eprintln!("bench: {} FAILED: {e:#}", mode.label());
                failures.push(format!("{}: {e:#}", mode.label()));
            }
        }
    }
    if !failures.is_empty() {
        bail!("bench failed:\n  {}", failures.join("\n  "));
    }
    let [bare, baseline, apicv, eli]: [Measurement; 4] =
        measured.try_into().expect("one measurement per mode");
    let results = Results {
        bare,
        baseline,
        apicv,
        eli,
    };
    print!("{}", results.table());
    println!();
    for goal in results.goals() {
        println!("{goal}");
    }
    let dir = output_dir();
    let json_path = json_path.unwrap_or_else(|| dir.join("bench.json"));
    let svg_path = dir.join("bench.svg");
    write(&json_path, &format!("{:#}\n", results.to_json()))?;
    write(&svg_path, &results.chart())?;
    println!("\nbench: wrote {}", paths::display(&json_path));
    println!("bench: wrote {}", paths::display(&svg_path));
    if publish {
        let date = today_utc();
        let block = results.published(&date);
        for file in PUBLISHED {
            let path = paths::workspace_root().join(file);
            let text =
                fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
            let new = replace_published(&text, &block)
                .map_err(|why| anyhow::anyhow!("{}: {why}", path.display()))?;
            write(&path, &new)?;
            println!("bench: published the figures in {file}");
        }
        let chart = paths::workspace_root().join("docs/bench.svg");
        write(&chart, &results.chart())?;
        println!("bench: published docs/bench.svg");
    }
    Ok(ExitCode::SUCCESS)
}

/// Today's date (UTC) as YYYY-MM-DD, from `date`, which every machine this runs on has.
pub fn today_utc() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d"])
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|d| d.trim().to_string())
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| "an unknown date".into())
}

fn write(path: &Path, text: &str) -> Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// Images and boots one mode under Bochs in `run/MODE/` and measures it.
fn run_mode(mode: Mode, built: &Artifacts, run: &Path) -> Result<Measurement> {
    let dir = run.join(mode.label());
    fs::create_dir_all(&dir)?;
    let image_path = dir.join("exitless.img");
    let config = mode.config().render();
    image::write_image(&image::esp_files(built, &config)?, &image_path)?;
    fs::write(dir.join("exitless.cfg"), &config)?;
    eprintln!(
        "bench: running {} under Bochs ({})...",
        mode.label(),
        Emulator::Bochs.expected_wall_time()
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
    let m = measure(
        mode,
        &output.serial,
        &output.ending,
        &output.describe_ending(),
    )
    .map_err(|reason| anyhow::anyhow!("{reason}; serial log: {log}"))?;
    eprintln!(
        "bench: {} done in {} s: {} interrupts, {} cycles, {} exits",
        mode.label(),
        output.elapsed.as_secs(),
        m.interrupts,
        m.cycles,
        m.exits()
    );
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use exitless_abi::config_text::top_level;

    const BARE_LOG: &str = "\
BdsDxe: loading Boot0001\r
guest bench: UART interrupts on vector 0x23\r
summary: bench interrupts=10000 cycles=52000000 work=800000\r
EXITLESS-POWEROFF 0\r
";

    const ELI_LOG: &str = "\
summary: vmx supported=yes ept=yes
[guest bench] summary: bench interrupts=10000 cycles=52300000 work=795000 exits=
summary: guest name=bench exits=3
EXITLESS-POWEROFF 0
";

    const BASELINE_LOG: &str = "\
[guest bench] summary: bench interrupts=10000 cycles=90000000 work=400000 exits=1:10000,7:5000,32:10000
EXITLESS-POWEROFF 0
";

    const APICV_LOG: &str = "\
[guest bench] summary: bench interrupts=10000 cycles=70000000 work=600000 exits=1:10000
EXITLESS-POWEROFF 0
";

    fn results() -> Results {
        let m =
            |mode, log| measure(mode, log, &Ending::Done { exit: None }, "done").expect("good log");
        Results {
            bare: m(Mode::Bare, BARE_LOG),
            baseline: m(Mode::Baseline, BASELINE_LOG),
            apicv: m(Mode::Apicv, APICV_LOG),
            eli: m(Mode::Eli, ELI_LOG),
        }
    }

    #[test]
    fn bench_line_is_found_with_and_without_prefix() {
        assert_eq!(
            parse_bench_line(BARE_LOG),
            Ok(BenchLine {
                interrupts: 10000,
                cycles: 52_000_000,
                work: 800_000,
                exits: None,
            })
        );
        let baseline = parse_bench_line(BASELINE_LOG).unwrap();
        assert_eq!(
            baseline.exits,
            Some(BTreeMap::from([(1, 10000), (7, 5000), (32, 10000)]))
        );
        // `exits=` with nothing after it: zero exits, not a missing field.
        assert_eq!(
            parse_bench_line(ELI_LOG).unwrap().exits,
            Some(BTreeMap::new())
        );
        // Hex numbers (the summary convention) parse too.
        let hex =
            parse_bench_line("summary: bench interrupts=0x10 cycles=0x100 work=0 exits=0x1:0x2")
                .unwrap();
        assert_eq!((hex.interrupts, hex.cycles), (16, 256));
        assert_eq!(hex.exits, Some(BTreeMap::from([(1, 2)])));
    }

    #[test]
    fn malformed_bench_lines_are_refused() {
        let bad = |log: &str| parse_bench_line(log).unwrap_err();
        assert!(bad("summary: vmx supported=yes\n").contains("no `summary: bench` line"));
        assert!(bad("summary: bench cycles=1 work=1\n").contains("interrupts="));
        assert!(bad("summary: bench interrupts=ten cycles=1 work=1\n").contains("not a number"));
        assert!(bad("summary: bench interrupts=1 cycles=1 work=-3\n").contains("work=-3"));
        assert!(bad("summary: bench interrupts=1 cycles=1 work=1 exits=1-5\n").contains("`1-5`"));
        assert!(
            bad("summary: bench interrupts=1 cycles=1 work=1 exits=1:x\n").contains("REASON:COUNT")
        );
        assert!(
            bad("summary: bench interrupts=1 cycles=1 work=1 exits=70000:1\n")
                .contains("REASON:COUNT")
        );
        assert!(
            bad("summary: bench interrupts=1 cycles=1 work=1 exits=1:1,1:2\n").contains("twice")
        );
        let twice = format!("{BARE_LOG}{BARE_LOG}");
        assert!(bad(&twice).contains("2 `summary: bench` lines"));
    }

    #[test]
    fn runs_are_judged_by_mode_and_ending() {
        let done = Ending::Done { exit: None };
        // Exits belong to the hypervisor's runs only.
        assert!(measure(Mode::Eli, BARE_LOG, &done, "")
            .unwrap_err()
            .contains("no `exits=`"));
        assert!(measure(Mode::Bare, ELI_LOG, &done, "")
            .unwrap_err()
            .contains("bare metal"));
        let timed_out = Ending::TimedOut(Duration::from_secs(600));
        assert_eq!(
            measure(Mode::Bare, BARE_LOG, &timed_out, "timed out after 600 s"),
            Err("no EXITLESS-POWEROFF: timed out after 600 s".into())
        );
        let no_poweroff = BARE_LOG.replace("EXITLESS-POWEROFF 0", "");
        assert!(measure(Mode::Bare, &no_poweroff, &done, "")
            .unwrap_err()
            .contains("no EXITLESS-POWEROFF"));
        let failed = BARE_LOG.replace("POWEROFF 0", "POWEROFF 2");
        assert!(measure(Mode::Bare, &failed, &done, "")
            .unwrap_err()
            .contains("code 2"));
        let none = BARE_LOG.replace("interrupts=10000", "interrupts=0");
        assert!(measure(Mode::Bare, &none, &done, "")
            .unwrap_err()
            .contains("interrupts=0"));
    }

    #[test]
    fn exit_reasons_get_their_sdm_names() {
        let r = results();
        assert_eq!(
            r.baseline.exits_by_reason,
            BTreeMap::from([
                ("ExternalInterrupt".to_string(), 10000),
                ("InterruptWindow".to_string(), 5000),
                ("Wrmsr".to_string(), 10000),
            ])
        );
        assert_eq!(reason_name(1), "ExternalInterrupt");
        assert_eq!(reason_name(35), "Unknown35");
    }

    #[test]
    fn ratios_are_worked_out_per_interrupt() {
        let r = results();
        assert_eq!(r.bare.cycles_per_interrupt(), Some(5200.0));
        assert_eq!(r.baseline.cycles_per_interrupt(), Some(9000.0));
        assert_eq!(r.baseline.exits(), 25000);
        assert_eq!(r.baseline.exits_per_interrupt(), Some(2.5));
        assert_eq!(r.eli.exits_per_interrupt(), Some(0.0));
        assert_eq!(r.bare.work_per_interrupt(), Some(80.0));
        // 5230 / 5200 and 79.5 / 80.
        assert!((r.cycles_vs_bare(Mode::Eli).unwrap() - 1.005_769).abs() < 1e-6);
        assert_eq!(r.work_vs_bare(Mode::Eli), Some(0.99375));
        assert_eq!(r.work_vs_bare(Mode::Baseline), Some(0.5));
        assert_eq!(r.cycles_vs_bare(Mode::Bare), Some(1.0));
        assert_eq!(ratio(1.0, 0.0), None);
        assert_eq!(ratio(0.0, 0.0), None);
        assert_eq!(ratio(0.0, 4.0), Some(0.0));
        // With no bare work, the work ratios are undefined rather than infinite.
        let mut zero = results();
        zero.bare.work = 0;
        assert_eq!(zero.work_vs_bare(Mode::Eli), None);
    }

    #[test]
    fn json_has_the_issue_shape() {
        let j = results().to_json();
        assert_eq!(j["emulator"], "bochs");
        let modes = j["modes"].as_object().unwrap();
        assert_eq!(
            modes.keys().collect::<Vec<_>>(),
            ["apicv", "bare", "baseline", "eli"]
        );
        assert_eq!(j["modes"]["apicv"]["exits_per_interrupt"], 1.0);
        for (name, m) in modes {
            for key in [
                "interrupts",
                "cycles",
                "cycles_per_interrupt",
                "exits",
                "exits_per_interrupt",
                "exits_by_reason",
                "work",
                "work_per_interrupt",
                "work_vs_bare",
            ] {
                assert!(m.get(key).is_some(), "{name} lacks {key}");
            }
            assert!(m["exits_by_reason"].is_object());
        }
        assert_eq!(j["modes"]["bare"]["exits_by_reason"], json!({}));
        assert_eq!(j["modes"]["bare"]["exits"], 0);
        assert_eq!(
            j["modes"]["baseline"]["exits_by_reason"]["ExternalInterrupt"],
            10000
        );
        assert_eq!(j["modes"]["baseline"]["exits_per_interrupt"], 2.5);
        assert_eq!(j["modes"]["eli"]["interrupts"], 10000);
        assert_eq!(j["modes"]["eli"]["cycles"], 52_300_000);
        assert_eq!(j["modes"]["eli"]["cycles_per_interrupt"], 5230.0);
        assert_eq!(j["modes"]["eli"]["work_vs_bare"], 0.99375);
        // A ratio with a zero denominator is null, never NaN.
        let mut zero = results();
        zero.bare.work = 0;
        assert_eq!(zero.to_json()["modes"]["eli"]["work_vs_bare"], Value::Null);
    }

    #[test]
    fn published_figures_replace_only_the_marked_block() {
        let text = format!("intro\n{BEGIN_MARK}\nold figures\n{END_MARK}\nrest\n");
        let new = replace_published(&text, "new figures\n").unwrap();
        assert_eq!(
            new,
            format!("intro\n{BEGIN_MARK}\nnew figures\n{END_MARK}\nrest\n")
        );
        assert!(replace_published("no markers", "x").is_err());
        assert!(replace_published(&format!("{END_MARK}{BEGIN_MARK}"), "x").is_err());
        let block = results().published("2026-12-03");
        assert!(block.starts_with("Measured by one run of `cargo xtask bench` on 2026-12-03:"));
        assert!(block.contains("| baseline ") && block.contains("- exit path: 1040 cycles"));
    }

    #[test]
    fn table_and_goals_show_every_mode() {
        let r = results();
        let table = r.table();
        let rows: Vec<&str> = table.lines().collect();
        assert!(rows[0].starts_with("| mode "));
        assert!(rows[2].starts_with("| bare "));
        assert!(rows[3].starts_with("| baseline ") && rows[3].contains(" 9000.0 |"));
        assert!(rows[3].contains(" 2.500 |") && rows[3].contains(" 1.731 |"));
        assert!(rows[4].starts_with("| apicv ") && rows[4].contains(" 1.000 |"));
        assert!(rows[5].starts_with("| eli ") && rows[5].contains(" 0.000 |"));
        // All rows are the same width (aligned columns).
        assert!(rows[..6].iter().all(|l| l.len() == rows[0].len()));
        assert!(table.contains(
            "baseline exits by reason: ExternalInterrupt=10000 InterruptWindow=5000 Wrmsr=10000"
        ));
        assert!(table.contains("eli exits by reason: none"));
        let goals = r.goals();
        assert!(goals[0].ends_with("met (0.0000 over 10000)") && !goals[0].contains("NOT"));
        assert!(goals[1].ends_with(": met (+0.58%)"), "{}", goals[1]);
        assert!(goals[2].contains(": met (2.500)"));
        assert!(goals[3].contains("apicv about 1") && goals[3].contains(": met (1.000)"));
        // 40 of bare's 80 work units per interrupt lost, 65 cycles per unit, 2.5 exits per interrupt.
        assert_eq!(r.cycles_per_exit(), Some(1040.0));
        assert!(
            goals[4].starts_with("exit path: 1040 cycles per VM exit"),
            "{}",
            goals[4]
        );
        let mut slow = r.clone();
        slow.eli.cycles = 53_000_000;
        slow.baseline.exits_by_reason.remove("Wrmsr");
        let goals = slow.goals();
        assert!(goals[1].ends_with("NOT met (+1.92%)"), "{}", goals[1]);
        assert!(goals[2].ends_with("NOT met (1.500)"), "{}", goals[2]);
    }

    #[test]
    fn chart_shows_every_mode_without_nan() {
        let svg = results().chart();
        for mode in Mode::ALL {
            assert!(svg.contains(&format!(">{}</text>", mode.label())));
            assert!(svg.contains(mode.color()));
        }
        assert!(svg.contains(">5230.0</text>") && svg.contains(">2.500</text>"));
        assert!(svg.contains("10000 device interrupts per mode"));
        let empty = Results::default().chart();
        assert!(!empty.contains("NaN") && !empty.contains("inf"));
    }

    #[test]
    fn configs_boot_the_guest_bare_or_under_the_hypervisor() {
        let bare = Mode::Bare.config().render();
        assert_eq!(top_level(&bare, "kernel"), Some(GUEST_IMAGE));
        assert!(!bare.contains("\n[guest "));
        for (mode, interrupts) in [
            (Mode::Baseline, "baseline"),
            (Mode::Apicv, "apicv"),
            (Mode::Eli, "eli"),
        ] {
            let text = mode.config().render();
            assert_eq!(top_level(&text, "kernel"), Some("hypervisor.elf"));
            assert_eq!(top_level(&text, "emulator_exit"), Some("yes"));
            assert!(text.contains(&format!(
                "[guest bench]\nimage = {GUEST_IMAGE}\nmemory_mib = 8\ninterrupts = {interrupts}\nports = 0x2f8-0x2ff\nioapic_pins = 3\n"
            )));
        }
    }
}
