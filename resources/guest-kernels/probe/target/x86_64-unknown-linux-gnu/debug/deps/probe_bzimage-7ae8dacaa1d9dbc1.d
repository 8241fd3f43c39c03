/work/main/resources/guest-kernels/probe/target/x86_64-unknown-linux-gnu/debug/deps/probe_bzimage-7ae8dacaa1d9dbc1.d: /work/main/clippy.toml src/bin/probe-bzimage.rs Cargo.toml

/work/main/resources/guest-kernels/probe/target/x86_64-unknown-linux-gnu/debug/deps/libprobe_bzimage-7ae8dacaa1d9dbc1.rmeta: /work/main/clippy.toml src/bin/probe-bzimage.rs Cargo.toml

/work/main/clippy.toml:
src/bin/probe-bzimage.rs:
Cargo.toml:

# env-dep:CLIPPY_ARGS=
# env-dep:CLIPPY_CONF_DIR
