//! The fixed places of the virtual platform a Linux guest is described (guest ACPI tables) and
//! emulated: one table lists them so the tables, the boot protocol and the exit handlers agree.

/// Guest ACPI tables, RSDP first: in the BIOS area 0xE0000-0xFFFFF, reserved in the e820 map, where
/// ACPI 5.2.5.1 also lets an OS find the RSDP by scanning.
pub const ACPI_TABLES_GPA: u64 = 0xE_0000;
pub const ACPI_TABLES_MAX_LEN: u64 = 0x2_0000;

/// The guest's IOAPIC (MADT), its ID, and its pin count.
pub const IOAPIC_GPA: u64 = 0xFEC0_0000;
pub const IOAPIC_ID: u8 = 0;
/// The guest's local APIC in xAPIC mode (MADT's Local Interrupt Controller Address); guests run it in
/// x2APIC mode.
pub const LAPIC_GPA: u64 = 0xFEE0_0000;

/// COM1, a 16550, on ISA IRQ 4 (IOAPIC pin 4, edge, active high).
pub const COM1_PORT: u16 = 0x3F8;
pub const COM1_GSI: u8 = 4;

/// ACPI hardware-reduced sleep registers (FADT SLEEP_CONTROL_REG/SLEEP_STATUS_REG, ACPI 4.8.3.7): a
/// write of SLP_EN with SLP_TYP = [`S5_SLEEP_TYPE`] powers the guest off.
pub const SLEEP_CONTROL_PORT: u16 = 0x600;
pub const SLEEP_STATUS_PORT: u16 = 0x601;
/// SLP_TYP for S5 (the DSDT's `\_S5` package), in SLEEP_CONTROL bits 4:2; SLP_EN is bit 5.
pub const S5_SLEEP_TYPE: u8 = 5;
pub const SLEEP_CONTROL_SLP_EN: u8 = 1 << 5;
/// FADT RESET_REG (ACPI 4.8.3.6): writing [`RESET_VALUE`] here resets (ends) the guest. Not 0xCF9,
/// which sits inside the PCI configuration ports.
pub const RESET_PORT: u16 = 0x604;
pub const RESET_VALUE: u8 = 1;
