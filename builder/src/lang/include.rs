//! `include(git=...)`: envd's library mechanism. The repository is cloned once into the cache
//! (and updated when reachable), every `*.envd` file in it is evaluated, and its public globals
//! come back as a struct. A local directory works too. Cycles are detected.

use std::path::{Path, PathBuf};
use std::process::Command;

use starlark::environment::Module;
use starlark::eval::Evaluator;
use starlark::syntax::{AstModule, Dialect};
use starlark::values::structs::AllocStruct;
use starlark::values::{FrozenHeapName, Value};

use super::Recorder;

fn cache_name(url: &str) -> String {
    url.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Where the library's files are: a local directory as is, a git URL cloned into the cache.
fn resolve(rec: &Recorder, git: &str) -> anyhow::Result<PathBuf> {
    let local = if Path::new(git).is_absolute() {
        PathBuf::from(git)
    } else {
        rec.context_dir.join(git)
    };
    if !git.contains("://") && local.is_dir() && !local.join(".git").exists() {
        return Ok(local);
    }
    let url = if local.join(".git").exists() {
        local.to_string_lossy().into_owned()
    } else {
        git.to_string()
    };
    let dest = rec.cache_dir.join(cache_name(&url));
    if dest.join(".git").exists() {
        if rec.includes == super::Includes::Cached {
            return Ok(dest);
        }
        // Refresh when the remote answers; an unreachable remote keeps the cached copy.
        let _ = Command::new("git")
            .arg("-C")
            .arg(&dest)
            .args(["pull", "--ff-only", "-q"])
            .env("GIT_TERMINAL_PROMPT", "0")
            .output();
        return Ok(dest);
    }
    std::fs::create_dir_all(&rec.cache_dir)?;
    let out = Command::new("git")
        .args(["clone", "-q", "--depth", "1", &url])
        .arg(&dest)
        .env("GIT_TERMINAL_PROMPT", "0")
        .output()
        .map_err(|e| anyhow::anyhow!("include(git={git:?}): cannot run git: {e}"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        anyhow::bail!(
            "include(git={git:?}): cannot clone it ({}); include a repository this machine can reach, a local git repository or a local directory",
            err.trim().lines().last().unwrap_or("git failed")
        );
    }
    Ok(dest)
}

/// Implements `include`.
pub fn include<'v>(git: &str, eval: &mut Evaluator<'v, '_, '_>) -> anyhow::Result<Value<'v>> {
    let rec: &Recorder = eval
        .extra
        .and_then(|e| e.downcast_ref::<Recorder>())
        .ok_or_else(|| anyhow::anyhow!("internal error: no recorder"))?;
    let dir = resolve(rec, git)?;
    let key = dir.canonicalize().unwrap_or(dir.clone());
    if rec.include_stack.borrow().contains(&key) {
        let chain: Vec<String> = rec
            .include_stack
            .borrow()
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        anyhow::bail!(
            "include(git={git:?}) forms a cycle: {} -> {}",
            chain.join(" -> "),
            key.display()
        );
    }
    let mut files: Vec<PathBuf> = walk(&dir);
    files.sort();
    if files.is_empty() {
        anyhow::bail!("include(git={git:?}): no .envd files in {}", dir.display());
    }
    rec.include_stack.borrow_mut().push(key);
    let mut exported: Vec<(String, Value<'v>)> = Vec::new();
    let result = (|| -> anyhow::Result<()> {
        for file in &files {
            let source = std::fs::read_to_string(file)?;
            let shown = file.display().to_string();
            let ast = AstModule::parse(&shown, source, &Dialect::Standard)
                .map_err(|e| anyhow::anyhow!("{}", super::from_starlark(e)))?;
            let frozen = Module::with_temp_heap(|module| -> anyhow::Result<_> {
                {
                    let mut inner = Evaluator::new(&module);
                    inner.extra = Some(rec);
                    inner
                        .eval_module(ast, &rec.globals)
                        .map_err(|e| anyhow::anyhow!("{}", super::from_starlark(e)))?;
                }
                module
                    .freeze_named(FrozenHeapName::User(Box::new(shown.clone())))
                    .map_err(|e| anyhow::anyhow!("{shown}: {e:?}"))
            })?;
            for name in frozen.names() {
                let name = name.as_str().to_string();
                if name.starts_with('_') {
                    continue;
                }
                if exported.iter().any(|(n, _)| *n == name) {
                    anyhow::bail!(
                        "include(git={git:?}): {name:?} is defined in more than one file"
                    );
                }
                let value = frozen.get(&name)?;
                // SAFETY: owned_frozen_value adds the library's heap as a reference of the
                // evaluator's frozen heap, which lives as long as the module being evaluated.
                let frozen_value = unsafe { value.owned_frozen_value(eval.frozen_heap()) };
                exported.push((name, frozen_value.to_value()));
            }
            rec.included.borrow_mut().push(frozen);
        }
        Ok(())
    })();
    rec.include_stack.borrow_mut().pop();
    result?;
    Ok(eval.heap().alloc(AllocStruct(exported)))
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.file_name().is_some_and(|n| n == ".git") {
                continue;
            }
            if p.is_dir() {
                out.extend(walk(&p));
            } else if p.extension().is_some_and(|x| x == "envd") {
                out.push(p);
            }
        }
    }
    out
}
