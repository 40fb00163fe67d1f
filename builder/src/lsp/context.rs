//! How starlark's language server reads envd build files: evaluated by the same front end as
//! `envd build` (so diagnostics are its located errors), with envd's globals for completion and
//! hover, and `load()` paths relative to the build context.

use std::path::{Path, PathBuf};

use lsp_types::{Diagnostic, DiagnosticSeverity, Position, Range};
use starlark::docs::DocModule;
use starlark::syntax::{AstModule, Dialect};
use starlark_lsp::completion::{StringCompletionResult, StringCompletionType};
use starlark_lsp::server::{LspContext, LspEvalResult, LspUri, StringLiteralResult};

use crate::lang::{self, Includes, LangError, Program};

/// The build files' context for starlark's language server.
pub struct BuildFiles {
    api: DocModule,
    cache_dir: PathBuf,
}

impl BuildFiles {
    /// The context for files whose API is documented by `api` (`lang::globals().documentation()`).
    pub fn new(api: DocModule) -> Self {
        BuildFiles {
            api,
            cache_dir: lang::default_cache_dir(),
        }
    }
}

/// The build context of a file: the nearest directory above it holding a build.envd (a library
/// in a subdirectory loads paths relative to the project), else its own directory.
pub fn build_context_of(file: &Path) -> PathBuf {
    let own = file.parent().unwrap_or(Path::new("/"));
    own.ancestors()
        .find(|d| d.join("build.envd").is_file())
        .unwrap_or(own)
        .to_path_buf()
}

/// Whether `envd build` would call `build` in this file: build.envd itself, or any file
/// defining it (a second entry chosen with --from).
fn entry_function(file: &Path, source: &str) -> Option<&'static str> {
    let defines_build = source.lines().any(|l| l.starts_with("def build("));
    (file.file_name().is_some_and(|n| n == "build.envd") || defines_build).then_some("build")
}

/// The located error as a diagnostic in `file`: at its place when it is in this file; at the top,
/// naming the other file, when a loaded or included file is wrong.
pub fn diagnostic(file: &Path, source: &str, error: &LangError) -> Diagnostic {
    let here = error.file == file && error.line > 0;
    let (line, message) = if here {
        (error.line - 1, error.message.clone())
    } else if error.line > 0 {
        (0, error.to_string())
    } else {
        (0, error.message.clone())
    };
    let text = source.lines().nth(line).unwrap_or("");
    let start = if here {
        error.column.saturating_sub(1)
    } else {
        0
    };
    let start_byte = text
        .char_indices()
        .nth(start)
        .map_or(text.len(), |(i, _)| i);
    let word = text[start_byte..]
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == '.')
        .count()
        .max(1);
    let utf16 = |chars: usize| -> u32 {
        text.chars().take(chars).map(char::len_utf16).sum::<usize>() as u32
    };
    Diagnostic {
        range: Range::new(
            Position::new(line as u32, utf16(start)),
            Position::new(line as u32, utf16(start + word)),
        ),
        severity: Some(DiagnosticSeverity::ERROR),
        source: Some("envd".into()),
        message,
        ..Diagnostic::default()
    }
}

impl LspContext for BuildFiles {
    fn parse_file_with_contents(&self, uri: &LspUri, content: String) -> LspEvalResult {
        let LspUri::File(path) = uri else {
            return LspEvalResult::default();
        };
        let shown = path.display().to_string();
        let ast = AstModule::parse(&shown, content.clone(), &Dialect::Standard).ok();
        let dir = build_context_of(path);
        let program = Program {
            dir: &dir,
            path,
            function: entry_function(path, &content),
            cache_dir: &self.cache_dir,
            includes: Includes::Cached,
        };
        let diagnostics = match program.evaluate(content.clone()) {
            Ok(_) => Vec::new(),
            Err(e) => vec![diagnostic(path, &content, &e)],
        };
        LspEvalResult { diagnostics, ast }
    }

    fn resolve_load(
        &self,
        path: &str,
        current_file: &LspUri,
        _workspace_root: Option<&Path>,
    ) -> Result<LspUri, String> {
        match current_file {
            LspUri::File(file) => Ok(LspUri::File(build_context_of(file).join(path))),
            other => Err(format!("load({path:?}) from {other}: not a file")),
        }
    }

    fn render_as_load(
        &self,
        target: &LspUri,
        current_file: &LspUri,
        _workspace_root: Option<&Path>,
    ) -> Result<String, String> {
        let (LspUri::File(target), LspUri::File(current)) = (target, current_file) else {
            return Err("only files can be loaded".into());
        };
        let context = build_context_of(current);
        target
            .strip_prefix(&context)
            .map(|p| p.display().to_string())
            .map_err(|_| format!("{} is outside the build context", target.display()))
    }

    fn resolve_string_literal(
        &self,
        _literal: &str,
        _current_file: &LspUri,
        _workspace_root: Option<&Path>,
    ) -> Result<Option<StringLiteralResult>, String> {
        Ok(None)
    }

    fn get_load_contents(&self, uri: &LspUri) -> Result<Option<String>, String> {
        match uri {
            LspUri::File(path) if path.is_file() => std::fs::read_to_string(path)
                .map(Some)
                .map_err(|e| format!("{}: {e}", path.display())),
            _ => Ok(None),
        }
    }

    fn get_environment(&self, _uri: &LspUri) -> DocModule {
        self.api.clone()
    }

    fn get_uri_for_global_symbol(
        &self,
        _current_file: &LspUri,
        _symbol: &str,
    ) -> Result<Option<LspUri>, String> {
        Ok(None)
    }

    fn get_string_completion_options(
        &self,
        _document_uri: &LspUri,
        _kind: StringCompletionType,
        _current_value: &str,
        _workspace_root: Option<&Path>,
    ) -> Result<Vec<StringCompletionResult>, String> {
        Ok(Vec::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_in_this_file_is_at_its_line_and_word() {
        let source = "def build():\n    install.pythn_packages(name = [\"x\"])\n";
        let error = LangError {
            file: "/p/build.envd".into(),
            line: 2,
            column: 5,
            message: "Object of type `struct` has no attribute `pythn_packages`".into(),
        };
        let d = diagnostic(Path::new("/p/build.envd"), source, &error);
        assert_eq!(d.range.start, Position::new(1, 4));
        assert_eq!(d.range.end, Position::new(1, 26));
        assert_eq!(d.message, error.message);
    }

    #[test]
    fn an_error_in_a_loaded_file_is_named_at_the_top() {
        let error = LangError {
            file: "/p/lib.envd".into(),
            line: 3,
            column: 1,
            message: "bad".into(),
        };
        let d = diagnostic(Path::new("/p/build.envd"), "x = 1\n", &error);
        assert_eq!(d.range.start, Position::new(0, 0));
        assert!(d.message.starts_with("/p/lib.envd:3"), "{}", d.message);
    }

    #[test]
    fn the_build_context_is_the_nearest_directory_with_a_build_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("build.envd"), "").unwrap();
        std::fs::create_dir(dir.path().join("lib")).unwrap();
        let lib = dir.path().join("lib/python.envd");
        assert_eq!(build_context_of(&lib), dir.path());
        let elsewhere = tempfile::tempdir().unwrap();
        let file = elsewhere.path().join("x.envd");
        assert_eq!(build_context_of(&file), elsewhere.path());
    }
}
