/work/main/resources/guest-kernels/probe/target/x86_64-unknown-linux-gnu/debug/deps/probe-927905144bfd8412.d: /work/main/clippy.toml src/lib.rs src/arch/mod.rs src/arch/cpu.rs src/arch/entry.rs src/arch/idt.rs src/arch/port.rs src/bootinfo.rs src/cmdline.rs src/commands.rs src/cpuinfo.rs src/e820.rs src/mem.rs src/mptable.rs src/serial.rs src/smp.rs src/sync.rs src/timer.rs src/virtio/mod.rs src/virtio/bench.rs src/virtio/blk.rs src/virtio/blk_cmds.rs src/virtio/dma.rs src/virtio/hostile.rs src/virtio/mmio.rs src/virtio/net.rs src/virtio/net_cmds.rs src/virtio/net_hostile.rs src/virtio/net_traffic.rs src/virtio/netstack.rs src/virtio/queue.rs Cargo.toml

/work/main/resources/guest-kernels/probe/target/x86_64-unknown-linux-gnu/debug/deps/libprobe-927905144bfd8412.rmeta: /work/main/clippy.toml src/lib.rs src/arch/mod.rs src/arch/cpu.rs src/arch/entry.rs src/arch/idt.rs src/arch/port.rs src/bootinfo.rs src/cmdline.rs src/commands.rs src/cpuinfo.rs src/e820.rs src/mem.rs src/mptable.rs src/serial.rs src/smp.rs src/sync.rs src/timer.rs src/virtio/mod.rs src/virtio/bench.rs src/virtio/blk.rs src/virtio/blk_cmds.rs src/virtio/dma.rs src/virtio/hostile.rs src/virtio/mmio.rs src/virtio/net.rs src/virtio/net_cmds.rs src/virtio/net_hostile.rs src/virtio/net_traffic.rs src/virtio/netstack.rs src/virtio/queue.rs Cargo.toml

/work/main/clippy.toml:
src/lib.rs:
src/arch/mod.rs:
src/arch/cpu.rs:
src/arch/entry.rs:
src/arch/idt.rs:
src/arch/port.rs:
src/bootinfo.rs:
src/cmdline.rs:
src/commands.rs:
src/cpuinfo.rs:
src/e820.rs:
src/mem.rs:
src/mptable.rs:
src/serial.rs:
src/smp.rs:
src/sync.rs:
src/timer.rs:
src/virtio/mod.rs:
src/virtio/bench.rs:
src/virtio/blk.rs:
src/virtio/blk_cmds.rs:
src/virtio/dma.rs:
src/virtio/hostile.rs:
src/virtio/mmio.rs:
src/virtio/net.rs:
src/virtio/net_cmds.rs:
src/virtio/net_hostile.rs:
src/virtio/net_traffic.rs:
src/virtio/netstack.rs:
src/virtio/queue.rs:
Cargo.toml:

# env-dep:CLIPPY_ARGS=
# env-dep:CLIPPY_CONF_DIR
