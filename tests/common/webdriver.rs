//! A small W3C WebDriver client for browser tests: Debian's headless Chromium driven
//! through chromedriver over plain HTTP on 127.0.0.1.
//!
//! `Browser::start()` runs its own chromedriver on a free port with a fresh profile, so
//! tests never share browser state. Every WebDriver error becomes a panic with the
//! driver's message (this is test code); the `wait_*` helpers poll with a deadline and
//! panic with the url and the start of the page source, which is what one needs to see
//! why a GUI test timed out. Dropping a `Browser` ends the session and kills
//! chromedriver and every Chromium process of its profile, also when the test panics.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{json, Value};

/// The key under which WebDriver sends and expects an element reference.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";
/// How often the `wait_*` helpers poll.
const POLL: Duration = Duration::from_millis(100);

/// An error reported by the WebDriver server: `value.error` and `value.message`.
#[derive(Debug)]
struct WdError {
    error: String,
    message: String,
}

pub struct Browser {
    http: ureq::Agent,
    /// http://127.0.0.1:PORT (chromedriver)
    driver_url: String,
    /// http://127.0.0.1:PORT/session/ID
    session_url: String,
    driver: Child,
    /// Holds the Chromium profile (--user-data-dir), chromedriver's log and
    /// Chromium's XDG config/cache dirs.
    dir: tempfile::TempDir,
}

pub struct Element<'a> {
    browser: &'a Browser,
    id: String,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium session. Panics (with chromedriver's
    /// log) if either does not come up within 60 s; the first start on a cold, busy
    /// machine takes several seconds.
    pub fn start() -> Browser {
        let dir = tempfile::tempdir().expect("tempdir for chromium");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        // chromedriver and the Chromium it starts (which inherits these fds) log to a
        // file: a pipe nobody reads would block them once full.
        let log = File::create(dir.path().join("chromedriver.log")).expect("log file");
        let driver = Command::new("/usr/bin/chromedriver")
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            // Chromium's crash handler writes to $XDG_CONFIG_HOME/chromium (not the
            // profile) and leaves the process group: keep both in our temp dir
            .env("XDG_CONFIG_HOME", dir.path().join("xdg-config"))
            .env("XDG_CACHE_HOME", dir.path().join("xdg-cache"))
            // its own process group, so that Drop can kill it with all its children
            .process_group(0)
            .spawn()
            .expect("spawn /usr/bin/chromedriver (apt-get install chromium-driver)");
        let http: ureq::Agent = ureq::Agent::config_builder()
            // WebDriver errors come as 4xx/5xx with a JSON body that we want to read
            .http_status_as_error(false)
            // only 127.0.0.1: an http_proxy from the environment must not apply
            .proxy(None)
            // bounds every command, including session creation and page loads
            .timeout_global(Some(Duration::from_secs(120)))
            .build()
            .into();
        let mut b = Browser {
            http,
            driver_url: format!("http://127.0.0.1:{port}"),
            session_url: String::new(),
            driver,
            dir,
        };
        b.wait_driver_ready(Duration::from_secs(60));

        let profile = b.dir.path().join("profile");
        let caps = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            // leave a window.confirm() open until the test answers it (the default,
            // "dismiss and notify", would dismiss it at the next command)
            "unhandledPromptBehavior": "ignore",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": [
                    "--headless=new",
                    "--no-sandbox", // we run as root
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    // No connections of Chromium's own: on a closed network their
                    // failures and retries slow everything down and fill the log.
                    "--disable-quic",
                    "--no-first-run",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--window-size=1280,900",
                    format!("--user-data-dir={}", profile.display()),
                ],
            },
        }}});
        let url = format!("{}/session", b.driver_url);
        let v = match b.request("POST", &url, Some(&caps)) {
            Ok(v) => v,
            Err(e) => panic!(
                "WebDriver new session: {}: {}\nchromedriver log:\n{}",
                e.error,
                e.message,
                b.driver_log()
            ),
        };
        let id = v["sessionId"].as_str().expect("sessionId in new-session reply");
        b.session_url = format!("{}/session/{id}", b.driver_url);
        b
    }

    /// Polls chromedriver's /status until it says ready; fails early if it exited.
    fn wait_driver_ready(&mut self, limit: Duration) {
        let deadline = Instant::now() + limit;
        let url = format!("{}/status", self.driver_url);
        loop {
            if let Ok(Some(st)) = self.driver.try_wait() {
                panic!("chromedriver exited ({st}):\n{}", self.driver_log());
            }
            // connection refused until it listens: just try again
            if let Ok(v) = self.request("GET", &url, None) {
                if v["ready"] == true {
                    return;
                }
            }
            if Instant::now() > deadline {
                panic!("chromedriver not ready after {limit:?}:\n{}", self.driver_log());
            }
            std::thread::sleep(POLL);
        }
    }

    /// chromedriver's (and Chromium's) stdout and stderr so far.
    pub fn driver_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("chromedriver.log")).unwrap_or_default()
    }

    /// chromedriver's process id (its process group holds Chromium too).
    pub fn driver_pid(&self) -> u32 {
        self.driver.id()
    }

    /// The Chromium profile directory (unique to this browser). Its parent, also
    /// unique, is named on the command line of every Chromium process.
    pub fn profile_dir(&self) -> std::path::PathBuf {
        self.dir.path().join("profile")
    }

    /// One HTTP exchange. `Err` for a WebDriver error reply, and for a transport
    /// failure (driver not listening, timeout) as an error named "transport".
    fn request(&self, method: &str, url: &str, body: Option<&Value>) -> Result<Value, WdError> {
        let transport = |e: ureq::Error| WdError {
            error: "transport".into(),
            message: format!("{method} {url}: {e}"),
        };
        let resp = match (method, body) {
            ("GET", None) => self.http.get(url).call(),
            // only Drop deletes: it must not hang on a stuck driver
            ("DELETE", None) => self
                .http
                .delete(url)
                .config()
                .timeout_global(Some(Duration::from_secs(10)))
                .build()
                .call(),
            ("POST", Some(b)) => self.http.post(url).send_json(b),
            _ => unreachable!("{method} with body {body:?}"),
        };
        let mut resp = resp.map_err(transport)?;
        let status = resp.status();
        let v: Value = resp
            .body_mut()
            .with_config()
            .limit(256 << 20) // screenshots and page sources can be large
            .read_json()
            .map_err(transport)?;
        let value = v.get("value").cloned().unwrap_or(Value::Null);
        match value.get("error").and_then(Value::as_str) {
            Some(error) => Err(WdError {
                error: error.to_string(),
                message: value["message"].as_str().unwrap_or("").to_string(),
            }),
            None if !status.is_success() => Err(WdError {
                error: format!("HTTP {status}"),
                message: v.to_string(),
            }),
            None => Ok(value),
        }
    }

    /// A session command, e.g. `try_cmd("POST", "/url", Some(..))`.
    fn try_cmd(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, WdError> {
        let url = format!("{}{path}", self.session_url);
        self.request(method, &url, body.as_ref())
    }

    /// A session command whose failure fails the test.
    fn cmd(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        self.try_cmd(method, path, body)
            .unwrap_or_else(|e| panic!("WebDriver {method} {path}: {}: {}", e.error, e.message))
    }

    /// Navigates and waits for the page's load event.
    pub fn goto(&self, url: &str) {
        self.cmd("POST", "/url", Some(json!({ "url": url })));
    }

    pub fn current_url(&self) -> String {
        self.cmd("GET", "/url", None).as_str().unwrap_or("").to_string()
    }

    /// The current DOM serialised as HTML (not the bytes the server sent).
    pub fn source(&self) -> String {
        self.cmd("GET", "/source", None).as_str().unwrap_or("").to_string()
    }

    pub fn title(&self) -> String {
        self.cmd("GET", "/title", None).as_str().unwrap_or("").to_string()
    }

    /// The first element matching `css`, if any, now (no waiting).
    pub fn find(&self, css: &str) -> Option<Element<'_>> {
        let q = json!({ "using": "css selector", "value": css });
        match self.try_cmd("POST", "/element", Some(q)) {
            Ok(v) => Some(self.element(&v)),
            Err(e) if e.error == "no such element" => None,
            Err(e) => panic!("WebDriver find {css:?}: {}: {}", e.error, e.message),
        }
    }

    /// All elements matching `css`, now (no waiting).
    pub fn find_all(&self, css: &str) -> Vec<Element<'_>> {
        let q = json!({ "using": "css selector", "value": css });
        let v = self.cmd("POST", "/elements", Some(q));
        v.as_array()
            .map(|a| a.iter().map(|e| self.element(e)).collect())
            .unwrap_or_default()
    }

    fn element(&self, v: &Value) -> Element<'_> {
        let id = v[ELEMENT_KEY]
            .as_str()
            .unwrap_or_else(|| panic!("not an element reference: {v}"));
        Element {
            browser: self,
            id: id.to_string(),
        }
    }

    /// Polls until `css` matches an element and returns it.
    pub fn wait_for(&self, css: &str, secs: u64) -> Element<'_> {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(e) = self.find(css) {
                return e;
            }
            if Instant::now() > deadline {
                self.timed_out(&format!("an element matching {css:?}"), secs);
            }
            std::thread::sleep(POLL);
        }
    }

    /// Polls until some element matching `css` has a text containing `needle`. An
    /// element that the page replaces while we read it just counts as not yet.
    pub fn wait_text(&self, css: &str, needle: &str, secs: u64) {
        self.wait_until(&format!("{css:?} to contain {needle:?}"), secs, |b| {
            b.find_all(css).iter().any(|e| {
                b.try_cmd("GET", &format!("/element/{}/text", e.id), None)
                    .map(|t| t.as_str().unwrap_or("").contains(needle))
                    .unwrap_or(false)
            })
        });
    }

    /// The texts of every element matching `css`, read in one script run: a page
    /// that re-renders cannot make one of them stale halfway through.
    pub fn texts(&self, css: &str) -> Vec<String> {
        let v = self.execute(
            "return [...document.querySelectorAll(arguments[0])].map(e => e.innerText)",
            vec![json!(css)],
        );
        v.as_array()
            .map(|a| a.iter().map(|t| t.as_str().unwrap_or("").to_string()).collect())
            .unwrap_or_default()
    }

    /// Clicks the first element matching `css` once it is there, retrying while
    /// the page replaces it under us (a live re-render makes a found element stale).
    pub fn click_when(&self, css: &str, secs: u64) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(e) = self.find(css) {
                match self.try_cmd("POST", &format!("/element/{}/click", e.id), Some(json!({}))) {
                    Ok(_) => return,
                    Err(err) if err.error == "stale element reference" => {}
                    Err(err) => panic!("WebDriver click {css:?}: {}: {}", err.error, err.message),
                }
            }
            if Instant::now() > deadline {
                self.timed_out(&format!("a clickable element matching {css:?}"), secs);
            }
            std::thread::sleep(POLL);
        }
    }

    /// Polls `f` until it returns true; `what` names the condition in the panic.
    pub fn wait_until(&self, what: &str, secs: u64, mut f: impl FnMut(&Browser) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while !f(self) {
            if Instant::now() > deadline {
                self.timed_out(what, secs);
            }
            std::thread::sleep(POLL);
        }
    }

    fn timed_out(&self, what: &str, secs: u64) -> ! {
        let src = self.source();
        let head: String = src.chars().take(2000).collect();
        panic!(
            "timed out after {secs} s waiting for {what}\nurl: {}\npage source (first 2000 chars):\n{head}",
            self.current_url()
        );
    }

    /// Runs `script` as the body of a function (use `return`; arguments are in
    /// `arguments`, an `Element` passes as `el.to_arg()`) and returns its result.
    pub fn execute(&self, script: &str, args: Vec<Value>) -> Value {
        let body = json!({ "script": script, "args": args });
        self.cmd("POST", "/execute/sync", Some(body))
    }

    /// Writes a PNG of the viewport to `path`.
    pub fn screenshot(&self, path: &Path) {
        let b64 = self.cmd("GET", "/screenshot", None);
        let png = base64::engine::general_purpose::STANDARD
            .decode(b64.as_str().expect("screenshot is a base64 string"))
            .expect("screenshot base64");
        std::fs::write(path, png).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }

    /// The text of the open alert/confirm/prompt, waiting up to 5 s for one to open.
    pub fn alert_text(&self) -> String {
        let v = self.alert_cmd("GET", "/alert/text", None);
        v.as_str().unwrap_or("").to_string()
    }

    /// Answers "OK" to the open alert/confirm, waiting up to 5 s for one to open.
    pub fn accept_alert(&self) {
        self.alert_cmd("POST", "/alert/accept", Some(json!({})));
    }

    /// Answers "Cancel" to the open confirm, waiting up to 5 s for one to open.
    pub fn dismiss_alert(&self) {
        self.alert_cmd("POST", "/alert/dismiss", Some(json!({})));
    }

    /// A dialog opened by a click's handler may show a moment after the click
    /// returned: retry while the driver says there is none.
    fn alert_cmd(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match self.try_cmd(method, path, body.clone()) {
                Ok(v) => return v,
                Err(e) if e.error == "no such alert" && Instant::now() < deadline => std::thread::sleep(POLL),
                Err(e) => panic!("WebDriver {method} {path}: {}: {}", e.error, e.message),
            }
        }
    }

    /// Kills every process whose command line names our temp dir: Chromium, its
    /// helpers and its crash handler (which starts its own session, so the process
    /// group kill misses it).
    fn kill_leftovers(&self) {
        let needle = format!("{}/", self.dir.path().display());
        let Ok(procs) = std::fs::read_dir("/proc") else {
            return;
        };
        for p in procs.flatten() {
            let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            let cmdline = std::fs::read(p.path().join("cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmdline).contains(&needle) {
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
}

impl Drop for Browser {
    /// Ends the session (Chromium quits cleanly), then kills chromedriver's process
    /// group and any leftover Chromium of this profile. Never panics: it also runs
    /// while a failed test unwinds.
    fn drop(&mut self) {
        if !self.session_url.is_empty() {
            let _ = self.request("DELETE", &self.session_url, None);
        }
        let pgid = self.driver.id() as i32;
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
        let _ = self.driver.kill();
        let _ = self.driver.wait();
        self.kill_leftovers();
    }
}

impl Element<'_> {
    fn cmd(&self, method: &str, what: &str, body: Option<Value>) -> Value {
        let path = format!("/element/{}{what}", self.id);
        self.browser.cmd(method, &path, body)
    }

    pub fn click(&self) {
        self.cmd("POST", "/click", Some(json!({})));
    }

    /// The rendered (visible) text, as a user would read it.
    pub fn text(&self) -> String {
        self.cmd("GET", "/text", None).as_str().unwrap_or("").to_string()
    }

    /// The attribute `name` as written in the DOM (`None` if absent). For an input's
    /// current value use `execute("return arguments[0].value", vec![el.to_arg()])`.
    pub fn attr(&self, name: &str) -> Option<String> {
        let v = self.cmd("GET", &format!("/attribute/{name}"), None);
        v.as_str().map(str::to_string)
    }

    /// Types `text` into the element (focusing it first).
    pub fn send_keys(&self, text: &str) {
        self.cmd("POST", "/value", Some(json!({ "text": text })));
    }

    /// Empties an input or textarea.
    pub fn clear(&self) {
        self.cmd("POST", "/clear", Some(json!({})));
    }

    /// This element as an argument for `Browser::execute`.
    pub fn to_arg(&self) -> Value {
        json!({ ELEMENT_KEY: self.id })
    }
}
