//! The reserved key prefix lives in the sequencer crate: every bank's consensus core refuses
//! operations that write it (`bftcd_sequencer::validity`), with the same rules as the front.

pub use bftcd_sequencer::reserved::*;
