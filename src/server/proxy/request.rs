//! A proxied request as pointsman reads it: its body in the chat-completions form (and the
//! client's own), what the model must be able to do, the user turns to route on, and its
//! sticky-session key.

use axum::http::HeaderMap;
use serde_json::{Map, Value};

use super::{ApiError, Content, Message};
use crate::wire::{self, Api};

/// What the request is, read from its body.
pub(super) struct ChatRequest {
    /// The API the client speaks.
    pub(super) client: Api,
    /// The request as a chat-completions body (see [`crate::wire`]).
    pub(super) chat: Map<String, Value>,
    /// The client's own body when its API is not chat completions: sent unchanged (but for the
    /// model) to a provider of the same API.
    pub(super) native: Option<Map<String, Value>>,
    /// What the chat form could not carry: the request goes only to providers of its own API.
    pub(super) untranslatable: Vec<String>,
    /// Hosted or server tools left out when the request is translated for another API.
    pub(super) dropped_tools: Vec<String>,
    /// The chat client asked for the usage chunk.
    pub(super) include_usage: bool,
    /// The sticky-session key, if the request has one.
    pub(super) session: Option<String>,
    pub(super) model: String,
    pub(super) stream: bool,
    pub(super) wants_json: bool,
    pub(super) user_turns: Vec<String>,
    /// Bytes of message text in the whole conversation (for the context-window estimate).
    pub(super) text_bytes: usize,
    pub(super) capabilities: Vec<String>,
    /// The client's request headers.
    pub(super) headers: HeaderMap,
}

impl ChatRequest {
    pub(super) fn text_bytes(&self) -> usize {
        self.text_bytes
    }

    /// Reads a request in `client`'s API; `headers` are the client's, kept for the providers
    /// that forward some.
    pub(super) fn parse(
        client: Api,
        body: Map<String, Value>,
        headers: HeaderMap,
    ) -> Result<Self, ApiError> {
        let incoming =
            wire::request_to_chat(client, body).map_err(|e| ApiError::Validation(e.to_string()))?;
        let (body, native) = (incoming.chat, incoming.native);
        let session = headers
            .get("x-pointsman-session")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .or_else(|| {
                native
                    .as_ref()
                    .and_then(|n| n.get("metadata"))
                    .and_then(|m| m.get("user_id"))
                    .and_then(Value::as_str)
                    .and_then(claude_code_session)
            })
            .or_else(|| {
                body.get("prompt_cache_key")
                    .and_then(Value::as_str)
                    .map(str::to_string)
            })
            .filter(|k| !k.trim().is_empty());
        let include_usage = body
            .get("stream_options")
            .and_then(|o| o.get("include_usage"))
            .and_then(Value::as_bool)
            == Some(true);
        let model = match body.get("model") {
            Some(Value::String(m)) if !m.trim().is_empty() => m.trim().to_string(),
            _ => {
                return Err(ApiError::Validation(
                    "`model` must be a string: `auto`, a route name, or a model name (GET /v1/models lists them)".into(),
                ));
            }
        };
        let messages: Vec<Message> = match body.get("messages") {
            Some(v @ Value::Array(a)) if !a.is_empty() => serde_json::from_value(v.clone())
                .map_err(|e| ApiError::Validation(format!("`messages`: {e}")))?,
            _ => {
                return Err(ApiError::Validation(
                    "`messages` must be a non-empty list of chat messages".into(),
                ));
            }
        };
        let stream = match body.get("stream") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err(ApiError::Validation("`stream` must be a boolean".into())),
        };
        let wants_json = matches!(
            body.get("response_format")
                .and_then(|f| f.get("type"))
                .and_then(Value::as_str),
            Some("json_object" | "json_schema")
        );
        let mut capabilities = Vec::new();
        if body.get("tools").is_some_and(|t| !t.is_null()) {
            capabilities.push("tools".to_string());
        }
        let mut user_turns = Vec::new();
        let mut text_bytes = 0;
        let mut images = false;
        for m in &messages {
            let text = match &m.content {
                None => String::new(),
                Some(Content::Text(t)) => t.clone(),
                Some(Content::Parts(parts)) => {
                    images |= parts.iter().any(|p| p.kind == "image_url");
                    parts
                        .iter()
                        .filter(|p| p.kind == "text")
                        .filter_map(|p| p.text.as_deref())
                        .collect::<Vec<_>>()
                        .join("\n")
                }
            };
            text_bytes += text.len();
            if m.role == "user" {
                user_turns.push(text);
            }
        }
        if images {
            capabilities.push("vision".to_string());
        }
        Ok(ChatRequest {
            client,
            chat: body,
            native,
            untranslatable: incoming.untranslatable,
            dropped_tools: incoming.dropped_tools,
            include_usage,
            session,
            model,
            stream,
            wants_json,
            user_turns,
            text_bytes,
            capabilities,
            headers,
        })
    }
}

/// The session in a Messages request's `metadata.user_id` as Claude Code writes it (a JSON
/// object with `session_id`, or `..._session_<id>`). Any other `user_id` names an end user, not
/// a conversation: it is no session key (all of a user's conversations would share one).
fn claude_code_session(user_id: &str) -> Option<String> {
    if let Ok(Value::Object(o)) = serde_json::from_str::<Value>(user_id) {
        return o
            .get("session_id")
            .and_then(Value::as_str)
            .map(str::to_string);
    }
    user_id
        .rsplit_once("_session_")
        .map(|(_, id)| id.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claude_codes_session_is_read_from_its_user_id_and_a_plain_user_id_is_none() {
        let json = r#"{"device_id":"d","account_uuid":"","session_id":"df37ec0c"}"#;
        assert_eq!(claude_code_session(json).as_deref(), Some("df37ec0c"));
        assert_eq!(
            claude_code_session("user_abc_account__session_9f1e").as_deref(),
            Some("9f1e")
        );
        assert_eq!(claude_code_session("user-42"), None);
    }

    #[test]
    fn requests_are_read_with_their_needs() {
        let body = serde_json::json!({
            "model": "auto",
            "stream": true,
            "tools": [{"type": "function"}],
            "response_format": {"type": "json_object"},
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": "first"},
                {"role": "assistant", "content": "ok"},
                {"role": "user", "content": [{"type": "text", "text": "look"}, {"type": "image_url", "image_url": {"url": "x"}}]},
            ],
        });
        let Value::Object(map) = body else {
            unreachable!()
        };
        let r = ChatRequest::parse(Api::ChatCompletions, map, HeaderMap::new()).unwrap();
        assert!(r.stream && r.wants_json);
        assert_eq!(r.user_turns, ["first", "look"]);
        assert_eq!(r.capabilities, ["tools", "vision"]);
        assert_eq!(
            r.text_bytes(),
            "be brief".len() + "first".len() + "ok".len() + "look".len()
        );
        for (bad, needle) in [
            (
                serde_json::json!({"messages": [{"role": "user", "content": "x"}]}),
                "`model`",
            ),
            (
                serde_json::json!({"model": "auto", "messages": []}),
                "`messages`",
            ),
            (
                serde_json::json!({"model": "auto", "messages": [{"role": "user", "content": "x"}], "stream": "yes"}),
                "`stream`",
            ),
        ] {
            let Value::Object(map) = bad else {
                unreachable!()
            };
            let err = ChatRequest::parse(Api::ChatCompletions, map, HeaderMap::new())
                .err()
                .unwrap()
                .to_string();
            assert!(err.contains(needle), "{err}");
        }
    }
}
