//! A small classic-BPF interpreter for seccomp programs, so tests can check what a compiled
//! filter decides for a given call without installing it.

use seccompiler::sock_filter;

pub(crate) const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
pub(crate) const RET_ALLOW: u32 = 0x7fff_0000;
pub(crate) const RET_TRAP: u32 = 0x0003_0000;

/// The input of a seccomp program (`struct seccomp_data`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct SeccompData {
    pub nr: u32,
    pub arch: u32,
    pub ip: u64,
    pub args: [u64; 6],
}

impl SeccompData {
    pub(crate) fn call(nr: u32, args: [u64; 6]) -> Self {
        SeccompData {
            nr,
            arch: AUDIT_ARCH_X86_64,
            ip: 0,
            args,
        }
    }

    fn word_at(&self, offset: u32) -> Result<u32, String> {
        let mut bytes = Vec::with_capacity(64);
        bytes.extend_from_slice(&self.nr.to_le_bytes());
        bytes.extend_from_slice(&self.arch.to_le_bytes());
        bytes.extend_from_slice(&self.ip.to_le_bytes());
        for a in self.args {
            bytes.extend_from_slice(&a.to_le_bytes());
        }
        let start = offset as usize;
        let word = bytes
            .get(start..start + 4)
            .ok_or_else(|| format!("load outside seccomp_data at {offset}"))?;
        Ok(u32::from_le_bytes([word[0], word[1], word[2], word[3]]))
    }
}

/// Runs `program` on `data`; returns the seccomp action word.
pub(crate) fn run(program: &[sock_filter], data: &SeccompData) -> Result<u32, String> {
    let mut acc: u32 = 0;
    let mut pc = 0usize;
    // Classic BPF only jumps forward, so a program ends within its length.
    while let Some(insn) = program.get(pc) {
        pc += 1;
        let class = insn.code & 0x07;
        match class {
            // BPF_LD | BPF_W | BPF_ABS
            0x00 if insn.code == 0x20 => acc = data.word_at(insn.k)?,
            // BPF_ALU | BPF_AND | BPF_K
            0x04 if insn.code == 0x54 => acc &= insn.k,
            0x05 => {
                let op = insn.code & 0xf0;
                if insn.code & 0x08 != 0 {
                    return Err(format!("BPF_X jump at {pc} not supported"));
                }
                let taken = match op {
                    0x00 => {
                        pc += insn.k as usize;
                        continue;
                    }
                    0x10 => acc == insn.k,
                    0x20 => acc > insn.k,
                    0x30 => acc >= insn.k,
                    0x40 => acc & insn.k != 0,
                    _ => return Err(format!("jump op {op:#x} at {pc} not supported")),
                };
                pc += usize::from(if taken { insn.jt } else { insn.jf });
            }
            // BPF_RET | BPF_K
            0x06 if insn.code == 0x06 => return Ok(insn.k),
            _ => {
                return Err(format!(
                    "instruction {:#x} at {pc} not supported",
                    insn.code
                ))
            }
        }
    }
    Err("program ran off its end".into())
}
