//! The legacy PC ports a Linux guest probes, answered from one table: most as absent hardware
//! answers (the ISA bus floats to all ones, writes go nowhere), a few emulated because Linux 6.1
//! needs them: the ACPI sleep and reset registers of `guest_platform`, the keyboard controller's
//! reset command, and a stopped CMOS clock. Byte-wide: the exit handler splits wider accesses.

use super::guest_platform::{
    RESET_PORT, RESET_VALUE, S5_SLEEP_TYPE, SLEEP_CONTROL_PORT, SLEEP_CONTROL_SLP_EN,
    SLEEP_STATUS_PORT,
};

/// What sits at a legacy port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LegacyDevice {
    /// 8259A master and slave: absent, so Linux's `probe_8259A` reads back 0xFF instead of its
    /// mask and picks the null PIC (arch/x86/kernel/i8259.c).
    Pic,
    /// The edge/level control registers that go with the PICs: absent.
    Elcr,
    /// The 8254 PIT: absent (the guest has the TSC and its LAPIC timer; CPUID 0x15 spares Linux
    /// the PIT calibration).
    Pit,
    /// Port 0x61, NMI status and PIT gate 2: absent. All ones also ends any wait on the gate-2
    /// output (bit 5), should a PIT calibration loop run after all.
    SystemControl,
    /// MC146818 index (0x70) and data (0x71): a clock stopped at 2000-01-01 00:00:00. The FADT
    /// says there is no CMOS RTC, so no RTC driver binds, but Linux still reads the wall clock
    /// here at boot (`mach_get_cmos_time`): all ones would hold update-in-progress for its full
    /// one-second timeout (6.1.y `mc146818_avoid_UIP`) or trip a WARN (6.1.0's VRT check).
    Rtc,
    /// i8042 data (0x60) and command/status (0x64): absent. Status 0xFF keeps OBF set, so
    /// `i8042_flush` gives up and reports no controller; the FADT's IAPC_BOOT_ARCH says the same.
    /// Command 0xFE (pulse the reset line) is Linux's `BOOT_KBD` reboot: the guest ends.
    Keyboard,
    /// POST code (0x80) and Linux's alternative I/O delay port (0xED): writes go nowhere.
    Delay,
    /// COM2-COM4: absent unless a guest's `ports =` passes them through (then they never exit).
    OtherSerial,
    /// VGA and MDA registers: absent (the guest has no display).
    Vga,
    /// ACPI hardware-reduced sleep control (ACPI 4.8.3.7): SLP_EN with SLP_TYP = S5 powers off.
    SleepControl,
    /// ACPI sleep status: WAK_STS (bit 7) always set, so a wake is never waited for.
    SleepStatus,
    /// FADT RESET_REG (ACPI 4.8.3.6): [`RESET_VALUE`] resets the guest, which ends it.
    Reset,
}

/// Port ranges (inclusive) and their devices.
const PORTS: &[(u16, u16, LegacyDevice)] = &[
    (0x20, 0x21, LegacyDevice::Pic),
    (0xA0, 0xA1, LegacyDevice::Pic),
    (0x4D0, 0x4D1, LegacyDevice::Elcr),
    (0x40, 0x43, LegacyDevice::Pit),
    (0x61, 0x61, LegacyDevice::SystemControl),
    (0x70, 0x71, LegacyDevice::Rtc),
    (0x60, 0x60, LegacyDevice::Keyboard),
    (0x64, 0x64, LegacyDevice::Keyboard),
    (0x80, 0x80, LegacyDevice::Delay),
    (0xED, 0xED, LegacyDevice::Delay),
    (0x2F8, 0x2FF, LegacyDevice::OtherSerial),
    (0x3E8, 0x3EF, LegacyDevice::OtherSerial),
    (0x2E8, 0x2EF, LegacyDevice::OtherSerial),
    (0x3B0, 0x3DF, LegacyDevice::Vga),
    (
        SLEEP_CONTROL_PORT,
        SLEEP_CONTROL_PORT,
        LegacyDevice::SleepControl,
    ),
    (
        SLEEP_STATUS_PORT,
        SLEEP_STATUS_PORT,
        LegacyDevice::SleepStatus,
    ),
    (RESET_PORT, RESET_PORT, LegacyDevice::Reset),
];

/// The device at `port`, if the table has one.
pub fn device(port: u16) -> Option<LegacyDevice> {
    PORTS
        .iter()
        .find(|&&(first, last, _)| (first..=last).contains(&port))
        .map(|&(_, _, device)| device)
}

/// What an absent device reads as.
const FLOATING: u8 = 0xFF;
const KEYBOARD_STATUS_PORT: u16 = 0x64;
const KEYBOARD_PULSE_RESET: u8 = 0xFE;
const RTC_INDEX_PORT: u16 = 0x70;
/// ACPI PM1 status bit 15, WAK_STS, in the byte-wide sleep status register's bit 7.
const SLEEP_STATUS_WAK_STS: u8 = 0x80;
const SLEEP_TYPE_SHIFT: u8 = 2;
const SLEEP_TYPE_MASK: u8 = 0b111;

/// The report of a guest that reset itself through the ACPI reset register.
pub const ACPI_RESET: &str = "the guest reset itself (ACPI reset register)";
/// The report of a guest that reset itself through the keyboard controller.
pub const KEYBOARD_RESET: &str =
    "the guest reset itself (keyboard-controller reset: 0xFE to port 0x64)";

/// A write that ends the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestRequest {
    /// ACPI S5: the guest powered itself off (a clean end, like the power-off hypercall with 0).
    PowerOff,
    /// The guest reset itself, which ends it (it cannot be reset in place); the report.
    Reset(&'static str),
}

/// The legacy ports' state: only the RTC's index register has any.
#[derive(Clone, Debug, Default)]
pub struct LegacyPorts {
    rtc_index: u8,
}

impl LegacyPorts {
    /// A guest byte read of `port`; ports outside the table float too.
    pub fn read(&mut self, port: u16) -> u8 {
        match device(port) {
            Some(LegacyDevice::Rtc) if port != RTC_INDEX_PORT => stopped_rtc(self.rtc_index),
            Some(LegacyDevice::SleepStatus) => SLEEP_STATUS_WAK_STS,
            // Write-only registers: SLP_EN reads 0 (ACPI 4.8.3.7); nothing to read at the reset
            // register.
            Some(LegacyDevice::SleepControl | LegacyDevice::Reset) => 0,
            _ => FLOATING,
        }
    }

    /// A guest byte write of `value` to `port`; `Some` if it ends the guest.
    pub fn write(&mut self, port: u16, value: u8) -> Option<GuestRequest> {
        match device(port)? {
            // Bit 7 masks NMIs (nothing to mask here); 6:0 select the register.
            LegacyDevice::Rtc if port == RTC_INDEX_PORT => self.rtc_index = value & 0x7F,
            LegacyDevice::Keyboard
                if port == KEYBOARD_STATUS_PORT && value == KEYBOARD_PULSE_RESET =>
            {
                return Some(GuestRequest::Reset(KEYBOARD_RESET));
            }
            LegacyDevice::SleepControl if value & SLEEP_CONTROL_SLP_EN != 0 => {
                let sleep_type = (value >> SLEEP_TYPE_SHIFT) & SLEEP_TYPE_MASK;
                if sleep_type == S5_SLEEP_TYPE {
                    log::info!("guest entered ACPI S5 (soft off)");
                    return Some(GuestRequest::PowerOff);
                }
                log::warn!(
                    "guest asked for ACPI sleep type {sleep_type}: only S5 is supported; ignored"
                );
            }
            LegacyDevice::Reset if value == RESET_VALUE => {
                return Some(GuestRequest::Reset(ACPI_RESET));
            }
            _ => {}
        }
        None
    }
}

/// The clock's registers (MC146818 datasheet): BCD, 24-hour, update never in progress, valid.
fn stopped_rtc(index: u8) -> u8 {
    match index {
        // Day of week (Saturday), day of month, month: 2000-01-01; seconds, minutes, hours and
        // year (00) read 0.
        0x06 => 0x07,
        0x07 | 0x08 => 0x01,
        // Register A: UIP clear, 32.768 kHz time base, 1024 Hz rate.
        0x0A => 0x26,
        // Register B: 24-hour, BCD, no interrupts.
        0x0B => 0x02,
        // Register D: VRT, the clock's RAM and time are valid.
        0x0D => 0x80,
        // Century (the ACPI FADT century field's usual index): 20.
        0x32 => 0x20,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absent_devices_float_and_ignore_writes() {
        let mut ports = LegacyPorts::default();
        for port in [
            0x20, 0x21, 0xA0, 0xA1, 0x4D0, 0x4D1, 0x40, 0x43, 0x61, 0x60, 0x64, 0x80, 0xED, 0x2F8,
            0x3EF, 0x2E8, 0x3C0, 0x3D5, 0x2E0,
        ] {
            assert_eq!(ports.write(port, 0x5A), None, "{port:#x}");
            assert_eq!(ports.read(port), 0xFF, "{port:#x}");
        }
        assert_eq!(device(0x2E0), None);
        assert_eq!(device(0x3F8), None, "COM1 is the UART's");
        assert_eq!(device(0xCF8), None, "PCI configuration stays virtual_pci's");
    }

    #[test]
    fn linux_probe_8259a_finds_no_pic() {
        // i8259.c probe_8259A: mask everything, write 0xFB to the master's mask, read it back.
        let mut ports = LegacyPorts::default();
        ports.write(0xA1, 0xFF);
        ports.write(0x21, 0xFB);
        assert_ne!(ports.read(0x21), 0xFB, "the null PIC is chosen");
    }

    #[test]
    fn the_rtc_is_stopped_at_2000_and_never_updating() {
        let mut ports = LegacyPorts::default();
        let mut cmos = |index: u8| {
            ports.write(0x70, 0x80 | index); // NMI-disable bit set, as Linux's CMOS_READ may
            ports.read(0x71)
        };
        assert_eq!(cmos(0x0A) & 0x80, 0, "UIP clear");
        assert_eq!(cmos(0x0D), 0x80, "VRT: valid");
        assert_eq!(cmos(0x0B), 0x02, "24-hour, BCD");
        let date = [0x00, 0x02, 0x04, 0x07, 0x08, 0x09].map(&mut cmos);
        assert_eq!(date, [0, 0, 0, 1, 1, 0]);
        assert_eq!(ports.read(0x70), 0xFF, "the index register is write-only");
        assert_eq!(
            ports.write(0x71, 0x12),
            None,
            "setting the clock changes nothing"
        );
    }

    #[test]
    fn acpi_s5_powers_off_and_other_sleep_types_are_ignored() {
        let mut ports = LegacyPorts::default();
        let sleep = |typ: u8| SLEEP_CONTROL_SLP_EN | typ << 2;
        assert_eq!(ports.write(SLEEP_CONTROL_PORT, 5 << 2), None, "no SLP_EN");
        assert_eq!(ports.write(SLEEP_CONTROL_PORT, sleep(3)), None, "S3");
        assert_eq!(
            ports.write(SLEEP_CONTROL_PORT, sleep(S5_SLEEP_TYPE)),
            Some(GuestRequest::PowerOff)
        );
        assert_eq!(ports.read(SLEEP_CONTROL_PORT), 0);
        assert_eq!(ports.read(SLEEP_STATUS_PORT), 0x80);
        assert_eq!(ports.write(SLEEP_STATUS_PORT, 0x80), None);
    }

    #[test]
    fn acpi_and_keyboard_resets_end_the_guest() {
        let mut ports = LegacyPorts::default();
        assert_eq!(ports.write(RESET_PORT, 0), None);
        assert_eq!(
            ports.write(RESET_PORT, RESET_VALUE),
            Some(GuestRequest::Reset(ACPI_RESET))
        );
        assert_eq!(ports.write(0x60, 0xFE), None, "data port: no command");
        assert_eq!(ports.write(0x64, 0xAD), None, "other commands go nowhere");
        assert_eq!(
            ports.write(0x64, 0xFE),
            Some(GuestRequest::Reset(KEYBOARD_RESET))
        );
    }
}
