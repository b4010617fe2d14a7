#!/usr/bin/env bash
# The chaos suite (scripts/chaos.sh) for CI: 3 minutes of faults (kill -9,
# SIGSTOP/SIGCONT, restarts of MDSes and chunk servers) under the verifying
# writers, then at most 90 s to become healthy; about 4-5 minutes in all.
# The seed is random unless CHAOS_SEED is set; a failure prints it and
# keeps the cluster's logs (scripts/chaos.sh --seed S repeats the schedule).
set -euo pipefail
cd "$(dirname "$0")/../.."
exec scripts/chaos.sh --minutes 3 --heal-timeout 90 ${CHAOS_SEED:+--seed "$CHAOS_SEED"}
