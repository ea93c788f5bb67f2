//! Test harness shared by the end-to-end tests, the benchmark and the demo.
pub mod fuzz;
pub mod harness;
pub mod ports;
pub mod process;
pub mod prometheus;
pub mod test_models;
pub mod upstream;
pub mod xds_script;
