//! Self-check of tests/common/webdriver.rs: drives headless Chromium against a tiny
//! page served from this process, and checks that dropping a Browser (also while a
//! test panics) leaves no chromedriver or Chromium behind.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::time::Duration;

use common::webdriver::Browser;
use serde_json::json;

const PAGE: &str = r#"<!doctype html>
<html><head><title>Smoke page</title></head>
<body>
  <p id="status">idle</p>
  <button id="go" onclick="document.getElementById('status').textContent = 'clicked'">Go</button>
  <button id="del" onclick="
    const yes = confirm('Delete it?');
    document.getElementById('status').textContent = yes ? 'deleted' : 'kept'">Delete</button>
  <input id="name" value="old" data-role="name-field">
</body></html>
"#;

/// Serves PAGE at / (404 elsewhere) on a free port, one thread per connection:
/// Chromium opens speculative connections that may never send a request, which would
/// stall a server that handles one connection at a time.
fn serve() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            std::thread::spawn(move || answer(conn));
        }
    });
    format!("http://{addr}/")
}

fn answer(mut conn: TcpStream) {
    conn.set_read_timeout(Some(Duration::from_secs(10))).ok();
    let mut req = Vec::new();
    let mut buf = [0u8; 4096];
    while !req.windows(4).any(|w| w == b"\r\n\r\n") {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => req.extend_from_slice(&buf[..n]),
        }
    }
    let line = String::from_utf8_lossy(&req);
    let path = line.split_whitespace().nth(1).unwrap_or("");
    let (status, body) = if path == "/" {
        ("200 OK", PAGE)
    } else {
        ("404 Not Found", "not found")
    };
    let resp = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/html; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = conn.write_all(resp.as_bytes());
}

/// Pids of the processes whose command line names the browser's temp dir, the parent
/// of `profile` (Chromium, its helpers and its crash handler).
fn profile_processes(profile: &Path) -> Vec<String> {
    let needle = format!("{}/", profile.parent().unwrap().display());
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|p| p.file_name().to_string_lossy().parse::<u32>().is_ok())
        .filter(|p| {
            let cmd = std::fs::read(p.path().join("cmdline")).unwrap_or_default();
            String::from_utf8_lossy(&cmd).contains(&needle)
        })
        .map(|p| p.file_name().to_string_lossy().into_owned())
        .collect()
}

fn is_running(pid: u32) -> bool {
    // a zombie still has a /proc entry; its state is 'Z'
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'))
        .unwrap_or(false)
}

#[test]
fn drives_a_page() {
    let url = serve();
    let b = Browser::start();
    let profile = b.profile_dir();
    assert!(
        !profile_processes(&profile).is_empty(),
        "no Chromium process seen for {}",
        profile.display()
    );

    b.goto(&url);
    assert_eq!(b.title(), "Smoke page");
    assert_eq!(b.current_url(), url);
    assert!(b.source().contains("id=\"status\""));
    assert!(b.find("#missing").is_none());
    assert_eq!(b.find_all("button").len(), 2);

    // a click whose handler changes a text
    b.wait_for("#go", 10).click();
    b.wait_text("#status", "clicked", 10);
    assert_eq!(b.find("#status").unwrap().text(), "clicked");

    // window.confirm(): Cancel, then OK
    b.find("#del").unwrap().click();
    assert_eq!(b.alert_text(), "Delete it?");
    b.dismiss_alert();
    b.wait_text("#status", "kept", 10);
    b.find("#del").unwrap().click();
    b.accept_alert();
    b.wait_text("#status", "deleted", 10);

    // inputs: attribute vs live value
    let input = b.find("#name").unwrap();
    assert_eq!(input.attr("data-role").as_deref(), Some("name-field"));
    assert_eq!(input.attr("nope"), None);
    input.clear();
    input.send_keys("Ada");
    let value = b.execute("return arguments[0].value", vec![input.to_arg()]);
    assert_eq!(value, json!("Ada"));

    // execute: arguments in, JSON out; localStorage works on an http origin
    let v = b.execute(
        "localStorage.setItem('k', arguments[0]); return [localStorage.getItem('k'), arguments[1] + 1]",
        vec![json!("v"), json!(41)],
    );
    assert_eq!(v, json!(["v", 42]));
    b.wait_until("document.readyState complete", 10, |b| {
        b.execute("return document.readyState", vec![]) == json!("complete")
    });

    let dir = tempfile::tempdir().unwrap();
    let shot = dir.path().join("smoke.png");
    b.screenshot(&shot);
    let png = std::fs::read(&shot).unwrap();
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n"),
        "not a PNG: {:?}",
        &png[..8.min(png.len())]
    );
    eprintln!("screenshot: {} bytes", png.len());

    drop(input);
    drop(b);
    assert_eq!(profile_processes(&profile), Vec::<String>::new());
}

#[test]
fn wait_for_timeout_names_the_selector_and_page() {
    let url = serve();
    let b = Browser::start();
    b.goto(&url);
    eprintln!("(an expected panic message follows)");
    let err = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        b.wait_for("#never", 1);
    }))
    .expect_err("wait_for of a missing element must panic");
    let msg = err.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(msg.contains("#never"), "{msg}");
    assert!(msg.contains(&url), "{msg}");
    assert!(msg.contains("Smoke page"), "{msg}");
}

#[test]
fn no_processes_left_after_a_panicking_test() {
    eprintln!("(an expected panic message follows)");
    let (tx, rx) = std::sync::mpsc::channel();
    let t = std::thread::spawn(move || {
        let b = Browser::start();
        tx.send((b.profile_dir(), b.driver_pid())).unwrap();
        panic!("test failure while the browser is open");
    });
    assert!(t.join().is_err());
    let (profile, driver) = rx.recv().unwrap();
    assert!(!is_running(driver), "chromedriver {driver} still running");
    assert_eq!(profile_processes(&profile), Vec::<String>::new());
}
