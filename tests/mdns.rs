//! LAN discovery: two members in two network namespaces joined by a veth pair find
//! each other by mDNS alone (mDNS ignores loopback, so 127.0.0.1 cannot show it).
//! The members run `distribox serve` (no mount: `ip netns exec` gives its command
//! a private mount namespace, so a FUSE mount made there would be invisible here).

mod common;

use common::*;
use std::process::{Child, Command, Stdio};

/// Two namespaces `<prefix>a`/`<prefix>b` with 10.231.0.1/24 and 10.231.0.2/24;
/// removed on drop.
struct Netns {
    names: [String; 2],
}

fn ip(args: &[&str]) {
    let st = Command::new("ip")
        .args(args)
        .status()
        .expect("ip(8) from iproute2 is needed");
    assert!(st.success(), "ip {}", args.join(" "));
}

impl Netns {
    fn new() -> Netns {
        let prefix = format!("dbx{}", std::process::id() % 100000);
        let names = [format!("{prefix}a"), format!("{prefix}b")];
        let n = Netns { names };
        let (a, b) = (&n.names[0], &n.names[1]);
        ip(&["netns", "add", a]);
        ip(&["netns", "add", b]);
        let (va, vb) = (format!("{a}v"), format!("{b}v"));
        ip(&["link", "add", &va, "type", "veth", "peer", "name", &vb]);
        ip(&["link", "set", &va, "netns", a]);
        ip(&["link", "set", &vb, "netns", b]);
        for (ns, dev, addr) in [(a, &va, "10.231.0.1/24"), (b, &vb, "10.231.0.2/24")] {
            ip(&["-n", ns, "addr", "add", addr, "dev", dev]);
            ip(&["-n", ns, "link", "set", dev, "up"]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        n
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for ns in &self.names {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

struct Serve(Child);

impl Drop for Serve {
    fn drop(&mut self) {
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        for _ in 0..300 {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn serve_in(ns: &str, data: &std::path::Path, listen: &str, log: &std::path::Path) -> Serve {
    let child = Command::new("ip")
        .args(["netns", "exec", ns, bin(), "--data-dir"])
        .arg(data)
        .args(["serve", "--listen", listen, "--gui-listen=off"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap();
    Serve(child)
}

#[test]
fn members_in_two_namespaces_find_each_other_by_mdns() {
    let net = Netns::new();
    let t = tempfile::tempdir().unwrap();
    let (da, db) = (t.path().join("a"), t.path().join("b"));
    assert!(cli(&da, &["init"]).status.success());
    // No node runs yet, so the token names no address: discovery must do it.
    let inv = cli(&da, &["invite"]);
    assert!(inv.status.success());
    let token = String::from_utf8_lossy(&inv.stdout).trim().to_string();
    assert!(cli(&db, &["join", &token]).status.success());
    let _a = serve_in(&net.names[0], &da, "/ip4/10.231.0.1/tcp/7467", &t.path().join("a.log"));
    let _b = serve_in(&net.names[1], &db, "/ip4/10.231.0.2/tcp/7467", &t.path().join("b.log"));
    let online = |d: &std::path::Path| {
        let out = cli(d, &["peers", "--json"]);
        out.status.success()
            && serde_json::from_slice::<serde_json::Value>(&out.stdout)
                .ok()
                .and_then(|v| v.as_array().map(|a| a.iter().any(|p| p["online"] == true)))
                .unwrap_or(false)
    };
    wait_until("B to discover A by mDNS", 60, || online(&db));
    wait_until("A to see B", 60, || online(&da));
    let log = std::fs::read_to_string(t.path().join("b.log")).unwrap();
    assert!(log.contains("discovered on the LAN"), "{log}");
}
