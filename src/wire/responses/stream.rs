//! OpenAI Responses streams: events read into chat chunks, and chat chunks written as
//! events (with their sequence numbers), one at a time.

use serde_json::{Value, json};

use super::{call_item, finish_of, message_item, response, usage_to_chat};
use crate::wire::{
    self, Decoded, Decoder, Encoder, Event, WireError, chunk, new_id, sse, usage_chunk,
};

/// Reads a Responses stream into chat chunks.
#[derive(Default)]
pub struct StreamDecoder {
    id: String,
    model: String,
    /// The chat tool-call index of each function-call item, by item id.
    calls: Vec<(String, usize)>,
}

impl Decoder for StreamDecoder {
    fn decode(&mut self, event: &Event) -> Result<Decoded, WireError> {
        let Some(v) = event.json() else {
            return Ok(Decoded::default());
        };
        let kind = v.get("type").and_then(Value::as_str).unwrap_or_default();
        let mut out = Decoded::default();
        let (id, model) = (self.id.clone(), self.model.clone());
        match kind {
            "response.created" => {
                self.id = v
                    .pointer("/response/id")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string();
                self.model = v
                    .pointer("/response/model")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string();
                out.chunks.push(chunk(
                    &self.id,
                    &self.model,
                    json!({"role": "assistant", "content": ""}),
                    None,
                ));
            }
            "response.output_item.added"
                if v.pointer("/item/type") == Some(&json!("function_call")) =>
            {
                let item = &v["item"];
                let index = self.calls.len();
                self.calls
                    .push((item["id"].as_str().unwrap_or_default().to_string(), index));
                out.chunks.push(chunk(&id, &model, json!({"tool_calls": [{
                    "index": index, "id": item["call_id"], "type": "function",
                    "function": {"name": item["name"], "arguments": item.get("arguments").cloned().unwrap_or_else(|| "".into())},
                }]}), None));
            }
            "response.output_text.delta" => {
                out.chunks
                    .push(chunk(&id, &model, json!({"content": v["delta"]}), None));
            }
            "response.function_call_arguments.delta" => {
                let item = v["item_id"].as_str().unwrap_or_default();
                if let Some((_, index)) = self.calls.iter().find(|(i, _)| i == item) {
                    out.chunks.push(chunk(
                        &id,
                        &model,
                        json!({"tool_calls": [{
                            "index": index, "function": {"arguments": v["delta"]},
                        }]}),
                        None,
                    ));
                }
            }
            "response.completed" | "response.incomplete" => {
                let r = &v["response"];
                out.chunks.push(chunk(
                    &id,
                    &model,
                    json!({}),
                    Some(finish_of(r, !self.calls.is_empty())),
                ));
                let (p, c) = r.get("usage").map_or((0, 0), usage_to_chat);
                out.chunks.push(usage_chunk(&id, &model, p, c));
                out.done = true;
            }
            "response.failed" => {
                let message = v
                    .pointer("/response/error/message")
                    .and_then(Value::as_str)
                    .unwrap_or("the upstream's response failed");
                return Err(WireError(message.to_string()));
            }
            "error" => {
                let message = v
                    .get("message")
                    .and_then(Value::as_str)
                    .or_else(|| wire::error_message(&v))
                    .unwrap_or("the upstream reported an error");
                return Err(WireError(message.to_string()));
            }
            _ => {}
        }
        Ok(out)
    }
}

enum Item {
    Message {
        id: String,
        text: String,
    },
    Call {
        id: String,
        chat_index: u64,
        call_id: Value,
        name: Value,
        arguments: String,
    },
}

/// Writes chat chunks as a Responses stream. The text is one message item; each tool call is a
/// function-call item of its own, open until the text resumes or the answer ends, so that a
/// provider interleaving several calls' arguments still reaches the client whole, each delta
/// under its own item.
pub struct StreamEncoder {
    id: String,
    model: String,
    sequence: u64,
    started: bool,
    /// Every output item by its index: `None` while it is open.
    output: Vec<Option<Value>>,
    /// The open items, with their output index.
    open: Vec<(usize, Item)>,
    finish: String,
    usage: Option<(u64, u64)>,
}

impl StreamEncoder {
    /// An encoder for a stream the client sees as coming from `model`.
    pub fn new(model: &str) -> Self {
        StreamEncoder {
            id: new_id("resp_"),
            model: model.to_string(),
            sequence: 0,
            started: false,
            output: Vec::new(),
            open: Vec::new(),
            finish: "stop".into(),
            usage: None,
        }
    }

    fn emit(&mut self, out: &mut Vec<u8>, kind: &str, mut data: Value) {
        data["type"] = kind.into();
        data["sequence_number"] = self.sequence.into();
        self.sequence += 1;
        out.extend(sse(Some(kind), &data));
    }

    fn start(&mut self, out: &mut Vec<u8>) {
        if !self.started {
            self.started = true;
            let r = response(
                &self.id,
                &self.model,
                Vec::new(),
                None,
                "in_progress",
                "stop",
            );
            self.emit(out, "response.created", json!({"response": r}));
            self.emit(out, "response.in_progress", json!({"response": r}));
        }
    }

    /// Opens an item: announces it and gives it the next output index.
    fn add(&mut self, out: &mut Vec<u8>, added: Value, item: Item) -> usize {
        let index = self.output.len();
        self.output.push(None);
        self.emit(
            out,
            "response.output_item.added",
            json!({"output_index": index, "item": added}),
        );
        self.open.push((index, item));
        index
    }

    /// Closes the open items that `which` picks, in their order.
    fn close(&mut self, out: &mut Vec<u8>, which: fn(&Item) -> bool) {
        let (closing, open): (Vec<_>, Vec<_>) = std::mem::take(&mut self.open)
            .into_iter()
            .partition(|(_, item)| which(item));
        self.open = open;
        for (index, item) in closing {
            let done = match item {
                Item::Message { id, text } => {
                    self.emit(out, "response.output_text.done", json!({"item_id": id, "output_index": index, "content_index": 0, "text": text, "logprobs": []}));
                    self.emit(out, "response.content_part.done", json!({"item_id": id, "output_index": index, "content_index": 0,
                        "part": {"type": "output_text", "text": text, "annotations": [], "logprobs": []}}));
                    message_item(&id, &text, "completed")
                }
                Item::Call {
                    id,
                    call_id,
                    name,
                    arguments,
                    ..
                } => {
                    self.emit(out, "response.function_call_arguments.done", json!({"item_id": id, "output_index": index, "arguments": arguments, "name": name}));
                    call_item(&id, &call_id, &name, &arguments, "completed")
                }
            };
            self.emit(
                out,
                "response.output_item.done",
                json!({"output_index": index, "item": done}),
            );
            self.output[index] = Some(done);
        }
    }
}

fn is_message(item: &Item) -> bool {
    matches!(item, Item::Message { .. })
}

fn is_call(item: &Item) -> bool {
    matches!(item, Item::Call { .. })
}

impl Encoder for StreamEncoder {
    fn encode(&mut self, chunk: &Value) -> Vec<u8> {
        let mut out = Vec::new();
        if let Some(u) = wire::chat_usage(chunk) {
            self.usage = Some(u);
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
            if !self.open.iter().any(|(_, item)| is_message(item)) {
                self.close(&mut out, is_call);
                let id = new_id("msg_");
                let mut added = message_item(&id, "", "in_progress");
                added["content"] = json!([]);
                let item = Item::Message {
                    id: id.clone(),
                    text: String::new(),
                };
                let index = self.add(&mut out, added, item);
                self.emit(&mut out, "response.content_part.added", json!({"item_id": id, "output_index": index, "content_index": 0,
                    "part": {"type": "output_text", "text": "", "annotations": [], "logprobs": []}}));
            }
            let mut event = None;
            for (index, item) in &mut self.open {
                if let Item::Message { id, text: all } = item {
                    all.push_str(text);
                    event = Some(
                        json!({"item_id": id, "output_index": index, "content_index": 0, "delta": text, "logprobs": []}),
                    );
                }
            }
            if let Some(event) = event {
                self.emit(&mut out, "response.output_text.delta", event);
            }
        }
        for call in delta
            .get("tool_calls")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let chat_index = call.get("index").and_then(Value::as_u64).unwrap_or(0);
            let known = self.open.iter().any(
                |(_, item)| matches!(item, Item::Call { chat_index: c, .. } if *c == chat_index),
            );
            if !known {
                self.close(&mut out, is_message);
                let id = new_id("fc_");
                let call_id = call
                    .get("id")
                    .cloned()
                    .unwrap_or_else(|| new_id("call_").into());
                let name = call
                    .pointer("/function/name")
                    .cloned()
                    .unwrap_or(Value::Null);
                let added = call_item(&id, &call_id, &name, "", "in_progress");
                let item = Item::Call {
                    id,
                    chat_index,
                    call_id,
                    name,
                    arguments: String::new(),
                };
                self.add(&mut out, added, item);
            }
            let Some(args) = call
                .pointer("/function/arguments")
                .and_then(Value::as_str)
                .filter(|a| !a.is_empty())
            else {
                continue;
            };
            let mut event = None;
            for (index, item) in &mut self.open {
                if let Item::Call {
                    id,
                    chat_index: c,
                    arguments,
                    ..
                } = item
                {
                    if *c == chat_index {
                        arguments.push_str(args);
                        event = Some(json!({"item_id": id, "output_index": index, "delta": args}));
                    }
                }
            }
            if let Some(event) = event {
                self.emit(&mut out, "response.function_call_arguments.delta", event);
            }
        }
        if let Some(reason) = choice.get("finish_reason").and_then(Value::as_str) {
            self.finish = reason.to_string();
        }
        out
    }

    fn finish(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        self.start(&mut out);
        self.close(&mut out, |_| true);
        let status = if matches!(self.finish.as_str(), "length" | "content_filter") {
            "incomplete"
        } else {
            "completed"
        };
        let output = self.output.iter().flatten().cloned().collect();
        let r = response(
            &self.id,
            &self.model,
            output,
            self.usage,
            status,
            &self.finish,
        );

        self.emit(
            &mut out,
            &format!("response.{status}"),
            json!({"response": r}),
        );
        out
    }

    fn error(&mut self, message: &str) -> Vec<u8> {
        let mut out = Vec::new();
        self.emit(
            &mut out,
            "error",
            json!({"code": "upstream_error", "message": message, "param": null}),
        );
        out
    }
}
