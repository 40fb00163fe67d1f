//! "Your files stay yours", end to end on a real Docker engine: root and a non-root host user
//! (uid 1234, in the `docker` group, with its own home) each bring up the same project at the
//! same time. In each, OpenSSH's `ssh NAME.envd` creates, edits, renames and deletes files in
//! the working directory and a `-v` mount, `git status` works on the host user's repository,
//! `pip install` works in the environment's Python, and JupyterLab saves notebooks through its
//! REST API and in real Chromium (playwright-core); on the host every file made inside belongs
//! to the user who ran `envd up`. The second user's `envd up` builds nothing: one image serves
//! both. Named volumes (the home's caches, `runtime.mount(volume=...)`) survive `envd down` and
//! go with `envd down --volumes`; a base image the engine lacks is named with its file:line.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use envd_e2e::agent::SshAgent;
use envd_e2e::{output_text, require_docker, runtime_dir, workspace_root};

/// A host user the test acts as: root (the test's own) or a user it creates.
struct HostUser {
    name: String,
    uid: u32,
    gid: u32,
    home: PathBuf,
}

impl HostUser {
    fn root() -> HostUser {
        HostUser {
            name: "root".into(),
            uid: 0,
            gid: 0,
            home: PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into())),
        }
    }

    /// The user `envdfiles` with uid 1234 and its own home, a member of `docker` (created once;
    /// later runs find it).
    fn non_root() -> HostUser {
        let name = "envdfiles";
        let exists = Command::new("id")
            .arg(name)
            .output()
            .unwrap()
            .status
            .success();
        if !exists {
            let o = run(Command::new("useradd").args([
                "-m",
                "-u",
                "1234",
                "-U",
                "-G",
                "docker",
                "-s",
                "/bin/bash",
                name,
            ]));
            assert!(o.status.success(), "useradd: {}", output_text(&o));
        }
        let id = |flag: &str| -> u32 {
            let o = run(Command::new("id").args([flag, name]));
            String::from_utf8_lossy(&o.stdout).trim().parse().unwrap()
        };
        let (uid, gid) = (id("-u"), id("-g"));
        assert_eq!(uid, 1234, "the user {name} exists with another uid");
        HostUser {
            name: name.into(),
            uid,
            gid,
            home: PathBuf::from(format!("/home/{name}")),
        }
    }

    /// A command run as this user, with their own HOME (so their own ~/.config/envd and
    /// ~/.ssh), as a login would give it.
    fn command(&self, program: &str) -> Command {
        let mut c = Command::new("runuser");
        c.args(["-u", &self.name, "--", "env"])
            .arg(format!("HOME={}", self.home.display()))
            .arg(format!("USER={}", self.name))
            .arg(format!(
                "ENVD_RUNTIME_DIR={}",
                readable_runtime_dir().display()
            ))
            .arg("ENVD_PROGRESS=plain")
            .arg(program);
        c
    }

    fn envd(&self, args: &[&str]) -> Output {
        run(self
            .command(readable_runtime_dir().join("envd").to_str().unwrap())
            .args(args))
    }

    fn ssh(&self, host: &str, script: &str) -> Output {
        run(self
            .command("ssh")
            .args(["-o", "BatchMode=yes", host, script]))
    }

    /// Makes `path` (and what is below) this user's.
    fn give(&self, path: &Path) {
        let o = run(Command::new("chown")
            .arg("-R")
            .arg(format!("{}:{}", self.uid, self.gid))
            .arg(path));
        assert!(o.status.success(), "{}", output_text(&o));
    }
}

/// The runtime (envd, envd-init, envd-sshd) copied where every host user can run it: the
/// checkout may sit in a directory only root can enter (`mktemp -d` makes them 0700). The same
/// bytes, so the same image.
fn readable_runtime_dir() -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::Builder::new()
            .prefix("envd-files-runtime")
            .tempdir()
            .unwrap()
            .keep();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        for bin in ["envd", "envd-init", "envd-sshd"] {
            let to = dir.join(bin);
            std::fs::copy(runtime_dir().join(bin), &to).unwrap();
            std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        dir
    })
    .clone()
}

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

fn owner(path: &Path) -> (u32, u32) {
    let m = std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (m.uid(), m.gid())
}

/// `envd down` as `user` even when an assertion fails half-way.
struct Down<'a>(&'a HostUser, &'static str);
impl Drop for Down<'_> {
    fn drop(&mut self) {
        let _ = self.0.envd(&["down", "--name", self.1, "--volumes"]);
    }
}

/// Python, JupyterLab on envd's default port (which gives way when another environment has
/// it), nothing else: the same program for both users, so they share one image.
const PROGRAM: &str = r#"# syntax=v1
def build():
    base(image="debian:bookworm", dev=True)
    install.python()
    config.jupyter()
"#;

const NAME: &str = "e2efiles";

/// A project owned by `user`: a git repository with a file to edit and one to delete, and a
/// directory for `-v`.
fn project(user: &HostUser, root: &Path) -> (PathBuf, PathBuf) {
    let dir = root.join(NAME);
    let data = root.join("data");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(dir.join("build.envd"), PROGRAM).unwrap();
    std::fs::write(dir.join("edit.txt"), "first\n").unwrap();
    std::fs::write(dir.join("gone.txt"), "delete me\n").unwrap();
    user.give(root);
    let git = |args: &[&str]| {
        let o = run(user.command("git").arg("-C").arg(&dir).args(args));
        assert!(o.status.success(), "git {args:?}: {}", output_text(&o));
    };
    git(&["init", "-q"]);
    git(&["add", "."]);
    git(&[
        "-c",
        "user.email=t@example.com",
        "-c",
        "user.name=t",
        "commit",
        "-qm",
        "init",
    ]);
    (dir, data)
}

fn jupyter_url(log: &str) -> String {
    log.lines()
        .find_map(|l| l.trim().strip_prefix("jupyter:"))
        .map(|u| u.trim().to_string())
        .unwrap_or_else(|| panic!("no Jupyter URL printed:\n{log}"))
}

/// `curl` with a method and a JSON body; returns (status, body).
fn curl(method: &str, url: &str, body: &str) -> (String, String) {
    let o = run(Command::new("curl").args([
        "-s",
        "-X",
        method,
        "-H",
        "Content-Type: application/json",
        "-d",
        body,
        "-w",
        "\n%{http_code}",
        url,
    ]));
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", ""));
    (status.to_string(), body.to_string())
}

/// Everything one host user does in their environment, checked on the host.
fn use_environment(user: &HostUser, dir: &Path, data: &Path, log: &str) {
    let ids = (user.uid, user.gid);
    let host = format!("{NAME}.envd");
    // The shell: create, edit, rename, delete in the project and the -v mount; git on the host
    // user's repository; pip into the environment's Python; who the shell is.
    let o = user.ssh(
        &host,
        "set -e; echo made > new.txt; echo second >> edit.txt; mv new.txt renamed.txt; rm gone.txt; \
         mkdir sub; touch sub/x; rm -r sub; echo inside > /data/inside.txt; \
         git status --short >/dev/null && echo git-ok; sudo -n true && echo sudo-ok; \
         pip install -q --disable-pip-version-check --no-deps six==1.16.0 && python -c 'import six' && echo pip-ok; \
         mkdir -p ~/.ssh && chmod 700 ~/.ssh && touch ~/.ssh/config && ssh -G example.org >/dev/null && echo ssh-ok; \
         echo \"$USER $HOME $(id -u):$(id -g) $PWD\"",
    );
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success(),
        "ssh as {}: {}",
        user.name,
        output_text(&o)
    );
    for word in ["git-ok", "sudo-ok", "pip-ok", "ssh-ok"] {
        assert!(
            out.contains(word),
            "{word} missing for {}:\n{}",
            user.name,
            output_text(&o)
        );
    }
    assert!(
        out.contains(&format!(
            "envd /home/envd {}:{} /home/envd/{NAME}",
            user.uid, user.gid
        )),
        "{out}"
    );
    assert_eq!(owner(&dir.join("renamed.txt")), ids, "a file made inside");
    assert_eq!(
        std::fs::read_to_string(dir.join("edit.txt")).unwrap(),
        "first\nsecond\n"
    );
    assert!(!dir.join("gone.txt").exists());
    assert_eq!(
        owner(&data.join("inside.txt")),
        ids,
        "a file made in the -v mount"
    );

    // envd exec: the same user, home and ownership as the SSH shell.
    let o = user.envd(&[
        "exec",
        "--name",
        NAME,
        "--",
        "sh",
        "-c",
        "touch made-by-exec; echo \"$USER $HOME $(id -u) $PWD\"",
    ]);
    assert!(o.status.success(), "{}", output_text(&o));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        format!("envd /home/envd {} /home/envd/{NAME}", user.uid)
    );
    assert_eq!(owner(&dir.join("made-by-exec")), ids);

    // Agent forwarding: a key held by this user's own ssh-agent is listed inside.
    let agent_dir = tempfile::Builder::new().tempdir_in(&user.home).unwrap();
    user.give(agent_dir.path());
    let as_user = |program: &str| user.command(program);
    let agent = SshAgent::start(&agent_dir.path().join("agent.sock"), &as_user);
    agent.add_new_key(
        &agent_dir.path().join("id_agent"),
        "agent-of-files-e2e",
        &as_user,
    );
    let o =
        run(agent
            .client(&as_user, "ssh")
            .args(["-A", "-o", "BatchMode=yes", &host, "ssh-add -l"]));
    drop(agent);
    assert!(
        o.status.success() && String::from_utf8_lossy(&o.stdout).contains("agent-of-files-e2e"),
        "{}'s forwarded agent is not listed inside: {}",
        user.name,
        output_text(&o)
    );

    // JupyterLab's REST API: a new notebook (what "new notebook" does) and a saved one.
    let url = jupyter_url(log);
    let (base, token) = url.split_once("/lab?token=").unwrap();
    let (status, body) = curl(
        "POST",
        &format!("{base}/api/contents?token={token}"),
        r#"{"type":"notebook"}"#,
    );
    assert_eq!(status, "201", "new notebook as {}: {body}", user.name);
    let made: serde_json::Value = serde_json::from_str(&body).unwrap();
    let made = dir.join(made["path"].as_str().unwrap());
    assert_eq!(owner(&made), ids, "{}", made.display());
    let notebook = r#"{"type":"notebook","format":"json","content":{"nbformat":4,"nbformat_minor":5,"metadata":{},"cells":[{"cell_type":"markdown","id":"a1","metadata":{},"source":"saved-by-rest"}]}}"#;
    let (status, body) = curl(
        "PUT",
        &format!("{base}/api/contents/rest.ipynb?token={token}"),
        notebook,
    );
    assert!(
        status == "201" || status == "200",
        "save as {}: {status} {body}",
        user.name
    );
    assert_eq!(owner(&dir.join("rest.ipynb")), ids);
    assert!(std::fs::read_to_string(dir.join("rest.ipynb"))
        .unwrap()
        .contains("saved-by-rest"));

    // The same from the page, in real Chromium: launcher, a typed cell, Ctrl+S.
    let artifacts = workspace_root().join("target/test-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let shot = artifacts.join(format!("jupyterlab-notebook-{}.png", user.name));
    let text = format!("typed-in-chromium-by-{}", user.name);
    let driver = workspace_root().join("target/peers/browser/node_modules");
    assert!(
        driver.join("playwright-core").exists(),
        "{} missing: scripts/test installs playwright-core (ensure_browser_driver)",
        driver.display()
    );
    let o = run(Command::new("node")
        .env("NODE_PATH", &driver)
        .arg(workspace_root().join("tests/browser/jupyter_notebook.js"))
        .args([
            url.as_str(),
            text.as_str(),
            "from-chromium.ipynb",
            shot.to_str().unwrap(),
        ]));
    assert!(
        o.status.success(),
        "Chromium as {}: {}",
        user.name,
        output_text(&o)
    );
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        "from-chromium.ipynb"
    );
    let saved = dir.join("from-chromium.ipynb");
    assert_eq!(owner(&saved), ids, "{}", saved.display());
    let content = std::fs::read_to_string(&saved).unwrap();
    assert!(
        content.contains(&text),
        "the typed cell was not saved: {content}"
    );
}

#[test]
fn two_host_users_share_one_image_and_keep_their_files() {
    require_docker();
    let root_user = HostUser::root();
    let other = HostUser::non_root();
    let _down_root = Down(&root_user, NAME);
    let _down_other = Down(&other, NAME);
    let _ = root_user.envd(&["down", "--name", NAME, "--volumes"]);
    let _ = other.envd(&["down", "--name", NAME, "--volumes"]);

    let scratch_root = tempfile::Builder::new()
        .prefix("envd-files")
        .tempdir()
        .unwrap();
    let (root_dir, root_data) = project(&root_user, scratch_root.path());
    let scratch_other = tempfile::Builder::new()
        .prefix("envd-files")
        .tempdir_in(&other.home)
        .unwrap();
    let (other_dir, other_data) = project(&other, scratch_other.path());

    let up = |user: &HostUser, dir: &Path, data: &Path| -> String {
        let o = user.envd(&[
            "up",
            "--path",
            dir.to_str().unwrap(),
            "--detach",
            "-v",
            &format!("{}:/data", data.display()),
        ]);
        let log = output_text(&o);
        assert!(
            o.status.success(),
            "envd up as {} failed:\n{log}",
            user.name
        );
        log
    };
    let root_log = up(&root_user, &root_dir, &root_data);
    // The second user brings the same project up while the first one's runs: nothing is
    // rebuilt (the image does not depend on the user), and names, ports and SSH entries differ.
    let other_log = up(&other, &other_dir, &other_data);
    assert!(
        other_log.contains(&format!("image {NAME}:dev: up to date, nothing built")),
        "the second user's envd up rebuilt the image:\n{other_log}"
    );
    assert_ne!(jupyter_url(&root_log), jupyter_url(&other_log));
    let containers = run(Command::new("docker").args([
        "ps",
        "--filter",
        &format!("label=ai.tensorchord.envd.name={NAME}"),
        "--format",
        "{{.Names}}",
    ]));
    let mut names: Vec<String> = String::from_utf8_lossy(&containers.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    names.sort();
    assert_eq!(
        names,
        vec![format!("{NAME}.envdfiles"), format!("{NAME}.root")]
    );

    use_environment(&root_user, &root_dir, &root_data, &root_log);
    use_environment(&other, &other_dir, &other_data, &other_log);

    // Each user sees their own environment only.
    for user in [&root_user, &other] {
        let o = user.envd(&["ls", "--format", "json"]);
        let list: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        let mine: Vec<&serde_json::Value> = list
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["name"] == NAME)
            .collect();
        assert_eq!(mine.len(), 1, "{} sees {list}", user.name);
    }
    for user in [&root_user, &other] {
        let o = user.envd(&["down", "--name", NAME, "--volumes"]);
        assert!(o.status.success(), "{}", output_text(&o));
    }
}

#[test]
fn named_volumes_and_the_pip_cache_survive_down_until_down_volumes() {
    require_docker();
    let root = HostUser::root();
    let name = "e2evolumes";
    let _down = Down(&root, name);
    let _ = root.envd(&["down", "--name", name, "--volumes"]);
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path().join(name);
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(
        dir.join("build.envd"),
        "def build():\n    base(image=\"debian:bookworm\", dev=True)\n    install.python()\n    runtime.mount(volume=\"data\", envd_path=\"/data\")\n",
    )
    .unwrap();
    let host = format!("{name}.envd");
    let up = || {
        let o = root.envd(&["up", "--path", dir.to_str().unwrap(), "--detach"]);
        assert!(o.status.success(), "{}", output_text(&o));
    };
    up();
    let o = root.ssh(
        &host,
        // pip's own cache directory (whether pip caches a download depends on the server's
        // cache headers, so the test puts a file there itself).
        "set -e; echo kept > /data/kept.txt; d=$(pip cache dir); mkdir -p \"$d\"; echo cached > \"$d/marker\"; echo \"$d\"",
    );
    assert!(o.status.success(), "{}", output_text(&o));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        "/home/envd/.cache/pip"
    );

    let o = root.envd(&["describe", "--name", name]);
    let text = output_text(&o);
    for v in [format!("{name}.root.cache"), format!("{name}.root.data")] {
        assert!(text.contains(&v), "describe does not list {v}:\n{text}");
    }
    assert!(
        text.contains("/home/envd/.cache") && text.contains("/data"),
        "{text}"
    );

    let o = root.envd(&["down", "--name", name]);
    assert!(o.status.success(), "{}", output_text(&o));
    assert!(
        output_text(&o).contains("kept its volumes"),
        "{}",
        output_text(&o)
    );
    up();
    let o = root.ssh(&host, "cat /data/kept.txt \"$(pip cache dir)/marker\"");
    assert!(
        o.status.success(),
        "a volume lost its file: {}",
        output_text(&o)
    );
    assert_eq!(String::from_utf8_lossy(&o.stdout), "kept\ncached\n");

    let o = root.envd(&["down", "--name", name, "--volumes"]);
    assert!(o.status.success(), "{}", output_text(&o));
    let o = run(Command::new("docker").args([
        "volume",
        "ls",
        "-q",
        "--filter",
        &format!("label=ai.tensorchord.envd.name={name}"),
    ]));
    assert!(o.stdout.is_empty(), "volumes left: {}", output_text(&o));
}

#[test]
fn a_base_image_the_engine_lacks_is_named_with_its_line() {
    require_docker();
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path().join("e2enobase");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(
        dir.join("build.envd"),
        "# envd's default base is ubuntu:22.04, which no registry here serves.\ndef build():\n    base(dev=True)\n",
    )
    .unwrap();
    let o = envd_e2e::envd(&["build", "--path", dir.to_str().unwrap()]);
    let text = output_text(&o);
    assert!(!o.status.success(), "{text}");
    assert!(
        text.contains("the base image ubuntu:22.04 (base(image=\"ubuntu:22.04\") at ")
            && text.contains("build.envd:3)"),
        "{text}"
    );
    assert!(text.contains("Use base(image="), "{text}");
}
