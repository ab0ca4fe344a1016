use clap::Parser;
use distribox::cli::{run, Cli};

fn main() {
    // glibc gives every thread that allocates its own malloc arena; 4 MiB chunk
    // batches allocated on network threads and freed elsewhere then grow the heap
    // with the amount served (a node serving a 4 GiB file peaked at 553 MiB RSS,
    // 248 MiB with two arenas). Set before any thread exists.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only tunes the allocator; called before other threads start.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
    raise_open_files_limit();
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    if let Err(err) = run(cli) {
        eprintln!("distribox: {err:#}");
        std::process::exit(1);
    }
}

/// Lifts the soft open-files limit to the hard one (as Go programs such as
/// Syncthing do at start): desktop sessions start processes at 1024, and the store
/// keeps a descriptor per table and blob file it reads (`store::open_files_budget`
/// takes half of what is allowed then).
fn raise_open_files_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write only `lim`; no threads exist yet.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return;
        }
        // An unlimited hard limit is not a valid soft one for descriptors.
        let want = lim.rlim_max.min(1 << 20);
        if lim.rlim_cur < want {
            lim.rlim_cur = want;
            let _ = libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}
