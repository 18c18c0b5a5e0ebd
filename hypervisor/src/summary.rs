//! The boot summary: facts about the machine as `summary:` lines, and the kernel's own check results as
//! protocol RESULT lines (see `exitless_abi::protocol`).

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::{self, Write};
use exitless_abi::boot_info::{BootInfo, MemoryKind, MemoryRegion, Module};
use exitless_abi::protocol::{self, Outcome};

use crate::config::GuestConfig;
use crate::memory::frames::FrameAllocator;
use crate::vmm::interrupts::InterruptStats;
use crate::vmm::runner::GuestReport;
use crate::vmm::vcpu::{ExitCounters, GuestEnd};
use crate::vmx::exit::ExitReason;

/// Facts about how the machine was booted and its memory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootFacts {
    pub boot_info_version: u32,
    pub modules: usize,
    pub rsdp: u64,
    pub usable_bytes: u64,
    pub free_bytes: u64,
    pub regions: usize,
    pub highest_address: u64,
}

impl BootFacts {
    pub fn collect(
        info: &BootInfo,
        regions: &[MemoryRegion],
        modules: &[Module],
        frames: &FrameAllocator,
    ) -> Self {
        Self {
            boot_info_version: info.version,
            modules: modules.len(),
            rsdp: info.rsdp,
            usable_bytes: regions
                .iter()
                .filter(|r| r.kind == MemoryKind::Usable)
                .map(|r| r.len)
                .sum(),
            free_bytes: frames.free_bytes(),
            regions: regions.len(),
            highest_address: regions.iter().map(|r| r.end()).max().unwrap_or(0),
        }
    }

    pub fn write_summary(&self, out: &mut dyn Write) -> fmt::Result {
        writeln!(
            out,
            "summary: boot loader=exitless-uefi boot_info_version={} modules={} rsdp={:#x}",
            self.boot_info_version, self.modules, self.rsdp
        )?;
        writeln!(
            out,
            "summary: memory usable_mib={} free_mib={} regions={} highest=0x{:x}",
            self.usable_bytes >> 20,
            self.free_bytes >> 20,
            self.regions,
            self.highest_address
        )
    }
}

/// The kernel's own checks, in the order they ran.
#[derive(Default)]
pub struct Results {
    entries: Vec<(String, Outcome<'static>)>,
}

impl Results {
    pub fn record(&mut self, name: impl Into<String>, outcome: Outcome<'static>) {
        self.entries.push((name.into(), outcome));
    }

    pub fn failed(&self) -> u32 {
        self.entries
            .iter()
            .filter(|(_, o)| matches!(o, Outcome::Failed(_)))
            .count() as u32
    }

    /// 0 when nothing failed, 1 otherwise (the power-off code).
    pub fn exit_code(&self) -> u32 {
        u32::from(self.failed() != 0)
    }

    /// RESULT lines, then the END line with counts.
    pub fn write(&self, out: &mut impl Write) -> fmt::Result {
        let (mut passed, mut skipped) = (0, 0);
        for (name, outcome) in &self.entries {
            protocol::write_result(out, name, *outcome)?;
            match outcome {
                Outcome::Ok => passed += 1,
                Outcome::Skipped(_) => skipped += 1,
                Outcome::Failed(_) => {}
            }
        }
        protocol::write_end(out, passed, self.failed(), skipped)
    }
}

/// One line with a guest's VM exits by reason (only reasons that occurred), printed when it ends.
pub fn write_guest_exits(out: &mut dyn Write, report: &GuestReport) -> fmt::Result {
    write!(out, "summary: guest_exits guest={}", report.name)?;
    write_exit_counts(out, &report.counters)?;
    writeln!(out)?;
    write_interrupts(out, "guest_interrupts", &report.name, &report.interrupts)?;
    if let Some(window) = &report.window {
        // The measured window (`vmm::measure_window`): its length, its exits, its interrupt work.
        write!(
            out,
            "summary: guest_window guest={} tsc={}",
            report.name, window.tsc
        )?;
        write_exit_counts(out, &window.exits)?;
        writeln!(out)?;
        write_interrupts(
            out,
            "guest_window_interrupts",
            &report.name,
            &window.interrupts,
        )?;
    }
    Ok(())
}

/// ` total=N REASON=COUNT...`, the reasons that occurred in SDM order.
fn write_exit_counts(out: &mut dyn Write, counters: &ExitCounters) -> fmt::Result {
    write!(out, " total={}", counters.total())?;
    for (reason, count) in counters.0.iter().enumerate().filter(|(_, c)| **c != 0) {
        match ExitReason::from_basic(reason as u16) {
            Some(r) => write!(out, " {r:?}={count}")?,
            None => write!(out, " reason{reason}={count}")?,
        }
    }
    Ok(())
}

fn write_interrupts(
    out: &mut dyn Write,
    line: &str,
    guest: &str,
    irq: &InterruptStats,
) -> fmt::Result {
    writeln!(
        out,
        "summary: {line} guest={guest} injected={} posted={} host_interrupts={} stray={} refused_routings={} eoi_exits={}",
        irq.injected, irq.posted, irq.host_interrupts, irq.stray, irq.refused_routings, irq.eoi_exits
    )
}

/// Whether a guest ended the way its configuration expects: powered off with code 0, or stopped with
/// the expected reason.
pub fn judge_guest(config: &GuestConfig, end: &GuestEnd) -> Outcome<'static> {
    match (end, &config.expect_stop) {
        (GuestEnd::PoweredOff(0), None) => Outcome::Ok,
        (GuestEnd::PoweredOff(_), None) => Outcome::Failed("the guest reported failures"),
        (GuestEnd::Stopped(_), None) => Outcome::Failed("the guest was stopped (see log)"),
        (GuestEnd::Stopped(why), Some(expected)) if why.contains(expected.as_str()) => Outcome::Ok,
        (GuestEnd::Stopped(_), Some(_)) => {
            Outcome::Failed("the guest was stopped for another reason")
        }
        (GuestEnd::PoweredOff(_), Some(_)) => {
            Outcome::Failed("the guest was expected to be stopped")
        }
    }
}

/// Checks that the heap hands out distinct, writable memory.
pub fn check_heap() -> Outcome<'static> {
    let a: Vec<u64> = (0..4096).collect();
    let b: Vec<u64> = (0..4096).map(|x| x * 3).collect();
    let disjoint = a.as_ptr_range().end <= b.as_ptr() || b.as_ptr_range().end <= a.as_ptr();
    if disjoint && a.iter().zip(&b).all(|(x, y)| x * 3 == *y) {
        Outcome::Ok
    } else {
        Outcome::Failed("heap allocations overlap or lost their contents")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmm::measure_window::Snapshot;
    use exitless_abi::protocol::{parse_line, Line};

    #[test]
    fn a_guests_exits_and_its_measured_window_are_one_line_each() {
        let mut counters = ExitCounters::default();
        counters.0[1] = 52;
        counters.0[45] = 52;
        let mut window = Snapshot {
            tsc: 1234,
            ..Default::default()
        };
        window.exits.0[1] = 40;
        window.interrupts.posted = 40;
        let mut report = GuestReport {
            name: "linux".into(),
            end: GuestEnd::PoweredOff(0),
            counters,
            interrupts: InterruptStats {
                posted: 60,
                ..Default::default()
            },
            window: None,
        };
        let mut out = String::new();
        write_guest_exits(&mut out, &report).unwrap();
        assert_eq!(
            out,
            "summary: guest_exits guest=linux total=104 ExternalInterrupt=52 VirtualizedEoi=52\n\
             summary: guest_interrupts guest=linux injected=0 posted=60 host_interrupts=0 stray=0 \
             refused_routings=0 eoi_exits=0\n"
        );
        report.window = Some(window);
        let mut out = String::new();
        write_guest_exits(&mut out, &report).unwrap();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines[2],
            "summary: guest_window guest=linux tsc=1234 total=40 ExternalInterrupt=40"
        );
        assert!(lines[3]
            .starts_with("summary: guest_window_interrupts guest=linux injected=0 posted=40 "));
    }

    #[test]
    fn results_end_line_counts_agree_with_result_lines() {
        let mut r = Results::default();
        r.record("a", Outcome::Ok);
        r.record("b", Outcome::Failed("x"));
        r.record("c", Outcome::Skipped("y"));
        let mut s = String::new();
        r.write(&mut s).unwrap();
        let lines: Vec<_> = s.lines().filter_map(parse_line).collect();
        assert_eq!(lines.len(), 4);
        assert_eq!(
            lines[3],
            Line::End {
                passed: 1,
                failed: 1,
                skipped: 1
            }
        );
        assert_eq!(r.exit_code(), 1);
    }

    #[test]
    fn guests_are_judged_by_how_they_were_expected_to_end() {
        let (mut config, _) = crate::config::Config::parse("[guest g]\nimage = x.elf\n");
        let mut g = config.guests.remove(0);
        assert_eq!(judge_guest(&g, &GuestEnd::PoweredOff(0)), Outcome::Ok);
        assert!(matches!(
            judge_guest(&g, &GuestEnd::PoweredOff(1)),
            Outcome::Failed(_)
        ));
        assert!(matches!(
            judge_guest(&g, &GuestEnd::Stopped("EPT violation".into())),
            Outcome::Failed(_)
        ));
        g.expect_stop = Some("EPT violation".into());
        assert_eq!(
            judge_guest(&g, &GuestEnd::Stopped("EPT violation: 0x80000000".into())),
            Outcome::Ok
        );
        assert!(matches!(
            judge_guest(&g, &GuestEnd::Stopped("triple fault".into())),
            Outcome::Failed(_)
        ));
        assert!(matches!(
            judge_guest(&g, &GuestEnd::PoweredOff(0)),
            Outcome::Failed(_)
        ));
    }

    #[test]
    fn heap_check_passes_on_a_working_heap() {
        assert_eq!(check_heap(), Outcome::Ok);
    }
}
