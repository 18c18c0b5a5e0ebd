//! Which VT-d unit covers a PCI function, from DMAR's device scopes (VT-d 8.3.1).

use crate::pci::{Bdf, PciTopology};
use crate::platform::dmar::{DeviceScope, ScopeKind};
use crate::platform::IommuUnit;

/// The unit that translates for `bdf`: the one whose device scope names it (an endpoint scope, or a
/// sub-hierarchy scope whose bridge it is or sits below), else the unit with INCLUDE_PCI_ALL for its
/// segment (VT-d 8.3.1; such a unit covers every device no other unit of the segment claims).
pub fn covering_unit(bdf: Bdf, topology: &PciTopology, units: &[IommuUnit]) -> Option<usize> {
    let same_segment = |unit: &&IommuUnit| unit.drhd.segment == bdf.segment();
    units
        .iter()
        .enumerate()
        .filter(|(_, unit)| same_segment(unit))
        .find(|(_, unit)| {
            unit.drhd
                .scopes
                .iter()
                .any(|scope| scope_covers(scope, bdf, topology))
        })
        .or_else(|| {
            units
                .iter()
                .enumerate()
                .filter(|(_, unit)| same_segment(unit))
                .find(|(_, unit)| unit.drhd.include_pci_all())
        })
        .map(|(index, _)| index)
}

fn scope_covers(scope: &DeviceScope, bdf: Bdf, topology: &PciTopology) -> bool {
    let Some(target) = resolve_scope(scope, bdf.segment(), topology) else {
        return false;
    };
    match scope.kind {
        ScopeKind::PciEndpoint => target == bdf,
        ScopeKind::PciSubHierarchy => {
            target == bdf
                || topology
                    .find(target)
                    .and_then(|bridge| bridge.bridge)
                    .is_some_and(|buses| (buses.secondary..=buses.subordinate).contains(&bdf.bus()))
        }
        _ => false,
    }
}

/// The function a scope's path leads to: the first hop is on the start bus, each later hop on the
/// secondary bus of the bridge the previous hop named (VT-d 8.3.1, device scope path). `None` when a
/// hop's bridge is not in the topology.
pub fn resolve_scope(scope: &DeviceScope, segment: u16, topology: &PciTopology) -> Option<Bdf> {
    let (last, hops) = scope.path.split_last()?;
    let mut bus = scope.start_bus;
    for hop in hops {
        let bridge = Bdf::new(segment, bus, hop.device, hop.function)?;
        bus = topology.find(bridge)?.bridge?.secondary;
    }
    Bdf::new(segment, bus, last.device, last.function)
}
