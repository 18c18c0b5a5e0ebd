//! Runs configured guests on this CPU: builds each guest's memory, EPT, bitmaps and VMCS, then enters
//! it until it powers off or is stopped. This is the machine-facing half of the VMM (the exit logic it
//! drives is host-tested in `exits`).

use super::controls::{self, Controls};
use super::exits::{self, ExitCounters, GuestEnd, HostServices, Next, Vcpu, APIC_BASE_RESET};
use super::guest_layout;
use super::guest_memory::GuestMemory;
use super::vmcs_setup::{self, GuestTables, HostState};
use crate::arch::gdt::Selectors;
use crate::arch::vmx::{self as hw, EntryResult, GuestRegisters};
use crate::caps::vmx::VmxCaps;
use crate::config::GuestConfig;
use crate::memory::{frames::FrameAllocator, FrameAlloc, PAGE_SIZE};
use crate::vmx::ept::{Ept, EptPerms, Leaf, PageSizes};
use crate::vmx::io_bitmap::IoBitmaps;
use crate::vmx::msr_bitmap::MsrBitmap;
use crate::vmx::vmcs::{self, CurrentVmcs, VmcsAccess};
use crate::vmx::vmcs_fields::Vmcs32Ro;
use alloc::format;
use alloc::string::String;
use exitless_abi::boot_info::Module;
use exitless_abi::elf_image::{AddressWindow, ElfImage};
use x86_64::registers::control::{Cr0, Cr3, Cr4};
use x86_64::registers::model_specific::{Efer, FsBase, GsBase};

/// How one guest's run ended, with its exit counters.
pub struct GuestReport {
    pub name: String,
    pub end: GuestEnd,
    pub counters: ExitCounters,
}

/// VMX operation on this CPU (VMXON done).
pub struct VmxCpu {
    caps: VmxCaps,
    host: HostState,
}

/// Guest RAM is aligned so EPT can map it with 2 MiB pages.
const GUEST_RAM_ALIGN: u64 = 2 << 20;

impl VmxCpu {
    /// VMXON on this CPU.
    pub fn enable(
        caps: &VmxCaps,
        frames: &mut FrameAllocator,
        selectors: &Selectors,
    ) -> Result<Self, String> {
        if let Err(reason) = caps.support {
            return Err(format!("VMX is not available: {}", reason.as_str()));
        }
        let region = frames
            .alloc_zeroed()
            .ok_or("no memory for the VMXON region")?;
        // SAFETY: a fresh frame, kept for as long as VMX is on (forever).
        unsafe { hw::vmxon(caps, region) }.map_err(|e| format!("{e}"))?;
        let gdt = x86_64::instructions::tables::sgdt();
        let idt = x86_64::instructions::tables::sidt();
        let host = HostState {
            cr0: Cr0::read_raw(),
            cr3: Cr3::read_raw().0.start_address().as_u64(),
            cr4: Cr4::read_raw(),
            code_selector: selectors.code.0,
            data_selector: selectors.data.0,
            tr_selector: selectors.tss.0,
            fs_base: FsBase::read().as_u64(),
            gs_base: GsBase::read().as_u64(),
            tr_base: crate::arch::gdt::tss_base(),
            gdtr_base: gdt.base.as_u64(),
            idtr_base: idt.base.as_u64(),
            efer: Efer::read_raw(),
            rip: hw::vm_exit_entry_point(),
        };
        Ok(Self { caps: *caps, host })
    }

    /// Builds and runs one guest to its end. Errors before the guest starts are returned as its end.
    pub fn run(
        &self,
        config: &GuestConfig,
        modules: &[Module],
        frames: &mut FrameAllocator,
        vpid: u16,
    ) -> GuestReport {
        let report = |end| GuestReport {
            name: config.name.clone(),
            end,
            counters: ExitCounters::default(),
        };
        let controls = match controls::plan(&self.caps, config.interrupts) {
            Ok(c) => c,
            Err(e) => return report(GuestEnd::Stopped(format!("{e}"))),
        };
        match self.build(config, modules, frames, controls, vpid) {
            Ok(mut guest) => {
                let end = guest.run_loop(&config.name);
                GuestReport {
                    name: config.name.clone(),
                    end,
                    counters: guest.vcpu.counters,
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
    ) -> Result<Guest, String> {
        let module = modules
            .iter()
            .find(|m| m.name() == config.image)
            .ok_or_else(|| {
                format!(
                    "image `{}` is not on the boot volume under \\exitless\\",
                    config.image
                )
            })?;
        // SAFETY: modules are Loader memory, identity-mapped, never reused.
        let bytes =
            unsafe { core::slice::from_raw_parts(module.phys as *const u8, module.len as usize) };
        let image = ElfImage::parse(bytes, AddressWindow::UPPER_HALF)
            .map_err(|e| format!("{}: {e}", config.image))?;

        let ram_len = config.memory_mib << 20;
        let ram_base = frames
            .alloc_contiguous(ram_len / PAGE_SIZE, GUEST_RAM_ALIGN)
            .ok_or_else(|| {
                format!(
                    "no {} MiB of contiguous free memory for its RAM",
                    config.memory_mib
                )
            })?;
        // SAFETY: the frames were just allocated to this guest and are identity-mapped.
        let ram = unsafe { core::slice::from_raw_parts_mut(ram_base as *mut u8, ram_len as usize) };
        let start = guest_layout::build(ram, &image).map_err(|e| format!("{e}"))?;

        let mut ept = Ept::new(frames).map_err(|e| format!("EPT: {e:?}"))?;
        let sizes = PageSizes {
            size_2m: self.caps.ept_2m(),
            size_1g: self.caps.ept_1g(),
        };
        ept.map(
            frames,
            0,
            ram_base,
            ram_len,
            Leaf::ram(EptPerms::RWX),
            sizes,
        )
        .map_err(|e| format!("EPT: {e:?}"))?;

        let msr_bitmap = copy_to_frames(frames, MsrBitmap::intercept_all().as_bytes())?;
        let mut io = IoBitmaps::intercept_all();
        for &(first, last) in &config.ports {
            io.pass(first, u32::from(last - first) + 1);
        }
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
        let setup = vmcs_setup::write_controls(&mut vmcs, &controls, 0)
            .and_then(|()| vmcs_setup::write_tables(&mut vmcs, &tables))
            .and_then(|()| vmcs_setup::write_host_state(&mut vmcs, &self.host))
            .and_then(|()| vmcs_setup::write_guest_start(&mut vmcs, &self.caps, &start));
        setup.map_err(|e| format!("programming the VMCS failed: {e}"))?;
        // SAFETY: VMX is on; flushes anything cached for this EPTP from an earlier guest.
        unsafe { hw::invept_single(tables.eptp) };

        let vcpu = Vcpu {
            regs: GuestRegisters {
                rdi: start.rdi,
                ..Default::default()
            },
            apic_base: APIC_BASE_RESET,
            cr0_fixed: (self.caps.cr0_fixed0, self.caps.cr0_fixed1),
            cr4_fixed: (self.caps.cr4_fixed0, self.caps.cr4_fixed1),
            ..Default::default()
        };
        log::info!(
            "guest {}: {} MiB at host {ram_base:#x}, image {} entry {:#x}, interrupts {:?}",
            config.name,
            config.memory_mib,
            config.image,
            start.rip,
            config.interrupts
        );
        Ok(Guest {
            vmcs,
            vcpu,
            ram_base,
            ram_len,
        })
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
}

struct MachineServices<'a> {
    guest: &'a str,
}

impl HostServices for MachineServices<'_> {
    fn console_line(&mut self, line: &str) {
        crate::println!("[guest {}] {}", self.guest, line);
    }
    fn cpuid(&self, leaf: u32, subleaf: u32) -> [u32; 4] {
        let r = core::arch::x86_64::__cpuid_count(leaf, subleaf);
        [r.eax, r.ebx, r.ecx, r.edx]
    }
    fn rdtsc(&self) -> u64 {
        // SAFETY: RDTSC is available at CPL 0.
        unsafe { core::arch::x86_64::_rdtsc() }
    }
}

impl Guest {
    fn run_loop(&mut self, name: &str) -> GuestEnd {
        let mut services = MachineServices { guest: name };
        let mut launched = false;
        loop {
            // SAFETY: this guest's VMCS is current and fully programmed; HOST_RIP is the exit stub.
            match unsafe { hw::enter_guest(&mut self.vcpu.regs, launched) } {
                EntryResult::Exited => launched = true,
                failure => return self.entry_failed(failure),
            }
            // SAFETY: the guest's RAM is identity-mapped host memory owned by this guest.
            let ram = unsafe {
                core::slice::from_raw_parts_mut(self.ram_base as *mut u8, self.ram_len as usize)
            };
            match exits::handle_exit(
                &mut self.vmcs,
                &mut self.vcpu,
                &mut GuestMemory::new(ram),
                &mut services,
            ) {
                Next::Resume => {}
                Next::End(end) => {
                    if !self.vcpu.console.pending().is_empty() {
                        services.console_line(&String::from(self.vcpu.console.pending()));
                    }
                    return end;
                }
            }
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
