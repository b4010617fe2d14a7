//! chunk: filled in by its owner.
