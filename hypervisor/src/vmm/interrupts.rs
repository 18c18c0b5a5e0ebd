//! A guest's interrupts, in two parts: the VM's ([`VmInterrupts`]: its mediated IOAPIC, with
//! emulated pins that device models such as COM1 drive, and the device vectors its pins and MSIs
//! are routed to) and each vCPU's ([`VcpuInterrupts`]: its virtual x2APIC, host interrupts that
//! arrive while it runs (baseline only, and only if something other than the host clock raised
//! one), and injection (the `baseline` path, and ELI's path for virtual interrupts such as the
//! virtual LAPIC timer and self-IPIs)). What crosses between them (the IOAPIC sending to a local
//! APIC, a level-triggered EOI reaching the IOAPIC) takes both. Hardware effects go through
//! [`InterruptHardware`], so the logic is host-tested.
//!
//! Vector ownership: the host's vectors are [`HOST_PRIORITY_FLOOR`] and above (its timer, the VT-d
//! fault event, spurious); a guest may route its pins and MSIs only to [`GUEST_VECTORS`], which keeps
//! the physical vector equal to the guest's (ELI delivers through the guest's own gate).

use super::guest_platform::COM1_GSI;
use crate::arch::apic::{
    DMA_FAULT_VECTOR, HOST_PRIORITY_FLOOR, HOST_TIMER_VECTOR, SPURIOUS_VECTOR,
};
use crate::config::InterruptMode;
use crate::pci::Bdf;
use crate::virq::ioapic::{
    EoiOutcome, IoapicInterrupt, IoapicWriteEffect, PhysicalRouting, PinSet, VirtualIoapic,
};
use crate::virq::vector_set::VectorSet;
use crate::virq::virtual_apic::VirtualApicPage;
use crate::virq::x2apic::{IpiReach, WriteEffect, X2apic, X2apicFault};
use alloc::boxed::Box;
use alloc::vec::Vec;

/// Guest-physical base of the mediated IOAPIC (the architectural default).
pub const IOAPIC_GPA: u64 = 0xFEC0_0000;
pub const IOAPIC_WINDOW: u64 = 0x1000;
/// Lowest vector a guest may route a device to (0..31 are exceptions).
const FIRST_DEVICE_VECTOR: u8 = 0x20;
/// The vectors a guest's devices may use: its pins and its MSIs keep the guest's vector on the
/// physical interrupt, so they must not collide with the host's.
pub const GUEST_VECTORS: core::ops::Range<u8> = FIRST_DEVICE_VECTOR..HOST_PRIORITY_FLOOR;
/// Pins the mediated IOAPIC shows (the Bochs/QEMU IOAPIC has 24).
const IOAPIC_PINS: u8 = 24;

/// What interrupt handling does to the machine.
pub trait InterruptHardware {
    /// EOI to the physical local APIC.
    fn eoi(&mut self);
    /// Programs the physical IOAPIC entry of one of the guest's pins (destination: this CPU).
    fn route_pin(&mut self, routing: PhysicalRouting);
    /// Accounts a host timer interrupt.
    fn host_timer_tick(&mut self);
    /// Accounts a VT-d fault event: the units' fault records need draining.
    fn dma_fault_event(&mut self);
    /// Intercepts (true) or passes through (false) the guest's x2APIC EOI writes.
    fn intercept_eoi(&mut self, intercept: bool);
}

/// Counters the interrupt path keeps for the summary and the bench.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InterruptStats {
    /// Device interrupts injected into the guest (baseline, or ELI's fallback).
    pub injected: u64,
    /// Interrupts posted to the virtual-APIC page for the CPU to deliver (APICv).
    pub posted: u64,
    /// Host interrupts taken while the guest ran.
    pub host_interrupts: u64,
    /// Interrupts for vectors nobody owns (EOI'd and dropped).
    pub stray: u64,
    /// Guest routings refused (vector reserved by the host or illegal); counted by the VM
    /// ([`VmInterrupts::refused_routings`]) and filled in for the report.
    pub refused_routings: u64,
    /// EOI writes that exited (every one in baseline; under ELI only those for injected
    /// interrupts, the guest's device interrupts' EOIs reaching the LAPIC directly; under APICv
    /// only those of level-triggered interrupts, as EOI-induced exits).
    pub eoi_exits: u64,
}

/// The VM's part: the mediated IOAPIC and the device vectors (shared by its vCPUs).
pub struct VmInterrupts {
    pub mode: InterruptMode,
    pub ioapic: VirtualIoapic,
    /// Vectors the guest's unmasked pins and enabled MSIs are routed to (a baseline external-interrupt
    /// exit on one of them is the guest's; any other vector is the host's).
    pub device_vectors: VectorSet,
    /// The vector each assigned function's enabled MSI carries.
    msi_vectors: Vec<(Bdf, Option<u16>, u8)>,
    /// The device vectors its unmasked level-triggered pins are routed to (kept with
    /// `device_vectors`, so an exit looks one up instead of walking the pins).
    level_vectors: VectorSet,
    /// Guest routings refused (vector reserved by the host or illegal).
    pub refused_routings: u64,
}

/// One vCPU's part: its virtual x2APIC and what it owes the physical LAPIC.
pub struct VcpuInterrupts {
    /// The VM's interrupt mode (each vCPU decides its own EOI passthrough by it).
    pub mode: InterruptMode,
    pub apic: X2apic,
    pub stats: InterruptStats,
    /// ELI: EOI writes pass straight to the LAPIC (no virtual interrupt in service).
    eoi_passthrough: bool,
    /// Baseline and APICv: level-triggered device vectors still in the physical ISR, EOI'd when
    /// the guest EOIs them (see [`Self::external_interrupt`]).
    owed_physical_eois: VectorSet,
    /// APICv: the vCPU's virtual-APIC page (the CPU delivers from its IRR and completes EOIs in it),
    /// and the vectors whose EOI must exit, as the VMCS's EOI-exit bitmap last got them.
    apicv: Option<Apicv>,
}

/// One vCPU's APICv state: the virtual x2APIC model keeps the timer, LVTs, ICR and SVR, and every
/// interrupt it accepts moves on to this page before the next entry.
#[derive(Debug)]
struct Apicv {
    page: Box<VirtualApicPage>,
    /// Vectors whose EOI exits: those last requested level-triggered (SDM Vol. 3C 29.1.2).
    eoi_exits: VectorSet,
    /// Whether `eoi_exits` changed since the VMCS was given it.
    eoi_exits_changed: bool,
}

/// What the next VM entry must tell the CPU after interrupts were posted (APICv).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Posted {
    /// The highest vector posted since the last entry: RVI must be at least this.
    pub highest: Option<u8>,
    /// The EOI-exit bitmap, when it changed.
    pub eoi_exit_bitmap: Option<VectorSet>,
}

impl Default for VmInterrupts {
    fn default() -> Self {
        Self::new(InterruptMode::Baseline, &[])
    }
}

impl Default for VcpuInterrupts {
    fn default() -> Self {
        Self::new(InterruptMode::Baseline)
    }
}

impl core::fmt::Debug for VmInterrupts {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("VmInterrupts")
            .field("mode", &self.mode)
            .field("refused_routings", &self.refused_routings)
            .finish_non_exhaustive()
    }
}

impl core::fmt::Debug for VcpuInterrupts {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("VcpuInterrupts")
            .field("mode", &self.mode)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

/// An x2APIC access the guest may not make: inject #GP(0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestFault;

impl From<X2apicFault> for GuestFault {
    fn from(_: X2apicFault) -> Self {
        GuestFault
    }
}

impl VmInterrupts {
    /// Interrupts for a guest that owns IOAPIC `pins`; COM1's pin is emulated unless assigned.
    pub fn new(mode: InterruptMode, pins: &[u8]) -> Self {
        let mut ioapic = VirtualIoapic::new(0, IOAPIC_PINS, PinSet::from_pins(pins));
        ioapic.emulate(COM1_GSI);
        Self {
            mode,
            ioapic,
            device_vectors: VectorSet::new(),
            msi_vectors: Vec::new(),
            level_vectors: VectorSet::new(),
            refused_routings: 0,
        }
    }

    /// An emulated device drove emulated pin `pin`'s line high. A rising edge (or a level the
    /// IOAPIC may send) becomes a request in the virtual x2APIC of `cpu` (the only vCPU: every
    /// redirection entry reaches it), which `irq_exits::prepare_entry` injects once the guest's
    /// RFLAGS.IF and TPR allow. A line already high sends nothing.
    pub fn raise_emulated_pin(&mut self, pin: u8, cpu: &mut VcpuInterrupts) {
        if !self.ioapic.emulated().contains(pin) || self.ioapic.line(pin) {
            return;
        }
        if let Some(irq) = self.ioapic.assert(pin) {
            cpu.accept(irq);
        }
    }

    /// An emulated device drove emulated pin `pin`'s line low.
    pub fn lower_emulated_pin(&mut self, pin: u8) {
        if self.ioapic.emulated().contains(pin) {
            self.ioapic.deassert(pin);
        }
    }

    /// [`Self::raise_emulated_pin`] or [`Self::lower_emulated_pin`], by the line's level.
    pub fn set_emulated_pin(&mut self, pin: u8, high: bool, cpu: &mut VcpuInterrupts) {
        if high {
            self.raise_emulated_pin(pin, cpu);
        } else {
            self.lower_emulated_pin(pin);
        }
    }

    /// An EOI reached the IOAPIC for `vector` (the local APIC's broadcast of a level-triggered
    /// EOI, or the IOAPIC's EOI register): emulated level pins still asserted are sent again.
    fn ioapic_eoi_done(&mut self, vector: u8, outcome: EoiOutcome, cpu: &mut VcpuInterrupts) {
        for pin in outcome.resent.iter() {
            if self.ioapic.emulated().contains(pin) {
                cpu.accept(IoapicInterrupt {
                    pin,
                    vector,
                    level: true,
                });
            }
        }
    }

    /// Sets up the physical side before the guest first runs: every assigned pin masked.
    pub fn start(&mut self, hw: &mut impl InterruptHardware) {
        for pin in self.ioapic.assigned().iter() {
            if let Some(routing) = self.ioapic.routing(pin) {
                hw.route_pin(PhysicalRouting {
                    masked: true,
                    ..routing
                });
            }
        }
    }

    /// A guest access to the mediated IOAPIC window; returns the value read (0 for writes) and whether
    /// the set of device vectors changed. What the IOAPIC sends goes to `cpu`.
    pub fn ioapic_access(
        &mut self,
        offset: u64,
        size: u8,
        write: Option<u32>,
        cpu: &mut VcpuInterrupts,
        hw: &mut impl InterruptHardware,
    ) -> (u32, bool) {
        let Some(value) = write else {
            return (self.ioapic.mmio_read(offset, size), false);
        };
        let mut routing = match self.ioapic.mmio_write(offset, size, value) {
            IoapicWriteEffect::Routing(routing) => routing,
            IoapicWriteEffect::Deliver(irq) => {
                cpu.accept(irq);
                return (0, false);
            }
            IoapicWriteEffect::Eoi { vector, outcome } => {
                self.ioapic_eoi_done(vector, outcome, cpu);
                return (0, false);
            }
            IoapicWriteEffect::None | IoapicWriteEffect::Ignored(_) => return (0, false),
        };
        if !(FIRST_DEVICE_VECTOR..HOST_PRIORITY_FLOOR).contains(&routing.vector) && !routing.masked
        {
            log::warn!(
                "guest routed IOAPIC pin {} to vector {:#x}: guests may use {FIRST_DEVICE_VECTOR:#x}..{HOST_PRIORITY_FLOOR:#x}; pin stays masked",
                routing.pin,
                routing.vector
            );
            self.refused_routings += 1;
            routing.masked = true;
        }
        hw.route_pin(routing);
        (0, self.recompute_device_vectors())
    }

    /// Function `bdf`'s MSI now reaches the guest on `vector` (`None`: disabled, or not routed).
    /// Returns whether the device vectors changed.
    pub fn msi_vector(&mut self, bdf: Bdf, vector: Option<u8>) -> bool {
        self.source_vector((bdf, None), vector)
    }

    /// [`Self::msi_vector`] for MSI-X table entry `entry` of `bdf`.
    pub fn msix_vector(&mut self, bdf: Bdf, entry: u16, vector: Option<u8>) -> bool {
        self.source_vector((bdf, Some(entry)), vector)
    }

    fn source_vector(&mut self, (bdf, entry): (Bdf, Option<u16>), vector: Option<u8>) -> bool {
        self.msi_vectors.retain(|&(b, e, _)| (b, e) != (bdf, entry));
        if let Some(v) = vector.filter(|v| GUEST_VECTORS.contains(v)) {
            self.msi_vectors.push((bdf, entry, v));
        }
        self.recompute_device_vectors()
    }

    /// Device vectors from the unmasked pins and the enabled MSIs; whether they changed.
    fn recompute_device_vectors(&mut self) -> bool {
        let before = self.device_vectors;
        self.device_vectors = VectorSet::new();
        self.level_vectors = VectorSet::new();
        for pin in self.ioapic.assigned().iter() {
            if let Some(r) = self.ioapic.routing(pin).filter(|r| !r.masked) {
                if GUEST_VECTORS.contains(&r.vector) {
                    self.device_vectors.insert(r.vector);
                    if r.level {
                        self.level_vectors.insert(r.vector);
                    }
                }
            }
        }
        for &(_, _, vector) in &self.msi_vectors {
            self.device_vectors.insert(vector);
        }
        before != self.device_vectors
    }
}

impl VcpuInterrupts {
    /// The interrupt state of the VM's only vCPU (x2APIC ID 0, as the guest's ACPI tables say).
    pub fn new(mode: InterruptMode) -> Self {
        Self {
            mode,
            apic: X2apic::new(0),
            stats: InterruptStats::default(),
            eoi_passthrough: false,
            owed_physical_eois: VectorSet::new(),
            apicv: (mode == InterruptMode::Apicv).then(|| Apicv {
                page: VirtualApicPage::new(),
                eoi_exits: VectorSet::new(),
                eoi_exits_changed: false,
            }),
        }
    }

    /// APICv: the virtual-APIC page the VMCS points at.
    pub fn virtual_apic(&self) -> Option<&VirtualApicPage> {
        self.apicv.as_ref().map(|a| &*a.page)
    }

    /// APICv, before each entry: moves what the virtual x2APIC accepted since the last entry (device
    /// interrupts, the timer, self-IPIs, emulated pins) into the virtual-APIC page, where the CPU
    /// delivers it when the guest can take it (SDM Vol. 3C 29.2), and says what the VMCS needs.
    pub fn post_requested(&mut self) -> Posted {
        let Some(apicv) = self.apicv.as_mut() else {
            return Posted::default();
        };
        let mut highest = None;
        while let Some((vector, level)) = self.apic.take_requested() {
            apicv.page.request(vector, level);
            // A level-triggered EOI must reach the host (the physical LAPIC it owes, the IOAPIC's
            // remote IRR); an edge-triggered one completes in the page alone.
            if level != apicv.eoi_exits.contains(vector) {
                if level {
                    apicv.eoi_exits.insert(vector);
                } else {
                    apicv.eoi_exits.remove(vector);
                }
                apicv.eoi_exits_changed = true;
            }
            highest = highest.max(Some(vector));
            self.stats.posted += 1;
        }
        let eoi_exit_bitmap =
            core::mem::take(&mut apicv.eoi_exits_changed).then_some(apicv.eoi_exits);
        Posted {
            highest,
            eoi_exit_bitmap,
        }
    }

    /// APICv: the guest's EOI of level-triggered `vector` exited after the CPU completed it in the
    /// virtual-APIC page (an EOI-induced exit, SDM Vol. 3C 29.1.2): pass it on to the physical
    /// LAPIC, if the host owes it one, and to the IOAPIC.
    pub fn virtualized_eoi(
        &mut self,
        vector: u8,
        vm: &mut VmInterrupts,
        hw: &mut impl InterruptHardware,
    ) {
        self.stats.eoi_exits += 1;
        if self.owed_physical_eois.contains(vector) {
            self.owed_physical_eois.remove(vector);
            hw.eoi();
        }
        let level = self
            .apicv
            .as_ref()
            .is_some_and(|a| a.page.is_level_triggered(vector));
        if level {
            let outcome = vm.ioapic.eoi(vector);
            vm.ioapic_eoi_done(vector, outcome, self);
        }
    }

    /// The IOAPIC sent `irq` (an emulated pin): the local APIC accepts it into IRR, TMR recording
    /// its trigger mode so that its EOI comes back to the IOAPIC (SDM 11.8.4, 11.8.5).
    fn accept(&mut self, irq: IoapicInterrupt) {
        if self.apic.request(irq.vector, irq.level).is_err() {
            self.stats.stray += 1;
        }
    }

    /// Sets up the physical side before the vCPU first runs: in ELI mode EOI passed through.
    pub fn start(&mut self, hw: &mut impl InterruptHardware) {
        if self.mode == InterruptMode::Eli {
            self.set_eoi_passthrough(true, hw);
        }
    }

    fn set_eoi_passthrough(&mut self, on: bool, hw: &mut impl InterruptHardware) {
        if self.eoi_passthrough != on {
            self.eoi_passthrough = on;
            hw.intercept_eoi(!on);
        }
    }

    /// A host-owned vector arrived while the guest ran (a baseline external-interrupt exit; none is
    /// armed then, so this is a safety net). It is in the LAPIC's ISR: handle it and EOI it here, never
    /// inject it.
    fn host_vector(&mut self, vector: u8, hw: &mut impl InterruptHardware) {
        self.stats.host_interrupts += 1;
        match vector {
            HOST_TIMER_VECTOR => hw.host_timer_tick(),
            DMA_FAULT_VECTOR => hw.dma_fault_event(),
            // A spurious interrupt is not in service and takes no EOI (SDM 11.9).
            SPURIOUS_VECTOR => return,
            _ => self.stats.stray += 1,
        }
        hw.eoi();
    }

    /// Baseline and APICv: an external-interrupt exit acknowledged `vector`; the VM's device
    /// vectors say whether it is the guest's. It is requested in the virtual x2APIC, from where
    /// baseline injects it and APICv posts it.
    pub fn external_interrupt(
        &mut self,
        vector: u8,
        vm: &VmInterrupts,
        hw: &mut impl InterruptHardware,
    ) {
        if vector >= HOST_PRIORITY_FLOOR || !vm.device_vectors.contains(vector) {
            return self.host_vector(vector, hw);
        }
        // An edge-triggered interrupt is completed physically now and delivered virtually. A
        // level-triggered one stays in the physical ISR until the guest's EOI: completing it now
        // would let the IOAPIC send it again at once, the line still asserted (82093AA 3.4.2:
        // remote IRR clears on the EOI), and the guest would never run to quiet its device.
        let level = vm.level_vectors.contains(vector);
        if level {
            self.owed_physical_eois.insert(vector);
        } else {
            hw.eoi();
        }
        if self.apic.request(vector, level).is_err() {
            self.stats.stray += 1;
        }
    }

    /// The vector to inject now, if any (the caller checks the guest can take it, then calls
    /// [`Self::injected`]).
    pub fn pending(&self) -> Option<u8> {
        if self.apicv.is_some() {
            return None; // the CPU delivers from the virtual-APIC page
        }
        self.apic.highest_deliverable()
    }

    /// `vector` was injected: it is in service in the virtual APIC, so the guest's EOI must reach it.
    pub fn injected(&mut self, vector: u8, hw: &mut impl InterruptHardware) {
        self.apic.acknowledge(vector);
        self.stats.injected += 1;
        if self.mode == InterruptMode::Eli {
            self.set_eoi_passthrough(false, hw);
        }
    }

    /// Brings the virtual APIC's timer up to guest time `now` (TSC); a timer that expired becomes a
    /// pending interrupt.
    pub fn advance_to(&mut self, now: u64) {
        self.apic.advance_to(now);
    }

    /// TSC at which the virtual timer next fires, if it is armed and unmasked.
    pub fn next_timer_due(&self) -> Option<u64> {
        self.apic.next_timer_due()
    }

    pub fn read_msr(&mut self, msr: u32, now: u64) -> Result<u64, GuestFault> {
        self.advance_to(now);
        Ok(self.apic.read_msr(msr)?)
    }

    /// A guest x2APIC register write that exited; a level-triggered EOI goes on to the VM's IOAPIC.
    pub fn write_msr(
        &mut self,
        msr: u32,
        value: u64,
        now: u64,
        vm: &mut VmInterrupts,
        hw: &mut impl InterruptHardware,
    ) -> Result<(), GuestFault> {
        self.advance_to(now);
        match self.apic.write_msr(msr, value)? {
            WriteEffect::Eoi(completed) => {
                self.stats.eoi_exits += 1;
                if let Some(done) = completed.filter(|c| self.owed_physical_eois.contains(c.vector))
                {
                    self.owed_physical_eois.remove(done.vector);
                    hw.eoi();
                }
                // No EOI-broadcast suppression (the version register's bit 24 is 0): a
                // level-triggered EOI goes on to the IOAPIC (SDM 11.8.5).
                if let Some(done) = completed.filter(|c| c.level_triggered) {
                    let outcome = vm.ioapic.eoi(done.vector);
                    vm.ioapic_eoi_done(done.vector, outcome, self);
                }
                if self.mode == InterruptMode::Eli && self.apic.highest_in_service().is_none() {
                    self.set_eoi_passthrough(true, hw);
                }
            }
            // IPIs that reach another CPU (and INIT/SIPI, which always do here) are refused.
            WriteEffect::Ipi(request) => match request.reach(self.apic.id()) {
                IpiReach::OnlySelf => {
                    self.apic.deliver_to_self(request).map_err(|_| GuestFault)?;
                }
                IpiReach::Nobody => {}
                IpiReach::IncludesOthers => return Err(GuestFault),
            },
            WriteEffect::None | WriteEffect::TimerChanged => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;

    /// The VM's and its vCPU's halves together, as one guest's exits see them.
    struct GuestInterrupts {
        vm: VmInterrupts,
        cpu: VcpuInterrupts,
    }

    impl GuestInterrupts {
        fn new(mode: InterruptMode, pins: &[u8]) -> Self {
            Self {
                vm: VmInterrupts::new(mode, pins),
                cpu: VcpuInterrupts::new(mode),
            }
        }
        fn start(&mut self, hw: &mut impl InterruptHardware) {
            self.vm.start(hw);
            self.cpu.start(hw);
        }
        fn raise_emulated_pin(&mut self, pin: u8) {
            self.vm.raise_emulated_pin(pin, &mut self.cpu);
        }
        fn lower_emulated_pin(&mut self, pin: u8) {
            self.vm.lower_emulated_pin(pin);
        }
        fn set_emulated_pin(&mut self, pin: u8, high: bool) {
            self.vm.set_emulated_pin(pin, high, &mut self.cpu);
        }
        fn ioapic_access(
            &mut self,
            offset: u64,
            size: u8,
            write: Option<u32>,
            hw: &mut impl InterruptHardware,
        ) -> (u32, bool) {
            self.vm
                .ioapic_access(offset, size, write, &mut self.cpu, hw)
        }
        fn msi_vector(&mut self, bdf: Bdf, vector: Option<u8>) -> bool {
            self.vm.msi_vector(bdf, vector)
        }
        fn external_interrupt(&mut self, vector: u8, hw: &mut impl InterruptHardware) {
            self.cpu.external_interrupt(vector, &self.vm, hw);
        }
        fn pending(&self) -> Option<u8> {
            self.cpu.pending()
        }
        fn injected(&mut self, vector: u8, hw: &mut impl InterruptHardware) {
            self.cpu.injected(vector, hw);
        }
        fn advance_to(&mut self, now: u64) {
            self.cpu.advance_to(now);
        }
        fn next_timer_due(&self) -> Option<u64> {
            self.cpu.next_timer_due()
        }
        fn read_msr(&mut self, msr: u32, now: u64) -> Result<u64, GuestFault> {
            self.cpu.read_msr(msr, now)
        }
        fn write_msr(
            &mut self,
            msr: u32,
            value: u64,
            now: u64,
            hw: &mut impl InterruptHardware,
        ) -> Result<(), GuestFault> {
            self.cpu.write_msr(msr, value, now, &mut self.vm, hw)
        }
    }

    #[derive(Default)]
    struct FakeHw {
        eois: u32,
        ticks: u32,
        dma_fault_events: u32,
        routes: Vec<PhysicalRouting>,
        eoi_intercepted: Option<bool>,
    }

    impl InterruptHardware for FakeHw {
        fn eoi(&mut self) {
            self.eois += 1;
        }
        fn route_pin(&mut self, routing: PhysicalRouting) {
            self.routes.push(routing);
        }
        fn host_timer_tick(&mut self) {
            self.ticks += 1;
        }
        fn dma_fault_event(&mut self) {
            self.dma_fault_events += 1;
        }
        fn intercept_eoi(&mut self, intercept: bool) {
            self.eoi_intercepted = Some(intercept);
        }
    }

    const SVR: u32 = 0x80F;
    const EOI: u32 = 0x80B;

    /// The guest programs pin 3 as on bare metal: high dword (destination), then low (vector 0x40).
    fn route_pin3(g: &mut GuestInterrupts, hw: &mut FakeHw, vector: u32) -> bool {
        g.ioapic_access(0x00, 4, Some(0x10 + 2 * 3 + 1), hw);
        g.ioapic_access(0x10, 4, Some(0), hw);
        g.ioapic_access(0x00, 4, Some(0x10 + 2 * 3), hw);
        g.ioapic_access(0x10, 4, Some(vector), hw).1
    }

    #[test]
    fn baseline_device_interrupt_is_eoied_physically_and_injected_once() {
        let (mut g, mut hw) = (
            GuestInterrupts::new(InterruptMode::Baseline, &[3]),
            FakeHw::default(),
        );
        g.write_msr(SVR, 0x1FF, 0, &mut hw).unwrap();
        assert!(
            route_pin3(&mut g, &mut hw, 0x40),
            "vector 0x40 became a device vector"
        );
        assert_eq!(
            hw.routes.last().map(|r| (r.pin, r.vector, r.masked)),
            Some((3, 0x40, false))
        );
        g.external_interrupt(0x40, &mut hw);
        assert_eq!(hw.eois, 1);
        assert_eq!(g.pending(), Some(0x40));
        g.injected(0x40, &mut hw);
        assert_eq!(g.pending(), None, "in service, not pending again");
        g.write_msr(EOI, 0, 0, &mut hw).unwrap();
        assert!(!g.cpu.apic.is_in_service(0x40));
        assert_eq!(g.cpu.stats.injected, 1);
    }

    #[test]
    fn baseline_level_interrupt_stays_in_the_physical_isr_until_the_guest_eois_it() {
        let (mut g, mut hw) = (
            GuestInterrupts::new(InterruptMode::Baseline, &[3]),
            FakeHw::default(),
        );
        g.write_msr(SVR, 0x1FF, 0, &mut hw).unwrap();
        // Level-triggered (bit 15), active low (bit 13), vector 0x40.
        route_pin3(&mut g, &mut hw, (1 << 15) | (1 << 13) | 0x40);
        g.external_interrupt(0x40, &mut hw);
        assert_eq!(hw.eois, 0, "still asserted: not completed physically yet");
        assert_eq!(g.pending(), Some(0x40));
        g.injected(0x40, &mut hw);
        assert_eq!(g.read_msr(0x818 + 2, 0), Ok(1), "virtual TMR says level");
        g.write_msr(EOI, 0, 0, &mut hw).unwrap();
        assert_eq!(hw.eois, 1, "the guest's EOI completes it physically");
        g.write_msr(EOI, 0, 0, &mut hw).unwrap();
        assert_eq!(hw.eois, 1, "and only once");
    }

    /// What the CPU does when it delivers `vector` from the virtual-APIC page (SDM Vol. 3C
    /// 29.2.2): VIRR to VISR. The tests stand in for it.
    fn cpu_delivers(g: &mut GuestInterrupts, vector: u8) {
        g.cpu
            .apicv
            .as_mut()
            .unwrap()
            .page
            .deliver_as_the_cpu_does(vector);
    }

    #[test]
    fn apicv_edge_interrupt_is_completed_physically_posted_once_and_eoied_without_an_exit() {
        let (mut g, mut hw) = (
            GuestInterrupts::new(InterruptMode::Apicv, &[3]),
            FakeHw::default(),
        );
        g.start(&mut hw);
        assert_eq!(hw.eoi_intercepted, None, "no ELI passthrough to flip");
        g.write_msr(SVR, 0x1FF, 0, &mut hw).unwrap();
        route_pin3(&mut g, &mut hw, 0x40);
        g.external_interrupt(0x40, &mut hw);
        assert_eq!(hw.eois, 1, "edge: completed physically at once");
        assert_eq!(g.pending(), None, "nothing to inject: the CPU delivers");
        let posted = g.cpu.post_requested();
        assert_eq!(posted.highest, Some(0x40));
        assert_eq!(posted.eoi_exit_bitmap, None, "edge: its EOI needs no exit");
        let page = g.cpu.virtual_apic().unwrap();
        assert!(page.is_requested(0x40) && !page.is_level_triggered(0x40));
        assert_eq!(g.cpu.post_requested(), Posted::default(), "posted once");
        assert_eq!((g.cpu.stats.posted, g.cpu.stats.injected), (1, 0));
    }

    #[test]
    fn apicv_level_interrupt_exits_on_its_eoi_which_the_host_passes_on() {
        let (mut g, mut hw) = (
            GuestInterrupts::new(InterruptMode::Apicv, &[3]),
            FakeHw::default(),
        );
        g.write_msr(SVR, 0x1FF, 0, &mut hw).unwrap();
        route_pin3(&mut g, &mut hw, (1 << 15) | (1 << 13) | 0x40);
        g.external_interrupt(0x40, &mut hw);
        assert_eq!(hw.eois, 0, "level: stays in the physical ISR");
        let posted = g.cpu.post_requested();
        let bitmap = posted.eoi_exit_bitmap.expect("the bitmap changed");
        assert_eq!(bitmap.iter().collect::<Vec<_>>(), [0x40]);
        assert!(g.cpu.virtual_apic().unwrap().is_level_triggered(0x40));
        cpu_delivers(&mut g, 0x40);
        g.cpu.virtualized_eoi(0x40, &mut g.vm, &mut hw);
        assert_eq!(hw.eois, 1, "the guest's EOI completes it physically");
        assert_eq!(g.cpu.stats.eoi_exits, 1);
        g.cpu.virtualized_eoi(0x40, &mut g.vm, &mut hw);
        assert_eq!(hw.eois, 1, "and only once");
        // The same vector edge-triggered again: its EOI no longer exits.
        route_pin3(&mut g, &mut hw, 0x40);
        g.external_interrupt(0x40, &mut hw);
        let posted = g.cpu.post_requested();
        assert_eq!(posted.eoi_exit_bitmap, Some(VectorSet::new()));
    }

    #[test]
    fn apicv_emulated_level_pin_is_sent_again_after_the_eoi_while_still_high() {
        let (mut g, mut hw) = (
            GuestInterrupts::new(InterruptMode::Apicv, &[]),
            FakeHw::default(),
        );
        g.write_msr(SVR, 0x1FF, 0, &mut hw).unwrap();
        // COM1's emulated pin, level-triggered, vector 0x44.
        g.ioapic_access(0x00, 4, Some(0x10 + 2 * u32::from(COM1_GSI)), &mut hw);
        g.ioapic_access(0x10, 4, Some((1 << 15) | 0x44), &mut hw);
        g.raise_emulated_pin(COM1_GSI);
        assert_eq!(g.cpu.post_requested().highest, Some(0x44));
        cpu_delivers(&mut g, 0x44);
        g.cpu.virtualized_eoi(0x44, &mut g.vm, &mut hw);
        assert_eq!(hw.eois, 0, "an emulated pin owes the LAPIC nothing");
        assert_eq!(
            g.cpu.post_requested().highest,
            Some(0x44),
            "the line is still high: the IOAPIC sends it again"
        );
        g.lower_emulated_pin(COM1_GSI);
        cpu_delivers(&mut g, 0x44);
        g.cpu.virtualized_eoi(0x44, &mut g.vm, &mut hw);
        assert_eq!(g.cpu.post_requested().highest, None);
    }

    #[test]
    fn apicv_posts_the_virtual_timer_and_self_ipis_but_nothing_while_software_disabled() {
        let (mut g, mut hw) = (
            GuestInterrupts::new(InterruptMode::Apicv, &[]),
            FakeHw::default(),
        );
        // COM1's emulated pin, edge, vector 0x44, raised while SVR still disables the APIC.
        g.ioapic_access(0x00, 4, Some(0x10 + 2 * u32::from(COM1_GSI)), &mut hw);
        g.ioapic_access(0x10, 4, Some(0x44), &mut hw);
        g.raise_emulated_pin(COM1_GSI);
        assert_eq!(g.cpu.post_requested().highest, None, "the request waits");
        g.write_msr(SVR, 0x1FF, 1000, &mut hw).unwrap();
        assert_eq!(g.cpu.post_requested().highest, Some(0x44));
        g.write_msr(0x83E, 0b1011, 1000, &mut hw).unwrap(); // divide by 1
        g.write_msr(0x832, 0x50, 1000, &mut hw).unwrap(); // one-shot, vector 0x50
        g.write_msr(0x838, 500, 1000, &mut hw).unwrap();
        g.advance_to(1500);
        // A fixed IPI to itself through the ICR (destination 0 = its own x2APIC ID).
        g.write_msr(0x830, 0x61, 1500, &mut hw).unwrap();
        assert_eq!(g.cpu.post_requested().highest, Some(0x61));
        let page = g.cpu.virtual_apic().unwrap();
        assert!(page.is_requested(0x44) && page.is_requested(0x50) && page.is_requested(0x61));
        assert_eq!(g.cpu.stats.posted, 3);
    }

    #[test]
    fn only_apicv_has_a_virtual_apic_page() {
        for mode in [InterruptMode::Baseline, InterruptMode::Eli] {
            let mut cpu = VcpuInterrupts::new(mode);
            assert!(cpu.virtual_apic().is_none());
            assert_eq!(cpu.post_requested(), Posted::default());
        }
        assert!(VcpuInterrupts::new(InterruptMode::Apicv)
            .virtual_apic()
            .is_some());
    }

    #[test]
    fn host_timer_is_handled_by_the_host_and_never_injected() {
        let (mut g, mut hw) = (
            GuestInterrupts::new(InterruptMode::Baseline, &[3]),
            FakeHw::default(),
        );
        g.write_msr(SVR, 0x1FF, 0, &mut hw).unwrap();
        g.external_interrupt(HOST_TIMER_VECTOR, &mut hw);
        assert_eq!((hw.ticks, hw.eois), (1, 1));
        assert_eq!(g.pending(), None);
        g.external_interrupt(SPURIOUS_VECTOR, &mut hw);
        assert_eq!(hw.eois, 1, "no EOI for a spurious interrupt");
        // The VT-d fault event is the host's too: accounted and EOI'd.
        g.external_interrupt(DMA_FAULT_VECTOR, &mut hw);
        assert_eq!((hw.dma_fault_events, hw.eois), (1, 2));
        assert_eq!((g.pending(), g.cpu.stats.stray), (None, 0));
    }

    #[test]
    fn host_vectors_and_unassigned_pins_cannot_be_routed() {
        let (mut g, mut hw) = (
            GuestInterrupts::new(InterruptMode::Eli, &[3]),
            FakeHw::default(),
        );
        assert!(!route_pin3(&mut g, &mut hw, u32::from(HOST_TIMER_VECTOR)));
        assert!(hw.routes.last().unwrap().masked, "kept masked");
        assert_eq!(g.vm.refused_routings, 1);
        // Pin 5 is not the guest's: the write is ignored, nothing is routed.
        let before = hw.routes.len();
        g.ioapic_access(0x00, 4, Some(0x10 + 2 * 5), &mut hw);
        g.ioapic_access(0x10, 4, Some(0x41), &mut hw);
        assert_eq!(hw.routes.len(), before);
    }

    #[test]
    fn eli_intercepts_eoi_only_while_an_injected_interrupt_is_in_service() {
        let (mut g, mut hw) = (
            GuestInterrupts::new(InterruptMode::Eli, &[3]),
            FakeHw::default(),
        );
        g.start(&mut hw);
        assert_eq!(
            hw.eoi_intercepted,
            Some(false),
            "passthrough from the start"
        );
        g.write_msr(SVR, 0x1FF, 0, &mut hw).unwrap();
        g.write_msr(0x83F, 0x50, 0, &mut hw).unwrap(); // self-IPI: only deliverable by injection
        assert_eq!(g.pending(), Some(0x50));
        g.injected(0x50, &mut hw);
        assert_eq!(hw.eoi_intercepted, Some(true));
        g.write_msr(EOI, 0, 0, &mut hw).unwrap();
        assert_eq!(hw.eoi_intercepted, Some(false));
    }

    #[test]
    fn the_virtual_lapic_timer_fires_when_guest_time_reaches_it() {
        let (mut g, mut hw) = (
            GuestInterrupts::new(InterruptMode::Baseline, &[]),
            FakeHw::default(),
        );
        g.write_msr(SVR, 0x1FF, 1000, &mut hw).unwrap();
        g.write_msr(0x83E, 0b1011, 1000, &mut hw).unwrap(); // divide by 1
        g.write_msr(0x832, 0x50, 1000, &mut hw).unwrap(); // one-shot, vector 0x50
        g.write_msr(0x838, 500, 1000, &mut hw).unwrap();
        assert_eq!(g.next_timer_due(), Some(1500));
        g.advance_to(1499);
        assert_eq!(g.pending(), None);
        g.advance_to(1500);
        assert_eq!(g.pending(), Some(0x50));
    }

    #[test]
    fn msi_vectors_join_the_device_vectors_and_leave_them() {
        let (mut g, mut hw) = (
            GuestInterrupts::new(InterruptMode::Eli, &[3]),
            FakeHw::default(),
        );
        let edu = Bdf::new(0, 0, 3, 0).unwrap();
        let nic = Bdf::new(0, 0, 4, 0).unwrap();
        assert!(route_pin3(&mut g, &mut hw, 0x40));
        assert!(g.msi_vector(edu, Some(0x41)), "new vector");
        assert!(
            !g.msi_vector(edu, Some(0x41)),
            "same vector again: no change"
        );
        // A second function on the pin's vector adds nothing; moving edu's MSI does.
        assert!(!g.msi_vector(nic, Some(0x40)));
        assert!(g.msi_vector(edu, Some(0x42)));
        assert!(g.vm.device_vectors.contains(0x42) && !g.vm.device_vectors.contains(0x41));
        // A pin change keeps the MSI vectors (and the other way round).
        g.ioapic_access(0x00, 4, Some(0x10 + 2 * 3), &mut hw);
        let (_, changed) = g.ioapic_access(0x10, 4, Some(1 << 16 | 0x40), &mut hw);
        assert!(!changed, "nic still on 0x40");
        assert!(g.vm.device_vectors.contains(0x42) && g.vm.device_vectors.contains(0x40));
        assert!(g.msi_vector(nic, None));
        assert!(!g.vm.device_vectors.contains(0x40));
        // Host vectors never become device vectors.
        assert!(g.msi_vector(edu, Some(HOST_TIMER_VECTOR)));
        assert!(g.vm.device_vectors.is_empty());
        // Baseline path: an MSI on a device vector is injected, not treated as the host's.
        g.msi_vector(edu, Some(0x45));
        g.write_msr(SVR, 0x1FF, 0, &mut hw).unwrap();
        g.external_interrupt(0x45, &mut hw);
        assert_eq!(g.pending(), Some(0x45));
    }

    #[test]
    fn ipis_to_other_cpus_are_refused() {
        let (mut g, mut hw) = (
            GuestInterrupts::new(InterruptMode::Baseline, &[]),
            FakeHw::default(),
        );
        g.write_msr(SVR, 0x1FF, 0, &mut hw).unwrap();
        // INIT, all excluding self (SDM Figure 11-12: delivery mode 101, shorthand 11).
        assert_eq!(
            g.write_msr(0x830, (0b11 << 18) | (0b101 << 8), 0, &mut hw),
            Err(GuestFault)
        );
        // Fixed IPI to self by shorthand: delivered.
        assert_eq!(g.write_msr(0x830, (0b01 << 18) | 0x60, 0, &mut hw), Ok(()));
        assert_eq!(g.pending(), Some(0x60));
    }

    /// The guest programs emulated pin 4 (COM1) with `low` (vector, trigger, mask bits).
    fn program_pin4(g: &mut GuestInterrupts, hw: &mut FakeHw, low: u32) -> u32 {
        g.ioapic_access(0x00, 4, Some(0x10 + 2 * 4), hw);
        g.ioapic_access(0x10, 4, Some(low), hw).0
    }

    #[test]
    fn an_emulated_edge_pin_requests_its_vector_on_each_rising_edge() {
        let (mut g, mut hw) = (
            GuestInterrupts::new(InterruptMode::Baseline, &[3]),
            FakeHw::default(),
        );
        g.write_msr(SVR, 0x1FF, 0, &mut hw).unwrap();
        g.raise_emulated_pin(COM1_GSI);
        assert_eq!(g.pending(), None, "masked at reset: the edge is lost");
        g.lower_emulated_pin(COM1_GSI);
        let routes = hw.routes.len();
        program_pin4(&mut g, &mut hw, 0x34);
        assert_eq!(hw.routes.len(), routes, "nothing physical to program");
        assert!(
            !g.vm.device_vectors.contains(0x34),
            "never a physical vector"
        );
        g.raise_emulated_pin(COM1_GSI);
        assert_eq!(g.pending(), Some(0x34));
        g.injected(0x34, &mut hw);
        // Still high: no new edge, nothing more requested.
        g.raise_emulated_pin(COM1_GSI);
        assert_eq!(g.pending(), None);
        g.write_msr(EOI, 0, 0, &mut hw).unwrap();
        g.set_emulated_pin(COM1_GSI, false);
        g.set_emulated_pin(COM1_GSI, true);
        assert_eq!(g.pending(), Some(0x34));
        // Pins neither emulated nor the guest's are not driven.
        g.raise_emulated_pin(5);
        g.raise_emulated_pin(3);
        assert!(!g.vm.ioapic.line(5) && !g.vm.ioapic.line(3));
    }

    #[test]
    fn an_emulated_level_pin_is_sent_again_after_eoi_while_asserted() {
        let (mut g, mut hw) = (
            GuestInterrupts::new(InterruptMode::Eli, &[]),
            FakeHw::default(),
        );
        g.start(&mut hw);
        g.write_msr(SVR, 0x1FF, 0, &mut hw).unwrap();
        // Level, active high, masked; the line goes high; the guest unmasks: sent then.
        program_pin4(&mut g, &mut hw, 0x1_8045);
        g.raise_emulated_pin(COM1_GSI);
        assert_eq!(g.pending(), None);
        program_pin4(&mut g, &mut hw, 0x8045);
        assert_eq!(g.pending(), Some(0x45));
        g.injected(0x45, &mut hw);
        assert_eq!(hw.eoi_intercepted, Some(true), "the EOI must reach us");
        // The local APIC EOI (TMR set) reaches the IOAPIC: the line is still high, so again.
        g.write_msr(EOI, 0, 0, &mut hw).unwrap();
        assert_eq!(g.pending(), Some(0x45));
        g.injected(0x45, &mut hw);
        g.lower_emulated_pin(COM1_GSI);
        g.write_msr(EOI, 0, 0, &mut hw).unwrap();
        assert_eq!(g.pending(), None);
        assert_eq!(hw.eoi_intercepted, Some(false), "passthrough again");
        assert_eq!(program_pin4(&mut g, &mut hw, 0x8045), 0);
        // The IOAPIC's EOI register (+0x40) with the line high sends it again as well.
        g.raise_emulated_pin(COM1_GSI);
        g.injected(0x45, &mut hw);
        g.ioapic_access(0x40, 4, Some(0x45), &mut hw);
        assert!(g.cpu.apic.is_requested(0x45));
    }
}
