//! Test harness shared by the end-to-end tests, the benchmark and the demo.
// Test support: a failed unwrap fails the test that called it, with its
// location, which is what a test wants.
#![allow(clippy::unwrap_used)]
#![forbid(unsafe_code)]
pub mod fuzz;
pub mod harness;
pub mod load;
pub mod otlp;
pub mod pki;
pub mod ports;
pub mod process;
pub mod prometheus;
pub mod test_models;
pub mod upstream;
pub mod xds_script;
