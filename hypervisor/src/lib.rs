//! Exitless hypervisor library: everything that knows hardware, written so that it can be
//! unit-tested on the host with plain `cargo test`. The kernel binary (`main.rs`) wires it to
//! the real machine; `unsafe` and assembly stay in `arch/`.
#![cfg_attr(not(test), no_std)]

extern crate alloc;
