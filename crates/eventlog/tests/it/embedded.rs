//! The embedded log: the conformance suite (with default and with tiny
//! segments, so reads and recovery cross segment boundaries), then what only a
//! file-backed log has: crash safety at every byte of the last batch, damage
//! detection, the directory lock, and readers racing the writer.
//!
//! The crash tests know the frame layout (35 bytes of framing per record, see
//! `eventlog::embedded`) to aim at exact byte offsets.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail, ensure};
use eventlog::{
    AppendBatch, AppendOutcome, EmbeddedLog, EmbeddedOptions, EventLog, LogError, NewRecord, Record,
};
use futures::StreamExt;
use tempfile::TempDir;

use crate::conformance::{LogUnderTest, conformance_tests, record};

/// Bytes a frame adds around key, stream, principal and payload.
const FRAMING_BYTES: u64 = 35;

fn frame_length(record: &NewRecord) -> u64 {
    FRAMING_BYTES
        + (record.key.len() + record.stream.len() + record.principal.len() + record.payload.len())
            as u64
}

/// An embedded log in its own temporary directory.
pub struct EmbeddedUnderTest {
    dir: TempDir,
    options: EmbeddedOptions,
}

#[async_trait::async_trait]
impl LogUnderTest for EmbeddedUnderTest {
    async fn open(&mut self) -> Result<Arc<dyn EventLog>> {
        Ok(Arc::new(
            open_log(self.dir.path(), self.options.clone()).await?,
        ))
    }
}

pub async fn new_embedded_log() -> Result<EmbeddedUnderTest> {
    Ok(EmbeddedUnderTest {
        dir: TempDir::new()?,
        options: EmbeddedOptions::default(),
    })
}

pub async fn new_embedded_log_with_tiny_segments() -> Result<EmbeddedUnderTest> {
    Ok(EmbeddedUnderTest {
        dir: TempDir::new()?,
        options: EmbeddedOptions::default().with_segment_bytes(512),
    })
}

conformance_tests!(
    conformance_default_segments,
    crate::embedded::new_embedded_log
);
conformance_tests!(
    conformance_tiny_segments,
    crate::embedded::new_embedded_log_with_tiny_segments
);

async fn open_log(dir: &Path, options: EmbeddedOptions) -> Result<EmbeddedLog, LogError> {
    let dir = dir.to_owned();
    tokio::task::spawn_blocking(move || EmbeddedLog::open(dir, options))
        .await
        .map_err(|error| LogError::Unavailable(error.to_string()))?
}

fn segment_paths(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)?
        .map(|entry| entry.map(|entry| entry.path()))
        .collect::<std::io::Result<_>>()?;
    paths.retain(|path| path.extension().is_some_and(|extension| extension == "seg"));
    paths.sort();
    Ok(paths)
}

fn last_segment(dir: &Path) -> Result<PathBuf> {
    segment_paths(dir)?.pop().context("no segment file")
}

/// A copy of the segment files of `from` (not the lock) in a new directory.
fn copy_segments(from: &Path) -> Result<TempDir> {
    let copy = TempDir::new()?;
    for path in segment_paths(from)? {
        std::fs::copy(
            &path,
            copy.path().join(path.file_name().context("file name")?),
        )?;
    }
    Ok(copy)
}

fn batch_records(batch: u64, records: u64) -> Vec<NewRecord> {
    (0..records)
        .map(|n| {
            let key = format!("b{batch}-r{n}");
            record(
                &key,
                &format!("leeds.L-{n}"),
                &format!("{{\"batch\":{batch},\"record\":{n}}}"),
            )
        })
        .collect()
}

/// Writes `batches` batches of `records` records, closes the log, and gives
/// back what was written and the last segment's length before the last batch.
async fn write_batches(
    dir: &Path,
    options: EmbeddedOptions,
    batches: u64,
    records: u64,
) -> Result<(Vec<NewRecord>, u64)> {
    let log = open_log(dir, options).await?;
    let mut written = Vec::new();
    let mut before_last = 0;
    for batch in 0..batches {
        if batch == batches - 1 {
            before_last = std::fs::metadata(last_segment(dir)?)?.len();
        }
        let records = batch_records(batch, records);
        log.append(AppendBatch::new(records.clone())).await?;
        written.extend(records);
    }
    log.close().await;
    Ok((written, before_last))
}

fn assert_records(read: &[Record], written: &[NewRecord]) -> Result<()> {
    ensure!(
        read.len() == written.len(),
        "read {} records, expected {}",
        read.len(),
        written.len()
    );
    for (index, (read, written)) in read.iter().zip(written).enumerate() {
        ensure!(
            read.position == index as u64 + 1,
            "gap at {index}: {}",
            read.position
        );
        ensure!(
            read.key == written.key
                && read.stream == written.stream
                && read.payload == written.payload,
            "record {} differs: {read:?} vs {written:?}",
            read.position
        );
    }
    Ok(())
}

/// Truncates the last segment of a copy of `dir` at every offset in
/// `cuts`, reopens, and checks that exactly `kept` records survive and that
/// appending continues at `kept + 1`.
async fn check_cuts(
    dir: &Path,
    options: &EmbeddedOptions,
    written: &[NewRecord],
    kept: usize,
    cuts: impl Iterator<Item = u64>,
) -> Result<usize> {
    let mut checked = 0;
    for cut in cuts {
        let copy = copy_segments(dir)?;
        let segment = last_segment(copy.path())?;
        std::fs::OpenOptions::new()
            .write(true)
            .open(&segment)?
            .set_len(cut)?;
        let log = open_log(copy.path(), options.clone())
            .await
            .with_context(|| format!("reopening after a cut at byte {cut}"))?;
        ensure!(
            log.head().await? == kept as u64,
            "cut at {cut}: head {}",
            log.head().await?
        );
        assert_records(&log.read(1, usize::MAX).await?, &written[..kept])
            .with_context(|| format!("cut at byte {cut}"))?;
        // The cut records are gone with their keys: the same batch is new again.
        let again: Vec<NewRecord> = written[kept..].to_vec();
        let outcomes = log.append(AppendBatch::new(again.clone())).await?;
        let expected: Vec<AppendOutcome> = (kept as u64 + 1..=written.len() as u64)
            .map(|position| AppendOutcome::Appended { position })
            .collect();
        ensure!(outcomes == expected, "cut at {cut}: {outcomes:?}");
        assert_records(&log.read(1, usize::MAX).await?, written)?;
        log.close().await;
        checked += 1;
    }
    Ok(checked)
}

/// The log holds clinical records: the directory it creates, its segments
/// and its lock are its owner's alone, whatever the umask (they were 0755
/// and 0644 under the usual 022, found by the session-6 security review).
#[cfg(unix)]
#[tokio::test]
async fn what_the_log_creates_is_readable_by_its_owner_only() -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let parent = TempDir::new()?;
    let dir = parent.path().join("data").join("log");
    let log = open_log(&dir, EmbeddedOptions::default()).await?;
    log.append(AppendBatch::new(vec![record("e-1", "leeds.L-1", "x")]))
        .await?;
    let mode =
        |path: &Path| -> Result<u32> { Ok(std::fs::metadata(path)?.permissions().mode() & 0o777) };
    ensure!(mode(&dir)? == 0o700, "log directory {:o}", mode(&dir)?);
    ensure!(
        mode(&parent.path().join("data"))? == 0o700,
        "created parent {:o}",
        mode(&parent.path().join("data"))?
    );
    let segment = last_segment(&dir)?;
    ensure!(mode(&segment)? == 0o600, "segment {:o}", mode(&segment)?);
    for entry in std::fs::read_dir(&dir)? {
        let path = entry?.path();
        ensure!(
            mode(&path)? & 0o077 == 0,
            "{} is {:o}",
            path.display(),
            mode(&path)?
        );
    }
    Ok(())
}

#[tokio::test]
async fn every_cut_inside_the_last_batch_keeps_every_earlier_record() -> Result<()> {
    let dir = TempDir::new()?;
    let options = EmbeddedOptions::default();
    let (written, before_last) = write_batches(dir.path(), options.clone(), 4, 3).await?;
    let full = std::fs::metadata(last_segment(dir.path())?)?.len();
    let last_batch: u64 = written[9..].iter().map(frame_length).sum();
    ensure!(
        full - before_last == last_batch,
        "the last batch is {last_batch} bytes at the end"
    );
    let checked = check_cuts(dir.path(), &options, &written, 9, before_last..full).await?;
    ensure!(checked as u64 == last_batch);

    // Cutting nothing keeps everything.
    let copy = copy_segments(dir.path())?;
    let log = open_log(copy.path(), options).await?;
    assert_records(&log.read(1, usize::MAX).await?, &written)?;
    Ok(())
}

#[tokio::test]
async fn every_cut_inside_a_last_batch_that_started_a_new_segment_keeps_every_earlier_record()
-> Result<()> {
    let dir = TempDir::new()?;
    // Each 3-record batch is about 250 bytes: every batch gets its own segment.
    let options = EmbeddedOptions::default().with_segment_bytes(100);
    let (written, _) = write_batches(dir.path(), options.clone(), 4, 3).await?;
    ensure!(
        segment_paths(dir.path())?.len() == 4,
        "one segment per batch"
    );
    let full = std::fs::metadata(last_segment(dir.path())?)?.len();
    let checked = check_cuts(dir.path(), &options, &written, 9, 0..full).await?;
    ensure!(checked as u64 == full);
    Ok(())
}

#[tokio::test]
async fn a_flipped_byte_in_the_last_record_cuts_its_whole_batch() -> Result<()> {
    let dir = TempDir::new()?;
    let options = EmbeddedOptions::default();
    let (written, _) = write_batches(dir.path(), options.clone(), 5, 2).await?;
    let segment = last_segment(dir.path())?;
    let original = std::fs::read(&segment)?;
    let last_record = frame_length(&written[9]) as usize;
    for at in original.len() - last_record..original.len() {
        let copy = copy_segments(dir.path())?;
        let mut damaged = original.clone();
        damaged[at] ^= 0x5a;
        std::fs::write(last_segment(copy.path())?, &damaged)?;
        let log = open_log(copy.path(), options.clone())
            .await
            .with_context(|| format!("reopening after a flip at byte {at}"))?;
        ensure!(
            log.head().await? == 8,
            "flip at {at}: head {}",
            log.head().await?
        );
        assert_records(&log.read(1, usize::MAX).await?, &written[..8])?;
        let outcomes = log
            .append(AppendBatch::new(vec![record(
                "after",
                "leeds.L-0",
                "after",
            )]))
            .await?;
        ensure!(outcomes == vec![AppendOutcome::Appended { position: 9 }]);
        log.close().await;
    }
    Ok(())
}

#[tokio::test]
async fn a_flipped_byte_in_the_middle_is_reported_with_file_and_offset() -> Result<()> {
    let dir = TempDir::new()?;
    let options = EmbeddedOptions::default();
    let (written, _) = write_batches(dir.path(), options.clone(), 5, 2).await?;
    let segment = last_segment(dir.path())?;
    let original = std::fs::read(&segment)?;
    // Damage the payload of the third record (position 3).
    let third_at: u64 = written[..2].iter().map(frame_length).sum();
    let mut damaged = original.clone();
    damaged[third_at as usize + frame_length(&written[2]) as usize - 1] ^= 0x01;
    std::fs::write(&segment, &damaged)?;

    match open_log(dir.path(), options).await {
        Err(LogError::Corrupt(message)) => {
            let file_name = segment
                .file_name()
                .context("file name")?
                .to_string_lossy()
                .into_owned();
            ensure!(message.contains(&file_name), "{message}");
            ensure!(message.contains(&format!("offset {third_at}")), "{message}");
        }
        other => bail!("expected corrupt, got {other:?}"),
    }
    ensure!(
        std::fs::read(&segment)? == damaged,
        "nothing is cut when the damage is not a torn tail"
    );
    Ok(())
}

#[tokio::test]
async fn damage_at_the_end_of_an_older_segment_is_reported() -> Result<()> {
    let dir = TempDir::new()?;
    let options = EmbeddedOptions::default().with_segment_bytes(100);
    write_batches(dir.path(), options.clone(), 3, 2).await?;
    let first_segment = segment_paths(dir.path())?.remove(0);
    let mut bytes = std::fs::read(&first_segment)?;
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    std::fs::write(&first_segment, &bytes)?;
    let opened = open_log(dir.path(), options).await;
    ensure!(matches!(opened, Err(LogError::Corrupt(_))), "{opened:?}");
    Ok(())
}

#[tokio::test]
async fn the_directory_lock_keeps_a_second_log_out() -> Result<()> {
    let dir = TempDir::new()?;
    let first = open_log(dir.path(), EmbeddedOptions::default()).await?;
    match open_log(dir.path(), EmbeddedOptions::default()).await {
        Err(LogError::Unavailable(message)) => {
            ensure!(
                message.contains(&dir.path().display().to_string()),
                "{message}"
            );
        }
        other => bail!("expected the directory to be locked, got {other:?}"),
    }
    first.close().await;
    let second = open_log(dir.path(), EmbeddedOptions::default()).await?;
    drop(second);
    // Dropping (not only closing) releases the lock too.
    open_log(dir.path(), EmbeddedOptions::default()).await?;
    Ok(())
}

#[tokio::test]
async fn open_creates_a_missing_data_directory() -> Result<()> {
    let parent = TempDir::new()?;
    let dir = parent.path().join("data").join("eventlog");
    let log = open_log(&dir, EmbeddedOptions::default()).await?;
    ensure!(log.dir() == dir);
    log.append(AppendBatch::new(vec![record("e-1", "leeds.L-1", "one")]))
        .await?;
    ensure!(segment_paths(&dir)?.len() == 1);
    Ok(())
}

#[tokio::test]
async fn a_tail_ends_with_unavailable_when_the_log_is_closed() -> Result<()> {
    let dir = TempDir::new()?;
    let log = open_log(dir.path(), EmbeddedOptions::default()).await?;
    log.append(AppendBatch::new(vec![record("e-1", "leeds.L-1", "one")]))
        .await?;
    let mut tail = log.tail(1);
    ensure!(tail.next().await.context("tail ended")??.position == 1);
    log.close().await;
    let last = tail.next().await.context("tail ended without saying why")?;
    ensure!(matches!(last, Err(LogError::Unavailable(_))), "{last:?}");
    ensure!(tail.next().await.is_none(), "the tail ends after the error");
    Ok(())
}

#[tokio::test]
async fn an_oversized_payload_is_refused() -> Result<()> {
    let dir = TempDir::new()?;
    let log = open_log(
        dir.path(),
        EmbeddedOptions::default().with_max_payload_bytes(10),
    )
    .await?;
    let refused = log
        .append(AppendBatch::new(vec![record(
            "e-1",
            "leeds.L-1",
            "eleven byte",
        )]))
        .await;
    ensure!(matches!(refused, Err(LogError::Invalid(_))), "{refused:?}");
    ensure!(log.head().await? == 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_racing_the_writer_see_no_gap_and_no_torn_record() -> Result<()> {
    const BATCHES: u64 = 300;
    const RECORDS: u64 = 4;
    let total = BATCHES * RECORDS;
    let dir = TempDir::new()?;
    // Small segments, so readers also race segment rolls.
    let log: Arc<dyn EventLog> = Arc::new(
        open_log(
            dir.path(),
            EmbeddedOptions::default().with_segment_bytes(8 * 1024),
        )
        .await?,
    );

    let check = |record: &Record| -> Result<()> {
        let expected = format!(
            "{}:{}",
            record.key,
            "x".repeat((record.position % 50) as usize)
        );
        ensure!(
            record.payload == expected.as_bytes(),
            "record {} is torn or misplaced: {record:?}",
            record.position
        );
        Ok(())
    };

    let mut readers = Vec::new();
    for max in [1usize, 7, 200] {
        let log = Arc::clone(&log);
        readers.push(tokio::spawn(async move {
            let mut next = 1;
            while next <= total {
                let records = log.read(next, max).await?;
                for record in &records {
                    ensure!(
                        record.position == next,
                        "expected {next}, got {}",
                        record.position
                    );
                    check(record)?;
                    next += 1;
                }
                if records.is_empty() {
                    tokio::task::yield_now().await;
                }
            }
            anyhow::Ok(())
        }));
    }
    let tailer = {
        let mut tail = log.tail(1);
        tokio::spawn(async move {
            for expected in 1..=total {
                let record = tail.next().await.context("tail ended")??;
                ensure!(
                    record.position == expected,
                    "tail gave {} for {expected}",
                    record.position
                );
                check(&record)?;
            }
            anyhow::Ok(())
        })
    };

    let mut position = 0;
    for batch in 0..BATCHES {
        let records: Vec<NewRecord> = (0..RECORDS)
            .map(|n| {
                position += 1;
                let key = format!("b{batch}-r{n}");
                let payload = format!("{key}:{}", "x".repeat((position % 50) as usize));
                record(&key, "leeds.L-1", &payload)
            })
            .collect();
        log.append(AppendBatch::new(records)).await?;
    }
    for reader in readers {
        reader.await??;
    }
    tailer.await??;
    ensure!(
        segment_paths(dir.path())?.len() > 1,
        "the test crossed segment boundaries"
    );
    Ok(())
}

/// The writer cuts repeated records out of an encoded batch before it writes
/// it: the batch-end mark must then sit on the last NEW record, or the next
/// open would cut the whole batch as unfinished.
#[tokio::test]
async fn a_batch_ending_in_repeats_survives_reopening_with_only_its_new_records() -> Result<()> {
    let dir = TempDir::new()?;
    let options = EmbeddedOptions::default();
    let first = record("e-1", "leeds.L-1", "{\"n\":1}");
    let second = record("e-2", "leeds.L-2", "{\"n\":2}");
    let third = record("e-3", "leeds.L-1", "{\"n\":3}");
    {
        let log = open_log(dir.path(), options.clone()).await?;
        log.append(AppendBatch::new(vec![first.clone()])).await?;
        let outcomes = log
            .append(AppendBatch::new(vec![
                first.clone(),
                second.clone(),
                first.clone(),
                third.clone(),
                second.clone(),
                first.clone(),
            ]))
            .await?;
        ensure!(
            outcomes
                == vec![
                    AppendOutcome::Duplicate { position: 1 },
                    AppendOutcome::Appended { position: 2 },
                    AppendOutcome::Duplicate { position: 1 },
                    AppendOutcome::Appended { position: 3 },
                    AppendOutcome::Duplicate { position: 2 },
                    AppendOutcome::Duplicate { position: 1 },
                ],
            "{outcomes:?}"
        );
        log.close().await;
    }
    let expected = [first.clone(), second.clone(), third.clone()];
    let bytes: u64 = expected.iter().map(frame_length).sum();
    ensure!(
        std::fs::metadata(last_segment(dir.path())?)?.len() == bytes,
        "only the new records are written"
    );
    let log = open_log(dir.path(), options).await?;
    ensure!(log.head().await? == 3, "head {}", log.head().await?);
    assert_records(&log.read(1, usize::MAX).await?, &expected)?;
    ensure!(log.stream_version("leeds.L-1").await? == 3);
    ensure!(log.stream_version("leeds.L-2").await? == 2);
    let again = log
        .append(AppendBatch::new(vec![third.clone(), second.clone()]))
        .await?;
    ensure!(
        again
            == vec![
                AppendOutcome::Duplicate { position: 3 },
                AppendOutcome::Duplicate { position: 2 }
            ],
        "{again:?}"
    );
    Ok(())
}
