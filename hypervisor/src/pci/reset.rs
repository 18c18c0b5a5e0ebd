//! Resetting a function before it is given to a guest and after it is taken back, so no state (DMA
//! descriptors, secrets) passes between owners. Function-level reset where the device offers it (PCIe
//! 6.6.2), otherwise a D3hot-to-D0 transition if that resets it (PCI PM 1.2 5.4: No_Soft_Reset = 0).
//! Both clear the configuration header, so it is saved first and restored after.

use super::enumerate::PciFunction;
use super::ConfigAccess;

/// How a function was reset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResetMethod {
    FunctionLevel,
    PowerState,
    /// The function offers neither: it keeps the state it had (the caller says so in the log).
    None,
}

/// PCIe Device Control register (capability + 8), bit 15: Initiate Function Level Reset.
const DEVICE_CONTROL: u16 = 8;
const INITIATE_FLR: u16 = 1 << 15;
/// PM Control/Status (capability + 4), bits 1:0: power state (0 = D0, 3 = D3hot).
const PMCSR: u16 = 4;
/// The header dwords restored after a reset: 0x04..0x40 (Command/Status to Max_Lat).
const HEADER: core::ops::Range<u16> = 0x04..0x40;

/// Resets `function`, waiting with `wait_ms` for the times the specifications require (100 ms after
/// FLR, PCIe 6.6.2; 10 ms after D3hot to D0, PCI PM 1.2 Table 5-6).
pub fn reset(
    access: &dyn ConfigAccess,
    function: &PciFunction,
    wait_ms: &mut dyn FnMut(u32),
) -> ResetMethod {
    let bdf = function.bdf;
    let method = if function.capabilities.flr() {
        ResetMethod::FunctionLevel
    } else if function
        .capabilities
        .power_management
        .is_some_and(|pm| !pm.no_soft_reset)
    {
        ResetMethod::PowerState
    } else {
        return ResetMethod::None;
    };
    let mut saved = [0u32; 15];
    for (slot, offset) in saved.iter_mut().zip(HEADER.step_by(4)) {
        *slot = access.read32(bdf, offset);
    }
    match method {
        ResetMethod::FunctionLevel => {
            let control = function.capabilities.pcie.map_or(0, |c| c.offset) + DEVICE_CONTROL;
            let value = access.read16(bdf, control);
            access.write16(bdf, control, value | INITIATE_FLR);
            wait_ms(100);
        }
        ResetMethod::PowerState => {
            let pmcsr = function
                .capabilities
                .power_management
                .map_or(0, |pm| pm.offset)
                + PMCSR;
            let value = access.read16(bdf, pmcsr) & !0b11;
            access.write16(bdf, pmcsr, value | 0b11);
            wait_ms(10);
            access.write16(bdf, pmcsr, value);
            wait_ms(10);
        }
        ResetMethod::None => {}
    }
    // BARs and the rest first, Command (which turns decoding back on) last.
    for (value, offset) in saved.iter().zip(HEADER.step_by(4)).skip(1) {
        access.write32(bdf, offset, *value);
    }
    access.write16(bdf, 0x04, saved[0] as u16);
    method
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pci::fake::{FakeConfigSpace, FakeFunction};
    use crate::pci::{BarKind, Bdf, Mechanism};

    fn space_with(f: FakeFunction) -> (FakeConfigSpace, PciFunction) {
        let space = FakeConfigSpace::new(Mechanism::Ecam);
        space.add(0, 3, 0, f);
        let topology = crate::pci::enumerate(&space);
        let function = topology
            .find(Bdf::new(0, 0, 3, 0).unwrap())
            .unwrap()
            .clone();
        (space, function)
    }

    #[test]
    fn a_function_without_flr_or_pm_is_not_reset() {
        let mut f = FakeFunction::new(0x1234, 0x11e8, 0x00ff00, 0);
        f.bar(
            0,
            BarKind::Memory32 {
                prefetchable: false,
            },
            0xfea0_0000,
            0x10_0000,
        );
        let (space, function) = space_with(f);
        let writes = space.writes.get();
        assert_eq!(
            reset(&space, &function, &mut |_| panic!("no wait")),
            ResetMethod::None
        );
        assert_eq!(space.writes.get(), writes, "nothing written");
    }

    #[test]
    fn power_state_reset_cycles_d3hot_and_restores_the_header() {
        let mut f = FakeFunction::new(0x8086, 0x10d3, 0x020000, 0);
        f.bar(
            0,
            BarKind::Memory32 {
                prefetchable: false,
            },
            0xfeb0_0000,
            0x2_0000,
        );
        // PM capability at 0x40: PMC (No_Soft_Reset clear), PMCSR writable in bits 1:0.
        f.capability(0x40, 0x01, &[0x03, 0x00, 0x00, 0x00, 0x00, 0x00]);
        f.set_writable(0x44, 2, 0x3);
        f.set16(0x04, 0x0006);
        let (space, function) = space_with(f);
        let mut waited = 0;
        assert_eq!(
            reset(&space, &function, &mut |ms| waited += ms),
            ResetMethod::PowerState
        );
        assert_eq!(waited, 20);
        let after = space.get(function.bdf);
        assert_eq!(after.get16(0x44) & 0b11, 0, "back in D0");
        assert_eq!(after.get32(0x10) & !0xF, 0xfeb0_0000, "BAR restored");
        assert_eq!(after.get16(0x04), 0x0006, "Command restored");
    }
}
