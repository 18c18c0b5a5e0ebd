//! One virtual machine's state: what all of its vCPUs share (guest RAM and how it is laid out, EPT,
//! the I/O bitmaps, the emulated IOAPIC, the virtual PCI bus with the assigned functions, COM1 and
//! the legacy ports, the DMA domain, the platform its ACPI tables describe). A vCPU's own state is
//! `vcpu::Vcpu`; exit handlers get both.

use super::guest_acpi::GuestPlatformDescription;
use super::guest_memory::RamLayout;
use super::interrupts::VmInterrupts;
use super::legacy_ports::LegacyPorts;
use super::uart16550::Uart16550;
use super::virtual_pci::VirtualPci;
use crate::iommu::DomainHandle;
use crate::vmx::ept::Ept;
use alloc::string::String;

/// A guest's RAM: one contiguous block of host memory, and where its pieces appear in
/// guest-physical space.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestRam {
    /// Host-physical address of the block (identity-mapped in the host).
    pub host_base: u64,
    pub len: u64,
    pub layout: RamLayout,
}

/// One VM.
#[derive(Debug)]
pub struct Vm {
    pub name: String,
    pub ram: GuestRam,
    /// The guest's EPT, which every vCPU's VMCS points at for as long as the VM runs.
    pub ept: Ept,
    /// The I/O bitmaps' frames (A: ports 0-0x7FFF, B: the rest), shared by the vCPUs' VMCSs.
    pub io_bitmaps: [u64; 2],
    /// What a Linux guest's ACPI tables describe (`None` for a test-guest image).
    pub platform: Option<GuestPlatformDescription>,
    /// The VT-d domain its assigned devices DMA through, once attached.
    pub dma_domain: Option<DomainHandle>,
    /// The run budget in TSC ticks (`timeout_ms`).
    pub timeout_tsc: Option<u64>,
    /// The mediated IOAPIC and the device vectors.
    pub interrupts: VmInterrupts,
    /// The PCI bus the guest sees (its assigned functions).
    pub pci: VirtualPci,
    /// COM1.
    pub console: Uart16550,
    /// The legacy PC ports (absent devices, ACPI sleep and reset).
    pub legacy: LegacyPorts,
    /// The guest has an IOAPIC (pins, or a described platform): its MMIO window is emulated.
    pub has_ioapic: bool,
    /// The guest has a PCI bus (functions, or a host bridge its ACPI tables describe): 0xCF8/0xCFC
    /// answer as configuration mechanism #1, an empty slot reading all ones.
    pub has_pci_bus: bool,
}

impl Vm {
    /// A VM with `ram` and `ept` and nothing else yet: no devices, no IOAPIC, no PCI bus.
    pub fn new(name: &str, ram: GuestRam, ept: Ept) -> Self {
        Vm {
            name: String::from(name),
            ram,
            ept,
            io_bitmaps: [0; 2],
            platform: None,
            dma_domain: None,
            timeout_tsc: None,
            interrupts: VmInterrupts::default(),
            pci: VirtualPci::default(),
            console: Uart16550::default(),
            legacy: LegacyPorts::default(),
            has_ioapic: false,
            has_pci_bus: false,
        }
    }

    /// A VM for handler tests: 2 MiB of linear RAM at host 0, an empty EPT.
    #[cfg(test)]
    pub fn for_tests() -> Self {
        let mut frames = crate::memory::test_frames::TestFrames::default();
        let ram = GuestRam {
            host_base: 0,
            len: 2 << 20,
            layout: RamLayout::LINEAR,
        };
        Vm::new("test", ram, Ept::new(&mut frames).unwrap())
    }
}
