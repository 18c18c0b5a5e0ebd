//! Exceptions and event delivery: which exceptions exit ([`EXCEPTION_BITMAP`]), how an intercepted
//! exception goes back into the guest ([`exception_exit`]), the double-fault rules applied to it
//! (`guest_events::combine`),
//! re-injection of an event whose delivery an exit interrupted ([`complete_delivery`], called once
//! from `exits::dispatch` after every handler), and the guard against exceptions that recur forever
//! during their own delivery.
//!
//! Everything goes through [`VmcsAccess`] and [`HostServices`]; it is host-tested with the fake VMCS
//! (`exits/tests.rs` and the tests below).

use super::guest_events::{
    combine, Delivery, Event, VECTOR_AC, VECTOR_DB, VECTOR_DF, VECTOR_GP, VECTOR_UD,
};
use super::guest_memory::GuestMemory;
use super::vcpu::{stopped, Handled, HostServices, Vcpu};
use crate::vmx::exit::{EventType, ExitReason, InterruptionInfo};
use crate::vmx::vmcs::{VmFail, VmcsAccess};
use crate::vmx::vmcs_fields::{Vmcs32, Vmcs32Ro, VmcsNatural};
use alloc::format;

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
    use super::super::guest_events::{DeliveryLoop, ExceptionClass};
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
