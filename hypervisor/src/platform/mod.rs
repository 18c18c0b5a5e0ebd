//! Platform discovery: interrupt controllers, PCI configuration regions and IOMMUs, from ACPI
//! (MADT, MCFG, DMAR) where the firmware publishes it and from architectural defaults checked
//! against the hardware where it does not.
//!
//! The kernel calls [`Platform::discover`] once on the BSP and prints [`Platform::write_summary`].
//! Discovery never panics: a malformed table is reported in the summary and discovery goes on
//! with what it can trust.

pub mod acpi_tables;
pub mod apic;
pub mod dmar;
pub mod fallback;
pub mod probe;

use crate::caps::vtd::{SagawList, VtdCap, VtdEcap, VtdVersion};
use crate::caps::yes_no;
use acpi_tables::{AcpiFindings, AcpiProblem};
use alloc::vec::Vec;
use apic::{ApicBaseMsr, IoApicVersion, Polarity, Trigger, IOAPIC_REG_VERSION};
use core::fmt;
use dmar::{Dmar, DmarError, Drhd};
pub use probe::{DrhdRegisters, HardwareProbe, PlatformProbe};

/// A processor's local APIC as the MADT lists it (type 0, or type 9 for x2APIC ids).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LocalApic {
    pub apic_id: u32,
    pub processor_uid: u32,
    /// Flags bit 0: usable now.
    pub enabled: bool,
    /// Flags bit 1: may be brought online later.
    pub online_capable: bool,
}

/// Where an IOAPIC's description came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoApicSource {
    Madt,
    /// No ACPI: the conventional address, confirmed through the version register.
    DefaultProbed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IoApic {
    pub id: u8,
    pub address: u64,
    pub gsi_base: u32,
    /// The version register as read; `None` when it read as absent (all ones or zero).
    pub version: Option<IoApicVersion>,
    pub source: IoApicSource,
}

impl IoApic {
    /// Redirection entries; 0 when the version register did not answer.
    pub fn pins(&self) -> u16 {
        self.version.map_or(0, |v| v.pins())
    }
}

/// A MADT interrupt source override (type 2): ISA IRQ `bus_irq` arrives on `gsi`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IrqOverride {
    pub bus: u8,
    pub bus_irq: u8,
    pub gsi: u32,
    pub polarity: Polarity,
    pub trigger: Trigger,
}

/// A GSI wired to NMI (MADT type 3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NmiSource {
    pub gsi: u32,
    pub polarity: Polarity,
    pub trigger: Trigger,
}

/// A local APIC LINT pin wired to NMI (MADT types 4 and 0xA).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LapicNmi {
    /// ACPI processor UID; `u32::MAX` means every processor.
    pub processor_uid: u32,
    pub lint: u8,
    pub polarity: Polarity,
    pub trigger: Trigger,
}

/// An ECAM region (MCFG entry, PCI Firmware spec 4.1.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct McfgRegion {
    pub segment: u16,
    /// Physical address of bus 0's configuration space in this segment.
    pub base: u64,
    pub bus_start: u8,
    pub bus_end: u8,
}

/// Where the ACPI facts came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AcpiStatus {
    /// No RSDP was handed over.
    None,
    /// The RSDP or root table was unusable: architectural defaults are used instead.
    Unusable(AcpiProblem),
    /// Tables were read; `findings.problems` lists the ones left out.
    Read(AcpiFindings),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LapicSource {
    Madt,
    Ia32ApicBase,
}

/// The local APIC of the bootstrap processor and the processors the platform lists.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LapicInfo {
    pub base: u64,
    pub source: LapicSource,
    /// IA32_APIC_BASE as read on the BSP.
    pub apic_base_msr: ApicBaseMsr,
    /// The BSP's APIC id (read on the BSP, where discovery runs).
    pub bsp_id: u32,
    /// The MADT's processors, or only the BSP when there is no MADT.
    pub cpus: Vec<LocalApic>,
}

impl LapicInfo {
    pub fn enabled_cpus(&self) -> impl Iterator<Item = &LocalApic> {
        self.cpus.iter().filter(|c| c.enabled)
    }
}

/// The DMAR, as far as it could be read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DmarStatus {
    /// No ACPI, or no DMAR table: no IOMMU is known.
    Absent,
    Malformed(DmarError),
    Present(Dmar),
}

/// One VT-d remapping unit: its DRHD and the capability registers read from it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IommuUnit {
    pub drhd: Drhd,
    pub version: VtdVersion,
    pub cap: VtdCap,
    pub ecap: VtdEcap,
}

/// Everything discovered about the platform.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Platform {
    pub acpi: AcpiStatus,
    pub lapic: LapicInfo,
    pub ioapics: Vec<IoApic>,
    /// A default IOAPIC was probed for and did not answer.
    pub ioapic_probe_failed: bool,
    pub irq_overrides: Vec<IrqOverride>,
    pub nmi_sources: Vec<NmiSource>,
    pub lapic_nmis: Vec<LapicNmi>,
    /// MADT PCAT_COMPAT: 8259 PICs are present (assumed without ACPI).
    pub pcat_compat: bool,
    /// ECAM regions; empty means legacy 0xCF8/0xCFC configuration access.
    pub mcfg: Vec<McfgRegion>,
    pub dmar: DmarStatus,
    /// One per DRHD, in DMAR order.
    pub iommus: Vec<IommuUnit>,
}

impl Platform {
    /// Discovers the platform on the running machine.
    ///
    /// # Safety
    /// As [`HardwareProbe::new`] and [`acpi_tables::read`]: CPL 0 on the BSP, all physical memory
    /// identity-mapped, `rsdp` the RSDP address the firmware published (or `None`).
    pub unsafe fn discover(rsdp: Option<u64>) -> Platform {
        // SAFETY: the caller guarantees CPL 0 on the BSP (what `HardwareProbe::new` needs) and that
        // `rsdp` leads to identity-mapped readable tables (what `discover_with` needs).
        unsafe { Self::discover_with(rsdp, &HardwareProbe::new()) }
    }

    /// Discovers the platform with `probe` doing the hardware reads.
    ///
    /// # Safety
    /// `rsdp`, when given, points to ACPI tables in identity-mapped readable memory.
    pub unsafe fn discover_with(rsdp: Option<u64>, probe: &dyn PlatformProbe) -> Platform {
        let acpi = match rsdp {
            None => AcpiStatus::None,
            // SAFETY: the caller guarantees `address` leads to ACPI tables in identity-mapped
            // readable memory, which is what `acpi_tables::read` requires.
            Some(address) => match unsafe { acpi_tables::read(address) } {
                Ok(findings) => AcpiStatus::Read(findings),
                Err(problem) => AcpiStatus::Unusable(problem),
            },
        };
        let apic_base_msr = ApicBaseMsr(probe.read_apic_base_msr());
        let bsp_id = probe.current_apic_id();
        let (madt, mcfg, dmar_bytes) = match &acpi {
            AcpiStatus::Read(f) => (f.madt.clone(), f.mcfg.clone(), f.dmar.clone()),
            _ => (None, None, None),
        };

        let mut platform = Platform {
            acpi,
            lapic: LapicInfo {
                base: fallback::lapic_base(apic_base_msr),
                source: LapicSource::Ia32ApicBase,
                apic_base_msr,
                bsp_id,
                cpus: alloc::vec![LocalApic {
                    apic_id: bsp_id,
                    processor_uid: 0,
                    enabled: true,
                    online_capable: false,
                }],
            },
            ioapics: Vec::new(),
            ioapic_probe_failed: false,
            irq_overrides: Vec::new(),
            nmi_sources: Vec::new(),
            lapic_nmis: Vec::new(),
            pcat_compat: true,
            mcfg: mcfg.unwrap_or_default(),
            dmar: DmarStatus::Absent,
            iommus: Vec::new(),
        };

        match madt {
            Some(m) => {
                platform.lapic.base = m.lapic_base;
                platform.lapic.source = LapicSource::Madt;
                platform.lapic.cpus = m.cpus;
                platform.ioapics = m.ioapics;
                for io in &mut platform.ioapics {
                    let v = IoApicVersion(probe.read_ioapic_reg(io.address, IOAPIC_REG_VERSION));
                    io.version = v.looks_present().then_some(v);
                }
                platform.irq_overrides = m.overrides;
                platform.nmi_sources = m.nmi_sources;
                platform.lapic_nmis = m.lapic_nmis;
                platform.pcat_compat = m.pcat_compat;
            }
            None => match fallback::probe_default_ioapic(probe) {
                Some(io) => platform.ioapics.push(io),
                None => platform.ioapic_probe_failed = true,
            },
        }

        if let Some(bytes) = dmar_bytes {
            match dmar::parse(&bytes) {
                Ok(d) => {
                    platform.iommus = d
                        .drhds
                        .iter()
                        .map(|drhd| {
                            let regs = probe.read_drhd_regs(drhd.register_base);
                            IommuUnit {
                                drhd: drhd.clone(),
                                version: VtdVersion(regs.version),
                                cap: VtdCap(regs.cap),
                                ecap: VtdEcap(regs.ecap),
                            }
                        })
                        .collect();
                    platform.dmar = DmarStatus::Present(d);
                }
                Err(e) => platform.dmar = DmarStatus::Malformed(e),
            }
        }
        platform
    }

    /// The boot-summary lines (`summary: acpi|lapic|ioapic|irq_override|nmi|mcfg|iommu|drhd|rmrr ...`).
    pub fn write_summary(&self, out: &mut dyn fmt::Write) -> fmt::Result {
        self.write_acpi(out)?;
        self.write_interrupt_controllers(out)?;
        self.write_mcfg(out)?;
        self.write_iommus(out)
    }

    fn write_acpi(&self, out: &mut dyn fmt::Write) -> fmt::Result {
        match &self.acpi {
            AcpiStatus::None => writeln!(
                out,
                "summary: acpi source=none fallback=architectural-defaults"
            ),
            AcpiStatus::Unusable(p) => {
                writeln!(
                    out,
                    "summary: acpi source=rsdp error={p} fallback=architectural-defaults"
                )
            }
            AcpiStatus::Read(f) => {
                write!(
                    out,
                    "summary: acpi source=rsdp revision={} oem=",
                    f.revision
                )?;
                write_token(out, f.oem_id.trim_ascii_end())?;
                out.write_str(" tables=")?;
                for (i, sig) in f.tables.iter().enumerate() {
                    if i > 0 {
                        out.write_char(',')?;
                    }
                    write_token(out, sig)?;
                }
                if f.tables.is_empty() {
                    out.write_str("none")?;
                }
                if !f.problems.is_empty() {
                    out.write_str(" error=")?;
                    for (i, p) in f.problems.iter().enumerate() {
                        write!(out, "{}{p}", if i > 0 { "," } else { "" })?;
                    }
                }
                if f.madt.is_none() {
                    out.write_str(" fallback=architectural-defaults")?;
                }
                writeln!(out)
            }
        }
    }

    fn write_interrupt_controllers(&self, out: &mut dyn fmt::Write) -> fmt::Result {
        let l = &self.lapic;
        let source = match l.source {
            LapicSource::Madt => "madt",
            LapicSource::Ia32ApicBase => "ia32_apic_base",
        };
        write!(
            out,
            "summary: lapic base={:#x} source={source} cpus={} bsp_id={} x2apic_enabled={} ids=",
            l.base,
            l.enabled_cpus().count(),
            l.bsp_id,
            yes_no(l.apic_base_msr.x2apic_enabled()),
        )?;
        for (i, c) in l.enabled_cpus().enumerate() {
            write!(out, "{}{}", if i > 0 { "," } else { "" }, c.apic_id)?;
        }
        writeln!(out)?;

        for io in &self.ioapics {
            let source = match io.source {
                IoApicSource::Madt => "madt",
                IoApicSource::DefaultProbed => "default-probed",
            };
            write!(
                out,
                "summary: ioapic id={} base={:#x} gsi_base={} pins={} ",
                io.id,
                io.address,
                io.gsi_base,
                io.pins()
            )?;
            match io.version {
                Some(v) => write!(out, "version={:#x}", v.version())?,
                None => out.write_str("version=absent")?,
            }
            writeln!(out, " source={source}")?;
        }
        if self.ioapic_probe_failed {
            writeln!(
                out,
                "summary: ioapic none=yes base={:#x} source=default-probed",
                apic::DEFAULT_IOAPIC_BASE
            )?;
        }
        for o in &self.irq_overrides {
            writeln!(
                out,
                "summary: irq_override bus_irq={} gsi={} polarity={} trigger={}",
                o.bus_irq, o.gsi, o.polarity, o.trigger
            )?;
        }
        for n in &self.nmi_sources {
            writeln!(
                out,
                "summary: nmi_source gsi={} polarity={} trigger={}",
                n.gsi, n.polarity, n.trigger
            )?;
        }
        for n in &self.lapic_nmis {
            out.write_str("summary: lapic_nmi uid=")?;
            if n.processor_uid == u32::MAX {
                out.write_str("all")?;
            } else {
                write!(out, "{}", n.processor_uid)?;
            }
            writeln!(
                out,
                " lint={} polarity={} trigger={}",
                n.lint, n.polarity, n.trigger
            )?;
        }
        Ok(())
    }

    fn write_mcfg(&self, out: &mut dyn fmt::Write) -> fmt::Result {
        if self.mcfg.is_empty() {
            return writeln!(out, "summary: mcfg none=yes pci_config=legacy-cf8");
        }
        for m in &self.mcfg {
            writeln!(
                out,
                "summary: mcfg segment={} base={:#x} buses={}-{}",
                m.segment, m.base, m.bus_start, m.bus_end
            )?;
        }
        Ok(())
    }

    fn write_iommus(&self, out: &mut dyn fmt::Write) -> fmt::Result {
        let d = match &self.dmar {
            DmarStatus::Absent => return writeln!(out, "summary: iommu units=0 source=no-dmar"),
            DmarStatus::Malformed(e) => {
                return writeln!(out, "summary: iommu units=0 source=dmar error={e}")
            }
            DmarStatus::Present(d) => d,
        };
        writeln!(
            out,
            "summary: iommu units={} source=dmar haw={} intr_remap={} x2apic_opt_out={} dma_ctrl_opt_in={}",
            self.iommus.len(),
            d.host_address_width,
            yes_no(d.flags.contains(dmar::DmarFlags::INTR_REMAP)),
            yes_no(d.flags.contains(dmar::DmarFlags::X2APIC_OPT_OUT)),
            yes_no(d.flags.contains(dmar::DmarFlags::DMA_CTRL_PLATFORM_OPT_IN)),
        )?;
        for (index, u) in self.iommus.iter().enumerate() {
            let (c, e) = (u.cap, u.ecap);
            write!(
                out,
                "summary: drhd index={index} base={:#x} segment={} include_all={} version={:#x} cap={:#x} ecap={:#x} \
                 sagaw={} fault_regs={} fro={:#x} iro={:#x} qi={} ir={} eim={} pi={} cm={} rwbf={} pt={} sllps={} \
                 scopes=",
                u.drhd.register_base,
                u.drhd.segment,
                yes_no(u.drhd.include_pci_all()),
                u.version.0,
                c.0,
                e.0,
                SagawList(c),
                c.fault_recording_registers(),
                c.fault_recording_offset(),
                e.iotlb_offset(),
                yes_no(e.queued_invalidation()),
                yes_no(e.interrupt_remapping()),
                yes_no(e.eim()),
                yes_no(c.posted_interrupts()),
                yes_no(c.caching_mode()),
                yes_no(c.rwbf()),
                yes_no(e.pass_through()),
                c.large_pages(),
            )?;
            write_scopes(out, &u.drhd.scopes)?;
            write!(
                out,
                " mgaw={} sc={} c={} psi={} domains={}",
                c.mgaw(),
                yes_no(e.snoop_control()),
                yes_no(e.coherent()),
                yes_no(c.psi()),
                c.domains(),
            )?;
            writeln!(out)?;
        }
        for r in &d.rmrrs {
            write!(
                out,
                "summary: rmrr base={:#x} limit={:#x} devices=",
                r.base, r.limit
            )?;
            write_scopes(out, &r.scopes)?;
            writeln!(out, " segment={}", r.segment)?;
        }
        Ok(())
    }
}

fn write_scopes(out: &mut dyn fmt::Write, scopes: &[dmar::DeviceScope]) -> fmt::Result {
    if scopes.is_empty() {
        return out.write_str("none");
    }
    for (i, s) in scopes.iter().enumerate() {
        write!(out, "{}{s}", if i > 0 { "," } else { "" })?;
    }
    Ok(())
}

/// Writes firmware bytes as one summary token: printable ASCII kept, anything else (spaces
/// included) as `_`.
fn write_token(out: &mut dyn fmt::Write, bytes: &[u8]) -> fmt::Result {
    if bytes.is_empty() {
        return out.write_str("none");
    }
    for &b in bytes {
        out.write_char(if b.is_ascii_graphic() { b as char } else { '_' })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
