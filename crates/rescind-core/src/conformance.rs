//! The journal conformance suite (filled by the sled journal work).
