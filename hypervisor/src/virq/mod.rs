//! Virtual interrupt controllers a guest sees: its local APIC in x2APIC mode and a mediated IOAPIC
//! whose assigned pins are mirrored onto the physical IOAPIC (the MSR exit policy, ELI's EOI
//! passthrough included, is `vmx::msr_policy`). Pure state machines: the exit handlers feed them
//! accesses and act on what they return (inject #GP, program a physical redirection entry, refuse
//! an IPI, forward an EOI). With APICv, the virtual-APIC page ([`virtual_apic`]) holds the
//! vCPU's TPR, ISR and IRR, which the CPU then keeps.

pub mod ioapic;
pub mod vector_set;
pub mod virtual_apic;
pub mod x2apic;
