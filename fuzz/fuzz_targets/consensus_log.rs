#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| bftcd_sequencer::fuzzing::consensus_log(data));
