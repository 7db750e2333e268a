//! A small builder for the audit tests: a log of recorded events written as
//! the clinic would say them ("inject", "rate", "test", "refer", "void"),
//! with positions assigned in log order and event ids generated, so each test
//! reads as given events / when / then report.

use domain::{
    ClinicalDate, Event, EventBody, EventId, InjectionAdministered, RecordedEvent,
    audit::{AuditReport, Cohort, PatientAssessment, RuleParameters, ScopeReport},
    event::{
        EventVoided, Guidance, Muscle, MuscleDose, PatientRegistered, Product, Rating,
        ReferralMade, ReferralTarget, ResistanceMethod, ResistanceResult, ResistanceTested,
        ResponseAssessed, Side, TreatmentDiscontinued,
    },
    ids::{Centre, PatientKey, Pseudonym},
};

/// `centre/patient`, e.g. `leeds/L-1`.
pub fn key(text: &str) -> PatientKey {
    let (centre, patient) = text.split_once('/').unwrap();
    PatientKey::new(
        Centre::parse(centre).unwrap(),
        Pseudonym::parse(patient).unwrap(),
    )
}

pub fn date(text: &str) -> ClinicalDate {
    ClinicalDate::parse(text).unwrap()
}

/// The day `days` after `text`.
pub fn days_after(text: &str, days: i32) -> String {
    ClinicalDate::from_days_since_epoch(date(text).days_since_epoch() + days)
        .unwrap()
        .to_string()
}

/// What was injected in a session, for tests that vary it.
#[derive(Debug, Clone)]
pub struct Session {
    pub product: Product,
    pub guidance: Guidance,
    /// (muscle, side, units); the total is their sum.
    pub muscles: Vec<(Muscle, Side, u32)>,
}

impl Session {
    /// The usual session: splenius capitis left and sternocleidomastoid
    /// right, EMG-guided, `units` in all.
    pub fn of(product: Product, units: u32) -> Self {
        Self {
            product,
            guidance: Guidance::Emg,
            muscles: vec![
                (Muscle::SpleniusCapitis, Side::Left, units / 2),
                (Muscle::Sternocleidomastoid, Side::Right, units - units / 2),
            ],
        }
    }

    pub fn guided(mut self, guidance: Guidance) -> Self {
        self.guidance = guidance;
        self
    }

    /// Adds trapezius left (`units` more in total).
    pub fn plus_trapezius(mut self, units: u32) -> Self {
        self.muscles.push((Muscle::Trapezius, Side::Left, units));
        self
    }
}

/// A log under construction.
#[derive(Debug, Default, Clone)]
pub struct Log {
    pub events: Vec<RecordedEvent>,
    next_id: u64,
}

impl Log {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends an event and returns its id.
    pub fn append(&mut self, patient: &str, on: &str, body: EventBody) -> String {
        self.next_id += 1;
        let event_id = format!("e-{:04}", self.next_id);
        let key = key(patient);
        self.events.push(RecordedEvent {
            position: self.events.len() as u64 + 1,
            recorded_at_micros: 0,
            recorded_by: "test".into(),
            event: Event {
                event_id: EventId::parse(&event_id).unwrap(),
                centre: key.centre,
                patient: key.patient,
                occurred_on: date(on),
                body,
            },
        });
        event_id
    }

    pub fn register(&mut self, patient: &str) -> String {
        self.append(
            patient,
            "2010-01-01",
            EventBody::PatientRegistered(PatientRegistered::default()),
        )
    }

    pub fn inject_session(&mut self, patient: &str, on: &str, session: Session) -> String {
        let total = session.muscles.iter().map(|(_, _, units)| units).sum();
        let muscles = session
            .muscles
            .iter()
            .map(|(muscle, side, units)| MuscleDose {
                muscle: *muscle,
                side: *side,
                units: *units,
            })
            .collect();
        let injection =
            InjectionAdministered::new(session.product, total, session.guidance, muscles).unwrap();
        self.append(patient, on, EventBody::InjectionAdministered(injection))
    }

    /// The usual session of `product`, `units` in all.
    pub fn inject(&mut self, patient: &str, on: &str, product: Product, units: u32) -> String {
        self.inject_session(patient, on, Session::of(product, units))
    }

    /// Assesses an injection 28 days after `injected_on`.
    pub fn rate(
        &mut self,
        patient: &str,
        injected_on: &str,
        injection: &str,
        rating: Rating,
    ) -> String {
        self.rate_on(patient, &days_after(injected_on, 28), injection, rating)
    }

    pub fn rate_on(&mut self, patient: &str, on: &str, injection: &str, rating: Rating) -> String {
        self.append(
            patient,
            on,
            EventBody::ResponseAssessed(ResponseAssessed {
                injection_event_id: EventId::parse(injection).unwrap(),
                rating,
                percent_improvement: None,
                benefit_weeks: None,
                twstrs_total: None,
            }),
        )
    }

    /// An injection of the usual session, rated 28 days later.
    pub fn cycle(
        &mut self,
        patient: &str,
        on: &str,
        product: Product,
        units: u32,
        rating: Rating,
    ) -> String {
        let injection = self.inject(patient, on, product, units);
        self.rate(patient, on, &injection, rating);
        injection
    }

    /// A session rated 28 days later.
    pub fn cycle_session(
        &mut self,
        patient: &str,
        on: &str,
        session: Session,
        rating: Rating,
    ) -> String {
        let injection = self.inject_session(patient, on, session);
        self.rate(patient, on, &injection, rating);
        injection
    }

    pub fn test_resistance(&mut self, patient: &str, on: &str, result: ResistanceResult) -> String {
        self.append(
            patient,
            on,
            EventBody::ResistanceTested(ResistanceTested {
                method: ResistanceMethod::Frontalis,
                result,
                titre_mu_per_ml: None,
            }),
        )
    }

    pub fn refer(&mut self, patient: &str, on: &str, target: ReferralTarget) -> String {
        self.append(
            patient,
            on,
            EventBody::ReferralMade(ReferralMade { target }),
        )
    }

    pub fn discontinue(&mut self, patient: &str, on: &str) -> String {
        self.append(
            patient,
            on,
            EventBody::TreatmentDiscontinued(TreatmentDiscontinued {
                reason: "patient choice".to_owned(),
            }),
        )
    }

    pub fn void(&mut self, patient: &str, on: &str, target: &str) -> String {
        self.append(
            patient,
            on,
            EventBody::EventVoided(EventVoided {
                target_event_id: EventId::parse(target).unwrap(),
                reason: "entered in error".to_owned(),
            }),
        )
    }

    /// Registers a patient with two good ONA cycles (2015-01-05 and
    /// 2015-04-06, 200 units), ready for an onset.
    pub fn responder(&mut self, patient: &str) {
        self.register(patient);
        self.cycle(
            patient,
            "2015-01-05",
            Product::OnabotulinumtoxinA,
            200,
            Rating::Good,
        );
        self.cycle(
            patient,
            "2015-04-06",
            Product::OnabotulinumtoxinA,
            200,
            Rating::Good,
        );
    }

    pub fn report_with(&self, parameters: RuleParameters) -> AuditReport {
        let mut cohort = Cohort::new(parameters);
        for event in &self.events {
            cohort.apply(event);
        }
        cohort.report()
    }

    pub fn report(&self) -> AuditReport {
        self.report_with(RuleParameters::default())
    }

    /// The network-wide scope of the default report.
    pub fn all(&self) -> ScopeReport {
        self.report().scopes["all"]
    }

    pub fn all_with(&self, parameters: RuleParameters) -> ScopeReport {
        self.report_with(parameters).scopes["all"]
    }

    pub fn patient(&self, patient: &str) -> PatientAssessment {
        let mut cohort = Cohort::new(RuleParameters::default());
        for event in &self.events {
            cohort.apply(event);
        }
        cohort.patient(&key(patient)).unwrap()
    }
}

/// The usual patient of a test.
pub const PATIENT: &str = "leeds/L-1";
