//! Reading the probe guest's result lines: `PROBE <cmd> ok key=value ...` or
//! `PROBE <cmd> FAIL <reason>`.

use crate::Xenia;

/// The result line of `cmd` (its first `ok` or `FAIL` line; progress lines such as
/// `PROBE <cmd> ready` are not results).
pub fn result_line<'a>(x: &'a Xenia, cmd: &str) -> &'a str {
    let ok = format!("PROBE {cmd} ok");
    let fail = format!("PROBE {cmd} FAIL");
    let found = x
        .lines
        .iter()
        .find(|l| l.starts_with(&ok) || l.starts_with(&fail));
    assert!(
        found.is_some(),
        "no result for {cmd}; console:\n{}",
        x.lines.join("\n")
    );
    found.map(String::as_str).unwrap_or_default()
}

/// The result line of `cmd`, which must be `ok`.
pub fn ok_line<'a>(x: &'a Xenia, cmd: &str) -> &'a str {
    let line = result_line(x, cmd);
    assert!(
        line.starts_with(&format!("PROBE {cmd} ok")),
        "{line}\nconsole:\n{}\nstderr:\n{}",
        x.lines.join("\n"),
        x.stderr()
    );
    line
}

/// `value` of `key=value` in a probe line.
pub fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
}

#[cfg(test)]
mod tests {
    use super::field;

    #[test]
    fn fields_are_matched_by_whole_key() {
        let line = "PROBE blk-info ok dev=0 capacity=128 capacity_bytes=65536";
        assert_eq!(field(line, "capacity"), Some("128"));
        assert_eq!(field(line, "dev"), Some("0"));
        assert_eq!(field(line, "missing"), None);
    }
}
