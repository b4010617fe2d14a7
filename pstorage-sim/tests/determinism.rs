//! The same seed gives the same run: equal trace hashes, twice in one
//! process (and, through the binary, in two processes).

#![allow(clippy::unwrap_used, reason = "a test: a step that fails panics")]

use pstorage_sim::{run_seed, SimConfig};

fn short() -> SimConfig {
    SimConfig {
        steps: 200,
        fault_permille: 80,
        ..SimConfig::default()
    }
}

#[test]
fn a_seed_replays_the_same_trace_in_one_process() {
    assert!(
        pstorage_sim::deterministic(),
        "built without --cfg tokio_unstable: see .cargo/config.toml"
    );
    let config = short();
    for seed in [1u64, 2, 3] {
        let first = run_seed(seed, &config);
        let second = run_seed(seed, &config);
        assert_eq!(
            first.trace_hash, second.trace_hash,
            "seed {seed} ran differently twice: last events\n{:#?}\nvs\n{:#?}",
            first.recent, second.recent
        );
        assert_eq!(first.ops, second.ops);
        assert!(first.ops > 0, "seed {seed}: the workload did nothing");
    }
}

#[test]
fn different_seeds_run_differently() {
    let config = short();
    assert_ne!(
        run_seed(1, &config).trace_hash,
        run_seed(2, &config).trace_hash
    );
}

#[test]
fn a_seed_replays_the_same_trace_in_another_process() {
    let bin = env!("CARGO_BIN_EXE_pstorage-sim");
    let run = || {
        let out = std::process::Command::new(bin)
            .args(["--seed", "4", "--steps", "150"])
            .output()
            .expect("run pstorage-sim");
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        stdout
            .lines()
            .find_map(|l| {
                l.split_whitespace()
                    .find_map(|w| w.strip_prefix("trace_hash=").map(str::to_string))
            })
            .unwrap_or_else(|| panic!("no trace_hash in {stdout}"))
    };
    assert_eq!(run(), run());
}

#[test]
fn every_fault_type_replays_the_same_trace() {
    let config = SimConfig {
        clock_jumps: true,
        hangs: true,
        outages: true,
        mds_changes: true,
        client_crashes: true,
        fault_permille: 150,
        ..short()
    };
    for seed in [4u64, 5] {
        let first = run_seed(seed, &config);
        let second = run_seed(seed, &config);
        assert_eq!(
            first.trace_hash, second.trace_hash,
            "seed {seed} (every fault type) ran differently twice: last events\n{:#?}\nvs\n{:#?}",
            first.recent, second.recent
        );
        assert!(first.faults > 0, "seed {seed}: no fault was injected");
    }
}
