//! How fast the scale generator writes: the 10M-event benchmark file must
//! not be the slow part of a benchmark run (aim: over 1M lines/s).

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use demodata::RandomSpec;

fn write_random(criterion: &mut Criterion) {
    let spec = RandomSpec {
        patients: 2_000,
        centres: 8,
        seed: 1,
    };
    let lines = demodata::write_random(&spec, &mut std::io::sink()).unwrap_or(0);
    let mut group = criterion.benchmark_group("demodata");
    group.throughput(Throughput::Elements(lines));
    group.sample_size(10);
    group.bench_function("write_random_2000_patients", |bencher| {
        bencher.iter(|| demodata::write_random(&spec, &mut std::io::sink()))
    });
    group.finish();
}

fn paper2019(criterion: &mut Criterion) {
    criterion.bench_function("paper2019_lines", |bencher| {
        bencher.iter(|| demodata::paper2019_lines(1))
    });
}

criterion_group!(benches, write_random, paper2019);
criterion_main!(benches);
