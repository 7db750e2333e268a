//! The dashboard's html: the sign-in page, the dashboard's first paint with
//! every number in it (readable without JavaScript), and the sections the
//! event stream sends to replace on the live page. One set of functions
//! renders both, so the first paint and the live page cannot disagree.
//!
//! Numbers and proportions come from [`crate::render`] (`6/16 (38%)`,
//! `n/a` for a zero denominator), as in every other format. Elements that
//! show a number carry `data-metric="<name>"`, for the page's highlight of
//! what changed and for tests.

use std::fmt::Write as _;

use axum::{
    extract::{Query, State},
    http::{HeaderMap, StatusCode, header},
    response::{Html, IntoResponse, Redirect, Response},
};
use domain::audit::{ALL_SCOPE, AuditReport, GroupReport, ScopeReport, SnrGroup};
use serde::Serialize;
use service_kit::ServiceError;

use crate::{
    http::{
        AppState, ScopeQuery,
        access::{Scope, Viewer},
        feed::FeedItem,
        snapshot::Snapshot,
    },
    render::{TITLE, percent, proportion, scope_title, standard_rows},
};

const STYLESHEET: &str = include_str!("../../assets/dashboard.css");
const SCRIPT: &str = include_str!("../../assets/dashboard.js");
const FAVICON: &str = include_str!("../../assets/favicon.svg");

/// How many feed items the page shows.
const FEED_SHOWN: usize = 40;

/// Escapes text for html content and attribute values.
fn escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for character in text.chars() {
        match character {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            other => escaped.push(other),
        }
    }
    escaped
}

/// The parts of the page the stream replaces, by element id.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Sections {
    headline: String,
    pathway: String,
    standards: String,
    /// Empty unless the scope is the network.
    centres: String,
    lag: String,
}

impl Sections {
    pub(crate) fn render(viewer: &Viewer, scope: &Scope, snapshot: &Snapshot) -> Self {
        let report = &snapshot.report;
        let shown = report.scopes.get(scope.name()).copied().unwrap_or_default();
        Self {
            headline: headline_html(&shown),
            pathway: pathway_html(&shown),
            standards: standards_html(report, &shown),
            centres: if *scope == Scope::All && viewer.sees_every_centre() {
                centres_html(report)
            } else {
                String::new()
            },
            lag: lag_html(snapshot),
        }
    }
}

fn headline_html(scope: &ScopeReport) -> String {
    let mut html = String::new();
    let card = |html: &mut String, metric: &str, label: &str, value: String, note: String| {
        let _ = write!(
            html,
            r#"<div class="stat"><div class="stat-label">{label}</div><div class="stat-value" data-metric="{metric}">{value}</div><div class="stat-note">{note}</div></div>"#,
            label = escape(label),
            value = escape(&value),
            note = escape(&note),
        );
    };
    card(
        &mut html,
        "patients",
        "Registered patients",
        scope.patients.to_string(),
        "in this scope".to_owned(),
    );
    card(
        &mut html,
        "injections",
        "Injections",
        scope.injections.to_string(),
        "live treatment cycles".to_owned(),
    );
    card(
        &mut html,
        "headline.snr",
        "Secondary non-response",
        scope.snr.n.to_string(),
        format!("{} of registered", proportion(scope.snr.n, scope.patients)),
    );
    card(
        &mut html,
        "headline.suboptimal",
        "Suboptimal response",
        scope.snr.suboptimal.n.to_string(),
        format!("{} of SNR", proportion(scope.snr.suboptimal.n, scope.snr.n)),
    );
    card(
        &mut html,
        "headline.no_response",
        "No response",
        scope.snr.no_response.n.to_string(),
        format!(
            "{} of SNR",
            proportion(scope.snr.no_response.n, scope.snr.n)
        ),
    );
    html
}

/// One node of the pathway: a label, the count with its denominator, a bar.
fn node(metric: &str, label: &str, numerator: u64, denominator: u64, tone: &str) -> String {
    let width = percent(numerator, denominator).unwrap_or(0);
    format!(
        r#"<div class="node {tone}"><div class="node-label">{label}</div><div class="node-count"><strong>{numerator}</strong> <span data-metric="{metric}">{shown}</span></div><div class="node-bar"><span style="width:{width}%"></span></div></div>"#,
        label = escape(label),
        shown = escape(&proportion(numerator, denominator)),
        metric = escape(metric),
    )
}

fn group_tree(name: &str, title: &str, group: &GroupReport, snr: u64) -> String {
    let metric = |field: &str| format!("{name}.{field}");
    let leaf = |html: String| format!("<li>{html}</li>");
    format!(
        r#"<div class="group"><div class="group-head">{head}</div><ul class="tree">{regained}{regained_without}<li>{not_regained}<ul>{bont_b}{dbs}</ul></li><li>{assessed}<ul>{confirmed}</ul></li></ul></div>"#,
        head = node(&metric("n"), title, group.n, snr, "group-node"),
        regained = leaf(node(
            &metric("regained_with_adjustment"),
            "Regained with adjustment",
            group.regained_with_adjustment,
            group.n,
            "good"
        )),
        regained_without = leaf(node(
            &metric("regained_without_adjustment"),
            "Regained without adjustment",
            group.regained_without_adjustment,
            group.n,
            "good"
        )),
        not_regained = node(
            &metric("not_regained"),
            "Not regained",
            group.not_regained,
            group.n,
            "warn"
        ),
        bont_b = leaf(node(
            &metric("not_regained_switched_to_bont_b"),
            "Switched to BoNT-B",
            group.not_regained_switched_to_bont_b,
            group.not_regained,
            "step"
        )),
        dbs = leaf(node(
            &metric("not_regained_referred_dbs"),
            "Referred for DBS",
            group.not_regained_referred_dbs,
            group.not_regained,
            "step"
        )),
        assessed = node(
            &metric("assessed_for_resistance"),
            "Assessed for resistance",
            group.assessed_for_resistance,
            group.n,
            "step"
        ),
        confirmed = leaf(node(
            &metric("resistance_confirmed"),
            "Resistance confirmed",
            group.resistance_confirmed,
            group.assessed_for_resistance,
            "warn"
        )),
    )
}

fn pathway_html(scope: &ScopeReport) -> String {
    format!(
        r#"<div class="pathway"><div class="root">{root}</div><div class="branches">{suboptimal}{no_response}</div></div>"#,
        root = node(
            "snr",
            "Secondary non-response to BoNT-A",
            scope.snr.n,
            scope.patients,
            "root-node"
        ),
        suboptimal = group_tree(
            SnrGroup::Suboptimal.as_str(),
            "Suboptimal response",
            &scope.snr.suboptimal,
            scope.snr.n
        ),
        no_response = group_tree(
            SnrGroup::NoResponse.as_str(),
            "No response",
            &scope.snr.no_response,
            scope.snr.n
        ),
    )
}

/// The class of a proportion against its target: met, near, far or n/a.
/// Met is judged on the exact proportion (numerator / denominator at least
/// target / 100), not on the rounded percentage shown: 199/200 shows as
/// 100% but one patient missed a 100% target. Near and far only band what
/// is shown.
fn standing(numerator: u64, denominator: u64, target: u64) -> &'static str {
    let reaches_target =
        u128::from(numerator) * 100 >= u128::from(target) * u128::from(denominator);
    match percent(numerator, denominator) {
        None => "na",
        Some(_) if reaches_target => "met",
        Some(pct) if pct >= 75 => "near",
        Some(_) => "far",
    }
}

fn standards_html(report: &AuditReport, scope: &ScopeReport) -> String {
    let mut html = String::from(
        r#"<table class="standards"><thead><tr><th>Standard</th><th>What is measured</th><th class="num">n/d</th><th class="num">%</th><th class="num">Target</th><th class="bar-cell"></th></tr></thead><tbody>"#,
    );
    for row in standard_rows(report, scope) {
        let class = standing(row.numerator, row.denominator, row.target_pct);
        let (shown_percent, width) = match percent(row.numerator, row.denominator) {
            Some(pct) => (format!("{pct}%"), pct.min(100)),
            None => ("n/a".to_owned(), 0),
        };
        let _ = write!(
            html,
            r#"<tr class="{class}"><td class="id">{id}</td><td>{description}</td><td class="num" data-metric="standard.{id}">{numerator}/{denominator}</td><td class="num pct" data-metric="standard.{id}.percent">{shown_percent}</td><td class="num">{target}%</td><td class="bar-cell"><div class="bar"><span style="width:{width}%"></span><i style="left:{target_left}%"></i></div></td></tr>"#,
            id = escape(row.id),
            description = escape(&row.description),
            numerator = row.numerator,
            denominator = row.denominator,
            target = row.target_pct,
            target_left = row.target_pct.min(100),
        );
    }
    html.push_str("</tbody></table>");
    html
}

fn centres_html(report: &AuditReport) -> String {
    let mut html = String::from(
        r#"<table class="centres"><thead><tr><th>Centre</th><th class="num">Patients</th><th class="num">Injections</th><th class="num">SNR</th><th class="num">Suboptimal</th><th class="num">No response</th>"#,
    );
    let parameters = report.parameters();
    for standard in domain::audit::Standard::ALL {
        let _ = write!(
            html,
            r#"<th class="num" title="{description}">{id}</th>"#,
            id = standard.id(),
            description = escape(&standard.description(&parameters)),
        );
    }
    html.push_str("</tr></thead><tbody>");
    let scopes = report.scopes_in_order();
    // Centres first, the network as the total row at the end.
    for (name, scope) in scopes
        .iter()
        .filter(|(name, _)| *name != ALL_SCOPE)
        .chain(scopes.iter().filter(|(name, _)| *name == ALL_SCOPE))
    {
        let row_class = if *name == ALL_SCOPE { "total" } else { "" };
        let shown_name = if *name == ALL_SCOPE {
            "All centres".to_owned()
        } else {
            (*name).to_owned()
        };
        let _ = write!(
            html,
            r#"<tr class="{row_class}"><td class="id"><a href="/?scope={link}">{shown_name}</a></td><td class="num" data-metric="centre.{link}.patients">{patients}</td><td class="num">{injections}</td><td class="num" data-metric="centre.{link}.snr">{snr}</td><td class="num">{suboptimal}</td><td class="num">{no_response}</td>"#,
            link = escape(name),
            shown_name = escape(&shown_name),
            patients = scope.patients,
            injections = scope.injections,
            snr = scope.snr.n,
            suboptimal = scope.snr.suboptimal.n,
            no_response = scope.snr.no_response.n,
        );
        for standard in domain::audit::Standard::ALL {
            let result = scope.standards.get(*standard);
            let class = standing(result.numerator, result.denominator, result.target_pct);
            let shown = match percent(result.numerator, result.denominator) {
                Some(pct) => format!("{pct}%"),
                None => "n/a".to_owned(),
            };
            let _ = write!(
                html,
                r#"<td class="num cell-{class}"><span class="pill">{shown}</span><small>{numerator}/{denominator}</small></td>"#,
                numerator = result.numerator,
                denominator = result.denominator,
            );
        }
        html.push_str("</tr>");
    }
    html.push_str("</tbody></table>");
    html
}

/// The projection's lag, as the footer shows it.
pub(crate) fn lag_html(snapshot: &Snapshot) -> String {
    let class = if snapshot.lag.events == 0 {
        "ok"
    } else {
        "behind"
    };
    format!(
        r#"<span class="lag {class}" data-metric="lag.events" data-lag-events="{events}">{shown}</span> · log position <span data-metric="position">{position}</span> of {head}"#,
        events = snapshot.lag.events,
        shown = escape(&snapshot.lag.shown()),
        position = snapshot.position,
        head = snapshot.log_head,
    )
}

/// One feed line.
pub(crate) fn feed_item_html(item: &FeedItem) -> String {
    let time = item
        .recorded_at
        .get(11..19)
        .unwrap_or(item.recorded_at.as_str());
    format!(
        r#"<li class="feed-item {kind} {tone}" data-sequence="{sequence}" data-centre="{centre}"><div class="feed-meta"><span class="feed-time" title="recorded {recorded_at}">{time}</span><span class="feed-who">{centre} · {patient}</span></div><div class="feed-title">{title}</div><div class="feed-detail">{detail}<span class="feed-date">{occurred_on}</span></div></li>"#,
        kind = item.kind,
        tone = item.tone,
        sequence = item.sequence,
        time = escape(time),
        recorded_at = escape(&item.recorded_at),
        centre = escape(&item.centre),
        patient = escape(&item.patient),
        title = escape(&item.title),
        detail = if item.detail.is_empty() {
            String::new()
        } else {
            format!("{} · ", escape(&item.detail))
        },
        occurred_on = escape(&item.occurred_on),
    )
}

fn document(title: &str, body_attributes: &str, body: &str) -> String {
    format!(
        r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<link rel="icon" href="/assets/favicon.svg" type="image/svg+xml">
<link rel="stylesheet" href="/assets/dashboard.css">
</head>
<body {body_attributes}>
{body}
</body>
</html>
"#,
        title = escape(title),
    )
}

/// The sign-in page, with an optional reason the last attempt failed.
pub(crate) fn sign_in_page(problem: Option<&str>) -> String {
    let problem = problem
        .map(|problem| format!(r#"<p class="problem" role="alert">{}</p>"#, escape(problem)))
        .unwrap_or_default();
    document(
        "Sign in · toxaudit",
        r#"class="sign-in-page""#,
        &format!(
            r#"<main class="sign-in">
<div class="brand big"><span class="logo">◆</span> toxaudit</div>
<h1>{title}</h1>
<p>Sign in with your toxaudit token. A clinician sees their own centre; auditors and administrators see every centre.</p>
{problem}
<form method="post" action="/login">
<label for="token">Token</label>
<textarea id="token" name="token" rows="5" required autocomplete="off" spellcheck="false" placeholder="eyJhbGciOi…"></textarea>
<button type="submit" id="sign-in">Sign in</button>
</form>
<p class="hint">An administrator issues tokens with <code>toxaudit token issue --centre leeds --role clinician</code>.</p>
</main>"#,
            title = escape(TITLE),
        ),
    )
}

/// `GET /login`.
pub(crate) async fn sign_in() -> Html<String> {
    Html(sign_in_page(None))
}

fn scope_picker(viewer: &Viewer, report: &AuditReport, scope: &Scope) -> String {
    let mut html = String::from(r#"<nav class="scopes" aria-label="scope">"#);
    for name in viewer.scopes_offered(report) {
        let label = if name == ALL_SCOPE {
            "All centres".to_owned()
        } else {
            name.clone()
        };
        let current = if name == scope.name() {
            r#" class="current" aria-current="page""#
        } else {
            ""
        };
        let _ = write!(
            html,
            r#"<a href="/?scope={link}"{current} data-scope-link="{link}">{label}</a>"#,
            link = escape(&name),
            label = escape(&label),
        );
    }
    html.push_str("</nav>");
    html
}

/// `GET /`: the dashboard of the scope asked for (or the viewer's default),
/// server-rendered; without a valid token, the way to the sign-in page.
pub(crate) async fn dashboard(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(query): Query<ScopeQuery>,
) -> Response {
    let viewer = match Viewer::from_headers(&state.secret, &headers) {
        Ok(viewer) => viewer,
        Err(_) => return Redirect::to("/login").into_response(),
    };
    let scope = match viewer.scope(query.scope.as_deref()) {
        Ok(scope) => scope,
        Err(error) => {
            let status = StatusCode::from_u16(error.http_status()).unwrap_or(StatusCode::FORBIDDEN);
            return (status, Html(refusal_page(&error))).into_response();
        }
    };
    let snapshot = state.snapshots.latest();
    let sections = Sections::render(&viewer, &scope, &snapshot);
    let feed: String = state
        .feed
        .recent()
        .iter()
        .rev()
        .filter(|item| scope.includes(&item.centre))
        .take(FEED_SHOWN)
        .map(|item| feed_item_html(item))
        .collect();
    let centres_panel = if sections.centres.is_empty() {
        String::new()
    } else {
        format!(
            r#"<section class="panel centres-panel"><h2>Centre by centre</h2><div id="centres">{}</div></section>"#,
            sections.centres
        )
    };
    let body = format!(
        r#"<header class="topbar">
<div class="brand"><span class="logo">◆</span> toxaudit <span class="subtitle">{title}</span></div>
{picker}
<div class="who"><span>{who}</span><form method="post" action="/logout"><button type="submit">Sign out</button></form></div>
</header>
<main class="dashboard">
<div class="scope-line"><h1 id="scope-title">{scope_title}</h1><span id="connection" class="connection static">server-rendered</span></div>
<section id="headline" class="headline">{headline}</section>
<div class="layout">
<section class="panel pathway-panel"><h2>SNR pathway <small>every proportion names its denominator</small></h2><div id="pathway">{pathway}</div></section>
<aside class="panel feed-panel"><h2>Live feed <small>pseudonyms only</small></h2><ol id="feed" class="feed">{feed}</ol></aside>
<section class="panel standards-panel"><h2>Audit standards <small>target 100%; n/a when nobody is counted</small></h2><div id="standards">{standards}</div></section>
{centres_panel}
</div>
<footer class="status">Projection <span id="lag">{lag}</span> · rule set {rule_set} · updated <span id="updated">at page load</span></footer>
</main>
<noscript><p class="noscript">Live updates need JavaScript; these numbers are as of the page load.</p></noscript>
<script src="/assets/dashboard.js" defer></script>"#,
        title = escape(TITLE),
        picker = scope_picker(&viewer, &snapshot.report, &scope),
        who = escape(&viewer.describe()),
        scope_title = escape(&scope_title(scope.name())),
        headline = sections.headline,
        pathway = sections.pathway,
        standards = sections.standards,
        lag = sections.lag,
        rule_set = escape(&snapshot.report.rule_set),
    );
    let page = document(
        &format!("{} · toxaudit", scope_title(scope.name())),
        &format!(
            r#"data-scope="{}" data-position="{}""#,
            escape(scope.name()),
            snapshot.position
        ),
        &body,
    );
    ([(header::CACHE_CONTROL, "no-store")], Html(page)).into_response()
}

fn refusal_page(error: &ServiceError) -> String {
    document(
        "Not allowed · toxaudit",
        r#"class="sign-in-page""#,
        &format!(
            r#"<main class="sign-in"><div class="brand big"><span class="logo">◆</span> toxaudit</div><h1>Not allowed</h1><p class="problem" role="alert">{}</p><p><a href="/">Back to your dashboard</a> · <a href="/login">Sign in as someone else</a></p></main>"#,
            escape(&error.to_string())
        ),
    )
}

/// `GET /assets/dashboard.css`.
pub(crate) async fn stylesheet() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        STYLESHEET,
    )
        .into_response()
}

/// `GET /assets/dashboard.js`.
pub(crate) async fn script() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        SCRIPT,
    )
        .into_response()
}

/// `GET /assets/favicon.svg`.
pub(crate) async fn favicon() -> Response {
    (
        [
            (header::CONTENT_TYPE, "image/svg+xml"),
            (header::CACHE_CONTROL, "max-age=86400"),
        ],
        FAVICON,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped() {
        assert_eq!(
            escape(r#"<a href="x">&'"#),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }

    #[test]
    fn the_pathway_names_numerators_and_denominators() {
        let mut scope = ScopeReport {
            patients: 80,
            ..ScopeReport::default()
        };
        scope.snr.n = 68;
        scope.snr.suboptimal.n = 37;
        scope.snr.suboptimal.not_regained = 16;
        scope.snr.suboptimal.not_regained_switched_to_bont_b = 6;
        let html = pathway_html(&scope);
        assert!(html.contains(
            r#"<span data-metric="suboptimal.not_regained_switched_to_bont_b">6/16 (38%)</span>"#
        ));
        assert!(html.contains(r#"<span data-metric="suboptimal.n">37/68 (54%)</span>"#));
        assert!(
            html.contains(
                r#"<span data-metric="no_response.resistance_confirmed">0/0 (n/a)</span>"#
            )
        );
    }

    /// A standard's target is 100%: 199/200 shows as "100%" (rounded half
    /// up, as rules.md asks) but one patient missed it, so it must not be
    /// coloured as met; only an exact 200/200 is.
    #[test]
    fn a_standard_is_met_only_when_its_exact_proportion_reaches_the_target() {
        assert_eq!(standing(199, 200, 100), "near");
        assert_eq!(standing(200, 200, 100), "met");
        assert_eq!(standing(0, 0, 100), "na");
        let mut scope = ScopeReport::default();
        scope.standards.bnn_2.numerator = 199;
        scope.standards.bnn_2.denominator = 200;
        let report = AuditReport {
            rule_set: "bnn-2016/v1".into(),
            parameters: None,
            scopes: [("all".to_owned(), scope)].into_iter().collect(),
        };
        let standards = standards_html(&report, &scope);
        assert!(standards.contains(r#"<tr class="near"><td class="id">BNN-2</td>"#));
        assert!(standards.contains(r#"data-metric="standard.BNN-2.percent">100%<"#));
        let centres = centres_html(&report);
        assert!(centres.contains(
            r#"<td class="num cell-near"><span class="pill">100%</span><small>199/200</small>"#
        ));
    }

    #[test]
    fn a_standard_with_no_denominator_is_not_applicable() {
        let report = AuditReport {
            rule_set: "bnn-2016/v1".into(),
            parameters: None,
            scopes: Default::default(),
        };
        let html = standards_html(&report, &ScopeReport::default());
        assert!(html.contains(r#"data-metric="standard.BNN-1.percent">n/a<"#));
        assert!(!html.contains(">0%<") && !html.contains(">100%</td><td class=\"num\">"));
    }
}
