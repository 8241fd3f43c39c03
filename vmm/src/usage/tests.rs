use super::*;
use crate::config::HugePages;
use crate::vstate::memory::create_guest_memory;
use std::sync::atomic::Ordering;

fn started(meter: &mut UsageMeter) -> (Arc<BlockMetrics>, Arc<NetMetrics>) {
    let mem = create_guest_memory(8 << 20, HugePages::None).unwrap();
    let blk = Arc::new(BlockMetrics::default());
    let net = Arc::new(NetMetrics::default());
    meter.vm_started(
        mem,
        8 << 20,
        vec![("root".into(), blk.clone())],
        vec![("eth0".into(), net.clone())],
    );
    (blk, net)
}

#[test]
fn identities_are_random_and_a_record_before_boot_is_empty() {
    let mut a = UsageMeter::new("vm-a");
    let b = UsageMeter::new("vm-b");
    assert_ne!(a.usage_id(), b.usage_id());
    assert_eq!(a.usage_id().len(), 32);
    let r = a.record("Not started", Some("start-failed"));
    assert!(r.is_final && r.counters.is_none());
    assert_eq!(r.exit_reason.as_deref(), Some("start-failed"));
}

#[test]
fn device_counters_and_wall_time_show_in_the_record() {
    let mut m = UsageMeter::new("vm");
    let (blk, net) = started(&mut m);
    blk.write_bytes.fetch_add(1 << 20, Ordering::Relaxed);
    blk.write_count.fetch_add(8, Ordering::Relaxed);
    net.tx_packets.fetch_add(5, Ordering::Relaxed);
    net.tx_spoofed_dropped.fetch_add(1, Ordering::Relaxed);
    let r = m.record("Running", None);
    let c = r.counters.unwrap();
    assert_eq!(c.drives["root"].write_bytes, 1 << 20);
    assert_eq!(c.drives["root"].write_ops, 8);
    assert_eq!(c.interfaces["eth0"].tx_frames, 5);
    assert_eq!(c.interfaces["eth0"].tx_dropped_spoofed_frames, 1);
    assert_eq!(c.memory.configured_mib, 8);
    assert!(!r.is_final);
    let v = serde_json::to_value(m.record("Running", None)).unwrap();
    assert!(v["counters"]["wall"]["running_ms"].is_u64());
    assert!(v["counters"]["vcpu_total"]["cpu_total_ns"].is_u64());
}

#[test]
fn paused_time_is_counted_apart() {
    let t0 = Instant::now();
    let mut c = StateClock {
        since: t0,
        paused: false,
        running: Duration::ZERO,
        paused_for: Duration::ZERO,
    };
    c.set_paused(true, t0 + Duration::from_secs(3));
    c.set_paused(true, t0 + Duration::from_secs(4));
    c.set_paused(false, t0 + Duration::from_secs(5));
    let (run, paused) = c.totals(t0 + Duration::from_secs(6));
    assert_eq!((run.as_secs(), paused.as_secs()), (4, 2));
}

#[test]
fn a_restore_continues_the_counters_under_a_new_identity() {
    let mut original = UsageMeter::new("vm");
    let (blk, _) = started(&mut original);
    blk.read_bytes.fetch_add(4096, Ordering::Relaxed);
    let saved = original.save_state().unwrap();
    let text = serde_json::to_string(&saved).unwrap();

    let mut clones = Vec::new();
    for _ in 0..2 {
        let state: UsageState = serde_json::from_str(&text).unwrap();
        let mut clone = UsageMeter::new("vm");
        clone.continue_from(&state).unwrap();
        let (blk, _) = started(&mut clone);
        blk.read_bytes.fetch_add(100, Ordering::Relaxed);
        let r = clone.record("Running", None);
        assert_eq!(r.parent_usage_id.as_deref(), Some(original.usage_id()));
        assert_eq!(r.usage_epoch, 1);
        let c = r.counters.unwrap();
        assert_eq!(c.drives["root"].read_bytes, 4096 + 100);
        assert!(c.wall.running_ms >= saved.counters.wall.running_ms);
        assert_eq!(r.inherited.unwrap().drives["root"].read_bytes, 4096);
        clones.push(r.usage_id);
    }
    assert_ne!(clones[0], clones[1]);
    assert!(!clones.contains(&original.usage_id().to_owned()));
}

#[test]
fn vsock_counters_are_reported_and_continue_from_a_snapshot() {
    use virtio::vsock::VsockMetrics;
    let mut meter = UsageMeter::new("vm-v");
    started(&mut meter);
    assert_eq!(
        meter.counters().unwrap().vsock,
        None,
        "no device, no section"
    );
    let m = Arc::new(VsockMetrics::default());
    meter.set_vsock_source(m.clone());
    VsockMetrics::add(&m.rx_bytes_count, 1000);
    VsockMetrics::add(&m.tx_packets_count, 3);
    VsockMetrics::inc(&m.conns_added);
    let v = meter.counters().unwrap().vsock.unwrap();
    assert_eq!((v.rx_bytes, v.tx_packets, v.connections), (1000, 3, 1));
    let inherited = VsockUsage {
        rx_bytes: 5,
        connections: 2,
        ..Default::default()
    };
    assert_eq!(
        vsock_usage(Some(&inherited), Some(&m)).map(|v| (v.rx_bytes, v.connections)),
        Some((1005, 3))
    );
    assert_eq!(vsock_usage(Some(&inherited), None), Some(inherited));
}
