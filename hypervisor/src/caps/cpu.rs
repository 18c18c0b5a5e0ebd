//! CPUID decoding (SDM Vol. 2A, CPUID instruction): vendor, family/model/stepping and the feature
//! bits Exitless depends on. The decoder takes the CPUID function as an argument so tests can fake it.

use super::yes_no;
use core::fmt;

/// CPUID.1:ECX.VMX[bit 5].
const LEAF1_ECX_VMX: u32 = 1 << 5;
/// CPUID.1:ECX.x2APIC[bit 21].
const LEAF1_ECX_X2APIC: u32 = 1 << 21;
/// CPUID.1:ECX[bit 31]: "not used by Intel processors, always 0"; hypervisors set it for their guests.
const LEAF1_ECX_HYPERVISOR: u32 = 1 << 31;
/// CPUID.80000001H:EDX.Page1GB[bit 26].
const EXT1_EDX_PDPE1GB: u32 = 1 << 26;
/// MAXPHYADDR when CPUID.80000008H is absent (SDM Vol. 3A 4.1.4: 36 if leaf 80000008H is not supported).
const DEFAULT_PHYS_BITS: u8 = 36;

/// What CPUID says about this processor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuInfo {
    /// The 12-byte vendor string (`GenuineIntel`, `AuthenticAMD`, ...), leaf 0 EBX, EDX, ECX.
    pub vendor: [u8; 12],
    pub max_basic_leaf: u32,
    pub max_extended_leaf: u32,
    /// Display family: base family, plus the extended family when the base family is 0xF.
    pub family: u32,
    /// Display model: the extended model is prepended when the family is 0x6 or 0xF.
    pub model: u32,
    pub stepping: u32,
    pub vmx: bool,
    pub x2apic: bool,
    pub pdpe1gb: bool,
    pub hypervisor: bool,
    /// MAXPHYADDR, CPUID.80000008H:EAX[7:0].
    pub phys_addr_bits: u8,
    /// Linear address bits, CPUID.80000008H:EAX[15:8] (0 when the leaf is absent).
    pub linear_addr_bits: u8,
}

impl CpuInfo {
    /// Decodes CPUID through `cpuid(leaf, subleaf) -> [eax, ebx, ecx, edx]`. Leaves above the
    /// maximum the processor reports are never asked for (their contents are undefined).
    pub fn decode(cpuid: impl Fn(u32, u32) -> [u32; 4]) -> Self {
        let [max_basic_leaf, ebx, ecx, edx] = cpuid(0, 0);
        let mut vendor = [0u8; 12];
        vendor[0..4].copy_from_slice(&ebx.to_le_bytes());
        vendor[4..8].copy_from_slice(&edx.to_le_bytes());
        vendor[8..12].copy_from_slice(&ecx.to_le_bytes());

        let [eax1, _, ecx1, _] = if max_basic_leaf >= 1 {
            cpuid(1, 0)
        } else {
            [0; 4]
        };
        let (family, model, stepping) = family_model_stepping(eax1);

        let max_extended_leaf = cpuid(0x8000_0000, 0)[0];
        let has_ext = |leaf: u32| max_extended_leaf >= leaf && max_extended_leaf <= 0x8000_ffff;
        let pdpe1gb = has_ext(0x8000_0001) && cpuid(0x8000_0001, 0)[3] & EXT1_EDX_PDPE1GB != 0;
        let (phys_addr_bits, linear_addr_bits) = if has_ext(0x8000_0008) {
            let eax = cpuid(0x8000_0008, 0)[0];
            (eax as u8, (eax >> 8) as u8)
        } else {
            (DEFAULT_PHYS_BITS, 0)
        };

        Self {
            vendor,
            max_basic_leaf,
            max_extended_leaf,
            family,
            model,
            stepping,
            vmx: ecx1 & LEAF1_ECX_VMX != 0,
            x2apic: ecx1 & LEAF1_ECX_X2APIC != 0,
            pdpe1gb,
            hypervisor: ecx1 & LEAF1_ECX_HYPERVISOR != 0,
            phys_addr_bits,
            linear_addr_bits,
        }
    }

    /// Reads the running processor's CPUID.
    pub fn read() -> Self {
        Self::decode(read_cpuid)
    }

    /// The vendor string, or `unknown` when it is not printable ASCII.
    pub fn vendor_str(&self) -> &str {
        match core::str::from_utf8(&self.vendor) {
            Ok(s) if s.bytes().all(|b| b.is_ascii_graphic()) => s,
            _ => "unknown",
        }
    }

    pub fn write_summary(&self, out: &mut dyn fmt::Write) -> fmt::Result {
        writeln!(
            out,
            "summary: cpu vendor={} family={:#x} model={:#x} x2apic={} vmx={} pdpe1gb={} phys_bits={} hypervisor={} stepping={:#x}",
            self.vendor_str(),
            self.family,
            self.model,
            yes_no(self.x2apic),
            yes_no(self.vmx),
            yes_no(self.pdpe1gb),
            self.phys_addr_bits,
            yes_no(self.hypervisor),
            self.stepping,
        )
    }
}

/// SDM Vol. 2A, CPUID leaf 01H, "Version Information": EAX[3:0] stepping, [7:4] model,
/// [11:8] family, [19:16] extended model, [27:20] extended family.
fn family_model_stepping(eax: u32) -> (u32, u32, u32) {
    let stepping = eax & 0xf;
    let base_model = (eax >> 4) & 0xf;
    let base_family = (eax >> 8) & 0xf;
    let ext_model = (eax >> 16) & 0xf;
    let ext_family = (eax >> 20) & 0xff;
    let family = if base_family == 0xf {
        base_family + ext_family
    } else {
        base_family
    };
    let model = if base_family == 0x6 || base_family == 0xf {
        (ext_model << 4) | base_model
    } else {
        base_model
    };
    (family, model, stepping)
}

/// Executes CPUID on the running processor.
pub fn read_cpuid(leaf: u32, subleaf: u32) -> [u32; 4] {
    crate::arch::cpu::cpuid(leaf, subleaf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::String;

    /// Bochs 2.7 `tigerlake`: CPUID.1:ECX = 0x77FAF3BF measured (emulators.md). The other leaves
    /// are built by hand for a Tiger Lake: family 6 model 0x8C stepping 1 (EAX 0x000806C1),
    /// 1 GiB pages, 39 physical / 48 linear address bits.
    fn bochs_tigerlake(leaf: u32, _sub: u32) -> [u32; 4] {
        match leaf {
            0 => [
                0x1b,
                u32::from_le_bytes(*b"Genu"),
                u32::from_le_bytes(*b"ntel"),
                u32::from_le_bytes(*b"ineI"),
            ],
            1 => [0x0008_06c1, 0x0001_0800, 0x77fa_f3bf, 0xbfeb_fbff],
            0x8000_0000 => [0x8000_0008, 0, 0, 0],
            0x8000_0001 => [0, 0, 0x0000_0121, 0x2c10_0800],
            0x8000_0008 => [0x0000_3027, 0, 0, 0],
            _ => [0; 4],
        }
    }

    #[test]
    fn bochs_tigerlake_decodes() {
        let cpu = CpuInfo::decode(bochs_tigerlake);
        assert_eq!(cpu.vendor_str(), "GenuineIntel");
        assert_eq!((cpu.family, cpu.model, cpu.stepping), (6, 0x8c, 1));
        assert!(cpu.vmx && cpu.x2apic && cpu.pdpe1gb && !cpu.hypervisor);
        assert_eq!((cpu.phys_addr_bits, cpu.linear_addr_bits), (39, 48));
        let mut s = String::new();
        cpu.write_summary(&mut s).unwrap();
        assert_eq!(
            s,
            "summary: cpu vendor=GenuineIntel family=0x6 model=0x8c x2apic=yes vmx=yes pdpe1gb=yes phys_bits=39 hypervisor=no stepping=0x1\n"
        );
    }

    /// QEMU TCG `-cpu max` reports an AMD CPU without VMX (emulators.md). EAX 0x00A00F11:
    /// base family 0xF + extended family 0xA = 0x19, model = 0x0 << 4 | 0x1.
    #[test]
    fn amd_extended_family_and_no_vmx() {
        let cpu = CpuInfo::decode(|leaf, _| match leaf {
            0 => [
                0xd,
                u32::from_le_bytes(*b"Auth"),
                u32::from_le_bytes(*b"cAMD"),
                u32::from_le_bytes(*b"enti"),
            ],
            1 => [0x00a0_0f11, 0, 0x8000_0000, 0],
            0x8000_0000 => [0x8000_0001, 0, 0, 0],
            0x8000_0001 => [0, 0, 0, 0],
            _ => panic!("leaf {leaf:#x} is above the reported maximum"),
        });
        assert_eq!(cpu.vendor_str(), "AuthenticAMD");
        assert_eq!((cpu.family, cpu.model, cpu.stepping), (0x19, 0x01, 1));
        assert!(!cpu.vmx && !cpu.x2apic && !cpu.pdpe1gb && cpu.hypervisor);
        // No leaf 80000008H: the architectural default of 36 bits.
        assert_eq!(cpu.phys_addr_bits, 36);
    }

    #[test]
    fn family_model_rules() {
        // Family 6: extended model counts; family 5 (Pentium): it does not.
        assert_eq!(family_model_stepping(0x0005_0654), (6, 0x55, 4));
        assert_eq!(family_model_stepping(0x0001_0543), (5, 0x4, 3));
    }

    #[test]
    fn reads_the_host_cpu() {
        let cpu = CpuInfo::read();
        assert!(cpu.max_basic_leaf >= 1);
        assert_ne!(cpu.vendor_str(), "unknown");
    }
}
