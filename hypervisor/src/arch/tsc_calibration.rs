//! Measures the TSC against the 8254 PIT once at boot, and keeps the rate for everything that turns
//! milliseconds into TSC ticks (run budgets, waits) and for the guests' CPUID leaves 0x15/0x16. The
//! arithmetic and the sanity checks are `caps::tsc`.
//!
//! Method (the one Linux's `pit_calibrate_tsc`, arch/x86/kernel/tsc.c, uses): channel 2, whose gate
//! is bit 0 of port 0x61 and whose output OUT2 reads back as bit 5, is loaded in mode 0 (interrupt
//! on terminal count: OUT2 low until the count reaches 0, 8254 data sheet) with ~50 ms of ticks; the
//! TSC is read when counting starts and when OUT2 rises.

use super::cpu::{cpuid, rdtsc};
use super::port;
use crate::caps::tsc::{self, PitRun, TscRate, PIT_CALIBRATION_TICKS};
use core::sync::atomic::{AtomicU64, Ordering};

/// Port 0x61, NMI status and control: bit 0 channel 2 gate, bit 1 speaker data enable, bit 5 OUT2.
const PORT_B: u16 = 0x61;
const PORT_B_GATE2: u8 = 1 << 0;
const PORT_B_SPEAKER: u8 = 1 << 1;
const PORT_B_OUT2: u8 = 1 << 5;
const PIT_CHANNEL2: u16 = 0x42;
const PIT_COMMAND: u16 = 0x43;
/// Channel 2, access low byte then high byte, mode 0, binary.
const CHANNEL2_MODE0_LOHI: u8 = 0xB0;
/// Gives up waiting for OUT2 after this many polls (a PIT that never counts).
const MAX_POLLS: u64 = 200_000_000;

/// The TSC rate in Hz, 0 until [`calibrate`] ran.
static TSC_HZ: AtomicU64 = AtomicU64::new(0);

/// Measures the TSC rate (PIT first, CPUID as the fallback), keeps it for [`tsc_hz`], logs it and
/// returns it. Call once, on the boot CPU, with interrupts off, before any guest runs.
pub fn calibrate() -> TscRate {
    let max_basic = cpuid(0, 0)[0];
    let stated = tsc::cpuid_rate(max_basic, cpuid(0x15, 0), cpuid(0x16, 0));
    let rate = TscRate::choose(measure_against_pit().rate(), stated);
    TSC_HZ.store(rate.hz, Ordering::Relaxed);
    log::info!("tsc: {rate}");
    rate
}

/// The TSC rate [`calibrate`] found; before it ran, what CPUID states (or 3 GHz).
pub fn tsc_hz() -> u64 {
    match TSC_HZ.load(Ordering::Relaxed) {
        0 => {
            let max = cpuid(0, 0)[0];
            let stated = tsc::cpuid_rate(max, cpuid(0x15, 0), cpuid(0x16, 0));
            TscRate::choose(Err("not calibrated"), stated).hz
        }
        hz => hz,
    }
}

fn measure_against_pit() -> PitRun {
    let [low, high] = PIT_CALIBRATION_TICKS.to_le_bytes();
    // SAFETY: the PIT and port 0x61 are platform I/O the host owns at boot; channel 2 only drives
    // the speaker, which stays off, and port 0x61 gets its old value back.
    unsafe {
        let saved: u8 = port::read(PORT_B);
        port::write(PORT_B, (saved & !PORT_B_SPEAKER) | PORT_B_GATE2);
        port::write(PIT_COMMAND, CHANNEL2_MODE0_LOHI);
        port::write(PIT_CHANNEL2, low);
        port::write(PIT_CHANNEL2, high);
        let start = rdtsc();
        let mut polls = 0;
        let mut risen = false;
        while polls < MAX_POLLS {
            polls += 1;
            if port::read::<u8>(PORT_B) & PORT_B_OUT2 != 0 {
                risen = true;
                break;
            }
        }
        let end = rdtsc();
        port::write(PORT_B, saved);
        PitRun {
            tsc_ticks: end.wrapping_sub(start),
            pit_ticks: PIT_CALIBRATION_TICKS,
            polls: risen.then_some(polls),
        }
    }
}
