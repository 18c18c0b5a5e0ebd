//! A guest that loads an IDT with limit 0 and raises an exception: #UD cannot be delivered (#GP),
//! nor can the #GP (#DF), nor the #DF: a triple fault (SDM Vol. 3A 6.15, Table 6-5). On bare metal
//! the machine shuts down; under Exitless the guest must be stopped with "triple fault" while the
//! host and the next guests run on (the configuration expects exactly that stop).
#![no_std]
#![no_main]

use guest_tests::{println, Env};
use x86_64::instructions::tables::{lidt, DescriptorTablePointer};

guest_tests::entry!(main);

fn main(_env: &Env) -> u32 {
    println!("guest: loading an IDT with limit 0, then UD2");
    let empty = DescriptorTablePointer {
        limit: 0,
        base: x86_64::VirtAddr::new(0),
    };
    // SAFETY: deliberately leaves the guest without a usable IDT; it is never used again.
    unsafe {
        lidt(&empty);
        core::arch::asm!("ud2", options(noreturn));
    }
}
