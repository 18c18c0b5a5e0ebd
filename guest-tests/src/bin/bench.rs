//! The `cargo xtask bench` workload: 10,000 device interrupts (see `workload`), measured from inside.
//! Prints `summary: bench interrupts=N cycles=C work=W [exits=reason:count,...]`; the exits (only under
//! Exitless) are counted by the hypervisor over exactly the workload.
#![no_std]
#![no_main]

use guest_tests::{hypervisor, suite::Suite, workload, Env, Mode};

guest_tests::entry!(main);

const INTERRUPTS: u64 = 10_000;
const LIMIT_TSC: u64 = 2_000_000_000;

fn main(env: &Env) -> u32 {
    let virtualized = env.mode == Mode::Exitless;
    workload::setup();
    if virtualized {
        hypervisor::reset_exit_counters();
    }
    let m = workload::run(INTERRUPTS, LIMIT_TSC);
    let exits = virtualized.then(|| hypervisor::exit_counters(env));
    let mut line = heapless_line();
    use core::fmt::Write;
    let _ = write!(
        line,
        "summary: bench interrupts={} cycles={} work={}",
        m.handled_a, m.cycles, m.work
    );
    if let Some(exits) = exits {
        let _ = write!(line, " exits=");
        let mut first = true;
        // The last counter is the ReadExitCounters VMCALL itself, outside the workload.
        for (reason, &count) in exits.iter().enumerate() {
            let count = if reason == 18 {
                count.saturating_sub(1)
            } else {
                count
            };
            if count != 0 {
                let _ = write!(line, "{}{reason}:{count}", if first { "" } else { "," });
                first = false;
            }
        }
    }
    guest_tests::println!("{}", line.as_str());
    let mut suite = Suite::begin("bench");
    suite.check(
        "all-arrived",
        (m.handled_a == INTERRUPTS && !m.timed_out)
            .then_some(())
            .ok_or("interrupts missing"),
    );
    suite.check(
        "each-exactly-once",
        (m.sent == m.handled_a)
            .then_some(())
            .ok_or("interrupts and bytes disagree"),
    );
    suite.end()
}

/// A fixed-capacity line buffer (guests have no heap).
fn heapless_line() -> Line {
    Line {
        buf: [0; 512],
        len: 0,
    }
}

struct Line {
    buf: [u8; 512],
    len: usize,
}

impl Line {
    fn as_str(&self) -> &str {
        core::str::from_utf8(&self.buf[..self.len]).unwrap_or("")
    }
}

impl core::fmt::Write for Line {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        let end = self.len + s.len();
        if end > self.buf.len() {
            return Err(core::fmt::Error);
        }
        self.buf[self.len..end].copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}
