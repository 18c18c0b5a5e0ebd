//! What a guest may write to the MSRs, control registers and XCR0 the host emulates, decided as bare
//! metal decides it: a refused write is #GP(0) in the guest (or #UD, for XSETBV without
//! CR4.OSXSAVE), never a value that would make the next VM entry fail or silently differ from
//! hardware. Pure functions over the guest's CPUID view ([`GuestFeatures`]), host-tested.

/// The CPU features a guest sees (its CPUID, after `cpuid::guest_cpuid`), as far as these rules need.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestFeatures {
    /// CPUID.80000001H:EDX bit 20: IA32_EFER.NXE may be set (SDM Vol. 3A 2.2.1).
    pub nx: bool,
    /// Linear-address width, CPUID.80000008H:EAX[15:8] (48 without the leaf).
    pub linear_width: u8,
    /// CR4 bits this guest may set (SDM Vol. 3A 2.5: each depends on a CPUID feature flag).
    pub cr4_allowed: u64,
    /// XCR0 bits the CPU supports, CPUID.(EAX=0DH,ECX=0):EDX:EAX (SDM Vol. 1 13.2); 0 without XSAVE.
    pub xcr0_supported: u64,
}

// IA32_EFER (SDM Vol. 3A 2.2.1 and Vol. 4 MSR 0xC0000080).
pub const EFER_SCE: u64 = 1 << 0;
pub const EFER_LME: u64 = 1 << 8;
pub const EFER_LMA: u64 = 1 << 10;
pub const EFER_NXE: u64 = 1 << 11;

// CR4 (SDM Vol. 3A 2.5, Figure 2-7).
pub const CR4_PAE: u64 = 1 << 5;
pub const CR4_LA57: u64 = 1 << 12;
pub const CR4_VMXE: u64 = 1 << 13;
pub const CR4_SMXE: u64 = 1 << 14;
pub const CR4_PCIDE: u64 = 1 << 17;
pub const CR4_OSXSAVE: u64 = 1 << 18;
pub const CR4_CET: u64 = 1 << 23;
const CR0_WP: u64 = 1 << 16;

// XCR0 state components (SDM Vol. 1 13.1, 13.3).
pub const XCR0_X87: u64 = 1 << 0;
pub const XCR0_SSE: u64 = 1 << 1;
pub const XCR0_AVX: u64 = 1 << 2;
const XCR0_BNDREGS: u64 = 1 << 3;
const XCR0_BNDCSR: u64 = 1 << 4;
/// Opmask, ZMM_Hi256, Hi16_ZMM: AVX-512 state, enabled all together or not at all.
const XCR0_AVX512: u64 = 0b111 << 5;
const XCR0_TILECFG: u64 = 1 << 17;
const XCR0_TILEDATA: u64 = 1 << 18;

impl GuestFeatures {
    /// Reads the features through `cpuid(leaf, subleaf)`, which must give the guest's view.
    pub fn from_cpuid(cpuid: impl Fn(u32, u32) -> [u32; 4]) -> Self {
        let max_basic = cpuid(0, 0)[0];
        let max_extended = cpuid(0x8000_0000, 0)[0];
        let [_, _, ecx1, edx1] = cpuid(1, 0);
        let [_, ebx7, ecx7, edx7] = if max_basic >= 7 { cpuid(7, 0) } else { [0; 4] };
        let eax7_1 = if max_basic >= 7 && cpuid(7, 0)[0] >= 1 {
            cpuid(7, 1)[0]
        } else {
            0
        };
        let nx = max_extended >= 0x8000_0001 && cpuid(0x8000_0001, 0)[3] & (1 << 20) != 0;
        let linear_width = if max_extended >= 0x8000_0008 {
            match (cpuid(0x8000_0008, 0)[0] >> 8) as u8 {
                0 => 48,
                w => w,
            }
        } else {
            48
        };
        let bit = |reg: u32, n: u32| reg & (1 << n) != 0;
        // (CR4 bit, whether CPUID says the feature behind it exists), SDM Vol. 3A 2.5 (each CR4 bit's
        // description names the CPUID flag that reports it).
        let cr4_bits: [(u32, bool); 25] = [
            (0, bit(edx1, 1)),     // VME: CPUID.1:EDX.VME
            (1, bit(edx1, 1)),     // PVI: with VME
            (2, bit(edx1, 4)),     // TSD: CPUID.1:EDX.TSC
            (3, bit(edx1, 2)),     // DE
            (4, bit(edx1, 3)),     // PSE
            (5, bit(edx1, 6)),     // PAE
            (6, bit(edx1, 7)),     // MCE
            (7, bit(edx1, 13)),    // PGE
            (8, true),             // PCE: architectural
            (9, bit(edx1, 24)),    // OSFXSR: FXSR
            (10, bit(edx1, 25)),   // OSXMMEXCPT: SSE
            (11, bit(ecx7, 2)),    // UMIP
            (12, bit(ecx7, 16)),   // LA57
            (13, bit(ecx1, 5)),    // VMXE: hidden from guests by guest_cpuid, so never allowed
            (14, bit(ecx1, 6)),    // SMXE: hidden likewise
            (16, bit(ebx7, 0)),    // FSGSBASE
            (17, bit(ecx1, 17)),   // PCIDE
            (18, bit(ecx1, 26)),   // OSXSAVE: XSAVE
            (19, bit(ecx7, 23)),   // KL
            (20, bit(ebx7, 7)),    // SMEP
            (21, bit(ebx7, 20)),   // SMAP
            (22, bit(ecx7, 3)),    // PKE
            (23, bit(ecx7, 7)),    // CET: CET_SS
            (24, bit(ecx7, 31)),   // PKS
            (28, bit(eax7_1, 26)), // LAM_SUP: CPUID.(7,1):EAX.LAM
        ];
        let cr4_allowed = cr4_bits
            .iter()
            .filter(|(_, present)| *present)
            .fold(0u64, |acc, (n, _)| acc | 1 << n);
        // UINTR (CR4 bit 25) is CPUID.7.0:EDX bit 5.
        let cr4_allowed = cr4_allowed | if bit(edx7, 5) { 1 << 25 } else { 0 };
        let xcr0_supported = if bit(ecx1, 26) && max_basic >= 0xD {
            let [eax, _, _, edx] = cpuid(0xD, 0);
            u64::from(eax) | u64::from(edx) << 32
        } else {
            0
        };
        GuestFeatures {
            nx,
            linear_width,
            cr4_allowed,
            xcr0_supported,
        }
    }

    /// Whether `address` is canonical: bits 63 down to the linear-address width all equal the top
    /// implemented bit (SDM Vol. 1 3.3.7.1). WRMSR of a non-canonical address to FS_BASE, GS_BASE,
    /// KERNEL_GS_BASE, LSTAR or CSTAR raises #GP(0) (SDM Vol. 4, those MSRs; Vol. 2B WRMSR).
    pub fn canonical(&self, address: u64) -> bool {
        let unused = 64 - u32::from(self.linear_width.clamp(32, 64));
        ((address << unused) as i64 >> unused) as u64 == address
    }
}

/// Why a write is refused, and how bare metal refuses it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// #GP(0).
    GeneralProtection,
    /// #UD.
    InvalidOpcode,
}

/// WRMSR to IA32_EFER with `value` while it holds `current`: the value to load, or #GP.
///
/// Intel defines SCE (0), LME (8), LMA (10, read-only: it follows CR0.PG and LME) and NXE (11, only
/// with CPUID.80000001H:EDX.NX); every other bit is reserved and setting it is #GP(0) (SDM Vol. 3A
/// 2.2.1, Vol. 4 "IA32_EFER"). Changing LME while paging is on is #GP(0) too (SDM Vol. 3A 10.8.5), and
/// guests here always run with paging on.
pub fn efer_write(current: u64, value: u64, features: &GuestFeatures) -> Result<u64, Refusal> {
    let mut allowed = EFER_SCE | EFER_LME | EFER_LMA;
    if features.nx {
        allowed |= EFER_NXE;
    }
    if value & !allowed != 0 || (value ^ current) & EFER_LME != 0 {
        return Err(Refusal::GeneralProtection);
    }
    Ok((value & !EFER_LMA) | (current & EFER_LMA))
}

/// WRMSR to IA32_PAT: each of the eight entries must be a defined memory type, 0 (UC), 1 (WC),
/// 4 (WT), 5 (WP), 6 (WB) or 7 (UC-); 2, 3 and 8-255 are reserved and give #GP(0) (SDM Vol. 3A
/// 13.12.2 "IA32_PAT MSR", Table 13-10; 11.12.2 in older editions).
pub fn pat_valid(value: u64) -> bool {
    value
        .to_le_bytes()
        .iter()
        .all(|&t| matches!(t, 0 | 1 | 4 | 5 | 6 | 7))
}

/// The guest's registers a MOV to CR4 is judged against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cr4Context {
    /// CR4 as the guest sees it now.
    pub cr4: u64,
    pub cr0: u64,
    pub cr3: u64,
    /// IA32_EFER.LMA: the guest runs in IA-32e mode.
    pub long_mode: bool,
}

/// MOV to CR4 with `value` (SDM Vol. 2B "MOV—Move to/from Control Registers", Protected Mode
/// Exceptions, and Vol. 3A 2.5): #GP(0) for a reserved bit or one whose feature CPUID does not show
/// (VMXE and SMXE among them: the guest's CPUID hides VMX and SMX), for clearing PAE or changing LA57
/// in IA-32e mode, for setting PCIDE while CR3[11:0] is not 0 (or outside IA-32e mode), and for
/// setting CET while CR0.WP is 0.
pub fn cr4_write(value: u64, ctx: &Cr4Context, features: &GuestFeatures) -> Result<(), Refusal> {
    let gp = Err(Refusal::GeneralProtection);
    if value & !features.cr4_allowed != 0 {
        return gp;
    }
    if ctx.long_mode && (value & CR4_PAE == 0 || (value ^ ctx.cr4) & CR4_LA57 != 0) {
        return gp;
    }
    if value & CR4_PCIDE != 0
        && ctx.cr4 & CR4_PCIDE == 0
        && (ctx.cr3 & 0xFFF != 0 || !ctx.long_mode)
    {
        return gp;
    }
    if value & CR4_CET != 0 && ctx.cr0 & CR0_WP == 0 {
        return gp;
    }
    Ok(())
}

/// XSETBV with ECX = `xcr` and EDX:EAX = `value` (SDM Vol. 2C "XSETBV", Vol. 1 13.3):
/// #UD if CR4.OSXSAVE is clear; #GP(0) at CPL > 0, for any XCR but XCR0, for a bit the CPU does not
/// support (CPUID.(EAX=0DH,ECX=0)), for x87 (bit 0) clear, for AVX without SSE, for AVX-512 state
/// (bits 7:5) not all equal or set without AVX, for BNDREGS and BNDCSR not equal, and for AMX
/// TILECFG and TILEDATA not equal.
pub fn xcr0_write(
    guest_cr4: u64,
    cpl: u8,
    xcr: u32,
    value: u64,
    features: &GuestFeatures,
) -> Result<(), Refusal> {
    if guest_cr4 & CR4_OSXSAVE == 0 {
        return Err(Refusal::InvalidOpcode);
    }
    let pair_differs = |a: u64, b: u64| (value & a == 0) != (value & b == 0);
    let avx512 = value & XCR0_AVX512;
    let refused = cpl != 0
        || xcr != 0
        || value & !features.xcr0_supported != 0
        || value & XCR0_X87 == 0
        || (value & XCR0_AVX != 0 && value & XCR0_SSE == 0)
        || (avx512 != 0 && (avx512 != XCR0_AVX512 || value & XCR0_AVX == 0))
        || pair_differs(XCR0_BNDREGS, XCR0_BNDCSR)
        || pair_differs(XCR0_TILECFG, XCR0_TILEDATA);
    if refused {
        Err(Refusal::GeneralProtection)
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// CPUID as Bochs `tigerlake` reports it, where it matters here (shared/emulators.md leaf 1 ECX,
    /// VMX and SMX already hidden as `guest_cpuid` does), with NX, 48-bit linear addresses and
    /// x87/SSE/AVX/AVX-512 XSAVE state.
    fn tigerlake_guest() -> GuestFeatures {
        GuestFeatures::from_cpuid(|leaf, sub| match (leaf, sub) {
            (0, _) => [0x16, 0, 0, 0],
            (1, _) => [0x806C1, 0, 0x77FA_F3BF & !(1 << 5 | 1 << 6), 0xBFEB_FBFF],
            (7, 0) => [0, 0x0000_0081, 0x0001_000C, 0],
            (0xD, 0) => [0xE7, 0x340, 0xA88, 0],
            (0x8000_0000, _) => [0x8000_0008, 0, 0, 0],
            (0x8000_0001, _) => [0, 0, 1, 1 << 20 | 1 << 29],
            (0x8000_0008, _) => [0x3027, 0, 0, 0],
            _ => [0; 4],
        })
    }

    #[test]
    fn features_from_cpuid() {
        let f = tigerlake_guest();
        assert!(f.nx);
        assert_eq!(f.linear_width, 48);
        assert_eq!(f.xcr0_supported, 0xE7);
        // FSGSBASE (EBX 0), SMEP (EBX 7), UMIP (ECX 2), PKE (ECX 3), LA57 (ECX 16).
        for bit in [0, 5, 9, 10, 11, 12, 16, 17, 18, 20, 22] {
            assert_ne!(f.cr4_allowed & (1 << bit), 0, "CR4 bit {bit}");
        }
        for bit in [13, 14, 15, 21, 25, 26, 27, 31, 32, 63] {
            assert_eq!(f.cr4_allowed & (1 << bit), 0, "CR4 bit {bit}");
        }
    }

    #[test]
    fn canonical_addresses_sdm_3_3_7_1() {
        let f = tigerlake_guest();
        assert!(f.canonical(0));
        assert!(f.canonical(0x0000_7FFF_FFFF_FFFF));
        assert!(f.canonical(0xFFFF_8000_0000_0000));
        assert!(f.canonical(0xFFFF_FFFF_8000_0000));
        assert!(!f.canonical(0x0000_8000_0000_0000));
        assert!(!f.canonical(0x8000_0000_0000_0000));
        assert!(!f.canonical(0xFFFF_7FFF_FFFF_FFFF));
        let la57 = GuestFeatures {
            linear_width: 57,
            ..f
        };
        assert!(la57.canonical(0x00FF_FFFF_FFFF_FFFF));
        assert!(!la57.canonical(0x0100_0000_0000_0000));
    }

    #[test]
    fn efer_reserved_bits_and_lme_give_gp() {
        let f = tigerlake_guest();
        let current = EFER_LME | EFER_LMA | EFER_NXE;
        assert_eq!(
            efer_write(current, current | EFER_SCE, &f),
            Ok(current | EFER_SCE)
        );
        // LMA is the CPU's whatever is written.
        assert_eq!(efer_write(current, EFER_LME | EFER_NXE, &f), Ok(current));
        for reserved in [1, 7, 9, 12, 13, 14, 15, 16, 32, 63] {
            assert_eq!(
                efer_write(current, current | 1 << reserved, &f),
                Err(Refusal::GeneralProtection),
                "bit {reserved}"
            );
        }
        assert_eq!(
            efer_write(current, EFER_LMA, &f),
            Err(Refusal::GeneralProtection)
        );
        let no_nx = GuestFeatures { nx: false, ..f };
        assert_eq!(
            efer_write(EFER_LME | EFER_LMA, EFER_LME | EFER_NXE, &no_nx),
            Err(Refusal::GeneralProtection)
        );
    }

    #[test]
    fn pat_entries_must_be_memory_types() {
        // The power-on value (SDM Table 13-11): WB, WT, UC-, UC twice.
        assert!(pat_valid(0x0007_0406_0007_0406));
        assert!(pat_valid(0x0101_0505_0000_0707));
        for bad in [2u64, 3, 8, 0xFF] {
            for entry in 0..8 {
                let value = 0x0007_0406_0007_0406 & !(0xFF << (entry * 8)) | bad << (entry * 8);
                assert!(!pat_valid(value), "type {bad} in entry {entry}");
            }
        }
    }

    fn long_mode_ctx() -> Cr4Context {
        Cr4Context {
            cr4: CR4_PAE,
            cr0: 0x8001_0033,
            cr3: 0x1000,
            long_mode: true,
        }
    }

    #[test]
    fn cr4_reserved_hidden_and_mode_bits_give_gp() {
        let f = tigerlake_guest();
        let ctx = long_mode_ctx();
        let gp = Err(Refusal::GeneralProtection);
        assert_eq!(
            cr4_write(CR4_PAE | 1 << 7 | 1 << 9 | CR4_OSXSAVE, &ctx, &f),
            Ok(())
        );
        assert_eq!(cr4_write(CR4_PAE | CR4_VMXE, &ctx, &f), gp, "VMX is hidden");
        assert_eq!(cr4_write(CR4_PAE | CR4_SMXE, &ctx, &f), gp, "SMX is hidden");
        assert_eq!(
            cr4_write(CR4_PAE | 1 << 15, &ctx, &f),
            gp,
            "bit 15 is reserved"
        );
        assert_eq!(
            cr4_write(CR4_PAE | 1 << 32, &ctx, &f),
            gp,
            "bits 63:32 are reserved"
        );
        assert_eq!(
            cr4_write(CR4_PAE | 1 << 21, &ctx, &f),
            gp,
            "no SMAP in this CPUID"
        );
        assert_eq!(
            cr4_write(0, &ctx, &f),
            gp,
            "PAE cannot be cleared in IA-32e mode"
        );
        assert_eq!(
            cr4_write(CR4_PAE | CR4_LA57, &ctx, &f),
            gp,
            "LA57 cannot change in IA-32e mode"
        );
        assert_eq!(cr4_write(CR4_PAE | CR4_PCIDE, &ctx, &f), Ok(()));
        let dirty_cr3 = Cr4Context { cr3: 0x1001, ..ctx };
        assert_eq!(cr4_write(CR4_PAE | CR4_PCIDE, &dirty_cr3, &f), gp);
        let cet = GuestFeatures {
            cr4_allowed: f.cr4_allowed | CR4_CET,
            ..f
        };
        assert_eq!(cr4_write(CR4_PAE | CR4_CET, &ctx, &cet), Ok(()));
        let no_wp = Cr4Context {
            cr0: 0x8000_0033,
            ..ctx
        };
        assert_eq!(cr4_write(CR4_PAE | CR4_CET, &no_wp, &cet), gp);
    }

    #[test]
    fn xsetbv_rules_sdm_vol1_13_3() {
        let f = tigerlake_guest();
        let ok = |v| xcr0_write(CR4_OSXSAVE, 0, 0, v, &f);
        let gp = Err(Refusal::GeneralProtection);
        assert_eq!(ok(0b1), Ok(()));
        assert_eq!(ok(0b11), Ok(()));
        assert_eq!(ok(0b111), Ok(()));
        assert_eq!(ok(0xE7), Ok(()), "AVX-512 with AVX");
        assert_eq!(ok(0), gp, "x87 must stay on");
        assert_eq!(ok(0b10), gp, "x87 must stay on");
        assert_eq!(ok(0b101), gp, "AVX without SSE");
        assert_eq!(ok(0x67), gp, "AVX-512 components not all equal");
        assert_eq!(ok(0xE3), gp, "AVX-512 without AVX");
        assert_eq!(ok(0b1_1011), gp, "MPX state not supported here");
        assert_eq!(ok(1 << 9 | 1), gp, "PKRU not supported here");
        assert_eq!(ok(1 << 63 | 1), gp, "reserved");
        assert_eq!(xcr0_write(CR4_OSXSAVE, 3, 0, 3, &f), gp, "CPL 3");
        assert_eq!(xcr0_write(CR4_OSXSAVE, 0, 1, 3, &f), gp, "XCR1");
        assert_eq!(
            xcr0_write(0, 0, 0, 3, &f),
            Err(Refusal::InvalidOpcode),
            "no CR4.OSXSAVE"
        );
        let mpx_amx = GuestFeatures {
            xcr0_supported: 0x6_001F,
            ..f
        };
        assert_eq!(xcr0_write(CR4_OSXSAVE, 0, 0, 0x1F, &mpx_amx), Ok(()));
        assert_eq!(
            xcr0_write(CR4_OSXSAVE, 0, 0, 0x0F, &mpx_amx),
            gp,
            "BNDREGS without BNDCSR"
        );
        assert_eq!(xcr0_write(CR4_OSXSAVE, 0, 0, 0x6_0007, &mpx_amx), Ok(()));
        assert_eq!(
            xcr0_write(CR4_OSXSAVE, 0, 0, 0x2_0007, &mpx_amx),
            gp,
            "TILECFG without TILEDATA"
        );
        let no_xsave = GuestFeatures {
            xcr0_supported: 0,
            ..f
        };
        assert_eq!(xcr0_write(CR4_OSXSAVE, 0, 0, 1, &no_xsave), gp);
    }
}
