//! Our compiler checked against an independent reference: envd 1.3.6 (envd's last release,
//! from PyPI; `scripts/test` installs it into `target/peers/envd-1.3.6`). For build files in the
//! API both understand, what each file asks for must reach our LLB as envd 1.3.6 reads it: the
//! same base image, every apt package it installs, the same pip packages in the same order,
//! every `run` command and the pip index. The expected values come from envd 1.3.6's
//! `debug llb`, not from our code, so a misread argument fails here even where our own compile
//! tests would agree with themselves.
//!
//! envd 1.3.6 asks the base image's registry for its config before it prints anything; no
//! registry is reachable here, so `scripts/bench_registry.py` stands in for them (an HTTPS
//! proxy given to envd 1.3.6 alone, its certificate trusted by that process alone).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use base64::Engine as _;
use envd_builder::buildkit::proto::pb;
use envd_e2e::{output_text, workspace_root};
use prost::Message as _;

/// One build file, as each side read it.
const PROGRAMS: &[(&str, &str)] = &[
    (
        "python_dev",
        "def build():\n    base(image=\"debian:bookworm\", dev=True)\n    install.python()\n    install.apt_packages(name=[\"jq\", \"make\"])\n    install.python_packages(name=[\"numpy\", \"pandas==2.2.2\"])\n    run(commands=[\"echo hi\", \"make --version\"])\n",
    ),
    (
        "two_of_each",
        "def build():\n    base(image=\"ubuntu:22.04\", dev=True)\n    install.python()\n    install.apt_packages(name=[\"htop\"])\n    install.apt_packages(name=[\"tree\", \"less\"])\n    install.python_packages(name=[\"six\"])\n    install.python_packages(name=[\"requests>=2.31\", \"idna\"])\n    run(commands=[\"ls -la /\"])\n    run(commands=[\"python3 --version\"])\n",
    ),
    (
        "pip_index",
        "def build():\n    base(image=\"debian:bookworm\", dev=True)\n    install.python()\n    config.pip_index(url=\"https://mirror.example.org/simple\")\n    install.python_packages(name=[\"rich\"])\n",
    ),
];

/// What a file asked for, read from one side's LLB.
#[derive(Debug, Default)]
struct Asked {
    /// Every `docker-image://` source.
    images: Vec<String>,
    /// Each exec's arguments, joined with spaces, in the order of the definition.
    execs: Vec<String>,
    /// The text of every file written, exec's variables and the image config, to find the pip
    /// index.
    everything: String,
}

/// The stand-in registry, stopped when dropped.
struct Registry {
    child: Child,
    port: String,
    bundle: PathBuf,
    _dir: tempfile::TempDir,
}

impl Registry {
    fn start() -> Registry {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        let sans = [
            "registry-1.docker.io",
            "index.docker.io",
            "auth.docker.io",
            "docker.io",
        ]
        .map(|h| format!("DNS:{h}"))
        .join(",");
        let o = Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            ])
            .args(["-subj", "/CN=envd-reference-registry"])
            .args(["-addext", &format!("subjectAltName={sans}")])
            .args(["-addext", "basicConstraints=critical,CA:TRUE"])
            .args(["-addext", "extendedKeyUsage=serverAuth", "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .output()
            .expect("run openssl (scripts/test installs it)");
        assert!(o.status.success(), "{}", output_text(&o));
        let bundle = dir.path().join("bundle.pem");
        let mut trusted = std::fs::read("/etc/ssl/certs/ca-certificates.crt").unwrap_or_default();
        trusted.extend(std::fs::read(&cert).unwrap());
        std::fs::write(&bundle, trusted).unwrap();
        let port_file = dir.path().join("port");
        let child = Command::new("python3")
            .arg(workspace_root().join("scripts/bench_registry.py"))
            .args([&cert, &key, &port_file])
            .spawn()
            .expect("start the stand-in registry");
        let deadline = Instant::now() + Duration::from_secs(10);
        let port = loop {
            match std::fs::read_to_string(&port_file) {
                Ok(p) if !p.is_empty() => break p,
                _ if Instant::now() > deadline => panic!("the stand-in registry did not start"),
                _ => std::thread::sleep(Duration::from_millis(20)),
            }
        };
        Registry {
            child,
            port,
            bundle,
            _dir: dir,
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn reference_envd() -> PathBuf {
    let path = workspace_root().join("target/peers/envd-1.3.6/bin/envd");
    assert!(
        path.exists(),
        "{} is missing: scripts/test installs envd 1.3.6 from PyPI (scripts/lib/prereqs.sh, ensure_envd_reference)",
        path.display()
    );
    path
}

/// envd 1.3.6's `debug llb`: one JSON object per op, `Op` (BuildKit's op in JSON) and
/// `OpMetadata`.
fn theirs(dir: &Path, registry: &Registry) -> (Asked, Vec<(String, Vec<String>)>) {
    let proxy = format!("http://127.0.0.1:{}", registry.port);
    let o = Command::new(reference_envd())
        .args(["debug", "llb"])
        .current_dir(dir)
        .env("HTTPS_PROXY", &proxy)
        .env("https_proxy", &proxy)
        .env("NO_PROXY", "")
        .env("no_proxy", "")
        .env("SSL_CERT_FILE", &registry.bundle)
        .env("ENVD_ANALYTICS", "false")
        .output()
        .expect("run envd 1.3.6");
    assert!(o.status.success(), "envd 1.3.6: {}", output_text(&o));
    let mut asked = Asked::default();
    let mut named = Vec::new();
    for line in String::from_utf8_lossy(&o.stdout).lines() {
        let v: serde_json::Value = serde_json::from_str(line).expect("a JSON op");
        let op = &v["Op"]["Op"];
        for action in op["file"]["actions"].as_array().into_iter().flatten() {
            if let Some(data) = action["Action"]["mkfile"]["data"].as_str() {
                let data = base64::engine::general_purpose::STANDARD
                    .decode(data)
                    .unwrap();
                asked.everything.push_str(&String::from_utf8_lossy(&data));
            }
        }
        asked
            .everything
            .push_str(&op["exec"]["meta"]["env"].to_string());
        if let Some(id) = op["source"]["identifier"].as_str() {
            if let Some(image) = id.strip_prefix("docker-image://") {
                asked.images.push(image.to_string());
            }
        }
        if let Some(args) = op["exec"]["meta"]["args"].as_array() {
            let args: Vec<String> = args
                .iter()
                .filter_map(|a| a.as_str().map(str::to_string))
                .collect();
            let name = v["OpMetadata"]["description"]["llb.customname"]
                .as_str()
                .unwrap_or("")
                .to_string();
            asked.execs.push(args.join(" "));
            named.push((name, args));
        }
    }
    (asked, named)
}

/// Our plan for the same file, as `envd build` would send it to Docker's BuildKit.
fn ours(dir: &Path) -> Asked {
    let plan = envd_builder::build::plan(
        dir,
        &envd_builder::lang::Entry::default(),
        None,
        envd_builder::build::BuilderFeatures::default(),
    )
    .unwrap_or_else(|e| panic!("our compile of {}: {e:#}", dir.display()));
    let mut asked = Asked::default();
    for bytes in &plan.compiled.definition.def {
        let op = pb::Op::decode(bytes.as_slice()).expect("an op we encoded");
        match op.op {
            Some(pb::op::Op::File(f)) => {
                for action in f.actions {
                    if let Some(pb::file_action::Action::Mkfile(m)) = action.action {
                        asked.everything.push_str(&String::from_utf8_lossy(&m.data));
                    }
                }
            }
            Some(pb::op::Op::Source(s)) => {
                if let Some(image) = s.identifier.strip_prefix("docker-image://") {
                    asked.images.push(image.to_string());
                }
            }
            Some(pb::op::Op::Exec(e)) => {
                let meta = e.meta.unwrap_or_default();
                asked.execs.push(meta.args.join(" "));
                asked.everything.push_str(&meta.env.join(" "));
            }
            _ => {}
        }
    }
    let config = String::from_utf8_lossy(&plan.compiled.config).into_owned();
    asked.everything.push_str(&config);
    asked
}

/// The words of a shell command line, quotes removed.
fn words(text: &str) -> Vec<String> {
    text.split_whitespace()
        .map(|w| w.trim_matches(|c| c == '\'' || c == '"').to_string())
        .collect()
}

/// Package specs after each `pip install` in `exec`, flags (and what follows a flag that takes
/// a value) left out.
fn pip_specs(exec: &str) -> Vec<String> {
    let mut specs = Vec::new();
    for part in exec.split("pip install").skip(1) {
        let part = part.split(['&', ';', '\n', '|']).next().unwrap_or("");
        let mut skip_next = false;
        for w in words(part) {
            if skip_next {
                skip_next = false;
            } else if w.starts_with('-') {
                skip_next = matches!(
                    w.as_str(),
                    "-r" | "-i"
                        | "--index-url"
                        | "--extra-index-url"
                        | "--cache-dir"
                        | "--python"
                        | "--link-mode"
                        | "--target"
                        | "--prefix"
                        | "-c"
                );
            } else {
                specs.push(w);
            }
        }
    }
    specs
}

#[test]
fn what_each_file_asks_for_reaches_our_llb_as_envd_1_3_6_reads_it() {
    let registry = Registry::start();
    let mut report = BTreeMap::new();
    for (name, program) in PROGRAMS {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join(name);
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("build.envd"), program).unwrap();
        let (reference, named) = theirs(&dir, &registry);
        let ours = ours(&dir);

        // The base image: theirs is the first image source (their dev base is the file's).
        let base = &reference.images[0];
        assert!(
            ours.images.contains(base),
            "{name}: base {base} not in {:?}",
            ours.images
        );

        // apt: their user step is named "apt-get install PKG..."; each package is installed by
        // one of our apt-get steps.
        let apt_steps: Vec<Vec<String>> = (ours.execs.iter())
            .filter(|e| e.contains("apt-get install"))
            .map(|e| words(e))
            .collect();
        let mut apt_checked = 0;
        for (step, _) in named
            .iter()
            .filter(|(n, _)| n.starts_with("apt-get install "))
        {
            for pkg in words(step.trim_start_matches("apt-get install ")) {
                assert!(
                    apt_steps.iter().any(|s| s.contains(&pkg)),
                    "{name}: apt package {pkg} (envd 1.3.6: {step:?}) is not installed by our steps: {apt_steps:?}"
                );
                apt_checked += 1;
            }
        }

        // pip: the same specs, in the same order.
        let theirs_pip: Vec<String> = (named.iter())
            .filter(|(n, _)| n.starts_with("[internal] pip install "))
            .flat_map(|(_, args)| pip_specs(&args.join(" ")))
            .collect();
        let ours_pip: Vec<String> = ours.execs.iter().flat_map(|e| pip_specs(e)).collect();
        assert_eq!(ours_pip, theirs_pip, "{name}: pip packages");
        assert!(
            !theirs_pip.is_empty(),
            "{name}: the reference installs no pip package"
        );

        // run: envd 1.3.6 runs each call's commands under `set -euo pipefail`; every command is
        // in one of our steps.
        let mut runs_checked = 0;
        for (_, args) in &named {
            let Some(script) = args
                .get(2)
                .and_then(|s| s.strip_prefix("set -euo pipefail\n"))
            else {
                continue;
            };
            for command in script.lines().filter(|l| !l.trim().is_empty()) {
                assert!(
                    ours.execs.iter().any(|e| e.contains(command)),
                    "{name}: the command {command:?} is in none of our steps"
                );
                runs_checked += 1;
            }
        }

        // The pip index, wherever each side puts it (a pip.conf, the steps' environment).
        let url = "https://mirror.example.org/simple";
        assert_eq!(
            reference.everything.contains(url),
            *name == "pip_index",
            "{name}: where envd 1.3.6 names the pip index"
        );
        assert_eq!(
            ours.everything.contains(url),
            reference.everything.contains(url),
            "{name}: the pip index {url}"
        );
        report.insert(*name, (apt_checked, theirs_pip.len(), runs_checked));
    }
    // Each file had something of each kind it declares checked (not a vacuous pass).
    assert_eq!(report["python_dev"], (2, 2, 2), "{report:?}");
    assert_eq!(report["two_of_each"], (3, 3, 2), "{report:?}");
    assert_eq!(report["pip_index"].1, 1, "{report:?}");
}
