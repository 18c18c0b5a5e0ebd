//! A guest's local APIC in x2APIC mode (SDM Vol. 3A ch. 11; "ch. 11" is ch. 12 in SDMs from
//! 2024 on): the register file behind MSRs 0x800-0x8FF (11.12.1, Table 11-6), interrupt
//! acceptance and priority (11.8), the error status register (11.5.3) and the timer (11.5.4).
//!
//! The model is clock-free: the caller advances it to the guest's current TSC with
//! [`X2apic::advance_to`] before each access and asks [`X2apic::next_timer_due`] when it must regain
//! control. The timer's input clock is the guest TSC (one count every `divisor` TSC ticks), the
//! same clock the TSC-deadline mode compares against.

use core::fmt;

/// x2APIC register MSR addresses (SDM Vol. 3A Table 11-6).
pub use crate::arch::msr::x2apic as msr;

/// Version register: version 0x14 (integrated APIC), max LVT entry 5 (six LVTs: timer, thermal,
/// perfmon, LINT0, LINT1, error; no CMCI), bit 24 = 0: no EOI-broadcast suppression (11.4.8).
pub const VERSION_VALUE: u32 = 0x0005_0014;

/// The six local vector table entries, in MSR order 0x832-0x837.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lvt {
    Timer = 0,
    Thermal = 1,
    PerfMon = 2,
    Lint0 = 3,
    Lint1 = 4,
    Error = 5,
}

impl Lvt {
    pub const ALL: [Lvt; 6] = [
        Lvt::Timer,
        Lvt::Thermal,
        Lvt::PerfMon,
        Lvt::Lint0,
        Lvt::Lint1,
        Lvt::Error,
    ];

    /// Bits software may write (SDM Figure 11-8): vector 7:0 everywhere, delivery mode 10:8 for
    /// thermal/perfmon/LINT, polarity 13 and trigger 15 for LINT, mask 16, timer mode 18:17.
    /// Delivery status (12) and remote IRR (14) are read-only status, ignored on write.
    const fn writable_bits(self) -> u32 {
        match self {
            Lvt::Timer => 0x7_00FF,
            Lvt::Thermal | Lvt::PerfMon => 0x1_07FF,
            Lvt::Lint0 | Lvt::Lint1 => 0x1_A7FF,
            Lvt::Error => 0x1_00FF,
        }
    }
    const READ_ONLY_STATUS: u32 = (1 << 12) | (1 << 14);
}

/// LVT mask bit (11.5.1).
pub const LVT_MASKED: u32 = 1 << 16;

/// A decoded x2APIC register (one MSR of Table 11-6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Register {
    Id,
    Version,
    Tpr,
    Ppr,
    Eoi,
    Ldr,
    Svr,
    /// ISR bits 32*i .. 32*i+31.
    Isr(u8),
    Tmr(u8),
    Irr(u8),
    Esr,
    Icr,
    Lvt(Lvt),
    TimerInitialCount,
    TimerCurrentCount,
    TimerDivide,
    SelfIpi,
}

/// How software may access a register (Table 11-6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegisterAccess {
    ReadWrite,
    ReadOnly,
    WriteOnly,
}

impl Register {
    /// The register at `msr`, or `None` for MSRs outside the range and reserved ones (APR,
    /// RRD, DFR, ICR high, CMCI with max LVT 5, 0x83A-0x83D...), which raise #GP.
    pub const fn from_msr(msr: u32) -> Option<Register> {
        Some(match msr {
            msr::ID => Register::Id,
            msr::VERSION => Register::Version,
            msr::TPR => Register::Tpr,
            msr::PPR => Register::Ppr,
            msr::EOI => Register::Eoi,
            msr::LDR => Register::Ldr,
            msr::SVR => Register::Svr,
            0x810..=0x817 => Register::Isr((msr - msr::ISR0) as u8),
            0x818..=0x81F => Register::Tmr((msr - msr::TMR0) as u8),
            0x820..=0x827 => Register::Irr((msr - msr::IRR0) as u8),
            msr::ESR => Register::Esr,
            msr::ICR => Register::Icr,
            0x832..=0x837 => Register::Lvt(Lvt::ALL[(msr - msr::LVT_TIMER) as usize]),
            msr::TIMER_INITIAL_COUNT => Register::TimerInitialCount,
            msr::TIMER_CURRENT_COUNT => Register::TimerCurrentCount,
            msr::TIMER_DIVIDE => Register::TimerDivide,
            msr::SELF_IPI => Register::SelfIpi,
            _ => return None,
        })
    }

    pub const fn msr(self) -> u32 {
        match self {
            Register::Id => msr::ID,
            Register::Version => msr::VERSION,
            Register::Tpr => msr::TPR,
            Register::Ppr => msr::PPR,
            Register::Eoi => msr::EOI,
            Register::Ldr => msr::LDR,
            Register::Svr => msr::SVR,
            Register::Isr(i) => msr::ISR0 + i as u32,
            Register::Tmr(i) => msr::TMR0 + i as u32,
            Register::Irr(i) => msr::IRR0 + i as u32,
            Register::Esr => msr::ESR,
            Register::Icr => msr::ICR,
            Register::Lvt(l) => msr::LVT_TIMER + l as u32,
            Register::TimerInitialCount => msr::TIMER_INITIAL_COUNT,
            Register::TimerCurrentCount => msr::TIMER_CURRENT_COUNT,
            Register::TimerDivide => msr::TIMER_DIVIDE,
            Register::SelfIpi => msr::SELF_IPI,
        }
    }

    pub const fn access(self) -> RegisterAccess {
        match self {
            Register::Id
            | Register::Version
            | Register::Ppr
            | Register::Ldr
            | Register::Isr(_)
            | Register::Tmr(_)
            | Register::Irr(_)
            | Register::TimerCurrentCount => RegisterAccess::ReadOnly,
            Register::Eoi | Register::SelfIpi => RegisterAccess::WriteOnly,
            _ => RegisterAccess::ReadWrite,
        }
    }
}

/// Why an access faults. Every variant means the same to the guest: inject #GP(0)
/// (11.12.1.2 for the access kind, 11.12.1.3 for reserved bits).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum X2apicFault {
    /// Not an x2APIC MSR, or a reserved one inside 0x800-0x8FF.
    ReservedRegister(u32),
    ReadOfWriteOnly(Register),
    WriteToReadOnly(Register),
    /// A write sets bits the register reserves (including any non-zero EOI or ESR write).
    ReservedBits {
        register: Register,
        value: u64,
    },
}

impl fmt::Display for X2apicFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            X2apicFault::ReservedRegister(m) => write!(f, "reserved x2APIC MSR {m:#x}"),
            X2apicFault::ReadOfWriteOnly(r) => write!(f, "read of write-only MSR {:#x}", r.msr()),
            X2apicFault::WriteToReadOnly(r) => write!(f, "write to read-only MSR {:#x}", r.msr()),
            X2apicFault::ReservedBits { register, value } => {
                write!(
                    f,
                    "MSR {:#x} write {value:#x} sets reserved bits",
                    register.msr()
                )
            }
        }
    }
}

/// An interrupt whose handling the guest finished with an EOI.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CompletedInterrupt {
    pub vector: u8,
    /// TMR was set: the EOI must be forwarded to the IOAPIC(s) (11.8.5).
    pub level_triggered: bool,
}

/// What a successful WRMSR asks of the caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteEffect {
    /// Nothing beyond the register update.
    None,
    /// An EOI; `None` if no interrupt was in service.
    Eoi(Option<CompletedInterrupt>),
    /// An ICR write: the caller allows or refuses it (see [`X2apic::deliver_to_self`]).
    Ipi(IcrRequest),
    /// The timer was armed, disarmed or re-based: re-read [`X2apic::next_timer_due`].
    TimerChanged,
}

/// Vectors 0-15 are illegal for interrupts (11.5.2, 11.5.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IllegalVector(pub u8);

/// ESR bits (11.5.3, Figure 11-9).
pub mod esr {
    pub const SEND_ILLEGAL_VECTOR: u32 = 1 << 5;
    pub const RECEIVE_ILLEGAL_VECTOR: u32 = 1 << 6;
}

/// SVR bits (11.9, Figure 11-23).
pub mod svr {
    pub const APIC_SOFTWARE_ENABLE: u32 = 1 << 8;
    pub const FOCUS_CHECKING_DISABLE: u32 = 1 << 9;
    /// Bit 12 (EOI-broadcast suppression) is reserved here: the version register says no.
    pub const WRITABLE: u32 = 0xFF | APIC_SOFTWARE_ENABLE | FOCUS_CHECKING_DISABLE;
}

/// ICR delivery mode, bits 10:8 (11.6.1, Figure 11-12).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IpiDeliveryMode {
    Fixed,
    LowestPriority,
    Smi,
    Nmi,
    Init,
    StartUp,
    /// 011 and 111.
    Reserved(u8),
}

/// ICR destination shorthand, bits 19:18.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shorthand {
    None,
    SelfOnly,
    AllIncludingSelf,
    AllExcludingSelf,
}

/// Which APICs an IPI reaches, seen from the sender.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IpiReach {
    OnlySelf,
    /// Any other APIC, broadcast or not, with or without the sender.
    IncludesOthers,
    /// A logical destination with an empty member mask.
    Nobody,
}

/// A guest's ICR write (x2APIC format, 11.12.9: a single 64-bit MSR, destination in 63:32, no
/// delivery-status bit).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IcrRequest(pub u64);

impl IcrRequest {
    /// Bits that are not reserved: vector, delivery mode, destination mode, level, trigger,
    /// shorthand, destination (11.12.9).
    pub const DEFINED_BITS: u64 = 0xFFFF_FFFF_000C_CFFF;
    const BROADCAST: u32 = 0xFFFF_FFFF;

    pub const fn vector(self) -> u8 {
        self.0 as u8
    }
    pub const fn delivery_mode(self) -> IpiDeliveryMode {
        match (self.0 >> 8) & 7 {
            0b000 => IpiDeliveryMode::Fixed,
            0b001 => IpiDeliveryMode::LowestPriority,
            0b010 => IpiDeliveryMode::Smi,
            0b100 => IpiDeliveryMode::Nmi,
            0b101 => IpiDeliveryMode::Init,
            0b110 => IpiDeliveryMode::StartUp,
            m => IpiDeliveryMode::Reserved(m as u8),
        }
    }
    /// Bit 11: logical destination mode.
    pub const fn logical(self) -> bool {
        self.0 & (1 << 11) != 0
    }
    /// Bit 14: level assert (0 only for the legacy INIT level de-assert).
    pub const fn level_assert(self) -> bool {
        self.0 & (1 << 14) != 0
    }
    /// Bit 15: trigger mode (meaningful for INIT level de-assert only).
    pub const fn level_triggered(self) -> bool {
        self.0 & (1 << 15) != 0
    }
    pub const fn shorthand(self) -> Shorthand {
        match (self.0 >> 18) & 3 {
            0 => Shorthand::None,
            1 => Shorthand::SelfOnly,
            2 => Shorthand::AllIncludingSelf,
            _ => Shorthand::AllExcludingSelf,
        }
    }
    pub const fn destination(self) -> u32 {
        (self.0 >> 32) as u32
    }
    /// INIT or SIPI: the IPIs that reset or start another processor.
    pub const fn is_init_or_startup(self) -> bool {
        matches!(
            self.delivery_mode(),
            IpiDeliveryMode::Init | IpiDeliveryMode::StartUp
        )
    }

    /// Which APICs this IPI reaches when sent by the APIC with x2APIC id `own_id`. Physical
    /// destination 0xFFFF_FFFF and logical 0xFFFF_FFFF are broadcasts (11.12.9, 11.12.10).
    pub const fn reach(self, own_id: u32) -> IpiReach {
        match self.shorthand() {
            Shorthand::SelfOnly => return IpiReach::OnlySelf,
            Shorthand::AllIncludingSelf | Shorthand::AllExcludingSelf => {
                return IpiReach::IncludesOthers
            }
            Shorthand::None => {}
        }
        let dest = self.destination();
        if dest == Self::BROADCAST {
            return IpiReach::IncludesOthers;
        }
        if !self.logical() {
            return if dest == own_id {
                IpiReach::OnlySelf
            } else {
                IpiReach::IncludesOthers
            };
        }
        let members = dest & 0xFFFF;
        if members == 0 {
            IpiReach::Nobody
        } else if dest == logical_id(own_id) {
            IpiReach::OnlySelf
        } else {
            IpiReach::IncludesOthers
        }
    }
}

/// Why [`X2apic::deliver_to_self`] did not deliver.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SelfIpiRefused {
    /// Not a fixed IPI that reaches only this APIC: the caller's policy decides.
    NotFixedToSelf,
    /// A fixed IPI with vector 0-15: ESR "send illegal vector" was set (11.5.3).
    IllegalVector(u8),
}

/// The x2APIC logical id (11.12.10.2): cluster = id[19:4] in bits 31:16, one-hot id[3:0] below.
pub const fn logical_id(apic_id: u32) -> u32 {
    ((apic_id >> 4) << 16) | (1 << (apic_id & 0xF))
}

/// Timer mode, LVT timer bits 18:17 (11.5.4, Table 11-2 / Figure 11-8).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimerMode {
    OneShot,
    Periodic,
    TscDeadline,
}

impl TimerMode {
    /// `None` for the reserved encoding 11.
    pub const fn from_lvt(lvt: u32) -> Option<TimerMode> {
        match (lvt >> 17) & 3 {
            0 => Some(TimerMode::OneShot),
            1 => Some(TimerMode::Periodic),
            2 => Some(TimerMode::TscDeadline),
            _ => None,
        }
    }
}

/// Divide configuration register (11.5.4, Figure 11-10): bits 3, 1:0 select the divisor.
pub const TIMER_DIVIDE_BITS: u32 = 0b1011;

/// Decode a divide configuration value: 000 /2, 001 /4, 010 /8, 011 /16, 100 /32, 101 /64,
/// 110 /128, 111 /1, where the three-bit value is bits 3, 1, 0.
pub const fn timer_divisor(divide_config: u32) -> u64 {
    let code = (divide_config & 0b11) | ((divide_config >> 1) & 0b100);
    if code == 0b111 {
        1
    } else {
        2 << code
    }
}

/// A running one-shot/periodic countdown: the count was `count` at TSC `anchor`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Countdown {
    anchor: u64,
    count: u32,
}

/// 256 vector bits as eight 32-bit words, the layout of ISR/TMR/IRR (11.8.4).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct VectorBits([u32; 8]);

impl VectorBits {
    fn set(&mut self, v: u8) {
        self.0[usize::from(v / 32)] |= 1 << (v % 32);
    }
    fn clear(&mut self, v: u8) {
        self.0[usize::from(v / 32)] &= !(1 << (v % 32));
    }
    fn test(&self, v: u8) -> bool {
        self.0[usize::from(v / 32)] & (1 << (v % 32)) != 0
    }
    fn highest(&self) -> Option<u8> {
        (0..8usize)
            .rev()
            .find(|&i| self.0[i] != 0)
            .map(|i| (i * 32 + 31 - self.0[i].leading_zeros() as usize) as u8)
    }
}

/// One guest CPU's virtual local APIC in x2APIC mode.
#[derive(Clone, Debug)]
pub struct X2apic {
    id: u32,
    tpr: u8,
    svr: u32,
    isr: VectorBits,
    tmr: VectorBits,
    irr: VectorBits,
    /// Errors latched by the last ESR write (what a read returns).
    esr: u32,
    /// Errors detected since the last ESR write.
    esr_pending: u32,
    icr: u64,
    lvt: [u32; 6],
    initial_count: u32,
    divide_config: u32,
    tsc_deadline: u64,
    countdown: Option<Countdown>,
    now: u64,
}

impl X2apic {
    /// The state after reset (11.4.7.1): SVR 0xFF (software-disabled), every LVT masked, timer
    /// stopped, time 0.
    pub fn new(apic_id: u32) -> Self {
        X2apic {
            id: apic_id,
            tpr: 0,
            svr: 0xFF,
            isr: VectorBits::default(),
            tmr: VectorBits::default(),
            irr: VectorBits::default(),
            esr: 0,
            esr_pending: 0,
            icr: 0,
            lvt: [LVT_MASKED; 6],
            initial_count: 0,
            divide_config: 0,
            tsc_deadline: 0,
            countdown: None,
            now: 0,
        }
    }

    pub fn id(&self) -> u32 {
        self.id
    }

    /// SVR bit 8 (11.4.7.2).
    pub fn software_enabled(&self) -> bool {
        self.svr & svr::APIC_SOFTWARE_ENABLE != 0
    }

    pub fn tpr(&self) -> u8 {
        self.tpr
    }

    /// Takes the TPR the guest set where it really lives (the physical TPR, which its CR8 and TPR
    /// MSR reach directly), so injection decisions see the same priority the CPU does.
    pub fn set_tpr(&mut self, tpr: u8) {
        self.tpr = tpr;
    }

    /// Whether any interrupt is requested (IRR not empty).
    pub fn any_requested(&self) -> bool {
        self.irr.highest().is_some()
    }

    pub fn lvt(&self, which: Lvt) -> u32 {
        self.lvt[which as usize]
    }

    pub fn timer_mode(&self) -> TimerMode {
        // Reserved mode 11 never gets stored (the write faults).
        TimerMode::from_lvt(self.lvt(Lvt::Timer)).unwrap_or(TimerMode::OneShot)
    }

    /// PPR (11.8.3.1): TPR if its class is at least the highest in-service class, else the
    /// in-service class with sub-class 0.
    pub fn ppr(&self) -> u8 {
        let isrv = self.isr.highest().unwrap_or(0);
        if self.tpr >> 4 >= isrv >> 4 {
            self.tpr
        } else {
            isrv & 0xF0
        }
    }

    pub fn is_requested(&self, vector: u8) -> bool {
        self.irr.test(vector)
    }

    pub fn is_in_service(&self, vector: u8) -> bool {
        self.isr.test(vector)
    }

    /// The vector the next EOI completes.
    pub fn highest_in_service(&self) -> Option<u8> {
        self.isr.highest()
    }

    /// Accept an interrupt into IRR; TMR records its trigger mode (11.8.4). Vectors 0-15 are
    /// refused and logged as "receive illegal vector" (11.5.3).
    pub fn request(&mut self, vector: u8, level_triggered: bool) -> Result<(), IllegalVector> {
        if vector < 16 {
            self.record_error(esr::RECEIVE_ILLEGAL_VECTOR);
            return Err(IllegalVector(vector));
        }
        self.irr.set(vector);
        if level_triggered {
            self.tmr.set(vector);
        } else {
            self.tmr.clear(vector);
        }
        Ok(())
    }

    /// Takes the highest requested vector out of IRR, with its trigger mode, for the CPU to
    /// deliver (APICv: the host moves it to the virtual-APIC page, `virq::virtual_apic`). Nothing
    /// while the APIC is software-disabled: requests wait in IRR until it is enabled (11.4.7.2).
    pub fn take_requested(&mut self) -> Option<(u8, bool)> {
        if !self.software_enabled() {
            return None;
        }
        let vector = self.irr.highest()?;
        self.irr.clear(vector);
        Some((vector, self.tmr.test(vector)))
    }

    /// The vector the processor would take now (11.8.3): the highest IRR vector whose priority
    /// class exceeds PPR's, and only while the APIC is software-enabled.
    pub fn highest_deliverable(&self) -> Option<u8> {
        if !self.software_enabled() {
            return None;
        }
        self.irr.highest().filter(|&v| v >> 4 > self.ppr() >> 4)
    }

    /// The processor took `vector` (an injection, or an ELI direct delivery): IRR -> ISR.
    /// Returns false, changing nothing, if `vector` was not requested.
    pub fn acknowledge(&mut self, vector: u8) -> bool {
        if !self.irr.test(vector) {
            return false;
        }
        self.irr.clear(vector);
        self.isr.set(vector);
        true
    }

    /// EOI (11.8.5): clear the highest ISR bit; report it and whether it was level-triggered.
    pub fn eoi(&mut self) -> Option<CompletedInterrupt> {
        let vector = self.isr.highest()?;
        self.isr.clear(vector);
        Some(CompletedInterrupt {
            vector,
            level_triggered: self.tmr.test(vector),
        })
    }

    /// Deliver an ICR request locally if it is a fixed IPI that reaches only this APIC (the
    /// trigger bit is ignored for fixed IPIs, 11.6.1); anything else is the caller's policy.
    pub fn deliver_to_self(&mut self, request: IcrRequest) -> Result<(), SelfIpiRefused> {
        if request.delivery_mode() != IpiDeliveryMode::Fixed
            || request.reach(self.id) != IpiReach::OnlySelf
        {
            return Err(SelfIpiRefused::NotFixedToSelf);
        }
        self.send_to_self(request.vector())
            .map_err(|IllegalVector(v)| SelfIpiRefused::IllegalVector(v))
    }

    fn send_to_self(&mut self, vector: u8) -> Result<(), IllegalVector> {
        if vector < 16 {
            self.record_error(esr::SEND_ILLEGAL_VECTOR);
            return Err(IllegalVector(vector));
        }
        self.request(vector, false)
    }

    /// Log an error in ESR and raise the error LVT if unmasked (11.5.3). An illegal error
    /// vector is not re-reported, so errors cannot recurse.
    fn record_error(&mut self, bits: u32) {
        self.esr_pending |= bits;
        let lvt = self.lvt(Lvt::Error);
        let vector = lvt as u8;
        if lvt & LVT_MASKED == 0 && vector >= 16 {
            self.irr.set(vector);
            self.tmr.clear(vector);
        }
    }

    /// RDMSR of an x2APIC MSR.
    pub fn read_msr(&self, msr: u32) -> Result<u64, X2apicFault> {
        let register = Register::from_msr(msr).ok_or(X2apicFault::ReservedRegister(msr))?;
        if register.access() == RegisterAccess::WriteOnly {
            return Err(X2apicFault::ReadOfWriteOnly(register));
        }
        let value = match register {
            Register::Id => self.id,
            Register::Version => VERSION_VALUE,
            Register::Tpr => self.tpr.into(),
            Register::Ppr => self.ppr().into(),
            Register::Ldr => logical_id(self.id),
            Register::Svr => self.svr,
            Register::Isr(i) => self.isr.0[usize::from(i)],
            Register::Tmr(i) => self.tmr.0[usize::from(i)],
            Register::Irr(i) => self.irr.0[usize::from(i)],
            Register::Esr => self.esr,
            Register::Icr => return Ok(self.icr),
            Register::Lvt(l) => self.lvt(l),
            Register::TimerInitialCount => self.initial_count,
            Register::TimerCurrentCount => self.current_count(),
            Register::TimerDivide => self.divide_config,
            Register::Eoi | Register::SelfIpi => unreachable!("write-only, refused above"),
        };
        Ok(value.into())
    }

    /// WRMSR of an x2APIC MSR. Call [`X2apic::advance_to`] first so timer writes take effect at
    /// the right time.
    pub fn write_msr(&mut self, msr: u32, value: u64) -> Result<WriteEffect, X2apicFault> {
        let register = Register::from_msr(msr).ok_or(X2apicFault::ReservedRegister(msr))?;
        if register.access() == RegisterAccess::ReadOnly {
            return Err(X2apicFault::WriteToReadOnly(register));
        }
        let reserved = X2apicFault::ReservedBits { register, value };
        let defined: u64 = match register {
            Register::Icr => IcrRequest::DEFINED_BITS,
            Register::Eoi | Register::Esr => 0,
            Register::Tpr | Register::SelfIpi => 0xFF,
            Register::Svr => svr::WRITABLE.into(),
            Register::Lvt(l) => (l.writable_bits() | Lvt::READ_ONLY_STATUS).into(),
            Register::TimerInitialCount => 0xFFFF_FFFF,
            Register::TimerDivide => TIMER_DIVIDE_BITS.into(),
            _ => unreachable!("read-only, refused above"),
        };
        if value & !defined != 0 {
            return Err(reserved);
        }
        let low = value as u32;
        Ok(match register {
            Register::Tpr => {
                self.tpr = low as u8;
                WriteEffect::None
            }
            Register::Eoi => WriteEffect::Eoi(self.eoi()),
            Register::Svr => {
                self.svr = low;
                if !self.software_enabled() {
                    // 11.4.7.2: software disable masks every LVT.
                    for lvt in &mut self.lvt {
                        *lvt |= LVT_MASKED;
                    }
                }
                WriteEffect::None
            }
            Register::Esr => {
                // 11.5.3: a write latches the errors seen since the previous write.
                self.esr = core::mem::take(&mut self.esr_pending);
                WriteEffect::None
            }
            Register::Icr => {
                self.icr = value;
                WriteEffect::Ipi(IcrRequest(value))
            }
            Register::Lvt(l) => return self.write_lvt(l, low),
            Register::TimerInitialCount => {
                if self.timer_mode() == TimerMode::TscDeadline {
                    // 11.5.4.1: writes to the initial count are ignored in TSC-deadline mode.
                    return Ok(WriteEffect::None);
                }
                self.initial_count = low;
                self.countdown = (low != 0).then_some(Countdown {
                    anchor: self.now,
                    count: low,
                });
                WriteEffect::TimerChanged
            }
            Register::TimerDivide => {
                // Re-base a running countdown so the counts left are kept at the new rate.
                let left = self.current_count();
                self.divide_config = low;
                match self.countdown.as_mut() {
                    Some(c) => {
                        *c = Countdown {
                            anchor: self.now,
                            count: left,
                        };
                        WriteEffect::TimerChanged
                    }
                    None => WriteEffect::None,
                }
            }
            Register::SelfIpi => {
                // An illegal vector is logged in ESR by send_to_self; the WRMSR itself succeeds.
                let _ = self.send_to_self(low as u8);
                WriteEffect::None
            }
            _ => unreachable!("read-only, refused above"),
        })
    }

    fn write_lvt(&mut self, which: Lvt, value: u32) -> Result<WriteEffect, X2apicFault> {
        let register = Register::Lvt(which);
        let mut new = value & which.writable_bits();
        if !self.software_enabled() {
            new |= LVT_MASKED; // 11.4.7.2: masks cannot be cleared while disabled.
        }
        if which != Lvt::Timer {
            self.lvt[which as usize] = new;
            return Ok(WriteEffect::None);
        }
        let mode = TimerMode::from_lvt(new).ok_or(X2apicFault::ReservedBits {
            register,
            value: value.into(),
        })?;
        let old = self.timer_mode();
        self.lvt[which as usize] = new;
        if (old == TimerMode::TscDeadline) != (mode == TimerMode::TscDeadline) {
            // 11.5.4.1: switching to or from TSC-deadline mode disarms the timer.
            self.initial_count = 0;
            self.countdown = None;
            self.tsc_deadline = 0;
            return Ok(WriteEffect::TimerChanged);
        }
        Ok(WriteEffect::None)
    }

    /// IA32_TSC_DEADLINE (MSR 0x6E0) as the guest reads it: 0 outside TSC-deadline mode or once
    /// the deadline fired (11.5.4.1).
    pub fn tsc_deadline(&self) -> u64 {
        if self.timer_mode() == TimerMode::TscDeadline {
            self.tsc_deadline
        } else {
            0
        }
    }

    /// WRMSR IA32_TSC_DEADLINE: ignored outside TSC-deadline mode, 0 disarms, a deadline
    /// already past fires at once. Returns the number of expirations (0 or 1).
    pub fn set_tsc_deadline(&mut self, deadline: u64) -> u64 {
        if self.timer_mode() != TimerMode::TscDeadline {
            return 0;
        }
        self.tsc_deadline = deadline;
        self.advance_to(self.now)
    }

    /// The current time as the model knows it (the last `advance_to`).
    pub fn now(&self) -> u64 {
        self.now
    }

    /// Advance by `ticks` of the guest TSC; see [`X2apic::advance_to`].
    pub fn advance(&mut self, ticks: u64) -> u64 {
        self.advance_to(self.now.saturating_add(ticks))
    }

    /// Move the model's time to guest TSC `now` (earlier times are ignored) and fire every timer
    /// expiry up to it. An expiry requests the LVT timer vector unless the LVT is masked; several
    /// periodic expiries collapse into one IRR bit. Returns the number of expiries.
    pub fn advance_to(&mut self, now: u64) -> u64 {
        self.now = self.now.max(now);
        let expiries = self.expire_timer();
        if expiries != 0 {
            let lvt = self.lvt(Lvt::Timer);
            if lvt & LVT_MASKED == 0 {
                let _ = self.request(lvt as u8, false);
            }
        }
        expiries
    }

    fn expire_timer(&mut self) -> u64 {
        if self.timer_mode() == TimerMode::TscDeadline {
            if self.tsc_deadline != 0 && self.tsc_deadline <= self.now {
                self.tsc_deadline = 0;
                return 1;
            }
            return 0;
        }
        let Some(c) = self.countdown else { return 0 };
        let divisor = timer_divisor(self.divide_config);
        let first = c.anchor.saturating_add(u64::from(c.count) * divisor);
        if self.now < first {
            return 0;
        }
        if self.timer_mode() == TimerMode::OneShot {
            self.countdown = None;
            return 1;
        }
        // Periodic: the count reloads from the initial count at every zero (11.5.4).
        let period = u64::from(self.initial_count) * divisor;
        let later = (self.now - first) / period;
        self.countdown = Some(Countdown {
            anchor: first + later * period,
            count: self.initial_count,
        });
        1 + later
    }

    /// Guest TSC at which the timer next raises an interrupt, if it will: armed and the LVT
    /// unmasked. The caller arms the VMX-preemption timer for `due - now`.
    pub fn next_timer_due(&self) -> Option<u64> {
        if self.lvt(Lvt::Timer) & LVT_MASKED != 0 {
            return None;
        }
        if self.timer_mode() == TimerMode::TscDeadline {
            return (self.tsc_deadline != 0).then_some(self.tsc_deadline);
        }
        let c = self.countdown?;
        Some(
            c.anchor
                .saturating_add(u64::from(c.count) * timer_divisor(self.divide_config)),
        )
    }

    /// The current-count register (11.5.4): decrements once per `divisor` ticks from the anchor,
    /// 0 when stopped or after a one-shot expired.
    pub fn current_count(&self) -> u32 {
        let Some(c) = self.countdown else { return 0 };
        let divisor = timer_divisor(self.divide_config);
        let elapsed = (self.now - c.anchor) / divisor;
        if elapsed < u64::from(c.count) {
            return c.count - elapsed as u32;
        }
        match self.timer_mode() {
            TimerMode::Periodic if self.initial_count != 0 => {
                let since = elapsed - u64::from(c.count);
                self.initial_count - (since % u64::from(self.initial_count)) as u32
            }
            _ => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An APIC with id `id`, software-enabled with spurious vector 0xFF.
    fn enabled(id: u32) -> X2apic {
        let mut a = X2apic::new(id);
        a.write_msr(msr::SVR, 0x1FF).unwrap();
        a
    }

    #[test]
    fn register_map_follows_table_11_6() {
        for m in msr::FIRST..=msr::LAST {
            if let Some(r) = Register::from_msr(m) {
                assert_eq!(r.msr(), m);
            }
        }
        let defined = (msr::FIRST..=msr::LAST)
            .filter(|&m| Register::from_msr(m).is_some())
            .count();
        // ID, version, TPR, PPR, EOI, LDR, SVR, 3 x 8 ISR/TMR/IRR, ESR, ICR, 6 LVTs,
        // initial/current count, divide, self IPI.
        assert_eq!(defined, 7 + 24 + 2 + 6 + 4);
        // APR, RRD, DFR, CMCI (max LVT 5), ICR high, 0x83A-0x83D: reserved in x2APIC mode.
        for m in [
            0x800, 0x809, 0x80C, 0x80E, 0x82F, 0x831, 0x83A, 0x83D, 0x840, 0x8FF,
        ] {
            assert_eq!(Register::from_msr(m), None, "{m:#x}");
        }
        assert_eq!(Register::from_msr(0x835), Some(Register::Lvt(Lvt::Lint0)));
        assert_eq!(Register::from_msr(0x81A), Some(Register::Tmr(2)));
    }

    #[test]
    fn id_version_ldr_and_reset_values() {
        let a = X2apic::new(0x25);
        assert_eq!(a.read_msr(msr::ID), Ok(0x25));
        assert_eq!(a.read_msr(msr::VERSION), Ok(0x0005_0014));
        // 11.12.10.2: id 0x25 -> cluster 2 in 31:16, 1 << 5 below.
        assert_eq!(a.read_msr(msr::LDR), Ok(0x0002_0020));
        assert_eq!(logical_id(0x1F), 0x0001_8000);
        assert_eq!(a.read_msr(msr::SVR), Ok(0xFF));
        for m in 0x832..=0x837 {
            assert_eq!(a.read_msr(m), Ok(0x1_0000), "{m:#x}");
        }
        assert_eq!(a.read_msr(msr::TPR), Ok(0));
        assert_eq!(a.read_msr(msr::TIMER_CURRENT_COUNT), Ok(0));
    }

    #[test]
    fn bad_accesses_fault() {
        let mut a = enabled(1);
        // Write-only registers.
        assert_eq!(
            a.read_msr(msr::EOI),
            Err(X2apicFault::ReadOfWriteOnly(Register::Eoi))
        );
        assert!(a.read_msr(msr::SELF_IPI).is_err());
        // Read-only registers.
        for m in [
            msr::ID,
            msr::VERSION,
            msr::PPR,
            msr::LDR,
            0x810,
            0x81F,
            0x827,
            msr::TIMER_CURRENT_COUNT,
        ] {
            assert!(
                matches!(a.write_msr(m, 0), Err(X2apicFault::WriteToReadOnly(_))),
                "{m:#x}"
            );
        }
        // Reserved registers.
        assert_eq!(a.read_msr(0x82F), Err(X2apicFault::ReservedRegister(0x82F)));
        assert_eq!(
            a.write_msr(0x809, 0),
            Err(X2apicFault::ReservedRegister(0x809))
        );
        // Reserved bits (11.12.1.3).
        for (m, v) in [
            (msr::EOI, 1u64),
            (msr::ESR, 0x40),
            (msr::TPR, 0x100),
            (msr::TPR, 1 << 32),
            (msr::SVR, 0x11FF),  // bit 12: no directed EOI
            (msr::ICR, 1 << 12), // no delivery status in x2APIC
            (msr::ICR, 1 << 16),
            (msr::ICR, 1 << 20),
            (msr::LVT_TIMER, 0x6_0020), // timer mode 11
            (msr::LVT_TIMER, 1 << 19),
            (msr::LVT_ERROR, 0x400), // delivery mode not in the error LVT
            (msr::TIMER_DIVIDE, 0b100),
            (msr::TIMER_INITIAL_COUNT, 1 << 32),
            (msr::SELF_IPI, 0x100),
        ] {
            assert!(
                matches!(a.write_msr(m, v), Err(X2apicFault::ReservedBits { .. })),
                "{m:#x} <- {v:#x}"
            );
        }
        // Nothing changed.
        assert_eq!(a.read_msr(msr::TPR), Ok(0));
        assert_eq!(a.read_msr(msr::SVR), Ok(0x1FF));
        assert_eq!(a.read_msr(msr::LVT_TIMER), Ok(0x1_0000));
        // Read-only status bits of an LVT are ignored, not faulted: reading and writing back a
        // LINT0 entry always works.
        assert_eq!(a.write_msr(msr::LVT_LINT0, 0x1_5700), Ok(WriteEffect::None));
        assert_eq!(a.read_msr(msr::LVT_LINT0), Ok(0x1_0700));
    }

    #[test]
    fn tpr_masks_lower_and_equal_priority_classes() {
        let mut a = enabled(0);
        a.request(0x31, false).unwrap();
        a.request(0x45, false).unwrap();
        assert_eq!(a.highest_deliverable(), Some(0x45));
        // TPR class 4: 0x45 (class 4) is not above it, 0x31 neither.
        a.write_msr(msr::TPR, 0x40).unwrap();
        assert_eq!(a.read_msr(msr::PPR), Ok(0x40));
        assert_eq!(a.highest_deliverable(), None);
        a.write_msr(msr::TPR, 0x3F).unwrap();
        assert_eq!(a.highest_deliverable(), Some(0x45));
        a.write_msr(msr::TPR, 0x50).unwrap();
        assert_eq!(a.highest_deliverable(), None);
        // IRR words: 0x31 -> word 1 bit 17, 0x45 -> word 2 bit 5.
        assert_eq!(a.read_msr(0x821), Ok(1 << 17));
        assert_eq!(a.read_msr(0x822), Ok(1 << 5));
    }

    #[test]
    fn ppr_is_max_of_tpr_and_in_service_class() {
        let mut a = enabled(0);
        a.request(0x45, false).unwrap();
        assert!(a.acknowledge(0x45));
        assert!(!a.acknowledge(0x45), "no longer requested");
        // TPR 0x20 < ISR class 4: PPR = 0x40 (sub-class 0).
        a.write_msr(msr::TPR, 0x20).unwrap();
        assert_eq!(a.read_msr(msr::PPR), Ok(0x40));
        // TPR class 4 >= ISR class 4: PPR = TPR.
        a.write_msr(msr::TPR, 0x47).unwrap();
        assert_eq!(a.ppr(), 0x47);
        a.write_msr(msr::TPR, 0).unwrap();
        // Same class as the one in service waits; a higher class nests.
        a.request(0x4F, false).unwrap();
        assert_eq!(a.highest_deliverable(), None);
        a.request(0x52, false).unwrap();
        assert_eq!(a.highest_deliverable(), Some(0x52));
    }

    #[test]
    fn software_disabled_apic_holds_requests() {
        let mut a = X2apic::new(0);
        a.request(0x80, false).unwrap();
        assert_eq!(a.highest_deliverable(), None);
        a.write_msr(msr::SVR, 0x1FF).unwrap();
        assert_eq!(a.highest_deliverable(), Some(0x80));
        // Disabling masks every LVT and keeps them masked (11.4.7.2).
        a.write_msr(msr::LVT_TIMER, 0x20).unwrap();
        assert_eq!(a.read_msr(msr::LVT_TIMER), Ok(0x20));
        a.write_msr(msr::SVR, 0xFF).unwrap();
        assert_eq!(a.read_msr(msr::LVT_TIMER), Ok(0x1_0020));
        a.write_msr(msr::LVT_LINT1, 0x400).unwrap();
        assert_eq!(a.read_msr(msr::LVT_LINT1), Ok(0x1_0400));
    }

    #[test]
    fn eoi_completes_nested_interrupts_highest_first() {
        let mut a = enabled(0);
        a.request(0x30, false).unwrap();
        assert!(a.acknowledge(0x30));
        a.request(0x60, false).unwrap();
        assert_eq!(a.highest_deliverable(), Some(0x60));
        assert!(a.acknowledge(0x60));
        // ISR: 0x30 -> word 1 bit 16, 0x60 -> word 3 bit 0.
        assert_eq!(a.read_msr(0x811), Ok(0x1_0000));
        assert_eq!(a.read_msr(0x813), Ok(1));
        assert_eq!(a.highest_in_service(), Some(0x60));
        let done = |vector| {
            WriteEffect::Eoi(Some(CompletedInterrupt {
                vector,
                level_triggered: false,
            }))
        };
        assert_eq!(a.write_msr(msr::EOI, 0), Ok(done(0x60)));
        assert_eq!(a.write_msr(msr::EOI, 0), Ok(done(0x30)));
        assert_eq!(a.write_msr(msr::EOI, 0), Ok(WriteEffect::Eoi(None)));
        assert_eq!(a.read_msr(0x811), Ok(0));
    }

    #[test]
    fn level_triggered_eoi_is_reported_for_the_ioapic() {
        let mut a = enabled(0);
        a.request(0x41, true).unwrap();
        a.request(0x42, false).unwrap();
        // TMR word 2: bit 1 (0x41) only.
        assert_eq!(a.read_msr(0x81A), Ok(0b10));
        assert!(a.acknowledge(0x42));
        assert!(a.acknowledge(0x41));
        assert_eq!(
            a.eoi(),
            Some(CompletedInterrupt {
                vector: 0x42,
                level_triggered: false
            })
        );
        assert_eq!(
            a.eoi(),
            Some(CompletedInterrupt {
                vector: 0x41,
                level_triggered: true
            })
        );
        // Re-requested edge-triggered, the same vector clears its TMR bit.
        a.request(0x41, false).unwrap();
        assert_eq!(a.read_msr(0x81A), Ok(0));
    }

    #[test]
    fn illegal_vectors_are_logged_not_delivered() {
        let mut a = enabled(0);
        assert_eq!(a.request(0x0F, false), Err(IllegalVector(0x0F)));
        assert_eq!(a.read_msr(msr::IRR0), Ok(0));
        // ESR shows nothing until a write latches it (11.5.3).
        assert_eq!(a.read_msr(msr::ESR), Ok(0));
        a.write_msr(msr::ESR, 0).unwrap();
        assert_eq!(a.read_msr(msr::ESR), Ok(0x40));
        a.write_msr(msr::ESR, 0).unwrap();
        assert_eq!(a.read_msr(msr::ESR), Ok(0));
        // A self IPI with vector 5 is a send error.
        a.write_msr(msr::SELF_IPI, 5).unwrap();
        a.write_msr(msr::ESR, 0).unwrap();
        assert_eq!(a.read_msr(msr::ESR), Ok(0x20));
        assert_eq!(a.read_msr(msr::IRR0), Ok(0));
        // With the error LVT unmasked, an error raises its vector.
        a.write_msr(msr::LVT_ERROR, 0xFE).unwrap();
        assert!(a.request(3, true).is_err());
        assert_eq!(a.highest_deliverable(), Some(0xFE));
        assert_eq!(a.read_msr(0x827), Ok(1 << 30));
    }

    #[test]
    fn self_ipi_msr_requests_an_edge_interrupt() {
        let mut a = enabled(0);
        assert_eq!(a.write_msr(msr::SELF_IPI, 0x77), Ok(WriteEffect::None));
        assert!(a.is_requested(0x77));
        assert_eq!(a.read_msr(0x823), Ok(1 << 23));
        assert_eq!(a.read_msr(0x81B), Ok(0));
    }

    #[test]
    fn icr_writes_become_requests_for_the_caller() {
        let mut a = enabled(2);
        // INIT, level assert, physical destination 3 (delivery mode 101 -> 0x500, bit 14).
        let init = 0x0000_0003_0000_4500;
        let Ok(WriteEffect::Ipi(r)) = a.write_msr(msr::ICR, init) else {
            panic!("not an IPI")
        };
        assert_eq!(r.delivery_mode(), IpiDeliveryMode::Init);
        assert!(r.is_init_or_startup() && r.level_assert() && !r.logical());
        assert_eq!(r.destination(), 3);
        assert_eq!(r.reach(2), IpiReach::IncludesOthers);
        assert_eq!(a.read_msr(msr::ICR), Ok(init));
        assert_eq!(a.deliver_to_self(r), Err(SelfIpiRefused::NotFixedToSelf));
        // SIPI to APIC 3, start page 8: 110 -> 0x600.
        let sipi = IcrRequest(0x0000_0003_0000_0608);
        assert_eq!(sipi.delivery_mode(), IpiDeliveryMode::StartUp);
        assert_eq!(sipi.vector(), 8);
        assert!(sipi.is_init_or_startup());
        // INIT to all excluding self: shorthand 11 in bits 19:18.
        let init_all = IcrRequest(0x000C_4500);
        assert_eq!(init_all.shorthand(), Shorthand::AllExcludingSelf);
        assert!(init_all.is_init_or_startup());
        assert_eq!(init_all.reach(2), IpiReach::IncludesOthers);
        // INIT to self via shorthand is still INIT: never delivered locally.
        let init_self = IcrRequest(0x0004_4500);
        assert_eq!(init_self.reach(2), IpiReach::OnlySelf);
        assert!(a.deliver_to_self(init_self).is_err());
        // NMI to self is not a fixed IPI.
        assert_eq!(
            a.deliver_to_self(IcrRequest(0x0004_0400)),
            Err(SelfIpiRefused::NotFixedToSelf)
        );
        // Fixed IPI to all including self reaches others.
        assert_eq!(
            IcrRequest(0x0008_0040).shorthand(),
            Shorthand::AllIncludingSelf
        );
        assert!(a.deliver_to_self(IcrRequest(0x0008_0040)).is_err());
        // Broadcast destination.
        assert_eq!(
            IcrRequest(0xFFFF_FFFF_0000_0040).reach(2),
            IpiReach::IncludesOthers
        );
        assert_eq!(
            IcrRequest(0xFFFF_FFFF_0000_0840).reach(2),
            IpiReach::IncludesOthers
        );
        assert!(!a.is_requested(0x40));
    }

    #[test]
    fn fixed_ipis_to_self_are_delivered_locally() {
        let mut a = enabled(0x25);
        // Self shorthand.
        let Ok(WriteEffect::Ipi(r)) = a.write_msr(msr::ICR, 0x0004_0040) else {
            panic!()
        };
        assert_eq!(r.reach(0x25), IpiReach::OnlySelf);
        assert_eq!(a.deliver_to_self(r), Ok(()));
        assert!(a.is_requested(0x40));
        // Physical destination = own id.
        assert_eq!(a.deliver_to_self(IcrRequest(0x25_0000_0051)), Ok(()));
        assert!(a.is_requested(0x51));
        // Logical destination = own logical id 0x0002_0020 (destination mode bit 11).
        let logical_self = IcrRequest(0x0002_0020_0000_0862);
        assert!(logical_self.logical());
        assert_eq!(a.deliver_to_self(logical_self), Ok(()));
        assert!(a.is_requested(0x62));
        // Same cluster, another member too: reaches others.
        assert_eq!(
            IcrRequest(0x0002_0021_0000_0862).reach(0x25),
            IpiReach::IncludesOthers
        );
        // Another cluster, same bit.
        assert_eq!(
            IcrRequest(0x0003_0020_0000_0862).reach(0x25),
            IpiReach::IncludesOthers
        );
        assert_eq!(
            IcrRequest(0x0002_0000_0000_0862).reach(0x25),
            IpiReach::Nobody
        );
        // Physical destination of another APIC.
        assert_eq!(
            a.deliver_to_self(IcrRequest(0x24_0000_0051)),
            Err(SelfIpiRefused::NotFixedToSelf)
        );
        // Illegal vector to self: logged as a send error.
        assert_eq!(
            a.deliver_to_self(IcrRequest(0x0004_0007)),
            Err(SelfIpiRefused::IllegalVector(7))
        );
        a.write_msr(msr::ESR, 0).unwrap();
        assert_eq!(a.read_msr(msr::ESR), Ok(0x20));
    }

    #[test]
    fn divide_configuration_decodes_per_figure_11_10() {
        let table = [
            (0b0000, 2),
            (0b0001, 4),
            (0b0010, 8),
            (0b0011, 16),
            (0b1000, 32),
            (0b1001, 64),
            (0b1010, 128),
            (0b1011, 1),
        ];
        for (dcr, divisor) in table {
            assert_eq!(timer_divisor(dcr), divisor, "{dcr:#b}");
        }
    }

    #[test]
    fn one_shot_timer_fires_once_at_count_times_divisor() {
        let mut a = enabled(0);
        a.advance_to(1000);
        a.write_msr(msr::LVT_TIMER, 0x20).unwrap(); // one-shot, vector 0x20
        a.write_msr(msr::TIMER_DIVIDE, 0b0011).unwrap(); // /16
        assert_eq!(
            a.write_msr(msr::TIMER_INITIAL_COUNT, 100),
            Ok(WriteEffect::TimerChanged)
        );
        // 100 counts * 16 ticks after t=1000.
        assert_eq!(a.next_timer_due(), Some(2600));
        assert_eq!(a.advance_to(2599), 0);
        // 1599 ticks = 99 whole counts.
        assert_eq!(a.read_msr(msr::TIMER_CURRENT_COUNT), Ok(1));
        assert!(!a.is_requested(0x20));
        assert_eq!(a.advance_to(2600), 1);
        assert!(a.is_requested(0x20));
        assert_eq!(a.read_msr(msr::TIMER_CURRENT_COUNT), Ok(0));
        assert_eq!(a.read_msr(msr::TIMER_INITIAL_COUNT), Ok(100));
        assert_eq!(a.next_timer_due(), None);
        assert_eq!(a.advance(1 << 20), 0);
        // Writing 0 stops a running timer.
        a.write_msr(msr::TIMER_INITIAL_COUNT, 5).unwrap();
        a.write_msr(msr::TIMER_INITIAL_COUNT, 0).unwrap();
        assert_eq!(a.next_timer_due(), None);
    }

    #[test]
    fn periodic_timer_reloads_and_collapses_missed_periods() {
        let mut a = enabled(0);
        a.write_msr(msr::LVT_TIMER, 0x2_0030).unwrap(); // periodic, vector 0x30
        a.write_msr(msr::TIMER_DIVIDE, 0b1000).unwrap(); // /32
        a.write_msr(msr::TIMER_INITIAL_COUNT, 10).unwrap(); // period 320
        assert_eq!(a.next_timer_due(), Some(320));
        assert_eq!(a.advance_to(319), 0);
        assert_eq!(a.advance_to(320), 1);
        assert!(a.acknowledge(0x30));
        assert_eq!(a.next_timer_due(), Some(640));
        assert_eq!(a.read_msr(msr::TIMER_CURRENT_COUNT), Ok(10));
        // 640, 960, 1280, 1600: four expiries, one IRR bit.
        assert_eq!(a.advance_to(1600), 4);
        assert!(a.is_requested(0x30));
        assert_eq!(a.next_timer_due(), Some(1920));
        // 100 ticks into the period: 3 counts gone.
        a.advance_to(1700);
        assert_eq!(a.read_msr(msr::TIMER_CURRENT_COUNT), Ok(7));
    }

    #[test]
    fn divide_change_keeps_the_counts_left() {
        let mut a = enabled(0);
        a.write_msr(msr::LVT_TIMER, 0x20).unwrap();
        a.write_msr(msr::TIMER_INITIAL_COUNT, 100).unwrap(); // /2 by reset: due at 200
        assert_eq!(a.next_timer_due(), Some(200));
        a.advance_to(50);
        assert_eq!(a.current_count(), 75);
        assert_eq!(
            a.write_msr(msr::TIMER_DIVIDE, 0b1011),
            Ok(WriteEffect::TimerChanged)
        ); // /1
        assert_eq!(a.next_timer_due(), Some(125));
    }

    #[test]
    fn masked_timer_counts_but_raises_nothing() {
        let mut a = enabled(0);
        a.write_msr(msr::LVT_TIMER, 0x1_0020).unwrap();
        a.write_msr(msr::TIMER_INITIAL_COUNT, 4).unwrap();
        assert_eq!(a.next_timer_due(), None);
        assert_eq!(a.advance_to(8), 1);
        assert!(!a.is_requested(0x20));
        assert_eq!(a.current_count(), 0);
    }

    #[test]
    fn tsc_deadline_mode() {
        let mut a = enabled(0);
        // Outside deadline mode the MSR reads 0 and ignores writes.
        assert_eq!(a.set_tsc_deadline(10), 0);
        assert_eq!(a.tsc_deadline(), 0);
        a.write_msr(msr::TIMER_INITIAL_COUNT, 1000).unwrap();
        // Switching to TSC-deadline mode (bits 18:17 = 10) disarms the count.
        assert_eq!(
            a.write_msr(msr::LVT_TIMER, 0x4_0040),
            Ok(WriteEffect::TimerChanged)
        );
        assert_eq!(a.timer_mode(), TimerMode::TscDeadline);
        assert_eq!(a.read_msr(msr::TIMER_INITIAL_COUNT), Ok(0));
        assert_eq!(a.next_timer_due(), None);
        // Initial-count writes are ignored in this mode.
        a.write_msr(msr::TIMER_INITIAL_COUNT, 7).unwrap();
        assert_eq!(a.read_msr(msr::TIMER_INITIAL_COUNT), Ok(0));
        assert_eq!(a.set_tsc_deadline(5000), 0);
        assert_eq!(a.next_timer_due(), Some(5000));
        assert_eq!(a.advance_to(4999), 0);
        assert_eq!(a.advance_to(5000), 1);
        assert!(a.is_requested(0x40));
        assert_eq!(a.tsc_deadline(), 0);
        // A deadline in the past fires at once.
        assert!(a.acknowledge(0x40));
        assert_eq!(a.set_tsc_deadline(100), 1);
        assert!(a.is_requested(0x40));
        // Back to one-shot disarms a pending deadline.
        a.set_tsc_deadline(9000);
        a.write_msr(msr::LVT_TIMER, 0x40).unwrap();
        assert_eq!(a.next_timer_due(), None);
        // Time never goes backwards.
        a.advance_to(10);
        assert_eq!(a.now(), 5000);
    }
}
