//! What starlark's language server does not know: the members of envd's namespaces
//! (`install.python_packages`, `data.path.huggingface`). Pure functions of the document's text,
//! the cursor and the API's documentation, so each case is a unit test.

use lsp_types::{
    CompletionItem, CompletionItemKind, Documentation, Hover, HoverContents, MarkupContent,
    MarkupKind, Position, Range,
};
use starlark::docs::markdown::render_doc_item_no_link;
use starlark::docs::{DocItem, DocMember, DocModule};

/// A dotted name at the cursor: `install.python_pa|` or `data.path.hug|gingface`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dotted {
    /// The names before the last dot, outermost first (`["data", "path"]`).
    pub namespace: Vec<String>,
    /// The member's name: the whole of it for a hover, what is typed so far for a completion.
    pub member: String,
    /// Where the member's name is in the line (UTF-16 columns, as LSP counts).
    pub range: Range,
}

fn is_name_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// Byte offset in `line` of the UTF-16 column `character` (its end when the line is shorter).
fn byte_at(line: &str, character: u32) -> usize {
    let mut units = 0;
    for (i, c) in line.char_indices() {
        if units >= character as usize {
            return i;
        }
        units += c.len_utf16();
    }
    line.len()
}

fn utf16_len(s: &str) -> u32 {
    s.chars().map(char::len_utf16).sum::<usize>() as u32
}

/// The dotted name the cursor is in or just after. `whole` takes the member's name to its end (a
/// hover); otherwise it stops at the cursor (a completion). `None` when the cursor is not after a
/// dot-separated name, or the dotted name hangs off something else (`x().install.`).
pub fn dotted_at(text: &str, position: Position, whole: bool) -> Option<Dotted> {
    let line = text.lines().nth(position.line as usize)?;
    let cursor = byte_at(line, position.character);
    let start = line[..cursor]
        .char_indices()
        .rev()
        .take_while(|(_, c)| is_name_char(*c))
        .last()
        .map_or(cursor, |(i, _)| i);
    let end = if whole {
        line[cursor..]
            .char_indices()
            .find(|(_, c)| !is_name_char(*c))
            .map_or(line.len(), |(i, _)| cursor + i)
    } else {
        cursor
    };
    let mut namespace = Vec::new();
    let mut at = start;
    while line[..at].ends_with('.') {
        let before = &line[..at - 1];
        let name_start = before
            .char_indices()
            .rev()
            .take_while(|(_, c)| is_name_char(*c))
            .last()
            .map(|(i, _)| i)?;
        namespace.insert(0, before[name_start..].to_string());
        at = name_start;
    }
    let hangs_off_something = line[..at]
        .chars()
        .next_back()
        .is_some_and(|c| c == ')' || c == ']' || c == '"' || c == '\'');
    if namespace.is_empty() || hangs_off_something {
        return None;
    }
    let column = |byte: usize| utf16_len(&line[..byte]);
    Some(Dotted {
        namespace,
        member: line[start..end].to_string(),
        range: Range::new(
            Position::new(position.line, column(start)),
            Position::new(position.line, column(end)),
        ),
    })
}

/// The documentation of the namespace `path` names (`["data", "path"]`), if it is one.
pub fn namespace<'a>(api: &'a DocModule, path: &[String]) -> Option<&'a DocModule> {
    let mut module = api;
    for name in path {
        match module.members.get(name)? {
            DocItem::Module(m) => module = m,
            _ => return None,
        }
    }
    Some(module)
}

/// The signature line of a member: `def python_packages(name: ... = None, ...) -> None`.
fn signature(name: &str, item: &DocItem) -> Option<String> {
    match item {
        DocItem::Member(DocMember::Function(f)) => Some(f.render_as_code(name)),
        DocItem::Member(DocMember::Property(p)) => Some(p.render_as_code(name)),
        DocItem::Module(_) => Some(format!("{name}: namespace")),
        DocItem::Type(_) => None,
    }
}

/// The signature on one line (`def f(a: str = ..., b: int = ...) -> None`), as completion's
/// detail: starlark renders it over several lines, followed by the docs.
fn summary_line(name: &str, item: &DocItem) -> Option<String> {
    let code = signature(name, item)?;
    let head = code.split("\"\"\"").next().unwrap_or("");
    let joined = head
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    Some(
        joined
            .replace("( ", "(")
            .replace(", )", ")")
            .trim_end_matches(':')
            .trim()
            .to_string(),
    )
}

/// Every member of `module`, with its signature and documentation (the editor filters them by
/// what is typed).
pub fn completions(module: &DocModule) -> Vec<CompletionItem> {
    module
        .members
        .iter()
        .map(|(name, item)| CompletionItem {
            label: name.clone(),
            kind: Some(match item {
                DocItem::Member(DocMember::Function(_)) => CompletionItemKind::FUNCTION,
                DocItem::Module(_) => CompletionItemKind::MODULE,
                _ => CompletionItemKind::CONSTANT,
            }),
            detail: summary_line(name, item),
            documentation: Some(Documentation::MarkupContent(MarkupContent {
                kind: MarkupKind::Markdown,
                value: render_doc_item_no_link(name, item),
            })),
            ..CompletionItem::default()
        })
        .collect()
}

/// The hover of `dotted`'s member: its rendered signature and documentation.
pub fn hover(api: &DocModule, dotted: &Dotted) -> Option<Hover> {
    let item = namespace(api, &dotted.namespace)?
        .members
        .get(&dotted.member)?;
    let qualified = format!("{}.{}", dotted.namespace.join("."), dotted.member);
    Some(Hover {
        contents: HoverContents::Markup(MarkupContent {
            kind: MarkupKind::Markdown,
            value: render_doc_item_no_link(&qualified, item),
        }),
        range: Some(dotted.range),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api() -> DocModule {
        crate::lang::globals().documentation()
    }

    fn at(text: &str, line: u32, character: u32, whole: bool) -> Option<Dotted> {
        dotted_at(text, Position::new(line, character), whole)
    }

    #[test]
    fn the_name_before_the_cursor_is_the_member_typed_so_far() {
        let text = "def build():\n    install.python_pa\n";
        let d = at(text, 1, 21, false).unwrap();
        assert_eq!(d.namespace, ["install"]);
        assert_eq!(d.member, "python_pa");
        assert_eq!(
            d.range,
            Range::new(Position::new(1, 12), Position::new(1, 21))
        );
        let just_the_dot = at("    install.", 0, 12, false).unwrap();
        assert_eq!(just_the_dot.member, "");
    }

    #[test]
    fn nested_namespaces_and_whole_names_for_a_hover() {
        let d = at("x = data.path.huggingface + 1", 0, 16, true).unwrap();
        assert_eq!(d.namespace, ["data", "path"]);
        assert_eq!(d.member, "huggingface");
        assert_eq!(d.range.end.character, 25);
    }

    #[test]
    fn not_a_dotted_name() {
        assert_eq!(at("    install", 0, 11, false), None);
        assert_eq!(at("f().install.x", 0, 13, false), None);
        assert_eq!(at("\"a\".upper", 0, 9, false), None);
        assert_eq!(at("one line", 5, 0, false), None);
    }

    #[test]
    fn columns_count_utf16_units_as_lsp_does() {
        // "é" is one UTF-16 unit, "😀" two.
        let d = at("s = \"😀é\"; install.ap", 0, 21, false).unwrap();
        assert_eq!(d.member, "ap");
        assert_eq!(d.range.start.character, 19);
    }

    #[test]
    fn every_namespace_of_the_api_completes_with_signatures_and_docs() {
        let api = api();
        for ns in ["install", "config", "io", "runtime", "data"] {
            let items = completions(namespace(&api, &[ns.to_string()]).unwrap());
            assert!(!items.is_empty(), "{ns} has no members");
            for item in &items {
                let doc = match &item.documentation {
                    Some(Documentation::MarkupContent(m)) => m.value.clone(),
                    other => panic!("{ns}.{}: {other:?}", item.label),
                };
                if item.kind == Some(CompletionItemKind::FUNCTION) {
                    let detail = item.detail.clone().unwrap_or_default();
                    assert!(
                        detail.contains(&item.label),
                        "{ns}.{}: {detail}",
                        item.label
                    );
                    assert!(doc.contains(&item.label), "{ns}.{}: {doc}", item.label);
                }
            }
            // Every function says what it does (its docstring, not only its signature).
            for (name, item) in &namespace(&api, &[ns.to_string()]).unwrap().members {
                if matches!(item, DocItem::Member(DocMember::Function(_))) {
                    assert!(
                        item.get_doc_summary().is_some_and(|s| !s.is_empty()),
                        "{ns}.{name} has no docstring"
                    );
                }
            }
        }
        for global in ["base", "shell", "run", "git_config", "include"] {
            let item = api.members.get(global).unwrap();
            assert!(
                item.get_doc_summary().is_some(),
                "{global} has no docstring"
            );
        }
        let install = completions(namespace(&api, &["install".into()]).unwrap());
        let pp = install
            .iter()
            .find(|i| i.label == "python_packages")
            .unwrap();
        assert_eq!(
            pp.detail.as_deref().unwrap(),
            "def python_packages(name: list[str] | tuple[str, ...] = ..., requirements: str = ..., \
             local_wheels: list[str] | tuple[str, ...] = ...) -> None"
        );
    }

    #[test]
    fn a_hover_over_a_member_shows_its_docs() {
        let api = api();
        let d = at("    config.jupyter(token = \"\")", 0, 14, true).unwrap();
        let h = hover(&api, &d).unwrap();
        let HoverContents::Markup(m) = h.contents else {
            panic!("{h:?}")
        };
        assert!(m.value.contains("JupyterLab"), "{}", m.value);
        assert!(m.value.contains("token"), "{}", m.value);
        let missing = at("    config.jupyterr()", 0, 14, true).unwrap();
        assert!(hover(&api, &missing).is_none());
    }
}
