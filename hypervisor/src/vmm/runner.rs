//! Runs configured guests on this CPU: ties the parts together. Each guest is built (`builder`),
//! its VMCS made current and programmed, its DMA domain attached, then run (`run_loop`) until it
//! powers off or is stopped; afterwards nothing of it stays in the machine. This is the
//! machine-facing half of the VMM, with `machine` (the exit logic it drives is host-tested).

use super::assignment::{AssignedDevice, IntxLine};
use super::builder::{self, BuildContext, BuiltGuest, GuestFrames, GUEST_RAM_ALIGN};
use super::controls;
use super::guest_msi;
use super::interrupts::InterruptStats;
use super::machine::{
    tsc_per_ms, GuestRouting, HostIrq, MachineServices, PciHost, HOST_TIMER_PERIOD_TSC,
};
use super::measure_window::Snapshot;
use super::run_loop;
use super::vcpu::{ExitCounters, GuestEnd, Vcpu};
use super::vm::Vm;
use super::vmcs_setup::HostState;
use crate::arch::apic::{self, PhysicalIoapic};
use crate::arch::gdt::Selectors;
use crate::arch::guest_cpu_state;
use crate::arch::host_irq;
use crate::arch::percpu;
use crate::arch::vmx as hw;
use crate::caps::vmx::VmxCaps;
use crate::config::GuestConfig;
use crate::iommu::{self, DmaRemapping};
use crate::memory::{frames::FrameAllocator, FrameAlloc, PAGE_SIZE};
use crate::pci::reset::{self, ResetMethod};
use crate::pci::{ConfigAccess, PciFunction, PciTopology};
use crate::virq::ioapic::PhysicalRouting;
use crate::vmx::vmcs::CurrentVmcs;
use crate::vtd::regs::MmioRegisters;
use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use exitless_abi::boot_info::Module;
use x86_64::registers::control::{Cr0, Cr3, Cr4};
use x86_64::registers::model_specific::{Efer, FsBase};

pub use super::builder::assigned_function;

/// How one guest's run ended, with its exit counters.
pub struct GuestReport {
    pub name: String,
    pub end: GuestEnd,
    pub counters: ExitCounters,
    pub interrupts: InterruptStats,
    /// What the guest's last measured window counted (`measure_window`), if it closed one.
    pub window: Option<Snapshot>,
}

/// VMX operation on this CPU (VMXON done).
pub struct VmxCpu {
    caps: VmxCaps,
    host: HostState,
    /// The machine's PCI functions and configuration access, for guests with `pci =` devices.
    pci: Option<PciHost>,
    /// The host's interrupt hardware, when the CPU has an x2APIC (guests with devices need it).
    irq: Option<HostIrq>,
}

/// A guest's RAM: contiguous host memory `(base, len)`, allocated as the builder allocates it
/// ([`GuestFrames::alloc_ram`]). For the `vtd-guest` self-test, which maps it in a DMA domain.
pub fn allocate_guest_ram(
    frames: &mut FrameAllocator,
    memory_mib: u64,
) -> Result<(u64, u64), String> {
    let ram_len = memory_mib << 20;
    let ram_base = MachineFrames(frames)
        .alloc_ram(ram_len)
        .ok_or_else(|| format!("no {memory_mib} MiB of contiguous free memory for its RAM"))?;
    Ok((ram_base, ram_len))
}

/// DMA remapping for the guest about to run: the machine's units, when up, and the guest's planned
/// devices (requester IDs and covering units).
pub struct GuestDma<'a> {
    pub remapping: Option<&'a mut DmaRemapping<MmioRegisters>>,
    pub devices: &'a [AssignedDevice],
    /// The INTx lines of those devices: their IOAPIC pins become the guest's.
    pub intx: &'a [IntxLine],
}

impl VmxCpu {
    /// VMXON on this CPU.
    pub fn enable(
        caps: &VmxCaps,
        frames: &mut FrameAllocator,
        selectors: &Selectors,
        ioapic: Option<(u8, u64)>,
    ) -> Result<Self, String> {
        if let Err(reason) = caps.support {
            return Err(format!("VMX is not available: {}", reason.as_str()));
        }
        let region = frames
            .alloc_zeroed()
            .ok_or("no memory for the VMXON region")?;
        // SAFETY: a fresh frame, kept for as long as VMX is on (forever).
        unsafe { hw::vmxon(caps, region) }.map_err(|e| format!("{e}"))?;
        // Before HOST_CR4 is recorded: resetting guests' FPU/SSE/AVX state needs FXRSTOR/XRSTOR.
        guest_cpu_state::enable_for_host();
        let idt = x86_64::instructions::tables::sidt();
        // What a VM exit loads must be this CPU's own (SDM Vol. 3C 27.5.2): its area as GS base
        // (the GS rule, `arch::percpu`), its TSS and GDT.
        let this_cpu = percpu::current();
        let host = HostState {
            cr0: Cr0::read_raw(),
            cr3: Cr3::read_raw().0.start_address().as_u64(),
            cr4: Cr4::read_raw(),
            code_selector: selectors.code.0,
            data_selector: selectors.data.0,
            tr_selector: selectors.tss.0,
            fs_base: FsBase::read().as_u64(),
            gs_base: this_cpu.gs_base(),
            tr_base: this_cpu.tss_base(),
            gdtr_base: this_cpu.gdt_base(),
            idtr_base: idt.base.as_u64(),
            efer: Efer::read_raw(),
            rip: hw::vm_exit_entry_point(),
        };
        let irq = (apic::has_x2apic()).then(|| {
            // SAFETY: CPL 0, interrupts off, once on this CPU; CPUID says x2APIC exists.
            let apic_id = unsafe { apic::enable_x2apic() };
            apic::mask_legacy_pics();
            // The LAPIC timer's rate is not architectural: start from a guess and correct it with the
            // period measured from two real timer interrupts.
            const GUESS: u64 = 1 << 20;
            apic::start_periodic_timer(GUESS as u32);
            let measured = host_irq::measure_timer_period(40 * HOST_TIMER_PERIOD_TSC).unwrap_or(HOST_TIMER_PERIOD_TSC);
            let count = (GUESS * HOST_TIMER_PERIOD_TSC / measured.max(1)).clamp(1, u64::from(u32::MAX));
            apic::start_periodic_timer(count as u32);
            let tsc_per_tick = measured / GUESS;
            log::info!(
                "host interrupts: x2APIC id {apic_id}, timer every {HOST_TIMER_PERIOD_TSC} TSC ticks ({tsc_per_tick} TSC per LAPIC tick)"
            );
            let (ioapic_id, ioapic_base) = ioapic.unwrap_or_default();
            HostIrq { apic_id, ioapic_id, ioapic_base }
        });
        Ok(Self {
            caps: *caps,
            host,
            irq,
            pci: None,
        })
    }

    /// Lets guests be given PCI functions (their assignment plan was checked at boot).
    pub fn attach_pci(&mut self, topology: PciTopology, access: Box<dyn ConfigAccess>) {
        self.pci = Some(PciHost { topology, access });
    }

    /// Builds and runs one guest to its end. Errors before the guest starts are returned as its end.
    /// Its devices get a DMA domain mapping exactly its RAM before it runs, and lose it (blocked)
    /// when it ends; the units' fault records are drained then.
    pub fn run(
        &self,
        config: &GuestConfig,
        modules: &[Module],
        frames: &mut FrameAllocator,
        vpid: u16,
        mut dma: GuestDma<'_>,
    ) -> GuestReport {
        let report = |end| GuestReport {
            name: config.name.clone(),
            end,
            counters: ExitCounters::default(),
            interrupts: InterruptStats::default(),
            window: None,
        };
        let controls = match controls::plan(&self.caps, config.interrupts) {
            Ok(c) => c,
            Err(e) => return report(GuestEnd::Stopped(format!("{e}"))),
        };
        let ctx = BuildContext {
            caps: &self.caps,
            controls,
            irq: self.irq,
            pci: self.pci.as_ref().map(|host| &host.topology),
            intx: dma.intx,
            untranslated_dma: dma.remapping.is_none() && !config.pci.is_empty(),
            tsc_per_ms: tsc_per_ms(),
        };
        match self.build(config, modules, frames, &ctx, vpid) {
            Ok(mut guest) => {
                let attached = iommu::prepare_guest_dma(
                    dma.remapping.as_deref_mut(),
                    &config.name,
                    (guest.vm.ram.host_base, guest.vm.ram.len),
                    dma.devices,
                    frames,
                );
                let end = match attached {
                    Ok(handle) => {
                        guest.vm.dma_domain = handle;
                        if let Some(remapping) = dma.remapping.as_deref_mut() {
                            remapping.pause_fault_events();
                        }
                        let routing = GuestRouting {
                            remapping: dma.remapping.as_deref_mut(),
                            domain: handle,
                            devices: dma.devices,
                        };
                        let end = guest.run(&config.name, frames, self.pci.as_ref(), routing);
                        // The device's MSI goes off before its IRTE (detach clears them).
                        self.disable_msis(config);
                        if let (Some(remapping), Some(handle)) =
                            (dma.remapping.as_deref_mut(), handle)
                        {
                            remapping.detach_guest(handle, frames);
                        }
                        end
                    }
                    Err(why) => GuestEnd::Stopped(format!("DMA remapping: {why}")),
                };
                guest.release_pins();
                if let Some(remapping) = dma.remapping.as_deref_mut() {
                    remapping.release_ioapic_pins(frames);
                    remapping.drain_faults(frames);
                    if let Err(why) = remapping.resume_fault_events() {
                        log::warn!("vtd: fault events stay masked ({why}); faults are read when a guest ends");
                    }
                }
                self.reset_functions(config);
                guest.leave_core_clean(&config.name);
                GuestReport {
                    name: config.name.clone(),
                    end,
                    counters: guest.vcpu.counters.clone(),
                    interrupts: InterruptStats {
                        refused_routings: guest.vm.interrupts.refused_routings,
                        ..guest.vcpu.interrupts.stats
                    },
                    window: guest.vcpu.window.closed.clone(),
                }
            }
            Err(why) => report(GuestEnd::Stopped(why)),
        }
    }

    /// Builds the guest (`builder`), makes its VMCS current and programs it, and sets up the
    /// physical side of its interrupts (its pins masked; ELI's EOI passthrough).
    fn build(
        &self,
        config: &GuestConfig,
        modules: &[Module],
        frames: &mut FrameAllocator,
        ctx: &BuildContext<'_>,
        vpid: u16,
    ) -> Result<Guest, String> {
        let image = |path: &str| module_bytes(modules, path);
        let reset = |function: &PciFunction| {
            if let Some(host) = self.pci.as_ref() {
                self.reset_one(host, function);
            }
        };
        let built = builder::build(config, ctx, &mut MachineFrames(frames), image, reset)?;
        // SAFETY: VMX is on; the frame is this guest's vCPU's alone.
        if !unsafe { hw::load_new_vmcs(self.caps.revision_id, built.vcpu.vmcs_frame) } {
            return Err(String::from("VMCLEAR/VMPTRLD of a fresh VMCS failed"));
        }
        // SAFETY: the VMCS just loaded is current on this CPU.
        let mut vmcs = unsafe { CurrentVmcs::assume_current() };
        builder::write_vmcs(&mut vmcs, &built, ctx, &self.host, vpid)?;
        // SAFETY: VMX is on; flushes anything cached for this EPTP from an earlier guest.
        unsafe { hw::invept_single(built.tables.eptp) };
        let BuiltGuest {
            mut vm,
            mut vcpu,
            start,
            booted,
            ..
        } = built;
        log::info!(
            "guest {}: {} MiB at host {:#x}, {booted} entry {:#x}, interrupts {:?}",
            config.name,
            config.memory_mib,
            vm.ram.host_base,
            start.rip,
            config.interrupts
        );
        let mut services = MachineServices::new(&config.name, frames, vcpu.msr_bitmap, self.irq);
        vm.interrupts.start(&mut services);
        vcpu.interrupts.start(&mut services);
        Ok(Guest {
            vmcs,
            vcpu,
            vm,
            irq: self.irq,
        })
    }
}

/// The bytes of module `path` (under `\exitless\`), if the loader found it.
fn module_bytes<'m>(modules: &'m [Module], path: &str) -> Option<&'m [u8]> {
    let module = modules.iter().find(|m| m.name() == path)?;
    // SAFETY: modules are Loader memory, identity-mapped, never reused.
    Some(unsafe { core::slice::from_raw_parts(module.phys as *const u8, module.len as usize) })
}

impl VmxCpu {
    /// Turns the MSI of every function the guest had off (a device without a working reset keeps
    /// none of the guest's programming).
    fn disable_msis(&self, config: &GuestConfig) {
        let Some(host) = self.pci.as_ref() else {
            return;
        };
        for function in config.pci.iter().filter_map(|&bdf| host.topology.find(bdf)) {
            if let Some(cap) = function.capabilities.msi {
                guest_msi::program_device_msi(host.access.as_ref(), function.bdf, &cap, None);
            }
            if let Some(cap) = function.capabilities.msix {
                guest_msi::enable_device_msix(
                    host.access.as_ref(),
                    function.bdf,
                    cap.offset,
                    false,
                );
            }
        }
    }

    /// Resets every function the guest had, when it ends: nothing it left behind reaches the next owner.
    fn reset_functions(&self, config: &GuestConfig) {
        let Some(host) = self.pci.as_ref() else {
            return;
        };
        for function in config.pci.iter().filter_map(|&bdf| host.topology.find(bdf)) {
            self.reset_one(host, function);
        }
    }

    fn reset_one(&self, host: &PciHost, function: &PciFunction) {
        match reset::reset(host.access.as_ref(), function, &mut wait_ms) {
            ResetMethod::None => log::warn!(
                "PCI {}: no function-level or power-state reset: it keeps the state it had",
                function.bdf
            ),
            method => log::info!("PCI {}: reset ({method:?})", function.bdf),
        }
    }
}

/// Busy-waits about `ms` milliseconds of TSC time.
fn wait_ms(ms: u32) {
    let start = crate::arch::cpu::rdtsc();
    let ticks = tsc_per_ms() * u64::from(ms);
    while crate::arch::cpu::rdtsc() - start < ticks {
        core::hint::spin_loop();
    }
}

/// The frame allocator as the builder takes it: guest RAM is one contiguous block, reached through
/// the identity map.
struct MachineFrames<'a>(&'a mut FrameAllocator);

impl FrameAlloc for MachineFrames<'_> {
    fn alloc_zeroed(&mut self) -> Option<u64> {
        self.0.alloc_zeroed()
    }
    fn table_mut(&mut self, phys: u64) -> &mut [u64; 512] {
        self.0.table_mut(phys)
    }
}

impl GuestFrames for MachineFrames<'_> {
    fn alloc_ram(&mut self, len: u64) -> Option<u64> {
        self.0.alloc_contiguous(len / PAGE_SIZE, GUEST_RAM_ALIGN)
    }
    fn ram(&mut self, base: u64, len: u64) -> &mut [u8] {
        // SAFETY: `base` is a block `alloc_ram` just gave this guest, identity-mapped, `len` long.
        unsafe { core::slice::from_raw_parts_mut(base as *mut u8, len as usize) }
    }
}

/// A guest on this CPU: its VM, its vCPU and that vCPU's VMCS, current while it runs.
struct Guest {
    vmcs: CurrentVmcs,
    vcpu: Vcpu,
    vm: Vm,
    irq: Option<HostIrq>,
}

impl Guest {
    /// Runs the guest to its end with the machine's services.
    fn run(
        &mut self,
        name: &str,
        frames: &mut FrameAllocator,
        pci: Option<&PciHost>,
        routing: GuestRouting<'_>,
    ) -> GuestEnd {
        let mut services = MachineServices::new(name, frames, self.vcpu.msr_bitmap, self.irq);
        services.pci = pci;
        services.routing = Some(routing);
        self.silence_host_interrupts();
        guest_cpu_state::reset_for_next_guest();
        run_loop::run(&mut self.vmcs, &mut self.vcpu, &mut self.vm, &mut services)
    }

    /// Leaves no host interrupt source armed on this CPU while the guest runs (`host_clock`): the
    /// LAPIC timer is masked (the caller paused VT-d fault events), and a host interrupt already
    /// pending is taken now, or the guest's IDT would receive it at the first VM entry.
    fn silence_host_interrupts(&self) {
        if self.irq.is_some() {
            apic::mask_timer(true);
            host_irq::drain_host_vectors();
        }
    }

    /// After the guest's pins are masked and its devices' MSIs are off: nothing of the guest stays in
    /// this CPU's LAPIC (ISR, IRR, TMR, TPR) or in its registers (debug, CR2, FPU/SSE/AVX, SYSCALL
    /// MSRs); then the host timer runs again. Logs what was left and anything that could not be undone.
    fn leave_core_clean(&self, name: &str) {
        guest_cpu_state::reset_for_next_guest();
        if self.irq.is_none() {
            return;
        }
        let scrub = host_irq::scrub_after_guest();
        apic::mask_timer(false);
        if !scrub.clean() {
            log::error!(
                "guest {name}: the LAPIC still holds vectors after the scrub (ISR {:?}, IRR {:?}, TMR {:?})",
                scrub.left[0].iter().collect::<Vec<_>>(),
                scrub.left[1].iter().collect::<Vec<_>>(),
                scrub.left[2].iter().collect::<Vec<_>>()
            );
        } else if scrub.completed + scrub.discarded + scrub.tmr_cleared != 0 {
            log::info!(
                "guest {name}: left {} vector(s) in service, {} requested, {} level-triggered: completed, discarded and cleared; the LAPIC is clean",
                scrub.completed,
                scrub.discarded,
                scrub.tmr_cleared
            );
        }
    }

    /// Masks the guest's pins again when it ends: its device must not interrupt the next guest.
    fn release_pins(&mut self) {
        let Some(irq) = self.irq else { return };
        for pin in self.vm.interrupts.ioapic.assigned().iter() {
            // SAFETY: as in `MachineServices::route_pin`.
            unsafe { PhysicalIoapic::new(irq.ioapic_base) }
                .set_entry(pin, PhysicalRouting::MASKED_ENTRY);
        }
    }
}
