//! A tiny program to jail in tests (built statically by the tests with rustc).
//!
//! argv: `--id ID [PATH...]`. Prints `pid=`, `argv=`, `root=` (the names in `/`),
//! then `open PATH=ok` or `open PATH=err ERRNO` for each PATH (a PATH ending in
//! `/` is listed as a directory), then `READY`, and exits when stdin closes, so
//! the test can inspect the live process from outside through /proc.

use std::io::{Read, Write};

fn try_open(path: &str) -> std::io::Result<()> {
    if path.ends_with('/') {
        std::fs::read_dir(path)?.next().transpose()?;
    } else {
        std::fs::OpenOptions::new().read(true).write(true).open(path).or_else(|_| std::fs::File::open(path))?;
    }
    Ok(())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut out = format!("pid={}\nargv={}\n", std::process::id(), args.join(" "));
    let mut names: Vec<String> = std::fs::read_dir("/")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    out.push_str(&format!("root={}\n", names.join(",")));
    for path in args.iter().skip(2) {
        match try_open(path) {
            Ok(()) => out.push_str(&format!("open {path}=ok\n")),
            Err(e) => out.push_str(&format!("open {path}=err {}\n", e.raw_os_error().unwrap_or(-1))),
        }
    }
    out.push_str("READY\n");
    let mut stdout = std::io::stdout();
    let _ = stdout.write_all(out.as_bytes());
    let _ = stdout.flush();
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
}
