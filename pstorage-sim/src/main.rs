//! `pstorage-sim`: runs seeds of the whole-cluster simulator.
//!
//! `pstorage-sim --seed N [-v]` replays one seed (with `-v`, its trace);
//! `pstorage-sim --seeds N [--from S]` runs seeds S..S+N; `--seed-file F`
//! runs the seeds listed in F (one per line, `#` comments). Every seed
//! prints `seed=N trace_hash=HEX ...`; the last line is
//! `seeds=N steps=N ops=N faults=N violations=N`. Exit status 1 if any
//! seed found a violation.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use pstorage_sim::{run_seed, SimConfig};

#[derive(Parser, Debug)]
#[command(
    name = "pstorage-sim",
    about = "Deterministic simulation of a whole pstorage cluster: real MDSes, chunk servers and \
             clients on a simulated network and clock, under seeded faults"
)]
struct Args {
    /// Run this one seed.
    #[arg(long, conflicts_with_all = ["seeds", "seed_file"])]
    seed: Option<u64>,
    /// Run this many seeds, from --from.
    #[arg(long, conflicts_with = "seed_file")]
    seeds: Option<u64>,
    /// The first seed of --seeds.
    #[arg(long, default_value_t = 0)]
    from: u64,
    /// Run the seeds listed in this file (one per line; `#` starts a comment).
    #[arg(long)]
    seed_file: Option<PathBuf>,
    /// Steps of faults per seed (each --step-ms of simulated time).
    #[arg(long)]
    steps: Option<u64>,
    /// Simulated duration of the fault phase in seconds (sets --steps).
    #[arg(long, conflicts_with = "steps")]
    duration: Option<u64>,
    /// Simulated ms per step.
    #[arg(long, default_value_t = 100)]
    step_ms: u64,
    /// MDSes (3 or 5).
    #[arg(long, default_value_t = 3)]
    mds: usize,
    /// Chunk servers.
    #[arg(long, default_value_t = 5)]
    cs: usize,
    /// Clients.
    #[arg(long, default_value_t = 3)]
    clients: u32,
    /// Chunk size in bytes (default 64 KiB; 256 MiB with --defaults).
    #[arg(long)]
    chunk_size: Option<u64>,
    /// The cluster's default settings: 256 MiB chunks, the 300 s offline
    /// timeout, the default re-replication rate (slower to run; the twin of
    /// the shrunken default knobs).
    #[arg(long)]
    defaults: bool,
    /// Also step nodes' wall clocks by seconds to minutes (and back).
    #[arg(long)]
    clock_jumps: bool,
    /// Also hang nodes for longer than the offline timeout.
    #[arg(long)]
    hangs: bool,
    /// Also (once per run) take every chunk server down for longer than
    /// the offline timeout.
    #[arg(long)]
    outages: bool,
    /// Also (once per run) replace an MDS: a new one joins, an old one is
    /// removed for good.
    #[arg(long)]
    mds_changes: bool,
    /// Also crash clients (kill -9 mid-operation: no close, the lease left
    /// to expire) and restart them as new processes.
    #[arg(long)]
    client_crashes: bool,
    /// Every fault type: --clock-jumps --hangs --outages --mds-changes
    /// --client-crashes.
    #[arg(long)]
    all_faults: bool,
    /// Chunk servers run the real file store (write journal, chunk files,
    /// dirty log) on a disk in memory whose power loss loses, keeps or
    /// tears at 512-byte sectors what was not synced (default: the memory
    /// store and its own model of a power loss).
    #[arg(long)]
    file_store: bool,
    /// Chance of a fault per step, per thousand.
    #[arg(long, default_value_t = 30)]
    fault_permille: u32,
    /// Print the trace of each seed as it runs (best with --seed).
    #[arg(short = 'v', long = "trace", visible_alias = "verbose")]
    trace: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if std::env::var_os("PSTORAGE_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_env("PSTORAGE_LOG"))
            .with_writer(std::io::stderr)
            .init();
    }
    if !pstorage_sim::deterministic() {
        eprintln!(
            "pstorage-sim: warning: built without --cfg tokio_unstable (a RUSTFLAGS variable \
             overrides .cargo/config.toml): a seed may not replay exactly"
        );
    }
    let base = if args.defaults {
        SimConfig::at_defaults()
    } else {
        SimConfig::default()
    };
    let chunk_size = args.chunk_size.unwrap_or(base.chunk_size);
    let mut config = SimConfig {
        mds: args.mds,
        cs: args.cs,
        clients: args.clients,
        step_ms: args.step_ms,
        chunk_size,
        repl_bandwidth_bytes_per_s: if args.defaults {
            base.repl_bandwidth_bytes_per_s
        } else {
            SimConfig::scaled_repl_bandwidth(chunk_size)
        },
        fault_permille: args.fault_permille,
        clock_jumps: args.clock_jumps || args.all_faults,
        hangs: args.hangs || args.all_faults,
        outages: args.outages || args.all_faults,
        mds_changes: args.mds_changes || args.all_faults,
        client_crashes: args.client_crashes || args.all_faults,
        file_store: args.file_store,
        verbose: args.trace,
        ..base
    };
    if let Some(steps) = args.steps {
        config.steps = steps;
    }
    if let Some(secs) = args.duration {
        config.steps = secs * 1000 / config.step_ms.max(1);
    }
    let seeds: Vec<u64> = if let Some(seed) = args.seed {
        vec![seed]
    } else if let Some(path) = &args.seed_file {
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let mut seeds = Vec::new();
                for line in text.lines() {
                    let line = line.split('#').next().unwrap_or("").trim();
                    if line.is_empty() {
                        continue;
                    }
                    match line.parse::<u64>() {
                        Ok(seed) => seeds.push(seed),
                        Err(_) => {
                            eprintln!(
                                "pstorage-sim: {}: {line:?} is not a seed (one number per line)",
                                path.display()
                            );
                            return ExitCode::from(2);
                        }
                    }
                }
                seeds
            }
            Err(e) => {
                eprintln!("pstorage-sim: cannot read {}: {e}", path.display());
                return ExitCode::from(2);
            }
        }
    } else {
        let count = args.seeds.unwrap_or(1);
        (args.from..args.from + count).collect()
    };
    let (mut steps, mut ops, mut faults, mut violations) = (0u64, 0u64, 0u64, 0u64);
    let mut failed = Vec::new();
    let started = Instant::now();
    for seed in &seeds {
        let t = Instant::now();
        let outcome = run_seed(*seed, &config);
        println!(
            "seed={seed} trace_hash={} steps={} ops={} faults={} violations={} wall_ms={}",
            outcome.trace_hash,
            outcome.steps,
            outcome.ops,
            outcome.faults,
            outcome.violations.len(),
            t.elapsed().as_millis()
        );
        steps += outcome.steps;
        ops += outcome.ops;
        faults += outcome.faults;
        violations += outcome.violations.len() as u64;
        if !outcome.violations.is_empty() {
            println!("FAILED seed {seed}:");
            for v in &outcome.violations {
                println!("  violation: {v}");
            }
            if !config.verbose {
                println!("  last events:");
                for line in &outcome.recent {
                    println!("    {line}");
                }
            }
            println!(
                "  reproduce: pstorage-sim --seed {seed}{}",
                extra_args(&args)
            );
            failed.push(*seed);
        }
    }
    eprintln!(
        "pstorage-sim: {} seed(s) in {:.1} s",
        seeds.len(),
        started.elapsed().as_secs_f64()
    );
    if !failed.is_empty() {
        println!("failing seeds: {failed:?}");
    }
    println!(
        "seeds={} steps={steps} ops={ops} faults={faults} violations={violations}",
        seeds.len()
    );
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// The non-default knobs, to repeat in the reproduction line.
fn extra_args(args: &Args) -> String {
    let mut out = String::new();
    let defaults = SimConfig::default();
    if let Some(steps) = args.steps {
        out += &format!(" --steps {steps}");
    }
    if let Some(d) = args.duration {
        out += &format!(" --duration {d}");
    }
    if args.step_ms != defaults.step_ms {
        out += &format!(" --step-ms {}", args.step_ms);
    }
    if args.mds != defaults.mds {
        out += &format!(" --mds {}", args.mds);
    }
    if args.cs != defaults.cs {
        out += &format!(" --cs {}", args.cs);
    }
    if args.clients != defaults.clients {
        out += &format!(" --clients {}", args.clients);
    }
    if args.defaults {
        out += " --defaults";
    }
    for (on, flag) in [
        (args.all_faults, " --all-faults"),
        (args.clock_jumps, " --clock-jumps"),
        (args.hangs, " --hangs"),
        (args.outages, " --outages"),
        (args.mds_changes, " --mds-changes"),
        (args.client_crashes, " --client-crashes"),
        (args.file_store, " --file-store"),
    ] {
        if on {
            out += flag;
        }
    }
    if let Some(size) = args.chunk_size {
        out += &format!(" --chunk-size {size}");
    }
    if args.fault_permille != defaults.fault_permille {
        out += &format!(" --fault-permille {}", args.fault_permille);
    }
    out
}
