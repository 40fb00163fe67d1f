//! The everyday commands around the build: `envd init` on a real project (its result built and
//! started on the real engine), shell completion loaded and driven in real bash, zsh and fish,
//! man pages, and `envd version` against the engine and git.

use std::path::Path;
use std::process::{Command, Output};

use envd_e2e::{envd, isolated, output_text, require_docker, runtime_dir, workspace_root};

fn envd_bin() -> std::path::PathBuf {
    runtime_dir().join("envd")
}

/// What bash's completion function offers for `words` (the cursor on the last word), with the
/// script `envd completion bash` prints loaded.
fn bash_completes(words: &[&str]) -> Vec<String> {
    let script = format!(
        "source <('{envd}' completion bash) || exit 9\n\
         COMP_WORDS=({words}); COMP_CWORD={cword}; COMP_LINE=\"${{COMP_WORDS[*]}}\"; \
         COMP_POINT=${{#COMP_LINE}}; COMP_TYPE=9\n\
         _clap_complete_envd envd \"${{COMP_WORDS[COMP_CWORD]}}\" \"${{COMP_WORDS[COMP_CWORD-1]}}\"\n\
         printf '%s\\n' \"${{COMPREPLY[@]}}\"",
        envd = envd_bin().display(),
        words = words.iter().map(|w| format!("'{w}'")).collect::<Vec<_>>().join(" "),
        cword = words.len() - 1,
    );
    let o = isolated(Command::new("bash").arg("-c").arg(script))
        .output()
        .expect("run bash");
    assert!(o.status.success(), "{}", output_text(&o));
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect()
}

#[test]
fn completion_scripts_load_in_their_shells_and_complete_subcommands() {
    let dir = tempfile::tempdir().unwrap();
    // The script names envd's own path (symlinks resolved), so it completes off PATH too.
    let me = std::fs::canonicalize(envd_bin()).unwrap();
    for (shell, check) in [
        ("bash", vec!["bash", "-n"]),
        ("zsh", vec!["zsh", "-n"]),
        ("fish", vec!["fish", "--no-execute"]),
    ] {
        let o = envd(&["completion", shell]);
        assert!(o.status.success(), "{shell}: {}", output_text(&o));
        assert!(
            String::from_utf8_lossy(&o.stdout).contains(me.to_str().unwrap()),
            "{shell}: the script does not call this envd back"
        );
        let file = dir.path().join(format!("envd.{shell}"));
        std::fs::write(&file, &o.stdout).unwrap();
        let o = Command::new(check[0])
            .args(&check[1..])
            .arg(&file)
            .output()
            .unwrap_or_else(|e| panic!("{shell} must be installed (scripts/test does): {e}"));
        assert!(
            o.status.success(),
            "{shell} rejects the script: {}",
            output_text(&o)
        );
    }
    assert_eq!(bash_completes(&["envd", "des"]), ["describe"]);
    let up_flags = bash_completes(&["envd", "up", "--det"]);
    assert_eq!(up_flags, ["--detach"]);
    let o = envd(&["completion", "tcsh"]);
    assert!(!o.status.success() && output_text(&o).contains("invalid value 'tcsh'"));
}

#[test]
fn man_pages_cover_every_command() {
    let dir = tempfile::tempdir().unwrap();
    let o = envd(&["man", "--dir", dir.path().to_str().unwrap()]);
    assert!(o.status.success(), "{}", output_text(&o));
    for (page, mentions) in [
        ("envd.1", "completion"),
        ("envd-up.1", "\\-\\-detach"),
        ("envd-context-create.1", "\\-\\-runner"),
        ("envd-init.1", "\\-\\-force"),
    ] {
        let text = std::fs::read_to_string(dir.path().join(page))
            .unwrap_or_else(|e| panic!("{page}: {e}"));
        assert!(
            text.starts_with(".ie") || text.contains(".TH"),
            "{page}: {text}"
        );
        assert!(
            text.contains(mentions),
            "{page} does not mention {mentions}"
        );
    }
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        !names
            .iter()
            .any(|n| n.contains("-help") || n.contains("kube-")),
        "pages for help or hidden commands: {names:?}"
    );
}

#[test]
fn version_names_the_commit_the_runtime_and_the_engine() {
    require_docker();
    let o = envd(&["--version"]);
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    let head = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(workspace_root())
        .output()
        .expect("git");
    let head = String::from_utf8_lossy(&head.stdout).trim().to_string();
    assert_eq!(text.trim(), format!("envd 0.1.0 (commit {head})"));
    let o = envd(&["version", "--format", "json"]);
    assert!(o.status.success(), "{}", output_text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["commit"], head.as_str());
    for r in v["runtime"].as_array().unwrap() {
        let name = r["name"].as_str().unwrap();
        assert_eq!(r["version"], format!("{name} 0.1.0").as_str(), "{v}");
    }
    let engine = Command::new("docker")
        .args(["version", "--format", "{{.Server.Version}}"])
        .output()
        .unwrap();
    let engine = String::from_utf8_lossy(&engine.stdout).trim().to_string();
    assert!(v["engine"].as_str().unwrap().starts_with(&engine), "{v}");
    assert!(v["buildkit"].is_string(), "{v}");
}

/// Stops the environment when the test ends, passed or not.
struct Down(&'static str);
impl Drop for Down {
    fn drop(&mut self) {
        let _ = envd(&["down", "--name", self.0, "--volumes"]);
    }
}

fn init_in(dir: &Path, force: bool) -> Output {
    let mut args = vec!["init", "--path", dir.to_str().unwrap()];
    if force {
        args.push("--force");
    }
    envd(&args)
}

#[test]
fn init_writes_a_build_file_that_comes_up_is_listed_in_images_and_completes_its_name() {
    require_docker();
    const NAME: &str = "e2einit";
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join(NAME);
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("requirements.txt"), "six==1.16.0\n").unwrap();
    std::fs::write(dir.join("analysis.ipynb"), "{}").unwrap();
    let o = init_in(&dir, false);
    assert!(o.status.success(), "{}", output_text(&o));
    assert!(
        output_text(&o).contains("from requirements.txt"),
        "{}",
        output_text(&o)
    );
    let written = std::fs::read_to_string(dir.join("build.envd")).unwrap();
    assert!(written.contains("install.python_packages(requirements=\"requirements.txt\")"));
    // An existing file is kept.
    std::fs::write(dir.join("build.envd"), format!("{written}# mine\n")).unwrap();
    let o = init_in(&dir, false);
    assert!(!o.status.success() && output_text(&o).contains("does not overwrite"));
    assert!(std::fs::read_to_string(dir.join("build.envd"))
        .unwrap()
        .ends_with("# mine\n"));

    let _down = Down(NAME);
    let o = envd(&["up", "--path", dir.to_str().unwrap(), "--detach"]);
    assert!(o.status.success(), "{}", output_text(&o));
    let printed = output_text(&o);
    assert!(
        printed.contains("jupyter:"),
        "a notebook turns Jupyter on: {printed}"
    );
    let o = envd(&[
        "exec",
        "--name",
        NAME,
        "-T",
        "--",
        "python",
        "-c",
        "import six; print(six.__version__)",
    ]);
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        "1.16.0",
        "{}",
        output_text(&o)
    );
    // `envd images` lists the image with the environment that uses it.
    let o = envd(&["images", "--format", "json"]);
    let images: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let ours = (images.as_array().unwrap().iter())
        .find(|i| {
            i["tags"]
                .as_array()
                .unwrap()
                .iter()
                .any(|t| t == "e2einit:dev")
        })
        .unwrap_or_else(|| panic!("e2einit:dev not listed: {images}"));
    assert!(ours["size"].as_i64().unwrap() > 100_000_000, "{ours}");
    assert!(ours["dev"] == true, "{ours}");
    let users = ours["used_by"].as_array().unwrap();
    assert!(
        users.iter().any(|u| u.as_str().unwrap().starts_with(NAME)),
        "{ours}"
    );
    let o = envd(&["images"]);
    let table = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        table.starts_with("IMAGE") && table.contains("e2einit:dev"),
        "{table}"
    );
    // `--name` completes the environments there are.
    let offered = bash_completes(&["envd", "describe", "--name", "e2ei"]);
    assert!(offered.iter().any(|o| o == NAME), "{offered:?}");
}

#[test]
fn the_wheel_installs_envd_with_its_runtime_and_brings_an_environment_up() {
    require_docker();
    const NAME: &str = "e2ewheel";
    let wheels = workspace_root().join("target/wheels");
    let wheel = std::fs::read_dir(&wheels)
        .ok()
        .into_iter()
        .flatten()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .unwrap_or_else(|| {
            panic!(
                "no wheel in {}: scripts/test builds it with scripts/build-wheel",
                wheels.display()
            )
        });
    let file = wheel.file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        file.starts_with("envd_rs-0.1.0-py3-none-manylinux_2_") && file.ends_with("_x86_64.whl"),
        "{file}"
    );
    // A fresh virtualenv, the wheel alone (no index: nothing else is fetched).
    let root = tempfile::tempdir().unwrap();
    let venv = root.path().join("venv");
    let o = Command::new("python3")
        .arg("-m")
        .arg("venv")
        .arg(&venv)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", output_text(&o));
    let o = Command::new(venv.join("bin/pip"))
        .args(["install", "--no-index", "--disable-pip-version-check", "-q"])
        .arg(&wheel)
        .output()
        .unwrap();
    assert!(o.status.success(), "pip install: {}", output_text(&o));
    assert!(venv.join("share/man/man1/envd-up.1").is_file());
    let from_wheel = |args: &[&str]| {
        Command::new(venv.join("bin/envd"))
            .args(args)
            .env("ENVD_CONFIG_DIR", envd_e2e::test_config_dir())
            .env("ENVD_SSH_CONFIG", envd_e2e::ssh_config_path())
            .env_remove("ENVD_RUNTIME_DIR")
            .output()
            .unwrap()
    };
    let o = from_wheel(&["debug", "runtime"]);
    let runtime = venv.join("share/envd-rs/runtime");
    assert!(
        o.status.success()
            && output_text(&o).contains(&format!("{}/envd-init (static)", runtime.display())),
        "{}",
        output_text(&o)
    );
    let dir = root.path().join(NAME);
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(
        dir.join("build.envd"),
        "def build():\n    base(image=\"debian:bookworm\", dev=True)\n    install.python()\n",
    )
    .unwrap();
    let _down = Down(NAME);
    let o = from_wheel(&["up", "--path", dir.to_str().unwrap(), "--detach"]);
    assert!(o.status.success(), "{}", output_text(&o));
    let o = from_wheel(&["exec", "--name", NAME, "-T", "--", "cat", "/proc/1/comm"]);
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        "envd-init",
        "{}",
        output_text(&o)
    );
}

/// Docker Engine 26 beside the system's (`scripts/engine26-up`, idempotent): an engine of this
/// test's own, as the suite's other tests build images a prune would remove. Its DOCKER_HOST.
fn own_engine() -> String {
    let o = Command::new("timeout")
        .arg("600")
        .arg(workspace_root().join("scripts/engine26-up"))
        .output()
        .expect("run scripts/engine26-up");
    assert!(
        o.status.success(),
        "scripts/engine26-up: {}",
        output_text(&o)
    );
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    text.lines()
        .last()
        .expect("engine26-up prints DOCKER_HOST")
        .trim()
        .to_string()
}

#[test]
fn prune_asks_then_removes_my_stopped_environments_and_what_nothing_uses() {
    let host = own_engine();
    let docker = |args: &[&str]| {
        let o = Command::new("docker")
            .env("DOCKER_HOST", &host)
            .args(args)
            .output()
            .unwrap();
        assert!(o.status.success(), "docker {args:?}: {}", output_text(&o));
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    };
    let exists = |kind: &str, name: &str| {
        Command::new("docker")
            .env("DOCKER_HOST", &host)
            .args([kind, "inspect", name])
            .output()
            .unwrap()
            .status
            .success()
    };
    // Two images as envd labels its builds (one file each), a stopped environment of mine on
    // the first, another user's on the second, and an image of nobody's.
    let dir = tempfile::tempdir().unwrap();
    let tar = dir.path().join("layer.tar");
    let mut t = tar::Builder::new(std::fs::File::create(&tar).unwrap());
    let mut h = tar::Header::new_gnu();
    h.set_size(3);
    h.set_mode(0o644);
    h.set_cksum();
    t.append_data(&mut h, "marker", &b"hi\n"[..]).unwrap();
    t.finish().unwrap();
    let label = "LABEL ai.tensorchord.envd.build.digest=prune-test";
    for tag in ["prune-mine:dev", "prune-theirs:dev", "prune-free:dev"] {
        docker(&["import", "--change", label, tar.to_str().unwrap(), tag]);
    }
    // An image with a second name, as `envd up` on a cluster tags what it pushes.
    docker(&[
        "tag",
        "prune-free:dev",
        "127.0.0.1:5000/envd/prune-free:abc",
    ]);
    let _ = Command::new("docker")
        .env("DOCKER_HOST", &host)
        .args(["rm", "-f", "prune-mine.root", "prune-theirs.ada"])
        .output();
    let env_labels = |name: &str, owner: &str| {
        vec![
            "--label".to_string(),
            format!("ai.tensorchord.envd.name={name}"),
            "--label".to_string(),
            format!("ai.tensorchord.envd.owner={owner}"),
        ]
    };
    let uid = nix::unistd::getuid().as_raw().to_string();
    let mut create = vec![
        "create".to_string(),
        "--name".into(),
        "prune-mine.root".into(),
    ];
    create.extend(env_labels("prune-mine", &uid));
    create.extend(["prune-mine:dev".into(), "true".into()]);
    docker(&create.iter().map(String::as_str).collect::<Vec<_>>());
    let mut create = vec![
        "create".to_string(),
        "--name".into(),
        "prune-theirs.ada".into(),
    ];
    create.extend(env_labels("prune-theirs", "4242"));
    create.extend(["prune-theirs:dev".into(), "true".into()]);
    docker(&create.iter().map(String::as_str).collect::<Vec<_>>());

    let prune = |args: &[&str]| {
        isolated(Command::new(envd_bin()).arg("prune").args(args))
            .env("DOCKER_HOST", &host)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap()
    };
    // Without a terminal to ask at and without --force: it lists, refuses, removes nothing.
    let o = prune(&[]);
    let text = output_text(&o);
    assert!(
        !o.status.success() && text.contains("--force removes without asking"),
        "{text}"
    );
    for listed in [
        "stopped environment prune-mine (container prune-mine.root)",
        "image prune-mine:dev",
        "image 127.0.0.1:5000/envd/prune-free:abc, prune-free:dev",
    ] {
        assert!(text.contains(listed), "{listed:?} not listed: {text}");
    }
    assert!(
        !text.contains("prune-theirs"),
        "another user's environment or its image listed: {text}"
    );
    assert!(exists("container", "prune-mine.root") && exists("image", "prune-free:dev"));
    // --format json without --force: the same list for a script, nothing asked or removed.
    let o = prune(&["--format", "json"]);
    assert!(o.status.success(), "{}", output_text(&o));
    let listed: serde_json::Value =
        serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", output_text(&o)));
    assert_eq!(listed["removed"], false, "{listed}");
    assert_eq!(listed["environments"][0][0], "prune-mine", "{listed}");
    let images: Vec<&serde_json::Value> = listed["images"].as_array().unwrap().iter().collect();
    assert!(
        images
            .iter()
            .any(|i| i["tags"].to_string().contains("prune-free:dev")),
        "{listed}"
    );
    assert!(!listed.to_string().contains("prune-theirs"), "{listed}");
    assert!(exists("container", "prune-mine.root") && exists("image", "prune-free:dev"));
    // --force: mine and what nothing uses go; another user's environment and its image stay.
    let o = prune(&["--force"]);
    assert!(o.status.success(), "{}", output_text(&o));
    assert!(
        !exists("container", "prune-mine.root"),
        "{}",
        output_text(&o)
    );
    assert!(!exists("image", "prune-mine:dev") && !exists("image", "prune-free:dev"));
    assert!(
        !exists("image", "127.0.0.1:5000/envd/prune-free:abc"),
        "{}",
        output_text(&o)
    );
    assert!(exists("container", "prune-theirs.ada") && exists("image", "prune-theirs:dev"));
    let o = prune(&["--force"]);
    assert!(!output_text(&o).contains("prune-"), "{}", output_text(&o));
    docker(&["rm", "prune-theirs.ada"]);
    docker(&["rmi", "prune-theirs:dev"]);
}
