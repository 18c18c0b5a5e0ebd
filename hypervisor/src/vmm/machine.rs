//! The machine as exit handlers see it while one guest runs ([`MachineServices`]): the host's
//! LAPIC, IOAPIC, VT-d units, PCI configuration access and clock behind the [`HostServices`] and
//! [`InterruptHardware`] traits that `exits` and `interrupts` are written against (and host-tested
//! with fakes of).

use super::assignment::AssignedDevice;
use super::cpuid::CpuidContext;
use super::guest_msi::{self, HostCpu, MsiRoute};
use super::guest_pins;
use super::host_clock::HostClock;
use super::interrupts::InterruptHardware;
use super::msi_request::MsiRequest;
use super::msix::{self, MsixRequest};
use super::vcpu::HostServices;
use crate::arch::apic::{self, PhysicalIoapic};
use crate::arch::host_irq;
use crate::arch::tsc_calibration;
use crate::iommu::{DmaRemapping, DomainHandle};
use crate::memory::frames::FrameAllocator;
use crate::pci::{Bdf, ConfigAccess, PciTopology};
use crate::virq::ioapic::PhysicalRouting;
use crate::vmx::msr_policy;
use crate::vtd::regs::MmioRegisters;
use alloc::boxed::Box;

/// The host's view of PCI, lent to guests' virtual buses.
pub struct PciHost {
    pub topology: PciTopology,
    pub access: Box<dyn ConfigAccess>,
}

/// What the host learned bringing its interrupt hardware up.
#[derive(Clone, Copy)]
pub struct HostIrq {
    pub apic_id: u32,
    /// The IOAPIC guests' pins are on (its id names it in DMAR); base 0 when there is none.
    pub ioapic_id: u8,
    pub ioapic_base: u64,
}

/// Host timer period, in TSC ticks (the LAPIC timer's outside guests, the host clock's while one runs):
/// long enough that it adds well under one exit per 100 guest device interrupts to a workload (the
/// bench's ceiling), short enough to keep the host responsive.
pub(super) const HOST_TIMER_PERIOD_TSC: u64 = 5_000_000;

/// TSC ticks per millisecond, at the rate measured at boot (`arch::tsc_calibration`: against the
/// PIT, which in an emulator runs in the same emulated time as its TSC), so waits and run budgets are
/// real (emulated) milliseconds.
pub(super) fn tsc_per_ms() -> u64 {
    (tsc_calibration::tsc_hz() / 1000).max(1)
}

/// What a running guest's MSI changes are applied with: the machine's VT-d units (when up), the
/// guest's DMA domain on them, and its planned devices.
pub(super) struct GuestRouting<'a> {
    pub(super) remapping: Option<&'a mut DmaRemapping<MmioRegisters>>,
    pub(super) domain: Option<DomainHandle>,
    pub(super) devices: &'a [AssignedDevice],
}

impl GuestRouting<'_> {
    /// What routing one of the guest's functions needs: its planned device (requester ID, unit) and,
    /// when remapping is up and the guest has a domain, the units and that domain.
    fn for_device(
        &mut self,
        bdf: Bdf,
    ) -> (
        Option<&AssignedDevice>,
        Option<(&mut DmaRemapping<MmioRegisters>, DomainHandle)>,
    ) {
        let device = self.devices.iter().find(|d| d.bdf == bdf);
        let dma = match (self.remapping.as_deref_mut(), self.domain) {
            (Some(remapping), Some(handle)) => Some((remapping, handle)),
            _ => None,
        };
        (device, dma)
    }
}

/// The machine as exit handlers see it while one guest runs.
pub(super) struct MachineServices<'a, 'f> {
    pub(super) guest: &'a str,
    pub(super) frames: &'f mut FrameAllocator,
    pub(super) msr_bitmap: u64,
    pub(super) irq: Option<HostIrq>,
    pub(super) pci: Option<&'a PciHost>,
    pub(super) routing: Option<GuestRouting<'a>>,
    /// The compatibility-format warning was logged (once per guest).
    pub(super) warned_compatibility: bool,
    /// The host's tick and the guest's budget while it runs.
    pub(super) clock: HostClock,
    /// The CPUID policy's inputs: this host's XSAVE layout and measured TSC rate, and the guest's
    /// only vCPU (x2APIC ID 0).
    cpuid: CpuidContext,
}

impl<'a, 'f> MachineServices<'a, 'f> {
    /// `ticks` host ticks fell due while the guest ran: count them, read the VT-d fault records (the
    /// fault event is masked while a guest runs), and make sure no host vector is waiting in the LAPIC,
    /// where the guest's IDT would receive it (none should be: nothing of the host's is armed).
    pub(super) fn host_tick(&mut self, ticks: u64) {
        host_irq::add_timer_ticks(ticks);
        self.drain_dma_faults();
        if self.irq.is_some() && apic::host_vector_pending() {
            let windows = host_irq::drain_host_vectors();
            log::error!(
                "guest {}: a host vector was pending in the LAPIC while the guest ran (taken in {windows} window(s)): a host interrupt source was left armed",
                self.guest
            );
        }
    }

    /// A VT-d unit raised its fault event: log the faults and quarantine the devices behind them
    /// now, while the guest runs, not when it ends.
    pub(super) fn drain_dma_faults(&mut self) {
        if let Some(remapping) = self
            .routing
            .as_mut()
            .and_then(|r| r.remapping.as_deref_mut())
        {
            remapping.drain_faults(self.frames);
        }
    }

    pub(super) fn new(
        guest: &'a str,
        frames: &'f mut FrameAllocator,
        msr_bitmap: u64,
        irq: Option<HostIrq>,
    ) -> Self {
        Self {
            guest,
            frames,
            msr_bitmap,
            irq,
            pci: None,
            routing: None,
            warned_compatibility: false,
            clock: HostClock::start(0, HOST_TIMER_PERIOD_TSC, None),
            cpuid: CpuidContext::new(host_cpuid, tsc_calibration::tsc_hz(), 0, 1),
        }
    }
}

fn host_cpuid(leaf: u32, subleaf: u32) -> [u32; 4] {
    crate::arch::cpu::cpuid(leaf, subleaf)
}

impl InterruptHardware for MachineServices<'_, '_> {
    fn eoi(&mut self) {
        apic::eoi();
    }
    fn route_pin(&mut self, routing: PhysicalRouting) {
        let Some(irq) = self.irq else { return };
        // This CPU is in x2APIC mode (HostIrq exists only then).
        let host = HostCpu {
            apic_id: irq.apic_id,
            x2apic: true,
        };
        let remapping = self
            .routing
            .as_mut()
            .and_then(|r| r.remapping.as_deref_mut());
        let entry =
            guest_pins::physical_entry(remapping, irq.ioapic_id, routing, host, self.frames);
        let entry = entry.unwrap_or_else(|why| {
            log::error!(
                "guest {}: IOAPIC pin {} left masked: {why}",
                self.guest,
                routing.pin
            );
            PhysicalRouting::MASKED_ENTRY
        });
        // SAFETY: the base is the platform's IOAPIC, identity-mapped; only this CPU programs it.
        unsafe { PhysicalIoapic::new(irq.ioapic_base) }.set_entry(routing.pin, entry);
    }
    fn host_timer_tick(&mut self) {
        host_irq::timer_tick();
    }
    fn dma_fault_event(&mut self) {
        host_irq::dma_fault_event();
    }
    fn intercept_eoi(&mut self, intercept: bool) {
        let (offset, bit) = const { msr_policy::eoi_write_bit() };
        // SAFETY: the guest's MSR bitmap frame (4 KiB, `offset` lies inside it), identity-mapped;
        // the CPU reads it at each RDMSR/WRMSR.
        let byte = unsafe { &mut *((self.msr_bitmap + offset as u64) as *mut u8) };
        if intercept {
            *byte |= 1 << bit;
        } else {
            *byte &= !(1 << bit);
        }
    }
}

impl HostServices for MachineServices<'_, '_> {
    fn console_line(&mut self, line: &str) {
        crate::println!("[guest {}] {}", self.guest, line);
    }
    fn cpuid(&self, leaf: u32, subleaf: u32) -> [u32; 4] {
        host_cpuid(leaf, subleaf)
    }
    fn cpuid_context(&self) -> CpuidContext {
        self.cpuid
    }
    fn rdtsc(&self) -> u64 {
        crate::arch::cpu::rdtsc()
    }
    fn host_timer_ticks(&self) -> u64 {
        host_irq::timer_ticks()
    }
    fn next_host_deadline(&self) -> u64 {
        self.clock.next_deadline()
    }
    fn guest_tpr(&self) -> u8 {
        if self.irq.is_some() {
            apic::tpr()
        } else {
            0
        }
    }
    fn pci_config(&self) -> Option<&dyn ConfigAccess> {
        self.pci.map(|host| host.access.as_ref())
    }
    fn route_guest_msi(&mut self, req: MsiRequest) -> Option<u8> {
        let guest = self.guest;
        let (Some(host), Some(routing)) = (self.pci, self.routing.as_mut()) else {
            return None;
        };
        let function = host.topology.find(req.bdf)?;
        let Some(irq) = self.irq else {
            log::warn!(
                "guest {guest}: {}'s MSI not routed: this CPU has no x2APIC",
                req.bdf
            );
            return None;
        };
        let cpu = HostCpu {
            apic_id: irq.apic_id,
            x2apic: true,
        };
        let (device, dma) = routing.for_device(req.bdf);
        let route = guest_msi::route_guest_msi(
            &req,
            function,
            device,
            dma,
            cpu,
            host.access.as_ref(),
            self.frames,
        );
        match &route {
            Ok(MsiRoute::Remapped(m)) => log::info!(
                "guest {guest}: {} MSI vector {:#x} -> remapped (address {:#x})",
                req.bdf,
                req.vector,
                m.address
            ),
            Ok(MsiRoute::Compatibility(_)) if !self.warned_compatibility => {
                self.warned_compatibility = true;
                log::warn!(
                    "guest {guest}: {}'s MSI programmed in compatibility format (vector {:#x} to this CPU): \
                     no interrupt remapping covers it (no IOMMU, or remapping left off for IOAPIC pins), \
                     so nothing confines which vectors the device can raise",
                    req.bdf,
                    req.vector
                );
            }
            Ok(_) => {}
            Err(why) => log::warn!(
                "guest {guest}: {}'s MSI (vector {:#x}) left disabled: {why}",
                req.bdf,
                req.vector
            ),
        }
        route.ok()?.guest_vector(&req)
    }
    fn route_guest_msix(&mut self, req: MsixRequest) -> Option<u8> {
        let guest = self.guest;
        let (Some(host), Some(routing)) = (self.pci, self.routing.as_mut()) else {
            return None;
        };
        let function = host.topology.find(req.bdf)?;
        let cap = function.capabilities.msix?;
        let Some(irq) = self.irq else {
            log::warn!(
                "guest {guest}: {}'s MSI-X not routed: this CPU has no x2APIC",
                req.bdf
            );
            return None;
        };
        let table_at = function
            .bars
            .iter()
            .find(|b| b.index == cap.table.bir)?
            .base
            + u64::from(cap.table.offset);
        // SAFETY: the table lies in the function's memory BAR, identity-mapped like all MMIO.
        let mut table = unsafe { msix::PhysicalMsixTable::new(table_at) };
        let cpu = HostCpu {
            apic_id: irq.apic_id,
            x2apic: true,
        };
        let (device, dma) = routing.for_device(req.bdf);
        let route = guest_msi::route_guest_msix(
            &req,
            function,
            device,
            dma,
            cpu,
            host.access.as_ref(),
            &mut table,
            self.frames,
        );
        match &route {
            Ok(MsiRoute::Remapped(m)) => log::info!(
                "guest {guest}: {} MSI-X entry {} vector {:#x} -> remapped (address {:#x})",
                req.bdf,
                req.entry,
                req.vector,
                m.address
            ),
            Ok(_) => {}
            Err(why) => log::warn!(
                "guest {guest}: {}'s MSI-X entry {} (vector {:#x}) left masked: {why}",
                req.bdf,
                req.entry,
                req.vector
            ),
        }
        route.ok()?.guest_vector(&req.as_msi())
    }
    fn device_mmio(&mut self, hpa: u64, size: u8, write: Option<u64>) -> u64 {
        // SAFETY: `hpa` comes from the guest's MSI-X model, which forwards only accesses inside an
        // assigned function's memory BAR (identity-mapped); the size is the instruction's.
        unsafe {
            match write {
                Some(v) => {
                    crate::arch::mmio::write(hpa, size, v);
                    0
                }
                None => crate::arch::mmio::read(hpa, size).unwrap_or(u64::MAX),
            }
        }
    }
    fn read_dr6(&self) -> u64 {
        crate::arch::debug_regs::read_dr6()
    }
    fn write_dr6(&mut self, value: u64) {
        // SAFETY: CPL 0; `events::merge_dr6` keeps bits 63:32 clear; the host never uses DR6.
        unsafe { crate::arch::debug_regs::write_dr6(value) }
    }
    fn xsetbv(&mut self, xcr0: u64) {
        if crate::arch::xcr::host_osxsave() {
            // SAFETY: CR4.OSXSAVE is set and `validate::xcr0_write` accepted the value against this
            // CPU's CPUID leaf 0xD (or it is the reset value, x87 only).
            unsafe { crate::arch::xcr::xsetbv0(xcr0) }
        } else {
            log::error!(
                "guest {}: XSETBV {xcr0:#x} not performed: the host's CR4.OSXSAVE is clear",
                self.guest
            );
        }
    }
}
