//! Exceptions and event delivery: which exceptions exit ([`EXCEPTION_BITMAP`]), how an intercepted
//! exception goes back into the guest ([`exception_exit`]), the double-fault rules ([`combine`]),
//! re-injection of an event whose delivery an exit interrupted ([`complete_delivery`], called once
//! from `exits::dispatch` after every handler), and the guard against exceptions that recur forever
//! during their own delivery.
//!
//! Everything goes through [`VmcsAccess`] and [`HostServices`]; it is host-tested with the fake VMCS
//! (`exits/tests.rs` and the tests below).

use super::exits::{stopped, Handled, HostServices, Vcpu};
use super::guest_memory::GuestMemory;
use crate::vmx::exit::{EventType, ExitReason, InterruptionInfo};
use crate::vmx::vmcs::{VmFail, VmcsAccess};
use crate::vmx::vmcs_fields::{Vmcs32, Vmcs32Ro, VmcsNatural};
use alloc::format;

pub const VECTOR_DB: u8 = 1;
pub const VECTOR_NMI: u8 = 2;
pub const VECTOR_UD: u8 = 6;
pub const VECTOR_DF: u8 = 8;
pub const VECTOR_GP: u8 = 13;
pub const VECTOR_PF: u8 = 14;
pub const VECTOR_AC: u8 = 17;

/// The exceptions that exit in both interrupt modes (SDM Vol. 3C 25.6.3, "Exception Bitmap").
///
/// #DB and #AC exit so that a guest cannot hang the CPU with an exception that recurs during its own
/// delivery: a #DB from a data breakpoint on the stack the #DB frame is pushed to (CVE-2015-8104),
/// or an #AC from a misaligned stack at CPL 3 (CVE-2015-5307). Delivery of such an exception
/// raises the same exception again before any instruction retires, so no interrupt window ever opens
/// and the host would never run again; intercepted, each round is a VM exit, which the host counts
/// ([`DELIVERY_LOOP_LIMIT`]). Both are reflected into the guest otherwise, so the guest sees them as
/// on bare metal.
pub const EXCEPTION_BITMAP: u32 = 1 << VECTOR_DB | 1 << VECTOR_AC;

/// How many consecutive exits for the same exception during delivery of that same vector, at the
/// same RIP, end the guest. A real guest's nested #DB or #AC resolves after a few rounds at most.
pub const DELIVERY_LOOP_LIMIT: u32 = 1000;

/// Interruptibility state bits (SDM Vol. 3C 25.4.2, Table 25-3).
const BLOCKING_STI_MOV_SS: u32 = 0b11;
const BLOCKING_NMI: u32 = 1 << 3;
const RFLAGS_IF: u64 = 1 << 9;

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
    const fn needs_instruction_len(event_type: EventType) -> bool {
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

/// Where the guest's IDT gate for `vector` points (the handler's RIP), read through the guest's own
/// IDTR and page tables; `None` if the gate lies beyond the IDT's limit or in no guest memory
/// (64-bit gate layout: SDM Vol. 3A 6.14.1, Figure 6-8).
fn guest_gate_target(
    vmcs: &impl VmcsAccess,
    mem: &GuestMemory<'_>,
    vector: u8,
) -> Result<Option<u64>, VmFail> {
    let base = vmcs.read_natural(VmcsNatural::GuestIdtrBase)?;
    let limit = u64::from(vmcs.read32(Vmcs32::GuestIdtrLimit)?);
    let at = u64::from(vector) * 16;
    if at + 15 > limit {
        return Ok(None);
    }
    let cr3 = vmcs.read_natural(VmcsNatural::GuestCr3)?;
    Ok(mem.read_virt::<16>(cr3, base.wrapping_add(at)).map(|g| {
        u64::from(u16::from_le_bytes([g[0], g[1]]))
            | u64::from(u16::from_le_bytes([g[6], g[7]])) << 16
            | u64::from(u32::from_le_bytes([g[8], g[9], g[10], g[11]])) << 32
    }))
}

/// Guest CPL: the DPL in SS's access rights, which "is always equal to the logical processor's
/// current privilege level" (SDM Vol. 3C 25.4.1, "Guest Register State").
pub fn guest_cpl(vmcs: &impl VmcsAccess) -> Result<u8, VmFail> {
    Ok(((vmcs.read32(Vmcs32::GuestSsAccessRights)? >> 5) & 3) as u8)
}

/// Injects #UD on the next entry; the instruction is not skipped.
pub(super) fn inject_ud(vmcs: &mut impl VmcsAccess) -> Result<Handled, VmFail> {
    Event::exception(VECTOR_UD, None).inject(vmcs)?;
    Ok(Handled::Stay)
}

/// Injects #GP(0) on the next entry; the instruction is not skipped.
pub(super) fn inject_gp(vmcs: &mut impl VmcsAccess) -> Result<Handled, VmFail> {
    Event::exception(VECTOR_GP, Some(0)).inject(vmcs)?;
    Ok(Handled::Stay)
}

/// Called for every exit before its handler: any exit that is not one more round of the same
/// exception (or a host timer exit, which says nothing about the guest's progress) ends a
/// [`DeliveryLoop`] count.
pub fn note_exit(vcpu: &mut Vcpu, reason: ExitReason) {
    if !matches!(
        reason,
        ExitReason::ExceptionOrNmi
            | ExitReason::PreemptionTimer
            | ExitReason::ExternalInterrupt
            | ExitReason::InterruptWindow
    ) {
        vcpu.events.delivery_loop.observe(None);
    }
}

// DR6 bits (SDM Vol. 3A 19.2.3 "Debug Status Register (DR6)") and the exit qualification for debug
// exceptions, which uses the same positions (SDM Vol. 3C 28.2.1, Table 28-1).
const DR6_B0_B3: u64 = 0xF;
const DR6_BLD: u64 = 1 << 11;
const DR6_BD: u64 = 1 << 13;
pub const DR6_BS: u64 = 1 << 14;
const DR6_RTM: u64 = 1 << 16;
/// BLD and RTM read 1 in DR6 unless the #DB was a bus lock or inside an RTM region; the exit
/// qualification reports them the other way round (1 = it was).
const DR6_ACTIVE_LOW: u64 = DR6_BLD | DR6_RTM;

/// DR6 after a #DB whose exit qualification is `qualification`, from the DR6 `dr6` the guest had:
/// what the CPU would have written had the #DB not exited (SDM Vol. 3C 27.1: a #DB that causes a VM
/// exit does not update DR6; 28.2.1 Table 28-1: the qualification holds B0-B3, BLD, BD, BS, RTM).
/// B0-B3 describe this #DB only (the CPU may clear them on a #DB, SDM Vol. 3A 19.2.3); BD and BS are
/// set when reported and never cleared; other bits (BT, reserved) are kept.
pub const fn merge_dr6(dr6: u64, qualification: u64) -> u64 {
    let q = qualification & (DR6_B0_B3 | DR6_BLD | DR6_BD | DR6_BS | DR6_RTM);
    let merged = (dr6 & !DR6_B0_B3) | DR6_ACTIVE_LOW | (q & !DR6_ACTIVE_LOW);
    merged & !(q & DR6_ACTIVE_LOW) & 0xFFFF_FFFF
}

/// An exit for an exception in [`EXCEPTION_BITMAP`], or an NMI (NMI exiting).
///
/// NMIs are the host's: logged once per guest, never given to the guest. Exceptions are reflected
/// into the guest as the CPU would have delivered them (vector, type, error code; DR6 for #DB);
/// [`complete_delivery`] then combines them with an event whose delivery they interrupted.
pub(super) fn exception_exit(
    vmcs: &mut impl VmcsAccess,
    vcpu: &mut Vcpu,
    mem: &GuestMemory<'_>,
    host: &mut impl HostServices,
    qualification: u64,
) -> Result<Handled, VmFail> {
    let info = InterruptionInfo::decode(vmcs.read32_ro(Vmcs32Ro::ExitInterruptionInfo)?);
    let rip = vmcs.read_natural(VmcsNatural::GuestRip)?;
    match info.event_type {
        EventType::Nmi => {
            vcpu.events.nmis += 1;
            if vcpu.events.nmis == 1 {
                log::warn!(
                    "an NMI arrived while a guest ran (rip {rip:#x}); NMIs are the host's and are not given to guests (logged once per guest)"
                );
            }
            return Ok(Handled::Stay);
        }
        EventType::HardwareException
        | EventType::SoftwareException
        | EventType::PrivilegedSoftwareException => {}
        other => {
            return Ok(stopped(format!(
                "exception exit with interruption type {other:?} (vector {}) at rip {rip:#x}",
                info.vector
            )))
        }
    }
    // One more round of a loop: the exception arose while delivering itself (a fault during delivery:
    // IDT-vectoring information names it), or a #DB trap fired right after its own delivery, before
    // the handler's first instruction (a data breakpoint on the frame's IST slot carries no vectoring
    // information: the delivery completed, SDM Vol. 3B 18.3.1.2), so the guest is at its #DB gate.
    let vectoring = Event::vectoring(vmcs)?;
    let during_delivery = vectoring.is_some_and(|first| first.info.vector == info.vector);
    let after_delivery = vectoring.is_none()
        && info.vector == VECTOR_DB
        && guest_gate_target(vmcs, mem, VECTOR_DB)? == Some(rip);
    let again = (during_delivery || after_delivery).then_some((info.vector, rip));
    let rounds = vcpu.events.delivery_loop.observe(again);
    if rounds >= DELIVERY_LOOP_LIMIT {
        return Ok(stopped(format!(
            "event-delivery loop: exception vector {} ({}) raised {rounds} times in a row while delivering vector {} at rip {rip:#x}",
            info.vector,
            crate::arch::exceptions::mnemonic(info.vector),
            info.vector
        )));
    }
    let hardware = info.event_type == EventType::HardwareException;
    let error_code_valid = info.error_code_valid
        || (hardware && crate::arch::exceptions::pushes_error_code(info.vector));
    let error_code = if info.error_code_valid {
        vmcs.read32_ro(Vmcs32Ro::ExitInterruptionErrorCode)?
    } else {
        0
    };
    if hardware && info.vector == VECTOR_DB {
        host.write_dr6(merge_dr6(host.read_dr6(), qualification));
    }
    if info.nmi_unblocking && vectoring.is_none() && info.vector != VECTOR_DF {
        // The faulting instruction was an IRET that had unblocked NMIs; it will run again after
        // the guest's handler, so NMIs stay blocked until then (SDM Vol. 3C 28.2.3).
        let state = vmcs.read32(Vmcs32::GuestInterruptibilityState)?;
        vmcs.write32(Vmcs32::GuestInterruptibilityState, state | BLOCKING_NMI)?;
    }
    let instruction_len = if Event::needs_instruction_len(info.event_type) {
        vmcs.read32_ro(Vmcs32Ro::ExitInstructionLength)?
    } else {
        0
    };
    Event {
        info: InterruptionInfo::inject(info.vector, info.event_type, error_code_valid),
        error_code,
        instruction_len,
    }
    .inject(vmcs)?;
    Ok(Handled::Stay)
}

/// After every handler that lets the guest go on: if the exit interrupted the delivery of an event
/// (IDT-vectoring information valid), that event is delivered again on the next entry (SDM Vol. 3C
/// 28.2.4; injected as in 26.6: same type, vector and error code, and for software events the
/// instruction length). If the handler injected an exception of its own (a reflected #DB or #AC, a
/// #GP), the two are combined by the double-fault rules ([`combine`]). Without a vectoring event, an
/// interrupt or NMI deferred earlier is delivered once the guest can take it.
pub(super) fn complete_delivery(
    vmcs: &mut impl VmcsAccess,
    vcpu: &mut Vcpu,
    reason: ExitReason,
    handled: Handled,
) -> Result<Handled, VmFail> {
    if matches!(handled, Handled::End(_)) {
        return Ok(handled);
    }
    let Some(first) = Event::vectoring(vmcs)? else {
        deliver_deferred(vmcs, vcpu)?;
        return Ok(handled);
    };
    let rip = vmcs.read_natural(VmcsNatural::GuestRip)?;
    if reason == ExitReason::EptViolation {
        // An emulated page (IOAPIC, MSI-X table) touched by the CPU's own event delivery (a
        // stack or IDT placed there): the handler emulated an instruction that never ran.
        return Ok(stopped(format!(
            "EPT violation on an emulated page while delivering vector {} at rip {rip:#x}: event delivery through emulated memory is not supported",
            first.info.vector
        )));
    }
    let Some(second) = Event::pending(vmcs)? else {
        first.inject(vmcs)?;
        return Ok(handled);
    };
    match combine(first.class(), second.class()) {
        Delivery::Serial => {
            // A fault or software event is raised again when its instruction re-executes after
            // the second exception's handler; an interrupt or NMI would be lost, so it waits.
            if matches!(
                first.info.event_type,
                EventType::ExternalInterrupt | EventType::Nmi
            ) {
                vcpu.events.deferred = Some(first);
            }
        }
        Delivery::DoubleFault => Event::exception(VECTOR_DF, Some(0)).inject(vmcs)?,
        Delivery::TripleFault => {
            return Ok(stopped(format!(
                "triple fault: exception vector {} while delivering vector {} at rip {rip:#x} (SDM Vol. 3A Table 6-5: shutdown)",
                second.info.vector, first.info.vector
            )))
        }
    }
    Ok(handled)
}

/// Injects the deferred interrupt or NMI when nothing else is injected and the guest accepts it:
/// RFLAGS.IF = 1 and no STI/MOV-SS blocking for an external interrupt, no NMI or MOV-SS/STI
/// blocking for an NMI (SDM Vol. 3C 27.3.1.5, the checks on event injection).
fn deliver_deferred(vmcs: &mut impl VmcsAccess, vcpu: &mut Vcpu) -> Result<(), VmFail> {
    let Some(event) = vcpu.events.deferred else {
        return Ok(());
    };
    if Event::pending(vmcs)?.is_some() {
        return Ok(());
    }
    let blocking = vmcs.read32(Vmcs32::GuestInterruptibilityState)?;
    let ready = match event.info.event_type {
        EventType::ExternalInterrupt => {
            vmcs.read_natural(VmcsNatural::GuestRflags)? & RFLAGS_IF != 0
                && blocking & BLOCKING_STI_MOV_SS == 0
        }
        EventType::Nmi => blocking & (BLOCKING_STI_MOV_SS | BLOCKING_NMI) == 0,
        _ => true,
    };
    if ready {
        event.inject(vmcs)?;
        vcpu.events.deferred = None;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ExceptionClass::*;

    #[test]
    fn classes_follow_table_6_4() {
        let hw = |v| ExceptionClass::of(EventType::HardwareException, v);
        for v in [1, 2, 3, 4, 5, 6, 7, 9, 16, 17, 18, 19, 20] {
            assert_eq!(hw(v), Benign, "vector {v}");
        }
        for v in [0, 10, 11, 12, 13, 21] {
            assert_eq!(hw(v), Contributory, "vector {v}");
        }
        assert_eq!(hw(14), PageFault);
        assert_eq!(hw(8), DoubleFault);
        // Interrupts and software events are benign whatever their vector.
        for t in [
            EventType::ExternalInterrupt,
            EventType::Nmi,
            EventType::SoftwareInterrupt,
            EventType::SoftwareException,
            EventType::PrivilegedSoftwareException,
        ] {
            for v in [8, 13, 14, 0x20, 0xFF] {
                assert_eq!(ExceptionClass::of(t, v), Benign, "{t:?} {v}");
            }
        }
    }

    /// Every cell of SDM Vol. 3A Table 6-5 (rows: first exception; columns: second).
    #[test]
    fn combine_follows_table_6_5() {
        use Delivery::*;
        let table = [
            (Benign, [Serial, Serial, Serial]),
            (Contributory, [Serial, DoubleFault, Serial]),
            (PageFault, [Serial, DoubleFault, DoubleFault]),
            (
                ExceptionClass::DoubleFault,
                [Serial, TripleFault, TripleFault],
            ),
        ];
        for (first, row) in table {
            for (second, expected) in [Benign, Contributory, PageFault].into_iter().zip(row) {
                assert_eq!(
                    combine(first, second),
                    expected,
                    "{first:?} then {second:?}"
                );
            }
        }
    }

    #[test]
    fn dr6_gets_the_qualification_bits() {
        // DR6's initial value (SDM 19.2.3), then a single-step trap (BS).
        let after_step = merge_dr6(0xFFFF_0FF0, DR6_BS);
        assert_eq!(after_step, 0xFFFF_4FF0);
        // A hit on breakpoint 2 afterwards: B0-B3 describe it alone, BS stays set.
        assert_eq!(merge_dr6(after_step | 0b1, 0b100), 0xFFFF_4FF4);
        // Bus lock (qualification bit 11) and RTM (16) clear their active-low DR6 bits.
        assert_eq!(merge_dr6(0xFFFF_0FF0, DR6_BLD | DR6_RTM), 0xFFFE_07F0);
        // Undefined qualification bits never reach DR6, and the upper half stays 0.
        assert_eq!(merge_dr6(0xFFFF_0FF0, 1 << 40 | 1 << 5), 0xFFFF_0FF0);
    }

    #[test]
    fn delivery_loop_counts_only_consecutive_repeats() {
        let mut guard = DeliveryLoop::default();
        assert_eq!(guard.observe(Some((1, 0x1000))), 1);
        assert_eq!(guard.observe(Some((1, 0x1000))), 2);
        assert_eq!(
            guard.observe(Some((1, 0x2000))),
            1,
            "another RIP starts again"
        );
        assert_eq!(
            guard.observe(Some((17, 0x2000))),
            1,
            "another vector starts again"
        );
        assert_eq!(guard.observe(Some((17, 0x2000))), 2);
        assert_eq!(guard.observe(None), 0);
        assert_eq!(guard.observe(Some((17, 0x2000))), 1);
    }

    #[test]
    fn bitmap_has_db_and_ac() {
        assert_eq!(EXCEPTION_BITMAP, 0x2_0002);
    }
}
