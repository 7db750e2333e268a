//! `GET /api/stream?scope=`: the dashboard's Server-Sent Events.
//!
//! - `report` (id = the log position it reflects): the scope's report of
//!   `rules.md`, the projection lag, and the page's sections rendered by the
//!   server (so the live page and the first paint come from one template).
//!   Sent at once, then after every change of what this scope shows, at most
//!   [`super::SNAPSHOTS_PER_SECOND`] times a second.
//! - `feed`: one recent event or finding of the scope (pseudonyms only).
//! - `lag`: the lag alone, when only it moved.
//!
//! A reconnecting browser sends `Last-Event-ID`: it gets a report only when
//! the projection has moved past that position, and the feed items after it.
//! Feed and lag events carry no id, so the browser's last id is always a
//! report's position.
//!
//! A stream ends when the viewer's token expires: it was checked once, when
//! the stream opened, and must not outlive it.

use std::{convert::Infallible, sync::Arc, time::Duration};

use axum::{
    extract::{Query, State},
    http::HeaderMap,
    response::{
        IntoResponse, Response,
        sse::{Event, KeepAlive, Sse},
    },
};
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;

use crate::http::{
    ApiError, AppState, ScopeQuery,
    access::{Scope, Viewer},
    feed::FeedItem,
    page,
    snapshot::Snapshot,
};

/// How often an idle stream sends a comment, so proxies keep it open.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// The log position a reconnecting browser last saw.
fn last_event_id(headers: &HeaderMap) -> Option<u64> {
    headers
        .get("last-event-id")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.trim().parse().ok())
}

fn report_event(viewer: &Viewer, scope: &Scope, snapshot: &Snapshot) -> Option<Event> {
    let report = scope.restrict(&snapshot.report);
    let sections = page::Sections::render(viewer, scope, snapshot);
    let payload = serde_json::json!({
        "position": snapshot.position,
        "scope": scope.name(),
        "report": report,
        "lag": {"events": snapshot.lag.events, "seconds": snapshot.lag.seconds},
        "html": sections,
    });
    Event::default()
        .event("report")
        .id(snapshot.position.to_string())
        .json_data(payload)
        .ok()
}

fn lag_event(snapshot: &Snapshot) -> Option<Event> {
    let payload = serde_json::json!({
        "lag": {"events": snapshot.lag.events, "seconds": snapshot.lag.seconds},
        "html": page::lag_html(snapshot),
    });
    Event::default().event("lag").json_data(payload).ok()
}

fn feed_event(item: &FeedItem) -> Option<Event> {
    let payload = serde_json::json!({
        "item": item,
        "html": page::feed_item_html(item),
    });
    Event::default().event("feed").json_data(payload).ok()
}

/// `GET /api/stream?scope=`.
pub(crate) async fn stream(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(query): Query<ScopeQuery>,
) -> Result<Response, ApiError> {
    let viewer = Viewer::from_headers(&state.secret, &headers)?;
    let scope = viewer.scope(query.scope.as_deref())?;
    let slot = state.streams.take(viewer.subject())?;
    let resume_after = last_event_id(&headers);
    let (sender, receiver) = mpsc::channel::<Event>(16);
    // The task ends when the browser goes away (a send fails), when the
    // snapshots or the feed close, or at shutdown.
    tokio::spawn(async move {
        follow(state, viewer, scope, resume_after, sender).await;
        // Held while the stream is open.
        drop(slot);
    });
    let events = tokio_stream::StreamExt::map(ReceiverStream::new(receiver), Ok::<_, Infallible>);
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
        .into_response())
}

/// What one stream last sent, to send only what changed.
struct Sent {
    report: Option<domain::audit::AuditReport>,
    lag: Option<(u64, u64)>,
    feed_sequence: u64,
}

fn lag_key(snapshot: &Snapshot) -> (u64, u64) {
    // Tenths of a second are what the page shows.
    let tenths = (snapshot.lag.seconds * 10.0).round();
    (
        snapshot.lag.events,
        if tenths > 0.0 { tenths as u64 } else { 0 },
    )
}

async fn follow(
    state: AppState,
    viewer: Viewer,
    scope: Scope,
    resume_after: Option<u64>,
    sender: mpsc::Sender<Event>,
) {
    let mut snapshots = state.snapshots.subscribe();
    let mut feed = state.feed.subscribe();
    let stopped = state.shutdown.clone().wait();
    tokio::pin!(stopped);
    // The token was checked when the stream opened; it ends when the token
    // expires, and the browser's reconnect is then refused until it signs
    // in again.
    let expired = tokio::time::sleep(viewer.expires_in());
    tokio::pin!(expired);
    let mut sent = Sent {
        report: None,
        lag: None,
        feed_sequence: 0,
    };

    let snapshot: Arc<Snapshot> = Arc::clone(&snapshots.borrow_and_update());
    if resume_after.is_none_or(|after| snapshot.position > after)
        && !send_report(&sender, &viewer, &scope, &snapshot, &mut sent).await
    {
        return;
    }
    for item in state.feed.recent() {
        if resume_after.is_none_or(|after| item.position > after)
            && !send_feed(&sender, &scope, &item, &mut sent).await
        {
            return;
        }
    }

    loop {
        tokio::select! {
            () = &mut stopped => return,
            () = &mut expired => return,
            // The browser went away: stop at once, not at the next change.
            () = sender.closed() => return,
            changed = snapshots.changed() => {
                if changed.is_err() {
                    return;
                }
                let snapshot = Arc::clone(&snapshots.borrow_and_update());
                let report = scope.restrict(&snapshot.report);
                // A change elsewhere (another centre) sends nothing new.
                let delivered = if sent.report.as_ref() != Some(&report) {
                    send_report(&sender, &viewer, &scope, &snapshot, &mut sent).await
                } else if sent.lag != Some(lag_key(&snapshot)) {
                    sent.lag = Some(lag_key(&snapshot));
                    match lag_event(&snapshot) {
                        Some(event) => sender.send(event).await.is_ok(),
                        None => true,
                    }
                } else {
                    true
                };
                if !delivered {
                    return;
                }
            }
            item = feed.recv() => match item {
                Ok(item) => {
                    if !send_feed(&sender, &scope, &item, &mut sent).await {
                        return;
                    }
                }
                // Missed items are only older feed lines: go on with the next.
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return,
            },
        }
    }
}

async fn send_report(
    sender: &mpsc::Sender<Event>,
    viewer: &Viewer,
    scope: &Scope,
    snapshot: &Snapshot,
    sent: &mut Sent,
) -> bool {
    let Some(event) = report_event(viewer, scope, snapshot) else {
        return true;
    };
    sent.report = Some(scope.restrict(&snapshot.report));
    sent.lag = Some(lag_key(snapshot));
    sender.send(event).await.is_ok()
}

async fn send_feed(
    sender: &mpsc::Sender<Event>,
    scope: &Scope,
    item: &FeedItem,
    sent: &mut Sent,
) -> bool {
    if item.sequence <= sent.feed_sequence || !scope.includes(&item.centre) {
        return true;
    }
    sent.feed_sequence = item.sequence;
    match feed_event(item) {
        Some(event) => sender.send(event).await.is_ok(),
        None => true,
    }
}
