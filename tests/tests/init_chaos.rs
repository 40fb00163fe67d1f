//! The standing chaos run (issue 11): envd-init as PID 1 of its own PID namespace with five
//! services (one forking orphans, one crash-looping, one ignoring SIGTERM, one with a health
//! check, one writing about 10 MB/s to a stdout that is read only now and then), and
//! `ENVD_CHAOS_SECS` (default 60) seconds of random SIGKILLs to services and their children.
//! Afterwards: no zombie, every `always` service running again, envd-init's memory flat, the API
//! answered within 100 ms throughout, and SIGTERM stops everything within the wait + 100 ms.

use std::io::Read;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use envd_e2e::init::{scratch, write_service, Init};
use envd_supervisor::proto::supervisor::ListServicesRequest;

/// xorshift64: a reproducible sequence of kills for a printed seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn services(dir: &std::path::Path) {
    let always = "[restart]\nstrategy = \"always\"\n";
    write_service(
        dir,
        "orphans",
        &format!("command = \"/bin/sh -c 'while :; do (sleep 0.3 &); (sleep 0.2 &); sleep 0.05; done'\"\n{always}"),
    );
    write_service(
        dir,
        "crashloop",
        &format!("command = \"/bin/sh -c 'sleep 0.5; exit 3'\"\n{always}"),
    );
    write_service(
        dir,
        "stubborn",
        &format!("command = \"/bin/sh -c 'trap \\\"\\\" TERM; while :; do sleep 0.5; done'\"\n{always}[termination]\nwait = \"1s\"\n"),
    );
    write_service(
        dir,
        "checked",
        &format!("command = \"/bin/sh -c 'while :; do sleep 1; done'\"\n{always}[healthiness]\ncommand = \"/bin/true\"\ninterval = \"250ms\"\n"),
    );
    // About 10 MB/s: 1 MB every 0.1 s.
    write_service(
        dir,
        "spew",
        &format!("command = \"/bin/sh -c 'while :; do head -c 1000000 /dev/zero | tr \\\\\\\\0 x; echo; sleep 0.1; done'\"\n{always}"),
    );
}

/// Reads envd-init's stdout for 3 s out of every 10: a log driver that stalls most of the time.
fn intermittent_reader(read: OwnedFd, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut f = std::fs::File::from(read);
        let mut buf = vec![0u8; 1 << 16];
        let start = Instant::now();
        while !stop.load(Ordering::SeqCst) {
            if start.elapsed().as_secs() % 10 < 7 {
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
            let _ = f.read(&mut buf);
        }
        // Drain for the shutdown.
        while f.read(&mut buf).map(|n| n > 0).unwrap_or(false) {}
    })
}

/// Calls ListServices every 50 ms until `stop`; returns the slowest answer and the count.
fn probe_api(
    socket: std::path::PathBuf,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<(Duration, usize)> {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let mut c = envd_supervisor::client::connect_unix(&socket)
                .await
                .expect("API");
            let (mut worst, mut calls) = (Duration::ZERO, 0);
            while !stop.load(Ordering::SeqCst) {
                let t = Instant::now();
                let r = tokio::time::timeout(
                    Duration::from_secs(5),
                    c.supervisor.list_services(ListServicesRequest {}),
                )
                .await;
                assert!(matches!(r, Ok(Ok(_))), "the API did not answer: {r:?}");
                worst = worst.max(t.elapsed());
                calls += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            (worst, calls)
        })
    })
}

#[test]
fn sixty_seconds_of_random_kills() {
    let secs: u64 = std::env::var("ENVD_CHAOS_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let dir = scratch();
    services(dir.path());
    let (mut init, stdout) = Init::start_with_stdout_pipe(dir, &[], &[]);
    let stop = Arc::new(AtomicBool::new(false));
    let reader = intermittent_reader(stdout, stop.clone());
    init.wait_for("every service started", Duration::from_secs(20), |s| {
        s.len() == 5 && s.iter().filter(|x| x["state"] == "running").count() >= 4
    });
    // Memory is measured after a warm-up: log tails full, every code path run once.
    std::thread::sleep(Duration::from_secs(5));
    let rss_start = init.rss_kb();
    let probe = probe_api(init.path().join("api.sock"), stop.clone());

    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("chaos seed {seed}, {secs} s");
    let mut rng = Rng(seed);
    let end = Instant::now() + Duration::from_secs(secs);
    let mut kills = 0;
    while Instant::now() < end {
        let victims = init.descendants();
        if !victims.is_empty() {
            let pid = victims[(rng.next() % victims.len() as u64) as usize];
            if nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            )
            .is_ok()
            {
                kills += 1;
            }
        }
        std::thread::sleep(Duration::from_millis(50 + rng.next() % 150));
    }

    // Every `always` service comes back (the backoff is at most 10 s) and no zombie is left.
    init.wait_for(
        "the always services running again",
        Duration::from_secs(25),
        |s| {
            s.iter()
                .filter(|x| x["name"] != "crashloop")
                .all(|x| x["state"] == "running")
        },
    );
    let zombies = (0..20)
        .map(|_| {
            std::thread::sleep(Duration::from_millis(50));
            init.zombies()
        })
        .min()
        .unwrap();
    assert_eq!(zombies, 0, "zombies left:\n{}", init.log());
    let crashloop = init.service("crashloop");
    assert!(crashloop["restarts"].as_u64().unwrap() > 3, "{crashloop}");
    let rss_end = init.rss_kb();
    stop.store(true, Ordering::SeqCst);
    let (worst, calls) = probe.join().unwrap();
    eprintln!(
        "{kills} kills; API: {calls} calls, slowest {worst:?}; RSS {rss_start} kB -> {rss_end} kB"
    );
    assert!(
        worst < Duration::from_millis(100),
        "an API call took {worst:?}"
    );
    assert!(
        rss_end <= rss_start + 1024,
        "envd-init grew from {rss_start} kB to {rss_end} kB"
    );

    // The stop: stubborn ignores SIGTERM, so its 1 s wait bounds the whole stop.
    let t = Instant::now();
    init.signal(nix::sys::signal::Signal::SIGTERM);
    let code = init.wait_exit(Duration::from_secs(10));
    let took = t.elapsed();
    reader.join().unwrap();
    eprintln!("SIGTERM to exit: {took:?}");
    assert_eq!(code, 0, "{}", init.log());
    assert!(
        took < Duration::from_millis(1100),
        "stop took {took:?}:\n{}",
        init.log()
    );
}
