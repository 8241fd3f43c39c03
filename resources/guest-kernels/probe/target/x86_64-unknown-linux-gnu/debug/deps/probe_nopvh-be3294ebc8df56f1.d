/work/main/resources/guest-kernels/probe/target/x86_64-unknown-linux-gnu/debug/deps/probe_nopvh-be3294ebc8df56f1.d: /work/main/clippy.toml src/bin/probe-nopvh.rs Cargo.toml

/work/main/resources/guest-kernels/probe/target/x86_64-unknown-linux-gnu/debug/deps/libprobe_nopvh-be3294ebc8df56f1.rmeta: /work/main/clippy.toml src/bin/probe-nopvh.rs Cargo.toml

/work/main/clippy.toml:
src/bin/probe-nopvh.rs:
Cargo.toml:

# env-dep:CLIPPY_ARGS=
# env-dep:CLIPPY_CONF_DIR
