//! Gives `libpstorage.so` its SONAME, so programs linked against it record
//! `libpstorage.so.0` and keep working across compatible upgrades.

fn main() {
    // Bump together with the major version in scripts/install-sdk.sh when the
    // ABI changes incompatibly.
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libpstorage.so.0");
    println!("cargo:rerun-if-changed=build.rs");
}
