//! rescind facade (filled below).
