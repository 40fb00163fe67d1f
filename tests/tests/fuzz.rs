//! Fuzzing on stable Rust (issue 11): build files, service files, authorized_keys lines, SSH
//! before and after key exchange, sftp requests and envd-init's gRPC API. Each target runs for
//! `ENVD_FUZZ_SECS` (3 s here; `scripts/fuzz` runs longer) and fails with a replayable seed.
//! Pure parsers must never panic and must locate their errors; the servers must survive every
//! input and still serve a real client afterwards.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use envd_e2e::fuzz::{self, mutate, Rng};
use envd_e2e::init::{scratch, write_service, Init};
use envd_e2e::sshd::{stdout, Sshd};

// ---- build files -----------------------------------------------------------------------------

const CALLS: &[&str] = &[
    "base",
    "shell",
    "run",
    "git_config",
    "install.python",
    "install.conda",
    "install.uv",
    "install.pixi",
    "install.r_lang",
    "install.julia",
    "install.rust",
    "install.go",
    "install.nodejs",
    "install.apt_packages",
    "install.python_packages",
    "install.conda_packages",
    "install.r_packages",
    "install.julia_packages",
    "install.cuda",
    "install.vscode_extensions",
    "install.codex",
    "config.apt_source",
    "config.pip_index",
    "config.cran_mirror",
    "config.julia_pkg_server",
    "config.jupyter",
    "config.vscode_server",
    "config.conda_channel",
    "config.gpu",
    "config.shm_size",
    "config.rstudio_server",
    "config.entrypoint",
    "config.repo",
    "config.owner",
    "io.copy",
    "io.http",
    "runtime.command",
    "runtime.daemon",
    "runtime.init",
    "runtime.expose",
    "runtime.environ",
    "runtime.mount",
    "data.envd",
    "nosuch.call",
    "print",
    "len",
];

const KWARGS: &[&str] = &[
    "image",
    "dev",
    "name",
    "version",
    "commands",
    "mount_host",
    "requirements",
    "local_wheels",
    "env_file",
    "channel",
    "port",
    "count",
    "source",
    "target",
    "url",
    "checksum",
    "filename",
    "envd_path",
    "host_path",
    "volume",
    "env",
    "extra_path",
    "envd_port",
    "host_port",
    "service",
    "listen_addr",
    "python_version",
    "cudnn",
    "uid",
    "gid",
    "size",
    "mode",
    "email",
    "user",
    "editor",
    "url",
    "description",
    "bogus",
];

fn value(rng: &mut Rng, depth: usize) -> String {
    const STRINGS: &[&str] = &[
        "\"\"",
        "\"x\"",
        "\"debian:bookworm\"",
        "\"3.11\"",
        "\"../../etc/passwd\"",
        "\"/abs/path\"",
        "\"~/.ssh\"",
        "\"a b\\\"c'd\"",
        "\"${HOME}\"",
        "\"\\n\"",
        "\"ms-python.python\"",
        "\"x.vsix\"",
        "\"http://127.0.0.1:1/x\"",
        "\"8080\"",
        "\"é\"",
        "\"\\\\\"",
    ];
    match rng.below(if depth > 2 { 6 } else { 9 }) {
        0 | 1 => rng.pick(STRINGS).to_string(),
        2 => [
            "0",
            "-1",
            "1",
            "65536",
            "2147483648",
            "99999999999999999999",
        ][rng.below(6)]
        .into(),
        3 => ["True", "False", "None"][rng.below(3)].into(),
        4 => "1.5".into(),
        5 => format!("\"{}\"", "y".repeat(rng.below(300))),
        6 | 7 => {
            let items: Vec<String> = (0..rng.below(4)).map(|_| value(rng, depth + 1)).collect();
            format!("[{}]", items.join(", "))
        }
        _ => {
            let items: Vec<String> = (0..rng.below(3))
                .map(|_| format!("{}: {}", value(rng, depth + 1), value(rng, depth + 1)))
                .collect();
            format!("{{{}}}", items.join(", "))
        }
    }
}

fn build_file(rng: &mut Rng, seeds: &[Vec<u8>]) -> Vec<u8> {
    if !seeds.is_empty() && rng.one_in(3) {
        let seed = rng.pick(seeds).clone();
        return mutate(rng, &seed);
    }
    let mut text = String::from("def build():\n");
    for _ in 0..=rng.below(6) {
        let mut args: Vec<String> = Vec::new();
        for _ in 0..rng.below(4) {
            if rng.one_in(3) {
                args.push(value(rng, 0));
            } else {
                args.push(format!("{}={}", rng.pick(KWARGS), value(rng, 0)));
            }
        }
        text += &format!("    {}({})\n", rng.pick(CALLS), args.join(", "));
    }
    if rng.one_in(4) {
        text.into_bytes()
    } else {
        mutate(rng, text.as_bytes())
    }
}

fn build_seeds() -> Vec<Vec<u8>> {
    let mut seeds = Vec::new();
    let mut dirs = vec![envd_e2e::workspace_root().join("examples/quickstart")];
    let corpus = envd_e2e::workspace_root().join("../shared/envd-corpus");
    if corpus.is_dir() {
        dirs.push(corpus);
    } else {
        eprintln!("fuzz build_files: ../shared/envd-corpus is absent; generated programs only");
    }
    for d in dirs {
        for e in std::fs::read_dir(d).into_iter().flatten().flatten() {
            if let Ok(b) = std::fs::read(e.path()) {
                seeds.push(b);
            }
        }
    }
    seeds
}

#[test]
fn build_files_give_a_graph_or_a_located_error() {
    let seeds = build_seeds();
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    fuzz::run(
        "build_files",
        |rng| build_file(rng, &seeds),
        |input| {
            std::fs::write(dir.path().join("build.envd"), input).unwrap();
            let entry = envd_builder::lang::Entry::default();
            match envd_builder::lang::evaluate_with_cache(dir.path(), &entry, &cache) {
                Ok(_) => Ok(()),
                Err(e) if e.line > 0 && !e.message.is_empty() => Ok(()),
                // About the file as a whole: it has no `build` function to run.
                Err(e) if e.message.starts_with("no function named") => Ok(()),
                Err(e) => Err(format!("an error without a line: {e}")),
            }
        },
    );
}

// ---- service files ---------------------------------------------------------------------------

const SERVICE_SEEDS: &[&str] = &[
    "command = \"/bin/sleep 10\"\n",
    "name = \"sshd\"\ncommand = \"/usr/local/bin/envd-sshd --listen 0.0.0.0:2222\"\nuser = \"${USER}\"\nworking-directory = \"${HOME}\"\nstart-after = [\"init_0\"]\n\n[environment]\nkeep-env = true\nadditional = { A = \"b\" }\n\n[restart]\nstrategy = \"always\"\nbackoff = \"1s\"\nattempts = 3\n\n[healthiness]\ntcp = \"127.0.0.1:2222\"\ninterval = \"5s\"\n",
    "command = \"/bin/bash -c 'echo $${x}'\"\nstdout = \"/tmp/x.log\"\nstdout-rotate-size = \"1MB\"\n[termination]\nsignal = \"INT\"\nwait = \"2s\"\ndie-if-failed = [\"a\"]\n[failure]\nsuccessful-exit-code = [0, 1]\nstrategy = \"shutdown\"\n[resource-limit]\ncpu = 0.5\nmemory = \"100 MiB\"\npids-max = 10\n",
    "command = \"x\"\n[healthiness]\nhttp-endpoint = \"http://127.0.0.1:1/\"\ncommand = \"true\"\nfile-path = \"/tmp/ok\"\nmax-failed = 2\nstart-period = \"1s\"\n",
];

#[test]
fn service_files_parse_or_give_a_located_error() {
    fuzz::run(
        "service_files",
        |rng| {
            let seed = *rng.pick(SERVICE_SEEDS);
            mutate(rng, seed.as_bytes())
        },
        |input| {
            let text = String::from_utf8_lossy(input);
            let lines = text.lines().count() + 1;
            match envd_supervisor::config::parse_service(Path::new("/s/svc.toml"), &text) {
                Ok(_) => Ok(()),
                Err(e) if e.line <= lines && !e.message.is_empty() => Ok(()),
                Err(e) => Err(format!("line {} of {lines}: {e}", e.line)),
            }
        },
    );
}

// ---- authorized_keys ---------------------------------------------------------------------------

#[test]
fn authorized_keys_lines_never_panic_and_bad_lines_stay_bad() {
    let dir = tempfile::tempdir().unwrap();
    envd_e2e::sshd::keygen(&dir.path().join("k"), "ed25519");
    let key = std::fs::read_to_string(dir.path().join("k.pub")).unwrap();
    let key = key.trim().to_string();
    let seeds = [
        key.clone(),
        format!("restrict,pty {key}"),
        format!("from=\"10.0.0.1,::1\",no-pty {key} comment"),
        format!("command=\"echo \\\"hi\\\"\" {key}"),
        format!("cert-authority {key}"),
        format!("# comment\n\n{key}\n{key}"),
    ];
    let seeds: Vec<&str> = seeds.iter().map(String::as_str).collect();
    fuzz::run(
        "authorized_keys",
        |rng| {
            let seed = *rng.pick(&seeds);
            mutate(rng, seed.as_bytes())
        },
        |input| {
            let text = String::from_utf8_lossy(input);
            let (keys, skipped) = envd_sshd::keys::parse_authorized_keys(&text);
            let lines = text.lines().count();
            if keys.len() + skipped.len() > lines || skipped.iter().any(|s| s.line > lines) {
                return Err(format!(
                    "{} keys and {skipped:?} from {lines} lines",
                    keys.len()
                ));
            }
            Ok(())
        },
    );
}

// ---- SSH -------------------------------------------------------------------------------------

/// After a fuzz run: the server is alive and a real client logs in.
fn still_serves(s: &Sshd, user: &str) {
    assert!(
        std::path::Path::new(&format!("/proc/{}", s.pid())).exists(),
        "envd-sshd died:\n{}",
        s.log()
    );
    let o = s.run(&["-l", user], "echo alive");
    assert_eq!(stdout(&o), "alive\n", "{}", s.log());
}

fn ssh_garbage(rng: &mut Rng) -> Vec<u8> {
    let mut out = if rng.one_in(5) {
        mutate(rng, b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n")
    } else {
        b"SSH-2.0-fuzz\r\n".to_vec()
    };
    for _ in 0..rng.below(4) {
        if rng.one_in(2) {
            // Packet-shaped: length, padding length, a message number, random payload.
            let payload = rng.some_bytes(64);
            let len = if rng.one_in(4) {
                rng.next_u64() as u32
            } else {
                payload.len() as u32 + 6
            };
            out.extend_from_slice(&len.to_be_bytes());
            out.push(4);
            out.push(*rng.pick(&[20u8, 21, 30, 31, 1, 2, 5, 50, 90, 94, 255]));
            out.extend_from_slice(&payload);
            out.extend_from_slice(&[0; 4]);
        } else {
            out.extend(rng.some_bytes(256));
        }
    }
    out
}

#[test]
fn ssh_before_key_exchange_survives_garbage() {
    let s = Sshd::start(&["--login-grace-time", "2"]);
    fuzz::run("ssh_before_kex", ssh_garbage, |input| {
        let mut c = TcpStream::connect(("127.0.0.1", s.port)).map_err(|e| e.to_string())?;
        c.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let _ = c.write_all(input);
        let mut buf = [0u8; 2048];
        let _ = c.read(&mut buf);
        Ok(())
    });
    still_serves(&s, &envd_e2e::sshd::current_user_name());
}

/// One random step on an authenticated connection.
async fn random_step(
    rng: &mut Rng,
    h: &russh::client::Handle<envd_e2e::sshd::RawClient>,
    open: &mut Vec<russh::Channel<russh::client::Msg>>,
) {
    const COMMANDS: &[&str] = &[
        "true",
        "echo hi",
        "cat",
        "exit 3",
        "sleep 0.05",
        "kill -9 $$",
    ];
    let step = rng.below(12);
    if step < 2 || open.is_empty() {
        if let Ok(Ok(c)) =
            tokio::time::timeout(Duration::from_millis(500), h.channel_open_session()).await
        {
            open.push(c);
        }
        return;
    }
    let i = rng.below(open.len());
    let c = &mut open[i];
    let long = "x".repeat(rng.below(5000));
    let r = match step {
        2 => c.exec(rng.one_in(2), *rng.pick(COMMANDS)).await,
        3 => {
            let modes = [(russh::Pty::ECHO, rng.next_u64() as u32)];
            c.request_pty(
                false,
                &long,
                rng.next_u64() as u32,
                rng.next_u64() as u32,
                0,
                0,
                &modes,
            )
            .await
        }
        4 => {
            c.set_env(
                false,
                *rng.pick(&["LANG", "LC_X", "PATH", "", &long]),
                &long,
            )
            .await
        }
        5 => {
            c.window_change(rng.next_u64() as u32, rng.next_u64() as u32, 0, 0)
                .await
        }
        6 => c.signal(russh::Sig::Custom(long.clone())).await,
        7 => {
            c.request_subsystem(rng.one_in(2), *rng.pick(&["sftp", "x", ""]))
                .await
        }
        8 => c.data(&rng.some_bytes(70_000)[..]).await,
        9 => c.eof().await,
        10 => {
            let c = open.swap_remove(i);
            c.close().await
        }
        _ => c.request_shell(false).await,
    };
    let _ = r;
}

#[test]
fn ssh_after_key_exchange_survives_random_requests() {
    // As nobody: the commands and files the fuzzer reaches cannot harm the machine.
    let s = Sshd::start_as(Some((65534, 65534)), &["--shell", "/bin/sh"]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let handle = rt.block_on(s.raw_login("nobody"));
    let handle = Arc::new(handle);
    let mut open = Vec::new();
    fuzz::run(
        "ssh_after_kex",
        |rng| rng.bytes(16),
        |seed| {
            let mut rng = Rng::new(u64::from_le_bytes(seed[..8].try_into().unwrap()));
            rt.block_on(async {
                match rng.below(8) {
                    0 => {
                        let port = rng.next_u64() as u32 % 70_000;
                        let _ = tokio::time::timeout(
                            Duration::from_millis(300),
                            handle.channel_open_direct_tcpip("127.0.0.1", port, "x", 0),
                        )
                        .await;
                    }
                    1 => {
                        let addr = *rng.pick(&[
                            "",
                            "0.0.0.0",
                            "127.0.0.1",
                            "::1",
                            "localhost",
                            "10.1.2.3",
                        ]);
                        let _ = tokio::time::timeout(
                            Duration::from_millis(300),
                            handle.tcpip_forward(addr, (rng.next_u64() % 70_000) as u32),
                        )
                        .await;
                    }
                    // A step may wait on the server (a reply, window space): bounded, so the
                    // harness never hangs; the server is checked for liveness afterwards.
                    _ => {
                        let step = random_step(&mut rng, &handle, &mut open);
                        let _ = tokio::time::timeout(Duration::from_millis(500), step).await;
                    }
                }
            });
            if open.len() > 20 {
                open.clear();
            }
            Ok(())
        },
    );
    drop(open);
    still_serves(&s, "nobody");
}

#[test]
fn sftp_survives_random_requests() {
    let s = Sshd::start_as(Some((65534, 65534)), &["--shell", "/bin/sh"]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let handle = rt.block_on(s.raw_login("nobody"));
    fuzz::run(
        "sftp",
        |rng| {
            // INIT, then packets: length, a type (mostly real ones), an id, random fields.
            let mut out = vec![0, 0, 0, 5, 1, 0, 0, 0, 3];
            for _ in 0..=rng.below(6) {
                let mut body = vec![*rng.pick(&[
                    3u8, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 200, 0, 255,
                ])];
                body.extend_from_slice(&(rng.next_u64() as u32).to_be_bytes());
                for _ in 0..rng.below(4) {
                    let field = if rng.one_in(2) {
                        rng.pick(&[
                            "/",
                            ".",
                            "..",
                            "/tmp",
                            "/nonexistent/x",
                            "",
                            "/proc/self/fd/0",
                        ])
                        .as_bytes()
                        .to_vec()
                    } else {
                        rng.some_bytes(40)
                    };
                    let len = if rng.one_in(8) {
                        rng.next_u64() as u32
                    } else {
                        field.len() as u32
                    };
                    body.extend_from_slice(&len.to_be_bytes());
                    body.extend_from_slice(&field);
                }
                let len = if rng.one_in(10) {
                    rng.next_u64() as u32
                } else {
                    body.len() as u32
                };
                out.extend_from_slice(&len.to_be_bytes());
                out.extend_from_slice(&body);
            }
            out
        },
        |input| {
            rt.block_on(async {
                let Ok(Ok(ch)) =
                    tokio::time::timeout(Duration::from_secs(2), handle.channel_open_session())
                        .await
                else {
                    return Err("no session channel".to_string());
                };
                let t = Duration::from_millis(500);
                let _ = tokio::time::timeout(t, ch.request_subsystem(true, "sftp")).await;
                let _ = tokio::time::timeout(t, ch.data(input)).await;
                let _ = tokio::time::timeout(t, ch.eof()).await;
                let mut ch = ch;
                let _ = tokio::time::timeout(Duration::from_millis(100), ch.wait()).await;
                let _ = tokio::time::timeout(t, ch.close()).await;
                Ok(())
            })
        },
    );
    still_serves(&s, "nobody");
}

// ---- envd-init's API -------------------------------------------------------------------------

#[test]
fn envd_init_api_survives_random_requests_and_garbage() {
    use envd_supervisor::proto::health::HealthCheckRequest;
    use envd_supervisor::proto::supervisor::{ListServicesRequest, LogsRequest, ServiceRequest};
    let dir = scratch();
    write_service(
        dir.path(),
        "a",
        "command = \"/bin/sleep 1000\"\n[restart]\nstrategy = \"always\"\n",
    );
    write_service(
        dir.path(),
        "b",
        "command = \"/bin/sh -c 'echo hi; sleep 1000'\"\n",
    );
    let init = Init::start(dir, &[], &[]);
    init.wait_for("started", Duration::from_secs(10), |s| s.len() == 2);
    let socket = init.path().join("api.sock");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut c = rt
        .block_on(envd_supervisor::client::connect_unix(&socket))
        .unwrap();
    fuzz::run(
        "grpc",
        |rng| rng.bytes(16),
        |seed| {
            let mut rng = Rng::new(u64::from_le_bytes(seed[..8].try_into().unwrap()));
            let name = rng
                .pick(&["a", "b", "", "nosuch", "a\0b", &"z".repeat(10_000)])
                .to_string();
            let t = Duration::from_millis(300);
            rt.block_on(async {
                match rng.below(7) {
                    0 => drop(
                        tokio::time::timeout(t, c.supervisor.list_services(ListServicesRequest {}))
                            .await,
                    ),
                    1 => drop(
                        tokio::time::timeout(
                            t,
                            c.supervisor.logs(LogsRequest {
                                service: name,
                                tail: rng.next_u64() as u32,
                                follow: rng.one_in(2),
                            }),
                        )
                        .await,
                    ),
                    2 => drop(
                        tokio::time::timeout(
                            t,
                            c.supervisor.restart(ServiceRequest { service: name }),
                        )
                        .await,
                    ),
                    3 => drop(
                        tokio::time::timeout(
                            t,
                            c.supervisor.stop(ServiceRequest { service: name }),
                        )
                        .await,
                    ),
                    4 => drop(
                        tokio::time::timeout(
                            t,
                            c.health.check(HealthCheckRequest { service: name }),
                        )
                        .await,
                    ),
                    5 => drop(
                        tokio::time::timeout(
                            t,
                            c.health.watch(HealthCheckRequest { service: name }),
                        )
                        .await,
                    ),
                    _ => {
                        // Raw bytes on the socket: sometimes the HTTP/2 preface first.
                        if let Ok(mut raw) = std::os::unix::net::UnixStream::connect(&socket) {
                            let _ = raw.set_write_timeout(Some(t));
                            if rng.one_in(2) {
                                let _ = raw.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
                            }
                            let _ = raw.write_all(&rng.some_bytes(2000));
                        }
                    }
                }
            });
            Ok(())
        },
    );
    let t = std::time::Instant::now();
    let list = rt
        .block_on(c.supervisor.list_services(ListServicesRequest {}))
        .expect("the API still answers");
    assert!(t.elapsed() < Duration::from_secs(1));
    assert_eq!(list.into_inner().services.len(), 2);
    assert!(
        init.log().lines().all(|l| !l.contains("internal error")),
        "{}",
        init.log()
    );
}
