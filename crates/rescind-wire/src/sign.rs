//! Signing (filled by the simulator/wire work).
