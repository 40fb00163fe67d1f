//! # envd-shell
//!
//! Generates the shell and prompt files the builder writes into images: a starship config with
//! plain-text symbols (no Nerd Font icons) and rc snippets for bash, zsh and fish.
//!
//! **Status:** the starship config below is real; the rc snippets and the login environment
//! arrive with issue 4.

/// The shells envd supports, as `shell()` names them in build files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shell {
    /// GNU bash (the default).
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

/// A starship config that shows the environment's name, the Python/conda environment, the git
/// branch and the last exit status, using only plain-text symbols so it renders in any font.
pub fn starship_config(env_name: &str) -> String {
    let name = env_name.replace('\\', "\\\\").replace('"', "\\\"");
    format!(
        r#"# Written by envd: plain-text symbols, no Nerd Font needed.
format = "[envd:{name}](bold blue) $directory$git_branch$git_status$python$conda$status$character"
add_newline = false

[directory]
truncation_length = 3
read_only = " ro"

[git_branch]
symbol = "git "
format = "[$symbol$branch]($style) "

[git_status]
format = '([\[$all_status$ahead_behind\]]($style) )'
ahead = ">"
behind = "<"
diverged = "<>"
deleted = "x"

[python]
symbol = "py "
format = '[$symbol$pyenv_prefix($version )(\($virtualenv\) )]($style)'

[conda]
symbol = "conda "
format = "[$symbol$environment]($style) "
ignore_base = false

[status]
disabled = false
symbol = "x "
format = "[$symbol$status]($style) "

[character]
success_symbol = "[>](bold green)"
error_symbol = "[>](bold red)"
"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starship_config_is_plain_ascii() {
        let c = starship_config("demo");
        assert!(c.contains("envd:demo"));
        assert!(c.is_ascii(), "Nerd Font or other non-ASCII symbols slipped in");
    }

    #[test]
    fn shells_parse() {
        assert_eq!("zsh".parse::<Shell>(), Ok(Shell::Zsh));
        assert!("tcsh".parse::<Shell>().unwrap_err().contains("unsupported"));
    }
}
