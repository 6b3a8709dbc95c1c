//! Anthropic Messages (`POST /v1/messages`), read into the hub and written from it.

use serde_json::{Map, Value, json};

use super::{Effort, Incoming, WireError, bad, content_text, new_id};

mod stream;

pub use stream::{StreamDecoder, StreamEncoder};

/// The `max_tokens` sent to an Anthropic provider when the request sets none (the Messages API
/// requires one).
pub const DEFAULT_MAX_TOKENS: u64 = 4_096;

/// The Messages API's version header sent upstream when the client did not send one.
pub const API_VERSION: &str = "2023-06-01";

/// Anthropic's error type for an HTTP status.
pub fn error_type(status: u16) -> &'static str {
    match status {
        400 | 413 | 422 => "invalid_request_error",
        401 => "authentication_error",
        402 => "billing_error",
        403 => "permission_error",
        404 => "not_found_error",
        408 | 504 => "timeout_error",
        429 => "rate_limit_error",
        529 | 503 => "overloaded_error",
        _ => "api_error",
    }
}

fn stop_to_chat(reason: Option<&str>) -> &'static str {
    match reason {
        Some("max_tokens") => "length",
        Some("tool_use") => "tool_calls",
        Some("refusal") => "content_filter",
        _ => "stop",
    }
}

fn stop_from_chat(reason: Option<&str>) -> &'static str {
    match reason {
        Some("length") => "max_tokens",
        Some("tool_calls" | "function_call") => "tool_use",
        Some("content_filter") => "refusal",
        _ => "end_turn",
    }
}

/// Reads a Messages request into a chat-completions body.
pub fn request_to_chat(body: &Map<String, Value>) -> Result<Incoming, WireError> {
    let mut untranslatable = Vec::new();
    let mut dropped_tools = Vec::new();
    let mut chat = Map::new();
    if let Some(m) = body.get("model") {
        chat.insert("model".into(), m.clone());
    }
    let mut messages = Vec::new();
    match body.get("system") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => messages.push(json!({"role": "system", "content": s})),
        Some(Value::Array(blocks)) => {
            let text = content_text(Some(&Value::Array(blocks.clone())));
            messages.push(json!({"role": "system", "content": text}));
        }
        Some(_) => return Err(bad("`system` must be a string or a list of text blocks")),
    }
    let Some(Value::Array(list)) = body.get("messages") else {
        return Err(bad(
            "`messages` must be a non-empty list of {role, content} messages",
        ));
    };
    if list.is_empty() {
        return Err(bad(
            "`messages` must be a non-empty list of {role, content} messages",
        ));
    }
    for (i, m) in list.iter().enumerate() {
        let role = m.get("role").and_then(Value::as_str).unwrap_or_default();
        // Claude Code puts system messages among the turns
        let role = match role {
            "user" | "assistant" | "system" => role,
            "developer" => "system",
            _ => {
                return Err(bad(format!(
                    "messages[{i}].role: `{role}` is not `user`, `assistant` or `system`"
                )));
            }
        };
        match m.get("content") {
            Some(Value::String(s)) => messages.push(json!({"role": role, "content": s})),
            Some(Value::Array(blocks)) => {
                read_blocks(role, blocks, i, &mut messages, &mut untranslatable)?;
            }
            _ => {
                return Err(bad(format!(
                    "messages[{i}].content must be a string or a list of content blocks"
                )));
            }
        }
    }
    // system messages among the turns join the system prompt, first: many chat templates
    // (vLLM's Llama and Mistral ones among them) take a system message nowhere else
    let (system, turns): (Vec<Value>, Vec<Value>) =
        messages.into_iter().partition(|m| m["role"] == "system");
    let mut messages = Vec::with_capacity(turns.len() + 1);
    if !system.is_empty() {
        let text: Vec<String> = system
            .iter()
            .map(|m| content_text(m.get("content")))
            .collect();
        messages.push(json!({"role": "system", "content": text.join("\n\n")}));
    }
    messages.extend(turns);
    chat.insert("messages".into(), Value::Array(messages));
    for (from, to) in [
        ("max_tokens", "max_tokens"),
        ("temperature", "temperature"),
        ("top_p", "top_p"),
        ("stream", "stream"),
        ("stop_sequences", "stop"),
    ] {
        if let Some(v) = body.get(from).filter(|v| !v.is_null()) {
            chat.insert(to.into(), v.clone());
        }
    }
    if let Some(Value::Array(tools)) = body.get("tools") {
        let mut out = Vec::new();
        for t in tools {
            let custom = t
                .get("type")
                .and_then(Value::as_str)
                .is_none_or(|k| k == "custom");
            match (custom, t.get("name").and_then(Value::as_str)) {
                (true, Some(name)) => {
                    let mut function = json!({
                        "name": name,
                        "parameters": t.get("input_schema").cloned().unwrap_or_else(|| json!({"type": "object"})),
                    });
                    if let Some(d) = t.get("description").filter(|d| !d.is_null()) {
                        function["description"] = d.clone();
                    }
                    out.push(json!({"type": "function", "function": function}));
                }
                _ => dropped_tools.push(
                    t.get("name")
                        .or_else(|| t.get("type"))
                        .and_then(Value::as_str)
                        .unwrap_or("?")
                        .to_string(),
                ),
            }
        }
        if !out.is_empty() {
            chat.insert("tools".into(), Value::Array(out));
        }
    }
    let has_tools = chat.contains_key("tools");
    if let Some(choice) = body
        .get("tool_choice")
        .filter(|v| !v.is_null())
        .filter(|_| has_tools)
    {
        let kind = choice.get("type").and_then(Value::as_str);
        let mapped = match kind {
            Some("auto") => json!("auto"),
            Some("any") => json!("required"),
            Some("none") => json!("none"),
            Some("tool") => {
                json!({"type": "function", "function": {"name": choice.get("name").cloned().unwrap_or(Value::Null)}})
            }
            _ => return Err(bad("`tool_choice.type` must be auto, any, tool or none")),
        };
        chat.insert("tool_choice".into(), mapped);
        if choice
            .get("disable_parallel_tool_use")
            .and_then(Value::as_bool)
            == Some(true)
        {
            chat.insert("parallel_tool_calls".into(), Value::Bool(false));
        }
    }
    let effort = body
        .get("output_config")
        .and_then(|c| c.get("effort"))
        .and_then(Value::as_str)
        .and_then(|e| Effort::parse(if e == "max" { "high" } else { e }));
    if let Some(effort) = effort {
        chat.insert("reasoning_effort".into(), effort.as_str().into());
    } else if let Some(thinking) = body.get("thinking") {
        if thinking.get("type").and_then(Value::as_str) == Some("enabled") {
            let budget = thinking
                .get("budget_tokens")
                .and_then(Value::as_u64)
                .unwrap_or(0);
            chat.insert(
                "reasoning_effort".into(),
                Effort::of_thinking_budget(budget).as_str().into(),
            );
        }
    }
    if let Some(user) = body
        .get("metadata")
        .and_then(|m| m.get("user_id"))
        .and_then(Value::as_str)
    {
        chat.insert("user".into(), user.into());
    }
    Ok(Incoming {
        chat,
        native: None,
        untranslatable,
        dropped_tools,
    })
}

/// The chat messages of one Messages message's content blocks: text and images in one message,
/// tool calls on the assistant's, each tool result a `tool` message of its own.
fn read_blocks(
    role: &str,
    blocks: &[Value],
    at: usize,
    out: &mut Vec<Value>,
    untranslatable: &mut Vec<String>,
) -> Result<(), WireError> {
    let mut parts = Vec::new();
    let mut calls = Vec::new();
    for (j, b) in blocks.iter().enumerate() {
        let kind = b.get("type").and_then(Value::as_str).unwrap_or_default();
        match kind {
            "text" => parts.push(json!({"type": "text", "text": b.get("text").and_then(Value::as_str).unwrap_or_default()})),
            "image" => parts.push(image_to_chat(b.get("source"))
                .ok_or_else(|| bad(format!("messages[{at}].content[{j}]: an image needs a `source` of type base64 (media_type, data) or url")))?),
            "tool_use" => calls.push(tool_call(b)),
            "tool_result" => {
                let images = b
                    .get("content")
                    .and_then(Value::as_array)
                    .is_some_and(|c| c.iter().any(|p| p["type"] != "text"));
                if images {
                    untranslatable.push("a tool result with an image".to_string());
                }
                let text = match b.get("content") {
                    Some(Value::String(s)) => s.clone(),
                    other => content_text(other),
                };
                let text = if b.get("is_error").and_then(Value::as_bool) == Some(true) {
                    format!("Error: {text}")
                } else {
                    text
                };
                out.push(json!({"role": "tool", "tool_call_id": b.get("tool_use_id").cloned().unwrap_or(Value::Null), "content": text}));
            }
            // earlier reasoning is the provider's own; another model does without it
            "thinking" | "redacted_thinking" => {}
            other => untranslatable.push(format!("a `{other}` content block")),
        }
    }
    if !parts.is_empty() || !calls.is_empty() {
        let mut m = Map::new();
        m.insert("role".into(), role.into());
        let only_text = parts.iter().all(|p| p["type"] == "text");
        let content = if parts.is_empty() {
            Value::Null
        } else if only_text {
            Value::String(content_text(Some(&Value::Array(parts))))
        } else {
            Value::Array(parts)
        };
        m.insert("content".into(), content);
        if !calls.is_empty() {
            m.insert("tool_calls".into(), Value::Array(calls));
        }
        out.push(Value::Object(m));
    }
    Ok(())
}

fn image_to_chat(source: Option<&Value>) -> Option<Value> {
    let s = source?;
    let url = match s.get("type").and_then(Value::as_str)? {
        "base64" => format!(
            "data:{};base64,{}",
            s.get("media_type")?.as_str()?,
            s.get("data")?.as_str()?
        ),
        "url" => s.get("url")?.as_str()?.to_string(),
        _ => return None,
    };
    Some(json!({"type": "image_url", "image_url": {"url": url}}))
}

fn image_from_chat(part: &Value) -> Option<Value> {
    let url = part
        .pointer("/image_url/url")
        .or_else(|| part.get("image_url"))?
        .as_str()?;
    Some(match url.strip_prefix("data:") {
        Some(rest) => {
            let (media_type, data) = rest.split_once(";base64,")?;
            json!({"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}})
        }
        None => json!({"type": "image", "source": {"type": "url", "url": url}}),
    })
}

/// A chat tool call of a `tool_use` block (its input as a JSON string).
fn tool_call(block: &Value) -> Value {
    json!({
        "id": block.get("id").cloned().unwrap_or(Value::Null),
        "type": "function",
        "function": {
            "name": block.get("name").cloned().unwrap_or(Value::Null),
            "arguments": block.get("input").map_or_else(|| "{}".to_string(), Value::to_string),
        },
    })
}

/// The `tool_use` block of a chat tool call (arguments that are not JSON become `{}`).
fn tool_use(call: &Value) -> Value {
    let arguments = call
        .pointer("/function/arguments")
        .and_then(Value::as_str)
        .unwrap_or("{}");
    json!({
        "type": "tool_use",
        "id": call.get("id").cloned().unwrap_or_else(|| new_id("toolu_").into()),
        "name": call.pointer("/function/name").cloned().unwrap_or(Value::Null),
        "input": serde_json::from_str::<Value>(arguments).unwrap_or_else(|_| json!({})),
    })
}

/// Writes a chat-completions body as a Messages request (without `model`).
pub fn request_from_chat(chat: &Map<String, Value>) -> Result<Map<String, Value>, WireError> {
    let mut body = Map::new();
    let mut system = Vec::new();
    let mut messages: Vec<Value> = Vec::new();
    let list = chat
        .get("messages")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("`messages` must be a list"))?;
    for m in list {
        let role = m.get("role").and_then(Value::as_str).unwrap_or_default();
        let (role, blocks) = match role {
            "system" | "developer" => {
                system.push(content_text(m.get("content")));
                continue;
            }
            "tool" => (
                "user",
                vec![json!({
                    "type": "tool_result",
                    "tool_use_id": m.get("tool_call_id").cloned().unwrap_or(Value::Null),
                    "content": content_text(m.get("content")),
                })],
            ),
            "assistant" | "user" => {
                let mut blocks = Vec::new();
                match m.get("content") {
                    Some(Value::String(s)) if !s.is_empty() => {
                        blocks.push(json!({"type": "text", "text": s}));
                    }
                    Some(Value::Array(parts)) => {
                        for p in parts {
                            match p.get("type").and_then(Value::as_str) {
                                Some("text") => blocks.push(
                                    json!({"type": "text", "text": p.get("text").cloned().unwrap_or_default()}),
                                ),
                                Some("image_url") => blocks.push(image_from_chat(p).ok_or_else(|| {
                                    bad("an `image_url` part must hold a URL or a base64 data URL")
                                })?),
                                Some(other) => {
                                    return Err(bad(format!(
                                        "a `{other}` content part cannot be sent to an Anthropic Messages provider"
                                    )));
                                }
                                None => {}
                            }
                        }
                    }
                    _ => {}
                }
                for call in m
                    .get("tool_calls")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    blocks.push(tool_use(call));
                }
                (role, blocks)
            }
            other => {
                return Err(bad(format!(
                    "a message with role `{other}` cannot be sent to an Anthropic Messages provider"
                )));
            }
        };
        if blocks.is_empty() {
            continue;
        }
        // the Messages API alternates roles: consecutive messages of one role become one
        match messages.last_mut() {
            Some(last) if last["role"] == role => {
                if let Some(Value::Array(content)) = last.get_mut("content") {
                    content.extend(blocks);
                }
            }
            _ => messages.push(json!({"role": role, "content": blocks})),
        }
    }
    if !system.is_empty() {
        body.insert("system".into(), system.join("\n\n").into());
    }
    body.insert("messages".into(), Value::Array(messages));
    let max_tokens = chat
        .get("max_completion_tokens")
        .or_else(|| chat.get("max_tokens"))
        .and_then(Value::as_u64)
        .unwrap_or(DEFAULT_MAX_TOKENS);
    body.insert("max_tokens".into(), max_tokens.into());
    for (from, to) in [
        ("temperature", "temperature"),
        ("top_p", "top_p"),
        ("stream", "stream"),
    ] {
        if let Some(v) = chat.get(from).filter(|v| !v.is_null()) {
            body.insert(to.into(), v.clone());
        }
    }
    match chat.get("stop") {
        Some(Value::String(s)) => {
            body.insert("stop_sequences".into(), json!([s]));
        }
        Some(Value::Array(a)) => {
            body.insert("stop_sequences".into(), Value::Array(a.clone()));
        }
        _ => {}
    }
    if let Some(Value::Array(tools)) = chat.get("tools") {
        let tools: Vec<Value> = tools
            .iter()
            .filter_map(|t| {
                let f = t.get("function")?;
                Some(json!({
                    "name": f.get("name")?,
                    "description": f.get("description").filter(|d| !d.is_null()).cloned().unwrap_or_else(|| "".into()),
                    "input_schema": f.get("parameters").cloned().unwrap_or_else(|| json!({"type": "object"})),
                }))
            })
            .collect();
        body.insert("tools".into(), Value::Array(tools));
    }
    let parallel_off = chat.get("parallel_tool_calls").and_then(Value::as_bool) == Some(false);
    let choice = match chat.get("tool_choice") {
        Some(Value::String(s)) if s == "auto" => Some(json!({"type": "auto"})),
        Some(Value::String(s)) if s == "required" => Some(json!({"type": "any"})),
        Some(Value::String(s)) if s == "none" => Some(json!({"type": "none"})),
        Some(Value::Object(o)) => o
            .get("function")
            .and_then(|f| f.get("name"))
            .map(|n| json!({"type": "tool", "name": n})),
        _ => parallel_off.then(|| json!({"type": "auto"})),
    };
    if let Some(mut c) = choice {
        if parallel_off && c["type"] != "none" {
            c["disable_parallel_tool_use"] = Value::Bool(true);
        }
        body.insert("tool_choice".into(), c);
    }
    if let Some(user) = chat.get("user").and_then(Value::as_str) {
        body.insert("metadata".into(), json!({"user_id": user}));
    }
    if let Some(effort) = chat
        .get("reasoning_effort")
        .and_then(Value::as_str)
        .and_then(Effort::parse)
    {
        set_thinking(&mut body, effort);
    }
    Ok(body)
}

/// Whether extended thinking can be turned on for this request: not with a forced tool
/// choice, nor in the middle of a tool loop whose last assistant turn began without a thinking
/// block (the API refuses both).
fn thinking_fits(body: &Map<String, Value>) -> bool {
    let forced = body
        .get("tool_choice")
        .and_then(|c| c.get("type"))
        .and_then(Value::as_str)
        .is_some_and(|t| t == "any" || t == "tool");
    let last_assistant = body
        .get("messages")
        .and_then(Value::as_array)
        .and_then(|m| m.iter().rev().find(|m| m["role"] == "assistant"));
    let unthought_tool_turn = last_assistant
        .and_then(|m| m["content"].as_array())
        .is_some_and(|blocks| {
            blocks.iter().any(|b| b["type"] == "tool_use")
                && !blocks
                    .first()
                    .is_some_and(|b| b["type"] == "thinking" || b["type"] == "redacted_thinking")
        });
    !forced && !unthought_tool_turn
}

/// Turns on extended thinking for `effort` unless the request sets `thinking` itself; the
/// budget stays below `max_tokens`, as the API requires (no thinking if it cannot).
pub fn set_thinking(body: &mut Map<String, Value>, effort: Effort) {
    if body.contains_key("thinking") || !thinking_fits(body) {
        return;
    }
    let Some(budget) = effort.thinking_budget() else {
        return;
    };
    let max = body
        .get("max_tokens")
        .and_then(Value::as_u64)
        .unwrap_or(DEFAULT_MAX_TOKENS);
    let budget = budget.min(max.saturating_sub(1));
    // the API's smallest budget
    if budget >= 1_024 {
        body.insert(
            "thinking".into(),
            json!({"type": "enabled", "budget_tokens": budget}),
        );
        // thinking takes the default temperature only
        body.remove("temperature");
        body.remove("top_p");
    }
}

fn usage_to_chat(u: &Value) -> (u64, u64) {
    let input = [
        "input_tokens",
        "cache_creation_input_tokens",
        "cache_read_input_tokens",
    ]
    .iter()
    .filter_map(|k| u.get(*k).and_then(Value::as_u64))
    .sum();
    (
        input,
        u.get("output_tokens").and_then(Value::as_u64).unwrap_or(0),
    )
}

/// A whole Messages answer read as a chat completion.
pub fn answer_to_chat(answer: &Value) -> Result<Value, WireError> {
    let blocks = answer
        .get("content")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("the Anthropic answer has no `content` list"))?;
    let mut text = String::new();
    let mut calls = Vec::new();
    for b in blocks {
        match b.get("type").and_then(Value::as_str) {
            Some("text") => text.push_str(b.get("text").and_then(Value::as_str).unwrap_or("")),
            Some("tool_use") => calls.push(tool_call(b)),
            _ => {}
        }
    }
    let mut message = json!({"role": "assistant", "content": text});
    if !calls.is_empty() {
        message["tool_calls"] = Value::Array(calls);
    }
    let (prompt, completion) = answer.get("usage").map_or((0, 0), usage_to_chat);
    Ok(json!({
        "id": answer.get("id").cloned().unwrap_or_else(|| new_id("chatcmpl-").into()),
        "object": "chat.completion",
        "created": super::now_s(),
        "model": answer.get("model").cloned().unwrap_or(Value::Null),
        "choices": [{"index": 0, "message": message,
            "finish_reason": stop_to_chat(answer.get("stop_reason").and_then(Value::as_str))}],
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion},
    }))
}

/// A chat completion written as a whole Messages answer.
pub fn answer_from_chat(completion: &Value, model: &str) -> Value {
    let message = super::chat::message(completion);
    let mut content = Vec::new();
    let text = content_text(message.and_then(|m| m.get("content")));
    if !text.is_empty() {
        content.push(json!({"type": "text", "text": text}));
    }
    for call in message
        .and_then(|m| m.get("tool_calls"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        content.push(tool_use(call));
    }
    let (prompt, out) = super::chat_usage(completion).unwrap_or((0, 0));
    json!({
        "id": new_id("msg_"),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_from_chat(super::chat::finish_reason(completion)),
        "stop_sequence": null,
        "usage": {"input_tokens": prompt, "output_tokens": out},
    })
}

/// Tokens in a Messages request as pointsman estimates them (four bytes a token over its text,
/// tool definitions included), for `count_tokens` when no Anthropic provider can count them.
pub fn estimate_tokens(body: &Map<String, Value>) -> u64 {
    fn bytes(v: &Value) -> usize {
        match v {
            Value::String(s) => s.len(),
            Value::Array(a) => a.iter().map(bytes).sum(),
            Value::Object(o) => o
                .iter()
                .filter(|(k, _)| !matches!(k.as_str(), "type" | "cache_control" | "data"))
                .map(|(_, v)| bytes(v))
                .sum(),
            _ => 0,
        }
    }
    let text: usize = ["system", "messages", "tools"]
        .iter()
        .filter_map(|k| body.get(*k))
        .map(bytes)
        .sum();
    (text as u64).div_ceil(4)
}
