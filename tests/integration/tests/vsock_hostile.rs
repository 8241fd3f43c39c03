//! A hostile guest on virtio-vsock: truncated headers, another guest's CID, a CID other than
//! the host's, datagrams, unknown ops, lengths beyond the buffer or the payload limit, data
//! for connections that do not exist, and a flood of REQUESTs without reading the answers.
//! xenia answers RST where a guest port is named, drops the rest, counts every case, and the
//! device keeps serving: after them, a host connection echoes intact.

// Helpers outside #[test] functions fail the test with the console attached.
#![allow(clippy::panic)]

mod vsock_common;

use vsock_common::*;

#[test]
fn hostile_packets_are_refused_and_counted_and_the_device_keeps_working() {
    let kinds = [
        ("short", "none"),
        ("src-cid", "none"),
        ("dst-cid", "none"),
        ("type", "rst"),
        ("op", "rst"),
        ("len", "rst"),
        ("big", "rst"),
        ("rw-unknown", "rst"),
    ];
    let mut cmds: Vec<String> = kinds
        .iter()
        .map(|(k, _)| format!("vsock-hostile:{k}"))
        .collect();
    cmds.push("vsock-hostile:flood:3000".into());
    cmds.push("vsock-echo:52:1".into());
    let mut vm = VsockVm::boot(&cmds.join(","));
    for (kind, answer) in kinds {
        let line = vm.ok("vsock-hostile");
        assert!(
            line.contains(&format!("kind={kind} answer={answer} ")) && line.ends_with("then=ok"),
            "{line}"
        );
    }
    let flood = vm.ok("vsock-hostile");
    assert!(flood.contains("kind=flood"), "{flood}");
    vm.line("PROBE vsock-echo ready");
    let (s, _) = host_connect(&vm.uds, 52);
    let data = host_data(3, 256 << 10);
    assert!(echo_round_trip(s, data.clone()) == data, "echo differs");
    vm.ok("vsock-echo");
    let m = vm.finish();
    let v = &m["vsock"];
    // short: a bad chain; src-cid, dst-cid, type, op, len, big: bad packets.
    assert!(v["invalid_chains"].as_u64() >= Some(1), "{v}");
    assert!(v["invalid_packets"].as_u64() >= Some(6), "{v}");
    assert!(v["unknown_conn_packets"].as_u64() >= Some(1), "{v}");
    // 3,000 REQUESTs to nobody: each refused; the RSTs the guest did not take in time are
    // bounded, the excess dropped and counted.
    assert!(v["connect_fails"].as_u64() >= Some(3000), "{v}");
    assert!(v["rsts_dropped"].as_u64() > Some(0), "{v}");
    assert_eq!(v["queue_errors"], 0, "{v}");
}
