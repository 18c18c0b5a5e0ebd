//! Reports a guest's checks in the serial test protocol.

use crate::console::Console;
use exitless_abi::protocol::{self, Outcome};

pub struct Suite {
    passed: u32,
    failed: u32,
    skipped: u32,
}

impl Suite {
    pub fn begin(name: &str) -> Self {
        let _ = protocol::write_begin(&mut Console, name);
        Self {
            passed: 0,
            failed: 0,
            skipped: 0,
        }
    }

    /// Records a check: `Ok(())` passes, `Err(detail)` fails with the detail.
    pub fn check(&mut self, name: &str, result: Result<(), &str>) {
        let outcome = match result {
            Ok(()) => {
                self.passed += 1;
                Outcome::Ok
            }
            Err(detail) => {
                self.failed += 1;
                Outcome::Failed(detail)
            }
        };
        let _ = protocol::write_result(&mut Console, name, outcome);
    }

    pub fn skip(&mut self, name: &str, reason: &str) {
        self.skipped += 1;
        let _ = protocol::write_result(&mut Console, name, Outcome::Skipped(reason));
    }

    /// Prints the END line; returns the exit code (0 when nothing failed).
    pub fn end(self) -> u32 {
        let _ = protocol::write_end(&mut Console, self.passed, self.failed, self.skipped);
        u32::from(self.failed != 0)
    }
}
