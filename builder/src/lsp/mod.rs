//! `envd lsp`: a language server for build files over stdio.
//!
//! starlark's own server (the `starlark_lsp` crate) does the protocol, go-to-definition (also
//! into `load`ed files), completion of globals, locals and parameter names, and hover; envd
//! gives it the build files' context ([`context`]: diagnostics from the same evaluation
//! `envd build` runs, the v1 API's documentation) and stands between it and the editor
//! ([`router`]) to complete and document the members of `install.`, `config.`, `io.`,
//! `runtime.` and `data.` ([`members`]), which it does not know, and to keep malformed
//! messages from reaching it.

pub mod context;
pub mod members;
pub mod router;

use std::io::IsTerminal as _;
use std::thread;

use lsp_server::{Connection, Message};

use context::BuildFiles;
use router::{with_our_capabilities, Documents, Route};

/// Serves the editor on stdin/stdout until it says `exit` or closes the stream. `Ok(true)` when
/// it said `shutdown` first (the protocol's clean end: exit code 0; otherwise 1).
pub fn serve_stdio() -> anyhow::Result<bool> {
    if std::io::stdin().is_terminal() {
        // Someone typed `envd lsp` by hand: it would wait in silence for an editor's messages.
        eprintln!(
            "envd lsp: a language server for build.envd files, speaking LSP on stdin/stdout; \
             editors start it (docs/editors.md). Waiting for an editor's messages; Ctrl-D ends."
        );
    }
    let (editor, io_threads) = Connection::stdio();
    let clean = serve(editor)?;
    io_threads.join()?;
    Ok(clean)
}

/// Serves the editor on `editor`: starlark's server runs on a thread of its own, behind the
/// router. Returns whether the editor said `shutdown` before it left.
pub fn serve(editor: Connection) -> anyhow::Result<bool> {
    let api = crate::lang::globals().documentation();
    let context = BuildFiles::new(api.clone());
    let (ours, theirs) = Connection::memory();
    let server = thread::Builder::new()
        .name("starlark-lsp".into())
        .spawn(move || starlark_lsp::server::server_with_connection(theirs, context))?;
    let to_editor = editor.sender.clone();
    let from_server = ours.receiver;
    let replies = thread::Builder::new()
        .name("lsp-replies".into())
        .spawn(move || {
            for msg in from_server {
                let msg = match msg {
                    Message::Response(r) => Message::Response(with_our_capabilities(r)),
                    other => other,
                };
                if to_editor.send(msg).is_err() {
                    break;
                }
            }
        })?;
    let mut documents = Documents::default();
    let mut to_server = Some(ours.sender);
    for msg in &editor.receiver {
        if matches!(&msg, Message::Notification(n) if n.method == "exit") {
            break;
        }
        let Some(server) = &to_server else {
            refuse_after_shutdown(&editor, msg)?;
            continue;
        };
        match documents.route(msg, &api) {
            Route::Forward(msg) => {
                if server.send(msg).is_err() {
                    anyhow::bail!("the language server stopped unexpectedly");
                }
            }
            Route::Answer(response) => editor.sender.send(Message::Response(response))?,
            Route::Drop(why) => eprintln!("envd lsp: ignored {why}"),
            Route::Shutdown(response) => {
                // Closing its channel ends starlark's server's loop.
                to_server = None;
                editor.sender.send(Message::Response(response))?;
            }
        }
    }
    let clean = to_server.is_none();
    drop(to_server);
    let served = server
        .join()
        .map_err(|_| anyhow::anyhow!("the language server panicked"))?;
    if clean {
        served?;
    } else {
        // starlark's server then fails on its closed channel (before `initialize`, say): that
        // is the editor leaving, not an error of the server's.
        eprintln!("envd lsp: the editor closed the connection without `shutdown`");
    }
    replies
        .join()
        .map_err(|_| anyhow::anyhow!("the reply thread panicked"))?;
    Ok(clean)
}

/// After `shutdown` only `exit` is expected: a request gets the protocol's error, anything else
/// is dropped.
fn refuse_after_shutdown(editor: &Connection, msg: Message) -> anyhow::Result<()> {
    if let Message::Request(req) = msg {
        let refused = lsp_server::Response::new_err(
            req.id,
            lsp_server::ErrorCode::InvalidRequest as i32,
            "the server is shutting down".into(),
        );
        editor.sender.send(Message::Response(refused))?;
    }
    Ok(())
}
