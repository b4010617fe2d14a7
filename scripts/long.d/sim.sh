#!/usr/bin/env bash
# The long simulator campaign: 10,000 seeds of pstorage-sim, then the
# twin at the cluster's defaults (256 MiB chunks, 300 s offline timeout,
# the default re-replication rate; ~12 s per seed) and a campaign with
# every extended fault type, and chunk servers on the real file store
# (--file-store; see docs/design.md, "Simulation", for how long
# each takes and which extended faults still find open bugs).
set -euo pipefail
cd "$(dirname "$0")/../.."
# Release: 10,000 seeds take about 35 minutes of one core there, hours in
# a debug build (the CI's 200 seeds and failing seeds use the debug one).
cargo build --release -p pstorage-sim --quiet
sim=target/release/pstorage-sim
status=0
"$sim" --seeds "${SIM_LONG_SEEDS:-10000}" || status=1
"$sim" --defaults --seeds "${SIM_DEFAULTS_SEEDS:-20}" || status=1
"$sim" --defaults --hangs --seeds "${SIM_DEFAULTS_SEEDS:-20}" --from 1000 || status=1
"$sim" --all-faults --seeds "${SIM_ALL_FAULTS_SEEDS:-1000}" --from 100000 || status=1
"$sim" --file-store --seeds "${SIM_FILE_SEEDS:-2000}" --from 200000 || status=1
"$sim" --file-store --defaults --seeds "${SIM_DEFAULTS_SEEDS:-20}" --from 300000 || status=1
exit $status
