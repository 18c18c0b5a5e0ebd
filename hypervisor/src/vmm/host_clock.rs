//! The host's time while a guest runs: its tick and the guest's run budget, both kept in TSC time and
//! both enforced by the VMX-preemption timer.
//!
//! Why not an interrupt: while a guest runs without external-interrupt exiting (ELI), any interrupt
//! raised on its CPU is delivered through the IDT the *guest* controls, and the guest also controls
//! the page tables that translate that IDT's address. No shadow IDT can be trusted to send a host
//! vector to an exit. So no host interrupt source is left armed on a CPU while a guest runs there (the
//! LAPIC timer is masked, VT-d fault events are masked and polled at each tick); instead the
//! preemption timer is aimed at the next tick. It counts down in VMX non-root operation whatever the
//! guest does (RFLAGS.IF, TPR, its IDT, HLT) and causes a VM exit when it reaches zero (SDM Vol. 3C
//! 25.5.1), so the host regains the CPU on time in both interrupt modes.

/// When the host must next have the CPU, and how long the guest may still run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostClock {
    period: u64,
    next_tick: u64,
    /// TSC at which the guest's run budget is spent.
    budget_end: Option<u64>,
}

impl HostClock {
    /// A clock started at TSC `now` that ticks every `period` TSC ticks, with an optional run budget.
    pub fn start(now: u64, period: u64, budget: Option<u64>) -> Self {
        let period = period.max(1);
        Self {
            period,
            next_tick: now.saturating_add(period),
            budget_end: budget.map(|b| now.saturating_add(b)),
        }
    }

    /// The ticks that fell due by `now`, each counted once however late the host looks.
    pub fn advance(&mut self, now: u64) -> u64 {
        if now < self.next_tick {
            return 0;
        }
        let due = (now - self.next_tick) / self.period + 1;
        self.next_tick = self.next_tick.saturating_add(due * self.period);
        due
    }

    /// TSC at which the host next needs the CPU: its tick, or the end of the budget if sooner.
    pub fn next_deadline(&self) -> u64 {
        self.budget_end
            .map_or(self.next_tick, |end| end.min(self.next_tick))
    }

    /// Whether the run budget is spent at `now`.
    pub fn budget_spent(&self, now: u64) -> bool {
        self.budget_end.is_some_and(|end| now >= end)
    }
}

/// The VMX-preemption timer value that expires at TSC `deadline` (or sooner), counted from `now`: the
/// timer counts down once every 2^`shift` TSC ticks (IA32_VMX_MISC bits 4:0, SDM Vol. 3C 25.5.1), so
/// the value is rounded down, never up. A deadline already passed gives 0: exit before the guest's first instruction (SDM Vol. 3C 26.7.4).
pub fn preemption_value(now: u64, deadline: u64, shift: u8) -> u32 {
    let ticks = deadline.saturating_sub(now) >> shift;
    ticks.min(u64::from(u32::MAX)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_tick_counts_once_however_late_the_host_looks() {
        let mut clock = HostClock::start(1000, 100, None);
        assert_eq!(clock.advance(1099), 0);
        assert_eq!(clock.advance(1100), 1);
        assert_eq!(clock.advance(1100), 0);
        // Three periods late: three ticks, and the next one is still on the original grid.
        assert_eq!(clock.advance(1450), 3);
        assert_eq!(clock.next_deadline(), 1500);
    }

    #[test]
    fn the_budget_ends_the_run_and_bounds_the_deadline() {
        let clock = HostClock::start(0, 1000, Some(250));
        assert_eq!(clock.next_deadline(), 250);
        assert!(!clock.budget_spent(249));
        assert!(clock.budget_spent(250));
        let unbounded = HostClock::start(0, 1000, None);
        assert_eq!(unbounded.next_deadline(), 1000);
        assert!(!unbounded.budget_spent(u64::MAX));
    }

    #[test]
    fn preemption_values_never_overshoot_the_deadline() {
        // Rate 2^5: 100 TSC ticks are 3 timer ticks (96), not 4 (128).
        assert_eq!(preemption_value(0, 100, 5), 3);
        assert_eq!(preemption_value(500, 100, 5), 0);
        assert_eq!(preemption_value(0, u64::MAX, 0), u32::MAX);
    }
}
