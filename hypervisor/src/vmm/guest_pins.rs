//! A guest's IOAPIC pin made real: the physical redirection entry for the routing the guest
//! programmed into its mediated IOAPIC, through an IRTE where the IOMMU remaps the IOAPIC's
//! interrupts (remappable format), else in compatibility format aimed at this CPU.

use crate::iommu::{CpuTarget, DmaRemapping, PinEntry, PinRequest};
use crate::memory::FrameAlloc;
use crate::virq::ioapic::PhysicalRouting;
use crate::vtd::regs::VtdMmio;
use alloc::format;
use alloc::string::String;

/// The physical redirection entry for the guest's pin `routing` on IOAPIC `ioapic_id`, delivered
/// at `cpu`; `dma` is the IOMMU when it is up. The caller masks the pin on error.
pub fn physical_entry<M: VtdMmio>(
    dma: Option<&mut DmaRemapping<M>>,
    ioapic_id: u8,
    routing: PhysicalRouting,
    cpu: CpuTarget,
    frames: &mut impl FrameAlloc,
) -> Result<u64, String> {
    let Some(dma) = dma else {
        return u8::try_from(cpu.apic_id)
            .map(|id| routing.compatibility_entry(id))
            .map_err(|_| format!("APIC ID {} needs interrupt remapping", cpu.apic_id));
    };
    let req = PinRequest {
        ioapic_id,
        pin: routing.pin,
        vector: routing.vector,
        level: routing.level,
        active_low: routing.active_low,
        masked: routing.masked,
        cpu,
    };
    match dma.ioapic_pin_entry(&req, frames)? {
        PinEntry::Remapped(entry) => Ok(entry),
        PinEntry::Masked => Ok(PhysicalRouting::MASKED_ENTRY),
        PinEntry::Compatibility => {
            let apic_id = u8::try_from(cpu.apic_id).map_err(|_| {
                format!(
                    "APIC ID {} does not fit a compatibility-format IOAPIC entry (8 bits)",
                    cpu.apic_id
                )
            })?;
            Ok(routing.compatibility_entry(apic_id))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::test_frames::TestFrames;
    use crate::vtd::regs::fake::FakeVtd;

    const CPU: CpuTarget = CpuTarget {
        apic_id: 2,
        x2apic: false,
    };

    fn pin3(vector: u8, masked: bool, level: bool) -> PhysicalRouting {
        PhysicalRouting {
            pin: 3,
            vector,
            masked,
            level,
            active_low: false,
        }
    }

    #[test]
    fn without_an_iommu_pins_use_compatibility_format() {
        let mut f = TestFrames::default();
        // 82093AA 3.2.4: vector 0x40, level (bit 15), destination xAPIC 2 in bits 63:56.
        let entry = physical_entry::<FakeVtd>(None, 0, pin3(0x40, false, true), CPU, &mut f);
        assert_eq!(entry, Ok(0x0200_0000_0000_8040));
        let wide = CpuTarget {
            apic_id: 0x100,
            x2apic: true,
        };
        assert!(
            physical_entry::<FakeVtd>(None, 0, pin3(0x40, false, true), wide, &mut f)
                .unwrap_err()
                .contains("needs interrupt remapping")
        );
    }
}
