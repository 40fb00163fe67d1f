//! `envd lsp` driven as an editor drives it: the real `envd` binary over stdio, JSON-RPC messages
//! framed by `lsp-server`, every wait with a deadline that fails with what arrived.

use std::io::BufReader;
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use lsp_server::{Message, Notification, Request, RequestId};
use serde_json::{json, Value};

use envd_e2e::{envd, isolated, output_text, runtime_dir};

const DEADLINE: Duration = Duration::from_secs(20);

/// An editor's side of one `envd lsp` process.
struct Editor {
    child: Child,
    stdin: Option<ChildStdin>,
    incoming: Receiver<Message>,
    seen: Vec<Message>,
    next_id: i32,
}

impl Editor {
    /// Starts `envd lsp` and completes the handshake with `root` as the workspace.
    fn start(root: &Path) -> Editor {
        let mut child = isolated(&mut Command::new(runtime_dir().join("envd")))
            .arg("lsp")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start envd lsp");
        let stdin = child.stdin.take();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let (tx, incoming) = mpsc::channel();
        std::thread::spawn(move || {
            while let Ok(Some(msg)) = Message::read(&mut stdout) {
                if tx.send(msg).is_err() {
                    break;
                }
            }
        });
        let mut editor = Editor {
            child,
            stdin,
            incoming,
            seen: Vec::new(),
            next_id: 1,
        };
        let uri = format!("file://{}", root.display());
        let init = editor.request(
            "initialize",
            json!({"processId": null, "rootUri": uri, "capabilities": {},
                   "workspaceFolders": [{"uri": uri, "name": "project"}]}),
        );
        let caps = &init["capabilities"];
        assert_eq!(
            caps["completionProvider"]["triggerCharacters"][0], ".",
            "{init}"
        );
        assert_eq!(caps["hoverProvider"], true, "{init}");
        assert!(caps["definitionProvider"].is_object(), "{init}");
        editor.notify("initialized", json!({}));
        editor
    }

    fn send(&mut self, msg: Message) {
        msg.write(self.stdin.as_mut().unwrap())
            .expect("write to envd lsp");
    }

    fn notify(&mut self, method: &str, params: Value) {
        self.send(Message::Notification(Notification::new(
            method.into(),
            params,
        )));
    }

    /// The next message `wanted` accepts, failing with everything seen when the deadline passes.
    fn wait_for(&mut self, what: &str, wanted: impl Fn(&Message) -> bool) -> Message {
        let end = Instant::now() + DEADLINE;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.incoming.recv_timeout(left) {
                Ok(msg) if wanted(&msg) => return msg,
                Ok(msg) => self.seen.push(msg),
                Err(e) => panic!(
                    "no {what} from envd lsp within {DEADLINE:?} ({e}); it sent: {:#?}",
                    self.seen
                ),
            }
        }
    }

    /// Sends a request and returns its response: the result, or the error as `{"error": ...}`.
    fn request(&mut self, method: &str, params: Value) -> Value {
        let id = RequestId::from(self.next_id);
        self.next_id += 1;
        self.send(Message::Request(Request::new(
            id.clone(),
            method.into(),
            params,
        )));
        let msg = self.wait_for(
            &format!("response to {method}"),
            |m| matches!(m, Message::Response(r) if r.id == id),
        );
        let Message::Response(r) = msg else {
            unreachable!()
        };
        match r.error {
            Some(e) => json!({"error": {"code": e.code, "message": e.message}}),
            None => r.result.unwrap_or(Value::Null),
        }
    }

    fn open(&mut self, file: &Path, text: &str) {
        self.notify(
            "textDocument/didOpen",
            json!({"textDocument": {"uri": uri(file), "languageId": "starlark", "version": 1,
                                     "text": text}}),
        );
    }

    /// The next diagnostics published for `file`.
    fn diagnostics(&mut self, file: &Path) -> Vec<Value> {
        let uri = uri(file);
        let msg = self.wait_for("diagnostics", |m| {
            matches!(m, Message::Notification(n)
                if n.method == "textDocument/publishDiagnostics" && n.params["uri"] == uri)
        });
        let Message::Notification(n) = msg else {
            unreachable!()
        };
        n.params["diagnostics"].as_array().unwrap().clone()
    }

    fn at(file: &Path, line: u32, character: u32) -> Value {
        json!({"textDocument": {"uri": uri(file)},
               "position": {"line": line, "character": character}})
    }

    /// Says shutdown and exit, as an editor does, and returns how the process ended.
    fn stop(mut self) -> std::process::ExitStatus {
        let answer = self.request("shutdown", Value::Null);
        assert!(answer.get("error").is_none(), "{answer}");
        // Editors send more before `exit` (Neovim closes its buffers): that must not fail it.
        self.notify(
            "textDocument/didClose",
            json!({"textDocument": {"uri": "file:///closed.envd"}}),
        );
        let late = self.request("textDocument/hover", Editor::at(Path::new("/x.envd"), 0, 0));
        assert_eq!(
            late["error"]["code"], -32600,
            "refused after shutdown: {late}"
        );
        self.notify("exit", Value::Null);
        drop(self.stdin.take());
        let end = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < end, "envd lsp did not exit after `exit`");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Editor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn uri(file: &Path) -> String {
    format!("file://{}", file.display())
}

fn labels(items: &Value) -> Vec<String> {
    items
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {items}"))
        .iter()
        .map(|i| i["label"].as_str().unwrap().to_string())
        .collect()
}

const MISSPELT: &str =
    "def build():\n    base(dev=True)\n    install.pythn_packages(name = [\"numpy\"])\n";

#[test]
fn diagnostics_are_the_errors_envd_build_reports_at_the_same_place() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("build.envd");
    std::fs::write(&file, MISSPELT).unwrap();
    // What the command line says about the same file: `envd: FILE:LINE:COLUMN: message`.
    let built = envd(&["build", "--path", dir.path().to_str().unwrap()]);
    assert!(!built.status.success(), "{}", output_text(&built));
    let said = String::from_utf8_lossy(&built.stderr).to_string();
    let located = said
        .lines()
        .find_map(|l| l.split_once("build.envd:"))
        .map(|(_, rest)| rest.to_string())
        .unwrap_or_else(|| panic!("no located error: {said}"));
    let mut parts = located.splitn(3, ':');
    let line: u64 = parts.next().unwrap().parse().unwrap();
    let column: u64 = parts.next().unwrap().parse().unwrap();
    let message = parts.next().unwrap().trim();

    let mut editor = Editor::start(dir.path());
    editor.open(&file, MISSPELT);
    let diagnostics = editor.diagnostics(&file);
    assert_eq!(diagnostics.len(), 1, "{diagnostics:#?}");
    let d = &diagnostics[0];
    assert_eq!(d["range"]["start"]["line"], line - 1, "{d}");
    assert_eq!(d["range"]["start"]["character"], column - 1, "{d}");
    assert_eq!(d["message"], message, "{d}");
    assert!(
        message.contains("python_packages"),
        "the did-you-mean: {message}"
    );
    assert_eq!(d["severity"], 1, "an error: {d}");

    // Fixed in the editor (not on disk): the diagnostics clear.
    let fixed = MISSPELT.replace("pythn", "python");
    editor.notify(
        "textDocument/didChange",
        json!({"textDocument": {"uri": uri(&file), "version": 2},
               "contentChanges": [{"text": fixed}]}),
    );
    assert_eq!(editor.diagnostics(&file), Vec::<Value>::new());
    // A syntax error, and an error only a run of build() finds (a bad argument's value).
    for (text, line) in [
        ("def build(:\n    pass\n", 0),
        (
            "def build():\n    base(dev=True)\n    config.jupyter(port = 70000)\n",
            2,
        ),
    ] {
        editor.notify(
            "textDocument/didChange",
            json!({"textDocument": {"uri": uri(&file), "version": 3},
                   "contentChanges": [{"text": text}]}),
        );
        let d = editor.diagnostics(&file);
        assert_eq!(d.len(), 1, "{text}: {d:#?}");
        assert_eq!(d[0]["range"]["start"]["line"], line, "{text}: {d:#?}");
    }
    assert!(editor.stop().success());
}

#[test]
fn completion_after_a_namespace_lists_its_functions_with_signatures() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("build.envd");
    let mut editor = Editor::start(dir.path());
    // As in an editor: the file parsed once, then typing leaves it unparsable for a while
    // (starlark's server keeps the last text that parsed).
    editor.open(&file, "def build():\n    base(dev=True)\n");
    assert_eq!(editor.diagnostics(&file), Vec::<Value>::new());
    let text = "def build():\n    base(dev=True)\n    install.\n    config.\n    ba\n";
    editor.notify(
        "textDocument/didChange",
        json!({"textDocument": {"uri": uri(&file), "version": 2},
               "contentChanges": [{"text": text}]}),
    );
    assert_eq!(editor.diagnostics(&file).len(), 1, "the incomplete line");
    let install = editor.request("textDocument/completion", Editor::at(&file, 2, 12));
    let names = labels(&install);
    for f in [
        "python_packages",
        "apt_packages",
        "python",
        "cuda",
        "vscode_extensions",
    ] {
        assert!(names.contains(&f.to_string()), "{f} missing: {names:?}");
    }
    assert!(!names.contains(&"jupyter".to_string()), "{names:?}");
    let pp = install
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["label"] == "python_packages")
        .unwrap();
    let detail = pp["detail"].as_str().unwrap();
    assert!(detail.starts_with("def python_packages(name:"), "{detail}");
    assert!(detail.contains("requirements"), "{detail}");
    let docs = pp["documentation"]["value"].as_str().unwrap();
    assert!(
        docs.contains("requirements file of the build context"),
        "{docs}"
    );
    let config = labels(&editor.request("textDocument/completion", Editor::at(&file, 3, 11)));
    assert!(config.contains(&"jupyter".to_string()), "{config:?}");
    // Outside a namespace: starlark's completion of the globals (`ba` parses: a name).
    editor.notify(
        "textDocument/didChange",
        json!({"textDocument": {"uri": uri(&file), "version": 3},
               "contentChanges": [{"text": "def build():\n    base(dev=True)\n    ba\n"}]}),
    );
    let unknown = editor.diagnostics(&file);
    assert!(
        unknown[0]["message"].to_string().contains("`ba`"),
        "{unknown:?}"
    );
    let globals = labels(&editor.request("textDocument/completion", Editor::at(&file, 2, 6)));
    for g in ["base", "install", "runtime"] {
        assert!(globals.contains(&g.to_string()), "{g}: {globals:?}");
    }
    assert!(editor.stop().success());
}

#[test]
fn hover_shows_the_docs_of_functions_and_members() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("build.envd");
    let text = "def build():\n    base(dev=True)\n    config.jupyter()\n";
    let mut editor = Editor::start(dir.path());
    editor.open(&file, text);
    let _ = editor.diagnostics(&file);
    let member = editor.request("textDocument/hover", Editor::at(&file, 2, 13));
    let shown = member["contents"]["value"].as_str().unwrap_or_default();
    assert!(shown.contains("JupyterLab"), "{member}");
    assert!(shown.contains("token"), "{member}");
    let global = editor.request("textDocument/hover", Editor::at(&file, 1, 5));
    assert!(global.to_string().contains("The base image"), "{global}");
    assert!(editor.stop().success());
}

#[test]
fn go_to_definition_follows_a_load_into_the_loaded_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("lib")).unwrap();
    let lib = dir.path().join("lib/python.envd");
    std::fs::write(
        &lib,
        "# Shared by our projects.\n\ndef science():\n    install.python_packages(name = [\"numpy\"])\n",
    )
    .unwrap();
    let file = dir.path().join("build.envd");
    let text = "load(\"lib/python.envd\", \"science\")\n\ndef build():\n    base(dev=True)\n    science()\n";
    std::fs::write(&file, text).unwrap();
    let mut editor = Editor::start(dir.path());
    editor.open(&file, text);
    assert_eq!(
        editor.diagnostics(&file),
        Vec::<Value>::new(),
        "the load resolves"
    );
    let found = editor.request("textDocument/definition", Editor::at(&file, 4, 6));
    let target = if found.is_array() {
        found[0].clone()
    } else {
        found.clone()
    };
    let target_uri = target["targetUri"].as_str().or(target["uri"].as_str());
    assert_eq!(target_uri, Some(uri(&lib).as_str()), "{found}");
    let range = if target["targetSelectionRange"].is_object() {
        &target["targetSelectionRange"]
    } else {
        &target["range"]
    };
    assert_eq!(range["start"]["line"], 2, "the def line: {found}");
    assert!(editor.stop().success());
}

#[test]
fn malformed_messages_are_refused_and_the_server_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("build.envd");
    let mut editor = Editor::start(dir.path());
    let bad = editor.request("textDocument/hover", json!({"textDocument": 5}));
    assert_eq!(bad["error"]["code"], -32602, "invalid params: {bad}");
    let unknown = editor.request("textDocument/formatting", json!({}));
    assert_eq!(
        unknown["error"]["code"], -32601,
        "method not found: {unknown}"
    );
    editor.notify(
        "textDocument/didChange",
        json!({"textDocument": {"uri": uri(&file), "version": 2}, "contentChanges": []}),
    );
    editor.notify("textDocument/didOpen", json!({"textDocument": null}));
    // Still serving.
    editor.open(&file, MISSPELT);
    assert_eq!(editor.diagnostics(&file).len(), 1);
    assert!(editor.stop().success());
}

/// A real editor's LSP client: Neovim (Debian's, headless) configured by nothing but
/// `editors/neovim/envd.lua` (what docs/editors.md tells users to use), then asked what it shows.
#[test]
fn neovim_shows_the_diagnostics_completes_and_jumps() {
    let nvim = Command::new("nvim").arg("--version").output();
    assert!(
        nvim.as_ref().is_ok_and(|o| o.status.success()),
        "Neovim is needed for this test (scripts/test installs Debian's neovim): {nvim:?}"
    );
    let dir = tempfile::tempdir().unwrap();
    let lib = dir.path().join("lib.envd");
    std::fs::write(
        &lib,
        "def science():\n    install.python_packages(name = [\"numpy\"])\n",
    )
    .unwrap();
    let file = dir.path().join("build.envd");
    std::fs::write(
        &file,
        "load(\"lib.envd\", \"science\")\ndef build():\n    base(dev=True)\n    science()\n    \
         install.pythn_packages(name = [\"numpy\"])\n",
    )
    .unwrap();
    let report = dir.path().join("report.txt");
    let script = dir.path().join("check.lua");
    std::fs::write(&script, NEOVIM_SCRIPT).unwrap();
    let config = envd_e2e::workspace_root().join("editors/neovim/envd.lua");
    let out = isolated(&mut Command::new("nvim"))
        .args(["--headless", "-n", "-i", "NONE", "-u"])
        .arg(&config)
        .arg("-c")
        .arg(format!("luafile {}", script.display()))
        .arg(&file)
        .current_dir(dir.path())
        .env("ENVD_BIN", runtime_dir().join("envd"))
        .env("REPORT", &report)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        !output_text(&out).contains("quit with exit code"),
        "envd lsp ended badly: {}",
        output_text(&out)
    );
    let shown = std::fs::read_to_string(&report)
        .unwrap_or_else(|e| panic!("no report ({e}): {}", output_text(&out)));
    let lines: Vec<&str> = shown.lines().collect();
    assert!(lines.contains(&"FILETYPE envd"), "{shown}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("DIAG 5:5 ") && l.contains("python_packages")),
        "{shown}"
    );
    assert!(lines.contains(&"ITEM python_packages"), "{shown}");
    assert!(lines.contains(&"ITEM apt_packages"), "{shown}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("HOVER ") && l.contains("The base image")),
        "{shown}"
    );
    let lib_uri = uri(&lib);
    assert!(
        lines.contains(&format!("DEF {lib_uri}:0").as_str()),
        "{shown}"
    );
}

/// Waits for the client editors/neovim/envd.lua started, then makes the requests the editor
/// makes and writes what came back to $REPORT.
const NEOVIM_SCRIPT: &str = r#"
local out = {}
local ok, err = pcall(function()
  table.insert(out, "FILETYPE " .. vim.bo.filetype)
  vim.wait(15000, function() return #vim.diagnostic.get(0) > 0 end, 20)
  for _, d in ipairs(vim.diagnostic.get(0)) do
    table.insert(out, string.format("DIAG %d:%d %s", d.lnum + 1, d.col + 1, d.message))
  end
  local doc = vim.lsp.util.make_text_document_params()
  -- After `install.` on line 5.
  local res = vim.lsp.buf_request_sync(0, "textDocument/completion",
    { textDocument = doc, position = { line = 4, character = 12 } }, 10000)
  for _, r in pairs(res or {}) do
    local items = r.result and (r.result.items or r.result) or {}
    for _, item in ipairs(items) do table.insert(out, "ITEM " .. item.label) end
  end
  res = vim.lsp.buf_request_sync(0, "textDocument/hover",
    { textDocument = doc, position = { line = 2, character = 5 } }, 10000)
  for _, r in pairs(res or {}) do
    local lines = vim.lsp.util.convert_input_to_markdown_lines(r.result.contents)
    table.insert(out, "HOVER " .. table.concat(lines, " "))
  end
  res = vim.lsp.buf_request_sync(0, "textDocument/definition",
    { textDocument = doc, position = { line = 3, character = 6 } }, 10000)
  for _, r in pairs(res or {}) do
    local locs = r.result or {}
    if locs.uri or locs.targetUri then locs = { locs } end
    for _, l in ipairs(locs) do
      local range = l.targetSelectionRange or l.range
      table.insert(out, string.format("DEF %s:%d", l.targetUri or l.uri, range.start.line))
    end
  end
  for _, client in pairs(vim.lsp.buf_get_clients(0)) do client.stop() end
  vim.wait(5000, function() return #vim.lsp.get_active_clients() == 0 end, 20)
end)
if not ok then table.insert(out, "ERROR " .. tostring(err)) end
vim.fn.writefile(out, os.getenv("REPORT"))
vim.cmd("qa!")
"#;

#[test]
fn an_editor_that_leaves_without_shutdown_is_said_in_words() {
    let out = isolated(&mut Command::new(runtime_dir().join("envd")))
        .arg("lsp")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let said = output_text(&out);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(
        said.contains("closed the connection without `shutdown`"),
        "{said}"
    );
    assert!(!said.contains("disconnected channel"), "{said}");
}
