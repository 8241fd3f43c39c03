//! Output sinks that never block the thread writing to them: the log file, the metrics file
//! and the serial console file.
//!
//! A sink is often a FIFO that a log collector reads. When the collector stalls, a blocking
//! write would stop whichever thread wrote: a vCPU in the middle of a port write, the VMM
//! thread (and with it every API call), the `io` thread. So every sink is opened
//! `O_NONBLOCK`; when the pipe is full the write fails with `EAGAIN` and the output is dropped
//! and counted instead (`logger.dropped_lines`, `logger.dropped_metrics`, `uart.dropped_bytes`).
//!
//! A FIFO is opened read-write: that neither waits for a reader (a write-only open would
//! block, or fail with `ENXIO` when non-blocking) nor breaks the pipe (`EPIPE`) when the reader
//! goes away and comes back.

use std::fs::{File, OpenOptions};
use std::io::{self, ErrorKind, Write};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

/// Opens `path` for appending without ever blocking, on open or on write. A missing path is
/// created as a regular file.
pub fn open_nonblocking(path: &Path) -> io::Result<File> {
    let is_fifo = std::fs::metadata(path).is_ok_and(|m| m.file_type().is_fifo());
    let mut options = OpenOptions::new();
    options.custom_flags(libc::O_NONBLOCK);
    if is_fifo {
        options.read(true).write(true);
    } else {
        options.append(true).create(true);
    }
    options.open(path)
}

/// What became of one line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineOutcome {
    /// Written, or its tail queued to go out before the next line.
    Written,
    /// Dropped whole: the sink could not take it now.
    Dropped,
}

/// A non-blocking line writer that never lets a reader see half a line or two lines
/// interleaved: a line is written whole, or dropped whole, or (when the pipe took only part
/// of it) its tail is kept and written before anything else. The kept tail is at most one
/// line, so memory stays bounded however long the reader stalls.
#[derive(Debug)]
pub struct LineSink<W> {
    out: W,
    /// The unwritten end of a line the sink took only part of.
    pending: Vec<u8>,
}

impl<W: Write> LineSink<W> {
    pub fn new(out: W) -> Self {
        Self {
            out,
            pending: Vec::new(),
        }
    }

    /// Writes as much of `pending` as the sink takes now; true when it is all out.
    fn push_pending(&mut self) -> io::Result<bool> {
        while !self.pending.is_empty() {
            match self.out.write(&self.pending) {
                Ok(0) => return Ok(false),
                Ok(n) => {
                    self.pending.drain(..n);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    /// Writes `line` (which should end with a newline) or drops it.
    pub fn write_line(&mut self, line: &[u8]) -> io::Result<LineOutcome> {
        if !self.push_pending()? {
            return Ok(LineOutcome::Dropped);
        }
        let mut done = 0;
        while done < line.len() {
            match self.out.write(&line[done..]) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        match done {
            0 if !line.is_empty() => Ok(LineOutcome::Dropped),
            n => {
                self.pending.extend_from_slice(&line[n..]);
                Ok(LineOutcome::Written)
            }
        }
    }

    pub fn get_ref(&self) -> &W {
        &self.out
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    use std::time::{Duration, Instant};

    use super::*;

    /// A writer that takes at most `room` bytes, then says EAGAIN.
    struct Pipe {
        taken: Vec<u8>,
        room: usize,
    }

    impl Write for Pipe {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.room == 0 {
                return Err(ErrorKind::WouldBlock.into());
            }
            let n = buf.len().min(self.room);
            self.taken.extend_from_slice(&buf[..n]);
            self.room -= n;
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn lines_are_written_whole_dropped_whole_or_finished_first() {
        let mut sink = LineSink::new(Pipe {
            taken: Vec::new(),
            room: 10,
        });
        assert_eq!(sink.write_line(b"one\n").unwrap(), LineOutcome::Written);
        // Only 6 bytes fit: the rest waits, nothing else may come first.
        assert_eq!(
            sink.write_line(b"second line\n").unwrap(),
            LineOutcome::Written
        );
        assert_eq!(sink.write_line(b"third\n").unwrap(), LineOutcome::Dropped);
        sink.out.room = 100;
        assert_eq!(sink.write_line(b"fourth\n").unwrap(), LineOutcome::Written);
        assert_eq!(sink.out.taken, b"one\nsecond line\nfourth\n");
    }

    fn fifo(dir: &Path) -> std::path::PathBuf {
        let path = dir.join("sink.fifo");
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: mkfifo with a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        path
    }

    #[test]
    fn a_fifo_nobody_reads_neither_blocks_the_open_nor_the_writes() {
        let dir = std::env::temp_dir().join(format!("xenia-sink-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = fifo(&dir);
        let start = Instant::now();
        // A blocking write-only open would wait here for a reader forever.
        let mut sink = LineSink::new(open_nonblocking(&path).unwrap());
        let line = [b'x'; 99].iter().chain(b"\n").copied().collect::<Vec<u8>>();
        let mut dropped = 0;
        for _ in 0..2_000 {
            if sink.write_line(&line).unwrap() == LineOutcome::Dropped {
                dropped += 1;
            }
        }
        assert!(start.elapsed() < Duration::from_secs(5));
        // 200 KB into a pipe of (by default) 64 KiB: most lines had to go.
        assert!(dropped > 1_000, "only {dropped} lines dropped");
        // A reader that comes late sees whole lines only.
        let mut reader = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&path)
            .unwrap();
        let mut got = Vec::new();
        let _ = reader.read_to_end(&mut got);
        assert!(!got.is_empty());
        assert!(got.chunks(100).all(|l| l == line.as_slice()));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_regular_file_is_created_and_appended_to() {
        let dir = std::env::temp_dir().join(format!("xenia-sink-file-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("log");
        let mut sink = LineSink::new(open_nonblocking(&path).unwrap());
        sink.write_line(b"a\n").unwrap();
        let mut again = LineSink::new(open_nonblocking(&path).unwrap());
        again.write_line(b"b\n").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"a\nb\n");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
