//! `selftest = vtd-guest`: a guest's DMA protection proven without VT-x (QEMU TCG). Guest RAM is
//! allocated, the edu device planned and attached to the guest's DMA domain through exactly the
//! code the runner uses (`assignment::plan`, `runner::allocate_guest_ram`,
//! `iommu::prepare_guest_dma`), then the edu devices DMA. Prints suite `vtd-guest`:
//!
//! - `guest-dma-lands-in-guest-ram`: the assigned edu's DMA to guest-physical X lands at
//!   `ram_base + X`, with no fault.
//! - `unassigned-device-blocked`: the second edu, given to no guest, reaches no memory; its
//!   faults name it (reason: no context entry).
//! - `dma-beyond-guest-ram-blocked`: the assigned edu's DMA to a GPA past the guest's RAM lands
//!   nowhere; the unit's fault event, routed as the kernel routes it at boot
//!   (`DmaRemapping::route_fault_events`), arrives once on the host's DMA fault vector; the fault
//!   names 00:03.0 and the address; the device is quarantined.
//! - `detached-device-blocked`: attached again its DMA lands; after the guest's domain is detached
//!   (as when a guest ends) the same DMA is blocked.
//! - `msi-through-irte`: the guest's virtual PCI bus for the edu, built as the runner builds it
//!   (`runner::assigned_function`); the guest programs MSI (address 0xFEE00000 | APIC ID << 12,
//!   data = vector [`MSI_VECTOR`], enable) with configuration-port writes; each resulting request
//!   goes through `guest_msi::route_guest_msi`, as the runner's does. The device's real MSI then
//!   holds a remappable-format address (bit 4), not the guest's; the edu's interrupt arrives on
//!   exactly the guest's vector.
//! - `msi-disabled-clears-irte`: the guest disables MSI: the device's MSI is off and its IRTE
//!   cleared; even with the device's MSI forced back on with the old remappable message (a device
//!   that ignores the disable) nothing arrives; the guest enabling again brings the vector back
//!   (the control that shows the wait was long enough).
//! - `msix-through-irte`: a second pretend guest is given QEMU's e1000e (MSI-X, 5 entries, table
//!   in BAR3): its virtual PCI bus built by `runner::assigned_function`; the guest programs table
//!   entry 0 (address 0xFEE00000 | APIC ID << 12, data [`MSIX_VECTOR`], unmasked) through the
//!   MSI-X model's access path (what its EPT violations reach), then sets MSI-X Enable with a
//!   configuration-port write; the request goes through `guest_msi::route_guest_msix`, as the
//!   runner's does. The real entry then holds a remappable-format address, the IRTE the guest's
//!   vector; the e1000e's "other" cause, mapped to entry 0 (IVAR), arrives on exactly that vector.
//!   The guest masking the entry masks the real one and clears the IRTE: the same cause then
//!   delivers nothing; unmasking it again brings the vector back (the control for the wait).
//! - `ioapic-pin-through-irte`: the assigned edu's INTx (MSI off) on the IOAPIC, with each PCI
//!   pin (GSI 16-23) routed as the runner routes a guest's pin (`guest_pins::physical_entry`:
//!   an IRTE checked against the IOAPIC's requester ID, the redirection entry in remappable
//!   format). The edu's interrupt arrives exactly once, on the vector of one pin. With that pin's
//!   IRTE cleared (its redirection entry untouched) nothing arrives; routed again, it does.

use crate::arch::apic::{PhysicalIoapic, DMA_FAULT_VECTOR};
use crate::arch::irq_probe::IrqProbe;
use crate::config::{GuestConfig, InterruptMode};
use crate::iommu::{self, BringUpOptions, DomainHandle, Iommu};
use crate::memory::frames::FrameAllocator;
use crate::memory::FrameAlloc;
use crate::pci::regs::COMMAND;
use crate::pci::{Bdf, Command, ConfigAccess, Ecam, LegacyPorts, PciFunction, PciTopology};
use crate::platform::Platform;
use crate::selftest::edu::{self, Direction, DmaRequest, Edu, DMA_POLLS, RAISE_BITS};
use crate::selftest::vtd::{find_dma_fault, pattern};
use crate::selftest::{install_probe, IRQ_SPINS, LEN, WORDS};
use crate::virq::ioapic::PhysicalRouting;
use crate::vmm::assignment::{self, AssignedDevice};
use crate::vmm::guest_msi::{self, HostCpu, MsiRoute};
use crate::vmm::guest_pins;
use crate::vmm::interrupts::VmInterrupts;
use crate::vmm::msi_request::MsiRequest;
use crate::vmm::msix::{self as msix_model, MsixOutcome, MsixRequest, PhysicalMsixTable};
use crate::vmm::runner::{allocate_guest_ram, assigned_function};
use crate::vmm::virtual_pci::{VirtualPci, CONFIG_ADDRESS, CONFIG_DATA};
use crate::vtd::fault::Fault;
use crate::vtd::irte::remappable_msi;
use crate::vtd::regs::MmioRegisters;
use crate::vtd::SourceId;
use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::fmt;
use core::sync::atomic::{compiler_fence, Ordering};

pub const SUITE: &str = "vtd-guest";
pub const TESTS: [&str; 8] = [
    "guest-dma-lands-in-guest-ram",
    "unassigned-device-blocked",
    "dma-beyond-guest-ram-blocked",
    "detached-device-blocked",
    "msi-through-irte",
    "msi-disabled-clears-irte",
    "msix-through-irte",
    "ioapic-pin-through-irte",
];

const GUEST: &str = "vtd-guest";
const GUEST_MIB: u64 = 8;
/// Guest-physical addresses inside the guest's RAM: the assigned edu loads its buffer from
/// `SOURCE_GPA` and writes it to `TARGET_GPA`.
const SOURCE_GPA: u64 = 0x10_0000;
const TARGET_GPA: u64 = 0x20_0000;
/// Offsets into the guest's RAM whose *host*-physical address serves as a DMA address that must
/// not be reached: were a device's DMA passed through untranslated, it would land in memory this
/// test owns and checks, not somewhere in the host.
const BEYOND_OFFSET: u64 = 0x30_0000;
const PASS_THROUGH_OFFSET: u64 = 0x40_0000;
const FILLER: u64 = 0xC3C3_C3C3_C3C3_C3C3;
/// The guest's MSI vector: a guest vector (0x20..0xEF), distinct from the `vtd` suite's 0x61.
const MSI_VECTOR: u8 = 0x52;
/// The second pretend guest's MSI-X vector, distinct from [`MSI_VECTOR`].
const MSIX_VECTOR: u8 = 0x53;
/// PCI INTx reach the q35 IOAPIC on GSIs 16-23 (ICH9 PIRQA-H); pin 16 + n gets vector
/// `PIN_VECTORS + n`, so the vector that arrives names the pin.
const PCI_PINS: core::ops::RangeInclusive<u8> = 16..=23;
const PIN_VECTORS: u8 = 0x58;
const NIC_GUEST: &str = "vtd-guest-nic";
/// QEMU's e1000e (82574L) and the registers that raise its "other" interrupt (82574L datasheet
/// 10.2.4; QEMU hw/net/e1000e_core.c: ICS sets ICR, ICR & IMS with Other set goes to the MSI-X
/// vector IVAR names for Other).
const E1000E: (u16, u16) = (0x8086, 0x10d3);
const E1000E_ICR: u64 = 0xC0;
const E1000E_ICS: u64 = 0xC8;
const E1000E_IMS: u64 = 0xD0;
const E1000E_IMC: u64 = 0xD8;
const E1000E_IVAR: u64 = 0xE4;
/// Interrupt throttling: ITR (legacy/MSI) and EITR0-4 (one per MSI-X vector, 0xE8 + 4n). Zero turns
/// throttling off: QEMU 7.2's e1000e asserts if an MSI-X throttling timer fires after MSI-X was
/// disabled (a bug fixed upstream by dropping the assert), so no such timer may be left armed.
const E1000E_ITR: u64 = 0xC4;
const E1000E_EITR: [u64; 5] = [0xE8, 0xEC, 0xF0, 0xF4, 0xF8];
/// ICR bit 24: Other (MSI-X mode); bit 2: link status change, one of the "other" causes.
const E1000E_OTHER: u32 = 1 << 24 | 1 << 2;
/// IVAR bits 19:16: Other's vector (2:0) and valid bit (3): MSI-X entry 0, valid.
const E1000E_IVAR_OTHER_TO_0: u32 = 0x8 << 16;

/// Runs the suite; returns the power-off code contribution (0 all passed, 1 otherwise).
pub fn run(
    platform: &Platform,
    pci: &PciTopology,
    frames: &mut FrameAllocator,
    out: &mut impl fmt::Write,
) -> u32 {
    let tests: [super::Test<Bench<'_>>; 8] = [
        (TESTS[0], |b| b.lands_in_guest_ram()),
        (TESTS[1], |b| b.unassigned_blocked()),
        (TESTS[2], |b| b.beyond_ram_blocked()),
        (TESTS[3], |b| b.detached_blocked()),
        (TESTS[4], |b| b.msi_through_irte()),
        (TESTS[5], |b| b.msi_disabled_clears_irte()),
        (TESTS[6], |b| b.msix_through_irte()),
        (TESTS[7], |b| b.ioapic_pin_through_irte()),
    ];
    let bench = Bench::new(platform, pci, frames);
    let after_each = |b: &mut Bench<'_>| {
        b.dma.get_mut().drain_faults(b.frames);
    };
    let (code, bench) = super::run_suite(SUITE, bench, &tests, after_each, out);
    if let Some(mut bench) = bench {
        bench.msi_off();
        // The e1000e's MSI-X is left enabled with its entries masked (QEMU 7.2 bug, see above).
        bench.dma.get_mut().shut_down();
    }
    code
}

struct Bench<'f> {
    frames: &'f mut FrameAllocator,
    dma: Iommu<MmioRegisters>,
    handle: Option<DomainHandle>,
    /// The guest's planned device (00:03.0 on QEMU) and the edu no guest is given (00:08.0).
    assigned: AssignedDevice,
    assigned_edu: Edu,
    other: Option<(Bdf, Edu)>,
    ram_base: u64,
    ram_len: u64,
    /// The assigned edu as enumerated, and configuration access to it.
    function: PciFunction,
    config: Box<dyn ConfigAccess>,
    /// This CPU's xAPIC ID (`None` in x2APIC mode, which the interrupt probe cannot drive).
    apic_id: Option<u8>,
    /// The guest's interrupt state, for its device vectors.
    interrupts: VmInterrupts,
    /// The e1000e and the second pretend guest it is planned for, when QEMU has one.
    nic: Option<Nic>,
    /// The IOAPIC (id, base), from MADT.
    ioapic: Option<(u8, u64)>,
}

/// The e1000e as the second pretend guest's device.
struct Nic {
    function: PciFunction,
    plan: AssignedDevice,
    handle: Option<DomainHandle>,
    /// BAR0 (registers), identity-mapped.
    bar0: u64,
}

impl Nic {
    fn write(&self, reg: u64, value: u32) {
        // SAFETY: a register of the e1000e's BAR0 (identity-mapped MMIO, memory decoding on).
        unsafe { core::ptr::write_volatile((self.bar0 + reg) as *mut u32, value) }
    }
}

impl<'f> Bench<'f> {
    fn new(
        platform: &Platform,
        pci: &PciTopology,
        frames: &'f mut FrameAllocator,
    ) -> Result<Self, String> {
        let edus: Vec<_> = pci
            .functions
            .iter()
            .filter(|f| f.vendor_id == edu::VENDOR_ID && f.device_id == edu::DEVICE_ID)
            .collect();
        let first = edus
            .first()
            .ok_or("no edu device (1234:11e8): run QEMU with -device edu")?;
        // The guest as a configuration would give it: the same plan the kernel makes at boot.
        let guest = GuestConfig {
            name: String::from(GUEST),
            image: String::new(),
            linux: None,
            memory_mib: GUEST_MIB,
            interrupts: Default::default(),
            ports: Vec::new(),
            ioapic_pins: Vec::new(),
            expect_stop: None,
            timeout_ms: None,
            pci: vec![first.bdf],
        };
        let plan = assignment::plan(
            core::slice::from_ref(&guest),
            pci,
            &platform.iommus,
            false,
            assignment::IntxRouting::Unknown,
        );
        if let Some(refusal) = plan.refusals.first() {
            return Err(format!("assignment refused: {refusal}"));
        }
        let devices = plan.devices(GUEST).to_vec();
        let assigned = *devices.first().ok_or("the plan gave the guest no device")?;
        let mut requesters: Vec<Bdf> = devices.iter().map(|d| d.requester).collect();
        let nic = Self::plan_nic(platform, pci)?;
        if let Some(n) = &nic {
            requesters.push(n.plan.requester);
        }

        let config = config_access(platform, first.bdf);
        let mut enabled = Vec::new();
        for f in edus.iter().take(2) {
            let bar0 = f
                .bar(0)
                .filter(|b| !b.kind.is_io() && b.base != 0)
                .ok_or_else(|| format!("edu {} has no memory BAR0", f.bdf))?;
            let cmd = Command::from_bits_retain(config.read16(f.bdf, COMMAND));
            config.write16(
                f.bdf,
                COMMAND,
                (cmd | Command::MEMORY_SPACE | Command::BUS_MASTER | Command::INTX_DISABLE).bits(),
            );
            // SAFETY: BAR0 as firmware programmed it (identity-mapped, uncached MMIO window),
            // memory decoding just enabled; only this bench drives the device.
            let mut device = unsafe { Edu::new(bar0.base) };
            if device.identification() != edu::IDENTIFICATION_VALUE {
                return Err(format!("edu {} does not identify as edu", f.bdf));
            }
            enabled.push((f.bdf, device));
        }
        let mut enabled = enabled.into_iter();
        let (_, assigned_edu) = enabled.next().ok_or("no edu enabled")?;
        let other = enabled.next();

        let mut dma = Iommu::bring_up_machine(
            platform,
            pci,
            &requesters,
            BringUpOptions {
                interrupt_remapping: true,
            },
            frames,
        )?;
        let (ram_base, ram_len) = allocate_guest_ram(frames, GUEST_MIB)?;
        log::info!(
            "vtd-guest self-test: guest RAM {GUEST_MIB} MiB at host {ram_base:#x}, device {} (requester {}, unit {:?})",
            assigned.bdf,
            assigned.requester,
            assigned.unit
        );
        let handle = iommu::prepare_guest_dma(
            Some(dma.get_mut()),
            GUEST,
            (ram_base, ram_len),
            &devices,
            frames,
        )?
        .ok_or("prepare_guest_dma attached nothing")?;
        let apic_id = (!platform.lapic.apic_base_msr.x2apic_enabled())
            .then_some(platform.lapic.bsp_id)
            .and_then(|id| u8::try_from(id).ok());
        Ok(Bench {
            frames,
            dma,
            handle: Some(handle),
            assigned,
            assigned_edu,
            other,
            ram_base,
            ram_len,
            function: (*first).clone(),
            config,
            apic_id,
            interrupts: VmInterrupts::new(InterruptMode::Baseline, &[]),
            nic,
            ioapic: platform.ioapics.first().map(|i| (i.id, i.address)),
        })
    }

    /// The e1000e planned for a second guest, as a configuration would give it; `None` if QEMU
    /// has none.
    fn plan_nic(platform: &Platform, pci: &PciTopology) -> Result<Option<Nic>, String> {
        let Some(f) = pci
            .functions
            .iter()
            .find(|f| (f.vendor_id, f.device_id) == E1000E)
        else {
            return Ok(None);
        };
        let guest = GuestConfig {
            name: String::from(NIC_GUEST),
            image: String::new(),
            linux: None,
            memory_mib: GUEST_MIB,
            interrupts: Default::default(),
            ports: Vec::new(),
            ioapic_pins: Vec::new(),
            expect_stop: None,
            timeout_ms: None,
            pci: vec![f.bdf],
        };
        let plan = assignment::plan(
            core::slice::from_ref(&guest),
            pci,
            &platform.iommus,
            false,
            assignment::IntxRouting::Unknown,
        );
        if let Some(refusal) = plan.refusals.first() {
            // Only `msix-through-irte` needs it: that test then fails, the others run.
            log::warn!("vtd-guest self-test: e1000e assignment refused: {refusal}");
            return Ok(None);
        }
        let device = *plan
            .devices(NIC_GUEST)
            .first()
            .ok_or("the plan gave the NIC guest no device")?;
        let bar0 = f
            .bar(0)
            .filter(|b| !b.kind.is_io() && b.base != 0)
            .ok_or_else(|| format!("e1000e {} has no memory BAR0", f.bdf))?
            .base;
        Ok(Some(Nic {
            function: f.clone(),
            plan: device,
            handle: None,
            bar0,
        }))
    }

    // ---- the tests -------------------------------------------------------------------------

    fn lands_in_guest_ram(&mut self) -> Result<(), String> {
        let handle = self.handle.ok_or("not attached")?;
        let unit = self.assigned.unit.ok_or("no unit")?;
        // The domain's tables as the unit walks them: exactly the guest's RAM.
        let translate = |s: &mut Self, gpa| s.dma.get_mut().translate(handle, unit, gpa, s.frames);
        let checks = [
            (0, Some(self.ram_base)),
            (TARGET_GPA, Some(self.ram_base + TARGET_GPA)),
            (self.ram_len - 1, Some(self.ram_base + self.ram_len - 1)),
            (self.ram_len, None),
        ];
        for (gpa, want) in checks {
            let got = translate(self, gpa);
            if got != want {
                return Err(format!(
                    "domain translates GPA {gpa:#x} to {got:x?}, want {want:x?}"
                ));
            }
        }
        self.expect_no_faults("before the test")?;
        self.load_and_write(1, TARGET_GPA)
    }

    fn unassigned_blocked(&mut self) -> Result<(), String> {
        let Some((bdf, _)) = self.other else {
            return Err("needs a second edu device (-device edu twice)".into());
        };
        let sid = SourceId(bdf.requester_id());
        let unit = self.assigned.unit.unwrap_or_default();
        if let Some(domain) = self.dma.get_mut().context_domain(unit, sid, self.frames) {
            return Err(format!(
                "{bdf} is in domain {domain} though no guest has it"
            ));
        }
        // First an address whose host frame is the guest's (a pass-through would land there),
        // then a GPA of the guest (the guest's domain would send it to ram_base + X).
        let mut addresses = Vec::new();
        let through = self.ram_base + PASS_THROUGH_OFFSET;
        if through + LEN <= edu::DMA_ADDRESS_LIMIT {
            addresses.push((through, PASS_THROUGH_OFFSET));
        }
        addresses.push((TARGET_GPA, TARGET_GPA));
        for (address, watched) in addresses {
            self.fill(watched);
            self.dma_other(address)?;
            let faults = self.dma.get_mut().drain_faults(self.frames);
            self.check(watched, 0, |_| FILLER).map_err(|e| {
                format!("{bdf}'s DMA to {address:#x} reached the guest's RAM at +{watched:#x}: {e}")
            })?;
            let fault = find_dma_fault(&faults, sid, address)?;
            // Appendix A: 0x1 root entry not present, 0x2 context entry not present.
            if !matches!(fault.reason.0, 0x1 | 0x2) {
                return Err(format!(
                    "{fault}: want reason 0x1 or 0x2 (no context entry)"
                ));
            }
        }
        Ok(())
    }

    fn beyond_ram_blocked(&mut self) -> Result<(), String> {
        let beyond = if self.ram_base >= self.ram_len
            && self.ram_base + BEYOND_OFFSET + LEN <= edu::DMA_ADDRESS_LIMIT
        {
            self.ram_base + BEYOND_OFFSET
        } else {
            self.ram_len
        };
        let apic_id = self.apic_id.ok_or("the probe needs xAPIC")?;
        self.load_buffer(2)?;
        self.fill(TARGET_GPA);
        self.fill(BEYOND_OFFSET);
        let probe = install_probe()?;
        self.dma
            .get_mut()
            .route_fault_events(Some((DMA_FAULT_VECTOR, apic_id.into())))?;
        let dma = self.dma_assigned(Direction::ToRam, beyond);
        probe.wait(IRQ_SPINS, || probe.count(DMA_FAULT_VECTOR) > 0);
        let events: Vec<(u8, u32)> = probe.arrivals().collect();
        self.dma.get_mut().route_fault_events(None)?;
        drop(probe);
        dma?;
        // What the runner does when the event arrives.
        let faults = self.dma.get_mut().drain_faults(self.frames);
        if events != [(DMA_FAULT_VECTOR, 1)] {
            return Err(format!(
                "want one fault event on vector {DMA_FAULT_VECTOR:#x}, got {events:?} (vector, count)"
            ));
        }
        self.check(BEYOND_OFFSET, 0, |_| FILLER)
            .map_err(|e| format!("DMA to GPA {beyond:#x} landed in the guest's RAM: {e}"))?;
        self.check(TARGET_GPA, 0, |_| FILLER)
            .map_err(|e| format!("DMA to GPA {beyond:#x} changed GPA {TARGET_GPA:#x}: {e}"))?;
        let fault = find_dma_fault(&faults, self.assigned_sid(), beyond)?;
        let unit = self.assigned.unit.unwrap_or_default();
        let sid = self.assigned_sid();
        if self
            .dma
            .get_mut()
            .context_domain(unit, sid, self.frames)
            .is_some()
        {
            return Err(format!("{fault} but the device was not quarantined"));
        }
        Ok(())
    }

    fn detached_blocked(&mut self) -> Result<(), String> {
        // The quarantine above ended the old attachment: detach it and attach afresh, as the
        // runner does for the next guest.
        if let Some(old) = self.handle.take() {
            self.dma.get_mut().detach_guest(old, self.frames);
        }
        let devices = [self.assigned];
        let handle = iommu::prepare_guest_dma(
            Some(self.dma.get_mut()),
            GUEST,
            (self.ram_base, self.ram_len),
            &devices,
            self.frames,
        )?
        .ok_or("prepare_guest_dma attached nothing")?;
        self.handle = Some(handle);
        self.load_and_write(3, TARGET_GPA)
            .map_err(|e| format!("after attaching again: {e}"))?;
        self.dma.get_mut().detach_guest(handle, self.frames);
        self.handle = None;
        self.fill(TARGET_GPA);
        self.dma_assigned(Direction::ToRam, TARGET_GPA)?;
        let faults = self.dma.get_mut().drain_faults(self.frames);
        self.check(TARGET_GPA, 0, |_| FILLER)
            .map_err(|e| format!("DMA after detach still landed: {e}"))?;
        find_dma_fault(&faults, self.assigned_sid(), TARGET_GPA).map(|_| ())
    }

    fn msi_through_irte(&mut self) -> Result<(), String> {
        let handle = self.attach()?;
        let apic_id = self.apic_id.ok_or(
            "the CPU is in x2APIC mode (or has an APIC ID above 255); the probe needs xAPIC",
        )?;
        let mut bus = VirtualPci::new(vec![assigned_function(&self.function)?]);
        let guest_address = 0xFEE0_0000 | u32::from(apic_id) << 12;
        self.guest_programs_msi(&mut bus, guest_address, MSI_VECTOR, true)?;
        let (address, enabled) = self.hardware_msi()?;
        if address & (1 << 4) == 0 || address == guest_address {
            return Err(format!(
                "the device's MSI address is {address:#x}: want a remappable-format one (bit 4), not the guest's {guest_address:#x}"
            ));
        }
        if !enabled {
            return Err("the device's MSI is not enabled".into());
        }
        let (unit, index, irte) = self
            .dma
            .get_mut()
            .guest_irte(handle, self.function.bdf, self.frames)
            .ok_or("no IRTE for the guest's MSI")?;
        if crate::vtd::irte::interrupt_index(crate::vtd::irte::MsiMessage {
            address: u64::from(address),
            data: 0,
        }) != Some(u32::from(index))
        {
            return Err(format!(
                "the device's address {address:#x} does not select IRTE {index}"
            ));
        }
        if !irte.present() || irte.vector() != MSI_VECTOR {
            return Err(format!(
                "IRTE {index} on unit {unit} is {irte:x?}: want present with vector {MSI_VECTOR:#x}"
            ));
        }
        if !self.interrupts.device_vectors.contains(MSI_VECTOR) {
            return Err("the guest's device vectors lack its MSI vector".into());
        }
        let got = self.raise_edu(|p| p.count(MSI_VECTOR) > 0)?;
        if got != [(MSI_VECTOR, 1)] {
            return Err(format!(
                "want one interrupt on vector {MSI_VECTOR:#x} through IRTE {index}, got {got:?} (vector, count)"
            ));
        }
        Ok(())
    }

    fn msi_disabled_clears_irte(&mut self) -> Result<(), String> {
        let handle = self.attach()?;
        let apic_id = self.apic_id.ok_or("the probe needs xAPIC")?;
        let mut bus = VirtualPci::new(vec![assigned_function(&self.function)?]);
        let guest_address = 0xFEE0_0000 | u32::from(apic_id) << 12;
        self.guest_programs_msi(&mut bus, guest_address, MSI_VECTOR, true)?;
        let (unit, index, _) = self
            .dma
            .get_mut()
            .guest_irte(handle, self.function.bdf, self.frames)
            .ok_or("no IRTE after the guest enabled MSI")?;
        // The guest turns MSI off (Message Control, enable bit clear).
        self.guest_programs_msi(&mut bus, guest_address, MSI_VECTOR, false)?;
        let (_, enabled) = self.hardware_msi()?;
        if enabled {
            return Err("the device's MSI stayed enabled after the guest disabled it".into());
        }
        if self
            .dma
            .get_mut()
            .irte_at(unit, index, self.frames)
            .is_none_or(|e| e.present())
        {
            return Err(format!("IRTE {index} on unit {unit} is still present"));
        }
        if !self.interrupts.device_vectors.is_empty() {
            return Err("the guest's device vectors still hold its MSI vector".into());
        }
        // A device that ignores the disable and signals through the old entry: nothing arrives.
        let cap = self.function.capabilities.msi.ok_or("no MSI capability")?;
        guest_msi::program_device_msi(
            self.config.as_ref(),
            self.function.bdf,
            &cap,
            Some(remappable_msi(index, None)),
        );
        let cleared = self.raise_edu(|_| false)?;
        // Control: the guest enables MSI again and the same wait sees the vector.
        self.guest_programs_msi(&mut bus, guest_address, MSI_VECTOR, true)?;
        let control = self.raise_edu(|p| p.count(MSI_VECTOR) > 0)?;
        self.guest_programs_msi(&mut bus, guest_address, MSI_VECTOR, false)?;
        if !cleared.is_empty() {
            return Err(format!(
                "interrupts arrived through the cleared IRTE {index}: {cleared:?}"
            ));
        }
        if control != [(MSI_VECTOR, 1)] {
            return Err(format!(
                "control after enabling again got {control:?}, want [({MSI_VECTOR:#x}, 1)]"
            ));
        }
        Ok(())
    }

    fn msix_through_irte(&mut self) -> Result<(), String> {
        let apic_id = self.apic_id.ok_or("the probe needs xAPIC")?;
        let nic = self
            .nic
            .as_ref()
            .ok_or("no e1000e (8086:10d3): QEMU q35's default NIC")?;
        let (function, plan) = (nic.function.clone(), nic.plan);
        let cap = function
            .capabilities
            .msix
            .ok_or("the e1000e has no MSI-X capability")?;
        let bdf = function.bdf;
        // The second guest's domain (sharing the first guest's RAM: the NIC does no DMA here).
        let handle = match nic.handle {
            Some(h) => h,
            None => {
                let h = iommu::prepare_guest_dma(
                    Some(self.dma.get_mut()),
                    NIC_GUEST,
                    (self.ram_base, self.ram_len),
                    &[plan],
                    self.frames,
                )?
                .ok_or("prepare_guest_dma attached nothing for the NIC")?;
                if let Some(n) = self.nic.as_mut() {
                    n.handle = Some(h);
                }
                h
            }
        };
        let cmd = Command::from_bits_retain(self.config.read16(bdf, COMMAND));
        self.config.write16(
            bdf,
            COMMAND,
            (cmd | Command::MEMORY_SPACE | Command::BUS_MASTER | Command::INTX_DISABLE).bits(),
        );
        let mut bus = VirtualPci::new(vec![assigned_function(&function)?]);
        let table = bus_table_address(&function)?;
        let guest_address = 0xFEE0_0000 | u32::from(apic_id) << 12;
        // The guest writes entry 0 (address, upper address, data, vector control = unmasked), as
        // its EPT violations on the table page would reach the model.
        for (offset, value) in [
            (0, guest_address),
            (4, 0),
            (8, u32::from(MSIX_VECTOR)),
            (12, 0),
        ] {
            match bus.msix_access(table + offset, 4, Some(u64::from(value))) {
                Some(MsixOutcome::Emulated(_)) => {}
                other => {
                    return Err(format!(
                        "table write at +{offset:#x} before MSI-X Enable gave {other:?}"
                    ))
                }
            }
        }
        if bus.msix_access(table + 8, 4, None)
            != Some(MsixOutcome::Emulated(u64::from(MSIX_VECTOR)))
        {
            return Err("the guest does not read back its own table entry".into());
        }
        self.guest_msix_control(&mut bus, &function, handle, 0x8000)?;
        let mut hw = unsafe_table(table);
        let address = msix_model::MsixTable::read32(&hw, 0);
        let vector_control = msix_model::MsixTable::read32(&hw, 12);
        if address & (1 << 4) == 0 || address == guest_address || vector_control & 1 != 0 {
            return Err(format!(
                "the e1000e's real entry 0 is address {address:#x}, vector control {vector_control:#x}: want a remappable-format address (bit 4), unmasked"
            ));
        }
        if self.config.read16(bdf, cap.offset + 2) & 0xC000 != 0x8000 {
            return Err("the e1000e's MSI-X is not enabled (function unmasked) in hardware".into());
        }
        let (unit, index, irte) = self
            .dma
            .get_mut()
            .guest_msix_irte(handle, bdf, 0, self.frames)
            .ok_or("no IRTE for the guest's MSI-X entry 0")?;
        if !irte.present() || irte.vector() != MSIX_VECTOR {
            return Err(format!(
                "IRTE {index} on unit {unit} is {irte:x?}: want present with vector {MSIX_VECTOR:#x}"
            ));
        }
        if !self.interrupts.device_vectors.contains(MSIX_VECTOR) {
            return Err("the guest's device vectors lack its MSI-X vector".into());
        }
        let got = self.raise_nic(true)?;
        // The guest masks entry 0: real entry masked, IRTE cleared, nothing arrives.
        let masked = match bus.msix_access(table + 12, 4, Some(1)) {
            Some(MsixOutcome::Request(req)) => {
                self.apply_msix(req, &function, handle)?;
                self.raise_nic(false)?
            }
            other => return Err(format!("masking entry 0 gave {other:?}")),
        };
        let still = self.dma.get_mut().irte_at(unit, index, self.frames);
        // Control: the guest unmasks entry 0 again and the same wait sees the vector.
        let control = match bus.msix_access(table + 12, 4, Some(0)) {
            Some(MsixOutcome::Request(req)) => {
                self.apply_msix(req, &function, handle)?;
                self.raise_nic(true)?
            }
            other => return Err(format!("unmasking entry 0 again gave {other:?}")),
        };
        self.guest_msix_control(&mut bus, &function, handle, 0)?;
        // The hardware's MSI-X stays enabled with every entry masked: QEMU 7.2's e1000e asserts when
        // an MSI-X throttling timer fires after MSI-X was turned off (fixed upstream).
        msix_model::mask_all(&mut hw, cap.table_size);
        if got != [(MSIX_VECTOR, 1)] {
            return Err(format!(
                "want one interrupt on vector {MSIX_VECTOR:#x} through IRTE {index}, got {got:?} (vector, count)"
            ));
        }
        if still.is_none_or(|e| e.present()) {
            return Err(format!(
                "IRTE {index} still present after the guest masked entry 0"
            ));
        }
        if !masked.is_empty() {
            return Err(format!(
                "interrupts arrived after the guest masked entry 0: {masked:?}"
            ));
        }
        if control != [(MSIX_VECTOR, 1)] {
            return Err(format!(
                "control after unmasking again got {control:?}, want [({MSIX_VECTOR:#x}, 1)]"
            ));
        }
        Ok(())
    }

    // ---- helpers ---------------------------------------------------------------------------

    /// The guest writes the e1000e's MSI-X Message Control with a configuration-port write; each
    /// entry it turns on or off is applied as the runner applies it.
    fn guest_msix_control(
        &mut self,
        bus: &mut VirtualPci,
        function: &PciFunction,
        handle: DomainHandle,
        control: u16,
    ) -> Result<(), String> {
        let cap = function.capabilities.msix.ok_or("no MSI-X capability")?;
        let bdf = function.bdf;
        let select = 1 << 31
            | u32::from(bdf.bus()) << 16
            | u32::from(bdf.device()) << 11
            | u32::from(bdf.function()) << 8
            | u32::from(cap.offset & 0xFC);
        bus.write(CONFIG_ADDRESS, 4, select, self.config.as_ref());
        bus.write(CONFIG_DATA + 2, 2, u32::from(control), self.config.as_ref());
        for req in bus.take_msix_changes() {
            self.apply_msix(req, function, handle)?;
        }
        Ok(())
    }

    /// What the runner's `route_guest_msix` does with a request, with this CPU as the target.
    fn apply_msix(
        &mut self,
        req: MsixRequest,
        function: &PciFunction,
        handle: DomainHandle,
    ) -> Result<(), String> {
        let apic_id = self.apic_id.ok_or("the probe needs xAPIC")?;
        let plan = self.nic.as_ref().ok_or("no e1000e")?.plan;
        let cpu = HostCpu {
            apic_id: u32::from(apic_id),
            x2apic: false,
        };
        let mut table = unsafe_table(bus_table_address(function)?);
        let route = guest_msi::route_guest_msix(
            &req,
            function,
            Some(&plan),
            Some((self.dma.get_mut(), handle)),
            cpu,
            self.config.as_ref(),
            &mut table,
            self.frames,
        )?;
        if matches!(route, MsiRoute::Compatibility(_)) {
            return Err("the MSI-X entry was programmed in compatibility format".into());
        }
        self.interrupts
            .msix_vector(req.bdf, req.entry, route.guest_vector(&req.as_msi()));
        Ok(())
    }

    /// Raises the e1000e's "other" cause on MSI-X entry 0 and waits (until [`MSIX_VECTOR`] counts
    /// when `expect`, the full bounded wait otherwise); returns every arrival.
    fn raise_nic(&mut self, expect: bool) -> Result<Vec<(u8, u32)>, String> {
        let nic = self.nic.as_ref().ok_or("no e1000e")?;
        let probe = install_probe()?;
        probe.reset();
        nic.write(E1000E_ITR, 0);
        for eitr in E1000E_EITR {
            nic.write(eitr, 0);
        }
        nic.write(E1000E_IVAR, E1000E_IVAR_OTHER_TO_0);
        nic.write(E1000E_IMS, E1000E_OTHER);
        nic.write(E1000E_ICS, E1000E_OTHER);
        probe.wait(IRQ_SPINS, || expect && probe.count(MSIX_VECTOR) > 0);
        nic.write(E1000E_IMC, u32::MAX);
        nic.write(E1000E_ICR, u32::MAX);
        let got = probe.arrivals().collect();
        drop(probe);
        Ok(got)
    }

    fn ioapic_pin_through_irte(&mut self) -> Result<(), String> {
        let apic_id = self.apic_id.ok_or("the probe needs xAPIC")?;
        let (ioapic_id, base) = self.ioapic.ok_or("no IOAPIC in MADT")?;
        // SAFETY: the platform's IOAPIC, identity-mapped; nothing else programs it during the test.
        let ioapic = unsafe { PhysicalIoapic::new(base) };
        self.msi_off();
        let bdf = self.function.bdf;
        let command = Command::from_bits_retain(self.config.read16(bdf, COMMAND));
        self.config
            .write16(bdf, COMMAND, (command - Command::INTX_DISABLE).bits());
        let result = self.pin_rounds(&ioapic, ioapic_id, apic_id);
        for pin in PCI_PINS {
            ioapic.set_entry(pin, PhysicalRouting::MASKED_ENTRY);
        }
        self.dma.get_mut().release_ioapic_pins(self.frames);
        self.config.write16(bdf, COMMAND, command.bits());
        result
    }

    /// Routes every PCI pin, finds the edu's by the vector that arrives, then clears and restores
    /// that pin's IRTE.
    fn pin_rounds(
        &mut self,
        ioapic: &PhysicalIoapic,
        ioapic_id: u8,
        apic_id: u8,
    ) -> Result<(), String> {
        for pin in PCI_PINS.clone() {
            self.route_pin(ioapic, ioapic_id, apic_id, pin)?;
        }
        let routed = self.raise_edu(|p| p.arrivals().next().is_some())?;
        let pin = match routed[..] {
            [(vector, 1)] if (PIN_VECTORS..PIN_VECTORS + 8).contains(&vector) => {
                16 + vector - PIN_VECTORS
            }
            _ => {
                return Err(format!(
                    "want one interrupt on one of vectors {PIN_VECTORS:#x}..{:#x} (GSI 16-23), got {routed:?} (vector, count)",
                    PIN_VECTORS + 7
                ))
            }
        };
        log::info!("vtd-guest self-test: the edu's INTx is on GSI {pin}");
        // The redirection entries stay in remappable format; only the IRTEs go.
        self.dma.get_mut().release_ioapic_pins(self.frames);
        let cleared = self.raise_edu(|_| false)?;
        self.route_pin(ioapic, ioapic_id, apic_id, pin)?;
        let control = self.raise_edu(|p| p.arrivals().next().is_some())?;
        let vector = PIN_VECTORS + pin - 16;
        if !cleared.is_empty() {
            return Err(format!(
                "GSI {pin} delivered through a cleared IRTE: {cleared:?}"
            ));
        }
        if control != [(vector, 1)] {
            return Err(format!(
                "GSI {pin} routed again got {control:?}, want [({vector:#x}, 1)]"
            ));
        }
        Ok(())
    }

    /// Programs `pin` edge-triggered on its own vector, as the runner programs a guest's pin.
    fn route_pin(
        &mut self,
        ioapic: &PhysicalIoapic,
        ioapic_id: u8,
        apic_id: u8,
        pin: u8,
    ) -> Result<(), String> {
        let routing = PhysicalRouting {
            pin,
            vector: PIN_VECTORS + pin - 16,
            masked: false,
            level: false,
            active_low: false,
        };
        let cpu = HostCpu {
            apic_id: u32::from(apic_id),
            x2apic: false,
        };
        let dma = Some(self.dma.get_mut());
        let entry = guest_pins::physical_entry(dma, ioapic_id, routing, cpu, self.frames)?;
        if entry & 1 << 48 == 0 {
            return Err(format!(
                "GSI {pin}'s entry {entry:#x} is in compatibility format: no IRTE"
            ));
        }
        ioapic.set_entry(pin, entry);
        Ok(())
    }

    /// The guest's domain, attaching it again (as for a new guest) if an earlier test detached it.
    fn attach(&mut self) -> Result<DomainHandle, String> {
        if let Some(handle) = self.handle {
            return Ok(handle);
        }
        let devices = [self.assigned];
        let handle = iommu::prepare_guest_dma(
            Some(self.dma.get_mut()),
            GUEST,
            (self.ram_base, self.ram_len),
            &devices,
            self.frames,
        )?
        .ok_or("prepare_guest_dma attached nothing")?;
        self.handle = Some(handle);
        Ok(handle)
    }

    /// The guest programs its MSI capability as Linux does (address, upper address, data, then
    /// Message Control) with configuration-port writes; every change it makes is applied as the
    /// runner applies it after an I/O exit.
    fn guest_programs_msi(
        &mut self,
        bus: &mut VirtualPci,
        address: u32,
        vector: u8,
        enable: bool,
    ) -> Result<(), String> {
        let cap = self.function.capabilities.msi.ok_or("no MSI capability")?;
        let mut writes = vec![(cap.offset + 4, 4u8, address)];
        if cap.is_64bit {
            writes.push((cap.offset + 8, 4, 0));
        }
        writes.push((cap.message_data_offset(), 2, u32::from(vector)));
        writes.push((cap.offset + 2, 2, u32::from(enable)));
        for (offset, size, value) in writes {
            let bdf = self.function.bdf;
            let select = 1 << 31
                | u32::from(bdf.bus()) << 16
                | u32::from(bdf.device()) << 11
                | u32::from(bdf.function()) << 8
                | u32::from(offset & 0xFC);
            bus.write(CONFIG_ADDRESS, 4, select, self.config.as_ref());
            bus.write(
                CONFIG_DATA + (offset & 3),
                size,
                value,
                self.config.as_ref(),
            );
            if let Some(req) = bus.take_msi_change() {
                self.apply(req)?;
            }
        }
        Ok(())
    }

    /// What the runner's `route_guest_msi` does with a request, with this CPU as the target.
    fn apply(&mut self, req: MsiRequest) -> Result<(), String> {
        let apic_id = self.apic_id.ok_or("the probe needs xAPIC")?;
        let cpu = HostCpu {
            apic_id: u32::from(apic_id),
            x2apic: false,
        };
        let dma = self.handle.map(|h| (self.dma.get_mut(), h));
        let route = guest_msi::route_guest_msi(
            &req,
            &self.function,
            Some(&self.assigned),
            dma,
            cpu,
            self.config.as_ref(),
            self.frames,
        )?;
        if matches!(route, MsiRoute::Compatibility(_)) {
            return Err("the MSI was programmed in compatibility format, not remapped".into());
        }
        self.interrupts
            .msi_vector(req.bdf, route.guest_vector(&req));
        Ok(())
    }

    /// The device's real MSI address (low dword) and enable bit.
    fn hardware_msi(&self) -> Result<(u32, bool), String> {
        let cap = self.function.capabilities.msi.ok_or("no MSI capability")?;
        let bdf = self.function.bdf;
        let address = self.config.read32(bdf, cap.offset + 4);
        let enabled = self.config.read16(bdf, cap.offset + 2) & 1 != 0;
        Ok((address, enabled))
    }

    /// Raises the assigned edu's interrupt (its MSI, or INTx while MSI is off) and waits with
    /// interrupts on until `arrived` holds or the bounded wait ends (`|_| false`: the full wait, for
    /// an interrupt that must not come); acknowledges it in the device and returns every arrival.
    fn raise_edu(&mut self, arrived: impl Fn(&IrqProbe) -> bool) -> Result<Vec<(u8, u32)>, String> {
        let probe = install_probe()?;
        probe.reset();
        self.assigned_edu.raise(RAISE_BITS);
        probe.wait(IRQ_SPINS, || arrived(&probe));
        self.assigned_edu.acknowledge(RAISE_BITS);
        let got = probe.arrivals().collect();
        drop(probe);
        Ok(got)
    }

    /// Leaves the edu's MSI off (the machine powers off next).
    fn msi_off(&mut self) {
        if let Some(cap) = self.function.capabilities.msi {
            guest_msi::program_device_msi(self.config.as_ref(), self.function.bdf, &cap, None);
        }
    }

    fn assigned_sid(&self) -> SourceId {
        SourceId(self.assigned.requester.requester_id())
    }

    /// Loads pattern `seed` into the assigned edu's buffer from `SOURCE_GPA`, writes it to `gpa`
    /// and checks it arrived at `ram_base + gpa`, with no fault on the way.
    fn load_and_write(&mut self, seed: u64, gpa: u64) -> Result<(), String> {
        self.load_buffer(seed)?;
        self.fill(gpa);
        self.dma_assigned(Direction::ToRam, gpa)?;
        self.expect_no_faults("DMA to a GPA inside the guest's RAM")?;
        self.check(gpa, WORDS, |i| pattern(seed, i)).map_err(|e| {
            format!(
                "GPA {gpa:#x} should land at host {:#x}: {e}",
                self.ram_base + gpa
            )
        })
    }

    fn load_buffer(&mut self, seed: u64) -> Result<(), String> {
        let words = self.frames.table_mut(self.ram_base + SOURCE_GPA);
        for (i, w) in words.iter_mut().enumerate() {
            // SAFETY: aligned write of the guest RAM this test owns; the device reads it by DMA.
            unsafe { core::ptr::write_volatile(w, pattern(seed, i)) };
        }
        self.dma_assigned(Direction::FromRam, SOURCE_GPA)?;
        self.expect_no_faults("loading the edu buffer from a GPA inside the guest's RAM")
    }

    fn expect_no_faults(&mut self, when: &str) -> Result<(), String> {
        let faults: Vec<Fault> = self.dma.get_mut().drain_faults(self.frames);
        match faults.first() {
            None => Ok(()),
            Some(f) => Err(format!("{when}: unexpected {f}")),
        }
    }

    /// Fills the guest RAM frame at `offset` with FILLER.
    fn fill(&mut self, offset: u64) {
        let words = self.frames.table_mut(self.ram_base + offset);
        for w in words.iter_mut() {
            // SAFETY: aligned write of memory we own; volatile because a device may write it by DMA.
            unsafe { core::ptr::write_volatile(w, FILLER) };
        }
        compiler_fence(Ordering::SeqCst);
    }

    /// Checks the guest RAM frame at `offset`: `expected(i)` in the first `words` words, FILLER after.
    fn check(
        &mut self,
        offset: u64,
        words: usize,
        expected: impl Fn(usize) -> u64,
    ) -> Result<(), String> {
        compiler_fence(Ordering::SeqCst);
        let table = self.frames.table_mut(self.ram_base + offset);
        for (i, w) in table.iter().enumerate() {
            // SAFETY: a plain aligned read of memory we own; volatile because DMA wrote it.
            let actual = unsafe { core::ptr::read_volatile(w) };
            let want = if i < words { expected(i) } else { FILLER };
            if actual != want {
                return Err(format!("word {i} is {actual:#x}, want {want:#x}"));
            }
        }
        Ok(())
    }

    fn dma_assigned(&mut self, direction: Direction, address: u64) -> Result<(), String> {
        let bdf = self.assigned.bdf;
        transfer(&mut self.assigned_edu, bdf, direction, address)
    }

    fn dma_other(&mut self, address: u64) -> Result<(), String> {
        let (bdf, edu) = self.other.as_mut().ok_or("no second edu")?;
        transfer(edu, *bdf, Direction::ToRam, address)
    }
}

fn transfer(edu: &mut Edu, bdf: Bdf, direction: Direction, address: u64) -> Result<(), String> {
    let request = DmaRequest::new(direction, address, 0, LEN, false).map_err(|e| format!("{e}"))?;
    compiler_fence(Ordering::SeqCst);
    edu.transfer(&request, DMA_POLLS)
        .map_err(|e| format!("edu {bdf}: {e}"))?;
    compiler_fence(Ordering::SeqCst);
    Ok(())
}

/// Host-physical address of `function`'s MSI-X table.
fn bus_table_address(function: &PciFunction) -> Result<u64, String> {
    let cap = function.capabilities.msix.ok_or("no MSI-X capability")?;
    let bar = function
        .bar(cap.table.bir)
        .filter(|b| !b.kind.is_io() && b.base != 0)
        .ok_or("the MSI-X table's BAR is not a memory BAR")?;
    Ok(bar.base + u64::from(cap.table.offset))
}

fn unsafe_table(address: u64) -> PhysicalMsixTable {
    // SAFETY: the e1000e's MSI-X table in its memory BAR (identity-mapped, memory decoding on);
    // only this bench drives the device.
    unsafe { PhysicalMsixTable::new(address) }
}

/// Configuration access for `bdf`'s segment and bus: its ECAM window, else ports 0xCF8/0xCFC.
fn config_access(platform: &Platform, bdf: Bdf) -> Box<dyn ConfigAccess> {
    match platform
        .mcfg
        .iter()
        .find(|r| r.segment == bdf.segment() && (r.bus_start..=r.bus_end).contains(&bdf.bus()))
    {
        // SAFETY: the ECAM window comes from MCFG and is identity-mapped; during the self-test
        // nothing else uses configuration space.
        Some(r) => Box::new(unsafe { Ecam::new(r.base, r.segment, r.bus_start, r.bus_end) }),
        // SAFETY: ports 0xCF8/0xCFC, used by nothing else during the self-test.
        None => Box::new(unsafe { LegacyPorts::new() }),
    }
}
