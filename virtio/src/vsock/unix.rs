//! The host side's Unix sockets: non-blocking accept and connect (the `io` loop never
//! blocks on a host process), and the `CONNECT <port>\n` line a host process sends first.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;

/// Longest `CONNECT <port>\n` line accepted ("CONNECT 4294967295\n" is 19 bytes).
pub const MAX_CONNECT_LINE: usize = 32;

/// Accepts one pending connection, non-blocking and close-on-exec from the start (one
/// `accept4`, no later `fcntl`).
pub fn accept_nonblocking(listener: &UnixListener) -> io::Result<UnixStream> {
    loop {
        // SAFETY: accept4 with null address pointers only returns a new fd or -1.
        let fd = unsafe {
            libc::accept4(
                listener.as_raw_fd(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            )
        };
        if fd >= 0 {
            // SAFETY: `fd` is a new socket nobody else owns.
            return Ok(unsafe { UnixStream::from_raw_fd(fd) });
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Connects to the stream socket at `path` without blocking: a listener whose backlog is
/// full answers `EAGAIN` instead of making the `io` loop wait.
pub fn connect_nonblocking(path: &Path) -> io::Result<UnixStream> {
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: sockaddr_un is plain data; all zeroes is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(io::Error::from_raw_os_error(libc::ENAMETOOLONG));
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    // SAFETY: socket() only returns a new fd or -1.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new socket nobody else owns; the stream closes it on every path.
    let stream = unsafe { UnixStream::from_raw_fd(fd) };
    let len = std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1;
    // SAFETY: `addr` is a valid sockaddr_un and `len` does not exceed its size.
    let r = unsafe { libc::connect(fd, std::ptr::addr_of!(addr).cast(), len as libc::socklen_t) };
    if r == 0 {
        return Ok(stream);
    }
    Err(io::Error::last_os_error())
}

/// Why a host's first line was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectLineError {
    #[error("no newline within {MAX_CONNECT_LINE} bytes")]
    TooLong,
    #[error("not `CONNECT <port>`")]
    Malformed,
}

/// Parses the host's first line. `Ok(None)`: no newline yet (read more); the line must fit
/// in [`MAX_CONNECT_LINE`] bytes. Returns the port and the bytes consumed (the line).
pub fn parse_connect_line(buf: &[u8]) -> Result<Option<(u32, usize)>, ConnectLineError> {
    let Some(nl) = buf.iter().position(|&b| b == b'\n') else {
        return if buf.len() >= MAX_CONNECT_LINE {
            Err(ConnectLineError::TooLong)
        } else {
            Ok(None)
        };
    };
    let line = &buf[..nl];
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let digits = line
        .strip_prefix(b"CONNECT ")
        .ok_or(ConnectLineError::Malformed)?;
    if digits.is_empty() || digits.len() > 10 || !digits.iter().all(u8::is_ascii_digit) {
        return Err(ConnectLineError::Malformed);
    }
    let port = std::str::from_utf8(digits)
        .ok()
        .and_then(|s| s.parse::<u32>().ok())
        .ok_or(ConnectLineError::Malformed)?;
    Ok(Some((port, nl + 1)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn connect_lines_parse_and_garbage_does_not() {
        assert_eq!(parse_connect_line(b"CONNECT 52\n"), Ok(Some((52, 11))));
        assert_eq!(parse_connect_line(b"CONNECT 52\r\nxy"), Ok(Some((52, 12))));
        assert_eq!(parse_connect_line(b"CONNECT 5"), Ok(None));
        assert_eq!(
            parse_connect_line(b"CONNECT 4294967295\n"),
            Ok(Some((u32::MAX, 19)))
        );
        for bad in [
            &b"CONNECT 4294967296\n"[..],
            b"connect 52\n",
            b"CONNECT\n",
            b"CONNECT -1\n",
            b"CONNECT 5 2\n",
            b"\n",
        ] {
            assert_eq!(
                parse_connect_line(bad),
                Err(ConnectLineError::Malformed),
                "{bad:?}"
            );
        }
        assert_eq!(
            parse_connect_line(&[b'C'; MAX_CONNECT_LINE]),
            Err(ConnectLineError::TooLong)
        );
    }

    #[test]
    fn nonblocking_connect_and_accept() {
        let dir = std::env::temp_dir().join(format!("xenia-vsock-unix-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("s");
        let _ = std::fs::remove_file(&path);
        // Nobody listening: refused at once.
        let e = connect_nonblocking(&path).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOENT));
        let listener = UnixListener::bind(&path).unwrap();
        listener.set_nonblocking(true).unwrap();
        assert_eq!(
            accept_nonblocking(&listener).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
        let mut c = connect_nonblocking(&path).unwrap();
        let mut s = accept_nonblocking(&listener).unwrap();
        c.write_all(b"hi").unwrap();
        let mut b = [0u8; 2];
        s.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"hi");
        let mut more = [0u8; 1];
        assert_eq!(
            s.read(&mut more).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
        let long = dir.join("x".repeat(200));
        assert_eq!(
            connect_nonblocking(&long).unwrap_err().raw_os_error(),
            Some(libc::ENAMETOOLONG)
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
