//! Command-line interface: parses arguments and talks to a running node over the
//! control socket. `anyhow` lives here, at the binary's edge.

use crate::daemon::control::{self, ControlRequest, ControlResponse};
use crate::daemon::{self, MountConfig, Ready, ServeConfig};
use crate::fs::FsOptions;
use crate::store::DataDir;
use crate::sync::{invite, NetConfig};
use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Distribox: a shared folder that keeps every version, synced peer to peer.
///
/// Files live in a content-addressed store in the data dir; the folder you mount is
/// served straight from it. Every close() of a written file records a new version;
/// old versions stay readable as `name@vN`.
#[derive(Parser, Debug)]
#[command(name = "distribox", version, propagate_version = true)]
#[command(
    after_help = "Start here:\n  distribox mount ~/Distribox        mount the folder (creates the node on first use)\n  echo one > ~/Distribox/a.txt       v1 creates the file, v2 holds \"one\"\n  echo two > ~/Distribox/a.txt       v3 holds \"two\"\n  distribox log ~/Distribox/a.txt    list its versions\n  cat ~/Distribox/a.txt@v2           read an old version (read-only, not listed by ls)\n  distribox unmount ~/Distribox      (or: fusermount3 -u ~/Distribox)\n\nShare it with another computer:\n  distribox invite                   (on a running node) prints a token\n  distribox join TOKEN               (on the other computer) then: distribox mount DIR\n  distribox peers                    who is online, how far in sync\n\nWhen two members edit one file at once, both versions stay:\n  ls ~/Distribox                     report.txt  report.txt@v3-1a2b3c4d\n  distribox versions FILE            the version graph: which is shown, which conflict\n  distribox resolve FILE --keep vN   keep one version everywhere (rm FILE@vN drops one)\n  distribox restore FILE@vN          bring an old version back as the newest\n  distribox gc                       let old versions' data go (heads always stay)"
)]
pub struct Cli {
    /// Where this node keeps its store, identity and logs.
    #[arg(long, global = true, env = "DISTRIBOX_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Cmd,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Create this node's identity (an Ed25519 key) and an empty store.
    Init,
    /// Mount the folder at DIR (an existing, empty directory) and keep the node
    /// running in the background until the folder is unmounted.
    Mount {
        /// The directory to mount on.
        dir: PathBuf,
        /// Stay attached to the terminal (logs go to stderr) instead of detaching.
        #[arg(long)]
        foreground: bool,
        /// Let other users access the folder (FUSE allow_other + default_permissions;
        /// non-root users need `user_allow_other` in /etc/fuse.conf).
        #[arg(long)]
        allow_other: bool,
        /// Commit a file that stays open after this many milliseconds without writes.
        #[arg(long, default_value_t = 2000, value_name = "MS")]
        idle_commit_ms: u64,
        /// FUSE request threads.
        #[arg(long, default_value_t = 4)]
        threads: usize,
        /// While a program sends many small requests in a row (creating or copying
        /// many files), one FUSE thread polls for the next one instead of sleeping,
        /// until this many microseconds pass with fewer than two. This spends up
        /// to one CPU while such a program runs, and none otherwise; 0 turns it off.
        #[arg(long, default_value_t = 1000, value_name = "US",
              value_parser = clap::value_parser!(u64).range(0..=crate::fs::busy_poll::MAX_WINDOW.as_micros() as u64))]
        busy_poll_us: u64,
        #[command(flatten)]
        net: NetArgs,
        #[command(flatten)]
        gc: GcArgs,
        #[command(flatten)]
        gui: GuiArgs,
    },
    /// Run an always-on member without a mount (a "monitor" on a server): it
    /// stores every version and relays them between members. Stays in the
    /// foreground (run it under systemd); stop it with SIGTERM or Ctrl-C.
    Serve {
        #[command(flatten)]
        net: NetArgs,
        #[command(flatten)]
        gc: GcArgs,
        #[command(flatten)]
        gui: GuiArgs,
    },
    /// Print the link to this node's web GUI (versions, conflicts, log, peers,
    /// transfers). The link carries the API key: it opens the GUI for whoever
    /// has it, so treat it like a password. Scripts use the same REST API with
    /// the key in an `X-API-Key` header (docs/api.md).
    Gui {
        /// Print only the API key (from <data dir>/api.key).
        #[arg(long)]
        key: bool,
    },
    /// List files that show conflicting versions (changed on two members at once):
    /// the version the plain name shows and the others, listed as `name@vN`.
    Conflicts {
        #[arg(long)]
        json: bool,
    },
    /// List what was deleted in DIR and can be brought back: path, when and by
    /// whom it was deleted, its last version and size. `distribox restore PATH`
    /// brings one back with that last content.
    Deleted {
        /// A directory inside the mounted folder (default: the current directory
        /// if it is inside the folder, else the folder's top).
        dir: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Wait until this node holds every version its online members have, with
    /// their data (a progress bar on a terminal): at least one member must be
    /// online and have compared version lists with us. Exits 1 if that takes
    /// longer than --timeout. Useful after `join` or before shutting a laptop down.
    Wait {
        /// Give up after this many seconds (0: wait forever).
        #[arg(long, default_value_t = 0, value_name = "SECS")]
        timeout: u64,
    },
    /// Print an invitation token for this node's group (ask the running node for its
    /// addresses). Anyone with the token can join: send it privately.
    Invite,
    /// Make this data dir a member of the group in TOKEN (from `distribox invite`),
    /// then `distribox mount DIR` or `distribox serve`.
    Join { token: String },
    /// List the group's members this node knows: online or not, addresses, last
    /// seen, round-trip time, and how many records each side still lacks.
    Peers {
        #[arg(long)]
        json: bool,
    },
    /// Unmount the folder at DIR (like `fusermount3 -u DIR`) and wait for the node to
    /// exit.
    Unmount { dir: PathBuf },
    /// Show the running node: identity, mount point, store size.
    Status {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// List the versions of PATH (N, time, author, size), or recent changes across
    /// the folder when PATH is omitted (a directory PATH: changes under it). Read
    /// an old version as `PATH@vN`. A PATH no file has any more lists the file
    /// last deleted there.
    Log {
        path: Option<PathBuf>,
        /// How many recent changes to show (without PATH).
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Only versions by this author (a prefix of its node id, as listed).
        #[arg(long, value_name = "NODE")]
        author: Option<String>,
        /// Only versions made in the last AGE (like 2h, 3days) or since a time
        /// (2026-12-01T10:00:00Z).
        #[arg(long, value_name = "AGE|TIME")]
        since: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Draw the version graph of PATH (like `git log --graph`): each version's name
    /// (vN), time, author and size; `shown` marks the content under the plain name,
    /// `conflict` the ones listed as PATH@vN.
    Versions {
        path: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Settle a conflict: make one version the content of PATH on every node and
    /// retire the others (they stay in history). `distribox resolve report.txt
    /// --keep v3`, or just `distribox resolve report.txt@v3`. To drop one
    /// conflicting version and keep the shown one, delete it: `rm report.txt@v3`.
    Resolve {
        path: PathBuf,
        /// The version to keep (v3, or v3-<author> where the listing says so).
        #[arg(long, value_name = "vN")]
        keep: Option<String>,
    },
    /// Let old versions go: purge the data of file versions that are neither among
    /// the last --keep-last of their file nor younger than --keep-days, then delete
    /// chunks nothing kept uses. Heads and conflicting versions are always kept;
    /// version records stay (history shows what was purged), and every member
    /// learns the decision. A running node does this by itself (--gc-every).
    /// To win back the space of deleted files without touching the history of
    /// the files that stay: `distribox gc --only-deleted --keep-last 0 --keep-days 0`.
    Gc {
        /// Versions of each file always kept (the newest ones).
        #[arg(long, default_value_t = 10)]
        keep_last: usize,
        /// Versions younger than this are always kept.
        #[arg(long, default_value_t = 30)]
        keep_days: u64,
        /// Saves superseded by the same author within this many seconds do not count
        /// towards --keep-last.
        #[arg(long, default_value_t = 10)]
        coalesce_secs: u64,
        /// Apply the policy only to files deleted now (`distribox deleted` lists
        /// them); their versions can then no longer be restored.
        #[arg(long)]
        only_deleted: bool,
        /// Only report what would be purged.
        #[arg(long)]
        dry_run: bool,
    },
    /// Record a new version of a file with the content of an old one:
    /// `distribox restore notes.txt@v2`. History stays; conflicts stay. A deleted
    /// file comes back under its old name: `distribox restore notes.txt` with its
    /// last content, or with any version (`distribox log notes.txt` lists them,
    /// `cat notes.txt@v2` reads one). A deleted directory comes back with what was
    /// deleted beneath it together with it (`rm -r`).
    Restore {
        /// The old version, as PATH@vN (or the PATH of a deleted file).
        path: PathBuf,
    },
    /// Print a tab-completion script for SHELL on stdout (subcommands, options).
    ///
    /// Save it where your shell looks for completions; it is read when a new shell
    /// starts. Regenerate it after upgrading distribox.
    #[command(after_help = COMPLETIONS_HELP)]
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff) of the whole command line on stdout, or with
    /// --out write one page per command into a directory.
    ///
    /// `distribox man` is distribox(1): every command with its summary, the global
    /// options and the examples. `--out DIR` writes distribox.1 and one page per
    /// command (distribox-mount.1, distribox-resolve.1, ...) with all its options.
    #[command(after_help = MAN_HELP)]
    Man {
        /// Write distribox.1 and distribox-COMMAND.1 pages into DIR (created if
        /// missing) instead of printing distribox.1.
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
}

/// The web GUI and REST API.
#[derive(Args, Debug, Clone)]
pub struct GuiArgs {
    /// Where the web GUI and REST API listen: HOST:PORT, a port on 127.0.0.1, or
    /// `off`. Default 127.0.0.1:7468 (if that is taken the node runs without a
    /// GUI). Anything but loopback lets other machines reach it (the API key
    /// still guards it); a warning says so.
    #[arg(long, value_name = "ADDR")]
    pub gui_listen: Option<String>,
}

impl GuiArgs {
    fn config(&self) -> Result<daemon::web::GuiListen> {
        let listen = daemon::web::GuiListen::parse(self.gui_listen.as_deref()).map_err(|e| anyhow!(e))?;
        if let daemon::web::GuiListen::Explicit(a) = &listen {
            if !a.ip().is_loopback() {
                eprintln!("warning: the web GUI and REST API will listen on {a}, reachable from other machines; anyone who can reach it and holds the API key can read and change the folder");
            }
        }
        Ok(listen)
    }

    fn child_args(&self) -> Vec<String> {
        self.gui_listen.iter().map(|g| format!("--gui-listen={g}")).collect()
    }
}

const COMPLETIONS_HELP: &str = "Install (then open a new shell):\n  bash        distribox completions bash > ~/.local/share/bash-completion/completions/distribox\n              (needs the bash-completion package; system-wide: /usr/share/bash-completion/completions/distribox)\n  zsh         distribox completions zsh > ~/.zfunc/_distribox\n              and in ~/.zshrc, before compinit: fpath=(~/.zfunc $fpath); autoload -U compinit; compinit\n  fish        distribox completions fish > ~/.config/fish/completions/distribox.fish\n  elvish      distribox completions elvish > ~/.config/elvish/lib/distribox.elv\n              and in ~/.config/elvish/rc.elv: use distribox\n  powershell  distribox completions powershell >> $PROFILE\n\nTry it now without installing (bash): source <(distribox completions bash)";

const MAN_HELP: &str = "Install for your user (man searches ~/.local/share/man when ~/.local/bin or\n~/.cargo/bin is on PATH; otherwise add it to MANPATH):\n  mkdir -p ~/.local/share/man/man1\n  distribox man > ~/.local/share/man/man1/distribox.1\n  man distribox\nOr every command's page:\n  distribox man --out ~/.local/share/man/man1\n  man distribox-mount\nSystem-wide: --out /usr/local/share/man/man1 (as root). Read without installing:\n  distribox man | man -l -";

/// Retention while the node runs.
#[derive(Args, Debug, Clone)]
pub struct GcArgs {
    /// Apply the default retention policy every MINUTES (0: never; see `distribox gc`).
    #[arg(long, value_name = "MINUTES", default_value_t = 60)]
    pub gc_every: u64,
}

impl GcArgs {
    fn interval(&self) -> Option<Duration> {
        (self.gc_every > 0).then(|| Duration::from_secs(self.gc_every * 60))
    }
}

/// How a node reaches the group.
#[derive(Args, Debug, Clone)]
pub struct NetArgs {
    /// Address to listen on for members (repeatable). Port 0 picks a free port.
    #[arg(long, value_name = "MULTIADDR", default_value = "/ip4/0.0.0.0/tcp/7467")]
    pub listen: Vec<String>,
    /// A member to connect to, e.g. /ip4/192.168.1.7/tcp/7467 (repeatable). Members
    /// found once are remembered and redialed.
    #[arg(long, value_name = "MULTIADDR")]
    pub peer: Vec<String>,
    /// Do not look for members on the LAN with mDNS.
    #[arg(long)]
    pub no_mdns: bool,
    /// No network at all: a purely local, versioned folder.
    #[arg(long, conflicts_with = "peer")]
    pub no_net: bool,
}

impl NetArgs {
    fn config(&self) -> Result<Option<NetConfig>> {
        if self.no_net {
            return Ok(None);
        }
        let parse = |s: &String| {
            s.parse::<libp2p::Multiaddr>()
                .map_err(|e| anyhow!("{s}: not a multiaddr ({e}); example: /ip4/192.168.1.7/tcp/7467"))
        };
        Ok(Some(NetConfig {
            listen: self.listen.iter().map(parse).collect::<Result<_>>()?,
            peers: self.peer.iter().map(parse).collect::<Result<_>>()?,
            mdns: !self.no_mdns,
        }))
    }

    fn child_args(&self) -> Vec<String> {
        let mut a: Vec<String> = self.listen.iter().map(|l| format!("--listen={l}")).collect();
        a.extend(self.peer.iter().map(|p| format!("--peer={p}")));
        if self.no_mdns {
            a.push("--no-mdns".into());
        }
        if self.no_net {
            a.push("--no-net".into());
        }
        a
    }
}

/// `$XDG_DATA_HOME/distribox`, else `~/.local/share/distribox`.
pub fn default_data_dir() -> PathBuf {
    if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|x| !x.is_empty()) {
        return PathBuf::from(x).join("distribox");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/"));
    home.join(".local/share/distribox")
}

/// Environment variable telling a re-executed node to report readiness on stdout.
const READY_ENV: &str = "DISTRIBOX_REPORT_READY";

/// The one answer a request expects; the node's error answer becomes our error.
macro_rules! expect_answer {
    ($resp:expr, $pat:pat => $out:expr) => {
        match $resp {
            $pat => $out,
            ControlResponse::Error { message } => bail!("{message}"),
            other => bail!("unexpected answer from node: {other:?}"),
        }
    };
}

pub fn run(cli: Cli) -> Result<()> {
    let data_dir = DataDir::new(cli.data_dir.clone().unwrap_or_else(default_data_dir));
    match cli.command {
        Cmd::Init => {
            if data_dir.init(None)? {
                println!("initialised node in {}", data_dir.root.display());
            } else {
                println!("{} is already initialised", data_dir.root.display());
            }
            Ok(())
        }
        Cmd::Mount {
            dir,
            foreground,
            allow_other,
            idle_commit_ms,
            threads,
            busy_poll_us,
            net,
            gc,
            gui,
        } => {
            let cfg = MountConfig {
                data_dir,
                mountpoint: dir,
                fs: FsOptions {
                    idle_commit: Duration::from_millis(idle_commit_ms),
                    ..FsOptions::default()
                },
                allow_other,
                threads,
                busy_poll: (busy_poll_us > 0).then(|| Duration::from_micros(busy_poll_us)),
                net: net.config()?,
                gc_every: gc.interval(),
                gui: gui.config()?,
            };
            if foreground {
                mount_foreground(cfg)
            } else {
                let mut extra = cli_args_for_child(allow_other, idle_commit_ms, threads, busy_poll_us);
                extra.extend(net.child_args());
                extra.push(format!("--gc-every={}", gc.gc_every));
                extra.extend(gui.child_args());
                mount_background(cfg, &extra)
            }
        }
        Cmd::Serve { net, gc, gui } => {
            let Some(net) = net.config()? else {
                bail!("`serve` without a network does nothing; drop --no-net");
            };
            data_dir.check()?;
            let log = data_dir.log_path();
            report_failure(daemon::run_serve(
                ServeConfig {
                    data_dir,
                    net,
                    gc_every: gc.interval(),
                    gui: gui.config()?,
                },
                &mut StdoutReady { log },
            ))
        }
        Cmd::Invite => {
            data_dir.check()?;
            let group = data_dir.load_group()?;
            let addrs = match call(&data_dir, &ControlRequest::Status) {
                Ok(ControlResponse::Status(s)) => s.listen,
                _ => {
                    eprintln!("note: no node is running for this data dir, so the token names no address; the new member needs --peer or mDNS to find one");
                    Vec::new()
                }
            };
            println!("{}", invite::encode(&group, &addrs));
            Ok(())
        }
        Cmd::Join { token } => {
            let (group, addrs) = invite::decode(&token)?;
            if data_dir.is_initialised() {
                data_dir.check()?;
                if data_dir.load_group()? != group {
                    bail!(
                        "{} already belongs to another group; `join` will not mix two groups' data — use another --data-dir",
                        data_dir.root.display()
                    );
                }
            } else {
                data_dir.init(Some(group))?;
            }
            let addrs: Vec<libp2p::Multiaddr> = addrs.iter().filter_map(|a| a.parse().ok()).collect();
            let n = crate::sync::peers::remember(&crate::sync::peers::peers_file(&data_dir.root), &addrs)
                .map_err(|e| anyhow!(e))?;
            println!(
                "joined group {} in {} ({n} member address(es) remembered); now run `distribox mount DIR` or `distribox serve`",
                hex::encode(&group.id[..4]),
                data_dir.root.display()
            );
            Ok(())
        }
        Cmd::Peers { json } => {
            let peers = expect_answer!(
                call(&data_dir, &ControlRequest::Peers)?,
                ControlResponse::Peers { peers } => peers
            );
            if json {
                println!("{}", serde_json::to_string_pretty(&peers)?);
            } else if peers.is_empty() {
                println!("no members known yet (invite one: `distribox invite`)");
            } else {
                println!(
                    "{:<9} {:<8} {:>8} {:<21} {:>7} {:>7}  ADDRESS",
                    "NODE", "STATE", "RTT", "LAST SEEN", "THEIRS", "OURS"
                );
                for p in peers {
                    let rtt = p.rtt_ms.map(|r| format!("{r:.1}ms")).unwrap_or_else(|| "-".into());
                    let seen = p
                        .last_seen
                        .map(|t| {
                            humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_secs(t))
                                .to_string()
                        })
                        .unwrap_or_else(|| "never".into());
                    println!(
                        "{:<9} {:<8} {:>8} {:<21} {:>7} {:>7}  {}",
                        p.node,
                        if p.online { "online" } else { "offline" },
                        rtt,
                        seen,
                        p.missing_here,
                        p.missing_there,
                        p.addrs.first().map(String::as_str).unwrap_or("-")
                    );
                }
                println!(
                    "(THEIRS: records they have that we are missing; OURS: records we have that they are missing)"
                );
            }
            Ok(())
        }
        Cmd::Unmount { dir } => unmount(&data_dir, &dir),
        Cmd::Status { json } => {
            let info = expect_answer!(
                call(&data_dir, &ControlRequest::Status)?,
                ControlResponse::Status(s) => s
            );
            if json {
                println!("{}", serde_json::to_string_pretty(&info)?);
            } else {
                println!("node        {}", info.node);
                println!("pid         {}", info.pid);
                println!("mounted on  {}", info.mountpoint.as_deref().unwrap_or("(not mounted)"));
                println!("data dir    {}", info.data_dir);
                println!("versions    {} authored here", info.local_versions);
                println!("store       {} bytes on disk (flushed part)", info.store_bytes);
                println!("chunks      {} distinct, {} bytes", info.chunks, info.chunk_bytes);
                println!("uptime      {}s", info.uptime_secs);
                let m = &info.store_memory;
                println!(
                    "memory      {} MiB resident ({} MiB store memtables, {} MiB table indexes and filters, {} MiB block cache); {} inode numbers mapped, {} entries cached",
                    info.rss_bytes >> 20,
                    m.memtables >> 20,
                    m.table_readers >> 20,
                    m.block_cache >> 20,
                    info.inodes,
                    info.cached_entries
                );
                println!("group       {}", &info.group[..8.min(info.group.len())]);
                println!("peers       {} online, {} known", info.peers_online, info.peers_known);
                for a in &info.listen {
                    println!("listening   {a}");
                }
                if let Some(g) = &info.gui {
                    println!("web GUI     {g} (`distribox gui` prints the link with its key)");
                }
                if info.versions_pending > 0 || info.chunks_wanted > 0 {
                    println!(
                        "incoming    {} version(s): {} to go at {}/s, {}",
                        info.versions_pending,
                        human_bytes(info.bytes_missing),
                        human_bytes(info.rate_bps),
                        info.eta_secs
                            .map(|s| format!("about {} left", humantime::format_duration(Duration::from_secs(s))))
                            .unwrap_or_else(|| "waiting for a peer that has the data".into())
                    );
                    if let Ok(ControlResponse::Transfers(t)) = call(&data_dir, &ControlRequest::Transfers) {
                        for i in t.items.iter().take(10) {
                            println!(
                                "            {}  {} of {}",
                                i.path,
                                human_bytes(i.size - i.bytes_missing),
                                human_bytes(i.size)
                            );
                        }
                    }
                }
                if !info.listen.is_empty() {
                    println!(
                        "received    {} since the node started",
                        human_bytes(info.bytes_received)
                    );
                }
            }
            Ok(())
        }
        Cmd::Gui { key } => {
            data_dir.check()?;
            let read_key = || {
                data_dir.read_api_key()?.ok_or_else(|| {
                    anyhow!(
                        "no API key yet: start the node (`distribox mount DIR` or `distribox serve`) and it makes one"
                    )
                })
            };
            if key {
                println!("{}", read_key()?);
                return Ok(());
            }
            let gui = expect_answer!(
                call(&data_dir, &ControlRequest::Status)?,
                ControlResponse::Status(s) => s.gui
            );
            let gui = gui.ok_or_else(|| {
                anyhow!("the node runs without a web GUI (its address was taken or it was started with --gui-listen off); restart it with --gui-listen ADDR")
            })?;
            println!("{gui}#key={}", read_key()?);
            Ok(())
        }
        Cmd::Conflicts { json } => {
            let conflicts = expect_answer!(
                call(&data_dir, &ControlRequest::Conflicts)?,
                ControlResponse::Conflicts { conflicts } => conflicts
            );
            if json {
                println!("{}", serde_json::to_string_pretty(&conflicts)?);
            } else if conflicts.is_empty() {
                println!("no conflicts");
            } else {
                for c in conflicts {
                    let others: Vec<String> = c.versions.iter().map(|v| format!("{}@{v}", c.path)).collect();
                    println!("{}  (shows {})  also: {}", c.path, c.shown, others.join("  "));
                }
                println!("(keep one: `distribox resolve FILE --keep vN`; drop one: `rm FILE@vN`)");
            }
            Ok(())
        }
        Cmd::Deleted { dir, json } => {
            let rel = match &dir {
                Some(d) => folder_relative(&data_dir, d)?,
                // The current directory when it is inside the folder.
                None => std::env::current_dir()
                    .ok()
                    .and_then(|cwd| folder_relative(&data_dir, &cwd).ok())
                    .unwrap_or_default(),
            };
            let items = expect_answer!(
                call(&data_dir, &ControlRequest::Deleted { path: rel })?,
                ControlResponse::Deleted { items } => items
            );
            if json {
                println!("{}", serde_json::to_string_pretty(&items)?);
            } else if items.is_empty() {
                println!("nothing deleted here that could be brought back");
            } else {
                println!(
                    "{:<21} {:<9} {:<6} {:>12}  {:<8} PATH",
                    "DELETED", "BY", "LAST", "SIZE", "KIND"
                );
                for i in &items {
                    println!(
                        "{:<21} {:<9} {:<6} {:>12}  {:<8} {}",
                        i.deleted, i.deleted_by, i.last, i.size, i.kind, i.path
                    );
                }
                println!("(bring one back: `distribox restore PATH`, or PATH@vN for an older version)");
            }
            Ok(())
        }
        Cmd::Wait { timeout } => wait_in_sync(&data_dir, timeout),
        Cmd::Versions { path, json } => {
            let rel = folder_relative(&data_dir, &path)?;
            let versions = expect_answer!(
                call(&data_dir, &ControlRequest::Versions { path: rel })?,
                ControlResponse::Versions { versions } => versions
            );
            if json {
                println!("{}", serde_json::to_string_pretty(&versions)?);
            } else {
                print_versions(&versions);
            }
            Ok(())
        }
        Cmd::Resolve { path, keep } => {
            let rel = folder_relative(&data_dir, &path)?;
            let req = ControlRequest::Resolve {
                path: rel,
                keep: keep.unwrap_or_default(),
            };
            print_done(call(&data_dir, &req)?)
        }
        Cmd::Gc {
            keep_last,
            keep_days,
            coalesce_secs,
            only_deleted,
            dry_run,
        } => {
            let policy = crate::repo::Policy {
                keep_last,
                keep_days,
                coalesce_secs,
                only_deleted,
            };
            let report = expect_answer!(
                call(&data_dir, &ControlRequest::Gc { policy, dry_run })?,
                ControlResponse::Gc { report } => report
            );
            let verb = if dry_run { "would purge" } else { "purged" };
            println!(
                "{verb} {} old version(s) of {} file(s)",
                report.versions_purged, report.files
            );
            if report.swept {
                println!("freed {} chunk(s), {} bytes", report.chunks_freed, report.bytes_freed);
                if report.reclaiming {
                    println!(
                        "giving their disk space back in the background (store_bytes in `distribox status` shows it)"
                    );
                }
            } else if !dry_run {
                println!("chunks not swept: files are being written; the next run frees them");
            }
            Ok(())
        }
        Cmd::Restore { path } => {
            let rel = folder_relative(&data_dir, &path)?;
            print_done(call(&data_dir, &ControlRequest::Restore { path: rel })?)
        }
        Cmd::Log {
            path,
            limit,
            author,
            since,
            json,
        } => {
            let rel = match &path {
                Some(p) => Some(folder_relative(&data_dir, p)?),
                None => None,
            };
            // A directory: recent changes under it rather than its own history.
            let is_dir = path.as_ref().is_some_and(|p| p.is_dir());
            let since = since.as_deref().map(parse_since).transpose()?;
            let (path_f, under) = if is_dir { (None, rel) } else { (rel, None) };
            let per_file = path_f.is_some();
            let filter = crate::daemon::query::LogFilter {
                path: path_f,
                limit,
                author,
                since,
                under,
            };
            let lines = expect_answer!(
                call(&data_dir, &ControlRequest::Log(filter))?,
                ControlResponse::Log { lines } => lines
            );
            if json {
                println!("{}", serde_json::to_string_pretty(&lines)?);
            } else if per_file {
                if let (Some(l), Some(p)) = (lines.first(), &path) {
                    if l.deleted {
                        let p = p.display();
                        eprintln!(
                            "{p} is deleted; read a version as {p}@vN, bring it back with `distribox restore {p}` (its last content) or `{p}@vN`"
                        );
                    }
                }
                println!("{:<6} {:<21} {:<9} {:>12}  KIND", "N", "TIME", "AUTHOR", "SIZE");
                for l in lines {
                    let head = if l.head { "  (current)" } else { "" };
                    println!(
                        "v{:<5} {:<21} {:<9} {:>12}  {}{head}",
                        l.n, l.time, l.author, l.size, l.kind
                    );
                }
            } else {
                println!(
                    "{:<21} {:<9} {:<6} {:>12}  {:<8} PATH",
                    "TIME", "AUTHOR", "N", "SIZE", "KIND"
                );
                for l in lines {
                    let gone = if l.deleted { "  (deleted)" } else { "" };
                    println!(
                        "{:<21} {:<9} v{:<5} {:>12}  {:<8} {}{gone}",
                        l.time, l.author, l.n, l.size, l.kind, l.path
                    );
                }
            }
            Ok(())
        }
        Cmd::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cmd, "distribox", &mut std::io::stdout());
            Ok(())
        }
        Cmd::Man { out } => write_man(out.as_deref()),
    }
}

/// `--since`: an age (`2h`, `3days`) or a time (`2026-12-01T10:00:00Z`).
fn parse_since(s: &str) -> Result<i64> {
    let t = humantime::parse_rfc3339_weak(s)
        .ok()
        .or_else(|| {
            humantime::parse_duration(s)
                .ok()
                .and_then(|d| std::time::SystemTime::now().checked_sub(d))
        })
        .ok_or_else(|| anyhow!("--since {s}: expected an age like 2h or 3days, or a time like 2026-12-01T10:00:00Z"))?;
    Ok(t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64))
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Polls the node until at least one member is online, every online member has
/// told us what it holds (its version vector), none holds a record we lack, and
/// no received version waits for data. Draws a progress bar (bytes of pending
/// data) when stderr is a terminal.
fn wait_in_sync(data_dir: &DataDir, timeout: u64) -> Result<()> {
    use std::io::IsTerminal;
    let started = Instant::now();
    let bar = std::io::stderr().is_terminal().then(|| {
        let b = indicatif::ProgressBar::new(0);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta} {msg}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        b
    });
    let mut total = 0u64;
    loop {
        // Peers first, then status: records that arrive in between show up as
        // pending in the status, never as "in sync".
        let peers = match call(data_dir, &ControlRequest::Peers)? {
            ControlResponse::Peers { peers } => peers,
            ControlResponse::Error { .. } => {
                println!("this node runs without a network (--no-net): nothing to wait for");
                return Ok(());
            }
            other => bail!("unexpected answer from node: {other:?}"),
        };
        let st = expect_answer!(
            call(data_dir, &ControlRequest::Status)?,
            ControlResponse::Status(s) => s
        );
        let online: Vec<_> = peers.iter().filter(|p| p.online).collect();
        let compared = online.iter().all(|p| p.vector_known);
        let behind: u64 = online.iter().map(|p| p.missing_here).sum();
        let state = if online.is_empty() {
            "waiting for a member to come online".to_string()
        } else if !compared {
            "comparing version lists".to_string()
        } else {
            format!(
                "{} version(s) pending, {behind} record(s) to fetch",
                st.versions_pending
            )
        };
        if let Some(b) = &bar {
            total = total.max(st.bytes_missing);
            b.set_length(total);
            b.set_position(total - st.bytes_missing);
            b.set_message(state.clone());
        }
        if !online.is_empty() && compared && behind == 0 && st.versions_pending == 0 {
            if let Some(b) = &bar {
                b.finish_and_clear();
            }
            println!(
                "in sync with {} online member(s) after {:.1} s",
                online.len(),
                started.elapsed().as_secs_f64()
            );
            return Ok(());
        }
        if timeout > 0 && started.elapsed() > Duration::from_secs(timeout) {
            if let Some(b) = &bar {
                b.abandon();
            }
            bail!(
                "not in sync after {timeout} s: {state} ({} to go)",
                human_bytes(st.bytes_missing)
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// `distribox man`: distribox(1) on stdout, or it and every command's page into `out`.
fn write_man(out: Option<&Path>) -> Result<()> {
    let mut cmd = <Cli as clap::CommandFactory>::command().disable_help_subcommand(true);
    cmd.build();
    let Some(dir) = out else {
        std::io::stdout().write_all(&man_page(&cmd)?)?;
        return Ok(());
    };
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut written = Vec::new();
    let mut pages = vec![("distribox.1".to_string(), man_page(&cmd)?)];
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let man = clap_mangen::Man::new(sub.clone());
        let mut page = Vec::new();
        man.render(&mut page)?;
        let page = verbatim_after_help(&String::from_utf8_lossy(&page), ".SH EXAMPLES");
        pages.push((man.get_filename(), page.into_bytes()));
    }
    for (name, page) in pages {
        let path = dir.join(&name);
        std::fs::write(&path, page).with_context(|| format!("cannot write {}", path.display()))?;
        written.push(name);
    }
    println!(
        "wrote {} page(s) into {}: {}",
        written.len(),
        dir.display(),
        written.join(" ")
    );
    Ok(())
}

/// distribox(1): the global options, then every command with its synopsis,
/// description and options (one installed page documents the whole command line),
/// then the examples.
fn man_page(cmd: &clap::Command) -> std::io::Result<Vec<u8>> {
    use clap_mangen::Man;
    type Part = fn(&Man, &mut dyn Write) -> std::io::Result<()>;
    // Each rendered part starts with the same preamble (the apostrophe string);
    // the title keeps it, the others drop it.
    let render = |man: &Man, parts: &[Part]| -> std::io::Result<String> {
        let mut text = String::new();
        for part in parts {
            let mut buf = Vec::new();
            part(man, &mut buf)?;
            for line in String::from_utf8_lossy(&buf).lines() {
                if !line.starts_with(".ie \\n(.g .ds Aq") && !line.starts_with(".el .ds Aq") {
                    text.push_str(line);
                    text.push('\n');
                }
            }
        }
        Ok(text)
    };
    let top = Man::new(cmd.clone());
    let mut page = Vec::new();
    top.render_title(&mut page)?;
    let mut text = String::from_utf8_lossy(&page).into_owned();
    text += &render(
        &top,
        &[
            Man::render_name_section,
            Man::render_synopsis_section,
            Man::render_description_section,
            Man::render_options_section,
        ],
    )?;
    text += ".SH COMMANDS\n";
    let mut see_also = Vec::new();
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        // --data-dir, --help and --version are under OPTIONS already.
        let mut sub = sub.clone();
        for id in ["data_dir", "help", "version"] {
            if sub.get_arguments().any(|a| a.get_id() == id) {
                sub = sub.mut_arg(id, |a| a.hide(true));
            }
        }
        let name = sub.get_bin_name().unwrap_or(sub.get_name()).to_string();
        text += &format!(".SS \"{name}\"\n");
        let mut parts: Vec<Part> = vec![Man::render_synopsis_section, Man::render_description_section];
        if sub.get_arguments().any(|a| !a.is_hide_set()) {
            parts.push(Man::render_options_section);
        }
        if sub.get_after_help().is_some() {
            parts.push(Man::render_extra_section);
        }
        let part = verbatim_after_help(&render(&Man::new(sub.clone()), &parts)?, ".PP");
        for line in part.lines() {
            match line {
                ".SH SYNOPSIS" | ".SH DESCRIPTION" => text += ".PP\n",
                ".SH OPTIONS" => text += ".PP\nOptions:\n",
                l => {
                    text += l;
                    text.push('\n');
                }
            }
        }
        see_also.push(format!("\\fB{}\\fR(1)", name.replace(' ', "\\-")));
    }
    text += &verbatim_after_help(
        &render(&top, &[Man::render_extra_section, Man::render_version_section])?,
        ".SH EXAMPLES",
    );
    text += ".SH \"SEE ALSO\"\n";
    text += &see_also.join(", ");
    text += " (one page per command: \\fBdistribox man \\-\\-out\\fR \\fIDIR\\fR);\n";
    text += "\\fBfusermount3\\fR(1), \\fBmount\\fR(8), \\fBsystemctl\\fR(1).\n";
    Ok(text.into_bytes())
}

/// clap_mangen renders the after-help text (laid out by hand, in columns) as filled
/// text under `.SH EXTRA`: give it `heading` and keep its lines as they are.
fn verbatim_after_help(roff: &str, heading: &str) -> String {
    let mut out = String::new();
    let mut verbatim = false;
    for line in roff.lines() {
        if verbatim && (line.starts_with(".SH") || line.starts_with(".SS")) {
            out += ".fi\n";
            verbatim = false;
        }
        if line == ".SH EXTRA" {
            out += heading;
            out += "\n.nf\n";
            verbatim = true;
        } else {
            out += line;
            out.push('\n');
        }
    }
    if verbatim {
        out += ".fi\n";
    }
    out
}

fn print_done(r: ControlResponse) -> Result<()> {
    match r {
        ControlResponse::Done { message } => {
            println!("{message}");
            Ok(())
        }
        ControlResponse::Error { message } => bail!("{message}"),
        other => bail!("unexpected answer from node: {other:?}"),
    }
}

fn print_versions(lines: &[crate::daemon::control::VersionNode]) {
    let nodes: Vec<crate::graph::GraphNode> = lines
        .iter()
        .map(|l| crate::graph::GraphNode {
            id: &l.version,
            parents: &l.parents,
        })
        .collect();
    let rows = crate::graph::lanes(&nodes);
    let width = rows.iter().map(|(_, r)| r.len()).max().unwrap_or(2);
    for ((before, row), l) in rows.into_iter().zip(lines) {
        for b in before {
            println!("{b}");
        }
        let mut marks = Vec::new();
        if l.shown {
            marks.push("shown");
        } else if l.conflict {
            marks.push("conflict");
        } else if l.head {
            marks.push("head");
        }
        let marks = if marks.is_empty() {
            String::new()
        } else {
            format!("  ({})", marks.join(", "))
        };
        println!(
            "{row:<width$}{:<13} {:<21} {:<9} {:>10}  {}{marks}",
            l.name, l.time, l.author, l.size, l.kind
        );
    }
}

fn cli_args_for_child(allow_other: bool, idle_commit_ms: u64, threads: usize, busy_poll_us: u64) -> Vec<String> {
    let mut a = vec![
        format!("--idle-commit-ms={idle_commit_ms}"),
        format!("--threads={threads}"),
        format!("--busy-poll-us={busy_poll_us}"),
    ];
    if allow_other {
        a.push("--allow-other".into());
    }
    a
}

fn call(data_dir: &DataDir, req: &ControlRequest) -> Result<ControlResponse> {
    Ok(control::call(&data_dir.control_socket(), &data_dir.root, req)?)
}

/// Turns a path the user typed (absolute, or relative to the cwd, inside the mount)
/// into a path relative to the folder root.
fn folder_relative(data_dir: &DataDir, path: &Path) -> Result<String> {
    let info = expect_answer!(
        call(data_dir, &ControlRequest::Status)?,
        ControlResponse::Status(s) => s
    );
    let mount = PathBuf::from(info.mountpoint.ok_or_else(|| anyhow!("the node is not mounted"))?);
    let abs = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()?.join(path)
    };
    // Canonicalise the parent only: the file itself may be gone or be a `@vN` name.
    let parent = abs
        .parent()
        .map(|p| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf()));
    let abs = match (parent, abs.file_name()) {
        (Some(p), Some(n)) => p.join(n),
        _ => abs,
    };
    if abs == mount {
        return Ok(String::new());
    }
    let rel = abs.strip_prefix(&mount).map_err(|_| {
        anyhow!(
            "{} is not inside the mounted folder {}",
            path.display(),
            mount.display()
        )
    })?;
    Ok(rel.to_string_lossy().into_owned())
}

/// Tells a waiting `distribox mount` that the node is up; `log` is the node's
/// stderr in that case (`node.log`), kept bounded from then on.
struct StdoutReady {
    log: PathBuf,
}

impl Ready for StdoutReady {
    fn ready(&mut self, mountpoint: &Path) {
        if std::env::var_os(READY_ENV).is_some() {
            daemon::logfile::keep_bounded(self.log.clone());
            // The parent reads this line; afterwards nobody reads our stdout, so
            // point it at /dev/null rather than risk EPIPE later.
            let mut out = std::io::stdout();
            let _ = writeln!(out, "READY {}", mountpoint.display());
            let _ = out.flush();
            if let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") {
                use std::os::fd::AsRawFd;
                // SAFETY: dup2 onto fd 1 with a valid fd we own.
                unsafe { libc::dup2(null.as_raw_fd(), 1) };
            }
        }
    }
}

fn mount_foreground(cfg: MountConfig) -> Result<()> {
    let log = cfg.data_dir.log_path();
    report_failure(daemon::run_mount(cfg, &mut StdoutReady { log }))
}

/// A node that fails to start tells a waiting `distribox mount` why (its `ERROR`
/// line), besides returning the error.
fn report_failure(r: std::result::Result<(), daemon::DaemonError>) -> Result<()> {
    if let Err(e) = &r {
        if std::env::var_os(READY_ENV).is_some() {
            println!("ERROR {e}");
        }
    }
    Ok(r?)
}

/// Validates what can be validated here (so errors need no log file to read), then
/// re-executes this binary as a detached node and waits until it reports the mount
/// live.
fn mount_background(cfg: MountConfig, extra: &[String]) -> Result<()> {
    let mountpoint = daemon::check_mountpoint(&cfg.mountpoint)?;
    if cfg.data_dir.is_initialised() {
        cfg.data_dir.check()?;
        if let Some(pid) = cfg.data_dir.running_pid() {
            bail!(crate::store::DataDirError::Locked {
                path: cfg.data_dir.root.clone(),
                pid: Some(pid)
            });
        }
    } else {
        cfg.data_dir.init(None)?;
    }
    let log_path = cfg.data_dir.log_path();
    if let Err(e) = daemon::logfile::rotate_if_large(&log_path, daemon::logfile::ROTATE_AT) {
        eprintln!("warning: cannot rotate {}: {e}", log_path.display());
    }
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("cannot open log file {}", log_path.display()))?;
    let exe = std::env::current_exe().context("cannot find the distribox binary to start the node")?;
    let mut cmd = Command::new(exe);
    cmd.arg("--data-dir")
        .arg(&cfg.data_dir.root)
        .arg("mount")
        .arg(&mountpoint)
        .arg("--foreground")
        .args(extra);
    cmd.env(READY_ENV, "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log);
    use std::os::unix::process::CommandExt;
    // SAFETY: setsid is async-signal-safe; it detaches the node from our terminal so
    // closing the shell does not kill it.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = cmd.spawn().context("cannot start the node process")?;
    let stdout = child.stdout.take().expect("stdout is piped");
    let mut line = String::new();
    let started = Instant::now();
    BufReader::new(stdout).read_line(&mut line)?;
    if let Some(rest) = line.strip_prefix("READY ") {
        println!(
            "mounted {} (node pid {}, data dir {})",
            rest.trim(),
            child.id(),
            cfg.data_dir.root.display()
        );
        return Ok(());
    }
    if let Some(msg) = line.strip_prefix("ERROR ") {
        let _ = child.wait();
        bail!("{}", msg.trim());
    }
    let status = child.wait()?;
    bail!(
        "the node exited during startup ({status}, after {:?}); see {}",
        started.elapsed(),
        log_path.display()
    )
}

fn unmount(data_dir: &DataDir, dir: &Path) -> Result<()> {
    let canon = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    if !daemon::is_mounted(&canon) {
        bail!("{} is not mounted", dir.display());
    }
    // Which node serves it, so we can wait for it to finish writing.
    let pid = match call(data_dir, &ControlRequest::Status) {
        Ok(ControlResponse::Status(s)) if s.mountpoint.as_deref() == Some(&*canon.to_string_lossy()) => Some(s.pid),
        _ => None,
    };
    let mut ok = false;
    for tool in ["fusermount3", "fusermount", "umount"] {
        let st = Command::new(tool).arg("-u").arg(&canon).stderr(Stdio::piped()).output();
        let st = match (tool, st) {
            ("umount", _) => Command::new("umount").arg(&canon).status().map(|s| s.success()),
            (_, Ok(o)) => {
                if !o.status.success() {
                    let msg = String::from_utf8_lossy(&o.stderr);
                    if msg.contains("busy") {
                        bail!(
                            "{} is busy: a program still has a file open there (close it and retry)",
                            dir.display()
                        );
                    }
                }
                Ok(o.status.success())
            }
            (_, Err(e)) => Err(e),
        };
        if let Ok(true) = st {
            ok = true;
            break;
        }
    }
    if !ok {
        bail!("could not unmount {} (fusermount3 -u failed)", dir.display());
    }
    if let Some(pid) = pid {
        let deadline = Instant::now() + Duration::from_secs(120);
        // SAFETY: kill with signal 0 only checks that the process exists.
        while unsafe { libc::kill(pid as i32, 0) } == 0 {
            if Instant::now() > deadline {
                bail!(
                    "unmounted {}, but node pid {pid} is still running after 120 s",
                    dir.display()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    println!("unmounted {}", dir.display());
    Ok(())
}
