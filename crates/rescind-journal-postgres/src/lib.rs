//! # rescind-journal-postgres
//!
//! The shared journal (work in progress).
#![forbid(unsafe_code)]
#![warn(missing_docs)]
