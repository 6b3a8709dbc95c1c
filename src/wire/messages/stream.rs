//! Anthropic Messages streams: events read into chat chunks, and chat chunks written as
//! events, one at a time.

use serde_json::{Value, json};

use super::{stop_from_chat, stop_to_chat, usage_to_chat};
use crate::wire::{
    self, Decoded, Decoder, Encoder, Event, WireError, chunk, new_id, sse, usage_chunk,
};

/// Reads a Messages stream into chat chunks.
#[derive(Default)]
pub struct StreamDecoder {
    id: String,
    model: String,
    input_tokens: u64,
    output_tokens: u64,
    /// The chat tool-call index of each tool_use block, by block index.
    tools: Vec<(u64, usize)>,
}

impl Decoder for StreamDecoder {
    fn decode(&mut self, event: &Event) -> Result<Decoded, WireError> {
        let Some(v) = event.json() else {
            return Ok(Decoded::default());
        };
        let kind = v.get("type").and_then(Value::as_str).unwrap_or_default();
        let mut out = Decoded::default();
        let id = self.id.clone();
        let model = self.model.clone();
        match kind {
            "message_start" => {
                let m = &v["message"];
                self.id = m["id"].as_str().unwrap_or_default().to_string();
                self.model = m["model"].as_str().unwrap_or_default().to_string();
                let (input, output) = usage_to_chat(&m["usage"]);
                self.input_tokens = input;
                self.output_tokens = output;
                out.chunks.push(chunk(
                    &self.id,
                    &self.model,
                    json!({"role": "assistant", "content": ""}),
                    None,
                ));
            }
            "content_block_start" => {
                let block = &v["content_block"];
                if block["type"] == "tool_use" {
                    let index = self.tools.len();
                    self.tools.push((v["index"].as_u64().unwrap_or(0), index));
                    out.chunks.push(chunk(
                        &id,
                        &model,
                        json!({"tool_calls": [{
                            "index": index, "id": block["id"], "type": "function",
                            "function": {"name": block["name"], "arguments": ""},
                        }]}),
                        None,
                    ));
                } else if let Some(t) = block
                    .get("text")
                    .and_then(Value::as_str)
                    .filter(|t| !t.is_empty())
                {
                    out.chunks
                        .push(chunk(&id, &model, json!({"content": t}), None));
                }
            }
            "content_block_delta" => {
                let delta = &v["delta"];
                match delta["type"].as_str() {
                    Some("text_delta") => {
                        out.chunks
                            .push(chunk(&id, &model, json!({"content": delta["text"]}), None))
                    }
                    Some("input_json_delta") => {
                        let block = v["index"].as_u64().unwrap_or(0);
                        if let Some((_, index)) = self.tools.iter().find(|(b, _)| *b == block) {
                            out.chunks.push(chunk(&id, &model, json!({"tool_calls": [{
                                "index": index, "function": {"arguments": delta["partial_json"]},
                            }]}), None));
                        }
                    }
                    _ => {}
                }
            }
            "message_delta" => {
                if let Some(u) = v.get("usage") {
                    if let Some(o) = u.get("output_tokens").and_then(Value::as_u64) {
                        self.output_tokens = o;
                    }
                    let (input, _) = usage_to_chat(u);
                    if input > 0 {
                        self.input_tokens = input;
                    }
                }
                if let Some(reason) = v.pointer("/delta/stop_reason").and_then(Value::as_str) {
                    out.chunks.push(chunk(
                        &id,
                        &model,
                        json!({}),
                        Some(stop_to_chat(Some(reason))),
                    ));
                }
            }
            "message_stop" => {
                out.chunks.push(usage_chunk(
                    &id,
                    &model,
                    self.input_tokens,
                    self.output_tokens,
                ));
                out.done = true;
            }
            "error" => {
                return Err(WireError(
                    wire::error_message(&v)
                        .unwrap_or("the upstream reported an error")
                        .to_string(),
                ));
            }
            _ => {}
        }
        Ok(out)
    }
}

/// Writes chat chunks as a Messages stream. Text is one block; each tool call is a block of
/// its own, open until the text resumes or the answer ends, so that a provider interleaving
/// several calls' arguments (index 0, 1, 0, ...) still reaches the client whole, each delta
/// under its own block's index.
pub struct StreamEncoder {
    model: String,
    id: String,
    started: bool,
    /// The open text block.
    text: Option<u64>,
    /// The open tool_use blocks: the chat tool-call index and the block's index.
    tools: Vec<(u64, u64)>,
    /// The next block's index.
    next: u64,
    stop: &'static str,
    usage: (u64, u64),
}

impl StreamEncoder {
    /// An encoder for a stream the client sees as coming from `model`.
    pub fn new(model: &str) -> Self {
        StreamEncoder {
            model: model.to_string(),
            id: new_id("msg_"),
            started: false,
            text: None,
            tools: Vec::new(),
            next: 0,
            stop: "end_turn",
            usage: (0, 0),
        }
    }

    fn start(&mut self, out: &mut Vec<u8>) {
        if !self.started {
            self.started = true;
            out.extend(sse(
                Some("message_start"),
                &json!({"type": "message_start", "message": {
                    "id": self.id, "type": "message", "role": "assistant", "model": self.model,
                    "content": [], "stop_reason": null, "stop_sequence": null,
                    "usage": {"input_tokens": self.usage.0, "output_tokens": 0},
                }}),
            ));
        }
    }

    /// Starts a block; its index.
    fn open(&mut self, out: &mut Vec<u8>, block: Value) -> u64 {
        let index = self.next;
        self.next += 1;
        out.extend(sse(
            Some("content_block_start"),
            &json!({"type": "content_block_start", "index": index, "content_block": block}),
        ));
        index
    }

    fn delta(out: &mut Vec<u8>, index: u64, delta: Value) {
        out.extend(sse(
            Some("content_block_delta"),
            &json!({"type": "content_block_delta", "index": index, "delta": delta}),
        ));
    }

    fn stop_block(out: &mut Vec<u8>, index: u64) {
        out.extend(sse(
            Some("content_block_stop"),
            &json!({"type": "content_block_stop", "index": index}),
        ));
    }

    fn close_text(&mut self, out: &mut Vec<u8>) {
        if let Some(index) = self.text.take() {
            Self::stop_block(out, index);
        }
    }

    fn close_tools(&mut self, out: &mut Vec<u8>) {
        for (_, index) in std::mem::take(&mut self.tools) {
            Self::stop_block(out, index);
        }
    }
}

impl Encoder for StreamEncoder {
    fn encode(&mut self, chunk: &Value) -> Vec<u8> {
        let mut out = Vec::new();
        if let Some((p, c)) = wire::chat_usage(chunk) {
            self.usage = (p, c);
        }
        self.start(&mut out);
        let Some(choice) = chunk.pointer("/choices/0") else {
            return out;
        };
        let delta = &choice["delta"];
        if let Some(text) = delta
            .get("content")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
        {
            let index = match self.text {
                Some(index) => index,
                None => {
                    self.close_tools(&mut out);
                    let index = self.open(&mut out, json!({"type": "text", "text": ""}));
                    self.text = Some(index);
                    index
                }
            };
            Self::delta(&mut out, index, json!({"type": "text_delta", "text": text}));
        }
        for call in delta
            .get("tool_calls")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let chat_index = call.get("index").and_then(Value::as_u64).unwrap_or(0);
            let known = self
                .tools
                .iter()
                .find(|(c, _)| *c == chat_index)
                .map(|(_, b)| *b);
            let index = match known {
                Some(index) => index,
                None => {
                    self.close_text(&mut out);
                    let block = json!({"type": "tool_use",
                        "id": call.get("id").cloned().unwrap_or_else(|| new_id("toolu_").into()),
                        "name": call.pointer("/function/name").cloned().unwrap_or(Value::Null),
                        "input": {}});
                    let index = self.open(&mut out, block);
                    self.tools.push((chat_index, index));
                    index
                }
            };
            if let Some(args) = call
                .pointer("/function/arguments")
                .and_then(Value::as_str)
                .filter(|a| !a.is_empty())
            {
                Self::delta(
                    &mut out,
                    index,
                    json!({"type": "input_json_delta", "partial_json": args}),
                );
            }
        }
        if let Some(reason) = choice.get("finish_reason").and_then(Value::as_str) {
            self.stop = stop_from_chat(Some(reason));
        }
        out
    }

    fn finish(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        self.start(&mut out);
        self.close_text(&mut out);
        self.close_tools(&mut out);
        out.extend(sse(
            Some("message_delta"),
            &json!({"type": "message_delta",
            "delta": {"stop_reason": self.stop, "stop_sequence": null},
            "usage": {"input_tokens": self.usage.0, "output_tokens": self.usage.1}}),
        ));
        out.extend(sse(Some("message_stop"), &json!({"type": "message_stop"})));
        out
    }

    fn error(&mut self, message: &str) -> Vec<u8> {
        sse(
            Some("error"),
            &json!({"type": "error", "error": {"type": "api_error", "message": message}}),
        )
    }
}
