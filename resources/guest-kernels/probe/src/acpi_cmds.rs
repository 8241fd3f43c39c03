//! The `acpi` and `acpi-poweroff` commands.

use crate::acpi::{self, Acpi};
use crate::arch::port::outb;
use crate::cmdline::as_text;
use crate::mem::read_phys;
use crate::{arch::cpu, sprintln};

/// FADT flag: hardware-reduced ACPI.
const FADT_HW_REDUCED: u32 = 1 << 20;
/// Sleep control register: SLP_TYP in bits 2..=4, SLP_EN in bit 5.
const SLP_EN: u8 = 1 << 5;

fn hex(bytes: &[u8; 16], out: &mut [u8; 32]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (i, b) in bytes.iter().enumerate() {
        out[2 * i] = DIGITS[usize::from(b >> 4)];
        out[2 * i + 1] = DIGITS[usize::from(b & 0xf)];
    }
}

fn load(cmd: &str) -> Option<Acpi> {
    match acpi::load() {
        Ok(a) => Some(a),
        Err(reason) => {
            sprintln!("PROBE {} FAIL {}", cmd, reason);
            None
        }
    }
}

/// Walks the tables; prints what a kernel would find.
pub fn acpi() {
    let Some(a) = load("acpi") else { return };
    let scanned = acpi::scan_rsdp().unwrap_or(0);
    let (cpus, ioapics) = a.madt_counts().unwrap_or((0, 0));
    let Some(genid_addr) = a.vmgenid_addr() else {
        sprintln!("PROBE acpi FAIL no-vmgenid");
        return;
    };
    // SAFETY: the address comes from our own DSDT and lies below 1 MiB (identity mapped).
    let id: [u8; 16] = unsafe { read_phys(genid_addr) };
    let mut id_text = [0u8; 32];
    hex(&id, &mut id_text);
    let mut virtio = [(0u64, 0u64, 0u32); 32];
    let devices = a.virtio_mmio(&mut virtio);
    for (base, size, irq) in &virtio[..devices] {
        sprintln!(
            "PROBE acpi-virtio base={:#x} size={:#x} irq={}",
            base,
            size,
            irq
        );
    }
    let mut sigs = [0u8; 5 * 16];
    let mut n = 0;
    for t in &a.tables[..a.count] {
        if n > 0 {
            sigs[n] = b',';
            n += 1;
        }
        sigs[n..n + 4].copy_from_slice(&t.signature);
        n += 4;
    }
    sprintln!(
        "PROBE acpi ok rsdp={:#x} rsdp_from={} rsdp_scan={:#x} tables={} cpus={} ioapics={} hw_reduced={} virtio={} s5={} vmgenid_addr={:#x} vmgenid={}",
        a.rsdp,
        a.rsdp_from,
        scanned,
        as_text(&sigs[..n]),
        cpus,
        ioapics,
        u8::from(a.fadt_flags().unwrap_or(0) & FADT_HW_REDUCED != 0),
        devices,
        a.s5_sleep_type().unwrap_or(0xff),
        genid_addr,
        as_text(&id_text)
    );
}

/// Enters S5 the way Linux does on a hardware-reduced platform; the VMM should end the VM.
pub fn poweroff() {
    let Some(a) = load("acpi-poweroff") else {
        return;
    };
    let (Some(port), Some(slp_typ)) = (a.sleep_control_port(), a.s5_sleep_type()) else {
        sprintln!("PROBE acpi-poweroff FAIL no-sleep-control-register");
        return;
    };
    let value = ((slp_typ & 0x7) << 2) | SLP_EN;
    sprintln!("PROBE acpi-poweroff ok port={:#x} value={:#x}", port, value);
    outb(port, value);
    // Still running a second later: the VMM ignored the request. Say so, then stop without a
    // reset so the test sees the VMM did not exit by itself.
    crate::timer::delay_us(1_000_000);
    sprintln!("PROBE acpi-poweroff FAIL still-running");
    cpu::halt_forever();
}

/// Writes what no sleep-state transition means to the sleep registers: the VMM must ignore
/// (and count) each, and keep running.
pub fn garbage() {
    let Some(a) = load("acpi-garbage") else {
        return;
    };
    let Some(port) = a.sleep_control_port() else {
        sprintln!("PROBE acpi-garbage FAIL no-sleep-control-register");
        return;
    };
    // S5 without SLP_EN, S3 with it, S0 with it, all bits: none is a power-off.
    let writes = [5u8 << 2, (3 << 2) | SLP_EN, SLP_EN, 0xdf];
    for v in writes {
        outb(port, v);
    }
    sprintln!("PROBE acpi-garbage ok writes={}", writes.len());
}
