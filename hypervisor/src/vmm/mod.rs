//! The virtual-machine monitor: guests built from the configuration, run on VT-x.

pub mod assignment;
pub mod controls;
pub mod cpuid;
pub mod dma_domains;
pub mod events;
pub mod exits;
pub mod guest_events;
pub mod guest_layout;
pub mod guest_memory;
pub mod guest_msi;
pub mod guest_platform;
pub mod host_clock;
pub mod interrupts;
pub mod irq_exits;
pub mod legacy_ports;
pub mod machine;
pub mod mmio_decode;
pub mod msi_request;
pub mod msix;
pub mod runner;
pub mod uart16550;
pub mod validate;
pub mod vcpu;
pub mod virtual_pci;
pub mod vmcs_setup;
