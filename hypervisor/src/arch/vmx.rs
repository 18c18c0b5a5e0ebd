//! VMX instructions and the one assembly block that enters and leaves a guest.
//!
//! Everything else about VT-x (fields, controls, exits, EPT) is typed and host-tested in `crate::vmx`
//! and `crate::caps::vmx`; this file only executes instructions.

use crate::caps::vmx::{feature_control, msr, VmxCaps};
use core::arch::asm;
use x86_64::registers::control::{Cr0, Cr4, Cr4Flags};

/// Why VMX could not be turned on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmxOnError {
    /// IA32_FEATURE_CONTROL is locked with VMX outside SMX off: the firmware disabled VT-x.
    DisabledByFirmware,
    /// VMXON failed (CF or ZF set, SDM Vol. 3C 31.3 "VMXON").
    VmxonFailed,
}

impl core::fmt::Display for VmxOnError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::DisabledByFirmware => write!(
                f,
                "VT-x is disabled by the firmware (IA32_FEATURE_CONTROL locked without VMX): enable \
                 \"Intel Virtualization Technology\" in the firmware setup"
            ),
            Self::VmxonFailed => write!(f, "VMXON failed: another hypervisor may own VMX on this CPU"),
        }
    }
}

/// Turns VMX operation on, using the zeroed 4 KiB frame at `vmxon_region` (SDM Vol. 3C 24.7-24.8),
/// and records the region in the running CPU's per-CPU area (`percpu`), which owns it from then on.
///
/// # Safety
/// `vmxon_region` must be an identity-mapped, 4 KiB-aligned frame owned by the caller for as long as VMX is on;
/// once per CPU.
pub unsafe fn vmxon(caps: &VmxCaps, vmxon_region: u64) -> Result<(), VmxOnError> {
    // SAFETY: we run at CPL 0 (the kernel), so the MSR and CR accesses are allowed; CR0/CR4 only
    // gain the bits VMX operation requires (the fixed bits from `caps`) plus CR4.VMXE, which leaves
    // paging and protection as they are. The caller guarantees `vmxon_region` is an identity-mapped,
    // 4 KiB-aligned frame it owns for as long as VMX is on, so writing its revision word and handing
    // it to VMXON touch no other memory; the asm reads only the local holding its address.
    unsafe {
        // SDM 24.7: VMXON needs IA32_FEATURE_CONTROL locked with "VMX outside SMX"; firmware (OVMF under
        // Bochs) may leave it unlocked, and then we lock it ourselves.
        let value = super::msr::read(msr::IA32_FEATURE_CONTROL);
        if value & feature_control::LOCK == 0 {
            super::msr::write(
                msr::IA32_FEATURE_CONTROL,
                value | feature_control::LOCK | feature_control::VMX_OUTSIDE_SMX,
            );
        } else if value & feature_control::VMX_OUTSIDE_SMX == 0 {
            return Err(VmxOnError::DisabledByFirmware);
        }
        // SDM 24.8 and A.7/A.8: CR0 and CR4 must respect the fixed bits in VMX operation.
        let cr0 = (Cr0::read_raw() | caps.cr0_fixed0) & caps.cr0_fixed1;
        Cr0::write_raw(cr0);
        let cr4 = (Cr4::read_raw() | caps.cr4_fixed0 | Cr4Flags::VIRTUAL_MACHINE_EXTENSIONS.bits())
            & caps.cr4_fixed1;
        Cr4::write(Cr4Flags::from_bits_retain(cr4));
        // SDM 24.11.5: the region starts with the VMCS revision identifier.
        core::ptr::write_volatile(vmxon_region as *mut u32, caps.revision_id);
        let failed: u8;
        asm!("vmxon [{0}]", "setbe {1}", in(reg) &vmxon_region, out(reg_byte) failed, options(nostack));
        if failed != 0 {
            return Err(VmxOnError::VmxonFailed);
        }
    }
    // The region belongs to this CPU for as long as VMX is on (SDM 24.11.5: software must not
    // touch it then); its area keeps it.
    super::percpu::current().set_vmxon_region(vmxon_region);
    Ok(())
}

/// Prepares `vmcs` (a zeroed frame) and makes it current: VMCLEAR then VMPTRLD (SDM 24.11.3).
///
/// # Safety
/// VMX must be on; `vmcs` must be an identity-mapped 4 KiB frame owned by one guest CPU.
pub unsafe fn load_new_vmcs(revision_id: u32, vmcs: u64) -> bool {
    // SAFETY: the caller guarantees VMX is on and `vmcs` is an identity-mapped 4 KiB frame owned by
    // one guest CPU, so the revision write and VMCLEAR/VMPTRLD touch only that frame; the asm
    // reads only the local holding its address.
    unsafe {
        core::ptr::write_volatile(vmcs as *mut u32, revision_id);
        let (clear_failed, load_failed): (u8, u8);
        asm!("vmclear [{0}]", "setbe {1}", in(reg) &vmcs, out(reg_byte) clear_failed, options(nostack));
        asm!("vmptrld [{0}]", "setbe {1}", in(reg) &vmcs, out(reg_byte) load_failed, options(nostack));
        clear_failed == 0 && load_failed == 0
    }
}

/// Makes `vmcs` current again (after another guest ran on this CPU).
///
/// # Safety
/// VMX must be on; `vmcs` must have been prepared with [`load_new_vmcs`].
pub unsafe fn vmptrld(vmcs: u64) -> bool {
    let failed: u8;
    // SAFETY: the caller guarantees VMX is on and `vmcs` was prepared by `load_new_vmcs` (an owned,
    // identity-mapped frame with the revision ID); VMPTRLD only makes it current.
    unsafe {
        asm!("vmptrld [{0}]", "setbe {1}", in(reg) &vmcs, out(reg_byte) failed, options(nostack))
    };
    failed == 0
}

/// Invalidates all EPT-derived translations of one EPTP (INVEPT type 1, single-context; SDM 31.3).
///
/// # Safety
/// VMX must be on.
pub unsafe fn invept_single(eptp: u64) {
    let descriptor: [u64; 2] = [eptp, 0];
    // SAFETY: the caller guarantees VMX is on; INVEPT only drops cached translations and reads the
    // 16-byte descriptor on our stack.
    unsafe { asm!("invept {0}, [{1}]", in(reg) 1u64, in(reg) &descriptor, options(nostack)) };
}

/// The guest's general registers that the VMCS does not hold. The assembly below uses these offsets.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GuestRegisters {
    pub rax: u64,
    pub rbx: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub rbp: u64,
    pub r8: u64,
    pub r9: u64,
    pub r10: u64,
    pub r11: u64,
    pub r12: u64,
    pub r13: u64,
    pub r14: u64,
    pub r15: u64,
}

/// How a VM entry attempt ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryResult {
    /// The guest ran and a VM exit brought us back: read the exit reason.
    Exited,
    /// VMfailInvalid: no current VMCS.
    FailInvalid,
    /// VMfailValid: the VM-instruction error field says why (SDM 31.4).
    FailValid,
}

/// Enters the guest of the current VMCS (VMLAUNCH the first time, VMRESUME after) and returns at its
/// next VM exit, with the guest's registers saved in `regs`.
///
/// # Safety
/// VMX on, a fully initialised current VMCS whose HOST_RIP is [`vm_exit_entry_point`].
pub unsafe fn enter_guest(regs: &mut GuestRegisters, launched: bool) -> EntryResult {
    let status: u64;
    // SAFETY: the caller guarantees VMX is on and the current VMCS is fully initialised with
    // HOST_RIP = `vmx_exit`, so either the entry fails and `vmx_enter` returns, or the next VM exit
    // lands in `vmx_exit`, which returns to this call. Both paths restore the callee-saved
    // registers and the stack (see the assembly); `regs` is a live `&mut` for the whole call and is
    // the only memory the assembly writes; `clobber_abi("C")` covers the other registers.
    unsafe {
        asm!("call {entry}", entry = sym vmx_enter, in("rdi") regs as *mut GuestRegisters, in("rsi") u64::from(launched),
             lateout("rax") status, clobber_abi("C"));
    }
    match status {
        0 => EntryResult::Exited,
        1 => EntryResult::FailInvalid,
        _ => EntryResult::FailValid,
    }
}

/// HOST_RIP of every VMCS.
pub fn vm_exit_entry_point() -> u64 {
    vmx_exit as *const () as u64
}

/// VMCS encoding of HOST_RSP (SDM Vol. 3D B.4.4), written on every entry because the stack depth of the
/// caller can differ between entries.
const HOST_RSP: u64 = 0x6C14;

// vmx_enter(rdi = &mut GuestRegisters, rsi = launched) -> rax = 0 exited / 1 VMfailInvalid / 2 VMfailValid.
// Saves the callee-saved registers and the regs pointer on the host stack, points HOST_RSP there, loads
// the guest's registers and enters. vmx_exit (HOST_RIP) finds the regs pointer at [rsp], stores the
// guest's registers and returns to vmx_enter's caller as if vmx_enter had returned 0.
core::arch::global_asm!(
    r#"
    .section .text.vmx, "ax"
    .global vmx_enter
    vmx_enter:
        push rbp
        push rbx
        push r12
        push r13
        push r14
        push r15
        push rdi
        mov rax, {host_rsp}
        vmwrite rax, rsp
        cmp rsi, 0
        mov rax, [rdi + 0*8]
        mov rbx, [rdi + 1*8]
        mov rcx, [rdi + 2*8]
        mov rdx, [rdi + 3*8]
        mov rsi, [rdi + 4*8]
        mov rbp, [rdi + 6*8]
        mov r8,  [rdi + 7*8]
        mov r9,  [rdi + 8*8]
        mov r10, [rdi + 9*8]
        mov r11, [rdi + 10*8]
        mov r12, [rdi + 11*8]
        mov r13, [rdi + 12*8]
        mov r14, [rdi + 13*8]
        mov r15, [rdi + 14*8]
        mov rdi, [rdi + 5*8]
        jne 2f
        vmlaunch
        jmp 3f
    2:  vmresume
    3:  mov eax, 2
        jnc 4f
        mov eax, 1
    4:  pop rdi
        pop r15
        pop r14
        pop r13
        pop r12
        pop rbx
        pop rbp
        ret

    .global vmx_exit
    vmx_exit:
        push rdi
        mov rdi, [rsp + 8]
        mov [rdi + 0*8], rax
        mov [rdi + 1*8], rbx
        mov [rdi + 2*8], rcx
        mov [rdi + 3*8], rdx
        mov [rdi + 4*8], rsi
        mov [rdi + 6*8], rbp
        mov [rdi + 7*8], r8
        mov [rdi + 8*8], r9
        mov [rdi + 9*8], r10
        mov [rdi + 10*8], r11
        mov [rdi + 11*8], r12
        mov [rdi + 12*8], r13
        mov [rdi + 13*8], r14
        mov [rdi + 14*8], r15
        pop rax
        mov [rdi + 5*8], rax
        pop rdi
        pop r15
        pop r14
        pop r13
        pop r12
        pop rbx
        pop rbp
        xor eax, eax
        ret
    "#,
    host_rsp = const HOST_RSP,
);

extern "C" {
    fn vmx_enter();
    fn vmx_exit();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn register_offsets_match_the_assembly() {
        assert_eq!(core::mem::offset_of!(GuestRegisters, rax), 0);
        assert_eq!(core::mem::offset_of!(GuestRegisters, rdi), 5 * 8);
        assert_eq!(core::mem::offset_of!(GuestRegisters, r15), 14 * 8);
        assert_eq!(core::mem::size_of::<GuestRegisters>(), 15 * 8);
    }
}
