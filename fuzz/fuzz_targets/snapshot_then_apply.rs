//! Snapshot bodies that restore must also be usable: ticking an hour and then a day later
//! (expiring every hold and admission, forgetting ended holds and idempotency records,
//! admitting from open rooms) may not panic and must keep every invariant. This is what
//! checks that the restore's validation is strong enough for the code that trusts it.
#![no_main]
use ledger::{Command, Ledger, Op, Principal};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(mut l) = Ledger::restore_body(data) else {
        return;
    };
    let (Some(index), Some(clock)) = (l.last_index().checked_add(1), l.clock_ms().checked_add(1))
    else {
        return;
    };
    for (k, later_ms) in [(0, 0), (1, 3_600_001), (2, 90_000_000)] {
        let stamp = clock.saturating_add(later_ms);
        l.apply(index + k, Command::new(stamp, Principal::System, Op::Tick));
        l.check_invariants().expect("a tick keeps the invariants");
    }
});
