//! virtio-vsock with a real Linux guest: a static client/server (`tools/rootfs/vsock-test.c`,
//! in the guest's rootfs and on the hosting machine as `$L2/vsock-test`) talks to a host
//! process through xenia's Unix sockets, Firecracker's protocol both ways: the guest connects
//! to CID 2 port 7000 (a host listener at `<uds_path>_7000` echoes), then listens on port 52
//! and the host connects with `CONNECT 52` and reads `OK <port>`; 1 MiB each way, compared by
//! FNV-1a on the sending side after the echo.
#![allow(
    clippy::panic,
    clippy::print_stderr,
    reason = "a test crate: helpers fail by panicking, skips and wall times go to stderr"
)]

mod nested;

use nested::plan::{self, assert_clean_boot, Plan, PlanVm};
use serde_json::json;

/// The guest: connect out, then serve one connection (the script is short enough for the
/// kernel command line).
const L2: &str = r#"
echo "L2-FACT $(vsock-test connect 2 7000 1048576 | tail -n 1 | cut -d' ' -f2- | tr ' ' '\n' | grep -E '^(ok|received)=' | tr '\n' ' ')"
vsock-test listen 52
"#;

/// The hosting side: the listener for the guest's connection, the VM, and (once the guest
/// listens) the host's connection, retried until the guest answers.
const HOST: &str = r#"
T="$L2/vsock-test"
$(WRITE_CONFIG)
"$T" ulisten "$WORK/v.sock_7000" >"$WORK/ulisten.txt" 2>&1 &
(
	i=0
	while [ "$i" -lt 300 ]; do
		if "$T" uconnect "$WORK/v.sock" 52 1048576 >"$WORK/uconnect.txt" 2>&1; then
			break
		fi
		sleep 1
		i=$((i + 1))
	done
) &
vm vsock "$WORK/vsock.json" --metrics-path "$WORK/metrics.json"
wait
fact ulisten "$(tr ' ' '_' <"$WORK/ulisten.txt")"
fact uconnect_ok "$(grep -o 'ok=[01]' "$WORK/uconnect.txt" | cut -d= -f2)"
fact uconnect_received "$(grep -o 'received=[0-9]*' "$WORK/uconnect.txt" | cut -d= -f2)"
fact host_port "$(grep -o 'host_port=[0-9]*' "$WORK/uconnect.txt" | cut -d= -f2)"
last=$(tail -n 1 "$WORK/metrics.json")
fact conns_added "$(echo "$last" | grep -o '"conns_added":[0-9]*' | cut -d: -f2)"
fact invalid_packets "$(echo "$last" | grep -o '"invalid_packets":[0-9]*' | cut -d: -f2)"
"#;

#[test]
fn linux_talks_to_host_processes_over_vsock_both_ways() {
    let mut vm = PlanVm::new(L2);
    vm.initrd = Some("$L2/initramfs.cpio".into());
    let mut config = vm.config();
    config["vsock"] = json!({"guest_cid": 3, "uds_path": "$WORK/v.sock"});
    let write = format!("cat >\"$WORK/vsock.json\" <<EOF\n{config}\nEOF\n");
    let script = HOST.replace("$(WRITE_CONFIG)", &write);
    let Some(outcome) = plan::run(&Plan {
        name: "vsock",
        script,
    })
    .unwrap_or_else(|e| panic!("plan vsock: {e}")) else {
        return;
    };
    assert_clean_boot(&outcome, "vsock");
    let guest = outcome.vm("vsock");
    let lines = || guest.lines.join("\n");
    // Guest -> host: the echo came back intact.
    assert_eq!(
        guest.fact("L2-FACT", "ok").as_deref(),
        Some("1"),
        "{}",
        lines()
    );
    assert_eq!(
        guest.fact("L2-FACT", "received").as_deref(),
        Some("1048576"),
        "{}",
        lines()
    );
    let fact = |key: &str| outcome.fact(key).unwrap_or_default().to_owned();
    assert!(
        fact("ulisten").contains("echoed=1048576"),
        "{}",
        outcome.transcript
    );
    // Host -> guest: OK with a port in [2^30, 2^31), then the echo intact.
    let port: u64 = fact("host_port").parse().unwrap_or(0);
    assert!((1 << 30..1 << 31).contains(&port), "{}", outcome.transcript);
    assert_eq!(fact("uconnect_ok"), "1", "{}", outcome.transcript);
    assert_eq!(
        fact("uconnect_received"),
        "1048576",
        "{}",
        outcome.transcript
    );
    assert!(
        guest.has_line("VSOCK-TEST mode=listen echoed=1048576"),
        "{}",
        lines()
    );
    assert_eq!(fact("invalid_packets"), "0", "{}", outcome.transcript);
    assert!(fact("conns_added").parse::<u64>().unwrap_or(0) >= 2);
}
