//! The hypervisor's configuration, `\exitless\exitless.cfg` (format: `exitless_abi::config_text`).
//!
//! A bad line never stops the boot: it is reported with its line number and what to write instead,
//! and the setting keeps its default.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use exitless_abi::config_text::{items, Item};

use crate::pci::Bdf;

/// A self-test the kernel runs after the boot summary (for the test harness). Only the test kernel,
/// `hypervisor-selftest.elf` (feature `selftest`), has them; the production kernel parses the key,
/// says it has no self-tests and boots as if it were `none`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SelfTest {
    #[default]
    None,
    /// Executes `ud2` to prove that exceptions are reported and the machine stops cleanly.
    Exception,
    /// Drives QEMU's edu devices through the VT-d layer (DMA and interrupt remapping), suite `vtd`.
    Vtd,
    /// Gives an edu device to a guest's DMA domain exactly as the runner would (without VMX) and
    /// drives its DMA, suite `vtd-guest`.
    VtdGuest,
}

impl SelfTest {
    /// The value `selftest = ...` takes for it.
    pub fn name(self) -> &'static str {
        match self {
            SelfTest::None => "none",
            SelfTest::Exception => "exception",
            SelfTest::Vtd => "vtd",
            SelfTest::VtdGuest => "vtd-guest",
        }
    }
}

/// How a guest's assigned-device interrupts are delivered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum InterruptMode {
    /// Device assignment without ELI, as KVM did before APICv: every interrupt exits, the host injects it,
    /// and the guest's EOI exits too.
    #[default]
    Baseline,
    /// ELI: the guest's device interrupts go straight to its own IDT with no exit, and its EOI
    /// completes with none.
    Eli,
    /// What KVM does with APICv on a CPU without posted interrupts: every device interrupt exits
    /// once and is delivered through the virtual APIC (virtual-interrupt delivery, SDM Vol. 3C
    /// 29.2); the guest's EOI completes without an exit, unless the interrupt was level-triggered
    /// and the host must complete it on the physical side too (29.1.2).
    Apicv,
}

impl InterruptMode {
    /// The value `interrupts = ...` takes for it.
    pub fn name(self) -> &'static str {
        match self {
            InterruptMode::Baseline => "baseline",
            InterruptMode::Eli => "eli",
            InterruptMode::Apicv => "apicv",
        }
    }
}

/// One `[guest NAME]` section.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestConfig {
    pub name: String,
    /// Module path under `\exitless\`, e.g. `guests/basic.elf`; empty for a Linux guest.
    pub image: String,
    /// A Linux guest (`linux = PATH`), booted by `vmm::linux_boot` instead of `image`.
    pub linux: Option<LinuxConfig>,
    pub memory_mib: u64,
    pub interrupts: InterruptMode,
    /// I/O port ranges (inclusive) passed through to the guest.
    pub ports: Vec<(u16, u16)>,
    /// IOAPIC pins whose interrupts belong to the guest.
    pub ioapic_pins: Vec<u8>,
    /// For tests of the hypervisor's defences: the guest is expected to be stopped with a reason that
    /// contains this text (e.g. `EPT violation`), instead of powering off with code 0.
    pub expect_stop: Option<String>,
    /// PCI functions assigned to the guest (`pci = 00:03.0, 00:08.0`); checked at boot by
    /// `vmm::assignment::plan`.
    pub pci: Vec<Bdf>,
    /// Run budget (`timeout_ms = N`): the guest is stopped with a report once it has run this long
    /// (TSC time at the rate CPUID reports). `None`, the default, lets it run for as long as it likes,
    /// which is what a server's guests want; test images set one for every guest.
    pub timeout_ms: Option<u64>,
}

/// `linux = PATH`, `initrd = PATH`, `cmdline = TEXT` of a guest section.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LinuxConfig {
    /// Module path under `\exitless\` of a bzImage or an ELF vmlinux.
    pub kernel: String,
    pub initrd: Option<String>,
    /// The rest of the `cmdline =` line, spaces and `=` included (a `#` starts a comment).
    pub cmdline: String,
}

impl GuestConfig {
    pub const DEFAULT_MEMORY_MIB: u64 = 32;

    fn new(name: &str) -> Self {
        Self {
            name: String::from(name),
            image: String::new(),
            linux: None,
            memory_mib: Self::DEFAULT_MEMORY_MIB,
            interrupts: InterruptMode::Baseline,
            ports: Vec::new(),
            ioapic_pins: Vec::new(),
            expect_stop: None,
            pci: Vec::new(),
            timeout_ms: None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Power off through the emulators' exit ports (QEMU isa-debug-exit, Bochs 0x8900); test images only.
    pub emulator_exit: bool,
    pub selftest: SelfTest,
    pub log_level: log::LevelFilter,
    /// `unsafe_no_iommu = yes`: allow device assignment on a machine without an IOMMU (Bochs), where
    /// an assigned device can DMA anywhere. Warned about on every boot.
    pub unsafe_no_iommu: bool,
    pub guests: Vec<GuestConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            emulator_exit: false,
            selftest: SelfTest::None,
            log_level: log::LevelFilter::Info,
            unsafe_no_iommu: false,
            guests: Vec::new(),
        }
    }
}

/// A problem found in the configuration: `line` is 1-based.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub line: usize,
    pub message: String,
}

impl Config {
    /// Parses the configuration text; problems are returned next to the (partly default) result.
    pub fn parse(text: &str) -> (Self, Vec<Problem>) {
        let mut config = Self::default();
        let mut problems = Vec::new();
        // Where each guest's section and boot keys are, for the checks once it is complete.
        let mut lines: Vec<BootKeyLines> = Vec::new();
        for (line, item) in items(text) {
            let mut problem = |message: String| problems.push(Problem { line, message });
            match item {
                Item::Malformed(text) => {
                    problem(format!("`{text}` is not `key = value` or `[section name]`"))
                }
                Item::Section {
                    kind: "guest",
                    name,
                } if !name.is_empty() => {
                    if config.guests.iter().any(|g| g.name == name) {
                        problem(format!(
                            "a second [guest {name}]: guest names must be unique"
                        ));
                    }
                    config.guests.push(GuestConfig::new(name));
                    lines.push(BootKeyLines::at(line));
                }
                Item::Section { kind, name } => {
                    problem(format!("[{kind} {name}]: the only section is [guest NAME]"));
                    config.guests.push(GuestConfig::new(INVALID_SECTION));
                    lines.push(BootKeyLines::at(line));
                }
                Item::Setting { key, value } if !config.guests.is_empty() => {
                    let guest = config.guests.last_mut().expect("checked");
                    match guest.set(key, value) {
                        Ok(()) => lines.last_mut().expect("one per guest").saw(key, line),
                        Err(message) => problem(message),
                    }
                }
                Item::Setting { key, value } => match key {
                    // Read by the loader.
                    "kernel" => {}
                    "emulator_exit" => match parse_bool(value) {
                        Some(b) => config.emulator_exit = b,
                        None => problem(format!("emulator_exit = {value}: write yes or no")),
                    },
                    "unsafe_no_iommu" => match parse_bool(value) {
                        Some(b) => config.unsafe_no_iommu = b,
                        None => problem(format!("unsafe_no_iommu = {value}: write yes or no")),
                    },
                    "selftest" => match value {
                        "none" => config.selftest = SelfTest::None,
                        "exception" => config.selftest = SelfTest::Exception,
                        "vtd" => config.selftest = SelfTest::Vtd,
                        "vtd-guest" => config.selftest = SelfTest::VtdGuest,
                        _ => problem(format!(
                            "selftest = {value}: write none, exception, vtd or vtd-guest"
                        )),
                    },
                    "log" => match value.parse() {
                        Ok(level) => config.log_level = level,
                        Err(_) => problem(format!(
                            "log = {value}: write off, error, warn, info, debug or trace"
                        )),
                    },
                    _ => problem(format!(
                        "unknown setting `{key}` (known: kernel, emulator_exit, selftest, log, unsafe_no_iommu)"
                    )),
                },
            }
        }
        let mut keep = Vec::new();
        for (guest, at) in config.guests.iter_mut().zip(&lines) {
            keep.push(guest.name != INVALID_SECTION && guest.check_boot_keys(at, &mut problems));
        }
        let mut keep = keep.into_iter();
        config
            .guests
            .retain(|_| keep.next().expect("one per guest"));
        (config, problems)
    }
}

/// Lines of a guest's section header and of its last `image`, `linux` and first `initrd`/`cmdline`.
#[derive(Clone, Copy, Default)]
struct BootKeyLines {
    section: usize,
    image: Option<usize>,
    linux: Option<usize>,
    linux_option: Option<usize>,
}

impl BootKeyLines {
    fn at(section: usize) -> Self {
        Self {
            section,
            ..Self::default()
        }
    }

    fn saw(&mut self, key: &str, line: usize) {
        match key {
            "image" => self.image = Some(line),
            "linux" => self.linux = Some(line),
            "initrd" | "cmdline" => {
                self.linux_option.get_or_insert(line);
            }
            _ => {}
        }
    }
}

impl GuestConfig {
    /// A guest boots exactly one of `image` and `linux`; `initrd` and `cmdline` only go with `linux`.
    /// Reports what is wrong and returns whether the guest can be kept.
    fn check_boot_keys(&mut self, at: &BootKeyLines, problems: &mut Vec<Problem>) -> bool {
        let name = &self.name;
        let mut problem = |line, message| problems.push(Problem { line, message });
        let has_linux = self.linux.as_ref().is_some_and(|l| !l.kernel.is_empty());
        if let (false, Some(line)) = (has_linux, at.linux_option) {
            problem(line, format!("[guest {name}]: initrd and cmdline are for Linux guests: add `linux = PATH` or remove them"));
        }
        if !has_linux {
            self.linux = None;
        }
        match (self.image.is_empty(), has_linux, at.image, at.linux) {
            (true, false, _, _) => {
                problem(
                    at.section,
                    format!("[guest {name}] has no `image = guests/NAME.elf` or `linux = PATH`"),
                );
                false
            }
            (false, true, Some(image), Some(linux)) => {
                problem(image.max(linux), format!("[guest {name}] has both `image` (line {image}) and `linux` (line {linux}): a guest boots one of them, remove the other"));
                false
            }
            _ => true,
        }
    }

    fn set(&mut self, key: &str, value: &str) -> Result<(), String> {
        match key {
            "image" => self.image = String::from(value),
            "linux" => self.linux.get_or_insert_default().kernel = String::from(value),
            "initrd" => self.linux.get_or_insert_default().initrd = Some(String::from(value)),
            "cmdline" => self.linux.get_or_insert_default().cmdline = String::from(value),
            "memory_mib" => match value.parse::<u64>() {
                Ok(mib) if (4..=65536).contains(&mib) => self.memory_mib = mib,
                _ => return Err(format!("memory_mib = {value}: write a number of MiB from 4 to 65536")),
            },
            "interrupts" => {
                self.interrupts = match value {
                    "baseline" => InterruptMode::Baseline,
                    "eli" => InterruptMode::Eli,
                    "apicv" => InterruptMode::Apicv,
                    _ => {
                        return Err(format!(
                            "interrupts = {value}: write baseline, apicv or eli"
                        ))
                    }
                }
            }
            "ports" => {
                for range in value.split(',').map(str::trim).filter(|r| !r.is_empty()) {
                    let (first, last) = range.split_once('-').unwrap_or((range, range));
                    match (parse_u64(first), parse_u64(last)) {
                        (Some(a), Some(b)) if a <= b && b <= 0xFFFF => {
                            self.ports.push((a as u16, b as u16))
                        }
                        _ => {
                            return Err(format!(
                                "ports: `{range}` is not a port or FIRST-LAST range (e.g. 0x2f8-0x2ff)"
                            ))
                        }
                    }
                }
            }
            "expect_stop" => self.expect_stop = Some(String::from(value)),
            "timeout_ms" => match parse_u64(value) {
                Some(0) => self.timeout_ms = None,
                Some(ms) => self.timeout_ms = Some(ms),
                None => {
                    return Err(format!(
                        "timeout_ms = {value}: write a number of milliseconds (0: no limit)"
                    ))
                }
            },
            "pci" => {
                for text in value.split(',').map(str::trim).filter(|t| !t.is_empty()) {
                    match text.parse::<Bdf>() {
                        Ok(bdf) => self.pci.push(bdf),
                        Err(_) => {
                            return Err(format!(
                                "pci: `{text}` is not a PCI address like 00:03.0 (as `lspci` and the boot summary's `summary: pci_function` lines print it)"
                            ))
                        }
                    }
                }
            }
            "ioapic_pins" => {
                for pin in value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                    match parse_u64(pin) {
                        Some(p) if p < 240 => self.ioapic_pins.push(p as u8),
                        _ => return Err(format!("ioapic_pins: `{pin}` is not a pin number")),
                    }
                }
            }
            _ => {
                return Err(format!(
                    "unknown guest setting `{key}` (known: image, linux, initrd, cmdline, memory_mib, interrupts, ports, ioapic_pins, expect_stop, pci, timeout_ms)"
                ))
            }
        }
        Ok(())
    }
}

/// Name of the placeholder that swallows the settings of a malformed section.
const INVALID_SECTION: &str = "";

fn parse_u64(text: &str) -> Option<u64> {
    match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => text.parse().ok(),
    }
}

fn parse_bool(value: &str) -> Option<bool> {
    match value {
        "yes" | "true" | "on" | "1" => Some(true),
        "no" | "false" | "off" | "0" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_config_is_the_default() {
        assert_eq!(Config::parse(""), (Config::default(), Vec::new()));
    }

    #[test]
    fn settings_are_read() {
        let (config, problems) = Config::parse(
            "kernel = hypervisor.elf\nemulator_exit = yes\nselftest = exception\nlog = debug\n",
        );
        assert!(problems.is_empty(), "{problems:?}");
        assert!(config.emulator_exit);
        assert_eq!(config.selftest, SelfTest::Exception);
        assert_eq!(config.log_level, log::LevelFilter::Debug);
    }

    #[test]
    fn vtd_self_test_is_read() {
        let (config, problems) = Config::parse("selftest = vtd\n");
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(config.selftest, SelfTest::Vtd);
    }

    #[test]
    fn vtd_guest_self_test_is_read() {
        let (config, problems) = Config::parse("selftest = vtd-guest\n");
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(config.selftest, SelfTest::VtdGuest);
    }

    #[test]
    fn bad_lines_are_reported_with_their_number_and_keep_defaults() {
        let (config, problems) = Config::parse("emulator_exit = maybe\n\nfrobnicate = 1\njunk\n");
        assert_eq!(config, Config::default());
        let lines: Vec<usize> = problems.iter().map(|p| p.line).collect();
        assert_eq!(lines, [1, 3, 4]);
        assert!(problems[0].message.contains("yes or no"));
    }

    #[test]
    fn a_run_budget_is_read_and_zero_means_none() {
        let (config, problems) = Config::parse(
            "[guest a]\nimage = a.elf\ntimeout_ms = 1500\n[guest b]\nimage = b.elf\ntimeout_ms = 0\n\
             [guest c]\nimage = c.elf\ntimeout_ms = soon\n",
        );
        assert_eq!(config.guests[0].timeout_ms, Some(1500));
        assert_eq!(config.guests[1].timeout_ms, None);
        assert_eq!(config.guests[2].timeout_ms, None);
        assert_eq!(problems.len(), 1);
        assert!(problems[0].message.contains("milliseconds"), "{problems:?}");
    }

    #[test]
    fn guest_sections_are_read() {
        let (config, problems) = Config::parse(
            "emulator_exit = yes\n[guest eli]\nimage = guests/irq.elf\nmemory_mib = 64\ninterrupts = eli\n\
             ports = 0x2f8-0x2ff, 0x80\nioapic_pins = 3\n[guest b]\nimage = guests/basic.elf\n",
        );
        assert!(problems.is_empty(), "{problems:?}");
        assert!(config.emulator_exit);
        assert_eq!(config.guests.len(), 2);
        let g = &config.guests[0];
        assert_eq!(
            (g.name.as_str(), g.image.as_str(), g.memory_mib),
            ("eli", "guests/irq.elf", 64)
        );
        assert_eq!(g.interrupts, InterruptMode::Eli);
        assert_eq!(g.ports, [(0x2f8, 0x2ff), (0x80, 0x80)]);
        assert_eq!(g.ioapic_pins, [3]);
        assert_eq!(config.guests[1].interrupts, InterruptMode::Baseline);
    }

    #[test]
    fn every_interrupt_mode_is_read_by_its_name_and_others_are_refused() {
        for mode in [
            InterruptMode::Baseline,
            InterruptMode::Eli,
            InterruptMode::Apicv,
        ] {
            let text = format!("[guest a]\nimage = a.elf\ninterrupts = {}\n", mode.name());
            let (config, problems) = Config::parse(&text);
            assert!(problems.is_empty(), "{problems:?}");
            assert_eq!(config.guests[0].interrupts, mode);
        }
        let (config, problems) = Config::parse("[guest a]\nimage = a.elf\ninterrupts = posted\n");
        assert_eq!(config.guests[0].interrupts, InterruptMode::Baseline);
        assert!(
            problems[0].message.contains("baseline, apicv or eli"),
            "{problems:?}"
        );
    }

    #[test]
    fn assigned_pci_devices_and_unsafe_no_iommu_are_read() {
        let (config, problems) = Config::parse(
            "unsafe_no_iommu = yes\n[guest a]\nimage = a.elf\npci = 00:03.0, 0001:02:1f.7\npci = 00:08.0\n",
        );
        assert!(problems.is_empty(), "{problems:?}");
        assert!(config.unsafe_no_iommu);
        let bdfs: Vec<String> = config.guests[0]
            .pci
            .iter()
            .map(|b| format!("{b}"))
            .collect();
        assert_eq!(bdfs, ["00:03.0", "0001:02:1f.7", "00:08.0"]);
        assert!(!Config::default().unsafe_no_iommu);
        assert!(Config::default().guests.iter().all(|g| g.pci.is_empty()));
    }

    #[test]
    fn malformed_bdf_and_unsafe_no_iommu_are_problems_with_their_line() {
        let (config, problems) = Config::parse(
            "unsafe_no_iommu = perhaps\n[guest a]\nimage = a.elf\npci = 00:3\npci = 00:20.0\n",
        );
        let lines: Vec<usize> = problems.iter().map(|p| p.line).collect();
        assert_eq!(lines, [1, 4, 5]);
        assert!(problems[0].message.contains("yes or no"));
        assert!(
            problems[1].message.contains("`00:3`"),
            "{}",
            problems[1].message
        );
        assert!(problems[2].message.contains("`00:20.0`"));
        assert!(!config.unsafe_no_iommu);
        assert!(config.guests[0].pci.is_empty());
    }

    #[test]
    fn bad_guest_settings_are_reported_and_guests_without_image_dropped() {
        let (config, problems) =
            Config::parse("[guest a]\nmemory_mib = lots\nports = 0x300-0x2ff\ncolour = red\n[guest a]\n[disk x]\n");
        let lines: Vec<usize> = problems.iter().map(|p| p.line).collect();
        // The last two: both `[guest a]` sections (lines 1 and 5) have nothing to boot.
        assert_eq!(lines, [2, 3, 4, 5, 6, 1, 5]);
        assert!(problems[5].message.contains("no `image"));
        assert!(config.guests.is_empty());
    }

    #[test]
    fn linux_guests_are_read_with_initrd_and_the_whole_cmdline() {
        let (config, problems) = Config::parse(
            "[guest linux]\nlinux = linux/bzImage\ninitrd = linux/initrd.cpio\n\
             cmdline = console=ttyS0,115200 root=/dev/ram0  rdinit=/init quiet\nmemory_mib = 256\n\
             [guest bare]\nimage = guests/basic.elf\n[guest v]\ncmdline = a=b\nlinux = vmlinux\n",
        );
        assert!(problems.is_empty(), "{problems:?}");
        let linux = config.guests[0].linux.as_ref().unwrap();
        assert_eq!(linux.kernel, "linux/bzImage");
        assert_eq!(linux.initrd.as_deref(), Some("linux/initrd.cpio"));
        assert_eq!(
            linux.cmdline,
            "console=ttyS0,115200 root=/dev/ram0  rdinit=/init quiet"
        );
        assert_eq!(config.guests[0].image, "");
        assert_eq!(config.guests[1].linux, None);
        let v = config.guests[2].linux.as_ref().unwrap();
        assert_eq!(
            (v.kernel.as_str(), v.initrd.as_deref(), v.cmdline.as_str()),
            ("vmlinux", None, "a=b")
        );
    }

    #[test]
    fn a_guest_boots_exactly_one_of_image_and_linux() {
        let (config, problems) = Config::parse(
            "[guest both]\nimage = a.elf\nlinux = bzImage\n[guest neither]\nmemory_mib = 64\n\
             [guest stray]\nimage = b.elf\ninitrd = initrd.img\ncmdline = quiet\n[guest ok]\nlinux = k\n",
        );
        let found: Vec<(usize, &str)> = problems
            .iter()
            .map(|p| (p.line, p.message.as_str()))
            .collect();
        assert_eq!(found.len(), 3, "{found:?}");
        assert_eq!(found[0].0, 3);
        assert!(
            found[0]
                .1
                .contains("both `image` (line 2) and `linux` (line 3)"),
            "{}",
            found[0].1
        );
        assert_eq!(found[1].0, 4);
        assert!(found[1]
            .1
            .contains("[guest neither] has no `image = guests/NAME.elf` or `linux = PATH`"));
        assert_eq!(found[2].0, 8, "the first initrd/cmdline line");
        assert!(found[2].1.contains("add `linux = PATH`"));
        let names: Vec<&str> = config.guests.iter().map(|g| g.name.as_str()).collect();
        assert_eq!(
            names,
            ["stray", "ok"],
            "the stray initrd is dropped, the guest kept"
        );
        assert_eq!(config.guests[0].linux, None);
        assert_eq!(config.guests[0].image, "b.elf");
    }
}
