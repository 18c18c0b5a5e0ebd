//! VT-d remapping-unit capabilities: the Capability (CAP, offset 0x8) and Extended Capability
//! (ECAP, offset 0x10) registers, Intel VT-d specification rev. 3.x/4.x, sections 11.4.2/11.4.3.

use core::fmt;

/// Bits `lo..=hi` of `v`.
const fn field(v: u64, lo: u32, hi: u32) -> u64 {
    (v >> lo) & ((1u64 << (hi - lo + 1)) - 1)
}

const fn bit(v: u64, n: u32) -> bool {
    (v >> n) & 1 != 0
}

/// A second-level page-table geometry a unit may support (CAP.SAGAW, VT-d 11.4.2). The SAGAW bit
/// index equals the context-entry AW encoding (VT-d 9.4): 1 = 39-bit/3-level, 2 = 48-bit/4-level,
/// 3 = 57-bit/5-level.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum AddressWidth {
    Bits39Level3 = 1,
    Bits48Level4 = 2,
    Bits57Level5 = 3,
}

impl AddressWidth {
    pub const ALL: [AddressWidth; 3] = [Self::Bits39Level3, Self::Bits48Level4, Self::Bits57Level5];

    /// Address bits this geometry translates.
    pub fn bits(self) -> u8 {
        30 + 9 * self as u8
    }
    /// Page-table levels.
    pub fn levels(self) -> u8 {
        2 + self as u8
    }
    /// The value of the context entry's AW field (and the SAGAW bit index).
    pub fn aw_encoding(self) -> u8 {
        self as u8
    }
}

/// Second-level large pages (CAP.SLLPS).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LargePages {
    pub size_2m: bool,
    pub size_1g: bool,
}

/// The Capability register (VT-d 11.4.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VtdCap(pub u64);

impl VtdCap {
    /// ND[2:0]: number of domain ids, 2^(4 + 2*ND).
    pub fn domains(self) -> u32 {
        1 << (4 + 2 * field(self.0, 0, 2))
    }
    /// AFL[3]: advanced fault logging.
    pub fn afl(self) -> bool {
        bit(self.0, 3)
    }
    /// RWBF[4]: the write buffer must be flushed after table updates.
    pub fn rwbf(self) -> bool {
        bit(self.0, 4)
    }
    /// PLMR[5]: protected low-memory region.
    pub fn plmr(self) -> bool {
        bit(self.0, 5)
    }
    /// PHMR[6]: protected high-memory region.
    pub fn phmr(self) -> bool {
        bit(self.0, 6)
    }
    /// CM[7]: caching mode, not-present entries may be cached (invalidate after every change).
    pub fn caching_mode(self) -> bool {
        bit(self.0, 7)
    }
    /// SAGAW[12:8], raw.
    pub fn sagaw(self) -> u8 {
        field(self.0, 8, 12) as u8
    }
    pub fn supports(self, width: AddressWidth) -> bool {
        self.sagaw() & (1 << width as u8) != 0
    }
    pub fn supported_widths(self) -> impl Iterator<Item = AddressWidth> {
        AddressWidth::ALL
            .into_iter()
            .filter(move |w| self.supports(*w))
    }
    /// MGAW[21:16] + 1: maximum guest address width.
    pub fn mgaw(self) -> u8 {
        field(self.0, 16, 21) as u8 + 1
    }
    /// ZLR[22]: zero-length reads.
    pub fn zlr(self) -> bool {
        bit(self.0, 22)
    }
    /// FRO[33:24] x 16: offset of the first fault-recording register.
    pub fn fault_recording_offset(self) -> u32 {
        field(self.0, 24, 33) as u32 * 16
    }
    /// SLLPS[37:34]: bit 34 = 2 MiB, bit 35 = 1 GiB.
    pub fn large_pages(self) -> LargePages {
        LargePages {
            size_2m: bit(self.0, 34),
            size_1g: bit(self.0, 35),
        }
    }
    /// PSI[39]: page-selective invalidation.
    pub fn psi(self) -> bool {
        bit(self.0, 39)
    }
    /// NFR[47:40] + 1: number of fault-recording registers.
    pub fn fault_recording_registers(self) -> u16 {
        field(self.0, 40, 47) as u16 + 1
    }
    /// MAMV[53:48]: maximum address mask value for page-selective invalidation.
    pub fn mamv(self) -> u8 {
        field(self.0, 48, 53) as u8
    }
    /// DWD[54]: write draining.
    pub fn dwd(self) -> bool {
        bit(self.0, 54)
    }
    /// DRD[55]: read draining.
    pub fn drd(self) -> bool {
        bit(self.0, 55)
    }
    /// FL1GP[56]: first-level 1 GiB pages.
    pub fn fl1gp(self) -> bool {
        bit(self.0, 56)
    }
    /// PI[59]: posted interrupts.
    pub fn posted_interrupts(self) -> bool {
        bit(self.0, 59)
    }
    /// FL5LP[60]: first-level 5-level paging.
    pub fn fl5lp(self) -> bool {
        bit(self.0, 60)
    }

    /// The page-table geometry for a domain whose guest-physical space is `guest_bits` wide:
    /// the fewest levels the unit supports that cover the width (fewer levels, shorter walks).
    /// `None` when no supported geometry covers it or it exceeds MGAW.
    pub fn choose_address_width(self, guest_bits: u8) -> Option<AddressWidth> {
        if guest_bits > self.mgaw() {
            return None;
        }
        self.supported_widths().find(|w| w.bits() >= guest_bits)
    }
}

/// The Extended Capability register (VT-d 11.4.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VtdEcap(pub u64);

impl VtdEcap {
    /// C[0]: page walks are coherent (no cache flush needed after table writes).
    pub fn coherent(self) -> bool {
        bit(self.0, 0)
    }
    /// QI[1]: queued invalidation.
    pub fn queued_invalidation(self) -> bool {
        bit(self.0, 1)
    }
    /// DT[2]: device-TLBs (ATS).
    pub fn device_tlb(self) -> bool {
        bit(self.0, 2)
    }
    /// IR[3]: interrupt remapping.
    pub fn interrupt_remapping(self) -> bool {
        bit(self.0, 3)
    }
    /// EIM[4]: extended interrupt mode (32-bit x2APIC destination ids).
    pub fn eim(self) -> bool {
        bit(self.0, 4)
    }
    /// PT[6]: pass-through translation type.
    pub fn pass_through(self) -> bool {
        bit(self.0, 6)
    }
    /// SC[7]: snoop control.
    pub fn snoop_control(self) -> bool {
        bit(self.0, 7)
    }
    /// IRO[17:8] x 16: offset of the IOTLB registers (IVA at +0, IOTLB at +8).
    pub fn iotlb_offset(self) -> u32 {
        field(self.0, 8, 17) as u32 * 16
    }
    /// MHMV[23:20]: maximum handle mask value for interrupt-entry-cache invalidation.
    pub fn mhmv(self) -> u8 {
        field(self.0, 20, 23) as u8
    }
    /// MTS[25]: memory-type support.
    pub fn memory_type(self) -> bool {
        bit(self.0, 25)
    }
    /// NEST[26]: nested translation.
    pub fn nested(self) -> bool {
        bit(self.0, 26)
    }
    /// PRS[29]: page requests.
    pub fn page_requests(self) -> bool {
        bit(self.0, 29)
    }
    /// PSS[39:35] + 1: PASID bits (meaningful when PASID is set).
    pub fn pasid_bits(self) -> u8 {
        field(self.0, 35, 39) as u8 + 1
    }
    /// PASID[40].
    pub fn pasid(self) -> bool {
        bit(self.0, 40)
    }
    /// SMTS[43]: scalable-mode translation.
    pub fn scalable_mode(self) -> bool {
        bit(self.0, 43)
    }
    /// SLADS[45]: second-level accessed/dirty.
    pub fn second_level_ad(self) -> bool {
        bit(self.0, 45)
    }
    /// SLTS[46]: second-level translation in scalable mode.
    pub fn second_level_translation(self) -> bool {
        bit(self.0, 46)
    }
    /// FLTS[47]: first-level translation in scalable mode.
    pub fn first_level_translation(self) -> bool {
        bit(self.0, 47)
    }
}

/// The Version register (offset 0): major [7:4], minor [3:0].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VtdVersion(pub u32);

impl VtdVersion {
    pub fn major(self) -> u8 {
        ((self.0 >> 4) & 0xf) as u8
    }
    pub fn minor(self) -> u8 {
        (self.0 & 0xf) as u8
    }
}

/// `39,48` style list of the supported widths, or `none`.
pub struct SagawList(pub VtdCap);

impl fmt::Display for SagawList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut any = false;
        for w in self.0.supported_widths() {
            write!(f, "{}{}", if any { "," } else { "" }, w.bits())?;
            any = true;
        }
        if !any {
            f.write_str("none")?;
        }
        Ok(())
    }
}

impl fmt::Display for LargePages {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.size_2m, self.size_1g) {
            (true, true) => f.write_str("2m,1g"),
            (true, false) => f.write_str("2m"),
            (false, true) => f.write_str("1g"),
            (false, false) => f.write_str("none"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    /// QEMU 7.2 `intel-iommu,intremap=on` (emulators.md).
    const QEMU_CAP: VtdCap = VtdCap(0x00d2_008c_2226_0206);
    const QEMU_ECAP: VtdEcap = VtdEcap(0x00f0_0f4a);

    /// Worked out by hand from CAP = 0x00d2008c_22260206 (VT-d 11.4.2):
    /// [2:0]=6 -> 2^16 domains; [7:3]=0 -> no AFL/RWBF/PLMR/PHMR/CM; [12:8]=0b00010 -> 39-bit only;
    /// [21:16]=0x26 -> MGAW 39; [22]=0 no ZLR; [33:24]=0x022 -> FRO 0x220; [37:34]=0b0011 -> 2M+1G;
    /// [39]=1 PSI; [47:40]=0 -> 1 fault register; [53:48]=0x12 MAMV 18; [54]=[55]=1 DWD/DRD;
    /// [56]=0 FL1GP; [59]=0 no PI.
    #[test]
    fn qemu_cap() {
        let c = QEMU_CAP;
        assert_eq!(c.domains(), 65536);
        assert!(!c.afl() && !c.rwbf() && !c.plmr() && !c.phmr() && !c.caching_mode());
        assert_eq!(c.sagaw(), 0b00010);
        assert!(c.supports(AddressWidth::Bits39Level3));
        assert!(!c.supports(AddressWidth::Bits48Level4) && !c.supports(AddressWidth::Bits57Level5));
        assert_eq!(c.mgaw(), 39);
        assert!(!c.zlr());
        assert_eq!(c.fault_recording_offset(), 0x220);
        assert_eq!(
            c.large_pages(),
            LargePages {
                size_2m: true,
                size_1g: true
            }
        );
        assert!(c.psi());
        assert_eq!(c.fault_recording_registers(), 1);
        assert_eq!(c.mamv(), 18);
        assert!(c.dwd() && c.drd());
        assert!(!c.fl1gp() && !c.posted_interrupts() && !c.fl5lp());
        assert_eq!(SagawList(c).to_string(), "39");
        assert_eq!(c.large_pages().to_string(), "2m,1g");
    }

    /// ECAP = 0xf00f4a (VT-d 11.4.3): [0]=0 not coherent, [1]=1 QI, [2]=0 DT, [3]=1 IR, [4]=0 EIM,
    /// [6]=1 PT, [7]=0 SC, [17:8]=0x00f -> IOTLB registers at 0xf0, [23:20]=0xf MHMV.
    #[test]
    fn qemu_ecap() {
        let e = QEMU_ECAP;
        assert!(!e.coherent() && e.queued_invalidation() && !e.device_tlb());
        assert!(e.interrupt_remapping() && !e.eim() && e.pass_through() && !e.snoop_control());
        assert_eq!(e.iotlb_offset(), 0xf0);
        assert_eq!(e.mhmv(), 15);
        assert!(!e.nested() && !e.pasid() && !e.scalable_mode() && !e.second_level_translation());
    }

    #[test]
    fn address_width_choice() {
        // 39-bit only: a 36-bit or 39-bit guest fits in 3 levels; 40 bits exceeds MGAW 39.
        assert_eq!(
            QEMU_CAP.choose_address_width(36),
            Some(AddressWidth::Bits39Level3)
        );
        assert_eq!(
            QEMU_CAP.choose_address_width(39),
            Some(AddressWidth::Bits39Level3)
        );
        assert_eq!(QEMU_CAP.choose_address_width(40), None);
        // QEMU aw-bits=48: SAGAW 0b00110, MGAW 48 ([21:16] = 47 = 0x2f).
        let cap48 =
            VtdCap((QEMU_CAP.0 & !(0x3f << 16) & !(0x1f << 8)) | (0x2f << 16) | (0b00110 << 8));
        assert_eq!(cap48.mgaw(), 48);
        assert_eq!(SagawList(cap48).to_string(), "39,48");
        assert_eq!(
            cap48.choose_address_width(39),
            Some(AddressWidth::Bits39Level3)
        );
        assert_eq!(
            cap48.choose_address_width(40),
            Some(AddressWidth::Bits48Level4)
        );
        // A unit with 4-level tables only still serves a small guest.
        let only48 = VtdCap((cap48.0 & !(0x1f << 8)) | (0b00100 << 8));
        assert_eq!(
            only48.choose_address_width(32),
            Some(AddressWidth::Bits48Level4)
        );
        assert_eq!(AddressWidth::Bits48Level4.levels(), 4);
        assert_eq!(AddressWidth::Bits57Level5.bits(), 57);
        assert_eq!(AddressWidth::Bits39Level3.aw_encoding(), 1);
    }

    #[test]
    fn version_register() {
        assert_eq!((VtdVersion(0x10).major(), VtdVersion(0x10).minor()), (1, 0));
    }
}
