//! The boot-time device-assignment plan: which PCI functions each guest gets, the requester ID
//! VT-d will see for each and the remapping unit (DRHD) that covers it, and the configurations
//! that must be refused before any guest runs.
//!
//! Pure logic over the configuration, the enumerated PCI topology and the DMAR's units: the kernel
//! calls [`plan`] once, logs [`AssignmentPlan::refusals`] and [`AssignmentPlan::warnings`], prints
//! [`AssignmentPlan::write_summary`] and does not run a refused guest.

use alloc::collections::BTreeSet;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::{self, Write};

use crate::config::GuestConfig;
use crate::iommu::scope::covering_unit;
use crate::pci::{Bdf, PciFunction, PciTopology};
use crate::platform::IommuUnit;

/// How many present functions a "does not exist" message lists before it says how many more.
const PRESENT_LISTED: usize = 24;

/// One function given to a guest: the plan's entry is what the IOMMU confines (the function, its
/// requester ID, the unit covering it).
pub use crate::iommu::DmaDevice as AssignedDevice;

/// One guest's part of the plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestDevices {
    pub guest: String,
    /// The configured functions that exist and may be assigned at all (refused guests included).
    pub devices: Vec<AssignedDevice>,
    /// The INTx lines of its functions that raise one, as the guest's platform describes them.
    pub intx: Vec<IntxLine>,
    /// Whether the guest asked for any device (`pci =` not empty).
    pub requested: bool,
    /// A refusal names this guest: it must not run.
    pub refused: bool,
}

/// A function's legacy interrupt: its pin and the IOAPIC input it reaches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IntxLine {
    pub bdf: Bdf,
    /// Interrupt Pin: 1..=4 for INTA#..INTD# (PCI 3.0 6.2.4).
    pub pin: u8,
    /// The IOAPIC input (GSI). Taken from the Interrupt Line firmware wrote: on PIIX/i440fx
    /// machines (Bochs) the PIRQ router's IRQ is also the IOAPIC pin. Machines whose INTx reach
    /// other pins (ICH9: GSI 16-23) describe that only in AML `_PRT`, which Exitless does not
    /// interpret: there `ioapic_pins` must name the pin.
    pub gsi: u8,
}

/// Where a function's INTx reaches the IOAPIC, as far as Exitless can know it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IntxRouting {
    /// No ACPI (Bochs' i440FX under OVMF): the firmware runs the PIIX PIRQ router, whose IRQ it
    /// writes to Interrupt Line and which also drives that IOAPIC input.
    InterruptLine,
    /// An ACPI machine: INTx reach the IOAPIC where the DSDT's `_PRT` says (ICH9: GSI 16-23), and
    /// Interrupt Line holds the 8259 IRQ. Exitless does not interpret AML, so INTx lines are neither
    /// given to guests automatically (guests use MSI/MSI-X, or `ioapic_pins` names the pin) nor
    /// checked for sharing.
    Unknown,
}

/// Interrupt Line values that name no IRQ: 0 (unset) and 0xFF ("unknown or no connection",
/// PCI 3.0 6.2.4). The IOAPIC has 24 pins.
fn intx_gsi(function: &PciFunction) -> Option<u8> {
    (function.interrupt_pin != 0 && (1..24).contains(&function.interrupt_line))
        .then_some(function.interrupt_line)
}

/// Why a bridge may not be assigned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BridgeKind {
    /// Class 06/00: the root complex's own function, which the host needs.
    Host,
    /// Class 06/04 or a type-1 header: owns a bus, so it would hand the guest every device behind it.
    PciToPci,
}

/// A configuration that cannot be assigned safely. Every refused guest is named by
/// [`Refusal::guests`]; [`fmt::Display`] is the boot-log message, saying what to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    NoSuchDevice {
        guest: String,
        bdf: Bdf,
        present: Vec<Bdf>,
    },
    Bridge {
        guest: String,
        bdf: Bdf,
        kind: BridgeKind,
    },
    /// The same function in two guests' `pci =`.
    AssignedTwice {
        bdf: Bdf,
        first: String,
        second: String,
    },
    /// Two guests' functions reach VT-d with one requester ID (behind one PCIe-to-PCI or
    /// conventional PCI bridge): one context entry, so one domain, would serve both.
    SharedRequesterId {
        requester: Bdf,
        first: (String, Bdf),
        second: (String, Bdf),
    },
    /// Assignment asked for, no remapping unit known, no `unsafe_no_iommu`.
    NoIommu { guest: String, devices: Vec<Bdf> },
    /// No DRHD names the function and no INCLUDE_PCI_ALL unit serves its segment (VT-d 8.3.1).
    NotCovered { guest: String, bdf: Bdf },
    /// An assigned function's INTx line is also the line of a function the guest is not given:
    /// the guest would take (and could mask or starve) the other one's interrupts.
    SharedInterruptLine {
        guest: String,
        bdf: Bdf,
        gsi: u8,
        other: Bdf,
    },
}

impl Refusal {
    /// The guests this refusal stops.
    pub fn guests(&self) -> impl Iterator<Item = &str> {
        let (a, b): (&str, Option<&str>) = match self {
            Refusal::NoSuchDevice { guest, .. }
            | Refusal::Bridge { guest, .. }
            | Refusal::NoIommu { guest, .. }
            | Refusal::NotCovered { guest, .. }
            | Refusal::SharedInterruptLine { guest, .. } => (guest, None),
            Refusal::AssignedTwice { first, second, .. } => (first, Some(second)),
            Refusal::SharedRequesterId { first, second, .. } => (&first.0, Some(&second.0)),
        };
        core::iter::once(a).chain(b)
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::NoSuchDevice {
                guest,
                bdf,
                present,
            } => {
                write!(
                    f,
                    "guest {guest}: PCI device {bdf} does not exist on this machine (present: "
                )?;
                write_list(f, present.iter().take(PRESENT_LISTED))?;
                if present.len() > PRESENT_LISTED {
                    write!(
                        f,
                        " and {} more, see the `summary: pci_function` lines",
                        present.len() - PRESENT_LISTED
                    )?;
                }
                write!(f, "): fix `pci =` in [guest {guest}]")
            }
            Refusal::Bridge {
                guest,
                bdf,
                kind: BridgeKind::Host,
            } => write!(
                f,
                "guest {guest}: {bdf} is a host bridge (class 06/00), which the host needs: \
                 remove it from `pci =` in [guest {guest}]"
            ),
            Refusal::Bridge {
                guest,
                bdf,
                kind: BridgeKind::PciToPci,
            } => write!(
                f,
                "guest {guest}: {bdf} is a PCI-to-PCI bridge, which cannot be assigned: list the \
                 devices behind it in `pci =` in [guest {guest}] instead"
            ),
            Refusal::AssignedTwice { bdf, first, second } => write!(
                f,
                "guest {first} and guest {second} are both given PCI device {bdf}; a device belongs \
                 to one guest: remove it from `pci =` in [guest {first}] or [guest {second}]"
            ),
            Refusal::SharedRequesterId {
                requester,
                first,
                second,
            } => write!(
                f,
                "guest {}: {} and guest {}: {} share requester ID {requester} (they sit behind the \
                 same PCIe-to-PCI or PCI bridge), so VT-d cannot keep their DMA apart: list both in \
                 `pci =` of one guest, [guest {}] or [guest {}]",
                first.0, first.1, second.0, second.1, first.0, second.0
            ),
            Refusal::NoIommu { guest, devices } => {
                write!(f, "guest {guest}: device assignment (")?;
                write_list(f, devices.iter())?;
                write!(
                    f,
                    ") needs an IOMMU and this machine has none (no usable DMAR table; is VT-d \
                     enabled in the firmware setup?); set `unsafe_no_iommu = yes` only if you \
                     accept that the device can DMA anywhere"
                )
            }
            Refusal::NotCovered { guest, bdf } => write!(
                f,
                "guest {guest}: PCI device {bdf} is in no VT-d unit's scope (no DRHD names it and \
                 none includes all of segment {}), so its DMA cannot be remapped: check the \
                 firmware's VT-d setting or remove it from `pci =` in [guest {guest}]",
                bdf.segment()
            ),
            Refusal::SharedInterruptLine {
                guest,
                bdf,
                gsi,
                other,
            } => write!(
                f,
                "guest {guest}: PCI device {bdf} shares interrupt line {gsi} with {other}, which \
                 it is not given: assign {other} to guest {guest} too, or move {bdf} to a slot \
                 whose INTx reaches another line"
            ),
        }
    }
}

/// Something allowed but unsafe, logged as a warning on every boot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Warning {
    /// `unsafe_no_iommu = yes` and no IOMMU: the guest's devices get no DMA remapping at all.
    NoIommu { guest: String, devices: Vec<Bdf> },
    /// A function no guest is given shares an assigned function's requester ID: VT-d treats it as
    /// part of the guest's device.
    UnownedAlias {
        guest: String,
        bdf: Bdf,
        requester: Bdf,
        other: Bdf,
    },
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Warning::NoIommu { guest, devices } => {
                write!(f, "guest {guest}: ")?;
                write_list(f, devices.iter())?;
                write!(
                    f,
                    " assigned WITHOUT an IOMMU (`unsafe_no_iommu = yes`): the device can DMA \
                     anywhere in memory, the hypervisor's and other guests' included"
                )
            }
            Warning::UnownedAlias {
                guest,
                bdf,
                requester,
                other,
            } => write!(
                f,
                "guest {guest}: {bdf} shares requester ID {requester} with {other}, which no guest \
                 is given; VT-d cannot tell them apart, so {other} can DMA into guest {guest}'s \
                 memory: add it to `pci =` in [guest {guest}] if that is intended"
            ),
        }
    }
}

fn write_list<'a>(f: &mut dyn Write, bdfs: impl Iterator<Item = &'a Bdf>) -> fmt::Result {
    for (n, bdf) in bdfs.enumerate() {
        if n > 0 {
            f.write_str(", ")?;
        }
        write!(f, "{bdf}")?;
    }
    Ok(())
}

/// Everything [`plan`] decided.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AssignmentPlan {
    /// One entry per configured guest, in configuration order.
    pub guests: Vec<GuestDevices>,
    pub refusals: Vec<Refusal>,
    pub warnings: Vec<Warning>,
}

impl AssignmentPlan {
    pub fn is_refused(&self, guest: &str) -> bool {
        self.guests.iter().any(|g| g.guest == guest && g.refused)
    }

    /// The devices planned for `guest` (empty for an unknown name).
    pub fn devices(&self, guest: &str) -> &[AssignedDevice] {
        self.guests
            .iter()
            .find(|g| g.guest == guest)
            .map_or(&[], |g| &g.devices)
    }

    /// The INTx lines planned for `guest`.
    pub fn intx(&self, guest: &str) -> &[IntxLine] {
        self.guests
            .iter()
            .find(|g| g.guest == guest)
            .map_or(&[], |g| &g.intx)
    }

    /// One `summary: assignment guest=NAME refused=yes|no devices=BDF:unitN,... requesters=BDF,...`
    /// line per guest that asked for devices (`unitN` is `summary: drhd index=N`; `none` when no
    /// unit translates for it).
    pub fn write_summary(&self, out: &mut dyn Write) -> fmt::Result {
        for guest in self.guests.iter().filter(|g| g.requested) {
            write!(
                out,
                "summary: assignment guest={} refused={} devices=",
                guest.guest,
                if guest.refused { "yes" } else { "no" }
            )?;
            if guest.devices.is_empty() {
                out.write_str("none")?;
            }
            for (n, device) in guest.devices.iter().enumerate() {
                let sep = if n > 0 { "," } else { "" };
                match device.unit {
                    Some(unit) => write!(out, "{sep}{}:unit{unit}", device.bdf)?,
                    None => write!(out, "{sep}{}:none", device.bdf)?,
                }
            }
            out.write_str(" requesters=")?;
            if guest.devices.is_empty() {
                out.write_str("none")?;
            }
            for (n, device) in guest.devices.iter().enumerate() {
                let sep = if n > 0 { "," } else { "" };
                write!(out, "{sep}{}", device.requester)?;
            }
            writeln!(out)?;
        }
        Ok(())
    }
}

/// Checks every guest's `pci =` against the machine and decides who gets what.
///
/// `units` are the VT-d units in DMAR order (empty: no IOMMU). A refusal stops only the guests it
/// names; the others keep their plan.
pub fn plan(
    guests: &[GuestConfig],
    topology: &PciTopology,
    units: &[IommuUnit],
    unsafe_no_iommu: bool,
    intx_routing: IntxRouting,
) -> AssignmentPlan {
    let mut plan = AssignmentPlan::default();

    // Per function: it must exist and not be a bridge.
    for guest in guests {
        let mut devices = Vec::new();
        let mut intx = Vec::new();
        let mut seen = BTreeSet::new();
        for &bdf in guest.pci.iter().filter(|bdf| seen.insert(**bdf)) {
            let Some(function) = topology.find(bdf) else {
                plan.refusals.push(Refusal::NoSuchDevice {
                    guest: guest.name.clone(),
                    bdf,
                    present: topology.functions.iter().map(|f| f.bdf).collect(),
                });
                continue;
            };
            if let Some(kind) = bridge_kind(function) {
                plan.refusals.push(Refusal::Bridge {
                    guest: guest.name.clone(),
                    bdf,
                    kind,
                });
                continue;
            }
            devices.push(AssignedDevice {
                bdf,
                requester: topology.iommu_requester(bdf).unwrap_or(bdf),
                unit: covering_unit(bdf, topology, units),
            });
            if let Some(gsi) =
                intx_gsi(function).filter(|_| intx_routing == IntxRouting::InterruptLine)
            {
                intx.push(IntxLine {
                    bdf,
                    pin: function.interrupt_pin,
                    gsi,
                });
            }
        }
        // A line is the guest's only if every function on it is.
        for line in &intx {
            for other in topology.functions.iter().filter(|f| {
                intx_gsi(f) == Some(line.gsi) && !devices.iter().any(|d| d.bdf == f.bdf)
            }) {
                plan.refusals.push(Refusal::SharedInterruptLine {
                    guest: guest.name.clone(),
                    bdf: line.bdf,
                    gsi: line.gsi,
                    other: other.bdf,
                });
            }
        }
        plan.guests.push(GuestDevices {
            guest: guest.name.clone(),
            devices,
            intx,
            requested: !guest.pci.is_empty(),
            refused: false,
        });
    }

    // Across guests: one function, or one requester ID, belongs to one guest.
    for (index, a) in plan.guests.iter().enumerate() {
        for b in &plan.guests[index + 1..] {
            for da in &a.devices {
                for db in &b.devices {
                    if da.bdf == db.bdf {
                        plan.refusals.push(Refusal::AssignedTwice {
                            bdf: da.bdf,
                            first: a.guest.clone(),
                            second: b.guest.clone(),
                        });
                    } else if da.requester == db.requester {
                        plan.refusals.push(Refusal::SharedRequesterId {
                            requester: da.requester,
                            first: (a.guest.clone(), da.bdf),
                            second: (b.guest.clone(), db.bdf),
                        });
                    }
                }
            }
        }
    }

    // Functions nobody is given that VT-d cannot tell apart from an assigned one.
    let assigned: BTreeSet<Bdf> = plan
        .guests
        .iter()
        .flat_map(|g| g.devices.iter().map(|d| d.bdf))
        .collect();
    for guest in &plan.guests {
        for device in &guest.devices {
            for other in topology.functions.iter().filter(|f| {
                !assigned.contains(&f.bdf)
                    && topology.iommu_requester(f.bdf) == Some(device.requester)
            }) {
                plan.warnings.push(Warning::UnownedAlias {
                    guest: guest.guest.clone(),
                    bdf: device.bdf,
                    requester: device.requester,
                    other: other.bdf,
                });
            }
        }
    }

    // The IOMMU itself.
    for (guest, planned) in guests.iter().zip(&plan.guests) {
        if guest.pci.is_empty() {
            continue;
        }
        if units.is_empty() {
            let (guest, devices) = (guest.name.clone(), guest.pci.clone());
            if unsafe_no_iommu {
                plan.warnings.push(Warning::NoIommu { guest, devices });
            } else {
                plan.refusals.push(Refusal::NoIommu { guest, devices });
            }
            continue;
        }
        for device in planned.devices.iter().filter(|d| d.unit.is_none()) {
            plan.refusals.push(Refusal::NotCovered {
                guest: guest.name.clone(),
                bdf: device.bdf,
            });
        }
    }

    let refused: BTreeSet<String> = plan
        .refusals
        .iter()
        .flat_map(|r| r.guests().map(String::from))
        .collect();
    for guest in &mut plan.guests {
        guest.refused = refused.contains(&guest.guest);
    }
    plan
}

fn bridge_kind(function: &PciFunction) -> Option<BridgeKind> {
    let class = function.class;
    if class.base == 0x06 && class.sub == 0x00 {
        Some(BridgeKind::Host)
    } else if class.is_pci_bridge() || function.bridge.is_some() {
        Some(BridgeKind::PciToPci)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::caps::vtd::{VtdCap, VtdEcap, VtdVersion};
    use crate::config::Config;
    use crate::pci::{
        BridgeBuses, Capabilities, ClassCode, Mechanism, PcieCapability, PciePortType,
    };
    use crate::platform::dmar::{DeviceScope, Drhd, DrhdFlags, PathEntry, ScopeKind};
    use alloc::string::ToString;
    use alloc::vec;

    fn bdf(text: &str) -> Bdf {
        text.parse().unwrap()
    }

    fn function(at: &str, class: (u8, u8)) -> PciFunction {
        PciFunction {
            bdf: bdf(at),
            vendor_id: 0x1234,
            device_id: 0x11e8,
            class: ClassCode {
                base: class.0,
                sub: class.1,
                prog_if: 0,
            },
            revision: 0,
            header_type: 0,
            interrupt_pin: 1,
            interrupt_line: 0,
            bars: Vec::new(),
            capabilities: Capabilities::default(),
            bridge: None,
            upstream_bridge: None,
        }
    }

    fn behind(mut f: PciFunction, bridge: &str) -> PciFunction {
        f.upstream_bridge = Some(bdf(bridge));
        f
    }

    /// A PCIe-to-PCI bridge (class 06/04, type-1 header) with `secondary` as its only bus.
    fn pcie_to_pci_bridge(at: &str, secondary: u8) -> PciFunction {
        let mut f = function(at, (0x06, 0x04));
        f.header_type = 1;
        f.bridge = Some(BridgeBuses {
            primary: 0,
            secondary,
            subordinate: secondary,
        });
        f.capabilities.pcie = Some(PcieCapability {
            offset: 0x40,
            version: 2,
            port_type: PciePortType::PcieToPciBridge,
            flr: false,
        });
        f
    }

    /// QEMU q35's shape (host bridge, two edus, LPC) plus a PCIe-to-PCI bridge at 00:1e.0 with
    /// two conventional devices on bus 1.
    fn topology() -> PciTopology {
        let mut functions = vec![
            function("00:00.0", (0x06, 0x00)),
            function("00:03.0", (0x00, 0xff)),
            function("00:08.0", (0x00, 0xff)),
            pcie_to_pci_bridge("00:1e.0", 1),
            function("00:1f.0", (0x06, 0x01)),
            behind(function("01:00.0", (0x02, 0x00)), "00:1e.0"),
            behind(function("01:01.0", (0x02, 0x00)), "00:1e.0"),
        ];
        functions.sort_by_key(|f| f.bdf);
        PciTopology {
            mechanism: Mechanism::Ecam,
            functions,
        }
    }

    fn scope(kind: ScopeKind, start_bus: u8, path: &[(u8, u8)]) -> DeviceScope {
        DeviceScope {
            kind,
            flags: 0,
            enumeration_id: 0,
            start_bus,
            path: path
                .iter()
                .map(|&(device, function)| PathEntry { device, function })
                .collect(),
        }
    }

    fn unit(include_all: bool, scopes: Vec<DeviceScope>) -> IommuUnit {
        IommuUnit {
            drhd: Drhd {
                flags: if include_all {
                    DrhdFlags::INCLUDE_PCI_ALL
                } else {
                    DrhdFlags::empty()
                },
                size: 0,
                segment: 0,
                register_base: 0xfed9_0000,
                scopes,
            },
            version: VtdVersion(0x10),
            cap: VtdCap(0),
            ecap: VtdEcap(0),
        }
    }

    /// unit0 names 00:03.0 and the bridge 00:1e.0's sub-hierarchy; unit1 includes all the rest.
    fn two_units() -> Vec<IommuUnit> {
        vec![
            unit(
                false,
                vec![
                    scope(ScopeKind::PciEndpoint, 0, &[(3, 0)]),
                    scope(ScopeKind::PciSubHierarchy, 0, &[(0x1e, 0)]),
                ],
            ),
            unit(true, Vec::new()),
        ]
    }

    fn guests(text: &str) -> Vec<GuestConfig> {
        let (config, problems) = Config::parse(text);
        assert!(problems.is_empty(), "{problems:?}");
        config.guests
    }

    fn messages(plan: &AssignmentPlan) -> Vec<String> {
        plan.refusals.iter().map(|r| r.to_string()).collect()
    }

    #[test]
    fn devices_get_their_requester_id_and_the_unit_whose_scope_names_them() {
        let guests = guests(
            "[guest a]\nimage = a.elf\npci = 00:03.0, 01:00.0, 01:01.0\n\
             [guest b]\nimage = b.elf\npci = 00:08.0\n[guest c]\nimage = c.elf\n",
        );
        let plan = plan(
            &guests,
            &topology(),
            &two_units(),
            false,
            IntxRouting::InterruptLine,
        );
        assert_eq!(messages(&plan), Vec::<String>::new());
        assert!(plan.warnings.is_empty(), "{:?}", plan.warnings);
        // 01:01.0 sits behind the PCIe-to-PCI bridge 00:1e.0 (secondary bus 1): requester 01:00.0
        // (bridge spec 1.0 §2.3); 00:08.0 is in no scope, so the INCLUDE_PCI_ALL unit1 has it.
        assert_eq!(
            plan.devices("a"),
            [
                AssignedDevice {
                    bdf: bdf("00:03.0"),
                    requester: bdf("00:03.0"),
                    unit: Some(0)
                },
                AssignedDevice {
                    bdf: bdf("01:00.0"),
                    requester: bdf("01:00.0"),
                    unit: Some(0)
                },
                AssignedDevice {
                    bdf: bdf("01:01.0"),
                    requester: bdf("01:00.0"),
                    unit: Some(0)
                },
            ]
        );
        assert_eq!(plan.devices("b")[0].unit, Some(1));
        assert!(!plan.is_refused("a") && !plan.is_refused("b") && !plan.is_refused("c"));
        let mut summary = String::new();
        plan.write_summary(&mut summary).unwrap();
        assert_eq!(
            summary,
            "summary: assignment guest=a refused=no devices=00:03.0:unit0,01:00.0:unit0,01:01.0:unit0 \
             requesters=00:03.0,01:00.0,01:00.0\n\
             summary: assignment guest=b refused=no devices=00:08.0:unit1 requesters=00:08.0\n"
        );
    }

    #[test]
    fn a_multi_hop_scope_path_follows_the_bridges_secondary_bus() {
        // start bus 0, hop 1e.0 (bridge to bus 1), hop 01.0: names 01:01.0 only.
        let units = vec![unit(
            false,
            vec![scope(ScopeKind::PciEndpoint, 0, &[(0x1e, 0), (1, 0)])],
        )];
        let topology = topology();
        assert_eq!(covering_unit(bdf("01:01.0"), &topology, &units), Some(0));
        assert_eq!(covering_unit(bdf("01:00.0"), &topology, &units), None);
        assert_eq!(covering_unit(bdf("00:01.0"), &topology, &units), None);
        // Another segment's INCLUDE_PCI_ALL unit does not cover segment 0.
        let mut other = unit(true, Vec::new());
        other.drhd.segment = 1;
        assert_eq!(covering_unit(bdf("00:08.0"), &topology, &[other]), None);
    }

    #[test]
    fn a_missing_device_refuses_only_its_guest_and_lists_what_exists() {
        let guests = guests(
            "[guest eli]\nimage = a.elf\npci = 00:05.0\n[guest ok]\nimage = b.elf\npci = 00:03.0\n",
        );
        let plan = plan(
            &guests,
            &topology(),
            &two_units(),
            false,
            IntxRouting::InterruptLine,
        );
        assert_eq!(
            messages(&plan),
            [
                "guest eli: PCI device 00:05.0 does not exist on this machine (present: 00:00.0, \
              00:03.0, 00:08.0, 00:1e.0, 00:1f.0, 01:00.0, 01:01.0): fix `pci =` in [guest eli]"
            ]
        );
        assert!(plan.is_refused("eli"));
        assert!(!plan.is_refused("ok"));
        let mut summary = String::new();
        plan.write_summary(&mut summary).unwrap();
        assert!(summary.starts_with(
            "summary: assignment guest=eli refused=yes devices=none requesters=none\n"
        ));
    }

    #[test]
    fn the_same_device_in_two_guests_refuses_both() {
        let guests = guests(
            "[guest a]\nimage = a.elf\npci = 00:03.0\n[guest b]\nimage = b.elf\npci = 00:03.0\n",
        );
        let plan = plan(
            &guests,
            &topology(),
            &two_units(),
            false,
            IntxRouting::InterruptLine,
        );
        assert_eq!(
            messages(&plan),
            ["guest a and guest b are both given PCI device 00:03.0; a device belongs to one guest: \
              remove it from `pci =` in [guest a] or [guest b]"]
        );
        assert!(plan.is_refused("a") && plan.is_refused("b"));
    }

    #[test]
    fn an_intx_line_shared_with_a_function_the_guest_is_not_given_is_refused() {
        // Bochs' shape: the PIIX4 power-management function and a NIC on PIRQ line 10, the
        // NIC alone on line 11 after a slot change.
        let with_lines = |lines: [(&str, u8); 3]| {
            let mut t = topology();
            for (at, line) in lines {
                t.functions
                    .iter_mut()
                    .find(|f| f.bdf == bdf(at))
                    .unwrap()
                    .interrupt_line = line;
            }
            t
        };
        let one = guests("[guest a]\nimage = a.elf\npci = 00:03.0\n");
        let shared = with_lines([("00:03.0", 10), ("00:08.0", 10), ("00:1f.0", 0xFF)]);
        let p = plan(
            &one,
            &shared,
            &two_units(),
            false,
            IntxRouting::InterruptLine,
        );
        assert!(p.is_refused("a"));
        assert_eq!(
            messages(&p),
            ["guest a: PCI device 00:03.0 shares interrupt line 10 with 00:08.0, which it is not \
              given: assign 00:08.0 to guest a too, or move 00:03.0 to a slot whose INTx reaches \
              another line"]
        );
        // On an ACPI machine Interrupt Line is the 8259 IRQ, not the IOAPIC input: nothing is
        // planned from it, so nothing is refused for it either.
        let p = plan(&one, &shared, &two_units(), false, IntxRouting::Unknown);
        assert!(!p.is_refused("a") && p.intx("a").is_empty());
        // Both functions in the guest: the line is its own, and both are described.
        let both = guests("[guest a]\nimage = a.elf\npci = 00:03.0, 00:08.0\n");
        let p = plan(
            &both,
            &shared,
            &two_units(),
            false,
            IntxRouting::InterruptLine,
        );
        assert!(!p.is_refused("a"), "{:?}", messages(&p));
        assert_eq!(
            p.intx("a")
                .iter()
                .map(|l| (l.pin, l.gsi))
                .collect::<Vec<_>>(),
            [(1, 10), (1, 10)]
        );
        // Alone on its line; 0xFF and 0 name no line and are neither shared nor described.
        let alone = with_lines([("00:03.0", 11), ("00:08.0", 10), ("00:1f.0", 0xFF)]);
        let p = plan(
            &one,
            &alone,
            &two_units(),
            false,
            IntxRouting::InterruptLine,
        );
        assert!(!p.is_refused("a"));
        assert_eq!(
            p.intx("a"),
            [IntxLine {
                bdf: bdf("00:03.0"),
                pin: 1,
                gsi: 11
            }]
        );
    }

    #[test]
    fn devices_sharing_a_requester_id_cannot_go_to_two_guests() {
        let guests = guests(
            "[guest a]\nimage = a.elf\npci = 01:00.0\n[guest b]\nimage = b.elf\npci = 01:01.0\n\
             [guest c]\nimage = c.elf\npci = 00:08.0\n",
        );
        let plan = plan(
            &guests,
            &topology(),
            &two_units(),
            false,
            IntxRouting::InterruptLine,
        );
        assert_eq!(
            messages(&plan),
            [
                "guest a: 01:00.0 and guest b: 01:01.0 share requester ID 01:00.0 (they sit behind \
                 the same PCIe-to-PCI or PCI bridge), so VT-d cannot keep their DMA apart: list both \
                 in `pci =` of one guest, [guest a] or [guest b]"
            ]
        );
        assert!(plan.is_refused("a") && plan.is_refused("b") && !plan.is_refused("c"));
    }

    #[test]
    fn an_unassigned_function_behind_the_same_bridge_is_warned_about() {
        let guests = guests("[guest a]\nimage = a.elf\npci = 01:01.0\n");
        let plan = plan(
            &guests,
            &topology(),
            &two_units(),
            false,
            IntxRouting::InterruptLine,
        );
        assert!(plan.refusals.is_empty());
        assert_eq!(
            plan.warnings,
            [Warning::UnownedAlias {
                guest: "a".into(),
                bdf: bdf("01:01.0"),
                requester: bdf("01:00.0"),
                other: bdf("01:00.0"),
            }]
        );
        assert_eq!(
            plan.warnings[0].to_string(),
            "guest a: 01:01.0 shares requester ID 01:00.0 with 01:00.0, which no guest is given; \
             VT-d cannot tell them apart, so 01:00.0 can DMA into guest a's memory: add it to \
             `pci =` in [guest a] if that is intended"
        );
    }

    #[test]
    fn bridges_are_refused() {
        let guests = guests("[guest a]\nimage = a.elf\npci = 00:00.0, 00:1e.0\n");
        let plan = plan(
            &guests,
            &topology(),
            &two_units(),
            false,
            IntxRouting::InterruptLine,
        );
        assert_eq!(
            messages(&plan),
            [
                "guest a: 00:00.0 is a host bridge (class 06/00), which the host needs: remove it \
                 from `pci =` in [guest a]",
                "guest a: 00:1e.0 is a PCI-to-PCI bridge, which cannot be assigned: list the devices \
                 behind it in `pci =` in [guest a] instead",
            ]
        );
        assert!(plan.is_refused("a"));
    }

    #[test]
    fn no_iommu_refuses_unless_unsafe_no_iommu_then_warns() {
        let guests =
            guests("[guest a]\nimage = a.elf\npci = 00:03.0\n[guest plain]\nimage = b.elf\n");
        let refused = plan(&guests, &topology(), &[], false, IntxRouting::InterruptLine);
        assert_eq!(
            messages(&refused),
            ["guest a: device assignment (00:03.0) needs an IOMMU and this machine has none (no \
              usable DMAR table; is VT-d enabled in the firmware setup?); set `unsafe_no_iommu = yes` \
              only if you accept that the device can DMA anywhere"]
        );
        assert!(refused.is_refused("a") && !refused.is_refused("plain"));

        let allowed = plan(&guests, &topology(), &[], true, IntxRouting::InterruptLine);
        assert!(allowed.refusals.is_empty());
        assert!(!allowed.is_refused("a"));
        assert_eq!(
            allowed.warnings.iter().map(|w| w.to_string()).collect::<Vec<_>>(),
            ["guest a: 00:03.0 assigned WITHOUT an IOMMU (`unsafe_no_iommu = yes`): the device can \
              DMA anywhere in memory, the hypervisor's and other guests' included"]
        );
        assert_eq!(allowed.devices("a")[0].unit, None);
        let mut summary = String::new();
        allowed.write_summary(&mut summary).unwrap();
        assert_eq!(
            summary,
            "summary: assignment guest=a refused=no devices=00:03.0:none requesters=00:03.0\n"
        );
    }

    #[test]
    fn a_device_in_no_unit_scope_is_refused_even_with_unsafe_no_iommu() {
        let guests = guests("[guest a]\nimage = a.elf\npci = 00:03.0, 00:08.0\n");
        let only_edu = vec![unit(
            false,
            vec![scope(ScopeKind::PciEndpoint, 0, &[(3, 0)])],
        )];
        let plan = plan(
            &guests,
            &topology(),
            &only_edu,
            true,
            IntxRouting::InterruptLine,
        );
        assert_eq!(
            messages(&plan),
            ["guest a: PCI device 00:08.0 is in no VT-d unit's scope (no DRHD names it and none \
              includes all of segment 0), so its DMA cannot be remapped: check the firmware's VT-d \
              setting or remove it from `pci =` in [guest a]"]
        );
    }

    #[test]
    fn a_device_listed_twice_by_one_guest_is_planned_once() {
        let guests = guests("[guest a]\nimage = a.elf\npci = 00:03.0, 00:03.0\n");
        let plan = plan(
            &guests,
            &topology(),
            &two_units(),
            false,
            IntxRouting::InterruptLine,
        );
        assert!(plan.refusals.is_empty());
        assert_eq!(plan.devices("a").len(), 1);
    }

    #[test]
    fn a_long_present_list_is_cut() {
        let mut topology = topology();
        topology.functions = (0..32)
            .map(|d| function(&format!("02:{d:02x}.0"), (0x02, 0)))
            .collect();
        let guests = guests("[guest a]\nimage = a.elf\npci = 00:03.0\n");
        let message = plan(
            &guests,
            &topology,
            &two_units(),
            false,
            IntxRouting::InterruptLine,
        )
        .refusals[0]
            .to_string();
        assert!(
            message.contains("02:17.0 and 8 more, see the `summary: pci_function` lines): fix"),
            "{message}"
        );
        assert!(!message.contains("02:18.0"));
    }
}
