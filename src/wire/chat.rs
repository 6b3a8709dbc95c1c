//! OpenAI chat completions, the hub: its stream is already made of chat chunks.

use serde_json::{Value, json};

use super::{Decoded, Decoder, Encoder, Event, WireError, sse};

/// Reads a chat-completions stream: each `data:` payload is a chunk, `[DONE]` ends it, and an
/// `{"error": ...}` payload is the upstream failing mid-stream.
pub struct ChunkDecoder {
    /// Parse every chunk; otherwise only those that may carry usage or an error.
    pub every_chunk: bool,
}

impl Decoder for ChunkDecoder {
    fn decode(&mut self, event: &Event) -> Result<Decoded, WireError> {
        let data = event.data.trim();
        if data == "[DONE]" {
            return Ok(Decoded {
                chunks: Vec::new(),
                done: true,
            });
        }
        if !self.every_chunk && !data.contains("\"usage\"") && !data.contains("\"error\"") {
            return Ok(Decoded::default());
        }
        let Some(v) = event.json() else {
            return Ok(Decoded::default());
        };
        if v.get("error").is_some() && v.get("choices").is_none() {
            let message = super::error_message(&v).unwrap_or("the upstream reported an error");
            return Err(WireError(message.to_string()));
        }
        Ok(Decoded {
            chunks: vec![v],
            done: false,
        })
    }
}

/// Writes chat chunks as chat-completions events; a usage-only chunk is dropped unless the
/// client asked for it (`stream_options.include_usage`).
pub struct ChunkEncoder {
    /// Whether the client asked for the usage chunk.
    pub include_usage: bool,
}

impl Encoder for ChunkEncoder {
    fn encode(&mut self, chunk: &Value) -> Vec<u8> {
        let no_choices = chunk
            .get("choices")
            .and_then(Value::as_array)
            .is_none_or(|c| c.is_empty());
        if no_choices && !self.include_usage {
            return Vec::new();
        }
        sse(None, chunk)
    }

    fn finish(&mut self) -> Vec<u8> {
        b"data: [DONE]\n\n".to_vec()
    }

    fn error(&mut self, message: &str) -> Vec<u8> {
        sse(None, &stream_error(message))
    }
}

/// The payload of the event that ends a broken chat stream.
pub fn stream_error(message: &str) -> Value {
    json!({"error": {
        "message": message,
        "type": "upstream_error",
        "param": null,
        "code": "upstream_error",
    }})
}

/// The first choice's message of a chat completion.
pub(crate) fn message(completion: &Value) -> Option<&Value> {
    completion.pointer("/choices/0/message")
}

/// The finish reason of a chat completion.
pub(crate) fn finish_reason(completion: &Value) -> Option<&str> {
    completion
        .pointer("/choices/0/finish_reason")
        .and_then(Value::as_str)
}
