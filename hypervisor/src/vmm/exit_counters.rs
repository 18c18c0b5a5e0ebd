//! A guest's VM-exit counts by basic exit reason (readable by hypercall, reported when it ends, and
//! compared across a measured window).

use exitless_abi::hypercall::EXIT_REASON_COUNT;

/// Per-guest VM-exit counts by basic exit reason, readable by hypercall.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExitCounters(pub [u64; EXIT_REASON_COUNT]);

impl Default for ExitCounters {
    fn default() -> Self {
        Self([0; EXIT_REASON_COUNT])
    }
}

impl ExitCounters {
    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }
}
