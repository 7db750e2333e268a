//! The conformance suite every [`EventLog`] backend must pass: the same checks
//! run against the embedded log and JetStream, so the two behave alike.
//!
//! A backend plugs in with a value implementing [`LogUnderTest`] (one storage
//! location that can be opened, dropped and reopened) and one line:
//!
//! ```ignore
//! crate::conformance::conformance_tests!(jetstream_conformance, crate::jetstream::new_log_under_test);
//! ```
//!
//! where `new_log_under_test` is an `async fn() -> anyhow::Result<impl LogUnderTest>`
//! that gives fresh, empty storage each call. The macro makes one
//! `#[tokio::test]` per check in a module of the given name.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail, ensure};
use bytes::Bytes;
use eventlog::{
    AppendBatch, AppendOutcome, EventLog, ExpectedVersion, LogError, NewRecord, Record,
};
use futures::StreamExt;

/// One storage location for a log under test.
#[async_trait::async_trait]
pub trait LogUnderTest: Send {
    /// Opens the log. The first call gives an empty log; a later call reopens
    /// the same stored log, after the caller dropped every handle to the
    /// previous one (a restart).
    async fn open(&mut self) -> Result<Arc<dyn EventLog>>;
}

/// Makes one `#[tokio::test]` per conformance check, in module `$module`,
/// each with fresh storage from `$new_log` (an `async fn() -> anyhow::Result<impl LogUnderTest>`).
macro_rules! conformance_tests {
    ($module:ident, $new_log:path) => {
        mod $module {
            $crate::conformance::conformance_tests!(@checks $new_log;
                an_empty_log_has_nothing,
                an_empty_batch_stores_nothing,
                positions_are_gap_free_from_one_and_records_read_back_unchanged,
                reads_start_anywhere_and_respect_max,
                a_duplicate_is_answered_with_the_first_position_and_stores_nothing,
                the_same_key_with_other_content_is_a_conflict,
                a_batch_with_a_conflicting_key_writes_nothing,
                keys_repeated_inside_one_batch,
                a_batch_sent_again_is_answered_with_its_positions_even_if_its_expectation_no_longer_holds,
                expected_versions_are_checked_per_stream,
                a_batch_with_a_wrong_expectation_writes_nothing,
                an_invalid_record_is_refused,
                tail_gives_stored_records_then_new_ones_without_gap_or_repeat,
                tail_from_beyond_the_head_starts_at_that_position,
                tail_chunks_give_the_tails_records_in_chunks_of_at_most_max,
                concurrent_appenders_get_distinct_gap_free_positions,
                only_one_of_two_racing_writers_with_the_same_expectation_wins,
                records_keys_and_stream_versions_survive_reopening,
            );
        }
    };
    (@checks $new_log:path; $($check:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $check() -> anyhow::Result<()> {
                let log_under_test = $new_log().await?;
                $crate::conformance::$check(log_under_test).await
            }
        )*
    };
}
pub(crate) use conformance_tests;

pub fn record(key: &str, stream: &str, payload: &str) -> NewRecord {
    NewRecord {
        key: key.to_owned(),
        stream: stream.to_owned(),
        principal: "clinician@leeds".to_owned(),
        payload: Bytes::copy_from_slice(payload.as_bytes()),
    }
}

fn appended(positions: impl IntoIterator<Item = u64>) -> Vec<AppendOutcome> {
    positions
        .into_iter()
        .map(|position| AppendOutcome::Appended { position })
        .collect()
}

fn assert_same_content(read: &Record, written: &NewRecord) -> Result<()> {
    ensure!(
        read.key == written.key,
        "key of {read:?} is not {written:?}"
    );
    ensure!(
        read.stream == written.stream,
        "stream of {read:?} is not {written:?}"
    );
    ensure!(
        read.principal == written.principal,
        "principal of {read:?} is not {written:?}"
    );
    ensure!(
        read.payload == written.payload,
        "payload of {read:?} is not {written:?}"
    );
    Ok(())
}

fn positions_of(records: &[Record]) -> Vec<u64> {
    records.iter().map(|record| record.position).collect()
}

pub async fn an_empty_log_has_nothing(mut under_test: impl LogUnderTest) -> Result<()> {
    let log = under_test.open().await?;
    ensure!(log.head().await? == 0);
    ensure!(log.read(1, 100).await?.is_empty());
    ensure!(log.read(0, 100).await?.is_empty());
    ensure!(log.stream_version("leeds.L-0001").await? == 0);
    Ok(())
}

pub async fn an_empty_batch_stores_nothing(mut under_test: impl LogUnderTest) -> Result<()> {
    let log = under_test.open().await?;
    ensure!(log.append(AppendBatch::default()).await?.is_empty());
    ensure!(log.head().await? == 0);
    Ok(())
}

pub async fn positions_are_gap_free_from_one_and_records_read_back_unchanged(
    mut under_test: impl LogUnderTest,
) -> Result<()> {
    let log = under_test.open().await?;
    let batches = vec![
        vec![record("e-1", "leeds.L-1", "{\"n\":1}")],
        vec![
            record("e-2", "leeds.L-1", "{\"n\":2}"),
            record("e-3", "leeds.L-2", "{\"n\":3}"),
            record("e-4", "leeds.L-1", "{\"n\":4}"),
        ],
        vec![
            record("e-5", "salford-royal.S-1", ""),
            record("e-6", "leeds.L-2", &"x".repeat(5000)),
        ],
    ];
    let before = SystemTime::now().duration_since(UNIX_EPOCH)?;
    let mut next = 1;
    for batch in &batches {
        let outcomes = log.append(AppendBatch::new(batch.clone())).await?;
        let expected = appended(next..next + batch.len() as u64);
        ensure!(
            outcomes == expected,
            "got {outcomes:?}, expected {expected:?}"
        );
        next += batch.len() as u64;
    }
    let after = SystemTime::now().duration_since(UNIX_EPOCH)?;
    ensure!(log.head().await? == 6);

    let written: Vec<NewRecord> = batches.into_iter().flatten().collect();
    let read = log.read(1, 100).await?;
    ensure!(
        positions_of(&read) == (1..=6).collect::<Vec<_>>(),
        "{read:?}"
    );
    for (read, written) in read.iter().zip(&written) {
        assert_same_content(read, written)?;
        // The clock may be a little off between client and server; an hour
        // either side still proves the field is a real UTC timestamp.
        let slack = Duration::from_secs(3600).as_micros() as i64;
        ensure!(
            read.recorded_at_micros >= before.as_micros() as i64 - slack
                && read.recorded_at_micros <= after.as_micros() as i64 + slack,
            "recorded_at {} is not near now",
            read.recorded_at_micros
        );
    }
    ensure!(
        log.read(0, 100).await? == read,
        "position 0 reads like position 1"
    );
    ensure!(log.stream_version("leeds.L-1").await? == 4);
    ensure!(log.stream_version("leeds.L-2").await? == 6);
    ensure!(log.stream_version("salford-royal.S-1").await? == 5);
    Ok(())
}

/// Appends `count` records keyed `e-1`… in batches of `batch_size`.
async fn append_numbered(
    log: &dyn EventLog,
    count: u64,
    batch_size: u64,
) -> Result<Vec<NewRecord>> {
    let mut written = Vec::new();
    let mut number = 1;
    while number <= count {
        let batch: Vec<NewRecord> = (number..=count.min(number + batch_size - 1))
            .map(|n| {
                record(
                    &format!("e-{n}"),
                    &format!("leeds.L-{}", n % 7),
                    &format!("{{\"n\":{n}}}"),
                )
            })
            .collect();
        number += batch.len() as u64;
        log.append(AppendBatch::new(batch.clone())).await?;
        written.extend(batch);
    }
    Ok(written)
}

pub async fn reads_start_anywhere_and_respect_max(mut under_test: impl LogUnderTest) -> Result<()> {
    let log = under_test.open().await?;
    let written = append_numbered(log.as_ref(), 300, 7).await?;
    for (from, max, expected) in [
        (150, 10, (150..=159).collect::<Vec<u64>>()),
        (1, 1, vec![1]),
        (128, 3, vec![128, 129, 130]),
        (295, 100, (295..=300).collect()),
        (300, 1, vec![300]),
        (301, 10, vec![]),
        (5000, 10, vec![]),
        (5, 0, vec![]),
    ] {
        let read = log.read(from, max).await?;
        ensure!(
            positions_of(&read) == expected,
            "read({from}, {max}) gave {:?}",
            positions_of(&read)
        );
        for record in &read {
            assert_same_content(record, &written[record.position as usize - 1])?;
        }
    }
    let everything = log.read(1, usize::MAX).await?;
    ensure!(positions_of(&everything) == (1..=300).collect::<Vec<_>>());
    Ok(())
}

pub async fn a_duplicate_is_answered_with_the_first_position_and_stores_nothing(
    mut under_test: impl LogUnderTest,
) -> Result<()> {
    let log = under_test.open().await?;
    let first = record("e-1", "leeds.L-1", "{\"n\":1}");
    ensure!(log.append(AppendBatch::new(vec![first.clone()])).await? == appended([1]));
    let again = log.append(AppendBatch::new(vec![first.clone()])).await?;
    ensure!(
        again == vec![AppendOutcome::Duplicate { position: 1 }],
        "{again:?}"
    );
    ensure!(log.head().await? == 1);

    let mixed = log
        .append(AppendBatch::new(vec![
            record("e-2", "leeds.L-1", "{\"n\":2}"),
            first.clone(),
        ]))
        .await?;
    ensure!(
        mixed
            == vec![
                AppendOutcome::Appended { position: 2 },
                AppendOutcome::Duplicate { position: 1 }
            ],
        "{mixed:?}"
    );
    ensure!(log.head().await? == 2);
    ensure!(log.stream_version("leeds.L-1").await? == 2);
    Ok(())
}

pub async fn the_same_key_with_other_content_is_a_conflict(
    mut under_test: impl LogUnderTest,
) -> Result<()> {
    let log = under_test.open().await?;
    log.append(AppendBatch::new(vec![record(
        "e-1",
        "leeds.L-1",
        "{\"n\":1}",
    )]))
    .await?;
    match log
        .append(AppendBatch::new(vec![record(
            "e-1",
            "leeds.L-1",
            "{\"n\":2}",
        )]))
        .await
    {
        Err(LogError::KeyConflict { key, position }) => {
            ensure!(
                key == "e-1" && position == 1,
                "conflict names {key} at {position}"
            );
        }
        other => bail!("expected a key conflict, got {other:?}"),
    }
    ensure!(log.head().await? == 1);
    let stored = log.read(1, 10).await?;
    ensure!(
        stored.len() == 1 && stored[0].payload == Bytes::from_static(b"{\"n\":1}"),
        "the first one stays"
    );
    Ok(())
}

pub async fn a_batch_with_a_conflicting_key_writes_nothing(
    mut under_test: impl LogUnderTest,
) -> Result<()> {
    let log = under_test.open().await?;
    log.append(AppendBatch::new(vec![record("e-1", "leeds.L-1", "one")]))
        .await?;
    let refused = log
        .append(AppendBatch::new(vec![
            record("e-2", "leeds.L-2", "two"),
            record("e-3", "leeds.L-2", "three"),
            record("e-1", "leeds.L-1", "not one"),
        ]))
        .await;
    ensure!(
        matches!(&refused, Err(LogError::KeyConflict { key, position: 1 }) if key == "e-1"),
        "{refused:?}"
    );
    ensure!(log.head().await? == 1);
    ensure!(log.stream_version("leeds.L-2").await? == 0);
    // e-2 was not stored: appending it now is new, not a duplicate.
    let outcomes = log
        .append(AppendBatch::new(vec![record(
            "e-2",
            "leeds.L-2",
            "other two",
        )]))
        .await?;
    ensure!(outcomes == appended([2]), "{outcomes:?}");
    Ok(())
}

pub async fn keys_repeated_inside_one_batch(mut under_test: impl LogUnderTest) -> Result<()> {
    let log = under_test.open().await?;
    let outcomes = log
        .append(AppendBatch::new(vec![
            record("e-1", "leeds.L-1", "one"),
            record("e-1", "leeds.L-1", "one"),
        ]))
        .await?;
    ensure!(
        outcomes
            == vec![
                AppendOutcome::Appended { position: 1 },
                AppendOutcome::Duplicate { position: 1 }
            ],
        "{outcomes:?}"
    );
    ensure!(log.head().await? == 1);

    let refused = log
        .append(AppendBatch::new(vec![
            record("e-2", "leeds.L-1", "two"),
            record("e-2", "leeds.L-1", "other two"),
        ]))
        .await;
    ensure!(
        matches!(&refused, Err(LogError::KeyConflict { key, .. }) if key == "e-2"),
        "{refused:?}"
    );
    ensure!(log.head().await? == 1);
    let outcomes = log
        .append(AppendBatch::new(vec![record(
            "e-2",
            "leeds.L-1",
            "other two",
        )]))
        .await?;
    ensure!(outcomes == appended([2]), "{outcomes:?}");
    Ok(())
}

pub async fn a_batch_sent_again_is_answered_with_its_positions_even_if_its_expectation_no_longer_holds(
    mut under_test: impl LogUnderTest,
) -> Result<()> {
    let log = under_test.open().await?;
    let batch = AppendBatch::new(vec![
        record("e-1", "leeds.L-1", "one"),
        record("e-2", "leeds.L-1", "two"),
    ])
    .expect("leeds.L-1", ExpectedVersion::Empty);
    ensure!(log.append(batch.clone()).await? == appended([1, 2]));
    // The retry of a batch whose answer was lost: idempotency comes first.
    let again = log.append(batch).await?;
    ensure!(
        again
            == vec![
                AppendOutcome::Duplicate { position: 1 },
                AppendOutcome::Duplicate { position: 2 }
            ],
        "{again:?}"
    );
    ensure!(log.head().await? == 2);
    Ok(())
}

pub async fn expected_versions_are_checked_per_stream(
    mut under_test: impl LogUnderTest,
) -> Result<()> {
    let log = under_test.open().await?;
    let stream = "leeds.L-1";
    let one = |key: &str| AppendBatch::new(vec![record(key, stream, key)]);

    ensure!(
        log.append(one("e-1").expect(stream, ExpectedVersion::Empty))
            .await?
            == appended([1])
    );
    ensure!(log.stream_version(stream).await? == 1);
    match log
        .append(one("e-2").expect(stream, ExpectedVersion::Empty))
        .await
    {
        Err(LogError::WrongExpectedVersion {
            stream: named,
            actual,
            ..
        }) => ensure!(named == stream && actual == 1, "{named} at {actual}"),
        other => bail!("expected a wrong expected version, got {other:?}"),
    }
    ensure!(
        log.append(one("e-3").expect(stream, ExpectedVersion::At(1)))
            .await?
            == appended([2])
    );
    match log
        .append(one("e-4").expect(stream, ExpectedVersion::At(1)))
        .await
    {
        Err(LogError::WrongExpectedVersion { actual, .. }) => ensure!(actual == 2),
        other => bail!("expected a wrong expected version, got {other:?}"),
    }
    ensure!(
        log.append(one("e-5").expect(stream, ExpectedVersion::Any))
            .await?
            == appended([3])
    );

    // Another stream is unaffected by this one's versions.
    let other = AppendBatch::new(vec![record("e-6", "leeds.L-2", "six")])
        .expect("leeds.L-2", ExpectedVersion::Empty)
        .expect(stream, ExpectedVersion::At(3));
    ensure!(log.append(other).await? == appended([4]));
    ensure!(log.stream_version("leeds.L-2").await? == 4);
    ensure!(log.stream_version(stream).await? == 3);

    // An expectation may name a stream the batch does not write to.
    let guarded = AppendBatch::new(vec![record("e-7", "leeds.L-3", "seven")])
        .expect(stream, ExpectedVersion::At(2));
    ensure!(matches!(
        log.append(guarded).await,
        Err(LogError::WrongExpectedVersion { actual: 3, .. })
    ));
    ensure!(log.head().await? == 4);
    Ok(())
}

pub async fn a_batch_with_a_wrong_expectation_writes_nothing(
    mut under_test: impl LogUnderTest,
) -> Result<()> {
    let log = under_test.open().await?;
    log.append(AppendBatch::new(vec![record("e-1", "leeds.L-1", "one")]))
        .await?;
    let refused = log
        .append(
            AppendBatch::new(vec![
                record("e-2", "leeds.L-2", "two"),
                record("e-3", "leeds.L-1", "three"),
            ])
            .expect("leeds.L-2", ExpectedVersion::Empty)
            .expect("leeds.L-1", ExpectedVersion::At(99)),
        )
        .await;
    ensure!(
        matches!(
            refused,
            Err(LogError::WrongExpectedVersion { actual: 1, .. })
        ),
        "{refused:?}"
    );
    ensure!(log.head().await? == 1);
    ensure!(log.stream_version("leeds.L-2").await? == 0);
    let outcomes = log
        .append(AppendBatch::new(vec![record("e-2", "leeds.L-2", "two")]))
        .await?;
    ensure!(
        outcomes == appended([2]),
        "e-2 was not stored before: {outcomes:?}"
    );
    Ok(())
}

pub async fn an_invalid_record_is_refused(mut under_test: impl LogUnderTest) -> Result<()> {
    let log = under_test.open().await?;
    let refused = log
        .append(AppendBatch::new(vec![
            record("e-1", "leeds.L-1", "one"),
            record("", "leeds.L-1", "no key"),
        ]))
        .await;
    ensure!(matches!(refused, Err(LogError::Invalid(_))), "{refused:?}");
    ensure!(log.head().await? == 0);
    Ok(())
}

pub async fn tail_gives_stored_records_then_new_ones_without_gap_or_repeat(
    mut under_test: impl LogUnderTest,
) -> Result<()> {
    let log = under_test.open().await?;
    append_numbered(log.as_ref(), 5, 2).await?;
    let mut from_start = log.tail(1);
    let mut from_middle = log.tail(4);
    let mut seen = Vec::new();
    for _ in 0..5 {
        seen.push(from_start.next().await.context("tail ended")??.position);
    }
    ensure!(seen == vec![1, 2, 3, 4, 5], "{seen:?}");

    let appender = {
        let log = Arc::clone(&log);
        tokio::spawn(async move {
            for n in 6..=8 {
                log.append(AppendBatch::new(vec![record(
                    &format!("e-{n}"),
                    "leeds.L-1",
                    "later",
                )]))
                .await?;
            }
            anyhow::Ok(())
        })
    };
    for expected in 6..=8 {
        let record = from_start.next().await.context("tail ended")??;
        ensure!(
            record.position == expected,
            "got {} for {expected}",
            record.position
        );
        ensure!(record.key == format!("e-{expected}"));
    }
    appender.await??;
    let mut middle_seen = Vec::new();
    for _ in 4..=8 {
        middle_seen.push(from_middle.next().await.context("tail ended")??.position);
    }
    ensure!(middle_seen == vec![4, 5, 6, 7, 8], "{middle_seen:?}");

    // No repeat: the next record either tail gives is the next one appended.
    log.append(AppendBatch::new(vec![record("e-9", "leeds.L-1", "nine")]))
        .await?;
    ensure!(from_start.next().await.context("tail ended")??.position == 9);
    ensure!(from_middle.next().await.context("tail ended")??.position == 9);
    Ok(())
}

pub async fn tail_from_beyond_the_head_starts_at_that_position(
    mut under_test: impl LogUnderTest,
) -> Result<()> {
    let log = under_test.open().await?;
    let mut tail = log.tail(3);
    append_numbered(log.as_ref(), 5, 5).await?;
    let first = tail.next().await.context("tail ended")??;
    ensure!(first.position == 3 && first.key == "e-3", "{first:?}");
    Ok(())
}

pub async fn tail_chunks_give_the_tails_records_in_chunks_of_at_most_max(
    mut under_test: impl LogUnderTest,
) -> Result<()> {
    let log = under_test.open().await?;
    append_numbered(log.as_ref(), 10, 4).await?;
    let mut chunks = log.tail_chunks(2, 3);
    let mut tail = log.tail(2);
    let mut chunked = Vec::new();
    while chunked.len() < 9 {
        let chunk = chunks.next().await.context("tail_chunks ended")??;
        ensure!(
            (1..=3).contains(&chunk.len()),
            "a chunk of {} records",
            chunk.len()
        );
        chunked.extend(chunk);
    }
    ensure!(chunked.len() == 9, "read past the head: {chunked:?}");
    for chunked in &chunked {
        let tailed = tail.next().await.context("tail ended")??;
        ensure!(
            *chunked == tailed,
            "tail_chunks gave {chunked:?}, tail {tailed:?}"
        );
    }

    // Live: a record appended later comes as the next chunk, alone.
    let waiting = tokio::spawn(async move { chunks.next().await });
    log.append(AppendBatch::new(vec![record(
        "e-11",
        "leeds.L-1",
        "eleven",
    )]))
    .await?;
    let live = waiting.await?.context("tail_chunks ended")??;
    let positions: Vec<u64> = live.iter().map(|record| record.position).collect();
    ensure!(positions == vec![11], "{positions:?}");
    let zero = log
        .tail_chunks(11, 0)
        .next()
        .await
        .context("tail_chunks ended")??;
    ensure!(zero.len() == 1 && zero[0].key == "e-11", "{zero:?}");
    Ok(())
}

pub async fn concurrent_appenders_get_distinct_gap_free_positions(
    mut under_test: impl LogUnderTest,
) -> Result<()> {
    const APPENDERS: u64 = 8;
    const BATCHES: u64 = 20;
    const RECORDS: u64 = 5;
    let log = under_test.open().await?;
    let mut tasks = Vec::new();
    for appender in 0..APPENDERS {
        let log = Arc::clone(&log);
        tasks.push(tokio::spawn(async move {
            let mut stored = Vec::new();
            for batch in 0..BATCHES {
                let records: Vec<NewRecord> = (0..RECORDS)
                    .map(|n| {
                        let key = format!("a{appender}-b{batch}-r{n}");
                        record(&key, &format!("leeds.A-{appender}"), &key)
                    })
                    .collect();
                let outcomes = log.append(AppendBatch::new(records.clone())).await?;
                let positions: Vec<u64> =
                    outcomes.iter().map(|outcome| outcome.position()).collect();
                ensure!(
                    positions.windows(2).all(|pair| pair[1] == pair[0] + 1),
                    "a batch is stored contiguously: {positions:?}"
                );
                stored.extend(
                    positions
                        .into_iter()
                        .zip(records.into_iter().map(|record| record.key)),
                );
            }
            anyhow::Ok(stored)
        }));
    }
    let mut stored = Vec::new();
    for task in tasks {
        stored.extend(task.await??);
    }
    let total = APPENDERS * BATCHES * RECORDS;
    let positions: BTreeSet<u64> = stored.iter().map(|(position, _)| *position).collect();
    ensure!(
        positions == (1..=total).collect::<BTreeSet<_>>(),
        "positions are 1..={total}, once each"
    );
    ensure!(log.head().await? == total);
    let read = log.read(1, usize::MAX).await?;
    ensure!(read.len() as u64 == total);
    for (position, key) in &stored {
        ensure!(
            read[*position as usize - 1].key == key,
            "position {position} holds {key}"
        );
    }
    Ok(())
}

pub async fn only_one_of_two_racing_writers_with_the_same_expectation_wins(
    mut under_test: impl LogUnderTest,
) -> Result<()> {
    let log = under_test.open().await?;
    let stream = "leeds.L-1";
    for round in 0..20 {
        let version = log.stream_version(stream).await?;
        let expected = if version == 0 {
            ExpectedVersion::Empty
        } else {
            ExpectedVersion::At(version)
        };
        let racers: Vec<_> = ["a", "b"]
            .into_iter()
            .map(|racer| {
                let log = Arc::clone(&log);
                let key = format!("e-{round}-{racer}");
                tokio::spawn(async move {
                    log.append(
                        AppendBatch::new(vec![record(&key, stream, &key)]).expect(stream, expected),
                    )
                    .await
                })
            })
            .collect();
        let mut won = 0;
        let mut lost = 0;
        for racer in racers {
            match racer.await? {
                Ok(_) => won += 1,
                Err(LogError::WrongExpectedVersion { .. }) => lost += 1,
                Err(other) => bail!("unexpected error {other}"),
            }
        }
        ensure!(
            won == 1 && lost == 1,
            "round {round}: {won} won, {lost} lost"
        );
    }
    ensure!(log.head().await? == 20);
    Ok(())
}

pub async fn records_keys_and_stream_versions_survive_reopening(
    mut under_test: impl LogUnderTest,
) -> Result<()> {
    let log = under_test.open().await?;
    append_numbered(log.as_ref(), 40, 6).await?;
    let before = log.read(1, usize::MAX).await?;
    let version = log.stream_version("leeds.L-3").await?;
    drop(log);

    let log = under_test.open().await?;
    ensure!(log.head().await? == 40);
    ensure!(
        log.read(1, usize::MAX).await? == before,
        "records read back unchanged after a restart"
    );
    ensure!(log.stream_version("leeds.L-3").await? == version);
    let duplicate = log
        .append(AppendBatch::new(vec![record(
            "e-17",
            "leeds.L-3",
            "{\"n\":17}",
        )]))
        .await?;
    ensure!(
        duplicate == vec![AppendOutcome::Duplicate { position: 17 }],
        "{duplicate:?}"
    );
    ensure!(matches!(
        log.append(AppendBatch::new(vec![record("e-17", "leeds.L-3", "other")]))
            .await,
        Err(LogError::KeyConflict { position: 17, .. })
    ));
    let next = log
        .append(
            AppendBatch::new(vec![record("e-41", "leeds.L-3", "new")])
                .expect("leeds.L-3", ExpectedVersion::At(version)),
        )
        .await?;
    ensure!(next == appended([41]), "{next:?}");
    drop(log);

    let log = under_test.open().await?;
    ensure!(log.head().await? == 41);
    Ok(())
}
