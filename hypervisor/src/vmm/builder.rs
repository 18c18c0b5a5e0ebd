//! Building a guest from its configuration: its RAM and what is loaded into it (a test-guest image
//! or a Linux kernel), the RAM's layout, EPT, the MSR and I/O bitmaps, its assigned functions on a
//! virtual PCI bus, the platform its ACPI tables describe, and its vCPU's initial state, as a
//! [`Vm`] and a [`Vcpu`]; then the VMCS those imply ([`write_vmcs`]).
//!
//! Every decision is made here, against [`GuestFrames`] (frames and RAM) and [`VmcsAccess`], so it
//! is host-tested with fakes; the runner supplies the real frame allocator and the current VMCS.

use super::assignment::IntxLine;
use super::controls::Controls;
use super::events;
use super::guest_acpi::{self, GuestPlatformDescription, MemoryWindow, PciInterrupt};
use super::guest_layout::{self, GuestStart};
use super::guest_memory::{self, RamLayout};
use super::interrupts::{VcpuInterrupts, VmInterrupts};
use super::linux_boot::{self, Kernel, LinuxBoot, LinuxBootError};
use super::machine::HostIrq;
use super::msix::{self, GuestMsix};
use super::vcpu::{Vcpu, APIC_BASE_EXTD, APIC_BASE_RESET};
use super::virtual_pci::{AssignedFunction, VirtualPci};
use super::vm::{GuestRam, Vm};
use super::vmcs_setup::{self, GuestTables, HostState};
use crate::arch::vmx::GuestRegisters;
use crate::caps::vmx::{ExitControls, PinBasedControls, VmxCaps};
use crate::config::{GuestConfig, InterruptMode};
use crate::memory::{FrameAlloc, PAGE_SIZE};
use crate::pci::mediation::MediationTable;
use crate::pci::{BarKind, PciFunction, PciTopology};
use crate::vmx::ept::{Ept, EptPerms, Leaf, PageSizes};
use crate::vmx::io_bitmap::IoBitmaps;
use crate::vmx::msr_policy;
use crate::vmx::vmcs::VmcsAccess;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use exitless_abi::elf_image::{AddressWindow, ElfImage};

/// Where a guest's frames and RAM come from: the EPT, bitmap and VMCS frames ([`FrameAlloc`]) and
/// one contiguous RAM block, reachable as bytes while the guest is loaded.
pub trait GuestFrames: FrameAlloc {
    /// `len` bytes of contiguous RAM aligned to [`GUEST_RAM_ALIGN`]; its host-physical base.
    fn alloc_ram(&mut self, len: u64) -> Option<u64>;
    /// The block [`Self::alloc_ram`] returned at `base`, as bytes.
    fn ram(&mut self, base: u64, len: u64) -> &mut [u8];
}

/// Guest RAM is aligned so EPT (and VT-d) can map it with 2 MiB pages.
pub const GUEST_RAM_ALIGN: u64 = 2 << 20;

/// What the machine offers the guest being built.
pub struct BuildContext<'a> {
    pub caps: &'a VmxCaps,
    /// The controls `controls::plan` chose for the guest's interrupt mode.
    pub controls: Controls,
    /// The host's interrupt hardware, when the CPU has an x2APIC.
    pub irq: Option<HostIrq>,
    /// The machine's PCI functions, when PCI was set up.
    pub pci: Option<&'a PciTopology>,
    /// The INTx lines of the guest's planned devices: their IOAPIC pins become the guest's.
    pub intx: &'a [IntxLine],
    /// No IOMMU translates the guest's devices' DMA (they reach host-physical addresses).
    pub untranslated_dma: bool,
    /// TSC ticks per millisecond (the run budget's unit).
    pub tsc_per_ms: u64,
}

/// A guest built and ready for its VMCS.
pub struct BuiltGuest {
    pub vm: Vm,
    pub vcpu: Vcpu,
    /// The guest's first instruction and its registers there.
    pub start: GuestStart,
    /// The frames the VMCS points at.
    pub tables: GuestTables,
    /// What was booted, for the log.
    pub booted: String,
}

/// Builds the guest `config` describes. `image` finds a file of the boot volume (under
/// `\exitless\`); `reset` resets one PCI function before it is given to the guest.
pub fn build<'m>(
    config: &GuestConfig,
    ctx: &BuildContext<'_>,
    frames: &mut impl GuestFrames,
    image: impl Fn(&str) -> Option<&'m [u8]>,
    mut reset: impl FnMut(&PciFunction),
) -> Result<BuiltGuest, String> {
    // The host clock's deadline is written before every entry (irq_exits::prepare_entry).
    if !ctx
        .controls
        .pin
        .contains(PinBasedControls::ACTIVATE_VMX_PREEMPTION_TIMER)
    {
        return Err(String::from("the VMX-preemption timer is not in use"));
    }
    let platform = guest_platform(config, ctx.pci, ctx.intx);
    // Without an IOMMU an assigned device DMAs to host-physical addresses: a Linux guest then
    // gets its RAM at its host address (`RamLayout::identity`), so its drivers' DMA lands in it.
    let identity = ctx.untranslated_dma && config.linux.is_some();
    let hole_start = mmio_hole_start(&platform);
    let linux_layout = |base| {
        if identity {
            RamLayout::identity(base)
        } else {
            RamLayout::linear(hole_start)
        }
    };
    let LoadedGuest { ram, start, booted } =
        load_guest(config, frames, &image, &platform, linux_layout)?;

    let mut ept = Ept::new(frames).map_err(|e| format!("EPT: {e:?}"))?;
    let sizes = PageSizes {
        size_2m: ctx.caps.ept_2m(),
        size_1g: ctx.caps.ept_1g(),
    };
    // Each range of the block where the layout puts it (a small linear guest is one range).
    for range in ram.layout.ranges(ram.len) {
        let host = ram.host_base + range.offset;
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

    let pins = guest_pins(config, ctx.intx);
    let needs_irq =
        !pins.is_empty() || config.interrupts == InterruptMode::Eli || config.linux.is_some();
    if ctx.irq.is_none() && needs_irq {
        return Err(String::from(
            "device interrupts need an x2APIC, and this CPU has none",
        ));
    }
    if ctx.irq.is_some_and(|i| i.ioapic_base == 0) && !pins.is_empty() {
        return Err(String::from(
            "the guest has IOAPIC pins (ioapic_pins, or its devices' INTx) but no IOAPIC was found",
        ));
    }
    // Every guest starts with the EOI write intercepted; `vmm::interrupts` flips it for ELI.
    let msrs = msr_policy::bitmap(config.interrupts, false);
    let msr_bitmap = copy_to_frame(frames, msrs.as_bytes())?;
    let mut io = IoBitmaps::intercept_all();
    for &(first, last) in &config.ports {
        io.pass(first, u32::from(last - first) + 1);
    }
    let assigned = assign_functions(config, ctx.pci, frames, &mut ept, &mut io, &mut reset)?;
    let io_bitmaps = [
        copy_to_frame(frames, io.a())?,
        copy_to_frame(frames, io.b())?,
    ];
    let vmcs_frame = frames.alloc_zeroed().ok_or("no memory for the VMCS")?;
    let tables = GuestTables {
        eptp: ept.eptp(false).0,
        msr_bitmap,
        io_bitmap_a: io_bitmaps[0],
        io_bitmap_b: io_bitmaps[1],
        vpid: 0,
        virtual_apic: None,
    };

    let linux = config.linux.is_some();
    let mut vm = Vm::new(&config.name, ram, ept);
    vm.io_bitmaps = io_bitmaps;
    vm.timeout_tsc = config
        .timeout_ms
        .map(|ms| ms.saturating_mul(ctx.tsc_per_ms));
    vm.interrupts = VmInterrupts::new(config.interrupts, &pins);
    vm.has_ioapic = !pins.is_empty() || linux;
    vm.has_pci_bus = linux;
    // A described platform has a host bridge (its ACPI `PCI0`), which Linux looks for.
    vm.pci = if linux {
        VirtualPci::new(assigned).with_host_bridge()
    } else {
        VirtualPci::new(assigned)
    };
    vm.platform = linux.then_some(platform);
    let vcpu = initial_vcpu(config, ctx, &start, vmcs_frame, msr_bitmap);
    let tables = GuestTables {
        virtual_apic: vcpu.interrupts.virtual_apic().map(|page| page.address()),
        ..tables
    };
    Ok(BuiltGuest {
        vm,
        vcpu,
        start,
        tables,
        booted,
    })
}

/// The vCPU at its first entry: RDI/RSI as the boot protocol hands over, IA32_APIC_BASE, the VMX
/// fixed CR bits, the preemption timer's rate, interrupts in the guest's mode.
fn initial_vcpu(
    config: &GuestConfig,
    ctx: &BuildContext<'_>,
    start: &GuestStart,
    vmcs_frame: u64,
    msr_bitmap: u64,
) -> Vcpu {
    let caps = ctx.caps;
    Vcpu {
        vmcs_frame,
        msr_bitmap,
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
        cr0_fixed: (caps.cr0_fixed0, caps.cr0_fixed1),
        cr4_fixed: (caps.cr4_fixed0, caps.cr4_fixed1),
        interrupts: VcpuInterrupts::new(config.interrupts),
        preemption_shift: caps.preemption_timer_tsc_shift(),
        // Not the value the VMCS holds (0), so the first entry writes the real deadline.
        preemption_written: u32::MAX,
        preemption_saved: ctx
            .controls
            .exit
            .contains(ExitControls::SAVE_VMX_PREEMPTION_TIMER_VALUE),
        ..Default::default()
    }
}

/// Programs the current VMCS for a built guest: controls (with [`events::EXCEPTION_BITMAP`]), the
/// tables, the host state and the guest's start. `vpid` is used when the CPU has VPIDs.
pub fn write_vmcs(
    vmcs: &mut impl VmcsAccess,
    guest: &BuiltGuest,
    ctx: &BuildContext<'_>,
    host: &HostState,
    vpid: u16,
) -> Result<(), String> {
    let tables = GuestTables {
        vpid: if ctx.caps.vpid() { vpid } else { 0 },
        ..guest.tables
    };
    // #DB and #AC, against event-delivery loops; no interrupt reaches a guest's IDT on the host's
    // behalf (host_clock), so nothing else needs to exit.
    let exception_bitmap = events::EXCEPTION_BITMAP;
    vmcs_setup::write_controls(vmcs, &ctx.controls, exception_bitmap)
        .and_then(|()| vmcs_setup::write_tables(vmcs, &tables))
        .and_then(|()| vmcs_setup::write_host_state(vmcs, host))
        .and_then(|()| vmcs_setup::write_guest_start(vmcs, ctx.caps, &guest.start))
        .map_err(|e| format!("programming the VMCS failed: {e}"))
}

/// The guest's IOAPIC pins: those configured, and its functions' INTx lines.
fn guest_pins(config: &GuestConfig, intx: &[IntxLine]) -> Vec<u8> {
    let mut pins = config.ioapic_pins.clone();
    pins.extend(intx.iter().map(|line| line.gsi));
    pins.sort_unstable();
    pins.dedup();
    pins
}

/// A 4 KiB bitmap in a fresh frame.
fn copy_to_frame(frames: &mut impl FrameAlloc, bytes: &[u8; 4096]) -> Result<u64, String> {
    let phys = frames.alloc_zeroed().ok_or("no memory for a VMX bitmap")?;
    for (word, chunk) in frames.table_mut(phys).iter_mut().zip(bytes.chunks_exact(8)) {
        *word = u64::from_le_bytes(chunk.try_into().unwrap_or_default());
    }
    Ok(phys)
}

/// A guest's RAM block, how the guest sees it, and how it starts.
struct LoadedGuest {
    ram: GuestRam,
    start: GuestStart,
    /// What was booted, for the log.
    booted: String,
}

/// The bytes of file `path` (under `\exitless\`); `what` names it in the error.
fn file<'m>(
    image: &impl Fn(&str) -> Option<&'m [u8]>,
    path: &str,
    what: &str,
) -> Result<&'m [u8], String> {
    image(path)
        .ok_or_else(|| format!("{what} `{path}` is not on the boot volume under \\exitless\\"))
}

fn allocate_ram(frames: &mut impl GuestFrames, memory_mib: u64) -> Result<(u64, u64), String> {
    let len = memory_mib << 20;
    let base = frames
        .alloc_ram(len)
        .ok_or_else(|| format!("no {memory_mib} MiB of contiguous free memory for its RAM"))?;
    Ok((base, len))
}

/// Allocates the guest's RAM and lays out what it boots: its `image` (our guest boot protocol) or
/// its `linux` kernel (Linux's 64-bit boot protocol). The kernel is parsed and checked to fit
/// before RAM is allocated.
fn load_guest<'m>(
    config: &GuestConfig,
    frames: &mut impl GuestFrames,
    image: &impl Fn(&str) -> Option<&'m [u8]>,
    platform: &GuestPlatformDescription,
    layout_at: impl Fn(u64) -> RamLayout,
) -> Result<LoadedGuest, String> {
    let Some(linux) = &config.linux else {
        let bytes = file(image, &config.image, "image")?;
        let elf = ElfImage::parse(bytes, AddressWindow::UPPER_HALF)
            .map_err(|e| format!("{}: {e}", config.image))?;
        let (base, len) = allocate_ram(frames, config.memory_mib)?;
        let start = guest_layout::build(frames.ram(base, len), &elf).map_err(|e| format!("{e}"))?;
        return Ok(LoadedGuest {
            ram: GuestRam {
                host_base: base,
                len,
                layout: RamLayout::LINEAR,
            },
            start,
            booted: format!("image {}", config.image),
        });
    };
    let bytes = file(image, &linux.kernel, "linux kernel")?;
    let kernel = Kernel::parse(bytes).map_err(|e| format!("{}: {e}", linux.kernel))?;
    let initrd = match &linux.initrd {
        Some(path) => Some(file(image, path, "initrd")?),
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
    let (base, len) = allocate_ram(frames, config.memory_mib)?;
    let ram_layout = layout_at(base);
    let layout = linux_boot::build(frames.ram(base, len), ram_layout, &boot).map_err(refused)?;
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
        ram: GuestRam {
            host_base: base,
            len,
            layout: ram_layout,
        },
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

/// What a Linux guest's ACPI tables describe: one vCPU (x2APIC ID 0, as `VcpuInterrupts` numbers
/// it), its assigned functions' INTx lines, a host-bridge memory window per memory BAR (BARs stay
/// where the firmware put them), and COM1.
fn guest_platform(
    config: &GuestConfig,
    pci: Option<&PciTopology>,
    intx: &[IntxLine],
) -> GuestPlatformDescription {
    let functions = pci
        .iter()
        .flat_map(|topology| config.pci.iter().filter_map(|&bdf| topology.find(bdf)));
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
    config: &GuestConfig,
    pci: Option<&PciTopology>,
    frames: &mut impl FrameAlloc,
    ept: &mut Ept,
    io: &mut IoBitmaps,
    reset: &mut impl FnMut(&PciFunction),
) -> Result<Vec<AssignedFunction>, String> {
    let mut assigned = Vec::new();
    if config.pci.is_empty() {
        return Ok(assigned);
    }
    let topology = pci.ok_or("PCI devices are assigned but PCI was not set up")?;
    for &bdf in &config.pci {
        let function = topology
            .find(bdf)
            .ok_or_else(|| format!("PCI device {bdf} does not exist"))?;
        let assigned_function = assigned_function(function)?;
        reset(function);
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

/// A function as its guest's virtual PCI bus shows it: configuration space through its mediation
/// table, BARs emulated, MSI emulated (the guest's programming comes back as an `MsiRequest`).
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

#[cfg(test)]
mod tests;
