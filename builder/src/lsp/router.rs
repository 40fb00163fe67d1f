//! Between the editor and starlark's language server: every message passes through here, so
//! envd can answer what starlark's server does not know (the members of `install.`, `config.`,
//! ...), refuse malformed parameters with an error instead of letting the server panic on them,
//! and answer requests the server would leave unanswered.

use std::collections::HashMap;

use lsp_server::{ErrorCode, Message, Notification, Request, Response};
use lsp_types::notification::{
    DidChangeTextDocument, DidCloseTextDocument, DidOpenTextDocument, Notification as _,
};
use lsp_types::request::{
    Completion, GotoDefinition, HoverRequest, Initialize, Request as _, Shutdown,
};
use lsp_types::{
    CompletionParams, CompletionResponse, DidChangeTextDocumentParams, DidCloseTextDocumentParams,
    DidOpenTextDocumentParams, GotoDefinitionParams, HoverParams, InitializeParams,
};
use serde::de::DeserializeOwned;
use starlark::docs::DocModule;

use super::members;

/// What to do with a message from the editor.
#[derive(Debug)]
pub enum Route {
    /// Pass it to starlark's server.
    Forward(Message),
    /// Answer the editor directly.
    Answer(Response),
    /// Drop it, saying why on stderr (a notification with bad parameters has no one to answer).
    Drop(String),
    /// `shutdown`: answer it and stop starlark's server (which, left to handle it, fails on any
    /// message an editor sends between `shutdown` and `exit`).
    Shutdown(Response),
}

/// The text of every open document, by URI (the server asks for whole-document sync).
#[derive(Default)]
pub struct Documents(HashMap<String, String>);

/// The method starlark's server answers itself, besides `shutdown`.
const STARLARK_FILE_CONTENTS: &str = "starlark/fileContents";

fn params<P: DeserializeOwned>(value: &serde_json::Value) -> Result<P, String> {
    serde_json::from_value(value.clone()).map_err(|e| e.to_string())
}

fn invalid(req: &Request, why: String) -> Route {
    Route::Answer(Response::new_err(
        req.id.clone(),
        ErrorCode::InvalidParams as i32,
        format!("{}: {why}", req.method),
    ))
}

impl Documents {
    /// Decides what happens to one message from the editor, keeping the documents' text.
    pub fn route(&mut self, msg: Message, api: &DocModule) -> Route {
        match msg {
            Message::Request(req) => self.request(req, api),
            Message::Notification(n) => self.notification(n),
            Message::Response(_) => Route::Forward(msg),
        }
    }

    fn request(&self, req: Request, api: &DocModule) -> Route {
        let checked = match req.method.as_str() {
            Initialize::METHOD => params::<InitializeParams>(&req.params).map(drop),
            GotoDefinition::METHOD => params::<GotoDefinitionParams>(&req.params).map(drop),
            Shutdown::METHOD => return Route::Shutdown(Response::new_ok(req.id, ())),
            STARLARK_FILE_CONTENTS => Ok(()),
            Completion::METHOD => match params::<CompletionParams>(&req.params) {
                Ok(p) => return self.completion(req, &p, api),
                Err(e) => Err(e),
            },
            HoverRequest::METHOD => match params::<HoverParams>(&req.params) {
                Ok(p) => return self.hover(req, &p, api),
                Err(e) => Err(e),
            },
            _ => {
                return Route::Answer(Response::new_err(
                    req.id,
                    ErrorCode::MethodNotFound as i32,
                    format!("envd lsp does not implement {}", req.method),
                ))
            }
        };
        match checked {
            Ok(()) => Route::Forward(Message::Request(req)),
            Err(why) => invalid(&req, why),
        }
    }

    /// After `NAMESPACE.`, the namespace's members (nothing when the name before the dot is not
    /// one of envd's: a local struct's fields are not known before it runs); anywhere else,
    /// starlark's own completion (globals, locals, keywords, parameter names).
    fn completion(&self, req: Request, p: &CompletionParams, api: &DocModule) -> Route {
        let at = &p.text_document_position;
        let dotted = self
            .0
            .get(at.text_document.uri.as_str())
            .and_then(|text| members::dotted_at(text, at.position, false));
        match dotted {
            Some(d) => {
                let items = members::namespace(api, &d.namespace)
                    .map(members::completions)
                    .unwrap_or_default();
                Route::Answer(Response::new_ok(req.id, CompletionResponse::Array(items)))
            }
            None => Route::Forward(Message::Request(req)),
        }
    }

    /// Over a namespace's member, its documentation; anywhere else, starlark's hover.
    fn hover(&self, req: Request, p: &HoverParams, api: &DocModule) -> Route {
        let at = &p.text_document_position_params;
        let hover = self
            .0
            .get(at.text_document.uri.as_str())
            .and_then(|text| members::dotted_at(text, at.position, true))
            .and_then(|d| members::hover(api, &d));
        match hover {
            Some(h) => Route::Answer(Response::new_ok(req.id, h)),
            None => Route::Forward(Message::Request(req)),
        }
    }

    fn notification(&mut self, n: Notification) -> Route {
        let kept = match n.method.as_str() {
            DidOpenTextDocument::METHOD => {
                params::<DidOpenTextDocumentParams>(&n.params).map(|p| {
                    let doc = p.text_document;
                    self.0.insert(doc.uri.as_str().to_string(), doc.text);
                })
            }
            DidChangeTextDocument::METHOD => {
                match params::<DidChangeTextDocumentParams>(&n.params) {
                    Ok(p) => match p.content_changes.into_iter().next_back() {
                        Some(change) => {
                            let uri = p.text_document.uri.as_str().to_string();
                            self.0.insert(uri, change.text);
                            Ok(())
                        }
                        None => Err("no content changes".into()),
                    },
                    Err(e) => Err(e),
                }
            }
            DidCloseTextDocument::METHOD => {
                params::<DidCloseTextDocumentParams>(&n.params).map(|p| {
                    self.0.remove(p.text_document.uri.as_str());
                })
            }
            _ => Ok(()),
        };
        match kept {
            Ok(()) => Route::Forward(Message::Notification(n)),
            Err(why) => Route::Drop(format!("{}: {why}", n.method)),
        }
    }
}

/// Adds what envd answers itself to the server's capabilities: completion is triggered by `.`.
pub fn with_our_capabilities(mut response: Response) -> Response {
    if let Some(caps) = response
        .result
        .as_mut()
        .and_then(|r| r.get_mut("capabilities"))
        .and_then(|c| c.as_object_mut())
    {
        caps.insert(
            "completionProvider".into(),
            serde_json::json!({ "triggerCharacters": ["."] }),
        );
    }
    if let Some(result) = response.result.as_mut().and_then(|r| r.as_object_mut()) {
        result.insert(
            "serverInfo".into(),
            serde_json::json!({ "name": "envd", "version": env!("CARGO_PKG_VERSION") }),
        );
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use lsp_server::RequestId;
    use serde_json::json;

    fn api() -> DocModule {
        crate::lang::globals().documentation()
    }

    fn request(method: &str, params: serde_json::Value) -> Message {
        Message::Request(Request::new(RequestId::from(7), method.into(), params))
    }

    fn notification(method: &str, params: serde_json::Value) -> Message {
        Message::Notification(Notification::new(method.into(), params))
    }

    fn open(docs: &mut Documents, text: &str) {
        let msg = notification(
            "textDocument/didOpen",
            json!({"textDocument": {"uri": "file:///p/build.envd", "languageId": "starlark",
                   "version": 1, "text": text}}),
        );
        assert!(matches!(docs.route(msg, &api()), Route::Forward(_)));
    }

    fn at(line: u32, character: u32) -> serde_json::Value {
        json!({"textDocument": {"uri": "file:///p/build.envd"},
               "position": {"line": line, "character": character}})
    }

    #[test]
    fn after_a_namespace_envd_answers_with_its_members() {
        let mut docs = Documents::default();
        open(&mut docs, "def build():\n    install.\n");
        let Route::Answer(r) = docs.route(request("textDocument/completion", at(1, 12)), &api())
        else {
            panic!("not answered")
        };
        let items: Vec<lsp_types::CompletionItem> =
            serde_json::from_value(r.result.unwrap()).unwrap();
        assert!(items.iter().any(|i| i.label == "python_packages"));
        assert!(
            !items.iter().any(|i| i.label == "jupyter"),
            "config's member"
        );
    }

    #[test]
    fn elsewhere_starlarks_server_answers() {
        let mut docs = Documents::default();
        open(&mut docs, "def build():\n    ins\n");
        let routed = docs.route(request("textDocument/completion", at(1, 7)), &api());
        assert!(matches!(routed, Route::Forward(_)), "{routed:?}");
    }

    #[test]
    fn the_latest_change_is_what_completes() {
        let mut docs = Documents::default();
        open(&mut docs, "x = 1\n");
        let change = notification(
            "textDocument/didChange",
            json!({"textDocument": {"uri": "file:///p/build.envd", "version": 2},
                   "contentChanges": [{"text": "config.\n"}]}),
        );
        assert!(matches!(docs.route(change, &api()), Route::Forward(_)));
        let routed = docs.route(request("textDocument/completion", at(0, 7)), &api());
        assert!(matches!(routed, Route::Answer(_)), "{routed:?}");
    }

    #[test]
    fn malformed_parameters_are_refused_not_forwarded() {
        let mut docs = Documents::default();
        let Route::Answer(r) = docs.route(
            request("textDocument/hover", json!({"nonsense": 1})),
            &api(),
        ) else {
            panic!("forwarded")
        };
        assert_eq!(r.error.unwrap().code, ErrorCode::InvalidParams as i32);
        let empty_change = notification(
            "textDocument/didChange",
            json!({"textDocument": {"uri": "file:///p/build.envd", "version": 2},
                   "contentChanges": []}),
        );
        assert!(matches!(docs.route(empty_change, &api()), Route::Drop(_)));
        let Route::Answer(r) = docs.route(request("textDocument/formatting", json!({})), &api())
        else {
            panic!("forwarded")
        };
        assert_eq!(r.error.unwrap().code, ErrorCode::MethodNotFound as i32);
    }

    #[test]
    fn shutdown_is_answered_here() {
        let mut docs = Documents::default();
        let routed = docs.route(request("shutdown", serde_json::Value::Null), &api());
        let Route::Shutdown(r) = routed else {
            panic!("{routed:?}")
        };
        assert_eq!(r.id, RequestId::from(7));
        assert!(r.error.is_none());
    }

    #[test]
    fn the_capabilities_say_a_dot_triggers_completion() {
        let r = Response::new_ok(
            RequestId::from(1),
            json!({"capabilities": {"hoverProvider": true}}),
        );
        let patched = with_our_capabilities(r).result.unwrap();
        assert_eq!(
            patched["capabilities"]["completionProvider"]["triggerCharacters"][0],
            "."
        );
        assert_eq!(patched["capabilities"]["hoverProvider"], true);
        assert_eq!(patched["serverInfo"]["name"], "envd");
    }
}
