//! The few hardware reads platform discovery needs, behind a trait so that discovery (ACPI and
//! fallback paths alike) is unit-tested with a fake.

use super::apic::{IOAPIC_IOWIN_OFFSET, IOAPIC_REG_ID};

/// VER (0x0), CAP (0x8) and ECAP (0x10) of a VT-d remapping unit (VT-d 11.4.1-11.4.3).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DrhdRegisters {
    pub version: u32,
    pub cap: u64,
    pub ecap: u64,
}

/// Hardware reads used by [`super::Platform::discover_with`].
pub trait PlatformProbe {
    /// IA32_APIC_BASE (MSR 0x1B).
    fn read_apic_base_msr(&self) -> u64;
    /// The running (bootstrap) processor's APIC id.
    fn current_apic_id(&self) -> u32;
    /// IOAPIC register `reg` through IOREGSEL (`base`) and IOWIN (`base + 0x10`).
    fn read_ioapic_reg(&self, base: u64, reg: u8) -> u32;
    /// The identification registers of the VT-d unit at `base`.
    fn read_drhd_regs(&self, base: u64) -> DrhdRegisters;
}

/// The real machine.
pub struct HardwareProbe {
    _private: (),
}

impl HardwareProbe {
    /// # Safety
    /// Runs at CPL 0 with all physical memory, device registers included, identity-mapped and
    /// uncached where it is MMIO; nothing else is using the IOAPIC's IOREGSEL/IOWIN window at
    /// the same time (discovery runs on the BSP before interrupts are enabled).
    pub unsafe fn new() -> Self {
        Self { _private: () }
    }
}

impl PlatformProbe for HardwareProbe {
    fn read_apic_base_msr(&self) -> u64 {
        // SAFETY: CPL 0 (constructor contract); IA32_APIC_BASE exists on every x86_64 CPU.
        unsafe { crate::arch::msr::read(crate::arch::msr::APIC_BASE) }
    }

    fn current_apic_id(&self) -> u32 {
        crate::arch::cpu::initial_apic_id()
    }

    fn read_ioapic_reg(&self, base: u64, reg: u8) -> u32 {
        let select = base as *mut u32;
        let window = (base + IOAPIC_IOWIN_OFFSET) as *const u32;
        // SAFETY: identity-mapped uncached MMIO (constructor contract); IOAPIC registers are
        // 32-bit and must be accessed as whole dwords (82093AA datasheet 3.0).
        unsafe {
            select.write_volatile(reg as u32);
            window.read_volatile()
        }
    }

    fn read_drhd_regs(&self, base: u64) -> DrhdRegisters {
        // SAFETY: identity-mapped uncached MMIO (constructor contract); the register base comes
        // from a DRHD. VER is 32-bit, CAP/ECAP 64-bit; the VT-d register chapter allows aligned
        // 32- or 64-bit accesses.
        unsafe {
            DrhdRegisters {
                version: (base as *const u32).read_volatile(),
                cap: ((base + 0x8) as *const u64).read_volatile(),
                ecap: ((base + 0x10) as *const u64).read_volatile(),
            }
        }
    }
}

/// Reads an IOAPIC's id from its ID register (bits 27:24).
pub fn ioapic_id(probe: &dyn PlatformProbe, base: u64) -> u8 {
    ((probe.read_ioapic_reg(base, IOAPIC_REG_ID) >> 24) & 0xf) as u8
}
