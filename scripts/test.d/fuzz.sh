#!/usr/bin/env bash
# Every fuzz target of fuzz/ for 20 s from the committed corpus
# (scripts/fuzz.sh; two at a time on two CPUs: about 3 minutes and the
# build). Any crash fails the suite; the crashing input is kept in
# fuzz/artifacts/TARGET/. FUZZ_SECONDS overrides the time.
set -euo pipefail
cd "$(dirname "$0")/../.."
# A fixed seed: the suite explores the same inputs on every run (a new find
# fails the long campaign, not a CI run by chance).
export FUZZ_SEED=${FUZZ_SEED:-1}
exec scripts/fuzz.sh "${FUZZ_SECONDS:-20}"
