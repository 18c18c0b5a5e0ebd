//! One VM exit's information, read from the VMCS once, right after the exit ([`ExitInfo::capture`]),
//! so handlers work from a snapshot instead of VMREADing as they go.
//!
//! Only the fields that are defined for the exit's kind, and that some handler uses, are read: a
//! VMREAD is an instruction on the exit path, which the bench counts (`cargo xtask bench`, the exit
//! path line), and the fields the SDM leaves undefined for an exit (Vol. 3C 28.2.1, 28.2.5) would
//! be noise anyway. A field that was not read is 0.

use super::guest_events::Event;
use crate::vmx::exit::{EptViolation, EventType, ExitReason, ExitReasonField, InterruptionInfo};
use crate::vmx::vmcs::{VmFail, VmcsAccess};
use crate::vmx::vmcs_fields::{Vmcs32Ro, Vmcs64Ro, VmcsNatural, VmcsNaturalRo};

/// What the CPU recorded about one VM exit (SDM Vol. 3C 28.2), as far as handlers need it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExitInfo {
    /// The exit-reason field: basic reason and the entry-failure bit.
    pub raw: ExitReasonField,
    /// The basic reason decoded; `Err(number)` for one Table C-1 does not define.
    pub reason: Result<ExitReason, u16>,
    /// Exit qualification, for the exits that report one (SDM 28.2.1) and entry failures (27.8).
    pub qualification: u64,
    /// VM-exit instruction length, for instruction exits and software exceptions (SDM 28.2.5).
    pub instruction_len: u32,
    /// Guest RIP: every exit except the host's own events (external interrupt, interrupt and NMI
    /// window, preemption timer), whose handlers never look at the guest, unless the exit
    /// interrupted an event's delivery (whose re-delivery may need it in a report).
    pub rip: u64,
    /// Guest RSP, for the exits that may read a general register by number (CR access, emulated
    /// MMIO); the GPR save area does not hold it.
    pub rsp: u64,
    /// Guest RFLAGS, for HLT (whether it can ever wake).
    pub rflags: u64,
    /// Guest-physical address of an EPT violation or misconfiguration.
    pub guest_physical: u64,
    /// Guest-linear address of an EPT violation whose qualification says it is valid (bit 7).
    pub guest_linear: u64,
    /// VM-exit interruption information and error code (external interrupts, exceptions and NMIs).
    pub interruption: InterruptionInfo,
    pub interruption_error: u32,
    /// The event whose delivery this exit interrupted (IDT-vectoring information, SDM 28.2.4).
    pub vectoring: Option<Event>,
}

impl ExitInfo {
    /// Reads the current VMCS's exit information for the exit that just happened.
    pub fn capture(vmcs: &impl VmcsAccess) -> Result<Self, VmFail> {
        let raw = ExitReasonField(vmcs.read32_ro(Vmcs32Ro::ExitReason)?);
        let reason = raw.reason();
        let mut info = ExitInfo {
            raw,
            reason,
            ..Self::EMPTY
        };
        let kind = reason.ok();
        if raw.entry_failure() || kind.is_none_or(reports_qualification) {
            info.qualification = vmcs.read_natural_ro(VmcsNaturalRo::ExitQualification)?;
        }
        if raw.entry_failure() {
            return Ok(info);
        }
        let Some(kind) = kind else {
            return Ok(info);
        };
        if matches!(
            kind,
            ExitReason::ExceptionOrNmi | ExitReason::ExternalInterrupt
        ) {
            info.interruption =
                InterruptionInfo::decode(vmcs.read32_ro(Vmcs32Ro::ExitInterruptionInfo)?);
            if info.interruption.error_code_valid {
                info.interruption_error = vmcs.read32_ro(Vmcs32Ro::ExitInterruptionErrorCode)?;
            }
        }
        info.vectoring = Event::vectoring(vmcs)?;
        let software_exception = kind == ExitReason::ExceptionOrNmi
            && Event::needs_instruction_len(info.interruption.event_type);
        if is_instruction_exit(kind) || software_exception {
            info.instruction_len = vmcs.read32_ro(Vmcs32Ro::ExitInstructionLength)?;
        }
        if !is_host_event(kind) || info.vectoring.is_some() {
            info.rip = vmcs.read_natural(VmcsNatural::GuestRip)?;
        }
        match kind {
            ExitReason::CrAccess => info.rsp = vmcs.read_natural(VmcsNatural::GuestRsp)?,
            ExitReason::Hlt => info.rflags = vmcs.read_natural(VmcsNatural::GuestRflags)?,
            ExitReason::EptViolation => {
                info.rsp = vmcs.read_natural(VmcsNatural::GuestRsp)?;
                info.guest_physical = vmcs.read64_ro(Vmcs64Ro::GuestPhysicalAddress)?;
                if EptViolation::decode(info.qualification)
                    .contains(EptViolation::LINEAR_ADDRESS_VALID)
                {
                    info.guest_linear = vmcs.read_natural_ro(VmcsNaturalRo::GuestLinearAddress)?;
                }
            }
            ExitReason::EptMisconfiguration => {
                info.guest_physical = vmcs.read64_ro(Vmcs64Ro::GuestPhysicalAddress)?;
            }
            _ => {}
        }
        Ok(info)
    }

    /// Nothing recorded (what [`Self::capture`] starts from).
    pub const EMPTY: Self = ExitInfo {
        raw: ExitReasonField(0),
        reason: Err(0),
        qualification: 0,
        instruction_len: 0,
        rip: 0,
        rsp: 0,
        rflags: 0,
        guest_physical: 0,
        guest_linear: 0,
        interruption: InterruptionInfo {
            vector: 0,
            event_type: EventType::ExternalInterrupt,
            error_code_valid: false,
            nmi_unblocking: false,
            valid: false,
        },
        interruption_error: 0,
        vectoring: None,
    };
}

/// Exits that report an exit qualification (SDM Vol. 3C 28.2.1); for every other exit the CPU
/// clears the field.
const fn reports_qualification(reason: ExitReason) -> bool {
    use ExitReason::*;
    matches!(
        reason,
        ExceptionOrNmi
            | StartupIpi
            | IoSmi
            | TaskSwitch
            | Invlpg
            | Invept
            | Invpcid
            | Invvpid
            | Vmclear
            | Vmptrld
            | Vmptrst
            | Vmread
            | Vmwrite
            | Vmxon
            | GdtrIdtrAccess
            | LdtrTrAccess
            | CrAccess
            | DrAccess
            | IoInstruction
            | Mwait
            | ApicAccess
            | VirtualizedEoi
            | ApicWrite
            | EptViolation
    )
}

/// The host's own events: nothing about the guest's instruction stream is needed to handle them.
const fn is_host_event(reason: ExitReason) -> bool {
    matches!(
        reason,
        ExitReason::ExternalInterrupt
            | ExitReason::InterruptWindow
            | ExitReason::NmiWindow
            | ExitReason::PreemptionTimer
    )
}

/// Exits caused by executing an instruction, whose length the CPU records (SDM Vol. 3C 28.2.5;
/// for the others the field is undefined). Software exceptions are decided by their type.
const fn is_instruction_exit(reason: ExitReason) -> bool {
    use ExitReason::*;
    !matches!(
        reason,
        ExceptionOrNmi
            | ExternalInterrupt
            | TripleFault
            | InitSignal
            | StartupIpi
            | IoSmi
            | OtherSmi
            | InterruptWindow
            | NmiWindow
            | EntryFailInvalidGuestState
            | EntryFailMsrLoading
            | EntryFailMachineCheck
            | MonitorTrapFlag
            | TprBelowThreshold
            | ApicAccess
            | VirtualizedEoi
            | EptViolation
            | EptMisconfiguration
            | PreemptionTimer
            | ApicWrite
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmx::vmcs::FakeVmcs;
    use crate::vmx::vmcs_fields::{Vmcs32, VmcsNaturalRo};

    fn exited(reason: u32) -> FakeVmcs {
        let mut vmcs = FakeVmcs::new();
        vmcs.set(Vmcs32Ro::ExitReason as u32, reason.into());
        vmcs.set(VmcsNaturalRo::ExitQualification as u32, 0x77);
        vmcs.set(Vmcs32Ro::ExitInstructionLength as u32, 3);
        vmcs.set(VmcsNatural::GuestRip as u32, 0x1000);
        vmcs.set(VmcsNatural::GuestRsp as u32, 0x8000);
        vmcs.set(VmcsNatural::GuestRflags as u32, 0x202);
        vmcs
    }

    /// A field the snapshot must not read fails its VMREAD, so reading it fails the capture.
    fn forbid(vmcs: &mut FakeVmcs, fields: &[u32]) {
        for &f in fields {
            vmcs.mark_unsupported(f);
        }
    }

    #[test]
    fn an_external_interrupt_reads_only_its_vector_and_the_vectoring_field() {
        let mut vmcs = exited(1);
        vmcs.set(Vmcs32Ro::ExitInterruptionInfo as u32, 0x8000_0040);
        forbid(
            &mut vmcs,
            &[
                VmcsNaturalRo::ExitQualification as u32,
                Vmcs32Ro::ExitInstructionLength as u32,
                VmcsNatural::GuestRip as u32,
                VmcsNatural::GuestRsp as u32,
                VmcsNatural::GuestRflags as u32,
            ],
        );
        let info = ExitInfo::capture(&vmcs).unwrap();
        assert_eq!(info.reason, Ok(ExitReason::ExternalInterrupt));
        assert_eq!(info.interruption.vector, 0x40);
        assert_eq!((info.rip, info.qualification), (0, 0));
    }

    #[test]
    fn an_instruction_exit_has_its_length_and_rip_and_no_qualification_if_it_reports_none() {
        let mut vmcs = exited(32); // WRMSR
        forbid(
            &mut vmcs,
            &[
                VmcsNaturalRo::ExitQualification as u32,
                Vmcs32Ro::ExitInterruptionInfo as u32,
                VmcsNatural::GuestRsp as u32,
            ],
        );
        let info = ExitInfo::capture(&vmcs).unwrap();
        assert_eq!((info.instruction_len, info.rip), (3, 0x1000));
        let info = ExitInfo::capture(&exited(30)).unwrap(); // I/O: qualification
        assert_eq!(info.qualification, 0x77);
        let info = ExitInfo::capture(&exited(12)).unwrap(); // HLT: RFLAGS
        assert_eq!(info.rflags, 0x202);
    }

    #[test]
    fn an_ept_violation_has_its_addresses_and_rsp_but_no_length() {
        let mut vmcs = exited(48);
        vmcs.set(VmcsNaturalRo::ExitQualification as u32, 1 << 7 | 1);
        vmcs.set(Vmcs64Ro::GuestPhysicalAddress as u32, 0xFEC0_0010);
        vmcs.set(
            VmcsNaturalRo::GuestLinearAddress as u32,
            0xFFFF_8000_FEC0_0010,
        );
        forbid(&mut vmcs, &[Vmcs32Ro::ExitInstructionLength as u32]);
        let info = ExitInfo::capture(&vmcs).unwrap();
        assert_eq!(info.guest_physical, 0xFEC0_0010);
        assert_eq!(info.guest_linear, 0xFFFF_8000_FEC0_0010);
        assert_eq!(
            (info.rip, info.rsp, info.instruction_len),
            (0x1000, 0x8000, 0)
        );
    }

    #[test]
    fn a_host_event_during_delivery_keeps_rip_and_the_interrupted_event() {
        let mut vmcs = exited(52); // preemption timer
        vmcs.set(Vmcs32Ro::IdtVectoringInfo as u32, 0x8000_0B0E); // #PF with error code
        vmcs.set(Vmcs32Ro::IdtVectoringErrorCode as u32, 2);
        let info = ExitInfo::capture(&vmcs).unwrap();
        let event = info.vectoring.unwrap();
        assert_eq!((event.info.vector, event.error_code), (14, 2));
        assert_eq!(info.rip, 0x1000);
    }

    #[test]
    fn a_software_exception_has_its_length_and_an_entry_failure_its_qualification_only() {
        let mut vmcs = exited(0);
        vmcs.set(Vmcs32Ro::ExitInterruptionInfo as u32, 0x8000_0603); // INT3
        assert_eq!(ExitInfo::capture(&vmcs).unwrap().instruction_len, 3);
        let mut vmcs = exited(0x8000_0021);
        forbid(
            &mut vmcs,
            &[
                VmcsNatural::GuestRip as u32,
                Vmcs32::GuestActivityState as u32,
            ],
        );
        let info = ExitInfo::capture(&vmcs).unwrap();
        assert!(info.raw.entry_failure());
        assert_eq!(info.qualification, 0x77);
    }
}
