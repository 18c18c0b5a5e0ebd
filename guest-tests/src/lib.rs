//! Runtime for Exitless guest tests: small `no_std` kernels that run as guests under Exitless, or bare
//! metal (started by the Exitless loader without the hypervisor) to give baselines.
//!
//! A test binary is `guest_tests::entry!(main)` with `fn main(env: &Env) -> u32` (the exit code).
//! Results are printed on COM1 in the serial test protocol (`exitless_abi::protocol`), which xtask judges.
//! Under Exitless the guest ends with the `PowerOff` hypercall; bare metal, through the emulators' exit
//! ports.
#![no_std]

pub mod apic;
pub mod console;
pub mod hypervisor;
pub mod idt;
pub mod pci;
pub mod ring3;
pub mod suite;
pub mod workload;

pub use exitless_abi::boot_info::BootInfo;

/// Where the guest runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    BareMetal,
    /// Under Exitless (CPUID hypervisor bit and signature).
    Exitless,
    /// Under some other hypervisor (e.g. a nested KVM running us as its guest).
    OtherHypervisor,
}

/// What a test's `main` gets.
pub struct Env {
    pub mode: Mode,
    pub boot_info: &'static BootInfo,
}

/// Link address of every kernel the loader starts (`hypervisor/abi/kernel.ld`).
const IMAGE_BASE: u64 = 0xffff_ffff_8000_0000;

impl Env {
    /// Physical address of a pointer into this image (upper half) or into identity-mapped memory.
    pub fn virt_to_phys(&self, virt: u64) -> u64 {
        if virt >= IMAGE_BASE {
            self.boot_info.kernel_phys_start + (virt - IMAGE_BASE)
        } else {
            virt
        }
    }
}

/// Defines `_start` (own stack, then `main`) and the panic handler for a guest test binary.
#[macro_export]
macro_rules! entry {
    ($main:path) => {
        #[repr(C, align(16))]
        struct GuestStack([u8; 64 * 1024]);
        static mut GUEST_STACK: GuestStack = GuestStack([0; 64 * 1024]);

        core::arch::global_asm!(
            ".section .text._start, \"ax\"",
            ".global _start",
            "_start:",
            "    lea rsp, [rip + {stack} + {size}]",
            "    xor ebp, ebp",
            "    call {start}",
            "    ud2",
            stack = sym GUEST_STACK,
            size = const 64 * 1024,
            start = sym guest_start,
        );

        extern "C" fn guest_start(boot_info_phys: u64) -> ! {
            // SAFETY: the loader or the hypervisor passes a BootInfo's physical (identity-mapped) address.
            let env = unsafe { $crate::init(boot_info_phys) };
            let code: u32 = $main(&env);
            $crate::finish(env.mode, code)
        }

        // The guests run only on x86_64-unknown-none. A host check of the workspace
        // (`cargo clippy --workspace --all-targets`) unifies features so that std is linked in
        // (bitflags/std, via xtask's dev-dependencies), and std brings its own panic handler.
        #[cfg(not(target_os = "none"))]
        extern crate std;

        #[cfg(target_os = "none")]
        #[panic_handler]
        fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
            $crate::println!("guest PANIC: {}", info);
            $crate::finish($crate::detect_mode(), 3)
        }
    };
}

/// Sets up console and IDT and detects the mode.
///
/// # Safety
/// `boot_info_phys` must be the address of a valid [`BootInfo`]; call once, first thing.
pub unsafe fn init(boot_info_phys: u64) -> Env {
    console::init();
    idt::init();
    // SAFETY: the caller guarantees `boot_info_phys` is the (identity-mapped) address of a valid
    // BootInfo, which the loader or hypervisor leaves in place for the guest's whole run.
    let boot_info = unsafe { &*(boot_info_phys as *const BootInfo) };
    let mode = detect_mode();
    println!("guest: started ({mode:?})");
    Env { mode, boot_info }
}

/// Reads CPUID to tell bare metal from Exitless.
pub fn detect_mode() -> Mode {
    use core::arch::x86_64::__cpuid;
    let leaf1 = __cpuid(1);
    if leaf1.ecx & (1 << 31) == 0 {
        return Mode::BareMetal;
    }
    // Leaves 0x4000_0000+ are defined when the hypervisor bit is set.
    let vendor = __cpuid(exitless_abi::hypercall::CPUID_VENDOR_LEAF);
    let mut signature = [0u8; 12];
    signature[0..4].copy_from_slice(&vendor.ebx.to_le_bytes());
    signature[4..8].copy_from_slice(&vendor.ecx.to_le_bytes());
    signature[8..12].copy_from_slice(&vendor.edx.to_le_bytes());
    if signature == exitless_abi::hypercall::CPUID_SIGNATURE {
        Mode::Exitless
    } else {
        Mode::OtherHypervisor
    }
}

/// Ends the guest: the `PowerOff` hypercall under Exitless, the emulators' exit ports bare metal.
pub fn finish(mode: Mode, code: u32) -> ! {
    if mode == Mode::Exitless {
        // The hypervisor reports how this guest ended; only the machine's own power-off is announced.
        hypervisor::power_off(code);
    }
    let _ = exitless_abi::protocol::write_poweroff(&mut console::Console, code);
    console::drain();
    // SAFETY: bare metal in a test image: QEMU isa-debug-exit (0xF4) and Bochs' shutdown port (0x8900)
    // end the emulation; on a real machine these writes are harmless and we halt below.
    unsafe {
        x86_64::instructions::port::Port::<u32>::new(0xF4).write(code);
        let mut bochs = x86_64::instructions::port::Port::<u8>::new(0x8900);
        for byte in *b"Shutdown" {
            bochs.write(byte);
        }
    }
    loop {
        x86_64::instructions::interrupts::disable();
        x86_64::instructions::hlt();
    }
}
