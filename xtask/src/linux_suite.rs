//! The Linux guest tests (issue 9): Debian's kernel and the kit's initramfs (`linux_kit`) under
//! Exitless in Bochs, once per interrupt mode with the e1000 on vnet assigned; kernels the
//! hypervisor must refuse before them; a guest that reboots; the bzImage through its own 64-bit
//! entry. (The refused INTx line is a guest of `bochs-boot`.) Every check is judged from what the
//! guest's /init (`EXITLESS-LINUX:` lines), its kernel and the hypervisor printed.

use crate::config::ImageConfig;
use crate::linux_kit;
use crate::suite::{Check, Evidence};

/// Bochs' e1000 (`emulator`: slot 1) and the PIIX4 power-management function, which OVMF puts on
/// the e1000's INTx line (IRQ 10): a guest gets the line only with both.
pub const BOCHS_E1000: &str = "00:02.0";
pub const BOCHS_PIIX4_PM: &str = "00:01.3";
const E1000_AND_ITS_LINE: &str = "00:02.0, 00:01.3";

/// The command line the issue names, and nothing to work around the platform.
const CMDLINE: &str = "console=ttyS0 quiet cryptomgr.notests";
/// The network benchmark's short version (`net_bench`), run by the ELI and APICv guests as a check
/// that its path works: 100 echoes and the 1 MiB transfer, about 1.5 s of guest time.
const SHORT_NET_BENCH: &str = "exitless_bench=net bench_pings=100";
/// A Linux boot, DHCP and 20 pings: ~1.5e9 TSC ticks (30 s at Bochs' 50 MHz); the budget leaves room.
const LINUX_TIMEOUT_MS: &str = "150000";

/// A Linux guest's settings in `mode` with the e1000 and its line's other function.
fn linux_guest(kit: &linux_kit::LinuxKit, mode: &str) -> Vec<(String, String)> {
    linux_guest_with(kit, mode, "")
}

/// [`linux_guest`] with `extra` words on the kernel command line (for its /init).
pub fn linux_guest_with(
    kit: &linux_kit::LinuxKit,
    mode: &str,
    extra: &str,
) -> Vec<(String, String)> {
    let cmdline = if extra.is_empty() {
        CMDLINE.to_string()
    } else {
        format!("{CMDLINE} {extra}")
    };
    vec![
        ("linux".into(), kit.vmlinux.display().to_string()),
        ("initrd".into(), kit.initrd.display().to_string()),
        ("cmdline".into(), cmdline),
        ("memory_mib".into(), "160".into()),
        ("interrupts".into(), mode.into()),
        ("pci".into(), E1000_AND_ITS_LINE.into()),
        ("timeout_ms".into(), LINUX_TIMEOUT_MS.into()),
    ]
}

/// The ELI boot: kernels the hypervisor must refuse first (each reported while the next guest
/// runs), then Linux with the e1000, then Linux rebooting. One guest with the e1000 per boot: a
/// device belongs to one guest of a configuration.
pub fn config_eli() -> ImageConfig {
    let kit = linux_kit::kit_paths();
    let refused = |kernel: String, memory: &str, stop: &str| {
        vec![
            ("linux".to_string(), kernel),
            ("initrd".into(), kit.initrd.display().to_string()),
            ("cmdline".into(), CMDLINE.into()),
            ("memory_mib".into(), memory.into()),
            ("expect_stop".into(), stop.into()),
        ]
    };
    ImageConfig::emulator()
        .with("unsafe_no_iommu", "yes")
        // Not a kernel: a shell script from the repository.
        .guest_owned(
            "linux-garbage",
            refused(
                "xtask/linux-kit/init".into(),
                "160",
                "not a bzImage or an ELF vmlinux",
            ),
        )
        .guest_owned(
            "linux-truncated",
            refused(
                kit.truncated_bzimage.display().to_string(),
                "160",
                "bzImage truncated",
            ),
        )
        .guest_owned(
            "linux-small",
            refused(
                kit.bzimage.display().to_string(),
                "32",
                "guest memory too small",
            ),
        )
        .guest_owned("linux-eli", linux_guest_with(&kit, "eli", SHORT_NET_BENCH))
        // Reboot ends a guest too (it cannot be reset in place). Linux 6.1 on hardware-reduced ACPI
        // without EFI reboots through the BIOS (`efi_reboot_required`, then the real-mode restart).
        .guest_owned(
            "linux-reboot",
            vec![
                ("linux".into(), kit.vmlinux.display().to_string()),
                ("initrd".into(), kit.initrd.display().to_string()),
                ("cmdline".into(), format!("{CMDLINE} exitless_end=reboot")),
                ("memory_mib".into(), "160".into()),
                ("interrupts".into(), "eli".into()),
                ("timeout_ms".into(), LINUX_TIMEOUT_MS.into()),
                ("expect_stop".into(), "left paged protected mode".into()),
            ],
        )
}

/// The baseline boot: Linux with the e1000, then the distribution's bzImage itself through its
/// 64-bit entry (its own XZ decompressor costs Bochs ~85 s) with no device: RAM laid out linearly,
/// the kernel at its pref_address.
pub fn config_baseline() -> ImageConfig {
    let kit = linux_kit::kit_paths();
    ImageConfig::emulator()
        .with("unsafe_no_iommu", "yes")
        .guest_owned("linux-baseline", linux_guest(&kit, "baseline"))
        .guest_owned(
            "linux-bzimage",
            vec![
                ("linux".into(), kit.bzimage.display().to_string()),
                ("initrd".into(), kit.initrd.display().to_string()),
                ("cmdline".into(), CMDLINE.into()),
                ("memory_mib".into(), "160".into()),
                ("interrupts".into(), "eli".into()),
                ("timeout_ms".into(), "400000".into()),
            ],
        )
}

/// The APICv boot: Linux with the e1000, its interrupts delivered through the virtual APIC.
pub fn config_apicv() -> ImageConfig {
    let kit = linux_kit::kit_paths();
    ImageConfig::emulator()
        .with("unsafe_no_iommu", "yes")
        .guest_owned(
            "linux-apicv",
            linux_guest_with(&kit, "apicv", SHORT_NET_BENCH),
        )
}

/// A guest given the e1000 alone (in `bochs-boot`): its line is shared, so it is refused.
pub fn shared_line_guest() -> [(&'static str, &'static str); 4] {
    [
        ("image", "guests/basic.elf"),
        ("memory_mib", "8"),
        ("pci", BOCHS_E1000),
        ("expect_stop", "assignment refused"),
    ]
}

/// The lines guest `guest` printed on its console (`[guest NAME] ` stripped).
fn console<'a>(e: &'a Evidence<'_>, guest: &str) -> Vec<&'a str> {
    let prefix = format!("[guest {guest}] ");
    e.boot
        .serial
        .lines()
        .filter_map(|l| l.strip_prefix(prefix.as_str()))
        .collect()
}

/// /init's `EXITLESS-LINUX: WHAT...` lines.
fn marker<'a>(e: &'a Evidence<'_>, guest: &str, what: &str) -> Option<&'a str> {
    let prefix = format!("EXITLESS-LINUX: {what}");
    console(e, guest)
        .into_iter()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
}

fn require(e: &Evidence<'_>, guest: &str, what: &str) -> Result<(), String> {
    marker(e, guest, what)
        .map(|_| ())
        .ok_or_else(|| format!("no `EXITLESS-LINUX: {what}` from guest {guest}"))
}

fn userspace(e: &Evidence<'_>, guest: &str) -> Result<(), String> {
    require(e, guest, "userspace")
}

fn cpu_flags(e: &Evidence<'_>, guest: &str) -> Result<(), String> {
    require(e, guest, "cpu hypervisor=yes x2apic=yes")?;
    let flags = marker(e, guest, "cpuinfo ").ok_or("no cpuinfo line")?;
    if !flags.split_whitespace().any(|f| f == "tsc_known_freq") {
        return Err(format!("no tsc_known_freq in `{flags}`"));
    }
    Ok(())
}

/// x2APIC kept (the hypervisor hands over in x2APIC mode and Linux takes it), TSC rate known from
/// CPUID (no PIT or HPET calibration, never marked unstable).
fn timers(e: &Evidence<'_>, guest: &str) -> Result<(), String> {
    let kernel = console(e, guest);
    let has = |text: &str| kernel.iter().any(|l| l.contains(text));
    if !has("x2apic: enabled by BIOS, switching to x2apic ops") {
        return Err("Linux did not take the x2APIC".into());
    }
    for bad in [
        "IRQ remapping doesn't support X2APIC",
        "Marking TSC unstable",
        "Fast TSC calibration",
        "TSC calibrated against",
        "Using PIT",
    ] {
        if let Some(line) = kernel.iter().find(|l| l.contains(bad)) {
            return Err(format!("the guest printed `{line}`"));
        }
    }
    if !has("tsc: Detected ") {
        return Err("no `tsc: Detected` line".into());
    }
    Ok(())
}

/// The e1000's interrupts in /proc/interrupts after the network test: on the IO-APIC, and how many.
fn eth0_interrupts(e: &Evidence<'_>, guest: &str) -> Result<u64, String> {
    let line = console(e, guest)
        .into_iter()
        .filter_map(|l| l.strip_prefix("EXITLESS-LINUX: interrupts-after:"))
        .find(|l| l.trim_end().ends_with("eth0"))
        .ok_or("no eth0 line in /proc/interrupts")?;
    if !line.contains("IO-APIC") {
        return Err(format!("eth0 is not on the IO-APIC: `{line}`"));
    }
    let mut fields = line.split_whitespace();
    fields.next(); // the IRQ number
    fields
        .next()
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| format!("no count in `{line}`"))
}

fn e1000_on_ioapic(e: &Evidence<'_>, guest: &str) -> Result<(), String> {
    require(e, guest, "e1000 ok")?;
    match eth0_interrupts(e, guest)? {
        0 => Err("eth0 took no interrupts".into()),
        _ => Ok(()),
    }
}

fn network(e: &Evidence<'_>, guest: &str) -> Result<(), String> {
    require(e, guest, "dhcp ok 192.168.10.")?;
    let ping = marker(e, guest, "ping ").ok_or("no ping result")?;
    match ping.strip_prefix("ok ") {
        Some(counts) if counts.split('/').nth(1).is_some_and(|r| r != "0") => Ok(()),
        _ => Err(format!("ping {ping}")),
    }
}

fn powered_off(e: &Evidence<'_>, guest: &str) -> Result<(), String> {
    require(e, guest, "done")?;
    // Its ACPI S5 entry logged between its start and its end (guests run one after another).
    let lines: Vec<&str> = e.boot.serial.lines().collect();
    let started = format!("guest {guest}: ");
    let off = format!("guest {guest} powered off with code 0");
    let from = lines
        .iter()
        .position(|l| l.contains(&started) && l.contains(" MiB at host "));
    let to = lines.iter().position(|l| l.contains(&off));
    match (from, to) {
        (Some(from), Some(to))
            if lines[from..to]
                .iter()
                .any(|l| l.contains("guest entered ACPI S5")) =>
        {
            Ok(())
        }
        _ => Err(format!("no ACPI S5 power-off and `{off}`")),
    }
}

/// `key=value` fields of the hypervisor's `summary: NAME guest=GUEST ...` line.
fn summary_field(e: &Evidence<'_>, name: &str, guest: &str, key: &str) -> Result<u64, String> {
    let head = format!("summary: {name} guest={guest} ");
    let line = e
        .boot
        .serial
        .lines()
        .find(|l| l.starts_with(&head))
        .ok_or_else(|| format!("no `{head}` line"))?;
    Ok(line
        .split_whitespace()
        .filter_map(|f| f.split_once('='))
        .find(|(k, _)| *k == key)
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0))
}

/// How a mode delivers the e1000's interrupts, as the exits show.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Delivery {
    /// ELI: no exit per interrupt, no EOI exit but for injected (virtual) interrupts.
    Exitless,
    /// Baseline: each device interrupt exits, is injected, and its EOI exits.
    Injected,
    /// APICv: each device interrupt exits once and is posted to the virtual APIC, nothing is
    /// injected; the e1000's INTx is level-triggered, so its EOI exits too (EOI-induced), and
    /// only then.
    Posted,
}

/// The exits over the guest's whole run say how its e1000 interrupts were delivered.
fn exits(e: &Evidence<'_>, guest: &str, delivery: Delivery) -> Result<(), String> {
    let eth0 = eth0_interrupts(e, guest)?;
    let external = summary_field(e, "guest_exits", guest, "ExternalInterrupt")?;
    let virtualized_eois = summary_field(e, "guest_exits", guest, "VirtualizedEoi")?;
    let injected = summary_field(e, "guest_interrupts", guest, "injected")?;
    let posted = summary_field(e, "guest_interrupts", guest, "posted")?;
    let eoi_exits = summary_field(e, "guest_interrupts", guest, "eoi_exits")?;
    let figures = format!(
        "eth0 {eth0} interrupts, {external} external-interrupt exits, {injected} injected, \
         {posted} posted, {eoi_exits} EOI exits ({virtualized_eois} EOI-induced)"
    );
    let holds = match delivery {
        Delivery::Exitless => external == 0 && eoi_exits <= injected,
        Delivery::Injected => external >= eth0 && injected >= eth0 && eoi_exits >= injected,
        Delivery::Posted => {
            external >= eth0
                && injected == 0
                && posted >= external
                && virtualized_eois == eoi_exits
                && eoi_exits >= eth0
                && eoi_exits <= external
        }
    };
    if eth0 > 0 && holds {
        Ok(())
    } else {
        Err(figures)
    }
}

/// The network benchmark's short run: the workload completed inside the measured window (every
/// echo answered, bulk.bin intact), and the window's exits show the mode's delivery: under ELI no
/// device-interrupt or EOI exit, under APICv an exit per device interrupt and nothing injected.
fn net_workload(e: &Evidence<'_>, guest: &str, delivery: Delivery) -> Result<(), String> {
    let sha = crate::net_bench::sha256_hex(&crate::emulator::vnet_bulk_bytes());
    let run = crate::net_bench::NetRun::parse(&e.boot.serial, guest, &sha)?;
    let exits = &run.hypervisor.exits_by_reason;
    let count = |reason: &str| exits.get(reason).copied().unwrap_or(0);
    let device = run.guest.device_interrupts;
    let figures = format!(
        "{device} device interrupts, {} exits in the window ({exits:?}), {} injected, {} posted",
        run.exits(),
        run.hypervisor.injected,
        run.hypervisor.posted
    );
    let holds = device > 0
        && match delivery {
            Delivery::Exitless => count("ExternalInterrupt") == 0 && count("VirtualizedEoi") == 0,
            Delivery::Posted => {
                count("ExternalInterrupt") >= device && run.hypervisor.injected == 0
            }
            Delivery::Injected => count("ExternalInterrupt") >= device,
        };
    if holds {
        Ok(())
    } else {
        Err(figures)
    }
}

pub fn shared_line_refused(e: &Evidence<'_>) -> Result<(), String> {
    let wanted = format!("shares interrupt line 10 with {BOCHS_PIIX4_PM}");
    e.boot
        .serial
        .lines()
        .find(|l| l.contains("device assignment refused: ") && l.contains(&wanted))
        .map(|_| ())
        .ok_or_else(|| format!("no refusal naming {BOCHS_E1000} and `{wanted}`"))
}

macro_rules! per_mode {
    ($($fn_name:ident => $check:ident ($($arg:expr),*);)*) => {
        $(fn $fn_name(e: &Evidence<'_>) -> Result<(), String> { $check(e, $($arg),*) })*
    };
}

per_mode! {
    eli_userspace => userspace("linux-eli");
    eli_cpu_flags => cpu_flags("linux-eli");
    eli_timers => timers("linux-eli");
    eli_e1000 => e1000_on_ioapic("linux-eli");
    eli_network => network("linux-eli");
    eli_exits => exits("linux-eli", Delivery::Exitless);
    eli_poweroff => powered_off("linux-eli");
    eli_net_workload => net_workload("linux-eli", Delivery::Exitless);
    reboot_after_userspace => require("linux-reboot", "done");
    baseline_userspace => userspace("linux-baseline");
    baseline_cpu_flags => cpu_flags("linux-baseline");
    baseline_timers => timers("linux-baseline");
    baseline_e1000 => e1000_on_ioapic("linux-baseline");
    baseline_network => network("linux-baseline");
    baseline_exits => exits("linux-baseline", Delivery::Injected);
    baseline_poweroff => powered_off("linux-baseline");
    apicv_userspace => userspace("linux-apicv");
    apicv_timers => timers("linux-apicv");
    apicv_e1000 => e1000_on_ioapic("linux-apicv");
    apicv_network => network("linux-apicv");
    apicv_exits => exits("linux-apicv", Delivery::Posted);
    apicv_poweroff => powered_off("linux-apicv");
    apicv_net_workload => net_workload("linux-apicv", Delivery::Posted);
    bzimage_userspace => userspace("linux-bzimage");
    bzimage_cpu_flags => cpu_flags("linux-bzimage");
    bzimage_timers => timers("linux-bzimage");
    bzimage_poweroff => powered_off("linux-bzimage");
}

pub const ELI_CHECKS: &[Check] = &[
    Check {
        name: "linux-eli/userspace",
        check: eli_userspace,
    },
    Check {
        name: "linux-eli/cpuinfo-hypervisor-x2apic",
        check: eli_cpu_flags,
    },
    Check {
        name: "linux-eli/x2apic-and-known-tsc",
        check: eli_timers,
    },
    Check {
        name: "linux-eli/e1000-on-ioapic",
        check: eli_e1000,
    },
    Check {
        name: "linux-eli/dhcp-and-ping",
        check: eli_network,
    },
    Check {
        name: "linux-eli/device-interrupts-and-eois-exitless",
        check: eli_exits,
    },
    Check {
        name: "linux-eli/net-bench-short-run",
        check: eli_net_workload,
    },
    Check {
        name: "linux-eli/poweroff",
        check: eli_poweroff,
    },
    // Its end (stopped with the reset report) is judged by the kernel's guest-linux-reboot result.
    Check {
        name: "linux-reboot/reached-userspace-before-the-reset",
        check: reboot_after_userspace,
    },
];

pub const BASELINE_CHECKS: &[Check] = &[
    Check {
        name: "linux-baseline/userspace",
        check: baseline_userspace,
    },
    Check {
        name: "linux-baseline/cpuinfo-hypervisor-x2apic",
        check: baseline_cpu_flags,
    },
    Check {
        name: "linux-baseline/x2apic-and-known-tsc",
        check: baseline_timers,
    },
    Check {
        name: "linux-baseline/e1000-on-ioapic",
        check: baseline_e1000,
    },
    Check {
        name: "linux-baseline/dhcp-and-ping",
        check: baseline_network,
    },
    Check {
        name: "linux-baseline/device-interrupts-and-eois-exit",
        check: baseline_exits,
    },
    Check {
        name: "linux-baseline/poweroff",
        check: baseline_poweroff,
    },
    Check {
        name: "linux-bzimage/userspace",
        check: bzimage_userspace,
    },
    Check {
        name: "linux-bzimage/cpuinfo-hypervisor-x2apic",
        check: bzimage_cpu_flags,
    },
    Check {
        name: "linux-bzimage/x2apic-and-known-tsc",
        check: bzimage_timers,
    },
    Check {
        name: "linux-bzimage/poweroff",
        check: bzimage_poweroff,
    },
];

pub const APICV_CHECKS: &[Check] = &[
    Check {
        name: "linux-apicv/userspace",
        check: apicv_userspace,
    },
    Check {
        name: "linux-apicv/x2apic-and-known-tsc",
        check: apicv_timers,
    },
    Check {
        name: "linux-apicv/e1000-on-ioapic",
        check: apicv_e1000,
    },
    Check {
        name: "linux-apicv/dhcp-and-ping",
        check: apicv_network,
    },
    Check {
        name: "linux-apicv/device-interrupts-posted-level-eois-exit",
        check: apicv_exits,
    },
    Check {
        name: "linux-apicv/net-bench-short-run",
        check: apicv_net_workload,
    },
    Check {
        name: "linux-apicv/poweroff",
        check: apicv_poweroff,
    },
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::suite::tests::run_check;

    /// What a Linux guest's run under APICv prints that the exit check reads.
    const APICV_SERIAL: &str = "\
[guest linux-apicv] EXITLESS-LINUX: interrupts-after:  24:         52   IO-APIC  10-fasteoi   eth0
summary: guest_exits guest=linux-apicv total=20057 ExternalInterrupt=52 Wrmsr=3685 VirtualizedEoi=52
summary: guest_interrupts guest=linux-apicv injected=0 posted=4446 host_interrupts=0 stray=0 refused_routings=0 eoi_exits=52
";

    #[test]
    fn apicv_exits_show_posted_delivery_with_level_eoi_exits_only() {
        assert_eq!(run_check(apicv_exits, APICV_SERIAL), Ok(()));
        let broken = [
            // Injected after all, or a device interrupt without an exit.
            APICV_SERIAL.replace("injected=0", "injected=52"),
            APICV_SERIAL.replace("ExternalInterrupt=52", "ExternalInterrupt=12"),
            // Level EOIs that did not exit (the IOAPIC would never see them), or EOI exits that
            // were not EOI-induced.
            APICV_SERIAL.replace("VirtualizedEoi=52", "VirtualizedEoi=0"),
            APICV_SERIAL.replace("eoi_exits=52", "eoi_exits=0"),
            // No device interrupts at all.
            APICV_SERIAL.replace("         52   IO-APIC", "          0   IO-APIC"),
        ];
        for serial in &broken {
            assert!(run_check(apicv_exits, serial).is_err(), "passed: {serial}");
        }
        // The same run read as ELI or baseline fails: each mode's check tells them apart.
        assert!(run_check(eli_exits, &APICV_SERIAL.replace("linux-apicv", "linux-eli")).is_err());
        assert!(run_check(
            baseline_exits,
            &APICV_SERIAL.replace("linux-apicv", "linux-baseline")
        )
        .is_err());
    }
}
