//! Interrupt arrival counting for the host-side self-tests: proves that a device interrupt
//! arrived, and on which vector, without any driver behind it.
//!
//! [`IrqProbe::install`] loads a copy of the current IDT (the exception handlers stay) whose
//! vectors 32..=255 all point to one of 224 identical 16-byte stubs. Each stub `call`s a common
//! handler, which recovers the vector from the return address (stub index = (return address -
//! first stub) / 16), counts it, writes the xAPIC EOI register (SDM Vol. 3A 11.8.5) and returns
//! with `iretq`. The LAPIC's local interrupt sources (LINT0/LINT1 virtual wire, timer, error,
//! performance, thermal: SDM Vol. 3A 11.5.1) and both 8259 PICs are masked while the probe is
//! installed, so only message-signalled interrupts are counted. Dropping the probe restores the
//! old IDT, LVT entries and PIC masks. Interrupts are enabled only inside [`IrqProbe::wait`].

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use x86_64::instructions::tables::{lidt, sidt};
use x86_64::structures::idt::InterruptDescriptorTable;
use x86_64::structures::DescriptorTablePointer;
use x86_64::VirtAddr;

/// First vector a device interrupt may use (0..31 are exceptions, SDM Vol. 3A 6.2).
pub const FIRST_VECTOR: u8 = 32;
const STUBS: usize = 256 - FIRST_VECTOR as usize;
/// Bytes per stub: `call rel32` (5 bytes) padded to 16.
const STUB_SIZE: usize = 16;

/// xAPIC register offsets (SDM Vol. 3A Table 11-1).
const APIC_GLOBAL_ENABLE: u64 = 1 << 11;
const APIC_X2APIC_MODE: u64 = 1 << 10;
const TPR: u64 = 0x80;
const EOI: u64 = 0xB0;
const SVR: u64 = 0xF0;
/// LVT timer, thermal, performance, LINT0, LINT1, error.
const LVT: [u64; 6] = [0x320, 0x330, 0x340, 0x350, 0x360, 0x370];
const LVT_MASKED: u32 = 1 << 16;
const SVR_APIC_ENABLED: u32 = 1 << 8;
/// 8259 interrupt mask registers (master, slave).
const PIC_MASK_PORTS: [u16; 2] = [0x21, 0xA1];

static COUNTS: [AtomicU32; STUBS] = [const { AtomicU32::new(0) }; STUBS];
static EOI_ADDRESS: AtomicU64 = AtomicU64::new(0);

core::arch::global_asm!(
    r#"
    .section .text.irq_probe, "ax"
    .balign 16
    irq_probe_stubs:
    .rept {stubs}
    .balign 16
        call irq_probe_common
    .endr

    irq_probe_common:
        push rax
        push rdx
        mov rax, [rsp + 16]
        lea rdx, [rip + irq_probe_stubs]
        sub rax, rdx
        shr rax, 4
        lea rdx, [rip + {counts}]
        lock inc dword ptr [rdx + rax * 4]
        mov rdx, [rip + {eoi}]
        mov dword ptr [rdx], 0
        pop rdx
        pop rax
        add rsp, 8
        iretq

    .section .rodata.irq_probe, "a"
    .balign 8
    .global irq_probe_first_stub
    irq_probe_first_stub:
    .quad irq_probe_stubs
    "#,
    stubs = const STUBS,
    counts = sym COUNTS,
    eoi = sym EOI_ADDRESS,
);

extern "C" {
    static irq_probe_first_stub: u64;
}

/// An installed probe; dropping it uninstalls it.
pub struct IrqProbe {
    previous_idt: DescriptorTablePointer,
    lapic: u64,
    saved_lvt: [u32; 6],
    saved_tpr: u32,
    saved_svr: u32,
    saved_pic: [u8; 2],
}

impl IrqProbe {
    /// Installs the probe with interrupts disabled; `None` when the local APIC is disabled or
    /// in x2APIC mode (the probe drives the xAPIC register page).
    ///
    /// # Safety
    /// The xAPIC register page (IA32_APIC_BASE) is identity-mapped uncached; the current IDT is
    /// a full 256-entry table; nothing else changes the IDT, the LAPIC LVT or the PIC masks
    /// until the probe is dropped.
    pub unsafe fn install() -> Option<IrqProbe> {
        // SAFETY: IA32_APIC_BASE exists on every CPU with a local APIC (SDM Vol. 3A 11.4.4).
        let apic_base = unsafe { super::msr::read(super::msr::APIC_BASE) };
        if apic_base & APIC_GLOBAL_ENABLE == 0 || apic_base & APIC_X2APIC_MODE != 0 {
            return None;
        }
        let lapic_base = apic_base & 0x000F_FFFF_FFFF_F000;
        x86_64::instructions::interrupts::disable();
        let previous_idt = sidt();
        assert_eq!(
            previous_idt.limit as usize,
            core::mem::size_of::<InterruptDescriptorTable>() - 1,
            "the current IDT must have all 256 entries"
        );
        // SAFETY: the IDT register points at a live, full table (checked above).
        let mut idt = unsafe { &*previous_idt.base.as_ptr::<InterruptDescriptorTable>() }.clone();
        // SAFETY: the symbol is emitted by the global_asm above and never written.
        let first = unsafe { irq_probe_first_stub };
        for (i, vector) in (FIRST_VECTOR..=255).enumerate() {
            // SAFETY: each stub ends in the common handler, which returns with iretq.
            unsafe {
                idt[vector].set_handler_addr(VirtAddr::new(first + (i * STUB_SIZE) as u64));
            }
        }
        // One 4 KiB table per install, alive for the rest of the run: a self-test installs a
        // handful at most.
        let idt: &'static InterruptDescriptorTable =
            alloc::boxed::Box::leak(alloc::boxed::Box::new(idt));
        EOI_ADDRESS.store(lapic_base + EOI, Ordering::SeqCst);
        reset();
        let mut probe = IrqProbe {
            previous_idt,
            lapic: lapic_base,
            saved_lvt: [0; 6],
            saved_tpr: 0,
            saved_svr: 0,
            saved_pic: [0; 2],
        };
        for (slot, port) in probe.saved_pic.iter_mut().zip(PIC_MASK_PORTS) {
            // SAFETY: the PIC mask registers; masking every line only stops legacy interrupts.
            unsafe {
                *slot = super::port::read::<u8>(port);
                super::port::write::<u8>(port, 0xFF);
            }
        }
        for (i, reg) in LVT.into_iter().enumerate() {
            probe.saved_lvt[i] = probe.read(reg);
            probe.write(reg, probe.saved_lvt[i] | LVT_MASKED);
        }
        probe.saved_tpr = probe.read(TPR);
        probe.saved_svr = probe.read(SVR);
        probe.write(TPR, 0);
        probe.write(SVR, probe.saved_svr | SVR_APIC_ENABLED);
        idt.load();
        Some(probe)
    }

    /// Enables interrupts until `done` holds or `spins` polls have passed, then disables
    /// them again; returns whether `done` held.
    pub fn wait(&self, spins: u64, mut done: impl FnMut() -> bool) -> bool {
        x86_64::instructions::interrupts::enable();
        let mut held = false;
        for _ in 0..spins {
            if done() {
                held = true;
                break;
            }
            core::hint::spin_loop();
        }
        x86_64::instructions::interrupts::disable();
        held || done()
    }

    /// Interrupts counted on `vector` since the last [`reset`].
    pub fn count(&self, vector: u8) -> u32 {
        count(vector)
    }

    /// `(vector, count)` for every vector that counted an interrupt.
    pub fn arrivals(&self) -> impl Iterator<Item = (u8, u32)> {
        (FIRST_VECTOR..=255)
            .map(|v| (v, count(v)))
            .filter(|&(_, n)| n != 0)
    }

    pub fn reset(&self) {
        reset();
    }

    fn read(&self, reg: u64) -> u32 {
        // SAFETY: `install`'s contract: the xAPIC page is mapped at `lapic`.
        unsafe { core::ptr::read_volatile((self.lapic + reg) as *const u32) }
    }

    fn write(&self, reg: u64, value: u32) {
        // SAFETY: as in `read`.
        unsafe { core::ptr::write_volatile((self.lapic + reg) as *mut u32, value) }
    }
}

impl Drop for IrqProbe {
    fn drop(&mut self) {
        x86_64::instructions::interrupts::disable();
        // SAFETY: the table the probe replaced is still alive (it was the kernel's own).
        unsafe { lidt(&self.previous_idt) };
        for (value, reg) in self.saved_lvt.into_iter().zip(LVT) {
            self.write(reg, value);
        }
        self.write(TPR, self.saved_tpr);
        self.write(SVR, self.saved_svr);
        for (value, port) in self.saved_pic.into_iter().zip(PIC_MASK_PORTS) {
            // SAFETY: restores the masks read in `install`.
            unsafe { super::port::write::<u8>(port, value) };
        }
    }
}

fn count(vector: u8) -> u32 {
    match (vector as usize).checked_sub(FIRST_VECTOR as usize) {
        Some(i) => COUNTS[i].load(Ordering::SeqCst),
        None => 0,
    }
}

fn reset() {
    for c in &COUNTS {
        c.store(0, Ordering::SeqCst);
    }
}

// The common handler's `shr rax, 4` divides by the stub size, and a `call rel32` (5 bytes)
// return address must stay inside its own stub.
const _: () = assert!(STUB_SIZE == 1 << 4 && 5 < STUB_SIZE);
const _: () = assert!(FIRST_VECTOR as usize + STUBS == 256);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vectors_are_counted_by_stub_index() {
        reset();
        COUNTS[VECTOR_0X61_INDEX].fetch_add(1, Ordering::SeqCst);
        assert_eq!(count(0x61), 1);
        assert_eq!(count(0x60), 0);
        // Exception vectors have no stub and never count.
        assert_eq!(count(31), 0);
        reset();
        assert_eq!(count(0x61), 0);
    }

    const VECTOR_0X61_INDEX: usize = 0x61 - FIRST_VECTOR as usize;
}
