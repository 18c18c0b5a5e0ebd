//! From validated files to the kernel: kernel placement, page tables, boot info, exit from boot
//! services, and the jump.

use alloc::vec::Vec;
use core::arch::x86_64::__cpuid;
use core::mem::size_of;
use core::ops::Range;

use ::boot::paging::{self, FrameSource, Mapper, MAX_IDENTITY_END};
use exitless_abi::boot_info::{build_memory_map, BootInfo, MemoryKind, MemoryRegion, Module};
use exitless_abi::elf_image::{AddressWindow, ElfImage};
use uefi::boot::{self, MemoryType};
use uefi::mem::memory_map::MemoryMap;
use uefi::proto::loaded_image::LoadedImage;
use uefi::runtime::{self, ResetType};
use uefi::system;
use uefi::table::cfg::ConfigTableEntry;
use uefi::Status;
use x86_64::registers::control::{Cr4, Cr4Flags};
use x86_64::registers::model_specific::{Efer, EferFlags};
use x86_64::structures::paging::PageTable;

use crate::error::LoadError;
use crate::files::{Pages, PAGE};
use crate::loader::{self, Loaded};
use crate::say;

/// The stack the kernel is entered on (it switches to its own first thing).
const STACK_BYTES: u64 = 64 * 1024;
/// Room for memory-map entries that appear between counting them and exiting boot services
/// (our own allocations split free ranges; the firmware may allocate too).
const MEMORY_MAP_SLACK: usize = 128;

/// Everything the jump needs; plain numbers, so nothing owned by boot services outlives them.
struct Handoff {
    cr3: u64,
    entry: u64,
    stack_top: u64,
    boot_info: u64,
    regions: u64,
    region_capacity: usize,
    use_nx: bool,
}

/// Page-table frames carved from one zeroed LOADER_DATA allocation (identity-mapped under UEFI).
struct ContiguousFrames {
    base: u64,
    count: usize,
    used: usize,
}

impl FrameSource for ContiguousFrames {
    fn allocate(&mut self) -> Option<u64> {
        (self.used < self.count).then(|| {
            self.used += 1;
            self.base + (self.used as u64 - 1) * PAGE
        })
    }

    fn table(&mut self, phys: u64) -> &mut PageTable {
        debug_assert!(phys >= self.base && phys < self.base + self.used as u64 * PAGE);
        // SAFETY: `phys` is a zeroed, page-aligned frame of our allocation, reachable at the same
        // address through the firmware's identity map, and only this builder touches it.
        unsafe { &mut *(phys as *mut PageTable) }
    }
}

/// CPUID.80000001H:EDX[20]: execute-disable bit available (SDM Vol. 3A 4.1.4).
fn cpu_has_nx() -> bool {
    let max_extended = __cpuid(0x8000_0000).eax;
    max_extended >= 0x8000_0001 && __cpuid(0x8000_0001).edx & (1 << 20) != 0
}

/// The loader's own image, which keeps running on the new tables until the jump.
fn loader_image() -> Range<u64> {
    boot::open_protocol_exclusive::<LoadedImage>(boot::image_handle())
        .map(|li| {
            let (base, size) = li.info();
            base as u64..base as u64 + size
        })
        // Unknown: leave all of low memory executable rather than fault on the next instruction.
        .unwrap_or(0..paging::MIN_IDENTITY_END)
}

/// ACPI 2.0+ RSDP if published, else the ACPI 1.0 one, else 0 (OVMF under Bochs has none).
fn find_rsdp() -> u64 {
    system::with_config_table(|entries| {
        let find = |guid| {
            entries
                .iter()
                .find(|e| e.guid == guid)
                .map(|e| e.address as u64)
        };
        find(ConfigTableEntry::ACPI2_GUID)
            .or_else(|| find(ConfigTableEntry::ACPI_GUID))
            .unwrap_or(0)
    })
}

/// Loads the kernel and starts it; returns only when something failed before boot services exited.
pub fn start(loaded: Loaded) -> Status {
    let Loaded { kernel, modules } = loaded;
    match prepare(kernel, &modules) {
        Ok(handoff) => {
            drop(modules);
            enter(handoff)
        }
        Err(e) => {
            for m in modules {
                m.pages.free();
            }
            loader::fail(&e)
        }
    }
}

fn prepare(
    kernel: crate::files::LoadedFile,
    modules: &[crate::files::LoadedFile],
) -> Result<Handoff, LoadError> {
    // SDM Vol. 3A 4.1.1: CR4.LA57 selects 5-level paging; our tables are 4-level.
    if Cr4::read().contains(Cr4Flags::L5_PAGING) {
        return Err(LoadError::FiveLevelPaging);
    }

    // Kernel: one contiguous physical range for the whole span, segments copied, bss zeroed.
    let kernel_name = kernel.name.clone();
    let image = ElfImage::parse(kernel.bytes(), AddressWindow::UPPER_HALF).map_err(|error| {
        LoadError::BadKernel {
            path: kernel_name.clone(),
            error,
        }
    })?;
    let (entry, span, span_len) = (image.entry(), image.span(), image.span_len());
    let mut kernel_mem = Pages::allocate(span_len, "the kernel image")?;
    image.load_into(kernel_mem.bytes());

    // Page tables: identity map of everything the firmware describes (at least 4 GiB) + the kernel.
    let map = boot::memory_map(MemoryType::LOADER_DATA).map_err(|e| LoadError::OutOfMemory {
        what: "the memory map".into(),
        bytes: e.status().0 as u64,
    })?;
    let highest = map
        .entries()
        .map(|d| d.phys_start + d.page_count * PAGE)
        .max()
        .unwrap_or(0);
    let map_entries = map.entries().len();
    // Runtime-services code stays executable: the kernel calls ResetSystem through it (identity
    // mapped, since nobody calls SetVirtualAddressMap).
    let mut executable: Vec<Range<u64>> = map
        .entries()
        .filter(|d| d.ty == MemoryType::RUNTIME_SERVICES_CODE)
        .map(|d| d.phys_start..d.phys_start + d.page_count * PAGE)
        .collect();
    executable.push(loader_image());
    drop(map);
    let identity_end = paging::identity_map_end(highest);
    if identity_end > MAX_IDENTITY_END {
        return Err(LoadError::MemoryTooLarge(highest));
    }
    let table_frames = paging::frames_needed(identity_end, span.clone());
    let tables = Pages::allocate(table_frames as u64 * PAGE, "the page tables")?;
    let mut frames = ContiguousFrames {
        base: tables.phys,
        count: tables.count,
        used: 0,
    };
    let use_nx = cpu_has_nx();
    let mut mapper = Mapper::new(&mut frames, use_nx)?;
    mapper.identity_map(identity_end, &executable)?;
    drop(executable);
    mapper.map_image(&image, kernel_mem.phys)?;
    let expected = kernel_mem.phys + (entry - span.start);
    if mapper.translate(entry).map(|(phys, _)| phys) != Some(expected) {
        return Err(LoadError::Paging(paging::PagingError::AlreadyMapped(entry)));
    }
    let cr3 = mapper.root();
    kernel.pages.free();

    let stack = Pages::allocate(STACK_BYTES, "the kernel's boot stack")?;

    // Boot info, module table and memory-map array in one allocation, in that order.
    let region_capacity = map_entries + MEMORY_MAP_SLACK;
    let modules_at = size_of::<BootInfo>().next_multiple_of(16) as u64;
    let regions_at = modules_at + (modules.len() * size_of::<Module>()) as u64;
    let total = regions_at + (region_capacity * size_of::<MemoryRegion>()) as u64;
    let handoff_mem = Pages::allocate(total, "the boot information")?;
    let base = handoff_mem.phys;
    for (i, m) in modules.iter().enumerate() {
        let module = Module {
            // Names were checked to fit when the files were listed.
            name: Module::encode_name(&m.name).unwrap_or([0; 64]),
            phys: m.pages.phys,
            len: m.len,
        };
        // SAFETY: inside our zeroed allocation, 8-byte aligned (16 + 80 * i).
        unsafe { ((base + modules_at) as *mut Module).add(i).write(module) };
    }
    let boot_info = BootInfo {
        modules: base + modules_at,
        modules_len: modules.len() as u64,
        rsdp: find_rsdp(),
        uefi_system_table: uefi::table::system_table_raw().map_or(0, |st| st.as_ptr() as u64),
        page_table_root: cr3,
        identity_map_end: identity_end,
        kernel_phys_start: kernel_mem.phys,
        kernel_phys_len: span_len,
        ..BootInfo::empty()
    };
    // SAFETY: the allocation starts with room for a BootInfo and is page-aligned.
    unsafe { (base as *mut BootInfo).write(boot_info) };

    say!(
        "kernel at phys {:#x} ({} KiB), page tables at {:#x} ({} frames, NX {}), identity map to {:#x}",
        kernel_mem.phys,
        span_len / 1024,
        cr3,
        frames.used,
        if use_nx { "on" } else { "off" },
        identity_end
    );
    say!(
        "boot info at {:#x}: {} modules, RSDP {:#x}, system table {:#x}",
        base,
        modules.len(),
        boot_info.rsdp,
        boot_info.uefi_system_table
    );
    Ok(Handoff {
        cr3,
        entry,
        stack_top: stack.phys + stack.count as u64 * PAGE,
        boot_info: base,
        regions: base + regions_at,
        region_capacity,
        use_nx,
    })
}

/// Exits boot services, completes the boot info with the final memory map and jumps.
fn enter(h: Handoff) -> ! {
    say!(
        "exiting boot services; entering the kernel at {:#x}",
        h.entry
    );
    crate::console::boot_services_exited();
    // SAFETY: nothing owned by boot services is alive: `prepare` dropped its protocols, pool
    // allocations and file handles; only LOADER_DATA pages and plain numbers remain.
    let map = unsafe { boot::exit_boot_services(None) };
    x86_64::instructions::interrupts::disable();

    // SAFETY: `regions` points at `region_capacity` slots of our own LOADER_DATA allocation.
    let out = unsafe {
        core::slice::from_raw_parts_mut(h.regions as *mut MemoryRegion, h.region_capacity)
    };
    let entries = map.entries().map(|d| MemoryRegion {
        start: d.phys_start,
        len: d.page_count * PAGE,
        kind: MemoryKind::from_uefi_type(d.ty.0),
        _reserved: 0,
    });
    let count = match build_memory_map(entries, out) {
        Ok(count) => count,
        Err(full) => {
            say!(
                "error: the final memory map has more than {} entries: this is a loader bug, please report it; resetting",
                full.capacity
            );
            runtime::reset(ResetType::COLD, Status::BUFFER_TOO_SMALL, None)
        }
    };
    // The map's buffer is LOADER_DATA and boot services cannot free it any more.
    core::mem::forget(map);
    // SAFETY: written by `prepare` at the start of our allocation.
    let boot_info = unsafe { &mut *(h.boot_info as *mut BootInfo) };
    boot_info.memory_map = h.regions;
    boot_info.memory_map_len = count as u64;
    say!("memory map: {count} regions; jumping");
    crate::console::drain();

    // SAFETY: the tables at `cr3` identity-map the loader (still executable), its stack and the
    // boot info, and map the kernel at its link address. EFER.NXE must be on before any XD bit is
    // used (SDM Vol. 3A 4.1.1); CR0.WP makes read-only kernel pages read-only in ring 0 too (4.6.1).
    unsafe {
        if h.use_nx {
            Efer::update(|f| f.insert(EferFlags::NO_EXECUTE_ENABLE));
        }
        // Entered as if by `call`: rsp = 16-byte aligned - 8, holding a null return address.
        core::arch::asm!(
            "mov cr3, {cr3}",
            "mov {tmp}, cr0",
            "bts {tmp}, 16",
            "mov cr0, {tmp}",
            "mov rsp, {stack}",
            "xor ebp, ebp",
            "push 0",
            "jmp {entry}",
            cr3 = in(reg) h.cr3,
            stack = in(reg) h.stack_top,
            entry = in(reg) h.entry,
            // Scratch: an input is fine to clobber, the block never returns.
            tmp = in(reg) 0u64,
            in("rdi") h.boot_info,
            options(noreturn)
        )
    }
}

/// After a panic: back to the firmware while it is still there, else reset.
pub fn abort_after_panic() -> ! {
    if crate::console::exited() {
        runtime::reset(ResetType::COLD, Status::ABORTED, None)
    }
    boot::stall(loader::ERROR_PAUSE);
    // SAFETY: boot services are active; Exit() unwinds this image back to the firmware.
    let _ = unsafe {
        boot::exit(
            boot::image_handle(),
            Status::ABORTED,
            0,
            core::ptr::null_mut(),
        )
    };
    runtime::reset(ResetType::COLD, Status::ABORTED, None)
}
