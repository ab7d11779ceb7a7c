//! Integration tests for tandem-gguf (one test binary, several modules).

mod common;
mod fuzz;
mod hostile;
mod roundtrip;
mod split;
mod stream;
