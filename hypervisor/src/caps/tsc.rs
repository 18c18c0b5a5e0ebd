//! The TSC's rate: measured against the 8254 PIT at boot (`arch::tsc_calibration` does the port
//! I/O), else what CPUID leaves 0x15/0x16 claim. The arithmetic and the sanity checks live here, on
//! raw numbers, so they are host-tested.
//!
//! Why measure: an emulator's TSC need not run at the rate its CPUID states. Bochs `tigerlake`
//! (`clock: sync=none`, ips 50M) says 2419.2 MHz in leaf 0x15 while its TSC advances about one tick
//! per instruction, ~48x slower (shared/emulators.md). Its PIT runs in the same emulated time, so a
//! rate measured against the PIT is the one guests and the host's own budgets must use.

use core::fmt;

/// The PIT's input clock, 1.193182 MHz (Intel 8254 on the PC platform).
pub const PIT_HZ: u64 = 1_193_182;
/// The calibration interval: ~50 ms of PIT time, the longest one 16-bit count allows (65535 ticks
/// = 54.9 ms). Longer means less error from the polling delay at each end.
pub const PIT_CALIBRATION_TICKS: u16 = 59_659;
/// Fewer polls of port 0x61 than this in ~50 ms means OUT2 did not really count down (a missing PIT
/// floats port 0x61 to all ones, with OUT2 set at once); even an emulator polls far more often.
pub const MIN_PIT_POLLS: u64 = 1000;
/// Rates outside this range are not believed: 1 MHz (slower than any emulator run here) to 20 GHz.
const PLAUSIBLE_HZ: core::ops::RangeInclusive<u64> = 1_000_000..=20_000_000_000;

/// Where the rate came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TscSource {
    Pit,
    Cpuid15,
    Cpuid16,
    /// Nothing usable: 3 GHz is assumed.
    Assumed,
}

impl TscSource {
    pub fn as_str(self) -> &'static str {
        match self {
            TscSource::Pit => "pit",
            TscSource::Cpuid15 => "cpuid15",
            TscSource::Cpuid16 => "cpuid16",
            TscSource::Assumed => "assumed",
        }
    }
}

/// What one run against the PIT saw: TSC ticks across `pit_ticks` PIT ticks, and how many times
/// port 0x61 was polled meanwhile (`None` if OUT2 never rose within the poll limit).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PitRun {
    pub tsc_ticks: u64,
    pub pit_ticks: u16,
    pub polls: Option<u64>,
}

impl PitRun {
    /// The TSC rate this run shows, or why it shows none.
    pub fn rate(&self) -> Result<u64, &'static str> {
        let polls = self
            .polls
            .ok_or("the PIT never counted down (OUT2 stayed low)")?;
        if polls < MIN_PIT_POLLS || self.pit_ticks == 0 {
            return Err("the PIT looks absent (OUT2 rose at once)");
        }
        let hz = u128::from(self.tsc_ticks) * u128::from(PIT_HZ) / u128::from(self.pit_ticks);
        let hz = u64::try_from(hz).unwrap_or(u64::MAX);
        if PLAUSIBLE_HZ.contains(&hz) {
            Ok(hz)
        } else {
            Err("the rate measured against the PIT is implausible")
        }
    }
}

/// The TSC rate CPUID states: leaf 0x15 (crystal Hz * EBX / EAX, SDM Vol. 2A CPUID leaf 15H), else
/// leaf 0x16's base MHz. `max_basic` is CPUID.0:EAX.
pub fn cpuid_rate(max_basic: u32, leaf15: [u32; 4], leaf16: [u32; 4]) -> Option<(u64, TscSource)> {
    let [denominator, numerator, crystal, _] = leaf15;
    if max_basic >= 0x15 && denominator != 0 && numerator != 0 && crystal != 0 {
        let hz = u64::from(crystal) * u64::from(numerator) / u64::from(denominator);
        return Some((hz, TscSource::Cpuid15));
    }
    let base_mhz = leaf16[0] & 0xFFFF;
    (max_basic >= 0x16 && base_mhz != 0)
        .then(|| (u64::from(base_mhz) * 1_000_000, TscSource::Cpuid16))
}

/// The rate the hypervisor uses, with what CPUID said beside it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TscRate {
    pub hz: u64,
    pub source: TscSource,
    pub cpuid_hz: Option<u64>,
    /// Why the PIT was not used, when it was not.
    pub pit_problem: Option<&'static str>,
}

/// 3 GHz, when neither the PIT nor CPUID gives a rate.
const ASSUMED_HZ: u64 = 3_000_000_000;

impl TscRate {
    /// The PIT's measurement if it is sound, else CPUID's, else the assumption.
    pub fn choose(pit: Result<u64, &'static str>, cpuid: Option<(u64, TscSource)>) -> Self {
        let cpuid_hz = cpuid.map(|(hz, _)| hz);
        match pit {
            Ok(hz) => Self {
                hz,
                source: TscSource::Pit,
                cpuid_hz,
                pit_problem: None,
            },
            Err(problem) => {
                let (hz, source) = cpuid.unwrap_or((ASSUMED_HZ, TscSource::Assumed));
                Self {
                    hz,
                    source,
                    cpuid_hz,
                    pit_problem: Some(problem),
                }
            }
        }
    }

    pub fn per_ms(&self) -> u64 {
        (self.hz / 1000).max(1)
    }

    /// `summary: tsc hz=... source=... cpuid_hz=...` (0: CPUID states no rate).
    pub fn write_summary(&self, out: &mut dyn fmt::Write) -> fmt::Result {
        writeln!(
            out,
            "summary: tsc hz={} source={} cpuid_hz={}",
            self.hz,
            self.source.as_str(),
            self.cpuid_hz.unwrap_or(0)
        )
    }
}

/// "50.0 MHz measured against the PIT (CPUID 0x15 says 2419.2 MHz)" and the like, for the log.
impl fmt::Display for TscRate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mhz = |hz: u64| (hz / 1_000_000, (hz % 1_000_000) / 100_000);
        let (whole, tenth) = mhz(self.hz);
        write!(f, "{whole}.{tenth} MHz ")?;
        match self.source {
            TscSource::Pit => f.write_str("measured against the PIT")?,
            TscSource::Cpuid15 => f.write_str("from CPUID 0x15")?,
            TscSource::Cpuid16 => f.write_str("from CPUID 0x16")?,
            TscSource::Assumed => f.write_str("assumed")?,
        }
        if let Some(problem) = self.pit_problem {
            write!(f, ": {problem}")?;
        }
        match (self.source, self.cpuid_hz) {
            (TscSource::Pit, Some(hz)) => {
                let (whole, tenth) = mhz(hz);
                write!(f, " (CPUID says {whole}.{tenth} MHz)")
            }
            (TscSource::Pit, None) => f.write_str(" (CPUID states no rate)"),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::format;
    use alloc::string::String;

    /// Bochs `tigerlake` leaves 0x15 and 0x16 (its cpudb entry; shared/linux-guest.md).
    const BOCHS_15: [u32; 4] = [2, 0x7E, 38_400_000, 0];
    const BOCHS_16: [u32; 4] = [0x960, 0x1068, 0x64, 0];

    #[test]
    fn cpuid_rate_prefers_leaf_15_then_16() {
        assert_eq!(
            cpuid_rate(0x1B, BOCHS_15, BOCHS_16),
            Some((2_419_200_000, TscSource::Cpuid15))
        );
        assert_eq!(
            cpuid_rate(0x1B, [2, 0x7E, 0, 0], BOCHS_16),
            Some((2_400_000_000, TscSource::Cpuid16))
        );
        assert_eq!(cpuid_rate(0x14, BOCHS_15, BOCHS_16), None);
        assert_eq!(cpuid_rate(0x16, [0; 4], [0; 4]), None);
    }

    #[test]
    fn pit_run_gives_the_rate_of_the_emulated_clock() {
        // Bochs: ~50M TSC ticks per emulated second, 59659 PIT ticks = 50 ms.
        let run = PitRun {
            tsc_ticks: 2_500_000,
            pit_ticks: PIT_CALIBRATION_TICKS,
            polls: Some(40_000),
        };
        let hz = run.rate().unwrap();
        assert!((49_990_000..=50_010_000).contains(&hz), "{hz}");
    }

    #[test]
    fn absent_or_stuck_pit_is_refused() {
        let absent = PitRun {
            tsc_ticks: 300,
            pit_ticks: PIT_CALIBRATION_TICKS,
            polls: Some(1),
        };
        assert!(absent.rate().unwrap_err().contains("absent"));
        let stuck = PitRun {
            polls: None,
            ..absent
        };
        assert!(stuck.rate().unwrap_err().contains("never counted"));
        let slow = PitRun {
            tsc_ticks: 10,
            pit_ticks: PIT_CALIBRATION_TICKS,
            polls: Some(5000),
        };
        assert!(slow.rate().unwrap_err().contains("implausible"));
    }

    #[test]
    fn choose_and_report() {
        let cpuid = cpuid_rate(0x1B, BOCHS_15, BOCHS_16);
        let measured = TscRate::choose(Ok(50_012_345), cpuid);
        assert_eq!(measured.per_ms(), 50_012);
        assert_eq!(
            format!("{measured}"),
            "50.0 MHz measured against the PIT (CPUID says 2419.2 MHz)"
        );
        let mut line = String::new();
        measured.write_summary(&mut line).unwrap();
        assert_eq!(
            line,
            "summary: tsc hz=50012345 source=pit cpuid_hz=2419200000\n"
        );

        let fallback = TscRate::choose(Err("the PIT looks absent (OUT2 rose at once)"), cpuid);
        assert_eq!(
            (fallback.hz, fallback.source),
            (2_419_200_000, TscSource::Cpuid15)
        );
        assert_eq!(
            format!("{fallback}"),
            "2419.2 MHz from CPUID 0x15: the PIT looks absent (OUT2 rose at once)"
        );
        let nothing = TscRate::choose(Err("x"), None);
        assert_eq!(
            (nothing.hz, nothing.source),
            (3_000_000_000, TscSource::Assumed)
        );
    }
}
