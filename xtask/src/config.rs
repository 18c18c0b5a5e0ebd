//! The text of `\exitless\exitless.cfg` that xtask writes (format: `exitless_abi::config_text`).

use std::fmt::Write;

/// The kernel file the loader starts by default, relative to `\exitless\`: the production kernel,
/// which has no self-tests.
pub const DEFAULT_KERNEL: &str = "hypervisor.elf";

/// The test kernel's file name: the hypervisor built with its self-tests (feature `selftest`).
pub const SELFTEST_KERNEL_FILE: &str = "hypervisor-selftest.elf";

/// The run budget of test guests, in milliseconds of the TSC rate the kernel measures against the PIT
/// (`summary: tsc`). Bochs' TSC runs at its ips rate (50 MHz), so 50 s is 2.5e9 TSC ticks, what the
/// budget was when the kernel still took CPUID's 2419 MHz (1000 ms); it stays well inside a Bochs
/// boot's bound, and the slowest test guest needs a tenth of it. Under QEMU TCG it is 50 s of real
/// time, inside that emulator's 120 s bound (only a guest that hangs ever uses it up).
pub const TEST_GUEST_TIMEOUT_MS: &str = "50000";

/// A configuration for one image: the kernel, whether to power the emulator off, and any other
/// top-level settings (e.g. `selftest = exception`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageConfig {
    pub kernel: String,
    /// `emulator_exit = yes`: the kernel ends the run through QEMU's isa-debug-exit or Bochs' port
    /// 0x8900 instead of halting (never on a real server).
    pub emulator_exit: bool,
    pub settings: Vec<(String, String)>,
    /// `[guest NAME]` sections: name and settings.
    pub guests: Vec<(String, Vec<(String, String)>)>,
}

impl ImageConfig {
    /// For a real server: boot the hypervisor, halt when done.
    pub fn server() -> Self {
        Self {
            kernel: DEFAULT_KERNEL.into(),
            emulator_exit: false,
            settings: Vec::new(),
            guests: Vec::new(),
        }
    }

    /// For an emulator run: the kernel powers the emulator off when done.
    pub fn emulator() -> Self {
        Self {
            emulator_exit: true,
            ..Self::server()
        }
    }

    /// For a test boot running self-test `name` (`selftest = NAME`): it boots the self-test kernel.
    pub fn selftest(name: &str) -> Self {
        Self::emulator()
            .kernel(SELFTEST_KERNEL_FILE)
            .with("selftest", name)
    }

    /// Whether the loader starts the self-test kernel.
    pub fn boots_selftest_kernel(&self) -> bool {
        self.kernel == SELFTEST_KERNEL_FILE
    }

    pub fn kernel(mut self, kernel: &str) -> Self {
        self.kernel = kernel.into();
        self
    }

    pub fn with(mut self, key: &str, value: &str) -> Self {
        self.settings.push((key.into(), value.into()));
        self
    }

    /// Adds a `[guest NAME]` section.
    /// Emulator images give every guest a run budget unless it sets its own: a stuck guest is then
    /// stopped with a report instead of holding the emulator until xtask kills it.
    pub fn guest(mut self, name: &str, settings: &[(&str, &str)]) -> Self {
        let mut settings: Vec<(String, String)> = settings
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        if self.emulator_exit && !settings.iter().any(|(k, _)| k == "timeout_ms") {
            settings.push(("timeout_ms".into(), TEST_GUEST_TIMEOUT_MS.into()));
        }
        self.guests.push((name.into(), settings));
        self
    }

    /// [`Self::guest`] with owned settings (paths computed at run time).
    pub fn guest_owned(self, name: &str, settings: Vec<(String, String)>) -> Self {
        let borrowed: Vec<(&str, &str)> = settings
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        self.guest(name, &borrowed)
    }

    pub fn render(&self) -> String {
        let mut text = String::from(
            "# Exitless configuration, \\exitless\\exitless.cfg on the EFI System Partition.\n\
             # Lines are `key = value`; `#` starts a comment; `[guest NAME]` starts a guest's section.\n\
             #\n\
             # kernel: the ELF the loader starts, relative to \\exitless\\.\n",
        );
        let _ = writeln!(text, "kernel = {}", self.kernel);
        text.push_str(
            "# emulator_exit = yes: power the emulator off at the end (QEMU isa-debug-exit, Bochs port\n\
             # 0x8900). Leave it off on a real server, where the kernel halts instead.\n",
        );
        if self.emulator_exit {
            text.push_str("emulator_exit = yes\n");
        } else {
            text.push_str("# emulator_exit = yes\n");
        }
        for (key, value) in &self.settings {
            let _ = writeln!(text, "{key} = {value}");
        }
        for (name, settings) in &self.guests {
            let _ = writeln!(text, "\n[guest {name}]");
            for (key, value) in settings {
                let _ = writeln!(text, "{key} = {value}");
            }
        }
        text
    }
}

/// A user's configuration file made fit for an emulator run: `emulator_exit = yes` added unless
/// it sets `emulator_exit` itself.
pub fn with_emulator_exit(text: &str) -> String {
    if exitless_abi::config_text::top_level(text, "emulator_exit").is_some() {
        return text.to_string();
    }
    // Top-level settings must come before any section: put it first.
    format!("emulator_exit = yes\n{text}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use exitless_abi::config_text::top_level;

    #[test]
    fn server_config_names_the_kernel_and_leaves_emulator_exit_off() {
        let text = ImageConfig::server().render();
        assert_eq!(top_level(&text, "kernel"), Some("hypervisor.elf"));
        assert_eq!(top_level(&text, "emulator_exit"), None);
        assert!(text.contains("# emulator_exit = yes"));
    }

    #[test]
    fn emulator_config_carries_its_settings() {
        let text = ImageConfig::emulator()
            .kernel("missing.elf")
            .with("selftest", "exception")
            .render();
        assert_eq!(top_level(&text, "kernel"), Some("missing.elf"));
        assert_eq!(top_level(&text, "emulator_exit"), Some("yes"));
        assert_eq!(top_level(&text, "selftest"), Some("exception"));
    }

    #[test]
    fn selftest_configs_boot_the_selftest_kernel() {
        let config = ImageConfig::selftest("vtd");
        assert!(config.boots_selftest_kernel());
        let text = config.render();
        assert_eq!(top_level(&text, "kernel"), Some("hypervisor-selftest.elf"));
        assert_eq!(top_level(&text, "selftest"), Some("vtd"));
        assert_eq!(top_level(&text, "emulator_exit"), Some("yes"));
        assert!(!ImageConfig::emulator().boots_selftest_kernel());
        assert!(!ImageConfig::server().boots_selftest_kernel());
    }

    #[test]
    fn emulator_exit_is_added_before_sections() {
        let user = "kernel = hypervisor.elf\n[guest a]\nkernel = guests/a.elf\n";
        let text = with_emulator_exit(user);
        assert_eq!(top_level(&text, "emulator_exit"), Some("yes"));
        assert_eq!(top_level(&text, "kernel"), Some("hypervisor.elf"));
        let explicit = "emulator_exit = no\n";
        assert_eq!(with_emulator_exit(explicit), explicit);
    }
}
