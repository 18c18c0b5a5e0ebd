//! COM1 as guests see it: a National Semiconductor PC16550D (the "16550A" Linux detects), modelled
//! register by register from its datasheet, with a transmitter that sends instantly. What the guest
//! sends is forwarded to the host console a line at a time; the host may feed received bytes.
//!
//! No I/O happens here: the exit handler passes port accesses in and raises the guest's interrupt pin
//! from [`Uart16550::interrupt_line`].

use alloc::collections::VecDeque;
use alloc::string::String;

/// Register offsets from the base port (PC16550D Table II).
pub mod reg {
    /// RBR (read) / THR (write); DLL when LCR.DLAB.
    pub const DATA: u16 = 0;
    /// IER; DLM when LCR.DLAB.
    pub const IER: u16 = 1;
    /// IIR (read) / FCR (write).
    pub const IIR_FCR: u16 = 2;
    pub const LCR: u16 = 3;
    pub const MCR: u16 = 4;
    pub const LSR: u16 = 5;
    pub const MSR: u16 = 6;
    pub const SCR: u16 = 7;
}

/// IER bits: ERBFI (received data), ETBEI (THR empty), ELSI (line status), EDSSI (modem status).
pub const IER_RX_DATA: u8 = 1 << 0;
pub const IER_THR_EMPTY: u8 = 1 << 1;
pub const IER_LINE_STATUS: u8 = 1 << 2;
pub const IER_MODEM_STATUS: u8 = 1 << 3;
/// Only the low four IER bits exist; Linux's autoconfig relies on bits 7:4 reading 0 (it tests
/// bit 6, the XScale UUE bit, to tell the chips apart).
const IER_BITS: u8 = 0x0F;

/// IIR: bit 0 = no interrupt pending; bits 3:1 the source (Table IV); bits 7:6 set when FCR0 is.
pub const IIR_NONE: u8 = 0x01;
pub const IIR_LINE_STATUS: u8 = 0x06;
pub const IIR_RX_DATA: u8 = 0x04;
pub const IIR_RX_TIMEOUT: u8 = 0x0C;
pub const IIR_THR_EMPTY: u8 = 0x02;
pub const IIR_MODEM_STATUS: u8 = 0x00;
pub const IIR_FIFOS_ENABLED: u8 = 0xC0;

/// FCR bits.
const FCR_FIFO_ENABLE: u8 = 1 << 0;
const FCR_CLEAR_RX: u8 = 1 << 1;

pub const LCR_DLAB: u8 = 1 << 7;

/// MCR bits (4:0 exist; 7:5 read 0).
pub const MCR_DTR: u8 = 1 << 0;
pub const MCR_RTS: u8 = 1 << 1;
pub const MCR_OUT1: u8 = 1 << 2;
/// On PC serial ports OUT2 gates the UART's interrupt onto the ISA IRQ line.
pub const MCR_OUT2: u8 = 1 << 3;
pub const MCR_LOOP: u8 = 1 << 4;
const MCR_BITS: u8 = 0x1F;

/// LSR bits.
pub const LSR_DATA_READY: u8 = 1 << 0;
pub const LSR_OVERRUN: u8 = 1 << 1;
pub const LSR_THR_EMPTY: u8 = 1 << 5;
pub const LSR_TRANSMITTER_EMPTY: u8 = 1 << 6;
/// In FIFO mode: an error is somewhere in the RX FIFO.
const LSR_FIFO_ERROR: u8 = 1 << 7;

/// MSR inputs (7:4) and their delta bits (3:0).
pub const MSR_CTS: u8 = 1 << 4;
pub const MSR_DSR: u8 = 1 << 5;
pub const MSR_RI: u8 = 1 << 6;
pub const MSR_DCD: u8 = 1 << 7;
const MSR_DELTA_CTS: u8 = 1 << 0;
const MSR_DELTA_DSR: u8 = 1 << 1;
const MSR_TRAILING_RI: u8 = 1 << 2;
const MSR_DELTA_DCD: u8 = 1 << 3;
/// Outside loopback the "modem" is always there: carrier, data set ready and clear to send, so
/// Linux's carrier and flow-control checks pass.
const MSR_CONNECTED: u8 = MSR_DCD | MSR_DSR | MSR_CTS;

/// RX FIFO depth in FIFO mode (16550D: 16 bytes); without FIFOs the holding register holds one.
const RX_FIFO_DEPTH: usize = 16;
/// Bytes the host may queue ahead of the guest's reads; they enter the RX FIFO as it drains, so no
/// host input overruns.
const HOST_INPUT_MAX: usize = 4096;
/// Longest console line forwarded; the rest of a longer line is dropped.
const MAX_CONSOLE_LINE: usize = 512;

/// One 16550A UART.
#[derive(Clone, Debug)]
pub struct Uart16550 {
    ier: u8,
    lcr: u8,
    mcr: u8,
    scr: u8,
    divisor: u16,
    fifos: bool,
    /// RX FIFO trigger level (FCR 7:6: 1, 4, 8 or 14 bytes).
    rx_trigger: usize,
    rx: VecDeque<u8>,
    host_input: VecDeque<u8>,
    /// LSR error bits (only overrun occurs here) until the guest reads LSR.
    line_errors: u8,
    /// MSR 7:4 as last computed, and the delta bits since the guest last read MSR.
    modem_inputs: u8,
    modem_deltas: u8,
    /// The THRE interrupt is latched: set when THR becomes empty (at once after each write) and
    /// when ETBEI is enabled while THR is empty; cleared by the IIR read that reports it or by a
    /// THR write (PC16550D Table IV).
    thr_empty_pending: bool,
    line: String,
}

impl Default for Uart16550 {
    /// The state after master reset (PC16550D Table III): no interrupts enabled, FIFOs off,
    /// transmitter empty.
    fn default() -> Self {
        Self {
            ier: 0,
            lcr: 0,
            mcr: 0,
            scr: 0,
            divisor: 0,
            fifos: false,
            rx_trigger: 1,
            rx: VecDeque::new(),
            host_input: VecDeque::new(),
            line_errors: 0,
            modem_inputs: MSR_CONNECTED,
            modem_deltas: 0,
            thr_empty_pending: false,
            line: String::new(),
        }
    }
}

impl Uart16550 {
    fn dlab(&self) -> bool {
        self.lcr & LCR_DLAB != 0
    }

    fn loopback(&self) -> bool {
        self.mcr & MCR_LOOP != 0
    }

    fn rx_capacity(&self) -> usize {
        if self.fifos {
            RX_FIFO_DEPTH
        } else {
            1
        }
    }

    /// A guest read of register `offset` (0-7).
    pub fn read(&mut self, offset: u16) -> u8 {
        match offset {
            reg::DATA if self.dlab() => self.divisor as u8,
            reg::DATA => {
                let byte = self.rx.pop_front().unwrap_or(0);
                self.pull_host_input();
                byte
            }
            reg::IER if self.dlab() => (self.divisor >> 8) as u8,
            reg::IER => self.ier,
            reg::IIR_FCR => {
                let id = self.interrupt_id();
                if id == Some(IIR_THR_EMPTY) {
                    self.thr_empty_pending = false;
                }
                let fifo_bits = if self.fifos { IIR_FIFOS_ENABLED } else { 0 };
                id.unwrap_or(IIR_NONE) | fifo_bits
            }
            reg::LCR => self.lcr,
            reg::MCR => self.mcr,
            reg::LSR => {
                let mut lsr = LSR_THR_EMPTY | LSR_TRANSMITTER_EMPTY | self.line_errors;
                if !self.rx.is_empty() {
                    lsr |= LSR_DATA_READY;
                }
                if self.fifos && self.line_errors != 0 {
                    lsr |= LSR_FIFO_ERROR;
                }
                self.line_errors = 0;
                lsr
            }
            reg::MSR => {
                let msr = self.modem_inputs | self.modem_deltas;
                self.modem_deltas = 0;
                msr
            }
            reg::SCR => self.scr,
            _ => 0xFF,
        }
    }

    /// A guest write of `value` to register `offset` (0-7); returns the console line the guest just
    /// completed, if any.
    pub fn write(&mut self, offset: u16, value: u8) -> Option<String> {
        match offset {
            reg::DATA if self.dlab() => self.divisor = (self.divisor & 0xFF00) | u16::from(value),
            reg::DATA => return self.transmit(value),
            reg::IER if self.dlab() => {
                self.divisor = (self.divisor & 0x00FF) | u16::from(value) << 8;
            }
            reg::IER => {
                let enabling = value & !self.ier & IER_THR_EMPTY != 0;
                self.ier = value & IER_BITS;
                // THR is always empty here, so enabling ETBEI raises THRE at once (what Linux's
                // THRE test in serial8250_do_startup expects of a working 16550).
                if enabling {
                    self.thr_empty_pending = true;
                }
            }
            reg::IIR_FCR => self.write_fcr(value),
            reg::LCR => self.lcr = value,
            reg::MCR => {
                self.mcr = value & MCR_BITS;
                self.update_modem_inputs();
                self.pull_host_input();
            }
            reg::SCR => self.scr = value,
            // LSR and MSR writes are for factory testing only (datasheet): ignored.
            _ => {}
        }
        None
    }

    fn write_fcr(&mut self, value: u8) {
        let enable = value & FCR_FIFO_ENABLE != 0;
        // Changing FCR0 clears both FIFOs; FCR1 clears the RX FIFO (TX is always empty here).
        if enable != self.fifos || value & FCR_CLEAR_RX != 0 {
            self.rx.clear();
        }
        self.fifos = enable;
        if enable {
            self.rx_trigger = [1, 4, 8, 14][usize::from(value >> 6)];
        }
        self.pull_host_input();
    }

    /// THR written: the byte leaves at once (to the RX side in loopback, else to the console line)
    /// and THR is empty again, which is a new THRE interrupt.
    fn transmit(&mut self, byte: u8) -> Option<String> {
        self.thr_empty_pending = true;
        if self.loopback() {
            self.push_rx(byte);
            return None;
        }
        match byte {
            b'\n' => return Some(core::mem::take(&mut self.line)),
            b'\r' => {}
            _ if self.line.len() < MAX_CONSOLE_LINE => self.line.push(char::from(byte)),
            _ => {}
        }
        None
    }

    /// A byte arriving on the receiver; with the FIFO full it is lost and LSR reports overrun
    /// (16550D: the shift register's character is overwritten, not transferred).
    fn push_rx(&mut self, byte: u8) {
        if self.rx.len() < self.rx_capacity() {
            self.rx.push_back(byte);
        } else {
            self.line_errors |= LSR_OVERRUN;
        }
    }

    /// Host input enters the receiver as room appears; in loopback the serial input is
    /// disconnected (datasheet), so it waits.
    fn pull_host_input(&mut self) {
        while !self.loopback() && self.rx.len() < self.rx_capacity() {
            match self.host_input.pop_front() {
                Some(byte) => self.rx.push_back(byte),
                None => break,
            }
        }
    }

    /// Queues `byte` as received from the host side; false if the host queue is full.
    pub fn receive(&mut self, byte: u8) -> bool {
        if self.host_input.len() >= HOST_INPUT_MAX {
            return false;
        }
        self.host_input.push_back(byte);
        self.pull_host_input();
        true
    }

    /// MSR inputs: in loopback the MCR outputs drive them (DTR->DSR, RTS->CTS, OUT1->RI,
    /// OUT2->DCD), otherwise the always-connected modem. Changes set the delta bits.
    fn update_modem_inputs(&mut self) {
        let inputs = if self.loopback() {
            let m = self.mcr;
            let bit = |mcr_bit: u8, msr_bit: u8| if m & mcr_bit != 0 { msr_bit } else { 0 };
            bit(MCR_RTS, MSR_CTS)
                | bit(MCR_DTR, MSR_DSR)
                | bit(MCR_OUT1, MSR_RI)
                | bit(MCR_OUT2, MSR_DCD)
        } else {
            MSR_CONNECTED
        };
        let changed = inputs ^ self.modem_inputs;
        if changed & MSR_CTS != 0 {
            self.modem_deltas |= MSR_DELTA_CTS;
        }
        if changed & MSR_DSR != 0 {
            self.modem_deltas |= MSR_DELTA_DSR;
        }
        // TERI: RI went from on to off.
        if changed & self.modem_inputs & MSR_RI != 0 {
            self.modem_deltas |= MSR_TRAILING_RI;
        }
        if changed & MSR_DCD != 0 {
            self.modem_deltas |= MSR_DELTA_DCD;
        }
        self.modem_inputs = inputs;
    }

    /// The highest-priority pending interrupt the IER enables, as IIR bits 3:0 (PC16550D Table IV):
    /// line status, received data (trigger level reached, or a timeout for fewer bytes: with no
    /// more arriving, the four-character timeout has always run out), THR empty, modem status.
    fn interrupt_id(&self) -> Option<u8> {
        let enabled = |bit: u8| self.ier & bit != 0;
        if enabled(IER_LINE_STATUS) && self.line_errors != 0 {
            Some(IIR_LINE_STATUS)
        } else if enabled(IER_RX_DATA) && !self.rx.is_empty() {
            let at_trigger = !self.fifos || self.rx.len() >= self.rx_trigger;
            Some(if at_trigger {
                IIR_RX_DATA
            } else {
                IIR_RX_TIMEOUT
            })
        } else if enabled(IER_THR_EMPTY) && self.thr_empty_pending {
            Some(IIR_THR_EMPTY)
        } else if enabled(IER_MODEM_STATUS) && self.modem_deltas != 0 {
            Some(IIR_MODEM_STATUS)
        } else {
            None
        }
    }

    /// The level on the ISA IRQ line: an interrupt is pending and MCR.OUT2 enables the PC's IRQ
    /// driver. Loopback forces the OUT2 pin inactive (datasheet), which disconnects the line.
    pub fn interrupt_line(&self) -> bool {
        self.mcr & MCR_OUT2 != 0 && !self.loopback() && self.interrupt_id().is_some()
    }

    /// What the guest printed after its last newline.
    pub fn pending(&self) -> &str {
        &self.line
    }
}

#[cfg(test)]
mod tests;
