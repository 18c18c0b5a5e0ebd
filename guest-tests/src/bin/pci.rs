//! A guest with one PCI function assigned: it must see only that function on its bus (configuration
//! mechanism #1, ports 0xCF8/0xCFC), size its BARs as on bare metal, be unable to set Command bits
//! or read the expansion ROM, and reach the function's I/O BAR without exits.
#![no_std]
#![no_main]

use guest_tests::pci;
use guest_tests::{hypervisor, suite::Suite, Env, Mode};
use x86_64::instructions::port::Port;

guest_tests::entry!(main);

const EXIT_IO_INSTRUCTION: usize = 30;

fn main(env: &Env) -> u32 {
    let mut suite = Suite::begin("pci");
    if env.mode != Mode::Exitless {
        for name in [
            "only-assigned-visible",
            "bar-sizing",
            "command-masked",
            "rom-hidden",
            "io-bar-no-exit",
        ] {
            suite.skip(name, "bare metal: the whole bus is visible");
        }
        return suite.end();
    }
    // Look everywhere on bus 0 (not only function 0 of each device: the assigned function may be one
    // of several functions of its device).
    let mut found = None;
    let mut visible = 0;
    for function in pci::bus0() {
        visible += 1;
        found = Some(function);
    }
    guest_tests::println!("guest: {visible} function(s) visible, last {found:x?}");
    let Some(f) = found.filter(|_| visible == 1) else {
        suite.check(
            "only-assigned-visible",
            Err("not exactly one function visible"),
        );
        return suite.end();
    };
    suite.check("only-assigned-visible", Ok(()));

    // The first implemented BAR: read it, size it, restore it.
    let Some(bar_offset) = (0x10..0x28u8).step_by(4).find(|&o| f.read(o) != 0) else {
        suite.check("bar-sizing", Err("no BAR"));
        return suite.end();
    };
    let bar = f.read(bar_offset);
    f.write(bar_offset, u32::MAX);
    let mask = f.read(bar_offset);
    f.write(bar_offset, bar);
    let restored = f.read(bar_offset);
    let is_io = bar & 1 == 1;
    let size = if is_io {
        (!(mask & !0b11)).wrapping_add(1) & 0xFFFF
    } else {
        (!(mask & !0xF)).wrapping_add(1)
    };
    guest_tests::println!(
        "guest: BAR at {bar_offset:#x} = {bar:#x}, size mask {mask:#x} ({size} bytes)"
    );
    suite.check(
        "bar-sizing",
        (mask != bar && mask & 1 == bar & 1 && size.is_power_of_two() && restored == bar)
            .then_some(())
            .ok_or("BAR sizing did not behave like hardware"),
    );

    // Command: try to set SERR# enable (bit 8) and Fast back-to-back (bit 9): not the guest's to set.
    let command = f.read(0x04);
    f.write(0x04, (command & 0xFFFF) | 0x0300);
    let after = f.read(0x04) & 0xFFFF;
    f.write(0x04, command & 0xFFFF);
    suite.check(
        "command-masked",
        (after & 0x0300 == 0)
            .then_some(())
            .ok_or("Command bits 8/9 were set"),
    );
    suite.check(
        "rom-hidden",
        (f.read(0x30) == 0)
            .then_some(())
            .ok_or("the expansion ROM BAR is visible"),
    );

    if is_io {
        let port = (bar & !0b11) as u16;
        let before = hypervisor::exit_counters(env);
        // SAFETY: a status register of the guest's own device.
        let value = unsafe { Port::<u16>::new(port + 2).read() };
        let after = hypervisor::exit_counters(env);
        guest_tests::println!("guest: I/O BAR port {:#x}: {value:#x}", port + 2);
        suite.check(
            "io-bar-no-exit",
            (after[EXIT_IO_INSTRUCTION] == before[EXIT_IO_INSTRUCTION])
                .then_some(())
                .ok_or("the assigned I/O BAR exits"),
        );
    } else {
        suite.skip("io-bar-no-exit", "the function has no I/O BAR first");
    }
    suite.end()
}
