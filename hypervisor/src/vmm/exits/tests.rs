//! Exit handling driven through a fake VMCS, as the CPU would leave it after each exit.

use super::*;
use crate::vmm::msi_request::MsiRequest;
use crate::vmm::virtual_pci::VirtualPci;
use crate::vmx::vmcs::FakeVmcs;
use crate::vmx::vmcs_fields::Vmcs32Ro;
use alloc::vec;
use alloc::vec::Vec;

#[derive(Default)]
struct FakeHost {
    lines: Vec<String>,
    pci: Option<crate::pci::fake::FakeConfigSpace>,
    /// MSI requests handed to the host, and the vector it reports routed for each.
    msi_requests: Vec<MsiRequest>,
    msix_requests: Vec<crate::vmm::msix::MsixRequest>,
    /// Forwarded device accesses: (host-physical address, size, value written).
    device_mmio: Vec<(u64, u8, Option<u64>)>,
    /// The guest's DR6 as the CPU holds it between exit and entry.
    dr6: u64,
    /// XCR0 values loaded for the guest.
    xcr0: Vec<u64>,
    /// The physical TPR as the guest left it (CR8 / TPR MSR, both without exits).
    tpr: u8,
}

impl crate::vmm::interrupts::InterruptHardware for FakeHost {
    fn eoi(&mut self) {}
    fn route_pin(&mut self, _: crate::virq::ioapic::PhysicalRouting) {}
    fn host_timer_tick(&mut self) {}
    fn dma_fault_event(&mut self) {}
    fn intercept_eoi(&mut self, _: bool) {}
}

impl HostServices for FakeHost {
    fn host_timer_ticks(&self) -> u64 {
        42
    }
    fn next_host_deadline(&self) -> u64 {
        self.rdtsc() + 5_000_000
    }
    fn guest_tpr(&self) -> u8 {
        self.tpr
    }
    fn pci_config(&self) -> Option<&dyn crate::pci::ConfigAccess> {
        self.pci
            .as_ref()
            .map(|p| p as &dyn crate::pci::ConfigAccess)
    }
    fn route_guest_msi(&mut self, req: MsiRequest) -> Option<u8> {
        self.msi_requests.push(req);
        req.enabled.then_some(req.vector)
    }
    fn route_guest_msix(&mut self, req: crate::vmm::msix::MsixRequest) -> Option<u8> {
        self.msix_requests.push(req);
        req.live().then_some(req.vector)
    }
    fn device_mmio(&mut self, hpa: u64, size: u8, write: Option<u64>) -> u64 {
        self.device_mmio.push((hpa, size, write));
        0x1234
    }
    fn console_line(&mut self, line: &str) {
        self.lines.push(String::from(line));
    }
    /// Bochs `tigerlake` where it matters (shared/emulators.md; leaf 1 ECX with OSXSAVE set, as
    /// the host sets CR4.OSXSAVE): NX, 48-bit linear addresses, x87/SSE/AVX/AVX-512 XSAVE state,
    /// PKU with a PKRU state of size 0 (so the guest gets neither).
    fn cpuid(&self, leaf: u32, subleaf: u32) -> [u32; 4] {
        match (leaf, subleaf) {
            (0, _) => [0x16, 0, 0, 0],
            (1, _) => [0x806C1, 0, 0x77FA_F3BF | 1 << 27, 0xBFEB_FBFF],
            (7, 0) => [0, 0x0000_0081, 0x0001_000C, 0],
            (0xD, 0) => [0x2E7, 0x340, 0xA88, 0],
            (0xD, 2) => [256, 576, 0, 0],
            (0xD, 5) => [64, 1088, 0, 0],
            (0xD, 6) => [512, 1152, 0, 0],
            (0xD, 7) => [1024, 1664, 0, 0],
            (0x8000_0000, _) => [0x8000_0008, 0, 0, 0],
            (0x8000_0001, _) => [0, 0, 1, 1 << 20 | 1 << 29],
            (0x8000_0008, _) => [0x3027, 0, 0, 0],
            _ => [0; 4],
        }
    }
    fn cpuid_context(&self) -> crate::vmm::cpuid::CpuidContext {
        crate::vmm::cpuid::CpuidContext::new(|l, s| self.cpuid(l, s), 50_000_000, 0, 1)
    }
    fn read_dr6(&self) -> u64 {
        self.dr6
    }
    fn write_dr6(&mut self, value: u64) {
        self.dr6 = value;
    }
    fn xsetbv(&mut self, xcr0: u64) {
        self.xcr0.push(xcr0);
    }
    fn rdtsc(&self) -> u64 {
        0x1234_5678_9ABC
    }
}

const RIP: u64 = 0xffff_ffff_8000_1000;

/// A VMCS after an exit with `reason`, `qualification` and an instruction of `len` bytes at RIP.
fn exited(reason: u32, qualification: u64, len: u32) -> FakeVmcs {
    let mut vmcs = FakeVmcs::new();
    vmcs.set(Vmcs32Ro::ExitReason as u32, reason.into());
    vmcs.set(VmcsNaturalRo::ExitQualification as u32, qualification);
    vmcs.set(Vmcs32Ro::ExitInstructionLength as u32, len.into());
    vmcs.set(VmcsNatural::GuestRip as u32, RIP);
    vmcs.set(VmcsNatural::GuestRsp as u32, 0x8000);
    vmcs.set(VmcsNatural::GuestRflags as u32, 2);
    vmcs.set(Vmcs32::GuestInterruptibilityState as u32, 0);
    vmcs.set(Vmcs64::GuestIa32Efer as u32, 0xD00);
    vmcs.set(VmcsNatural::GuestCr3 as u32, 0x1000);
    vmcs
}

/// 2 MiB of guest RAM whose page tables (at 0x1000) identity-map the first GiB with one 1 GiB page.
fn ram() -> Vec<u8> {
    let mut ram = vec![0u8; 2 << 20];
    ram[0x1000..0x1008].copy_from_slice(&(0x2000u64 | 3).to_le_bytes());
    ram[0x2000..0x2008].copy_from_slice(&0x83u64.to_le_bytes());
    ram
}

/// A vCPU and its VM, as one test guest; it reads as its vCPU.
struct TestGuest {
    cpu: Vcpu,
    vm: crate::vmm::vm::Vm,
}

impl Default for TestGuest {
    fn default() -> Self {
        Self {
            cpu: Vcpu::default(),
            vm: crate::vmm::vm::Vm::for_tests(),
        }
    }
}

impl core::ops::Deref for TestGuest {
    type Target = Vcpu;
    fn deref(&self) -> &Vcpu {
        &self.cpu
    }
}

impl core::ops::DerefMut for TestGuest {
    fn deref_mut(&mut self) -> &mut Vcpu {
        &mut self.cpu
    }
}

impl TestGuest {
    /// A guest write of an x2APIC register that exited.
    fn apic_write(
        &mut self,
        msr: u32,
        value: u64,
        now: u64,
        host: &mut FakeHost,
    ) -> Result<(), crate::vmm::interrupts::GuestFault> {
        self.cpu
            .interrupts
            .write_msr(msr, value, now, &mut self.vm.interrupts, host)
    }
    /// A guest access to the IOAPIC window.
    fn ioapic_access(&mut self, offset: u64, size: u8, write: Option<u32>, host: &mut FakeHost) {
        self.vm
            .interrupts
            .ioapic_access(offset, size, write, &mut self.cpu.interrupts, host);
    }
}

fn run(vmcs: &mut FakeVmcs, g: &mut TestGuest, ram: &mut [u8], host: &mut FakeHost) -> Next {
    handle_exit(
        vmcs,
        &mut g.cpu,
        &mut g.vm,
        &mut GuestMemory::new(ram),
        host,
    )
}

fn rip(vmcs: &FakeVmcs) -> u64 {
    vmcs.get(VmcsNatural::GuestRip as u32).unwrap()
}

fn injected_gp(vmcs: &FakeVmcs) -> bool {
    // Valid (31), hardware exception (type 3), error code (11), vector 13: SDM 25.8.3.
    vmcs.get(Vmcs32::EntryInterruptionInfo as u32) == Some(0x8000_0B0D)
}

#[test]
fn cpuid_hides_vmx_and_skips_the_instruction() {
    let (mut vmcs, mut vcpu, mut ram, mut host) = (
        exited(10, 0, 2),
        TestGuest::default(),
        ram(),
        FakeHost::default(),
    );
    vcpu.regs.rax = 1;
    assert_eq!(run(&mut vmcs, &mut vcpu, &mut ram, &mut host), Next::Resume);
    assert_eq!(vcpu.regs.rcx & (1 << 5), 0);
    assert_ne!(vcpu.regs.rcx & (1 << 31), 0);
    assert_eq!(rip(&vmcs), RIP + 2);
    assert_eq!(vcpu.counters.0[10], 1);
}

#[test]
fn unknown_msrs_and_icr_writes_get_gp_without_skipping() {
    let (mut vmcs, mut vcpu, mut ram, mut host) = (
        exited(31, 0, 2),
        TestGuest::default(),
        ram(),
        FakeHost::default(),
    );
    vcpu.regs.rcx = 0x1FF0;
    assert_eq!(run(&mut vmcs, &mut vcpu, &mut ram, &mut host), Next::Resume);
    assert!(injected_gp(&vmcs));
    assert_eq!(rip(&vmcs), RIP, "a faulting instruction is not skipped");

    let mut vmcs = exited(32, 0, 2);
    vcpu.regs.rcx = 0x830;
    vcpu.regs.rax = 0xC4500; // INIT to all excluding self
    run(&mut vmcs, &mut vcpu, &mut ram, &mut host);
    assert!(injected_gp(&vmcs));
}

#[test]
fn known_msrs_read_and_write() {
    let (mut vmcs, mut vcpu, mut ram, mut host) = (
        exited(31, 0, 2),
        TestGuest::default(),
        ram(),
        FakeHost::default(),
    );
    vcpu.regs.rcx = 0x10;
    run(&mut vmcs, &mut vcpu, &mut ram, &mut host);
    assert_eq!((vcpu.regs.rdx, vcpu.regs.rax), (0x1234, 0x5678_9ABC));
    let mut vmcs = exited(32, 0, 2);
    vcpu.regs.rcx = 0xC000_0080;
    vcpu.regs.rax = 0x501; // SCE on, LME kept
    vcpu.regs.rdx = 0;
    run(&mut vmcs, &mut vcpu, &mut ram, &mut host);
    assert_eq!(
        vmcs.get(Vmcs64::GuestIa32Efer as u32),
        Some(0x501 | 0x400),
        "LMA stays the CPU's"
    );
    let mut vmcs = exited(32, 0, 2);
    vcpu.regs.rax = 0x001; // clearing LME
    run(&mut vmcs, &mut vcpu, &mut ram, &mut host);
    assert!(injected_gp(&vmcs));
}

#[test]
fn unassigned_ports_float_high_and_com1_lines_are_forwarded() {
    // IN AL, DX from port 0x2E0: size 1 (0), direction in (bit 3), port in bits 31:16.
    let (mut vmcs, mut vcpu, mut ram, mut host) = (
        exited(30, (0x2E0 << 16) | 8, 1),
        TestGuest::default(),
        ram(),
        FakeHost::default(),
    );
    vcpu.regs.rax = 0xAABB_CC00;
    run(&mut vmcs, &mut vcpu, &mut ram, &mut host);
    assert_eq!(vcpu.regs.rax, 0xAABB_CCFF);
    for byte in b"hi\r\n" {
        let mut vmcs = exited(30, u64::from(COM1) << 16, 1);
        vcpu.regs.rax = u64::from(*byte);
        run(&mut vmcs, &mut vcpu, &mut ram, &mut host);
    }
    assert_eq!(host.lines, ["hi"]);
    // LSR reads "transmitter empty" so the guest's UART driver never waits.
    let mut vmcs = exited(30, (u64::from(COM1 + 5) << 16) | 8, 1);
    run(&mut vmcs, &mut vcpu, &mut ram, &mut host);
    assert_eq!(vcpu.regs.rax & 0xFF, 0x60);
    assert_eq!(vcpu.counters.0[30], 6);
}

#[test]
fn guest_msi_programming_reaches_the_host_and_the_device_vectors() {
    use crate::pci::fake::{FakeConfigSpace, FakeFunction};
    use crate::pci::mediation::MediationTable;
    use crate::vmm::virtual_pci::AssignedFunction;
    let space = FakeConfigSpace::new(crate::pci::Mechanism::Legacy);
    // QEMU's edu at 00:03.0: MSI capability at 0x40, 64-bit, one vector.
    let mut edu = FakeFunction::new(0x1234, 0x11e8, 0x00ff00, 0);
    edu.capability(0x40, 0x05, &[0x80, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    space.add(0, 3, 0, edu);
    let topology = crate::pci::enumerate(&space);
    let f = topology.functions[0].clone();
    let msi = f.capabilities.msi.unwrap();
    let function = AssignedFunction::new(f.bdf, MediationTable::endpoint(&f).unwrap(), f.bars)
        .with_msi(msi.offset, msi.is_64bit, false);
    let mut vcpu = TestGuest::default();
    vcpu.vm.pci = VirtualPci::new(vec![function]);
    let (mut ram, mut host) = (
        ram(),
        FakeHost {
            pci: Some(space),
            ..FakeHost::default()
        },
    );
    // OUT DX, EAX (size 4 = encoding 3) and OUT DX, AX (1) as the guest's driver issues them.
    let mut out = |vcpu: &mut TestGuest, host: &mut FakeHost, port: u16, size: u64, value: u32| {
        let mut vmcs = exited(30, u64::from(port) << 16 | (size - 1), 1);
        vcpu.regs.rax = u64::from(value);
        run(&mut vmcs, vcpu, &mut ram, host);
        assert_eq!(rip(&vmcs), RIP + 1);
    };
    let select = |offset: u32| 0x8000_0000 | 3 << 11 | offset;
    out(&mut vcpu, &mut host, CONFIG_ADDRESS, 4, select(0x4C));
    out(&mut vcpu, &mut host, CONFIG_DATA, 2, 0x41);
    out(&mut vcpu, &mut host, CONFIG_ADDRESS, 4, select(0x40));
    out(&mut vcpu, &mut host, CONFIG_DATA + 2, 2, 0x0081);
    let last = *host.msi_requests.last().unwrap();
    assert_eq!((last.enabled, last.vector), (true, 0x41));
    assert!(vcpu.vm.interrupts.device_vectors.contains(0x41));
    out(&mut vcpu, &mut host, CONFIG_DATA + 2, 2, 0x0080);
    assert!(!host.msi_requests.last().unwrap().enabled);
    assert!(vcpu.vm.interrupts.device_vectors.is_empty());
}

#[test]
fn guest_msix_table_writes_are_trapped_emulated_and_routed() {
    use crate::pci::fake::{FakeConfigSpace, FakeFunction};
    use crate::pci::BarKind;
    let space = FakeConfigSpace::new(crate::pci::Mechanism::Legacy);
    // QEMU's e1000e at 00:02.0: MSI-X at 0xA0, 5 entries, table BAR3 + 0, PBA BAR3 + 0x2000.
    let mut nic = FakeFunction::new(0x8086, 0x10d3, 0x020000, 0);
    nic.bar(
        3,
        BarKind::Memory32 {
            prefetchable: false,
        },
        0xfebd_0000,
        0x4000,
    );
    nic.capability(0xA0, 0x11, &[0x04, 0x00, 0x03, 0, 0, 0, 0x03, 0x20, 0, 0]);
    nic.set_writable(0xA0, 4, 0xC000 << 16);
    space.add(0, 2, 0, nic);
    let topology = crate::pci::enumerate(&space);
    let function = crate::vmm::runner::assigned_function(&topology.functions[0]).unwrap();
    let mut vcpu = TestGuest::default();
    vcpu.vm.pci = VirtualPci::new(vec![function]);
    let (mut ram, mut host) = (
        ram(),
        FakeHost {
            pci: Some(space),
            ..FakeHost::default()
        },
    );
    // The guest enables MSI-X: OUT to CONFIG_DATA + 2 (Message Control), all entries still masked.
    for (port, size, value) in [
        (CONFIG_ADDRESS, 4, 0x8000_0000u32 | 2 << 11 | 0xA0),
        (CONFIG_DATA + 2, 2, 0x8000),
    ] {
        let mut vmcs = exited(30, u64::from(port) << 16 | (size - 1), 1);
        vcpu.regs.rax = u64::from(value);
        run(&mut vmcs, &mut vcpu, &mut ram, &mut host);
    }
    assert!(host.msix_requests.is_empty());
    let hw = host.pci.as_ref().unwrap().get(topology.functions[0].bdf);
    assert_eq!(
        hw.get16(0xA2),
        0x0004,
        "the hardware's enable is the host's"
    );
    // MOV [RAX], ECX (89 08) and MOV EDX, [RAX] (8B 10) at guest 0x3000, as EPT violations.
    ram[0x3000..0x3004].copy_from_slice(&[0x89, 0x08, 0x8B, 0x10]);
    let mut mmio = |vcpu: &mut TestGuest, host: &mut FakeHost, gpa: u64, write: Option<u32>| {
        let mut vmcs = exited(48, if write.is_some() { 0x2 } else { 0x1 }, 0);
        let at = if write.is_some() { 0x3000 } else { 0x3002 };
        vmcs.set(VmcsNatural::GuestRip as u32, at);
        vmcs.set(Vmcs64Ro::GuestPhysicalAddress as u32, gpa);
        vcpu.regs.rax = gpa;
        vcpu.regs.rcx = u64::from(write.unwrap_or(0));
        assert_eq!(run(&mut vmcs, vcpu, &mut ram, host), Next::Resume);
        assert_eq!(rip(&vmcs), at + 2);
        vcpu.regs.rdx
    };
    mmio(&mut vcpu, &mut host, 0xfebd_0000, Some(0xFEE0_0000));
    mmio(&mut vcpu, &mut host, 0xfebd_0008, Some(0x51));
    assert!(host.msix_requests.is_empty(), "entry 0 still masked");
    mmio(&mut vcpu, &mut host, 0xfebd_000c, Some(0));
    let req = *host.msix_requests.last().unwrap();
    assert_eq!((req.entry, req.vector, req.live()), (0, 0x51, true));
    assert!(vcpu.vm.interrupts.device_vectors.contains(0x51));
    assert_eq!(mmio(&mut vcpu, &mut host, 0xfebd_0008, None), 0x51);
    // Past the table and in the PBA: the device's.
    mmio(&mut vcpu, &mut host, 0xfebd_0050, Some(7));
    assert_eq!(mmio(&mut vcpu, &mut host, 0xfebd_2000, None), 0x1234);
    assert_eq!(
        host.device_mmio,
        [(0xfebd_0050, 4, Some(7)), (0xfebd_2000, 4, None)]
    );
    // Disabling MSI-X in config space turns entry 0 off.
    let mut vmcs = exited(30, u64::from(CONFIG_DATA + 2) << 16 | 1, 1);
    vcpu.regs.rax = 0;
    run(&mut vmcs, &mut vcpu, &mut ram, &mut host);
    assert!(!host.msix_requests.last().unwrap().enabled);
    assert!(vcpu.vm.interrupts.device_vectors.is_empty());
}

#[test]
fn hypercalls_report_counters_and_power_off() {
    let (mut vmcs, mut vcpu, mut ram, mut host) = (
        exited(18, 0, 3),
        TestGuest::default(),
        ram(),
        FakeHost::default(),
    );
    vcpu.counters.0[30] = 7;
    vcpu.regs.rax = Hypercall::ReadExitCounters as u64;
    vcpu.regs.rdi = 0x10_0000;
    vcpu.regs.rsi = 1000;
    run(&mut vmcs, &mut vcpu, &mut ram, &mut host);
    assert_eq!(vcpu.regs.rax, EXIT_REASON_COUNT as u64);
    let at = |i: usize| {
        u64::from_le_bytes(
            ram[0x10_0000 + i * 8..0x10_0000 + i * 8 + 8]
                .try_into()
                .unwrap(),
        )
    };
    assert_eq!(
        (at(30), at(18)),
        (7, 1),
        "includes the VMCALL being handled"
    );
    assert_eq!(rip(&vmcs), RIP + 3);

    let mut vmcs = exited(18, 0, 3);
    vcpu.regs.rax = Hypercall::ReadExitCounters as u64;
    vcpu.regs.rdi = (2 << 20) - 8;
    run(&mut vmcs, &mut vcpu, &mut ram, &mut host);
    assert_eq!(vcpu.regs.rax, HypercallError::BadAddress as u64);

    let mut vmcs = exited(18, 0, 3);
    vcpu.regs.rax = Hypercall::PowerOff as u64;
    vcpu.regs.rdi = 4;
    assert_eq!(
        run(&mut vmcs, &mut vcpu, &mut ram, &mut host),
        Next::End(GuestEnd::PoweredOff(4))
    );
}

#[test]
fn the_preemption_timer_is_aimed_at_the_host_deadline_before_every_entry() {
    let (mut vcpu, mut host) = (TestGuest::default(), FakeHost::default());
    vcpu.preemption_shift = 5;
    vcpu.preemption_written = u32::MAX;
    let mut vmcs = exited(1, 0, 0);
    irq_exits::prepare_entry(&mut vmcs, &mut vcpu, &mut host).unwrap();
    // The fake host's deadline is 5,000,000 TSC ticks away; the timer counts every 2^5 of them.
    assert_eq!(
        vmcs.get(Vmcs32::PreemptionTimerValue as u32),
        Some(5_000_000 >> 5)
    );
    // The virtual LAPIC timer due sooner (in 3,200 TSC ticks) brings the exit forward.
    let now = host.rdtsc();
    vcpu.apic_write(0x80F, 0x1FF, now, &mut host).unwrap();
    vcpu.apic_write(0x83E, 0b1011, now, &mut host).unwrap();
    vcpu.apic_write(0x832, 0x50, now, &mut host).unwrap();
    vcpu.apic_write(0x838, 3200, now, &mut host).unwrap();
    irq_exits::prepare_entry(&mut vmcs, &mut vcpu, &mut host).unwrap();
    assert_eq!(vmcs.get(Vmcs32::PreemptionTimerValue as u32), Some(100));
}

#[test]
fn a_saved_preemption_count_is_rewritten_only_when_the_deadline_moves() {
    let (mut vcpu, mut ram, mut host) = (TestGuest::default(), ram(), FakeHost::default());
    vcpu.preemption_saved = true;
    let mut vmcs = exited(1, 0, 0);
    irq_exits::prepare_entry(&mut vmcs, &mut vcpu, &mut host).unwrap();
    assert_eq!(
        vmcs.get(Vmcs32::PreemptionTimerValue as u32),
        Some(5_000_000)
    );
    // The CPU saved what was left at the exit; the deadline has not moved: no rewrite.
    vmcs.set(Vmcs32::PreemptionTimerValue as u32, 1234);
    irq_exits::prepare_entry(&mut vmcs, &mut vcpu, &mut host).unwrap();
    assert_eq!(vmcs.get(Vmcs32::PreemptionTimerValue as u32), Some(1234));
    // A preemption-timer exit (the count ran out) aims it afresh.
    let mut vmcs = exited(52, 0, 0);
    vmcs.set(Vmcs32::PreemptionTimerValue as u32, 0);
    run(&mut vmcs, &mut vcpu, &mut ram, &mut host);
    irq_exits::prepare_entry(&mut vmcs, &mut vcpu, &mut host).unwrap();
    assert_eq!(
        vmcs.get(Vmcs32::PreemptionTimerValue as u32),
        Some(5_000_000)
    );
}

#[test]
fn virtual_interrupts_wait_for_the_tpr_the_guest_set_in_the_cpu() {
    let (mut vcpu, mut host) = (TestGuest::default(), FakeHost::default());
    let now = host.rdtsc();
    vcpu.apic_write(0x80F, 0x1FF, now, &mut host).unwrap();
    vcpu.apic_write(0x83F, 0x55, now, &mut host).unwrap(); // self-IPI
    let mut vmcs = exited(1, 0, 0);
    vmcs.set(VmcsNatural::GuestRflags as u32, 0x202);
    // CR8 = 6 (TPR 0x60), written straight into the CPU: class 5 must wait.
    host.tpr = 0x60;
    irq_exits::prepare_entry(&mut vmcs, &mut vcpu, &mut host).unwrap();
    assert_eq!(entry_event(&vmcs).0, None);
    host.tpr = 0;
    irq_exits::prepare_entry(&mut vmcs, &mut vcpu, &mut host).unwrap();
    assert_eq!(entry_event(&vmcs).0, Some(0x8000_0055));
}

/// An I/O exit for `port` (`size` bytes, OUT with `value` or IN), run; returns the result and RAX.
fn port_io(
    vcpu: &mut TestGuest,
    host: &mut FakeHost,
    port: u16,
    size: u64,
    out: Option<u32>,
) -> (Next, u64) {
    let direction_in = if out.is_some() { 0 } else { 8 };
    let mut vmcs = exited(30, u64::from(port) << 16 | direction_in | (size - 1), 1);
    vcpu.regs.rax = out.map_or(0, u64::from);
    let next = run(&mut vmcs, vcpu, &mut ram(), host);
    (next, vcpu.regs.rax)
}

#[test]
fn com1_thre_interrupt_reaches_the_guest_through_ioapic_pin_4() {
    use crate::vmm::guest_platform::COM1_GSI;
    use crate::vmm::uart16550::{reg, IER_THR_EMPTY, MCR_OUT2};
    let (mut vcpu, mut host) = (TestGuest::default(), FakeHost::default());
    let now = host.rdtsc();
    vcpu.apic_write(0x80F, 0x1FF, now, &mut host).unwrap();
    // Linux programs IRQ 4: edge, active high, vector 0x24.
    let rte = u32::from(0x10 + 2 * COM1_GSI);
    vcpu.ioapic_access(0x00, 4, Some(rte), &mut host);
    vcpu.ioapic_access(0x10, 4, Some(0x24), &mut host);
    let mut out = |vcpu: &mut TestGuest, offset: u16, value: u8| {
        let (next, _) = port_io(vcpu, &mut host, COM1 + offset, 1, Some(value.into()));
        assert_eq!(next, Next::Resume);
    };
    out(&mut vcpu, reg::MCR, MCR_OUT2);
    assert_eq!(vcpu.interrupts.pending(), None);
    out(&mut vcpu, reg::IER, IER_THR_EMPTY);
    assert_eq!(vcpu.interrupts.pending(), Some(0x24));
    // Injected only when the guest takes interrupts: IF = 0 asks for an interrupt window.
    let mut vmcs = exited(1, 0, 0);
    irq_exits::prepare_entry(&mut vmcs, &mut vcpu, &mut host).unwrap();
    assert_eq!(entry_event(&vmcs).0, None);
    assert!(vcpu.window_exiting);
    vmcs.set(VmcsNatural::GuestRflags as u32, 0x202);
    irq_exits::prepare_entry(&mut vmcs, &mut vcpu, &mut host).unwrap();
    assert_eq!(entry_event(&vmcs).0, Some(0x8000_0024));
    // The handler reads IIR (THRE, which clears it) and the line falls.
    let (_, iir) = port_io(&mut vcpu, &mut host, COM1 + reg::IIR_FCR, 1, None);
    assert_eq!(iir & 0xFF, 0x02);
    assert!(!vcpu.vm.interrupts.ioapic.line(COM1_GSI));
}

#[test]
fn legacy_ports_answer_and_acpi_ends_the_guest() {
    use crate::vmm::guest_platform::{RESET_PORT, SLEEP_CONTROL_PORT, SLEEP_STATUS_PORT};
    let (mut vcpu, mut host) = (TestGuest::default(), FakeHost::default());
    // The 8259's mask reads back all ones; a 16-bit read covers both sleep registers.
    assert_eq!(port_io(&mut vcpu, &mut host, 0x21, 1, None).1, 0xFF);
    assert_eq!(
        port_io(&mut vcpu, &mut host, SLEEP_CONTROL_PORT, 2, None).1,
        0x8000
    );
    assert_eq!(
        port_io(&mut vcpu, &mut host, SLEEP_STATUS_PORT, 1, Some(0x80)).0,
        Next::Resume
    );
    assert_eq!(
        port_io(&mut vcpu, &mut host, SLEEP_CONTROL_PORT, 1, Some(0x34)).0,
        Next::End(GuestEnd::PoweredOff(0))
    );
    let why = stopped_with(port_io(&mut vcpu, &mut host, RESET_PORT, 1, Some(1)).0);
    assert_eq!(why, "the guest reset itself (ACPI reset register)");
    let why = stopped_with(port_io(&mut vcpu, &mut host, 0x64, 1, Some(0xFE)).0);
    assert!(why.contains("keyboard-controller reset"), "{why}");
}

#[test]
fn faults_stop_only_the_guest_with_a_report() {
    let (mut vmcs, mut vcpu, mut ram, mut host) = (
        exited(48, 0x2, 0),
        TestGuest::default(),
        ram(),
        FakeHost::default(),
    );
    vmcs.set(Vmcs64Ro::GuestPhysicalAddress as u32, 0x8000_0000);
    let Next::End(GuestEnd::Stopped(why)) = run(&mut vmcs, &mut vcpu, &mut ram, &mut host) else {
        panic!()
    };
    assert!(why.contains("0x80000000"), "{why}");
    let mut vmcs = exited(2, 0, 0);
    assert!(matches!(
        run(&mut vmcs, &mut vcpu, &mut ram, &mut host),
        Next::End(GuestEnd::Stopped(_))
    ));
    let mut vmcs = exited(0x8000_0021, 0, 0);
    let Next::End(GuestEnd::Stopped(why)) = run(&mut vmcs, &mut vcpu, &mut ram, &mut host) else {
        panic!()
    };
    assert!(why.contains("VM entry failed"), "{why}");
}

#[test]
fn apicv_posts_to_the_virtual_apic_raises_rvi_and_wakes_a_halted_vcpu() {
    use crate::config::InterruptMode;
    use crate::vmm::guest_platform::COM1_GSI;
    use crate::vmm::interrupts::{VcpuInterrupts, VmInterrupts};
    use crate::vmx::vmcs_fields::Vmcs16;
    let (mut vcpu, mut host) = (TestGuest::default(), FakeHost::default());
    vcpu.cpu.interrupts = VcpuInterrupts::new(InterruptMode::Apicv);
    vcpu.vm.interrupts = VmInterrupts::new(InterruptMode::Apicv, &[]);
    let now = host.rdtsc();
    vcpu.apic_write(0x80F, 0x1FF, now, &mut host).unwrap();
    // COM1's emulated pin, level-triggered, vector 0x24, raised while the vCPU waits in HLT with
    // an earlier interrupt (SVI 0x31, class 3) still in service: 0x24 must wait.
    let rte = u32::from(0x10 + 2 * COM1_GSI);
    vcpu.ioapic_access(0x00, 4, Some(rte), &mut host);
    vcpu.ioapic_access(0x10, 4, Some((1 << 15) | 0x24), &mut host);
    vcpu.vm
        .interrupts
        .raise_emulated_pin(COM1_GSI, &mut vcpu.cpu.interrupts);
    let mut vmcs = exited(12, 0, 1);
    vmcs.set(Vmcs32::GuestActivityState as u32, 1);
    vmcs.set(Vmcs16::GuestInterruptStatus as u32, 0x3100);
    irq_exits::prepare_entry(&mut vmcs, &mut vcpu, &mut host).unwrap();
    assert_eq!(vmcs.get(Vmcs16::GuestInterruptStatus as u32), Some(0x3124));
    assert_eq!(entry_event(&vmcs).0, None, "nothing injected");
    assert_eq!(
        vmcs.get(Vmcs32::GuestActivityState as u32),
        Some(1),
        "blocked by SVI: still halted"
    );
    assert_eq!(
        vmcs.get(Vmcs64::EoiExitBitmap0 as u32),
        Some(1 << 0x24),
        "level: its EOI exits"
    );
    assert!(!vcpu.window_exiting);
    // Nothing in service any more: a self-IPI through the ICR (it exits) wakes it.
    vmcs.set(Vmcs16::GuestInterruptStatus as u32, 0x24);
    vcpu.apic_write(0x830, 0x41, now, &mut host).unwrap();
    irq_exits::prepare_entry(&mut vmcs, &mut vcpu, &mut host).unwrap();
    assert_eq!(vmcs.get(Vmcs16::GuestInterruptStatus as u32), Some(0x41));
    assert_eq!(vmcs.get(Vmcs32::GuestActivityState as u32), Some(0));
    // The guest's EOI of 0x24 exits (reason 45, the vector as qualification) without moving RIP.
    let mut vmcs = exited(45, 0x24, 0);
    assert_eq!(
        run(&mut vmcs, &mut vcpu, &mut ram(), &mut host),
        Next::Resume
    );
    assert_eq!(rip(&vmcs), RIP);
    assert_eq!(vcpu.interrupts.stats.eoi_exits, 1);
}

#[test]
fn hlt_waits_in_the_guest_unless_interrupts_are_off() {
    let (mut vmcs, mut vcpu, mut ram, mut host) = (
        exited(12, 0, 1),
        TestGuest::default(),
        ram(),
        FakeHost::default(),
    );
    assert!(matches!(
        run(&mut vmcs, &mut vcpu, &mut ram, &mut host),
        Next::End(GuestEnd::Stopped(_))
    ));
    let mut vmcs = exited(12, 0, 1);
    vmcs.set(VmcsNatural::GuestRflags as u32, 0x202);
    assert_eq!(run(&mut vmcs, &mut vcpu, &mut ram, &mut host), Next::Resume);
    assert_eq!(vmcs.get(Vmcs32::GuestActivityState as u32), Some(1));
    assert_eq!(rip(&vmcs), RIP + 1);
}

// ---- Exceptions, event re-injection, refused writes (vmm::events, vmm::validate) ----

use crate::vmm::events::{DELIVERY_LOOP_LIMIT, DR6_BS};

/// Interruption information (SDM Vol. 3C Table 25-19): valid, type, error code valid, vector.
const fn event(event_type: u32, vector: u32, error_code: bool) -> u32 {
    0x8000_0000 | event_type << 8 | (error_code as u32) << 11 | vector
}
const HW: u32 = 3;
const DB_TRAP: u32 = event(HW, 1, false);
const AC: u32 = event(HW, 17, true);

/// An exception or NMI exit (reason 0) with `info`, the qualification and, when given, the
/// event whose delivery it interrupted.
fn exception_exited(info: u32, qualification: u64, vectoring: Option<(u32, u32)>) -> FakeVmcs {
    let mut vmcs = exited(0, qualification, 0);
    vmcs.set(Vmcs32Ro::ExitInterruptionInfo as u32, info.into());
    vmcs.set(Vmcs32Ro::ExitInterruptionErrorCode as u32, 0);
    if let Some((info, code)) = vectoring {
        vmcs.set(Vmcs32Ro::IdtVectoringInfo as u32, info.into());
        vmcs.set(Vmcs32Ro::IdtVectoringErrorCode as u32, code.into());
    }
    vmcs
}

fn entry_event(vmcs: &FakeVmcs) -> (Option<u64>, Option<u64>) {
    (
        vmcs.get(Vmcs32::EntryInterruptionInfo as u32),
        vmcs.get(Vmcs32::EntryExceptionErrorCode as u32),
    )
}

fn stopped_with(next: Next) -> String {
    match next {
        Next::End(GuestEnd::Stopped(why)) => why,
        other => panic!("guest not stopped: {other:?}"),
    }
}

#[test]
fn single_step_db_is_reflected_with_bs_merged_into_dr6() {
    let (mut vcpu, mut ram) = (TestGuest::default(), ram());
    let mut host = FakeHost {
        dr6: 0xFFFF_0FF0,
        ..FakeHost::default()
    };
    let mut vmcs = exception_exited(DB_TRAP, DR6_BS, None);
    assert_eq!(run(&mut vmcs, &mut vcpu, &mut ram, &mut host), Next::Resume);
    assert_eq!(
        entry_event(&vmcs).0,
        Some(0x8000_0301),
        "#DB as a hardware exception"
    );
    assert_eq!(
        host.dr6, 0xFFFF_4FF0,
        "DR6.BS set before the guest's handler runs"
    );
    assert_eq!(
        rip(&vmcs),
        RIP,
        "a trap's RIP is already past the instruction"
    );
}

#[test]
fn ac_is_reflected_with_error_code_zero_and_icebp_keeps_its_type_and_length() {
    let (mut vcpu, mut ram, mut host) = (TestGuest::default(), ram(), FakeHost::default());
    let mut vmcs = exception_exited(AC, 0, None);
    assert_eq!(run(&mut vmcs, &mut vcpu, &mut ram, &mut host), Next::Resume);
    assert_eq!(entry_event(&vmcs), (Some(0x8000_0B11), Some(0)));
    // INT1 (ICEBP, F1): privileged software exception, 1 byte; it leaves DR6 alone.
    let mut vmcs = exception_exited(event(5, 1, false), 0, None);
    vmcs.set(Vmcs32Ro::ExitInstructionLength as u32, 1);
    host.dr6 = 0xFFFF_0FF0;
    run(&mut vmcs, &mut vcpu, &mut ram, &mut host);
    assert_eq!(entry_event(&vmcs).0, Some(0x8000_0501));
    assert_eq!(vmcs.get(Vmcs32::EntryInstructionLength as u32), Some(1));
    assert_eq!(host.dr6, 0xFFFF_0FF0);
}

#[test]
fn nmis_are_the_hosts_counted_and_never_injected() {
    let (mut vcpu, mut ram, mut host) = (TestGuest::default(), ram(), FakeHost::default());
    for _ in 0..2 {
        let mut vmcs = exception_exited(event(2, 2, false), 0, None);
        assert_eq!(run(&mut vmcs, &mut vcpu, &mut ram, &mut host), Next::Resume);
        assert_eq!(entry_event(&vmcs).0, None);
    }
    assert_eq!(vcpu.events.nmis, 2);
}

#[test]
fn interrupted_delivery_is_reinjected_with_type_error_code_and_length() {
    let (mut vcpu, mut ram, mut host) = (TestGuest::default(), ram(), FakeHost::default());
    // An exit during delivery of INT 0x80 (software interrupt, CD 80): re-injected with its length.
    let mut vmcs = exited(52, 0, 2);
    vmcs.set(
        Vmcs32Ro::IdtVectoringInfo as u32,
        event(4, 0x80, false).into(),
    );
    assert_eq!(run(&mut vmcs, &mut vcpu, &mut ram, &mut host), Next::Resume);
    assert_eq!(entry_event(&vmcs).0, Some(0x8000_0480));
    assert_eq!(vmcs.get(Vmcs32::EntryInstructionLength as u32), Some(2));
    assert_eq!(rip(&vmcs), RIP);
    // A #PF with its error code; an NMI as an NMI.
    let mut vmcs = exited(52, 0, 0);
    vmcs.set(
        Vmcs32Ro::IdtVectoringInfo as u32,
        event(HW, 14, true).into(),
    );
    vmcs.set(Vmcs32Ro::IdtVectoringErrorCode as u32, 6);
    run(&mut vmcs, &mut vcpu, &mut ram, &mut host);
    assert_eq!(entry_event(&vmcs), (Some(0x8000_0B0E), Some(6)));
    let mut vmcs = exited(52, 0, 0);
    vmcs.set(Vmcs32Ro::IdtVectoringInfo as u32, event(2, 2, false).into());
    run(&mut vmcs, &mut vcpu, &mut ram, &mut host);
    assert_eq!(entry_event(&vmcs).0, Some(0x8000_0202));
    // Without IDT-vectoring information nothing is injected.
    let mut vmcs = exited(52, 0, 0);
    run(&mut vmcs, &mut vcpu, &mut ram, &mut host);
    assert_eq!(entry_event(&vmcs).0, None);
}

#[test]
fn a_handlers_exception_during_delivery_follows_the_double_fault_rules() {
    let (mut vcpu, mut ram, mut host) = (TestGuest::default(), ram(), FakeHost::default());
    // #GP from WRMSR to an unknown MSR, with a #PF being delivered: contributory after a page fault
    // is a double fault, #DF(0).
    let mut vmcs = exited(32, 0, 2);
    vmcs.set(
        Vmcs32Ro::IdtVectoringInfo as u32,
        event(HW, 14, true).into(),
    );
    vmcs.set(Vmcs32::EntryExceptionErrorCode as u32, 0x55);
    vcpu.regs.rcx = 0x1FF0;
    assert_eq!(run(&mut vmcs, &mut vcpu, &mut ram, &mut host), Next::Resume);
    assert_eq!(entry_event(&vmcs), (Some(0x8000_0B08), Some(0)));
    // The same while a #DF is being delivered: shutdown, the guest is stopped.
    let mut vmcs = exited(32, 0, 2);
    vmcs.set(Vmcs32Ro::IdtVectoringInfo as u32, event(HW, 8, true).into());
    let why = stopped_with(run(&mut vmcs, &mut vcpu, &mut ram, &mut host));
    assert!(why.contains("triple fault"), "{why}");
    // A reflected #DB during delivery of a #GP is handled serially: the #DB goes first (the #GP
    // comes back when its instruction runs again).
    let mut vmcs = exception_exited(DB_TRAP, DR6_BS, Some((event(HW, 13, true), 0)));
    run(&mut vmcs, &mut vcpu, &mut ram, &mut host);
    assert_eq!(entry_event(&vmcs).0, Some(u64::from(DB_TRAP)));
    assert_eq!(vcpu.events.deferred, None);
}

#[test]
fn an_interrupt_whose_delivery_raised_a_db_is_delivered_after_it() {
    let (mut vcpu, mut ram, mut host) = (TestGuest::default(), ram(), FakeHost::default());
    let mut vmcs = exception_exited(DB_TRAP, 0b1, Some((event(0, 0x41, false), 0)));
    run(&mut vmcs, &mut vcpu, &mut ram, &mut host);
    assert_eq!(entry_event(&vmcs).0, Some(u64::from(DB_TRAP)), "#DB first");
    assert!(vcpu.events.deferred.is_some());
    // Next exit, interrupts still off in the guest: it waits.
    let mut vmcs = exited(10, 0, 2);
    run(&mut vmcs, &mut vcpu, &mut ram, &mut host);
    assert_eq!(entry_event(&vmcs).0, None);
    // With RFLAGS.IF = 1 it is injected as the external interrupt it was.
    let mut vmcs = exited(10, 0, 2);
    vmcs.set(VmcsNatural::GuestRflags as u32, 0x202);
    run(&mut vmcs, &mut vcpu, &mut ram, &mut host);
    assert_eq!(entry_event(&vmcs).0, Some(0x8000_0041));
    assert_eq!(vcpu.events.deferred, None);
}

#[test]
fn an_exception_recurring_in_its_own_delivery_stops_the_guest() {
    for (info, name) in [(DB_TRAP, "#DB"), (AC, "#AC")] {
        let (mut vcpu, mut ram, mut host) = (TestGuest::default(), ram(), FakeHost::default());
        let round = |vcpu: &mut TestGuest, ram: &mut Vec<u8>, host: &mut FakeHost| {
            let mut vmcs = exception_exited(info, 0, Some((info, 0)));
            run(&mut vmcs, vcpu, ram, host)
        };
        for _ in 0..DELIVERY_LOOP_LIMIT - 2 {
            assert_eq!(round(&mut vcpu, &mut ram, &mut host), Next::Resume);
        }
        // Any other guest exit shows progress and starts the count again; a host timer exit does not.
        run(&mut exited(10, 0, 2), &mut vcpu, &mut ram, &mut host);
        for _ in 0..DELIVERY_LOOP_LIMIT - 1 {
            assert_eq!(round(&mut vcpu, &mut ram, &mut host), Next::Resume);
        }
        run(&mut exited(52, 0, 0), &mut vcpu, &mut ram, &mut host);
        let why = stopped_with(round(&mut vcpu, &mut ram, &mut host));
        assert!(
            why.contains("event-delivery loop") && why.contains(name),
            "{why}"
        );
    }
}

#[test]
fn a_db_trap_at_its_own_gate_after_every_delivery_stops_the_guest() {
    // A data breakpoint on the IST slot #DB delivery pushes to: each delivery completes, then traps
    // again before the handler's first instruction, so the exit carries no IDT-vectoring information
    // and RIP is the #DB gate's target.
    let (mut vcpu, mut ram, mut host) = (TestGuest::default(), ram(), FakeHost::default());
    let gate = 0x3000 + 16;
    ram[gate..gate + 2].copy_from_slice(&(RIP as u16).to_le_bytes());
    ram[gate + 6..gate + 8].copy_from_slice(&((RIP >> 16) as u16).to_le_bytes());
    ram[gate + 8..gate + 12].copy_from_slice(&((RIP >> 32) as u32).to_le_bytes());
    let round = |vcpu: &mut TestGuest, ram: &mut Vec<u8>, host: &mut FakeHost, rip: u64| {
        let mut vmcs = exception_exited(DB_TRAP, 0b1, None);
        vmcs.set(VmcsNatural::GuestIdtrBase as u32, 0x3000);
        vmcs.set(Vmcs32::GuestIdtrLimit as u32, 0xFFF);
        vmcs.set(VmcsNatural::GuestRip as u32, rip);
        run(&mut vmcs, vcpu, ram, host)
    };
    // Elsewhere (a watchpoint hit in a loop body) the same trap is not a delivery loop.
    for _ in 0..DELIVERY_LOOP_LIMIT + 5 {
        assert_eq!(round(&mut vcpu, &mut ram, &mut host, RIP + 4), Next::Resume);
    }
    for _ in 0..DELIVERY_LOOP_LIMIT - 1 {
        assert_eq!(round(&mut vcpu, &mut ram, &mut host, RIP), Next::Resume);
    }
    let why = stopped_with(round(&mut vcpu, &mut ram, &mut host, RIP));
    assert!(
        why.contains("event-delivery loop") && why.contains("#DB"),
        "{why}"
    );
}

#[test]
fn vmcall_from_cpl3_is_ud_and_does_nothing() {
    let (mut vcpu, mut ram, mut host) = (TestGuest::default(), ram(), FakeHost::default());
    let mut vmcs = exited(18, 0, 3);
    // SS access rights: data, DPL 3 (bits 6:5), present, 32-bit, 4 KiB granularity.
    vmcs.set(Vmcs32::GuestSsAccessRights as u32, 0xC0F3);
    vcpu.regs.rax = Hypercall::PowerOff as u64;
    assert_eq!(run(&mut vmcs, &mut vcpu, &mut ram, &mut host), Next::Resume);
    assert_eq!(entry_event(&vmcs).0, Some(0x8000_0306));
    assert_eq!(rip(&vmcs), RIP);
    assert_eq!(vcpu.regs.rax, Hypercall::PowerOff as u64);
    // CPL 0 may.
    let mut vmcs = exited(18, 0, 3);
    vmcs.set(Vmcs32::GuestSsAccessRights as u32, 0xC093);
    assert_eq!(
        run(&mut vmcs, &mut vcpu, &mut ram, &mut host),
        Next::End(GuestEnd::PoweredOff(0))
    );
}

fn wrmsr(vcpu: &mut TestGuest, msr: u32, value: u64) -> FakeVmcs {
    let (mut ram, mut host) = (ram(), FakeHost::default());
    let mut vmcs = exited(32, 0, 2);
    vcpu.regs.rcx = msr.into();
    vcpu.regs.rax = value & 0xFFFF_FFFF;
    vcpu.regs.rdx = value >> 32;
    assert_eq!(run(&mut vmcs, vcpu, &mut ram, &mut host), Next::Resume);
    vmcs
}

#[test]
fn invalid_msr_writes_are_gp_and_valid_ones_land() {
    let mut vcpu = TestGuest::default();
    // EFER: SVME (bit 12) is reserved on Intel; SCE is fine.
    let vmcs = wrmsr(&mut vcpu, 0xC000_0080, 0xD00 | 1 << 12);
    assert!(injected_gp(&vmcs));
    assert_eq!(vmcs.get(Vmcs64::GuestIa32Efer as u32), Some(0xD00));
    let vmcs = wrmsr(&mut vcpu, 0xC000_0080, 0xD01);
    assert_eq!(vmcs.get(Vmcs64::GuestIa32Efer as u32), Some(0xD01));
    // Non-canonical bases and syscall targets.
    for msr in [
        0xC000_0100,
        0xC000_0101,
        0xC000_0102,
        0xC000_0082,
        0xC000_0083,
    ] {
        let vmcs = wrmsr(&mut vcpu, msr, 0x0000_8000_0000_0000);
        assert!(injected_gp(&vmcs), "MSR {msr:#x}");
        assert_eq!(rip(&vmcs), RIP);
    }
    let vmcs = wrmsr(&mut vcpu, 0xC000_0100, 0xFFFF_8000_0000_1000);
    assert_eq!(
        vmcs.get(VmcsNatural::GuestFsBase as u32),
        Some(0xFFFF_8000_0000_1000)
    );
    assert_eq!(rip(&vmcs), RIP + 2);
    // PAT: type 2 in entry 3 is reserved.
    let vmcs = wrmsr(&mut vcpu, 0x277, 0x0007_0406_0207_0406);
    assert!(injected_gp(&vmcs));
    wrmsr(&mut vcpu, 0x277, 0x0007_0106_0007_0406);
    assert_eq!(vcpu.soft_msrs.pat, 0x0007_0106_0007_0406);
    // Reserved upper halves.
    assert!(injected_gp(&wrmsr(&mut vcpu, 0xC000_0084, 1 << 32)));
    assert!(injected_gp(&wrmsr(&mut vcpu, 0xC000_0103, 1 << 40)));
}

/// A MOV to CR4 from RAX (qualification: CR 4, type 0, register 0; SDM Table 28-3) with CR4 as the
/// runner sets it up: VMXE fixed (host-owned), the guest's PAE in the shadow.
fn mov_to_cr4(vcpu: &mut TestGuest, value: u64) -> FakeVmcs {
    let (mut ram, mut host) = (ram(), FakeHost::default());
    let mut vmcs = exited(28, 4, 3);
    vcpu.cr4_fixed = (1 << 13, 0x003F_FFFF);
    vmcs.set(VmcsNatural::Cr4GuestHostMask as u32, !0x003F_DFFFu64);
    vmcs.set(VmcsNatural::GuestCr4 as u32, 1 << 5 | 1 << 13);
    vmcs.set(VmcsNatural::Cr4ReadShadow as u32, 1 << 5);
    vmcs.set(VmcsNatural::GuestCr0 as u32, 0x8001_0033);
    vcpu.regs.rax = value;
    assert_eq!(run(&mut vmcs, vcpu, &mut ram, &mut host), Next::Resume);
    vmcs
}

#[test]
fn cr4_writes_of_hidden_or_reserved_bits_are_gp() {
    let mut vcpu = TestGuest::default();
    for bad in [1u64 << 13, 1 << 14, 1 << 15, 1 << 26, 1 << 40] {
        let vmcs = mov_to_cr4(&mut vcpu, 1 << 5 | bad);
        assert!(injected_gp(&vmcs), "CR4 bit {}", bad.trailing_zeros());
        assert_eq!(vmcs.get(VmcsNatural::Cr4ReadShadow as u32), Some(1 << 5));
        assert_eq!(rip(&vmcs), RIP);
    }
    assert!(
        injected_gp(&mov_to_cr4(&mut vcpu, 0)),
        "PAE cannot go in IA-32e mode"
    );
    let vmcs = mov_to_cr4(&mut vcpu, 1 << 5 | 1 << 18);
    assert_eq!(entry_event(&vmcs).0, None);
    assert_eq!(
        vmcs.get(VmcsNatural::Cr4ReadShadow as u32),
        Some(1 << 5 | 1 << 18)
    );
    assert_eq!(rip(&vmcs), RIP + 3);
}

#[test]
fn xsetbv_is_checked_then_performed_in_the_host() {
    let (mut vcpu, mut ram, mut host) = (TestGuest::default(), ram(), FakeHost::default());
    let xsetbv =
        |vcpu: &mut TestGuest, host: &mut FakeHost, ram: &mut Vec<u8>, cr4: u64, ecx, value| {
            let mut vmcs = exited(55, 0, 3);
            vmcs.set(VmcsNatural::GuestCr4 as u32, cr4);
            vcpu.regs.rcx = ecx;
            vcpu.regs.rax = value;
            vcpu.regs.rdx = 0;
            assert_eq!(run(&mut vmcs, vcpu, ram, host), Next::Resume);
            vmcs
        };
    const OSXSAVE: u64 = 1 << 18 | 1 << 5;
    let vmcs = xsetbv(&mut vcpu, &mut host, &mut ram, OSXSAVE, 0, 3);
    assert_eq!((host.xcr0.as_slice(), rip(&vmcs)), (&[3][..], RIP + 3));
    for (ecx, value) in [(0, 0), (0, 2), (0, 5), (0, 0x67), (1, 3), (0, 1 << 9 | 3)] {
        let vmcs = xsetbv(&mut vcpu, &mut host, &mut ram, OSXSAVE, ecx, value);
        assert!(injected_gp(&vmcs), "ECX {ecx} value {value:#x}");
        assert_eq!(rip(&vmcs), RIP);
    }
    let vmcs = xsetbv(&mut vcpu, &mut host, &mut ram, 1 << 5, 0, 3);
    assert_eq!(
        entry_event(&vmcs).0,
        Some(0x8000_0306),
        "#UD without CR4.OSXSAVE"
    );
    assert_eq!(host.xcr0, [3], "refused values never reach the host");
    // CPUID.1:ECX.OSXSAVE follows the guest's CR4, not the host's.
    let mut vmcs = exited(10, 0, 2);
    vcpu.regs.rax = 1;
    run(&mut vmcs, &mut vcpu, &mut ram, &mut host);
    assert_eq!(vcpu.regs.rcx & 1 << 27, 0);
    let mut vmcs = exited(10, 0, 2);
    vmcs.set(VmcsNatural::GuestCr4 as u32, OSXSAVE);
    vcpu.regs.rax = 1;
    run(&mut vmcs, &mut vcpu, &mut ram, &mut host);
    assert_ne!(vcpu.regs.rcx & 1 << 27, 0);
}

fn rdmsr(vcpu: &mut TestGuest, msr: u32) -> (FakeVmcs, u64) {
    let (mut ram, mut host) = (ram(), FakeHost::default());
    let mut vmcs = exited(31, 0, 2);
    vcpu.regs.rcx = msr.into();
    assert_eq!(run(&mut vmcs, vcpu, &mut ram, &mut host), Next::Resume);
    let value = vcpu.regs.rdx << 32 | vcpu.regs.rax;
    (vmcs, value)
}

#[test]
fn msrs_linux_reads_agree_with_cpuid() {
    let mut vcpu = TestGuest::default();
    // Fast strings on (ERMS and FSRM stay valid), BTS and PEBS unavailable.
    assert_eq!(rdmsr(&mut vcpu, 0x1A0).1, 0x1801);
    // Writes change nothing (Linux may try to clear bits it finds set).
    wrmsr(&mut vcpu, 0x1A0, 0);
    assert_eq!(rdmsr(&mut vcpu, 0x1A0).1, 0x1801);
    // No microcode, no machine-check banks: read 0; the microcode probe's write of 0 is taken.
    for msr in [0x17, 0x8B, 0x179, 0x17A] {
        let (vmcs, value) = rdmsr(&mut vcpu, msr);
        assert_eq!((value, rip(&vmcs)), (0, RIP + 2), "MSR {msr:#x}");
    }
    assert_eq!(rip(&wrmsr(&mut vcpu, 0x8B, 0)), RIP + 2);
    assert_eq!(rip(&wrmsr(&mut vcpu, 0x17A, 0)), RIP + 2);
    assert!(injected_gp(&wrmsr(&mut vcpu, 0x17A, 1)));
    assert!(
        injected_gp(&wrmsr(&mut vcpu, 0x179, 0)),
        "MCG_CAP is read-only"
    );
    assert!(
        injected_gp(&wrmsr(&mut vcpu, 0x17, 0)),
        "PLATFORM_ID is read-only"
    );
}

#[test]
fn msrs_of_hidden_features_are_gp() {
    let mut vcpu = TestGuest::default();
    // TSC_ADJUST, SPEC_CTRL, PRED_CMD, ARCH_CAPABILITIES, FLUSH_CMD, PLATFORM_INFO, APERF, MPERF,
    // MTRRcap, PERF_CAPABILITIES, HWP (PM_ENABLE, CAPABILITIES, REQUEST), MTRRdefType, KVM's
    // system time and wall clock (both ranges).
    for msr in [
        0x3B,
        0x48,
        0x49,
        0x10A,
        0x10B,
        0xCE,
        0xE7,
        0xE8,
        0xFE,
        0x345,
        0x770,
        0x771,
        0x774,
        0x2FF,
        0x11,
        0x12,
        0x4B56_4D00,
        0x4B56_4D01,
    ] {
        let (vmcs, _) = rdmsr(&mut vcpu, msr);
        assert!(injected_gp(&vmcs), "RDMSR {msr:#x}");
        assert_eq!(rip(&vmcs), RIP);
        assert!(injected_gp(&wrmsr(&mut vcpu, msr, 0)), "WRMSR {msr:#x}");
    }
}

#[test]
fn tsc_deadline_msr_reaches_the_virtual_x2apic() {
    let mut vcpu = TestGuest::default();
    let now = FakeHost::default().rdtsc();
    // Outside TSC-deadline mode the MSR reads 0 and ignores writes (SDM Vol. 3A 11.5.4.1).
    wrmsr(&mut vcpu, 0x6E0, now + 1000);
    assert_eq!(rdmsr(&mut vcpu, 0x6E0).1, 0);
    // APIC software-enabled (SVR bit 8), LVT timer in TSC-deadline mode (bits 18:17 = 10), vector
    // 0xEC.
    wrmsr(&mut vcpu, 0x80F, 0x1FF);
    assert_eq!(rip(&wrmsr(&mut vcpu, 0x832, 0x4_00EC)), RIP + 2);
    let vmcs = wrmsr(&mut vcpu, 0x6E0, now + 1000);
    assert_eq!(rip(&vmcs), RIP + 2);
    assert_eq!(rdmsr(&mut vcpu, 0x6E0).1, now + 1000);
    assert_eq!(vcpu.interrupts.next_timer_due(), Some(now + 1000));
    // A deadline already past fires at once and reads 0 again.
    wrmsr(&mut vcpu, 0x6E0, now - 1);
    assert_eq!(rdmsr(&mut vcpu, 0x6E0).1, 0);
}

#[test]
fn cpuid_exit_uses_the_policy_and_ospke_follows_cr4() {
    let (mut ram, mut host) = (ram(), FakeHost::default());
    let mut vcpu = TestGuest::default();
    let mut cpuid = |vcpu: &mut TestGuest, leaf: u64, subleaf: u64, cr4: u64| {
        let mut vmcs = exited(10, 0, 2);
        vmcs.set(VmcsNatural::GuestCr4 as u32, cr4);
        (vcpu.regs.rax, vcpu.regs.rcx) = (leaf, subleaf);
        run(&mut vmcs, vcpu, &mut ram, &mut host);
        [vcpu.regs.rax, vcpu.regs.rbx, vcpu.regs.rcx, vcpu.regs.rdx]
    };
    // The measured 50 MHz, crystal = TSC.
    assert_eq!(cpuid(&mut vcpu, 0x15, 0, 0), [1, 1, 50_000_000, 0]);
    // PKRU has size 0 on this host: no PKRU state, no PKU; OSPKE still reflects CR4.PKE.
    assert_eq!(cpuid(&mut vcpu, 0xD, 0, 0)[0], 0xE7);
    assert_eq!(cpuid(&mut vcpu, 7, 0, 0)[2] & (1 << 3 | 1 << 4), 0);
    assert_ne!(cpuid(&mut vcpu, 7, 0, 1 << 22)[2] & 1 << 4, 0);
    let kvm = cpuid(&mut vcpu, 0x4000_0100, 0, 0);
    assert_eq!(kvm[1], u32::from_le_bytes(*b"KVMK").into());
}
