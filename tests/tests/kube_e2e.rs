//! The Kubernetes runner end to end on a real cluster: etcd, kube-apiserver (RBAC),
//! kube-controller-manager, kube-scheduler and a kubelet on the local Docker engine, built from
//! Debian's sources and started by `scripts/kube-up` (idempotent; about 20 s when its binaries
//! are cached, 5 minutes more the first time on a machine). `envd up` builds, pushes to a
//! `docker-registry` on 127.0.0.1, the scheduler places the pod, its claims bind through the
//! PersistentVolume controller; then the real OpenSSH client through envd's ProxyCommand (host
//! key pinned, agent forwarded), Jupyter through the forwarder, a file surviving the pod's
//! deletion, envd-init's restart seen in `envd ls`, and `envd down` leaving nothing. The failures
//! a user meets on a cluster are each provoked for real and must be named.
//!
//! Each test has its own envd config directory, SSH config and namespace.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use envd_e2e::agent::SshAgent;
use envd_e2e::{free_port, output_text, require_docker, runtime_dir, workspace_root};

/// Long enough for a cold build of Kubernetes (about 5 minutes) while other tests load the machine.
const KUBE_UP_DEADLINE_S: u32 = 600;

/// The cluster `scripts/kube-up` runs: (admin kubeconfig, registry HOST:PORT).
fn cluster() -> &'static (PathBuf, String) {
    static CLUSTER: OnceLock<(PathBuf, String)> = OnceLock::new();
    CLUSTER.get_or_init(|| {
        require_docker();
        // A deadline of its own: a set-up that hangs fails here, with its output, instead of
        // being killed by the runner with nothing said.
        let o = Command::new("timeout")
            .arg(KUBE_UP_DEADLINE_S.to_string())
            .arg(workspace_root().join("scripts/kube-up"))
            .stderr(Stdio::inherit())
            .output()
            .expect("run scripts/kube-up");
        assert!(
            o.status.code() != Some(124),
            "scripts/kube-up did not finish within {KUBE_UP_DEADLINE_S} s: {}",
            output_text(&o)
        );
        assert!(
            o.status.success(),
            "scripts/kube-up failed: {}",
            output_text(&o)
        );
        let text = String::from_utf8_lossy(&o.stdout);
        let kubeconfig = PathBuf::from(text.lines().last().expect("kube-up prints a path").trim());
        let registry = std::fs::read_to_string(kubeconfig.parent().unwrap().join("registry"))
            .expect("kube-up records its registry");
        (kubeconfig, registry.trim().to_string())
    })
}

/// `kubectl` as the cluster's admin.
fn kubectl(args: &[&str]) -> Output {
    Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(&cluster().0)
        // A call that hangs fails instead of holding the test until the runner kills it.
        .arg("--request-timeout=60s")
        .args(args)
        .output()
        .expect("kubectl (Debian's kubernetes-client)")
}

fn kubectl_ok(args: &[&str]) -> String {
    let o = kubectl(args);
    assert!(o.status.success(), "kubectl {args:?}: {}", output_text(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// One user of envd: a config directory (contexts, keys, known hosts) and an SSH config of its
/// own, in a namespace of its own; removed with everything it made when dropped.
struct User {
    dir: tempfile::TempDir,
    namespace: String,
}

impl User {
    fn new(label: &str) -> User {
        let namespace = format!("envd-{label}-{}", std::process::id());
        kubectl_ok(&["create", "namespace", &namespace]);
        User {
            dir: tempfile::tempdir().unwrap(),
            namespace,
        }
    }

    fn ssh_config(&self) -> PathBuf {
        self.dir.path().join("ssh_config_of_user")
    }

    fn envd(&self, args: &[&str]) -> Output {
        Command::new(runtime_dir().join("envd"))
            .args(args)
            .env("ENVD_RUNTIME_DIR", runtime_dir())
            .env("ENVD_CONFIG_DIR", self.dir.path())
            .env("ENVD_SSH_CONFIG", self.ssh_config())
            .stdin(Stdio::null())
            .output()
            .expect("run envd")
    }

    fn envd_ok(&self, args: &[&str]) -> String {
        let o = self.envd(args);
        assert!(
            o.status.success(),
            "envd {args:?} failed:\n{}",
            output_text(&o)
        );
        output_text(&o)
    }

    /// `envd context create --runner kubernetes --use` with `extra` flags.
    fn context(&self, kubeconfig: &Path, registry: &str, extra: &[&str]) {
        let mut args = vec![
            "context",
            "create",
            "--name",
            "cluster",
            "--builder",
            "moby-worker",
            "--runner",
            "kubernetes",
            "--kubeconfig",
            kubeconfig.to_str().unwrap(),
            "--namespace",
            &self.namespace,
            "--registry",
            registry,
            "--use",
        ];
        args.extend(extra);
        self.envd_ok(&args);
    }

    fn ssh(&self, args: &[&str]) -> Output {
        Command::new("ssh")
            .arg("-F")
            .arg(self.ssh_config())
            .args(["-o", "BatchMode=yes"])
            .args(args)
            .output()
            .expect("ssh")
    }

    fn ls(&self) -> serde_json::Value {
        serde_json::from_str(&self.envd_ok(&["ls", "--format", "json"])).unwrap()
    }
}

impl Drop for User {
    fn drop(&mut self) {
        let _ = kubectl(&["delete", "namespace", &self.namespace, "--wait=false"]);
        // The forwarders this user's envd started and left running.
        let states = std::fs::read_dir(self.dir.path().join("kube/cluster"));
        for entry in states.into_iter().flatten().flatten() {
            let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
            let state: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
            if let Some(pid) = state["pid"].as_i64() {
                let _ = Command::new("kill").arg(pid.to_string()).status();
            }
        }
    }
}

/// A project directory named `name` holding `build_envd`.
fn project(name: &str, build_envd: &str) -> (tempfile::TempDir, PathBuf) {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join(name);
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("build.envd"), build_envd).unwrap();
    (root, dir)
}

/// The same steps as up_e2e's program, so the engine's build cache serves both.
const PROGRAM: &str = r#"# syntax=v1
def build():
    base(image="debian:bookworm", dev=True)
    install.python()
    install.python_packages(name=["numpy"])
    config.jupyter(port=0)
"#;

fn http_status(url: &str) -> String {
    let o = Command::new("curl")
        .args([
            "-s",
            "-m",
            "10",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            url,
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn printed(log: &str, key: &str) -> String {
    log.lines()
        .find_map(|l| l.trim().strip_prefix(key))
        .map(|u| u.trim().to_string())
        .unwrap_or_else(|| panic!("no {key} line printed:\n{log}"))
}

#[test]
fn up_ssh_agent_jupyter_volume_restart_and_down_on_a_cluster() {
    let (kubeconfig, registry) = cluster();
    let user = User::new("main");
    user.context(kubeconfig, registry, &[]);
    let (_root, dir) = project("kproj", PROGRAM);
    let path = dir.to_str().unwrap();
    let log = user.envd_ok(&["up", "--path", path, "--name", "kube1", "--detach"]);
    assert!(
        log.contains(&format!("pushed {registry}/envd/kube1:")),
        "{log}"
    );
    assert!(
        log.contains("copied the build context into the volume"),
        "{log}"
    );
    let jupyter = printed(&log, "jupyter:");
    assert!(log.contains("ssh:      ssh kube1.envd"), "{log}");

    // The scheduler placed it on the kubelet's node; its claims are bound by the controller.
    let ns = user.namespace.as_str();
    let node = kubectl_ok(&[
        "-n",
        ns,
        "get",
        "pod",
        "kube1-root",
        "-o",
        "jsonpath={.spec.nodeName}",
    ]);
    assert_eq!(node, "localhost");
    let phases = kubectl_ok(&[
        "-n",
        ns,
        "get",
        "pvc",
        "-o",
        "jsonpath={.items[*].status.phase}",
    ]);
    assert_eq!(phases, "Bound Bound", "work and cache claims");
    let ls = user.ls();
    assert_eq!(ls[0]["status"], "running", "{ls}");
    assert_eq!(ls[0]["node"], "localhost", "{ls}");

    ssh_runs_commands_with_the_agent_forwarded(&user);
    jupyter_needs_its_token(&jupyter);
    let jupyter = the_workdir_survives_the_pod_and_is_never_overwritten(&user, &dir);
    jupyter_needs_its_token(&jupyter);
    a_killed_jupyter_is_restarted(&user);
    down_leaves_no_pod_forward_or_entry(&user, &jupyter);
}

fn ssh_runs_commands_with_the_agent_forwarded(user: &User) {
    let config = std::fs::read_to_string(user.dir.path().join("ssh_config")).unwrap();
    assert!(
        config.contains("ProxyCommand") && config.contains("kube-proxy"),
        "{config}"
    );
    assert!(config.contains("StrictHostKeyChecking yes"), "{config}");
    let o = user.ssh(&[
        "kube1.envd",
        "python3 -c 'import numpy; print(numpy.__name__)'; pwd; ls",
    ]);
    assert!(o.status.success(), "ssh failed: {}", output_text(&o));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        "numpy\n/home/envd/kproj\nbuild.envd"
    );
    // The pin is what OpenSSH checks: another key in its place is refused.
    let known = user.dir.path().join("known_hosts");
    let pinned = std::fs::read_to_string(&known).unwrap();
    let other = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIK9u8bGvtVaJ0JJmEXvWoJ6x4fNwF9ojTY5HsIhKf0uX";
    let forged: String = pinned
        .lines()
        .map(|l| match l.starts_with("kube1.envd ") {
            true => format!("kube1.envd {other}\n"),
            false => format!("{l}\n"),
        })
        .collect();
    assert_ne!(forged, pinned);
    std::fs::write(&known, forged).unwrap();
    let o = user.ssh(&["kube1.envd", "true"]);
    assert!(
        !o.status.success() && output_text(&o).contains("Host key verification failed"),
        "a wrong pinned key was not refused: {}",
        output_text(&o)
    );
    std::fs::write(&known, pinned).unwrap();
    // A real ssh-agent here; its key listed inside.
    let agent_dir = tempfile::tempdir().unwrap();
    let launch = |program: &str| Command::new(program);
    let agent = SshAgent::start(&agent_dir.path().join("agent.sock"), &launch);
    agent.add_new_key(
        &agent_dir.path().join("id_agent"),
        "kube-agent-key",
        &launch,
    );
    let o = Command::new("ssh")
        .arg("-F")
        .arg(user.ssh_config())
        .args(["-A", "-o", "BatchMode=yes", "kube1.envd", "ssh-add -l"])
        .env("SSH_AUTH_SOCK", agent.sock())
        .output()
        .unwrap();
    drop(agent);
    assert!(
        o.status.success() && String::from_utf8_lossy(&o.stdout).contains("kube-agent-key"),
        "the forwarded agent is not listed inside: {}",
        output_text(&o)
    );
}

fn jupyter_needs_its_token(jupyter: &str) {
    assert!(jupyter.contains("token="), "{jupyter}");
    let api = jupyter.replace("/lab?token=", "/api/contents?token=");
    assert_eq!(http_status(&api), "200");
    assert_eq!(http_status(api.split('?').next().unwrap()), "403");
}

/// Returns the new Jupyter URL.
fn the_workdir_survives_the_pod_and_is_never_overwritten(user: &User, dir: &Path) -> String {
    let o = user.ssh(&[
        "kube1.envd",
        "echo made-inside > notes.txt && echo edited >> build.envd",
    ]);
    assert!(o.status.success(), "{}", output_text(&o));
    // A file that appears on the host later is not copied over what the volume holds.
    std::fs::write(dir.join("host-later.txt"), "host").unwrap();
    let ns = user.namespace.as_str();
    kubectl_ok(&["-n", ns, "delete", "pod", "kube1-root", "--wait=true"]);
    let log = user.envd_ok(&[
        "up",
        "--path",
        dir.to_str().unwrap(),
        "--name",
        "kube1",
        "--detach",
    ]);
    assert!(
        log.contains("keeps the files of the volume kube1-root-work"),
        "{log}"
    );
    let o = user.ssh(&["kube1.envd", "cat notes.txt; tail -1 build.envd; ls"]);
    assert!(o.status.success(), "{}", output_text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.starts_with("made-inside\nedited\n"), "{out}");
    assert!(!out.contains("host-later.txt"), "{out}");
    printed(&log, "jupyter:")
}

fn a_killed_jupyter_is_restarted(user: &User) {
    let o = user.envd(&[
        "exec",
        "--name",
        "kube1",
        "--",
        "pkill",
        "-f",
        "jupyter-lab",
    ]);
    assert!(o.status.success(), "{}", output_text(&o));
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let ls = user.ls();
        let jupyter = ls[0]["services"]
            .as_array()
            .and_then(|s| s.iter().find(|s| s["name"] == "jupyter"))
            .cloned()
            .unwrap_or_default();
        if jupyter["restarts"].as_u64().unwrap_or(0) >= 1 && jupyter["state"] == "healthy" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "jupyter not restarted and healthy: {ls}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let o = user.envd(&["exec", "--name", "kube1", "--", "sh", "-c", "exit 7"]);
    assert_eq!(o.status.code(), Some(7), "{}", output_text(&o));
}

fn down_leaves_no_pod_forward_or_entry(user: &User, jupyter: &str) {
    let state = user.dir.path().join("kube/cluster/kube1.json");
    assert!(state.exists(), "no forwarder state");
    let log = user.envd_ok(&["down", "--name", "kube1"]);
    assert!(
        log.contains("kube1-root-work"),
        "the kept volumes are named: {log}"
    );
    let ns = user.namespace.as_str();
    assert_eq!(kubectl_ok(&["-n", ns, "get", "pods", "-o", "name"]), "");
    assert!(!state.exists(), "forwarder state left behind");
    assert_eq!(http_status(jupyter), "000", "Jupyter's URL still answers");
    let config = std::fs::read_to_string(user.dir.path().join("ssh_config")).unwrap();
    assert!(!config.contains("kube1.envd"), "SSH entry left: {config}");
    let o = user.ssh(&["-o", "ConnectTimeout=5", "kube1.envd", "true"]);
    assert!(!o.status.success());
    // The volumes stayed; --volumes takes them.
    let claims = kubectl_ok(&["-n", ns, "get", "pvc", "-o", "name"]);
    assert!(claims.contains("kube1-root-work"), "{claims}");
    let log = user.envd_ok(&["down", "--name", "kube1", "--volumes"]);
    assert!(log.contains("removed the volume kube1-root-work"), "{log}");
    assert_eq!(kubectl_ok(&["-n", ns, "get", "pvc", "-o", "name"]), "");
}

#[test]
fn down_of_a_pod_already_gone_still_cleans_up_here() {
    let (kubeconfig, registry) = cluster();
    let user = User::new("gone");
    user.context(kubeconfig, registry, &[]);
    let (_root, dir) = project("kgone", PROGRAM);
    user.envd_ok(&["up", "--path", dir.to_str().unwrap(), "--detach"]);
    let state = user.dir.path().join("kube/cluster/kgone.json");
    assert!(state.exists());
    let ns = user.namespace.as_str();
    kubectl_ok(&["-n", ns, "delete", "pod", "kgone-root", "--wait=true"]);
    let log = user.envd_ok(&["down", "--name", "kgone", "--volumes"]);
    assert!(log.contains("removed its SSH entry"), "{log}");
    assert!(!state.exists(), "forwarder state left behind");
    let config = std::fs::read_to_string(user.dir.path().join("ssh_config")).unwrap();
    assert!(!config.contains("kgone.envd"), "{config}");
    assert_eq!(kubectl_ok(&["-n", ns, "get", "pvc", "-o", "name"]), "");
}

#[test]
fn no_kubeconfig_and_an_unreachable_api_server_are_named() {
    let user = User::new("reach");
    let missing = user.dir.path().join("no-such-kubeconfig");
    user.context(&missing, "127.0.0.1:5000", &[]);
    let o = user.envd(&["ls"]);
    assert!(!o.status.success());
    assert!(
        output_text(&o).contains(&format!("no kubeconfig at {}", missing.display())),
        "{}",
        output_text(&o)
    );
    let port = free_port();
    let text = std::fs::read_to_string(&cluster().0).unwrap();
    let server = text
        .split("server: \"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .unwrap()
        .to_string();
    let dead = user.dir.path().join("dead.kubeconfig");
    std::fs::write(
        &dead,
        text.replace(&server, &format!("https://127.0.0.1:{port}")),
    )
    .unwrap();
    user.envd_ok(&["context", "use", "--name", "default"]);
    user.envd_ok(&["context", "rm", "--name", "cluster"]);
    user.context(&dead, "127.0.0.1:5000", &[]);
    let o = user.envd(&["ls"]);
    assert!(!o.status.success());
    let said = output_text(&o);
    assert!(
        said.contains(&format!(
            "cannot reach the Kubernetes API server at https://127.0.0.1:{port}"
        )),
        "{said}"
    );
}

#[test]
fn a_forbidden_namespace_names_the_verb_and_the_resource() {
    let (kubeconfig, registry) = cluster();
    let user = User::new("rbac");
    // alice (a token user of kube-up's) may read pods here, nothing else.
    let ns = user.namespace.as_str();
    kubectl_ok(&[
        "-n",
        ns,
        "create",
        "role",
        "pod-reader",
        "--verb=get,list",
        "--resource=pods",
    ]);
    kubectl_ok(&[
        "-n",
        ns,
        "create",
        "rolebinding",
        "alice-reads",
        "--role=pod-reader",
        "--user=alice",
    ]);
    let alice = kubeconfig.parent().unwrap().join("alice.kubeconfig");
    user.context(&alice, registry, &[]);
    let o = user.envd(&["ls"]);
    assert!(
        o.status.success(),
        "listing is allowed: {}",
        output_text(&o)
    );
    let (_root, dir) = project("kforbid", PROGRAM);
    let o = user.envd(&["up", "--path", dir.to_str().unwrap(), "--detach"]);
    assert!(!o.status.success());
    let said = output_text(&o);
    assert!(
        said.contains("User \"alice\" cannot create resource \"persistentvolumeclaims\"")
            && said.contains(&format!("namespace \"{ns}\""))
            && said.contains("RBAC"),
        "{said}"
    );
}

#[test]
fn an_unschedulable_pod_gives_the_scheduler_s_reason() {
    let (kubeconfig, registry) = cluster();
    let user = User::new("sched");
    user.context(kubeconfig, registry, &[]);
    let program = format!("{PROGRAM}    config.gpu(count=1)\n");
    let (_root, dir) = project("kgpu", &program);
    let o = user.envd(&["up", "--path", dir.to_str().unwrap(), "--detach"]);
    assert!(!o.status.success());
    let said = output_text(&o);
    assert!(
        said.contains("no node can run it") && said.contains("Insufficient nvidia.com/gpu"),
        "{said}"
    );
    let ns = user.namespace.as_str();
    assert_eq!(
        kubectl_ok(&["-n", ns, "get", "pods", "-o", "name"]),
        "",
        "the failed pod is removed"
    );
}

#[test]
fn a_claim_that_never_binds_is_named_with_its_event() {
    let (kubeconfig, registry) = cluster();
    let user = User::new("bind");
    user.context(kubeconfig, registry, &["--storage-class", "no-such-class"]);
    let (_root, dir) = project("kbind", PROGRAM);
    let o = user.envd(&["up", "--path", dir.to_str().unwrap(), "--detach"]);
    assert!(!o.status.success());
    let said = output_text(&o);
    assert!(
        said.contains("the volume claim kbind-root-work is not bound")
            && said.contains("no-such-class"),
        "{said}"
    );
}

/// A registry in front of the real one that takes pushes but refuses every manifest pull, as a
/// registry the nodes cannot read would.
const PUSH_ONLY_REGISTRY: &str = r#"
import http.client, http.server, sys
real = sys.argv[2]
class Proxy(http.server.BaseHTTPRequestHandler):
    def forward(self):
        if self.command in ("GET", "HEAD") and "/manifests/" in self.path:
            self.send_response(403)
            self.send_header("Content-Type", "application/json")
            body = b'{"errors":[{"code":"DENIED","message":"pulls are refused by this registry"}]}'
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command == "GET":
                self.wfile.write(body)
            return
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        c = http.client.HTTPConnection(real)
        headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
        c.request(self.command, self.path, body=body, headers=headers)
        r = c.getresponse()
        data = r.read()
        self.send_response(r.status)
        for k, v in r.getheaders():
            if k.lower() not in ("transfer-encoding", "connection"):
                self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = forward
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Proxy).serve_forever()
"#;

#[test]
fn an_image_the_node_cannot_pull_is_named_with_the_event() {
    let (kubeconfig, registry) = cluster();
    let port = free_port();
    let mut proxy = Command::new("python3")
        .args(["-c", PUSH_ONLY_REGISTRY, &port.to_string(), registry])
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while http_status(&format!("http://127.0.0.1:{port}/v2/")) != "200" {
        assert!(
            Instant::now() < deadline,
            "the push-only registry did not start"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let user = User::new("pull");
    user.context(kubeconfig, &format!("127.0.0.1:{port}"), &[]);
    let (_root, dir) = project("kpull", PROGRAM);
    let o = user.envd(&["up", "--path", dir.to_str().unwrap(), "--detach"]);
    let _ = proxy.kill();
    let _ = proxy.wait();
    assert!(!o.status.success());
    let said = output_text(&o);
    assert!(
        said.contains("the node cannot pull the image")
            && said.contains(&format!("127.0.0.1:{port}/envd/kpull"))
            && said.contains("events:"),
        "{said}"
    );
}
