//! Interrupt hardware as a bare-metal kernel programs it: the local APIC in x2APIC mode (SDM Vol. 3A
//! 11.12), the IOAPIC (82093AA datasheet), and COM2's 16550 as an interrupt source (IRQ 3).
//! Under Exitless the same accesses reach the virtual x2APIC and the mediated IOAPIC.
//!
//! [`enable`] falls back to xAPIC mode (memory-mapped registers, SDM 11.4.1) on a CPU without x2APIC:
//! QEMU 7.2's TCG has none, and guests that run bare metal there need their EOIs. Only [`enable`],
//! [`eoi`] and [`enable_x2apic`] know both modes; the timer and ICR helpers are x2APIC-only.

use core::sync::atomic::{AtomicU64, Ordering};
use x86_64::instructions::port::Port;
use x86_64::registers::model_specific::Msr;

const IA32_APIC_BASE: u32 = 0x1B;
const APIC_BASE_ENABLE: u64 = 1 << 11;
const APIC_BASE_X2APIC: u64 = 1 << 10;
const X2APIC_ID: u32 = 0x802;
const X2APIC_SVR: u32 = 0x80F;
const X2APIC_EOI: u32 = 0x80B;
const X2APIC_ICR: u32 = 0x830;
/// SVR bit 8: APIC software enable; the low byte is the spurious vector.
const SVR_ENABLE: u64 = 1 << 8;
pub const SPURIOUS_VECTOR: u8 = 0xFF;
/// CPUID.1:ECX bit 21: x2APIC supported.
const CPUID_X2APIC: u32 = 1 << 21;
/// IA32_APIC_BASE bits 51:12: the xAPIC's physical base (SDM 11.4.4, Figure 11-5).
const APIC_BASE_ADDRESS: u64 = 0x000F_FFFF_FFFF_F000;
/// xAPIC register offsets (SDM 11.4.1, Table 11-1).
const XAPIC_ID: u64 = 0x20;
const XAPIC_TPR: u64 = 0x80;
const XAPIC_EOI: u64 = 0xB0;
const XAPIC_SVR: u64 = 0xF0;

/// The xAPIC's base address once [`enable`] chose xAPIC mode; 0 in x2APIC mode (the default). The
/// identity map of both the loader (4 GiB and up) and the guest layout covers 0xFEE00000.
static XAPIC_BASE: AtomicU64 = AtomicU64::new(0);

/// Enables the local APIC, in x2APIC mode when the CPU has it and in xAPIC mode otherwise; returns
/// its ID.
pub fn enable() -> u32 {
    if core::arch::x86_64::__cpuid(1).ecx & CPUID_X2APIC != 0 {
        return enable_x2apic();
    }
    // SAFETY: architectural MSR; its base field says where the xAPIC's registers are.
    let base = unsafe {
        let mut msr = Msr::new(IA32_APIC_BASE);
        let value = msr.read();
        msr.write(value | APIC_BASE_ENABLE);
        value & APIC_BASE_ADDRESS
    };
    XAPIC_BASE.store(base, Ordering::Relaxed);
    xapic_write(XAPIC_TPR, 0);
    xapic_write(XAPIC_SVR, (SVR_ENABLE | u64::from(SPURIOUS_VECTOR)) as u32);
    xapic_read(XAPIC_ID) >> 24
}

fn xapic_write(register: u64, value: u32) {
    let at = XAPIC_BASE.load(Ordering::Relaxed) + register;
    // SAFETY: an xAPIC register (32-bit access, SDM 11.4.1), identity-mapped.
    unsafe { core::ptr::write_volatile(at as *mut u32, value) }
}

fn xapic_read(register: u64) -> u32 {
    let at = XAPIC_BASE.load(Ordering::Relaxed) + register;
    // SAFETY: as in `xapic_write`.
    unsafe { core::ptr::read_volatile(at as *const u32) }
}

/// Enables the local APIC in x2APIC mode and returns its ID.
pub fn enable_x2apic() -> u32 {
    XAPIC_BASE.store(0, Ordering::Relaxed);
    // SAFETY: architectural MSRs; xAPIC must be enabled before (or together with) x2APIC (SDM 11.12.1).
    unsafe {
        let mut base = Msr::new(IA32_APIC_BASE);
        let value = base.read();
        base.write(value | APIC_BASE_ENABLE | APIC_BASE_X2APIC);
        Msr::new(X2APIC_SVR).write(SVR_ENABLE | u64::from(SPURIOUS_VECTOR));
        Msr::new(X2APIC_ID).read() as u32
    }
}

/// Masks both 8259 PICs so IRQ 3 arrives once, through the IOAPIC (bare metal; under Exitless the
/// ports are not the guest's and the writes are dropped).
pub fn mask_legacy_pics() {
    // SAFETY: the PICs' interrupt-mask registers.
    unsafe {
        Port::<u8>::new(0x21).write(0xFF);
        Port::<u8>::new(0xA1).write(0xFF);
    }
}

/// Signals end of interrupt: the x2APIC EOI MSR (any write other than 0 is #GP), or the xAPIC's
/// EOI register when [`enable`] fell back to xAPIC mode.
#[inline(always)]
pub fn eoi() {
    if XAPIC_BASE.load(Ordering::Relaxed) != 0 {
        xapic_write(XAPIC_EOI, 0);
        return;
    }
    // SAFETY: writing 0 to the x2APIC EOI register completes the highest in-service interrupt.
    unsafe { Msr::new(X2APIC_EOI).write(0) }
}

/// Arms the LAPIC timer once: `vector` after `count` ticks of the timer clock divided by 1
/// (SDM 11.5.4: divide configuration 0b1011, LVT timer mode 00 one-shot).
pub fn start_oneshot_timer(vector: u8, count: u32) {
    // SAFETY: the guest's own LAPIC timer (virtual under Exitless).
    unsafe {
        Msr::new(0x83E).write(0b1011);
        Msr::new(0x832).write(u64::from(vector));
        Msr::new(0x838).write(u64::from(count));
    }
}

/// Writes the x2APIC ICR (IPIs); a guest must not be able to send INIT/SIPI to the host's CPUs.
///
/// # Safety
/// Sends an inter-processor interrupt.
pub unsafe fn write_icr(value: u64) {
    // SAFETY: the caller accepts the IPI this sends (this function's contract); the WRMSR itself
    // touches no memory.
    unsafe { Msr::new(X2APIC_ICR).write(value) }
}

/// The IOAPIC at its architectural address, identity-mapped.
pub struct IoApic {
    base: u64,
}

impl IoApic {
    pub const DEFAULT_BASE: u64 = 0xFEC0_0000;

    pub const fn new(base: u64) -> Self {
        Self { base }
    }

    fn write(&self, reg: u32, value: u32) {
        // SAFETY: IOREGSEL at +0x00, IOWIN at +0x10; the IOAPIC is identity-mapped (or emulated).
        unsafe {
            core::ptr::write_volatile(self.base as *mut u32, reg);
            core::ptr::write_volatile((self.base + 0x10) as *mut u32, value);
        }
    }

    /// Routes `pin` to `vector` on APIC `dest` (physical mode, fixed delivery, edge, active high).
    pub fn route(&self, pin: u8, vector: u8, dest: u32) {
        let reg = 0x10 + 2 * u32::from(pin);
        self.write(reg + 1, (dest & 0xFF) << 24);
        self.write(reg, u32::from(vector));
    }

    /// Masks `pin` (redirection entry bit 16).
    pub fn mask(&self, pin: u8) {
        self.write(0x10 + 2 * u32::from(pin), 1 << 16);
    }
}

/// COM2's 16550 as an interrupt source: each transmitted byte raises a transmit-holding-register-empty
/// interrupt on IRQ 3 while IER bit 1 is set.
pub struct Com2;

impl Com2 {
    pub const BASE: u16 = 0x2F8;
    pub const IRQ: u8 = 3;

    /// 115200 8N1, FIFOs off (one interrupt per byte), OUT2 on (routes the interrupt on PCs).
    pub fn init() {
        // SAFETY: COM2's registers; the test owns COM2 (assigned to this guest under Exitless).
        unsafe {
            Port::<u8>::new(Self::BASE + 1).write(0x00); // IER: off while programming
            Port::<u8>::new(Self::BASE + 3).write(0x80); // LCR: DLAB
            Port::<u8>::new(Self::BASE).write(0x01); // divisor 1 = 115200 baud
            Port::<u8>::new(Self::BASE + 1).write(0x00);
            Port::<u8>::new(Self::BASE + 3).write(0x03); // 8N1
            Port::<u8>::new(Self::BASE + 2).write(0x00); // FCR: FIFOs off
            Port::<u8>::new(Self::BASE + 4).write(0x08); // MCR: OUT2
        }
    }

    /// Enables or disables the transmit-empty interrupt (IER bit 1).
    pub fn set_tx_interrupt(on: bool) {
        // SAFETY: as in `init`.
        unsafe { Port::<u8>::new(Self::BASE + 1).write(if on { 0x02 } else { 0x00 }) }
    }

    /// Sends one byte (also acknowledges a pending transmit-empty interrupt, 16550 datasheet IIR).
    #[inline(always)]
    pub fn send(byte: u8) {
        // SAFETY: as in `init`.
        unsafe { Port::<u8>::new(Self::BASE).write(byte) }
    }

    /// Reads IIR (acknowledges a transmit-empty interrupt when it is the one pending).
    pub fn interrupt_id() -> u8 {
        // SAFETY: as in `init`.
        unsafe { Port::<u8>::new(Self::BASE + 2).read() }
    }
}
