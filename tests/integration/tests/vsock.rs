//! virtio-vsock with the probe guest, Firecracker's hybrid protocol byte for byte: host
//! processes connect to `uds_path` with `CONNECT <port>\n` and read `OK <host_port>\n`;
//! guest connections to port P reach a host listener at `<uds_path>_<P>`; data both ways in
//! both directions (checked by FNV-1a on both ends), 64 host connections at once, 64 MiB
//! each way intact, RST when nobody listens, and the counters in metrics and usage.

// Helpers outside #[test] functions fail the test with the console attached.
#![allow(clippy::panic)]

mod vsock_common;

use std::collections::HashSet;

use vsock_common::*;

#[test]
fn both_directions_carry_data_sixty_four_connections_at_once_and_unserved_ports_get_rst() {
    let mut vm =
        VsockVm::boot("vsock-info,vsock-echo:52:65,vsock-connect:7000:1048576:4,vsock-refused:9");
    let info = vm.ok("vsock-info");
    assert_eq!(num(&info, "cid"), GUEST_CID, "{info}");
    vm.line("PROBE vsock-echo ready");
    let listener = host_listener(&vm.uds, 7000, 4, true);

    // Host -> guest, one connection, 1 MiB echoed back intact.
    let (s, host_port) = host_connect(&vm.uds, 52);
    assert!((1 << 30..1 << 31).contains(&host_port), "{host_port}");
    let data = host_data(1, 1 << 20);
    assert!(
        echo_round_trip(s, data.clone()) == data,
        "1 MiB echo differs"
    );

    // 64 connections open at once, each echoing its own 64 KiB concurrently.
    let conns: Vec<_> = (0..64).map(|_| host_connect(&vm.uds, 52)).collect();
    let ports: HashSet<u32> = conns.iter().map(|c| c.1).collect();
    assert_eq!(ports.len(), 64, "every connection has its own host port");
    let workers: Vec<_> = conns
        .into_iter()
        .enumerate()
        .map(|(i, (s, _))| {
            std::thread::spawn(move || {
                let data = host_data(100 + i as u64, 64 << 10);
                echo_round_trip(s, data.clone()) == data
            })
        })
        .collect();
    for (i, w) in workers.into_iter().enumerate() {
        assert!(w.join().unwrap_or(false), "connection {i}: echo differs");
    }
    let echo = vm.ok("vsock-echo");
    assert_eq!(num(&echo, "conns"), 65, "{echo}");
    assert_eq!(num(&echo, "bytes"), (1 << 20) + 64 * (64 << 10), "{echo}");

    // Guest -> host: four connections to <uds>_7000, 1 MiB each, echoed by the host.
    let connect = vm.ok("vsock-connect");
    assert_eq!(num(&connect, "sent"), 4 << 20, "{connect}");
    assert_eq!(num(&connect, "received"), 4 << 20, "{connect}");
    let seen = listener
        .join()
        .unwrap_or_else(|_| panic!("listener panicked"));
    let lines: Vec<String> =
        vm.x.lines
            .iter()
            .filter(|l| l.starts_with("PROBE vsock-conn n="))
            .cloned()
            .collect();
    assert_eq!(lines.len(), 4, "{lines:?}");
    for (k, (line, s)) in lines.iter().zip(&seen).enumerate() {
        assert_eq!(s.bytes, 1 << 20, "{line}");
        let expected = fnv(FNV_INIT, &probe_stream(k as u64, 1 << 20));
        assert_eq!(s.fnv, expected, "the host got what the guest sent: {line}");
        assert_eq!(
            num(line, "received"),
            1 << 20,
            "the guest got the echo: {line}"
        );
    }

    // Nobody at <uds>_9: the guest gets RST.
    vm.ok("vsock-refused");
    let m = vm.finish();
    let v = &m["vsock"];
    assert!(v["conns_added"].as_u64() >= Some(69), "{v}");
    assert!(v["connect_fails"].as_u64() >= Some(1), "{v}");
    assert_eq!(v["invalid_packets"], 0, "{v}");
    assert_eq!(v["credit_violations"], 0, "{v}");
    let guest_to_host = (1u64 << 20) + 64 * (64 << 10) + (4 << 20);
    assert!(v["tx_bytes_count"].as_u64() >= Some(guest_to_host), "{v}");
    assert!(v["rx_bytes_count"].as_u64() >= Some(guest_to_host), "{v}");
    let u = &m["usage"]["counters"]["vsock"];
    assert_eq!(u["tx_bytes"], v["tx_bytes_count"], "{u}");
    assert_eq!(u["rx_bytes"], v["rx_bytes_count"], "{u}");
    assert_eq!(u["connections"], v["conns_added"], "{u}");
}

#[test]
fn sixty_four_mib_arrive_intact_each_way() {
    const LEN: usize = 64 << 20;
    let mut vm = VsockVm::boot("vsock-echo:53:1,vsock-connect:7001:67108864:1,vsock-sink:54:1");
    vm.line("PROBE vsock-echo ready");
    let listener = host_listener(&vm.uds, 7001, 1, false);
    // Host -> guest -> host: 64 MiB through the guest and back, compared on the host.
    let (s, _) = host_connect(&vm.uds, 53);
    let data = host_data(7, LEN);
    let expected = fnv(FNV_INIT, &data);
    let back = echo_round_trip(s, data);
    assert_eq!(back.len(), LEN);
    assert_eq!(fnv(FNV_INIT, &back), expected, "the echo differs");
    drop(back);
    vm.ok("vsock-echo");
    // Guest -> host: 64 MiB of the probe's pattern, compared with its regeneration.
    let connect = vm.ok("vsock-connect");
    assert_eq!(num(&connect, "sent"), LEN as u64, "{connect}");
    let seen = listener
        .join()
        .unwrap_or_else(|_| panic!("listener panicked"));
    assert_eq!(seen[0].bytes, LEN as u64);
    assert_eq!(seen[0].fnv, fnv(FNV_INIT, &probe_stream(0, LEN)));
    // Host -> guest alone: the sink counts 64 MiB.
    vm.line("PROBE vsock-sink ready");
    let (s, _) = host_connect(&vm.uds, 54);
    let mut w = s.try_clone().unwrap_or_else(|e| panic!("{e}"));
    let writer = std::thread::spawn(move || {
        use std::io::Write;
        let chunk = vec![0xa5u8; 1 << 20];
        for _ in 0..64 {
            w.write_all(&chunk).unwrap_or_else(|e| panic!("write: {e}"));
        }
        w.shutdown(std::net::Shutdown::Write).unwrap_or_default();
    });
    assert_eq!(sink_reply(s), LEN as u64);
    writer.join().unwrap_or_else(|_| panic!("writer panicked"));
    vm.ok("vsock-sink");
    let m = vm.finish();
    assert_eq!(m["vsock"]["credit_violations"], 0);
    // To the guest: the echo's 64 MiB and the sink's; from it: the echo and the pattern.
    assert!(m["vsock"]["rx_bytes_count"].as_u64() >= Some(2 * LEN as u64));
    assert!(m["vsock"]["tx_bytes_count"].as_u64() >= Some(2 * LEN as u64));
}

#[test]
fn put_vsock_before_boot_is_exported_and_refused_after() {
    use xenia_integration_tests::{probe, probe_args, TempDir, Xenia, BOOT_TIMEOUT};
    let dir = TempDir::new();
    let uds = dir.path().join("api.sock");
    let (mut x, api) = Xenia::with_api(&[]);
    let body = serde_json::json!({"vsock_id": "vsock0", "guest_cid": 7, "uds_path": uds});
    let r = api.expect("PUT", "/vsock", &body.to_string(), 204);
    assert_eq!(
        r.header("deprecation"),
        Some("true"),
        "vsock_id is deprecated"
    );
    let plain = serde_json::json!({"guest_cid": 7, "uds_path": uds});
    let r = api.expect("PUT", "/vsock/vsock0", &plain.to_string(), 204);
    assert_eq!(r.header("deprecation"), None);
    let config = api.expect("GET", "/vm/config", "", 200).json();
    assert_eq!(config["vsock"], plain, "{config}");
    let boot = serde_json::json!({"kernel_image_path": probe().pvh,
                                  "boot_args": probe_args("vsock-info,idle")});
    api.expect("PUT", "/boot-source", &boot.to_string(), 204);
    api.start_instance(204);
    let info = x
        .wait_for_line("PROBE vsock-info ", BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(num(&info, "cid"), 7, "{info}");
    let r = api.expect("PUT", "/vsock", &plain.to_string(), 400);
    assert!(r.fault().contains("after starting"), "{}", r.fault());
}

#[test]
fn a_live_socket_at_uds_path_fails_the_start_and_a_stale_one_is_replaced() {
    use xenia_integration_tests::{probe, probe_args, TempDir, Xenia, BOOT_TIMEOUT};
    let dir = TempDir::new();
    let uds = dir.path().join("taken.sock");
    let live = std::os::unix::net::UnixListener::bind(&uds).unwrap_or_else(|e| panic!("{e}"));
    let boot = serde_json::json!({"kernel_image_path": probe().pvh,
                                  "boot_args": probe_args("vsock-info")});
    let vsock = serde_json::json!({"guest_cid": 3, "uds_path": uds});
    let (_x, api) = Xenia::with_api(&[]);
    api.expect("PUT", "/vsock", &vsock.to_string(), 204);
    api.expect("PUT", "/boot-source", &boot.to_string(), 204);
    let r = api.start_instance(400);
    assert!(
        r.fault().contains("vsock: cannot listen on uds_path"),
        "{}",
        r.fault()
    );
    // Nobody listens any more: the file is stale and the next VM takes the path.
    drop(live);
    let (mut y, api2) = Xenia::with_api(&[]);
    api2.expect("PUT", "/vsock", &vsock.to_string(), 204);
    api2.expect("PUT", "/boot-source", &boot.to_string(), 204);
    api2.start_instance(204);
    let info = y
        .wait_for_line("PROBE vsock-info ", BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(info.contains(" ok "), "{info}");
}
