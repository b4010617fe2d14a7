//! mds: filled in by its owner.
