//! Model checking of the part / commit / complete / GC protocol with
//! `stateright` (issue 15, part 2): the real design satisfies DESIGN.md's
//! invariants exhaustively within the bounds, and the two designs the
//! project exists to avoid are caught with a counterexample. See
//! docs/protocol.md. Larger bounds: `cargo test -p mfs-ingest-shared --test
//! protocol_model -- --ignored`.

mod protocol;

use std::collections::BTreeSet;
use std::time::Instant;

use protocol::{
    Design, Faults, ProtocolModel, COMPLETED_AT_MOST_ONCE, COMPLETED_FILE_IS_WINNERS, FINISHES,
    REFERENCED_NEVER_COLLECTED, STALE_NEVER_VISIBLE,
};
use stateright::{Checker, HasDiscoveries, Model};

const SAFETY: [&str; 4] = [
    COMPLETED_FILE_IS_WINNERS,
    REFERENCED_NEVER_COLLECTED,
    STALE_NEVER_VISIBLE,
    COMPLETED_AT_MOST_ONCE,
];

fn threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(2))
}

/// Checks every reachable state of `model` and asserts every property:
/// no counterexample to the `always` and `eventually` ones, an example of
/// each `sometimes` one.
fn check_exhaustively(name: &str, model: ProtocolModel) {
    let started = Instant::now();
    let checker = model.checker().threads(threads()).spawn_bfs().join();
    eprintln!(
        "{name}: {} unique states ({} generated), depth {}, {:.1} s",
        checker.unique_state_count(),
        checker.state_count(),
        checker.max_depth(),
        started.elapsed().as_secs_f64()
    );
    checker.assert_properties();
}

/// Runs `model` until one of `wanted` has a counterexample, prints the
/// shortest one found (breadth first) and returns the violated property.
fn find_counterexample(name: &str, model: ProtocolModel, wanted: &[&'static str]) -> &'static str {
    let started = Instant::now();
    // One thread: breadth first exactly, so the shortest counterexample.
    let checker = model
        .clone()
        .checker()
        .finish_when(HasDiscoveries::AnyOf(
            wanted.iter().copied().collect::<BTreeSet<_>>(),
        ))
        .spawn_bfs()
        .join();
    let (property, path) = wanted
        .iter()
        .find_map(|p| checker.discovery(p).map(|path| (*p, path)))
        .unwrap_or_else(|| {
            panic!(
                "{name}: no counterexample to any of {wanted:?} in {} states",
                checker.unique_state_count()
            )
        });
    eprintln!(
        "{name}: \"{property}\" violated after {} unique states, {:.1} s; the steps:",
        checker.unique_state_count(),
        started.elapsed().as_secs_f64()
    );
    let last = path.last_state().clone();
    for (n, (before, action)) in path.into_vec().into_iter().enumerate() {
        if let Some(action) = action {
            eprintln!("  {}. {}", n + 1, model.describe(&before, action));
        }
    }
    eprintln!("  last state: {last:?}");
    property
}

/// 2 workers, 3 parts, 2 retries (`max_attempts` 3) with the given fault
/// budgets: crashes, duplicate deliveries, lost jobs, failed writes, client
/// re-uploads.
fn bounded(design: Design, faults: [u8; 5]) -> ProtocolModel {
    let [crashes, duplicates, losses, write_failures, reuploads] = faults;
    ProtocolModel {
        faults: Faults {
            crashes,
            duplicates,
            losses,
            write_failures,
            reuploads,
        },
        ..ProtocolModel::standard(design)
    }
}

#[test]
fn the_real_protocol_holds_with_retries_duplicates_and_a_reupload() {
    // Two failed writes: one part can use both retries, or the session
    // fails when it runs out of them.
    check_exhaustively(
        "locked, 2 retries used, 1 duplicate, 1 re-upload",
        bounded(Design::Locked, [0, 1, 0, 2, 1]),
    );
}

#[test]
fn the_real_protocol_holds_with_retries_a_crash_and_a_lost_job() {
    check_exhaustively(
        "locked, 2 retries used, 1 crash, 1 lost job, 1 re-upload",
        bounded(Design::Locked, [1, 0, 1, 2, 1]),
    );
}

#[test]
fn the_real_protocol_holds_with_every_fault_once() {
    check_exhaustively(
        "locked, every fault once",
        bounded(Design::Locked, [1, 1, 1, 1, 1]),
    );
}

#[test]
fn the_real_protocol_holds_when_the_session_expires_at_any_moment() {
    let model = ProtocolModel {
        expiry: true,
        ..bounded(Design::Locked, [0, 1, 0, 2, 1])
    };
    check_exhaustively("locked with expiry", model);
}

#[test]
fn the_real_protocol_holds_for_single_part_files() {
    // One part: completion renames the staging inode into place, so the
    // completed file IS a staging inode the collector must never delete.
    let model = ProtocolModel {
        parts: 1,
        ..ProtocolModel::standard(Design::Locked)
    };
    check_exhaustively("locked, single part, every fault", model);
}

#[test]
fn completion_that_reads_the_parts_outside_the_lock_is_caught() {
    let violated = find_counterexample(
        "read outside the lock",
        bounded(Design::ReadOutsideLock, [0, 1, 0, 2, 1]),
        &SAFETY,
    );
    assert_eq!(violated, COMPLETED_FILE_IS_WINNERS);
}

#[test]
fn completion_outside_the_lock_of_a_single_part_loses_the_file() {
    let model = ProtocolModel {
        parts: 1,
        ..bounded(Design::ReadOutsideLock, [0, 1, 0, 2, 1])
    };
    let violated = find_counterexample("read outside the lock, single part", model, &SAFETY);
    assert!(
        [COMPLETED_FILE_IS_WINNERS, REFERENCED_NEVER_COLLECTED].contains(&violated),
        "{violated}"
    );
}

#[test]
fn a_retry_that_overwrites_in_place_is_caught() {
    let violated = find_counterexample(
        "overwrite in place",
        ProtocolModel::standard(Design::OverwriteInPlace),
        &SAFETY,
    );
    assert_eq!(violated, STALE_NEVER_VISIBLE);
}

#[test]
fn overwrite_in_place_also_lets_the_collector_delete_a_committed_part() {
    let violated = find_counterexample(
        "overwrite in place, GC",
        ProtocolModel::standard(Design::OverwriteInPlace),
        &[REFERENCED_NEVER_COLLECTED],
    );
    assert_eq!(violated, REFERENCED_NEVER_COLLECTED);
}

#[test]
fn without_the_reconciler_a_lost_job_leaves_the_session_open_forever() {
    // Proof that the liveness property can fail: nothing republishes a
    // lost job, so the session never finishes.
    let model = ProtocolModel {
        reconciler: false,
        ..bounded(Design::Locked, [0, 0, 1, 0, 0])
    };
    let violated = find_counterexample("no reconciler", model, &[FINISHES]);
    assert_eq!(violated, FINISHES);
}

#[test]
#[ignore = "larger bounds, minutes: run with --ignored"]
fn the_real_protocol_holds_with_every_fault_and_2_retries_used() {
    check_exhaustively(
        "locked, every fault, 2 retries used",
        ProtocolModel::standard(Design::Locked),
    );
}

#[test]
#[ignore = "larger bounds, minutes: run with --ignored"]
fn the_real_protocol_holds_for_3_workers() {
    let mut model = bounded(Design::Locked, [1, 1, 1, 2, 1]);
    model.workers = 3;
    check_exhaustively("locked, 3 workers x 3 parts, every fault", model);
}
