//! Runs configured guests on this CPU: builds each guest's memory, EPT, bitmaps and VMCS, then enters
//! it until it powers off or is stopped. This is the machine-facing half of the VMM (the exit logic it
//! drives is host-tested in `exits`).

use super::assignment::{AssignedDevice, IntxLine};
use super::controls::{self, Controls};
use super::dma_domains::{self, DmaRemapping};
use super::events;
use super::exits;
use super::guest_acpi::{self, GuestPlatformDescription, MemoryWindow, PciInterrupt};
use super::guest_layout::{self, GuestStart};
use super::guest_memory::GuestMemory;
use super::guest_memory::{self, RamLayout};
use super::guest_msi;
use super::host_clock::HostClock;
use super::interrupts::{GuestInterrupts, InterruptStats};
use super::irq_exits;
use super::linux_boot::{self, Kernel, LinuxBoot, LinuxBootError};

use super::machine::{GuestRouting, HostIrq, MachineServices, PciHost, HOST_TIMER_PERIOD_TSC};
use super::msix::{self, GuestMsix};
use super::vcpu::{
    ExitCounters, GuestEnd, HostServices, Next, Vcpu, APIC_BASE_EXTD, APIC_BASE_RESET,
};
use super::virtual_pci::{AssignedFunction, VirtualPci};
use super::vmcs_setup::{self, GuestTables, HostState};
use crate::arch::apic::{self, PhysicalIoapic};
use crate::arch::gdt::Selectors;
use crate::arch::guest_cpu_state;
use crate::arch::host_irq;
use crate::arch::percpu;
use crate::arch::vmx::{self as hw, EntryResult, GuestRegisters};
use crate::caps::vmx::{ExitControls, PinBasedControls, VmxCaps};
use crate::config::GuestConfig;
use crate::config::InterruptMode;
use crate::memory::{frames::FrameAllocator, FrameAlloc, PAGE_SIZE};
use crate::pci::mediation::MediationTable;
use crate::pci::reset::{self, ResetMethod};
use crate::pci::{BarKind, ConfigAccess, PciFunction, PciTopology};
use crate::virq::ioapic::PhysicalRouting;
use crate::vmx::ept::{Ept, EptPerms, Leaf, PageSizes};
use crate::vmx::io_bitmap::IoBitmaps;
use crate::vmx::msr_policy;
use crate::vmx::vmcs::{self, CurrentVmcs, VmcsAccess};
use crate::vmx::vmcs_fields::Vmcs32Ro;
use crate::vtd::regs::MmioRegisters;
use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use exitless_abi::boot_info::Module;
use exitless_abi::elf_image::{AddressWindow, ElfImage};
use x86_64::registers::control::{Cr0, Cr3, Cr4};
use x86_64::registers::model_specific::{Efer, FsBase};

/// How one guest's run ended, with its exit counters.
pub struct GuestReport {
    pub name: String,
    pub end: GuestEnd,
    pub counters: ExitCounters,
    pub interrupts: InterruptStats,
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

/// Guest RAM is aligned so EPT (and VT-d) can map it with 2 MiB pages.
const GUEST_RAM_ALIGN: u64 = 2 << 20;

/// A guest's RAM: contiguous host memory `(base, len)` that GPA 0 starts at, as EPT and the guest's
/// DMA domain map it. The `vtd-guest` self-test allocates through here too.
pub fn allocate_guest_ram(
    frames: &mut FrameAllocator,
    memory_mib: u64,
) -> Result<(u64, u64), String> {
    let ram_len = memory_mib << 20;
    let ram_base = frames
        .alloc_contiguous(ram_len / PAGE_SIZE, GUEST_RAM_ALIGN)
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
        };
        let controls = match controls::plan(&self.caps, config.interrupts) {
            Ok(c) => c,
            Err(e) => return report(GuestEnd::Stopped(format!("{e}"))),
        };
        match self.build(config, modules, frames, controls, vpid, &dma) {
            Ok(mut guest) => {
                let attached = dma_domains::prepare_guest_dma(
                    dma.remapping.as_deref_mut(),
                    &config.name,
                    (guest.ram_base, guest.ram_len),
                    dma.devices,
                    frames,
                );
                let end = match attached {
                    Ok(handle) => {
                        if let Some(remapping) = dma.remapping.as_deref_mut() {
                            remapping.pause_fault_events();
                        }
                        let routing = GuestRouting {
                            remapping: dma.remapping.as_deref_mut(),
                            domain: handle,
                            devices: dma.devices,
                        };
                        let end = guest.run_loop(&config.name, frames, self.pci.as_ref(), routing);
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
                    interrupts: guest.vcpu.interrupts.stats,
                }
            }
            Err(why) => report(GuestEnd::Stopped(why)),
        }
    }

    fn build(
        &self,
        config: &GuestConfig,
        modules: &[Module],
        frames: &mut FrameAllocator,
        controls: Controls,
        vpid: u16,
        dma: &GuestDma<'_>,
    ) -> Result<Guest, String> {
        let intx = dma.intx;
        let platform = self.guest_platform(config, intx);
        // Without an IOMMU an assigned device DMAs to host-physical addresses: a Linux guest then
        // gets its RAM at its host address (`RamLayout::identity`), so its drivers' DMA lands in it.
        let untranslated_dma = dma.remapping.is_none() && !config.pci.is_empty();
        let identity = untranslated_dma && config.linux.is_some();
        let hole_start = mmio_hole_start(&platform);
        let linux_layout = |base| {
            if identity {
                RamLayout::identity(base)
            } else {
                RamLayout::linear(hole_start)
            }
        };
        let loaded = load_guest(config, modules, frames, &platform, linux_layout)?;
        let LoadedGuest {
            ram_base,
            ram_len,
            layout,
            start,
            ref booted,
        } = loaded;

        let mut ept = Ept::new(frames).map_err(|e| format!("EPT: {e:?}"))?;
        let sizes = PageSizes {
            size_2m: self.caps.ept_2m(),
            size_1g: self.caps.ept_1g(),
        };
        // Each range of the block where the layout puts it (a small linear guest is one range).
        for range in layout.ranges(ram_len) {
            let host = ram_base + range.offset;
            ept.map(
                frames,
                range.gpa,
                host,
                range.len,
                Leaf::ram(EptPerms::RWX),
                sizes,
            )
            .map_err(|e| format!("EPT: {e:?}"))?;
        }

        // The guest's IOAPIC pins: those configured, and its functions' INTx lines.
        let mut pins = config.ioapic_pins.clone();
        pins.extend(intx.iter().map(|line| line.gsi));
        pins.sort_unstable();
        pins.dedup();
        let needs_irq =
            !pins.is_empty() || config.interrupts == InterruptMode::Eli || config.linux.is_some();
        let irq = match (self.irq, needs_irq) {
            (Some(irq), _) => Some(irq),
            (None, true) => {
                return Err(String::from(
                    "device interrupts need an x2APIC, and this CPU has none",
                ))
            }
            (None, false) => None,
        };
        if irq.is_some_and(|i| i.ioapic_base == 0) && !pins.is_empty() {
            return Err(String::from(
                "the guest has IOAPIC pins (ioapic_pins, or its devices' INTx) but no IOAPIC was found",
            ));
        }
        // Every guest starts with the EOI write intercepted; `vmm::interrupts` flips it for ELI.
        let msrs = msr_policy::bitmap(config.interrupts == InterruptMode::Eli, false);
        let msr_bitmap = copy_to_frames(frames, msrs.as_bytes())?;
        let mut io = IoBitmaps::intercept_all();
        for &(first, last) in &config.ports {
            io.pass(first, u32::from(last - first) + 1);
        }
        let assigned = self.assign_functions(config, frames, &mut ept, &mut io)?;
        let io_a = copy_to_frames(frames, io.a())?;
        let io_b = copy_to_frames(frames, io.b())?;
        let vmcs_frame = frames.alloc_zeroed().ok_or("no memory for the VMCS")?;
        // SAFETY: VMX is on; the frame is this guest's alone.
        if !unsafe { hw::load_new_vmcs(self.caps.revision_id, vmcs_frame) } {
            return Err(String::from("VMCLEAR/VMPTRLD of a fresh VMCS failed"));
        }
        // SAFETY: the VMCS just loaded is current on this CPU.
        let mut vmcs = unsafe { CurrentVmcs::assume_current() };
        let tables = GuestTables {
            eptp: ept.eptp(false).0,
            msr_bitmap,
            io_bitmap_a: io_a,
            io_bitmap_b: io_b,
            vpid: if self.caps.vpid() { vpid } else { 0 },
        };
        // #DB and #AC, against event-delivery loops; no interrupt reaches a guest's IDT on the host's
        // behalf (host_clock), so nothing else needs to exit.
        let exception_bitmap = events::EXCEPTION_BITMAP;
        let setup = vmcs_setup::write_controls(&mut vmcs, &controls, exception_bitmap)
            .and_then(|()| vmcs_setup::write_tables(&mut vmcs, &tables))
            .and_then(|()| vmcs_setup::write_host_state(&mut vmcs, &self.host))
            .and_then(|()| vmcs_setup::write_guest_start(&mut vmcs, &self.caps, &start));
        setup.map_err(|e| format!("programming the VMCS failed: {e}"))?;
        // The host clock's deadline is written before every entry (irq_exits::prepare_entry).
        if !controls
            .pin
            .contains(PinBasedControls::ACTIVATE_VMX_PREEMPTION_TIMER)
        {
            return Err(String::from("the VMX-preemption timer is not in use"));
        }
        let preemption_shift = self.caps.preemption_timer_tsc_shift();
        // SAFETY: VMX is on; flushes anything cached for this EPTP from an earlier guest.
        unsafe { hw::invept_single(tables.eptp) };

        let vcpu = Vcpu {
            regs: GuestRegisters {
                rdi: start.rdi,
                rsi: start.rsi,
                ..Default::default()
            },
            // A Linux guest's "firmware" hands over in x2APIC mode, as servers with more than 255
            // CPUs do: the platform has no xAPIC MMIO page (Linux then never maps it).
            apic_base: if config.linux.is_some() {
                APIC_BASE_RESET | APIC_BASE_EXTD
            } else {
                APIC_BASE_RESET
            },
            has_ioapic: !pins.is_empty() || config.linux.is_some(),
            has_pci_bus: config.linux.is_some(),
            cr0_fixed: (self.caps.cr0_fixed0, self.caps.cr0_fixed1),
            cr4_fixed: (self.caps.cr4_fixed0, self.caps.cr4_fixed1),
            interrupts: GuestInterrupts::new(config.interrupts, &pins),
            preemption_shift,
            // Not the value the VMCS holds (0), so the first entry writes the real deadline.
            preemption_written: u32::MAX,
            preemption_saved: controls
                .exit
                .contains(ExitControls::SAVE_VMX_PREEMPTION_TIMER_VALUE),
            // A described platform has a host bridge (its ACPI `PCI0`), which Linux looks for.
            pci: if config.linux.is_some() {
                VirtualPci::new(assigned).with_host_bridge()
            } else {
                VirtualPci::new(assigned)
            },
            ..Default::default()
        };
        log::info!(
            "guest {}: {} MiB at host {ram_base:#x}, {booted} entry {:#x}, interrupts {:?}",
            config.name,
            config.memory_mib,
            start.rip,
            config.interrupts
        );
        let mut guest = Guest {
            vmcs,
            vcpu,
            ram_base,
            ram_len,
            layout,
            _ept: ept,
            msr_bitmap,
            irq,
            timeout_tsc: config.timeout_ms.map(|ms| ms.saturating_mul(tsc_per_ms())),
        };
        let mut services = MachineServices::new(&config.name, frames, msr_bitmap, irq);
        guest.vcpu.interrupts.start(&mut services);
        Ok(guest)
    }
}

/// The bytes of module `path` (under `\exitless\`); `what` names it in the error.
fn module_bytes<'m>(modules: &'m [Module], path: &str, what: &str) -> Result<&'m [u8], String> {
    let module = modules
        .iter()
        .find(|m| m.name() == path)
        .ok_or_else(|| format!("{what} `{path}` is not on the boot volume under \\exitless\\"))?;
    // SAFETY: modules are Loader memory, identity-mapped, never reused.
    Ok(unsafe { core::slice::from_raw_parts(module.phys as *const u8, module.len as usize) })
}

/// Allocates the guest's RAM and lays out what it boots: its `image` (our guest boot protocol) or
/// its `linux` kernel (Linux's 64-bit boot protocol). Returns the RAM, the start state and what was
/// booted, for the log. The kernel is parsed and checked to fit before RAM is allocated.
fn load_guest(
    config: &GuestConfig,
    modules: &[Module],
    frames: &mut FrameAllocator,
    platform: &GuestPlatformDescription,
    layout_at: impl Fn(u64) -> RamLayout,
) -> Result<LoadedGuest, String> {
    let Some(linux) = &config.linux else {
        let bytes = module_bytes(modules, &config.image, "image")?;
        let image = ElfImage::parse(bytes, AddressWindow::UPPER_HALF)
            .map_err(|e| format!("{}: {e}", config.image))?;
        let (ram_base, ram_len) = allocate_guest_ram(frames, config.memory_mib)?;
        // SAFETY: the frames were just allocated to this guest and are identity-mapped.
        let ram = unsafe { core::slice::from_raw_parts_mut(ram_base as *mut u8, ram_len as usize) };
        let start = guest_layout::build(ram, &image).map_err(|e| format!("{e}"))?;
        return Ok(LoadedGuest {
            ram_base,
            ram_len,
            layout: RamLayout::LINEAR,
            start,
            booted: format!("image {}", config.image),
        });
    };
    let bytes = module_bytes(modules, &linux.kernel, "linux kernel")?;
    let kernel = Kernel::parse(bytes).map_err(|e| format!("{}: {e}", linux.kernel))?;
    let initrd = match &linux.initrd {
        Some(path) => Some(module_bytes(modules, path, "initrd")?),
        None => None,
    };
    let acpi_tables = guest_acpi::build(platform)
        .map_err(|e| format!("guest {}: its ACPI tables: {e}", config.name))?;
    let boot = LinuxBoot {
        kernel: &kernel,
        initrd,
        cmdline: &linux.cmdline,
        acpi_tables: Some(&acpi_tables),
    };
    let refused = |e: LinuxBootError| format!("{}: {e}", linux.kernel);
    linux_boot::check(config.memory_mib << 20, layout_at(0), &boot).map_err(refused)?;
    let (ram_base, ram_len) = allocate_guest_ram(frames, config.memory_mib)?;
    // SAFETY: the frames were just allocated to this guest and are identity-mapped.
    let ram = unsafe { core::slice::from_raw_parts_mut(ram_base as *mut u8, ram_len as usize) };
    let ram_layout = layout_at(ram_base);
    let layout = linux_boot::build(ram, ram_layout, &boot).map_err(refused)?;
    let initrd = match &layout.initrd {
        Some(range) => format!(", initrd at {:#x}..{:#x}", range.start, range.end),
        None => String::new(),
    };
    let booted = format!(
        "linux {} ({} at {:#x}..{:#x}{initrd}, ACPI tables {} bytes{})",
        linux.kernel,
        kernel.kind(),
        layout.kernel.start,
        layout.kernel.end,
        acpi_tables.len(),
        if ram_layout.is_linear() {
            ""
        } else {
            ", RAM at its host address: its devices DMA without an IOMMU"
        },
    );
    Ok(LoadedGuest {
        ram_base,
        ram_len,
        layout: ram_layout,
        start: layout.start,
        booted,
    })
}

/// Where a Linux guest's MMIO hole starts: below its lowest memory BAR under 4 GiB (BARs stay
/// where the firmware put them, and guest RAM must not cover them), at 3 GiB at the latest.
fn mmio_hole_start(platform: &GuestPlatformDescription) -> u64 {
    const MIB2: u64 = 2 << 20;
    platform
        .pci_memory_windows
        .iter()
        .map(|w| w.base)
        .filter(|&base| base < guest_memory::HIGH_RAM_START)
        .map(|base| base & !(MIB2 - 1))
        .fold(guest_memory::DEFAULT_HOLE_START, u64::min)
}

/// A guest's RAM block, how the guest sees it, and how it starts.
struct LoadedGuest {
    ram_base: u64,
    ram_len: u64,
    layout: RamLayout,
    start: GuestStart,
    /// What was booted, for the log.
    booted: String,
}

impl VmxCpu {
    /// What a Linux guest's ACPI tables describe: one vCPU (x2APIC ID 0, as `GuestInterrupts`
    /// numbers it), its assigned functions' INTx lines, a host-bridge memory window per memory
    /// BAR (BARs stay where the firmware put them), and COM1.
    fn guest_platform(&self, config: &GuestConfig, intx: &[IntxLine]) -> GuestPlatformDescription {
        let functions = self
            .pci
            .iter()
            .flat_map(|host| config.pci.iter().filter_map(|&bdf| host.topology.find(bdf)));
        let pci_memory_windows = functions
            .flat_map(|f| f.bars.iter())
            .filter(|bar| bar.kind != BarKind::Io && bar.size != 0)
            .map(|bar| MemoryWindow {
                base: bar.base,
                len: bar.size,
            })
            .collect();
        GuestPlatformDescription {
            apic_ids: alloc::vec![0],
            pci_interrupts: intx
                .iter()
                .map(|line| PciInterrupt {
                    device: line.bdf.device(),
                    function: line.bdf.function(),
                    pin: line.pin,
                    gsi: line.gsi.into(),
                })
                .collect(),
            pci_memory_windows,
            com1: true,
        }
    }

    /// Gives `config`'s PCI functions to the guest: each is reset, its MMIO BARs are mapped 1:1 and
    /// uncached in EPT (except the pages holding an MSI-X table or PBA, which must never be the guest's
    /// to write: they stay unmapped), its I/O BARs are passed through, and its configuration space is
    /// reached only through the mediation table.
    fn assign_functions(
        &self,
        config: &GuestConfig,
        frames: &mut FrameAllocator,
        ept: &mut Ept,
        io: &mut IoBitmaps,
    ) -> Result<Vec<AssignedFunction>, String> {
        let mut assigned = Vec::new();
        if config.pci.is_empty() {
            return Ok(assigned);
        }
        let host = self
            .pci
            .as_ref()
            .ok_or("PCI devices are assigned but PCI was not set up")?;
        for &bdf in &config.pci {
            let function = host
                .topology
                .find(bdf)
                .ok_or_else(|| format!("PCI device {bdf} does not exist"))?;
            let assigned_function = assigned_function(function)?;
            self.reset_one(host, function);
            let msix_pages: Vec<(u8, u64)> = function
                .capabilities
                .msix
                .as_ref()
                .map(msix::trapped_pages)
                .unwrap_or_default();
            for bar in &function.bars {
                match bar.kind {
                    BarKind::Io => io.pass(bar.base as u16, bar.size as u32),
                    BarKind::Memory32 { .. } | BarKind::Memory64 { .. } => {
                        let mut page = 0;
                        while page < bar.size.max(PAGE_SIZE) {
                            if !msix_pages.contains(&(bar.index, page)) {
                                let at = (bar.base & !(PAGE_SIZE - 1)) + page;
                                ept.map(
                                    frames,
                                    at,
                                    at,
                                    PAGE_SIZE,
                                    Leaf::mmio(EptPerms::RW),
                                    PageSizes::ONLY_4K,
                                )
                                .map_err(|e| format!("EPT for {bdf} BAR{}: {e:?}", bar.index))?;
                            }
                            page += PAGE_SIZE;
                        }
                    }
                }
            }
            log::info!(
                "guest {}: PCI {bdf} {:04x}:{:04x} assigned",
                config.name,
                function.vendor_id,
                function.device_id
            );
            assigned.push(assigned_function);
        }
        Ok(assigned)
    }

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

/// A function as its guest's virtual PCI bus shows it: configuration space through its mediation
/// table, BARs emulated, MSI emulated (the guest's programming comes back as an [`MsiRequest`]).
/// The `vtd-guest` self-test builds its guest's bus through here too.
pub fn assigned_function(function: &PciFunction) -> Result<AssignedFunction, String> {
    let table =
        MediationTable::endpoint(function).map_err(|e| format!("{}: {e:?}", function.bdf))?;
    let mut assigned = AssignedFunction::new(function.bdf, table, function.bars.clone());
    if let Some(msi) = function.capabilities.msi {
        assigned = assigned.with_msi(msi.offset, msi.is_64bit, msi.per_vector_masking);
    }
    if let Some(cap) = function.capabilities.msix {
        let guest = GuestMsix::new(function.bdf, cap, &function.bars).ok_or_else(|| {
            format!(
                "{}: MSI-X table or PBA is not in a memory BAR",
                function.bdf
            )
        })?;
        assigned = assigned.with_msix(guest);
    }
    Ok(assigned)
}

/// TSC ticks per millisecond, at the rate measured at boot (`arch::tsc_calibration`: against the
/// PIT, which in an emulator runs in the same emulated time as its TSC), so waits and run budgets are
/// real (emulated) milliseconds.
fn tsc_per_ms() -> u64 {
    (crate::arch::tsc_calibration::tsc_hz() / 1000).max(1)
}

/// Busy-waits about `ms` milliseconds of TSC time.
fn wait_ms(ms: u32) {
    let start = crate::arch::cpu::rdtsc();
    let ticks = tsc_per_ms() * u64::from(ms);
    while crate::arch::cpu::rdtsc() - start < ticks {
        core::hint::spin_loop();
    }
}

fn copy_to_frames(frames: &mut FrameAllocator, bytes: &[u8; 4096]) -> Result<u64, String> {
    let phys = frames.alloc_zeroed().ok_or("no memory for a VMX bitmap")?;
    // SAFETY: a fresh, identity-mapped frame owned by the caller.
    unsafe { core::ptr::copy_nonoverlapping(bytes.as_ptr(), phys as *mut u8, 4096) };
    Ok(phys)
}

struct Guest {
    vmcs: CurrentVmcs,
    vcpu: Vcpu,
    ram_base: u64,
    ram_len: u64,
    /// Where the RAM block appears in guest-physical space.
    layout: RamLayout,
    /// The guest's EPT, which its VMCS points at for as long as it runs.
    _ept: Ept,
    msr_bitmap: u64,
    irq: Option<HostIrq>,
    /// The guest's run budget in TSC ticks (`timeout_ms`).
    timeout_tsc: Option<u64>,
}

impl Guest {
    fn run_loop(
        &mut self,
        name: &str,
        frames: &mut FrameAllocator,
        pci: Option<&PciHost>,
        routing: GuestRouting<'_>,
    ) -> GuestEnd {
        let mut services = MachineServices::new(name, frames, self.msr_bitmap, self.irq);
        services.pci = pci;
        services.routing = Some(routing);
        self.silence_host_interrupts();
        guest_cpu_state::reset_for_next_guest();
        services.clock =
            HostClock::start(services.rdtsc(), HOST_TIMER_PERIOD_TSC, self.timeout_tsc);
        let mut launched = false;
        loop {
            if let Err(e) = irq_exits::prepare_entry(&mut self.vmcs, &mut self.vcpu, &mut services)
            {
                return GuestEnd::Stopped(format!("VMREAD/VMWRITE failed before VM entry: {e}"));
            }
            // SAFETY: this guest's VMCS is current and fully programmed; HOST_RIP is the exit stub.
            match unsafe { hw::enter_guest(&mut self.vcpu.regs, launched) } {
                EntryResult::Exited => launched = true,
                failure => return self.entry_failed(failure),
            }
            // SAFETY: the guest's RAM is identity-mapped host memory owned by this guest.
            let ram = unsafe {
                core::slice::from_raw_parts_mut(self.ram_base as *mut u8, self.ram_len as usize)
            };
            let next = exits::handle_exit(
                &mut self.vmcs,
                &mut self.vcpu,
                &mut GuestMemory::with_layout(ram, self.layout),
                &mut services,
            );
            let now = services.rdtsc();
            let ticks = services.clock.advance(now);
            if ticks != 0 {
                services.host_tick(ticks);
            }
            if host_irq::take_dma_fault_events() != 0 {
                services.drain_dma_faults();
            }
            let end = match next {
                Next::End(end) => Some(end),
                Next::Resume if services.clock.budget_spent(now) => {
                    Some(GuestEnd::Stopped(format!(
                        "run budget spent: timeout_ms = {} ms of TSC time, and the guest was still running",
                        self.timeout_tsc.unwrap_or(0) / tsc_per_ms()
                    )))
                }
                Next::Resume => None,
            };
            if let Some(end) = end {
                if !self.vcpu.console.pending().is_empty() {
                    services.console_line(&String::from(self.vcpu.console.pending()));
                }
                return end;
            }
        }
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
        for pin in self.vcpu.interrupts.ioapic.assigned().iter() {
            // SAFETY: as in `route_pin`.
            unsafe { PhysicalIoapic::new(irq.ioapic_base) }
                .set_entry(pin, PhysicalRouting::MASKED_ENTRY);
        }
    }

    fn entry_failed(&self, failure: EntryResult) -> GuestEnd {
        let error = self
            .vmcs
            .read32_ro(Vmcs32Ro::VmInstructionError)
            .unwrap_or(0);
        let message = vmcs::VmInstructionError::from_number(error).message();
        log::error!(
            "VM entry failed ({failure:?}): VM-instruction error {error}: {message}; VMCS follows"
        );
        let _ = vmcs::dump(&self.vmcs, &mut crate::arch::serial::Console);
        GuestEnd::Stopped(format!(
            "VM entry failed: VM-instruction error {error} ({message})"
        ))
    }
}
