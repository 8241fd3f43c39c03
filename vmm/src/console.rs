//! The serial console's host side: output counted in the metrics and, when the configuration
//! asks for it, held to a byte rate; a terminal on stdin switched to raw mode so that every key
//! (Ctrl-C included) reaches the guest.

use std::io::Write;

use virtio::rate_limiter::{Clock, MonotonicClock, TokenBucket};
use vmm_sys_util::terminal::Terminal;

use crate::config::TokenBucketConfig;
use crate::metrics;

/// Console output: every byte the guest writes is counted in `uart.bytes_out`; with a token
/// bucket, bytes beyond the budget are dropped and counted in `uart.dropped_bytes` (the guest
/// is never slowed down: a tenant flooding its console must not cost the host more). Bytes a
/// non-blocking sink cannot take now (`EAGAIN`: a FIFO nobody reads) are dropped and counted
/// the same way, so the vCPU thread writing them never waits.
#[derive(Debug)]
pub struct ConsoleWriter<W> {
    out: W,
    limit: Option<(TokenBucket, MonotonicClock)>,
}

impl<W: Write> ConsoleWriter<W> {
    pub fn new(out: W, rate_limiter: Option<&TokenBucketConfig>) -> Self {
        let clock = MonotonicClock::default();
        let limit = rate_limiter
            .and_then(|cfg| TokenBucket::new(cfg, clock.now_ns()))
            .map(|bucket| (bucket, clock));
        ConsoleWriter { out, limit }
    }
}

impl<W: Write> Write for ConsoleWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Some((bucket, clock)) = &mut self.limit {
            if !bucket.reduce(buf.len() as u64, clock.now_ns()) {
                metrics::global().serial.dropped_bytes.add(buf.len() as u64);
                return Ok(buf.len());
            }
        }
        match self.out.write(buf) {
            Ok(n) => {
                metrics::global().serial.bytes_out.add(n as u64);
                Ok(n)
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                metrics::global().serial.dropped_bytes.add(buf.len() as u64);
                Ok(buf.len())
            }
            Err(e) => Err(e),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

/// Puts the terminal on stdin in raw mode for the VM's lifetime and restores canonical mode
/// when dropped. Does nothing when stdin is not a terminal.
#[derive(Debug)]
pub struct RawTerminal {
    active: bool,
}

impl RawTerminal {
    pub fn enable() -> Self {
        let stdin = std::io::stdin();
        let active =
            std::io::IsTerminal::is_terminal(&stdin) && stdin.lock().set_raw_mode().is_ok();
        if active {
            log::info!("console: stdin is a terminal, switched to raw mode");
        }
        RawTerminal { active }
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        if self.active {
            if let Err(e) = std::io::stdin().lock().set_canon_mode() {
                log::warn!("console: cannot restore the terminal's canonical mode: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_beyond_the_budget_is_dropped_and_counted() {
        let bucket = TokenBucketConfig {
            size: 10,
            one_time_burst: None,
            refill_time: 3_600_000,
        };
        let mut w = ConsoleWriter::new(Vec::new(), Some(&bucket));
        let dropped_before = metrics::global().serial.dropped_bytes.get();
        for b in b"0123456789abcdef" {
            assert_eq!(
                w.write(&[*b]).unwrap(),
                1,
                "the guest never sees a short write"
            );
        }
        assert_eq!(w.out, b"0123456789");
        assert!(metrics::global().serial.dropped_bytes.get() >= dropped_before + 6);
    }

    /// A sink that is always full.
    struct Full;

    impl Write for Full {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::ErrorKind::WouldBlock.into())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn output_a_full_sink_cannot_take_is_dropped_and_counted() {
        let mut w = ConsoleWriter::new(Full, None);
        let before = metrics::global().serial.dropped_bytes.get();
        // vm-superio writes each byte with write_all: an error here would fail the guest's
        // port write; WouldBlock must look like success.
        w.write_all(b"0123456789").unwrap();
        assert!(metrics::global().serial.dropped_bytes.get() >= before + 10);
    }

    #[test]
    fn without_a_limit_everything_passes_and_is_counted() {
        let mut w = ConsoleWriter::new(Vec::new(), None);
        let before = metrics::global().serial.bytes_out.get();
        w.write_all(b"hello").unwrap();
        assert_eq!(w.out, b"hello");
        assert!(metrics::global().serial.bytes_out.get() >= before + 5);
    }
}
