//! envd-init as a real PID 1 (`unshare --fork --pid --mount-proc`), driven from outside like a
//! container runtime would: exit codes, reaping, signals, restarts, health checks, ordering,
//! users, reload, the API.

use std::path::Path;
use std::time::{Duration, Instant};

use envd_e2e::init::{p, scratch, wait_file, write_service, Init};
use nix::sys::signal::Signal;

const T: Duration = Duration::from_secs(15);

fn state(init: &Init, name: &str) -> String {
    init.service(name)["state"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

#[test]
fn main_command_exit_codes_pass_through_0_to_255() {
    // One namespace per code would take long; a loop of main commands in one go is the same
    // code path, so check every code through one envd-init each but in parallel batches.
    let codes: Vec<i32> = (0..=255).collect();
    for batch in codes.chunks(32) {
        let mut inits: Vec<(i32, Init)> = batch
            .iter()
            .map(|&c| {
                let script = format!("exit {c}");
                (c, Init::start(scratch(), &[], &["/bin/sh", "-c", &script]))
            })
            .collect();
        for (code, init) in &mut inits {
            assert_eq!(init.wait_exit(T), *code, "log:\n{}", init.log());
        }
    }
}

#[test]
fn killed_main_command_gives_128_plus_signal() {
    for (sig, name) in [(9, "KILL"), (15, "TERM"), (10, "USR1"), (2, "INT")] {
        let script = format!("kill -{name} $$");
        let mut init = Init::start(scratch(), &[], &["/bin/sh", "-c", &script]);
        assert_eq!(
            init.wait_exit(T),
            128 + sig,
            "signal {name}; log:\n{}",
            init.log()
        );
    }
}

#[test]
fn missing_main_command_is_127() {
    let mut init = Init::start(scratch(), &[], &["/nonexistent/program"]);
    assert_eq!(init.wait_exit(T), 127);
    assert!(init.log().contains("/nonexistent/program"));
}

#[test]
fn thousand_orphans_leave_no_zombie() {
    // Each subshell forks a sleeper and exits at once: the sleepers are orphaned to PID 1.
    // After they all exit, count zombies in the namespace (its own /proc).
    let script = r#"
        i=0
        while [ $i -lt 1000 ]; do ( sleep 0.2 & ) ; i=$((i+1)); done
        sleep 1.5
        z=0
        for s in /proc/[0-9]*/stat; do
            st=$(cut -d' ' -f3 "$s" 2>/dev/null) || continue
            [ "$st" = Z ] && z=$((z+1))
        done
        echo "zombies=$z"
        [ $z -eq 0 ]
    "#;
    let mut init = Init::start(scratch(), &[], &["/bin/sh", "-c", script]);
    let code = init.wait_exit(Duration::from_secs(60));
    assert_eq!(code, 0, "log:\n{}", init.log());
    assert!(init.log().contains("zombies=0"), "{}", init.log());
}

#[test]
fn sigchld_burst_from_a_service_is_fully_reaped() {
    let dir = scratch();
    write_service(
        dir.path(),
        "burst",
        // Each `sh -c 'true &'` exits at once, so its child is orphaned to envd-init: the
        // service's own shell reaps nothing, envd-init's reaper must reap all 300.
        "command = \"/bin/sh -c 'for i in $(seq 300); do sh -c \\\"true &\\\"; done; sleep 100'\"\n",
    );
    let script = r#"
        sleep 1.5
        z=0
        for s in /proc/[0-9]*/stat; do
            st=$(cut -d' ' -f3 "$s" 2>/dev/null) || continue
            [ "$st" = Z ] && z=$((z+1))
        done
        echo "zombies=$z"; [ $z -eq 0 ]
    "#;
    let mut init = Init::start(dir, &[], &["/bin/sh", "-c", script]);
    assert_eq!(init.wait_exit(T), 0, "{}", init.log());
}

#[test]
fn signals_are_forwarded_to_the_main_command() {
    let dir = scratch();
    let mark = p(dir.path(), "got");
    let script = format!(
        "trap 'echo USR1 >> {mark}' USR1; trap 'echo HUP-not-expected >> {mark}' HUP; \
         trap 'echo USR2 >> {mark}; exit 7' USR2; echo ready > {mark}.ready; \
         while true; do sleep 0.05; done"
    );
    let mut init = Init::start(dir, &[], &["/bin/sh", "-c", &script]);
    wait_file(&init.path().join("got.ready"), T);
    init.signal(Signal::SIGUSR1);
    let content = wait_file(&init.path().join("got"), T);
    assert!(content.contains("USR1"));
    // SIGHUP reloads envd-init's services; the main command must not get it. A second USR1
    // after it shows the main command is still handling signals, so a forwarded HUP would have
    // been written by then.
    init.signal(Signal::SIGHUP);
    init.signal(Signal::SIGUSR1);
    let deadline = std::time::Instant::now() + T;
    while std::fs::read_to_string(init.path().join("got"))
        .unwrap()
        .matches("USR1")
        .count()
        < 2
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the second USR1 never arrived"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    init.signal(Signal::SIGUSR2);
    assert_eq!(init.wait_exit(T), 7);
    let content = std::fs::read_to_string(init.path().join("got")).unwrap();
    assert!(
        !content.contains("HUP"),
        "SIGHUP means reload, not forward: {content}"
    );
}

#[test]
fn sigterm_reaches_main_command_and_gives_143() {
    let mut init = Init::start(scratch(), &[], &["/bin/sleep", "100"]);
    init.host_pid();
    // The main command runs once a process of envd-init's is `sleep`.
    let deadline = Instant::now() + T;
    while !init.descendants().iter().any(|pid| {
        std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "sleep")
    }) {
        assert!(Instant::now() < deadline, "the main command never started");
        std::thread::sleep(Duration::from_millis(10));
    }
    let t = Instant::now();
    init.signal(Signal::SIGTERM);
    assert_eq!(init.wait_exit(T), 143);
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "took {:?}",
        t.elapsed()
    );
}

#[test]
fn without_main_command_sigterm_stops_everything_and_exits_0() {
    let dir = scratch();
    write_service(dir.path(), "a", "command = \"sleep 100\"\n");
    write_service(dir.path(), "b", "command = \"sleep 100\"\n");
    let mut init = Init::start(dir, &[], &[]);
    init.wait_for("both running", T, |s| {
        s.iter().all(|x| x["state"] == "running")
    });
    init.signal(Signal::SIGTERM);
    assert_eq!(init.wait_exit(T), 0, "{}", init.log());
}

#[test]
fn failure_strategy_shutdown_makes_exit_nonzero() {
    let dir = scratch();
    write_service(dir.path(), "keep", "command = \"sleep 100\"\n");
    write_service(
        dir.path(),
        "critical",
        "command = \"/bin/sh -c 'sleep 0.3; exit 4'\"\n[failure]\nstrategy = \"shutdown\"\n",
    );
    let mut init = Init::start(dir, &[], &[]);
    assert_eq!(init.wait_exit(T), 1, "{}", init.log());
}

#[test]
fn restart_strategies_and_attempts() {
    let dir = scratch();
    let count = |n: &str| format!("/bin/sh -c 'echo x >> {}; exit 3'", p(dir.path(), n));
    write_service(
        dir.path(),
        "never",
        &format!(
            "command = \"{}\"\n[restart]\nstrategy = \"never\"\n",
            count("never")
        ),
    );
    write_service(
        dir.path(),
        "onfail",
        &format!(
            "command = \"{}\"\n[restart]\nstrategy = \"on-failure\"\nattempts = 3\n",
            count("onfail")
        ),
    );
    write_service(
        dir.path(),
        "always",
        &format!(
            "command = \"/bin/sh -c 'echo x >> {}; exit 0'\"\n[restart]\nstrategy = \"always\"\nattempts = 2\n",
            p(dir.path(), "always")
        ),
    );
    write_service(
        dir.path(),
        "success",
        &format!(
            "command = \"/bin/sh -c 'echo x >> {}; exit 0'\"\n[restart]\nstrategy = \"on-failure\"\nattempts = 5\n",
            p(dir.path(), "success")
        ),
    );
    write_service(
        dir.path(),
        "backoff",
        &format!(
            "command = \"{}\"\n[restart]\nstrategy = \"on-failure\"\nbackoff = \"300ms\"\nattempts = 2\n",
            count("backoff")
        ),
    );
    let init = Init::start(dir, &[], &[]);
    let t = Instant::now();
    init.wait_for("all settled", T, |s| {
        s.iter()
            .all(|x| x["state"] == "failed" || x["state"] == "finished")
    });
    let settled = t.elapsed();
    let runs = |n: &str| {
        std::fs::read_to_string(init.path().join(n))
            .unwrap_or_default()
            .lines()
            .count()
    };
    assert_eq!(runs("never"), 1);
    assert_eq!(runs("onfail"), 4, "1 run + 3 attempts");
    assert_eq!(runs("always"), 3, "1 run + 2 attempts");
    assert_eq!(runs("success"), 1);
    assert_eq!(runs("backoff"), 3);
    // Backoff is linear: 300 ms then 600 ms.
    assert!(
        settled >= Duration::from_millis(900),
        "settled after {settled:?}"
    );
    assert_eq!(init.service("onfail")["restarts"], 3);
    assert_eq!(state(&init, "success"), "finished");
    assert_eq!(state(&init, "never"), "failed");
}

#[test]
fn restart_with_zero_backoff_is_fast() {
    let dir = scratch();
    let stamp = p(dir.path(), "stamps");
    write_service(
        dir.path(),
        "crash",
        &format!(
            "command = \"/bin/sh -c 'date +%s%N >> {stamp}; exit 1'\"\n[restart]\nstrategy = \"on-failure\"\nbackoff = \"0s\"\nattempts = 10\n"
        ),
    );
    let init = Init::start(dir, &[], &[]);
    init.wait_for("crash loop done", T, |s| s[0]["state"] == "failed");
    let stamps: Vec<u128> = std::fs::read_to_string(&stamp)
        .unwrap()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    assert_eq!(stamps.len(), 11);
    let gaps: Vec<u128> = stamps
        .windows(2)
        .map(|w| (w[1] - w[0]) / 1_000_000)
        .collect();
    let mut sorted = gaps.clone();
    sorted.sort();
    // Each gap includes starting /bin/sh and `date`; the median must stay well under 20 ms.
    assert!(
        sorted[sorted.len() / 2] < 20,
        "restart gaps in ms: {gaps:?}"
    );
}

#[test]
fn without_a_backoff_a_crash_loop_slows_down_instead_of_storming() {
    // Before issue 11 the default backoff was 0: /bin/false ran ~500 times a second.
    let dir = scratch();
    let stamp = p(dir.path(), "stamps");
    write_service(
        dir.path(),
        "storm",
        &format!("command = \"/bin/sh -c 'echo x >> {stamp}; exit 1'\"\n[restart]\nstrategy = \"always\"\n"),
    );
    let _init = Init::start(dir, &[], &[]);
    std::thread::sleep(Duration::from_secs(3));
    let runs = std::fs::read_to_string(&stamp)
        .unwrap_or_default()
        .lines()
        .count();
    // 0.1 + 0.2 + 0.4 + 0.8 + 1.6 s: five or six runs in three seconds.
    assert!((4..=7).contains(&runs), "{runs} runs in 3 s");
}

#[test]
fn a_start_failure_follows_the_restart_policy_and_a_binary_that_appears_is_used() {
    let dir = scratch();
    let late = p(dir.path(), "late.sh");
    let mark = p(dir.path(), "ran");
    write_service(
        dir.path(),
        "late",
        &format!("command = \"{late}\"\n[restart]\nstrategy = \"always\"\n"),
    );
    write_service(
        dir.path(),
        "never",
        "command = \"/no/such/program\"\n[restart]\nstrategy = \"on-failure\"\nattempts = 2\n",
    );
    let init = Init::start(dir, &[], &[]);
    init.wait_for("never gives up after its attempts", T, |s| {
        s.iter()
            .any(|x| x["name"] == "never" && x["state"] == "failed")
    });
    let never = init.service("never");
    assert!(
        never["detail"].as_str().unwrap().contains("cannot start")
            && never["detail"]
                .as_str()
                .unwrap()
                .contains("after 2 restart attempts"),
        "{never}"
    );
    std::fs::write(
        &late,
        format!("#!/bin/sh\necho ok > {mark}\nexec sleep 60\n"),
    )
    .unwrap();
    std::fs::set_permissions(&late, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    assert_eq!(wait_file(std::path::Path::new(&mark), T), "ok\n");
    init.wait_for("late runs", T, |s| {
        s.iter()
            .any(|x| x["name"] == "late" && x["state"] == "running")
    });
}

#[test]
fn a_stdout_nobody_reads_never_stops_reaping_the_api_or_sigterm() {
    // Before issue 11, envd-init wrote service output to its stdout on its only thread: with a
    // full pipe, 226 zombies piled up in 9 s, the API timed out and SIGTERM was ignored.
    let dir = scratch();
    write_service(
        dir.path(),
        "spew",
        "command = \"/bin/sh -c 'while :; do head -c 1000000 /dev/zero | tr \\\\\\\\0 x; done'\"\n",
    );
    write_service(
        dir.path(),
        "orphans",
        "command = \"/bin/sh -c 'while :; do (sleep 0.01 &); sleep 0.01; done'\"\n",
    );
    let (mut init, _unread) = Init::start_with_stdout_pipe(dir, &[], &[]);
    std::thread::sleep(Duration::from_secs(4));
    let t = Instant::now();
    let st = init.ctl(&["status", "--json"]);
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "API took {:?}",
        t.elapsed()
    );
    assert!(
        init.zombies() < 5,
        "{} zombies under envd-init\n{}",
        init.zombies(),
        init.log()
    );
    init.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(init.wait_exit(Duration::from_secs(10)), 0, "{}", init.log());
}

#[test]
fn secrets_and_inherited_descriptors_never_reach_services() {
    let dir = scratch();
    let (env, fds, token) = (
        p(dir.path(), "env"),
        p(dir.path(), "fds"),
        p(dir.path(), "token"),
    );
    write_service(
        dir.path(),
        "probe",
        &format!(
            "command = \"/bin/sh -c 'env > {env}; ls -l /proc/$$/fd > {fds}; echo ${{ENVD_JUPYTER_TOKEN}} > {token}'\"\n[environment]\nkeep-env = true\n"
        ),
    );
    // A descriptor without close-on-exec, as a careless parent leaves it.
    let leaked_path = p(dir.path(), "leaked-descriptor-target");
    std::fs::write(&leaked_path, "x").unwrap();
    let leaked = nix::fcntl::open(
        leaked_path.as_str(),
        nix::fcntl::OFlag::O_RDONLY,
        nix::sys::stat::Mode::empty(),
    )
    .unwrap();
    let init = Init::start_env(
        dir,
        &[],
        &[],
        &[
            ("ENVD_API_TOKEN", "api-secret-0123456789"),
            ("ENVD_JUPYTER_TOKEN", "jupyter-secret"),
        ],
    );
    let _ = nix::unistd::close(leaked);
    // The token still reaches the service file that names it...
    assert_eq!(wait_file(Path::new(&token), T), "jupyter-secret\n");
    // ...but not the environment any service (or sshd, and so any SSH session) inherits.
    let seen = wait_file(Path::new(&env), T);
    for secret in [
        "api-secret-0123456789",
        "jupyter-secret",
        "ENVD_API_TOKEN",
        "ENVD_JUPYTER_TOKEN",
    ] {
        assert!(
            !seen.contains(secret),
            "{secret} leaked into the environment:\n{seen}"
        );
    }
    assert!(seen.contains("PATH="), "{seen}");
    let open = wait_file(Path::new(&fds), T);
    assert!(
        !open.contains("leaked-descriptor-target"),
        "{open}\n{}",
        init.log()
    );
}

#[test]
fn health_checks_of_every_kind() {
    let dir = scratch();
    let port = envd_e2e::free_port();
    let port2 = envd_e2e::free_port();
    let ready = p(dir.path(), "ready");
    write_service(
        dir.path(),
        "http",
        &format!(
            "command = \"python3 -m http.server {port} --bind 127.0.0.1 --directory {}\"\n[healthiness]\nhttp-endpoint = \"http://127.0.0.1:{port}/\"\nmax-failed = 20\n",
            dir.path().display()
        ),
    );
    write_service(
        dir.path(),
        "tcp",
        &format!(
            "command = \"python3 -c 'import socket,time; s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); time.sleep(0.5); s.bind((\\\"127.0.0.1\\\",{port2})); s.listen(); time.sleep(100)'\"\n[healthiness]\ntcp = \"127.0.0.1:{port2}\"\nmax-failed = 20\n"
        ),
    );
    write_service(
        dir.path(),
        "file",
        &format!(
            "command = \"/bin/sh -c 'sleep 0.3; touch {ready}; sleep 100'\"\n[healthiness]\nfile-path = \"{ready}\"\nmax-failed = 20\n"
        ),
    );
    write_service(
        dir.path(),
        "cmd",
        &format!(
            "command = \"sleep 100\"\n[healthiness]\ncommand = \"test -e {}\"\nmax-failed = 1000\ninterval = \"100ms\"\n",
            p(dir.path(), "cmd-ok")
        ),
    );
    let init = Init::start(dir, &[], &[]);
    init.wait_for("http, tcp and file healthy", T, |s| {
        s.iter()
            .filter(|x| x["name"] != "cmd")
            .all(|x| x["health"] == "healthy" && x["state"] == "running")
    });
    assert_eq!(state(&init, "cmd"), "starting");
    std::fs::write(init.path().join("cmd-ok"), "").unwrap();
    init.wait_for("cmd healthy", T, |s| {
        s.iter()
            .any(|x| x["name"] == "cmd" && x["health"] == "healthy")
    });
}

#[test]
fn failing_health_check_restarts_the_service() {
    let dir = scratch();
    write_service(
        dir.path(),
        "sick",
        "command = \"sleep 100\"\n[healthiness]\ncommand = \"false\"\nmax-failed = 2\ninterval = \"100ms\"\n[restart]\nstrategy = \"on-failure\"\nattempts = 1\n",
    );
    let init = Init::start(dir, &[], &[]);
    init.wait_for("sick gave up", T, |s| s[0]["state"] == "failed");
    assert_eq!(init.service("sick")["restarts"], 1);
    let logs = init.ctl(&["logs", "sick"]);
    let text = String::from_utf8_lossy(&logs.stdout);
    assert!(text.contains("health-check failures"), "{text}");
}

#[test]
fn start_after_order_and_reverse_stop_order() {
    let dir = scratch();
    let order = p(dir.path(), "order");
    // Each service records its start, then becomes healthy (its ready file; dependents wait for
    // that, so the markers cannot race), and records its stop when it receives TERM.
    let ready = |name: &str| p(dir.path(), &format!("{name}.ready"));
    let svc = |name: &str, extra: &str| {
        format!(
            "command = \"/bin/sh -c 'echo start-{name} >> {order}; touch {ready}; trap \\\"echo stop-{name} >> {order}; exit 0\\\" TERM; while true; do sleep 0.05; done'\"\n{extra}[healthiness]\nfile-path = \"{ready}\"\n",
            ready = ready(name)
        )
    };
    write_service(dir.path(), "db", &svc("db", ""));
    write_service(dir.path(), "api", &svc("api", "start-after = [\"db\"]\n"));
    write_service(
        dir.path(),
        "web",
        &svc("web", "start-after = [\"api\"]\nstart-delay = \"200ms\"\n"),
    );
    let mut init = Init::start(dir, &[], &[]);
    // Healthy means each has written its start marker.
    init.wait_for("all healthy", T, |s| {
        s.len() == 3
            && s.iter()
                .all(|x| x["state"] == "running" && x["health"] == "healthy")
    });
    init.signal(Signal::SIGTERM);
    assert_eq!(init.wait_exit(T), 0, "{}", init.log());
    let got: Vec<String> = std::fs::read_to_string(&order)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    assert_eq!(
        got,
        [
            "start-db",
            "start-api",
            "start-web",
            "stop-web",
            "stop-api",
            "stop-db"
        ],
        "{}",
        init.log()
    );
}

#[test]
fn stop_of_a_service_ignoring_sigterm_takes_wait_plus_at_most_100ms() {
    let dir = scratch();
    write_service(
        dir.path(),
        "stubborn",
        "command = \"/bin/sh -c 'trap \\\"\\\" TERM; while true; do sleep 0.05; done'\"\n[termination]\nwait = \"1s\"\n",
    );
    write_service(dir.path(), "polite", "command = \"sleep 100\"\n");
    let mut init = Init::start(dir, &[], &[]);
    init.wait_for("running", T, |s| s.iter().all(|x| x["state"] == "running"));
    let t = Instant::now();
    init.signal(Signal::SIGTERM);
    assert_eq!(init.wait_exit(T), 0);
    let took = t.elapsed();
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_millis(1150),
        "stop took {took:?}"
    );
}

#[test]
fn termination_signal_goes_to_the_process_group() {
    let dir = scratch();
    let mark = p(dir.path(), "grandchild");
    // The shell does not forward TERM; only a group signal reaches the grandchild.
    let script = p(dir.path(), "family.sh");
    std::fs::write(
        &script,
        format!(
            "sh -c 'trap \"echo got-term > {mark}; exit 0\" TERM; echo > {mark}.trapped; while true; do sleep 0.05; done' &\nsleep 100\n"
        ),
    )
    .unwrap();
    write_service(
        dir.path(),
        "shell",
        &format!("command = \"/bin/sh {script}\"\n[termination]\nwait = \"2s\"\n"),
    );
    let mut init = Init::start(dir, &[], &[]);
    init.wait_for("running", T, |s| s[0]["state"] == "running");
    wait_file(std::path::Path::new(&format!("{mark}.trapped")), T);
    init.signal(Signal::SIGTERM);
    assert_eq!(init.wait_exit(T), 0);
    assert_eq!(wait_file(std::path::Path::new(&mark), T).trim(), "got-term");
}

#[test]
fn die_if_failed_and_kill_dependents() {
    let dir = scratch();
    write_service(
        dir.path(),
        "base",
        "command = \"/bin/sh -c 'sleep 0.5; exit 9'\"\n[failure]\nstrategy = \"kill-dependents\"\n",
    );
    write_service(
        dir.path(),
        "dependent",
        "command = \"sleep 100\"\nstart-after = [\"base\"]\n",
    );
    write_service(
        dir.path(),
        "watcher",
        "command = \"sleep 100\"\n[termination]\ndie-if-failed = [\"base\"]\n",
    );
    write_service(dir.path(), "bystander", "command = \"sleep 100\"\n");
    let init = Init::start(dir, &[], &[]);
    init.wait_for("base failed and watcher stopped", T, |s| {
        let st = |n: &str| s.iter().find(|x| x["name"] == n).unwrap()["state"].clone();
        st("base") == "failed" && st("watcher") == "stopped"
    });
    // `dependent` never started: base never became healthy-running long enough? It did run,
    // so it started and was stopped; either way it must not be running now.
    assert_ne!(state(&init, "dependent"), "running");
    assert_eq!(state(&init, "bystander"), "running");
}

#[test]
fn environment_rules() {
    let dir = scratch();
    let out = p(dir.path(), "env");
    write_service(
        dir.path(),
        "env",
        &format!(
            "command = \"/bin/sh -c 'env > {out}'\"\n[environment]\nkeep-env = false\nre-export = [\"ENVD_TEST_REEXPORT\"]\nadditional = {{ EXTRA = \"yes\" }}\n"
        ),
    );
    write_service(
        dir.path(),
        "keep",
        &format!("command = \"/bin/sh -c 'env > {out}-keep'\"\n[environment]\nkeep-env = true\n"),
    );
    std::env::set_var("ENVD_TEST_REEXPORT", "re");
    std::env::set_var("ENVD_TEST_HIDDEN", "hidden");
    let init = Init::start(dir, &[], &[]);
    let env = wait_file(std::path::Path::new(&out), T);
    let keep = wait_file(std::path::Path::new(&format!("{out}-keep")), T);
    for needed in [
        "USER=",
        "HOME=",
        "PATH=",
        "HOSTNAME=",
        "EXTRA=yes",
        "ENVD_TEST_REEXPORT=re",
    ] {
        assert!(
            env.lines().any(|l| l.starts_with(needed)),
            "missing {needed} in:\n{env}"
        );
    }
    assert!(!env.contains("ENVD_TEST_HIDDEN"), "{env}");
    assert!(keep.contains("ENVD_TEST_HIDDEN=hidden"), "{keep}");
    drop(init);
}

#[test]
fn user_switches_uid_gid_and_groups() {
    let dir = scratch();
    let out = p(dir.path(), "id");
    write_service(
        dir.path(),
        "who",
        &format!("command = \"/bin/sh -c 'id > {out}'\"\nuser = \"nobody\"\n"),
    );
    write_service(
        dir.path(),
        "daemon",
        &format!("command = \"/bin/sh -c 'id > {out}-daemon'\"\nuser = \"daemon\"\n"),
    );
    let init = Init::start(dir, &[], &[]);
    let id = wait_file(std::path::Path::new(&out), T);
    assert!(
        id.starts_with("uid=65534(nobody) gid=65534(nogroup)"),
        "{id}"
    );
    assert!(
        !id.contains("groups=0") && !id.contains("(root)"),
        "kept root's group: {id}"
    );
    let id = wait_file(std::path::Path::new(&format!("{out}-daemon")), T);
    assert!(id.starts_with("uid=1(daemon) gid=1(daemon)"), "{id}");
    drop(init);
}

#[test]
fn sighup_reloads_added_removed_and_changed_services() {
    let dir = scratch();
    write_service(dir.path(), "stay", "command = \"sleep 100\"\n");
    write_service(dir.path(), "goes", "command = \"sleep 100\"\n");
    write_service(dir.path(), "changes", "command = \"sleep 100\"\n");
    let init = Init::start(dir, &[], &[]);
    init.wait_for("running", T, |s| {
        s.len() == 3 && s.iter().all(|x| x["state"] == "running")
    });
    let stay_pid = init.service("stay")["pid"].clone();
    let changes_pid = init.service("changes")["pid"].clone();
    std::fs::remove_file(init.path().join("services/goes.toml")).unwrap();
    write_service(init.path(), "changes", "command = \"sleep 200\"\n");
    write_service(init.path(), "new", "command = \"sleep 100\"\n");
    init.signal(Signal::SIGHUP);
    init.wait_for("reloaded", T, |s| {
        let names: Vec<&str> = s.iter().filter_map(|x| x["name"].as_str()).collect();
        names.len() == 3
            && !names.contains(&"goes")
            && s.iter().all(|x| x["state"] == "running")
            && s.iter()
                .any(|x| x["name"] == "changes" && x["pid"] != changes_pid)
    });
    assert_eq!(
        init.service("stay")["pid"],
        stay_pid,
        "an unchanged service was restarted"
    );
    // A broken file on reload is refused, and everything keeps running.
    write_service(
        init.path(),
        "broken",
        "command = \"sleep 1\"\nbogus-key = 1\n",
    );
    init.signal(Signal::SIGHUP);
    let deadline = Instant::now() + T;
    while !init.log().contains("broken.toml:2") {
        assert!(
            Instant::now() < deadline,
            "the broken file was never reported: {}",
            init.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(init.service("stay")["pid"], stay_pid);
}

#[test]
fn bad_service_files_stop_start_up_with_located_errors() {
    let cases = [
        (
            "command = \"true\"\n[restart]\nstrategy = \"always\"\nbakoff = \"1s\"\n",
            ":4:",
            "bakoff",
        ),
        (
            "command = \"true\"\n[termination]\nsignal = \"SIGFOO\"\n",
            ":3:",
            "unknown signal",
        ),
        (
            "command = \"true\"\nstart-after = [\"nothere\"]\n",
            ":2:",
            "unknown service",
        ),
        (
            "name = \"x\"\n\ncommand = \"sh -c 'unclosed\"\n",
            ":3:",
            "unbalanced",
        ),
    ];
    for (text, line, what) in cases {
        let dir = scratch();
        write_service(dir.path(), "bad", text);
        let mut init = Init::start(dir, &[], &[]);
        assert_eq!(init.wait_exit(T), 2);
        let log = init.log();
        assert!(log.contains(&format!("bad.toml{line}")), "{log}");
        assert!(log.contains(what), "{log}");
    }
    // A cycle.
    let dir = scratch();
    write_service(
        dir.path(),
        "a",
        "command = \"true\"\nstart-after = [\"b\"]\n",
    );
    write_service(
        dir.path(),
        "b",
        "command = \"true\"\nstart-after = [\"a\"]\n",
    );
    let mut init = Init::start(dir, &[], &[]);
    assert_eq!(init.wait_exit(T), 2);
    assert!(init.log().contains("cycle"), "{}", init.log());
}

#[test]
fn logs_go_to_files_and_the_api() {
    let dir = scratch();
    let log = p(dir.path(), "logs/talk.out");
    write_service(
        dir.path(),
        "talk",
        &format!(
            "command = \"/bin/sh -c 'for i in 1 2 3; do echo out-$i; echo err-$i >&2; done; sleep 100'\"\nstdout = \"{log}\"\nstdout-rotate-size = \"1 MB\"\n"
        ),
    );
    let init = Init::start(dir, &[], &[]);
    let content = wait_file(std::path::Path::new(&log), T);
    let deadline = Instant::now() + T;
    let mut text = String::new();
    while Instant::now() < deadline {
        text = String::from_utf8_lossy(&init.ctl(&["logs", "talk", "--tail", "0"]).stdout)
            .into_owned();
        if text.contains("out-3") && text.contains("err-3") {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(content.contains("out-1"), "{content}");
    assert!(text.contains("out-3") && text.contains("err-3"), "{text}");
    let last =
        String::from_utf8_lossy(&init.ctl(&["logs", "talk", "--tail", "1"]).stdout).into_owned();
    assert_eq!(last.lines().count(), 1, "{last}");
}

#[test]
fn ctl_restart_and_stop() {
    let dir = scratch();
    write_service(dir.path(), "svc", "command = \"sleep 100\"\n");
    let init = Init::start(dir, &[], &[]);
    init.wait_for("running", T, |s| s[0]["state"] == "running");
    let pid = init.service("svc")["pid"].clone();
    assert!(init.ctl(&["restart", "svc"]).status.success());
    init.wait_for("restarted", T, |s| {
        s[0]["state"] == "running" && s[0]["pid"] != pid
    });
    assert!(init.ctl(&["stop", "svc"]).status.success());
    init.wait_for("stopped", T, |s| s[0]["state"] == "stopped");
    let out = init.ctl(&["restart", "nope"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no service named"));
}

#[test]
fn horust_example_files_parse() {
    let dir = envd_e2e::workspace_root().join("target/peers/horust-src/example_services");
    assert!(
        dir.is_dir(),
        "{} is missing: scripts/test downloads Horust's crate to get its example services",
        dir.display()
    );
    std::env::set_var("USER", "root");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        envd_supervisor::config::parse_service(&path, &text).unwrap_or_else(|e| panic!("{e}"));
        n += 1;
    }
    assert!(n >= 4, "expected Horust's 4 example files, found {n}");
    // As a set: `backend.toml`-style references resolve to our names.
    envd_supervisor::config::load(&[(dir, false)]).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn failures_in_the_start_period_do_not_count() {
    let dir = scratch();
    let svc = |ready: &str, period: &str| {
        format!(
            "command = \"sleep 100\"\n[healthiness]\nfile-path = \"{ready}\"\nmax-failed = 1\ninterval = \"100ms\"\n{period}[restart]\nstrategy = \"never\"\n"
        )
    };
    let (patient, impatient) = (
        p(dir.path(), "patient.ready"),
        p(dir.path(), "impatient.ready"),
    );
    write_service(
        dir.path(),
        "patient",
        &svc(&patient, "start-period = \"3s\"\n"),
    );
    write_service(dir.path(), "impatient", &svc(&impatient, ""));
    let init = Init::start(dir, &[], &[]);
    // Without a start period, the first failed check counts: unhealthy, stopped, not restarted.
    init.wait_for("impatient failed", T, |s| {
        s.iter()
            .any(|x| x["name"] == "impatient" && x["state"] == "failed")
    });
    // Within its start period, five more intervals of the same failing checks leave the other one
    // starting (an observation window, not a synchronisation).
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(state(&init, "patient"), "starting", "{}", init.log());
    std::fs::write(&patient, "").unwrap();
    init.wait_for("patient healthy", T, |s| {
        s.iter()
            .any(|x| x["name"] == "patient" && x["health"] == "healthy")
    });
    assert_eq!(init.service("patient")["restarts"], 0);
}

#[test]
fn reset_after_gives_a_service_that_ran_long_enough_its_attempts_back() {
    let dir = scratch();
    let svc = |stamps: &str, reset: &str| {
        format!(
            "command = \"/bin/sh -c 'echo x >> {stamps}; sleep 0.8; exit 1'\"\n[restart]\nstrategy = \"on-failure\"\nattempts = 1\nbackoff = \"0s\"\nreset-after = \"{reset}\"\n"
        )
    };
    let (long_lived, short_lived) = (p(dir.path(), "reset.stamps"), p(dir.path(), "kept.stamps"));
    // Each run lasts 0.8 s: longer than 300 ms, so every run earns its attempt back; shorter
    // than 5 s, so the second failure uses up the only attempt.
    write_service(dir.path(), "reset", &svc(&long_lived, "300ms"));
    write_service(dir.path(), "kept", &svc(&short_lived, "5s"));
    let init = Init::start(dir, &[], &[]);
    init.wait_for("kept gave up", T, |s| {
        s.iter()
            .any(|x| x["name"] == "kept" && x["state"] == "failed")
    });
    let runs = |path: &str| {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .count()
    };
    assert_eq!(runs(&short_lived), 2, "{}", init.log());
    let deadline = Instant::now() + T;
    while runs(&long_lived) < 4 {
        assert!(
            Instant::now() < deadline,
            "reset never restarted again: {}",
            init.log()
        );
        assert_ne!(state(&init, "reset"), "failed", "{}", init.log());
        std::thread::sleep(Duration::from_millis(50));
    }
}
