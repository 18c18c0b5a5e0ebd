//! The guest's measured window: it writes [`MEASURE_BEGIN`] and then [`MEASURE_END`] to
//! [`MEASURE_PORT`] around a workload, and the hypervisor reports what happened in between, its
//! exits by reason, the interrupt path's counters and the TSC time, as `summary: guest_window`
//! when the guest ends (`cargo xtask bench --workload net` reads it). The end mark's own exit is
//! counted in the window; the begin mark's is not.

use super::exit_counters::ExitCounters;
use super::interrupts::InterruptStats;
pub use exitless_abi::hypercall::{MEASURE_BEGIN, MEASURE_END, MEASURE_PORT};

/// The counters at one instant.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub tsc: u64,
    pub exits: ExitCounters,
    pub interrupts: InterruptStats,
}

impl Snapshot {
    /// What changed from `earlier` to `self`.
    fn since(&self, earlier: &Snapshot) -> Snapshot {
        let mut exits = ExitCounters::default();
        for (delta, (now, then)) in exits
            .0
            .iter_mut()
            .zip(self.exits.0.iter().zip(earlier.exits.0.iter()))
        {
            *delta = now.saturating_sub(*then);
        }
        let (a, b) = (&self.interrupts, &earlier.interrupts);
        Snapshot {
            tsc: self.tsc.saturating_sub(earlier.tsc),
            exits,
            interrupts: InterruptStats {
                injected: a.injected.saturating_sub(b.injected),
                posted: a.posted.saturating_sub(b.posted),
                host_interrupts: a.host_interrupts.saturating_sub(b.host_interrupts),
                stray: a.stray.saturating_sub(b.stray),
                refused_routings: a.refused_routings.saturating_sub(b.refused_routings),
                eoi_exits: a.eoi_exits.saturating_sub(b.eoi_exits),
            },
        }
    }
}

/// One vCPU's window: open since a begin mark, and the last one closed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MeasureWindow {
    open: Option<Snapshot>,
    /// What the last closed window counted (its `tsc` is the window's length).
    pub closed: Option<Snapshot>,
}

impl MeasureWindow {
    /// The guest wrote `value` to the measurement port when the counters were `now`. A begin mark
    /// (re)opens the window; an end mark closes an open one; anything else is ignored, as is an end
    /// without a begin.
    pub fn mark(&mut self, value: u8, now: Snapshot) {
        match value {
            MEASURE_BEGIN => self.open = Some(now),
            MEASURE_END => {
                if let Some(begin) = self.open.take() {
                    self.closed = Some(now.since(&begin));
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(tsc: u64, cpuid_exits: u64, posted: u64) -> Snapshot {
        let mut exits = ExitCounters::default();
        exits.0[10] = cpuid_exits;
        Snapshot {
            tsc,
            exits,
            interrupts: InterruptStats {
                posted,
                ..Default::default()
            },
        }
    }

    #[test]
    fn a_window_reports_what_changed_between_its_marks() {
        let mut w = MeasureWindow::default();
        w.mark(MEASURE_END, at(1, 1, 1));
        assert_eq!(w.closed, None, "an end without a begin closes nothing");
        w.mark(MEASURE_BEGIN, at(1000, 5, 7));
        w.mark(7, at(2000, 0, 0)); // not a mark: ignored
        w.mark(MEASURE_END, at(4000, 9, 10));
        let closed = w.closed.clone().unwrap();
        assert_eq!(
            (closed.tsc, closed.exits.0[10], closed.exits.total()),
            (3000, 4, 4)
        );
        assert_eq!(closed.interrupts.posted, 3);
        // A second end keeps the last window; a new begin starts afresh.
        w.mark(MEASURE_END, at(9000, 99, 99));
        assert_eq!(w.closed, Some(closed));
        w.mark(MEASURE_BEGIN, at(10_000, 0, 0));
        w.mark(MEASURE_END, at(10_500, 2, 0));
        assert_eq!(w.closed.as_ref().map(|c| c.tsc), Some(500));
    }
}
