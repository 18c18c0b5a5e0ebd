//! Building guests against fake frames, fake RAM, a fake PCI bus and a fake VMCS.

use super::*;
use crate::caps::vmx::VmxMsrs;
use crate::config::Config;
use crate::memory::test_frames::TestFrames;
use crate::pci::fake::{FakeConfigSpace, FakeFunction};
use crate::pci::{Bdf, Mechanism};
use crate::vmm::controls;
use crate::vmm::guest_layout::tests::tiny_elf;
use crate::vmm::linux_boot::tests::bzimage;
use crate::vmm::vcpu::{APIC_BASE_EXTD, APIC_BASE_RESET};
use crate::vmx::ept::MemType;
use crate::vmx::vmcs::FakeVmcs;
use crate::vmx::vmcs_fields::{Vmcs16, Vmcs32, Vmcs64, VmcsNatural};
use alloc::collections::BTreeMap;
use alloc::vec;
use core::cell::Cell;

/// Where the fake machine's guest RAM block is (2 GiB: above every fake frame, 2 MiB-aligned).
const RAM_BASE: u64 = 0x8000_0000;
const IMAGE_ENTRY: u64 = 0xffff_ffff_8000_0000;

/// Frames from [`TestFrames`], one RAM block in a `Vec`.
#[derive(Default)]
struct TestMachine {
    frames: TestFrames,
    ram: Vec<u8>,
    /// The machine has no contiguous memory for RAM.
    no_ram: bool,
}

impl FrameAlloc for TestMachine {
    fn alloc_zeroed(&mut self) -> Option<u64> {
        self.frames.alloc_zeroed()
    }
    fn table_mut(&mut self, phys: u64) -> &mut [u64; 512] {
        self.frames.table_mut(phys)
    }
}

impl GuestFrames for TestMachine {
    fn alloc_ram(&mut self, len: u64) -> Option<u64> {
        if self.no_ram {
            return None;
        }
        self.ram = vec![0; len as usize];
        Some(RAM_BASE)
    }
    fn ram(&mut self, base: u64, len: u64) -> &mut [u8] {
        assert_eq!((base, len), (RAM_BASE, self.ram.len() as u64));
        &mut self.ram
    }
}

/// Bochs `tigerlake` (as `controls` tests it).
fn caps() -> VmxCaps {
    VmxCaps::decode(Some(&VmxMsrs {
        basic: 0x01D8_1000_0000_0004,
        pinbased_true: (0x7F << 32) | 0x16,
        procbased_true: (0xFFF9_FFFE << 32) | 0x0401_E172,
        exit_true: (0x03FF_FFFF << 32) | 0x0003_6DFB,
        entry_true: (0x0000_F3FF << 32) | 0x0000_11FB,
        procbased2: 0x0297_7FFF << 32,
        ept_vpid_cap: 0x0000_0F01_06B3_4141,
        misc: 0x6004_01E0,
        cr0_fixed0: 0x8000_0021,
        cr0_fixed1: 0xFFFF_FFFF,
        cr4_fixed0: 0x2000,
        cr4_fixed1: 0x003F_FFFF,
        vmfunc: 1,
        feature_control: 5,
    }))
}

const IRQ: HostIrq = HostIrq {
    apic_id: 0,
    ioapic_id: 1,
    ioapic_base: 0xFEC0_0000,
};

fn guest(text: &str) -> GuestConfig {
    let (config, problems) = Config::parse(&format!("[guest g]\n{text}"));
    assert!(problems.is_empty(), "{problems:?}");
    config.guests.into_iter().next().unwrap()
}

/// The boot volume's files.
fn files() -> BTreeMap<&'static str, Vec<u8>> {
    let mut files = BTreeMap::new();
    files.insert(
        "guests/basic.elf",
        tiny_elf(IMAGE_ENTRY, &[0xF4; 16], 0x1000),
    );
    files.insert("linux/bzImage", bzimage(4 << 20, &[0x90; 0x400]));
    files
}

fn context<'a>(config: &GuestConfig, caps: &'a VmxCaps) -> BuildContext<'a> {
    BuildContext {
        caps,
        controls: controls::plan(caps, config.interrupts).unwrap(),
        irq: Some(IRQ),
        pci: None,
        intx: &[],
        untranslated_dma: false,
        tsc_per_ms: 1000,
    }
}

fn build_with(
    config: &GuestConfig,
    ctx: &BuildContext<'_>,
    machine: &mut TestMachine,
) -> Result<BuiltGuest, String> {
    let files = files();
    build(
        config,
        ctx,
        machine,
        |path| files.get(path).map(Vec::as_slice),
        |_| {},
    )
}

/// The byte of an I/O bitmap frame for `port` (bitmap A: 0-0x7FFF, B: the rest; SDM 25.6.4).
fn io_intercepted(machine: &mut TestMachine, bitmaps: [u64; 2], port: u16) -> bool {
    let table = machine.frames.table(bitmaps[usize::from(port >> 15)]);
    let bit = usize::from(port & 0x7FFF);
    (table[bit / 64] >> (bit % 64)) & 1 != 0
}

#[test]
fn a_test_guest_gets_linear_ram_mapped_in_ept_and_its_ports_only() {
    let config = guest("image = guests/basic.elf\nports = 0x2f8-0x2ff\ntimeout_ms = 50\n");
    let caps = caps();
    let ctx = context(&config, &caps);
    let mut machine = TestMachine::default();
    let built = build_with(&config, &ctx, &mut machine).unwrap();
    let vm = &built.vm;
    assert_eq!(
        vm.ram,
        GuestRam {
            host_base: RAM_BASE,
            len: 32 << 20,
            layout: RamLayout::LINEAR
        }
    );
    for gpa in [0, 0x20_0000, (32 << 20) - 1] {
        let t = vm.ept.translate(&mut machine.frames, gpa).unwrap();
        assert_eq!(t.hpa, RAM_BASE + gpa);
        assert_eq!(t.perms, EptPerms::RWX);
    }
    assert!(vm.ept.translate(&mut machine.frames, 32 << 20).is_none());
    assert!(!io_intercepted(&mut machine, vm.io_bitmaps, 0x2f8));
    assert!(io_intercepted(&mut machine, vm.io_bitmaps, 0x3f8));
    assert!(io_intercepted(&mut machine, vm.io_bitmaps, 0xCF8));
    assert!(!vm.has_ioapic && !vm.has_pci_bus && vm.platform.is_none());
    assert_eq!(vm.timeout_tsc, Some(50_000));
    assert!(vm.pci.is_empty());
    let vcpu = &built.vcpu;
    assert_eq!(built.start.rip, IMAGE_ENTRY);
    assert_eq!(vcpu.regs.rdi, built.start.rdi);
    assert_eq!(vcpu.apic_base, APIC_BASE_RESET);
    assert_eq!(vcpu.cr0_fixed, (0x8000_0021, 0xFFFF_FFFF));
    assert_eq!(vcpu.preemption_written, u32::MAX);
    assert_ne!(vcpu.vmcs_frame, 0);
    assert_eq!(built.tables.msr_bitmap, vcpu.msr_bitmap);
    assert_eq!(built.booted, "image guests/basic.elf");
    // The image is in RAM where its boot layout put it.
    assert_eq!(
        machine.ram.len(),
        32 << 20,
        "the whole block was handed to the loader"
    );
    assert!(machine.ram.contains(&0xF4));
}

#[test]
fn the_vmcs_gets_the_tables_the_start_and_the_vpid() {
    let config = guest("image = guests/basic.elf\n");
    let caps = caps();
    let ctx = context(&config, &caps);
    let built = build_with(&config, &ctx, &mut TestMachine::default()).unwrap();
    let mut vmcs = FakeVmcs::new();
    let host = HostState {
        cr0: 0x8005_0033,
        cr3: 0x1000,
        cr4: 0x2020,
        code_selector: 8,
        data_selector: 16,
        tr_selector: 24,
        fs_base: 0,
        gs_base: 0,
        tr_base: 0,
        gdtr_base: 0,
        idtr_base: 0,
        efer: 0xD00,
        rip: 0xffff_ffff_8000_1234,
    };
    write_vmcs(&mut vmcs, &built, &ctx, &host, 7).unwrap();
    assert_eq!(vmcs.get(VmcsNatural::GuestRip as u32), Some(IMAGE_ENTRY));
    assert_eq!(vmcs.get(Vmcs64::EptPointer as u32), Some(built.tables.eptp));
    assert_eq!(
        vmcs.get(Vmcs64::MsrBitmaps as u32),
        Some(built.vcpu.msr_bitmap)
    );
    assert_eq!(
        vmcs.get(Vmcs64::IoBitmapA as u32),
        Some(built.vm.io_bitmaps[0])
    );
    assert_eq!(vmcs.get(Vmcs16::Vpid as u32), Some(7));
    assert_eq!(
        vmcs.get(Vmcs32::ExceptionBitmap as u32),
        Some(u64::from(events::EXCEPTION_BITMAP))
    );
}

#[test]
fn a_linux_guest_gets_x2apic_mode_an_ioapic_a_host_bridge_and_its_platform() {
    let config = guest("linux = linux/bzImage\ncmdline = console=ttyS0\nmemory_mib = 64\n");
    let caps = caps();
    let ctx = context(&config, &caps);
    let mut machine = TestMachine::default();
    let built = build_with(&config, &ctx, &mut machine).unwrap();
    let vm = &built.vm;
    assert_eq!(
        vm.ram.layout,
        RamLayout::LINEAR,
        "no device: linear up to 3 GiB"
    );
    assert!(vm.has_ioapic && vm.has_pci_bus);
    let platform = vm.platform.as_ref().unwrap();
    assert_eq!(platform.apic_ids, vec![0]);
    assert!(platform.com1 && platform.pci_memory_windows.is_empty());
    assert_eq!(built.vcpu.apic_base, APIC_BASE_RESET | APIC_BASE_EXTD);
    assert!(built.booted.starts_with("linux linux/bzImage (bzImage at "));
    assert_eq!(built.vcpu.regs.rsi, built.start.rsi, "the zero page");
}

/// QEMU's e1000e at 00:02.0 (BAR0 128 KiB, MSI-X table in BAR3 + 0, PBA at BAR3 + 0x2000,
/// INTA# on pin 11), as `exits` tests it.
fn nic_topology() -> PciTopology {
    let space = FakeConfigSpace::new(Mechanism::Legacy);
    let mut nic = FakeFunction::new(0x8086, 0x10d3, 0x020000, 0);
    let memory = BarKind::Memory32 {
        prefetchable: false,
    };
    nic.bar(0, memory, 0xfeb8_0000, 0x2_0000);
    nic.bar(3, memory, 0xfebd_0000, 0x4000);
    nic.capability(0xA0, 0x11, &[0x04, 0x00, 0x03, 0, 0, 0, 0x03, 0x20, 0, 0]);
    space.add(0, 2, 0, nic);
    crate::pci::enumerate(&space)
}

#[test]
fn an_assigned_device_is_reset_mapped_uncached_except_msix_and_shown_to_linux() {
    let config = guest("linux = linux/bzImage\nmemory_mib = 64\npci = 00:02.0\n");
    let caps = caps();
    let topology = nic_topology();
    let bdf = Bdf::new(0, 0, 2, 0).unwrap();
    let intx = [IntxLine {
        bdf,
        pin: 1,
        gsi: 11,
    }];
    let ctx = BuildContext {
        pci: Some(&topology),
        intx: &intx,
        // No IOMMU: the device DMAs to host-physical addresses.
        untranslated_dma: true,
        ..context(&config, &caps)
    };
    let mut machine = TestMachine::default();
    let resets = Cell::new(0);
    let files = files();
    let built = build(
        &config,
        &ctx,
        &mut machine,
        |path| files.get(path).map(Vec::as_slice),
        |f| {
            assert_eq!(f.bdf, bdf);
            resets.set(resets.get() + 1);
        },
    )
    .unwrap();
    assert_eq!(resets.get(), 1);
    let vm = &built.vm;
    assert_eq!(vm.ram.layout, RamLayout::identity(RAM_BASE));
    assert!(built
        .booted
        .ends_with(", RAM at its host address: its devices DMA without an IOMMU)"));
    // BAR0 1:1 and uncached; BAR3's table and PBA pages stay out of EPT, the page between is mapped.
    let bar0 = vm.ept.translate(&mut machine.frames, 0xfeb8_1000).unwrap();
    assert_eq!(
        (bar0.hpa, bar0.mem_type),
        (0xfeb8_1000, Some(MemType::Uncacheable))
    );
    assert!(vm.ept.translate(&mut machine.frames, 0xfebd_0000).is_none());
    assert!(vm.ept.translate(&mut machine.frames, 0xfebd_1000).is_some());
    assert!(vm.ept.translate(&mut machine.frames, 0xfebd_2000).is_none());
    assert!(vm.pci.msix_traps(0xfebd_0010));
    // The guest's RAM from 2 MiB is at its host address.
    let high = vm
        .ept
        .translate(&mut machine.frames, RAM_BASE + (2 << 20))
        .unwrap();
    assert_eq!(high.hpa, RAM_BASE + (2 << 20));
    let platform = vm.platform.as_ref().unwrap();
    assert_eq!(platform.pci_memory_windows.len(), 2);
    assert_eq!(platform.pci_interrupts[0].gsi, 11);
    assert!(vm.interrupts.ioapic.assigned().contains(11));
}

#[test]
fn a_bar_below_3_gib_pulls_the_mmio_hole_below_it() {
    let config = guest("linux = linux/bzImage\nmemory_mib = 64\npci = 00:02.0, 00:03.0\n");
    let high = guest_platform(&config, Some(&nic_topology()), &[]);
    assert_eq!(mmio_hole_start(&high), guest_memory::DEFAULT_HOLE_START);
    let space = FakeConfigSpace::new(Mechanism::Legacy);
    let mut low = FakeFunction::new(0x1234, 0x11e8, 0x00ff00, 0);
    let memory = BarKind::Memory32 {
        prefetchable: false,
    };
    low.bar(0, memory, 0xa010_0000, 0x10_0000);
    space.add(0, 3, 0, low);
    let platform = guest_platform(&config, Some(&crate::pci::enumerate(&space)), &[]);
    assert_eq!(platform.pci_memory_windows[0].base, 0xa010_0000);
    assert_eq!(
        mmio_hole_start(&platform),
        0xa000_0000,
        "2 MiB below the BAR"
    );
}

fn refusal(config: &GuestConfig, ctx: &BuildContext<'_>, machine: &mut TestMachine) -> String {
    match build_with(config, ctx, machine) {
        Ok(_) => panic!("built"),
        Err(why) => why,
    }
}

#[test]
fn guests_that_cannot_be_built_are_refused_with_the_reason() {
    let caps = caps();
    let mut machine = TestMachine::default();
    let missing = guest("image = guests/missing.elf\n");
    assert_eq!(
        refusal(&missing, &context(&missing, &caps), &mut machine),
        "image `guests/missing.elf` is not on the boot volume under \\exitless\\"
    );
    let eli = guest("image = guests/basic.elf\ninterrupts = eli\n");
    let no_x2apic = BuildContext {
        irq: None,
        ..context(&eli, &caps)
    };
    assert!(refusal(&eli, &no_x2apic, &mut machine).contains("need an x2APIC"));
    let pins = guest("image = guests/basic.elf\nioapic_pins = 5\n");
    let no_ioapic = BuildContext {
        irq: Some(HostIrq {
            ioapic_base: 0,
            ..IRQ
        }),
        ..context(&pins, &caps)
    };
    assert!(refusal(&pins, &no_ioapic, &mut machine).contains("no IOAPIC was found"));
    let absent = guest("image = guests/basic.elf\npci = 00:07.0\n");
    let topology = nic_topology();
    let ctx = BuildContext {
        pci: Some(&topology),
        ..context(&absent, &caps)
    };
    assert_eq!(
        refusal(&absent, &ctx, &mut machine),
        "PCI device 00:07.0 does not exist"
    );
    let no_pci = context(&absent, &caps);
    assert!(refusal(&absent, &no_pci, &mut machine).contains("PCI was not set up"));
    let basic = guest("image = guests/basic.elf\n");
    let mut full = TestMachine {
        no_ram: true,
        ..TestMachine::default()
    };
    assert_eq!(
        refusal(&basic, &context(&basic, &caps), &mut full),
        "no 32 MiB of contiguous free memory for its RAM"
    );
    let mut no_timer = context(&basic, &caps);
    no_timer.controls.pin -= PinBasedControls::ACTIVATE_VMX_PREEMPTION_TIMER;
    assert_eq!(
        refusal(&basic, &no_timer, &mut machine),
        "the VMX-preemption timer is not in use"
    );
}

#[test]
fn a_linux_kernel_that_does_not_fit_is_refused_before_ram_is_taken() {
    let config = guest("linux = linux/bzImage\nmemory_mib = 4\n");
    let caps = caps();
    let mut machine = TestMachine {
        no_ram: true,
        ..TestMachine::default()
    };
    let why = refusal(&config, &context(&config, &caps), &mut machine);
    assert!(why.starts_with("linux/bzImage: "), "{why}");
}
