//! A guest whose IDT points at a page that is not its RAM (where the hypervisor's shadow IDT used to
//! be), then takes an exception: its event delivery reads memory it does not have, so it is stopped
//! (an EPT violation), as a bare-metal kernel with a bad IDT dies of its own fault; the host runs on.
#![no_std]
#![no_main]

guest_tests::entry!(main);

fn main(_: &guest_tests::Env) -> u32 {
    let bogus = x86_64::structures::DescriptorTablePointer {
        limit: 0xFFF,
        base: x86_64::VirtAddr::new(0xFEB0_0000),
    };
    guest_tests::println!("guest: IDT at 0xfeb00000 (not RAM), then INT3");
    // SAFETY: the point of this guest; it is stopped at the INT3.
    unsafe {
        x86_64::instructions::tables::lidt(&bogus);
        core::arch::asm!("int3", options(nomem, nostack));
    }
    guest_tests::println!("guest: survived an exception through a non-RAM IDT");
    1
}
