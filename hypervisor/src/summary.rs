//! The boot summary: facts about the machine as `summary:` lines, and the kernel's own check results as
//! protocol RESULT lines (see `exitless_abi::protocol`).

use alloc::vec::Vec;
use core::fmt::{self, Write};
use exitless_abi::boot_info::{BootInfo, MemoryKind, MemoryRegion, Module};
use exitless_abi::protocol::{self, Outcome};

use crate::memory::frames::FrameAllocator;

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
    entries: Vec<(&'static str, Outcome<'static>)>,
}

impl Results {
    pub fn record(&mut self, name: &'static str, outcome: Outcome<'static>) {
        self.entries.push((name, outcome));
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
    use alloc::string::String;
    use exitless_abi::protocol::{parse_line, Line};

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
    fn heap_check_passes_on_a_working_heap() {
        assert_eq!(check_heap(), Outcome::Ok);
    }
}
