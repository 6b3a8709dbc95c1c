//! OpenAI Responses (`POST /v1/responses`), read into the hub and written from it. pointsman
//! keeps no responses: a request carries its whole conversation in `input`.

use serde_json::{Map, Value, json};

use super::{Incoming, WireError, bad, content_text, new_id, now_s};

mod stream;

pub use stream::{StreamDecoder, StreamEncoder};

/// Reads a Responses request into a chat-completions body.
pub fn request_to_chat(body: &Map<String, Value>) -> Result<Incoming, WireError> {
    for stateful in ["previous_response_id", "conversation"] {
        if body.get(stateful).is_some_and(|v| !v.is_null()) {
            return Err(bad(format!(
                "`{stateful}`: pointsman keeps no conversations; send the whole conversation in `input` (with `store: false`)"
            )));
        }
    }
    let mut untranslatable = Vec::new();
    let mut dropped_tools = Vec::new();
    let mut chat = Map::new();
    if let Some(m) = body.get("model") {
        chat.insert("model".into(), m.clone());
    }
    let mut messages = Vec::new();
    if let Some(instructions) = body.get("instructions").and_then(Value::as_str) {
        messages.push(json!({"role": "system", "content": instructions}));
    }
    match body.get("input") {
        Some(Value::String(s)) => messages.push(json!({"role": "user", "content": s})),
        Some(Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                read_item(item, i, &mut messages, &mut untranslatable)?;
            }
        }
        _ => {
            return Err(bad(
                "`input` must be a string or a list of input items (messages, function calls, function call outputs)",
            ));
        }
    }
    chat.insert("messages".into(), Value::Array(messages));
    for (from, to) in [
        ("max_output_tokens", "max_completion_tokens"),
        ("temperature", "temperature"),
        ("top_p", "top_p"),
        ("stream", "stream"),
        ("parallel_tool_calls", "parallel_tool_calls"),
        ("user", "user"),
        ("prompt_cache_key", "prompt_cache_key"),
    ] {
        if let Some(v) = body.get(from).filter(|v| !v.is_null()) {
            chat.insert(to.into(), v.clone());
        }
    }
    if let Some(effort) = body
        .get("reasoning")
        .and_then(|r| r.get("effort"))
        .filter(|v| !v.is_null())
    {
        chat.insert("reasoning_effort".into(), effort.clone());
    }
    if let Some(format) = body.get("text").and_then(|t| t.get("format")) {
        match format.get("type").and_then(Value::as_str) {
            Some("json_schema") => {
                let mut schema = format.as_object().cloned().unwrap_or_default();
                schema.remove("type");
                chat.insert(
                    "response_format".into(),
                    json!({"type": "json_schema", "json_schema": schema}),
                );
            }
            Some("json_object") => {
                chat.insert("response_format".into(), json!({"type": "json_object"}));
            }
            _ => {}
        }
    }
    if let Some(Value::Array(tools)) = body.get("tools") {
        let mut out = Vec::new();
        for t in tools {
            match t.get("type").and_then(Value::as_str) {
                Some("function") => {
                    let mut function = json!({
                        "name": t.get("name").cloned().unwrap_or(Value::Null),
                        "parameters": t.get("parameters").cloned().unwrap_or_else(|| json!({"type": "object"})),
                    });
                    for key in ["description", "strict"] {
                        if let Some(v) = t.get(key).filter(|v| !v.is_null()) {
                            function[key] = v.clone();
                        }
                    }
                    out.push(json!({"type": "function", "function": function}));
                }
                other => dropped_tools.push(
                    t.get("name")
                        .and_then(Value::as_str)
                        .or(other)
                        .unwrap_or("?")
                        .to_string(),
                ),
            }
        }
        if !out.is_empty() {
            chat.insert("tools".into(), Value::Array(out));
        }
    }
    match body
        .get("tool_choice")
        .filter(|_| chat.contains_key("tools"))
    {
        Some(Value::String(s)) => {
            chat.insert("tool_choice".into(), s.clone().into());
        }
        Some(Value::Object(o)) if o.get("type").and_then(Value::as_str) == Some("function") => {
            chat.insert(
                "tool_choice".into(),
                json!({"type": "function", "function": {"name": o.get("name").cloned().unwrap_or(Value::Null)}}),
            );
        }
        _ => {}
    }
    Ok(Incoming {
        chat,
        native: None,
        untranslatable,
        dropped_tools,
    })
}

fn read_item(
    item: &Value,
    at: usize,
    out: &mut Vec<Value>,
    untranslatable: &mut Vec<String>,
) -> Result<(), WireError> {
    let kind = item
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("message");
    match kind {
        "message" => {
            let role = match item.get("role").and_then(Value::as_str) {
                Some(r @ ("user" | "assistant" | "system")) => r,
                Some("developer") => "system",
                other => {
                    return Err(bad(format!(
                        "input[{at}].role: `{}` is not user, assistant, system or developer",
                        other.unwrap_or("")
                    )));
                }
            };
            let content = match item.get("content") {
                Some(Value::String(s)) => Value::String(s.clone()),
                Some(Value::Array(parts)) => {
                    let mut out_parts = Vec::new();
                    for (j, p) in parts.iter().enumerate() {
                        match p.get("type").and_then(Value::as_str) {
                            Some("input_text" | "output_text" | "text") => out_parts.push(
                                json!({"type": "text", "text": p.get("text").cloned().unwrap_or_default()}),
                            ),
                            Some("input_image") => {
                                let url = p.get("image_url").and_then(Value::as_str).ok_or_else(|| {
                                    bad(format!("input[{at}].content[{j}]: an `input_image` needs an `image_url` (a URL or a data URL)"))
                                })?;
                                out_parts.push(json!({"type": "image_url", "image_url": {"url": url}}));
                            }
                            Some("refusal") => {}
                            other => untranslatable.push(format!(
                                "an `{}` content part",
                                other.unwrap_or("?")
                            )),
                        }
                    }
                    if out_parts.iter().all(|p| p["type"] == "text") {
                        Value::String(content_text(Some(&Value::Array(out_parts))))
                    } else {
                        Value::Array(out_parts)
                    }
                }
                _ => {
                    return Err(bad(format!(
                        "input[{at}].content must be a string or a list of content parts"
                    )));
                }
            };
            out.push(json!({"role": role, "content": content}));
        }
        "function_call" => {
            let call = json!({
                "id": item.get("call_id").cloned().unwrap_or(Value::Null),
                "type": "function",
                "function": {
                    "name": item.get("name").cloned().unwrap_or(Value::Null),
                    "arguments": item.get("arguments").cloned().unwrap_or_else(|| "{}".into()),
                },
            });
            // calls made together belong to one assistant message
            match out.last_mut() {
                Some(last) if last["role"] == "assistant" => {
                    if let Some(Value::Array(calls)) = last.get_mut("tool_calls") {
                        calls.push(call);
                    } else {
                        last["tool_calls"] = json!([call]);
                    }
                }
                _ => out.push(json!({"role": "assistant", "content": null, "tool_calls": [call]})),
            }
        }
        "function_call_output" => {
            let output = match item.get("output") {
                Some(Value::String(s)) => s.clone(),
                other => content_text(other),
            };
            out.push(json!({"role": "tool", "tool_call_id": item.get("call_id").cloned().unwrap_or(Value::Null), "content": output}));
        }
        // the provider's own reasoning: another model does without it
        "reasoning" => {}
        other => untranslatable.push(format!("an input item of type `{other}`")),
    }
    Ok(())
}

/// Writes a chat-completions body as a Responses request (without `model`).
pub fn request_from_chat(chat: &Map<String, Value>) -> Result<Map<String, Value>, WireError> {
    let mut body = Map::new();
    let mut input = Vec::new();
    let mut instructions = Vec::new();
    let list = chat
        .get("messages")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("`messages` must be a list"))?;
    for m in list {
        let role = m.get("role").and_then(Value::as_str).unwrap_or_default();
        match role {
            "system" | "developer" => instructions.push(content_text(m.get("content"))),
            "tool" => input.push(json!({
                "type": "function_call_output",
                "call_id": m.get("tool_call_id").cloned().unwrap_or(Value::Null),
                "output": content_text(m.get("content")),
            })),
            "user" | "assistant" => {
                let text_kind = if role == "user" {
                    "input_text"
                } else {
                    "output_text"
                };
                let content = match m.get("content") {
                    Some(Value::String(s)) if !s.is_empty() => {
                        Some(json!([{"type": text_kind, "text": s}]))
                    }
                    Some(Value::Array(parts)) => Some(Value::Array(
                        parts
                            .iter()
                            .filter_map(|p| match p.get("type").and_then(Value::as_str) {
                                Some("text") => Some(json!({"type": text_kind, "text": p.get("text").cloned().unwrap_or_default()})),
                                Some("image_url") => Some(json!({"type": "input_image",
                                    "image_url": p.pointer("/image_url/url").cloned().unwrap_or(Value::Null)})),
                                _ => None,
                            })
                            .collect(),
                    )),
                    _ => None,
                };
                if let Some(content) = content {
                    input.push(json!({"type": "message", "role": role, "content": content}));
                }
                for call in m
                    .get("tool_calls")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    input.push(json!({
                        "type": "function_call",
                        "call_id": call.get("id").cloned().unwrap_or(Value::Null),
                        "name": call.pointer("/function/name").cloned().unwrap_or(Value::Null),
                        "arguments": call.pointer("/function/arguments").cloned().unwrap_or_else(|| "{}".into()),
                    }));
                }
            }
            other => {
                return Err(bad(format!(
                    "a message with role `{other}` cannot be sent to an OpenAI Responses provider"
                )));
            }
        }
    }
    if !instructions.is_empty() {
        body.insert("instructions".into(), instructions.join("\n\n").into());
    }
    body.insert("input".into(), Value::Array(input));
    // pointsman sends the whole conversation each time: nothing to keep upstream
    body.insert("store".into(), Value::Bool(false));
    if let Some(max) = chat
        .get("max_completion_tokens")
        .or_else(|| chat.get("max_tokens"))
        .filter(|v| !v.is_null())
    {
        body.insert("max_output_tokens".into(), max.clone());
    }
    for key in [
        "temperature",
        "top_p",
        "stream",
        "parallel_tool_calls",
        "user",
        "prompt_cache_key",
    ] {
        if let Some(v) = chat.get(key).filter(|v| !v.is_null()) {
            body.insert(key.into(), v.clone());
        }
    }
    if let Some(effort) = chat.get("reasoning_effort").filter(|v| !v.is_null()) {
        body.insert("reasoning".into(), json!({"effort": effort}));
    }
    match chat
        .get("response_format")
        .and_then(|f| f.get("type"))
        .and_then(Value::as_str)
    {
        Some("json_schema") => {
            let mut format = chat
                .get("response_format")
                .and_then(|f| f.get("json_schema"))
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default();
            format.insert("type".into(), "json_schema".into());
            body.insert("text".into(), json!({"format": format}));
        }
        Some("json_object") => {
            body.insert("text".into(), json!({"format": {"type": "json_object"}}));
        }
        _ => {}
    }
    if let Some(Value::Array(tools)) = chat.get("tools") {
        let tools: Vec<Value> = tools
            .iter()
            .filter_map(|t| {
                let f = t.get("function")?;
                let mut tool = json!({
                    "type": "function",
                    "name": f.get("name")?,
                    "parameters": f.get("parameters").cloned().unwrap_or_else(|| json!({"type": "object"})),
                });
                for key in ["description", "strict"] {
                    if let Some(v) = f.get(key).filter(|v| !v.is_null()) {
                        tool[key] = v.clone();
                    }
                }
                Some(tool)
            })
            .collect();
        body.insert("tools".into(), Value::Array(tools));
    }
    match chat.get("tool_choice") {
        Some(Value::String(s)) => {
            body.insert("tool_choice".into(), s.clone().into());
        }
        Some(Value::Object(o)) => {
            if let Some(name) = o.get("function").and_then(|f| f.get("name")) {
                body.insert(
                    "tool_choice".into(),
                    json!({"type": "function", "name": name}),
                );
            }
        }
        _ => {}
    }
    Ok(body)
}

fn usage_to_chat(u: &Value) -> (u64, u64) {
    (
        u.get("input_tokens").and_then(Value::as_u64).unwrap_or(0),
        u.get("output_tokens").and_then(Value::as_u64).unwrap_or(0),
    )
}

/// The finish reason of a Responses answer, by its status and what it holds.
fn finish_of(response: &Value, tool_calls: bool) -> &'static str {
    if response["status"] == "incomplete" {
        return match response
            .pointer("/incomplete_details/reason")
            .and_then(Value::as_str)
        {
            Some("content_filter") => "content_filter",
            _ => "length",
        };
    }
    if tool_calls { "tool_calls" } else { "stop" }
}

/// A whole Responses answer read as a chat completion.
pub fn answer_to_chat(answer: &Value) -> Result<Value, WireError> {
    let items = answer
        .get("output")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("the Responses answer has no `output` list"))?;
    let mut text = String::new();
    let mut calls = Vec::new();
    for item in items {
        match item.get("type").and_then(Value::as_str) {
            Some("message") => {
                for part in item
                    .get("content")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    if part["type"] == "output_text" {
                        text.push_str(part["text"].as_str().unwrap_or_default());
                    }
                }
            }
            Some("function_call") => calls.push(json!({
                "id": item.get("call_id").cloned().unwrap_or(Value::Null),
                "type": "function",
                "function": {"name": item["name"], "arguments": item.get("arguments").cloned().unwrap_or_else(|| "{}".into())},
            })),
            _ => {}
        }
    }
    let finish = finish_of(answer, !calls.is_empty());
    let mut message = json!({"role": "assistant", "content": text});
    if !calls.is_empty() {
        message["tool_calls"] = Value::Array(calls);
    }
    let (prompt, completion) = answer.get("usage").map_or((0, 0), usage_to_chat);
    Ok(json!({
        "id": answer.get("id").cloned().unwrap_or(Value::Null),
        "object": "chat.completion",
        "created": now_s(),
        "model": answer.get("model").cloned().unwrap_or(Value::Null),
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion},
    }))
}

fn message_item(id: &str, text: &str, status: &str) -> Value {
    json!({"type": "message", "id": id, "status": status, "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]})
}

fn call_item(id: &str, call_id: &Value, name: &Value, arguments: &str, status: &str) -> Value {
    json!({"type": "function_call", "id": id, "call_id": call_id, "name": name,
        "arguments": arguments, "status": status})
}

/// A Responses object: `output` items, `usage` (prompt, completion), status.
fn response(
    id: &str,
    model: &str,
    output: Vec<Value>,
    usage: Option<(u64, u64)>,
    status: &str,
    finish: &str,
) -> Value {
    let usage = usage.map(|(p, c)| {
        json!({
            "input_tokens": p, "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": c, "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": p + c,
        })
    });
    let incomplete = (status == "incomplete").then(|| {
        json!({"reason": if finish == "content_filter" { "content_filter" } else { "max_output_tokens" }})
    });
    json!({
        "id": id, "object": "response", "created_at": now_s(), "status": status,
        "model": model, "output": output, "usage": usage,
        "error": null, "incomplete_details": incomplete,
        "instructions": null, "metadata": {}, "parallel_tool_calls": true,
        "temperature": null, "top_p": null, "tool_choice": "auto", "tools": [],
        "text": {"format": {"type": "text"}}, "reasoning": {"effort": null, "summary": null},
        "store": false, "truncation": "disabled",
    })
}

/// A chat completion written as a whole Responses answer.
pub fn answer_from_chat(completion: &Value, model: &str) -> Value {
    let message = super::chat::message(completion);
    let mut output = Vec::new();
    let text = content_text(message.and_then(|m| m.get("content")));
    if !text.is_empty() {
        output.push(message_item(&new_id("msg_"), &text, "completed"));
    }
    for call in message
        .and_then(|m| m.get("tool_calls"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        output.push(call_item(
            &new_id("fc_"),
            &call["id"],
            &call["function"]["name"],
            call.pointer("/function/arguments")
                .and_then(Value::as_str)
                .unwrap_or("{}"),
            "completed",
        ));
    }
    let finish = super::chat::finish_reason(completion).unwrap_or("stop");
    let status = if matches!(finish, "length" | "content_filter") {
        "incomplete"
    } else {
        "completed"
    };
    response(
        &new_id("resp_"),
        model,
        output,
        super::chat_usage(completion),
        status,
        finish,
    )
}
