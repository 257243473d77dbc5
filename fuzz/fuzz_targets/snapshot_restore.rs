//! Whole snapshots (header, length, checksum, body): any bytes give a value or an error.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(l) = ledger::Ledger::restore(data) {
        // Whatever restores must satisfy the invariants and re-encode to itself.
        l.check_invariants().expect("restored ledgers are valid");
        assert_eq!(
            ledger::Ledger::restore(&l.snapshot())
                .expect("round trip")
                .state_hash(),
            l.state_hash()
        );
    }
});
