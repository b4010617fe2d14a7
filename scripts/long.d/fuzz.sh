#!/usr/bin/env bash
# The long fuzzing campaign: every fuzz target of fuzz/ for 5 minutes
# (scripts/fuzz.sh), continuing from the inputs earlier runs found
# (target/fuzz-corpus/). FUZZ_LONG_SECONDS overrides the time.
set -euo pipefail
cd "$(dirname "$0")/../.."
exec scripts/fuzz.sh "${FUZZ_LONG_SECONDS:-300}"
