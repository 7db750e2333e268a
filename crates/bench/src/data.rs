//! The benchmark's events: random cohorts from `demodata`, read exactly as
//! `toxaudit import` reads a file (`domain::ndjson::parse_line`), and the
//! log records import would append for them. Every phase measures the same
//! kind of events a clinic network writes, never hand-made toy records.

use anyhow::{Context, bail};
use domain::{ClinicalDate, Event, EventBody, EventId, Pseudonym};
use eventlog::NewRecord;

/// The principal the raw baselines write as (the gRPC phases write as the
/// token's subject).
pub const PRINCIPAL: &str = "bench";
/// Centres of every generated cohort.
pub const CENTRES: u32 = 8;

/// Today, for the "not in the future" rule of import.
pub fn today() -> ClinicalDate {
    ClinicalDate::from_date(time::OffsetDateTime::now_utc().date())
}

/// Parses one demodata line as import does; a refusal is a bug of the
/// generator (it promises every line is accepted).
pub fn parse(line: &str, today: ClinicalDate) -> anyhow::Result<Event> {
    domain::ndjson::parse_line(line, today)
        .with_context(|| format!("demodata wrote a line import refuses: {line}"))
}

/// Every event of a random cohort of `patients`, in file order.
pub fn cohort(patients: u64, seed: u64) -> anyhow::Result<Vec<Event>> {
    let today = today();
    demodata::random_lines(&demodata::RandomSpec {
        patients,
        centres: CENTRES,
        seed,
    })
    .map(|line| parse(&line, today))
    .collect()
}

/// The record import appends for `event` (key, stream, payload).
pub fn record_of(event: &Event, principal: &str) -> NewRecord {
    NewRecord {
        key: event.event_id.as_str().to_owned(),
        stream: format!("{}.{}", event.centre, event.patient),
        principal: principal.to_owned(),
        payload: proto::convert::encode_event(event),
    }
}

/// The events reordered so that consecutive events belong to different
/// patients (round robin over patients, each patient's own order kept): a
/// steady load from many clinics at once, where two in-flight appends of
/// one patient never race each other.
pub fn round_robin(events: Vec<Event>) -> Vec<Event> {
    let mut by_patient: Vec<std::collections::VecDeque<Event>> = Vec::new();
    let mut index_of = std::collections::HashMap::new();
    for event in events {
        let slot = *index_of.entry(event.patient_key()).or_insert_with(|| {
            by_patient.push(std::collections::VecDeque::new());
            by_patient.len() - 1
        });
        by_patient[slot].push_back(event);
    }
    let mut ordered = Vec::new();
    loop {
        let before = ordered.len();
        for queue in &mut by_patient {
            if let Some(event) = queue.pop_front() {
                ordered.push(event);
            }
        }
        if ordered.len() == before {
            return ordered;
        }
    }
}

/// A registration of a patient no cohort has, made from a registration of
/// the cohort: appended last, it is a change every projection must show, so
/// "the projection has folded the sentinel" means "the projection is at the
/// head of the log".
pub fn sentinel_registration(events: &[Event]) -> anyhow::Result<Event> {
    let Some(template) = events
        .iter()
        .find(|event| matches!(event.body, EventBody::PatientRegistered(_)))
    else {
        bail!("the cohort has no registration to copy for the sentinel");
    };
    let mut sentinel = template.clone();
    sentinel.patient =
        Pseudonym::parse("bench-sentinel").map_err(|reason| anyhow::anyhow!(reason))?;
    sentinel.event_id =
        EventId::parse("bench-sentinel-registration").map_err(|reason| anyhow::anyhow!(reason))?;
    Ok(sentinel)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_robin_keeps_each_patients_order_and_every_event() {
        let events = cohort(5, 1).unwrap();
        let ordered = round_robin(events.clone());
        assert_eq!(ordered.len(), events.len());
        for key in events.iter().map(Event::patient_key) {
            let original: Vec<_> = events.iter().filter(|e| e.patient_key() == key).collect();
            let reordered: Vec<_> = ordered.iter().filter(|e| e.patient_key() == key).collect();
            assert_eq!(original, reordered);
        }
        assert_ne!(ordered[0].patient_key(), ordered[1].patient_key());
    }

    #[test]
    fn the_sentinel_is_a_new_patient() {
        let events = cohort(3, 1).unwrap();
        let sentinel = sentinel_registration(&events).unwrap();
        assert!(
            events
                .iter()
                .all(|e| e.patient_key() != sentinel.patient_key())
        );
        assert!(matches!(sentinel.body, EventBody::PatientRegistered(_)));
    }
}
