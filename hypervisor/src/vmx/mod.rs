//! VT-x: the host-testable building blocks of the VMX layer. VMCS fields typed by width and
//! access, VMREAD/VMWRITE behind a backend trait, exit decoding, EPT, MSR and I/O bitmaps,
//! and the policy the MSR bitmap is built from.

pub mod ept;
pub mod exit;
pub mod io_bitmap;
pub mod msr_bitmap;
pub mod msr_policy;
pub mod vmcs;
pub mod vmcs_fields;
