//! An assigned function's MSI made real: the guest programs its emulated MSI capability
//! (`virtual_pci`), and the resulting [`MsiRequest`] is applied here to the hardware. With
//! interrupt remapping the device gets a remappable-format message whose IRTE carries the guest's
//! vector to this CPU (VT-d 5.1.4); the guest's own address never reaches the device. Without
//! remapping for the device (`unsafe_no_iommu`, or IR left off while a guest routes IOAPIC pins)
//! the only way left is a compatibility-format message with the guest's vector to this CPU.
//!
//! MSI: one vector per function (Multiple Message Enable stays 0). MSI-X: each table entry the
//! guest unmasks gets its own IRTE and the device's real entry the remappable message; the
//! hardware's MSI-X Enable is set (function mask clear) by the host, the guest's enable and masks
//! only decide which real entries are unmasked.

use crate::iommu::{DmaRemapping, DomainHandle, InterruptRequest, InterruptSource};
use crate::memory::FrameAlloc;
use crate::pci::{Bdf, ConfigAccess, MsiCapability, PciFunction};
use crate::vmm::assignment::AssignedDevice;
use crate::vmm::interrupts::GUEST_VECTORS;
use crate::vmm::msi_request::MsiRequest;
use crate::vmm::msix::{self, MsixRequest, MsixTable};
use crate::vtd::irte::MsiMessage;
use crate::vtd::regs::VtdMmio;
use alloc::format;
use alloc::string::String;

/// The CPU a guest's device interrupts go to: the one running the guest.
pub use crate::iommu::CpuTarget as HostCpu;

/// What the device was programmed with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MsiRoute {
    /// Through an IRTE: the device holds this remappable-format message.
    Remapped(MsiMessage),
    /// No interrupt remapping covers the device: compatibility format, guest vector, this CPU.
    Compatibility(MsiMessage),
    /// The guest disabled or masked its MSI: the device's MSI is off (and its IRTE cleared).
    Disabled,
}

impl MsiRoute {
    /// The guest vector that now arrives from the device, if any.
    pub fn guest_vector(&self, req: &MsiRequest) -> Option<u8> {
        match self {
            MsiRoute::Disabled => None,
            _ => Some(req.vector),
        }
    }
}

/// Message Control (PCI 3.0 6.8.1.3): bit 0 MSI Enable, bits 6:4 Multiple Message Enable.
const CONTROL_ENABLE: u16 = 1 << 0;
const CONTROL_MME: u16 = 0b111 << 4;

/// A compatibility-format MSI (SDM Vol. 3A 11.11.1): address 0xFEE in 31:20, destination ID in
/// 19:12, physical mode, no redirection hint; data: fixed delivery, edge, `vector`.
pub const fn compatibility_msi(vector: u8, apic_id: u8) -> MsiMessage {
    MsiMessage {
        address: 0xFEE0_0000 | (apic_id as u64) << 12,
        data: vector as u32,
    }
}

/// Programs `bdf`'s MSI capability with `message`, one vector, and enables it; `None` disables
/// MSI. MSI is disabled while the address and data change, so the device never signals a
/// half-written message.
pub fn program_device_msi(
    config: &dyn ConfigAccess,
    bdf: Bdf,
    cap: &MsiCapability,
    message: Option<MsiMessage>,
) {
    let control_at = cap.offset + 2;
    let control = config.read16(bdf, control_at) & !(CONTROL_ENABLE | CONTROL_MME);
    config.write16(bdf, control_at, control);
    let Some(m) = message else { return };
    config.write32(bdf, cap.offset + 4, m.address as u32);
    if cap.is_64bit {
        config.write32(bdf, cap.offset + 8, (m.address >> 32) as u32);
    }
    config.write16(bdf, cap.message_data_offset(), m.data as u16);
    config.write16(bdf, control_at, control | CONTROL_ENABLE);
}

/// Applies the guest's MSI request for `function` (its host view; `device` is its assignment
/// plan entry) to the hardware: IRTE (where the device's unit remaps interrupts) and the device's
/// MSI capability. On error the device's MSI is left disabled. The runner and the `vtd-guest`
/// self-test both come through here.
#[allow(clippy::too_many_arguments)]
pub fn route_guest_msi<M: VtdMmio>(
    req: &MsiRequest,
    function: &PciFunction,
    device: Option<&AssignedDevice>,
    dma: Option<(&mut DmaRemapping<M>, DomainHandle)>,
    cpu: HostCpu,
    config: &dyn ConfigAccess,
    frames: &mut impl FrameAlloc,
) -> Result<MsiRoute, String> {
    let cap = function
        .capabilities
        .msi
        .ok_or_else(|| format!("{} has no MSI capability", req.bdf))?;
    let requester = device.map_or(req.bdf, |d| d.requester);
    let remapping = device.and_then(|d| d.unit).map(|_| dma);
    let result = match remapping {
        // Covered by a unit: the guest's domain must hold it.
        Some(Some((dma, handle))) => match dma.remaps_interrupts(handle, requester) {
            Some(true) => {
                if !req.enabled || req.masked {
                    // Device first, then the entry: nothing signals through a half-gone route.
                    program_device_msi(config, req.bdf, &cap, None);
                }
                let source = InterruptSource::Msi(req.bdf);
                remap(dma, handle, source, req, requester, cpu, frames)
                    .map(|m| m.map_or(MsiRoute::Disabled, MsiRoute::Remapped))
            }
            Some(false) => compatibility(req, cpu),
            None => Err(format!("{} is not in the guest's DMA domain", req.bdf)),
        },
        Some(None) => Err(String::from("DMA remapping is not up")),
        // No unit covers it (`unsafe_no_iommu` on a machine without one).
        None => compatibility(req, cpu),
    };
    match result {
        Ok(MsiRoute::Disabled) | Err(_) => program_device_msi(config, req.bdf, &cap, None),
        Ok(MsiRoute::Remapped(m) | MsiRoute::Compatibility(m)) => {
            program_device_msi(config, req.bdf, &cap, Some(m))
        }
    }
    result
}

/// Host-controlled MSI-X Message Control: enabled, function mask clear; the real entries (masked
/// from reset, or by [`msix::mask_all`]) decide what signals.
pub fn enable_device_msix(config: &dyn ConfigAccess, bdf: Bdf, cap_offset: u16, on: bool) {
    let at = cap_offset + 2;
    let control = config.read16(bdf, at);
    let want = if on {
        (control | msix::CONTROL_ENABLE) & !msix::CONTROL_FUNCTION_MASK
    } else {
        control & !msix::CONTROL_ENABLE
    };
    if want != control {
        config.write16(bdf, at, want);
    }
}

/// Applies the guest's request for MSI-X entry `req.entry` of `function` to the hardware: an IRTE
/// with the guest's vector (or a compatibility-format message where no unit covers the device) in
/// the device's real table entry `table`, unmasked; a disabled or masked request masks the real
/// entry, then clears the IRTE. On error the real entry is left masked.
#[allow(clippy::too_many_arguments)]
pub fn route_guest_msix<M: VtdMmio>(
    req: &MsixRequest,
    function: &PciFunction,
    device: Option<&AssignedDevice>,
    dma: Option<(&mut DmaRemapping<M>, DomainHandle)>,
    cpu: HostCpu,
    config: &dyn ConfigAccess,
    table: &mut impl MsixTable,
    frames: &mut impl FrameAlloc,
) -> Result<MsiRoute, String> {
    let cap = function
        .capabilities
        .msix
        .ok_or_else(|| format!("{} has no MSI-X capability", req.bdf))?;
    if req.entry >= cap.table_size {
        return Err(format!("{} has no MSI-X entry {}", req.bdf, req.entry));
    }
    let msi = req.as_msi();
    let requester = device.map_or(req.bdf, |d| d.requester);
    let remapping = device.and_then(|d| d.unit).map(|_| dma);
    let result = match remapping {
        Some(Some((dma, handle))) => match dma.remaps_interrupts(handle, requester) {
            Some(true) => {
                if !req.live() {
                    msix::program_table_entry(table, req.entry, None);
                }
                let source = InterruptSource::Msix {
                    bdf: req.bdf,
                    entry: req.entry,
                };
                remap(dma, handle, source, &msi, requester, cpu, frames)
                    .map(|m| m.map_or(MsiRoute::Disabled, MsiRoute::Remapped))
            }
            Some(false) => compatibility(&msi, cpu),
            None => Err(format!("{} is not in the guest's DMA domain", req.bdf)),
        },
        Some(None) => Err(String::from("DMA remapping is not up")),
        None => compatibility(&msi, cpu),
    };
    match result {
        Ok(MsiRoute::Disabled) | Err(_) => msix::program_table_entry(table, req.entry, None),
        Ok(MsiRoute::Remapped(m) | MsiRoute::Compatibility(m)) => {
            // Enabling with every other entry masked: nothing but this entry can signal.
            if config.read16(req.bdf, cap.offset + 2) & msix::CONTROL_ENABLE == 0 {
                msix::mask_all(table, cap.table_size);
            }
            msix::program_table_entry(table, req.entry, Some(m));
            enable_device_msix(config, req.bdf, cap.offset, true);
        }
    }
    result
}

/// The guest's request as the IOMMU's: its vector where it is live and a guest vector; an
/// illegal vector clears the source's IRTE as a disabled one does, and is refused.
fn remap<M: VtdMmio>(
    dma: &mut DmaRemapping<M>,
    handle: DomainHandle,
    source: InterruptSource,
    req: &MsiRequest,
    requester: Bdf,
    cpu: HostCpu,
    frames: &mut impl FrameAlloc,
) -> Result<Option<MsiMessage>, String> {
    let live = req.enabled && !req.masked;
    let refused = if live {
        guest_vector(req.vector).err()
    } else {
        None
    };
    let request = InterruptRequest {
        source,
        requester,
        vector: (live && refused.is_none()).then_some(req.vector),
        cpu,
    };
    let message = dma.remap_interrupt(handle, &request, frames)?;
    match refused {
        Some(why) => Err(why),
        None => Ok(message),
    }
}

/// Guests' devices may raise only [`GUEST_VECTORS`]: the host's are never in their messages.
fn guest_vector(vector: u8) -> Result<(), String> {
    if GUEST_VECTORS.contains(&vector) {
        return Ok(());
    }
    Err(format!(
        "vector {vector:#x} is not one a guest may use ({:#x}..{:#x})",
        GUEST_VECTORS.start, GUEST_VECTORS.end
    ))
}

fn compatibility(req: &MsiRequest, cpu: HostCpu) -> Result<MsiRoute, String> {
    if !req.enabled || req.masked {
        return Ok(MsiRoute::Disabled);
    }
    guest_vector(req.vector)?;
    let id = u8::try_from(cpu.apic_id).map_err(|_| {
        format!(
            "APIC ID {} does not fit a compatibility-format MSI",
            cpu.apic_id
        )
    })?;
    Ok(MsiRoute::Compatibility(compatibility_msi(req.vector, id)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pci::fake::{FakeConfigSpace, FakeFunction};
    use crate::pci::Mechanism;
    use crate::vtd::regs::fake::FakeVtd;

    const EDU: (u8, u8, u8) = (0, 3, 0);

    /// QEMU's edu: MSI capability at 0x40, 64-bit, one vector (Message Control 0x0080).
    fn machine() -> (FakeConfigSpace, PciFunction) {
        let space = FakeConfigSpace::new(Mechanism::Legacy);
        space.add(0, 0, 0, FakeFunction::new(0x8086, 0x1237, 0x060000, 0));
        let mut edu = FakeFunction::new(0x1234, 0x11e8, 0x00ff00, 0);
        edu.capability(0x40, 0x05, &[0x80, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        edu.set_writable(0x40, 4, 0x0071 << 16);
        for dword in (0x44..0x50).step_by(4) {
            edu.set_writable(dword, 4, u32::MAX);
        }
        space.add(EDU.0, EDU.1, EDU.2, edu);
        let topology = crate::pci::enumerate(&space);
        let f = topology.find(bdf()).unwrap().clone();
        (space, f)
    }

    fn bdf() -> Bdf {
        Bdf::new(0, EDU.0, EDU.1, EDU.2).unwrap()
    }

    fn request(enabled: bool, vector: u8) -> MsiRequest {
        MsiRequest {
            bdf: bdf(),
            enabled,
            vector,
            destination: 0,
            masked: false,
        }
    }

    const CPU: HostCpu = HostCpu {
        apic_id: 2,
        x2apic: true,
    };

    #[test]
    fn compatibility_message_by_hand() {
        // SDM 11.11.1: APIC 2 -> 0xFEE00000 | 2 << 12 = 0xFEE02000; data = vector, fixed, edge.
        assert_eq!(
            compatibility_msi(0x41, 2),
            MsiMessage {
                address: 0xFEE0_2000,
                data: 0x41
            }
        );
    }

    #[test]
    fn program_writes_address_data_then_enable() {
        let (space, f) = machine();
        let cap = f.capabilities.msi.unwrap();
        let m = MsiMessage {
            address: 0x1_FEE0_00B0,
            data: 0x1234,
        };
        program_device_msi(&space, bdf(), &cap, Some(m));
        let hw = space.get(bdf());
        assert_eq!(hw.get16(0x42), 0x0081, "enabled, one vector, 64-bit kept");
        assert_eq!(
            (hw.get32(0x44), hw.get32(0x48), hw.get16(0x4C)),
            (0xFEE0_00B0, 1, 0x1234)
        );
        program_device_msi(&space, bdf(), &cap, None);
        assert_eq!(space.get(bdf()).get16(0x42), 0x0080, "disabled");
    }

    #[test]
    fn with_interrupt_remapping_the_device_gets_a_remappable_message() {
        use crate::caps::vtd::{VtdCap, VtdEcap, VtdVersion};
        use crate::iommu::{BringUpOptions, DmaRemapping};
        use crate::platform::dmar::{Drhd, DrhdFlags};
        use crate::platform::IommuUnit;
        let (space, f) = machine();
        let mut frames = crate::memory::test_frames::TestFrames::default();
        // QEMU 7.2 intel-iommu,intremap=on (shared/emulators.md): QI, IR, no EIM.
        let unit = IommuUnit {
            drhd: Drhd {
                flags: DrhdFlags::INCLUDE_PCI_ALL,
                size: 0,
                segment: 0,
                register_base: 0xfed9_0000,
                scopes: alloc::vec::Vec::new(),
            },
            version: VtdVersion(0x10),
            cap: VtdCap(0x00d2_008c_2226_0206),
            ecap: VtdEcap(0xf0_0f4a),
        };
        let topology = crate::pci::enumerate(&space);
        let mut dma = DmaRemapping::bring_up(
            &[unit],
            &[],
            &topology,
            &[bdf()],
            BringUpOptions {
                interrupt_remapping: true,
            },
            &mut frames,
            |u| FakeVtd::new(u.cap.0, u.ecap.0),
        )
        .unwrap();
        let plan = AssignedDevice {
            bdf: bdf(),
            requester: bdf(),
            unit: Some(0),
        };
        let h = dma
            .attach_guest("g", (0x4000_0000, 2 << 20), &[plan], &mut frames)
            .unwrap();
        let xapic = HostCpu {
            apic_id: 0,
            x2apic: false,
        };
        let route = route_guest_msi(
            &request(true, 0x41),
            &f,
            Some(&plan),
            Some((&mut dma, h)),
            xapic,
            &space,
            &mut frames,
        );
        // IRTE 0 -> 0xFEE00000 | format bit 4 (VT-d 5.1.5.2), not the guest's 0xFEE00000.
        let want = MsiMessage {
            address: 0xFEE0_0010,
            data: 0,
        };
        assert_eq!(route, Ok(MsiRoute::Remapped(want)));
        assert_eq!(
            route.unwrap().guest_vector(&request(true, 0x41)),
            Some(0x41)
        );
        let hw = space.get(bdf());
        assert_eq!(
            (hw.get32(0x44), hw.get16(0x4C), hw.get16(0x42) & 1),
            (0xFEE0_0010, 0, 1)
        );
        assert_eq!(
            dma.guest_irte(h, bdf(), &mut frames).unwrap().2.vector(),
            0x41
        );
        // A host vector is refused: the device's MSI goes off and its IRTE is cleared.
        let host_vector = route_guest_msi(
            &request(true, 0xF5),
            &f,
            Some(&plan),
            Some((&mut dma, h)),
            xapic,
            &space,
            &mut frames,
        );
        assert!(host_vector.unwrap_err().contains("0xf5"));
        assert_eq!(space.get(bdf()).get16(0x42) & 1, 0);
        assert!(!dma.irte_at(0, 0, &mut frames).unwrap().present());
        assert_eq!(dma.guest_irte(h, bdf(), &mut frames), None);
        route_guest_msi(
            &request(true, 0x41),
            &f,
            Some(&plan),
            Some((&mut dma, h)),
            xapic,
            &space,
            &mut frames,
        )
        .unwrap();
        let off = route_guest_msi(
            &request(false, 0x41),
            &f,
            Some(&plan),
            Some((&mut dma, h)),
            xapic,
            &space,
            &mut frames,
        );
        assert_eq!(off, Ok(MsiRoute::Disabled));
        assert_eq!(space.get(bdf()).get16(0x42) & 1, 0);
        assert!(!dma.irte_at(0, 0, &mut frames).unwrap().present());
    }

    #[test]
    fn without_an_iommu_the_device_gets_a_compatibility_message_to_this_cpu() {
        let (space, f) = machine();
        let mut frames = crate::memory::test_frames::TestFrames::default();
        let plan = AssignedDevice {
            bdf: bdf(),
            requester: bdf(),
            unit: None,
        };
        let route = route_guest_msi::<FakeVtd>(
            &request(true, 0x41),
            &f,
            Some(&plan),
            None,
            CPU,
            &space,
            &mut frames,
        );
        let want = compatibility_msi(0x41, 2);
        assert_eq!(route, Ok(MsiRoute::Compatibility(want)));
        assert_eq!(space.get(bdf()).get32(0x44), 0xFEE0_2000);
        assert_eq!(space.get(bdf()).get16(0x4C), 0x41);
        assert_eq!(space.get(bdf()).get16(0x42) & 1, 1);
        // A host vector is refused and the device's MSI left off.
        let refused = route_guest_msi::<FakeVtd>(
            &request(true, 0xF5),
            &f,
            Some(&plan),
            None,
            CPU,
            &space,
            &mut frames,
        );
        assert!(refused.unwrap_err().contains("0xf5"));
        assert_eq!(space.get(bdf()).get16(0x42) & 1, 0);
        // A covered device with remapping down is refused rather than programmed.
        let covered = AssignedDevice {
            unit: Some(0),
            ..plan
        };
        assert!(route_guest_msi::<FakeVtd>(
            &request(true, 0x41),
            &f,
            Some(&covered),
            None,
            CPU,
            &space,
            &mut frames,
        )
        .is_err());
        assert_eq!(space.get(bdf()).get16(0x42) & 1, 0);
    }

    #[derive(Default)]
    struct FakeTable([u32; 20]);

    impl MsixTable for FakeTable {
        fn read32(&self, offset: u64) -> u32 {
            self.0[(offset / 4) as usize]
        }
        fn write32(&mut self, offset: u64, value: u32) {
            self.0[(offset / 4) as usize] = value;
        }
    }

    #[test]
    fn msix_entries_get_their_own_irtes_and_the_real_entry_the_message() {
        use crate::caps::vtd::{VtdCap, VtdEcap, VtdVersion};
        use crate::iommu::{BringUpOptions, DmaRemapping};
        use crate::pci::BarKind;
        use crate::platform::dmar::{Drhd, DrhdFlags};
        use crate::platform::IommuUnit;
        // QEMU's e1000e at 00:02.0: MSI-X at 0xA0, 5 entries, table BAR3 + 0, PBA BAR3 + 0x2000.
        let space = FakeConfigSpace::new(Mechanism::Legacy);
        let mut nic = FakeFunction::new(0x8086, 0x10d3, 0x020000, 0);
        nic.bar(
            3,
            BarKind::Memory32 {
                prefetchable: false,
            },
            0xfebd_0000,
            0x4000,
        );
        nic.capability(0xA0, 0x11, &[0x04, 0x00, 0x03, 0, 0, 0, 0x03, 0x20, 0, 0]);
        nic.set_writable(0xA0, 4, 0xC000 << 16);
        space.add(0, 2, 0, nic);
        let topology = crate::pci::enumerate(&space);
        let f = topology.functions[0].clone();
        let nic = f.bdf;
        let mut frames = crate::memory::test_frames::TestFrames::default();
        let unit = IommuUnit {
            drhd: Drhd {
                flags: DrhdFlags::INCLUDE_PCI_ALL,
                size: 0,
                segment: 0,
                register_base: 0xfed9_0000,
                scopes: alloc::vec::Vec::new(),
            },
            version: VtdVersion(0x10),
            cap: VtdCap(0x00d2_008c_2226_0206),
            ecap: VtdEcap(0xf0_0f4a),
        };
        let mut dma = DmaRemapping::bring_up(
            &[unit],
            &[],
            &topology,
            &[nic],
            BringUpOptions {
                interrupt_remapping: true,
            },
            &mut frames,
            |u| FakeVtd::new(u.cap.0, u.ecap.0),
        )
        .unwrap();
        let plan = AssignedDevice {
            bdf: nic,
            requester: nic,
            unit: Some(0),
        };
        let h = dma
            .attach_guest("g", (0x4000_0000, 2 << 20), &[plan], &mut frames)
            .unwrap();
        let cpu = HostCpu {
            apic_id: 0,
            x2apic: false,
        };
        let mut table = FakeTable::default();
        let req = |entry: u16, vector: u8, masked: bool| MsixRequest {
            bdf: nic,
            entry,
            enabled: true,
            masked,
            vector,
            destination: 0,
        };
        let route = |r: MsixRequest,
                     dma: &mut DmaRemapping<FakeVtd>,
                     t: &mut FakeTable,
                     frames: &mut crate::memory::test_frames::TestFrames| {
            route_guest_msix(&r, &f, Some(&plan), Some((dma, h)), cpu, &space, t, frames)
        };
        // Entry 0 -> IRTE 0, entry 3 -> IRTE 1: remappable addresses 0xFEE00010 and 0xFEE00030
        // (handle 1 in bits 19:5, format bit 4: VT-d 5.1.5.2).
        assert_eq!(
            route(req(0, 0x51, false), &mut dma, &mut table, &mut frames),
            Ok(MsiRoute::Remapped(MsiMessage {
                address: 0xFEE0_0010,
                data: 0
            }))
        );
        route(req(3, 0x52, false), &mut dma, &mut table, &mut frames).unwrap();
        assert_eq!(table.0[..4], [0xFEE0_0010, 0, 0, 0], "entry 0 unmasked");
        assert_eq!(table.0[12..16], [0xFEE0_0030, 0, 0, 0], "entry 3 unmasked");
        assert_eq!(table.0[7] & 1, 1, "entry 1 masked when MSI-X was enabled");
        assert_eq!(
            space.get(nic).get16(0xA2),
            0x8004,
            "hardware enabled, unmasked"
        );
        let irte = |dma: &DmaRemapping<FakeVtd>, e, frames: &mut _| {
            dma.guest_msix_irte(h, nic, e, frames)
                .map(|i| (i.1, i.2.vector()))
        };
        assert_eq!(irte(&dma, 0, &mut frames), Some((0, 0x51)));
        assert_eq!(irte(&dma, 3, &mut frames), Some((1, 0x52)));
        // The guest masks entry 0: real entry masked, its IRTE gone; entry 3 untouched.
        assert_eq!(
            route(req(0, 0x51, true), &mut dma, &mut table, &mut frames),
            Ok(MsiRoute::Disabled)
        );
        assert_eq!(table.0[3] & 1, 1);
        assert_eq!(table.0[15] & 1, 0);
        assert_eq!(irte(&dma, 0, &mut frames), None);
        assert!(!dma.irte_at(0, 0, &mut frames).unwrap().present());
        assert_eq!(irte(&dma, 3, &mut frames), Some((1, 0x52)));
        assert!(
            route(req(5, 0x51, false), &mut dma, &mut table, &mut frames)
                .unwrap_err()
                .contains("no MSI-X entry 5")
        );
    }
}
