//! Primary fault logging: decoding fault-recording registers (VT-d 11.4.14, record layout 9.9)
//! and their reasons (Appendix A), draining them through [`VtdMmio`], and the fault event
//! interrupt message that tells the host a fault was recorded (VT-d 7.3.1, 11.4.10-11.4.13).

use super::regs::{fault_record_index, Fsts, Reg32, Reg64, VtdMmio};
use super::{SourceId, VtdError};
use crate::caps::vtd::VtdCap;
use alloc::vec::Vec;
use core::fmt;

/// A fault reason code (FR, bits 103:96; VT-d Appendix A).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FaultReason(pub u8);

impl FaultReason {
    /// Interrupt-remapping faults use codes 0x20-0x2F, DMA-remapping faults the rest.
    pub const fn is_interrupt(self) -> bool {
        self.0 & 0xF0 == 0x20
    }

    pub const fn name(self) -> &'static str {
        match self.0 {
            0x1 => "root entry not present",
            0x2 => "context entry not present",
            0x3 => "invalid context entry",
            0x4 => "address beyond the domain's address width",
            0x5 => "write to a page without write permission",
            0x6 => "read from a page without read permission",
            0x7 => "error accessing a second-level paging entry",
            0x8 => "error accessing the root table",
            0x9 => "error accessing a context table",
            0xA => "reserved bit set in a root entry",
            0xB => "reserved bit set in a context entry",
            0xC => "reserved bit set in a second-level paging entry",
            0xD => "request type blocked by the context entry",
            0x20 => "reserved field set in a remappable interrupt request",
            0x21 => "interrupt index beyond the remapping table",
            0x22 => "interrupt remapping entry not present",
            0x23 => "error accessing the interrupt remapping table",
            0x24 => "reserved field set in an interrupt remapping entry",
            0x25 => "compatibility-format interrupt blocked",
            0x26 => "interrupt blocked by source-id verification",
            0x27 => "error accessing a posted-interrupt descriptor",
            _ => "other fault",
        }
    }
}

/// What the faulting request was (T1 bit 126 and T2 bit 92; T2 is 0 on older units).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestType {
    Write,
    Read,
    /// A translation (ATS) or page request.
    Translation,
    AtomicOp,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultKind {
    /// A DMA request; the fault's address is the page it targeted.
    Dma(RequestType),
    /// An interrupt request; `index` is the interrupt_index it computed (FI bits 63:48).
    Interrupt { index: u16 },
}

/// One decoded fault record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fault {
    /// The requester (SID, bits 79:64).
    pub source: SourceId,
    /// FI (bits 63:12): the faulting page address for DMA faults.
    pub address: u64,
    pub reason: FaultReason,
    pub kind: FaultKind,
}

impl Fault {
    /// Decodes a fault-recording register: `lo` = bits 63:0, `hi` = bits 127:64.
    /// `None` when F (bit 127) is clear, i.e. the register holds no fault.
    pub const fn decode(lo: u64, hi: u64) -> Option<Fault> {
        if hi >> 63 == 0 {
            return None;
        }
        let reason = FaultReason((hi >> 32) as u8);
        let kind = if reason.is_interrupt() {
            FaultKind::Interrupt {
                index: (lo >> 48) as u16,
            }
        } else {
            let t1 = (hi >> 62) & 1 != 0;
            let t2 = (hi >> 28) & 1 != 0;
            FaultKind::Dma(match (t2, t1) {
                (false, false) => RequestType::Write,
                (false, true) => RequestType::Read,
                (true, false) => RequestType::Translation,
                (true, true) => RequestType::AtomicOp,
            })
        };
        Some(Fault {
            source: SourceId(hi as u16),
            address: lo & !0xFFF,
            reason,
            kind,
        })
    }
}

impl fmt::Display for Fault {
    /// `vtd fault: bdf=00:03.0 kind=write address=0x40000000 reason=0x5 (write to ...)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "vtd fault: bdf={} ", self.source)?;
        match self.kind {
            FaultKind::Dma(t) => {
                let t = match t {
                    RequestType::Write => "write",
                    RequestType::Read => "read",
                    RequestType::Translation => "translation",
                    RequestType::AtomicOp => "atomic",
                };
                write!(f, "kind={t} address={:#x}", self.address)?;
            }
            FaultKind::Interrupt { index } => write!(f, "kind=interrupt index={index:#x}")?,
        }
        write!(f, " reason={:#x} ({})", self.reason.0, self.reason.name())
    }
}

/// The MSI a unit sends when it records a fault: FEDATA, FEADDR and FEUADDR (VT-d 11.4.11-11.4.13).
/// The unit's own interrupts are never remapped (VT-d 5.1.6), so the message is in the plain MSI
/// format (SDM Vol. 3A 11.11): fixed delivery, edge, physical destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FaultEventMessage {
    pub data: u32,
    pub address: u32,
    pub upper_address: u32,
}

impl FaultEventMessage {
    /// `vector` to the CPU with APIC ID `apic_id`. An ID above 255 only fits where the unit has
    /// extended interrupt mode (`eim`): bits 31:8 of the x2APIC ID then go in FEUADDR (VT-d 11.4.13).
    pub const fn fixed(vector: u8, apic_id: u32, eim: bool) -> Result<Self, VtdError> {
        if apic_id > 0xFF && !eim {
            return Err(VtdError::Unsupported(
                "a fault event to an APIC ID above 255 without ECAP.EIM",
            ));
        }
        Ok(FaultEventMessage {
            data: vector as u32,
            address: 0xFEE0_0000 | (apic_id & 0xFF) << 12,
            upper_address: apic_id & 0xFFFF_FF00,
        })
    }

    pub const fn vector(self) -> u8 {
        self.data as u8
    }
}

/// The faults drained from a unit.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DrainedFaults {
    pub faults: Vec<Fault>,
    /// FSTS.PFO was set: faults arrived while all recording registers were full and were lost.
    pub overflowed: bool,
}

/// Reads every recorded fault, starting at FSTS.FRI and going round the CAP.NFR registers,
/// clears each (write 1 to F) and then the overflow bit in FSTS (VT-d 7.3.1 primary fault
/// logging). Invalidation-queue error bits are left to the queue's owner.
pub fn drain_faults(mmio: &mut impl VtdMmio, cap: u64) -> DrainedFaults {
    let cap = VtdCap(cap);
    let fro = cap.fault_recording_offset() as usize;
    let count = cap.fault_recording_registers() as usize;
    let fsts = mmio.fault_status();
    let mut drained = DrainedFaults {
        faults: Vec::new(),
        overflowed: fsts.contains(Fsts::PFO),
    };
    if fsts.contains(Fsts::PPF) {
        let mut index = fault_record_index(fsts.bits()) % count;
        for _ in 0..count {
            let hi = mmio.read64(Reg64::FaultRecordHigh { fro, index });
            let Some(fault) = Fault::decode(mmio.read64(Reg64::FaultRecordLow { fro, index }), hi)
            else {
                break;
            };
            drained.faults.push(fault);
            mmio.write64(Reg64::FaultRecordHigh { fro, index }, 1 << 63);
            index = (index + 1) % count;
        }
    }
    // FSTS is written whenever something was serviced, even with PFO clear (writing 0 to its RW1C
    // bits changes nothing): QEMU 7.2 re-evaluates FECTL.IP only on FSTS writes, and a stale IP
    // would send a fault event for faults already drained as soon as the event is unmasked.
    if fsts.intersects(Fsts::PPF | Fsts::PFO) {
        mmio.write32(Reg32::FaultStatus, (fsts & Fsts::PFO).bits());
    }
    drained
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vtd::regs::fake::{FakeVtd, Write};

    const QEMU_CAP: u64 = 0x00d2_008c_2226_0206;

    #[test]
    fn records_decoded_by_hand() {
        // A write by 00:03.0 to 0x1234_5000 with no mapping in a present context (reason 0x5):
        // lo = FI 0x1234_5000; hi = F (bit 63) | T1 0 | FR 0x05 << 32 | SID 0x0018.
        let f = Fault::decode(0x1234_5000, 1 << 63 | 0x05 << 32 | 0x0018).unwrap();
        assert_eq!(f.source, SourceId::new(0, 3, 0));
        assert_eq!(
            (f.address, f.reason, f.kind),
            (
                0x1234_5000,
                FaultReason(5),
                FaultKind::Dma(RequestType::Write)
            )
        );
        assert_eq!(
            alloc::format!("{f}"),
            "vtd fault: bdf=00:03.0 kind=write address=0x12345000 reason=0x5 (write to a page without write permission)"
        );
        // A read (T1 = bit 62 of hi) blocked because the context entry is absent (0x2) by 01:00.0.
        let f = Fault::decode(0x8000_0000, 1 << 63 | 1 << 62 | 0x02 << 32 | 0x0100).unwrap();
        assert_eq!(
            (f.kind, f.reason.name()),
            (
                FaultKind::Dma(RequestType::Read),
                "context entry not present"
            )
        );
        // An interrupt through a cleared IRTE (0x22): index 0x2A in FI bits 63:48.
        let f = Fault::decode(0x002A << 48, 1 << 63 | 0x22 << 32 | 0x0018).unwrap();
        assert_eq!(f.kind, FaultKind::Interrupt { index: 0x2A });
        assert!(f.reason.is_interrupt() && !FaultReason(0xD).is_interrupt());
        // F clear: nothing recorded.
        assert_eq!(Fault::decode(0x1000, 0x05 << 32), None);
    }

    #[test]
    fn drain_reads_clears_and_wraps() {
        // 4 recording registers at 0x220 (NFR = 3); faults in registers 3 and 0, FRI = 3.
        let cap = QEMU_CAP | 3 << 40;
        let mut hw = FakeVtd::new(cap, 0xf0_0f4a);
        hw.inject_fault(3, 0x1000, 0x05 << 32 | 0x0018);
        hw.inject_fault(0, 0x2000, 1 << 62 | 0x06 << 32 | 0x0020);
        assert!(hw.fault_status().contains(Fsts::PPF));
        let d = drain_faults(&mut hw, cap);
        assert_eq!(d.faults.len(), 2);
        assert_eq!(
            (d.faults[0].address, d.faults[0].reason),
            (0x1000, FaultReason(5))
        );
        assert_eq!(
            (d.faults[1].source, d.faults[1].kind),
            (SourceId(0x20), FaultKind::Dma(RequestType::Read))
        );
        assert!(!d.overflowed);
        assert_eq!(
            hw.writes,
            [
                Write::W64(
                    Reg64::FaultRecordHigh {
                        fro: 0x220,
                        index: 3
                    },
                    1 << 63
                ),
                Write::W64(
                    Reg64::FaultRecordHigh {
                        fro: 0x220,
                        index: 0
                    },
                    1 << 63
                ),
                Write::W32(Reg32::FaultStatus, 0),
            ]
        );
        assert!(!hw.fault_status().contains(Fsts::PPF));
        assert!(hw.violations.is_empty());
        // Nothing pending: nothing read or written.
        hw.writes.clear();
        assert_eq!(drain_faults(&mut hw, cap), DrainedFaults::default());
        assert!(hw.writes.is_empty());
    }

    #[test]
    fn fault_event_messages_by_hand() {
        // Vector 0xEE to xAPIC ID 3: data 0x00EE (fixed, edge); address 0xFEE0_3000 (ID in 19:12,
        // RH = DM = 0: physical); no upper bits (SDM Vol. 3A 11.11.1-11.11.2).
        let m = FaultEventMessage::fixed(0xEE, 3, false).unwrap();
        assert_eq!((m.data, m.address, m.upper_address), (0xEE, 0xFEE0_3000, 0));
        assert_eq!(m.vector(), 0xEE);
        // x2APIC ID 0x1_2345 with EIM: low byte 0x45 in 19:12, bits 31:8 (0x1_2300) in FEUADDR.
        let m = FaultEventMessage::fixed(0x40, 0x1_2345, true).unwrap();
        assert_eq!(
            (m.data, m.address, m.upper_address),
            (0x40, 0xFEE4_5000, 0x1_2300)
        );
        assert!(FaultEventMessage::fixed(0x40, 0x100, false).is_err());
    }

    #[test]
    fn overflow_is_reported_and_cleared() {
        let mut hw = FakeVtd::new(QEMU_CAP, 0xf0_0f4a);
        hw.inject_fault(0, 0x3000, 0x04 << 32 | 0x0018);
        hw.set_fault_overflow();
        let d = drain_faults(&mut hw, QEMU_CAP);
        assert!(d.overflowed);
        assert_eq!(
            d.faults[0].reason.name(),
            "address beyond the domain's address width"
        );
        assert_eq!(hw.writes.last(), Some(&Write::W32(Reg32::FaultStatus, 1)));
        assert_eq!(hw.read32(Reg32::FaultStatus) & 0x3, 0);
    }
}
