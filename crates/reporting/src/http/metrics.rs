//! `GET /metrics`: the audit and the projection's health in the Prometheus
//! text format (OpenMetrics flavour, via `prometheus-client`), for Grafana.
//!
//! Every number comes from the same snapshot as `/api/report`, so a scrape
//! and the JSON agree. The exposition is rebuilt from the snapshot at each
//! scrape rather than kept in long-lived gauges: the report is already the
//! source of truth, and a rebuilt registry cannot keep a stale series.
//!
//! Series (`scope` is `all` or a centre, as in the report's `scopes`):
//!
//! | name | labels | meaning |
//! |---|---|---|
//! | `toxaudit_patients` | scope | registered patients |
//! | `toxaudit_injections` | scope | live injections |
//! | `toxaudit_snr_patients` | scope | patients in the SNR cohort |
//! | `toxaudit_snr_pathway_patients` | scope, group, step | the ten counts of each SNR group (`step` = the report's key, `n` for the group) |
//! | `toxaudit_standard_numerator` | scope, standard | a standard's numerator |
//! | `toxaudit_standard_denominator` | scope, standard | a standard's denominator |
//! | `toxaudit_standard_target_percent` | standard | its target |
//! | `toxaudit_events_appended_total` | | records in the log (positions are gap-free, so the head) |
//! | `toxaudit_projection_position` | | the last log position folded into the report |
//! | `toxaudit_projection_lag_events` | | records stored but not yet folded |
//! | `toxaudit_projection_lag_seconds` | | age of the oldest record not yet folded |
//!
//! Access: per-centre counts are audit data, so `/metrics` needs an
//! auditor's or admin's token (`Authorization: Bearer`), like the API.

use std::sync::atomic::AtomicU64;

use axum::{
    extract::State,
    http::{HeaderMap, header},
    response::{IntoResponse, Response},
};
use domain::audit::{GroupReport, SnrGroup, Standard};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use service_kit::ServiceError;

use crate::http::{ApiError, AppState, access::Viewer, snapshot::Snapshot};

/// The content type of the exposition.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ScopeLabels {
    scope: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PathwayLabels {
    scope: String,
    group: String,
    step: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StandardLabels {
    scope: String,
    standard: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StandardOnlyLabels {
    standard: String,
}

/// A count as a gauge value (counts beyond i64 do not occur; they saturate).
fn gauge_value(count: u64) -> i64 {
    i64::try_from(count).unwrap_or(i64::MAX)
}

/// The steps of a group, as the report's keys name them.
fn steps(group: &GroupReport) -> [(&'static str, u64); 10] {
    [
        ("n", group.n),
        ("regained_with_adjustment", group.regained_with_adjustment),
        (
            "regained_without_adjustment",
            group.regained_without_adjustment,
        ),
        ("not_regained", group.not_regained),
        ("switched_to_bont_b", group.switched_to_bont_b),
        ("referred_dbs", group.referred_dbs),
        (
            "not_regained_switched_to_bont_b",
            group.not_regained_switched_to_bont_b,
        ),
        ("not_regained_referred_dbs", group.not_regained_referred_dbs),
        ("assessed_for_resistance", group.assessed_for_resistance),
        ("resistance_confirmed", group.resistance_confirmed),
    ]
}

/// The exposition of one snapshot.
pub(crate) fn encode(snapshot: &Snapshot) -> Result<String, std::fmt::Error> {
    let mut registry = Registry::default();
    let patients = Family::<ScopeLabels, Gauge>::default();
    let injections = Family::<ScopeLabels, Gauge>::default();
    let snr = Family::<ScopeLabels, Gauge>::default();
    let pathway = Family::<PathwayLabels, Gauge>::default();
    let numerators = Family::<StandardLabels, Gauge>::default();
    let denominators = Family::<StandardLabels, Gauge>::default();
    let targets = Family::<StandardOnlyLabels, Gauge>::default();
    for (name, scope) in snapshot.report.scopes_in_order() {
        let labels = ScopeLabels {
            scope: name.to_owned(),
        };
        patients
            .get_or_create(&labels)
            .set(gauge_value(scope.patients));
        injections
            .get_or_create(&labels)
            .set(gauge_value(scope.injections));
        snr.get_or_create(&labels).set(gauge_value(scope.snr.n));
        for group in [SnrGroup::Suboptimal, SnrGroup::NoResponse] {
            for (step, count) in steps(scope.snr.group(group)) {
                pathway
                    .get_or_create(&PathwayLabels {
                        scope: name.to_owned(),
                        group: group.as_str().to_owned(),
                        step: step.to_owned(),
                    })
                    .set(gauge_value(count));
            }
        }
        for standard in Standard::ALL {
            let result = scope.standards.get(*standard);
            let labels = StandardLabels {
                scope: name.to_owned(),
                standard: standard.id().to_owned(),
            };
            numerators
                .get_or_create(&labels)
                .set(gauge_value(result.numerator));
            denominators
                .get_or_create(&labels)
                .set(gauge_value(result.denominator));
            targets
                .get_or_create(&StandardOnlyLabels {
                    standard: standard.id().to_owned(),
                })
                .set(gauge_value(result.target_pct));
        }
    }
    registry.register("toxaudit_patients", "Registered patients", patients);
    registry.register(
        "toxaudit_injections",
        "Live injection_administered events",
        injections,
    );
    registry.register(
        "toxaudit_snr_patients",
        "Patients with secondary non-response to BoNT-A",
        snr,
    );
    registry.register(
        "toxaudit_snr_pathway_patients",
        "Patients at each step of the SNR pathway, per group",
        pathway,
    );
    registry.register(
        "toxaudit_standard_numerator",
        "Numerator of each audit standard",
        numerators,
    );
    registry.register(
        "toxaudit_standard_denominator",
        "Denominator of each audit standard",
        denominators,
    );
    registry.register(
        "toxaudit_standard_target_percent",
        "Target of each audit standard, in percent",
        targets,
    );
    let appended = Counter::<u64>::default();
    appended.inc_by(snapshot.log_head);
    registry.register(
        "toxaudit_events_appended",
        "Records appended to the event log",
        appended,
    );
    let position = Gauge::<i64>::default();
    position.set(gauge_value(snapshot.position));
    registry.register(
        "toxaudit_projection_position",
        "Last log position folded into the report",
        position,
    );
    let lag_events = Gauge::<i64>::default();
    lag_events.set(gauge_value(snapshot.lag.events));
    registry.register(
        "toxaudit_projection_lag_events",
        "Records stored but not yet folded into the report",
        lag_events,
    );
    let lag_seconds = Gauge::<f64, AtomicU64>::default();
    lag_seconds.set(snapshot.lag.seconds);
    registry.register(
        "toxaudit_projection_lag_seconds",
        "Age of the oldest record not yet folded into the report",
        lag_seconds,
    );
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry)?;
    Ok(text)
}

/// `GET /metrics`, for an auditor's or admin's token.
pub(crate) async fn metrics(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let viewer = Viewer::from_headers(&state.secret, &headers)?;
    if !viewer.sees_every_centre() {
        return Err(ServiceError::PermissionDenied(
            "metrics hold every centre's numbers: use an auditor's or admin's token".to_owned(),
        )
        .into());
    }
    let snapshot = state.snapshots.latest();
    let text = encode(&snapshot)
        .map_err(|_| ServiceError::Internal("encoding the metrics failed".to_owned()))?;
    Ok(([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use domain::audit::AuditReport;

    use super::*;
    use crate::http::snapshot::Lag;

    #[test]
    fn every_scope_and_standard_is_exposed() {
        let mut report = AuditReport {
            rule_set: "bnn-2016/v1".into(),
            parameters: None,
            scopes: Default::default(),
        };
        let mut leeds = domain::audit::ScopeReport {
            patients: 3,
            ..Default::default()
        };
        leeds.snr.no_response.n = 2;
        leeds.standards.bnn_2.numerator = 1;
        leeds.standards.bnn_2.denominator = 2;
        report.scopes.insert("all".into(), leeds);
        report.scopes.insert("leeds".into(), leeds);
        let text = encode(&Snapshot {
            position: 9,
            report: Arc::new(report),
            log_head: 10,
            lag: Lag {
                events: 1,
                seconds: 0.5,
            },
        })
        .unwrap();
        assert!(
            text.contains("toxaudit_patients{scope=\"leeds\"} 3"),
            "{text}"
        );
        assert!(text.contains(
            "toxaudit_snr_pathway_patients{scope=\"all\",group=\"no_response\",step=\"n\"} 2"
        ));
        assert!(
            text.contains("toxaudit_standard_denominator{scope=\"leeds\",standard=\"BNN-2\"} 2")
        );
        assert!(text.contains("toxaudit_events_appended_total 10"));
        assert!(text.contains("toxaudit_projection_lag_events 1"));
        assert!(text.contains("toxaudit_projection_lag_seconds 0.5"));
        assert!(text.ends_with("# EOF\n"));
    }
}
