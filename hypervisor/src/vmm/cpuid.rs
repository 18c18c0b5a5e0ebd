//! What CPUID tells a guest: the host's answer, minus what the guest must not see or cannot have, plus
//! the hypervisor leaves (`exitless_abi::hypercall`).

use exitless_abi::hypercall::{CPUID_SIGNATURE, CPUID_VENDOR_LEAF};

const LEAF1_ECX_VMX: u32 = 1 << 5;
const LEAF1_ECX_SMX: u32 = 1 << 6;
const LEAF1_ECX_HYPERVISOR: u32 = 1 << 31;
/// Leaf 7 EDX bit 4, fast short REP MOVSB. Bochs `tigerlake` advertises it while IA32_MISC_ENABLE
/// reads fast strings off, and Linux's memmove then corrupts memory (shared/emulators.md), so a guest
/// is not told about it.
const LEAF7_EDX_FSRM: u32 = 1 << 4;

/// The guest's CPUID result for (`leaf`, `subleaf`) given the host's.
pub fn guest_cpuid(leaf: u32, subleaf: u32, host: [u32; 4]) -> [u32; 4] {
    let [eax, ebx, ecx, edx] = host;
    match (leaf, subleaf) {
        (1, _) => [
            eax,
            ebx,
            (ecx & !(LEAF1_ECX_VMX | LEAF1_ECX_SMX)) | LEAF1_ECX_HYPERVISOR,
            edx,
        ],
        (7, 0) => [eax, ebx, ecx, edx & !LEAF7_EDX_FSRM],
        (CPUID_VENDOR_LEAF, _) => {
            let word = |i: usize| u32::from_le_bytes(CPUID_SIGNATURE[i..i + 4].try_into().unwrap());
            [CPUID_VENDOR_LEAF, word(0), word(4), word(8)]
        }
        // The rest of the hypervisor range is defined empty.
        (0x4000_0001..=0x4000_00FF, _) => [0; 4],
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vmx_is_hidden_and_the_hypervisor_bit_set() {
        // Bochs tigerlake leaf 1 ECX (shared/emulators.md).
        let [_, _, ecx, _] = guest_cpuid(1, 0, [0, 0, 0x77FA_F3BF, 0]);
        assert_eq!(ecx & LEAF1_ECX_VMX, 0);
        assert_ne!(ecx & LEAF1_ECX_HYPERVISOR, 0);
        assert_eq!(ecx & (1 << 21), 1 << 21, "x2APIC stays");
    }

    #[test]
    fn signature_reads_exitless() {
        let r = guest_cpuid(CPUID_VENDOR_LEAF, 0, [0; 4]);
        let mut bytes = [0u8; 12];
        bytes[..4].copy_from_slice(&r[1].to_le_bytes());
        bytes[4..8].copy_from_slice(&r[2].to_le_bytes());
        bytes[8..].copy_from_slice(&r[3].to_le_bytes());
        assert_eq!(&bytes, &CPUID_SIGNATURE);
        assert_eq!(guest_cpuid(0x4000_0001, 0, [7; 4]), [0; 4]);
    }

    #[test]
    fn fsrm_is_hidden_and_other_leaves_pass() {
        assert_eq!(guest_cpuid(7, 0, [1, 2, 3, 0x1F])[3], 0x0F);
        assert_eq!(guest_cpuid(0xD, 1, [1, 2, 3, 4]), [1, 2, 3, 4]);
    }
}
