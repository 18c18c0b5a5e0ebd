//! A guest with one PCI function assigned: it must see only that function on its bus (configuration
//! mechanism #1, ports 0xCF8/0xCFC), size its BARs as on bare metal, be unable to set Command bits
//! or read the expansion ROM, and reach the function's I/O BAR without exits.
#![no_std]
#![no_main]

use guest_tests::{hypervisor, suite::Suite, Env, Mode};
use x86_64::instructions::port::Port;

guest_tests::entry!(main);

const EXIT_IO_INSTRUCTION: usize = 30;

fn config_read(bus: u8, device: u8, function: u8, offset: u8) -> u32 {
    let address = 1 << 31
        | u32::from(bus) << 16
        | u32::from(device) << 11
        | u32::from(function) << 8
        | u32::from(offset & 0xFC);
    // SAFETY: configuration mechanism #1.
    unsafe {
        Port::<u32>::new(0xCF8).write(address);
        Port::<u32>::new(0xCFC).read()
    }
}

fn config_write(bus: u8, device: u8, function: u8, offset: u8, value: u32) {
    let address = 1 << 31
        | u32::from(bus) << 16
        | u32::from(device) << 11
        | u32::from(function) << 8
        | u32::from(offset & 0xFC);
    // SAFETY: configuration mechanism #1.
    unsafe {
        Port::<u32>::new(0xCF8).write(address);
        Port::<u32>::new(0xCFC).write(value);
    }
}

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
    for device in 0..32u8 {
        for function in 0..8u8 {
            let id = config_read(0, device, function, 0);
            if id != u32::MAX {
                visible += 1;
                found = Some((device, function, id));
            }
        }
    }
    guest_tests::println!("guest: {visible} function(s) visible, last {found:x?}");
    let Some((dev, func, _id)) = found.filter(|_| visible == 1) else {
        suite.check(
            "only-assigned-visible",
            Err("not exactly one function visible"),
        );
        return suite.end();
    };
    suite.check("only-assigned-visible", Ok(()));

    // The first implemented BAR: read it, size it, restore it.
    let Some(bar_offset) = (0x10..0x28u8)
        .step_by(4)
        .find(|&o| config_read(0, dev, func, o) != 0)
    else {
        suite.check("bar-sizing", Err("no BAR"));
        return suite.end();
    };
    let bar = config_read(0, dev, func, bar_offset);
    config_write(0, dev, func, bar_offset, u32::MAX);
    let mask = config_read(0, dev, func, bar_offset);
    config_write(0, dev, func, bar_offset, bar);
    let restored = config_read(0, dev, func, bar_offset);
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
    let command = config_read(0, dev, func, 0x04);
    config_write(0, dev, func, 0x04, (command & 0xFFFF) | 0x0300);
    let after = config_read(0, dev, func, 0x04) & 0xFFFF;
    config_write(0, dev, func, 0x04, command & 0xFFFF);
    suite.check(
        "command-masked",
        (after & 0x0300 == 0)
            .then_some(())
            .ok_or("Command bits 8/9 were set"),
    );
    suite.check(
        "rom-hidden",
        (config_read(0, dev, func, 0x30) == 0)
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
