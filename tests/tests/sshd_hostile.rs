//! envd-sshd against hostile and unlucky clients: silent connections, floods, odd users and keys,
//! restricted keys, input before a command, channel floods, ports past 16 bits, sftp on FIFOs and
//! huge directories. Each test here failed before the fix it guards (issue 11).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use envd_e2e::sshd::{current_user_name, keygen, stderr, stdout, Sshd};

fn banner_only(port: u16) -> TcpStream {
    let mut c = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    c.write_all(b"SSH-2.0-x\r\n").expect("banner");
    c
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn a_client_silent_after_its_version_is_cut_at_the_grace_time() {
    let s = Sshd::start(&["--login-grace-time", "1", "--max-startups", "2"]);
    std::thread::sleep(Duration::from_millis(300));
    let t = Instant::now();
    let quiet: Vec<TcpStream> = (0..2).map(|_| banner_only(s.port)).collect();
    for mut c in quiet {
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut all = Vec::new();
        let _ = c.read_to_end(&mut all);
    }
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "banner-only clients kept their slot for {:?}\n{}",
        t.elapsed(),
        s.log()
    );
    assert_eq!(stdout(&s.run(&[], "echo in")), "in\n");
}

#[test]
fn thirty_two_silent_connections_delay_a_login_by_seconds_but_never_lock_it_out() {
    // Defaults: 60 s grace, 16 slots. Before the fix this login waited out the whole grace.
    let s = Sshd::start(&[]);
    std::thread::sleep(Duration::from_millis(300));
    let _quiet: Vec<TcpStream> = (0..32).map(|_| banner_only(s.port)).collect();
    std::thread::sleep(Duration::from_millis(300));
    let t = Instant::now();
    let o = s.run(&[], "echo in");
    assert_eq!(stdout(&o), "in\n", "{}\n{}", stderr(&o), s.log());
    assert!(
        t.elapsed() < Duration::from_secs(20),
        "login took {:?}",
        t.elapsed()
    );
    eprintln!("login with 32 silent connections open: {:?}", t.elapsed());
}

#[test]
fn a_refused_connection_is_told_why() {
    let s = Sshd::start(&["--max-startups", "1", "--max-waiting", "0"]);
    std::thread::sleep(Duration::from_millis(300));
    let _holder = banner_only(s.port);
    std::thread::sleep(Duration::from_millis(200));
    let o = s.run(&[], "echo in");
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("too many connections waiting to log in"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn only_the_servers_user_may_log_in() {
    let s = Sshd::start(&[]);
    let o = Command::new("ssh")
        .args(s.opts_for("nobody"))
        .args(["-p", &s.port.to_string(), "127.0.0.1", "echo in"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!o.status.success(), "logged in as nobody");
    assert!(stderr(&o).contains("Permission denied"), "{}", stderr(&o));
    assert!(
        s.log().contains("login as \"nobody\" refused"),
        "{}",
        s.log()
    );
    assert_eq!(
        stdout(&s.run(&["-l", &current_user_name()], "echo in")),
        "in\n"
    );
}

#[test]
fn short_rsa_keys_and_sha1_signatures_are_refused() {
    let s = Sshd::start(&[]);
    let weak = s.path("id_rsa1024");
    let out = Command::new("ssh-keygen")
        .args(["-q", "-N", "", "-t", "rsa", "-b", "1024", "-f"])
        .arg(&weak)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let strong = s.path("id_rsa");
    keygen(&strong, "rsa");
    let mut keys = std::fs::read_to_string(s.path("authorized_keys")).unwrap();
    keys += &std::fs::read_to_string(weak.with_extension("pub")).unwrap();
    keys += &std::fs::read_to_string(strong.with_extension("pub")).unwrap();
    std::fs::write(s.path("authorized_keys"), keys).unwrap();
    // One key per attempt, without the ed25519 key the other tests use.
    let only = |key: &std::path::Path, extra: &[&str]| {
        let mut c = Command::new("ssh");
        c.args([
            "-F",
            "/dev/null",
            "-o",
            &format!("UserKnownHostsFile={}", s.path("known_hosts").display()),
            "-o",
            "StrictHostKeyChecking=accept-new",
            "-o",
            "BatchMode=yes",
            "-o",
            "IdentitiesOnly=yes",
            "-i",
        ])
        .arg(key)
        .args(extra)
        .args(["-p", &s.port.to_string(), "127.0.0.1", "echo in"])
        .stdin(Stdio::null());
        c.output().unwrap()
    };
    assert_eq!(stdout(&only(&strong, &[])), "in\n", "rsa-sha2 must work");
    let o = only(&weak, &[]);
    assert!(!o.status.success(), "a 1024-bit RSA key was accepted");
    assert!(s.log().contains("RSA key of 1024 bits"), "{}", s.log());
    let o = only(&strong, &["-o", "PubkeyAcceptedAlgorithms=ssh-rsa"]);
    assert!(
        !o.status.success(),
        "an ssh-rsa (SHA-1) signature was accepted"
    );
    assert!(s.log().contains("SHA-1) signature refused"), "{}", s.log());
}

#[test]
fn a_bad_authorized_keys_line_never_disables_the_others_and_restrict_is_honoured() {
    let s = Sshd::start(&[]);
    let key = std::fs::read_to_string(s.path("authorized_keys")).unwrap();
    std::fs::write(
        s.path("authorized_keys"),
        format!("ssh-ed25519 AAAA%%%broken x\ncert-authority {key}restrict {key}"),
    )
    .unwrap();
    assert_eq!(stdout(&s.run(&[], "echo in")), "in\n", "{}", s.log());
    // restrict: no terminal (OpenSSH's client gives up when -tt cannot get one), no forwarding.
    let o = s.run(&["-tt"], "tty");
    assert!(!o.status.success(), "{}", stdout(&o));
    assert!(
        stderr(&o).contains("PTY allocation request failed"),
        "{}",
        stderr(&o)
    );
    let o = s.run(
        &["-o", "ExitOnForwardFailure=yes", "-R", "0:127.0.0.1:9"],
        "echo up",
    );
    assert!(
        !o.status.success(),
        "remote forwarding allowed: {}",
        stdout(&o)
    );
    assert!(s.log().contains("line not used"), "{}", s.log());
}

#[test]
fn input_before_a_command_is_bounded_and_sessions_per_connection_are_capped() {
    let s = Sshd::start(&[]);
    runtime().block_on(async {
        let h = s.raw_login(&current_user_name()).await;
        let mut ch = h.channel_open_session().await.unwrap();
        // 3 MiB (within the 8 MiB window, so no send waits): past the 2 MiB bound.
        let chunk = vec![b'x'; 32 * 1024];
        let mut sent = 0usize;
        while sent < 3 * 1024 * 1024 {
            match tokio::time::timeout(Duration::from_secs(2), ch.data(&chunk[..])).await {
                Ok(Ok(())) => sent += chunk.len(),
                _ => break,
            }
        }
        let mut told = String::new();
        let closed = tokio::time::timeout(Duration::from_secs(10), async {
            while let Some(msg) = ch.wait().await {
                match msg {
                    russh::ChannelMsg::ExtendedData { data, .. } => {
                        told.push_str(&String::from_utf8_lossy(&data))
                    }
                    russh::ChannelMsg::Close => return true,
                    _ => {}
                }
            }
            true
        })
        .await;
        assert!(closed.is_ok(), "the channel stayed open after {sent} bytes");
        assert!(told.contains("too much input"), "{told:?}");
        let mut open = Vec::new();
        for i in 0..11 {
            match h.channel_open_session().await {
                Ok(c) => open.push(c),
                Err(e) => {
                    assert_eq!(i, 10, "session {i} refused: {e}");
                    break;
                }
            }
        }
        assert_eq!(open.len(), 10, "more than 10 sessions on one connection");
    });
    let rss = std::fs::read_to_string(format!("/proc/{}/status", s.pid()))
        .unwrap()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| {
            l.split_whitespace()
                .nth(1)
                .map(|n| n.parse::<u64>().unwrap())
        })
        .unwrap();
    assert!(rss < 64 * 1024, "the server grew to {rss} kB");
}

#[test]
fn a_forwarding_port_past_16_bits_is_refused_not_truncated() {
    let s = Sshd::start(&[]);
    let target = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = target.local_addr().unwrap().port() as u32;
    runtime().block_on(async {
        let h = s.raw_login(&current_user_name()).await;
        let r = h
            .channel_open_direct_tcpip("127.0.0.1", port + 65536, "127.0.0.1", 1)
            .await;
        assert!(r.is_err(), "port {} reached port {port}", port + 65536);
        assert!(h
            .channel_open_direct_tcpip("127.0.0.1", port, "127.0.0.1", 1)
            .await
            .is_ok());
    });
}

#[test]
fn sftp_on_a_fifo_never_freezes_logins_and_huge_directories_list() {
    let s = Sshd::start(&[]);
    let fifo = s.path("fifo");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let mut stuck = Command::new("sftp")
        .args(s.opts())
        .args(["-P", &s.port.to_string(), "-b", "-", "127.0.0.1"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut batch = stuck.stdin.take().unwrap();
    writeln!(batch, "put /etc/hostname {}", fifo.display()).unwrap();
    drop(batch);
    std::thread::sleep(Duration::from_millis(500));
    let t = Instant::now();
    assert_eq!(stdout(&s.run(&[], "echo in")), "in\n");
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "login took {:?}",
        t.elapsed()
    );
    let _ = stuck.kill();
    let _ = stuck.wait();

    let dir = s.path("many");
    std::fs::create_dir(&dir).unwrap();
    for i in 0..4000 {
        std::fs::write(
            dir.join(format!("file-with-a-longish-name-{i:05}.txt")),
            "x",
        )
        .unwrap();
    }
    let mut ls = Command::new("sftp")
        .args(s.opts())
        .args(["-P", &s.port.to_string(), "-b", "-", "127.0.0.1"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(ls.stdin.take().unwrap(), "ls -1 {}", dir.display()).unwrap();
    let o = ls.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let listed = stdout(&o).lines().filter(|l| l.contains("longish")).count();
    assert_eq!(listed, 4000, "{}", stderr(&o));
    let copy = s.path("copy");
    let o = Command::new("scp")
        .args(s.opts())
        .args(["-r", "-P", &s.port.to_string()])
        .arg(format!("127.0.0.1:{}", dir.display()))
        .arg(&copy)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(std::fs::read_dir(&copy).unwrap().count(), 4000);
}

#[test]
fn two_hundred_concurrent_logins_all_get_in() {
    // The standing load run: --max-startups at its default (16), 200 real OpenSSH clients at
    // once. Every one must succeed (queued for a slot, not dropped) or say why it was refused.
    let s = Sshd::start(&[]);
    let t = Instant::now();
    let children: Vec<_> = (0..200)
        .map(|i| {
            s.ssh()
                .args(["127.0.0.1", &format!("echo login-{i}")])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn ssh")
        })
        .collect();
    let mut failures = Vec::new();
    for (i, c) in children.into_iter().enumerate() {
        let o = c.wait_with_output().unwrap();
        if stdout(&o) != format!("login-{i}\n") {
            failures.push(format!("{i}: {}", stderr(&o)));
        }
    }
    let took = t.elapsed();
    eprintln!("200 concurrent logins: {took:?}, {} failed", failures.len());
    assert!(failures.is_empty(), "{failures:#?}\n{}", s.log());
}

#[test]
fn descriptors_the_server_inherited_never_reach_a_session() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("leaked-descriptor-target");
    std::fs::write(&target, "x").unwrap();
    // Without close-on-exec, as a careless parent leaves it; the server inherits it.
    let leaked = nix::fcntl::open(
        &target,
        nix::fcntl::OFlag::O_RDONLY,
        nix::sys::stat::Mode::empty(),
    )
    .unwrap();
    let s = Sshd::start(&[]);
    let _ = nix::unistd::close(leaked);
    let listing = format!("/proc/{}/fd", s.pid());
    let server_has_it = std::fs::read_dir(&listing)
        .unwrap()
        .flatten()
        .any(|e| std::fs::read_link(e.path()).is_ok_and(|p| p == target));
    assert!(
        server_has_it,
        "the test did not leak the descriptor into the server"
    );
    let o = s.run(&[], "ls -l /proc/$$/fd");
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        !stdout(&o).contains("leaked-descriptor-target"),
        "{}",
        stdout(&o)
    );
}
