//! `snapshot-merge BASE_MEM DIFF_STATE DIFF_MEM`: copies the pages a Diff snapshot holds
//! (the runs its state file lists) onto BASE_MEM, the memory file of the snapshot the diff
//! was taken after (a Full one, or one already merged). BASE_MEM then restores, with
//! DIFF_STATE, to the VM as it was when the diff was taken. Apply diffs oldest first.

use std::fs::{File, OpenOptions};
use std::process::ExitCode;

use vmm::persist::memory::merge_diff;
use vmm::persist::restore::read_state_file;
use vmm::persist::SnapshotType;

const USAGE: &str = "usage: snapshot-merge BASE_MEM DIFF_STATE DIFF_MEM";

fn run(args: &[String]) -> Result<String, String> {
    let [base, state, diff] = args else {
        return Err(USAGE.into());
    };
    let snapshot = read_state_file(state).map_err(|e| e.to_string())?;
    snapshot.validate().map_err(|e| format!("{state}: {e}"))?;
    if snapshot.snapshot_type != SnapshotType::Diff {
        return Err(format!("{state} is a Full snapshot: nothing to merge"));
    }
    let base_file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(base)
        .map_err(|e| format!("{base}: {e}"))?;
    let diff_file = File::open(diff).map_err(|e| format!("{diff}: {e}"))?;
    let copied = merge_diff(
        &base_file,
        &diff_file,
        &snapshot.diff_runs,
        snapshot.memory_len(),
    )
    .map_err(|e| format!("merging {diff} onto {base}: {e}"))?;
    Ok(format!(
        "merged {copied} bytes ({} runs) of {diff} onto {base}",
        snapshot.diff_runs.len()
    ))
}

#[allow(clippy::print_stdout, clippy::print_stderr)]
fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(msg) => {
            println!("{msg}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("snapshot-merge: {e}");
            ExitCode::FAILURE
        }
    }
}
