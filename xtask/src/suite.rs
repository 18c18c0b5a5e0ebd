//! The emulator tests, as data: each [`Boot`] is one emulator run of one image, and feeds the tests
//! in its `checks` plus one test per RESULT line the kernel prints. Add a test by adding a check or
//! a boot here (guest tests, `vtd-...` tests).

use clap::ValueEnum;

use crate::config::ImageConfig;
use crate::emulator::{BootOutput, Emulator};
use crate::judge::SerialReport;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
pub enum Tier {
    /// Host unit tests (cargo test of exitless-abi, hypervisor's lib, xtask).
    Host,
    /// `cargo fmt --check` and `cargo clippy -D warnings` of every crate for each of its targets.
    Lint,
    /// Bochs 2.7 (VT-x with EPT; no ACPI, no IOMMU).
    Bochs,
    /// QEMU q35 TCG (VT-d, edu; no VT-x).
    #[value(name = "qemu-tcg")]
    QemuTcg,
    /// Nested QEMU/KVM (VT-x and VT-d), where /dev/kvm offers VMX.
    #[value(name = "qemu-kvm")]
    QemuKvm,
}

impl Tier {
    pub const ALL: [Tier; 5] = [
        Tier::Host,
        Tier::Lint,
        Tier::Bochs,
        Tier::QemuTcg,
        Tier::QemuKvm,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Tier::Host => "host",
            Tier::Lint => "lint",
            Tier::Bochs => "bochs",
            Tier::QemuTcg => "qemu-tcg",
            Tier::QemuKvm => "qemu-kvm",
        }
    }

    pub fn emulator(self) -> Option<Emulator> {
        match self {
            Tier::Host | Tier::Lint => None,
            Tier::Bochs => Some(Emulator::Bochs),
            Tier::QemuTcg => Some(Emulator::QemuTcg),
            Tier::QemuKvm => Some(Emulator::QemuKvm),
        }
    }
}

/// What a check gets: the serial log parsed, and the raw boot output.
pub struct Evidence<'a> {
    pub report: &'a SerialReport,
    pub boot: &'a BootOutput,
}

/// One named test judged from a boot.
pub struct Check {
    pub name: &'static str,
    pub check: fn(&Evidence<'_>) -> Result<(), String>,
}

/// When a boot is over.
#[derive(Clone, Copy)]
pub enum StopWhen {
    /// The kernel printed `EXITLESS-POWEROFF` (then the emulator gets a grace period to exit).
    PowerOff,
    /// A custom condition on the serial log; the emulator is killed at once when it holds.
    Log(fn(&str) -> bool),
}

/// One emulator run and the tests it feeds.
pub struct Boot {
    /// Names the boot's directory, target/xtask/test/<run-id>/<id>/.
    pub id: &'static str,
    pub tier: Tier,
    pub config: fn() -> ImageConfig,
    pub stop: StopWhen,
    /// Whether the kernel's own RESULT lines become tests `TIER/SUITE/NAME` (SUITE from BEGIN).
    pub kernel_results: bool,
    pub checks: &'static [Check],
}

const BOOT_PROTOCOL: Check = Check {
    name: "boot-protocol",
    check: boot_protocol,
};
const VMX_EPT: Check = Check {
    name: "vmx-ept",
    check: vmx_with_ept,
};
const NO_VMX: Check = Check {
    name: "no-vmx",
    check: no_vmx,
};
const DRHD: Check = Check {
    name: "drhd",
    check: qemu_drhd,
};
const EDU_MSI: Check = Check {
    name: "edu-msi",
    check: edu_with_msi,
};
const IOAPIC: Check = Check {
    name: "ioapic",
    check: ioapic_at_default_base,
};
const ACPI: Check = Check {
    name: "acpi",
    check: acpi_from_rsdp,
};

pub const BOOTS: &[Boot] = &[
    Boot {
        id: "bochs-boot",
        tier: Tier::Bochs,
        config: bochs_guests,
        stop: StopWhen::PowerOff,
        kernel_results: true,
        checks: &[
            Check {
                name: "boot-protocol",
                check: boot_protocol,
            },
            Check {
                name: "vmx-ept",
                check: vmx_with_ept,
            },
            Check {
                name: "no-iommu",
                check: no_iommu,
            },
            Check {
                name: "ioapic",
                check: ioapic_at_default_base,
            },
            Check {
                name: "acpi-fallback",
                check: acpi_absent,
            },
            Check {
                name: "shared-intx-line-refused",
                check: crate::linux_suite::shared_line_refused,
            },
        ],
    },
    // Debian's Linux under Exitless with the e1000 assigned, in both modes (issue 9), after kernels
    // it must refuse. A boot of its own: the loader reads every module, and the vmlinux is 63 MiB.
    Boot {
        id: "bochs-linux-eli",
        tier: Tier::Bochs,
        config: crate::linux_suite::config_eli,
        stop: StopWhen::PowerOff,
        kernel_results: true,
        checks: crate::linux_suite::ELI_CHECKS,
    },
    Boot {
        id: "bochs-linux-baseline",
        tier: Tier::Bochs,
        config: crate::linux_suite::config_baseline,
        stop: StopWhen::PowerOff,
        kernel_results: true,
        checks: crate::linux_suite::BASELINE_CHECKS,
    },
    Boot {
        id: "bochs-linux-apicv",
        tier: Tier::Bochs,
        config: crate::linux_suite::config_apicv,
        stop: StopWhen::PowerOff,
        kernel_results: true,
        checks: crate::linux_suite::APICV_CHECKS,
    },
    // The interrupt test guest bare metal: the same binary the hypervisor runs, on the real (emulated)
    // x2APIC, IOAPIC and COM2, so guest tests stay honest baselines.
    Boot {
        id: "bochs-bare-irq",
        tier: Tier::Bochs,
        config: || ImageConfig::emulator().kernel("guests/irq.elf"),
        stop: StopWhen::PowerOff,
        kernel_results: true,
        checks: &[Check {
            name: "bare-irq-protocol",
            check: boot_protocol,
        }],
    },
    // The edu guest bare metal on QEMU's real (emulated) edu, MSI and xAPIC: the same binary the
    // qemu-kvm tier runs with the edu assigned, so its checks are proven against the device.
    Boot {
        id: "qemu-tcg-bare-edu",
        tier: Tier::QemuTcg,
        config: || ImageConfig::emulator().kernel("guests/edu.elf"),
        stop: StopWhen::PowerOff,
        kernel_results: true,
        checks: &[Check {
            name: "bare-edu-protocol",
            check: boot_protocol,
        }],
    },
    Boot {
        id: "qemu-tcg-boot",
        tier: Tier::QemuTcg,
        config: ImageConfig::emulator,
        stop: StopWhen::PowerOff,
        kernel_results: true,
        checks: &[BOOT_PROTOCOL, NO_VMX, DRHD, EDU_MSI, IOAPIC, ACPI],
    },
    Boot {
        id: "qemu-tcg-exception",
        tier: Tier::QemuTcg,
        config: || ImageConfig::selftest("exception"),
        stop: StopWhen::PowerOff,
        kernel_results: false,
        checks: &[Check {
            name: "exception-report",
            check: ud_reported_then_poweroff,
        }],
    },
    // The production kernel asked for a self-test it does not have: it must say so and boot on.
    Boot {
        id: "qemu-tcg-production-selftest",
        tier: Tier::QemuTcg,
        config: || ImageConfig::emulator().with("selftest", "exception"),
        stop: StopWhen::PowerOff,
        kernel_results: false,
        checks: &[Check {
            name: "production-has-no-selftest",
            check: selftest_refused_then_clean_poweroff,
        }],
    },
    Boot {
        id: "qemu-tcg-vtd",
        tier: Tier::QemuTcg,
        config: || ImageConfig::selftest("vtd"),
        stop: StopWhen::PowerOff,
        kernel_results: true,
        checks: &[Check {
            name: "vtd-boot-protocol",
            check: boot_protocol,
        }],
    },
    // A guest's DMA domain as the runner builds it, driven by the edu devices without VT-x.
    Boot {
        id: "qemu-tcg-vtd-guest",
        tier: Tier::QemuTcg,
        config: || ImageConfig::selftest("vtd-guest"),
        stop: StopWhen::PowerOff,
        kernel_results: true,
        checks: &[Check {
            name: "vtd-guest-protocol",
            check: boot_protocol,
        }],
    },
    Boot {
        id: "qemu-tcg-assignment",
        tier: Tier::QemuTcg,
        config: refused_assignments,
        stop: StopWhen::PowerOff,
        kernel_results: true,
        checks: &[
            Check {
                name: "assignment-boot-protocol",
                check: boot_protocol,
            },
            Check {
                name: "assignment-missing-bdf",
                check: missing_bdf_refused,
            },
            Check {
                name: "assignment-same-bdf-twice",
                check: same_bdf_twice_refused,
            },
            Check {
                name: "assignment-host-bridge",
                check: host_bridge_refused,
            },
            Check {
                name: "assignment-shared-requester-id",
                check: shared_requester_id_refused,
            },
        ],
    },
    Boot {
        id: "qemu-tcg-missing-kernel",
        tier: Tier::QemuTcg,
        config: || ImageConfig::emulator().kernel("missing.elf"),
        stop: StopWhen::Log(firmware_back_after_loader_error),
        kernel_results: false,
        checks: &[Check {
            name: "loader-missing-kernel",
            check: loader_error_then_firmware,
        }],
    },
    Boot {
        id: "qemu-kvm-boot",
        tier: Tier::QemuKvm,
        // Real VT-x: the guests that need no emulator-specific device run here too.
        config: || {
            ImageConfig::emulator()
                .guest(
                    "eptfault",
                    &[
                        ("image", "guests/ept_violation.elf"),
                        ("memory_mib", "8"),
                        ("expect_stop", "EPT violation"),
                    ],
                )
                .guest(
                    "basic",
                    &[("image", "guests/basic.elf"), ("memory_mib", "8")],
                )
                .guest("edu", &EDU_GUEST)
        },
        stop: StopWhen::PowerOff,
        kernel_results: true,
        checks: &[BOOT_PROTOCOL, VMX_EPT, DRHD, EDU_MSI, IOAPIC, ACPI],
    },
];

/// The edu guest with the edu QEMU puts at 00:03.0 assigned (`emulator::qemu_args`), its MSI
/// delivered ELI-style.
const EDU_GUEST: [(&str, &str); 4] = [
    ("image", "guests/edu.elf"),
    ("memory_mib", "8"),
    ("interrupts", "eli"),
    ("pci", "00:03.0"),
];

/// The Bochs image: the boot summary, then guests run one after the other. The EPT-violation guest runs
/// first so the guests after it show that the host ran on.
fn bochs_guests() -> ImageConfig {
    ImageConfig::emulator()
        .guest(
            "eptfault",
            &[
                ("image", "guests/ept_violation.elf"),
                ("memory_mib", "8"),
                ("expect_stop", "EPT violation"),
            ],
        )
        .guest(
            "basic",
            &[("image", "guests/basic.elf"), ("memory_mib", "8")],
        )
        // Hostile guests (issue 8), each followed by well-behaved ones that prove the host and the
        // next guest untouched: CPU exceptions and refused writes in both modes, then a triple fault;
        // a guest that ends in its device handler without EOI, then the irq suite on the same vector;
        // the CPU-state checker twice (the second finds nothing of the first); guests that never give
        // the CPU back or point their IDT at non-RAM; then the pci guest.
        .guest(
            "hostile-baseline",
            &hostile_guest("guests/hostile_cpu.elf", "baseline", None),
        )
        .guest(
            "hostile-eli",
            &hostile_guest("guests/hostile_cpu.elf", "eli", None),
        )
        .guest(
            "hostile-triple",
            &hostile_guest(
                "guests/hostile_triple.elf",
                "baseline",
                Some("triple fault"),
            ),
        )
        .guest(
            "no-eoi-baseline",
            &device_guest("guests/hostile_no_eoi.elf", "baseline"),
        )
        .guest("irq-baseline", &irq_guest("baseline"))
        .guest(
            "no-eoi-eli",
            &device_guest("guests/hostile_no_eoi.elf", "eli"),
        )
        .guest("irq-eli", &irq_guest("eli"))
        .guest(
            "no-eoi-apicv",
            &device_guest("guests/hostile_no_eoi.elf", "apicv"),
        )
        .guest("irq-apicv", &irq_guest("apicv"))
        .guest(
            "hostile-irq-apicv",
            &hostile_guest(HOSTILE_IRQ, "apicv", None),
        )
        .guest("hostile-irq-eli", &hostile_guest(HOSTILE_IRQ, "eli", None))
        .guest(
            "hostile-irq-baseline",
            &hostile_guest(HOSTILE_IRQ, "baseline", None),
        )
        .guest("spin-eli", &stuck_guest("eli"))
        .guest("spin-baseline", &stuck_guest("baseline"))
        .guest(
            "idt-nonram-eli",
            &hostile_guest(
                "guests/hostile_idt_nonram.elf",
                "eli",
                Some("EPT violation"),
            ),
        )
        // Bochs has no IOMMU: assignment needs the explicit unsafe setting there (and warns).
        .with("unsafe_no_iommu", "yes")
        .guest(
            "pci",
            &[
                ("image", "guests/pci.elf"),
                ("memory_mib", "8"),
                ("pci", BOCHS_UHCI),
            ],
        )
        // OVMF puts the e1000 on line 10 with the PIIX4 power-management function.
        .guest("shared-line", &crate::linux_suite::shared_line_guest())
}

const HOSTILE_IRQ: &str = "guests/hostile_irq.elf";

/// PIIX3's UHCI controller in Bochs' i440FX machine: an I/O BAR, no MSI, no IOMMU in front of it.
const BOCHS_UHCI: &str = "00:01.2";

/// Guests whose device assignment the kernel must refuse at boot (QEMU q35: the edu at 00:03.0 exists,
/// 00:1c.7 does not, 00:00.0 is the host bridge, the edus behind the PCIe-to-PCI bridge share one
/// requester ID). Only refused guests: QEMU TCG has no VMX to run others. Each expects to be stopped
/// with "assignment refused", so the `guests` suite passes only if all of them were refused.
fn refused_assignments() -> ImageConfig {
    let refused = |pci: &'static str| {
        [
            ("image", "guests/basic.elf"),
            ("memory_mib", "8"),
            ("pci", pci),
            ("expect_stop", "assignment refused"),
        ]
    };
    ImageConfig::emulator()
        .guest("missing", &refused("00:1c.7"))
        .guest("first", &refused("00:03.0"))
        .guest("second", &refused("00:03.0"))
        .guest("hostbridge", &refused("00:00.0"))
        .guest(BRIDGED[0].0, &refused(BRIDGED[0].1))
        .guest(BRIDGED[1].0, &refused(BRIDGED[1].1))
}

/// The two edus QEMU TCG puts behind one PCIe-to-PCI bridge (`emulator::SHARED_REQUESTER_ID_DEVICES`:
/// root port 00:09.0, bridge 01:00.0, secondary bus 2), one per guest.
const BRIDGED: [(&str, &str); 2] = [("bridged-a", "02:01.0"), ("bridged-b", "02:02.0")];

/// The requester ID both bridged edus reach VT-d with: the bridge's secondary bus, devfn 00.0
/// (PCIe-to-PCI bridge spec 1.0 §2.3).
const BRIDGED_REQUESTER: &str = "02:00.0";

/// A `device assignment refused: ...` log line containing every one of `parts`.
fn refusal_logged(e: &Evidence<'_>, parts: &[&str]) -> Result<(), String> {
    let refusals: Vec<&str> = e
        .boot
        .serial
        .lines()
        .filter(|l| l.contains("device assignment refused: "))
        .collect();
    if refusals.iter().any(|l| parts.iter().all(|p| l.contains(p))) {
        return Ok(());
    }
    Err(format!(
        "no `device assignment refused:` line with {parts:?}; refusals logged: {refusals:?}"
    ))
}

fn missing_bdf_refused(e: &Evidence<'_>) -> Result<(), String> {
    refusal_logged(
        e,
        &[
            "guest missing: PCI device 00:1c.7 does not exist on this machine (present: 00:00.0,",
            "00:03.0",
            "fix `pci =` in [guest missing]",
        ],
    )?;
    e.report.expect_fact(
        "assignment",
        &[
            ("guest", "missing"),
            ("refused", "yes"),
            ("devices", "none"),
        ],
    )
}

/// Both guests are refused; the edu is still resolved to QEMU's one DRHD (its scope names 00:03.0).
fn same_bdf_twice_refused(e: &Evidence<'_>) -> Result<(), String> {
    refusal_logged(
        e,
        &["guest first and guest second are both given PCI device 00:03.0"],
    )?;
    for guest in ["first", "second"] {
        e.report.expect_fact(
            "assignment",
            &[
                ("guest", guest),
                ("refused", "yes"),
                ("devices", "00:03.0:unit0"),
            ],
        )?;
    }
    Ok(())
}

fn host_bridge_refused(e: &Evidence<'_>) -> Result<(), String> {
    refusal_logged(
        e,
        &["guest hostbridge: 00:00.0 is a host bridge (class 06/00)"],
    )?;
    e.report
        .expect_fact("assignment", &[("guest", "hostbridge"), ("refused", "yes")])
}

/// Two guests given one edu each of the pair behind one PCIe-to-PCI bridge: the refusal names both
/// guests, both functions and the shared requester ID, and neither guest is started.
fn shared_requester_id_refused(e: &Evidence<'_>) -> Result<(), String> {
    let [(guest_a, bdf_a), (guest_b, bdf_b)] = BRIDGED;
    refusal_logged(
        e,
        &[
            &format!("guest {guest_a}: {bdf_a} and guest {guest_b}: {bdf_b}"),
            &format!("share requester ID {BRIDGED_REQUESTER}"),
            "list both in `pci =` of one guest",
        ],
    )?;
    for (guest, bdf) in BRIDGED {
        let devices = format!("{bdf}:unit0");
        e.report.expect_fact(
            "assignment",
            &[
                ("guest", guest),
                ("refused", "yes"),
                ("devices", devices.as_str()),
                ("requesters", BRIDGED_REQUESTER),
            ],
        )?;
        guest_not_started(e, guest)?;
    }
    Ok(())
}

/// The kernel said it did not start `guest`, and nothing shows it running: neither the runner's
/// `guest NAME: N MiB at host ...` line nor console output `[guest NAME] ...`.
fn guest_not_started(e: &Evidence<'_>, guest: &str) -> Result<(), String> {
    let not_started = format!("guest {guest} not started: device assignment refused");
    if !e.boot.serial.lines().any(|l| l.contains(&not_started)) {
        return Err(format!("no `{not_started}` line"));
    }
    let (setup, console) = (format!("guest {guest}: "), format!("[guest {guest}] "));
    if let Some(line) =
        e.boot.serial.lines().find(|l| {
            (l.contains(&setup) && l.contains(" MiB at host ")) || l.starts_with(&console)
        })
    {
        return Err(format!("guest {guest} ran: {line}"));
    }
    Ok(())
}

/// The interrupt test guest with COM2 (ports and IOAPIC pin 3) assigned, in `mode`.
fn irq_guest(mode: &'static str) -> [(&'static str, &'static str); 5] {
    device_guest("guests/irq.elf", mode)
}

/// A guest with COM2 (its ports and IOAPIC pin 3) in interrupt mode `mode`.
fn device_guest(image: &'static str, mode: &'static str) -> [(&'static str, &'static str); 5] {
    [
        ("image", image),
        ("memory_mib", "8"),
        ("interrupts", mode),
        ("ports", "0x2f8-0x2ff"),
        ("ioapic_pins", "3"),
    ]
}

/// A hostile guest `image` in `mode`; `stop` is the reason it must be stopped with, where it must not
/// power off by itself.
fn hostile_guest(
    image: &'static str,
    mode: &'static str,
    stop: Option<&'static str>,
) -> Vec<(&'static str, &'static str)> {
    let mut settings = vec![("image", image), ("memory_mib", "8"), ("interrupts", mode)];
    settings.extend(stop.map(|reason| ("expect_stop", reason)));
    settings
}

/// The guest that never gives the CPU back, with a short run budget (20 ms of emulated time: 1e6 TSC
/// ticks in Bochs).
fn stuck_guest(mode: &'static str) -> Vec<(&'static str, &'static str)> {
    let mut settings = hostile_guest("guests/hostile_spin.elf", mode, Some("run budget spent"));
    settings.push(("timeout_ms", "20"));
    settings
}

/// BEGIN, END with agreeing counts, POWEROFF.
fn boot_protocol(e: &Evidence<'_>) -> Result<(), String> {
    e.report.protocol()
}

fn vmx_with_ept(e: &Evidence<'_>) -> Result<(), String> {
    e.report
        .expect_fact("vmx", &[("supported", "yes"), ("ept", "yes")])
}

fn no_vmx(e: &Evidence<'_>) -> Result<(), String> {
    e.report.expect_fact("vmx", &[("supported", "no")])
}

fn no_iommu(e: &Evidence<'_>) -> Result<(), String> {
    e.report.expect_fact("iommu", &[("units", "0")])
}

/// QEMU's intel-iommu: one DRHD at 0xFED90000 with interrupt remapping (emulators.md).
fn qemu_drhd(e: &Evidence<'_>) -> Result<(), String> {
    e.report.expect_fact("iommu", &[("units", "1")])?;
    e.report
        .expect_fact("drhd", &[("base", "0xfed90000"), ("ir", "yes")])
}

fn edu_with_msi(e: &Evidence<'_>) -> Result<(), String> {
    e.report
        .expect_fact("pci_function", &[("id", "1234:11e8"), ("msi", "yes")])
}

fn ioapic_at_default_base(e: &Evidence<'_>) -> Result<(), String> {
    e.report.expect_fact("ioapic", &[("base", "0xfec00000")])
}

/// OVMF under Bochs publishes no ACPI tables: the kernel must say it fell back.
fn acpi_absent(e: &Evidence<'_>) -> Result<(), String> {
    e.report.expect_fact("acpi", &[("source", "none")])
}

fn acpi_from_rsdp(e: &Evidence<'_>) -> Result<(), String> {
    e.report.expect_fact("acpi", &[("source", "rsdp")])
}

/// `selftest = exception`: the kernel executes ud2 after the summary; its handler must report
/// `EXCEPTION #UD ... vector=6` and then power off with a non-zero code.
fn ud_reported_then_poweroff(e: &Evidence<'_>) -> Result<(), String> {
    let lines: Vec<&str> = e.boot.serial.lines().collect();
    let Some(at) = lines
        .iter()
        .position(|l| l.contains("EXCEPTION #UD") && l.contains("vector=6"))
    else {
        return Err("no line with `EXCEPTION #UD` and `vector=6`".into());
    };
    match SerialReport::parse(&lines[at..].join("\n")).poweroff {
        Some(0) => Err("EXITLESS-POWEROFF 0 after the exception (want non-zero)".into()),
        Some(_) => Ok(()),
        None => Err("no EXITLESS-POWEROFF after the exception report".into()),
    }
}

/// What the production kernel logs for `selftest = ...` (it has no self-test code).
const NO_SELFTEST_MESSAGE: &str = "this kernel was built without self-tests";

/// The production kernel with `selftest = exception`: it says it has no self-tests, runs none
/// (no #UD) and powers off with 0 like a plain boot.
fn selftest_refused_then_clean_poweroff(e: &Evidence<'_>) -> Result<(), String> {
    if !e.boot.serial.contains(NO_SELFTEST_MESSAGE) {
        return Err(format!("no line saying `{NO_SELFTEST_MESSAGE}`"));
    }
    if e.boot.serial.contains("EXCEPTION #") {
        return Err("an exception was reported: the self-test ran".into());
    }
    match e.report.poweroff {
        Some(0) => Ok(()),
        Some(code) => Err(format!("EXITLESS-POWEROFF {code} (want 0)")),
        None => Err("no EXITLESS-POWEROFF".into()),
    }
}

/// What OVMF prints on the serial console once the boot option it ran has returned. Seen under
/// QEMU 7.2 with Debian's OVMF 2022.11: `BdsDxe: failed to start Boot0002 "UEFI Misc Device" from
/// PciRoot(0x0)/Pci(0x4,0x0): Not Found` (the loader's status), then iPXE, then the shell.
const FIRMWARE_MARKERS: &[&str] = &[
    "BdsDxe: failed to start",
    "UEFI Interactive Shell",
    "Shell>",
];

/// Index of the loader's "not found" line and of the first firmware line after it.
fn loader_error_and_firmware(serial: &str) -> (Option<usize>, Option<usize>) {
    let lines: Vec<&str> = serial.lines().collect();
    let error = lines.iter().position(|l| l.contains("not found"));
    let firmware = error.and_then(|at| {
        lines[at + 1..]
            .iter()
            .position(|l| FIRMWARE_MARKERS.iter().any(|m| l.contains(m)))
            .map(|i| at + 1 + i)
    });
    (error, firmware)
}

fn firmware_back_after_loader_error(serial: &str) -> bool {
    loader_error_and_firmware(serial).1.is_some()
}

/// `kernel = missing.elf`: the loader says the file is not found and returns to the firmware.
fn loader_error_then_firmware(e: &Evidence<'_>) -> Result<(), String> {
    match loader_error_and_firmware(&e.boot.serial) {
        (None, _) => Err("no loader error line containing `not found`".into()),
        (Some(_), None) => Err(format!(
            "the loader reported the missing kernel but the firmware printed none of {FIRMWARE_MARKERS:?} afterwards"
        )),
        (Some(_), Some(_)) if e.report.poweroff.is_some() => {
            Err("a kernel ran and powered off although its file is missing".into())
        }
        (Some(_), Some(_)) => Ok(()),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::emulator::Ending;
    use std::path::PathBuf;

    fn boot_output(serial: &str) -> BootOutput {
        BootOutput {
            serial: serial.into(),
            serial_path: PathBuf::from("serial.log"),
            emulator_log: PathBuf::from("emulator.out"),
            ending: Ending::Done { exit: None },
            elapsed: std::time::Duration::ZERO,
        }
    }

    pub(crate) fn run_check(
        check: fn(&Evidence<'_>) -> Result<(), String>,
        serial: &str,
    ) -> Result<(), String> {
        let boot = boot_output(serial);
        let report = SerialReport::parse(serial);
        check(&Evidence {
            report: &report,
            boot: &boot,
        })
    }

    #[test]
    fn test_names_are_unique_per_tier() {
        let mut seen = std::collections::BTreeSet::new();
        for boot in BOOTS {
            for check in boot.checks {
                assert!(seen.insert((boot.tier, check.name)), "{} twice", check.name);
            }
        }
        let ids: std::collections::BTreeSet<_> = BOOTS.iter().map(|b| b.id).collect();
        assert_eq!(ids.len(), BOOTS.len());
    }

    #[test]
    fn qemu_facts_pass_the_qemu_checks() {
        let serial = "summary: vmx supported=no\n\
                      summary: iommu units=1\n\
                      summary: drhd index=0 base=0xfed90000 ir=yes qi=yes\n\
                      summary: pci_function bdf=00:03.0 id=1234:11e8 class=0x00ff00 msi=yes msix=no\n\
                      summary: ioapic id=0 base=0xfec00000 gsi_base=0\n\
                      summary: acpi source=rsdp revision=2\n";
        for check in [
            no_vmx,
            qemu_drhd,
            edu_with_msi,
            ioapic_at_default_base,
            acpi_from_rsdp,
        ] {
            assert_eq!(run_check(check, serial), Ok(()));
        }
        assert!(run_check(vmx_with_ept, serial).is_err());
        assert!(run_check(no_iommu, serial).is_err());
        let no_ir = serial.replace("ir=yes", "ir=no");
        assert!(run_check(qemu_drhd, &no_ir).is_err());
    }

    #[test]
    fn assignment_checks_need_the_refusal_line_and_the_summary_fact() {
        let serial = "[ERROR] device assignment refused: guest missing: PCI device 00:1c.7 does not exist on \
                      this machine (present: 00:00.0, 00:03.0): fix `pci =` in [guest missing]\n\
                      [ERROR] device assignment refused: guest first and guest second are both given PCI \
                      device 00:03.0; a device belongs to one guest\n\
                      [ERROR] device assignment refused: guest hostbridge: 00:00.0 is a host bridge (class 06/00)\n\
                      summary: assignment guest=missing refused=yes devices=none requesters=none\n\
                      summary: assignment guest=first refused=yes devices=00:03.0:unit0 requesters=00:03.0\n\
                      summary: assignment guest=second refused=yes devices=00:03.0:unit0 requesters=00:03.0\n\
                      summary: assignment guest=hostbridge refused=yes devices=none requesters=none\n";
        for check in [
            missing_bdf_refused,
            same_bdf_twice_refused,
            host_bridge_refused,
        ] {
            assert_eq!(run_check(check, serial), Ok(()));
        }
        let allowed = serial.replace("guest=second refused=yes", "guest=second refused=no");
        assert!(run_check(same_bdf_twice_refused, &allowed).is_err());
        let not_logged = serial.replace("[ERROR] device assignment refused: guest missing", "x");
        assert!(run_check(missing_bdf_refused, &not_logged).is_err());
        let text = refused_assignments().render();
        assert_eq!(text.matches("expect_stop = assignment refused").count(), 6);
        assert!(text.contains("pci = 00:1c.7"));
    }

    /// As QEMU TCG 7.2 printed it with the edus behind the PCIe-to-PCI bridge.
    const SHARED_REQUESTER_SERIAL: &str = "\
        [ERROR] device assignment refused: guest bridged-a: 02:01.0 and guest bridged-b: 02:02.0 \
        share requester ID 02:00.0 (they sit behind the same PCIe-to-PCI or PCI bridge), so VT-d \
        cannot keep their DMA apart: list both in `pci =` of one guest, [guest bridged-a] or \
        [guest bridged-b]\n\
        summary: assignment guest=bridged-a refused=yes devices=02:01.0:unit0 requesters=02:00.0\n\
        summary: assignment guest=bridged-b refused=yes devices=02:02.0:unit0 requesters=02:00.0\n\
        [WARN ] guest bridged-a not started: device assignment refused\n\
        [WARN ] guest bridged-b not started: device assignment refused\n";

    #[test]
    fn shared_requester_id_check_needs_both_guests_refused_and_stopped() {
        let good = SHARED_REQUESTER_SERIAL;
        assert_eq!(run_check(shared_requester_id_refused, good), Ok(()));
        let broken = [
            // The refusal names another requester ID, or is not logged.
            good.replace("share requester ID 02:00.0", "share requester ID 01:00.0"),
            good.replace("device assignment refused: guest bridged-a", "x"),
            // One guest allowed, or its device resolved to the wrong requester.
            good.replace("guest=bridged-b refused=yes", "guest=bridged-b refused=no"),
            good.replace(
                "02:02.0:unit0 requesters=02:00.0",
                "02:02.0:unit0 requesters=02:02.0",
            ),
            // A guest was started after all.
            good.replace(
                "[WARN ] guest bridged-b not started",
                "[WARN ] guest bridged-b",
            ),
            format!("{good}[INFO ] guest bridged-a: 8 MiB at host 0x1000000, image ...\n"),
            format!("{good}[guest bridged-b] hello\n"),
        ];
        for serial in &broken {
            assert!(
                run_check(shared_requester_id_refused, serial).is_err(),
                "passed: {serial}"
            );
        }
        let text = refused_assignments().render();
        for (guest, bdf) in BRIDGED {
            let section = text
                .split(&format!("[guest {guest}]"))
                .nth(1)
                .unwrap_or_else(|| panic!("no [guest {guest}]"));
            let section = section.split("[guest ").next().unwrap();
            assert!(section.contains(&format!("pci = {bdf}")), "{section}");
        }
    }

    #[test]
    fn edu_guest_runs_bare_on_tcg_and_assigned_on_kvm() {
        let boot = |id: &str| BOOTS.iter().find(|b| b.id == id).unwrap();
        let bare = boot("qemu-tcg-bare-edu");
        assert_eq!(bare.tier, Tier::QemuTcg);
        assert!(bare.kernel_results);
        assert_eq!((bare.config)().kernel, "guests/edu.elf");
        let kvm = (boot("qemu-kvm-boot").config)().render();
        let section = kvm
            .split("[guest edu]")
            .nth(1)
            .expect("an [guest edu] section");
        let section = section.split("[guest ").next().unwrap();
        for line in [
            "image = guests/edu.elf",
            "interrupts = eli",
            "pci = 00:03.0",
        ] {
            assert!(section.contains(line), "{line} missing from {section}");
        }
        let args = crate::emulator::qemu_args(
            Emulator::QemuKvm,
            std::path::Path::new("/x.img"),
            std::path::Path::new("/v.fd"),
            std::path::Path::new("/s.log"),
        );
        assert!(args.iter().any(|a| a == "edu,addr=0x3"));
    }

    #[test]
    fn exception_report_needs_ud_then_nonzero_poweroff() {
        let good = "summary: x a=b\nEXCEPTION #UD vector=6 error=0x0 rip=0xffff800000001234\nEXITLESS-POWEROFF 3\n";
        assert_eq!(run_check(ud_reported_then_poweroff, good), Ok(()));
        let zero = good.replace("POWEROFF 3", "POWEROFF 0");
        assert!(run_check(ud_reported_then_poweroff, &zero).is_err());
        let before = "EXITLESS-POWEROFF 3\nEXCEPTION #UD vector=6\n";
        assert!(run_check(ud_reported_then_poweroff, before).is_err());
        assert!(run_check(
            ud_reported_then_poweroff,
            "EXCEPTION #GP vector=13\nEXITLESS-POWEROFF 3\n"
        )
        .is_err());
    }

    #[test]
    fn selftest_boots_use_the_selftest_kernel_and_no_other_boot_does() {
        for boot in BOOTS {
            let config = (boot.config)();
            let selftest = config
                .settings
                .iter()
                .any(|(k, v)| k == "selftest" && v != "none");
            if boot.id == "qemu-tcg-production-selftest" {
                assert!(selftest && !config.boots_selftest_kernel());
            } else {
                assert_eq!(config.boots_selftest_kernel(), selftest, "{}", boot.id);
            }
        }
    }

    #[test]
    fn production_selftest_check_needs_the_message_no_exception_and_poweroff_0() {
        let good =
            "[WARN ] selftest = exception: this kernel was built without self-tests, so none \
                    runs\nEXITLESS-POWEROFF 0\n";
        assert_eq!(
            run_check(selftest_refused_then_clean_poweroff, good),
            Ok(())
        );
        let silent = "EXITLESS-POWEROFF 0\n";
        assert!(run_check(selftest_refused_then_clean_poweroff, silent).is_err());
        let ran = good.replace(
            "EXITLESS-POWEROFF 0",
            "EXCEPTION #UD vector=6\nEXITLESS-POWEROFF 3",
        );
        assert!(run_check(selftest_refused_then_clean_poweroff, &ran).is_err());
        let failed = good.replace("POWEROFF 0", "POWEROFF 1");
        assert!(run_check(selftest_refused_then_clean_poweroff, &failed).is_err());
    }

    #[test]
    fn missing_kernel_needs_error_then_firmware() {
        let good = "BdsDxe: starting Boot0002 \"UEFI Misc Device\"\n\
                    exitless-boot: \\exitless\\missing.elf not found: copy it to the ESP\n\
                    BdsDxe: failed to start Boot0002 \"UEFI Misc Device\" from PciRoot(0x0)/Pci(0x4,0x0): Not Found\n";
        assert!(firmware_back_after_loader_error(good));
        assert_eq!(run_check(loader_error_then_firmware, good), Ok(()));
        let no_firmware = "exitless-boot: \\exitless\\missing.elf not found\n";
        assert!(!firmware_back_after_loader_error(no_firmware));
        assert!(run_check(loader_error_then_firmware, no_firmware).is_err());
        // Firmware text before the error does not count.
        let before = "UEFI Interactive Shell v2.2\nmissing.elf not found\n";
        assert!(!firmware_back_after_loader_error(before));
    }
}
