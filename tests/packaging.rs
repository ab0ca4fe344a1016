//! What ships around the binary (mount-helpers/, `distribox completions`, `distribox
//! man`): shell completions load and complete, the man pages render, the systemd
//! user units pass `systemd-analyze verify` and their commands really mount, stop and
//! recover, and mount.distribox mounts the way mount(8) and fstab invoke it.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Every subcommand a user can type (the man page and completions must name each).
const COMMANDS: &[&str] = &[
    "init",
    "mount",
    "serve",
    "invite",
    "join",
    "peers",
    "unmount",
    "status",
    "log",
    "versions",
    "resolve",
    "gc",
    "restore",
    "completions",
    "man",
];

fn repo_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn distribox(args: &[&str]) -> Output {
    run_ok(Command::new(bin()).args(args))
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn tmpdir(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new().prefix(prefix).tempdir().unwrap()
}

// ------------------------------------------------------------------ completions

#[test]
fn completions_for_every_shell_name_the_commands() {
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let out = distribox(&["completions", shell]);
        let script = String::from_utf8(out.stdout).unwrap();
        assert!(script.len() > 500, "{shell} completions are almost empty:\n{script}");
        for cmd in COMMANDS {
            assert!(script.contains(cmd), "{shell} completions do not mention `{cmd}`");
        }
        assert!(
            script.contains("foreground"), // fish and powershell spell it without dashes
            "{shell} completions lack mount's options"
        );
    }
    // An unknown shell is refused with the list of supported ones.
    let out = Command::new(bin()).args(["completions", "tcsh"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("bash"));
}

#[test]
fn bash_completion_parses_and_completes() {
    let tmp = tmpdir("distribox-compl");
    let file = tmp.path().join("distribox.bash");
    std::fs::write(&file, distribox(&["completions", "bash"]).stdout).unwrap();
    run_ok(Command::new("bash").arg("-n").arg(&file));
    // Load it as bash-completion would and ask for completions the way readline does.
    let complete = |line: &str| -> Vec<String> {
        let script = r#"
            source "$1"; shift
            complete -p distribox >/dev/null
            COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1))
            COMP_LINE="$*"; COMP_POINT=${#COMP_LINE}
            fn=$(complete -p distribox | sed -E 's/.*-F ([^ ]+).*/\1/')
            "$fn" distribox "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD-1]}"
            printf '%s\n' "${COMPREPLY[@]}"
        "#;
        let out = run_ok(
            Command::new("bash")
                .arg("-c")
                .arg(script)
                .arg("bash")
                .arg(&file)
                .args(line.split(' ')),
        );
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    };
    let words = complete("distribox mo");
    assert!(
        words.contains(&"mount".to_string()),
        "`distribox mo<TAB>` gave {words:?}"
    );
    let words = complete("distribox re");
    assert!(
        words.contains(&"resolve".to_string()) && words.contains(&"restore".to_string()),
        "`distribox re<TAB>` gave {words:?}"
    );
    let words = complete("distribox mount --fo");
    assert!(
        words.contains(&"--foreground".to_string()),
        "`mount --fo<TAB>` gave {words:?}"
    );
    let words = complete("distribox completions ");
    assert!(
        words.contains(&"zsh".to_string()) && words.contains(&"powershell".to_string()),
        "`completions <TAB>` gave {words:?}"
    );
    for (shell, check) in [("zsh", vec!["-n"]), ("fish", vec!["--no-execute"])] {
        if !have(shell) {
            println!("{shell} is not installed: its completion script was not syntax-checked");
            continue;
        }
        let f = tmp.path().join(format!("distribox.{shell}"));
        std::fs::write(&f, distribox(&["completions", shell]).stdout).unwrap();
        run_ok(Command::new(shell).args(check).arg(&f));
    }
}

// ------------------------------------------------------------------ man pages

/// Renders a page with man(1) (groff warnings on) and returns the text, or None when
/// man is not installed.
fn man_render(page: &Path) -> Option<String> {
    if !have("man") {
        println!(
            "man is not installed: skipping the rendering check of {}",
            page.display()
        );
        return None;
    }
    let out = run_ok(
        Command::new("man")
            .arg("--warnings")
            .arg("-l")
            .arg(page)
            .env("MANWIDTH", "100")
            .env("MANPAGER", "cat")
            .env("PAGER", "cat")
            .env("LC_ALL", "C.UTF-8"),
    );
    let warnings = String::from_utf8_lossy(&out.stderr);
    assert!(
        warnings.trim().is_empty(),
        "man -l {} warned:\n{warnings}",
        page.display()
    );
    Some(String::from_utf8(out.stdout).unwrap())
}

#[test]
fn man_page_is_roff_documenting_every_command() {
    let page = String::from_utf8(distribox(&["man"]).stdout).unwrap();
    assert!(
        page.starts_with(".TH") || page.starts_with(".ie"),
        "not a roff page:\n{}",
        &page[..page.len().min(300)]
    );
    assert!(page.contains(".TH distribox 1"), "no title line");
    for section in [
        ".SH NAME",
        ".SH SYNOPSIS",
        ".SH DESCRIPTION",
        ".SH OPTIONS",
        ".SH COMMANDS",
        ".SH EXAMPLES",
        ".SH \"SEE ALSO\"",
    ] {
        assert!(page.contains(section), "no {section}");
    }
    // Every command with its own synopsis and options, on this one page.
    for cmd in COMMANDS {
        assert!(
            page.contains(&format!(".SS \"distribox {cmd}\"")),
            "the page does not document `{cmd}`"
        );
        assert!(
            page.contains(&format!("\\fBdistribox {cmd}\\fR")),
            "no synopsis for `{cmd}`"
        );
    }
    for opt in ["idle\\-commit\\-ms", "keep\\-last", "no\\-mdns", "bash\\-completion"] {
        assert!(page.contains(opt), "the page lacks {opt}");
    }
    assert_eq!(page.matches(".ds Aq").count(), 2, "the roff preamble is repeated");
    let tmp = tmpdir("distribox-man");
    let file = tmp.path().join("distribox.1");
    std::fs::write(&file, &page).unwrap();
    if let Some(text) = man_render(&file) {
        for want in [
            "COMMANDS",
            "distribox resolve",
            "--keep",
            "Start here:",
            "--data-dir",
            "distribox-resolve(1)",
        ] {
            assert!(text.contains(want), "rendered page lacks {want:?}:\n{text}");
        }
    }
}

#[test]
fn man_out_writes_a_page_per_command() {
    let tmp = tmpdir("distribox-man");
    let dir = tmp.path().join("man1");
    let out = distribox(&["man", "--out", dir.to_str().unwrap()]);
    let said = String::from_utf8_lossy(&out.stdout);
    let mut pages = vec!["distribox.1".to_string()];
    pages.extend(COMMANDS.iter().map(|c| format!("distribox-{c}.1")));
    assert_eq!(
        std::fs::read(dir.join("distribox.1")).unwrap(),
        distribox(&["man"]).stdout,
        "--out's distribox.1 differs from `distribox man`"
    );
    for p in &pages {
        assert!(dir.join(p).is_file(), "{p} was not written (said: {said})");
        assert!(said.contains(p.as_str()), "did not report {p}: {said}");
    }
    assert!(
        !dir.join("distribox-help.1").exists(),
        "a page for the help pseudo-command"
    );
    let mount = std::fs::read_to_string(dir.join("distribox-mount.1")).unwrap();
    assert!(mount.contains(".TH distribox-mount 1"), "{mount}");
    for opt in [
        "foreground",
        "allow\\-other",
        "idle\\-commit\\-ms",
        "no\\-net",
        "data\\-dir",
    ] {
        assert!(mount.contains(opt), "distribox-mount.1 lacks {opt}");
    }
    for p in &pages {
        if let Some(text) = man_render(&dir.join(p)) {
            assert!(text.contains("SYNOPSIS"), "{p} renders without a synopsis:\n{text}");
        }
    }
}

// ------------------------------------------------------------------ systemd units

const UNITS: &[&str] = &["distribox.service", "distribox-serve.service"];

/// A home dir laid out like a `cargo install` user's: ~/.cargo/bin/distribox is the
/// built binary, so the units' `%h/.cargo/bin/distribox` is checked and run as shipped.
fn fake_home() -> tempfile::TempDir {
    let home = tmpdir("distribox-home");
    let bindir = home.path().join(".cargo/bin");
    std::fs::create_dir_all(&bindir).unwrap();
    std::os::unix::fs::symlink(bin(), bindir.join("distribox")).unwrap();
    home
}

#[test]
fn systemd_units_pass_systemd_analyze_verify() {
    if !have("systemd-analyze") {
        println!("systemd-analyze is not installed: the systemd units were NOT verified");
        return;
    }
    let home = fake_home();
    let runtime = home.path().join("run");
    std::fs::create_dir(&runtime).unwrap();
    std::fs::set_permissions(&runtime, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    // Documentation=man:... is checked by running man: point it at our pages.
    let man_root = home.path().join("man");
    distribox(&["man", "--out", man_root.join("man1").to_str().unwrap()]);
    let units: Vec<PathBuf> = UNITS.iter().map(|u| repo_file(&format!("mount-helpers/{u}"))).collect();
    let mut cmd = Command::new("systemd-analyze");
    cmd.args(["verify", "--user"]);
    if !have("man") {
        println!("man is not installed: Documentation= lines not checked (--man=no)");
        cmd.arg("--man=no");
    }
    let out = cmd
        .args(&units)
        .env("HOME", home.path())
        .env("XDG_RUNTIME_DIR", &runtime)
        .env("MANPATH", &man_root)
        .output()
        .expect("run systemd-analyze");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let about_us: Vec<&str> = stderr.lines().filter(|l| l.contains("distribox")).collect();
    assert!(
        out.status.success() && about_us.is_empty(),
        "systemd-analyze verify --user {units:?}: {}\n{stderr}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout)
    );
    // And it does fail on a broken unit (so the pass above means something).
    let bad = home.path().join("distribox-broken.service");
    let text = std::fs::read_to_string(&units[0]).unwrap();
    std::fs::write(
        &bad,
        text.replace("%h/.cargo/bin/distribox", "%h/.cargo/bin/nonexistent"),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--user", "--man=no"])
        .arg(&bad)
        .env("HOME", home.path())
        .env("XDG_RUNTIME_DIR", &runtime)
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "systemd-analyze accepted a unit whose binary does not exist"
    );
}

/// The [Service] settings of a shipped unit, with %h expanded to `home`.
struct Unit {
    env: Vec<(String, String)>,
    settings: Vec<(String, String)>,
}

impl Unit {
    fn load(name: &str, home: &Path) -> Unit {
        let text = std::fs::read_to_string(repo_file(&format!("mount-helpers/{name}"))).unwrap();
        let mut section = String::new();
        let mut u = Unit {
            env: Vec::new(),
            settings: Vec::new(),
        };
        for line in text.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
                continue;
            }
            if line.starts_with('[') {
                section = line.to_string();
                continue;
            }
            let (k, v) = line
                .split_once('=')
                .unwrap_or_else(|| panic!("{name}: bad line {line}"));
            let v = v.replace("%h", home.to_str().unwrap());
            assert!(
                !v.contains('%'),
                "{name}: a specifier this test does not expand: {line}"
            );
            assert!(
                !v.contains('"') && !v.contains('\''),
                "{name}: quoting this test does not parse: {line}"
            );
            if section == "[Service]" && k == "Environment" {
                let (ek, ev) = v.split_once('=').unwrap();
                u.env.push((ek.to_string(), ev.to_string()));
            } else {
                u.settings.push((format!("{section}{k}"), v));
            }
        }
        u
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.settings
            .iter()
            .find(|(k, _)| k == &format!("[Service]{key}"))
            .map(|(_, v)| v.as_str())
    }

    /// A command line as systemd would run it; `-` (failure ignored) is returned.
    fn command(&self, key: &str, extra: &[&str]) -> (Command, bool) {
        let line = self.get(key).unwrap_or_else(|| panic!("no {key}"));
        let (ignore, line) = match line.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, line),
        };
        let mut words = line.split_whitespace();
        let mut cmd = Command::new(words.next().unwrap());
        cmd.args(words).args(extra);
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        (cmd, ignore)
    }

    fn run(&self, key: &str) {
        let (mut cmd, ignore) = self.command(key, &[]);
        if ignore {
            let _ = cmd.output().unwrap();
        } else {
            run_ok(&mut cmd);
        }
    }
}

/// A node process started like systemd would; killed (and its mount cleared) on drop.
/// Like the service manager, a thread reaps it as soon as it exits (`distribox
/// unmount` waits for the pid to disappear, and a zombie would not).
struct Service {
    pid: i32,
    exited: std::sync::mpsc::Receiver<std::process::ExitStatus>,
    status: Option<std::process::ExitStatus>,
    mnt: Option<PathBuf>,
}

impl Service {
    fn start(unit: &Unit, extra: &[&str], log: &Path) -> Service {
        let (mut cmd, _) = unit.command("ExecStart", extra);
        let log = std::fs::File::create(log).unwrap();
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        let (tx, exited) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait().unwrap());
        });
        Service {
            pid,
            exited,
            status: None,
            mnt: None,
        }
    }

    fn running(&mut self) -> bool {
        if self.status.is_none() {
            self.status = self.exited.try_recv().ok();
        }
        self.status.is_none()
    }

    /// Waits for the main process to exit (as systemd does after ExecStop).
    fn wait_exit(&mut self, secs: u64) -> std::process::ExitStatus {
        if self.status.is_none() {
            let st = self.exited.recv_timeout(Duration::from_secs(secs));
            self.status = Some(st.unwrap_or_else(|_| panic!("the node did not exit within {secs} s")));
        }
        self.status.unwrap()
    }

    fn signal(&mut self, sig: i32) {
        assert!(self.running(), "the node is not running");
        // SAFETY: kill on our child, which the reaper has not reaped yet.
        unsafe { libc::kill(self.pid, sig) };
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Some(m) = &self.mnt {
            force_unmount(m);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.running() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if self.running() {
            // SAFETY: as in signal().
            unsafe { libc::kill(self.pid, libc::SIGKILL) };
            let _ = self.exited.recv_timeout(Duration::from_secs(10));
        }
        if let Some(m) = &self.mnt {
            force_unmount(m);
        }
    }
}

#[test]
fn mount_unit_commands_mount_stop_cleanly_and_recover_from_a_crash() {
    let home = fake_home();
    let unit = Unit::load("distribox.service", home.path());
    assert!(
        matches!(unit.get("Type"), Some("exec" | "simple")),
        "Type must keep the process"
    );
    assert_eq!(unit.get("Restart"), Some("on-failure"));
    assert!(unit.get("ExecStart").unwrap().contains("--foreground"));
    let mnt = home.path().join("Distribox");
    let data = home.path().join(".local/share/distribox");
    // Not on the default port 7467 and not on the LAN: appended for the test only.
    let local = ["--no-net"];
    let log = home.path().join("node.log");

    unit.run("ExecStartPre"); // creates ~/Distribox
    assert!(mnt.is_dir());
    let mut svc = Service::start(&unit, &local, &log);
    svc.mnt = Some(mnt.clone());
    wait_until("the unit's node to mount ~/Distribox", 60, || is_mounted(&mnt));
    std::fs::write(mnt.join("hello.txt"), b"from systemd").unwrap();
    assert_eq!(std::fs::read(mnt.join("hello.txt")).unwrap(), b"from systemd");
    // The node uses the data dir of Environment=DISTRIBOX_DATA_DIR.
    let want = std::fs::canonicalize(&mnt).unwrap();
    assert_eq!(status_of(&data)["mountpoint"].as_str(), want.to_str());

    // systemctl stop: ExecStop, then the main process must be gone with status 0
    // (a clean stop, not a failure that Restart=on-failure would restart).
    unit.run("ExecStop");
    assert!(!is_mounted(&mnt));
    let st = svc.wait_exit(5);
    assert!(
        st.success(),
        "the node exited {st} after ExecStop:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    unit.run("ExecStopPost"); // nothing mounted: its failure is ignored ('-')

    // A crash leaves a dead FUSE mount; ExecStopPost clears it so the restart mounts.
    let mut svc = Service::start(&unit, &local, &log);
    svc.mnt = Some(mnt.clone());
    wait_until("the restarted node to mount", 60, || is_mounted(&mnt));
    svc.signal(libc::SIGKILL);
    let st = svc.wait_exit(30);
    assert!(!st.success());
    assert!(is_mounted(&mnt), "expected a dead mount after SIGKILL");
    unit.run("ExecStopPost");
    assert!(!is_mounted(&mnt), "ExecStopPost left the dead mount");
    unit.run("ExecStartPre");
    let mut svc = Service::start(&unit, &local, &log);
    svc.mnt = Some(mnt.clone());
    wait_until("the node to mount again after the crash", 60, || is_mounted(&mnt));
    assert_eq!(std::fs::read(mnt.join("hello.txt")).unwrap(), b"from systemd");

    // SIGTERM (what systemd sends when ExecStop could not unmount) also stops cleanly.
    svc.signal(libc::SIGTERM);
    let st = svc.wait_exit(60);
    assert!(st.success(), "the node exited {st} on SIGTERM");
    assert!(!is_mounted(&mnt));
}

#[test]
fn serve_unit_command_runs_in_the_foreground_and_stops_on_sigterm() {
    let home = fake_home();
    let unit = Unit::load("distribox-serve.service", home.path());
    assert!(matches!(unit.get("Type"), Some("exec" | "simple")));
    assert_eq!(unit.get("Restart"), Some("on-failure"));
    let data = home.path().join(".local/share/distribox");
    run_ok(Command::new(bin()).arg("--data-dir").arg(&data).arg("init"));
    // A free port on loopback instead of 0.0.0.0:7467, no mDNS: for the test only.
    let listen = format!("--listen=/ip4/127.0.0.1/tcp/{}", free_port());
    let log = home.path().join("serve.log");
    let mut svc = Service::start(&unit, &[&listen, "--no-mdns"], &log);
    wait_until("the serve node to answer on its control socket", 60, || {
        cli(&data, &["status", "--json"]).status.success()
    });
    assert!(svc.running(), "serve detached or exited");
    assert!(status_of(&data)["mountpoint"].is_null());
    svc.signal(libc::SIGTERM);
    let st = svc.wait_exit(60);
    assert!(
        st.success(),
        "serve exited {st} on SIGTERM:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
}

// ------------------------------------------------------------------ mount.distribox

fn helper() -> PathBuf {
    repo_file("mount-helpers/mount.distribox")
}

/// A data dir and an empty mount dir; on drop, whatever is still mounted there is
/// unmounted (fusermount3 -u, then umount -l) and the node is given time to exit.
struct Mountable {
    tmp: tempfile::TempDir,
    data: PathBuf,
    mnt: PathBuf,
}

impl Mountable {
    fn new() -> Mountable {
        let tmp = tmpdir("distribox-helper");
        let data = tmp.path().join("data");
        let mnt = tmp.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        Mountable { tmp, data, mnt }
    }

    fn node_pid(&self) -> Option<i32> {
        let out = cli(&self.data, &["status", "--json"]);
        out.status.success().then(|| {
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            v["pid"].as_i64().unwrap() as i32
        })
    }

    /// The node's command line (to see which flags the helper gave it).
    fn node_args(&self) -> Vec<String> {
        let pid = self.node_pid().expect("no node answers");
        let raw = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
        raw.split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect()
    }

    fn check_mounted_and_usable(&self) {
        assert!(is_mounted(&self.mnt), "{} is not mounted", self.mnt.display());
        let f = self.mnt.join("note.txt");
        std::fs::write(&f, b"mounted by mount.distribox").unwrap();
        assert_eq!(std::fs::read(&f).unwrap(), b"mounted by mount.distribox");
        let st = status_of(&self.data);
        let want = std::fs::canonicalize(&self.mnt).unwrap();
        assert_eq!(st["mountpoint"].as_str(), want.to_str(), "{st}");
    }

    /// `distribox unmount DIR`, then the node must be gone.
    fn unmount_and_wait(&self) {
        let pid = self.node_pid().unwrap();
        run_ok(
            Command::new(bin())
                .arg("--data-dir")
                .arg(&self.data)
                .arg("unmount")
                .arg(&self.mnt),
        );
        assert!(!is_mounted(&self.mnt));
        self.wait_node_gone(pid);
    }

    fn wait_node_gone(&self, pid: i32) {
        wait_until("the node to exit after the unmount", 60, || {
            // SAFETY: signal 0 only checks that the process exists.
            unsafe { libc::kill(pid, 0) != 0 }
        });
    }
}

impl Drop for Mountable {
    fn drop(&mut self) {
        let pid = self.node_pid();
        force_unmount(&self.mnt);
        if let Some(pid) = pid {
            let deadline = Instant::now() + Duration::from_secs(30);
            // SAFETY: signal 0 checks existence; SIGKILL only if it outlives the wait.
            while unsafe { libc::kill(pid, 0) } == 0 && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

#[test]
fn mount_helper_mounts_as_mount8_invokes_it() {
    let m = Mountable::new();
    // Exactly mount(8)'s call: SOURCE MOUNTPOINT -o OPTIONS (plus no_net, so the test
    // node does not take port 7467 or talk to the LAN).
    let out = run_ok(
        Command::new(helper())
            .arg(&m.data)
            .arg(&m.mnt)
            .args(["-o", "rw,allow_other,idle_commit_ms=500,no_net"])
            .env("DISTRIBOX", bin()),
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("mounted"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    m.check_mounted_and_usable();
    let args = m.node_args();
    for want in ["--allow-other", "--idle-commit-ms=500", "--no-net", "--foreground"] {
        assert!(args.iter().any(|a| a == want), "node runs without {want}: {args:?}");
    }
    m.unmount_and_wait();
}

#[test]
fn mount_helper_maps_options_to_flags() {
    // -f (fake, as `mount -f` passes it) prints the command and mounts nothing.
    let m = Mountable::new();
    let out = run_ok(
        Command::new(helper())
            .arg(&m.data)
            .arg(&m.mnt)
            .args(["-f", "-n", "-o"])
            .arg(
                "defaults,noauto,user,nofail,_netdev,x-systemd.automount,threads=3,gc_every=7,\
                 listen=/ip4/127.0.0.1/tcp/0,peer=/ip4/10.0.0.2/tcp/7467,no_mdns,allow_other,bogus",
            )
            .env("DISTRIBOX", bin()),
    );
    let said = String::from_utf8_lossy(&out.stderr);
    let line = said
        .lines()
        .find(|l| l.starts_with("mount.distribox: ") && l.contains(" mount "))
        .unwrap_or_else(|| panic!("-f did not print the command: {said}"));
    let want = format!(
        "{} --data-dir {} mount {} --threads=3 --gc-every=7 --listen=/ip4/127.0.0.1/tcp/0 \
         --peer=/ip4/10.0.0.2/tcp/7467 --no-mdns --allow-other",
        bin(),
        m.data.display(),
        m.mnt.display()
    );
    assert_eq!(line, format!("mount.distribox: {want}"));
    assert!(said.contains("ignoring unknown option 'bogus'"), "{said}");
    assert!(
        !is_mounted(&m.mnt) && !m.data.exists(),
        "-f mounted or created something"
    );
    // ro cannot be honoured: refused rather than mounted writable.
    let out = Command::new(helper())
        .arg(&m.data)
        .arg(&m.mnt)
        .args(["-o", "ro,no_net"])
        .env("DISTRIBOX", bin())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("read-only"));
    assert!(!is_mounted(&m.mnt));
}

/// Installs the helper as /sbin/mount.distribox for the test and removes it on drop.
struct InstalledHelper(PathBuf);

impl Drop for InstalledHelper {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The real path through mount(8): `mount -t distribox` and an fstab line (from a
/// private fstab given with `mount --fstab`, so /etc/fstab is not touched). Needs
/// root to put the helper where mount(8) looks (/sbin/mount.distribox, removed again
/// afterwards); skipped when not root or when a mount.distribox is already installed.
#[test]
fn mount_8_and_fstab_line_use_the_helper() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        println!("not root: `mount -t distribox` not tested (the helper was tested directly)");
        return;
    }
    let target = PathBuf::from("/sbin/mount.distribox");
    if target.exists() || target.is_symlink() {
        println!(
            "{} is already installed: not replacing it; mount(8) path not tested",
            target.display()
        );
        return;
    }
    std::fs::copy(helper(), &target).unwrap();
    let _installed = InstalledHelper(target);

    // mount -t distribox DATA_DIR DIR -o ...; unmounted with umount(8).
    let m = Mountable::new();
    run_ok(
        Command::new("mount")
            .args(["-t", "distribox"])
            .arg(&m.data)
            .arg(&m.mnt)
            .args(["-o", "idle_commit_ms=500,no_net"])
            .env("DISTRIBOX", bin()),
    );
    m.check_mounted_and_usable();
    assert!(m.node_args().iter().any(|a| a == "--idle-commit-ms=500"));
    let pid = m.node_pid().unwrap();
    run_ok(Command::new("umount").arg(&m.mnt));
    assert!(!is_mounted(&m.mnt));
    m.wait_node_gone(pid);

    // The README's fstab line, then `mount DIR` finds everything else there.
    let fstab = m.tmp.path().join("fstab");
    std::fs::write(
        &fstab,
        format!(
            "# test fstab\n{}  {}  distribox  noauto,user,no_net  0 0\n",
            m.data.display(),
            m.mnt.display()
        ),
    )
    .unwrap();
    run_ok(
        Command::new("mount")
            .arg("--fstab")
            .arg(&fstab)
            .arg(&m.mnt)
            .env("DISTRIBOX", bin()),
    );
    m.check_mounted_and_usable();
    assert_eq!(
        std::fs::read(m.mnt.join("note.txt")).unwrap(),
        b"mounted by mount.distribox"
    );
    m.unmount_and_wait();
}
