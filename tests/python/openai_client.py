"""An unmodified OpenAI Python client talking to pointsman's proxy.

Run by tests/it/proxy.rs against a running `pointsman serve --proxy ...` whose providers point
at the test's fake upstream. Prints one JSON object with what the client saw; the Rust test
checks it. Exits non-zero on anything unexpected.

    python openai_client.py BASE_URL API_KEY
"""

import json
import sys

import openai
from openai import OpenAI

base, key = sys.argv[1], sys.argv[2]
client = OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0, timeout=20)
seen = {"openai_version": openai.__version__}

seen["models"] = [m.id for m in client.models.list()]

raw = client.chat.completions.with_raw_response.create(
    model="auto",
    messages=[{"role": "user", "content": "Where is my order #12345?"}],
)
completion = raw.parse()
seen["completion"] = {
    "content": completion.choices[0].message.content,
    "route": raw.headers.get("x-pointsman-route"),
    "model": raw.headers.get("x-pointsman-model"),
    "usage": completion.usage.total_tokens,
}

# a follow-up in the same conversation
follow = client.chat.completions.with_raw_response.create(
    model="auto",
    messages=[
        {"role": "user", "content": "Where is my order #12345?"},
        {"role": "assistant", "content": completion.choices[0].message.content},
        {"role": "user", "content": "and what about the other one?"},
    ],
)
follow.parse()
seen["follow_up_route"] = follow.headers.get("x-pointsman-route")

pieces = []
stream = client.chat.completions.create(
    model="auto",
    messages=[{"role": "user", "content": "How do I reset my password?"}],
    stream=True,
)
for chunk in stream:
    if chunk.choices and chunk.choices[0].delta.content:
        pieces.append(chunk.choices[0].delta.content)
seen["streamed"] = "".join(pieces)

try:
    client.chat.completions.create(
        model="no-such-model", messages=[{"role": "user", "content": "hi"}]
    )
    seen["not_found"] = None
except openai.NotFoundError as e:
    seen["not_found"] = {"status": e.status_code, "message": str(e)}

# the upstream cuts this stream halfway (scripted by the test): the client must raise
try:
    for _ in client.chat.completions.create(
        model="gpt-4o",
        messages=[{"role": "user", "content": "explain the theory of relativity"}],
        stream=True,
    ):
        pass
    seen["cut_stream"] = None
except openai.APIError as e:
    seen["cut_stream"] = str(e)

try:
    OpenAI(base_url=f"{base}/v1", api_key="wrong-key", max_retries=0).models.list()
    seen["wrong_key"] = None
except openai.AuthenticationError as e:
    seen["wrong_key"] = e.status_code

print(json.dumps(seen))
