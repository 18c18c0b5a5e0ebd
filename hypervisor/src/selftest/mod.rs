//! Self-tests the kernel runs after its boot summary when the configuration asks for them
//! (`selftest = ...`), for platforms where guests cannot prove a feature: QEMU TCG has VT-d and
//! DMA-capable emulated devices but no VT-x, so the VT-d layer is driven from the host side.

pub mod edu;
pub mod vtd;
pub mod vtd_guest;

use crate::summary::Results;

/// Bytes per self-test DMA transfer (64 words; the rest of each frame must stay untouched).
pub const LEN: u64 = 512;
pub const WORDS: usize = (LEN / 8) as usize;
/// Spins with interrupts enabled before an MSI counts as not arrived. The edu signals synchronously
/// with its raise-register write, so a valid one arrives at once; each suite's positive control
/// (`msi-cleared-irte-blocked`, `msi-disabled-clears-irte`) shows the wait is long enough.
pub const IRQ_SPINS: u64 = 2_000_000;
use alloc::string::String;
use core::fmt;
use exitless_abi::protocol::{self, Outcome};

/// Installs the interrupt probe the suites count device interrupts with.
pub fn install_probe() -> Result<crate::arch::irq_probe::IrqProbe, String> {
    // SAFETY: all physical memory (the LAPIC page included) is identity-mapped, the kernel's IDT is
    // full, and nothing else touches the IDT/LVT/PIC while a self-test runs.
    unsafe { crate::arch::irq_probe::IrqProbe::install() }
        .ok_or_else(|| "the local APIC is off or in x2APIC mode; the probe needs xAPIC".into())
}

/// A self-test: its protocol name and what runs it against the suite's bench.
pub type Test<B> = (&'static str, fn(&mut B) -> Result<(), String>);

/// Runs one suite: BEGIN, one RESULT per test (every test fails with the reason when the bench could
/// not be set up), END. `after_each` runs after every test (e.g. draining VT-d faults, so leftovers are
/// blamed on the test that caused them). Returns 0 if all passed, 1 otherwise.
pub fn run_suite<B>(
    suite: &str,
    bench: Result<B, String>,
    tests: &[Test<B>],
    after_each: fn(&mut B),
    out: &mut impl fmt::Write,
) -> (u32, Option<B>) {
    let _ = protocol::write_begin(out, suite);
    let mut results = Results::default();
    let bench = match bench {
        Err(why) => {
            log::error!("{suite} self-test: {why}");
            // The protocol's outcomes borrow their text for the whole run: the kernel keeps it.
            let why: &'static str = why.leak();
            for (name, _) in tests {
                results.record(*name, Outcome::Failed(why));
            }
            None
        }
        Ok(mut bench) => {
            for (name, test) in tests {
                log::info!("{suite} self-test: {name}");
                let outcome = match test(&mut bench) {
                    Ok(()) => Outcome::Ok,
                    Err(why) => {
                        log::error!("{suite} self-test {name}: {why}");
                        Outcome::Failed(why.leak())
                    }
                };
                after_each(&mut bench);
                results.record(*name, outcome);
            }
            Some(bench)
        }
    };
    let _ = results.write(out);
    (results.exit_code(), bench)
}
