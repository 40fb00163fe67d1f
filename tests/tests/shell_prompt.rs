//! The prompt a user sees: for bash, zsh and fish, a real login shell through envd-sshd (run as
//! an unprivileged user, as in an environment) with the rc files envd-shell generates shows the
//! environment's name, the git branch, the Python virtualenv and a failed command's status, both
//! with the rc files' own prompt and with starship (envd's plain-text starship.toml), in ASCII.

use std::process::Command;

use envd_e2e::sshd::Sshd;
use envd_e2e::Then;
use envd_shell::{home_files, Setup, Shell};

struct TestUser {
    name: String,
    uid: u32,
    gid: u32,
    home: tempfile::TempDir,
}

impl TestUser {
    fn create(shell: Shell) -> TestUser {
        envd_e2e::require_root();
        assert!(
            std::path::Path::new(shell.path()).exists(),
            "{} is not installed; scripts/test installs zsh and fish",
            shell.path()
        );
        let home = tempfile::Builder::new()
            .prefix("envd-shell-home")
            .tempdir()
            .unwrap();
        let name = format!(
            "envdsh{}{}",
            std::process::id() % 100000,
            shell.path().len()
        );
        let _ = Command::new("userdel").arg(&name).output();
        let out = Command::new("useradd")
            .args(["-M", "-U", "-s", shell.path(), "-d"])
            .arg(home.path())
            .arg(&name)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "useradd: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let user = nix::unistd::User::from_name(&name).unwrap().unwrap();
        TestUser {
            name,
            uid: user.uid.as_raw(),
            gid: user.gid.as_raw(),
            home,
        }
    }
}

impl Drop for TestUser {
    fn drop(&mut self) {
        let _ = Command::new("pkill").args(["-u", &self.name]).output();
        let _ = Command::new("userdel").arg(&self.name).output();
    }
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Logs in interactively in a real terminal, waits for the prompt, runs `cd project && false`,
/// waits for the next prompt (showing the status), exits; returns the whole screen.
fn interactive_login(s: &Sshd) -> String {
    s.in_terminal(
        None,
        &[
            // The environment the rc file sets reaches the shell (every shell reads `$NAME`).
            (
                "[envd:demo]",
                Then::Type("echo greeting=$GREETING; cd project && false\n"),
            ),
            ("x 1 ", Then::Type("exit\n")),
        ],
    )
}

/// A repository whose `git status` has one change of each kind starship shows: modified,
/// staged, renamed, deleted, untracked and stashed (its defaults draw some of them with
/// non-ASCII symbols).
fn stage_changes_of_every_kind(repo: &std::path::Path) {
    let git = |args: &[&str]| {
        run(Command::new("git")
            .args([
                "-c",
                "user.name=t",
                "-c",
                "user.email=t@example.invalid",
                "-C",
            ])
            .arg(repo)
            .args(args))
    };
    for f in ["modified", "renamed", "deleted", "stashed"] {
        std::fs::write(repo.join(f), "one\n").unwrap();
    }
    git(&["add", "."]);
    git(&["commit", "-q", "-m", "first"]);
    std::fs::write(repo.join("stashed"), "two\n").unwrap();
    git(&["stash", "-q"]);
    std::fs::write(repo.join("modified"), "two\n").unwrap();
    git(&["mv", "renamed", "renamed-now"]);
    std::fs::remove_file(repo.join("deleted")).unwrap();
    std::fs::write(repo.join("staged"), "new\n").unwrap();
    git(&["add", "staged"]);
    std::fs::write(repo.join("untracked"), "new\n").unwrap();
}

/// starship from crates.io, which `scripts/test` builds into target/peers (Debian 12 has none).
fn starship_binary() -> std::path::PathBuf {
    let p = envd_e2e::workspace_root().join("target/peers/bin/starship");
    assert!(
        p.exists(),
        "{} is missing; scripts/test builds it (cargo install starship)",
        p.display()
    );
    p
}

/// Which prompt the rc files end up with.
#[derive(PartialEq)]
enum Prompt {
    /// No starship on PATH: the rc file's own prompt.
    BuiltIn,
    /// starship on PATH: `starship init` with envd's starship.toml.
    Starship,
}

fn prompt_test(shell: Shell, prompt: Prompt) {
    let user = TestUser::create(shell);
    let home = user.home.path();
    let venv = home.join(".venv");
    run(Command::new("python3")
        .args(["-m", "venv", "--without-pip"])
        .arg(&venv));
    let mut extra_path = vec![];
    if prompt == Prompt::Starship {
        // Installed where a user's tools go, and found only through the PATH the rc file sets.
        let bin = home.join(".local/bin");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::copy(starship_binary(), bin.join("starship")).unwrap();
        extra_path.push(bin.to_string_lossy().into_owned());
    }
    let setup = Setup {
        env_name: "demo".into(),
        extra_path,
        env: vec![("GREETING".into(), "hello".into())],
        venv: Some(venv.to_string_lossy().into_owned()),
        conda_env: None,
    };
    for f in home_files(shell, &setup) {
        let path = home.join(&f.path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, f.content).unwrap();
    }
    let project = home.join("project");
    std::fs::create_dir(&project).unwrap();
    run(Command::new("git")
        .args(["init", "-q", "-b", "feature-x"])
        .arg(&project));
    stage_changes_of_every_kind(&project);
    run(Command::new("chown")
        .arg("-R")
        .arg(format!("{}:{}", user.uid, user.gid))
        .arg(home));
    let s = Sshd::start_as(Some((user.uid, user.gid)), &["--shell", shell.path()]);
    let screen = interactive_login(&s);
    let expected: &[&str] = match prompt {
        Prompt::BuiltIn => &["[envd:demo] ", "git:feature-x ", "py:.venv ", "x 1 "],
        // starship's python module shows the interpreter's version, which the built-in prompt
        // does not: proof that starship drew it.
        Prompt::Starship => &[
            "[envd:demo] ",
            "git:feature-x ",
            // starship's git status, every kind: stashed, deleted, renamed, modified, staged,
            // untracked.
            "[$xr!+?]",
            "py:v3.",
            "(.venv)",
            "x 1 ",
        ],
    };
    assert!(
        screen.contains("greeting=hello"),
        "{shell:?}: the rc file's environment did not reach the shell:\n{screen}"
    );
    for expected in expected {
        assert!(
            screen.contains(expected),
            "{shell:?}: {expected:?} missing from:\n{screen}\n{}",
            s.log()
        );
    }
    // The login environment: the rc file's variables reach commands too (bash -c reads
    // nothing, so check through an interactive login shell's view).
    assert!(
        !screen.contains("command not found"),
        "{shell:?}:\n{screen}"
    );
    // No Nerd Font (private-use) glyph anywhere, and the prompts themselves are plain ASCII, so
    // they render in any font. (fish draws its own "missing newline" mark, U+23CE, before a
    // prompt: that is fish's, so only the text from the prompt on is checked.)
    // Private use: the BMP's area and planes 15-16 (Nerd Fonts 3's Material Design icons).
    let private_use = |c: &char| ('\u{e000}'..='\u{f8ff}').contains(c) || *c >= '\u{f0000}';
    assert!(
        !screen.chars().any(|c| private_use(&c)),
        "{shell:?}: a Nerd Font glyph on screen:\n{screen}"
    );
    for line in screen.lines() {
        if let Some(at) = line.find("[envd:demo]") {
            assert!(
                line[at..].is_ascii(),
                "{shell:?}: a non-ASCII prompt: {line}"
            );
        }
    }
    assert!(
        !screen.contains("ERROR") && !screen.contains("WARN"),
        "{shell:?}: starship complained:\n{screen}"
    );
}

#[test]
fn bash_prompt() {
    prompt_test(Shell::Bash, Prompt::BuiltIn);
}

#[test]
fn zsh_prompt() {
    prompt_test(Shell::Zsh, Prompt::BuiltIn);
}

#[test]
fn fish_prompt() {
    prompt_test(Shell::Fish, Prompt::BuiltIn);
}

#[test]
fn bash_starship_prompt() {
    prompt_test(Shell::Bash, Prompt::Starship);
}

#[test]
fn zsh_starship_prompt() {
    prompt_test(Shell::Zsh, Prompt::Starship);
}

#[test]
fn fish_starship_prompt() {
    prompt_test(Shell::Fish, Prompt::Starship);
}
