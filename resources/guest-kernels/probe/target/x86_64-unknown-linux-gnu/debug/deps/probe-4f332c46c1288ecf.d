/work/main/resources/guest-kernels/probe/target/x86_64-unknown-linux-gnu/debug/deps/probe-4f332c46c1288ecf.d: /work/main/clippy.toml src/bin/probe.rs Cargo.toml

/work/main/resources/guest-kernels/probe/target/x86_64-unknown-linux-gnu/debug/deps/libprobe-4f332c46c1288ecf.rmeta: /work/main/clippy.toml src/bin/probe.rs Cargo.toml

/work/main/clippy.toml:
src/bin/probe.rs:
Cargo.toml:

# env-dep:CLIPPY_ARGS=
# env-dep:CLIPPY_CONF_DIR
