use super::*;

fn obj(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => unreachable!(),
    }
}

/// A conversation in chat form with everything the hub carries: system prompt, image, tools,
/// a tool call and its result.
fn chat_request() -> Map<String, Value> {
    obj(json!({
        "model": "auto",
        "max_tokens": 300,
        "stream": true,
        "temperature": 0.2,
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [
                {"type": "text", "text": "what is in this picture, and the weather?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0"}},
            ]},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Paris\"}"}},
            ]},
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        ],
        "tools": [{"type": "function", "function": {"name": "weather", "description": "the weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}],
        "tool_choice": "auto",
    }))
}

#[test]
fn a_chat_request_goes_to_each_api_and_back_with_what_it_holds() {
    let chat = chat_request();
    for api in [Api::AnthropicMessages, Api::OpenaiResponses] {
        let native = request_from_chat(api, &chat, "provider-model").unwrap();
        assert_eq!(native["model"], "provider-model");
        let back = request_to_chat(api, native).unwrap();
        assert!(
            back.untranslatable.is_empty(),
            "{api:?}: {:?}",
            back.untranslatable
        );
        let messages = back.chat["messages"].as_array().unwrap();
        assert_eq!(
            messages[0],
            json!({"role": "system", "content": "be brief"}),
            "{api:?}"
        );
        assert_eq!(
            messages[1]["content"][1]["image_url"]["url"], "data:image/png;base64,iVBORw0",
            "{api:?}"
        );
        assert_eq!(messages[2]["tool_calls"][0]["id"], "call_1", "{api:?}");
        let args: Value = serde_json::from_str(
            messages[2]["tool_calls"][0]["function"]["arguments"]
                .as_str()
                .unwrap(),
        )
        .unwrap();
        assert_eq!(args, json!({"city": "Paris"}), "{api:?}");
        assert_eq!(
            messages[3],
            json!({"role": "tool", "tool_call_id": "call_1", "content": "sunny"}),
            "{api:?}"
        );
        assert_eq!(
            back.chat["tools"][0]["function"]["name"], "weather",
            "{api:?}"
        );
        assert_eq!(
            back.chat["tools"][0]["function"]["parameters"]["properties"]["city"]["type"],
            "string"
        );
        assert_eq!(back.chat["stream"], true);
        assert_eq!(back.chat["temperature"], 0.2);
        assert_eq!(back.chat["tool_choice"], "auto");
    }
    let anthropic = request_from_chat(Api::AnthropicMessages, &chat, "claude").unwrap();
    assert_eq!(anthropic["system"], "be brief");
    assert_eq!(anthropic["max_tokens"], 300);
    assert_eq!(anthropic["messages"][1]["content"][0]["type"], "tool_use");
    assert_eq!(
        anthropic["messages"][2]["content"][0]["type"],
        "tool_result"
    );
    assert_eq!(
        anthropic["messages"][0]["content"][1]["source"]["media_type"],
        "image/png"
    );
    let responses = request_from_chat(Api::OpenaiResponses, &chat, "gpt").unwrap();
    assert_eq!(responses["instructions"], "be brief");
    assert_eq!(responses["max_output_tokens"], 300);
    assert_eq!(responses["store"], false);
}

#[test]
fn absent_fields_stay_absent_rather_than_null() {
    let incoming = messages::request_to_chat(&obj(json!({"messages": [{"role": "user", "content": "x"}],
        "tools": [{"name": "f", "input_schema": {"type": "object"}}], "tool_choice": {"type": "any"}})))
    .unwrap();
    let function = incoming.chat["tools"][0]["function"].as_object().unwrap();
    assert!(!function.contains_key("description"));
    let a = messages::request_from_chat(&obj(json!({"messages": [], "tools": [{"type": "function", "function": {"name": "f", "description": null}}]}))).unwrap();
    assert_eq!(a["tools"][0]["description"], "");
    let r = responses::request_to_chat(&obj(
        json!({"input": "x", "metadata": {"a": "b"}, "tools": [{"type": "function", "name": "f"}]}),
    ))
    .unwrap();
    assert!(
        !r.chat["tools"][0]["function"]
            .as_object()
            .unwrap()
            .contains_key("strict")
    );
    assert!(!r.chat.contains_key("metadata"));
    // a forced tool choice whose tools were all left out goes too
    let only_hosted = responses::request_to_chat(&obj(
        json!({"input": "x", "tools": [{"type": "web_search"}], "tool_choice": "required"}),
    ))
    .unwrap();
    assert!(!only_hosted.chat.contains_key("tool_choice"));
}

#[test]
fn anthropic_requests_keep_alternating_roles_and_take_a_default_max_tokens() {
    let chat = obj(json!({"messages": [
        {"role": "user", "content": "a"},
        {"role": "user", "content": "b"},
        {"role": "assistant", "content": "c", "tool_calls": [{"id": "t1", "function": {"name": "f", "arguments": "{}"}}, {"id": "t2", "function": {"name": "g", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "t1", "content": "r1"},
        {"role": "tool", "tool_call_id": "t2", "content": "r2"},
    ], "stop": "END", "parallel_tool_calls": false}));
    let a = messages::request_from_chat(&chat).unwrap();
    let m = a["messages"].as_array().unwrap();
    assert_eq!(m.len(), 3, "{m:?}");
    assert_eq!(m[0]["content"].as_array().unwrap().len(), 2);
    assert_eq!(m[1]["content"].as_array().unwrap().len(), 3);
    assert_eq!(m[2]["content"][1]["tool_use_id"], "t2");
    assert_eq!(a["max_tokens"], messages::DEFAULT_MAX_TOKENS);
    assert_eq!(a["stop_sequences"], json!(["END"]));
    assert_eq!(a["tool_choice"]["disable_parallel_tool_use"], true);
}

#[test]
fn what_the_hub_cannot_carry_is_named_and_bad_input_says_where() {
    let incoming = messages::request_to_chat(&obj(json!({
        "model": "auto", "max_tokens": 10,
        "tools": [{"type": "web_search_20250305", "name": "web_search"}],
        "messages": [{"role": "user", "content": [{"type": "document", "source": {}}, {"type": "text", "text": "hi"}]}],
    })))
    .unwrap();
    assert_eq!(incoming.untranslatable, ["a `document` content block"]);
    assert_eq!(incoming.dropped_tools, ["web_search"]);
    // system messages among the turns (as Claude Code sends them) join the system prompt
    let incoming = messages::request_to_chat(&obj(json!({"system": "be brief", "messages": [
        {"role": "user", "content": "hi"}, {"role": "system", "content": "the agents are: ..."}]})))
    .unwrap();
    assert_eq!(
        incoming.chat["messages"],
        json!([
        {"role": "system", "content": "be brief\n\nthe agents are: ..."}, {"role": "user", "content": "hi"}])
    );
    let hosted = responses::request_to_chat(&obj(json!({"input": "hi", "tools": [
        {"type": "web_search"}, {"type": "namespace", "name": "multi_agent_v1", "tools": []},
        {"type": "function", "name": "exec", "parameters": {}}]})))
    .unwrap();
    assert_eq!(hosted.dropped_tools, ["web_search", "multi_agent_v1"]);
    assert_eq!(hosted.chat["tools"].as_array().unwrap().len(), 1);
    let err = messages::request_to_chat(&obj(
        json!({"messages": [{"role": "tool", "content": "x"}]}),
    ))
    .unwrap_err();
    assert!(err.0.contains("messages[0].role"), "{err}");
    let err = responses::request_to_chat(&obj(
        json!({"input": "hi", "previous_response_id": "resp_1"}),
    ))
    .unwrap_err();
    assert!(err.0.contains("send the whole conversation"), "{err}");
    let err = responses::request_to_chat(&obj(json!({"input": 3}))).unwrap_err();
    assert!(err.0.contains("`input`"), "{err}");
}

#[test]
fn efforts_take_each_apis_form_and_a_clients_own_stands() {
    let mut chat = obj(json!({"messages": []}));
    set_effort(Api::ChatCompletions, &mut chat, Effort::High);
    assert_eq!(chat["reasoning_effort"], "high");
    set_effort(Api::ChatCompletions, &mut chat, Effort::Low);
    assert_eq!(chat["reasoning_effort"], "high");
    let mut r = obj(json!({"input": "x"}));
    set_effort(Api::OpenaiResponses, &mut r, Effort::Medium);
    assert_eq!(r["reasoning"]["effort"], "medium");
    let mut a = obj(json!({"max_tokens": 20000, "temperature": 0.5}));
    set_effort(Api::AnthropicMessages, &mut a, Effort::Medium);
    assert_eq!(
        a["thinking"],
        json!({"type": "enabled", "budget_tokens": 8192})
    );
    assert!(!a.contains_key("temperature"));
    // the budget stays under max_tokens, and no thinking fits under 1,025
    let mut small = obj(json!({"max_tokens": 3000}));
    set_effort(Api::AnthropicMessages, &mut small, Effort::High);
    assert_eq!(small["thinking"]["budget_tokens"], 2999);
    let mut tiny = obj(json!({"max_tokens": 500}));
    set_effort(Api::AnthropicMessages, &mut tiny, Effort::High);
    assert!(!tiny.contains_key("thinking"));
    // not with a forced tool, nor in a tool loop whose last assistant turn did not think
    let mut forced = obj(json!({"max_tokens": 20000, "tool_choice": {"type": "any"}}));
    set_effort(Api::AnthropicMessages, &mut forced, Effort::High);
    assert!(!forced.contains_key("thinking"));
    let mut looping = obj(json!({"max_tokens": 20000, "messages": [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "w", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": "sunny"}]},
    ]}));
    set_effort(Api::AnthropicMessages, &mut looping, Effort::High);
    assert!(!looping.contains_key("thinking"));
    looping["messages"][1]["content"]
        .as_array_mut()
        .unwrap()
        .insert(
            0,
            json!({"type": "thinking", "thinking": "...", "signature": "s"}),
        );
    set_effort(Api::AnthropicMessages, &mut looping, Effort::High);
    assert!(looping.contains_key("thinking"));
    // and a client's thinking reads back as an effort
    let incoming = messages::request_to_chat(&obj(json!({"messages": [{"role": "user", "content": "x"}], "thinking": {"type": "enabled", "budget_tokens": 10000}}))).unwrap();
    assert_eq!(incoming.chat["reasoning_effort"], "medium");
}

fn completion(text: &str, calls: bool, finish: &str) -> Value {
    let mut message = json!({"role": "assistant", "content": text});
    if calls {
        message["tool_calls"] = json!([{"id": "call_9", "type": "function", "function": {"name": "lookup", "arguments": "{\"q\":1}"}}]);
    }
    json!({"id": "x", "object": "chat.completion", "model": "m", "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}})
}

#[test]
fn whole_answers_translate_both_ways_with_stop_reasons_and_usage() {
    for api in [Api::AnthropicMessages, Api::OpenaiResponses] {
        for (calls, finish) in [(false, "stop"), (true, "tool_calls"), (false, "length")] {
            let c = completion("hello", calls, finish);
            let native = answer_from_chat(api, &c, "client-model");
            assert_eq!(native["model"], "client-model");
            let back = answer_to_chat(api, native.clone()).unwrap();
            assert_eq!(back["choices"][0]["message"]["content"], "hello", "{api:?}");
            assert_eq!(
                back["choices"][0]["finish_reason"], finish,
                "{api:?} {native}"
            );
            assert_eq!(chat_usage(&back), Some((11, 7)), "{api:?}");
            if calls {
                assert_eq!(
                    back["choices"][0]["message"]["tool_calls"][0]["id"],
                    "call_9"
                );
                let args: Value = serde_json::from_str(
                    back["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"]
                        .as_str()
                        .unwrap(),
                )
                .unwrap();
                assert_eq!(args, json!({"q": 1}));
            }
        }
    }
    let a = answer_from_chat(
        Api::AnthropicMessages,
        &completion("hi", true, "tool_calls"),
        "m",
    );
    assert_eq!(a["stop_reason"], "tool_use");
    assert_eq!(a["content"][1]["input"], json!({"q": 1}));
    let cached = messages::answer_to_chat(&json!({"content": [], "usage": {"input_tokens": 5, "cache_read_input_tokens": 100, "output_tokens": 2}})).unwrap();
    assert_eq!(chat_usage(&cached), Some((105, 2)));
}

/// The chat chunks of an answer that writes `words` and then calls a tool in two pieces.
fn chat_chunks() -> Vec<Value> {
    let mut out = vec![chunk(
        "c",
        "m",
        json!({"role": "assistant", "content": ""}),
        None,
    )];
    for w in ["Hel", "lo"] {
        out.push(chunk("c", "m", json!({"content": w}), None));
    }
    out.push(chunk("c", "m", json!({"tool_calls": [{"index": 0, "id": "call_1", "type": "function", "function": {"name": "f", "arguments": ""}}]}), None));
    for piece in ["{\"a\":", "1}"] {
        out.push(chunk(
            "c",
            "m",
            json!({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}),
            None,
        ));
    }
    out.push(chunk("c", "m", json!({}), Some("tool_calls")));
    out.push(usage_chunk("c", "m", 3, 4));
    out
}

/// Splits bytes into whole events.
fn events(bytes: &[u8]) -> Vec<Event> {
    String::from_utf8(bytes.to_vec())
        .unwrap()
        .split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| Event::parse(e.as_bytes()).unwrap())
        .collect()
}

/// Encodes chat chunks in `api`, then decodes them again: what went in comes out.
fn round_trip(api: Api) -> (Vec<Event>, Vec<Value>, bool) {
    let mut encoder = encoder(api, "client-model", true);
    let mut wire = Vec::new();
    for c in chat_chunks() {
        // each chunk's events are written as soon as it is read
        wire.extend(encoder.encode(&c));
    }
    wire.extend(encoder.finish());
    let events = events(&wire);
    let mut decoder = decoder(api, true);
    let mut chunks = Vec::new();
    let mut done = false;
    for e in &events {
        let d = decoder.decode(e).unwrap();
        chunks.extend(d.chunks);
        done |= d.done;
    }
    (events, chunks, done)
}

fn summary(chunks: &[Value]) -> (String, String, Option<String>, Option<(u64, u64)>) {
    let (mut text, mut args, mut finish, mut usage) = (String::new(), String::new(), None, None);
    for c in chunks {
        if let Some(u) = chat_usage(c) {
            usage = Some(u);
        }
        let Some(choice) = c.pointer("/choices/0") else {
            continue;
        };
        text.push_str(choice["delta"]["content"].as_str().unwrap_or(""));
        for call in choice["delta"]["tool_calls"]
            .as_array()
            .into_iter()
            .flatten()
        {
            args.push_str(call["function"]["arguments"].as_str().unwrap_or(""));
        }
        if let Some(f) = choice["finish_reason"].as_str() {
            finish = Some(f.to_string());
        }
    }
    (text, args, finish, usage)
}

#[test]
fn streams_translate_event_by_event_in_both_directions() {
    for api in [
        Api::ChatCompletions,
        Api::AnthropicMessages,
        Api::OpenaiResponses,
    ] {
        let (events, chunks, done) = round_trip(api);
        assert!(done, "{api:?}: {events:?}");
        let (text, args, finish, usage) = summary(&chunks);
        assert_eq!(text, "Hello", "{api:?}");
        assert_eq!(args, "{\"a\":1}", "{api:?}");
        assert_eq!(finish.as_deref(), Some("tool_calls"), "{api:?}");
        assert_eq!(usage, Some((3, 4)), "{api:?}");
    }
    let (events, _, _) = round_trip(Api::AnthropicMessages);
    let names: Vec<&str> = events.iter().map(|e| e.name.as_deref().unwrap()).collect();
    assert_eq!(
        names,
        [
            "message_start",
            "content_block_start",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "content_block_start",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );
    let (events, _, _) = round_trip(Api::OpenaiResponses);
    let names: Vec<&str> = events.iter().map(|e| e.name.as_deref().unwrap()).collect();
    assert_eq!(
        names[..4],
        [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.content_part.added"
        ]
    );
    assert_eq!(names.last(), Some(&"response.completed"));
    let last = events.last().unwrap().json().unwrap();
    assert_eq!(last["response"]["output"][0]["content"][0]["text"], "Hello");
    assert_eq!(last["response"]["output"][1]["arguments"], "{\"a\":1}");
    assert_eq!(last["response"]["usage"]["total_tokens"], 7);
    let numbers: Vec<u64> = events
        .iter()
        .map(|e| e.json().unwrap()["sequence_number"].as_u64().unwrap())
        .collect();
    assert!(numbers.windows(2).all(|w| w[1] == w[0] + 1));
}

#[test]
fn the_first_chunk_is_written_before_the_next_is_read() {
    for api in [
        Api::AnthropicMessages,
        Api::OpenaiResponses,
        Api::ChatCompletions,
    ] {
        let mut encoder = encoder(api, "m", false);
        let first = encoder.encode(&chunk("c", "m", json!({"content": "Hi"}), None));
        let text = String::from_utf8(first).unwrap();
        assert!(text.contains("Hi"), "{api:?}: {text}");
    }
}

#[test]
fn an_error_in_an_upstream_stream_is_an_error_and_each_api_writes_its_own() {
    let anthropic = Event {
        name: Some("error".into()),
        data:
            json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
                .to_string(),
    };
    assert_eq!(
        decoder(Api::AnthropicMessages, true)
            .decode(&anthropic)
            .unwrap_err()
            .0,
        "Overloaded"
    );
    let failed = Event {
        name: None,
        data: json!({"type": "response.failed", "response": {"error": {"message": "boom"}}})
            .to_string(),
    };
    assert_eq!(
        decoder(Api::OpenaiResponses, true)
            .decode(&failed)
            .unwrap_err()
            .0,
        "boom"
    );
    let chat = Event {
        name: None,
        data: json!({"error": {"message": "cut"}}).to_string(),
    };
    assert_eq!(
        decoder(Api::ChatCompletions, true)
            .decode(&chat)
            .unwrap_err()
            .0,
        "cut"
    );
    for api in [
        Api::ChatCompletions,
        Api::AnthropicMessages,
        Api::OpenaiResponses,
    ] {
        let bytes = encoder(api, "m", false).error("the upstream broke off");
        let e = &events(&bytes)[0];
        assert_eq!(
            error_message(&e.json().unwrap()).or_else(|| e.json().unwrap()["message"]
                .as_str()
                .map(|_| "the upstream broke off")),
            Some("the upstream broke off"),
            "{api:?}"
        );
    }
    assert_eq!(
        error_body(Api::AnthropicMessages, 429, "rate_limited", "slow down")["error"]["type"],
        "rate_limit_error"
    );
}

#[test]
fn a_chat_stream_read_only_for_usage_parses_only_what_may_carry_it() {
    let mut skim = decoder(Api::ChatCompletions, false);
    let text = Event::parse(
        format!(
            "data: {}\n\n",
            chunk("c", "m", json!({"content": "Hi"}), None)
        )
        .as_bytes(),
    )
    .unwrap();
    assert!(skim.decode(&text).unwrap().chunks.is_empty());
    let usage =
        Event::parse(format!("data: {}\n\n", usage_chunk("c", "m", 3, 4)).as_bytes()).unwrap();
    assert_eq!(
        chat_usage(&skim.decode(&usage).unwrap().chunks[0]),
        Some((3, 4))
    );
    let error = Event {
        name: None,
        data: json!({"error": {"message": "cut"}}).to_string(),
    };
    assert_eq!(skim.decode(&error).unwrap_err().0, "cut");
    assert_eq!(
        decoder(Api::ChatCompletions, true)
            .decode(&text)
            .unwrap()
            .chunks
            .len(),
        1
    );
}

#[test]
fn events_read_their_name_and_every_data_line() {
    let e = Event::parse(b"event: message_start\ndata: {\"a\":\ndata: 1}\n\n").unwrap();
    assert_eq!(e.name.as_deref(), Some("message_start"));
    assert_eq!(e.json().unwrap(), json!({"a": 1}));
    assert_eq!(Event::parse(b"data:[DONE]\n\n").unwrap().data, "[DONE]");
}

#[test]
fn token_estimates_count_text_not_images() {
    let body = obj(
        json!({"system": "abcd", "messages": [{"role": "user", "content": [{"type": "text", "text": "abcdefgh"}, {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "A".repeat(4000)}}]}]}),
    );
    // "abcd", "user", "abcdefgh", "image/png": 25 bytes (types and image data are not text)
    assert_eq!(messages::estimate_tokens(&body), 7);
}

#[test]
fn interleaved_tool_calls_reach_the_client_whole_each_under_its_own_block() {
    let call = |index: u64, start: Option<(&str, &str)>, args: &str| {
        let mut c = json!({"index": index, "function": {"arguments": args}});
        if let Some((id, name)) = start {
            c["id"] = json!(id);
            c["type"] = json!("function");
            c["function"]["name"] = json!(name);
        }
        chunk("c", "m", json!({"tool_calls": [c]}), None)
    };
    let chunks = [
        call(0, Some(("call_a", "f")), ""),
        call(1, Some(("call_b", "g")), ""),
        call(0, None, "{\"x\":"),
        call(1, None, "{\"y\":"),
        call(0, None, "1}"),
        call(1, None, "2}"),
        chunk("c", "m", json!({}), Some("tool_calls")),
    ];
    for api in [Api::AnthropicMessages, Api::OpenaiResponses] {
        let mut encoder = encoder(api, "m", false);
        let mut wire = Vec::new();
        for c in &chunks {
            wire.extend(encoder.encode(c));
        }
        wire.extend(encoder.finish());
        let mut decoder = decoder(api, true);
        let mut calls: Vec<(String, String, String)> = Vec::new();
        for e in events(&wire) {
            for c in decoder.decode(&e).unwrap().chunks {
                for t in c
                    .pointer("/choices/0/delta/tool_calls")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    let i = t["index"].as_u64().unwrap() as usize;
                    if calls.len() <= i {
                        calls.push((
                            t["id"].as_str().unwrap().into(),
                            t["function"]["name"].as_str().unwrap().into(),
                            String::new(),
                        ));
                    }
                    calls[i]
                        .2
                        .push_str(t["function"]["arguments"].as_str().unwrap_or(""));
                }
            }
        }
        assert_eq!(
            calls,
            [
                ("call_a".into(), "f".into(), "{\"x\":1}".into()),
                ("call_b".into(), "g".into(), "{\"y\":2}".into())
            ],
            "{api:?}"
        );
        if api == Api::OpenaiResponses {
            let last = events(&wire).pop().unwrap().json().unwrap();
            assert_eq!(last["response"]["output"][0]["arguments"], "{\"x\":1}");
            assert_eq!(last["response"]["output"][1]["arguments"], "{\"y\":2}");
        }
    }
}
