//! # envd-shell
//!
//! The shell and prompt files the builder writes into an environment's home directory: rc files
//! for bash, zsh and fish (PATH, environment variables, Python environment activation, and the
//! prompt) and a starship config with plain-text symbols, so nothing needs a Nerd Font.
//!
//! The prompt shows where you are: the environment's name, the directory, the git branch, the
//! Python virtualenv or conda environment, and the last command's exit status when it failed.
//! When `starship` is on PATH the rc files hand the prompt to it (with [`starship_config`]);
//! otherwise a built-in prompt per shell shows the same facts.

#![warn(missing_docs)]

use std::path::PathBuf;

/// The shells envd supports, as `shell()` names them in build files (and as a build graph
/// serializes them: `"bash"`, `"zsh"`, `"fish"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Shell {
    /// GNU bash (the default).
    #[default]
    Bash,
    /// zsh.
    Zsh,
    /// fish.
    Fish,
}

impl std::str::FromStr for Shell {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "bash" => Ok(Shell::Bash),
            "zsh" => Ok(Shell::Zsh),
            "fish" => Ok(Shell::Fish),
            other => Err(format!(
                "unsupported shell {other:?}; envd supports \"bash\", \"zsh\" and \"fish\""
            )),
        }
    }
}

impl Shell {
    /// The usual path of the shell's binary in Debian-based images.
    pub fn path(self) -> &'static str {
        match self {
            Shell::Bash => "/bin/bash",
            Shell::Zsh => "/usr/bin/zsh",
            Shell::Fish => "/usr/bin/fish",
        }
    }
}

/// What the rc files set up.
#[derive(Debug, Clone, Default)]
pub struct Setup {
    /// The environment's name, shown first in the prompt.
    pub env_name: String,
    /// Directories put in front of PATH (e.g. the Python venv's `bin`).
    pub extra_path: Vec<String>,
    /// Variables to export (`runtime.environ`).
    pub env: Vec<(String, String)>,
    /// A Python virtualenv to activate (its directory).
    pub venv: Option<String>,
    /// A conda environment to activate (`conda activate NAME`), when conda is installed.
    pub conda_env: Option<String>,
}

/// A file to write, relative to the user's home directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HomeFile {
    /// Path relative to the home directory.
    pub path: PathBuf,
    /// Its content.
    pub content: String,
}

/// Every file the shell needs in the home directory: the rc files of `shell` (bash's are always
/// written too, since `bash -c` is what exec sessions and tools use) and the starship config.
pub fn home_files(shell: Shell, setup: &Setup) -> Vec<HomeFile> {
    let mut files = vec![
        HomeFile {
            path: ".bashrc".into(),
            content: bashrc(setup),
        },
        HomeFile {
            // A login bash reads this instead of .bashrc; keep one source of truth.
            path: ".bash_profile".into(),
            content: "# Written by envd.\n[ -f ~/.profile ] && . ~/.profile\n[ -f ~/.bashrc ] && . ~/.bashrc\n".into(),
        },
        HomeFile {
            path: ".config/starship.toml".into(),
            content: starship_config(&setup.env_name),
        },
    ];
    match shell {
        Shell::Bash => {}
        Shell::Zsh => files.push(HomeFile {
            path: ".zshrc".into(),
            content: zshrc(setup),
        }),
        Shell::Fish => files.push(HomeFile {
            path: ".config/fish/config.fish".into(),
            content: fish_config(setup),
        }),
    }
    files
}

fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

fn posix_common(setup: &Setup) -> String {
    let mut out = String::new();
    for dir in setup.extra_path.iter().rev() {
        out.push_str(&format!(
            "case \":$PATH:\" in *:{dir}:*) ;; *) export PATH={q}:\"$PATH\" ;; esac\n",
            dir = dir,
            q = sh_quote(dir)
        ));
    }
    for (k, v) in &setup.env {
        out.push_str(&format!("export {k}={}\n", sh_quote(v)));
    }
    out.push_str(&format!("export ENVD_NAME={}\n", sh_quote(&setup.env_name)));
    if let Some(venv) = &setup.venv {
        out.push_str(&format!(
            "# Our prompt shows the virtualenv; stop activate from editing the prompt too.\nexport VIRTUAL_ENV_DISABLE_PROMPT=1\n[ -f {q}/bin/activate ] && . {q}/bin/activate\n",
            q = sh_quote(venv)
        ));
    }
    if let Some(env) = &setup.conda_env {
        out.push_str(&format!(
            "command -v conda >/dev/null 2>&1 && conda activate {} 2>/dev/null\n",
            sh_quote(env)
        ));
    }
    out
}

/// `~/.bashrc`.
pub fn bashrc(setup: &Setup) -> String {
    format!(
        r#"# Written by envd: environment, then the prompt.
{common}
# Only interactive shells get a prompt.
case $- in *i*) ;; *) return ;; esac

if command -v starship >/dev/null 2>&1; then
  export STARSHIP_CONFIG="$HOME/.config/starship.toml"
  eval "$(starship init bash)"
else
  __envd_prompt() {{
    local status=$? git="" pyenv=""
    git=$(git symbolic-ref --short HEAD 2>/dev/null || git rev-parse --short HEAD 2>/dev/null)
    [ -n "$VIRTUAL_ENV" ] && pyenv="py:${{VIRTUAL_ENV##*/}} "
    [ -n "$CONDA_DEFAULT_ENV" ] && pyenv="conda:$CONDA_DEFAULT_ENV "
    PS1="[envd:$ENVD_NAME] \w ${{git:+git:$git }}$pyenv"
    [ "$status" -ne 0 ] && PS1+="x $status "
    PS1+="> "
  }}
  PROMPT_COMMAND=__envd_prompt
fi
"#,
        common = posix_common(setup)
    )
}

/// `~/.zshrc`.
pub fn zshrc(setup: &Setup) -> String {
    format!(
        r#"# Written by envd: environment, then the prompt.
{common}
if command -v starship >/dev/null 2>&1; then
  export STARSHIP_CONFIG="$HOME/.config/starship.toml"
  eval "$(starship init zsh)"
else
  setopt PROMPT_SUBST
  __envd_precmd() {{
    local st=$?
    __envd_git=$(git symbolic-ref --short HEAD 2>/dev/null || git rev-parse --short HEAD 2>/dev/null)
    __envd_py=""
    [ -n "$VIRTUAL_ENV" ] && __envd_py="py:${{VIRTUAL_ENV:t}} "
    [ -n "$CONDA_DEFAULT_ENV" ] && __envd_py="conda:$CONDA_DEFAULT_ENV "
    __envd_status=""
    [ $st -ne 0 ] && __envd_status="x $st "
  }}
  precmd_functions+=(__envd_precmd)
  PROMPT='[envd:$ENVD_NAME] %~ ${{__envd_git:+git:$__envd_git }}$__envd_py$__envd_status> '
fi
"#,
        common = posix_common(setup)
    )
}

fn fish_quote(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// `~/.config/fish/config.fish`.
pub fn fish_config(setup: &Setup) -> String {
    let mut common = String::new();
    for dir in setup.extra_path.iter().rev() {
        common.push_str(&format!(
            "fish_add_path --prepend --path {}\n",
            fish_quote(dir)
        ));
    }
    for (k, v) in &setup.env {
        common.push_str(&format!("set -gx {k} {}\n", fish_quote(v)));
    }
    common.push_str(&format!(
        "set -gx ENVD_NAME {}\n",
        fish_quote(&setup.env_name)
    ));
    if let Some(venv) = &setup.venv {
        common.push_str(&format!(
            "set -gx VIRTUAL_ENV_DISABLE_PROMPT 1\nif test -f {q}/bin/activate.fish\n  source {q}/bin/activate.fish\nend\n",
            q = fish_quote(venv)
        ));
    }
    if let Some(env) = &setup.conda_env {
        common.push_str(&format!(
            "if type -q conda\n  conda activate {} 2>/dev/null\nend\n",
            fish_quote(env)
        ));
    }
    format!(
        r#"# Written by envd: environment, then the prompt.
{common}
if not status is-interactive
  exit
end
set -g fish_greeting
if type -q starship
  set -gx STARSHIP_CONFIG $HOME/.config/starship.toml
  starship init fish | source
else
  function fish_prompt
    set -l st $status
    set -l git (git symbolic-ref --short HEAD 2>/dev/null; or git rev-parse --short HEAD 2>/dev/null)
    set -l out "[envd:$ENVD_NAME] "(prompt_pwd)" "
    if test -n "$git"
      set out "$out""git:$git "
    end
    if set -q VIRTUAL_ENV
      set out "$out""py:"(basename $VIRTUAL_ENV)" "
    end
    if set -q CONDA_DEFAULT_ENV
      set out "$out""conda:$CONDA_DEFAULT_ENV "
    end
    if test $st -ne 0
      set out "$out""x $st "
    end
    echo -n "$out> "
  end
end
"#
    )
}

/// A starship config that shows the environment's name, the Python/conda environment, the git
/// branch and the last exit status, using only plain-text symbols so it renders in any font.
pub fn starship_config(env_name: &str) -> String {
    let name = env_name.replace('\\', "\\\\").replace('"', "\\\"");
    format!(
        r#"# Written by envd: plain-text symbols, no Nerd Font needed.
format = "[\\[envd:{name}\\]](bold blue) $directory$git_branch$git_status$python$conda$status$character"
add_newline = false

[directory]
truncation_length = 3
read_only = " ro"

[git_branch]
symbol = "git:"
format = "[$symbol$branch]($style) "

[git_status]
format = '([\[$all_status$ahead_behind\]]($style) )'
conflicted = "="
ahead = ">"
behind = "<"
diverged = "<>"
up_to_date = ""
untracked = "?"
stashed = '\$'
modified = "!"
staged = "+"
renamed = "r"
deleted = "x"
typechanged = "t"

[python]
symbol = "py:"
format = '[$symbol$pyenv_prefix($version )(\($virtualenv\) )]($style)'

[conda]
symbol = "conda:"
format = "[$symbol$environment]($style) "
ignore_base = false

[status]
disabled = false
symbol = "x "
format = "[$symbol$status]($style) "

[character]
success_symbol = "[>](bold green)"
error_symbol = "[>](bold red)"
vimcmd_symbol = "[<](bold green)"
"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> Setup {
        Setup {
            env_name: "demo".into(),
            extra_path: vec!["/opt/tools/bin".into()],
            env: vec![("GREETING".into(), "it's here".into())],
            venv: Some("/home/envd/.venv".into()),
            conda_env: None,
        }
    }

    #[test]
    fn starship_config_is_plain_ascii() {
        let c = starship_config("demo");
        assert!(c.contains("envd:demo"));
        assert!(
            c.is_ascii(),
            "Nerd Font or other non-ASCII symbols slipped in"
        );
        // starship's own defaults for these are not ASCII (renamed is U+00BB, ahead U+21E1,
        // the vi-mode character U+276E): every one is set here.
        for key in [
            "conflicted =",
            "ahead =",
            "behind =",
            "diverged =",
            "up_to_date =",
            "untracked =",
            "stashed =",
            "modified =",
            "staged =",
            "renamed =",
            "deleted =",
            "typechanged =",
            "success_symbol =",
            "error_symbol =",
            "vimcmd_symbol =",
            "read_only =",
        ] {
            assert!(c.contains(key), "{key} is left to starship's default");
        }
    }

    #[test]
    fn every_file_is_ascii_and_names_the_environment() {
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            for f in home_files(shell, &setup()) {
                assert!(f.content.is_ascii(), "{}", f.path.display());
            }
        }
        assert!(bashrc(&setup()).contains("export ENVD_NAME='demo'"));
        assert!(bashrc(&setup()).contains("export GREETING='it'\\''s here'"));
        assert!(fish_config(&setup()).contains("set -gx GREETING 'it\\'s here'"));
    }

    #[test]
    fn each_shell_gets_its_rc_file() {
        let paths = |s| {
            home_files(s, &setup())
                .into_iter()
                .map(|f| f.path)
                .collect::<Vec<_>>()
        };
        assert!(paths(Shell::Zsh).contains(&PathBuf::from(".zshrc")));
        assert!(paths(Shell::Fish).contains(&PathBuf::from(".config/fish/config.fish")));
        assert!(paths(Shell::Bash).contains(&PathBuf::from(".bashrc")));
    }

    #[test]
    fn shells_parse() {
        assert_eq!("zsh".parse::<Shell>(), Ok(Shell::Zsh));
        assert!("tcsh".parse::<Shell>().unwrap_err().contains("unsupported"));
    }
}
