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
    distribox::store::raise_open_files_limit();
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
