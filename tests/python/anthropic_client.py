"""The unmodified `anthropic` Python package, and the `openai` package's Responses API, talking
to pointsman's proxy.

Run by tests/it/clients.rs against a running `pointsman serve --proxy ...` whose providers point
at the test's fake upstream (which calls a tool whenever it is asked for `o3-mini`). Prints one
JSON object with what the clients saw; the Rust test checks it. Exits non-zero on anything
unexpected.

    python anthropic_client.py BASE_URL API_KEY
"""

import json
import sys

import anthropic
import openai

base, key = sys.argv[1], sys.argv[2]
seen = {"anthropic_version": anthropic.__version__, "openai_version": openai.__version__}
order = [{"role": "user", "content": "Where is my order #12345?"}]
weather = {
    "name": "weather",
    "description": "The weather in a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
}

claude = anthropic.Anthropic(base_url=base, api_key=key, max_retries=0, timeout=20)

raw = claude.messages.with_raw_response.create(model="auto", max_tokens=200, messages=order)
message = raw.parse()
seen["messages_create"] = {
    "text": message.content[0].text,
    "stop_reason": message.stop_reason,
    "usage": [message.usage.input_tokens, message.usage.output_tokens],
    "model_header": raw.headers.get("x-pointsman-model"),
    "route_header": raw.headers.get("x-pointsman-route"),
}

with claude.messages.stream(model="auto", max_tokens=200, messages=order) as stream:
    pieces = list(stream.text_stream)
    final = stream.get_final_message()
seen["messages_stream"] = {
    "pieces": len(pieces),
    "text": "".join(pieces),
    "final_text": final.content[0].text,
    "output_tokens": final.usage.output_tokens,
}

events = [e.type for e in claude.messages.create(model="auto", max_tokens=200, messages=order, stream=True)]
seen["messages_raw_stream"] = events

tool = claude.messages.create(
    model="o3-mini", max_tokens=200, tools=[weather],
    messages=[{"role": "user", "content": "What is the weather in Paris?"}],
)
seen["messages_tool"] = {"stop_reason": tool.stop_reason, "name": tool.content[0].name, "input": tool.content[0].input}

with claude.messages.stream(
    model="o3-mini", max_tokens=200, tools=[weather],
    messages=[{"role": "user", "content": "What is the weather in Paris?"}],
) as stream:
    final = stream.get_final_message()
seen["messages_tool_stream"] = {"stop_reason": final.stop_reason, "input": final.content[0].input}

# the tool's result, sent back: the conversation goes on
answer = claude.messages.create(
    model="auto", max_tokens=200, tools=[weather],
    messages=[
        {"role": "user", "content": "What is the weather in Paris?"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Paris"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny"}]},
    ],
)
seen["messages_tool_result"] = answer.content[0].text

seen["count_tokens"] = claude.messages.count_tokens(model="auto", messages=order).input_tokens

try:
    claude.messages.create(model="no-such-model", max_tokens=10, messages=order)
    seen["messages_not_found"] = None
except anthropic.NotFoundError as e:
    seen["messages_not_found"] = {"status": e.status_code, "type": e.body["error"]["type"]}

try:
    anthropic.Anthropic(base_url=base, api_key="wrong-key", max_retries=0).messages.create(
        model="auto", max_tokens=10, messages=order
    )
    seen["messages_wrong_key"] = None
except anthropic.AuthenticationError as e:
    seen["messages_wrong_key"] = e.status_code

# the OpenAI Responses API
client = openai.OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0, timeout=20)
raw = client.responses.with_raw_response.create(model="auto", input="Where is my order #12345?")
response = raw.parse()
seen["responses_create"] = {
    "text": response.output_text,
    "status": response.status,
    "usage": response.usage.total_tokens,
    "model_header": raw.headers.get("x-pointsman-model"),
}

deltas = []
for event in client.responses.create(model="auto", input="Where is my order #12345?", stream=True):
    if event.type == "response.output_text.delta":
        deltas.append(event.delta)
    last = event.type
seen["responses_stream"] = {"text": "".join(deltas), "last": last}

with client.responses.stream(model="auto", input="Where is my order #12345?") as stream:
    for _ in stream:
        pass
    seen["responses_stream_helper"] = stream.get_final_response().output_text

tools = [{"type": "function", "name": "weather", "parameters": weather["input_schema"]}]
called = client.responses.create(model="o3-mini", input="What is the weather in Paris?", tools=tools)
call = [item for item in called.output if item.type == "function_call"][0]
seen["responses_tool"] = {"name": call.name, "arguments": json.loads(call.arguments)}

print(json.dumps(seen))
