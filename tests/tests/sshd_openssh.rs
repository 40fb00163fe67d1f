//! envd-sshd against the real OpenSSH client: auth, exec, PTY, environment, agent forwarding,
//! every kind of forwarding, sftp and scp, keepalive, limits, VS Code's handshake, ssh-audit.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::UnixListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use envd_e2e::sshd::{free_port, keygen, stderr, stdout, Sshd};
use envd_e2e::Then;

#[test]
fn exec_keeps_streams_apart_and_passes_the_exit_status() {
    let s = Sshd::start(&[]);
    let o = s.run(&[], "echo out; echo err >&2; exit 7");
    assert_eq!(o.status.code(), Some(7), "{}{}", stderr(&o), s.log());
    assert_eq!(stdout(&o), "out\n");
    assert_eq!(stderr(&o), "err\n");
}

#[test]
fn stdin_and_eof_travel_both_ways() {
    let s = Sshd::start(&[]);
    let mut child = s
        .ssh()
        .args(["127.0.0.1", "wc -c; echo done"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let data = vec![b'x'; 300_000];
    child.stdin.take().unwrap().write_all(&data).unwrap();
    let o = child.wait_with_output().unwrap();
    assert_eq!(
        stdout(&o).split_whitespace().collect::<Vec<_>>(),
        ["300000", "done"]
    );
}

#[test]
fn exit_signal_is_reported() {
    let s = Sshd::start(&[]);
    let o = s.run(&["-v"], "kill -TERM $$");
    // OpenSSH exits 255 when the remote command was killed by a signal, and says which.
    assert_eq!(o.status.code(), Some(255), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("signal TERM") || stderr(&o).contains("exit-signal"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn client_signal_requests_are_delivered() {
    // OpenSSH's client cannot send a `signal` channel request, so asyncssh (PyPI) does it.
    let python = envd_e2e::workspace_root().join("target/peers/venv/bin/python");
    assert!(
        python.exists(),
        "{} missing: scripts/test installs asyncssh",
        python.display()
    );
    let s = Sshd::start(&[]);
    let script = r#"
import asyncio, asyncssh, sys
async def main(port, key, pty):
    async with asyncssh.connect("127.0.0.1", port=port, client_keys=[key], known_hosts=None) as c:
        p = await c.create_process(
            "trap 'echo got-usr1; exit 4' USR1; echo ready; while true; do sleep 0.05; done",
            term_type="xterm" if pty else None)
        await p.stdout.readline()
        p.send_signal("USR1")
        out = await p.stdout.read()
        await p.wait()
        print(out.strip(), p.exit_status)
asyncio.run(main(int(sys.argv[1]), sys.argv[2], sys.argv[3] == "pty"))
"#;
    for mode in ["pipes", "pty"] {
        let o = Command::new(&python)
            .args(["-c", script, &s.port.to_string()])
            .arg(s.path("id_ed25519"))
            .arg(mode)
            .output()
            .unwrap();
        // With a PTY the foreground `sleep` gets the signal too and bash reports it first.
        assert!(
            stdout(&o).trim().ends_with("got-usr1 4"),
            "{mode}: {}{}",
            stdout(&o),
            stderr(&o)
        );
    }
}

#[test]
fn only_public_keys_are_accepted() {
    let s = Sshd::start(&[]);
    // No password or keyboard-interactive is offered.
    let o = Command::new("ssh")
        .args(s.opts())
        .args([
            "-p",
            &s.port.to_string(),
            "-o",
            "PreferredAuthentications=password,keyboard-interactive",
        ])
        .args(["127.0.0.1", "true"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_ne!(o.status.code(), Some(0));
    assert!(
        stderr(&o).contains("Permission denied (publickey)"),
        "{}",
        stderr(&o)
    );
    // An unknown key is refused.
    keygen(&s.path("stranger"), "ed25519");
    let o = s.run(
        &[
            "-o",
            &format!("IdentityFile={}", s.path("stranger").display()),
        ],
        "true",
    );
    // IdentityFile adds to the list; use a config with only the stranger key.
    let o2 = Command::new("ssh")
        .args([
            "-F",
            "/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "IdentitiesOnly=yes",
        ])
        .arg("-o")
        .arg(format!(
            "UserKnownHostsFile={}",
            s.path("known_hosts").display()
        ))
        .args(["-o", "StrictHostKeyChecking=accept-new", "-i"])
        .arg(s.path("stranger"))
        .args(["-p", &s.port.to_string(), "127.0.0.1", "true"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(0),
        "the authorized key is still tried first"
    );
    assert_eq!(o2.status.code(), Some(255), "{}", stderr(&o2));
    assert!(stderr(&o2).contains("Permission denied"), "{}", stderr(&o2));
}

#[test]
fn rsa_and_ecdsa_keys_work() {
    let s = Sshd::start(&[]);
    for kind in ["rsa", "ecdsa"] {
        let key = s.path(&format!("id_{kind}"));
        keygen(&key, kind);
        let mut auth = std::fs::OpenOptions::new()
            .append(true)
            .open(s.path("authorized_keys"))
            .unwrap();
        auth.write_all(&std::fs::read(key.with_extension("pub")).unwrap())
            .unwrap();
        let o = Command::new("ssh")
            .args([
                "-F",
                "/dev/null",
                "-o",
                "BatchMode=yes",
                "-o",
                "IdentitiesOnly=yes",
            ])
            .arg("-o")
            .arg(format!(
                "UserKnownHostsFile={}",
                s.path("known_hosts").display()
            ))
            .args(["-o", "StrictHostKeyChecking=accept-new", "-i"])
            .arg(&key)
            .args(["-p", &s.port.to_string(), "127.0.0.1", "echo ok"])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert_eq!(stdout(&o), "ok\n", "{kind}: {}", stderr(&o));
    }
}

#[test]
fn pty_session_has_a_controlling_terminal_modes_and_term() {
    let s = Sshd::start(&[]);
    let out = s.in_terminal(
        Some(        "tty; echo TERM=$TERM; echo SSH_TTY=$SSH_TTY; stty size; stty -a | tr ' ;' '\\n\\n' | grep -x iutf8; ps -o tty= -p $$; echo END"),
        &[],
    );
    let lines: Vec<&str> = out.lines().map(str::trim).collect();
    assert!(lines.iter().any(|l| l.starts_with("/dev/pts/")), "{out}");
    assert!(out.contains("TERM=") && !out.contains("TERM=\n"), "{out}");
    assert!(out.contains("SSH_TTY=/dev/pts/"), "{out}");
    assert!(lines.contains(&"24 80"), "initial size not applied: {out}");
    assert!(lines.contains(&"iutf8"), "IUTF8 not applied: {out}");
    assert!(
        lines.iter().any(|l| l.starts_with("pts/")),
        "no controlling tty: {out}"
    );
}

#[test]
fn window_change_reaches_the_shell_as_sigwinch() {
    let s = Sshd::start(&[]);
    let out = s.in_terminal(
        Some(        "trap 'echo WINCH $(stty size); exit 0' WINCH; echo READY; for i in $(seq 50); do sleep 0.1; done"),
        &[("READY", Then::Resize(33, 111))],
    );
    assert!(out.contains("WINCH 33 111"), "{out}");
}

#[test]
fn environment_is_what_openssh_sets() {
    let s = Sshd::start(&[]);
    let o = s
        .ssh()
        .env("LANG", "C.UTF-8")
        .env("LC_TIME", "C")
        .args(["-o", "SendEnv=LANG LC_*", "127.0.0.1", "env"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let env = stdout(&o);
    let user = nix::unistd::User::from_uid(nix::unistd::getuid())
        .unwrap()
        .unwrap();
    for needed in [
        format!("USER={}", user.name),
        format!("LOGNAME={}", user.name),
        format!("HOME={}", user.dir.display()),
        "SHELL=".into(),
        "PATH=".into(),
        "SSH_CONNECTION=127.0.0.1 ".into(),
        "SSH_CLIENT=127.0.0.1 ".into(),
        "LANG=C.UTF-8".into(),
        "LC_TIME=C".into(),
    ] {
        assert!(
            env.lines().any(|l| l.starts_with(&needed)),
            "missing {needed}:\n{env}"
        );
    }
    assert!(!env.contains("SSH_TTY="), "no PTY, so no SSH_TTY:\n{env}");
}

fn start_agent(s: &Sshd) -> (String, u32) {
    let sock = s.path("agent.sock");
    let o = Command::new("ssh-agent")
        .arg("-a")
        .arg(&sock)
        .output()
        .unwrap();
    let text = stdout(&o);
    let pid: u32 = text
        .split("SSH_AGENT_PID=")
        .nth(1)
        .and_then(|r| r.split(';').next())
        .and_then(|p| p.parse().ok())
        .expect("ssh-agent pid");
    let add = Command::new("ssh-add")
        .arg(s.path("id_ed25519"))
        .env("SSH_AUTH_SOCK", &sock)
        .output()
        .unwrap();
    assert!(add.status.success(), "{}", stderr(&add));
    (sock.to_string_lossy().into_owned(), pid)
}

#[test]
fn agent_forwarding_in_exec_sessions_and_a_nested_login_signs_through_it() {
    let s = Sshd::start(&[]);
    let (sock, agent_pid) = start_agent(&s);
    let fingerprint = stdout(
        &Command::new("ssh-keygen")
            .arg("-lf")
            .arg(s.path("id_ed25519.pub"))
            .output()
            .unwrap(),
    );
    let fp = fingerprint.split_whitespace().nth(1).unwrap().to_string();
    // Non-PTY exec, as VS Code uses it.
    let o = s
        .ssh()
        .env("SSH_AUTH_SOCK", &sock)
        .args([
            "-A",
            "127.0.0.1",
            "ssh-add -l; stat -c %a $(dirname $SSH_AUTH_SOCK); echo $SSH_AUTH_SOCK",
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let out = stdout(&o);
    assert!(
        out.contains(&fp),
        "agent keys not listed: {out}{}",
        stderr(&o)
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[lines.len() - 2], "700", "{out}");
    let remote_sock = lines[lines.len() - 1].to_string();
    // The socket is removed at disconnect.
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::path::Path::new(&remote_sock).exists() {
        assert!(
            Instant::now() < deadline,
            "{remote_sock} still exists after disconnect"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // From inside, an ssh login that can only authenticate through the forwarded agent.
    let inner = format!(
        "ssh -F /dev/null -o BatchMode=yes -o UserKnownHostsFile={} -o StrictHostKeyChecking=accept-new -p {} 127.0.0.1 echo signed-through-agent",
        s.path("known_hosts").display(),
        s.port
    );
    let o = s
        .ssh()
        .env("SSH_AUTH_SOCK", &sock)
        .args(["-A", "127.0.0.1", &inner])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(stdout(&o), "signed-through-agent\n", "{}", stderr(&o));
    // Without -A there is no agent.
    let o = s.run(&[], "echo [$SSH_AUTH_SOCK]");
    assert_eq!(stdout(&o), "[]\n");
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(agent_pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
}

/// A one-shot TCP echo server prefixing replies, returning its port.
fn echo_server(prefix: &'static str) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in l.incoming().flatten() {
            let mut c = conn;
            std::thread::spawn(move || {
                let mut buf = [0u8; 1024];
                while let Ok(n) = c.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    let _ = c.write_all(prefix.as_bytes());
                    let _ = c.write_all(&buf[..n]);
                }
            });
        }
    });
    port
}

fn wait_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "port {port} never opened");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sends `msg` and reads the echo server's reply (its prefix, then `msg`), which may come in
/// more than one segment: reading stops once the reply ends with `msg` or the peer closes.
fn roundtrip(port: u16, msg: &str) -> String {
    let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c.write_all(msg.as_bytes()).unwrap();
    let mut reply = Vec::new();
    let mut buf = [0u8; 256];
    while !reply.ends_with(msg.as_bytes()) {
        match c.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => reply.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&reply).into_owned()
}

struct Bg(std::process::Child);
impl Drop for Bg {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn local_dynamic_and_unix_socket_forwarding() {
    let s = Sshd::start(&[]);
    let target = echo_server("tcp:");
    let sock_path = s.path("app.sock");
    let ul = UnixListener::bind(&sock_path).unwrap();
    std::thread::spawn(move || {
        for c in ul.incoming().flatten() {
            let mut c = c;
            let mut buf = [0u8; 64];
            if let Ok(n) = c.read(&mut buf) {
                let _ = c.write_all(b"unix:");
                let _ = c.write_all(&buf[..n]);
            }
        }
    });
    let (lport, dport, uport) = (free_port(), free_port(), free_port());
    let _fwd = Bg(s
        .ssh()
        .args(["-N", "-o", "ExitOnForwardFailure=yes"])
        .args(["-L", &format!("{lport}:127.0.0.1:{target}")])
        .args(["-D", &format!("127.0.0.1:{dport}")])
        .args(["-L", &format!("{uport}:{}", sock_path.display())])
        .arg("127.0.0.1")
        .stdin(Stdio::null())
        .spawn()
        .unwrap());
    wait_port(lport);
    wait_port(dport);
    wait_port(uport);
    assert_eq!(roundtrip(lport, "hello"), "tcp:hello");
    assert_eq!(roundtrip(uport, "hi"), "unix:hi");
    // SOCKS5 through -D by hand: no auth, CONNECT 127.0.0.1:target.
    let mut c = TcpStream::connect(("127.0.0.1", dport)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c.write_all(&[5, 1, 0]).unwrap();
    let mut r = [0u8; 2];
    c.read_exact(&mut r).unwrap();
    assert_eq!(r, [5, 0]);
    let mut req = vec![5, 1, 0, 1, 127, 0, 0, 1];
    req.extend_from_slice(&target.to_be_bytes());
    c.write_all(&req).unwrap();
    let mut rep = [0u8; 10];
    c.read_exact(&mut rep).unwrap();
    assert_eq!(rep[1], 0, "SOCKS connect refused");
    c.write_all(b"socks").unwrap();
    // The echo server may answer in more than one segment: read the whole reply.
    let mut buf = [0u8; 9];
    c.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"tcp:socks");
    // A connection to a closed port is refused, not hung.
    let closed = free_port();
    let mut c = TcpStream::connect(("127.0.0.1", dport)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c.write_all(&[5, 1, 0]).unwrap();
    c.read_exact(&mut r).unwrap();
    let mut req = vec![5, 1, 0, 1, 127, 0, 0, 1];
    req.extend_from_slice(&closed.to_be_bytes());
    c.write_all(&req).unwrap();
    // Either the connection closes or a reply's status byte (the second) says failure; silence
    // until the read timeout is a hang, and fails.
    let mut rep = [0u8; 2];
    let refused = match c.read_exact(&mut rep) {
        Ok(()) => rep[1] != 0,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset
            ) =>
        {
            true
        }
        Err(e) => panic!("no answer within 5 s to a connect to a closed port (a hang): {e}"),
    };
    assert!(refused, "connect to a closed port reported success");
}

#[test]
fn remote_forwarding_binds_loopback_and_cancels() {
    let s = Sshd::start(&[]);
    let target = echo_server("back:");
    let rport = free_port();
    let fwd = Bg(s
        .ssh()
        .args(["-N", "-o", "ExitOnForwardFailure=yes"])
        .args(["-R", &format!("{rport}:127.0.0.1:{target}")])
        .arg("127.0.0.1")
        .stdin(Stdio::null())
        .spawn()
        .unwrap());
    wait_port(rport);
    assert_eq!(roundtrip(rport, "ping"), "back:ping");
    // Bound on loopback only (the default without --gateway-ports).
    let ss = Command::new("ss").args(["-ltnH"]).output().unwrap();
    let line = stdout(&ss)
        .lines()
        .find(|l| l.contains(&format!(":{rport} ")))
        .unwrap_or_default()
        .to_string();
    assert!(
        line.contains(&format!("127.0.0.1:{rport}")),
        "bound as: {line}"
    );
    // Closing the client cancels the listener.
    drop(fwd);
    let deadline = Instant::now() + Duration::from_secs(5);
    while TcpStream::connect(("127.0.0.1", rport)).is_ok() {
        assert!(
            Instant::now() < deadline,
            "remote listener survived the client"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The address `ss` shows a listener on `port` bound to.
fn bound_address(port: u16) -> String {
    let ss = Command::new("ss").args(["-ltnH"]).output().unwrap();
    stdout(&ss)
        .lines()
        .filter_map(|l| l.split_whitespace().nth(3))
        .find(|a| a.ends_with(&format!(":{port}")))
        .unwrap_or_default()
        .to_string()
}

/// `ssh -N -R spec` to the server, exiting when the forward fails.
fn remote_forward(s: &Sshd, spec: &str) -> std::process::Child {
    s.ssh()
        .args(["-N", "-o", "ExitOnForwardFailure=yes", "-R", spec])
        .arg("127.0.0.1")
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn gateway_ports_decides_whether_remote_forwards_leave_loopback() {
    let target = echo_server("gw:");
    // Without --gateway-ports: a wildcard request binds loopback, another address is refused.
    let s = Sshd::start(&[]);
    let port = free_port();
    let _fwd = Bg(remote_forward(
        &s,
        &format!("0.0.0.0:{port}:127.0.0.1:{target}"),
    ));
    wait_port(port);
    assert_eq!(bound_address(port), format!("127.0.0.1:{port}"));
    assert_eq!(roundtrip(port, "a"), "gw:a");
    let refused = remote_forward(&s, &format!("192.0.2.1:{}:127.0.0.1:{target}", free_port()));
    let o = wait_with_deadline(refused, Duration::from_secs(10));
    assert!(
        !o.status.success() && stderr(&o).contains("remote port forwarding failed"),
        "a non-loopback bind without --gateway-ports: {}",
        stderr(&o)
    );
    // With it: the wildcard is every address.
    let s = Sshd::start(&["--gateway-ports"]);
    let port = free_port();
    let _fwd = Bg(remote_forward(
        &s,
        &format!("0.0.0.0:{port}:127.0.0.1:{target}"),
    ));
    wait_port(port);
    assert_eq!(bound_address(port), format!("0.0.0.0:{port}"));
    assert_eq!(roundtrip(port, "b"), "gw:b");
}

/// Waits for a child, killing it (and failing) after `limit`.
fn wait_with_deadline(mut child: std::process::Child, limit: Duration) -> std::process::Output {
    let deadline = Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

#[test]
fn a_streamlocal_remote_forward_relays_a_unix_socket_to_the_client() {
    let s = Sshd::start(&[]);
    let target = echo_server("unix:");
    let sock = s.path("remote.sock");
    let _fwd = Bg(remote_forward(
        &s,
        &format!("{}:127.0.0.1:{target}", sock.display()),
    ));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sock.exists() {
        assert!(
            Instant::now() < deadline,
            "the server never made {}",
            sock.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut c = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c.write_all(b"hello").unwrap();
    let mut reply = Vec::new();
    let mut buf = [0u8; 64];
    while !reply.ends_with(b"hello") {
        match c.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => reply.extend_from_slice(&buf[..n]),
            Err(e) => panic!("no answer through the forwarded socket within 5 s: {e}"),
        }
    }
    assert_eq!(String::from_utf8_lossy(&reply), "unix:hello");
}

#[test]
fn sftp_and_scp_move_files_intact() {
    let s = Sshd::start(&[]);
    let src = s.path("payload.bin");
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&src, &data).unwrap();
    let up = s.path("up.bin");
    let down = s.path("down.bin");
    let batch = format!(
        "put {} {}\nmkdir {}\nls {}\nrename {} {}\nget {} {}\nrm {}\nrmdir {}\n",
        src.display(),
        up.display(),
        s.path("newdir").display(),
        s.dir.path().display(),
        up.display(),
        s.path("moved.bin").display(),
        s.path("moved.bin").display(),
        down.display(),
        s.path("moved.bin").display(),
        s.path("newdir").display(),
    );
    let mut child = Command::new("sftp")
        .args(s.opts())
        .args(["-P", &s.port.to_string(), "-b", "-", "127.0.0.1"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(batch.as_bytes())
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    assert_eq!(std::fs::read(&down).unwrap(), data);
    assert!(!s.path("moved.bin").exists() && !s.path("newdir").exists());
    // scp (OpenSSH 9 speaks sftp underneath) both ways, exit status 0.
    let o = Command::new("scp")
        .args(s.opts())
        .args(["-P", &s.port.to_string()])
        .arg(&src)
        .arg(format!("127.0.0.1:{}", s.path("scp.bin").display()))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(std::fs::read(s.path("scp.bin")).unwrap(), data);
}

#[test]
fn keepalives_are_answered() {
    let s = Sshd::start(&[]);
    let o = s.run(
        &["-o", "ServerAliveInterval=1", "-o", "ServerAliveCountMax=1"],
        "sleep 3; echo alive",
    );
    assert_eq!(stdout(&o), "alive\n", "{}", stderr(&o));
}

#[test]
fn silent_and_excess_unauthenticated_connections_are_dropped() {
    let s = Sshd::start(&["--login-grace-time", "1", "--max-startups", "2"]);
    // Let the readiness probe's connection finish so it holds no slot.
    std::thread::sleep(Duration::from_millis(300));
    let a = TcpStream::connect(("127.0.0.1", s.port)).unwrap();
    let b = TcpStream::connect(("127.0.0.1", s.port)).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    // The third waits for a slot (queued, not dropped): no version line while both are held.
    let mut c = TcpStream::connect(("127.0.0.1", s.port)).unwrap();
    c.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut buf = [0u8; 256];
    // Waiting means the read times out: data, a close or a reset are all wrong here.
    let early = c.read(&mut buf);
    assert!(
        early.as_ref().is_err_and(|e| matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        )),
        "third connection not left waiting while the slots were full: {early:?}"
    );
    // All three are dropped after their grace time: each read ends in a close or a reset, never
    // in the 5 s timeout.
    let t = Instant::now();
    for mut conn in [a, b, c] {
        conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut all = Vec::new();
        let end = conn.read_to_end(&mut all);
        let timed_out = end.as_ref().is_err_and(|e| {
            matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            )
        });
        assert!(!timed_out, "a connection was not dropped: {end:?}");
    }
    assert!(
        t.elapsed() < Duration::from_secs(4),
        "grace time not enforced: {:?}",
        t.elapsed()
    );
    // A real client still gets in afterwards.
    assert_eq!(stdout(&s.run(&[], "echo in")), "in\n");
}

#[test]
fn host_key_survives_restart_and_sigterm_stops_cleanly() {
    let mut s = Sshd::start(&[]);
    assert_eq!(stdout(&s.run(&[], "echo one")), "one\n");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(s.path("host_key")).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    assert_eq!(s.stop(), Some(0), "{}", s.log());
    s.launch();
    // StrictHostKeyChecking=yes now: the pinned key must match.
    let o = s.run(&["-o", "StrictHostKeyChecking=yes"], "echo two");
    assert_eq!(stdout(&o), "two\n", "{}", stderr(&o));
}

#[test]
fn vscode_remote_ssh_handshake() {
    // What Remote-SSH does: `ssh -T -D PORT host bash` with its install script on stdin; the
    // script starts a server on 127.0.0.1:0 and prints the port; then HTTP goes through SOCKS.
    let s = Sshd::start(&[]);
    let socks = free_port();
    let script = r#"
cd "$(mktemp -d)"
echo 'vscode-server-ok' > index.html
python3 -c '
import http.server, socketserver, sys
s = socketserver.TCPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
print("listeningOn==" + str(s.server_address[1]) + "==", flush=True)
s.serve_forever()
' 2>/dev/null &
wait
"#;
    let mut child = s
        .ssh()
        .args([
            "-T",
            "-D",
            &format!("127.0.0.1:{socks}"),
            "127.0.0.1",
            "bash",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .as_mut()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    // Read in a thread of its own, so the deadline holds even if the script prints nothing.
    let mut out = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 256];
        while let Ok(n) = out.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let mut seen = String::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    let port: u16 = loop {
        if let Some(p) = seen
            .split("listeningOn==")
            .nth(1)
            .and_then(|r| r.split("==").next())
        {
            if let Ok(p) = p.parse() {
                break p;
            }
        }
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(bytes) => seen.push_str(&String::from_utf8_lossy(&bytes)),
            Err(_) => panic!("no listeningOn== port within 20 s; the script printed: {seen}"),
        }
    };
    wait_port(socks);
    let curl = Command::new("curl")
        .args([
            "-s",
            "--max-time",
            "10",
            "--socks5-hostname",
            &format!("127.0.0.1:{socks}"),
        ])
        .arg(format!("http://127.0.0.1:{port}/index.html"))
        .output()
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(stdout(&curl), "vscode-server-ok\n", "{}", stderr(&curl));
}

#[test]
fn ssh_audit_reports_no_failure() {
    let audit = envd_e2e::workspace_root().join("target/peers/venv/bin/ssh-audit");
    assert!(
        audit.exists(),
        "{} missing: scripts/test installs ssh-audit from PyPI",
        audit.display()
    );
    let s = Sshd::start(&[]);
    let o = Command::new(&audit)
        .args(["-n", "-p", &s.port.to_string(), "127.0.0.1"])
        .output()
        .unwrap();
    let text = stdout(&o);
    // Exit codes: 0 good, 2 warnings, 3 failures.
    assert_ne!(
        o.status.code(),
        Some(3),
        "ssh-audit found failures:\n{text}"
    );
    assert!(
        matches!(o.status.code(), Some(0) | Some(2)),
        "ssh-audit did not run:\n{text}{}",
        stderr(&o)
    );
    assert!(!text.contains("(fail)"), "{text}");
}
