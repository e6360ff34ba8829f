//! rescind's embedded journal on sled (work in progress).
#![forbid(unsafe_code)]
#![warn(missing_docs)]
