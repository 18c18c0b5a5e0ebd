//! COM1 as guests see it: a 16550 transmitter that is always ready, forwarded to the host console a
//! line at a time.

use alloc::string::String;

/// COM1 as guests see it: a transmitter that is always ready; bytes are forwarded line by line.
#[derive(Clone, Debug, Default)]
pub struct VirtualConsole {
    line: String,
    /// Line control register: bit 7 (DLAB) turns ports +0/+1 into the divisor latch.
    lcr: u8,
}

pub const COM1: u16 = 0x3F8;
const UART_LSR_THRE_TEMT: u8 = 0x60;
const MAX_CONSOLE_LINE: usize = 512;

impl VirtualConsole {
    /// A guest write to register `register`; returns the line the guest just completed, if any.
    pub fn write(&mut self, register: u16, byte: u8) -> Option<String> {
        const LCR: u16 = 3;
        match register {
            0 if self.lcr & 0x80 == 0 => match byte {
                b'\n' => return Some(core::mem::take(&mut self.line)),
                b'\r' => {}
                _ if self.line.len() < MAX_CONSOLE_LINE => self.line.push(char::from(byte)),
                _ => {}
            },
            LCR => self.lcr = byte,
            _ => {}
        }
        None
    }

    pub fn read(&self, register: u16) -> u8 {
        match register {
            3 => self.lcr,
            5 => UART_LSR_THRE_TEMT,
            _ => 0,
        }
    }

    /// What the guest printed after its last newline.
    pub fn pending(&self) -> &str {
        &self.line
    }
}
