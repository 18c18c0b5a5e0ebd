//! A guest's events as VMX sees them: exception vectors and classes, the double-fault rules (SDM
//! Vol. 3A 6.15), an event to inject or whose delivery an exit interrupted, and the per-vCPU event
//! state the handlers in `events` keep. Pure; host-tested in `events` and `exits::tests`.

use crate::vmx::exit::{EventType, InterruptionInfo};
use crate::vmx::vmcs::{VmFail, VmcsAccess};
use crate::vmx::vmcs_fields::{Vmcs32, Vmcs32Ro};

pub const VECTOR_DB: u8 = 1;
pub const VECTOR_NMI: u8 = 2;
pub const VECTOR_UD: u8 = 6;
pub const VECTOR_DF: u8 = 8;
pub const VECTOR_GP: u8 = 13;
pub const VECTOR_PF: u8 = 14;
pub const VECTOR_AC: u8 = 17;

/// Exception classes for the double-fault rules (SDM Vol. 3A 6.15, "Interrupt 8—Double Fault
/// Exception (#DF)", Table 6-4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExceptionClass {
    /// #DB, NMI, #BP, #OF, #BR, #UD, #NM, coprocessor segment overrun, #MF, #AC, #MC, #XM, #VE, and
    /// every external interrupt and software interrupt (INT n, INT3, INTO, INT1).
    Benign,
    /// #DE, #TS, #NP, #SS, #GP, #CP.
    Contributory,
    PageFault,
    DoubleFault,
}

impl ExceptionClass {
    /// The class of an event of `event_type` with `vector`: only hardware exceptions are classified
    /// by vector; interrupts and software-generated events are benign (Table 6-4's last rows).
    pub const fn of(event_type: EventType, vector: u8) -> Self {
        match event_type {
            EventType::HardwareException => match vector {
                0 | 10 | 11 | 12 | 13 | 21 => ExceptionClass::Contributory,
                VECTOR_PF => ExceptionClass::PageFault,
                VECTOR_DF => ExceptionClass::DoubleFault,
                _ => ExceptionClass::Benign,
            },
            _ => ExceptionClass::Benign,
        }
    }
}

/// What the CPU does when a second exception arises while it delivers a first (Table 6-5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// Deliver the second; the first is handled after it (re-raised by re-executing the
    /// instruction, or kept pending).
    Serial,
    /// Deliver #DF with error code 0 instead.
    DoubleFault,
    /// Shutdown: the guest is stopped.
    TripleFault,
}

/// SDM Vol. 3A Table 6-5, "Conditions for Generating a Double Fault", with the row for a first #DF
/// (a contributory exception or page fault while delivering #DF is a shutdown).
pub const fn combine(first: ExceptionClass, second: ExceptionClass) -> Delivery {
    use ExceptionClass::*;
    match (first, second) {
        (_, Benign) | (Benign, _) => Delivery::Serial,
        (Contributory, PageFault) => Delivery::Serial,
        (Contributory, Contributory) | (PageFault, Contributory) | (PageFault, PageFault) => {
            Delivery::DoubleFault
        }
        (DoubleFault, Contributory | PageFault) => Delivery::TripleFault,
        // A #DF raised while delivering something is the CPU's own combination; it cannot be a
        // "second" exception reported by an exit here. Treat it as contributory would be treated.
        (Contributory | PageFault, DoubleFault) => Delivery::DoubleFault,
        (DoubleFault, DoubleFault) => Delivery::TripleFault,
    }
}

/// An event as VM entry injects it (SDM Vol. 3C 25.8.3): interruption information, exception error
/// code and instruction length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    pub info: InterruptionInfo,
    pub error_code: u32,
    /// For software interrupts and software/privileged software exceptions only: VM entry pushes
    /// RIP + this length as the return address (SDM Vol. 3C 26.6.1.3; 1 to 15 is required).
    pub instruction_len: u32,
}

impl Event {
    /// Hardware exception `vector`, with `error_code` when it pushes one.
    pub const fn exception(vector: u8, error_code: Option<u32>) -> Self {
        let (valid, code) = match error_code {
            Some(c) => (true, c),
            None => (false, 0),
        };
        Event {
            info: InterruptionInfo::hardware_exception(vector, valid),
            error_code: code,
            instruction_len: 0,
        }
    }

    pub const fn class(&self) -> ExceptionClass {
        ExceptionClass::of(self.info.event_type, self.info.vector)
    }

    /// Events whose delivery pushes the address of the next instruction (SDM Vol. 3C 26.6.1.3).
    pub const fn needs_instruction_len(event_type: EventType) -> bool {
        matches!(
            event_type,
            EventType::SoftwareInterrupt
                | EventType::PrivilegedSoftwareException
                | EventType::SoftwareException
        )
    }

    /// Writes the event for the next VM entry.
    pub fn inject(&self, vmcs: &mut impl VmcsAccess) -> Result<(), VmFail> {
        let info = InterruptionInfo::inject(
            self.info.vector,
            self.info.event_type,
            self.info.error_code_valid,
        );
        vmcs.write32(Vmcs32::EntryInterruptionInfo, info.encode())?;
        if info.error_code_valid {
            vmcs.write32(Vmcs32::EntryExceptionErrorCode, self.error_code)?;
        }
        if Self::needs_instruction_len(info.event_type) {
            vmcs.write32(Vmcs32::EntryInstructionLength, self.instruction_len)?;
        }
        Ok(())
    }

    /// The event a handler wrote for the next entry, if any (every VM exit clears its valid bit, SDM
    /// Vol. 3C 28.2, "Recording VM-Exit Information and Updating VM-Entry Control Fields").
    pub fn pending(vmcs: &impl VmcsAccess) -> Result<Option<Self>, VmFail> {
        let Some(info) =
            InterruptionInfo::decode_valid(vmcs.read32(Vmcs32::EntryInterruptionInfo)?)
        else {
            return Ok(None);
        };
        Ok(Some(Event {
            info,
            error_code: vmcs.read32(Vmcs32::EntryExceptionErrorCode)?,
            instruction_len: vmcs.read32(Vmcs32::EntryInstructionLength)?,
        }))
    }

    /// The event whose delivery this exit interrupted (SDM Vol. 3C 28.2.4, "Information for VM
    /// Exits During Event Delivery"): IDT-vectoring information and error code, and for software
    /// events the exit instruction length, which is then that of the INT n/INT3/INTO/INT1 (28.2.5).
    pub fn vectoring(vmcs: &impl VmcsAccess) -> Result<Option<Self>, VmFail> {
        let Some(info) =
            InterruptionInfo::decode_valid(vmcs.read32_ro(Vmcs32Ro::IdtVectoringInfo)?)
        else {
            return Ok(None);
        };
        let error_code = if info.error_code_valid {
            vmcs.read32_ro(Vmcs32Ro::IdtVectoringErrorCode)?
        } else {
            0
        };
        let instruction_len = if Self::needs_instruction_len(info.event_type) {
            vmcs.read32_ro(Vmcs32Ro::ExitInstructionLength)?
        } else {
            0
        };
        Ok(Some(Event {
            // Bit 12 is undefined in IDT-vectoring information and must be 0 on entry.
            info: InterruptionInfo::inject(info.vector, info.event_type, info.error_code_valid),
            error_code,
            instruction_len,
        }))
    }
}

/// Per-guest event state the exit handlers keep.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EventState {
    /// Host NMIs that arrived while this guest ran (NMI exiting: they are the host's).
    pub nmis: u64,
    pub delivery_loop: DeliveryLoop,
    /// An external interrupt or NMI whose delivery was interrupted by an exception that went to the
    /// guest first ("handled serially"): it is delivered as soon as the guest can take it.
    pub deferred: Option<Event>,
}

/// Counts consecutive exits for an exception raised while delivering that same vector at one RIP.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeliveryLoop {
    last: Option<(u8, u64)>,
    count: u32,
}

impl DeliveryLoop {
    /// Records one exit: `Some((vector, rip))` for an exception during delivery of `vector` at
    /// `rip`, `None` for anything else. Returns how many such exits came in a row.
    pub fn observe(&mut self, key: Option<(u8, u64)>) -> u32 {
        match key {
            Some(k) if self.last == Some(k) => self.count = self.count.saturating_add(1),
            Some(k) => (self.last, self.count) = (Some(k), 1),
            None => *self = Self::default(),
        }
        self.count
    }
}
