//! The balloon's queues on the `io` thread: inflate (PFNs given up: released to the host),
//! deflate (PFNs taken back), statistics (a buffer held until the next poll) and free page
//! reporting (free ranges: released). Every PFN and range is checked against guest memory
//! before anything is done with it; the guest cannot make xenia release its own memory.

use virtio_queue::{DescriptorChain, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use super::stats::{BalloonStats, MAX_STAT_ENTRIES, STAT_ENTRY_LEN};
use super::{in_memory, Balloon, BalloonMetrics, QueueLayout, BALLOON_PAGE_SIZE};
use crate::GuestMemoryMmap;

/// Most PFNs one inflate or deflate chain may carry (Linux sends at most 256); a chain
/// claiming more is refused whole rather than walked without bound.
pub const MAX_PFNS_PER_CHAIN: u64 = 1 << 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Inflate,
    Deflate,
    Stats,
    Reporting,
}

type Chain<'a> = DescriptorChain<&'a GuestMemoryMmap>;

/// A chain's buffers as (guest address, length), checked to lie in guest memory and to go the
/// expected way (device-readable unless `writable`).
fn buffers(
    mem: &GuestMemoryMmap,
    chain: Chain<'_>,
    writable: bool,
) -> Option<Vec<(GuestAddress, u64)>> {
    let mut out = Vec::new();
    for desc in chain {
        if desc.is_write_only() != writable || !in_memory(mem, desc.addr().0, u64::from(desc.len()))
        {
            return None;
        }
        out.push((desc.addr(), u64::from(desc.len())));
    }
    (!out.is_empty()).then_some(out)
}

/// Consecutive guest pages that are consecutive in xenia's address space too and backed
/// the same way, released with one call.
#[derive(Debug, Default)]
struct Run {
    host: usize,
    len: usize,
    /// Mapped from a snapshot's memory file (`MAP_PRIVATE`): `MADV_DONTNEED` would make the
    /// guest read the file's old contents there again, so the range is replaced with fresh
    /// anonymous memory instead (zeroes, as after a release of anonymous memory).
    file_backed: bool,
}

/// Where a guest page lives in xenia.
#[derive(Debug, Clone, Copy)]
struct HostPage {
    addr: usize,
    file_backed: bool,
}

impl Balloon {
    fn role(&self, index: usize) -> Option<Role> {
        match index {
            QueueLayout::INFLATE => Some(Role::Inflate),
            QueueLayout::DEFLATE => Some(Role::Deflate),
            i if Some(i) == self.layout.stats => Some(Role::Stats),
            i if Some(i) == self.layout.reporting => Some(Role::Reporting),
            _ => None,
        }
    }

    /// Serves every available chain of queue `index`.
    pub(crate) fn process_queue(&mut self, index: usize) {
        if self.broken {
            return;
        }
        let Some(role) = self.role(index) else {
            return;
        };
        let Some(mem) = self
            .active
            .as_ref()
            .filter(|a| a.is_ready(index))
            .map(|a| a.mem.clone())
        else {
            return;
        };
        let mut used_any = false;
        if let Err(why) = self.drain(index, role, &mem, &mut used_any) {
            self.queue_broken(&why);
            return;
        }
        if used_any {
            self.signal(index);
        }
    }

    fn signal(&mut self, index: usize) {
        if let Some(a) = self.active.as_mut() {
            if let Err(why) = a.signal_used(index) {
                BalloonMetrics::inc(&self.metrics.event_fails);
                self.queue_broken(&why);
            }
        }
    }

    fn drain(
        &mut self,
        index: usize,
        role: Role,
        mem: &GuestMemoryMmap,
        used_any: &mut bool,
    ) -> Result<(), String> {
        loop {
            let Some(a) = self.active.as_mut() else {
                return Ok(());
            };
            a.queues[index]
                .disable_notification(mem)
                .map_err(|e| format!("queue {index}: cannot disable notifications: {e}"))?;
            loop {
                let Some(a) = self.active.as_mut() else {
                    return Ok(());
                };
                let Some((chain, indirect)) = a.next_chain(mem, index)? else {
                    break;
                };
                let head = chain.head_index();
                if indirect {
                    BalloonMetrics::inc(&self.metrics.invalid_requests);
                } else {
                    match role {
                        Role::Inflate | Role::Deflate => self.pfn_chain(mem, chain, role),
                        Role::Reporting => self.reporting_chain(mem, chain),
                        Role::Stats => {
                            self.stats_chain(mem, chain, index)?;
                            // Held until the next poll: not returned now.
                            continue;
                        }
                    }
                }
                let Some(a) = self.active.as_mut() else {
                    return Ok(());
                };
                a.queues[index]
                    .add_used(mem, head, 0)
                    .map_err(|e| format!("queue {index}: cannot add used entry {head}: {e}"))?;
                *used_any = true;
            }
            let Some(a) = self.active.as_mut() else {
                return Ok(());
            };
            let more = a.queues[index]
                .enable_notification(mem)
                .map_err(|e| format!("queue {index}: cannot enable notifications: {e}"))?;
            if !more {
                return Ok(());
            }
        }
    }

    /// An inflate or deflate chain: device-readable buffers of le32 PFNs.
    fn pfn_chain(&mut self, mem: &GuestMemoryMmap, chain: Chain<'_>, role: Role) {
        let m = self.metrics.clone();
        let Some(bufs) = buffers(mem, chain, false) else {
            BalloonMetrics::inc(&m.invalid_requests);
            return;
        };
        let total: u64 = bufs.iter().map(|b| b.1).sum();
        if bufs.iter().any(|b| !b.1.is_multiple_of(4)) || total / 4 > MAX_PFNS_PER_CHAIN {
            BalloonMetrics::inc(&m.invalid_requests);
            return;
        }
        BalloonMetrics::inc(match role {
            Role::Inflate => &m.inflate_count,
            _ => &m.deflate_count,
        });
        let mut run = Run::default();
        let mut chunk = [0u8; 4096];
        for (addr, len) in bufs {
            let mut off = 0u64;
            while off < len {
                let n = (len - off).min(chunk.len() as u64) as usize;
                // Checked to lie in memory by `buffers`.
                if mem
                    .read_slice(&mut chunk[..n], GuestAddress(addr.0 + off))
                    .is_err()
                {
                    BalloonMetrics::inc(&m.invalid_requests);
                    return;
                }
                for p in chunk[..n].chunks_exact(4) {
                    let pfn = u32::from_le_bytes([p[0], p[1], p[2], p[3]]);
                    let gpa = u64::from(pfn) * BALLOON_PAGE_SIZE;
                    let Some(host) = page_host_address(mem, gpa) else {
                        BalloonMetrics::inc(&m.invalid_pfns);
                        continue;
                    };
                    if role == Role::Inflate {
                        self.extend_run(&mut run, host);
                    }
                }
                off += n as u64;
            }
        }
        self.release(&run);
    }

    /// A free page reporting chain: device-writable buffers, each a free range to release.
    fn reporting_chain(&mut self, mem: &GuestMemoryMmap, chain: Chain<'_>) {
        let m = self.metrics.clone();
        let Some(bufs) = buffers(mem, chain, true) else {
            BalloonMetrics::inc(&m.invalid_requests);
            return;
        };
        BalloonMetrics::inc(&m.reporting_count);
        for (addr, len) in bufs {
            // Whole pages only; a range that is not page-aligned is refused.
            if !addr.0.is_multiple_of(BALLOON_PAGE_SIZE) || !len.is_multiple_of(BALLOON_PAGE_SIZE) {
                BalloonMetrics::inc(&m.invalid_pfns);
                continue;
            }
            let mut run = Run::default();
            let mut gpa = addr.0;
            while gpa < addr.0 + len {
                match page_host_address(mem, gpa) {
                    Some(host) => self.extend_run(&mut run, host),
                    None => BalloonMetrics::inc(&m.invalid_pfns),
                }
                gpa += BALLOON_PAGE_SIZE;
            }
            self.release(&run);
        }
    }

    /// The guest's statistics buffer: read, kept as the latest numbers, and held.
    fn stats_chain(
        &mut self,
        mem: &GuestMemoryMmap,
        chain: Chain<'_>,
        index: usize,
    ) -> Result<(), String> {
        let head = chain.head_index();
        let parsed = buffers(mem, chain, false).and_then(|bufs| {
            let total: u64 = bufs.iter().map(|b| b.1).sum();
            if total > (MAX_STAT_ENTRIES * STAT_ENTRY_LEN) as u64 {
                return None;
            }
            let mut bytes = Vec::with_capacity(total as usize);
            for (addr, len) in bufs {
                let start = bytes.len();
                bytes.resize(start + len as usize, 0);
                mem.read_slice(&mut bytes[start..], addr).ok()?;
            }
            BalloonStats::parse(&bytes)
        });
        match parsed {
            Some(s) => {
                BalloonMetrics::inc(&self.metrics.stats_updates_count);
                self.latest_stats = s;
            }
            None => BalloonMetrics::inc(&self.metrics.stats_update_fails),
        }
        // A driver that posts a second buffer while we hold one gets the first one back.
        if let Some(old) = self.stats_head.replace(head) {
            if let Some(a) = self.active.as_mut() {
                a.queues[index]
                    .add_used(mem, old, 0)
                    .map_err(|e| format!("stats queue: cannot add used entry {old}: {e}"))?;
            }
            self.signal(index);
        }
        Ok(())
    }

    /// The statistics timer fired: hand the held buffer back so the guest refills it.
    pub(crate) fn request_stats(&mut self) {
        if self.broken {
            return;
        }
        let (Some(index), Some(head)) = (self.layout.stats, self.stats_head) else {
            return;
        };
        let Some(a) = self.active.as_mut() else {
            return;
        };
        let mem = a.mem.clone();
        if let Err(e) = a.queues[index].add_used(&mem, head, 0) {
            self.queue_broken(&format!("stats queue: cannot add used entry {head}: {e}"));
            return;
        }
        self.stats_head = None;
        self.signal(index);
    }

    fn extend_run(&mut self, run: &mut Run, page: HostPage) {
        let len = BALLOON_PAGE_SIZE as usize;
        if run.len > 0 && run.host + run.len == page.addr && run.file_backed == page.file_backed {
            run.len += len;
            return;
        }
        self.release(run);
        *run = Run {
            host: page.addr,
            len,
            file_backed: page.file_backed,
        };
    }

    /// Gives the pages of `run` back to the host kernel.
    fn release(&mut self, run: &Run) {
        if run.len == 0 {
            return;
        }
        let ok = if run.file_backed {
            // SAFETY: every page of the run was found inside a guest memory region by
            // `page_host_address`: the range is part of the private mapping of a snapshot's
            // memory file that xenia made for guest RAM, holding nothing of xenia's own.
            // MAP_FIXED replaces exactly that range with anonymous memory (the region's
            // mapping stays the same size and place; KVM's MMU notifier drops its stale
            // translations), so the guest reads zeroes there, as after inflating anonymous
            // memory, and the file's pages are no longer referenced.
            let p = unsafe {
                libc::mmap(
                    run.host as *mut libc::c_void,
                    run.len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED | libc::MAP_NORESERVE,
                    -1,
                    0,
                )
            };
            p != libc::MAP_FAILED
        } else {
            // SAFETY: as above, the range lies in a private anonymous mapping xenia made for
            // guest RAM; MADV_DONTNEED only makes the guest read zeroes there next time,
            // which is what inflating (or reporting free) asked for.
            let r = unsafe {
                libc::madvise(run.host as *mut libc::c_void, run.len, libc::MADV_DONTNEED)
            };
            r == 0
        };
        if ok {
            BalloonMetrics::add(
                &self.metrics.pages_released,
                (run.len as u64) / BALLOON_PAGE_SIZE,
            );
        } else {
            BalloonMetrics::inc(&self.metrics.madvise_fails);
            if let Some(n) = self.guest_log.check() {
                log::warn!(
                    "virtio-balloon: releasing {} bytes failed: {} ({n} more suppressed)",
                    run.len,
                    std::io::Error::last_os_error()
                );
            }
        }
    }
}

/// Where guest page `gpa` (4 KiB, aligned) lives in xenia, if it is guest RAM.
fn page_host_address(mem: &GuestMemoryMmap, gpa: u64) -> Option<HostPage> {
    if !in_memory(mem, gpa, BALLOON_PAGE_SIZE) {
        return None;
    }
    let region = mem.find_region(GuestAddress(gpa))?;
    let addr = mem.get_host_address(GuestAddress(gpa)).ok()? as usize;
    Some(HostPage {
        addr,
        file_backed: region.file_offset().is_some(),
    })
}
