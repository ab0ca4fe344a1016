//! The node's web GUI and REST API (JSON over HTTP), served on 127.0.0.1 unless
//! told otherwise.
//!
//! Security model: every `/api/` request must carry the data dir's API key in the
//! `X-API-Key` header (or `Authorization: Bearer KEY`); anything else gets 401 and
//! an error line, nothing more. The key never travels in a cookie, so another web
//! site cannot make the browser use it (CSRF): a cross-origin script cannot set
//! the header without a CORS preflight, which this server never grants. The GUI's
//! pages and script carry no data; the script reads the key from the address's
//! fragment (`#key=…`, never sent to a server) that `distribox gui` prints, keeps
//! it in the browser's local storage, and sends it with each API call.
//!
//! The server runs on a tokio runtime of its own; repo calls block (RocksDB), so
//! handlers run them on the blocking pool.

mod api;
mod assets;
mod limits;

use super::NodeCtl;
use crate::repo::Repo;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use parking_lot::Mutex;
use std::net::SocketAddr;
use std::sync::Arc;

/// Where the GUI listens, as the user asked for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GuiListen {
    Off,
    /// The default address: if it is taken (another node on this machine), the
    /// node runs without a GUI and says so, rather than failing to start.
    Default(SocketAddr),
    /// An address given with `--gui-listen`: failing to bind it stops the node.
    Explicit(SocketAddr),
}

pub const DEFAULT_GUI_ADDR: &str = "127.0.0.1:7468";

impl GuiListen {
    /// Parses `--gui-listen`: `HOST:PORT`, `PORT`, or `off`.
    pub fn parse(s: Option<&str>) -> Result<GuiListen, String> {
        match s {
            None => Ok(GuiListen::Default(DEFAULT_GUI_ADDR.parse().expect("valid default"))),
            Some("off") | Some("none") => Ok(GuiListen::Off),
            Some(s) => {
                if let Ok(port) = s.parse::<u16>() {
                    return Ok(GuiListen::Explicit(SocketAddr::from(([127, 0, 0, 1], port))));
                }
                s.parse::<SocketAddr>().map(GuiListen::Explicit).map_err(|_| {
                    format!("--gui-listen {s}: expected HOST:PORT (like 127.0.0.1:7468), a port, or `off`")
                })
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WebError {
    #[error(
        "cannot listen for the web GUI on {addr}: {source} (pick another with --gui-listen ADDR, or --gui-listen off)"
    )]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("starting the web GUI: {0}")]
    Start(#[source] std::io::Error),
    #[error(transparent)]
    Key(#[from] crate::store::DataDirError),
}

/// What every handler sees.
#[derive(Clone)]
struct Web {
    repo: Arc<Repo>,
    ctl: Arc<Mutex<NodeCtl>>,
    key: Arc<str>,
    /// Changes as JSON lines, fanned out to every event stream.
    events: tokio::sync::broadcast::Sender<Arc<str>>,
    /// One-time download links: token → (folder path, when made).
    links: Arc<Mutex<std::collections::HashMap<String, (String, std::time::Instant)>>>,
}

/// A running web server; `stop` ends it.
pub struct WebHandle {
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl WebHandle {
    pub fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The GUI's listening socket, bound before the node mounts anything so that a
/// bad `--gui-listen` fails the start and changes nothing.
pub struct Bound {
    listener: std::net::TcpListener,
    addr: SocketAddr,
    key: Arc<str>,
}

/// Binds the GUI's address and loads (or makes) the API key. Ok(None): off, or
/// the default address was taken.
pub fn bind(listen: &GuiListen, data_dir: &crate::store::DataDir) -> Result<Option<Bound>, WebError> {
    let addr = match listen {
        GuiListen::Off => return Ok(None),
        GuiListen::Default(a) | GuiListen::Explicit(a) => *a,
    };
    let listener = match std::net::TcpListener::bind(addr) {
        Ok(l) => l,
        Err(source) if matches!(listen, GuiListen::Default(_)) => {
            tracing::warn!(addr = %addr, error = %source, "web GUI not started: its default address is taken (another node on this machine?); give this one --gui-listen ADDR");
            return Ok(None);
        }
        Err(source) => return Err(WebError::Bind { addr, source }),
    };
    listener.set_nonblocking(true).map_err(WebError::Start)?;
    let addr = listener.local_addr().map_err(WebError::Start)?;
    let key = data_dir.api_key()?.into();
    Ok(Some(Bound { listener, addr, key }))
}

impl Bound {
    /// Serves the GUI and API from a thread of its own.
    pub(super) fn serve(self, ctl: Arc<Mutex<NodeCtl>>) -> Result<WebHandle, WebError> {
        let Bound { listener, addr, key } = self;
        if !addr.ip().is_loopback() {
            tracing::warn!(addr = %addr, "the web GUI and REST API listen on a non-loopback address: anyone who can reach it and holds the API key can read and change the folder");
        }
        // Everything that can fail happens before we say the GUI runs (status
        // names its address, and `distribox gui` hands out the key for it).
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .max_blocking_threads(8)
            .thread_name("web-worker")
            .enable_all()
            .build()
            .map_err(WebError::Start)?;
        let listener = {
            let _in_rt = rt.enter();
            tokio::net::TcpListener::from_std(listener).map_err(WebError::Start)?
        };
        let repo = ctl.lock().repo.clone();
        let (events, _) = tokio::sync::broadcast::channel(256);
        spawn_event_feed(repo.clone(), events.clone())?;
        let web = Web {
            repo,
            ctl,
            key,
            events,
            links: Default::default(),
        };
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("web".into())
            .spawn(move || {
                rt.block_on(async move {
                    let listener = limits::Limited::new(listener);
                    // Not a graceful shutdown: event streams never end by
                    // themselves, and the node must not wait on a browser to exit.
                    tokio::select! {
                        r = axum::serve(listener, router(web)) => {
                            if let Err(e) = r {
                                tracing::error!(error = %e, "web GUI stopped with an error");
                            }
                        }
                        _ = stop_rx => {}
                    }
                });
                rt.shutdown_timeout(std::time::Duration::from_secs(2));
            })
            .map_err(WebError::Start)?;
        tracing::info!(addr = %addr, "web GUI and REST API at http://{addr}/ (`distribox gui` prints the link with the key)");
        Ok(WebHandle {
            addr,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }
}

const MAX_EVENT_PATHS: usize = 100;

/// Turns the repo's change batches into one JSON line each for the event streams
/// (in a thread: naming a changed path reads the store).
fn spawn_event_feed(repo: Arc<Repo>, events: tokio::sync::broadcast::Sender<Arc<str>>) -> Result<(), WebError> {
    let watched = events.clone();
    let mut changes = repo.subscribe_if(move |_| watched.receiver_count() > 0);
    let weak = Arc::downgrade(&repo);
    drop(repo);
    std::thread::Builder::new()
        .name("web-events".into())
        .spawn(move || {
            while let Some(batch) = changes.blocking_recv() {
                if events.receiver_count() == 0 {
                    continue; // nobody watching: skip naming the paths
                }
                let Some(repo) = weak.upgrade() else { return };
                let mut paths: Vec<String> = batch.changes.iter().filter_map(|c| repo.path_of(c.entry)).collect();
                paths.sort();
                paths.dedup();
                // A batch can touch thousands of entries (a big move); the event
                // only needs to say "reload", with some names.
                let truncated = paths.len() > MAX_EVENT_PATHS;
                paths.truncate(MAX_EVENT_PATHS);
                let line =
                    serde_json::json!({ "remote": batch.remote, "paths": paths, "truncated": truncated }).to_string();
                // No receiver is fine: nobody is watching.
                let _ = events.send(line.into());
            }
        })
        .map_err(WebError::Start)?;
    Ok(())
}

fn router(web: Web) -> axum::Router {
    use axum::routing::{get, post};
    let api = axum::Router::new()
        .route("/status", get(api::status))
        .route("/peers", get(api::peers))
        .route("/tree", get(api::tree))
        .route("/versions", get(api::versions))
        .route("/deleted", get(api::deleted))
        .route("/content", get(api::content))
        .route("/log", get(api::log))
        .route("/conflicts", get(api::conflicts))
        .route("/transfers", get(api::transfers))
        .route("/events", get(api::events))
        .route("/resolve", post(api::resolve))
        .route("/restore", post(api::restore))
        .route("/download", post(api::download_link))
        .fallback(api::not_found)
        .layer(axum::middleware::from_fn_with_state(web.clone(), require_key))
        .with_state(web.clone());
    axum::Router::new()
        .nest("/api/v1", api)
        .route("/", get(assets::index))
        .route("/app.js", get(assets::script))
        .route("/style.css", get(assets::style))
        // The token is the credential here (see `api::download_link`).
        .route("/download/{token}", get(api::download))
        .with_state(web)
        .fallback(assets::not_found)
        .layer(axum::middleware::from_fn(security_headers))
}

/// The key a request carries, from `X-API-Key` or `Authorization: Bearer`.
fn presented_key(h: &HeaderMap) -> Option<&str> {
    if let Some(k) = h.get("x-api-key").and_then(|v| v.to_str().ok()) {
        return Some(k.trim());
    }
    let auth = h.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok())?;
    let (scheme, key) = auth.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| key.trim())
}

/// Compares in time independent of where the first difference is.
fn same_key(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn require_key(State(web): State<Web>, req: Request, next: Next) -> Response {
    match presented_key(req.headers()) {
        Some(k) if same_key(k, &web.key) => next.run(req).await,
        got => {
            tracing::debug!(path = %req.uri().path(), key_sent = got.is_some(), "API request refused: wrong or missing key");
            api::ApiError(
                StatusCode::UNAUTHORIZED,
                "missing or wrong API key: send it in the X-API-Key header (`distribox gui` prints it)".into(),
            )
            .into_response()
        }
    }
}

/// Headers on every answer: no framing by other sites, no scripts from anywhere
/// but this server, nothing cached, no sniffing a download into a page.
async fn security_headers(req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_compare_whole() {
        assert!(same_key("abcd", "abcd"));
        assert!(!same_key("abcd", "abce"));
        assert!(!same_key("abc", "abcd"));
        assert!(!same_key("", "a"));
    }

    #[test]
    fn key_comes_from_either_header() {
        let mut h = HeaderMap::new();
        assert_eq!(presented_key(&h), None);
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer k1"));
        assert_eq!(presented_key(&h), Some("k1"));
        h.insert("x-api-key", HeaderValue::from_static("k2"));
        assert_eq!(presented_key(&h), Some("k2"));
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic k1"));
        assert_eq!(presented_key(&h), None);
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("bearer k3"));
        assert_eq!(presented_key(&h), Some("k3"));
    }

    #[test]
    fn gui_listen_parses() {
        assert_eq!(GuiListen::parse(Some("off")), Ok(GuiListen::Off));
        assert_eq!(
            GuiListen::parse(Some("8080")),
            Ok(GuiListen::Explicit("127.0.0.1:8080".parse().unwrap()))
        );
        assert_eq!(
            GuiListen::parse(Some("0.0.0.0:1")),
            Ok(GuiListen::Explicit("0.0.0.0:1".parse().unwrap()))
        );
        assert!(matches!(GuiListen::parse(None), Ok(GuiListen::Default(_))));
        assert!(GuiListen::parse(Some("nonsense")).is_err());
    }
}
