//! Small hand-made cohorts for the renderer tests: a concise event builder
//! and a two-centre cohort that walks every branch of the BNN pathway.

use domain::{
    ClinicalDate, Event, EventBody, EventId, InjectionAdministered, RecordedEvent,
    audit::{AuditReport, Cohort, GroupReport, RuleParameters, ScopeReport, SnrReport},
    event::{
        Guidance, Muscle, MuscleDose, PatientRegistered, Product, Rating, ReferralMade,
        ReferralTarget, ResistanceMethod, ResistanceResult, ResistanceTested, ResponseAssessed,
        Side, TreatmentDiscontinued,
    },
    ids::{Centre, Pseudonym},
};

/// A log under construction, positions and event ids in append order.
#[derive(Debug, Default)]
pub struct Log {
    pub events: Vec<RecordedEvent>,
}

impl Log {
    fn append(&mut self, patient: &str, on: &str, body: EventBody) -> String {
        let (centre, pseudonym) = patient.split_once('/').unwrap();
        let event_id = format!("e-{:03}", self.events.len() + 1);
        self.events.push(RecordedEvent {
            position: self.events.len() as u64 + 1,
            recorded_at_micros: 0,
            recorded_by: "test".into(),
            event: Event {
                event_id: EventId::parse(&event_id).unwrap(),
                centre: Centre::parse(centre).unwrap(),
                patient: Pseudonym::parse(pseudonym).unwrap(),
                occurred_on: ClinicalDate::parse(on).unwrap(),
                body,
            },
        });
        event_id
    }

    pub fn register(&mut self, patient: &str) {
        self.append(
            patient,
            "2014-01-06",
            EventBody::PatientRegistered(PatientRegistered::default()),
        );
    }

    /// An injection (splenius capitis left, sternocleidomastoid right, and
    /// trapezius left when `trapezius`), rated four weeks later unless
    /// `rating` is `None`.
    pub fn cycle(
        &mut self,
        patient: &str,
        on: &str,
        product: Product,
        units: u32,
        guidance: Guidance,
        rating: Option<Rating>,
    ) -> String {
        let muscles = vec![
            MuscleDose {
                muscle: Muscle::SpleniusCapitis,
                side: Side::Left,
                units: units / 2,
            },
            MuscleDose {
                muscle: Muscle::Sternocleidomastoid,
                side: Side::Right,
                units: units - units / 2,
            },
        ];
        let injection = InjectionAdministered::new(product, units, guidance, muscles).unwrap();
        let id = self.append(patient, on, EventBody::InjectionAdministered(injection));
        if let Some(rating) = rating {
            let date = ClinicalDate::parse(on).unwrap();
            let rated_on = ClinicalDate::from_days_since_epoch(date.days_since_epoch() + 28)
                .unwrap()
                .to_string();
            self.append(
                patient,
                &rated_on,
                EventBody::ResponseAssessed(ResponseAssessed {
                    injection_event_id: EventId::parse(&id).unwrap(),
                    rating,
                    percent_improvement: None,
                    benefit_weeks: None,
                    twstrs_total: None,
                }),
            );
        }
        id
    }

    pub fn test(&mut self, patient: &str, on: &str, result: ResistanceResult) {
        self.append(
            patient,
            on,
            EventBody::ResistanceTested(ResistanceTested {
                method: ResistanceMethod::Frontalis,
                result,
                titre_mu_per_ml: None,
            }),
        );
    }

    pub fn refer(&mut self, patient: &str, on: &str, target: ReferralTarget) {
        self.append(
            patient,
            on,
            EventBody::ReferralMade(ReferralMade { target }),
        );
    }

    pub fn discontinue(&mut self, patient: &str, on: &str) {
        self.append(
            patient,
            on,
            EventBody::TreatmentDiscontinued(TreatmentDiscontinued {
                reason: "patient choice".to_owned(),
            }),
        );
    }

    pub fn cohort(&self, parameters: RuleParameters) -> Cohort {
        let mut cohort = Cohort::new(parameters);
        for event in &self.events {
            cohort.apply(event);
        }
        cohort
    }
}

const ONA: Product = Product::OnabotulinumtoxinA;
const RIMA: Product = Product::RimabotulinumtoxinB;
const EMG: Guidance = Guidance::Emg;
const GOOD: Option<Rating> = Some(Rating::Good);
const SUBOPTIMAL: Option<Rating> = Some(Rating::Suboptimal);
const NONE: Option<Rating> = Some(Rating::None);

/// Two good cycles, then a poor one on 2015-01-05.
fn onset(log: &mut Log, patient: &str, rating: Option<Rating>) {
    log.register(patient);
    log.cycle(patient, "2014-07-07", ONA, 200, EMG, GOOD);
    log.cycle(patient, "2014-10-06", ONA, 200, EMG, GOOD);
    log.cycle(patient, "2015-01-05", ONA, 200, EMG, rating);
}

/// Two centres, seven patients: a good responder with a short interval, a
/// suboptimal responder who regained after adjustment, one escalated to
/// BoNT-B without adjustment or test, one referred for DBS after an
/// adjustment; a no-response patient confirmed resistant who switched, one
/// never tested, and one tested negative and discontinued.
pub fn small_cohort() -> Log {
    let mut log = Log::default();
    let good = "leeds/L-001";
    log.register(good);
    log.cycle(good, "2015-01-05", ONA, 200, EMG, GOOD);
    log.cycle(good, "2015-03-16", ONA, 200, EMG, GOOD);

    let regained = "leeds/L-002";
    onset(&mut log, regained, SUBOPTIMAL);
    log.cycle(regained, "2015-04-06", ONA, 240, Guidance::Ultrasound, GOOD);

    let switched = "leeds/L-003";
    onset(&mut log, switched, SUBOPTIMAL);
    log.cycle(switched, "2015-04-06", RIMA, 5000, EMG, GOOD);

    let dbs = "salford-royal/S-001";
    onset(&mut log, dbs, SUBOPTIMAL);
    log.cycle(dbs, "2015-04-06", ONA, 260, EMG, SUBOPTIMAL);
    log.refer(dbs, "2015-06-01", ReferralTarget::Dbs);

    let resistant = "salford-royal/S-002";
    onset(&mut log, resistant, NONE);
    log.test(resistant, "2015-02-02", ResistanceResult::Positive);
    log.cycle(resistant, "2015-04-06", RIMA, 5000, EMG, GOOD);

    let untested = "salford-royal/S-003";
    onset(&mut log, untested, NONE);
    log.cycle(untested, "2015-04-06", ONA, 300, EMG, NONE);

    let stopped = "salford-royal/S-004";
    onset(&mut log, stopped, NONE);
    log.test(stopped, "2015-02-02", ResistanceResult::Negative);
    log.discontinue(stopped, "2015-03-02");
    log
}

/// The founding audit's published numbers, as a report of one scope: the
/// proportions every human format must show (6/16 (38%), 22/31 (71%), …).
pub fn founding_audit_report() -> AuditReport {
    let suboptimal = GroupReport {
        n: 37,
        regained_with_adjustment: 21,
        regained_without_adjustment: 0,
        not_regained: 16,
        switched_to_bont_b: 6,
        referred_dbs: 7,
        not_regained_switched_to_bont_b: 6,
        not_regained_referred_dbs: 7,
        assessed_for_resistance: 3,
        resistance_confirmed: 1,
    };
    let no_response = GroupReport {
        n: 31,
        regained_with_adjustment: 6,
        regained_without_adjustment: 0,
        not_regained: 25,
        switched_to_bont_b: 5,
        referred_dbs: 2,
        not_regained_switched_to_bont_b: 5,
        not_regained_referred_dbs: 2,
        assessed_for_resistance: 22,
        resistance_confirmed: 8,
    };
    let mut scope = ScopeReport {
        patients: 68,
        injections: 612,
        snr: SnrReport {
            n: 68,
            suboptimal,
            no_response,
        },
        standards: Default::default(),
    };
    scope.standards.bnn_1.numerator = 5;
    scope.standards.bnn_1.denominator = 9;
    scope.standards.bnn_2.numerator = 22;
    scope.standards.bnn_2.denominator = 31;
    AuditReport {
        rule_set: domain::audit::RULE_SET.to_owned(),
        parameters: None,
        scopes: [("all".to_owned(), scope)].into_iter().collect(),
    }
}
