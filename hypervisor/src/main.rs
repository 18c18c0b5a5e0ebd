//! Exitless kernel entry (x86_64-unknown-none).
//!
//! Boot flow (docs/architecture.md): the UEFI loader enters `_start` with `rdi` = physical address of
//! the boot info; we switch to our own stack, console, GDT/TSS and IDT, then memory, then discover the
//! platform and print the boot summary, then run guests or power off.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!("the hypervisor kernel runs bare metal: build it with `cargo xtask build`");
}

#[cfg(target_os = "none")]
extern crate alloc;

#[cfg(target_os = "none")]
mod kernel {
    use alloc::format;
    use alloc::string::String;
    use alloc::vec::Vec;
    use exitless_abi::boot_info::BootInfo;
    use exitless_abi::boot_info::Module;
    use exitless_abi::protocol::{self, Outcome};
    use hypervisor::arch::{apic, exceptions, gdt, percpu, power, serial};
    use hypervisor::caps::{cpu::CpuInfo, vmx::VmxCaps};
    use hypervisor::config::{Config, SelfTest};
    use hypervisor::iommu::{BringUpOptions, DmaRemapping, Iommu};
    use hypervisor::memory::{frames::FrameAllocator, heap};
    use hypervisor::pci::{self, ConfigAccess, Ecam, LegacyPorts, PciTopology};
    use hypervisor::platform::{AcpiStatus, Platform};
    use hypervisor::vmm::assignment::{self, AssignmentPlan};
    use hypervisor::vmm::runner::{GuestDma, VmxCpu};
    use hypervisor::vmm::vcpu::GuestEnd;
    use hypervisor::vtd::regs::MmioRegisters;
    use hypervisor::{println, summary};
    use linked_list_allocator::LockedHeap;

    #[global_allocator]
    static HEAP: LockedHeap = LockedHeap::empty();

    /// The boot CPU's kernel stack (interrupts and exceptions other than #DF/NMI/#MC run on it too).
    const BOOT_STACK_SIZE: usize = percpu::KERNEL_STACK_SIZE;

    #[repr(C, align(16))]
    struct BootStack([u8; BOOT_STACK_SIZE]);

    static mut BOOT_STACK: BootStack = BootStack([0; BOOT_STACK_SIZE]);

    // The loader's stack lives in memory we may hand out later: move to our own before any Rust code runs.
    core::arch::global_asm!(
        r#"
        .section .text._start, "ax"
        .global _start
        _start:
            lea rsp, [rip + {stack} + {size}]
            xor ebp, ebp
            call {main}
            ud2
        "#,
        stack = sym BOOT_STACK,
        size = const BOOT_STACK_SIZE,
        main = sym kernel_main,
    );

    extern "C" fn kernel_main(boot_info_phys: u64) -> ! {
        serial::init(log::LevelFilter::Info);
        println!();
        println!("Exitless {} hypervisor", env!("CARGO_PKG_VERSION"));
        let boot_stack = &raw const BOOT_STACK as u64;
        let selectors = percpu::init_boot_cpu(percpu::KernelStack {
            bottom: boot_stack,
            top: boot_stack + BOOT_STACK_SIZE as u64,
        });
        exceptions::init();

        // SAFETY: the loader passes the physical (identity-mapped) address of a BootInfo in rdi.
        let boot_info: &'static BootInfo = unsafe { &*(boot_info_phys as *const BootInfo) };
        if let Err(error) = boot_info.validate() {
            log::error!("{error}");
            power::stop_after_fatal_error();
        }
        power::set_uefi_system_table(boot_info.uefi_system_table);
        // SAFETY: validated above; the loader keeps these arrays in Loader memory, never handed out.
        let (regions, modules) = unsafe { (boot_info.memory_regions(), boot_info.module_list()) };

        let config_text = modules
            .iter()
            .find(|m| m.name() == "exitless.cfg")
            // SAFETY: module contents are Loader memory, identity-mapped, and live forever.
            .map(|m| unsafe { core::slice::from_raw_parts(m.phys as *const u8, m.len as usize) })
            .and_then(|bytes| core::str::from_utf8(bytes).ok())
            .unwrap_or("");

        let mut frames = FrameAllocator::new(regions);
        let Some(heap_base) = frames.alloc_contiguous(heap::HEAP_SIZE / 4096, 4096) else {
            log::error!(
                "no {} MiB of contiguous free memory for the kernel heap",
                heap::HEAP_SIZE >> 20
            );
            power::stop_after_fatal_error();
        };
        // SAFETY: the frames were just taken from the allocator and are used for nothing else.
        unsafe { heap::init(&HEAP, heap_base) };

        let (config, problems) = Config::parse(config_text);
        power::set_emulator_exit(config.emulator_exit);
        log::set_max_level(config.log_level);
        for problem in &problems {
            log::warn!("exitless.cfg line {}: {}", problem.line, problem.message);
        }
        let selftest = selftest_to_run(config.selftest);

        let mut console = serial::Console;
        let _ = protocol::write_begin(&mut console, "boot");
        let mut results = summary::Results::default();
        results.record("boot-info", Outcome::Ok);
        results.record(
            "config",
            if problems.is_empty() {
                Outcome::Ok
            } else {
                Outcome::Failed("exitless.cfg has problems (see warnings)")
            },
        );

        let boot = summary::BootFacts::collect(boot_info, regions, modules, &frames);
        let _ = boot.write_summary(&mut console);
        results.record("heap", summary::check_heap());

        let cpu = CpuInfo::read();
        let _ = cpu.write_summary(&mut console);
        let _ = hypervisor::arch::tsc_calibration::calibrate().write_summary(&mut console);
        // SAFETY: CPL 0; reads only the VMX capability MSRs that CPUID says exist.
        let vmx = VmxCaps::decode(unsafe { hypervisor::caps::vmx::read_vmx_msrs() }.as_ref());
        let _ = vmx.write_summary(&mut console);

        let rsdp = (boot_info.rsdp != 0).then_some(boot_info.rsdp);
        // SAFETY: CPL 0 on the BSP, all physical memory identity-mapped, rsdp from the firmware.
        let platform = unsafe { Platform::discover(rsdp) };
        let _ = platform.write_summary(&mut console);
        results.record(
            "acpi",
            match &platform.acpi {
                AcpiStatus::Unusable(_) => {
                    Outcome::Failed("ACPI tables unusable (see summary: acpi)")
                }
                _ => Outcome::Ok,
            },
        );

        let pci = enumerate_pci(&platform);
        let _ = pci.write_summary(&mut console);
        results.record(
            "pci",
            if pci.functions.is_empty() {
                Outcome::Failed("no PCI function answered (not even a host bridge)")
            } else {
                Outcome::Ok
            },
        );

        let _ = results.write(&mut console);
        let mut exit_code = results.exit_code();
        let plan = (!config.guests.is_empty()).then(|| plan_assignment(&config, &pci, &platform));
        // The VT-d self-tests drive the units themselves.
        let iommu = if platform.iommus.is_empty()
            || matches!(selftest, SelfTest::Vtd | SelfTest::VtdGuest)
        {
            None
        } else {
            bring_up_dma(&platform, &pci, plan.as_ref(), &mut frames)
        };
        // One CPU runs everything: it holds the IOMMU's lock from here to power-off and lends the
        // service to each guest's run (`iommu` module doc).
        let mut dma = iommu.as_ref().map(Iommu::lock);
        if let Some(plan) = &plan {
            exit_code |= run_guests(
                &config,
                plan,
                dma.as_deref_mut(),
                &vmx,
                &platform,
                &pci,
                modules,
                &mut frames,
                &selectors,
            );
        }
        #[cfg(feature = "selftest")]
        if selftest == SelfTest::Vtd {
            exit_code |= hypervisor::selftest::vtd::run(&platform, &pci, &mut frames, &mut console);
        }
        #[cfg(feature = "selftest")]
        if selftest == SelfTest::VtdGuest {
            exit_code |=
                hypervisor::selftest::vtd_guest::run(&platform, &pci, &mut frames, &mut console);
        }
        if let Some(dma) = dma.as_deref_mut() {
            dma.drain_faults(&mut frames);
            dma.shut_down();
        }
        #[cfg(feature = "selftest")]
        if selftest == SelfTest::Exception {
            log::info!("self-test: executing ud2, expecting an #UD report and a clean stop");
            // SAFETY: deliberately raises #UD; the handler reports it and stops the machine.
            unsafe { core::arch::asm!("ud2") };
        }
        power::power_off(exit_code)
    }

    /// The self-test this kernel runs for `selftest = ...`: the test kernel (feature `selftest`)
    /// runs the one asked for.
    #[cfg(feature = "selftest")]
    fn selftest_to_run(asked: SelfTest) -> SelfTest {
        asked
    }

    /// The self-test this kernel runs for `selftest = ...`: none, it has no self-test code. Asking
    /// for one is reported (not silently ignored) and the boot goes on as with `selftest = none`.
    #[cfg(not(feature = "selftest"))]
    fn selftest_to_run(asked: SelfTest) -> SelfTest {
        if asked != SelfTest::None {
            log::warn!(
                "selftest = {}: this kernel was built without self-tests, so none runs; the test \
                 images boot hypervisor-selftest.elf (`cargo xtask test` builds it)",
                asked.name()
            );
        }
        SelfTest::None
    }

    /// Checks the guests' `pci =` against the machine: refusals are logged as errors (their guests do
    /// not run), warnings (`unsafe_no_iommu`) as warnings, on every boot; then the `summary: assignment`
    /// lines.
    fn plan_assignment(config: &Config, pci: &PciTopology, platform: &Platform) -> AssignmentPlan {
        let intx = match platform.acpi {
            AcpiStatus::Read(_) => assignment::IntxRouting::Unknown,
            AcpiStatus::None | AcpiStatus::Unusable(_) => assignment::IntxRouting::InterruptLine,
        };
        let plan = assignment::plan(
            &config.guests,
            pci,
            &platform.iommus,
            config.unsafe_no_iommu,
            intx,
        );
        for refusal in &plan.refusals {
            log::error!("device assignment refused: {refusal}");
        }
        for warning in &plan.warnings {
            log::warn!("device assignment: {warning}");
        }
        let _ = plan.write_summary(&mut serial::Console);
        plan
    }

    /// Brings every VT-d unit up (translation on, no device allowed DMA except RMRR devices no guest
    /// is given; each guest's devices are attached when it runs) with interrupt remapping on where
    /// offered, which blocks compatibility-format interrupts: guests' MSIs and IOAPIC pins get IRTEs.
    /// A failure is logged; guests with devices then do not run.
    fn bring_up_dma(
        platform: &Platform,
        pci: &PciTopology,
        plan: Option<&AssignmentPlan>,
        frames: &mut FrameAllocator,
    ) -> Option<Iommu<MmioRegisters>> {
        let assigned: Vec<pci::Bdf> = plan
            .map(|plan| {
                plan.guests
                    .iter()
                    .filter(|g| !g.refused)
                    .flat_map(|g| g.devices.iter().map(|d| d.requester))
                    .collect()
            })
            .unwrap_or_default();
        let options = BringUpOptions {
            interrupt_remapping: true,
        };
        match Iommu::bring_up_machine(platform, pci, &assigned, options, frames) {
            Ok(mut iommu) => {
                // Faults interrupt the boot CPU, the one that runs the guests.
                let target = (apic::DMA_FAULT_VECTOR, platform.lapic.bsp_id);
                match iommu.get_mut().route_fault_events(Some(target)) {
                    Ok(()) => log::info!(
                        "vtd: fault events on vector {:#x} at APIC {}",
                        target.0,
                        target.1
                    ),
                    Err(why) => log::warn!(
                        "vtd: fault events stay masked ({why}); faults are read when a guest ends"
                    ),
                }
                Some(iommu)
            }
            Err(why) => {
                log::error!(
                    "vtd: DMA remapping not up: {why}; guests with PCI devices will not run"
                );
                None
            }
        }
    }

    /// Runs every configured guest whose device assignment is not refused, one after the other, as the
    /// `guests` suite (a refused guest is judged as stopped with "assignment refused"); returns 1 if any
    /// failed.
    #[allow(clippy::too_many_arguments)]
    fn run_guests(
        config: &Config,
        plan: &AssignmentPlan,
        mut dma: Option<&mut DmaRemapping<MmioRegisters>>,
        vmx: &VmxCaps,
        platform: &Platform,
        pci: &PciTopology,
        modules: &[Module],
        frames: &mut FrameAllocator,
        selectors: &gdt::Selectors,
    ) -> u32 {
        let mut console = serial::Console;
        // Guests print their own suites while they run; this suite follows them.
        let mut results = summary::Results::default();
        let ioapic = platform.ioapics.first().map(|i| (i.id, i.address));
        // VMX is only turned on when some guest will run.
        let runs_any = config.guests.iter().any(|g| !plan.is_refused(&g.name));
        let cpu = match runs_any.then(|| VmxCpu::enable(vmx, frames, selectors, ioapic)) {
            Some(Err(why)) => {
                log::error!("cannot run guests: {why}");
                None
            }
            Some(Ok(mut cpu)) => {
                cpu.attach_pci(pci.clone(), guest_pci_access(platform));
                Some(cpu)
            }
            None => None,
        };
        for (index, guest) in config.guests.iter().enumerate() {
            let name = format!("guest-{}", guest.name);
            if plan.is_refused(&guest.name) {
                log::warn!(
                    "guest {} not started: device assignment refused",
                    guest.name
                );
                let refused = GuestEnd::Stopped(String::from("assignment refused"));
                results.record(name, summary::judge_guest(guest, &refused));
                continue;
            }
            let Some(cpu) = &cpu else {
                results.record(name, Outcome::Failed("VMX unavailable (see log)"));
                continue;
            };
            let guest_dma = GuestDma {
                remapping: dma.as_deref_mut(),
                devices: plan.devices(&guest.name),
                intx: plan.intx(&guest.name),
            };
            let report = cpu.run(guest, modules, frames, index as u16 + 1, guest_dma);
            match &report.end {
                GuestEnd::PoweredOff(code) => {
                    log::info!("guest {} powered off with code {code}", guest.name)
                }
                GuestEnd::Stopped(why) => log::warn!("guest {} stopped: {why}", guest.name),
            }
            let _ = summary::write_guest_exits(&mut console, &report);
            log::info!(
                "host timer: {} ticks so far (TSC {})",
                hypervisor::arch::host_irq::timer_ticks(),
                hypervisor::arch::cpu::rdtsc()
            );
            results.record(name, summary::judge_guest(guest, &report.end));
        }
        let _ = protocol::write_begin(&mut console, "guests");
        let _ = results.write(&mut console);
        results.exit_code()
    }

    /// Enumerates PCI through ECAM where MCFG describes it, legacy 0xCF8/0xCFC otherwise.
    fn enumerate_pci(platform: &Platform) -> PciTopology {
        // SAFETY: ECAM windows come from MCFG and are identity-mapped; ports 0xCF8/0xCFC are the PC's
        // configuration mechanism #1, used by nothing else in the kernel.
        let ecams: Vec<Ecam> = platform
            .mcfg
            .iter()
            .map(|r| unsafe { Ecam::new(r.base, r.segment, r.bus_start, r.bus_end) })
            .collect();
        if ecams.is_empty() {
            // SAFETY: as above.
            return pci::enumerate(&unsafe { LegacyPorts::new() });
        }
        let accesses: Vec<&dyn ConfigAccess> =
            ecams.iter().map(|e| e as &dyn ConfigAccess).collect();
        pci::enumerate_all(&accesses).expect("at least one ECAM window")
    }

    /// The configuration access guests' virtual PCI buses use: segment 0's ECAM window, else legacy ports.
    fn guest_pci_access(platform: &Platform) -> alloc::boxed::Box<dyn ConfigAccess> {
        match platform.mcfg.iter().find(|r| r.segment == 0) {
            // SAFETY: as in `enumerate_pci`; the VMM only touches assigned functions through it.
            Some(r) => alloc::boxed::Box::new(unsafe {
                Ecam::new(r.base, r.segment, r.bus_start, r.bus_end)
            }),
            // SAFETY: as above.
            None => alloc::boxed::Box::new(unsafe { LegacyPorts::new() }),
        }
    }

    #[panic_handler]
    fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
        serial::print_emergency(format_args!("\nPANIC: {info}\n"));
        power::stop_after_fatal_error()
    }
}
