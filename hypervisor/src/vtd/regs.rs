//! The remapping unit's register file (VT-d 11.4) as typed offsets, its command/status bits, and
//! the [`VtdMmio`] access trait with the real MMIO implementation and a hardware-like fake.

use bitflags::bitflags;
use core::sync::atomic::{compiler_fence, Ordering};

/// 32-bit registers (VT-d 11.4, table "Register offsets").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reg32 {
    /// VER_REG: major (7:4) and minor (3:0) version (11.4.1).
    Version,
    /// GCMD_REG (11.4.4); reads are undefined, use [`Reg32::GlobalStatus`].
    GlobalCommand,
    /// GSTS_REG (11.4.5).
    GlobalStatus,
    /// FSTS_REG (11.4.9).
    FaultStatus,
    /// FECTL_REG (11.4.10).
    FaultEventControl,
    /// FEDATA_REG (11.4.11).
    FaultEventData,
    /// FEADDR_REG (11.4.12).
    FaultEventAddress,
    /// FEUADDR_REG (11.4.13).
    FaultEventUpperAddress,
    /// PMEN_REG: protected memory enable (11.4.16).
    ProtectedMemoryEnable,
    /// ICS_REG: invalidation completion status (11.4 queued-invalidation registers).
    InvalidationCompletionStatus,
    /// IECTL_REG: invalidation completion event control.
    InvalidationEventControl,
}

impl Reg32 {
    pub const fn offset(self) -> usize {
        match self {
            Reg32::Version => 0x00,
            Reg32::GlobalCommand => 0x18,
            Reg32::GlobalStatus => 0x1C,
            Reg32::FaultStatus => 0x34,
            Reg32::FaultEventControl => 0x38,
            Reg32::FaultEventData => 0x3C,
            Reg32::FaultEventAddress => 0x40,
            Reg32::FaultEventUpperAddress => 0x44,
            Reg32::ProtectedMemoryEnable => 0x64,
            Reg32::InvalidationCompletionStatus => 0x9C,
            Reg32::InvalidationEventControl => 0xA0,
        }
    }
}

/// 64-bit registers (VT-d 11.4). The IOTLB and fault-recording registers sit at offsets the unit
/// reports: `iro` is ECAP.IRO * 16 and `fro` is CAP.FRO * 16, both in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reg64 {
    /// CAP_REG (11.4.2).
    Capability,
    /// ECAP_REG (11.4.3).
    ExtendedCapability,
    /// RTADDR_REG (11.4.6).
    RootTableAddress,
    /// CCMD_REG (11.4.7).
    ContextCommand,
    /// AFLOG_REG: advanced fault log (11.4.15).
    AdvancedFaultLog,
    /// IQH_REG: invalidation queue head.
    InvalidationQueueHead,
    /// IQT_REG: invalidation queue tail.
    InvalidationQueueTail,
    /// IQA_REG: invalidation queue address.
    InvalidationQueueAddress,
    /// IQERCD_REG: invalidation queue error record.
    InvalidationQueueErrorRecord,
    /// IRTA_REG: interrupt remapping table address.
    InterruptRemapTableAddress,
    /// IVA_REG at ECAP.IRO * 16 + 0 (11.4.8.2).
    InvalidateAddress { iro: usize },
    /// IOTLB_REG at ECAP.IRO * 16 + 8 (11.4.8.1).
    IotlbInvalidate { iro: usize },
    /// Bits 63:0 of fault-recording register `index` at CAP.FRO * 16 + 16 * index (11.4.14).
    FaultRecordLow { fro: usize, index: usize },
    /// Bits 127:64 of fault-recording register `index` (F is bit 63 of this half).
    FaultRecordHigh { fro: usize, index: usize },
}

impl Reg64 {
    pub const fn offset(self) -> usize {
        match self {
            Reg64::Capability => 0x08,
            Reg64::ExtendedCapability => 0x10,
            Reg64::RootTableAddress => 0x20,
            Reg64::ContextCommand => 0x28,
            Reg64::AdvancedFaultLog => 0x58,
            Reg64::InvalidationQueueHead => 0x80,
            Reg64::InvalidationQueueTail => 0x88,
            Reg64::InvalidationQueueAddress => 0x90,
            Reg64::InvalidationQueueErrorRecord => 0xB0,
            Reg64::InterruptRemapTableAddress => 0xB8,
            Reg64::InvalidateAddress { iro } => iro,
            Reg64::IotlbInvalidate { iro } => iro + 8,
            Reg64::FaultRecordLow { fro, index } => fro + 16 * index,
            Reg64::FaultRecordHigh { fro, index } => fro + 16 * index + 8,
        }
    }
}

bitflags! {
    /// GCMD_REG bits (VT-d 11.4.4). SRTP, SFL, WBF and SIRTP are one-shot commands; the others
    /// are levels that every GCMD write restates.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Gcmd: u32 {
        /// Compatibility-format interrupts pass through (clear = blocked).
        const CFI = 1 << 23;
        const SIRTP = 1 << 24;
        const IRE = 1 << 25;
        const QIE = 1 << 26;
        const WBF = 1 << 27;
        const EAFL = 1 << 28;
        const SFL = 1 << 29;
        const SRTP = 1 << 30;
        const TE = 1 << 31;
    }

    /// GSTS_REG bits (VT-d 11.4.5): each reports the GCMD bit at the same position.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Gsts: u32 {
        const CFIS = 1 << 23;
        const IRTPS = 1 << 24;
        const IRES = 1 << 25;
        const QIES = 1 << 26;
        const WBFS = 1 << 27;
        const AFLS = 1 << 28;
        const FLS = 1 << 29;
        const RTPS = 1 << 30;
        const TES = 1 << 31;
    }

    /// FSTS_REG bits (VT-d 11.4.9); FRI (15:8) is read with [`fault_record_index`].
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Fsts: u32 {
        /// Primary fault overflow (RW1C).
        const PFO = 1 << 0;
        /// Primary pending fault: some fault-recording register has F set (RO).
        const PPF = 1 << 1;
        const AFO = 1 << 2;
        const APF = 1 << 3;
        /// Invalidation queue error (RW1C).
        const IQE = 1 << 4;
        /// Invalidation completion error (RW1C).
        const ICE = 1 << 5;
        /// Invalidation time-out error (RW1C).
        const ITE = 1 << 6;
    }

    /// FECTL_REG bits (VT-d 11.4.10).
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Fectl: u32 {
        const IP = 1 << 30;
        const IM = 1 << 31;
    }

    /// ICS_REG bits.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Ics: u32 {
        /// Invalidation-wait descriptor with IF=1 completed (RW1C).
        const IWC = 1 << 0;
    }
}

/// The GSTS bits that read back one-shot commands: VT-d 11.4.4 says to compute a GCMD value as
/// `GSTS & 0x96FF_FFFF` (clear RTPS, FLS, WBFS, IRTPS) and then set or clear the one bit wanted.
pub const GSTS_ONE_SHOT_MASK: u32 = 0x96FF_FFFF;

/// FSTS.FRI (bits 15:8): the fault-recording register software should read first.
pub const fn fault_record_index(fsts: u32) -> usize {
    ((fsts >> 8) & 0xFF) as usize
}

/// RTADDR_REG value (VT-d 11.4.6): root table address in 63:12, TTM (11:10) = 00 legacy mode.
pub const fn rtaddr_legacy(root_table: u64) -> u64 {
    root_table & !0xFFF
}

/// Access to one remapping unit's registers. Every access is a side effect, hence `&mut self`.
pub trait VtdMmio {
    fn read32(&mut self, reg: Reg32) -> u32;
    fn write32(&mut self, reg: Reg32, value: u32);
    fn read64(&mut self, reg: Reg64) -> u64;
    fn write64(&mut self, reg: Reg64, value: u64);

    fn global_status(&mut self) -> Gsts {
        Gsts::from_bits_retain(self.read32(Reg32::GlobalStatus))
    }
    fn fault_status(&mut self) -> Fsts {
        Fsts::from_bits_retain(self.read32(Reg32::FaultStatus))
    }
}

/// The registers of a real unit, reached at the DRHD's register base through the identity map.
pub struct MmioRegisters {
    base: usize,
}

impl MmioRegisters {
    /// # Safety
    /// `base` must be the register base of a VT-d unit (from a DMAR DRHD), mapped uncached at
    /// the same virtual address for the lifetime of this value, with nothing else accessing it.
    pub unsafe fn new(base: u64) -> MmioRegisters {
        MmioRegisters {
            base: base as usize,
        }
    }

    fn ptr<T>(&self, offset: usize) -> *mut T {
        (self.base + offset) as *mut T
    }
}

impl VtdMmio for MmioRegisters {
    fn read32(&mut self, reg: Reg32) -> u32 {
        // SAFETY: `new`'s contract makes base + a register offset a valid, aligned MMIO address.
        unsafe { core::ptr::read_volatile(self.ptr::<u32>(reg.offset())) }
    }
    fn write32(&mut self, reg: Reg32, value: u32) {
        // Table and queue stores made before this write must reach memory first (the write may
        // tell the unit to read them); x86 keeps stores in order, the fence keeps the compiler.
        compiler_fence(Ordering::SeqCst);
        // SAFETY: as in `read32`.
        unsafe { core::ptr::write_volatile(self.ptr::<u32>(reg.offset()), value) }
    }
    fn read64(&mut self, reg: Reg64) -> u64 {
        // SAFETY: as in `read32`; 64-bit registers are 8-byte aligned (VT-d 11.2).
        unsafe { core::ptr::read_volatile(self.ptr::<u64>(reg.offset())) }
    }
    fn write64(&mut self, reg: Reg64, value: u64) {
        // As in `write32`: earlier table and queue stores first.
        compiler_fence(Ordering::SeqCst);
        // SAFETY: `new`'s contract makes base + a register offset a valid MMIO address; 64-bit
        // registers are 8-byte aligned (VT-d 11.2).
        unsafe { core::ptr::write_volatile(self.ptr::<u64>(reg.offset()), value) }
    }
}

/// A register model that behaves like a remapping unit for the handshakes software relies on,
/// and records every write in order.
#[cfg(test)]
pub mod fake {
    use super::*;
    use alloc::collections::BTreeMap;
    use alloc::vec::Vec;

    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Write {
        W32(Reg32, u32),
        W64(Reg64, u64),
    }

    pub struct FakeVtd {
        regs: BTreeMap<usize, u64>,
        iro: usize,
        fro: usize,
        nfr: usize,
        /// Every register write, in order.
        pub writes: Vec<Write>,
        /// Root table pointer latched by the last SRTP.
        pub latched_root: Option<u64>,
        /// Interrupt remapping table register latched by the last SIRTP.
        pub latched_irta: Option<u64>,
        /// Number of write-buffer flushes performed.
        pub write_buffer_flushes: usize,
        /// When set, the queue head does not follow the tail (hardware busy).
        pub queue_stalled: bool,
        /// Sequence errors a real unit would punish (e.g. TE before a root table is set).
        pub violations: Vec<&'static str>,
    }

    impl FakeVtd {
        pub fn new(cap: u64, ecap: u64) -> FakeVtd {
            let mut regs = BTreeMap::new();
            regs.insert(Reg32::Version.offset(), 0x10);
            regs.insert(Reg64::Capability.offset(), cap);
            regs.insert(Reg64::ExtendedCapability.offset(), ecap);
            // FECTL.IM and IECTL.IM are set at reset (11.4.10).
            regs.insert(Reg32::FaultEventControl.offset(), Fectl::IM.bits() as u64);
            regs.insert(Reg32::InvalidationEventControl.offset(), 1 << 31);
            FakeVtd {
                regs,
                iro: ((ecap >> 8) & 0x3FF) as usize * 16,
                fro: ((cap >> 24) & 0x3FF) as usize * 16,
                nfr: ((cap >> 40) & 0xFF) as usize + 1,
                writes: Vec::new(),
                latched_root: None,
                latched_irta: None,
                write_buffer_flushes: 0,
                queue_stalled: false,
                violations: Vec::new(),
            }
        }

        pub fn get(&self, offset: usize) -> u64 {
            self.regs.get(&offset).copied().unwrap_or(0)
        }
        fn set(&mut self, offset: usize, value: u64) {
            self.regs.insert(offset, value);
        }
        pub fn gsts(&self) -> Gsts {
            Gsts::from_bits_retain(self.get(Reg32::GlobalStatus.offset()) as u32)
        }

        /// Records a fault the way hardware does: fills register `index`, sets PPF and FRI.
        pub fn inject_fault(&mut self, index: usize, lo: u64, hi: u64) {
            let fro = self.fro;
            self.set(Reg64::FaultRecordLow { fro, index }.offset(), lo);
            self.set(Reg64::FaultRecordHigh { fro, index }.offset(), hi | 1 << 63);
            let fsts = self.get(Reg32::FaultStatus.offset()) as u32;
            let fri = if fsts & Fsts::PPF.bits() == 0 {
                (index as u32) << 8
            } else {
                fsts & 0xFF00
            };
            self.set(Reg32::FaultStatus.offset(), ((fsts & !0xFF00) | fri) as u64);
            self.update_ppf();
        }

        /// Reports an invalidation queue error (FSTS.IQE), as for a malformed descriptor.
        pub fn inject_iqe(&mut self) {
            let off = Reg32::FaultStatus.offset();
            self.set(off, self.get(off) | Fsts::IQE.bits() as u64);
        }

        /// Sets FSTS.PFO, as when a fault arrives with every recording register full.
        pub fn set_fault_overflow(&mut self) {
            let off = Reg32::FaultStatus.offset();
            self.set(off, self.get(off) | Fsts::PFO.bits() as u64);
        }

        /// Lets a stalled queue catch up to `head` (a descriptor index).
        pub fn advance_head(&mut self, head: u64) {
            self.set(Reg64::InvalidationQueueHead.offset(), head << 4);
        }

        fn update_ppf(&mut self) {
            let pending = (0..self.nfr).any(|index| {
                self.get(
                    Reg64::FaultRecordHigh {
                        fro: self.fro,
                        index,
                    }
                    .offset(),
                ) >> 63
                    != 0
            });
            let mut fsts = self.get(Reg32::FaultStatus.offset()) as u32 & !Fsts::PPF.bits();
            if pending {
                fsts |= Fsts::PPF.bits();
            }
            self.set(Reg32::FaultStatus.offset(), fsts as u64);
        }

        fn global_command(&mut self, value: u32) {
            let cmd = Gcmd::from_bits_retain(value);
            let mut sts =
                self.gsts() & !(Gsts::TES | Gsts::QIES | Gsts::IRES | Gsts::CFIS | Gsts::AFLS);
            if cmd.contains(Gcmd::SRTP) {
                self.latched_root = Some(self.get(Reg64::RootTableAddress.offset()));
                sts |= Gsts::RTPS;
            }
            if cmd.contains(Gcmd::SIRTP) {
                self.latched_irta = Some(self.get(Reg64::InterruptRemapTableAddress.offset()));
                sts |= Gsts::IRTPS;
            }
            if cmd.contains(Gcmd::WBF) {
                self.write_buffer_flushes += 1; // done at once: WBFS stays clear
            }
            if cmd.contains(Gcmd::SFL) {
                sts |= Gsts::FLS;
            }
            if cmd.contains(Gcmd::TE) {
                if !sts.contains(Gsts::RTPS) {
                    self.violations.push("TE set before a root table pointer");
                }
                sts |= Gsts::TES;
            }
            if cmd.contains(Gcmd::QIE) {
                if !self.gsts().contains(Gsts::QIES) {
                    // Enabling QI resets the head; the tail must already be 0 (11.4 IQT_REG).
                    if self.get(Reg64::InvalidationQueueTail.offset()) != 0 {
                        self.violations.push("QIE set with IQT != 0");
                    }
                    self.set(Reg64::InvalidationQueueHead.offset(), 0);
                }
                sts |= Gsts::QIES;
            }
            if cmd.contains(Gcmd::IRE) {
                if !sts.contains(Gsts::IRTPS) {
                    self.violations
                        .push("IRE set before an interrupt table pointer");
                }
                sts |= Gsts::IRES;
            }
            if cmd.contains(Gcmd::CFI) {
                sts |= Gsts::CFIS;
            }
            if cmd.contains(Gcmd::EAFL) {
                sts |= Gsts::AFLS;
            }
            self.set(Reg32::GlobalStatus.offset(), sts.bits() as u64);
        }
    }

    impl VtdMmio for FakeVtd {
        fn read32(&mut self, reg: Reg32) -> u32 {
            match reg {
                Reg32::GlobalCommand => 0, // undefined on hardware
                _ => self.get(reg.offset()) as u32,
            }
        }

        fn write32(&mut self, reg: Reg32, value: u32) {
            self.writes.push(Write::W32(reg, value));
            let off = reg.offset();
            match reg {
                Reg32::Version | Reg32::GlobalStatus => {
                    self.violations.push("write to read-only register")
                }
                Reg32::GlobalCommand => self.global_command(value),
                Reg32::FaultStatus => {
                    let w1c =
                        (Fsts::PFO | Fsts::AFO | Fsts::APF | Fsts::IQE | Fsts::ICE | Fsts::ITE)
                            .bits();
                    let old = self.get(off) as u32;
                    self.set(off, (old & !(value & w1c)) as u64);
                }
                Reg32::InvalidationCompletionStatus => {
                    let old = self.get(off) as u32;
                    self.set(off, (old & !(value & Ics::IWC.bits())) as u64);
                }
                _ => self.set(off, value as u64),
            }
        }

        fn read64(&mut self, reg: Reg64) -> u64 {
            self.get(reg.offset())
        }

        fn write64(&mut self, reg: Reg64, value: u64) {
            self.writes.push(Write::W64(reg, value));
            let off = reg.offset();
            match reg {
                Reg64::Capability | Reg64::ExtendedCapability | Reg64::InvalidationQueueHead => {
                    self.violations.push("write to read-only register")
                }
                Reg64::ContextCommand if value >> 63 != 0 => {
                    // Done at once: ICC clears, CAIG (60:59) reports the requested CIRG (62:61).
                    let cirg = (value >> 61) & 3;
                    self.set(off, (value & !(1 << 63) & !(3 << 59)) | cirg << 59);
                }
                Reg64::IotlbInvalidate { iro } if value >> 63 != 0 => {
                    if iro != self.iro {
                        self.violations.push("IOTLB register not at ECAP.IRO");
                    }
                    // IVT clears, IAIG (58:57) reports the requested IIRG (61:60).
                    let iirg = (value >> 60) & 3;
                    self.set(off, (value & !(1 << 63) & !(3 << 57)) | iirg << 57);
                }
                Reg64::FaultRecordHigh { fro, index } => {
                    if fro != self.fro || index >= self.nfr {
                        self.violations.push("fault record outside CAP.FRO/NFR");
                    }
                    if value >> 63 != 0 {
                        let old = self.get(off);
                        self.set(off, old & !(1 << 63));
                        self.update_ppf();
                    }
                }
                Reg64::InvalidationQueueAddress if self.gsts().contains(Gsts::QIES) => {
                    self.violations.push("IQA written while QI is enabled")
                }
                Reg64::InvalidationQueueTail => {
                    self.set(off, value);
                    if self.gsts().contains(Gsts::QIES) && !self.queue_stalled {
                        // The unit fetches and completes everything up to the tail, and the
                        // last descriptor is a wait with IF=1 in this driver: IWC is set.
                        self.set(Reg64::InvalidationQueueHead.offset(), value);
                        let ics = Reg32::InvalidationCompletionStatus.offset();
                        self.set(ics, self.get(ics) | Ics::IWC.bits() as u64);
                    }
                }
                _ => self.set(off, value),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fake::FakeVtd;
    use super::*;

    #[test]
    fn offsets_match_the_register_map() {
        // VT-d 11.4 register offset table.
        assert_eq!(Reg32::GlobalCommand.offset(), 0x18);
        assert_eq!(Reg32::GlobalStatus.offset(), 0x1C);
        assert_eq!(Reg32::FaultStatus.offset(), 0x34);
        assert_eq!(Reg32::FaultEventUpperAddress.offset(), 0x44);
        assert_eq!(Reg32::ProtectedMemoryEnable.offset(), 0x64);
        assert_eq!(Reg32::InvalidationCompletionStatus.offset(), 0x9C);
        assert_eq!(Reg64::RootTableAddress.offset(), 0x20);
        assert_eq!(Reg64::ContextCommand.offset(), 0x28);
        assert_eq!(Reg64::AdvancedFaultLog.offset(), 0x58);
        assert_eq!(Reg64::InvalidationQueueHead.offset(), 0x80);
        assert_eq!(Reg64::InvalidationQueueTail.offset(), 0x88);
        assert_eq!(Reg64::InvalidationQueueAddress.offset(), 0x90);
        assert_eq!(Reg64::InterruptRemapTableAddress.offset(), 0xB8);
        // QEMU: ECAP.IRO = 0xf -> IVA at 0xf0, IOTLB at 0xf8; CAP.FRO = 0x22 -> FRCD0 at 0x220.
        assert_eq!(Reg64::InvalidateAddress { iro: 0xf0 }.offset(), 0xF0);
        assert_eq!(Reg64::IotlbInvalidate { iro: 0xf0 }.offset(), 0xF8);
        assert_eq!(
            Reg64::FaultRecordLow {
                fro: 0x220,
                index: 2
            }
            .offset(),
            0x240
        );
        assert_eq!(
            Reg64::FaultRecordHigh {
                fro: 0x220,
                index: 2
            }
            .offset(),
            0x248
        );
    }

    #[test]
    fn command_and_status_bits() {
        // VT-d 11.4.4/11.4.5: TE 31, SRTP 30, SFL 29, EAFL 28, WBF 27, QIE 26, IRE 25, SIRTP 24, CFI 23.
        assert_eq!(Gcmd::TE.bits(), 0x8000_0000);
        assert_eq!(Gcmd::SRTP.bits(), 0x4000_0000);
        assert_eq!(Gcmd::WBF.bits(), 0x0800_0000);
        assert_eq!(Gcmd::QIE.bits(), 0x0400_0000);
        assert_eq!(Gcmd::IRE.bits(), 0x0200_0000);
        assert_eq!(Gcmd::SIRTP.bits(), 0x0100_0000);
        assert_eq!(Gcmd::CFI.bits(), 0x0080_0000);
        // The one-shot mask clears exactly RTPS, FLS, WBFS and IRTPS.
        let one_shot = Gsts::RTPS | Gsts::FLS | Gsts::WBFS | Gsts::IRTPS;
        assert_eq!(!GSTS_ONE_SHOT_MASK, one_shot.bits());
        assert_eq!(fault_record_index(0x0302), 3);
        assert_eq!(rtaddr_legacy(0x1234_5000), 0x1234_5000);
    }

    #[test]
    fn fake_latches_root_pointer_and_reflects_enables() {
        let mut hw = FakeVtd::new(0, 0);
        hw.write64(Reg64::RootTableAddress, 0x5000);
        hw.write32(Reg32::GlobalCommand, Gcmd::SRTP.bits());
        assert_eq!(hw.latched_root, Some(0x5000));
        assert!(hw.global_status().contains(Gsts::RTPS));
        // Changing RTADDR alone does nothing until the next SRTP.
        hw.write64(Reg64::RootTableAddress, 0x6000);
        assert_eq!(hw.latched_root, Some(0x5000));
        hw.write32(Reg32::GlobalCommand, Gcmd::TE.bits());
        assert!(hw.global_status().contains(Gsts::TES));
        // A GCMD write that omits TE turns translation off, as on hardware.
        hw.write32(Reg32::GlobalCommand, Gcmd::QIE.bits());
        assert_eq!(hw.global_status() & (Gsts::TES | Gsts::QIES), Gsts::QIES);
        assert!(hw.violations.is_empty());
    }
}
