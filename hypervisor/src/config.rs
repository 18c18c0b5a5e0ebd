//! The hypervisor's configuration, `\exitless\exitless.cfg` (format: `exitless_abi::config_text`).
//!
//! A bad line never stops the boot: it is reported with its line number and what to write instead,
//! and the setting keeps its default.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use exitless_abi::config_text::{items, Item};

/// A self-test the kernel runs after the boot summary (for the test harness).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SelfTest {
    #[default]
    None,
    /// Executes `ud2` to prove that exceptions are reported and the machine stops cleanly.
    Exception,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Power off through the emulators' exit ports (QEMU isa-debug-exit, Bochs 0x8900); test images only.
    pub emulator_exit: bool,
    pub selftest: SelfTest,
    pub log_level: log::LevelFilter,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            emulator_exit: false,
            selftest: SelfTest::None,
            log_level: log::LevelFilter::Info,
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
        let mut in_section = false;
        for (line, item) in items(text) {
            let mut problem = |message: String| problems.push(Problem { line, message });
            match item {
                Item::Malformed(text) => {
                    problem(format!("`{text}` is not `key = value` or `[section name]`"))
                }
                // Guest sections are read by the guest configuration (VT-x work); the host ignores them.
                Item::Section { .. } => in_section = true,
                Item::Setting { .. } if in_section => {}
                Item::Setting { key, value } => match key {
                    // Read by the loader.
                    "kernel" => {}
                    "emulator_exit" => match parse_bool(value) {
                        Some(b) => config.emulator_exit = b,
                        None => problem(format!("emulator_exit = {value}: write yes or no")),
                    },
                    "selftest" => match value {
                        "none" => config.selftest = SelfTest::None,
                        "exception" => config.selftest = SelfTest::Exception,
                        _ => problem(format!("selftest = {value}: write none or exception")),
                    },
                    "log" => match value.parse() {
                        Ok(level) => config.log_level = level,
                        Err(_) => problem(format!(
                            "log = {value}: write off, error, warn, info, debug or trace"
                        )),
                    },
                    _ => problem(format!(
                        "unknown setting `{key}` (known: kernel, emulator_exit, selftest, log)"
                    )),
                },
            }
        }
        (config, problems)
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
    fn bad_lines_are_reported_with_their_number_and_keep_defaults() {
        let (config, problems) = Config::parse("emulator_exit = maybe\n\nfrobnicate = 1\njunk\n");
        assert_eq!(config, Config::default());
        let lines: Vec<usize> = problems.iter().map(|p| p.line).collect();
        assert_eq!(lines, [1, 3, 4]);
        assert!(problems[0].message.contains("yes or no"));
    }

    #[test]
    fn guest_sections_do_not_leak_into_host_settings() {
        let (config, problems) = Config::parse("[guest a]\nemulator_exit = yes\nwhatever = 1\n");
        assert!(problems.is_empty());
        assert!(!config.emulator_exit);
    }
}
