//! The Starlark front end: evaluates a `build.envd` program (envd's v1 API) into a [`Graph`].
//!
//! Errors name the file, line and column and say what is wrong; a misspelt name gets a
//! suggestion (`install.pythn_packages` → `install.python_packages`).

mod api;
mod include;
mod load;

use std::cell::RefCell;
use std::path::{Path, PathBuf};

use starlark::any::ProvidesStaticType;
use starlark::environment::{FrozenModule, Globals, GlobalsBuilder, Module};
use starlark::eval::Evaluator;
use starlark::syntax::{AstModule, Dialect};
use starlark::values::Value;

use crate::graph::{Graph, Language};

/// A problem in a build file: `FILE:LINE:COLUMN: message`, as service files report theirs.
pub type LangError = envd_supervisor::located::Located;

/// State shared by every built-in during one evaluation (the evaluator's `extra`).
#[derive(ProvidesStaticType)]
pub struct Recorder {
    /// What the program asked for so far.
    pub graph: RefCell<Graph>,
    /// The build context (the directory holding build.envd).
    pub context_dir: PathBuf,
    /// Where git includes are cloned.
    pub cache_dir: PathBuf,
    /// Whether includes may be fetched.
    pub includes: Includes,
    globals: Globals,
    include_stack: RefCell<Vec<PathBuf>>,
    included: RefCell<Vec<FrozenModule>>,
    loads: load::Loads,
}

impl Recorder {
    fn new(context_dir: &Path, cache_dir: &Path, includes: Includes) -> Self {
        Recorder {
            graph: RefCell::new(Graph {
                image: "ubuntu:22.04".into(),
                ..Graph::default()
            }),
            context_dir: context_dir.to_path_buf(),
            cache_dir: cache_dir.to_path_buf(),
            includes,
            globals: globals(),
            include_stack: RefCell::new(Vec::new()),
            included: RefCell::new(Vec::new()),
            loads: load::Loads::default(),
        }
    }

    fn add_language(&self, lang: Language) {
        let mut g = self.graph.borrow_mut();
        if !g.languages.contains(&lang) {
            g.languages.push(lang);
        }
    }
}

/// The names every build file can use.
pub fn globals() -> Globals {
    GlobalsBuilder::standard()
        .with(api::universe)
        .with_namespace("install", api::install)
        .with_namespace("config", api::config)
        .with_namespace("io", api::io)
        .with_namespace("runtime", api::runtime)
        .with_namespace("data", |b: &mut GlobalsBuilder| {
            api::data(b);
            b.namespace("path", api::data_paths);
        })
        .build()
}

/// `--from FILE:FUNC`, default `build.envd:build`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The file, relative to the build context.
    pub file: String,
    /// The function to call.
    pub function: String,
}

impl std::str::FromStr for Entry {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.rsplit_once(':') {
            Some((file, function)) if !file.is_empty() && !function.is_empty() => Ok(Entry {
                file: file.into(),
                function: function.into(),
            }),
            _ if !s.is_empty() && !s.contains(':') => Ok(Entry {
                file: s.into(),
                function: "build".into(),
            }),
            _ => Err(format!(
                "--from {s:?}: expected FILE:FUNCTION, like build.envd:build"
            )),
        }
    }
}

impl Default for Entry {
    fn default() -> Self {
        Entry {
            file: "build.envd".into(),
            function: "build".into(),
        }
    }
}

/// The default cache for git includes: `envdlib` in envd's cache directory
/// ([`crate::host::cache_dir`]).
pub fn default_cache_dir() -> PathBuf {
    crate::host::cache_dir().join("envdlib")
}

/// Evaluates `entry` in the build context `dir` and returns the graph.
pub fn evaluate(dir: &Path, entry: &Entry) -> Result<Graph, LangError> {
    evaluate_with_cache(dir, entry, &default_cache_dir())
}

/// [`evaluate`] with an explicit include cache.
pub fn evaluate_with_cache(
    dir: &Path,
    entry: &Entry,
    cache_dir: &Path,
) -> Result<Graph, LangError> {
    let path = dir.join(&entry.file);
    let source = read_source(&path)?;
    let program = Program {
        dir,
        path: &path,
        function: Some(&entry.function),
        cache_dir,
        includes: Includes::Refresh,
    };
    program.evaluate(source)
}

/// Whether `include(git=...)` may reach the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Includes {
    /// Clone, or pull a cached clone when the remote answers (what a build does).
    Refresh,
    /// Use a cached clone as it is; clone only what is not cached (an editor evaluates on every
    /// keystroke and must not wait for a remote each time).
    Cached,
}

/// One evaluation of a build file's text.
pub struct Program<'a> {
    /// The build context (the directory holding build.envd); `load()` paths are relative to it.
    pub dir: &'a Path,
    /// The file the text is (errors name it).
    pub path: &'a Path,
    /// The function to call after the top level, as `envd build` calls `build`; `None` for a file
    /// other files load.
    pub function: Option<&'a str>,
    /// Where git includes are cloned.
    pub cache_dir: &'a Path,
    /// Whether includes may be fetched.
    pub includes: Includes,
}

/// Reads a build file as UTF-8, naming the line and column of the first byte that is not.
pub fn read_source(path: &Path) -> Result<String, LangError> {
    let bytes =
        std::fs::read(path).map_err(|e| LangError::at(path, 0, format!("cannot read: {e}")))?;
    String::from_utf8(bytes).map_err(|e| {
        let valid = &e.as_bytes()[..e.utf8_error().valid_up_to()];
        let line = valid.iter().filter(|b| **b == b'\n').count() + 1;
        let column = valid.len() - valid.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1) + 1;
        LangError {
            file: path.to_path_buf(),
            line,
            column,
            message: "not UTF-8 text (build files are UTF-8)".into(),
        }
    })
}

impl Program<'_> {
    /// Evaluates `source` into the graph it records, or the first located error.
    pub fn evaluate(&self, source: String) -> Result<Graph, LangError> {
        let path = self.path;
        check_version(&source).map_err(|m| LangError {
            file: path.to_path_buf(),
            line: 1,
            column: 1,
            message: m,
        })?;
        let text = source.clone();
        let ast = AstModule::parse(&path.display().to_string(), source, &Dialect::Standard)
            .map_err(from_starlark)?;
        let recorder = Recorder::new(self.dir, self.cache_dir, self.includes);
        let loader = load::Loader::new(&recorder);
        Module::with_temp_heap(|module| -> Result<(), LangError> {
            module.set(
                "_build_context_dir",
                module.heap().alloc(self.dir.to_string_lossy().as_ref()),
            );
            let mut eval = Evaluator::new(&module);
            eval.extra = Some(&recorder);
            eval.set_loader(&loader);
            eval.eval_module(ast, &recorder.globals)
                .map_err(from_starlark)?;
            match self.function {
                Some(function) => {
                    let func = module
                        .get(function)
                        .ok_or_else(|| self.no_such_function(&module, function))?;
                    self.call_entry(&mut eval, func, function, &text)
                }
                None => Ok(()),
            }
        })?;
        let graph = recorder.graph.into_inner();
        validate(&graph).map_err(|(call, message)| {
            let (line, column) = first_call_at(&text, call);
            LangError {
                file: path.to_path_buf(),
                line,
                column,
                message,
            }
        })?;
        Ok(graph)
    }

    /// The entry function is missing: say so, with the closest name the file defines.
    fn no_such_function(&self, module: &Module, function: &str) -> LangError {
        let mut names: Vec<String> = module.names().map(|n| n.as_str().to_string()).collect();
        names.sort();
        let known: Vec<&str> = names.iter().map(String::as_str).collect();
        let hint = envd_supervisor::suggest::closest(function, &known)
            .map(|c| format!(" (did you mean {c:?}?)"))
            .unwrap_or_default();
        LangError::at(
            self.path,
            0,
            format!("no function named {function:?}{hint}; --from FILE:FUNCTION chooses it"),
        )
    }

    /// Calls the entry function (`build`).
    fn call_entry<'v>(
        &self,
        eval: &mut Evaluator<'v, '_, '_>,
        func: Value<'v>,
        function: &str,
        text: &str,
    ) -> Result<(), LangError> {
        let path = self.path;
        eval.eval_function(func, &[], &[]).map_err(|e| {
            let mut err = from_starlark(e);
            if err.line == 0 {
                // Calling the function itself failed (it takes parameters): point at its `def`.
                let def = format!("def {function}");
                err.file = path.to_path_buf();
                err.line = text
                    .lines()
                    .position(|l| l.contains(&def))
                    .map_or(1, |i| i + 1);
                err.column = 1;
            }
            err
        })?;
        Ok(())
    }
}

/// Where `call(` first appears in `text` (line and column from 1), or the top of the file: where a
/// whole-program check points (an included file's call is reported at the top of this one).
fn first_call_at(text: &str, call: &str) -> (usize, usize) {
    text.find(&format!("{call}("))
        .map(|at| {
            let before = &text[..at];
            let line = before.matches('\n').count() + 1;
            (line, at - before.rfind('\n').map_or(0, |i| i + 1) + 1)
        })
        .unwrap_or((1, 1))
}

/// Checks that need the whole program (envd accepts its calls in any order). Err: the call
/// to point at, and what is wrong.
fn validate(g: &Graph) -> Result<(), (&'static str, String)> {
    let has_conda = g
        .languages
        .iter()
        .any(|l| matches!(l, Language::Conda { .. }));
    if !g.conda_packages.is_empty() && !has_conda {
        return Err((
            "conda_packages",
            "install.conda_packages needs install.conda() as well".into(),
        ));
    }
    Ok(())
}

/// Only the first line is read, as envd does: `# syntax=v1` or nothing means v1.
fn check_version(source: &str) -> Result<(), String> {
    let first = source.lines().next().unwrap_or("").trim();
    if let Some(v) = first.strip_prefix("# syntax=") {
        match v.trim() {
            "v1" => Ok(()),
            "v0" => Err(
                "envd's v0 syntax was removed from envd; write the file in v1 (no `# syntax=v0`)"
                    .into(),
            ),
            other => Err(format!("unknown syntax {other:?}; only v1 is supported")),
        }
    } else {
        Ok(())
    }
}

/// Every name a build file can reach through a namespace, for suggestions.
fn namespace_members() -> Vec<(&'static str, Vec<String>)> {
    let names = |f: fn(&mut GlobalsBuilder)| -> Vec<String> {
        GlobalsBuilder::new()
            .with(f)
            .build()
            .names()
            .map(|n| n.as_str().to_string())
            .collect()
    };
    vec![
        ("install", names(api::install)),
        ("config", names(api::config)),
        ("io", names(api::io)),
        ("runtime", names(api::runtime)),
        ("data", names(api::data)),
    ]
}

fn from_starlark(e: starlark::Error) -> LangError {
    let span = e.span().cloned().or_else(|| {
        e.call_stack()
            .frames
            .iter()
            .rev()
            .find_map(|f| f.location.clone())
    });
    let mut message = e.without_diagnostic().to_string();
    // Keep the first line: the rest is starlark's own rendering of the location.
    if let Some(first) = message.lines().next() {
        message = first.trim().to_string();
    }
    message = message.trim_start_matches("error: ").to_string();
    if let Some(attr) = message
        .split("has no attribute `")
        .nth(1)
        .and_then(|r| r.split('`').next())
    {
        if !message.contains("Did you mean") && !message.contains("did you mean") {
            for (ns, names) in namespace_members() {
                let known: Vec<&str> = names.iter().map(String::as_str).collect();
                if let Some(c) = envd_supervisor::suggest::closest(attr, &known) {
                    message.push_str(&format!(" (did you mean `{ns}.{c}`?)"));
                    break;
                }
            }
        }
    }
    match span {
        Some(span) => {
            let r = span.resolve();
            LangError {
                file: r.file.into(),
                line: r.span.begin.line + 1,
                column: r.span.begin.column + 1,
                message,
            }
        }
        None => LangError {
            file: PathBuf::new(),
            line: 0,
            column: 0,
            message,
        },
    }
}

#[cfg(test)]
mod tests;
