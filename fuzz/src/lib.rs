//! Harnesses for haul's libFuzzer targets.
//!
//! The targets in `fuzz_targets/` are one-line wrappers around the functions here, so that the
//! seed generator (`examples/gen_seeds.rs`) can replay its seeds through exactly the same code
//! and prove each seed reaches the state it was written for.
//!
//! - [`frames::run`]: the frame codec and message decoder (`frame_decode` target).
//! - [`session::run`]: the receiver's control-stream state machine, checked against a small
//!   reference model (`session` target).
//! - [`relpath::run`]: wire path validation, checked against an independent reference
//!   validator (`relpath` target).
//!
//! Every harness panics (and so makes libFuzzer report a crash) only when a property of the
//! code under test fails; inputs the code rightly refuses are not failures.
//!
//! Depends only on `haul-proto` and `haul-store`; it must not be part of the main workspace
//! (it needs the nightly sanitizer flags `cargo fuzz` passes).

pub mod frames;
mod model;
pub mod ops;
pub mod relpath;
pub mod seed;
pub mod session;
