//! What CPUID tells a guest: an allow-list. A guest sees the features Exitless virtualizes or that run
//! safely on the real CPU without exits, everything else reads 0, and the leaves describing time and
//! topology are Exitless's own (the measured TSC rate, the vCPU's x2APIC ID). One pure function,
//! [`guest_cpuid`], of the leaf, the host's answer for it and a small [`CpuidContext`]; bit positions
//! are SDM Vol. 2A, CPUID, Tables 3-8 to 3-10 and the leaf descriptions.
//!
//! Linux 6.1 is the guest this is checked against: every feature shown must agree with what the MSRs
//! (`exits::rdmsr`), the virtual x2APIC (`virq::x2apic`) and the VMCS controls really do.

use exitless_abi::hypercall::{CPUID_SIGNATURE, CPUID_VENDOR_LEAF};

/// The highest basic leaf a guest sees. Leaves up to here are described (most as 0); 0x15 and 0x16
/// must be reachable, or Linux's `native_calibrate_tsc` (arch/x86/kernel/tsc.c, needs
/// `cpuid_level >= 0x15`) falls back to calibrating against a PIT the guest may not have. Leaf 0x1F
/// stays out of reach, so Linux reads the topology from 0xB (`detect_extended_topology`).
pub const MAX_BASIC_LEAF: u32 = 0x16;
/// The highest extended leaf a guest sees (address sizes).
const MAX_EXTENDED_LEAF: u32 = 0x8000_0008;

/// KVM's signature leaf. Linux 6.1 keeps x2APIC without interrupt remapping only if the hypervisor
/// it detected says x2APIC is available (arch/x86/kernel/apic/apic.c `try_to_enable_x2apic`, through
/// `x86_init.hyper.x2apic_available`); "ExitlessHV" is unknown to it, and its KVM entry
/// (arch/x86/kernel/kvm.c `x86_hyper_kvm`) answers with `kvm_para_available()`, true once
/// `kvm_cpuid_base()` finds "KVMKVMKVM\0\0\0". That search (`hypervisor_cpuid_base`,
/// arch/x86/include/asm/processor.h) tries 0x40000000..0x40010000 in steps of 0x100, so KVM's
/// signature can sit at 0x40000100 while Exitless's stays at 0x40000000 for its own guests.
pub const KVM_SIGNATURE_LEAF: u32 = 0x4000_0100;
/// KVM_CPUID_FEATURES at that base: all 0, KVM with no paravirtual features (no kvmclock, no PV
/// EOI, no async page faults), so Linux never touches an MSR_KVM_* or makes a KVM hypercall.
const KVM_FEATURES_LEAF: u32 = KVM_SIGNATURE_LEAF + 1;
const KVM_SIGNATURE: [u8; 12] = *b"KVMKVMKVM\0\0\0";

// Leaf 1 ECX.
const L1C_SSE3: u32 = 1 << 0;
const L1C_PCLMULQDQ: u32 = 1 << 1;
pub const LEAF1_ECX_VMX: u32 = 1 << 5;
const L1C_SSSE3: u32 = 1 << 9;
const L1C_FMA: u32 = 1 << 12;
const L1C_CX16: u32 = 1 << 13;
/// PCID: with EPT and VPID the guest's PCIDs and INVPCID (enabled in `controls`) act on its own
/// translations only.
const L1C_PCID: u32 = 1 << 17;
const L1C_SSE41: u32 = 1 << 19;
const L1C_SSE42: u32 = 1 << 20;
const L1C_X2APIC: u32 = 1 << 21;
const L1C_MOVBE: u32 = 1 << 22;
const L1C_POPCNT: u32 = 1 << 23;
/// The virtual x2APIC implements TSC-deadline mode (IA32_TSC_DEADLINE, `exits::rdmsr`).
const L1C_TSC_DEADLINE: u32 = 1 << 24;
const L1C_AES: u32 = 1 << 25;
const L1C_XSAVE: u32 = 1 << 26;
const L1C_AVX: u32 = 1 << 28;
const L1C_F16C: u32 = 1 << 29;
const L1C_RDRAND: u32 = 1 << 30;
pub const LEAF1_ECX_HYPERVISOR: u32 = 1 << 31;
/// Passed from the host when present. Not shown: DTES64, MONITOR (MWAIT does not exit, `controls`,
/// and would idle the physical CPU; Linux then idles with HLT, which exits), DS-CPL, VMX, SMX, EST,
/// TM2, CNXT-ID, SDBG, xTPR, PDCM (no IA32_PERF_CAPABILITIES), DCA. OSXSAVE follows the guest's
/// CR4 (`exits::cpuid`).
const LEAF1_ECX_PASSED: u32 = L1C_SSE3
    | L1C_PCLMULQDQ
    | L1C_SSSE3
    | L1C_FMA
    | L1C_CX16
    | L1C_PCID
    | L1C_SSE41
    | L1C_SSE42
    | L1C_MOVBE
    | L1C_POPCNT
    | L1C_AES
    | L1C_XSAVE
    | L1C_AVX
    | L1C_F16C
    | L1C_RDRAND;
/// What needs the AVX state in XCR0 (SDM Vol. 1 14.3): hidden with it.
const LEAF1_ECX_NEEDS_AVX: u32 = L1C_FMA | L1C_AVX | L1C_F16C;

// Leaf 1 EDX.
/// HTT: CPUID.1:EBX[23:16] is valid (more than one logical processor per package).
const L1D_HTT: u32 = 1 << 28;
/// FPU, VME, DE, PSE, TSC, MSR, PAE, MCE (0), CX8, APIC (9), SEP (11), PGE (13), MCA (14), CMOV,
/// PAT (16), PSE-36, CLFSH (19), MMX (23), FXSR, SSE, SSE2, SS (27). MCE/MCA stay with no banks
/// (IA32_MCG_CAP reads 0, `exits::rdmsr`). Not shown: MTRR (12: no MTRR MSRs are emulated; Linux
/// 6.1 then keeps the power-on PAT, which EPT's memory types make harmless), PSN, DS, ACPI (thermal
/// MSRs), TM, PBE.
const LEAF1_EDX_PASSED: u32 = 0x3FF | 1 << 11 | 0xF << 13 | 1 << 17 | 1 << 19 | 0x1F << 23;

// Leaf 6 EAX: ARAT, the APIC timer always runs (the virtual one counts guest TSC, never stops).
// Nothing else: no turbo, HWP or thermal MSRs, and no APERF/MPERF (ECX bit 0), which Linux would
// read twice per tick (shared/linux-guest.md).
const LEAF6_EAX_ARAT: u32 = 1 << 2;

// Leaf 7 subleaf 0 EBX.
const L7B_TSC_ADJUST: u32 = 1 << 1;
const L7B_AVX2: u32 = 1 << 5;
const L7B_ERMS: u32 = 1 << 9;
/// AVX512F, DQ, IFMA (21), PF (26), ER, CD (28), BW (30), VL.
const L7B_AVX512: u32 = 0b11 << 16 | 1 << 21 | 0b111 << 26 | 0b11 << 30;
/// FSGSBASE (0), BMI1 (3), AVX2, FDP_EXCPTN_ONLY (6), SMEP, BMI2, ERMS, INVPCID (10), FPU CS/DS
/// deprecation (13), AVX-512, RDSEED (18), ADX, SMAP (20), CLFLUSHOPT (23), CLWB, SHA (29). Not
/// shown: TSC_ADJUST (the MSR is not emulated), SGX, HLE, RTM, RDT-M/A, MPX, Intel PT.
const LEAF7_EBX_PASSED: u32 =
    1 | 1 << 3 | 0x3F << 5 | 1 << 13 | 0x1F << 16 | 0b11 << 23 | 1 << 29 | L7B_AVX512;

// Leaf 7 subleaf 0 ECX.
/// PKU: protection keys need the PKRU state in XSAVE (shown only with it).
const L7C_PKU: u32 = 1 << 3;
/// OSPKE reflects CR4.PKE (the guest's, `exits::cpuid`).
pub const LEAF7_ECX_OSPKE: u32 = 1 << 4;
/// AVX512_VBMI (1), VBMI2 (6), VNNI (11), BITALG (12), VPOPCNTDQ (14).
const L7C_AVX512: u32 = 1 << 1 | 1 << 6 | 0b11 << 11 | 1 << 14;
/// VAES (9) and VPCLMULQDQ (10) have VEX forms that need the AVX state.
const L7C_NEEDS_AVX: u32 = 0b11 << 9;
/// PREFETCHWT1 (0), UMIP (2), PKU, GFNI (8), VAES, VPCLMULQDQ, AVX-512, RDPID (22, with the
/// "enable RDTSCP" control), CLDEMOTE (25), MOVDIRI (27), MOVDIR64B (28). Not shown: WAITPKG
/// (UMWAIT would idle the CPU), CET (supervisor XSAVE state, MSRs), TME, LA57, KL, ENQCMD, SGX_LC,
/// PKS.
const LEAF7_ECX_PASSED: u32 =
    1 | 1 << 2 | L7C_PKU | 0b111 << 8 | 1 << 22 | 1 << 25 | 0b11 << 27 | L7C_AVX512;

// Leaf 7 subleaf 0 EDX.
/// FSRM, fast short REP MOVSB. Shown only with ERMS: Linux clears ERMS when IA32_MISC_ENABLE reads
/// fast strings off (arch/x86/kernel/cpu/intel.c `early_init_intel`), and FSRM without ERMS
/// corrupts 6.1's `memmove` (shared/linux-guest.md, seen on Bochs `tigerlake`). IA32_MISC_ENABLE
/// always reads fast strings on here (`exits::rdmsr`), so ERMS, and with it FSRM, stays true.
const L7D_FSRM: u32 = 1 << 4;
/// AVX512_4VNNIW (2), 4FMAPS (3), VP2INTERSECT (8), FP16 (23).
const L7D_AVX512: u32 = 0b11 << 2 | 1 << 8 | 1 << 23;
/// MD_CLEAR (10: VERW clears CPU buffers, the instruction runs natively) and SERIALIZE (14). Not
/// shown: UINTR, SRBDS_CTRL, TSX controls, hybrid, PCONFIG, arch LBR, CET-IBT, AMX (its XFD MSRs),
/// IBRS/IBPB, STIBP, L1D_FLUSH and SSBD (IA32_SPEC_CTRL, PRED_CMD and FLUSH_CMD are not passed
/// through: Linux falls back to retpolines and reports itself unmitigated where it must),
/// IA32_ARCH_CAPABILITIES (29) and IA32_CORE_CAPABILITIES (30), neither emulated.
const LEAF7_EDX_PASSED: u32 = L7D_FSRM | 1 << 10 | 1 << 14 | L7D_AVX512;

// Leaf 0xD subleaf 1 EAX: XSAVEOPT (0), XSAVEC (1), XGETBV with ECX = 1 (2). Not XSAVES (3): the
// "enable XSAVES/XRSTORS" control is off, so XSAVES would #UD, and IA32_XSS is not emulated; not
// XFD (4).
const LEAFD1_EAX_PASSED: u32 = 0b111;

// Extended leaves.
/// 80000001H ECX: LAHF/SAHF in 64-bit mode (0), LZCNT (5), PREFETCHW (8).
const EXT1_ECX_PASSED: u32 = 1 | 1 << 5 | 1 << 8;
/// 80000001H EDX: SYSCALL (11), NX (20), 1-GiB pages (26), RDTSCP (27), long mode (29).
const EXT1_EDX_PASSED: u32 = 1 << 11 | 1 << 20 | 0b11 << 26 | 1 << 29;
/// 80000007H EDX bit 8: invariant TSC. The guest reads the host's TSC unchanged (RDTSC does not
/// exit), so it is invariant exactly when the host's is.
const EXT7_EDX_INVARIANT_TSC: u32 = 1 << 8;
/// 80000008H EBX bit 9: WBNOINVD.
const EXT8_EBX_WBNOINVD: u32 = 1 << 9;

// XCR0 state components (SDM Vol. 1 13.1).
const XCR0_X87: u64 = 1 << 0;
const XCR0_SSE: u64 = 1 << 1;
const XCR0_AVX: u64 = 1 << 2;
/// Opmask, ZMM_Hi256, Hi16_ZMM: AVX-512, all or none (SDM Vol. 1 13.3).
const XCR0_AVX512: u64 = 0b111 << 5;
const XCR0_PKRU: u64 = 1 << 9;
/// User state components a guest may enable. Not MPX (BNDREGS/BNDCSR: MPX is hidden), not AMX
/// (TILECFG/TILEDATA: hidden), no supervisor states (no XSAVES).
const XCR0_ALLOWED: u64 = XCR0_X87 | XCR0_SSE | XCR0_AVX | XCR0_AVX512 | XCR0_PKRU;
/// The legacy region and XSAVE header (SDM Vol. 1 13.4): the smallest XSAVE area.
const XSAVE_LEGACY_AND_HEADER: u32 = 512 + 64;

/// The state components a guest's XSAVE covers: those the host supports, Exitless allows, and for
/// which the host's leaf 0xD reports a size.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XsaveSupport {
    /// CPUID.(0xD,0):EDX:EAX as the guest sees it; 0 without XSAVE.
    pub xcr0: u64,
    /// CPUID.(0xD,0):ECX: the XSAVE area size for all of `xcr0`.
    pub max_size: u32,
    /// Where each user state component's area ends (sub-leaf EBX offset + EAX size; 0: not kept).
    component_end: [u32; 10],
}

impl XsaveSupport {
    /// Reads the host's leaf 0xD. A component whose sub-leaf gives size 0 is dropped: Bochs
    /// `tigerlake` reports PKRU with size 0, and Linux then WARNs three times and turns XSAVE off
    /// (shared/linux-guest.md); without PKRU it keeps XSAVE and simply has no protection keys.
    pub fn from_host(host: impl Fn(u32, u32) -> [u32; 4]) -> Self {
        if host(0, 0)[0] < 0xD || host(1, 0)[2] & L1C_XSAVE == 0 {
            return Self::default();
        }
        let [eax, _, _, edx] = host(0xD, 0);
        let mut xcr0 = (u64::from(eax) | u64::from(edx) << 32) & XCR0_ALLOWED;
        for component in 2..63 {
            if xcr0 & 1 << component != 0 && host(0xD, component)[0] == 0 {
                xcr0 &= !(1 << component);
            }
        }
        // The pairing rules XSETBV enforces (SDM Vol. 1 13.3): x87 and SSE always, AVX with SSE,
        // AVX-512 with AVX and complete.
        if xcr0 & (XCR0_X87 | XCR0_SSE) != XCR0_X87 | XCR0_SSE {
            return Self::default();
        }
        if xcr0 & XCR0_AVX == 0 || xcr0 & XCR0_AVX512 != XCR0_AVX512 {
            xcr0 &= !XCR0_AVX512;
        }
        // The area ends after the last component kept (sub-leaf EAX size, EBX offset).
        let mut component_end = [0; 10];
        for (c, end) in component_end.iter_mut().enumerate().skip(2) {
            if xcr0 & 1 << c != 0 {
                let [size, offset, _, _] = host(0xD, c as u32);
                *end = offset.saturating_add(size);
            }
        }
        let mut support = Self {
            xcr0,
            max_size: 0,
            component_end,
        };
        support.max_size = support.area_size(xcr0);
        support
    }

    /// CPUID.(0xD,0):EBX, the XSAVE area size for the components enabled in `xcr0`: computed from
    /// the sub-leaves, not passed through, because Bochs 2.7's EBX disagrees with its own offsets
    /// (2432 for XCR0 0xE7 whose last component ends at 2688), and Linux then WARNs ("XSAVE
    /// consistency problem").
    pub fn area_size(&self, xcr0: u64) -> u32 {
        self.component_end
            .iter()
            .enumerate()
            .filter(|&(c, _)| xcr0 & self.xcr0 & 1 << c != 0)
            .map(|(_, &end)| end)
            .fold(XSAVE_LEGACY_AND_HEADER, u32::max)
    }

    fn has(&self, component: u64) -> bool {
        self.xcr0 & component == component
    }
}

/// What the policy needs besides the host's answer: facts of this machine and this vCPU.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuidContext {
    /// The TSC rate the hypervisor measured (`arch::tsc_calibration`); 0 if unknown, and then leaves
    /// 0x15 and 0x16 read 0 (Linux calibrates itself).
    pub tsc_hz: u64,
    /// This vCPU's x2APIC ID.
    pub apic_id: u32,
    /// vCPUs in the guest: one package of `vcpus` cores, one thread each.
    pub vcpus: u32,
    pub xsave: XsaveSupport,
    /// The guest's XCR0 (what its last XSETBV set; 1 at reset).
    pub guest_xcr0: u64,
}

impl CpuidContext {
    /// The context for vCPU `apic_id` of a `vcpus`-CPU guest on this host.
    pub fn new(host: impl Fn(u32, u32) -> [u32; 4], tsc_hz: u64, apic_id: u32, vcpus: u32) -> Self {
        Self {
            tsc_hz,
            apic_id,
            vcpus: vcpus.max(1),
            xsave: XsaveSupport::from_host(host),
            guest_xcr0: 1,
        }
    }

    /// Core IDs per package, a power of two (SDM Vol. 3A 10.9.1: APIC ID fields are whole bits).
    fn core_ids(&self) -> u32 {
        self.vcpus.max(1).next_power_of_two()
    }

    fn core_id_bits(&self) -> u32 {
        self.core_ids().trailing_zeros()
    }
}

fn signature_leaf(max_leaf: u32, signature: &[u8; 12]) -> [u32; 4] {
    let word = |i: usize| u32::from_le_bytes(signature[i..i + 4].try_into().unwrap());
    [max_leaf, word(0), word(4), word(8)]
}

/// The guest's CPUID result for (`leaf`, `subleaf`), given the host's result `host` for the same
/// leaf and sub-leaf.
pub fn guest_cpuid(leaf: u32, subleaf: u32, host: [u32; 4], ctx: &CpuidContext) -> [u32; 4] {
    let [eax, ebx, ecx, edx] = host;
    let avx = ctx.xsave.has(XCR0_X87 | XCR0_SSE | XCR0_AVX);
    let avx512 = ctx.xsave.has(XCR0_AVX512);
    match leaf {
        0 => [MAX_BASIC_LEAF, ebx, ecx, edx],
        1 => leaf1(host, ctx, avx),
        // Cache and TLB descriptors: facts of the real CPU, no feature behind them.
        2 => host,
        4 => cache_parameters(host, ctx),
        6 => [LEAF6_EAX_ARAT, 0, 0, 0],
        7 if subleaf == 0 => {
            let mut b = ebx & LEAF7_EBX_PASSED;
            let mut c = ecx & LEAF7_ECX_PASSED;
            let mut d = edx & LEAF7_EDX_PASSED;
            if !avx {
                b &= !L7B_AVX2;
                c &= !L7C_NEEDS_AVX;
            }
            if !avx512 {
                b &= !L7B_AVX512;
                c &= !L7C_AVX512;
                d &= !L7D_AVX512;
            }
            if !ctx.xsave.has(XCR0_PKRU) {
                c &= !L7C_PKU;
            }
            if b & L7B_ERMS == 0 {
                d &= !L7D_FSRM;
            }
            // EAX: the highest sub-leaf, 0 (sub-leaf 1's features are not offered).
            [0, b & !L7B_TSC_ADJUST, c, d]
        }
        0xB => extended_topology(subleaf, ctx),
        0xD => xsave_leaf(subleaf, host, ctx),
        0x15 => tsc_leaf(ctx),
        0x16 => frequency_leaf(ctx),
        // Not described: 3 (serial number), 5 (MONITOR), 7.n, 8, 9 (DCA), 0xA (no performance
        // counters), 0xC, 0xE-0x14 (RDT, SGX, Intel PT among them).
        3..=MAX_BASIC_LEAF => [0; 4],
        CPUID_VENDOR_LEAF => signature_leaf(CPUID_VENDOR_LEAF, &CPUID_SIGNATURE),
        KVM_SIGNATURE_LEAF => signature_leaf(KVM_FEATURES_LEAF, &KVM_SIGNATURE),
        // Everything else in the hypervisor range is empty, KVM_CPUID_FEATURES among it.
        0x4000_0001..=0x4FFF_FFFF => [0; 4],
        0x8000_0000 => [eax.min(MAX_EXTENDED_LEAF), ebx, ecx, edx],
        0x8000_0001 => [eax, 0, ecx & EXT1_ECX_PASSED, edx & EXT1_EDX_PASSED],
        // Brand string, L1/L2 cache descriptions.
        0x8000_0002..=0x8000_0006 => host,
        0x8000_0007 => [0, 0, 0, edx & EXT7_EDX_INVARIANT_TSC],
        // Physical and linear address widths: the real CPU's, which checks the guest's page tables.
        0x8000_0008 => [eax, ebx & EXT8_EBX_WBNOINVD, 0, 0],
        // Past the highest leaf Intel CPUs return the highest basic leaf's data (SDM Vol. 2A CPUID,
        // "If a value entered for CPUID.EAX is higher than the maximum input value").
        _ => frequency_leaf(ctx),
    }
}

fn leaf1(host: [u32; 4], ctx: &CpuidContext, avx: bool) -> [u32; 4] {
    let [eax, ebx, ecx, edx] = host;
    let mut c = (ecx & LEAF1_ECX_PASSED) | L1C_X2APIC | L1C_TSC_DEADLINE | LEAF1_ECX_HYPERVISOR;
    if ctx.xsave.xcr0 == 0 {
        c &= !L1C_XSAVE;
    }
    if !avx {
        c &= !LEAF1_ECX_NEEDS_AVX;
    }
    let mut d = edx & LEAF1_EDX_PASSED;
    // EBX: brand index and CLFLUSH line size from the host, then the logical processors per
    // package (valid with HTT) and the initial APIC ID (bits 31:24).
    let logical = if ctx.vcpus > 1 {
        d |= L1D_HTT;
        ctx.core_ids().min(0xFF)
    } else {
        1
    };
    let b = (ebx & 0xFFFF) | logical << 16 | (ctx.apic_id & 0xFF) << 24;
    [eax, b, c, d]
}

/// Leaf 4: the host's cache geometry, with the sharing fields of a package of single-thread cores:
/// EAX[31:26] core IDs per package - 1, EAX[25:14] logical processors sharing the cache - 1 (one
/// for L1/L2, the whole package for L3 and beyond).
fn cache_parameters(host: [u32; 4], ctx: &CpuidContext) -> [u32; 4] {
    let [eax, ebx, ecx, edx] = host;
    if eax & 0x1F == 0 {
        return [0; 4];
    }
    let level = (eax >> 5) & 0b111;
    let sharing = if level <= 2 { 0 } else { ctx.core_ids() - 1 };
    let a = (eax & 0x3FFF) | (sharing & 0xFFF) << 14 | ((ctx.core_ids() - 1) & 0x3F) << 26;
    [a, ebx, ecx, edx]
}

/// Leaf 0xB: level 0 SMT (one thread per core), level 1 core (`vcpus` cores), then invalid levels;
/// EDX is the x2APIC ID at every sub-leaf (SDM Vol. 2A CPUID leaf 0BH).
fn extended_topology(subleaf: u32, ctx: &CpuidContext) -> [u32; 4] {
    const SMT: u32 = 1;
    const CORE: u32 = 2;
    let level = subleaf & 0xFF;
    match subleaf {
        0 => [0, 1, SMT << 8 | level, ctx.apic_id],
        1 => [
            ctx.core_id_bits(),
            ctx.vcpus,
            CORE << 8 | level,
            ctx.apic_id,
        ],
        _ => [0, 0, level, ctx.apic_id],
    }
}

fn xsave_leaf(subleaf: u32, host: [u32; 4], ctx: &CpuidContext) -> [u32; 4] {
    let xsave = ctx.xsave;
    if xsave.xcr0 == 0 {
        return [0; 4];
    }
    match subleaf {
        // EBX, the size for the XCR0 now enabled, is the guest's (`CpuidContext::guest_xcr0`).
        0 => [
            xsave.xcr0 as u32,
            xsave.area_size(ctx.guest_xcr0),
            xsave.max_size,
            (xsave.xcr0 >> 32) as u32,
        ],
        // No supervisor states (ECX:EDX, the IA32_XSS bits, 0); EBX is again the current size.
        1 => [
            host[0] & LEAFD1_EAX_PASSED,
            xsave.area_size(ctx.guest_xcr0),
            0,
            0,
        ],
        2..=62 if xsave.xcr0 & 1 << subleaf != 0 => host,
        _ => [0; 4],
    }
}

/// Leaf 0x15 as (EAX denominator, EBX numerator, ECX crystal Hz) with ECX * EBX / EAX = the TSC rate.
/// Linux sets its LAPIC timer period from ECX (`native_calibrate_tsc`: `lapic_timer_period =
/// crystal_khz * 1000 / HZ`), and the virtual x2APIC's timer counts guest TSC ticks
/// (`virq::x2apic`), so the crystal is the TSC itself: EAX = EBX = 1. A TSC above 4.29 GHz does not
/// fit ECX; it is then divided by the smallest ratio that fits, and the LAPIC timer period Linux
/// derives is short by that ratio (it uses TSC-deadline mode, which counts the TSC itself).
fn tsc_leaf(ctx: &CpuidContext) -> [u32; 4] {
    if ctx.tsc_hz == 0 {
        return [0; 4];
    }
    let ratio = ctx.tsc_hz.div_ceil(u64::from(u32::MAX)).max(1);
    [1, ratio as u32, (ctx.tsc_hz / ratio) as u32, 0]
}

/// Leaf 0x16: base = maximum = TSC MHz (Linux's `cpu_khz_from_cpuid`), bus = the crystal (0x15).
fn frequency_leaf(ctx: &CpuidContext) -> [u32; 4] {
    let [_, ratio, crystal, _] = tsc_leaf(ctx);
    let mhz = |hz: u64| ((hz + 500_000) / 1_000_000).min(0xFFFF) as u32;
    let tsc = mhz(ctx.tsc_hz);
    let bus = if ratio == 0 { 0 } else { mhz(crystal.into()) };
    [tsc, tsc, bus, 0]
}

#[cfg(test)]
mod tests;
