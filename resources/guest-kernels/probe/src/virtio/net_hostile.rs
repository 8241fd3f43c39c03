//! `net-hostile:<kind>` (filled in below).
pub fn run(_index: usize, _arg: Option<&[u8]>) {
    crate::sprintln!("PROBE net-hostile FAIL not-implemented");
}
