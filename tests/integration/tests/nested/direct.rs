//! The direct tier: on hardware KVM, xenia boots the guest itself; its stdout is the L2
//! console.

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

static NEXT: AtomicU32 = AtomicU32::new(0);

use super::watchdog::{self, Limits};
use super::{repo_root, Artifacts, Outcome, Scenario, TOTAL_LIMIT};

/// The xenia binary built next to this test (target/<profile>/xenia), or `$XENIA_BIN`.
fn xenia_binary() -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os("XENIA_BIN") {
        return Ok(PathBuf::from(path));
    }
    let exe = std::env::current_exe().map_err(|e| format!("cannot find the test binary: {e}"))?;
    // target/<profile>/deps/<test> -> target/<profile>/xenia
    let candidate = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|profile| profile.join("xenia"))
        .ok_or("test binary has no target/<profile>/deps parent")?;
    if candidate.is_file() {
        Ok(candidate)
    } else {
        Err(format!(
            "{} not built: run `cargo build --bins` first (or set XENIA_BIN)",
            candidate.display()
        ))
    }
}

pub fn run(scenario: &Scenario) -> Result<Outcome, String> {
    let root = repo_root();
    let config = scenario.vm_config(&Artifacts {
        kernels: root.join("build/linux"),
        rootfs: root.join("build/rootfs"),
    });
    let config_path = std::env::temp_dir().join(format!(
        "xenia-linux-{}-{}.json",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::write(&config_path, config.to_string())
        .map_err(|e| format!("cannot write {}: {e}", config_path.display()))?;

    let mut command = Command::new(xenia_binary()?);
    command
        .arg("--no-api")
        .arg("--config-file")
        .arg(&config_path);
    let no_diagnostics = String::new;
    let watched = watchdog::run(
        command,
        &Limits {
            idle: super::idle_limit(),
            total: TOTAL_LIMIT,
            on_hang: &no_diagnostics,
        },
    );
    let _ = std::fs::remove_file(&config_path);
    let watched = watched?;
    let mut transcript = format!("--- xenia stderr:\n{}", watched.stderr);
    if let Some(why) = &watched.killed {
        transcript.push_str(&format!("\n--- watchdog killed xenia: {why}"));
    }
    Ok(Outcome {
        l2_lines: watched.lines,
        xenia_status: watched.status,
        transcript,
    })
}
