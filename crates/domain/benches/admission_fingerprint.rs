//! What admission pays per event for its content identity: the fingerprint
//! hashed from the fields ([`content_fingerprint`], what admission stores)
//! next to the hash of the canonical line ([`ndjson::fingerprint`], what it
//! stored before), measured in the same run.

// A benchmark's set-up failing is a bug in the benchmark: let it panic.
#![allow(clippy::unwrap_used)]

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use domain::{
    ClinicalDate,
    admission::content_fingerprint,
    ndjson::{self, parse_line},
};
use std::hint::black_box;

const TYPICAL_LINES: [(&str, &str); 3] = [
    (
        "response",
        r#"{"event_id":"0b9c2f4e-5d1a-4e8b-9f6a-3c2d1e0f9a8b","centre":"leeds","patient":"L-0001","occurred_on":"2017-03-10","type":"response_assessed","injection_event_id":"7e3a1c2b-9d8f-4a6e-b5c4-1f2e3d4c5b6a","rating":"good","percent_improvement":60}"#,
    ),
    (
        "injection",
        r#"{"event_id":"7e3a1c2b-9d8f-4a6e-b5c4-1f2e3d4c5b6a","centre":"leeds","patient":"L-0001","occurred_on":"2017-02-01","type":"injection_administered","product":"onabotulinumtoxinA","total_units":200,"guidance":"emg","muscles":[{"muscle":"splenius_capitis","side":"left","units":80},{"muscle":"sternocleidomastoid","side":"right","units":120}]}"#,
    ),
    (
        "referral",
        r#"{"event_id":"1a2b3c4d-5e6f-4a8b-9c0d-1e2f3a4b5c6d","centre":"salford-royal","patient":"S-0412","occurred_on":"2019-06-11","type":"referral_made","target":"dbs"}"#,
    ),
];

fn fingerprints(criterion: &mut Criterion) {
    let today = ClinicalDate::from_ymd(2026, 11, 25).unwrap();
    let mut group = criterion.benchmark_group("admission_fingerprint");
    group.throughput(Throughput::Elements(1));
    for (name, line) in TYPICAL_LINES {
        let event = parse_line(line, today).unwrap();
        group.bench_function(format!("{name}_fields_xxh3_128"), |bencher| {
            bencher.iter(|| content_fingerprint(black_box(&event)))
        });
        group.bench_function(
            format!("{name}_canonical_line_xxh3_128_baseline"),
            |bencher| bencher.iter(|| ndjson::fingerprint(black_box(&event))),
        );
    }
    group.finish();
}

criterion_group!(benches, fingerprints);
criterion_main!(benches);
