//! REST handlers under `/api/v1/`. Each answers JSON (downloads: the bytes) and
//! uses the same queries as the CLI (`daemon::query`), so both say the same thing.

use super::Web;
use crate::daemon::query::{self, LogFilter, QueryError, Readable};
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use std::convert::Infallible;

/// An error answer: a status and one line, as `{"error": "..."}`.
pub struct ApiError(pub StatusCode, pub String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(serde_json::json!({ "error": self.1 }))).into_response()
    }
}

impl From<QueryError> for ApiError {
    fn from(e: QueryError) -> Self {
        let status = match &e {
            QueryError::NotFound(_) => StatusCode::NOT_FOUND,
            QueryError::BadRequest(_) => StatusCode::BAD_REQUEST,
            QueryError::Gone(_) => StatusCode::GONE,
            QueryError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError(status, e.to_string())
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// Runs a blocking repo call on the blocking pool.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, QueryError> + Send + 'static) -> ApiResult<T> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(ApiError::from),
        Err(e) => Err(ApiError(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("request failed: {e}"),
        )),
    }
}

/// Folder-relative paths as query parameters: `?path=dir/file.txt`. A leading `/`
/// means the folder root, not the machine's.
#[derive(Deserialize)]
pub struct PathQuery {
    #[serde(default)]
    path: String,
    /// For downloads: `Content-Disposition: attachment`.
    #[serde(default)]
    download: Option<String>,
}

fn folder_path(p: &str) -> ApiResult<String> {
    let rel = p.strip_prefix('/').unwrap_or(p);
    query::check_rel(rel)?;
    Ok(rel.trim_end_matches('/').to_string())
}

pub async fn not_found() -> ApiError {
    ApiError(StatusCode::NOT_FOUND, "no such API endpoint (see docs/api.md)".into())
}

pub async fn status(State(w): State<Web>) -> ApiResult<Json<crate::daemon::control::StatusInfo>> {
    let ctl = w.ctl.clone();
    Ok(Json(blocking(move || Ok(ctl.lock().status())).await?))
}

pub async fn peers(State(w): State<Web>) -> ApiResult<Json<Vec<crate::sync::peers::PeerInfo>>> {
    let ctl = w.ctl.clone();
    Ok(Json(
        blocking(move || Ok(ctl.lock().sync.as_ref().map(|s| s.peers()).unwrap_or_default())).await?,
    ))
}

pub async fn transfers(State(w): State<Web>) -> ApiResult<Json<crate::daemon::control::TransfersInfo>> {
    let ctl = w.ctl.clone();
    Ok(Json(blocking(move || ctl.lock().transfers()).await?))
}

pub async fn tree(State(w): State<Web>, Query(q): Query<PathQuery>) -> ApiResult<Json<serde_json::Value>> {
    let rel = folder_path(&q.path)?;
    let repo = w.repo.clone();
    let r = rel.clone();
    let items = blocking(move || query::list_dir(&repo, &r)).await?;
    Ok(Json(serde_json::json!({ "path": rel, "items": items })))
}

pub async fn versions(
    State(w): State<Web>,
    Query(q): Query<PathQuery>,
) -> ApiResult<Json<Vec<crate::daemon::control::VersionNode>>> {
    let rel = folder_path(&q.path)?;
    let repo = w.repo.clone();
    Ok(Json(blocking(move || query::versions_of(&repo, &rel)).await?))
}

pub async fn conflicts(State(w): State<Web>) -> ApiResult<Json<Vec<crate::daemon::control::ConflictInfo>>> {
    let repo = w.repo.clone();
    Ok(Json(blocking(move || query::conflicts(&repo)).await?))
}

#[derive(Deserialize)]
pub struct LogQuery {
    path: Option<String>,
    /// Recent changes at or below this folder path.
    under: Option<String>,
    author: Option<String>,
    /// Unix seconds, an RFC 3339 time, or an age like `2h` / `3days`.
    since: Option<String>,
    limit: Option<usize>,
}

fn parse_since(s: &str) -> ApiResult<i64> {
    let s = s.trim();
    if let Ok(secs) = s.parse::<i64>() {
        return Ok(secs);
    }
    let now = std::time::SystemTime::now();
    let t = humantime::parse_rfc3339_weak(s)
        .ok()
        .or_else(|| humantime::parse_duration(s).ok().and_then(|d| now.checked_sub(d)))
        .ok_or_else(|| {
            ApiError(
                StatusCode::BAD_REQUEST,
                format!("since={s}: expected Unix seconds, a time like 2026-12-01T10:00:00Z, or an age like 2h"),
            )
        })?;
    Ok(t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64))
}

pub async fn log(
    State(w): State<Web>,
    Query(q): Query<LogQuery>,
) -> ApiResult<Json<Vec<crate::daemon::control::LogLine>>> {
    let filter = LogFilter {
        path: q.path.as_deref().map(folder_path).transpose()?,
        under: q.under.as_deref().map(folder_path).transpose()?,
        limit: q.limit.unwrap_or(100).min(10_000),
        author: q.author.filter(|a| !a.is_empty()),
        since: q
            .since
            .as_deref()
            .filter(|s| !s.is_empty())
            .map(parse_since)
            .transpose()?,
    };
    let repo = w.repo.clone();
    Ok(Json(blocking(move || query::log_lines(&repo, &filter)).await?))
}

#[derive(Deserialize)]
pub struct ResolveBody {
    path: String,
    /// The version to keep (`v3`, `v3-1a2b3c4d`); empty when the path names it.
    #[serde(default)]
    keep: String,
}

pub async fn resolve(State(w): State<Web>, Json(b): Json<ResolveBody>) -> ApiResult<Json<serde_json::Value>> {
    let rel = folder_path(&b.path)?;
    let repo = w.repo.clone();
    let message = blocking(move || query::resolve_conflict(&repo, &rel, &b.keep)).await?;
    tracing::info!(message = %message, "resolved through the web API");
    Ok(Json(serde_json::json!({ "message": message })))
}

#[derive(Deserialize)]
pub struct RestoreBody {
    /// `file@vN`.
    path: String,
}

pub async fn restore(State(w): State<Web>, Json(b): Json<RestoreBody>) -> ApiResult<Json<serde_json::Value>> {
    let rel = folder_path(&b.path)?;
    let repo = w.repo.clone();
    let message = blocking(move || query::restore_version(&repo, &rel)).await?;
    tracing::info!(message = %message, "restored through the web API");
    Ok(Json(serde_json::json!({ "message": message })))
}

/// Bytes read per step of a download (bounded memory whatever the file's size).
const PIECE: u64 = 1 << 20;

/// The content of a file or of any version (`path=notes.txt@v2`), streamed.
pub async fn content(State(w): State<Web>, Query(q): Query<PathQuery>) -> ApiResult<Response> {
    let rel = folder_path(&q.path)?;
    let repo = w.repo.clone();
    let r = rel.clone();
    let readable = blocking(move || query::open_content(&repo, &r)).await?;
    let name = rel
        .rsplit('/')
        .next()
        .unwrap_or("download")
        .replace(['"', '\\', '\r', '\n'], "_");
    let disposition = if q.download.is_some() { "attachment" } else { "inline" };
    let (len, body) = match readable {
        Readable::Symlink(target) => (target.len() as u64, Body::from(target)),
        Readable::File { size, chunks } => {
            // Read the first piece before answering, so a corrupt or missing chunk
            // is a clean error status instead of a cut-off download.
            let repo = w.repo.clone();
            let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(2);
            let (first_tx, first_rx) = tokio::sync::oneshot::channel::<Result<(), String>>();
            tokio::task::spawn_blocking(move || {
                let mut first = Some(first_tx);
                let mut off = 0u64;
                while off < size {
                    let n = PIECE.min(size - off);
                    let mut buf = Vec::with_capacity(n as usize);
                    if let Err(e) = repo.read_chunks(&chunks, off, n, &mut buf) {
                        tracing::error!(error = %e, offset = off, "download: reading failed");
                        match first.take() {
                            Some(f) => {
                                let _ = f.send(Err(e.to_string()));
                            }
                            None => {
                                let _ = tx.blocking_send(Err(std::io::Error::other(e.to_string())));
                            }
                        }
                        return;
                    }
                    off += n;
                    if let Some(f) = first.take() {
                        let _ = f.send(Ok(()));
                    }
                    if tx.blocking_send(Ok(buf)).is_err() {
                        return; // the client went away
                    }
                }
                if let Some(f) = first.take() {
                    let _ = f.send(Ok(()));
                }
            });
            match first_rx.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    return Err(ApiError(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        format!("{rel}: cannot read its data ({e})"),
                    ))
                }
                Err(_) => {
                    return Err(ApiError(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        format!("{rel}: read failed"),
                    ))
                }
            }
            let stream = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) });
            (size, Body::from_stream(stream))
        }
    };
    let mut resp = Response::new(body);
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    if let Ok(v) = HeaderValue::from_str(&format!("{disposition}; filename=\"{name}\"")) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(resp)
}

/// Server-sent events: one `change` event per committed batch (`{"remote": bool,
/// "paths": [...]}`), `resync` when this client fell behind and should reload.
pub async fn events(State(w): State<Web>) -> Sse<impl futures::Stream<Item = Result<Event, Infallible>>> {
    let rx = w.events.subscribe();
    let hello = futures::stream::once(async { Ok(Event::default().event("hello").data("{}")) });
    let changes = futures::stream::unfold(rx, |mut rx| async move {
        use tokio::sync::broadcast::error::RecvError;
        let ev = match rx.recv().await {
            Ok(line) => Event::default().event("change").data(&*line),
            Err(RecvError::Lagged(_)) => Event::default().event("resync").data("{}"),
            Err(RecvError::Closed) => return None,
        };
        Some((Ok(ev), rx))
    });
    use futures::StreamExt;
    Sse::new(hello.chain(changes)).keep_alive(KeepAlive::default())
}
