//! Unit tests of the client against the fakes.
