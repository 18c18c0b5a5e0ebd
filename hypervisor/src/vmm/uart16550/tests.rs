//! The model driven the way Linux 6.1's 8250 driver (drivers/tty/serial/8250/8250_port.c) drives a
//! UART, step by step, so that a detection Linux would get wrong fails here.

use super::*;
use alloc::vec::Vec;

const UART_LCR_CONF_MODE_A: u8 = 0x80;
const UART_LCR_CONF_MODE_B: u8 = 0xBF;
const UART_FCR_ENABLE_FIFO: u8 = 0x01;
const UART_FCR_CLEAR_RCVR: u8 = 0x02;
const UART_FCR_CLEAR_XMIT: u8 = 0x04;
const UART_FCR7_64BYTE: u8 = 0x20;
const UART_FCR_R_TRIG_10: u8 = 0x80;
const UART_IER_UUE: u8 = 0x40;
/// The EFR sits where IIR/FCR are.
const UART_EFR: u16 = reg::IIR_FCR;

/// Linux's view of one port: serial_in/serial_out, and the IRQ line's rising edges as the virtual
/// IOAPIC (ISA IRQ 4: edge, active high) would see them.
struct Driver {
    uart: Uart16550,
    lines: Vec<String>,
    line_was: bool,
    edges: u32,
}

#[derive(Debug, PartialEq, Eq)]
enum Detected {
    Absent(&'static str),
    Port8250,
    Port16450,
    Port16550,
    Port16550A,
    Other(&'static str),
}

impl Driver {
    fn new() -> Self {
        Self {
            uart: Uart16550::default(),
            lines: Vec::new(),
            line_was: false,
            edges: 0,
        }
    }

    fn note_line(&mut self) {
        let line = self.uart.interrupt_line();
        if line && !self.line_was {
            self.edges += 1;
        }
        self.line_was = line;
    }

    fn inb(&mut self, offset: u16) -> u8 {
        let value = self.uart.read(offset);
        self.note_line();
        value
    }

    fn outb(&mut self, offset: u16, value: u8) {
        if let Some(line) = self.uart.write(offset, value) {
            self.lines.push(line);
        }
        self.note_line();
    }

    fn dl_read(&mut self) -> u16 {
        u16::from(self.inb(reg::DATA)) | u16::from(self.inb(reg::IER)) << 8
    }

    fn dl_write(&mut self, value: u16) {
        self.outb(reg::DATA, value as u8);
        self.outb(reg::IER, (value >> 8) as u8);
    }

    fn clear_fifos(&mut self) {
        self.outb(reg::IIR_FCR, UART_FCR_ENABLE_FIFO);
        self.outb(
            reg::IIR_FCR,
            UART_FCR_ENABLE_FIFO | UART_FCR_CLEAR_RCVR | UART_FCR_CLEAR_XMIT,
        );
        self.outb(reg::IIR_FCR, 0);
    }

    /// autoconfig() without UPF_SKIP_TEST (the loopback test runs) and without UPF_BUGGY_UART.
    fn autoconfig(&mut self) -> Detected {
        let scratch = self.inb(reg::IER);
        self.outb(reg::IER, 0);
        let scratch2 = self.inb(reg::IER) & 0x0F;
        self.outb(reg::IER, 0x0F);
        let scratch3 = self.inb(reg::IER) & 0x0F;
        self.outb(reg::IER, scratch);
        if scratch2 != 0 || scratch3 != 0x0F {
            return Detected::Absent("IER test failed");
        }
        let save_mcr = self.inb(reg::MCR);
        let save_lcr = self.inb(reg::LCR);
        self.outb(reg::MCR, MCR_LOOP | 0x0A);
        let status1 = self.inb(reg::MSR) & 0xF0;
        self.outb(reg::MCR, save_mcr);
        if status1 != 0x90 {
            return Detected::Absent("LOOP test failed");
        }
        self.outb(reg::LCR, UART_LCR_CONF_MODE_B);
        self.outb(UART_EFR, 0);
        self.outb(reg::LCR, 0);
        self.outb(reg::IIR_FCR, UART_FCR_ENABLE_FIFO);
        let detected = match self.inb(reg::IIR_FCR) >> 6 {
            0 => self.autoconfig_8250(),
            1 => Detected::Absent("PORT_UNKNOWN"),
            2 => Detected::Port16550,
            _ => self.autoconfig_16550a(),
        };
        self.outb(reg::LCR, save_lcr);
        // Reset the UART.
        self.outb(reg::MCR, save_mcr);
        self.clear_fifos();
        self.inb(reg::DATA);
        self.outb(reg::IER, 0);
        detected
    }

    fn autoconfig_8250(&mut self) -> Detected {
        let scratch = self.inb(reg::SCR);
        self.outb(reg::SCR, 0xA5);
        let status1 = self.inb(reg::SCR);
        self.outb(reg::SCR, 0x5A);
        let status2 = self.inb(reg::SCR);
        self.outb(reg::SCR, scratch);
        if status1 == 0xA5 && status2 == 0x5A {
            Detected::Port16450
        } else {
            Detected::Port8250
        }
    }

    fn autoconfig_16550a(&mut self) -> Detected {
        // EFR with DLAB set: only ST16C650V1s.
        self.outb(reg::LCR, UART_LCR_CONF_MODE_A);
        if self.inb(UART_EFR) == 0 {
            return Detected::Other("16650 (EFRv1) or a Motorola DUART");
        }
        // EFR behind LCR = 0xBF (broken_efr() only runs if this reads 0).
        self.outb(reg::LCR, UART_LCR_CONF_MODE_B);
        if self.inb(UART_EFR) == 0 {
            return Detected::Other("EFRv2");
        }
        // National Semiconductor SuperIO: EXCR1 in bank 2 mirrors MCR.LOOP.
        self.outb(reg::LCR, 0);
        let status1 = self.inb(reg::MCR);
        self.outb(reg::LCR, 0xE0);
        let mut status2 = self.inb(0x02);
        if (status2 ^ status1) & MCR_LOOP == 0 {
            self.outb(reg::LCR, 0);
            self.outb(reg::MCR, status1 ^ MCR_LOOP);
            self.outb(reg::LCR, 0xE0);
            status2 = self.inb(0x02);
            self.outb(reg::LCR, 0);
            self.outb(reg::MCR, status1);
            if (status2 ^ status1) & MCR_LOOP != 0 {
                return Detected::Other("NS16550A");
            }
        }
        // TI16750: IIR bit 5 with the 64-byte FIFO enabled under DLAB only.
        self.outb(reg::LCR, 0);
        self.outb(reg::IIR_FCR, UART_FCR_ENABLE_FIFO | UART_FCR7_64BYTE);
        let status1 = self.inb(reg::IIR_FCR) >> 5;
        self.outb(reg::IIR_FCR, UART_FCR_ENABLE_FIFO);
        self.outb(reg::LCR, UART_LCR_CONF_MODE_A);
        self.outb(reg::IIR_FCR, UART_FCR_ENABLE_FIFO | UART_FCR7_64BYTE);
        let status2 = self.inb(reg::IIR_FCR) >> 5;
        self.outb(reg::IIR_FCR, UART_FCR_ENABLE_FIFO);
        self.outb(reg::LCR, 0);
        if status1 == 6 && status2 == 7 {
            return Detected::Other("16750");
        }
        // XScale: IER bit 6 (UUE) writable.
        let iersave = self.inb(reg::IER);
        self.outb(reg::IER, iersave & !UART_IER_UUE);
        if self.inb(reg::IER) & UART_IER_UUE == 0 {
            self.outb(reg::IER, iersave | UART_IER_UUE);
            if self.inb(reg::IER) & UART_IER_UUE != 0 {
                return Detected::Other("XScale");
            }
        }
        self.outb(reg::IER, iersave);
        if self.size_fifo() == 64 {
            return Detected::Other("U6_16550A");
        }
        Detected::Port16550A
    }

    /// size_fifo(): bytes looped back from 256 written at the slowest rate.
    fn size_fifo(&mut self) -> usize {
        let old_lcr = self.inb(reg::LCR);
        self.outb(reg::LCR, 0);
        let old_fcr = self.inb(reg::IIR_FCR);
        let old_mcr = self.inb(reg::MCR);
        self.outb(
            reg::IIR_FCR,
            UART_FCR_ENABLE_FIFO | UART_FCR_CLEAR_RCVR | UART_FCR_CLEAR_XMIT,
        );
        self.outb(reg::MCR, MCR_LOOP);
        self.outb(reg::LCR, UART_LCR_CONF_MODE_A);
        let old_dl = self.dl_read();
        self.dl_write(1);
        self.outb(reg::LCR, 0x03);
        for count in 0..=255 {
            self.outb(reg::DATA, count);
        }
        let mut count = 0;
        while self.inb(reg::LSR) & LSR_DATA_READY != 0 && count < 256 {
            self.inb(reg::DATA);
            count += 1;
        }
        self.outb(reg::IIR_FCR, old_fcr);
        self.outb(reg::MCR, old_mcr);
        self.outb(reg::LCR, UART_LCR_CONF_MODE_A);
        self.dl_write(old_dl);
        self.outb(reg::LCR, old_lcr);
        count
    }

    /// serial8250_do_startup() for a port with an IRQ; returns (UART_BUG_THRE, UART_BUG_TXEN).
    fn startup(&mut self) -> Result<(bool, bool), &'static str> {
        self.clear_fifos();
        for offset in [reg::LSR, reg::DATA, reg::IIR_FCR, reg::MSR] {
            self.inb(offset);
        }
        if self.inb(reg::LSR) == 0xFF {
            return Err("LSR safety check engaged");
        }
        // The THRE test.
        while self.inb(reg::LSR) & LSR_THR_EMPTY == 0 {}
        self.outb(reg::IER, IER_THR_EMPTY);
        let iir1 = self.inb(reg::IIR_FCR);
        self.outb(reg::IER, 0);
        self.outb(reg::IER, IER_THR_EMPTY);
        let iir = self.inb(reg::IIR_FCR);
        self.outb(reg::IER, 0);
        let bug_thre = iir1 & IIR_NONE == 0 && iir & IIR_NONE != 0;
        // (setup_irq: request_irq.) Initialise the UART: 8 bits, OUT2 for the PC's IRQ line.
        self.outb(reg::LCR, 0x03);
        self.outb(reg::MCR, MCR_OUT2);
        // The TXEN test.
        self.outb(reg::IER, IER_THR_EMPTY);
        let lsr = self.inb(reg::LSR);
        let iir = self.inb(reg::IIR_FCR);
        self.outb(reg::IER, 0);
        let bug_txen = lsr & LSR_TRANSMITTER_EMPTY != 0 && iir & IIR_NONE != 0;
        for offset in [reg::LSR, reg::DATA, reg::IIR_FCR, reg::MSR] {
            self.inb(offset);
        }
        Ok((bug_thre, bug_txen))
    }

    /// serial8250_do_set_termios() at 115200 8N1 for a 16550A, then the tty's open raising DTR
    /// and RTS; IER gets RLSI | RDI.
    fn set_termios(&mut self) -> u8 {
        self.outb(reg::LCR, 0x03 | LCR_DLAB);
        self.dl_write(1);
        self.outb(reg::LCR, 0x03);
        self.outb(reg::IIR_FCR, UART_FCR_ENABLE_FIFO | UART_FCR_R_TRIG_10);
        let ier = IER_LINE_STATUS | IER_RX_DATA;
        self.outb(reg::IER, ier);
        self.outb(reg::MCR, MCR_DTR | MCR_RTS | MCR_OUT2);
        ier
    }

    /// The tty layer writes `text`: __start_tx sets IER.THRI, then each interrupt runs
    /// serial8250_handle_irq (IIR, LSR, MSR, tx_chars of up to 16 bytes; __stop_tx once the
    /// buffer is empty). Returns the interrupts taken.
    fn interrupt_driven_write(&mut self, mut ier: u8, text: &[u8]) -> u32 {
        let mut pending = text;
        let edges_before = self.edges;
        ier |= IER_THR_EMPTY;
        self.outb(reg::IER, ier);
        let mut handled = 0;
        while self.edges > edges_before + handled {
            handled += 1;
            assert!(handled < 100, "interrupt storm");
            loop {
                let iir = self.inb(reg::IIR_FCR);
                if iir & IIR_NONE != 0 {
                    break;
                }
                let lsr = self.inb(reg::LSR);
                self.inb(reg::MSR);
                if lsr & LSR_THR_EMPTY != 0 && ier & IER_THR_EMPTY != 0 {
                    let (now, rest) = pending.split_at(pending.len().min(16));
                    for &byte in now {
                        self.outb(reg::DATA, byte);
                    }
                    pending = rest;
                    if pending.is_empty() {
                        ier &= !IER_THR_EMPTY;
                        self.outb(reg::IER, ier);
                    }
                }
            }
        }
        assert!(pending.is_empty(), "transmit stalled: no THRE interrupt");
        handled
    }
}

#[test]
fn linux_autoconfig_detects_a_16550a() {
    let mut linux = Driver::new();
    assert_eq!(linux.autoconfig(), Detected::Port16550A);
    assert!(linux.lines.is_empty(), "loopback bytes are not forwarded");
    // The port is left reset: FIFOs off, no interrupts, nothing received.
    assert_eq!(linux.inb(reg::IIR_FCR), IIR_NONE);
    assert_eq!(linux.inb(reg::LSR) & LSR_DATA_READY, 0);
}

#[test]
fn the_fifo_holds_sixteen_bytes_in_loopback() {
    let mut linux = Driver::new();
    assert_eq!(linux.size_fifo(), 16);
    // The 240 bytes that did not fit are an overrun.
    let mut uart = Uart16550::default();
    uart.write(reg::IIR_FCR, UART_FCR_ENABLE_FIFO);
    uart.write(reg::MCR, MCR_LOOP);
    for byte in 0..17 {
        uart.write(reg::DATA, byte);
    }
    assert_eq!(uart.read(reg::LSR) & LSR_OVERRUN, LSR_OVERRUN);
    assert_eq!(uart.read(reg::LSR) & LSR_OVERRUN, 0, "cleared by the read");
    assert_eq!(uart.read(reg::DATA), 0, "oldest byte first");
}

#[test]
fn linux_startup_finds_no_thre_or_txen_bug_and_the_lsr_is_sane() {
    let mut linux = Driver::new();
    assert_eq!(linux.autoconfig(), Detected::Port16550A);
    assert_eq!(linux.startup(), Ok((false, false)));
}

#[test]
fn interrupt_driven_transmit_reaches_the_console_and_stops() {
    let mut linux = Driver::new();
    linux.autoconfig();
    linux.startup().unwrap();
    let ier = linux.set_termios();
    assert!(!linux.uart.interrupt_line(), "nothing pending with RX idle");
    let text = b"Run /init as init process\r\n  with arguments: 40 bytes or so\r\n";
    let interrupts = linux.interrupt_driven_write(ier, text);
    assert_eq!(
        linux.lines,
        [
            "Run /init as init process",
            "  with arguments: 40 bytes or so"
        ]
    );
    assert!(interrupts >= 4, "one per 16-byte batch, got {interrupts}");
    assert!(!linux.uart.interrupt_line(), "THRI off again: line low");
    // A second write starts again from an idle transmitter.
    linux.interrupt_driven_write(ier, b"# \n");
    assert_eq!(linux.lines.last().map(String::as_str), Some("# "));
}

#[test]
fn thre_interrupt_raise_and_clear() {
    let mut uart = Uart16550::default();
    uart.write(reg::MCR, MCR_OUT2);
    // Enabling ETBEI with THR empty raises THRE.
    uart.write(reg::IER, IER_THR_EMPTY);
    assert!(uart.interrupt_line());
    // Reading IIR that reports it clears it.
    assert_eq!(uart.read(reg::IIR_FCR), IIR_THR_EMPTY);
    assert!(!uart.interrupt_line());
    assert_eq!(uart.read(reg::IIR_FCR), IIR_NONE);
    // A THR write empties at once: THRE again.
    uart.write(reg::DATA, b'x');
    assert!(uart.interrupt_line());
    // Re-writing IER with ETBEI still set is no new 0 -> 1 edge.
    uart.read(reg::IIR_FCR);
    uart.write(reg::IER, IER_THR_EMPTY);
    assert!(!uart.interrupt_line());
    // Disabling ETBEI hides it; OUT2 gates the line.
    uart.write(reg::DATA, b'y');
    uart.write(reg::IER, 0);
    assert!(!uart.interrupt_line());
    uart.write(reg::IER, IER_THR_EMPTY);
    uart.write(reg::MCR, 0);
    assert!(!uart.interrupt_line());
    assert_eq!(uart.read(reg::IIR_FCR), IIR_THR_EMPTY, "pending, not wired");
}

#[test]
fn iir_reports_the_highest_priority_source() {
    let mut uart = Uart16550::default();
    uart.write(reg::IIR_FCR, UART_FCR_ENABLE_FIFO | 0xC0); // trigger 14
    uart.write(reg::IER, 0x0F);
    uart.write(reg::MCR, MCR_LOOP); // the modem inputs change: a modem-status source
    for byte in 0..17 {
        uart.write(reg::DATA, byte); // 16 received, the 17th overruns
    }
    let fifo = IIR_FIFOS_ENABLED;
    assert_eq!(uart.read(reg::IIR_FCR), fifo | IIR_LINE_STATUS);
    uart.read(reg::LSR);
    // 16 bytes >= trigger 14: received data available.
    assert_eq!(uart.read(reg::IIR_FCR), fifo | IIR_RX_DATA);
    for _ in 0..3 {
        uart.read(reg::DATA);
    }
    // 13 below the trigger: the character timeout.
    assert_eq!(uart.read(reg::IIR_FCR), fifo | IIR_RX_TIMEOUT);
    while uart.read(reg::LSR) & LSR_DATA_READY != 0 {
        uart.read(reg::DATA);
    }
    // THRE (a read of IIR reporting it clears it), then modem status until MSR is read.
    assert_eq!(uart.read(reg::IIR_FCR), fifo | IIR_THR_EMPTY);
    assert_eq!(uart.read(reg::IIR_FCR), fifo | IIR_MODEM_STATUS);
    uart.read(reg::MSR);
    assert_eq!(uart.read(reg::IIR_FCR), fifo | IIR_NONE);
    // In loopback the IRQ line stays disconnected whatever is pending.
    uart.write(reg::MCR, MCR_LOOP | MCR_OUT2);
    uart.write(reg::DATA, 1);
    assert!(!uart.interrupt_line());
}

#[test]
fn dlab_switches_ports_0_and_1_to_the_divisor_latch() {
    let mut uart = Uart16550::default();
    uart.write(reg::IER, IER_RX_DATA);
    uart.write(reg::LCR, LCR_DLAB | 0x03);
    uart.write(reg::DATA, 0x0C);
    uart.write(reg::IER, 0x00);
    assert_eq!((uart.read(reg::DATA), uart.read(reg::IER)), (0x0C, 0x00));
    assert_eq!(
        uart.write(reg::DATA, b'\n'),
        None,
        "a divisor byte, not output"
    );
    uart.write(reg::LCR, 0x03);
    assert_eq!(uart.read(reg::IER), IER_RX_DATA, "IER kept under DLAB");
    assert_eq!(uart.read(reg::LCR), 0x03);
    // Scratch and MCR read back (MCR bits 7:5 do not exist).
    uart.write(reg::SCR, 0x5A);
    uart.write(reg::MCR, 0xFF);
    assert_eq!((uart.read(reg::SCR), uart.read(reg::MCR)), (0x5A, 0x1F));
}

#[test]
fn loopback_routes_mcr_to_msr_and_tx_to_rx() {
    let mut uart = Uart16550::default();
    assert_eq!(uart.read(reg::MSR), MSR_DCD | MSR_DSR | MSR_CTS);
    // Linux's loopback test: LOOP | OUT2 | RTS -> DCD | CTS.
    uart.write(reg::MCR, MCR_LOOP | MCR_OUT2 | MCR_RTS);
    assert_eq!(uart.read(reg::MSR) & 0xF0, 0x90);
    uart.write(reg::MCR, MCR_LOOP | MCR_DTR | MCR_OUT1);
    // DSR and RI on; CTS and DCD changed (deltas), DSR changed.
    assert_eq!(uart.read(reg::MSR), MSR_DSR | MSR_RI | 0b1011);
    uart.write(reg::MCR, MCR_LOOP);
    assert_eq!(uart.read(reg::MSR), MSR_TRAILING_RI | MSR_DELTA_DSR);
    assert_eq!(
        uart.write(reg::DATA, b'\n'),
        None,
        "looped back, not printed"
    );
    assert_eq!(uart.read(reg::LSR) & LSR_DATA_READY, LSR_DATA_READY);
    assert_eq!(uart.read(reg::DATA), b'\n');
    assert_eq!(uart.read(reg::LSR) & LSR_DATA_READY, 0);
    uart.write(reg::MCR, 0);
    assert_eq!(uart.read(reg::MSR) & 0xF0, MSR_DCD | MSR_DSR | MSR_CTS);
    assert_eq!(uart.pending(), "");
}

#[test]
fn host_input_is_received_without_overrun() {
    let mut uart = Uart16550::default();
    uart.write(reg::MCR, MCR_OUT2);
    uart.write(reg::IER, IER_RX_DATA);
    for byte in b"ls\n" {
        assert!(uart.receive(*byte));
    }
    // Without FIFOs the holding register takes one byte; the rest waits, nothing overruns.
    assert!(uart.interrupt_line());
    assert_eq!(uart.read(reg::IIR_FCR), IIR_RX_DATA);
    let mut got = Vec::new();
    while uart.read(reg::LSR) & LSR_DATA_READY != 0 {
        got.push(uart.read(reg::DATA));
    }
    assert_eq!(got, b"ls\n");
    assert!(!uart.interrupt_line());
    // In loopback the serial input is disconnected: host bytes wait for it to end.
    uart.write(reg::MCR, MCR_LOOP);
    uart.receive(b'q');
    assert_eq!(uart.read(reg::LSR) & LSR_DATA_READY, 0);
    uart.write(reg::MCR, 0);
    assert_eq!(uart.read(reg::DATA), b'q');
}

#[test]
fn polled_output_is_forwarded_a_line_at_a_time() {
    // What guest-tests' uart_16550 crate does: init, then poll LSR.THRE before each THR write.
    let mut uart = Uart16550::default();
    for (offset, value) in [(1, 0x00), (3, 0x80), (0, 0x03), (1, 0x00), (3, 0x03)] {
        uart.write(offset, value);
    }
    for (offset, value) in [(2, 0xC7), (4, 0x0B), (1, 0x01)] {
        uart.write(offset, value);
    }
    assert!(
        !uart.interrupt_line(),
        "RX interrupt only, nothing received"
    );
    let mut lines = Vec::new();
    for &byte in b"ok 1 - boots\r\nrest" {
        assert_ne!(uart.read(reg::LSR) & LSR_THR_EMPTY, 0);
        lines.extend(uart.write(reg::DATA, byte));
    }
    assert_eq!(lines, ["ok 1 - boots"]);
    assert_eq!(uart.pending(), "rest");
    assert_eq!(uart.read(reg::LSR), LSR_THR_EMPTY | LSR_TRANSMITTER_EMPTY);
    // Over-long lines are cut at MAX_CONSOLE_LINE.
    for _ in 0..600 {
        uart.write(reg::DATA, b'x');
    }
    assert_eq!(
        uart.write(reg::DATA, b'\n').unwrap().len(),
        MAX_CONSOLE_LINE
    );
}
