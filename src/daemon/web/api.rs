//! REST handlers under `/api/v1/`. Each answers JSON (downloads: the bytes) and
//! uses the same queries as the CLI (`daemon::query`), so both say the same thing.

use super::Web;
use crate::chunking::ChunkList;
use crate::daemon::query::{self, LogFilter, QueryError, Readable};
use crate::repo::Repo;
use axum::extract::{Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use std::convert::Infallible;
use std::sync::Arc;

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

/// Query parameters, with a bad one answered as `{"error"}` like every error.
pub struct Params<T>(T);

impl<T: serde::de::DeserializeOwned, S: Send + Sync> axum::extract::FromRequestParts<S> for Params<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, _: &S) -> ApiResult<Self> {
        Query::<T>::try_from_uri(&parts.uri)
            .map(|Query(v)| Params(v))
            .map_err(|e| {
                ApiError(
                    StatusCode::BAD_REQUEST,
                    format!("bad query parameters: {}", e.body_text()),
                )
            })
    }
}

/// A JSON body; anything else (a form post from another site) is refused with 415.
pub struct Body<T>(T);

impl<T: serde::de::DeserializeOwned, S: Send + Sync> axum::extract::FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> ApiResult<Self> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(Body(v)),
            Err(e) => Err(ApiError(e.status(), format!("bad request body: {}", e.body_text()))),
        }
    }
}

/// Runs a query on this node's repo on the blocking pool.
async fn on_repo<T: Send + 'static>(
    w: &Web,
    f: impl FnOnce(&Repo) -> Result<T, QueryError> + Send + 'static,
) -> ApiResult<T> {
    let repo = w.repo.clone();
    blocking(move || f(&repo)).await
}

/// Runs a blocking call on the blocking pool.
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
    Ok(Json(blocking(move || Ok(crate::daemon::status_of(&ctl))).await?))
}

pub async fn peers(State(w): State<Web>) -> ApiResult<Json<Vec<crate::sync::peers::PeerInfo>>> {
    let ctl = w.ctl.clone();
    Ok(Json(
        blocking(move || Ok(ctl.lock().sync.as_ref().map(|s| s.peers()).unwrap_or_default())).await?,
    ))
}

pub async fn transfers(State(w): State<Web>) -> ApiResult<Json<crate::daemon::control::TransfersInfo>> {
    let ctl = w.ctl.clone();
    Ok(Json(blocking(move || crate::daemon::transfers_of(&ctl)).await?))
}

pub async fn tree(State(w): State<Web>, Params(q): Params<PathQuery>) -> ApiResult<Json<serde_json::Value>> {
    let rel = folder_path(&q.path)?;
    let r = rel.clone();
    let items = on_repo(&w, move |repo| query::list_dir(repo, &r)).await?;
    Ok(Json(serde_json::json!({ "path": rel, "items": items })))
}

pub async fn versions(
    State(w): State<Web>,
    Params(q): Params<PathQuery>,
) -> ApiResult<Json<Vec<crate::daemon::control::VersionNode>>> {
    let rel = folder_path(&q.path)?;
    Ok(Json(on_repo(&w, move |repo| query::versions_of(repo, &rel)).await?))
}

pub async fn deleted(
    State(w): State<Web>,
    Params(q): Params<PathQuery>,
) -> ApiResult<Json<Vec<crate::daemon::control::DeletedItem>>> {
    let rel = folder_path(&q.path)?;
    Ok(Json(on_repo(&w, move |repo| query::deleted_in(repo, &rel)).await?))
}

pub async fn conflicts(State(w): State<Web>) -> ApiResult<Json<Vec<crate::daemon::control::ConflictInfo>>> {
    Ok(Json(on_repo(&w, query::conflicts).await?))
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
    Params(q): Params<LogQuery>,
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
    Ok(Json(on_repo(&w, move |repo| query::log_lines(repo, &filter)).await?))
}

#[derive(Deserialize)]
pub struct ResolveBody {
    path: String,
    /// The version to keep (`v3`, `v3-1a2b3c4d`); empty when the path names it.
    #[serde(default)]
    keep: String,
}

pub async fn resolve(State(w): State<Web>, Body(b): Body<ResolveBody>) -> ApiResult<Json<serde_json::Value>> {
    let rel = folder_path(&b.path)?;
    let message = on_repo(&w, move |repo| query::resolve_conflict(repo, &rel, &b.keep)).await?;
    tracing::info!(message = %message, "resolved through the web API");
    Ok(Json(serde_json::json!({ "message": message })))
}

#[derive(Deserialize)]
pub struct RestoreBody {
    /// `file@vN`.
    path: String,
}

pub async fn restore(State(w): State<Web>, Body(b): Body<RestoreBody>) -> ApiResult<Json<serde_json::Value>> {
    let rel = folder_path(&b.path)?;
    let message = on_repo(&w, move |repo| query::restore_version(repo, &rel)).await?;
    tracing::info!(message = %message, "restored through the web API");
    Ok(Json(serde_json::json!({ "message": message })))
}

/// Bytes read per step of a download (bounded memory whatever the file's size).
const PIECE: u64 = 1 << 20;

/// Reads one piece of a download on the blocking pool (one short task per piece,
/// so a slow client holds no thread while it is not reading).
async fn read_piece(repo: Arc<Repo>, chunks: Arc<ChunkList>, off: u64, n: u64) -> Result<Vec<u8>, String> {
    let r = tokio::task::spawn_blocking(move || {
        let mut buf = Vec::with_capacity(n as usize);
        repo.read_chunks(&chunks, off, n, &mut buf).map_err(|e| e.to_string())?;
        if buf.len() as u64 != n {
            return Err(format!(
                "{} bytes where {n} were expected (damaged manifest?)",
                buf.len()
            ));
        }
        Ok(buf)
    })
    .await;
    r.unwrap_or_else(|e| Err(e.to_string()))
}

/// `Content-Disposition` naming the file as its plain name (without `@vN`), in
/// ASCII for old clients and in UTF-8 (RFC 6266) for the rest.
fn disposition(kind: &str, rel: &str) -> HeaderValue {
    let last = rel.rsplit('/').next().unwrap_or(rel);
    let base = crate::model::names::parse_version_name(last.as_bytes())
        .and_then(|(b, _)| std::str::from_utf8(b).ok())
        .unwrap_or(last);
    let ascii: String = base
        .chars()
        .map(|c| {
            if (c.is_ascii_graphic() && c != '"' && c != '\\') || c == ' ' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let encoded: String = base
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    HeaderValue::from_str(&format!("{kind}; filename=\"{ascii}\"; filename*=UTF-8''{encoded}"))
        .unwrap_or_else(|_| HeaderValue::from_static("attachment"))
}

/// The content of a file or of any version (`path=notes.txt@v2`), streamed.
pub async fn content(State(w): State<Web>, Params(q): Params<PathQuery>) -> ApiResult<Response> {
    let rel = folder_path(&q.path)?;
    let kind = if q.download.is_some() { "attachment" } else { "inline" };
    serve_content(&w, rel, kind).await
}

#[derive(Deserialize)]
pub struct DownloadBody {
    path: String,
}

/// How long a download link works (once).
const LINK_TTL: std::time::Duration = std::time::Duration::from_secs(60);

/// A one-time link for a browser download (`<a href>` cannot send the key, and
/// fetching into memory first would not do for a large file).
pub async fn download_link(State(w): State<Web>, Body(b): Body<DownloadBody>) -> ApiResult<Json<serde_json::Value>> {
    let rel = folder_path(&b.path)?;
    let r = rel.clone();
    // Refuse now what the link could not serve.
    on_repo(&w, move |repo| query::open_content(repo, &r).map(|_| ())).await?;
    let token = hex::encode(rand::random::<[u8; 16]>());
    let mut links = w.links.lock();
    links.retain(|_, (_, made)| made.elapsed() < LINK_TTL);
    links.insert(token.clone(), (rel, std::time::Instant::now()));
    Ok(Json(serde_json::json!({ "url": format!("/download/{token}") })))
}

/// `GET /download/TOKEN`: the file a `download_link` named, once, within a minute.
pub async fn download(
    State(w): State<Web>,
    axum::extract::Path(token): axum::extract::Path<String>,
) -> ApiResult<Response> {
    let found = w.links.lock().remove(&token);
    match found {
        Some((rel, made)) if made.elapsed() < LINK_TTL => serve_content(&w, rel, "attachment").await,
        _ => Err(ApiError(
            StatusCode::NOT_FOUND,
            "no such download link (they work once, for a minute)".into(),
        )),
    }
}

async fn serve_content(w: &Web, rel: String, kind: &str) -> ApiResult<Response> {
    let r = rel.clone();
    let readable = on_repo(w, move |repo| query::open_content(repo, &r)).await?;
    let (len, body) = match readable {
        Readable::Symlink(target) => (target.len() as u64, axum::body::Body::from(target)),
        Readable::File { size, chunks } => {
            // The first piece is read before answering, so a corrupt or missing
            // chunk there is a clean error status; a later one cuts the body short
            // of its Content-Length, which every client reports as an error.
            let first_n = PIECE.min(size);
            let first = read_piece(w.repo.clone(), chunks.clone(), 0, first_n)
                .await
                .map_err(|e| {
                    ApiError(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        format!("{rel}: cannot read its data ({e})"),
                    )
                })?;
            let repo = w.repo.clone();
            let rest = futures::stream::unfold(first_n, move |off| {
                let (repo, chunks) = (repo.clone(), chunks.clone());
                async move {
                    if off >= size {
                        return None;
                    }
                    let n = PIECE.min(size - off);
                    match read_piece(repo, chunks, off, n).await {
                        Ok(buf) => Some((Ok(buf), off + n)),
                        Err(e) => {
                            tracing::error!(error = %e, offset = off, "download: reading failed");
                            Some((Err(std::io::Error::other(e)), size))
                        }
                    }
                }
            });
            use futures::StreamExt;
            let stream = futures::stream::once(async move { Ok::<_, std::io::Error>(first) }).chain(rest);
            (size, axum::body::Body::from_stream(stream))
        }
    };
    let mut resp = Response::new(body);
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    h.insert(header::CONTENT_DISPOSITION, disposition(kind, &rel));
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
