//! `GET /api/logs`: query the persistent log store (instance or service, stream, time range,
//! full-text search, newest first with a limit), or follow it live over Server-Sent Events
//! with the same filters (`follow=true`).

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use futures_util::stream::{self, StreamExt};

use tenement::{LogLine, LogQuery, Principal, StoredLine, Stream, Supervisor};
use tenement_core::{InstanceKey, ServiceName};
use tokio::sync::broadcast::error::RecvError;

use crate::api::ApiQuery;
use crate::error::ApiError;

pub use tenement_api::LogParams;

/// A point in time from `since`/`until`.
fn instant_ms(raw: &str) -> Result<u64, ApiError> {
    let bad = || {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_time",
            format!("{raw:?} is neither ms since the epoch nor a duration like 10m"),
        )
    };
    if let Ok(ms) = raw.parse::<u64>() {
        return Ok(ms);
    }
    let (num, unit) = raw.split_at(raw.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?);
    let n: u64 = num.parse().map_err(|_| bad())?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => return Err(bad()),
    };
    Ok(tenement::now_ms().saturating_sub(secs * 1000))
}

/// Longest search text accepted.
const MAX_SEARCH: usize = 1024;

pub fn to_query(p: &LogParams) -> Result<LogQuery, ApiError> {
    let instance = p
        .instance
        .as_deref()
        .map(str::parse::<InstanceKey>)
        .transpose()?;
    let service = p
        .service
        .as_deref()
        .map(str::parse::<ServiceName>)
        .transpose()?;
    if let Some(search) = &p.search
        && (search.chars().any(char::is_control) || search.len() > MAX_SEARCH)
    {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_search",
            format!(
                "search must be text of at most {MAX_SEARCH} bytes, without control characters"
            ),
        ));
    }
    let stream = match p.stream.as_deref() {
        None | Some("") => None,
        Some("stdout") => Some(Stream::Stdout),
        Some("stderr") => Some(Stream::Stderr),
        Some(other) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_stream",
                format!("stream must be stdout or stderr, not {other:?}"),
            ));
        }
    };
    Ok(LogQuery {
        instance,
        service: service.map(|s| s.to_string()),
        ids: None,
        stream,
        since_ms: p.since.as_deref().map(instant_ms).transpose()?,
        until_ms: p.until.as_deref().map(instant_ms).transpose()?,
        search: p.search.clone(),
        limit: p.limit.unwrap_or(100),
    })
}

fn matches(q: &LogQuery, l: &LogLine) -> bool {
    q.instance.as_ref().is_none_or(|k| *k == *l.instance)
        && q.service
            .as_deref()
            .is_none_or(|s| s == l.instance.service.as_str())
        && q.ids
            .as_ref()
            .is_none_or(|ids| ids.iter().any(|i| i == l.instance.id.as_str()))
        && q.stream.is_none_or(|s| s == l.stream)
        && q.search
            .as_deref()
            .is_none_or(|s| l.text.to_lowercase().contains(&s.to_lowercase()))
}

pub async fn logs(
    State(s): State<Supervisor>,
    Extension(principal): Extension<Principal>,
    ApiQuery(p): ApiQuery<LogParams>,
) -> Result<Response, ApiError> {
    let mut q = to_query(&p)?;
    // A service the configuration does not have can have no lines: said, not answered empty.
    let named = q.instance.iter().map(|k| k.service.to_string());
    for name in named.chain(q.service.clone()) {
        let service: ServiceName = name.parse()?;
        if s.config().service(&service).is_none() {
            return Err(tenement::Error::UnknownService(service).into());
        }
    }
    if let Principal::Tenant(id) = &principal {
        // A tenant sees only its own instances' lines.
        if let Some(k) = q.instance.as_ref().filter(|k| !principal.allows(k)) {
            return Err(tenement::Error::NotFound(k.clone()).into());
        }
        q.ids = Some(vec![id.to_string()]);
    }
    let Some(store) = s.log_store().cloned() else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_log_store",
            "this server keeps no log store",
        ));
    };
    let live = p.follow.then(|| s.follow_logs());
    let subscribed_ms = tenement::now_ms();
    let found = {
        let (q, store) = (q.clone(), store.clone());
        tokio::task::spawn_blocking(move || {
            store.flush(|k| q.covers(k));
            store.query(&q)
        })
        .await
        .expect("log query task")?
    };
    let Some(live) = live else {
        // An instance that never existed (none now, not a line kept): said, not answered empty.
        if let Some(k) = q
            .instance
            .as_ref()
            .filter(|k| found.is_empty() && s.get(k).is_err())
        {
            let any = LogQuery {
                instance: Some(k.clone()),
                limit: 1,
                ..LogQuery::default()
            };
            let kept = tokio::task::spawn_blocking(move || store.query(&any))
                .await
                .expect("log query task")?;
            if kept.is_empty() {
                return Err(tenement::Error::NotFound(k.clone()).into());
            }
        }
        return Ok(Json(found).into_response());
    };
    let backlog: Vec<Event> = found.iter().rev().map(log_event).collect();
    // Lines captured between subscribing to the live feed and the query come both ways.
    let recent: Vec<StoredLine> = found
        .into_iter()
        .filter(|l| l.ts_ms + SEAM_MS >= subscribed_ms)
        .collect();
    let recent = std::sync::Mutex::new(recent);
    Ok(sse(
        backlog,
        live,
        move |line| matches(&q, line) && !seen_before(&recent, line),
        s.stopping(),
    ))
}

/// How far apart a line's capture time and its arrival on the live feed can be.
const SEAM_MS: u64 = 1000;

/// Whether `line`, live, is one of the `recent` backlog lines (same instance, time, stream
/// and text), which it then uses up: a follower gets each line once, and an app that prints
/// the same line twice in a millisecond still shows it twice.
fn seen_before(recent: &std::sync::Mutex<Vec<StoredLine>>, line: &LogLine) -> bool {
    let mut recent = recent.lock().unwrap_or_else(|p| p.into_inner());
    if recent.is_empty() {
        return false;
    }
    // Older lines can no longer come live.
    recent.retain(|l| l.ts_ms + SEAM_MS >= line.ts_ms);
    let same = recent.iter().position(|l| {
        l.ts_ms == line.ts_ms
            && l.stream == line.stream
            && l.text == line.text
            && l.instance == line.instance.to_string()
    });
    same.map(|i| recent.remove(i)).is_some()
}

/// `GET /api/logs/stream`: the same as `GET /api/logs?follow=true` (the spec's name for it).
pub async fn stream(
    supervisor: State<Supervisor>,
    principal: Extension<Principal>,
    ApiQuery(mut p): ApiQuery<LogParams>,
) -> Result<Response, ApiError> {
    p.follow = true;
    logs(supervisor, principal, ApiQuery(p)).await
}

/// One line as an SSE `log` event.
pub fn log_event(line: &impl serde::Serialize) -> Event {
    Event::default()
        .event("log")
        .data(serde_json::to_string(line).expect("log lines serialize"))
}

/// `backlog`, then every live line `keep` accepts, as Server-Sent Events (a `lagged` event
/// says how many lines a slow reader missed), until the server begins to stop (`stop`): then
/// an `end` event, and the response ends, so no follower holds up the shutdown.
pub fn sse(
    backlog: Vec<Event>,
    live: tokio::sync::broadcast::Receiver<std::sync::Arc<LogLine>>,
    keep: impl Fn(&LogLine) -> bool + Send + Sync + 'static,
    stop: tokio_util::sync::CancellationToken,
) -> Response {
    let backlog = stream::iter(backlog.into_iter().map(Ok::<_, Infallible>));
    let live = stream::unfold((live, keep), |(mut live, keep)| async move {
        loop {
            let ev = match live.recv().await {
                Ok(line) if keep(&line) => log_event(&*line),
                Ok(_) => continue,
                Err(RecvError::Lagged(n)) => Event::default().event("lagged").data(n.to_string()),
                Err(RecvError::Closed) => return None,
            };
            return Some((Ok(ev), (live, keep)));
        }
    });
    let end = stream::once(async { Ok(Event::default().event("end").data("server stopping")) });
    let live = live.take_until(stop.cancelled_owned()).chain(end);
    Sse::new(backlog.chain(live))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_live_line_the_backlog_had_is_skipped_once() {
        let key: std::sync::Arc<InstanceKey> = std::sync::Arc::new("web:a".parse().unwrap());
        let live = |ts_ms, text: &str| LogLine {
            instance: key.clone(),
            ts_ms,
            stream: Stream::Stdout,
            text: text.into(),
        };
        let stored = |id, ts_ms, text: &str| StoredLine {
            id: Some(id),
            ts_ms,
            instance: "web:a".into(),
            stream: Stream::Stdout,
            text: text.into(),
        };
        // The backlog ends with "b" printed twice in one millisecond, and "c".
        let recent = std::sync::Mutex::new(vec![
            stored(1, 100, "b"),
            stored(2, 100, "b"),
            stored(3, 101, "c"),
        ]);
        assert!(seen_before(&recent, &live(100, "b")));
        assert!(seen_before(&recent, &live(100, "b")));
        assert!(!seen_before(&recent, &live(100, "b")), "a third b is new");
        assert!(!seen_before(&recent, &live(101, "other")));
        assert!(seen_before(&recent, &live(101, "c")));
        assert!(
            !seen_before(&recent, &live(5000, "c")),
            "nothing left to match"
        );
    }

    #[test]
    fn times() {
        assert_eq!(instant_ms("1700000000000").unwrap(), 1_700_000_000_000);
        let ten_min_ago = instant_ms("10m").unwrap();
        let now = tenement::now_ms();
        assert!((now - ten_min_ago).abs_diff(600_000) < 5_000);
        for bad in ["10x", "m", "", "-5m", "1.5h"] {
            assert!(instant_ms(bad).is_err(), "{bad}");
        }
    }
}
