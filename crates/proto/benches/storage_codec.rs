//! How fast events are read back from the log: a replay decodes every
//! stored event, so the target is >= 2 million decodes per second of a
//! ~120-byte event on one core.

// A benchmark's set-up failing is a bug in the benchmark: let it panic.
#![allow(clippy::unwrap_used)]

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use domain::{ClinicalDate, ndjson::parse_line};
use prost::Message;
use proto::{
    convert::{decode_event, encode_event, raw_from_proto, recorded_from_parts},
    v1,
};
use std::hint::black_box;

const TYPICAL_LINES: [&str; 3] = [
    r#"{"event_id":"0b9c2f4e-5d1a-4e8b-9f6a-3c2d1e0f9a8b","centre":"leeds","patient":"L-0001","occurred_on":"2017-03-10","type":"response_assessed","injection_event_id":"7e3a1c2b-9d8f-4a6e-b5c4-1f2e3d4c5b6a","rating":"good","percent_improvement":60}"#,
    r#"{"event_id":"7e3a1c2b-9d8f-4a6e-b5c4-1f2e3d4c5b6a","centre":"leeds","patient":"L-0001","occurred_on":"2017-02-01","type":"injection_administered","product":"onabotulinumtoxinA","total_units":200,"guidance":"emg","muscles":[{"muscle":"splenius_capitis","side":"left","units":80},{"muscle":"sternocleidomastoid","side":"right","units":120}]}"#,
    r#"{"event_id":"1a2b3c4d-5e6f-4a8b-9c0d-1e2f3a4b5c6d","centre":"salford-royal","patient":"S-0412","occurred_on":"2019-06-11","type":"referral_made","target":"dbs"}"#,
];

fn decoding(criterion: &mut Criterion) {
    let today = ClinicalDate::from_ymd(2026, 11, 25).unwrap();
    let records: Vec<_> = TYPICAL_LINES
        .iter()
        .map(|line| encode_event(&parse_line(line, today).unwrap()))
        .collect();
    let mut group = criterion.benchmark_group("storage_codec");
    for (name, record) in ["response", "injection", "referral"].iter().zip(&records) {
        group.throughput(Throughput::Elements(1));
        group.bench_function(format!("decode_{name}_{}_bytes", record.len()), |bencher| {
            bencher.iter(|| decode_event(black_box(record)).unwrap())
        });
        // What a projection's replay calls per record: the log's facts and
        // the decoded event.
        group.bench_function(
            format!("recorded_{name}_{}_bytes", record.len()),
            |bencher| {
                bencher.iter(|| {
                    recorded_from_parts(
                        black_box(7),
                        black_box(1_764_095_700_123_456),
                        black_box("leeds-writer"),
                        black_box(record),
                    )
                    .unwrap()
                })
            },
        );
        // Baseline in the same run: prost's message, then the same
        // validation (the path of records the fast reader does not expect).
        group.bench_function(
            format!("prost_baseline_{name}_{}_bytes", record.len()),
            |bencher| {
                bencher.iter(|| {
                    let message = v1::Event::decode(black_box(&record[..])).unwrap();
                    domain::raw::validate_stored(raw_from_proto(message)).unwrap()
                })
            },
        );
    }
    group.finish();
}

/// Records of a random demodata cohort, as a replay reads them: each
/// decoded once per pass, in log order. The typical records above are
/// decoded over and over, so the branch predictor learns each one by heart
/// (e.g. the digits and letters of its UUIDs); a replay never sees the same
/// record twice, so this is the figure to trust for it.
fn decoding_a_cohort(criterion: &mut Criterion) {
    let today = ClinicalDate::from_ymd(2026, 11, 25).unwrap();
    let records: Vec<_> = demodata::random_lines(&demodata::RandomSpec {
        patients: 200,
        centres: 8,
        seed: 7,
    })
    .map(|line| encode_event(&parse_line(&line, today).unwrap()))
    .collect();
    let mut group = criterion.benchmark_group("storage_codec_cohort");
    group.throughput(Throughput::Elements(records.len() as u64));
    group.bench_function(
        format!("recorded_from_parts_{}_records", records.len()),
        |bencher| {
            bencher.iter(|| {
                for (position, record) in (1..).zip(&records) {
                    black_box(
                        recorded_from_parts(
                            position,
                            black_box(1_764_095_700_123_456),
                            black_box("leeds-writer"),
                            black_box(record),
                        )
                        .unwrap(),
                    );
                }
            })
        },
    );
    group.finish();
}

criterion_group!(benches, decoding, decoding_a_cohort);
criterion_main!(benches);
