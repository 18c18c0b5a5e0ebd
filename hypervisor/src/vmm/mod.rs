//! The virtual-machine monitor: guests built from the configuration, run on VT-x.

pub mod guest_layout;
