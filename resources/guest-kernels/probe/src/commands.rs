//! The `probe.cmds` commands. Each prints exactly one final line,
//! `PROBE <cmd> ok key=value ...` or `PROBE <cmd> FAIL <reason>`, possibly
//! after detail lines of its own.

use crate::arch::port::{inb, outb};
use crate::arch::{cpu, lapic_timer};
use crate::bootinfo::{self, BootInfo};
use crate::cmdline::{as_text, parse_u64, Command};
use crate::e820::{find_free, E820_RAM};
use crate::mem::{read_phys, MAPPED_LIMIT};
use crate::{cpuinfo, mptable, smp, sprintln, timer};

extern "C" {
    static __image_end: u8;
}

/// Runs one command and prints its result line(s).
pub fn run(cmd: Command<'_>) {
    let name = as_text(cmd.name);
    let boot = bootinfo::get();
    match cmd.name {
        b"e820" => e820(boot),
        b"cmdline" => cmdline(boot),
        b"initrd" => initrd(boot),
        b"touch" => touch(boot, cmd.arg),
        b"timer" => {
            outb(0x3f0, 123);
            sprintln!("PROBE timer ok");
        }
        b"cpuid" => cpuid(),
        b"cpuid-leaf" => cpuid_leaf(cmd.arg),
        b"acpi" => crate::acpi_cmds::acpi(),
        b"acpi-poweroff" => crate::acpi_cmds::poweroff(),
        b"acpi-garbage" => crate::acpi_cmds::garbage(),
        b"smp" => smp(cmd.arg),
        b"tick" => tick(cmd.arg),
        b"burn" => burn(cmd.arg),
        b"memtick" => crate::snap_cmds::memtick(cmd.arg),
        b"print" => print(cmd.arg),
        b"idle" => {
            sprintln!("PROBE idle ok halting");
            cpu::halt_forever();
        }
        b"kbd" => kbd(),
        b"reboot" => {
            sprintln!("PROBE reboot ok");
            crate::reset();
        }
        b"panic" => {
            sprintln!("PROBE panic ok triggering-ud2");
            // SAFETY: deliberately raises #UD to exercise the exception path.
            unsafe { core::arch::asm!("ud2", options(nomem, nostack)) };
        }
        _ if crate::virtio::run(cmd) => {}
        _ => sprintln!("PROBE {} FAIL unknown-command", name),
    }
}

fn e820(boot: &BootInfo) {
    if let Some(reason) = boot.e820_missing {
        sprintln!("PROBE e820 FAIL {}", reason);
        return;
    }
    let map = &boot.e820[..boot.e820_len];
    let mut ram = 0u64;
    for e in map {
        sprintln!(
            "PROBE e820-entry addr={:#x} len={:#x} type={}",
            e.addr,
            e.size,
            e.kind
        );
        if e.kind == E820_RAM {
            ram = ram.saturating_add(e.size);
        }
    }
    sprintln!(
        "PROBE e820 ok entries={} ram_bytes={} ram_mib={}",
        map.len(),
        ram,
        ram >> 20
    );
}

fn cmdline(boot: &BootInfo) {
    let text = &boot.cmdline[..boot.cmdline_len];
    sprintln!("PROBE cmdline ok len={} text={}", text.len(), as_text(text));
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x100_0000_01b3;

fn initrd(boot: &BootInfo) {
    let Some((addr, size)) = boot.initrd else {
        sprintln!("PROBE initrd FAIL none");
        return;
    };
    if addr.checked_add(size).is_none_or(|end| end > MAPPED_LIMIT) {
        sprintln!("PROBE initrd FAIL unmapped addr={:#x} size={}", addr, size);
        return;
    }
    let mut hash = FNV_OFFSET;
    for i in 0..size {
        // SAFETY: [addr, addr + size) is below MAPPED_LIMIT (checked above).
        hash = (hash ^ unsafe { read_phys::<u8>(addr + i) } as u64).wrapping_mul(FNV_PRIME);
    }
    // `{:#018x}` would pull padded formatting (SSE) from libcore: pad by hand.
    sprintln!(
        "PROBE initrd ok addr={:#x} size={} fnv1a64=0x{}",
        addr,
        size,
        Hex16(hash)
    );
}

/// A u64 as exactly 16 lowercase hex digits.
pub(crate) struct Hex16(pub u64);

impl core::fmt::Display for Hex16 {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let mut buf = [0u8; 16];
        for (i, b) in buf.iter_mut().enumerate() {
            let nibble = (self.0 >> (60 - 4 * i)) & 0xf;
            *b = b"0123456789abcdef"[nibble as usize];
        }
        f.write_str(as_text(&buf))
    }
}

const PAGE: u64 = 4096;
const MIB: u64 = 1 << 20;

fn touch(boot: &BootInfo, arg: Option<&[u8]>) {
    let Some(mib) = arg.and_then(parse_u64) else {
        sprintln!("PROBE touch FAIL bad-argument");
        return;
    };
    let Some(len) = mib.checked_mul(MIB) else {
        sprintln!("PROBE touch FAIL bad-argument");
        return;
    };
    if let Some(reason) = boot.e820_missing {
        sprintln!("PROBE touch FAIL {}", reason);
        return;
    }
    let image_end = core::ptr::addr_of!(__image_end) as u64;
    let initrd = boot.initrd.map(|(a, s)| (a, a.saturating_add(s)));
    let avoid = initrd.as_slice();
    let Some(start) = find_free(
        &boot.e820[..boot.e820_len],
        len,
        image_end,
        MAPPED_LIMIT,
        avoid,
    ) else {
        sprintln!("PROBE touch FAIL no-free-ram mib={}", mib);
        return;
    };
    let pattern = 0x5eed_0000_0000_0000u64;
    let mut page = start;
    while page < start + len {
        // SAFETY: [start, start + len) is free RAM below MAPPED_LIMIT (find_free).
        unsafe { core::ptr::write_volatile(page as *mut u64, page ^ pattern) };
        page += PAGE;
    }
    let mut page = start;
    while page < start + len {
        // SAFETY: as above.
        let got = unsafe { core::ptr::read_volatile(page as *const u64) };
        if got != page ^ pattern {
            sprintln!("PROBE touch FAIL mismatch at={:#x} got={:#x}", page, got);
            return;
        }
        page += PAGE;
    }
    sprintln!(
        "PROBE touch ok mib={} addr={:#x} pages={}",
        mib,
        start,
        len / PAGE
    );
}

fn cpuid() {
    let info = cpuinfo::read();
    let mut vendor = [0u8; 12];
    let vendor_len = cpuinfo::signature_text(&info.vendor, &mut vendor);
    let mut hv = [0u8; 12];
    let hv_text = match &info.hypervisor {
        Some(sig) => {
            let n = cpuinfo::signature_text(sig, &mut hv);
            if n == 0 {
                "empty"
            } else {
                as_text(&hv[..n])
            }
        }
        None => "none",
    };
    sprintln!(
        "PROBE cpuid ok vendor={} max_leaf={:#x} apic_id={} hypervisor={} logical={} threads_per_core={} cores_per_pkg={} topology_source={}",
        as_text(&vendor[..vendor_len]),
        info.max_leaf,
        info.apic_id,
        hv_text,
        info.logical,
        info.threads_per_core,
        info.cores_per_pkg,
        info.topology_source
    );
    for t in cpuinfo::sources().into_iter().flatten() {
        sprintln!(
            "PROBE topology ok source={} threads_per_core={} logical_per_pkg={} apic_id={}",
            t.source,
            t.threads_per_core,
            t.logical_per_pkg,
            t.apic_id
        );
    }
}

/// `cpuid-leaf:LEAF[:SUBLEAF]` prints the four registers the guest sees for one leaf
/// (decimal or 0x-hex numbers), so tests can check what a CPU template changed.
fn cpuid_leaf(arg: Option<&[u8]>) {
    let arg = arg.unwrap_or(&[]);
    let (leaf, sub) = match arg.iter().position(|&b| b == b':') {
        Some(i) => (&arg[..i], Some(&arg[i + 1..])),
        None => (arg, None),
    };
    let leaf = parse_u64(leaf).and_then(|v| u32::try_from(v).ok());
    let sub = match sub {
        Some(s) => parse_u64(s).and_then(|v| u32::try_from(v).ok()),
        None => Some(0),
    };
    let (Some(leaf), Some(sub)) = (leaf, sub) else {
        sprintln!("PROBE cpuid-leaf FAIL bad-argument {}", as_text(arg));
        return;
    };
    let r = cpu::cpuid(leaf, sub);
    sprintln!(
        "PROBE cpuid-leaf ok leaf={:#x} subleaf={:#x} eax={:#x} ebx={:#x} ecx={:#x} edx={:#x}",
        leaf,
        sub,
        r.eax,
        r.ebx,
        r.ecx,
        r.edx
    );
}

/// `smp` wakes the processors of the MP table; `smp:N` instead wakes APIC
/// IDs 0..N-1 (for VMMs whose firmware lists fewer CPUs than it has, like
/// SeaBIOS under QEMU/TCG).
fn smp(arg: Option<&[u8]>) {
    let table = match arg {
        Some(a) => match parse_u64(a) {
            Some(n) if (1..=255).contains(&n) => mptable::MpTable::first_n(n as usize),
            _ => {
                sprintln!("PROBE smp FAIL bad-argument");
                return;
            }
        },
        None => match mptable::parse() {
            Ok(t) => t,
            Err(e) => {
                sprintln!("PROBE smp FAIL {}", e.reason());
                return;
            }
        },
    };
    for cpu in &table.cpus[..table.cpu_count] {
        sprintln!(
            "PROBE smp-cpu apic_id={} bsp={} mp={:#x}",
            cpu.apic_id,
            cpu.bsp as u8,
            table.floating_pointer
        );
    }
    let result = match smp::start_aps(&table) {
        Ok(r) => r,
        Err(smp::SmpError::BadLapicAddress(a)) => {
            sprintln!("PROBE smp FAIL bad-lapic-address addr={:#x}", a);
            return;
        }
    };
    let status = if result.online >= result.expected {
        "ok"
    } else {
        "FAIL"
    };
    crate::sprint!(
        "PROBE smp {} expected={} online={} apic_ids=",
        status,
        result.expected,
        result.online
    );
    for (i, id) in result.ids[..result.id_count].iter().enumerate() {
        if i > 0 {
            crate::sprint!(",");
        }
        crate::sprint!("{}", id);
    }
    sprintln!("");
}

const TICK_US: u64 = 100_000;

fn tick(arg: Option<&[u8]>) {
    let Some(count) = arg.map_or(Some(0), parse_u64) else {
        sprintln!("PROBE tick FAIL bad-argument");
        return;
    };
    let Some(freq) = timer::tsc_freq() else {
        sprintln!("PROBE tick FAIL no-tsc-calibration");
        return;
    };
    let ticks_per_period = freq.khz * TICK_US / 1000;
    let mut next = cpu::rdtsc().wrapping_add(ticks_per_period);
    let mut n = 0u64;
    while count == 0 || n < count {
        lapic_timer::sleep_until(next);
        next = next.wrapping_add(ticks_per_period);
        n += 1;
        sprintln!("PROBE tick n={}", n);
    }
    sprintln!(
        "PROBE tick ok n={} tsc_khz={} source={}",
        n,
        freq.khz,
        freq.source
    );
}

/// Keeps this vCPU busy for `ms` milliseconds of TSC time, never halting or pausing, so the
/// host sees it as one CPU-bound thread (usage metering tests). Ring 0 is enough: under PVM
/// it is emulated, which only makes each iteration slower, not the thread less busy.
fn burn(arg: Option<&[u8]>) {
    let Some(ms) = arg.and_then(parse_u64).filter(|ms| *ms <= 600_000) else {
        sprintln!("PROBE burn FAIL bad-argument");
        return;
    };
    let Some(freq) = timer::tsc_freq() else {
        sprintln!("PROBE burn FAIL no-tsc-calibration");
        return;
    };
    let ticks = ms * freq.khz;
    let start = cpu::rdtsc();
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut iterations = 0u64;
    while cpu::rdtsc().wrapping_sub(start) < ticks {
        for _ in 0..64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
        }
        iterations += 1;
    }
    // Printing x keeps the loop from being optimised away.
    sprintln!(
        "PROBE burn ok ms={} iterations={} x={:#x}",
        ms,
        iterations,
        x
    );
}

/// Waits for keyboard bytes from the i8042 (e.g. the VMM's Ctrl-Alt-Del), polling its
/// status port with interrupts off, and resets the machine once three bytes arrived, as a
/// guest that honours Ctrl-Alt-Del would.
fn kbd() {
    sprintln!("PROBE kbd waiting");
    let mut got = [0u8; 3];
    let mut n = 0;
    while n < got.len() {
        if inb(0x64) & 1 != 0 {
            got[n] = inb(0x60);
            n += 1;
        } else {
            timer::delay_us(1_000);
        }
    }
    sprintln!(
        "PROBE kbd ok bytes={:#x},{:#x},{:#x}",
        got[0],
        got[1],
        got[2]
    );
    crate::reset();
}

/// `print:N`: N console lines back to back (0 = forever), each
/// `PROBE print-line n=<i> ` padded with `x` to 100 bytes with its CRLF, as
/// fast as the UART takes them: a guest flooding its console.
fn print(arg: Option<&[u8]>) {
    let Some(lines) = arg.and_then(parse_u64) else {
        sprintln!("PROBE print FAIL bad-argument");
        return;
    };
    const PAD: &str =
        "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx";
    let mut n = 0u64;
    while lines == 0 || n < lines {
        // "PROBE print-line n=" is 19 bytes, CRLF 2: pad the number's field to 100.
        let digits = decimal_digits(n);
        let pad = 100usize.saturating_sub(19 + digits + 1 + 2).min(PAD.len());
        sprintln!("PROBE print-line n={} {}", n, &PAD[..pad]);
        n += 1;
    }
    sprintln!("PROBE print ok lines={} bytes={}", n, n.saturating_mul(100));
}

fn decimal_digits(mut n: u64) -> usize {
    let mut digits = 1;
    while n >= 10 {
        n /= 10;
        digits += 1;
    }
    digits
}
