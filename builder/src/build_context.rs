//! Files from the build context that a program uses: `io.copy` sources,
//! `install.python_packages(requirements=, local_wheels=)`, `install.conda_packages(env_file=)`,
//! and the whole context for `run(mount_host=True)`.
//!
//! They reach BuildKit as a local image (`envd-rs/context:<content hash>`) imported through the
//! Docker API, the same way as the runtime binaries: Docker's embedded BuildKit (v0.8) sees the
//! engine's local images, a request to it is capped at 4 MiB, and no file-sync session is needed.
//! The content hash is part of the program's hash, so editing `requirements.txt` rebuilds and an
//! unchanged context does not.

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use anyhow::{bail, Context as _};
use sha2::{Digest, Sha256};

use crate::graph::Graph;

/// Where the context's files sit inside the context image.
pub const ROOT: &str = "/context";

/// One file, directory or symbolic link to carry.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Entry {
    /// Path relative to the build context, `/`-separated.
    pub rel: String,
    /// Unix mode bits.
    pub mode: u32,
    /// `None` for a directory or a link.
    pub data: Option<Vec<u8>>,
    /// The target of a symbolic link, carried as a link (never followed: a link inside a
    /// directory may point anywhere on the host, as BuildKit's context transfer does).
    pub link: Option<String>,
}

/// The files a program needs from its build context.
#[derive(Debug, Clone, Default)]
pub struct BuildContext {
    /// Files and directories, sorted, parents first.
    pub entries: Vec<Entry>,
    /// sha256 over every path, mode and content (hex).
    pub hash: String,
}

impl BuildContext {
    /// Whether nothing is needed.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The image tag that carries these files.
    pub fn image(&self) -> String {
        format!("envd-rs/context:{}", &self.hash[..16])
    }

    /// The path of a context-relative file inside the context image.
    pub fn path_in_image(rel: &str) -> String {
        let rel = normalize(rel).unwrap_or_else(|_| rel.to_string());
        if rel.is_empty() {
            ROOT.to_string()
        } else {
            format!("{ROOT}/{rel}")
        }
    }

    /// Total bytes of file content.
    pub fn size(&self) -> usize {
        self.entries
            .iter()
            .filter_map(|e| e.data.as_ref().map(Vec::len))
            .sum()
    }
}

/// Makes `p` relative to the context, refusing paths that leave it.
fn normalize(p: &str) -> anyhow::Result<String> {
    let mut parts: Vec<String> = Vec::new();
    for c in Path::new(p).components() {
        match c {
            Component::Normal(s) => parts.push(s.to_string_lossy().into_owned()),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir => {
                if parts.pop().is_none() {
                    bail!("{p:?} is outside the build context");
                }
            }
            Component::Prefix(_) => bail!("{p:?}: not a unix path"),
        }
    }
    Ok(parts.join("/"))
}

/// The context-relative paths a program reads (the empty string: the whole context).
pub fn referenced_paths(g: &Graph) -> Vec<String> {
    let mut out = Vec::new();
    out.extend(
        g.copies
            .iter()
            .filter(|c| c.image.is_none())
            .map(|c| c.source.clone()),
    );
    out.extend(g.python_requirements.iter().cloned());
    out.extend(g.python_local_wheels.iter().cloned());
    out.extend(g.conda_packages.iter().filter_map(|c| c.env_file.clone()));
    out.extend(
        g.vscode_extensions
            .iter()
            .filter(|e| e.ends_with(".vsix"))
            .cloned(),
    );
    if g.run.iter().any(|r| r.mount_host) {
        out.push(String::new());
    }
    out
}

/// A named path (`io.copy`'s source, a requirements file) may be or pass through a link, but
/// must resolve inside the context: a link to `~/.ssh` is never read.
fn check_inside(root: &Path, path: &Path) -> anyhow::Result<()> {
    let real_root = std::fs::canonicalize(root)
        .with_context(|| format!("cannot resolve the build context {}", root.display()))?;
    let real = std::fs::canonicalize(path)
        .with_context(|| format!("{} is missing from the build context", path.display()))?;
    if !real.starts_with(&real_root) {
        bail!(
            "{} resolves to {}, outside the build context {}; envd never reads outside it",
            path.display(),
            real.display(),
            real_root.display()
        );
    }
    Ok(())
}

fn walk(root: &Path, rel: &str, out: &mut BTreeSet<Entry>) -> anyhow::Result<()> {
    let path = if rel.is_empty() {
        root.to_path_buf()
    } else {
        root.join(rel)
    };
    check_inside(root, &path)?;
    let meta = std::fs::metadata(&path)
        .with_context(|| format!("{} is missing from the build context", path.display()))?;
    // Parent directories, so the image has them with sane modes.
    let mut parent = PathBuf::new();
    let parts: Vec<&str> = rel.split('/').filter(|s| !s.is_empty()).collect();
    for part in parts.iter().take(parts.len().saturating_sub(1)) {
        parent.push(part);
        out.insert(Entry {
            rel: parent.to_string_lossy().into_owned(),
            mode: 0o755,
            data: None,
            link: None,
        });
    }
    if meta.is_dir() {
        if !rel.is_empty() {
            out.insert(Entry {
                rel: rel.to_string(),
                mode: meta.permissions().mode() & 0o7777,
                data: None,
                link: None,
            });
        }
        let mut names: Vec<_> = std::fs::read_dir(&path)
            .with_context(|| format!("cannot read {}", path.display()))?
            .collect::<Result<_, _>>()?;
        names.sort_by_key(|e| e.file_name());
        for e in names {
            let name = e.file_name().to_string_lossy().into_owned();
            let child = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            if e.file_type()?.is_symlink() {
                let target = std::fs::read_link(e.path())
                    .with_context(|| format!("cannot read the link {}", e.path().display()))?;
                out.insert(Entry {
                    rel: child,
                    mode: 0o777,
                    data: None,
                    link: Some(target.to_string_lossy().into_owned()),
                });
                continue;
            }
            walk(root, &child, out)?;
        }
    } else if meta.is_file() {
        let data =
            std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
        out.insert(Entry {
            rel: rel.to_string(),
            mode: meta.permissions().mode() & 0o7777,
            data: Some(data),
            link: None,
        });
    }
    Ok(())
}

/// Collects what the program needs from `root`. Errors name the missing path.
pub fn collect(root: &Path, g: &Graph) -> anyhow::Result<BuildContext> {
    let mut set = BTreeSet::new();
    for p in referenced_paths(g) {
        let rel = normalize(&p)?;
        walk(root, &rel, &mut set).with_context(|| {
            if p.is_empty() {
                "run(mount_host=True) needs the build context".to_string()
            } else {
                format!("build.envd uses {p:?}")
            }
        })?;
    }
    let entries: Vec<Entry> = set.into_iter().collect();
    let mut h = Sha256::new();
    for e in &entries {
        h.update(e.rel.as_bytes());
        h.update([0]);
        h.update(e.mode.to_le_bytes());
        match (&e.data, &e.link) {
            (Some(d), _) => {
                h.update((d.len() as u64).to_le_bytes());
                h.update(d);
            }
            (None, Some(target)) => {
                h.update((u64::MAX - 1).to_le_bytes());
                h.update(target.as_bytes());
            }
            (None, None) => h.update(u64::MAX.to_le_bytes()),
        }
    }
    Ok(BuildContext {
        entries,
        hash: format!("{:x}", h.finalize()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::{FileCopy, RunStep};

    #[test]
    fn paths_cannot_leave_the_context() {
        assert_eq!(normalize("./a/../b/c").unwrap(), "b/c");
        assert!(normalize("../etc/passwd").is_err());
        assert_eq!(normalize("/abs/x").unwrap(), "abs/x");
    }

    #[test]
    fn referenced_files_are_collected_and_hashed() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("data/sub")).unwrap();
        std::fs::write(dir.path().join("data/sub/x.txt"), "x").unwrap();
        std::fs::write(dir.path().join("requirements.txt"), "six\n").unwrap();
        let mut g = Graph {
            python_requirements: vec!["requirements.txt".into()],
            ..Default::default()
        };
        g.copies.push(FileCopy {
            source: "data".into(),
            target: "/data".into(),
            image: None,
        });
        let c = collect(dir.path(), &g).unwrap();
        let rels: Vec<&str> = c.entries.iter().map(|e| e.rel.as_str()).collect();
        assert_eq!(
            rels,
            ["data", "data/sub", "data/sub/x.txt", "requirements.txt"]
        );
        let same = collect(dir.path(), &g).unwrap();
        assert_eq!(c.hash, same.hash);
        std::fs::write(dir.path().join("requirements.txt"), "six\nidna\n").unwrap();
        assert_ne!(collect(dir.path(), &g).unwrap().hash, c.hash);
        g.python_requirements.push("missing.txt".into());
        let e = format!("{:#}", collect(dir.path(), &g).unwrap_err());
        assert!(
            e.contains("missing.txt") && e.contains("missing from the build context"),
            "{e}"
        );
        let whole = collect(
            dir.path(),
            &Graph {
                run: vec![RunStep {
                    commands: vec!["ls".into()],
                    mount_host: true,
                }],
                ..Default::default()
            },
        )
        .unwrap();
        assert!(whole.entries.iter().any(|e| e.rel == "requirements.txt"));
    }

    #[test]
    fn links_are_carried_as_links_and_named_paths_never_leave_the_context() {
        let secrets = tempfile::tempdir().unwrap();
        std::fs::write(secrets.path().join("id_rsa"), "PRIVATE").unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("data")).unwrap();
        std::fs::write(dir.path().join("data/a.txt"), "a").unwrap();
        std::os::unix::fs::symlink(secrets.path(), dir.path().join("data/ssh")).unwrap();
        std::os::unix::fs::symlink("a.txt", dir.path().join("data/b.txt")).unwrap();
        std::os::unix::fs::symlink(secrets.path().join("id_rsa"), dir.path().join("key")).unwrap();
        let copy = |source: &str| Graph {
            copies: vec![FileCopy {
                source: source.into(),
                target: "/x".into(),
                image: None,
            }],
            ..Default::default()
        };
        let c = collect(dir.path(), &copy("data")).unwrap();
        let all = format!("{:?}", c.entries);
        assert!(!all.contains("PRIVATE") && !all.contains("id_rsa"), "{all}");
        let link = |rel: &str| {
            c.entries
                .iter()
                .find(|e| e.rel == rel)
                .unwrap()
                .link
                .clone()
        };
        assert_eq!(link("data/ssh").unwrap(), secrets.path().to_string_lossy());
        assert_eq!(link("data/b.txt").unwrap(), "a.txt");
        for named in ["key", "data/ssh/id_rsa", "data/ssh"] {
            let e = format!("{:#}", collect(dir.path(), &copy(named)).unwrap_err());
            assert!(e.contains("outside the build context"), "{named}: {e}");
        }
    }
}
