//! The barge engine. Data flows through one module per stage:
//!
//! [`input`] (what to move) → [`connections`] (where, with which credentials) → [`plan`]
//! (strategy and part size per file) → [`journal`] (the record of every file and part) →
//! [`worker`] (move parts, return receipts) → [`finalize`] (complete, verify, delete the exact
//! source) → [`report`] (progress and summary). [`run`] drives the stages in one process;
//! [`cluster`] lets many worker processes share them through the SQL journal's work queue.

pub mod bwlimit;
pub mod cluster;
pub mod connections;
mod error;
pub mod finalize;
pub mod identity;
pub mod input;
pub mod journal;
pub mod location;
pub mod plan;
pub mod report;
pub mod retry;
pub mod run;
pub mod size;
pub mod steps;
pub mod sync;
pub mod throttle;
pub mod worker;

pub use error::{EngineError, Result};
