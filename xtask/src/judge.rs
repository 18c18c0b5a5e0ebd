//! Reads a serial log through the test protocol (`exitless_abi::protocol`) and judges it.
//! Only what the log says counts; elapsed time never does.

use exitless_abi::protocol::{field, parse_line, Line, Outcome};

/// A test outcome owned by the report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Ok,
    Failed(String),
    Skipped(String),
}

/// Everything protocol-relevant in one serial log.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SerialReport {
    /// Suites named by BEGIN lines, in order (a name seen twice means the machine restarted).
    pub begins: Vec<String>,
    /// RESULT lines in order, named `SUITE/NAME` after the BEGIN they follow.
    pub results: Vec<(String, Verdict)>,
    /// One entry per BEGIN: its END line's counts, if it had one.
    pub ends: Vec<Option<Counts>>,
    /// The POWEROFF line's code (the first one).
    pub poweroff: Option<u32>,
    /// `summary:` facts: topic and fields text.
    pub facts: Vec<(String, String)>,
    /// Indices of protocol events in the order seen, to check BEGIN < END < POWEROFF.
    order: Vec<Event>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub passed: u32,
    pub failed: u32,
    pub skipped: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Event {
    Begin,
    Result,
    End,
    PowerOff,
}

impl SerialReport {
    pub fn parse(log: &str) -> Self {
        let mut report = Self::default();
        for line in log.lines() {
            let Some(parsed) = parse_line(line) else {
                continue;
            };
            match parsed {
                Line::Begin { suite } => {
                    // A guest's suite is named after the guest (the hypervisor prefixes its console
                    // lines with `[guest NAME] `): two guests may run the same test binary.
                    let suite = guest_name(line).unwrap_or(suite);
                    report.begins.push(suite.into());
                    report.ends.push(None);
                    report.order.push(Event::Begin);
                }
                Line::Result { name, outcome } => {
                    let verdict = match outcome {
                        Outcome::Ok => Verdict::Ok,
                        Outcome::Failed(d) => Verdict::Failed(d.into()),
                        Outcome::Skipped(r) => Verdict::Skipped(r.into()),
                    };
                    let suite = report.begins.last().map_or("kernel", String::as_str);
                    report.results.push((format!("{suite}/{name}"), verdict));
                    report.order.push(Event::Result);
                }
                Line::End {
                    passed,
                    failed,
                    skipped,
                } => {
                    if let Some(slot) = report.ends.last_mut() {
                        *slot = Some(Counts {
                            passed,
                            failed,
                            skipped,
                        });
                    }
                    report.order.push(Event::End);
                }
                Line::PowerOff { code } => {
                    if report.poweroff.is_none() {
                        report.poweroff = Some(code);
                        report.order.push(Event::PowerOff);
                    }
                }
                Line::Fact { topic, fields } => report.facts.push((topic.into(), fields.into())),
            }
        }
        report
    }

    /// Counts of the RESULT lines.
    /// Counts of the RESULT lines of suite `suite` (the `SUITE/` prefix of their names).
    pub fn result_counts(&self, suite: &str) -> Counts {
        let mut c = Counts::default();
        let prefix = format!("{suite}/");
        for (_, v) in self.results.iter().filter(|(n, _)| n.starts_with(&prefix)) {
            match v {
                Verdict::Ok => c.passed += 1,
                Verdict::Failed(_) => c.failed += 1,
                Verdict::Skipped(_) => c.skipped += 1,
            }
        }
        c
    }

    /// The protocol test: one or more suites (BEGIN, RESULTs, END with counts that agree with that
    /// suite's RESULT lines), then POWEROFF. A suite name seen twice means the machine restarted.
    /// Failed results are reported by their own tests, not here.
    pub fn protocol(&self) -> Result<(), String> {
        if self.begins.is_empty() {
            return Err("no EXITLESS-TEST BEGIN line".into());
        }
        for (i, suite) in self.begins.iter().enumerate() {
            if self.begins[..i].contains(suite) {
                return Err(format!(
                    "suite `{suite}` began twice: the machine restarted"
                ));
            }
        }
        for (i, suite) in self.begins.iter().enumerate() {
            let Some(end) = self.ends[i] else {
                return Err(format!("suite `{suite}` has no EXITLESS-TEST END line"));
            };
            let seen = self.result_counts(suite);
            if end != seen {
                return Err(format!(
                    "suite `{suite}`: END says passed={} failed={} skipped={} but the RESULT lines give passed={} failed={} skipped={}",
                    end.passed, end.failed, end.skipped, seen.passed, seen.failed, seen.skipped
                ));
            }
        }
        let Some(code) = self.poweroff else {
            return Err("no EXITLESS-POWEROFF line".into());
        };
        let position = |e: Event| self.order.iter().position(|x| *x == e);
        let last_end = self.order.iter().rposition(|x| *x == Event::End);
        if !(position(Event::Begin) < last_end && last_end < position(Event::PowerOff)) {
            return Err("protocol lines out of order (want BEGIN, RESULTs, END, POWEROFF)".into());
        }
        if self.order.iter().rposition(|x| *x == Event::Result) > last_end {
            return Err("RESULT line after END".into());
        }
        let failed: u32 = self.ends.iter().flatten().map(|c| c.failed).sum();
        if failed == 0 && code != 0 {
            return Err(format!(
                "nothing failed but the kernel powered off with code {code}"
            ));
        }
        Ok(())
    }

    /// The fields of every fact on `topic`.
    pub fn facts_on<'a>(&'a self, topic: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.facts
            .iter()
            .filter(move |(t, _)| t == topic)
            .map(|(_, f)| f.as_str())
    }

    /// Ok if some fact on `topic` has every `key=value` in `want`; else says what was seen.
    pub fn expect_fact(&self, topic: &str, want: &[(&str, &str)]) -> Result<(), String> {
        let seen: Vec<&str> = self.facts_on(topic).collect();
        if seen
            .iter()
            .any(|f| want.iter().all(|(k, v)| field(f, k) == Some(*v)))
        {
            return Ok(());
        }
        let want_text = want
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" ");
        Err(match seen.as_slice() {
            [] => format!("no `summary: {topic}` line (wanted {want_text})"),
            _ => format!(
                "wanted `summary: {topic} {want_text}`, saw `{}`",
                seen.join(" | ")
            ),
        })
    }
}

/// NAME of a console line the hypervisor forwarded from guest NAME (`[guest NAME] ...`).
fn guest_name(line: &str) -> Option<&str> {
    let rest = line.split("[guest ").nth(1)?;
    rest.split_once(']')
        .map(|(name, _)| name)
        .filter(|n| !n.is_empty() && !n.contains(' '))
}

/// True once the log holds an `EXITLESS-POWEROFF` line (the end of an emulator run).
pub fn powered_off(log: &str) -> bool {
    log.lines()
        .any(|l| matches!(parse_line(l), Some(Line::PowerOff { .. })))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "\
BdsDxe: loading Boot0001\r
exitless: serial up\r
summary: vmx supported=yes ept=yes vpid=yes\r
summary: iommu units=0\r
summary: ioapic id=0 base=0xfec00000 pins=24\r
EXITLESS-TEST BEGIN boot\r
EXITLESS-TEST RESULT caps ok\r
EXITLESS-TEST RESULT heap ok\r
EXITLESS-TEST RESULT smp skipped one CPU\r
EXITLESS-TEST END passed=2 failed=0 skipped=1\r
EXITLESS-POWEROFF 0\r
";

    #[test]
    fn a_complete_log_passes_with_its_results_and_facts() {
        let r = SerialReport::parse(GOOD);
        assert_eq!(r.protocol(), Ok(()));
        assert_eq!(r.results.len(), 3);
        assert_eq!(
            r.results[2],
            ("boot/smp".into(), Verdict::Skipped("one CPU".into()))
        );
        assert_eq!(
            r.expect_fact("vmx", &[("supported", "yes"), ("ept", "yes")]),
            Ok(())
        );
        assert_eq!(r.expect_fact("ioapic", &[("base", "0xfec00000")]), Ok(()));
        let err = r.expect_fact("iommu", &[("units", "1")]).unwrap_err();
        assert!(err.contains("saw `units=0`"), "{err}");
        assert!(r
            .expect_fact("drhd", &[])
            .unwrap_err()
            .starts_with("no `summary: drhd`"));
    }

    #[test]
    fn missing_end_fails() {
        let log = GOOD.replace("EXITLESS-TEST END passed=2 failed=0 skipped=1\r\n", "");
        let err = SerialReport::parse(&log).protocol().unwrap_err();
        assert!(err.contains("has no EXITLESS-TEST END"), "{err}");
    }

    #[test]
    fn several_suites_are_each_checked_against_their_own_results() {
        let guest = "\
[guest basic] EXITLESS-TEST BEGIN basic\r
[guest basic] EXITLESS-TEST RESULT cpuid ok\r
[guest basic] EXITLESS-TEST END passed=1 failed=0 skipped=0\r
EXITLESS-TEST BEGIN guests\r
EXITLESS-TEST RESULT guest-basic ok\r
EXITLESS-TEST END passed=1 failed=0 skipped=0\r
";
        let log = GOOD.replace(
            "EXITLESS-POWEROFF 0\r\n",
            &format!("{guest}EXITLESS-POWEROFF 0\r\n"),
        );
        let r = SerialReport::parse(&log);
        assert_eq!(r.protocol(), Ok(()));
        assert_eq!(r.results[3], ("basic/cpuid".into(), Verdict::Ok));
        let twice = log
            .replace(
                "EXITLESS-TEST BEGIN guests",
                "[guest other] EXITLESS-TEST BEGIN basic",
            )
            .replace(
                "EXITLESS-TEST RESULT guest-basic ok",
                "[guest other] EXITLESS-TEST RESULT cpuid ok",
            )
            .replace(
                "EXITLESS-TEST END passed=1 failed=0 skipped=0\r\nEXITLESS-POWEROFF",
                "[guest other] EXITLESS-TEST END passed=1 failed=0 skipped=0\r\nEXITLESS-POWEROFF",
            );
        let r2 = SerialReport::parse(&twice);
        assert_eq!(
            r2.protocol(),
            Ok(()),
            "two guests running one test binary are two suites"
        );
        assert_eq!(r2.results[4], ("other/cpuid".into(), Verdict::Ok));
        assert_eq!(r.results[4], ("guests/guest-basic".into(), Verdict::Ok));
        let bad = log.replace("RESULT cpuid ok", "RESULT cpuid FAILED no");
        let err = SerialReport::parse(&bad).protocol().unwrap_err();
        assert!(err.contains("suite `basic`"), "{err}");
    }

    #[test]
    fn missing_begin_or_poweroff_fails() {
        let log = GOOD.replace("EXITLESS-TEST BEGIN boot\r\n", "");
        assert_eq!(
            SerialReport::parse(&log).protocol(),
            Err("no EXITLESS-TEST BEGIN line".into())
        );
        let log = GOOD.replace("EXITLESS-POWEROFF 0\r\n", "");
        assert_eq!(
            SerialReport::parse(&log).protocol(),
            Err("no EXITLESS-POWEROFF line".into())
        );
    }

    #[test]
    fn counts_that_disagree_with_results_fail() {
        let log = GOOD.replace("passed=2", "passed=3");
        let err = SerialReport::parse(&log).protocol().unwrap_err();
        assert!(
            err.contains("END says passed=3") && err.contains("give passed=2"),
            "{err}"
        );
    }

    #[test]
    fn a_failed_result_is_its_own_failure_and_the_protocol_still_holds() {
        let log = GOOD
            .replace(
                "RESULT heap ok",
                "RESULT heap FAILED out of memory at 0x1000",
            )
            .replace("passed=2 failed=0", "passed=1 failed=1")
            .replace("POWEROFF 0", "POWEROFF 1");
        let r = SerialReport::parse(&log);
        assert_eq!(r.protocol(), Ok(()));
        assert_eq!(
            r.results[1],
            (
                "boot/heap".into(),
                Verdict::Failed("out of memory at 0x1000".into())
            )
        );
    }

    #[test]
    fn restarts_and_disorder_fail() {
        let twice = format!("{GOOD}{GOOD}");
        assert!(SerialReport::parse(&twice)
            .protocol()
            .unwrap_err()
            .contains("restarted"));
        let early_poweroff = GOOD.replace("EXITLESS-POWEROFF 0\r\n", "");
        let early_poweroff = format!("EXITLESS-POWEROFF 0\n{early_poweroff}");
        assert!(SerialReport::parse(&early_poweroff)
            .protocol()
            .unwrap_err()
            .contains("out of order"));
        let nonzero = GOOD.replace("POWEROFF 0", "POWEROFF 3");
        assert!(SerialReport::parse(&nonzero)
            .protocol()
            .unwrap_err()
            .contains("code 3"));
    }
}
