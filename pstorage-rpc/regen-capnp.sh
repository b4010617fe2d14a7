#!/bin/sh
# Regenerates src/generated/pstorage_capnp.rs from schema/pstorage.capnp.
#
# Needs the `capnp` schema compiler (Debian: apt-get install capnproto); the
# Rust code generator is the `capnpc` crate, a dev-dependency, so the
# generation runs inside the test that checks the committed code is current.
# Commit the result: building the crate never needs `capnp`.
set -eu
cd "$(dirname "$0")"
command -v capnp >/dev/null || { echo "capnp not found: apt-get install capnproto" >&2; exit 1; }
PSTORAGE_REGEN_CAPNP=1 cargo test -p pstorage-rpc --lib generated::tests::generated_code_is_current
cargo test -p pstorage-rpc --lib generated::tests::generated_code_is_current
