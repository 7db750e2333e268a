//! How many `/api/stream` connections may be open: a bound per signed-in
//! subject and one for the whole server.
//!
//! Each stream is a task, a socket and a copy of the report it last sent;
//! without a bound, one valid token (a clinician's) could open streams until
//! the process runs out of file descriptors, and then the gRPC services (the
//! same process under `toxaudit up`) could accept no connection either. The
//! per-subject bound keeps one caller from taking every slot of the global one.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
};

use service_kit::ServiceError;

/// Streams one subject may hold open at once (a browser tab holds one).
pub(crate) const STREAMS_PER_SUBJECT: usize = 32;

/// Streams the server holds open at once.
pub(crate) const STREAMS_IN_ALL: usize = 2048;

#[derive(Debug, Default)]
struct Counts {
    in_all: usize,
    per_subject: HashMap<String, usize>,
}

/// The open streams, counted.
#[derive(Debug, Clone)]
pub(crate) struct StreamSlots {
    counts: Arc<Mutex<Counts>>,
    per_subject: usize,
    in_all: usize,
}

impl Default for StreamSlots {
    fn default() -> Self {
        Self::with_bounds(STREAMS_PER_SUBJECT, STREAMS_IN_ALL)
    }
}

impl StreamSlots {
    pub(crate) fn with_bounds(per_subject: usize, in_all: usize) -> Self {
        Self {
            counts: Arc::new(Mutex::new(Counts::default())),
            per_subject,
            in_all,
        }
    }

    /// A slot for one more stream of `subject`, held until it is dropped;
    /// refused (503) while either bound is reached.
    pub(crate) fn take(&self, subject: &str) -> Result<StreamSlot, ServiceError> {
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        if counts.in_all >= self.in_all {
            return Err(ServiceError::Unavailable(
                "too many open dashboard streams: retry later".to_owned(),
            ));
        }
        let held = counts.per_subject.get(subject).copied().unwrap_or(0);
        if held >= self.per_subject {
            return Err(ServiceError::Unavailable(format!(
                "{held} dashboard streams are open for this sign-in already: close some"
            )));
        }
        counts.in_all += 1;
        counts.per_subject.insert(subject.to_owned(), held + 1);
        Ok(StreamSlot {
            counts: Arc::clone(&self.counts),
            subject: subject.to_owned(),
        })
    }
}

/// One open stream's slot; dropping it frees the slot.
#[derive(Debug)]
pub(crate) struct StreamSlot {
    counts: Arc<Mutex<Counts>>,
    subject: String,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        counts.in_all = counts.in_all.saturating_sub(1);
        if let Some(held) = counts.per_subject.get_mut(&self.subject) {
            *held = held.saturating_sub(1);
            if *held == 0 {
                counts.per_subject.remove(&self.subject);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_subject_cannot_hold_more_than_its_bound() {
        let slots = StreamSlots::with_bounds(2, 10);
        let first = slots.take("dr-a").unwrap();
        let _second = slots.take("dr-a").unwrap();
        assert!(matches!(
            slots.take("dr-a"),
            Err(ServiceError::Unavailable(_))
        ));
        // Another subject is not affected.
        let _other = slots.take("dr-b").unwrap();
        // A closed stream frees its slot.
        drop(first);
        assert!(slots.take("dr-a").is_ok());
    }

    #[test]
    fn the_server_holds_no_more_than_its_bound() {
        let slots = StreamSlots::with_bounds(5, 3);
        let held: Vec<_> = ["a", "b", "c"]
            .into_iter()
            .map(|subject| slots.take(subject).unwrap())
            .collect();
        assert!(matches!(slots.take("d"), Err(ServiceError::Unavailable(_))));
        drop(held);
        assert!(slots.take("d").is_ok());
        assert_eq!(
            slots.counts.lock().unwrap().per_subject.len(),
            0,
            "every dropped slot is forgotten"
        );
    }
}
