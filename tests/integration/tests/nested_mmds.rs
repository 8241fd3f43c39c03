//! Real Linux reaching the metadata service: `ip route add 169.254.169.254 dev eth0`, then
//! busybox `wget` and `nc` speak HTTP to it through virtio-net, answered inside xenia. One
//! plan, two VMs: V1 (IMDS text, JSON, a host `PATCH /mmds` seen by the next GET) and V2
//! (a token through a raw `nc` PUT, GETs with, without and with an expired token).
#![allow(
    clippy::panic,
    clippy::print_stderr,
    reason = "a test crate: helpers fail by panicking, skips and wall times go to stderr"
)]

mod nested;

use nested::plan::{self, assert_clean_boot, Plan, PlanVm};
use serde_json::json;

/// Brings eth0 up and routes the MMDS address through it; `r` sends one raw request through
/// nc (`r 'GET /path' 'Header: value\r\n'`), `s` and `b` read the answer's status and body.
/// (Short names: the script travels base64-encoded on the 1,536-byte kernel command line.)
const L2_NET: &str = r#"
ip link set lo up
ip addr add 172.16.0.2/30 dev eth0
ip link set eth0 up
ip route add 169.254.169.254 dev eth0
M=169.254.169.254
I=/latest/meta-data/instance-id
r() { printf "$1 HTTP/1.1\r\n$2Connection: close\r\n\r\n" | nc $M 80 >/tmp/r; }
s() { head -n1 /tmp/r | cut -d' ' -f2; }
b() { tail -n1 /tmp/r; }
"#;

const L2_V1: &str = r#"
echo "L2-FACT v1_id=$(wget -qO- http://$M$I)"
echo "L2-FACT v1_keys=$(wget -qO- http://$M/latest/meta-data/ | tr '\n' ,)"
r 'GET /latest/meta-data' 'Accept: application/json\r\n'
echo "L2-FACT v1_json=$(s),$(b)"
wget -qO- http://$M/latest/meta-data/count >/dev/null 2>&1
echo "L2-FACT v1_number_wget=$?"
# Tell the host it may PATCH now, then poll (at most 10 s) for the new value.
nc 172.16.0.1 5002 </dev/null
n=0
until [ "$(wget -qO- http://$M$I)" = i-patched ] || [ $n -ge 100 ]; do
	n=$((n + 1))
	sleep 0.1
done
echo "L2-FACT v1_patched=$(wget -qO- http://$M$I) polls=$n"
"#;

const L2_V2: &str = r#"
r 'PUT /latest/api/token' 'X-metadata-token-ttl-seconds: 60\r\n'
t=$(b)
echo "L2-FACT v2_token=$(s),${#t}"
r "GET $I" "X-metadata-token: $t\r\n"
echo "L2-FACT v2_with=$(s),$(b)"
r "GET $I"
echo "L2-FACT v2_without=$(s)"
wget -qO- http://$M$I >/dev/null 2>&1
echo "L2-FACT v2_wget=$?"
r 'PUT /latest/api/token' 'X-aws-ec2-metadata-token-ttl-seconds: 1\r\n'
t=$(b)
sleep 2
r "GET $I" "X-aws-ec2-metadata-token: $t\r\n"
echo "L2-FACT v2_expired=$(s)"
r 'PUT /latest/api/token' 'X-metadata-token-ttl-seconds: 9\r\nX-Forwarded-For: 1.2.3.4\r\n'
echo "L2-FACT v2_forwarded=$(s)"
"#;

/// Hosting side: a tap in a namespace; each VM boots with the API and `--metadata`; for V1,
/// a listener on the tap's address waits for L2's signal and then patches the store.
const HOST: &str = r#"
ns="xenia-mmds-$$"
make_netns "$ns" || fail "cannot create the network namespace $ns"
tap_up "$ns" xtap0 172.16.0.1/30 || fail "cannot create the tap xtap0"
cat >"$WORK/md.json" <<'DATA'
{"latest": {"meta-data": {"instance-id": "i-nested", "count": 3, "local": {"zone": "z1"}}}}
DATA
$(WRITE_V1)
$(WRITE_V2)
(
	in_netns "$ns" busybox nc -l -p 5002 </dev/null >/dev/null
	api "$WORK/v1.sock" PATCH /mmds '{"latest": {"meta-data": {"instance-id": "i-patched"}}}'
) &
patcher=$!
# shellcheck disable=SC2086 # a word list on purpose
run_vm_command v1 nsenter --net="/var/run/netns/$ns" "$XENIA" --api-sock "$WORK/v1.sock" \
	--config-file "$WORK/v1.json" --metadata "$WORK/md.json" $XENIA_EXTRA_ARGS
# Release the listener if L2 never signalled (the PATCH then finds no xenia, harmlessly).
in_netns "$ns" busybox nc 172.16.0.1 5002 </dev/null >/dev/null 2>&1
wait "$patcher"
# shellcheck disable=SC2086 # a word list on purpose
run_vm_command v2 nsenter --net="/var/run/netns/$ns" "$XENIA" --api-sock "$WORK/v2.sock" \
	--config-file "$WORK/v2.json" --metadata "$WORK/md.json" $XENIA_EXTRA_ARGS
drop_netns "$ns"
"#;

/// Shell lines writing the config of a VM running `script` with MMDS `version` on eth0.
fn config(script: &str, version: &str, path: &str) -> String {
    let mut vm = PlanVm::new(&format!("{L2_NET}{script}"));
    vm.mem_mib = 256;
    vm.initrd = Some("$L2/initramfs.cpio".into());
    vm.interfaces = vec![json!({"iface_id": "eth0", "host_dev_name": "xtap0",
                                "guest_mac": "06:00:ac:10:00:02"})];
    let mut c = vm.config();
    c["mmds-config"] = json!({"network_interfaces": ["eth0"], "version": version});
    format!("cat >{path} <<EOF\n{c}\nEOF\n")
}

#[test]
fn linux_reads_mmds_v1_and_v2_with_busybox_wget_and_nc() {
    let script = HOST
        .replace("$(WRITE_V1)", &config(L2_V1, "V1", "\"$WORK/v1.json\""))
        .replace("$(WRITE_V2)", &config(L2_V2, "V2", "\"$WORK/v2.json\""));
    let Some(outcome) = plan::run(&Plan {
        name: "mmds",
        script,
    })
    .unwrap_or_else(|e| panic!("plan mmds: {e}")) else {
        return;
    };
    assert_clean_boot(&outcome, "v1");
    assert_clean_boot(&outcome, "v2");
    let v1 = outcome.vm("v1");
    let fact = |key: &str| v1.fact("L2-FACT", key).unwrap_or_default();
    assert_eq!(fact("v1_id"), "i-nested", "{:?}", v1.lines);
    assert_eq!(
        fact("v1_keys"),
        "count,instance-id,local/",
        "{:?}",
        v1.lines
    );
    assert_eq!(
        fact("v1_json"),
        r#"200,{"count":3,"instance-id":"i-nested","local":{"zone":"z1"}}"#
    );
    assert_ne!(
        fact("v1_number_wget"),
        "0",
        "a number has no IMDS text: 501"
    );
    assert_eq!(fact("v1_patched"), "i-patched", "{:?}", v1.lines);
    let v2 = outcome.vm("v2");
    let fact = |key: &str| v2.fact("L2-FACT", key).unwrap_or_default();
    assert_eq!(fact("v2_token"), "200,72", "{:?}", v2.lines);
    assert_eq!(fact("v2_with"), "200,i-nested");
    assert_eq!(fact("v2_without"), "401");
    assert_ne!(fact("v2_wget"), "0", "wget without a token gets 401");
    assert_eq!(fact("v2_expired"), "401");
    assert_eq!(fact("v2_forwarded"), "400");
}
