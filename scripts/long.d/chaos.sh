#!/usr/bin/env bash
# The long chaos campaign: 30 minutes of faults (scripts/chaos.sh) under the
# verifying writers, then at most 5 minutes to become healthy. The seed is
# random unless CHAOS_SEED is set; CHAOS_MINUTES changes the length.
set -euo pipefail
cd "$(dirname "$0")/../.."
exec scripts/chaos.sh --minutes "${CHAOS_MINUTES:-30}" --heal-timeout 300 ${CHAOS_SEED:+--seed "$CHAOS_SEED"}
