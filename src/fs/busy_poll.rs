//! Busy-polling /dev/fuse while a program sends many small requests in a row
//! (creating files, `cp -r`, `tar x`), so each next request is picked up by a
//! running thread instead of one that must first be woken.
//!
//! Why: every FUSE request is a hand-off between the calling program and a FUSE
//! thread. On a VM an idle vCPU halts, and waking a thread on it costs more than
//! the work of a small request (0.1–0.2 ms on the benchmark host). With one thread
//! polling, 10,000 file creates took 25–33% less time (docs/performance.md, "Busy
//! polling of /dev/fuse").
//!
//! How: fuser's request loop retries a read that fails with EAGAIN, so turning
//! `O_NONBLOCK` on for one FUSE thread's descriptor makes that thread spin. The
//! other threads read cloned descriptors (`Config::clone_fd`) and keep blocking,
//! so at most one thread spins (the kernel still wakes one of them per request;
//! it finds the request taken and sleeps again). A governor thread turns polling
//! on once `START_STREAK` requests came in quick succession and off again after a
//! window with fewer than `MIN_PER_WINDOW`: an idle mount costs no CPU, a busy one
//! at most one CPU for the spinning thread.
//!
//! Crowding: a spinning thread only pays when a CPU would otherwise sit idle. When
//! threads wait for a CPU (the kernel's pressure stall information,
//! /proc/pressure/cpu, says how long), spinning takes CPU from them: a build
//! running beside the mount, or on a 2-CPU host a member fetching what this node
//! writes (36–73% of the time some thread waited there, against 8–32% while one
//! node alone created files with polling on). So polling stops once threads waited
//! more than `MAX_STALL_PERCENT` of a `CROWD_CHECK` interval, and may not start
//! again for a hold-off that doubles while the crowding lasts.

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle, Thread};
use std::time::{Duration, Instant};

/// Polling starts once `START_STREAK` requests in a row each arrived this soon
/// after the one before: a program working through many small requests, not a
/// `stat` that is a lookup and a getattr.
const START_GAP: Duration = Duration::from_micros(250);
const START_STREAK: u32 = 8;
/// Polling goes on while each window brings at least this many requests: a
/// sequential writer's 1 MiB requests (one every millisecond or two) keep the
/// FUSE thread busy on their own, and a spinning thread would only take CPU from
/// the threads storing the data.
const MIN_PER_WINDOW: u64 = 2;

/// How often, while polling, the governor reads how long threads waited for a
/// CPU, and the share of that interval above which polling gives way.
const CROWD_CHECK: Duration = Duration::from_millis(100);
const MAX_STALL_PERCENT: u64 = 40;
/// How long polling may not start after it gave way: doubled each time it gives
/// way again within `HOLD_OFF_MAX * 2` with no interval judged uncrowded between
/// (so a long crowded spell costs a polling CPU ~1/20 of the time), back to the
/// shortest after an uncrowded one.
const HOLD_OFF_MIN: Duration = Duration::from_millis(100);
const HOLD_OFF_MAX: Duration = Duration::from_secs(2);

/// The longest window `--busy-poll-us` accepts: beyond it two requests a window
/// (a `stat` now and then) would keep a CPU spinning.
pub const MAX_WINDOW: Duration = Duration::from_millis(100);

/// What FUSE callbacks touch: a request count and whether polling is on.
pub struct Activity {
    /// `START_GAP` in ns (tests set it higher, see `BusyPoll::start`).
    start_gap_ns: u64,
    epoch: Instant,
    /// When the last request arrived, in ns since `epoch`.
    last: AtomicU64,
    /// Requests in a row that came within `START_GAP` of the one before.
    streak: AtomicU32,
    requests: AtomicU64,
    /// Polling periods so far, their total length and how many ended because
    /// threads waited for a CPU (for the log at unmount).
    periods: AtomicU64,
    polled_us: AtomicU64,
    crowded: AtomicU64,
    /// Polling may not start before this, in ns since `epoch` (see `HOLD_OFF_MIN`).
    hold_until: AtomicU64,
    /// The length of the latest hold-off, in µs.
    hold_off_us: AtomicU64,
    polling: AtomicBool,
    stop: AtomicBool,
    governor: Thread,
}

impl Activity {
    /// Now, in the unit of `last` and `hold_until`: ns since `epoch`.
    fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    /// Called at the start of every FUSE request but READ: counts it, and turns
    /// polling on at the end of a streak of quick requests.
    pub fn note(&self) {
        let now = self.now_ns();
        let gap = now.saturating_sub(self.last.swap(now, Ordering::Relaxed));
        // SeqCst here and in `govern`: the count must be visible before polling is
        // read, and the governor's "off" before its re-check of the count, or a
        // burst could find polling on while the governor finds no new request.
        self.requests.fetch_add(1, Ordering::SeqCst);
        if self.polling.load(Ordering::SeqCst) {
            return;
        }
        if gap >= self.start_gap_ns {
            self.streak.store(0, Ordering::Relaxed);
            return;
        }
        if self.streak.fetch_add(1, Ordering::Relaxed) + 1 >= START_STREAK {
            self.streak.store(0, Ordering::Relaxed);
            if now < self.hold_until.load(Ordering::SeqCst) {
                return;
            }
            if !self.polling.swap(true, Ordering::SeqCst) {
                self.governor.unpark();
            }
        }
    }
}

/// The running governor; stops it (and turns polling off) on drop.
pub struct BusyPoll {
    activity: Arc<Activity>,
    governor: Option<JoinHandle<()>>,
}

impl BusyPoll {
    /// Starts the governor for `dev`, a duplicate of the descriptor one FUSE thread
    /// reads (the flag lives in the open file, which a duplicate shares).
    pub fn start(dev: OwnedFd, window: Duration) -> std::io::Result<Self> {
        let stall = CpuStall::open();
        if stall.is_none() {
            tracing::info!("no /proc/pressure/cpu: busy polling does not give way to threads waiting for a CPU");
        }
        Self::start_with(dev, window, stall)
    }

    /// As `start`, with `stall` telling how long threads waited for a CPU.
    fn start_with(dev: OwnedFd, window: Duration, stall: Option<CpuStall>) -> std::io::Result<Self> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Arc<Activity>>(1);
        let governor = thread::Builder::new().name("fuse-poll".into()).spawn(move || {
            let Ok(activity) = rx.recv() else { return };
            govern(&dev, &activity, window, stall);
            set_nonblocking(&dev, false);
        })?;
        // Test hook: a wider gap makes the start of polling independent of how fast
        // the test machine answers requests.
        let start_gap = std::env::var("DISTRIBOX_TEST_BUSY_POLL_START_GAP_US")
            .ok()
            .and_then(|v| v.parse().ok())
            .map_or(START_GAP, Duration::from_micros);
        let activity = Arc::new(Activity {
            start_gap_ns: start_gap.as_nanos() as u64,
            epoch: Instant::now(),
            last: AtomicU64::new(0),
            streak: AtomicU32::new(0),
            requests: AtomicU64::new(0),
            periods: AtomicU64::new(0),
            polled_us: AtomicU64::new(0),
            crowded: AtomicU64::new(0),
            hold_until: AtomicU64::new(0),
            hold_off_us: AtomicU64::new(0),
            polling: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            governor: governor.thread().clone(),
        });
        // The thread waits for this before anything else; it cannot have exited.
        let _ = tx.send(activity.clone());
        Ok(BusyPoll {
            activity,
            governor: Some(governor),
        })
    }

    pub fn activity(&self) -> Arc<Activity> {
        self.activity.clone()
    }
}

impl Drop for BusyPoll {
    fn drop(&mut self) {
        self.activity.stop.store(true, Ordering::Release);
        if let Some(g) = self.governor.take() {
            g.thread().unpark();
            let _ = g.join();
        }
        let a = &self.activity;
        tracing::info!(
            requests = a.requests.load(Ordering::Relaxed),
            periods = a.periods.load(Ordering::Relaxed),
            polled_ms = a.polled_us.load(Ordering::Relaxed) / 1000,
            crowded = a.crowded.load(Ordering::Relaxed),
            "busy-polled /dev/fuse"
        );
    }
}

/// How long, in all, threads have waited for a CPU: the `some` line of
/// /proc/pressure/cpu (or a stand-in in tests).
struct CpuStall {
    read: Box<dyn FnMut() -> Option<u64> + Send>,
}

impl CpuStall {
    /// None where the kernel has no pressure stall information (CONFIG_PSI off, or
    /// `psi=0`).
    fn open() -> Option<Self> {
        let file = std::fs::File::open("/proc/pressure/cpu").ok()?;
        let mut stall = CpuStall {
            read: Box::new(move || {
                use std::os::unix::fs::FileExt as _;
                let mut buf = [0u8; 256];
                let n = file.read_at(&mut buf, 0).ok()?;
                parse_some_total(std::str::from_utf8(&buf[..n]).ok()?)
            }),
        };
        stall.total_us().map(|_| stall)
    }

    fn total_us(&mut self) -> Option<u64> {
        (self.read)()
    }
}

/// `total=` of the `some` line: µs during which at least one thread was runnable
/// but waiting for a CPU.
fn parse_some_total(text: &str) -> Option<u64> {
    let some = text.lines().find(|l| l.starts_with("some "))?;
    some.split_whitespace()
        .find_map(|f| f.strip_prefix("total="))?
        .parse()
        .ok()
}

/// What the last `CROWD_CHECK` says: threads waited for a CPU more than
/// `MAX_STALL_PERCENT` of it, or not; or the interval is not complete (or there
/// is no `stall` to read).
///
/// An interval may span several polling periods and the gaps between them: with
/// the CPUs crowded, the caller's requests come unevenly and one period seldom
/// lasts a whole interval.
struct Crowding {
    stall: Option<CpuStall>,
    /// Start of the open interval and the stall total then (None before the
    /// first period, or after a failed read).
    since: Option<(Instant, u64)>,
}

#[derive(Debug, PartialEq, Eq)]
enum Judged {
    Open,
    Uncrowded,
    Crowded,
}

impl Crowding {
    /// At the start of a polling period: a new interval unless the last one is
    /// recent, so that periods in close succession are judged together.
    fn resume(&mut self) {
        if self.since.is_some_and(|(t, _)| t.elapsed() < CROWD_CHECK * 2) {
            return;
        }
        self.since = self.read();
    }

    /// The stall total and the moment it was read (the read first, so that a
    /// preemption in between cannot shorten the interval).
    fn read(&mut self) -> Option<(Instant, u64)> {
        let us = self.stall.as_mut().and_then(CpuStall::total_us)?;
        Some((Instant::now(), us))
    }

    fn judge(&mut self) -> Judged {
        let Some((since, stalled)) = self.since else {
            return Judged::Open;
        };
        if since.elapsed() < CROWD_CHECK {
            return Judged::Open;
        }
        self.since = self.read();
        let Some((now, total)) = self.since else {
            return Judged::Open;
        };
        let waited = total.saturating_sub(stalled);
        if waited * 100 > now.duration_since(since).as_micros() as u64 * MAX_STALL_PERCENT {
            Judged::Crowded
        } else {
            Judged::Uncrowded
        }
    }
}

fn govern(dev: &OwnedFd, activity: &Activity, window: Duration, stall: Option<CpuStall>) {
    let mut crowding = Crowding { stall, since: None };
    // The latest hold-off and when it began; None once an interval was uncrowded.
    let mut held: Option<(Duration, Instant)> = None;
    loop {
        // Asleep until a request turns polling on (or a stop).
        while !activity.polling.load(Ordering::SeqCst) {
            if activity.stop.load(Ordering::Acquire) {
                return;
            }
            thread::park();
        }
        if activity.stop.load(Ordering::Acquire) {
            return;
        }
        // A `note` that read the hold-off just before it was set may have turned
        // polling on after the governor turned it off.
        if activity.now_ns() < activity.hold_until.load(Ordering::SeqCst) {
            activity.polling.store(false, Ordering::SeqCst);
            continue;
        }
        set_nonblocking(dev, true);
        let began = Instant::now();
        crowding.resume();
        let mut seen = activity.requests.load(Ordering::SeqCst);
        loop {
            thread::sleep(window);
            if activity.stop.load(Ordering::Acquire) {
                return;
            }
            match crowding.judge() {
                Judged::Open => {}
                Judged::Uncrowded => held = None,
                Judged::Crowded => {
                    let hold_off = match held {
                        Some((h, at)) if at.elapsed() < HOLD_OFF_MAX * 2 => (h * 2).min(HOLD_OFF_MAX),
                        _ => HOLD_OFF_MIN,
                    };
                    held = Some((hold_off, Instant::now()));
                    // Counted, and the hold-off set, before polling goes off: a
                    // streak must not start polling again the moment it is off.
                    activity.crowded.fetch_add(1, Ordering::SeqCst);
                    activity
                        .hold_off_us
                        .store(hold_off.as_micros() as u64, Ordering::SeqCst);
                    let until = activity.now_ns() + hold_off.as_nanos() as u64;
                    activity.hold_until.store(until, Ordering::SeqCst);
                    activity.polling.store(false, Ordering::SeqCst);
                    break;
                }
            }
            let now = activity.requests.load(Ordering::SeqCst);
            if now - seen >= MIN_PER_WINDOW {
                seen = now;
                continue;
            }
            // A quiet window: off, unless requests came quickly meanwhile (their
            // `note` saw polling still on and did not wake us).
            activity.polling.store(false, Ordering::SeqCst);
            if activity.requests.load(Ordering::SeqCst) - seen < MIN_PER_WINDOW {
                break;
            }
            activity.polling.store(true, Ordering::SeqCst);
            seen = activity.requests.load(Ordering::SeqCst);
        }
        // A streak counted while polling was on would start the next period early.
        activity.streak.store(0, Ordering::Relaxed);
        activity.periods.fetch_add(1, Ordering::SeqCst);
        activity
            .polled_us
            .fetch_add(began.elapsed().as_micros() as u64, Ordering::Relaxed);
        set_nonblocking(dev, false);
    }
}

fn set_nonblocking(dev: &OwnedFd, on: bool) {
    let fd = dev.as_raw_fd();
    // SAFETY: fcntl on a descriptor this struct owns; no memory is passed.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags < 0 {
            tracing::warn!(error = %std::io::Error::last_os_error(), "cannot read the flags of /dev/fuse");
            return;
        }
        let want = if on {
            flags | libc::O_NONBLOCK
        } else {
            flags & !libc::O_NONBLOCK
        };
        if want != flags && libc::fcntl(fd, libc::F_SETFL, want) < 0 {
            // Only EBADF is possible here, and the descriptor is ours.
            tracing::warn!(error = %std::io::Error::last_os_error(), on, "cannot change O_NONBLOCK of /dev/fuse");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::{AsRawFd, OwnedFd};

    fn pipe() -> (OwnedFd, OwnedFd) {
        let (r, w) = std::io::pipe().unwrap();
        (OwnedFd::from(r), OwnedFd::from(w))
    }

    /// A governor (window in ms, stall source) flipping the read end of a pipe;
    /// the write end is returned too, to keep the pipe open.
    fn governed(window_ms: u64, stall: Option<CpuStall>) -> (OwnedFd, OwnedFd, BusyPoll, Arc<Activity>) {
        let (r, w) = pipe();
        let poll = BusyPoll::start_with(r.try_clone().unwrap(), Duration::from_millis(window_ms), stall).unwrap();
        let activity = poll.activity();
        (r, w, poll, activity)
    }

    /// Sends requests until `done` holds or 20 s pass: quick ones while polling
    /// is off (a streak starts it once any hold-off is over), spaced ones while it
    /// is on.
    fn feed_until(activity: &Activity, done: impl Fn() -> bool) {
        let feeding = AtomicBool::new(true);
        thread::scope(|s| {
            s.spawn(|| {
                while feeding.load(Ordering::Relaxed) {
                    activity.note();
                    if activity.polling.load(Ordering::SeqCst) {
                        thread::sleep(Duration::from_micros(200));
                    }
                }
            });
            let deadline = Instant::now() + Duration::from_secs(20);
            while !done() && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(1));
            }
            feeding.store(false, Ordering::Relaxed);
        });
    }

    fn nonblocking(fd: &OwnedFd) -> bool {
        // SAFETY: F_GETFL on an open descriptor.
        unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) & libc::O_NONBLOCK != 0 }
    }

    fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting until {what}");
            thread::sleep(Duration::from_millis(1));
        }
    }

    /// Quick requests until one turns polling on (a preemption mid-streak only
    /// restarts the streak).
    fn burst(activity: &Activity) {
        for _ in 0..100_000 {
            activity.note();
            if activity.polling.load(Ordering::SeqCst) {
                return;
            }
        }
        panic!("100,000 requests in a row did not start polling");
    }

    #[test]
    fn a_burst_turns_polling_on_and_a_quiet_window_turns_it_off() {
        // A long window: the flag stays on long enough to be seen on a busy machine.
        let (r, _w, poll, activity) = governed(200, None);
        burst(&activity);
        wait_for("the descriptor is non-blocking", || nonblocking(&r));
        wait_for("the descriptor blocks again", || {
            !nonblocking(&r) && activity.periods.load(Ordering::SeqCst) == 1
        });
        // And on again for the next burst.
        burst(&activity);
        wait_for("the descriptor is non-blocking again", || nonblocking(&r));
        drop(poll);
        assert!(!nonblocking(&r), "a stopped governor left the descriptor non-blocking");
    }

    #[test]
    fn requests_spread_out_never_start_polling() {
        let (r, _w, _poll, activity) = governed(5, None);
        for _ in 0..3 * START_STREAK {
            activity.note();
            thread::sleep(START_GAP * 2);
            assert!(!nonblocking(&r));
        }
        assert_eq!(activity.periods.load(Ordering::Relaxed), 0);
        assert!(!activity.polling.load(Ordering::Relaxed));
    }

    /// A stand-in for /proc/pressure/cpu: threads waited `percent` of the time.
    fn stall(percent: u64) -> Option<CpuStall> {
        let began = Instant::now();
        Some(CpuStall {
            read: Box::new(move || Some(began.elapsed().as_micros() as u64 * percent / 100)),
        })
    }

    #[test]
    fn polling_gives_way_when_threads_wait_for_a_cpu() {
        // A long window: a feeder delayed on a busy machine does not end the period.
        let (r, _w, poll, activity) = governed(50, stall(90));
        burst(&activity);
        // Requests keep coming, so only the crowding can end the period.
        feed_until(&activity, || activity.crowded.load(Ordering::SeqCst) >= 1);
        assert!(
            activity.crowded.load(Ordering::SeqCst) >= 1,
            "no crowded period within 20 s"
        );
        assert!(
            activity.hold_until.load(Ordering::SeqCst) > 0,
            "no hold-off after a crowded period"
        );
        assert_eq!(
            activity.hold_off_us.load(Ordering::SeqCst),
            HOLD_OFF_MIN.as_micros() as u64
        );
        drop(poll);
        assert!(!nonblocking(&r));
    }

    #[test]
    fn short_periods_in_a_row_are_judged_together() {
        let (_r, _w, poll, activity) = governed(1, stall(90));
        // Periods of a few ms, each ended by a quiet window: none lasts a whole
        // `CROWD_CHECK`, but together they do.
        let deadline = Instant::now() + Duration::from_secs(20);
        while activity.crowded.load(Ordering::SeqCst) == 0 {
            assert!(Instant::now() < deadline, "short periods never ended crowded");
            burst(&activity);
            wait_for("the period ends", || !activity.polling.load(Ordering::SeqCst));
        }
        drop(poll);
    }

    #[test]
    fn polling_goes_on_while_threads_rarely_wait_for_a_cpu() {
        let (_r, _w, poll, activity) = governed(50, stall(20));
        burst(&activity);
        // Three crowding checks' worth of steady requests, all in one period.
        let until = Instant::now() + CROWD_CHECK * 3;
        while Instant::now() < until {
            activity.note();
            thread::sleep(Duration::from_micros(200));
        }
        assert_eq!(activity.crowded.load(Ordering::SeqCst), 0);
        assert!(activity.polling.load(Ordering::SeqCst), "the period ended");
        assert_eq!(activity.periods.load(Ordering::SeqCst), 0);
        drop(poll);
    }

    #[test]
    fn the_hold_off_doubles_while_the_crowding_lasts() {
        let (_r, _w, poll, activity) = governed(50, stall(90));
        feed_until(&activity, || activity.crowded.load(Ordering::SeqCst) >= 3);
        assert!(
            activity.crowded.load(Ordering::SeqCst) >= 3,
            "fewer than 3 crowded periods within 20 s"
        );
        // 100, 200, 400 ms (a fourth, 800 ms, if the feeder was not stopped in time).
        let hold_off = activity.hold_off_us.load(Ordering::SeqCst);
        assert!(
            hold_off == 400_000 || hold_off == 800_000,
            "hold-off {hold_off} µs after 3 crowded periods"
        );
        drop(poll);
    }

    #[test]
    fn no_polling_starts_during_a_hold_off() {
        let (r, _w, _poll, activity) = governed(5, None);
        activity.hold_until.store(u64::MAX, Ordering::SeqCst);
        for _ in 0..100 * START_STREAK {
            activity.note();
        }
        assert!(!activity.polling.load(Ordering::SeqCst));
        assert!(!nonblocking(&r));
    }

    #[test]
    fn the_some_line_of_cpu_pressure_is_read() {
        let text = "some avg10=14.60 avg60=18.47 avg300=13.16 total=3758655104\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n";
        assert_eq!(parse_some_total(text), Some(3_758_655_104));
        assert_eq!(parse_some_total("full avg10=0.00 total=5\n"), None);
        assert_eq!(parse_some_total("some avg10=0.00 total=x\n"), None);
    }
}
