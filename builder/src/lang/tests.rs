use std::path::{Path, PathBuf};

use super::*;

/// The 51 public build files of envd's users, an optional extra check: `scripts/test` points
/// `ENVD_CORPUS_DIR` at them when they are there (beside the development checkout only). Without
/// it, the corpus tests say so and check nothing; the project's own programs
/// (`builder/tests/programs`, below) cover the language on their own.
fn corpus_dir() -> Option<PathBuf> {
    match std::env::var_os("ENVD_CORPUS_DIR").map(PathBuf::from) {
        Some(dir) if dir.is_dir() => Some(dir),
        _ => {
            eprintln!(
                "note: ENVD_CORPUS_DIR is not set: the public corpus is not checked in this run"
            );
            None
        }
    }
}

/// Compiles a graph the way `envd build` does, with stand-in image names.
fn compile_for_test(dir: &Path, graph: &Graph) -> anyhow::Result<crate::compile::Compiled> {
    let context = crate::build_context::collect(dir, graph)?;
    crate::compile::compile(
        graph,
        &crate::compile::Inputs {
            env_name: "test".into(),
            runtime_image: Some(crate::buildkit::llb::ClientFiles::Image(
                "envd-rs/runtime:test".into(),
            )),
            program_hash: "test".into(),
            host_ca: None,
            context_image: (!context.is_empty())
                .then(|| crate::buildkit::llb::ClientFiles::Image(context.image())),
            merge: false,
            workdir_name: "test".into(),
        },
    )
}

/// The project's own build files (see their README).
fn programs() -> Vec<(String, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/programs");
    let mut out: Vec<(String, String)> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "envd"))
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read_to_string(&p).unwrap())
        })
        .collect();
    out.sort();
    out
}

/// A project directory holding `text` as build.envd and every context file the programs name.
fn project_with_files(text: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    std::fs::write(p.join("build.envd"), text).unwrap();
    std::fs::write(p.join("requirements.txt"), "six\n").unwrap();
    std::fs::write(p.join("environment.yml"), "dependencies:\n  - numpy\n").unwrap();
    for (file, bytes) in [
        ("data/a.csv", &b"x,y\n"[..]),
        ("wheels/six-1.16.0-py2.py3-none-any.whl", b"PK"),
        ("tools/hello.vsix", b"PK"),
    ] {
        std::fs::create_dir_all(p.join(file).parent().unwrap()).unwrap();
        std::fs::write(p.join(file), bytes).unwrap();
    }
    dir
}

#[test]
fn our_programs_evaluate_and_compile() {
    let all = programs();
    assert!(all.len() >= 6, "{all:?}");
    for (name, text) in all {
        let dir = project_with_files(&text);
        let graph = evaluate_with_cache(dir.path(), &Entry::default(), &dir.path().join("cache"))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let compiled = compile_for_test(dir.path(), &graph);
        if name == "refused_rstudio.envd" {
            let e = format!("{:#}", compiled.expect_err("rstudio compiles"));
            assert!(e.contains("config.rstudio_server"), "{e}");
        } else {
            let c = compiled.unwrap_or_else(|e| panic!("{name}: {e:#}"));
            assert!(c.definition.def.len() > 2, "{name}");
        }
    }
}

/// Every function of the v1 API is called by at least one of the project's programs; `include`
/// is the one exception, covered by the tests that include a local git repository below.
#[test]
fn our_programs_cover_the_whole_api() {
    let text: String = programs().into_iter().map(|(_, t)| t).collect();
    let mut missing = Vec::new();
    for (namespace, members) in namespace_members() {
        for m in members {
            let call = format!("{namespace}.{m}");
            if m != "path" && !text.contains(&format!("{call}(")) {
                missing.push(call);
            }
        }
    }
    for f in ["base", "shell", "run", "git_config"] {
        if !text.contains(&format!("{f}(")) {
            missing.push(f.to_string());
        }
    }
    for p in ["data.path.huggingface", "data.path.dgl"] {
        if !text.contains(p) {
            missing.push(p.to_string());
        }
    }
    assert!(
        missing.is_empty(),
        "no program in builder/tests/programs calls: {missing:?}"
    );
}

fn eval_text(text: &str) -> Result<Graph, LangError> {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("build.envd"), text).unwrap();
    evaluate_with_cache(dir.path(), &Entry::default(), &dir.path().join("cache"))
}

/// Files that include a GitHub repository, which no test here can reach.
const NEEDS_GITHUB: [&str; 4] = [
    "e2e__docs__testdata__envdlib.envd",
    "examples__include_pkg.envd",
    "examples__pytorch-profiler.envd",
    "examples__pytorch2.envd",
];

#[test]
fn every_corpus_file_evaluates() {
    let Some(dir) = corpus_dir() else { return };
    let mut failures = Vec::new();
    let mut count = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let work = tempfile::tempdir().unwrap();
        std::fs::copy(&path, work.path().join("build.envd")).unwrap();
        let result =
            evaluate_with_cache(work.path(), &Entry::default(), &work.path().join("cache"));
        count += 1;
        match (result, NEEDS_GITHUB.contains(&name.as_str())) {
            (Ok(_), false) => {}
            (Err(e), true) if e.message.contains("cannot clone") && e.line > 0 => {}
            (r, _) => failures.push(format!("{name}: {r:?}")),
        }
    }
    assert_eq!(count, 51, "the corpus has 51 files");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Files that name build-context files the corpus does not ship.
const NEEDS_CONTEXT_FILES: [&str; 5] = [
    "e2e__language__testdata__python__conda.envd",
    "e2e__language__testdata__python__conda_channel.envd",
    "e2e__language__testdata__python__hybrid.envd",
    "e2e__language__testdata__python__requirements.envd",
    "examples__resnet-serving-v1.envd",
];

#[test]
fn every_corpus_file_compiles_unless_it_needs_what_is_missing() {
    let mut failures = Vec::new();
    let mut compiled = 0;
    let Some(dir) = corpus_dir() else { return };
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if NEEDS_GITHUB.contains(&name.as_str()) {
            continue;
        }
        let work = tempfile::tempdir().unwrap();
        std::fs::copy(&path, work.path().join("build.envd")).unwrap();
        let graph = evaluate_with_cache(work.path(), &Entry::default(), &work.path().join("cache"))
            .unwrap();
        let result = compile_for_test(work.path(), &graph);
        match (result, name.as_str()) {
            (Ok(_), n) if !NEEDS_CONTEXT_FILES.contains(&n) && n != "examples__r-basic.envd" => {
                compiled += 1
            }
            (Err(e), n) if NEEDS_CONTEXT_FILES.contains(&n) => {
                let e = format!("{e:#}");
                assert!(e.contains("missing from the build context"), "{n}: {e}");
            }
            (Err(e), "examples__r-basic.envd") => {
                assert!(e.to_string().contains("config.rstudio_server"), "{e}")
            }
            (r, n) => failures.push(format!("{n}: {:?}", r.map(|_| "compiled"))),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(compiled, 41);
}

#[test]
fn records_the_program() {
    let g = eval_text(
        r#"# syntax=v1
def build():
    base(image="debian:bookworm", dev=True)
    shell("zsh")
    install.python()
    install.apt_packages(name=["curl"])
    install.python_packages(name=["numpy"])
    config.jupyter()
    runtime.daemon(commands=[["python3", "-m", "http.server"]])
    runtime.expose(envd_port=8000, service="files")
"#,
    )
    .unwrap();
    assert_eq!(g.image, "debian:bookworm");
    assert!(g.dev);
    assert_eq!(g.shell, envd_shell::Shell::Zsh);
    assert_eq!(
        g.languages,
        vec![Language::Python {
            version: "3.11".into()
        }]
    );
    assert_eq!(g.apt_packages, vec!["curl"]);
    assert_eq!(g.python_packages, vec!["numpy"]);
    assert_eq!(g.config.jupyter.as_ref().unwrap().port, 8888);
    assert_eq!(g.runtime.daemons[0][0], "python3");
    assert_eq!(g.runtime.expose[0].listen_addr, "127.0.0.1");
}

#[test]
fn misspelt_function_is_located_with_a_suggestion() {
    let e =
        eval_text("def build():\n    base(dev=True)\n    install.pythn_packages(name=[\"x\"])\n")
            .unwrap_err();
    assert_eq!((e.line, e.column), (3, 5), "{e}");
    assert!(e.message.contains("python_packages"), "{e}");
    assert!(e.to_string().contains("build.envd:3:5: "), "{e}");
}

#[test]
fn wrong_type_and_unknown_keyword_are_errors() {
    let e = eval_text("def build():\n    install.python(version=3)\n").unwrap_err();
    assert_eq!(e.line, 2, "{e}");
    assert!(e.message.contains("version"), "{e}");
    let e = eval_text("def build():\n    install.python(verison=\"3.11\")\n").unwrap_err();
    assert_eq!(e.line, 2, "{e}");
    assert!(e.message.contains("verison"), "{e}");
    let e = eval_text("def build():\n    shell(\"tcsh\")\n").unwrap_err();
    assert!(e.message.contains("bash"), "{e}");
}

#[test]
fn missing_build_function_is_an_error() {
    let e = eval_text("def biuld():\n    base()\n").unwrap_err();
    assert!(e.message.contains("no function named \"build\""), "{e}");
    assert!(e.message.contains("biuld"), "{e}");
}

#[test]
fn v0_syntax_is_refused() {
    let e = eval_text("# syntax=v0\ndef build():\n    pass\n").unwrap_err();
    assert_eq!(e.line, 1);
    assert!(e.message.contains("v0"), "{e}");
}

#[test]
fn include_from_a_local_git_repository_and_cycles() {
    let work = tempfile::tempdir().unwrap();
    let lib = work.path().join("lib");
    std::fs::create_dir(&lib).unwrap();
    std::fs::write(
        lib.join("tools.envd"),
        "def tensorboard(port):\n    runtime.expose(envd_port=port, service=\"tensorboard\")\n_private = 1\n",
    )
    .unwrap();
    let git = |args: &[&str]| {
        let st = std::process::Command::new("git")
            .args(["-c", "user.name=t", "-c", "user.email=t@t", "-C"])
            .arg(&lib)
            .args(args)
            .output()
            .unwrap();
        assert!(
            st.status.success(),
            "{}",
            String::from_utf8_lossy(&st.stderr)
        );
    };
    git(&["init", "-q"]);
    git(&["add", "."]);
    git(&["commit", "-q", "-m", "lib"]);
    let ctx = work.path().join("ctx");
    std::fs::create_dir(&ctx).unwrap();
    std::fs::write(
        ctx.join("build.envd"),
        format!(
            "lib = include(git=\"file://{}\")\ndef build():\n    base(dev=True)\n    lib.tensorboard(6006)\n",
            lib.display()
        ),
    )
    .unwrap();
    let g = evaluate_with_cache(&ctx, &Entry::default(), &work.path().join("cache")).unwrap();
    assert_eq!(g.runtime.expose[0].envd_port, 6006);
    assert_eq!(g.runtime.expose[0].service, "tensorboard");
    // A library that includes itself.
    let selfref = work.path().join("selfref");
    std::fs::create_dir(&selfref).unwrap();
    std::fs::write(
        selfref.join("a.envd"),
        format!("x = include(git=\"{}\")\n", selfref.display()),
    )
    .unwrap();
    std::fs::write(
        ctx.join("build.envd"),
        format!(
            "lib = include(git=\"{}\")\ndef build():\n    pass\n",
            selfref.display()
        ),
    )
    .unwrap();
    let e = evaluate_with_cache(&ctx, &Entry::default(), &work.path().join("cache")).unwrap_err();
    assert!(e.message.contains("cycle"), "{e}");
}

#[test]
fn from_parses() {
    assert_eq!(
        "build.envd:build".parse::<Entry>().unwrap(),
        Entry::default()
    );
    assert_eq!("other.envd".parse::<Entry>().unwrap().function, "build");
    assert!(":x".parse::<Entry>().is_err());
}

#[test]
fn load_reads_a_file_of_the_build_context_once() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    std::fs::create_dir(p.join("lib")).unwrap();
    std::fs::write(
        p.join("lib/py.envd"),
        "def science(extra):\n    install.python_packages(name = [\"numpy\"] + extra)\n",
    )
    .unwrap();
    std::fs::write(
        p.join("build.envd"),
        "load(\"lib/py.envd\", \"science\")\nload(\"lib/py.envd\", again = \"science\")\n\
         def build():\n    science([\"six\"])\n",
    )
    .unwrap();
    let g = evaluate_with_cache(p, &Entry::default(), &p.join("cache")).unwrap();
    assert_eq!(g.python_packages, ["numpy", "six"]);
}

#[test]
fn load_names_a_missing_file_and_a_cycle() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    std::fs::write(
        p.join("build.envd"),
        "load(\"nowhere.envd\", \"f\")\ndef build():\n    pass\n",
    )
    .unwrap();
    let e = evaluate_with_cache(p, &Entry::default(), &p.join("cache")).unwrap_err();
    assert_eq!((e.line, e.column), (1, 1), "{e}");
    assert!(e.message.contains("nowhere.envd"), "{e}");
    assert!(e.message.contains("relative to the build context"), "{e}");
    std::fs::write(
        p.join("a.envd"),
        "load(\"b.envd\", \"g\")\ndef f():\n    pass\n",
    )
    .unwrap();
    std::fs::write(
        p.join("b.envd"),
        "load(\"a.envd\", \"f\")\ndef g():\n    pass\n",
    )
    .unwrap();
    std::fs::write(
        p.join("build.envd"),
        "load(\"a.envd\", \"f\")\ndef build():\n    f()\n",
    )
    .unwrap();
    let e = evaluate_with_cache(p, &Entry::default(), &p.join("cache")).unwrap_err();
    assert!(e.message.contains("forms a cycle"), "{e}");
    assert!(e.message.contains("a.envd -> "), "{e}");
}

#[test]
fn an_error_in_a_loaded_file_is_located_there() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    std::fs::write(
        p.join("lib.envd"),
        "def f():\n    pass\nx = undefined_name\n",
    )
    .unwrap();
    std::fs::write(
        p.join("build.envd"),
        "load(\"lib.envd\", \"f\")\ndef build():\n    f()\n",
    )
    .unwrap();
    let e = evaluate_with_cache(p, &Entry::default(), &p.join("cache")).unwrap_err();
    let shown = e.to_string();
    assert!(shown.contains("lib.envd:3"), "{shown}");
    assert!(shown.contains("undefined_name"), "{shown}");
}
