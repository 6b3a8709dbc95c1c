"""The unmodified `litellm` package talking to pointsman's proxy, as its OpenAI provider
(`openai/...` to `/v1/chat/completions`) and as its Anthropic provider (`anthropic/...` to
`/v1/messages`).

Run by tests/it/clients.rs against a running `pointsman serve --proxy ...` whose providers point
at the test's fake upstream. Prints one JSON object with what the client saw; the Rust test
checks it. Exits non-zero on anything unexpected. LITELLM_LOCAL_MODEL_COST_MAP must be set (the
test sets it): litellm otherwise fetches its price list from GitHub when imported.

    python litellm_client.py BASE_URL API_KEY
"""

import importlib.metadata
import json
import sys

import litellm

# its help banners go to stdout, where this script's JSON goes
litellm.suppress_debug_info = True
base, key = sys.argv[1], sys.argv[2]
seen = {"litellm_version": importlib.metadata.version("litellm")}
order = [{"role": "user", "content": "Where is my order #12345?"}]


def header(response, name):
    """A response header as litellm keeps it (prefixed `llm_provider-` in its hidden params)."""
    return response._hidden_params["additional_headers"].get(f"llm_provider-{name}")


for provider, api_base in (("openai", f"{base}/v1"), ("anthropic", base)):

    def call(model="auto", api_key=key, messages=order, **more):
        return litellm.completion(
            model=f"{provider}/{model}",
            api_base=api_base,
            api_key=api_key,
            messages=messages,
            max_tokens=200,
            num_retries=0,
            timeout=20,
            **more,
        )

    response = call()
    pieces = []
    for chunk in call(
        messages=[{"role": "user", "content": "How do I reset my password?"}], stream=True
    ):
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
    try:
        call(model="no-such-model")
        not_found = None
    except litellm.NotFoundError as e:
        not_found = e.status_code
    try:
        call(api_key="wrong-key")
        wrong_key = None
    except litellm.AuthenticationError as e:
        wrong_key = e.status_code
    seen[provider] = {
        "content": response.choices[0].message.content,
        "usage": [response.usage.prompt_tokens, response.usage.completion_tokens],
        "route_header": header(response, "x-pointsman-route"),
        "model_header": header(response, "x-pointsman-model"),
        "streamed": "".join(pieces),
        "not_found": not_found,
        "wrong_key": wrong_key,
    }

print(json.dumps(seen))
