//! Decoding of the guest instruction behind an MMIO EPT violation (mediated IOAPIC, MSI-X tables).
//!
//! An EPT violation reports the guest-physical address and whether the access was a read or a
//! write (SDM Vol. 3C 28.2.1, Table 28-7), but not the access size, the register or immediate
//! involved, nor the instruction length. This module decodes the plain moves that `readl`/`writel`/
//! `readq`/`writeq` and `read_volatile`/`write_volatile` compile to, in 64-bit mode only
//! (CS.L = 1): MOV 88/89/8A/8B/C6 /0/C7 /0 and MOVZX/MOVSX 0F B6/B7/BE/BF (SDM Vol. 2B "MOV",
//! "MOVZX", "MOVSX"). The address itself is not needed (the CPU reports it) but the memory operand
//! is still parsed fully, because its ModRM/SIB/displacement bytes make up the instruction length
//! (SDM Vol. 2A 2.1, 2.2.1).

use crate::vmx::exit::Gpr;

/// Architectural maximum instruction length (SDM Vol. 2A 2.1: "up to 15 bytes").
pub const MAX_INSTRUCTION_LEN: usize = 15;

/// Width of a memory access or register operand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Width {
    Byte,
    Word,
    Dword,
    Qword,
}

impl Width {
    pub const fn bytes(self) -> u8 {
        match self {
            Width::Byte => 1,
            Width::Word => 2,
            Width::Dword => 4,
            Width::Qword => 8,
        }
    }
    /// All-ones in the low `bytes()` bytes.
    pub const fn mask(self) -> u64 {
        match self {
            Width::Byte => 0xff,
            Width::Word => 0xffff,
            Width::Dword => 0xffff_ffff,
            Width::Qword => u64::MAX,
        }
    }
}

/// A register operand. `high_byte` selects bits 15:8 (AH, CH, DH, BH): SDM Vol. 2A 3.1.1.1
/// Table 3-1 — without any REX prefix the 8-bit register numbers 4-7 mean AH/CH/DH/BH (of
/// RAX/RCX/RDX/RBX); with a REX prefix they mean SPL/BPL/SIL/DIL (low byte of RSP/RBP/RSI/RDI).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Register {
    pub gpr: Gpr,
    pub high_byte: bool,
}

impl Register {
    const fn full(gpr: Gpr) -> Self {
        Register {
            gpr,
            high_byte: false,
        }
    }
}

/// How a load wider than the memory operand fills the destination (MOVZX / MOVSX).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Extend {
    /// Plain MOV: memory and destination have the same width.
    None,
    Zero,
    Sign,
}

/// Base of a memory operand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Base {
    Gpr(Gpr),
    /// RIP-relative: relative to the address of the next instruction (SDM Vol. 2A 2.2.1.6).
    Rip,
}

/// The memory operand as encoded; kept for diagnostics, the access uses the CPU-reported address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemOperand {
    pub base: Option<Base>,
    pub index: Option<Gpr>,
    /// 1, 2, 4 or 8.
    pub scale: u8,
    /// Sign-extended to the address size (SDM Vol. 2A 2.2.1.3).
    pub disp: i32,
    /// 0x67 prefix: 32-bit registers and a 32-bit wrapped address (SDM Vol. 2A 2.2.1.3).
    pub address_32: bool,
}

/// A guest load from MMIO into a register.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Load {
    /// Bytes read from MMIO.
    pub size: Width,
    pub dest: Register,
    /// Width of the destination register; differs from `size` only for MOVZX/MOVSX.
    pub dest_size: Width,
    pub extend: Extend,
}

impl Load {
    /// A 32-bit destination clears bits 63:32 (SDM Vol. 1 3.4.1.1).
    pub const fn zero_extends_to_64(&self) -> bool {
        matches!(self.dest_size, Width::Dword)
    }
}

/// The value a store writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteValue {
    /// The low `size` bytes of a register (or AH/CH/DH/BH).
    Register(Register),
    /// The immediate, already sign-extended to the store width (imm32 for 64-bit stores).
    Immediate(u64),
}

/// A guest store to MMIO.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Store {
    pub size: Width,
    pub value: WriteValue,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MmioAccess {
    Read(Load),
    Write(Store),
}

impl MmioAccess {
    /// Bytes transferred to or from MMIO.
    pub const fn size(&self) -> Width {
        match self {
            MmioAccess::Read(load) => load.size,
            MmioAccess::Write(store) => store.size,
        }
    }
    pub const fn is_write(&self) -> bool {
        matches!(self, MmioAccess::Write(_))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decoded {
    pub access: MmioAccess,
    pub memory: MemOperand,
    /// Instruction length in bytes: add to RIP to skip the instruction.
    pub length: u8,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// The bytes end before the instruction does.
    Truncated,
    /// The instruction would exceed 15 bytes (#GP on hardware, SDM Vol. 2A 2.1).
    TooLong,
    /// An opcode (0x0Fxx for two-byte opcodes) or /digit form that is not a supported move.
    UnsupportedOpcode(u16),
    /// LOCK (F0) is #UD with MOV (SDM Vol. 2B "LOCK").
    LockPrefix,
    /// REP/REPNE (F3/F2; XACQUIRE/XRELEASE with MOV).
    UnsupportedPrefix(u8),
    /// ModRM.mod = 11: the r/m operand is a register, so this cannot be the MMIO access.
    RegisterOperand,
}

/// The new value of a load's destination register: 8/16-bit destinations merge into the old
/// value (bits 15:8 for AH..BH), 32-bit ones zero-extend to 64 bits, 64-bit ones replace it
/// (SDM Vol. 1 3.4.1.1). `data` is what MMIO returned; bits above `load.size` are ignored.
pub fn apply_read(old: u64, load: &Load, data: u64) -> u64 {
    let data = data & load.size.mask();
    let value = match load.extend {
        Extend::None | Extend::Zero => data,
        Extend::Sign => {
            let shift = 64 - 8 * u32::from(load.size.bytes());
            (((data << shift) as i64) >> shift) as u64
        }
    };
    if load.dest.high_byte {
        return (old & !0xff00) | ((value & 0xff) << 8);
    }
    match load.dest_size {
        Width::Byte | Width::Word => {
            (old & !load.dest_size.mask()) | (value & load.dest_size.mask())
        }
        Width::Dword => value & Width::Dword.mask(),
        Width::Qword => value,
    }
}

/// The value a store writes, in the low `store.size` bytes; `reg` gives a register's 64-bit value.
pub fn write_data(store: &Store, reg: impl Fn(Gpr) -> u64) -> u64 {
    let value = match store.value {
        WriteValue::Register(r) if r.high_byte => reg(r.gpr) >> 8,
        WriteValue::Register(r) => reg(r.gpr),
        WriteValue::Immediate(imm) => imm,
    };
    value & store.size.mask()
}

/// Decodes the instruction at the start of `bytes` (at most the first 15 bytes are looked at).
pub fn decode(bytes: &[u8]) -> Result<Decoded, DecodeError> {
    let mut cur = Cursor { bytes, pos: 0 };
    let mut operand_size_override = false;
    let mut address_size_override = false;
    let mut rex = Rex(0);

    // Legacy prefixes, then at most one REX right before the opcode; a REX followed by another
    // prefix is ignored (SDM Vol. 2A 2.2.1, "REX prefixes ... other placements are ignored").
    let opcode = loop {
        let byte = cur.next()?;
        match byte {
            0x66 => operand_size_override = true,
            // Address-size override: 32-bit addressing uses the same ModRM/SIB/displacement
            // layout in 64-bit mode (SDM Vol. 2A Table 2-7 footnote), so the length is unchanged.
            0x67 => address_size_override = true,
            // Segment overrides: ES, CS, SS, DS (null in 64-bit mode), FS, GS.
            0x26 | 0x2E | 0x36 | 0x3E | 0x64 | 0x65 => {}
            0xF0 => return Err(DecodeError::LockPrefix),
            0xF2 | 0xF3 => return Err(DecodeError::UnsupportedPrefix(byte)),
            0x40..=0x4F => {
                rex = Rex(byte);
                continue;
            }
            _ => break byte,
        }
        rex = Rex(0);
    };

    // Operand size for the 16/32/64-bit forms: REX.W wins over 66 (SDM Vol. 2A 2.2.1.2, Table 2-4).
    let wide = if rex.w() {
        Width::Qword
    } else if operand_size_override {
        Width::Word
    } else {
        Width::Dword
    };

    let (access, mut memory) = match opcode {
        0x88..=0x8B => {
            let modrm = cur.modrm(rex)?;
            let size = if opcode & 1 == 0 { Width::Byte } else { wide };
            let reg = register(modrm.reg, size, rex);
            let access = if opcode & 2 == 0 {
                MmioAccess::Write(Store {
                    size,
                    value: WriteValue::Register(reg),
                })
            } else {
                MmioAccess::Read(Load {
                    size,
                    dest: reg,
                    dest_size: size,
                    extend: Extend::None,
                })
            };
            (access, modrm.memory)
        }
        0xC6 | 0xC7 => {
            let modrm = cur.modrm(rex)?;
            // Only /0 is MOV (C6 F8 / C7 F8 are XABORT / XBEGIN, register forms anyway).
            if modrm.reg & 7 != 0 {
                return Err(DecodeError::UnsupportedOpcode(u16::from(opcode)));
            }
            let (size, imm) = if opcode == 0xC6 {
                (Width::Byte, u64::from(cur.next()?))
            } else {
                match wide {
                    Width::Word => (wide, u64::from(u16::from_le_bytes(cur.array()?))),
                    // imm32, sign-extended to 64 bits under REX.W (SDM Vol. 2B "MOV", C7 /0 id).
                    _ => (
                        wide,
                        i32::from_le_bytes(cur.array()?) as i64 as u64 & wide.mask(),
                    ),
                }
            };
            let access = MmioAccess::Write(Store {
                size,
                value: WriteValue::Immediate(imm),
            });
            (access, modrm.memory)
        }
        0x0F => {
            let opcode2 = cur.next()?;
            let (size, extend) = match opcode2 {
                0xB6 => (Width::Byte, Extend::Zero),
                0xB7 => (Width::Word, Extend::Zero),
                0xBE => (Width::Byte, Extend::Sign),
                0xBF => (Width::Word, Extend::Sign),
                _ => return Err(DecodeError::UnsupportedOpcode(0x0F00 | u16::from(opcode2))),
            };
            let modrm = cur.modrm(rex)?;
            let access = MmioAccess::Read(Load {
                size,
                dest: register(modrm.reg, wide, rex),
                dest_size: wide,
                extend,
            });
            (access, modrm.memory)
        }
        _ => return Err(DecodeError::UnsupportedOpcode(u16::from(opcode))),
    };
    memory.address_32 = address_size_override;
    Ok(Decoded {
        access,
        memory,
        length: cur.pos as u8,
    })
}

/// The REX prefix 0100WRXB (SDM Vol. 2A 2.2.1.1, Table 2-4); `Rex(0)` means none present.
#[derive(Clone, Copy)]
struct Rex(u8);

impl Rex {
    const fn present(self) -> bool {
        self.0 != 0
    }
    const fn w(self) -> bool {
        self.0 & 8 != 0
    }
    /// REX.R extends ModRM.reg.
    const fn r(self) -> u8 {
        (self.0 >> 2 & 1) << 3
    }
    /// REX.X extends SIB.index.
    const fn x(self) -> u8 {
        (self.0 >> 1 & 1) << 3
    }
    /// REX.B extends ModRM.rm and SIB.base.
    const fn b(self) -> u8 {
        (self.0 & 1) << 3
    }
}

/// The register named by a (REX-extended) ModRM.reg field at `size`.
fn register(reg: u8, size: Width, rex: Rex) -> Register {
    if size == Width::Byte && !rex.present() && (4..8).contains(&reg) {
        Register {
            gpr: Gpr::from_bits(u64::from(reg - 4)),
            high_byte: true,
        }
    } else {
        Register::full(Gpr::from_bits(u64::from(reg)))
    }
}

struct ModRm {
    /// ModRM.reg with REX.R applied.
    reg: u8,
    memory: MemOperand,
}

struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Cursor<'_> {
    fn next(&mut self) -> Result<u8, DecodeError> {
        if self.pos >= MAX_INSTRUCTION_LEN {
            return Err(DecodeError::TooLong);
        }
        let byte = *self.bytes.get(self.pos).ok_or(DecodeError::Truncated)?;
        self.pos += 1;
        Ok(byte)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut out = [0; N];
        for byte in &mut out {
            *byte = self.next()?;
        }
        Ok(out)
    }

    /// ModRM, optional SIB and displacement, 64-bit addressing (SDM Vol. 2A 2.2.1.3-2.2.1.6,
    /// Tables 2-2, 2-3 and 2-5). mod 00 rm 101 is RIP + disp32; rm 100 brings a SIB byte, whose
    /// base 101 under mod 00 means "no base, disp32" and whose index 100 (without REX.X) means
    /// "no index". REX.B does not change either special case (Table 2-5 note).
    fn modrm(&mut self, rex: Rex) -> Result<ModRm, DecodeError> {
        let modrm = self.next()?;
        let md = modrm >> 6;
        let reg = (modrm >> 3 & 7) | rex.r();
        let rm = modrm & 7;
        if md == 3 {
            return Err(DecodeError::RegisterOperand);
        }
        let mut memory = MemOperand {
            base: None,
            index: None,
            scale: 1,
            disp: 0,
            address_32: false,
        };
        let mut disp32 = md == 2;
        if rm == 4 {
            let sib = self.next()?;
            memory.scale = 1 << (sib >> 6);
            let index = (sib >> 3 & 7) | rex.x();
            if index != 4 {
                memory.index = Some(Gpr::from_bits(u64::from(index)));
            }
            let base = sib & 7;
            if base == 5 && md == 0 {
                disp32 = true;
            } else {
                memory.base = Some(Base::Gpr(Gpr::from_bits(u64::from(base | rex.b()))));
            }
        } else if rm == 5 && md == 0 {
            memory.base = Some(Base::Rip);
            disp32 = true;
        } else {
            memory.base = Some(Base::Gpr(Gpr::from_bits(u64::from(rm | rex.b()))));
        }
        if disp32 {
            memory.disp = i32::from_le_bytes(self.array()?);
        } else if md == 1 {
            memory.disp = i32::from(self.next()? as i8);
        }
        Ok(ModRm { reg, memory })
    }
}

#[cfg(test)]
mod tests {
    //! Byte sequences worked out by hand from SDM Vol. 2A 2.1-2.2 (prefixes, REX, Tables 2-2/2-3
    //! for 32/64-bit ModRM and SIB), Vol. 2B "MOV" (88/89/8A/8B /r, C6 /0 ib, C7 /0 iw/id) and
    //! "MOVZX"/"MOVSX" (0F B6/B7/BE/BF /r); each also cross-checked with `objdump -b binary
    //! -m i386:x86-64 -D`.
    extern crate std;
    use super::*;
    use std::vec::Vec;

    fn reg(gpr: Gpr) -> Register {
        Register::full(gpr)
    }
    fn high(gpr: Gpr) -> Register {
        Register {
            gpr,
            high_byte: true,
        }
    }
    fn base(gpr: Gpr) -> MemOperand {
        based(gpr, 0)
    }
    fn based(gpr: Gpr, disp: i32) -> MemOperand {
        MemOperand {
            base: Some(Base::Gpr(gpr)),
            index: None,
            scale: 1,
            disp,
            address_32: false,
        }
    }
    fn store(size: Width, value: WriteValue) -> MmioAccess {
        MmioAccess::Write(Store { size, value })
    }
    fn store_reg(size: Width, r: Register) -> MmioAccess {
        store(size, WriteValue::Register(r))
    }
    fn load(size: Width, dest: Register) -> MmioAccess {
        MmioAccess::Read(Load {
            size,
            dest,
            dest_size: size,
            extend: Extend::None,
        })
    }
    fn load_ext(size: Width, dest: Register, dest_size: Width, extend: Extend) -> MmioAccess {
        MmioAccess::Read(Load {
            size,
            dest,
            dest_size,
            extend,
        })
    }

    /// (bytes, access, memory operand): every one a complete, valid instruction.
    fn vectors() -> Vec<(&'static [u8], MmioAccess, MemOperand)> {
        use Gpr::*;
        use Width::*;
        std::vec![
            // mov [rcx],eax: 89 /r, ModRM 00 000(eax) 001(rcx).
            (&[0x89, 0x01], store_reg(Dword, reg(Rax)), base(Rcx)),
            // mov [rcx+0x10],eax: ModRM 01 000 001, disp8 0x10.
            (
                &[0x89, 0x41, 0x10],
                store_reg(Dword, reg(Rax)),
                based(Rcx, 0x10)
            ),
            // mov [rcx-0x10],eax: disp8 0xf0 is sign-extended.
            (
                &[0x89, 0x41, 0xf0],
                store_reg(Dword, reg(Rax)),
                based(Rcx, -0x10)
            ),
            // mov [rcx+0x1000],edx: ModRM 10 010 001, disp32.
            (
                &[0x89, 0x91, 0x00, 0x10, 0x00, 0x00],
                store_reg(Dword, reg(Rdx)),
                based(Rcx, 0x1000),
            ),
            // mov eax,[rdx]: 8b /r, ModRM 00 000 010.
            (&[0x8b, 0x02], load(Dword, reg(Rax)), base(Rdx)),
            // mov [rdi],rax: REX.W 48, ModRM 00 000 111.
            (&[0x48, 0x89, 0x07], store_reg(Qword, reg(Rax)), base(Rdi)),
            // mov rax,[rdi]: REX.W 8b.
            (&[0x48, 0x8b, 0x07], load(Qword, reg(Rax)), base(Rdi)),
            // mov dword [rdi],0x12345678: c7 /0, ModRM 00 000 111, imm32 little-endian.
            (
                &[0xc7, 0x07, 0x78, 0x56, 0x34, 0x12],
                store(Dword, WriteValue::Immediate(0x1234_5678)),
                base(Rdi),
            ),
            // mov qword [rdi],-1: REX.W c7 /0 id, imm32 0xffffffff sign-extended to 64 bits.
            (
                &[0x48, 0xc7, 0x07, 0xff, 0xff, 0xff, 0xff],
                store(Qword, WriteValue::Immediate(u64::MAX)),
                base(Rdi),
            ),
            // mov word [rdi],0x1234: 66 c7 /0 iw (imm16 under the operand-size override).
            (
                &[0x66, 0xc7, 0x07, 0x34, 0x12],
                store(Word, WriteValue::Immediate(0x1234)),
                base(Rdi),
            ),
            // mov byte [rdi+0x4],0x80: c6 /0 ib, ModRM 01 000 111, disp8.
            (
                &[0xc6, 0x47, 0x04, 0x80],
                store(Byte, WriteValue::Immediate(0x80)),
                based(Rdi, 4),
            ),
            // mov [rax],cx: 66 89, ModRM 00 001 000.
            (&[0x66, 0x89, 0x08], store_reg(Word, reg(Rcx)), base(Rax)),
            // REX.W beats 66: mov [rax],rcx.
            (
                &[0x66, 0x48, 0x89, 0x08],
                store_reg(Qword, reg(Rcx)),
                base(Rax)
            ),
            // mov [rax],cl: 88 /r, ModRM 00 001 000.
            (&[0x88, 0x08], store_reg(Byte, reg(Rcx)), base(Rax)),
            // mov [rax],ch: 88, ModRM 00 101 000; reg 5 without REX is CH (Table 3-1).
            (&[0x88, 0x28], store_reg(Byte, high(Rcx)), base(Rax)),
            // mov [rax],bpl: 40 88 28; with any REX reg 5 is BPL.
            (&[0x40, 0x88, 0x28], store_reg(Byte, reg(Rbp)), base(Rax)),
            // mov ah,[rbx]: 8a, ModRM 00 100 011.
            (&[0x8a, 0x23], load(Byte, high(Rax)), base(Rbx)),
            // mov r9b,[rbx]: 44 8a 0b (REX.R, reg 001 → 1001).
            (&[0x44, 0x8a, 0x0b], load(Byte, reg(R9)), base(Rbx)),
            // mov [rax],r8d: REX.R 44, ModRM 00 000 000.
            (&[0x44, 0x89, 0x00], store_reg(Dword, reg(R8)), base(Rax)),
            // mov [r8],eax: REX.B 41.
            (&[0x41, 0x89, 0x00], store_reg(Dword, reg(Rax)), base(R8)),
            // mov eax,[0xfec00000]: ModRM 00 000 100 → SIB 00 100(no index) 101(no base) + disp32.
            // The disp32 is sign-extended, so the linear address is 0xffff_ffff_fec0_0000.
            (
                &[0x8b, 0x04, 0x25, 0x00, 0x00, 0xc0, 0xfe],
                load(Dword, reg(Rax)),
                MemOperand {
                    base: None,
                    index: None,
                    scale: 1,
                    disp: 0xfec0_0000_u32 as i32,
                    address_32: false,
                },
            ),
            // mov [rip+0x12345678],eax: ModRM 00 000 101 = RIP-relative disp32.
            (
                &[0x89, 0x05, 0x78, 0x56, 0x34, 0x12],
                store_reg(Dword, reg(Rax)),
                MemOperand {
                    base: Some(Base::Rip),
                    index: None,
                    scale: 1,
                    disp: 0x1234_5678,
                    address_32: false,
                },
            ),
            // mov [r13],eax: REX.B 41, rm 101 with mod 00 is still RIP-relative, so r13 needs
            // mod 01 disp8 0: 41 89 45 00.
            (
                &[0x41, 0x89, 0x45, 0x00],
                store_reg(Dword, reg(Rax)),
                base(R13)
            ),
            // mov [r12],eax: rm 100 always brings a SIB even under REX.B: 41 89 04 24.
            (
                &[0x41, 0x89, 0x04, 0x24],
                store_reg(Dword, reg(Rax)),
                base(R12)
            ),
            // mov [rsp+8],eax: SIB 00 100 100, disp8.
            (
                &[0x89, 0x44, 0x24, 0x08],
                store_reg(Dword, reg(Rax)),
                based(Rsp, 8)
            ),
            // mov [rbx+rsi*4+0x20],edi: ModRM 01 111 100, SIB 10 110 011, disp8.
            (
                &[0x89, 0x7c, 0xb3, 0x20],
                store_reg(Dword, reg(Rdi)),
                MemOperand {
                    base: Some(Base::Gpr(Rbx)),
                    index: Some(Rsi),
                    scale: 4,
                    disp: 0x20,
                    address_32: false,
                },
            ),
            // mov r15,[r14+r12*8+0x100]: REX 4f (WRXB), ModRM 10 111 100, SIB 11 100 110, disp32.
            // SIB.index 100 with REX.X is r12, not "no index".
            (
                &[0x4f, 0x8b, 0xbc, 0xe6, 0x00, 0x01, 0x00, 0x00],
                load(Qword, reg(R15)),
                MemOperand {
                    base: Some(Base::Gpr(R14)),
                    index: Some(R12),
                    scale: 8,
                    disp: 0x100,
                    address_32: false,
                },
            ),
            // mov eax,[rcx*2+0x10]: SIB 01 001 101 under mod 00: no base, disp32.
            (
                &[0x8b, 0x04, 0x4d, 0x10, 0x00, 0x00, 0x00],
                load(Dword, reg(Rax)),
                MemOperand {
                    base: None,
                    index: Some(Rcx),
                    scale: 2,
                    disp: 0x10,
                    address_32: false,
                },
            ),
            // mov [rbp+rcx*2+0x8],eax: SIB base 101 under mod 01 is RBP + disp8 (ModRM 01 000
            // 100, SIB 01 001 101); with REX.B 41 it is R13.
            (
                &[0x89, 0x44, 0x4d, 0x08],
                store_reg(Dword, reg(Rax)),
                MemOperand {
                    index: Some(Rcx),
                    scale: 2,
                    ..based(Rbp, 8)
                },
            ),
            (
                &[0x41, 0x89, 0x44, 0x4d, 0x08],
                store_reg(Dword, reg(Rax)),
                MemOperand {
                    index: Some(Rcx),
                    scale: 2,
                    ..based(R13, 8)
                },
            ),
            // movzx eax,byte [rcx]: 0f b6 /r, ModRM 00 000 001.
            (
                &[0x0f, 0xb6, 0x01],
                load_ext(Byte, reg(Rax), Dword, Extend::Zero),
                base(Rcx),
            ),
            // movzx eax,word [rcx]: 0f b7.
            (
                &[0x0f, 0xb7, 0x01],
                load_ext(Word, reg(Rax), Dword, Extend::Zero),
                base(Rcx),
            ),
            // movzx r8,word [rcx]: 4c 0f b7 01 (REX.W + REX.R).
            (
                &[0x4c, 0x0f, 0xb7, 0x01],
                load_ext(Word, reg(R8), Qword, Extend::Zero),
                base(Rcx),
            ),
            // movsx rax,byte [rcx]: 48 0f be 01.
            (
                &[0x48, 0x0f, 0xbe, 0x01],
                load_ext(Byte, reg(Rax), Qword, Extend::Sign),
                base(Rcx),
            ),
            // Segment override is skipped; address-size override: mov fs:[eax],ecx.
            (
                &[0x64, 0x67, 0x89, 0x08],
                store_reg(Dword, reg(Rcx)),
                MemOperand {
                    address_32: true,
                    ..base(Rax)
                },
            ),
            // A REX followed by a legacy prefix is ignored: 48 66 89 08 is mov [rax],cx.
            (
                &[0x48, 0x66, 0x89, 0x08],
                store_reg(Word, reg(Rcx)),
                base(Rax)
            ),
        ]
    }

    #[test]
    fn decodes_hand_worked_vectors() {
        for (bytes, access, memory) in vectors() {
            let decoded = decode(bytes).unwrap_or_else(|e| panic!("{bytes:02x?}: {e:?}"));
            assert_eq!(decoded.access, access, "{bytes:02x?}");
            assert_eq!(decoded.memory, memory, "{bytes:02x?}");
            assert_eq!(usize::from(decoded.length), bytes.len(), "{bytes:02x?}");
        }
    }

    #[test]
    fn trailing_bytes_do_not_change_the_result() {
        for (bytes, _, _) in vectors() {
            let mut padded = bytes.to_vec();
            padded.extend_from_slice(&[0x90; 15]);
            assert_eq!(decode(&padded), decode(bytes), "{bytes:02x?}");
        }
    }

    #[test]
    fn every_prefix_of_a_valid_instruction_is_truncated() {
        for (bytes, _, _) in vectors() {
            for len in 0..bytes.len() {
                assert_eq!(
                    decode(&bytes[..len]),
                    Err(DecodeError::Truncated),
                    "{:02x?}",
                    &bytes[..len]
                );
            }
        }
    }

    #[test]
    fn rejects_what_is_not_a_plain_move() {
        let cases: &[(&[u8], DecodeError)] = &[
            // mov eax,ecx: ModRM 11 001 000 is a register-register move.
            (&[0x89, 0xc8], DecodeError::RegisterOperand),
            (&[0x0f, 0xb6, 0xc1], DecodeError::RegisterOperand),
            (&[0xf0, 0x89, 0x01], DecodeError::LockPrefix),
            (&[0xf3, 0x89, 0x01], DecodeError::UnsupportedPrefix(0xf3)),
            // add [rcx],eax (01 /r) and movsd (a5) are not moves this decoder handles.
            (&[0x01, 0x01], DecodeError::UnsupportedOpcode(0x01)),
            (&[0xa5], DecodeError::UnsupportedOpcode(0xa5)),
            // c7 /1 is undefined; only /0 is MOV.
            (
                &[0xc7, 0x0f, 0, 0, 0, 0],
                DecodeError::UnsupportedOpcode(0xc7),
            ),
            // movaps [rcx],xmm0 (0f 29).
            (&[0x0f, 0x29, 0x01], DecodeError::UnsupportedOpcode(0x0f29)),
            (&[], DecodeError::Truncated),
            // 14 segment prefixes then 89 01 would be 16 bytes long.
            (
                &[
                    0x3e, 0x3e, 0x3e, 0x3e, 0x3e, 0x3e, 0x3e, 0x3e, 0x3e, 0x3e, 0x3e, 0x3e, 0x3e,
                    0x3e, 0x89, 0x01,
                ],
                DecodeError::TooLong,
            ),
            (&[0x3e; 20], DecodeError::TooLong),
        ];
        for (bytes, error) in cases {
            assert_eq!(decode(bytes), Err(*error), "{bytes:02x?}");
        }
        // Exactly 15 bytes is still legal: 13 prefixes + 89 01.
        let mut fifteen = [0x3e; 15];
        fifteen[13] = 0x89;
        fifteen[14] = 0x01;
        assert_eq!(decode(&fifteen).map(|d| d.length), Ok(15));
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_length_stays_in_bounds() {
        let check = |bytes: &[u8]| {
            if let Ok(d) = decode(bytes) {
                let len = usize::from(d.length);
                assert!(
                    len <= bytes.len() && len <= MAX_INSTRUCTION_LEN,
                    "{bytes:02x?}"
                );
                assert_eq!(decode(&bytes[..len]), Ok(d), "{bytes:02x?}");
            }
        };
        for a in 0..=255u8 {
            for b in 0..=255u8 {
                check(&[a, b]);
                check(&[0x48, a, b]);
            }
        }
        // xorshift64: deterministic pseudo-random 15-byte windows, biased towards prefixes.
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let interesting = [
            0x66, 0x67, 0x3e, 0x41, 0x48, 0x4f, 0x88, 0x89, 0x8b, 0xc7, 0x0f, 0x04,
        ];
        for _ in 0..200_000 {
            let mut bytes = [0u8; 15];
            for byte in &mut bytes {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                *byte = if state & 0x100 != 0 {
                    interesting[(state as usize >> 16) % interesting.len()]
                } else {
                    state as u8
                };
            }
            let len = (state >> 32) as usize % 16;
            check(&bytes[..len]);
        }
    }

    #[test]
    fn apply_read_merges_zero_extends_or_replaces() {
        let old = 0x1111_2222_3333_4444;
        let data = 0xaaaa_bbbb_cccc_dd80;
        let read = |bytes: &[u8]| match decode(bytes).unwrap().access {
            MmioAccess::Read(load) => apply_read(old, &load, data),
            other => panic!("{other:?}"),
        };
        // mov al,[rcx] / mov ah,[rbx] / mov ax,[rcx] / mov eax,[rcx] / mov rax,[rcx].
        assert_eq!(read(&[0x8a, 0x01]), 0x1111_2222_3333_4480);
        assert_eq!(read(&[0x8a, 0x23]), 0x1111_2222_3333_8044);
        assert_eq!(read(&[0x66, 0x8b, 0x01]), 0x1111_2222_3333_dd80);
        assert_eq!(read(&[0x8b, 0x01]), 0x0000_0000_cccc_dd80);
        assert_eq!(read(&[0x48, 0x8b, 0x01]), data);
        // movzx eax,byte / movzx rax,word / movsx rax,byte / movsx ax,byte (66 0f be 01).
        assert_eq!(read(&[0x0f, 0xb6, 0x01]), 0x80);
        assert_eq!(read(&[0x48, 0x0f, 0xb7, 0x01]), 0xdd80);
        assert_eq!(read(&[0x48, 0x0f, 0xbe, 0x01]), 0xffff_ffff_ffff_ff80);
        assert_eq!(read(&[0x66, 0x0f, 0xbe, 0x01]), 0x1111_2222_3333_ff80);
        // movsx eax,word: sign-extends to 32 bits, then clears 63:32.
        assert_eq!(read(&[0x0f, 0xbf, 0x01]), 0xffff_dd80);
        let load = match decode(&[0x8b, 0x01]).unwrap().access {
            MmioAccess::Read(load) => load,
            other => panic!("{other:?}"),
        };
        assert!(load.zero_extends_to_64());
    }

    #[test]
    fn write_data_takes_the_register_part_or_the_immediate() {
        let regs = |gpr: Gpr| 0x0102_0304_0506_0700 | gpr as u64;
        let write = |bytes: &[u8]| match decode(bytes).unwrap().access {
            MmioAccess::Write(store) => write_data(&store, regs),
            other => panic!("{other:?}"),
        };
        assert_eq!(write(&[0x88, 0x08]), 0x01); // mov [rax],cl
        assert_eq!(write(&[0x88, 0x28]), 0x07); // mov [rax],ch
        assert_eq!(write(&[0x66, 0x89, 0x08]), 0x0701); // mov [rax],cx
        assert_eq!(write(&[0x89, 0x01]), 0x0506_0700); // mov [rcx],eax
        assert_eq!(write(&[0x4c, 0x89, 0x00]), 0x0102_0304_0506_0708); // mov [rax],r8
        assert_eq!(write(&[0xc7, 0x07, 0x78, 0x56, 0x34, 0x12]), 0x1234_5678);
        assert_eq!(
            write(&[0x48, 0xc7, 0x07, 0x00, 0x00, 0x00, 0x80]),
            0xffff_ffff_8000_0000
        );
        assert_eq!(write(&[0xc6, 0x07, 0xfe]), 0xfe);
    }
}
