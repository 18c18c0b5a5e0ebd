//! Device assignment end to end with QEMU's edu device (PCI 1234:11e8, `hw/misc/edu.c`), driven as a
//! bare-metal driver drives it: found on the PCI bus, its MSI programmed, DMA from and to guest RAM,
//! and interrupts raised on demand. Under Exitless (nested QEMU/KVM) the guest sees its virtual bus
//! with only the assigned edu, DMA goes through the guest's IOMMU domain, and in ELI mode neither the
//! interrupts nor their EOIs (nor the MMIO accesses to the BAR, mapped in EPT) may exit. Bare metal
//! (QEMU TCG) the same binary drives the real emulated device, which keeps the checks honest.
#![no_std]
#![no_main]

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use exitless_abi::boot_info::MemoryKind;
use guest_tests::pci::{self, Function};
use guest_tests::{apic, hypervisor, idt, suite::Suite, Env, Mode};

guest_tests::entry!(main);

const EDU_VENDOR: u16 = 0x1234;
const EDU_DEVICE: u16 = 0x11e8;
/// The edu's MSI vector: a guest device vector (0x20 up to the host's reserved range).
const MSI_VECTOR: u8 = 0x61;
/// Interrupts raised through the raise register, one after the other.
const RAISES: u64 = 1000;
/// edu masks DMA addresses to 28 bits (`dma_mask`): buffers must lie below 256 MiB.
const DMA_LIMIT: u64 = 1 << 28;
const PAGE: u64 = 4096;
/// Bounds on waits, in TSC ticks: seconds on QEMU (host TSC rate) and on nested KVM. An edu DMA
/// completes 100 ms (QEMU virtual clock) after its start.
const DMA_TIMEOUT_TSC: u64 = 20_000_000_000;
const INTERRUPT_TIMEOUT_TSC: u64 = 2_000_000_000;
/// How long to keep watching for a duplicate interrupt after the expected one arrived.
const SETTLE_TSC: u64 = 50_000_000;

/// Basic exit reasons (SDM Vol. 3D Appendix C).
const EXIT_WRMSR: usize = 32;
const EXIT_EPT_VIOLATION: usize = 48;
/// Exits one host timer interrupt may cost a guest in ELI mode (its exit, and room for a preemption
/// or a re-entry exit around it).
const EXITS_PER_HOST_TICK: u64 = 3;

/// The edu's registers in BAR0 (QEMU docs/specs/edu.txt).
struct Edu {
    base: u64,
}

impl Edu {
    /// Identification: 0x010000ed (version 1.0, "ed").
    const IDENTIFICATION: u64 = 0x00;
    const INTERRUPT_STATUS: u64 = 0x24;
    /// Writing a value ORs it into the interrupt status and sends the MSI.
    const INTERRUPT_RAISE: u64 = 0x60;
    /// Writing a value clears those bits of the interrupt status.
    const INTERRUPT_ACK: u64 = 0x64;
    const DMA_SOURCE: u64 = 0x80;
    const DMA_DESTINATION: u64 = 0x88;
    const DMA_COUNT: u64 = 0x90;
    const DMA_COMMAND: u64 = 0x98;
    const DMA_START: u64 = 1 << 0;
    /// Direction bit: 1 = from the device's buffer to RAM, 0 = from RAM to the buffer.
    const DMA_TO_RAM: u64 = 1 << 1;
    const DMA_INTERRUPT: u64 = 1 << 2;
    /// The interrupt status bit a finished DMA with [`Self::DMA_INTERRUPT`] raises.
    const STATUS_DMA_DONE: u32 = 0x100;
    /// The device's 4 KiB DMA buffer, in the device's own address space (not in the BAR).
    const BUFFER: u64 = 0x40000;
    /// What one DMA moves: half the buffer. QEMU 7.2's range check wants a transfer's end strictly
    /// inside the buffer (a whole-buffer DMA is refused), and a refused DMA aborts QEMU.
    const DMA_LEN: u64 = 2048;

    fn read32(&self, register: u64) -> u32 {
        // SAFETY: a register of the edu's BAR0 (identity-mapped: bare metal by the loader, under
        // Exitless by the guest layout and EPT). Registers below 0x80 take only 32-bit accesses.
        unsafe { core::ptr::read_volatile((self.base + register) as *const u32) }
    }

    fn write32(&self, register: u64, value: u32) {
        // SAFETY: as in `read32`.
        unsafe { core::ptr::write_volatile((self.base + register) as *mut u32, value) }
    }

    fn read64(&self, register: u64) -> u64 {
        // SAFETY: as in `read32`; the DMA registers (0x80 up) take 64-bit accesses.
        unsafe { core::ptr::read_volatile((self.base + register) as *const u64) }
    }

    fn write64(&self, register: u64, value: u64) {
        // SAFETY: as in `read64`.
        unsafe { core::ptr::write_volatile((self.base + register) as *mut u64, value) }
    }

    /// Runs one DMA and waits (polling) until the device clears its start bit.
    fn dma(&self, source: u64, destination: u64, len: u64, flags: u64) -> Result<(), &'static str> {
        self.write64(Self::DMA_SOURCE, source);
        self.write64(Self::DMA_DESTINATION, destination);
        self.write64(Self::DMA_COUNT, len);
        self.write64(Self::DMA_COMMAND, flags | Self::DMA_START);
        let start = tsc();
        while self.read64(Self::DMA_COMMAND) & Self::DMA_START != 0 {
            if tsc() - start > DMA_TIMEOUT_TSC {
                return Err("the DMA never finished");
            }
            core::hint::spin_loop();
        }
        Ok(())
    }
}

static EDU_BASE: AtomicU64 = AtomicU64::new(0);
/// Interrupts taken on [`MSI_VECTOR`], and the interrupt status bits they saw.
static RECEIVED: AtomicU64 = AtomicU64::new(0);
static STATUS_SEEN: AtomicU32 = AtomicU32::new(0);
static OTHER: AtomicU64 = AtomicU64::new(0);

/// The MSI handler: reads and acknowledges the edu's interrupt status, then EOIs.
fn on_edu(_: u8) {
    let edu = Edu {
        base: EDU_BASE.load(Ordering::Relaxed),
    };
    let status = edu.read32(Edu::INTERRUPT_STATUS);
    edu.write32(Edu::INTERRUPT_ACK, status);
    STATUS_SEEN.fetch_or(status, Ordering::Relaxed);
    RECEIVED.fetch_add(1, Ordering::Relaxed);
    apic::eoi();
}

fn on_other(_: u8) {
    OTHER.fetch_add(1, Ordering::Relaxed);
    apic::eoi();
}

fn reset_counts() {
    RECEIVED.store(0, Ordering::Relaxed);
    STATUS_SEEN.store(0, Ordering::Relaxed);
    OTHER.store(0, Ordering::Relaxed);
}

fn tsc() -> u64 {
    // SAFETY: RDTSC is always available here.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// Spins with interrupts on until `count` interrupts arrived or `timeout` ticks passed; true if they did.
fn wait_for(count: u64, timeout: u64) -> bool {
    let start = tsc();
    while RECEIVED.load(Ordering::Relaxed) < count {
        if tsc() - start > timeout {
            return false;
        }
        core::hint::spin_loop();
    }
    true
}

fn settle() {
    let start = tsc();
    while tsc() - start < SETTLE_TSC {
        core::hint::spin_loop();
    }
}

/// Two pages of usable RAM below [`DMA_LIMIT`] (and above the first MiB) for the DMA buffers.
fn dma_pages(env: &Env) -> Option<u64> {
    // SAFETY: the loader or the hypervisor wrote a valid memory map; it is identity-mapped.
    let regions = unsafe { env.boot_info.memory_regions() };
    regions
        .iter()
        .filter(|r| r.kind == MemoryKind::Usable)
        .find_map(|r| {
            let start = r.start.max(1 << 20).next_multiple_of(PAGE);
            (r.end().min(DMA_LIMIT) >= start + 2 * PAGE).then_some(start)
        })
}

/// The byte at `index` of the test pattern (not periodic within a page).
fn pattern(index: u64) -> u8 {
    (index.wrapping_mul(131) ^ (index >> 8)) as u8 ^ 0xA5
}

fn fill(at: u64, len: u64, byte: impl Fn(u64) -> u8) {
    for i in 0..len {
        // SAFETY: `at..at + len` is usable RAM the guest owns (see `dma_pages`), identity-mapped.
        unsafe { core::ptr::write_volatile((at + i) as *mut u8, byte(i)) }
    }
}

/// The first index where the bytes at `at` differ from `byte`, if any.
fn first_mismatch(at: u64, len: u64, byte: impl Fn(u64) -> u8) -> Option<u64> {
    // SAFETY: as in `fill`; the device wrote these bytes by DMA, so read them volatile.
    (0..len).find(|&i| unsafe { core::ptr::read_volatile((at + i) as *const u8) } != byte(i))
}

/// Programs the function's MSI (PCI 3.0 6.8.1): a compatibility-format message (SDM Vol. 3A 11.11:
/// address 0xFEE in 31:20 and the destination APIC ID in 19:12; data = fixed, edge, `vector`),
/// one vector, then MSI Enable.
fn program_msi(f: Function, cap: u8, apic_id: u32, vector: u8) {
    let control = (f.read(cap) >> 16) as u16;
    let is_64bit = control & (1 << 7) != 0;
    f.write(cap + 4, 0xFEE0_0000 | (apic_id & 0xFF) << 12);
    if is_64bit {
        f.write(cap + 8, 0);
        f.write(cap + 12, u32::from(vector));
    } else {
        f.write(cap + 8, u32::from(vector));
    }
    // Multiple Message Enable (bits 6:4) 0: one vector; bit 0: MSI Enable.
    let enabled = (control & !(0b111 << 4)) | 1;
    f.write(cap, (f.read(cap) & 0xFFFF) | u32::from(enabled) << 16);
}

fn disable_msi(f: Function, cap: u8) {
    let dword = f.read(cap);
    f.write(cap, dword & !(1 << 16));
}

fn main(env: &Env) -> u32 {
    let mut suite = Suite::begin("edu");
    let found = pci::find(EDU_VENDOR, EDU_DEVICE).and_then(|f| {
        let bar = f.memory_bar(0).filter(|&b| b != 0)?;
        let cap = f.capability(pci::CAP_MSI)?;
        Some((f, bar, cap))
    });
    let (Some((f, bar, msi_cap)), Some(buffers)) = (found, dma_pages(env)) else {
        suite.check(
            "edu-found",
            Err("no edu (1234:11e8) with a memory BAR0 and MSI, or no usable RAM below 256 MiB"),
        );
        return suite.end();
    };
    // Memory space and bus master on, INTx off (bit 10): the edu signals through MSI only.
    let command = f.read(pci::COMMAND) & 0xFFFF;
    f.write(
        pci::COMMAND,
        command | pci::COMMAND_MEMORY_SPACE | pci::COMMAND_BUS_MASTER | 1 << 10,
    );
    let edu = Edu { base: bar };
    EDU_BASE.store(bar, Ordering::Relaxed);
    let identification = edu.read32(Edu::IDENTIFICATION);
    guest_tests::println!(
        "guest: edu at {:02x}:{:02x}.{} BAR0 {bar:#x} id {identification:#x} MSI cap {msi_cap:#x}, DMA pages at {buffers:#x}",
        f.bus,
        f.device,
        f.function
    );
    suite.check(
        "edu-found",
        (identification & 0xFF == 0xED)
            .then_some(())
            .ok_or("BAR0 does not read back the edu's identification register"),
    );

    // (a) A pattern goes RAM -> device buffer -> a second RAM page.
    let (source, destination) = (buffers, buffers + PAGE);
    fill(source, Edu::DMA_LEN, pattern);
    fill(destination, PAGE, |_| 0);
    let roundtrip = edu
        .dma(source, Edu::BUFFER, Edu::DMA_LEN, 0)
        .and_then(|()| edu.dma(Edu::BUFFER, destination, Edu::DMA_LEN, Edu::DMA_TO_RAM))
        .and_then(
            |()| match first_mismatch(destination, Edu::DMA_LEN, pattern) {
                None => Ok(()),
                Some(at) => {
                    guest_tests::println!("guest: DMA copy differs at byte {at:#x}");
                    Err("the DMA copy differs from the pattern")
                }
            },
        )
        .and_then(|()| {
            first_mismatch(destination + Edu::DMA_LEN, PAGE - Edu::DMA_LEN, |_| 0)
                .map_or(Ok(()), |_| Err("the DMA wrote past its count"))
        });
    suite.check("dma-roundtrip", roundtrip);

    // Interrupts from here on: the edu's MSI on its vector, anything else counted as wrong.
    let apic_id = apic::enable();
    apic::mask_legacy_pics();
    for vector in 0x20..=0xFEu8 {
        idt::set_handler(vector, on_other);
    }
    idt::set_handler(MSI_VECTOR, on_edu);
    program_msi(f, msi_cap, apic_id, MSI_VECTOR);

    // (b) A DMA with its completion interrupt: exactly one MSI, with the DMA-done status bit.
    reset_counts();
    x86_64::instructions::interrupts::enable();
    let dma = edu.dma(
        Edu::BUFFER,
        destination,
        Edu::DMA_LEN,
        Edu::DMA_TO_RAM | Edu::DMA_INTERRUPT,
    );
    let arrived = wait_for(1, INTERRUPT_TIMEOUT_TSC);
    settle();
    x86_64::instructions::interrupts::disable();
    let (received, seen, other) = (
        RECEIVED.load(Ordering::Relaxed),
        STATUS_SEEN.load(Ordering::Relaxed),
        OTHER.load(Ordering::Relaxed),
    );
    guest_tests::println!(
        "guest: DMA-done: {received} interrupt(s), status {seen:#x}, {other} on other vectors"
    );
    suite.check(
        "dma-done-msi-once",
        dma.and(
            match (arrived, received, seen & Edu::STATUS_DMA_DONE, other) {
                (false, ..) => Err("no MSI after the DMA finished"),
                (true, 1, Edu::STATUS_DMA_DONE, 0) => Ok(()),
                (true, 1, _, 0) => Err("the MSI came without the DMA-done status bit"),
                (true, 1, _, _) => Err("interrupts arrived on other vectors"),
                _ => Err("the DMA-done MSI arrived more than once"),
            },
        ),
    );

    // (c) RAISES interrupts through the raise register, each awaited before the next; (d) the exits
    // they took under Exitless.
    reset_counts();
    let virtualized = env.mode == Mode::Exitless;
    let ticks_before = virtualized.then(hypervisor::host_timer_ticks);
    let before = virtualized.then(|| hypervisor::exit_counters(env));
    let start = tsc();
    x86_64::instructions::interrupts::enable();
    let mut in_time = true;
    for raised in 1..=RAISES {
        edu.write32(Edu::INTERRUPT_RAISE, 1);
        if !wait_for(raised, INTERRUPT_TIMEOUT_TSC) {
            in_time = false;
            break;
        }
    }
    let cycles = tsc() - start;
    settle();
    x86_64::instructions::interrupts::disable();
    let after = virtualized.then(|| hypervisor::exit_counters(env));
    let host_ticks = ticks_before.map_or(0, |t| hypervisor::host_timer_ticks() - t);
    let (received, seen, other) = (
        RECEIVED.load(Ordering::Relaxed),
        STATUS_SEEN.load(Ordering::Relaxed),
        OTHER.load(Ordering::Relaxed),
    );
    guest_tests::println!(
        "guest: raised {RAISES}: {received} interrupt(s) in {cycles} TSC ticks, status {seen:#x}, {other} on other vectors"
    );
    suite.check(
        "raise-msi-each-once",
        match (in_time, received == RAISES, seen == 1, other == 0) {
            (false, ..) => Err("a raised interrupt did not arrive in time"),
            (true, true, true, true) => Ok(()),
            (true, false, ..) => Err("more interrupts arrived than were raised"),
            (true, true, false, _) => {
                Err("the interrupt status held other bits than the raised one")
            }
            (true, true, true, false) => Err("interrupts arrived on other vectors"),
        },
    );

    match (before, after) {
        (Some(before), Some(after)) if hypervisor::eli_mode() => {
            let exits = |reason: usize| after[reason] - before[reason];
            let total: u64 = (0..after.len()).map(exits).sum();
            guest_tests::println!(
                "guest: exits over {RAISES} raised interrupts: {total} in all, wrmsr {}, EPT violation {}; host timer ticks {host_ticks}",
                exits(EXIT_WRMSR),
                exits(EXIT_EPT_VIOLATION)
            );
            // Exits the host's timer takes (a few per tick: under nested KVM each raise is a trip
            // to QEMU, so the loop spans many ticks) and the counter reads; none per interrupt, EOI
            // or BAR access, which would make it at least RAISES.
            let allowed = RAISES / 10 + EXITS_PER_HOST_TICK * host_ticks;
            suite.check(
                "eli-no-exits",
                match (
                    total <= allowed,
                    exits(EXIT_WRMSR),
                    exits(EXIT_EPT_VIOLATION),
                ) {
                    (_, 1.., _) => Err("EOIs (or other MSR writes) exited"),
                    (_, _, 1..) => Err("accesses to the edu's BAR exited"),
                    (false, ..) => Err("more exits than the host timer explains"),
                    (true, 0, 0) => Ok(()),
                },
            );
        }
        (Some(_), Some(_)) => suite.skip(
            "eli-no-exits",
            "the guest runs in baseline mode: its interrupts are injected",
        ),
        _ => suite.skip("eli-no-exits", "not under Exitless: no VM exits to count"),
    }

    disable_msi(f, msi_cap);
    f.write(pci::COMMAND, command);
    suite.end()
}
