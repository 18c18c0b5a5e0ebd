//! One test per rule, against the host Bochs `tigerlake` presents (its cpudb/intel/tigerlake.cc and
//! shared/emulators.md) and against a bare fake host.

use super::*;

const fn bits(list: &[u32]) -> u32 {
    let mut value = 0;
    let mut i = 0;
    while i < list.len() {
        value |= 1 << list[i];
        i += 1;
    }
    value
}

/// Leaf 7.0 of Bochs `tigerlake`, by the bit lists of its cpudb entry.
const TIGERLAKE_7_EBX: u32 = bits(&[
    0, 1, 3, 5, 6, 7, 8, 9, 10, 13, 16, 17, 18, 19, 20, 21, 23, 24, 28, 29, 30, 31,
]);
const TIGERLAKE_7_ECX: u32 = bits(&[1, 2, 3, 6, 7, 8, 9, 10, 11, 12, 14, 22, 27]);
const TIGERLAKE_7_EDX: u32 = bits(&[4, 8, 10, 20, 26, 27, 28, 29, 30, 31]);

/// Bochs `tigerlake` as the hypervisor sees it (OSXSAVE set: the host enables CR4.OSXSAVE).
fn tigerlake(leaf: u32, subleaf: u32) -> [u32; 4] {
    match (leaf, subleaf) {
        (0, _) => [0x1B, 0x756E_6547, 0x6C65_746E, 0x4965_6E69],
        (1, _) => [0x806C1, 0x0001_0800, 0x77FA_F3BF | 1 << 27, 0xBFEB_FBFF],
        (2, _) => [0x00FE_FF01, 0xF0, 0, 0],
        (4, 0) => [0x1C00_4121, 0x02C0_003F, 0x3F, 0],
        (4, 3) => [0x1C03_C163, 0x01C0_003F, 0x3FFF, 4],
        (4, _) => [0; 4],
        (5, _) => [64, 64, 3, 0x1112_1020],
        (6, _) => [0x0017_EFF7, 2, 9, 0],
        (7, 0) => [0, TIGERLAKE_7_EBX, TIGERLAKE_7_ECX, TIGERLAKE_7_EDX],
        (0xA, _) => [0x0830_0805, 0, 0xF, 0x8604],
        // PKRU (bit 9) is in XCR0's supported mask and in ECX's size, but its sub-leaf says size 0.
        (0xD, 0) => [0x2E7, 0x240, 0xA88, 0],
        (0xD, 1) => [0xF, 0x240, 0x1800, 0],
        (0xD, 2) => [256, 576, 0, 0],
        (0xD, 5) => [64, 1088, 0, 0],
        (0xD, 6) => [512, 1152, 0, 0],
        (0xD, 7) => [1024, 1664, 0, 0],
        (0xD, _) => [0; 4],
        (0x15, _) => [2, 0x7E, 0x0249_F000, 0],
        (0x16, _) => [0x960, 0x1068, 0x64, 0],
        (0x8000_0000, _) => [0x8000_0008, 0, 0, 0],
        (0x8000_0001, _) => [0, 0, 0x121, 0x2C10_0800],
        (0x8000_0007, _) => [0, 0, 0, 0x100],
        (0x8000_0008, _) => [0x3027, 0, 0, 0],
        _ => [0; 4],
    }
}

/// 50 MHz: Bochs' TSC at ips = 50M, as the PIT measures it.
const BOCHS_TSC_HZ: u64 = 50_000_000;

fn tigerlake_ctx() -> CpuidContext {
    CpuidContext::new(tigerlake, BOCHS_TSC_HZ, 0, 1)
}

fn guest(leaf: u32, subleaf: u32) -> [u32; 4] {
    guest_cpuid(leaf, subleaf, tigerlake(leaf, subleaf), &tigerlake_ctx())
}

#[test]
fn max_basic_leaf_reaches_the_tsc_leaves_and_the_vendor_passes() {
    let [max, b, c, d] = guest(0, 0);
    assert_eq!(max, 0x16);
    assert_eq!([b, c, d], [0x756E_6547, 0x6C65_746E, 0x4965_6E69]);
    // A host without leaf 0x15 still gets it described.
    let ctx = CpuidContext::new(|_, _| [0xD, 0, 0, 0], BOCHS_TSC_HZ, 0, 1);
    assert_eq!(guest_cpuid(0, 0, [0xD, 0, 0, 0], &ctx)[0], 0x16);
}

#[test]
fn leaf1_ecx_is_the_allow_list() {
    let ecx = guest(1, 0)[2];
    assert_ne!(ecx & LEAF1_ECX_HYPERVISOR, 0);
    assert_eq!(ecx & LEAF1_ECX_VMX, 0);
    for hidden in [2, 3, 4, 6, 7, 8, 14, 15, 27] {
        assert_eq!(ecx & 1 << hidden, 0, "CPUID.1:ECX bit {hidden}");
    }
    for shown in [
        0, 1, 9, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 28, 29, 30,
    ] {
        assert_ne!(ecx & 1 << shown, 0, "CPUID.1:ECX bit {shown}");
    }
}

#[test]
fn x2apic_and_tsc_deadline_are_shown_whatever_the_host() {
    let ctx = CpuidContext::new(|_, _| [0; 4], 0, 0, 1);
    let ecx = guest_cpuid(1, 0, [0; 4], &ctx)[2];
    assert_eq!(ecx, L1C_X2APIC | L1C_TSC_DEADLINE | LEAF1_ECX_HYPERVISOR);
}

#[test]
fn leaf1_edx_hides_mtrr_ds_acpi_tm_pbe_and_htt_for_one_vcpu() {
    let edx = guest(1, 0)[3];
    for hidden in [12, 18, 21, 22, 28, 29, 31] {
        assert_eq!(edx & 1 << hidden, 0, "CPUID.1:EDX bit {hidden}");
    }
    for shown in [0, 4, 5, 6, 7, 9, 11, 13, 14, 16, 19, 24, 25, 26] {
        assert_ne!(edx & 1 << shown, 0, "CPUID.1:EDX bit {shown}");
    }
}

#[test]
fn leaf1_ebx_holds_the_apic_id_and_the_logical_count() {
    let ebx = guest_cpuid(
        1,
        0,
        tigerlake(1, 0),
        &CpuidContext::new(tigerlake, 1, 3, 1),
    )[1];
    assert_eq!(ebx >> 24, 3);
    assert_eq!((ebx >> 16) & 0xFF, 1);
    assert_eq!(ebx & 0xFFFF, 0x0800, "brand index and CLFLUSH size stay");
    let smp = CpuidContext::new(tigerlake, 1, 1, 3);
    let [_, ebx, _, edx] = guest_cpuid(1, 0, tigerlake(1, 0), &smp);
    assert_eq!((ebx >> 16) & 0xFF, 4, "3 vCPUs need 4 core IDs");
    assert_ne!(edx & L1D_HTT, 0);
}

#[test]
fn cache_leaf_describes_single_thread_cores() {
    let [eax, ebx, ecx, edx] = guest(4, 0);
    assert_eq!(eax, 0x0000_0121, "L1D: shared by one thread, one core ID");
    assert_eq!([ebx, ecx, edx], [0x02C0_003F, 0x3F, 0]);
    let smp = CpuidContext::new(tigerlake, 1, 0, 4);
    let l3 = guest_cpuid(4, 3, tigerlake(4, 3), &smp)[0];
    assert_eq!(l3 >> 26, 3);
    assert_eq!((l3 >> 14) & 0xFFF, 3, "L3 is shared by the package");
    assert_eq!(guest(4, 4), [0; 4]);
}

#[test]
fn topology_leaf_is_one_core_per_vcpu() {
    assert_eq!(guest(0xB, 0), [0, 1, 0x100, 0]);
    assert_eq!(guest(0xB, 1), [0, 1, 0x201, 0]);
    assert_eq!(guest(0xB, 2), [0, 0, 2, 0]);
    let smp = CpuidContext::new(tigerlake, 1, 5, 6);
    assert_eq!(guest_cpuid(0xB, 1, [0; 4], &smp), [3, 6, 0x201, 5]);
    assert_eq!(guest_cpuid(0xB, 7, [0; 4], &smp)[3], 5);
}

#[test]
fn power_leaf_is_arat_only_and_monitor_pmu_leaves_are_empty() {
    assert_eq!(guest(6, 0), [LEAF6_EAX_ARAT, 0, 0, 0]);
    assert_eq!(guest(5, 0), [0; 4]);
    assert_eq!(guest(0xA, 0), [0; 4]);
    for leaf in [3, 8, 9, 0xC, 0xE, 0xF, 0x10, 0x12, 0x14] {
        assert_eq!(
            guest_cpuid(leaf, 0, [7; 4], &tigerlake_ctx()),
            [0; 4],
            "{leaf:#x}"
        );
    }
}

#[test]
fn leaf7_passes_the_isa_and_hides_the_rest() {
    let [eax, ebx, ecx, edx] = guest(7, 0);
    assert_eq!(eax, 0, "no sub-leaf 1");
    for shown in [0, 3, 5, 7, 8, 9, 10, 16, 18, 19, 20, 23, 24, 29, 30, 31] {
        assert_ne!(ebx & 1 << shown, 0, "CPUID.7:EBX bit {shown}");
    }
    for hidden in [1, 2, 4, 11, 12, 14, 15, 25] {
        assert_eq!(ebx & 1 << hidden, 0, "CPUID.7:EBX bit {hidden}");
    }
    // PKU hidden (PKRU has no size), CET_SS, WAITPKG, KL, LA57 hidden.
    for hidden in [3, 4, 5, 7, 16, 23] {
        assert_eq!(ecx & 1 << hidden, 0, "CPUID.7:ECX bit {hidden}");
    }
    assert_ne!(ecx & 1 << 22, 0, "RDPID");
    assert_eq!(edx, bits(&[4, 8, 10]), "FSRM, VP2INTERSECT, MD_CLEAR");
    assert_eq!(guest(7, 1), [0; 4]);
}

#[test]
fn fsrm_needs_erms() {
    let host = [0, TIGERLAKE_7_EBX & !L7B_ERMS, 0, TIGERLAKE_7_EDX];
    assert_eq!(guest_cpuid(7, 0, host, &tigerlake_ctx())[3] & L7D_FSRM, 0);
    assert_ne!(guest(7, 0)[3] & L7D_FSRM, 0);
}

#[test]
fn avx_features_follow_the_xsave_state() {
    // A host whose leaf 0xD lacks the AVX-512 sizes keeps AVX but loses every AVX-512 flag.
    let no_zmm = |leaf, sub| match (leaf, sub) {
        (0xD, 5..=7) => [0; 4],
        _ => tigerlake(leaf, sub),
    };
    let ctx = CpuidContext::new(no_zmm, 1, 0, 1);
    assert_eq!(ctx.xsave.xcr0, 0b111);
    let [_, ebx, ecx, edx] = guest_cpuid(7, 0, tigerlake(7, 0), &ctx);
    assert_eq!(ebx & L7B_AVX512, 0);
    assert_eq!(ecx & L7C_AVX512, 0);
    assert_eq!(edx & L7D_AVX512, 0);
    assert_ne!(ebx & L7B_AVX2, 0);
    // Without XSAVE nothing that needs it is shown.
    let bare = CpuidContext::new(
        |l, s| if l == 0xD { [0; 4] } else { tigerlake(l, s) },
        1,
        0,
        1,
    );
    let ecx1 = guest_cpuid(1, 0, tigerlake(1, 0), &bare)[2];
    assert_eq!(ecx1 & (L1C_XSAVE | LEAF1_ECX_NEEDS_AVX), 0);
    assert_eq!(guest_cpuid(7, 0, tigerlake(7, 0), &bare)[1] & L7B_AVX2, 0);
    assert_eq!(guest_cpuid(0xD, 0, [7; 4], &bare), [0; 4]);
}

#[test]
fn xsave_leaf_drops_pkru_whose_size_is_zero() {
    let ctx = tigerlake_ctx();
    assert_eq!(ctx.xsave.xcr0, 0xE7);
    assert_eq!(ctx.xsave.max_size, 1664 + 1024);
    assert_eq!(guest(0xD, 0), [0xE7, 0x240, 2688, 0]);
    assert_eq!(
        guest(0xD, 1),
        [0b111, 0x240, 0, 0],
        "no XSAVES, no IA32_XSS states"
    );
    assert_eq!(guest(0xD, 2), [256, 576, 0, 0]);
    assert_eq!(guest(0xD, 9), [0; 4]);
    // With a real PKRU size, PKRU and PKU are both shown.
    let with_pkru = |leaf, sub| match (leaf, sub) {
        (0xD, 9) => [8, 2688, 0, 0],
        _ => tigerlake(leaf, sub),
    };
    let ctx = CpuidContext::new(with_pkru, 1, 0, 1);
    assert_eq!(ctx.xsave.xcr0, 0x2E7);
    assert_eq!(ctx.xsave.max_size, 0xA88);
    assert_ne!(guest_cpuid(7, 0, tigerlake(7, 0), &ctx)[2] & L7C_PKU, 0);
}

#[test]
fn tsc_leaves_give_the_measured_rate() {
    let [eax, ebx, ecx, edx] = guest(0x15, 0);
    assert_eq!((eax, ebx, ecx, edx), (1, 1, 50_000_000, 0));
    assert_eq!(
        u64::from(ecx) * u64::from(ebx) / u64::from(eax),
        BOCHS_TSC_HZ
    );
    assert_eq!(guest(0x16, 0), [50, 50, 50, 0]);
    // A TSC above what ECX holds keeps ECX * EBX / EAX = TSC Hz.
    let fast = CpuidContext::new(tigerlake, 5_000_000_000, 0, 1);
    let [eax, ebx, ecx, _] = guest_cpuid(0x15, 0, [0; 4], &fast);
    assert_eq!((eax, ebx), (1, 2));
    assert_eq!(u64::from(ecx) * 2, 5_000_000_000);
    assert_eq!(guest_cpuid(0x16, 0, [0; 4], &fast), [5000, 5000, 2500, 0]);
    // Unknown rate: both read 0 (Linux calibrates itself).
    let unknown = CpuidContext::new(tigerlake, 0, 0, 1);
    assert_eq!(guest_cpuid(0x15, 0, [9; 4], &unknown), [0; 4]);
    assert_eq!(guest_cpuid(0x16, 0, [9; 4], &unknown), [0; 4]);
}

fn signature(regs: [u32; 4]) -> [u8; 12] {
    let mut bytes = [0u8; 12];
    bytes[..4].copy_from_slice(&regs[1].to_le_bytes());
    bytes[4..8].copy_from_slice(&regs[2].to_le_bytes());
    bytes[8..].copy_from_slice(&regs[3].to_le_bytes());
    bytes
}

#[test]
fn exitless_signature_stays_at_the_vendor_leaf() {
    let r = guest(CPUID_VENDOR_LEAF, 0);
    assert_eq!(signature(r), CPUID_SIGNATURE);
    assert_eq!(r[0], CPUID_VENDOR_LEAF);
    assert_eq!(
        guest_cpuid(0x4000_0001, 0, [7; 4], &tigerlake_ctx()),
        [0; 4]
    );
}

#[test]
fn kvm_signature_is_found_by_linux_s_search_with_no_features() {
    // hypervisor_cpuid_base("KVMKVMKVM\0\0\0", 0): every 0x100 from 0x40000000.
    let base = (0x4000_0000..0x4001_0000u32)
        .step_by(0x100)
        .find(|&b| signature(guest(b, 0)) == *b"KVMKVMKVM\0\0\0");
    assert_eq!(base, Some(KVM_SIGNATURE_LEAF));
    assert_eq!(guest(KVM_SIGNATURE_LEAF, 0)[0], KVM_SIGNATURE_LEAF + 1);
    assert_eq!(
        guest_cpuid(KVM_SIGNATURE_LEAF + 1, 0, [7; 4], &tigerlake_ctx()),
        [0; 4]
    );
}

#[test]
fn extended_leaves_pass_what_is_safe() {
    assert_eq!(guest(0x8000_0000, 0)[0], 0x8000_0008);
    let [_, _, ecx, edx] = guest(0x8000_0001, 0);
    assert_eq!(ecx, 0x121, "LAHF, LZCNT, PREFETCHW");
    assert_eq!(edx, 0x2C10_0800, "SYSCALL, NX, 1G pages, RDTSCP, LM");
    assert_eq!(guest(0x8000_0007, 0), [0, 0, 0, 0x100], "invariant TSC");
    assert_eq!(guest(0x8000_0008, 0), [0x3027, 0, 0, 0]);
    let brand = [0x6874_3131, 0x6E65_4720, 0x746E_4920, 0x5228_6C65];
    assert_eq!(guest_cpuid(0x8000_0002, 0, brand, &tigerlake_ctx()), brand);
}

#[test]
fn leaves_past_the_maximum_read_as_the_highest_basic_leaf() {
    assert_eq!(guest(0x1F, 0), guest(0x16, 0));
    assert_eq!(guest(0x8000_0009, 0), guest(0x16, 0));
}

#[test]
fn xsave_size_follows_the_guests_xcr0_from_the_component_offsets() {
    let xsave = XsaveSupport::from_host(tigerlake);
    // Legacy area and header only, then AVX's end, then the last AVX-512 component's end (Bochs'
    // own EBX says 2432 there).
    assert_eq!(xsave.area_size(1), 576);
    assert_eq!(xsave.area_size(0x7), 576 + 256);
    assert_eq!(xsave.area_size(0xE7), 1664 + 1024);
    assert_eq!(
        xsave.area_size(0x2E7),
        2688,
        "PKRU (size 0 on Bochs) is not kept"
    );
    let ctx = CpuidContext {
        guest_xcr0: 0x7,
        ..tigerlake_ctx()
    };
    assert_eq!(guest_cpuid(0xD, 0, tigerlake(0xD, 0), &ctx)[1], 832);
    assert_eq!(guest_cpuid(0xD, 1, tigerlake(0xD, 1), &ctx)[1], 832);
}
