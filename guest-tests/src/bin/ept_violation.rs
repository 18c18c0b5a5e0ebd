//! Touches guest-physical memory the guest does not own. Under Exitless the hypervisor must stop this
//! guest (EPT violation) and run on; xtask checks the stop reason and that the next guest still runs.
#![no_std]
#![no_main]

use guest_tests::{suite::Suite, Env, Mode};

guest_tests::entry!(main);

/// Inside the guest's identity-mapped 4 GiB but far above its RAM: no EPT mapping.
const NOT_GUEST_MEMORY: u64 = 0x8000_0000;

/// Under Exitless this guest prints no suite: it cannot finish one. The hypervisor's `guests` suite says
/// whether it was stopped for the expected reason (`expect_stop` in its configuration).
fn main(env: &Env) -> u32 {
    if env.mode != Mode::Exitless {
        let mut suite = Suite::begin("ept-violation");
        suite.skip(
            "stopped-by-hypervisor",
            "bare metal: there is no EPT to violate",
        );
        return suite.end();
    }
    guest_tests::println!(
        "guest: reading guest-physical {NOT_GUEST_MEMORY:#x}; the hypervisor should stop me"
    );
    // SAFETY: deliberately reads memory this guest does not own; the hypervisor stops us here.
    let value = unsafe { core::ptr::read_volatile(NOT_GUEST_MEMORY as *const u64) };
    guest_tests::println!("guest: the read returned {value:#x}: no EPT violation stopped me");
    1
}
