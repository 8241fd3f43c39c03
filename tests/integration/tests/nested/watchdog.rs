//! Runs a child process whose stdout is a console, line by line, and kills it when it
//! stays silent too long or runs past a deadline, so a hung guest becomes a readable
//! failure instead of a stuck test.

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// What a watched run produced.
pub struct Watched {
    /// Every stdout line, without line endings.
    pub lines: Vec<String>,
    /// Everything the child wrote to stderr.
    pub stderr: String,
    /// The exit status, `None` if killed by a signal.
    pub status: Option<i32>,
    /// Why the watchdog killed the child, if it did (with the hang report).
    pub killed: Option<String>,
    pub wall: Duration,
}

/// Limits for a watched run; `on_hang` produces extra diagnostics (e.g. the QEMU monitor's
/// register dump) just before the child is killed.
pub struct Limits<'a> {
    pub idle: Duration,
    pub total: Duration,
    pub on_hang: &'a dyn Fn() -> String,
}

pub fn run(mut command: Command, limits: &Limits) -> Result<Watched, String> {
    let start = Instant::now();
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command
        .spawn()
        .map_err(|e| format!("cannot spawn {command:?}: {e}"))?;
    let stdout = child.stdout.take().ok_or("child has no stdout pipe")?;
    let mut stderr = child.stderr.take().ok_or("child has no stderr pipe")?;

    let (tx, rx) = mpsc::channel::<String>();
    let reader = thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut buf = Vec::new();
        // Console output is not guaranteed UTF-8: read bytes, convert lossily.
        while let Ok(n) = reader.read_until(b'\n', &mut buf) {
            if n == 0 {
                break;
            }
            let line = String::from_utf8_lossy(&buf);
            let line = line.trim_end_matches(['\n', '\r']).replace('\r', "");
            if tx.send(line).is_err() {
                break;
            }
            buf.clear();
        }
    });
    let err_reader = thread::spawn(move || {
        let mut text = Vec::new();
        let _ = stderr.read_to_end(&mut text);
        String::from_utf8_lossy(&text).into_owned()
    });

    let mut lines = Vec::new();
    let mut killed = None;
    loop {
        let left = limits.total.saturating_sub(start.elapsed());
        match rx.recv_timeout(limits.idle.min(left)) {
            Ok(line) => lines.push(line),
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let why = if left <= limits.idle {
                    format!("ran longer than {:?}", limits.total)
                } else {
                    format!("no console output for {:?}", limits.idle)
                };
                killed = Some(format!("{why}\n{}", (limits.on_hang)()));
                // It may have exited on its own meanwhile; wait() below reaps it either way.
                let _ = child.kill();
                break;
            }
        }
    }
    let status = child
        .wait()
        .map_err(|e| format!("cannot wait for the child: {e}"))?;
    let _ = reader.join();
    // Lines that arrived between the kill and the reader's end.
    lines.extend(rx.try_iter());
    let stderr = err_reader.join().unwrap_or_default();
    Ok(Watched {
        lines,
        stderr,
        status: status.code(),
        killed,
        wall: start.elapsed(),
    })
}
