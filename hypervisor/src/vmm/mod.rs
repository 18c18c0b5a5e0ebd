//! The virtual-machine monitor: guests built from the configuration, run on VT-x.

pub mod controls;
pub mod guest_layout;
pub mod vmcs_setup;
