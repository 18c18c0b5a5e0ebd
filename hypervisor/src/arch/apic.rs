//! The host's own interrupt hardware: the local APIC in x2APIC mode (SDM Vol. 3A 11.12), the IOAPIC's
//! redirection table (82093AA datasheet), and the legacy 8259 PICs (masked for good).

use super::msr::{self, x2apic};
use crate::virq::vector_set::VectorSet;

const APIC_BASE_ENABLE: u64 = 1 << 11;
const APIC_BASE_X2APIC: u64 = 1 << 10;
const SVR_ENABLE: u64 = 1 << 8;
const LVT_MASKED: u64 = 1 << 16;
const LVT_TIMER_PERIODIC: u64 = 1 << 17;
/// Divide configuration 0b0011: divide by 16 (SDM Figure 11-10).
const TIMER_DIVIDE_BY_16: u64 = 0b0011;

/// Vectors the host keeps for itself: the top priority class, so guests may use 0x20..0xEF as Linux
/// does (its device vectors reach 0xEB, its local timer is 0xEC). None of them is ever raised on a CPU
/// while a guest runs there (`vmm::host_clock`), so none can reach a guest's handler.
pub const HOST_TIMER_VECTOR: u8 = 0xFE;
/// The VT-d units' fault event interrupt (VT-d 7.3.1).
pub const DMA_FAULT_VECTOR: u8 = 0xFD;
pub const SPURIOUS_VECTOR: u8 = 0xFF;
/// The lowest host vector, the start of the host's priority class (SDM 11.8.3).
pub const HOST_PRIORITY_FLOOR: u8 = 0xF0;
/// A TPR that lets only host vectors in: an interrupt is delivered only if its priority class is above
/// the processor priority's (SDM 11.8.3.1), so TPR sits one class below the host's. This is how the
/// host takes its own pending interrupts without taking a guest's.
pub const HOST_ONLY_TPR: u8 = HOST_PRIORITY_FLOOR - 0x10;

/// Whether the CPU has an x2APIC (CPUID.1:ECX bit 21).
pub fn has_x2apic() -> bool {
    super::cpu::cpuid(1, 0)[2] & (1 << 21) != 0
}

/// Switches the local APIC to x2APIC mode, software-enables it, masks LINT0/LINT1/error and returns its ID.
///
/// # Safety
/// CPL 0, once per CPU, before interrupts are enabled; the CPU must have an x2APIC.
pub unsafe fn enable_x2apic() -> u32 {
    // SAFETY: the caller guarantees CPL 0, an x2APIC, one call per CPU and interrupts still off,
    // so the MSR accesses are allowed and switching to x2APIC mode (SDM 11.12.1 order) cannot
    // strand an interrupt; WRMSR and RDMSR touch no memory.
    unsafe {
        // SDM 11.12.1: xAPIC enabled first (or together), then EXTD.
        let value = msr::read(msr::APIC_BASE) | APIC_BASE_ENABLE;
        msr::write(msr::APIC_BASE, value);
        msr::write(msr::APIC_BASE, value | APIC_BASE_X2APIC);
        msr::write(x2apic::SVR, SVR_ENABLE | u64::from(SPURIOUS_VECTOR));
        for lvt in [x2apic::LVT_LINT0, x2apic::LVT_LINT1, x2apic::LVT_ERROR] {
            msr::write(lvt, LVT_MASKED);
        }
        msr::write(x2apic::TPR, 0);
        msr::read(x2apic::ID) as u32
    }
}

/// Completes the highest-priority interrupt in service.
#[inline(always)]
pub fn eoi() {
    // SAFETY: x2APIC mode is on (enable_x2apic ran before any interrupt was unmasked); writing 0 is EOI.
    unsafe { msr::write(x2apic::EOI, 0) }
}

/// The task-priority register.
pub fn tpr() -> u8 {
    // SAFETY: x2APIC mode is on; reading TPR has no effect.
    unsafe { msr::read(x2apic::TPR) as u8 }
}

/// Sets the task-priority register (only vectors of a higher priority class are delivered).
pub fn set_tpr(tpr: u8) {
    // SAFETY: x2APIC mode is on; TPR only gates delivery.
    unsafe { msr::write(x2apic::TPR, u64::from(tpr)) }
}

/// Starts the periodic host timer: `count` timer ticks (bus clock / 16) between interrupts.
pub fn start_periodic_timer(count: u32) {
    // SAFETY: x2APIC mode is on; the host owns the LAPIC timer (guests cannot reach it: its MSRs exit).
    unsafe {
        msr::write(x2apic::TIMER_DIVIDE, TIMER_DIVIDE_BY_16);
        msr::write(
            x2apic::LVT_TIMER,
            LVT_TIMER_PERIODIC | u64::from(HOST_TIMER_VECTOR),
        );
        msr::write(x2apic::TIMER_INITIAL_COUNT, u64::from(count));
    }
}

/// Masks (true) or unmasks the host timer's LVT entry, keeping its vector and mode. A masked timer keeps
/// counting; it just raises no interrupt (SDM 11.5.1).
pub fn mask_timer(masked: bool) {
    // SAFETY: x2APIC mode is on; the host owns the LAPIC timer.
    unsafe {
        let value = msr::read(x2apic::LVT_TIMER);
        let value = if masked {
            value | LVT_MASKED
        } else {
            value & !LVT_MASKED
        };
        msr::write(x2apic::LVT_TIMER, value);
    }
}

fn read_vector_bits(first: u32) -> VectorSet {
    // SAFETY: x2APIC mode is on; ISR/TMR/IRR are read-only and reading them has no effect.
    VectorSet::from_lapic_words(core::array::from_fn(|i| unsafe {
        msr::read(first + i as u32) as u32
    }))
}

/// In-service register.
pub fn in_service() -> VectorSet {
    read_vector_bits(x2apic::ISR0)
}

/// Interrupt request register (accepted, not yet delivered).
pub fn requested() -> VectorSet {
    read_vector_bits(x2apic::IRR0)
}

/// Trigger mode register (set: the vector was last accepted level-triggered).
pub fn trigger_mode() -> VectorSet {
    read_vector_bits(x2apic::TMR0)
}

/// Whether a host vector is requested or in service, reading only the word that holds them.
pub fn host_vector_pending() -> bool {
    // SAFETY: as in `read_vector_bits`.
    let (isr, irr) = unsafe { (msr::read(x2apic::ISR0 + 7), msr::read(x2apic::IRR0 + 7)) };
    (isr | irr) & (0xFFFF << 16) != 0
}

/// A fixed, edge-triggered interrupt on `vector` to this CPU (x2APIC SELF IPI, SDM 11.12.11).
pub fn self_ipi(vector: u8) {
    // SAFETY: x2APIC mode is on; the host IDT has a gate for every vector it sends itself.
    unsafe { msr::write(x2apic::SELF_IPI, u64::from(vector)) }
}

/// Masks both 8259 PICs: interrupts come through the IOAPIC only.
pub fn mask_legacy_pics() {
    // SAFETY: the PICs' interrupt-mask registers; masking every line has no other effect.
    unsafe {
        super::port::write::<u8>(0x21, 0xFF);
        super::port::write::<u8>(0xA1, 0xFF);
    }
}

/// The physical IOAPIC at an identity-mapped base.
pub struct PhysicalIoapic {
    base: u64,
}

impl PhysicalIoapic {
    /// # Safety
    /// `base` must be an IOAPIC's register window, identity-mapped, and used by nothing else.
    pub const unsafe fn new(base: u64) -> Self {
        Self { base }
    }

    fn write(&self, reg: u32, value: u32) {
        // SAFETY: IOREGSEL at +0x00, IOWIN at +0x10 (82093AA 3.1); the caller vouched for the base.
        unsafe {
            core::ptr::write_volatile(self.base as *mut u32, reg);
            core::ptr::write_volatile((self.base + 0x10) as *mut u32, value);
        }
    }

    /// Writes redirection entry `pin` (high dword first, so the entry is never live half-written).
    pub fn set_entry(&self, pin: u8, entry: u64) {
        let reg = 0x10 + 2 * u32::from(pin);
        self.write(reg, (1 << 16) | entry as u32 & !0xFF); // masked while it changes
        self.write(reg + 1, (entry >> 32) as u32);
        self.write(reg, entry as u32);
    }
}
