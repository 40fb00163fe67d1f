//! `envd init`: a commented `build.envd` for a project that has none, made from what the
//! project already declares. Reading ([`detect`]) and writing ([`render`]) are pure, so each
//! kind of project is unit tested; the command only refuses to overwrite.
//!
//! What is read, in this order (the first that exists decides the Python packages):
//! - `environment.yml` / `environment.yaml`: conda (Miniforge), its Python version and the file
//!   itself through `install.conda_packages(env_file=...)`;
//! - `requirements.txt`: pip, through `install.python_packages(requirements=...)`, read at build
//!   time (so later edits need no new build file);
//! - `pyproject.toml`: PEP 621's `requires-python` and `dependencies`, or Poetry's
//!   `tool.poetry.dependencies` (names only: Poetry's `^` constraints are not pip's);
//! - none of them: Python and a commented example.
//!
//! JupyterLab is on when the project has a notebook (`*.ipynb`) or names Jupyter in its packages.

use std::path::Path;

use anyhow::Context as _;

/// Where the packages come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packages {
    /// A conda environment file (its name in the project).
    CondaEnvFile(String),
    /// A pip requirements file (its name in the project).
    Requirements(String),
    /// Package specs from `pyproject.toml`.
    Names(Vec<String>),
    /// Nothing declared.
    None,
}

/// What [`detect`] found in a project.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Project {
    /// The environment's name (the directory's).
    pub name: String,
    /// The Python version the project asks for (`3.11`), if it says.
    pub python: Option<String>,
    /// The packages.
    pub packages: Packages,
    /// Which file the packages came from, for the comment.
    pub source: Option<String>,
    /// Whether to turn JupyterLab on.
    pub jupyter: bool,
}

/// Reads what the project at `dir` declares.
pub fn detect(dir: &Path) -> anyhow::Result<Project> {
    let name = crate::build::env_name(dir);
    let read = |file: &str| -> anyhow::Result<Option<String>> {
        let path = dir.join(file);
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok(Some(text)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    };
    let mut project = Project {
        name,
        python: None,
        packages: Packages::None,
        source: None,
        jupyter: has_notebook(dir),
    };
    for file in ["environment.yml", "environment.yaml"] {
        if let Some(text) = read(file)? {
            project.python = conda_python(&text);
            project.jupyter |= names_jupyter(&text);
            project.packages = Packages::CondaEnvFile(file.into());
            project.source = Some(file.into());
            return Ok(project);
        }
    }
    if let Some(text) = read("requirements.txt")? {
        project.jupyter |= names_jupyter(&text);
        project.packages = Packages::Requirements("requirements.txt".into());
        project.source = Some("requirements.txt".into());
    }
    if let Some(text) = read("pyproject.toml")? {
        let (python, deps) = pyproject(&text)
            .with_context(|| format!("{}: not valid TOML", dir.join("pyproject.toml").display()))?;
        project.python = python;
        if project.packages == Packages::None && !deps.is_empty() {
            project.jupyter |= deps.iter().any(|d| names_jupyter(d));
            project.packages = Packages::Names(deps);
            project.source = Some("pyproject.toml".into());
        }
    }
    Ok(project)
}

fn has_notebook(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|entries| {
        entries
            .flatten()
            .any(|e| e.path().extension().is_some_and(|x| x == "ipynb"))
    })
}

fn names_jupyter(text: &str) -> bool {
    text.lines().any(|l| {
        let l = l.trim().trim_start_matches("- ").to_ascii_lowercase();
        ["jupyter", "jupyterlab", "notebook"]
            .iter()
            .any(|j| l.starts_with(j))
    })
}

/// `- python=3.11` or `- python==3.11.4` in a conda environment file.
fn conda_python(text: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let spec = l.trim().strip_prefix("- ")?.trim();
        let version = spec
            .strip_prefix("python")?
            .trim_start_matches(['=', '>', '<', '~']);
        (!version.is_empty() && version.starts_with(|c: char| c.is_ascii_digit()))
            .then(|| major_minor(version))
    })
}

/// `requires-python` and `dependencies` (PEP 621), else Poetry's `python` and dependency names.
fn pyproject(text: &str) -> Result<(Option<String>, Vec<String>), toml::de::Error> {
    let doc: toml::Table = toml::from_str(text)?;
    let project = doc.get("project").and_then(|p| p.as_table());
    let poetry = (doc.get("tool"))
        .and_then(|t| t.get("poetry"))
        .and_then(|p| p.get("dependencies"))
        .and_then(|d| d.as_table());
    let strings = |v: Option<&toml::Value>| -> Vec<String> {
        (v.and_then(|v| v.as_array()).into_iter().flatten())
            .filter_map(|d| d.as_str().map(str::to_string))
            .collect()
    };
    if let Some(p) = project {
        let python = p.get("requires-python").and_then(|v| v.as_str());
        return Ok((
            python.and_then(lowest_version),
            strings(p.get("dependencies")),
        ));
    }
    if let Some(deps) = poetry {
        let python = deps.get("python").and_then(|v| v.as_str());
        let names = deps.keys().filter(|k| *k != "python").cloned().collect();
        return Ok((python.and_then(lowest_version), names));
    }
    Ok((None, Vec::new()))
}

/// The first version in a constraint (`>=3.10,<4`, `^3.11`, `~=3.9`) as `MAJOR.MINOR`.
fn lowest_version(constraint: &str) -> Option<String> {
    let start = constraint.find(|c: char| c.is_ascii_digit())?;
    let version: String = constraint[start..]
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    Some(major_minor(&version))
}

fn major_minor(version: &str) -> String {
    version.split('.').take(2).collect::<Vec<_>>().join(".")
}

/// The build file for `project`, with comments that say where each line came from.
pub fn render(p: &Project) -> String {
    let mut out = String::from("# syntax=v1\n");
    out += &format!("# The {} environment, written by `envd init`", p.name);
    match &p.source {
        Some(s) => out += &format!(" from {s}.\n"),
        None => out += ".\n",
    }
    out += "# `envd up` builds it and starts it; `ssh NAME.envd` opens a shell in it.\n\n\n";
    out += "def build():\n";
    out += "    # The base image, with the development tools, sshd and the envd user.\n";
    out += "    base(image=\"debian:bookworm\", dev=True)\n";
    let python = match &p.python {
        Some(v) => format!("version=\"{v}\""),
        None => String::new(),
    };
    match &p.packages {
        Packages::CondaEnvFile(file) => {
            out += "    # Conda (Miniforge) with the environment file's packages.\n";
            out += "    install.conda()\n";
            out += &format!("    install.python({python})\n");
            out += &format!("    install.conda_packages(env_file=\"{file}\")\n");
        }
        Packages::Requirements(file) => {
            out += &format!("    install.python({python})\n");
            out += &format!("    # {file} is read at build time: edit it, then `envd up` again.\n");
            out += &format!("    install.python_packages(requirements=\"{file}\")\n");
        }
        Packages::Names(names) => {
            out += &format!("    install.python({python})\n");
            out += "    # The dependencies pyproject.toml names.\n";
            let quoted: Vec<String> = names.iter().map(|n| format!("{n:?}")).collect();
            out += &format!(
                "    install.python_packages(name=[{}])\n",
                quoted.join(", ")
            );
        }
        Packages::None => {
            out += &format!("    install.python({python})\n");
            out += "    # Python packages, e.g.:\n";
            out += "    # install.python_packages(name=[\"numpy\", \"pandas\"])\n";
        }
    }
    out += "    # System packages, e.g.:\n";
    out += "    # install.apt_packages(name=[\"git-lfs\"])\n";
    if p.jupyter {
        out += "    # JupyterLab, with a token per container (envd up prints the URL).\n";
        out += "    config.jupyter()\n";
    } else {
        out += "    # JupyterLab in the browser:\n";
        out += "    # config.jupyter()\n";
    }
    out += "    # VS Code in the browser:\n";
    out += "    # config.vscode_server()\n";
    out
}

/// Writes `build.envd` into `dir`; an existing one is kept unless `force`.
pub fn write(dir: &Path, force: bool) -> anyhow::Result<(std::path::PathBuf, Project)> {
    let path = dir.join("build.envd");
    if path.exists() && !force {
        anyhow::bail!(
            "{} exists; envd init does not overwrite it (--force does)",
            path.display()
        );
    }
    let project = detect(dir)?;
    std::fs::write(&path, render(&project))
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok((path, project))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn project_with(files: &[(&str, &str)]) -> (tempfile::TempDir, Project) {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("demo");
        std::fs::create_dir(&dir).unwrap();
        for (name, text) in files {
            std::fs::write(dir.join(name), text).unwrap();
        }
        let p = detect(&dir).unwrap();
        (root, p)
    }

    /// Every rendered file evaluates as a build file and asks for what was detected.
    fn evaluates(p: &Project, files: &[(&str, &str)]) -> crate::graph::Graph {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        std::fs::write(dir.path().join("build.envd"), render(p)).unwrap();
        let from = crate::lang::Entry::default();
        crate::lang::evaluate(dir.path(), &from).unwrap_or_else(|e| panic!("{e:#}\n{}", render(p)))
    }

    #[test]
    fn a_requirements_file_is_read_at_build_time() {
        let files = [("requirements.txt", "numpy\njupyterlab>=4\n")];
        let (_d, p) = project_with(&files);
        assert_eq!(
            p.packages,
            Packages::Requirements("requirements.txt".into())
        );
        assert!(p.jupyter, "jupyterlab is named");
        let text = render(&p);
        assert!(text.contains("install.python_packages(requirements=\"requirements.txt\")"));
        assert!(text.contains("\n    config.jupyter()\n"), "{text}");
        let g = evaluates(&p, &files);
        assert!(g.config.jupyter.is_some());
    }

    #[test]
    fn pyproject_gives_the_python_version_and_dependencies() {
        let files = [(
            "pyproject.toml",
            "[project]\nname = \"x\"\nrequires-python = \">=3.10,<4\"\ndependencies = [\"pandas>=2\", \"rich\"]\n",
        )];
        let (_d, p) = project_with(&files);
        assert_eq!(p.python.as_deref(), Some("3.10"));
        assert_eq!(
            p.packages,
            Packages::Names(vec!["pandas>=2".into(), "rich".into()])
        );
        assert!(!p.jupyter);
        let text = render(&p);
        assert!(text.contains("install.python(version=\"3.10\")"), "{text}");
        assert!(text.contains("name=[\"pandas>=2\", \"rich\"]"), "{text}");
        assert!(text.contains("# config.jupyter()"), "{text}");
        evaluates(&p, &files);
    }

    #[test]
    fn poetry_dependencies_are_names() {
        let files = [(
            "pyproject.toml",
            "[tool.poetry.dependencies]\npython = \"^3.11\"\nrequests = \"^2.31\"\n",
        )];
        let (_d, p) = project_with(&files);
        assert_eq!(p.python.as_deref(), Some("3.11"));
        assert_eq!(p.packages, Packages::Names(vec!["requests".into()]));
        evaluates(&p, &files);
    }

    #[test]
    fn a_conda_environment_file_brings_conda_and_its_python() {
        let files = [(
            "environment.yml",
            "name: x\nchannels: [conda-forge]\ndependencies:\n  - python=3.10.4\n  - numpy\n  - notebook\n",
        )];
        let (_d, p) = project_with(&files);
        assert_eq!(p.python.as_deref(), Some("3.10"));
        assert_eq!(p.packages, Packages::CondaEnvFile("environment.yml".into()));
        assert!(p.jupyter);
        let text = render(&p);
        assert!(text.contains("install.conda()"), "{text}");
        assert!(text.contains("install.conda_packages(env_file=\"environment.yml\")"));
        evaluates(&p, &files);
    }

    #[test]
    fn an_empty_project_gets_python_and_examples_and_a_notebook_turns_jupyter_on() {
        let (_d, p) = project_with(&[]);
        assert_eq!(
            (p.python.clone(), p.packages.clone()),
            (None, Packages::None)
        );
        assert!(!p.jupyter);
        evaluates(&p, &[]);
        let (_d, p) = project_with(&[("analysis.ipynb", "{}")]);
        assert!(p.jupyter);
        assert!(render(&p).contains("\n    config.jupyter()\n"));
    }

    #[test]
    fn a_broken_pyproject_is_named() {
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("pyproject.toml"), "[project\n").unwrap();
        let e = detect(root.path()).unwrap_err();
        assert!(
            format!("{e:#}").contains("pyproject.toml: not valid TOML"),
            "{e:#}"
        );
    }

    #[test]
    fn an_existing_build_file_is_kept_unless_forced() {
        let root = tempfile::tempdir().unwrap();
        let file = root.path().join("build.envd");
        std::fs::write(&file, "mine").unwrap();
        let e = write(root.path(), false).unwrap_err().to_string();
        assert!(e.contains("does not overwrite"), "{e}");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "mine");
        write(root.path(), true).unwrap();
        assert!(std::fs::read_to_string(&file)
            .unwrap()
            .starts_with("# syntax=v1"));
    }
}
