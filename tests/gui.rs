//! The web GUI in a real browser (Debian's headless Chromium through chromedriver)
//! against two real nodes: a file written on B appears on A's page by itself, and
//! a conflict is resolved by clicking on A's page, on both nodes.
//!
//! Screenshots of each page go to a temp dir, or to `$DISTRIBOX_SCREENSHOTS` (the
//! ones in docs/screenshots come from `DISTRIBOX_SCREENSHOTS=docs/screenshots
//! cargo test --test gui`).

mod common;

use common::webdriver::Browser;
use common::*;
use std::fs;
use std::path::PathBuf;

fn listing(n: &Node) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(n.path(""))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

struct Shots {
    dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
}

impl Shots {
    fn new() -> Shots {
        match std::env::var_os("DISTRIBOX_SCREENSHOTS") {
            Some(d) => {
                let dir = PathBuf::from(d);
                fs::create_dir_all(&dir).unwrap();
                Shots { dir, _tmp: None }
            }
            None => {
                let t = tempfile::tempdir().unwrap();
                Shots {
                    dir: t.path().to_path_buf(),
                    _tmp: Some(t),
                }
            }
        }
    }

    fn take(&self, b: &Browser, name: &str) {
        let p = self.dir.join(format!("{name}.png"));
        b.screenshot(&p);
        let png = fs::read(&p).unwrap();
        assert!(
            png.starts_with(b"\x89PNG") && png.len() > 2000,
            "{name}: no real screenshot"
        );
    }
}

#[test]
fn gui_follows_changes_and_resolves_a_conflict() {
    let a = Node::member(None);
    let mut b = Node::member(Some(&a.invite()));
    wait_until("A and B to see each other", PROPAGATE_SECS, || a.online_peers() == 1);
    let shots = Shots::new();
    fs::create_dir(a.path("docs")).unwrap();
    fs::write(a.path("docs/plan.md"), b"# Plan\n\n1. sync\n2. ship\n").unwrap();
    fs::write(a.path("report.txt"), b"Q3: draft\n").unwrap();
    wait_content(&b, "report.txt", b"Q3: draft\n");

    let browser = Browser::start();
    browser.goto(&format!("http://{}/#key={}", a.gui_addr(), a.api_key()));
    // Overview: this node, and B online.
    browser.wait_text("#node-id", a.status()["node"].as_str().unwrap(), 30);
    browser.wait_text("#peers .state", "online", 30);
    browser.wait_text("#live", "live", 30);
    shots.take(&browser, "overview");

    // A file made on B shows on A's open page without a reload.
    browser.goto(&format!("http://{}/#/files/", a.gui_addr()));
    browser.wait_for("tr.item[data-name='report.txt']", 30);
    fs::write(b.path("from-b.txt"), b"written on B\n").unwrap();
    browser.wait_for("tr.item[data-name='from-b.txt']", PROPAGATE_SECS);
    shots.take(&browser, "files");

    // B's file opens in the viewer.
    browser.goto(&format!("http://{}/#/file/from-b.txt", a.gui_addr()));
    browser.click_when("tr.version button.open", 30);
    browser.wait_text("#viewer", "written on B", 30);

    // A conflict: both edit report.txt while B is cut off.
    b.unmount();
    fs::write(a.path("report.txt"), b"Q3: revenue up 4%\n").unwrap();
    let net = std::mem::replace(&mut b.extra, vec!["--no-net".into(), "--gui-listen=127.0.0.1:0".into()]);
    b.mount();
    fs::write(b.path("report.txt"), b"Q3: costs down 2%\n").unwrap();
    b.unmount();
    b.extra = net;
    b.mount();
    wait_same_tree(&[&a, &b]);
    let names = listing(&a);
    let conflict = names
        .iter()
        .find(|n| n.starts_with("report.txt@"))
        .unwrap_or_else(|| panic!("no conflict entry in {names:?}"))
        .clone();
    let losing = fs::read(a.path(&conflict)).unwrap();

    browser.goto(&format!("http://{}/#/conflicts", a.gui_addr()));
    browser.wait_for(".conflict-row[data-path='report.txt']", 30);
    browser.wait_text("#conflict-count", "1", 30);
    shots.take(&browser, "conflicts");

    // Keep the version that lost, by clicking its button on the file's page.
    browser.goto(&format!("http://{}/#/file/report.txt", a.gui_addr()));
    let suffix = conflict.trim_start_matches("report.txt@");
    let row = format!("tr.version[data-name='{suffix}']");
    browser.wait_for(&format!("{row} .tag.conflict"), 30);
    shots.take(&browser, "file-versions");
    browser.click_when(&format!("{row} button.keep"), 10);
    browser.accept_alert();
    browser.wait_text("#flash", "now holds the content", 30);
    for n in [&a, &b] {
        wait_until("the conflict to be resolved on every node", PROPAGATE_SECS, || {
            listing(n).iter().all(|x| !x.starts_with("report.txt@"))
                && fs::read(n.path("report.txt")).ok() == Some(losing.clone())
        });
    }
    browser.goto(&format!("http://{}/#/conflicts", a.gui_addr()));
    browser.wait_for("#no-conflicts", 30);

    // The log lists the changes, and filters by place.
    browser.goto(&format!("http://{}/#/log", a.gui_addr()));
    browser.wait_for("#log tr.log-line", 30);
    shots.take(&browser, "log");
    browser.goto(&format!("http://{}/#/log?under=docs", a.gui_addr()));
    browser.wait_until("the log to show only docs/", 30, |b| {
        let rows = b.texts("#log tr.log-line");
        !rows.is_empty() && rows.iter().all(|r| r.contains("docs/"))
    });

    // The CLI agrees: in sync, no conflicts.
    let out = cli(&a.data, &["wait", "--timeout", "60"]);
    assert!(out.status.success(), "wait: {}", String::from_utf8_lossy(&out.stderr));
    let out = cli(&a.data, &["conflicts", "--json"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "[]");
}

/// A file name is data, never markup or a link target: names that look like
/// HTML, a `javascript:` URL or percent escapes show and open as themselves.
#[test]
fn gui_shows_hostile_names_as_text() {
    let a = Node::start();
    let names = [
        "<img src=x onerror=alert(1)>.txt",
        "javascript:alert(1)",
        "x%41",
        "a%2Fb",
    ];
    for (i, name) in names.iter().enumerate() {
        fs::write(a.path(name), format!("content {i}\n")).unwrap();
    }
    fs::write(a.path("xA"), b"the other file\n").unwrap();
    let browser = Browser::start();
    browser.goto(&format!("http://{}/#key={}", a.gui_addr(), a.api_key()));
    browser.goto(&format!("http://{}/#/files/", a.gui_addr()));
    browser.wait_text("#listing", "onerror", 30);
    assert!(browser.find("#listing img").is_none(), "a file name became an element");
    let hrefs = browser.execute(
        "return [...document.querySelectorAll('#view a')].map(a => a.getAttribute('href'))",
        vec![],
    );
    for h in hrefs.as_array().unwrap() {
        assert!(h.as_str().unwrap().starts_with("#/"), "a link leaves the GUI: {h}");
    }
    // Each name opens its own file, whatever escapes it holds.
    for (i, name) in names.iter().enumerate() {
        browser.goto(&format!("http://{}/#/files/", a.gui_addr()));
        browser.wait_for("#listing", 30);
        browser.execute(
            "[...document.querySelectorAll('tr.item')].find(r => r.dataset.name === arguments[0]).querySelector('a').click()",
            vec![serde_json::json!(name)],
        );
        browser.click_when("tr.version button.open", 30);
        browser.wait_text("#viewer", &format!("content {i}"), 30);
        assert!(browser.find("#view img").is_none());
    }
    // Deleted, it is listed under "Deleted here" as text, and Restore brings it back.
    fs::remove_file(a.path(names[0])).unwrap();
    browser.goto(&format!("http://{}/#/files/", a.gui_addr()));
    browser.wait_text("#deleted", "onerror", 30);
    assert!(browser.find("#view img").is_none(), "a deleted name became an element");
    browser.click_when("#deleted tr.deleted button.restore", 30);
    browser.accept_alert();
    browser.wait_text("#flash", "brought back", 30);
    assert_eq!(fs::read(a.path(names[0])).unwrap(), b"content 0\n");
    browser.goto(&format!("http://{}/#/log", a.gui_addr()));
    browser.wait_text("#log", "onerror", 30);
    assert!(browser.find("#log img").is_none());
    // A wrong key in the link: the page asks for the key instead of showing data.
    browser.execute("sessionStorage.clear()", vec![]);
    browser.goto(&format!("http://{}/#key={}", a.gui_addr(), "ab".repeat(32)));
    browser.wait_for("#key-form", 30);
}

/// A version whose data cannot come yet (its only holder sends corrupt chunks, a
/// test hook) shows as a transfer in the API, `status`, `wait` and the GUI's
/// progress bars; once an honest copy is reachable it completes and the page
/// says so by itself.
#[test]
fn transfers_show_what_is_still_coming() {
    let mut a = Node::prepare_member();
    a.env.push(("DISTRIBOX_TEST_CORRUPT_SENT_CHUNKS".into(), "1".into()));
    a.mount();
    let data = random_bytes(3 << 20, 11);
    fs::write(a.path("big.bin"), &data).unwrap();
    let b = Node::member(Some(&a.invite()));
    wait_until("B to refuse A's corrupt chunk", PROPAGATE_SECS, || {
        b.log().contains("does not match its hash")
    });

    let t = b.api("transfers");
    let item = t["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["path"] == "big.bin")
        .unwrap_or_else(|| panic!("big.bin not among the transfers: {t}"))
        .clone();
    assert_eq!(item["size"], 3 << 20);
    assert!(item["bytes_missing"].as_u64().unwrap() > 0, "{item}");
    assert!(t["bytes_missing"].as_u64().unwrap() >= item["bytes_missing"].as_u64().unwrap());
    let status = String::from_utf8(cli(&b.data, &["status"]).stdout).unwrap();
    assert!(status.contains("incoming") && status.contains("big.bin"), "{status}");
    let out = cli(&b.data, &["wait", "--timeout", "2"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not in sync after 2 s"), "{err}");

    let shots = Shots::new();
    let browser = Browser::start();
    browser.goto(&format!("http://{}/#key={}", b.gui_addr(), b.api_key()));
    browser.goto(&format!("http://{}/#/transfers", b.gui_addr()));
    browser.wait_for("#transfers tr.transfer progress", 30);
    browser.wait_text("#transfers", "big.bin", 30);
    browser.wait_text("#transfer-summary", "arriving", 30);
    browser.wait_text("#transfer-count", "1", 30);
    shots.take(&browser, "transfers");

    a.unmount();
    wait_until("B to see A offline", PROPAGATE_SECS, || b.online_peers() == 0);
    let out = cli(&b.data, &["wait", "--timeout", "1"]);
    assert!(!out.status.success(), "wait said in sync with nobody online");
    assert!(String::from_utf8_lossy(&out.stderr).contains("waiting for a member to come online"));
    a.env.clear();
    a.mount();
    wait_content(&b, "big.bin", &data);
    browser.wait_text("#transfer-summary", "Nothing is being received", 60);
    let out = cli(&b.data, &["wait", "--timeout", "60"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}
