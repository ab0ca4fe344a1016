//! The REST API of a real node (real mount, real RocksDB), spoken with raw HTTP so
//! the tests send exactly what a hostile client could: no key, a wrong key, paths
//! that try to leave the folder, cross-origin preflights.

mod common;

use common::http::{request, Events};
use common::*;
use std::fs;

fn get(addr: &str, key: &str, target: &str) -> common::http::Reply {
    request(addr, "GET", target, &[("X-API-Key", key)], b"")
}

fn post(addr: &str, key: &str, target: &str, body: serde_json::Value) -> common::http::Reply {
    let body = body.to_string();
    request(
        addr,
        "POST",
        target,
        &[("X-API-Key", key), ("Content-Type", "application/json")],
        body.as_bytes(),
    )
}

fn names(tree: &serde_json::Value) -> Vec<String> {
    let mut v: Vec<String> = tree["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap().to_string())
        .collect();
    v.sort();
    v
}

#[test]
fn no_key_no_data() {
    let n = Node::start();
    let addr = n.gui_addr();
    assert!(addr.starts_with("127.0.0.1:"), "GUI not on loopback: {addr}");
    let key = n.api_key();
    assert_eq!(key.len(), 64);
    // Two versions, so restoring v1 would change what the file holds.
    fs::write(n.path("secret.txt"), b"old secret\n").unwrap();
    fs::write(n.path("secret.txt"), b"top secret\n").unwrap();
    let node_id = n.status()["node"].as_str().unwrap().to_string();

    for target in [
        "/api/v1/status",
        "/api/v1/tree?path=",
        "/api/v1/content?path=secret.txt",
        "/api/v1/log",
        "/api/v1/events",
        "/api/v1/nonexistent",
    ] {
        for headers in [
            vec![],
            vec![(
                "X-API-Key",
                "0000000000000000000000000000000000000000000000000000000000000000",
            )],
            vec![("X-API-Key", &key[..63])],
            vec![("Authorization", "Basic Zm9vOmJhcg==")],
            vec![("Cookie", &*format!("key={key}"))],
        ] {
            let r = request(&addr, "GET", target, &headers, b"");
            assert_eq!(r.status, 401, "{target} with {headers:?}: {}", r.text());
            let body = r.text();
            assert!(
                !body.contains("top secret") && !body.contains(&node_id),
                "{target} leaked: {body}"
            );
            assert!(r.json()["error"].as_str().unwrap().contains("API key"));
        }
    }
    // Actions without the key change nothing.
    let r = request(
        &addr,
        "POST",
        "/api/v1/restore",
        &[("Content-Type", "application/json")],
        br#"{"path":"secret.txt@v1"}"#,
    );
    assert_eq!(r.status, 401);
    assert_eq!(fs::read(n.path("secret.txt")).unwrap(), b"top secret\n");

    // The right key, in either header.
    assert_eq!(get(&addr, &key, "/api/v1/status").json()["node"], node_id.as_str());
    let bearer = format!("Bearer {key}");
    let r = request(&addr, "GET", "/api/v1/status", &[("Authorization", &bearer)], b"");
    assert_eq!(r.status, 200);

    // The page shell needs no key and carries no data; it forbids framing and
    // foreign scripts.
    let page = request(&addr, "GET", "/", &[], b"");
    assert_eq!(page.status, 200);
    assert!(page.text().contains("app.js"));
    assert!(!page.text().contains(&node_id));
    let csp = page.header("content-security-policy").unwrap();
    assert!(
        csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    assert_eq!(page.header("x-frame-options"), Some("DENY"));
    let js = request(&addr, "GET", "/app.js", &[], b"");
    assert_eq!(js.status, 200);
    assert!(js.header("content-type").unwrap().starts_with("text/javascript"));

    // CSRF: another site's script cannot use the key (no CORS is ever granted),
    // and a plain form post (no JSON content type, no key) is refused.
    let pre = request(
        &addr,
        "OPTIONS",
        "/api/v1/resolve",
        &[
            ("Origin", "http://evil.example"),
            ("Access-Control-Request-Method", "POST"),
            ("Access-Control-Request-Headers", "x-api-key,content-type"),
        ],
        b"",
    );
    assert!(pre.header("access-control-allow-origin").is_none(), "preflight granted");
    assert!(pre.status >= 400, "preflight answered {}", pre.status);
    let form = request(
        &addr,
        "POST",
        "/api/v1/restore",
        &[
            ("X-API-Key", &key),
            ("Content-Type", "application/x-www-form-urlencoded"),
            ("Origin", "http://evil.example"),
        ],
        b"path=secret.txt%40v1",
    );
    assert_eq!(form.status, 415, "a form post was accepted: {}", form.text());
    assert!(form.json()["error"].is_string(), "{}", form.text());
    assert!(get(&addr, &key, "/api/v1/status")
        .header("access-control-allow-origin")
        .is_none());
}

#[test]
fn paths_cannot_leave_the_folder() {
    let n = Node::start();
    let (addr, key) = (n.gui_addr(), n.api_key());
    fs::create_dir(n.path("dir")).unwrap();
    fs::write(n.path("dir/in.txt"), b"inside\n").unwrap();
    // Each is refused by the path check itself (400), not merely not found:
    // `..`, an absolute path, a NUL byte, encoded or not.
    let bad = [
        "..",
        "../etc/passwd",
        "/../etc/passwd",
        "dir/../../etc/passwd",
        "dir/../..",
        "dir/..",
        "%2e%2e%2fetc%2fpasswd",
        "dir%2f..%2f..%2fetc%2fpasswd",
        "dir/in.txt%00.jpg",
        "//etc/passwd",
        "../dir/in.txt",
    ];
    for p in bad {
        for endpoint in ["tree", "versions", "content", "log", "deleted"] {
            let r = get(&addr, &key, &format!("/api/v1/{endpoint}?path={p}"));
            assert_eq!(r.status, 400, "{endpoint}?path={p} answered {}: {}", r.status, r.text());
            assert!(r.json()["error"].is_string());
        }
        let r = get(&addr, &key, &format!("/api/v1/log?under={p}"));
        assert_eq!(r.status, 400, "log?under={p}: {}", r.text());
        let decoded = p.replace("%2e", ".").replace("%2f", "/").replace("%00", "\0");
        for (endpoint, body) in [
            ("restore", serde_json::json!({ "path": format!("{decoded}@v1") })),
            ("resolve", serde_json::json!({ "path": decoded, "keep": "v1" })),
            ("download", serde_json::json!({ "path": decoded })),
        ] {
            let r = post(&addr, &key, &format!("/api/v1/{endpoint}"), body.clone());
            assert_eq!(r.status, 400, "{endpoint} {body}: {}", r.text());
        }
    }
    // A backslash is an ordinary character in a Linux name: just not found.
    assert_eq!(get(&addr, &key, "/api/v1/tree?path=..%5c..%5cetc").status, 404);
    // `..` in the request path itself never reaches a file either.
    for target in [
        "/../../etc/passwd",
        "/api/v1/../../../etc/passwd",
        "/%2e%2e/%2e%2e/etc/passwd",
    ] {
        let r = request(&addr, "GET", target, &[("X-API-Key", &key)], b"");
        assert!(r.status == 404 || r.status == 400, "{target}: {}", r.status);
        assert!(!r.text().contains("root:"));
    }
    // The ones that stay inside work, with or without a leading slash.
    assert_eq!(names(&get(&addr, &key, "/api/v1/tree?path=dir").json()), ["in.txt"]);
    assert_eq!(names(&get(&addr, &key, "/api/v1/tree?path=/dir/").json()), ["in.txt"]);
    assert_eq!(get(&addr, &key, "/api/v1/content?path=dir/./in.txt").body, b"inside\n");
    assert_eq!(fs::read(n.path("dir/in.txt")).unwrap(), b"inside\n");
}

#[test]
fn browse_read_log_restore_and_follow_changes() {
    let n = Node::start();
    let (addr, key) = (n.gui_addr(), n.api_key());
    let mut events = Events::open(&addr, &key);
    assert_eq!(events.next_event().0, "hello");

    fs::write(n.path("notes.txt"), b"first draft\n").unwrap();
    fs::write(n.path("notes.txt"), b"second draft\n").unwrap();
    fs::create_dir(n.path("docs")).unwrap();
    let big = random_bytes(5 << 20, 7);
    fs::write(n.path("docs/big.bin"), &big).unwrap();

    // The event stream names what changed.
    let mut seen = String::new();
    while !seen.contains("docs/big.bin") {
        let (name, data) = events.next_event();
        assert_eq!(name, "change");
        seen.push_str(&data);
    }
    assert!(seen.contains("notes.txt"), "{seen}");

    let root = get(&addr, &key, "/api/v1/tree?path=").json();
    assert_eq!(names(&root), ["docs", "notes.txt"]);
    let notes = root["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == "notes.txt")
        .unwrap()
        .clone();
    assert_eq!(notes["kind"], "file");
    assert_eq!(notes["size"], 13);
    assert_eq!(notes["version"], "v2");
    assert_eq!(get(&addr, &key, "/api/v1/tree?path=notes.txt").status, 400);
    assert_eq!(get(&addr, &key, "/api/v1/tree?path=nope").status, 404);

    let versions = get(&addr, &key, "/api/v1/versions?path=notes.txt").json();
    let names_v: Vec<&str> = versions
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(names_v, ["v2", "v1"]);
    assert_eq!(versions[0]["shown"], true);
    assert_eq!(versions[0]["parents"][0], versions[1]["version"]);

    // Any version's content; downloads say so; a big file streams whole.
    assert_eq!(
        get(&addr, &key, "/api/v1/content?path=notes.txt@v1").body,
        b"first draft\n"
    );
    let cur = get(&addr, &key, "/api/v1/content?path=notes.txt&download=1");
    assert_eq!(cur.body, b"second draft\n");
    assert!(
        cur.header("content-disposition")
            .unwrap()
            .starts_with("attachment; filename=\"notes.txt\""),
        "{:?}",
        cur.header("content-disposition")
    );
    // A version downloads under its file's name; a one-time link works once.
    let old = get(&addr, &key, "/api/v1/content?path=notes.txt@v1&download=1");
    assert!(old
        .header("content-disposition")
        .unwrap()
        .contains("filename=\"notes.txt\""));
    let link = post(
        &addr,
        &key,
        "/api/v1/download",
        serde_json::json!({ "path": "notes.txt@v1" }),
    );
    assert_eq!(link.status, 200, "{}", link.text());
    let url = link.json()["url"].as_str().unwrap().to_string();
    let once = request(&addr, "GET", &url, &[], b"");
    assert_eq!(once.status, 200);
    assert_eq!(once.body, b"first draft\n");
    assert_eq!(
        request(&addr, "GET", &url, &[], b"").status,
        404,
        "a download link worked twice"
    );
    assert_eq!(request(&addr, "GET", "/download/0123", &[], b"").status, 404);
    assert_eq!(cur.header("x-content-type-options"), Some("nosniff"));
    let got = get(&addr, &key, "/api/v1/content?path=docs/big.bin");
    assert_eq!(got.status, 200);
    assert!(got.body == big, "5 MiB download differs ({} bytes)", got.body.len());
    assert_eq!(get(&addr, &key, "/api/v1/content?path=notes.txt@v9").status, 404);
    assert_eq!(get(&addr, &key, "/api/v1/content?path=docs").status, 400);

    // The log, filtered by path, place, author and time.
    let hist = get(&addr, &key, "/api/v1/log?path=notes.txt").json();
    assert_eq!(hist.as_array().unwrap().len(), 2);
    let under = get(&addr, &key, "/api/v1/log?under=docs").json();
    assert!(!under.as_array().unwrap().is_empty());
    assert!(under
        .as_array()
        .unwrap()
        .iter()
        .all(|l| l["path"].as_str().unwrap().starts_with("docs")));
    let me = n.status()["node"].as_str().unwrap()[..8].to_string();
    let other = if me.starts_with('0') { "1" } else { "0" };
    assert!(!get(&addr, &key, &format!("/api/v1/log?author={me}"))
        .json()
        .as_array()
        .unwrap()
        .is_empty());
    assert!(get(&addr, &key, &format!("/api/v1/log?author={other}{}", &me[1..]))
        .json()
        .as_array()
        .unwrap()
        .is_empty());
    assert!(!get(&addr, &key, "/api/v1/log?since=1h")
        .json()
        .as_array()
        .unwrap()
        .is_empty());
    assert!(get(&addr, &key, "/api/v1/log?since=2999-01-01T00:00:00Z")
        .json()
        .as_array()
        .unwrap()
        .is_empty());
    assert_eq!(get(&addr, &key, "/api/v1/log?since=yesterdayish").status, 400);

    // Restore an old version through the API; the mount shows it.
    let r = post(
        &addr,
        &key,
        "/api/v1/restore",
        serde_json::json!({ "path": "notes.txt@v1" }),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.json()["message"].as_str().unwrap().contains("v3"));
    assert_eq!(fs::read(n.path("notes.txt")).unwrap(), b"first draft\n");
    let r = post(
        &addr,
        &key,
        "/api/v1/restore",
        serde_json::json!({ "path": "notes.txt" }),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    let r = post(&addr, &key, "/api/v1/restore", serde_json::json!({ "path": "docs@v1" }));
    assert!(
        r.status == 400 || r.status == 404,
        "restoring a directory: {} {}",
        r.status,
        r.text()
    );
    assert_eq!(get(&addr, &key, "/api/v1/log?limit=many").status, 400);
    assert!(get(&addr, &key, "/api/v1/log?limit=many").json()["error"].is_string());
    assert!(!get(&addr, &key, "/api/v1/log?under=./docs/")
        .json()
        .as_array()
        .unwrap()
        .is_empty());
    let r = post(
        &addr,
        &key,
        "/api/v1/resolve",
        serde_json::json!({ "path": "notes.txt", "keep": "v99" }),
    );
    assert_eq!(r.status, 404, "{}", r.text());
    let r = request(
        &addr,
        "POST",
        "/api/v1/restore",
        &[("X-API-Key", &key), ("Content-Type", "application/json")],
        b"{not json",
    );
    assert_eq!(r.status, 400);

    assert_eq!(get(&addr, &key, "/api/v1/conflicts").json(), serde_json::json!([]));
    let t = get(&addr, &key, "/api/v1/transfers").json();
    assert_eq!(t["versions_pending"], 0);
    assert_eq!(t["items"], serde_json::json!([]));
    // --no-net: no peers, not an error; nothing to wait for.
    assert_eq!(get(&addr, &key, "/api/v1/peers").json(), serde_json::json!([]));
    let out = cli(&n.data, &["wait", "--timeout", "5"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("nothing to wait for"));

    // A browser still watching the event stream does not keep the node alive
    // (the web server gives up on open streams after 2 s).
    let t = std::time::Instant::now();
    let out = cli(&n.data, &["unmount", n.mnt.to_str().unwrap()]);
    assert!(
        t.elapsed() < std::time::Duration::from_secs(30),
        "unmount waited {:?} for the event stream",
        t.elapsed()
    );
    assert!(
        out.status.success(),
        "unmount with an open event stream: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(events);
}

#[test]
fn gui_address_errors_are_clear_and_change_nothing() {
    // An explicit address that is taken: one line, non-zero exit, nothing mounted.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let mut n = Node::prepare(&[&format!("--gui-listen=127.0.0.1:{port}")]);
    let mnt = n.mnt.to_str().unwrap().to_string();
    let out = cli(
        &n.data,
        &["mount", &mnt, "--no-net", &format!("--gui-listen=127.0.0.1:{port}")],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("cannot listen for the web GUI") && err.contains("--gui-listen"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(!is_mounted(&n.mnt));

    let out = cli(&n.data, &["mount", &mnt, "--no-net", "--gui-listen=over-there"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("expected HOST:PORT"));
    assert!(!is_mounted(&n.mnt));

    // Off: no GUI, and `distribox gui` says why.
    n.extra = vec!["--no-net".into(), "--gui-listen=off".into()];
    n.mount();
    assert!(n.status()["gui"].is_null());
    let out = cli(&n.data, &["gui"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("without a web GUI"));
    n.unmount();

    // Not loopback: allowed, with a warning on the terminal and in the log.
    n.extra = vec!["--no-net".into(), "--gui-listen=0.0.0.0:0".into()];
    let out = cli(&n.data, &["mount", &mnt, "--no-net", "--gui-listen=0.0.0.0:0"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("reachable from other machines"));
    wait_until("the warning in the node log", 10, || {
        n.log().contains("non-loopback address")
    });
    let link = String::from_utf8(cli(&n.data, &["gui"]).stdout).unwrap();
    assert!(link.starts_with("http://0.0.0.0:") && link.contains("#key="), "{link}");
    let out = cli(&n.data, &["unmount", &mnt]);
    assert!(out.status.success());
}
