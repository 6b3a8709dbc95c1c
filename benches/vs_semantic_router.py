#!/usr/bin/env python3
"""pointsman's HTTP round trip against semantic-router's in-process call, on the same model file
and one thread, prompt by prompt (benches/scale.sh installs semantic-router 1.1.1 and runs this).

    python3 benches/vs_semantic_router.py ROUTES_YAML PROMPTS_JSONL MODEL_DIR URL [N]

semantic-router gets the route file's routes and utterances (`IndexedRouter`, its defaults:
local index, top 5, mean aggregation) and an encoder that runs the model file with ONNX Runtime
on one thread (mean pooling, L2-normalised; what the router's own encoders do, without the
model hub they would fetch from). Each prompt, sent once and never before, goes to both in turn,
alternating which goes first. pointsman is called over one keep-alive connection by a minimal
HTTP/1.1 client on a raw socket (`http.client` would add its own header parsing to pointsman's
time); whatever this Python client still costs is counted against pointsman.
"""

import json
import os
import socket
import statistics
import sys
import time

import numpy as np
import onnxruntime as ort
import yaml
from semantic_router import IndexedRouter, Route
from semantic_router.encoders import DenseEncoder
from tokenizers import Tokenizer


class OnnxEncoder(DenseEncoder):
    """all-MiniLM-L6-v2 (or any mean-pooled BERT) from a model directory, on ONNX Runtime."""

    name: str = "onnx-local"
    session: object = None
    tokenizer: object = None

    def __init__(self, model_dir, **kw):
        super().__init__(**kw)
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(
            os.path.join(model_dir, "model.onnx"), options, providers=["CPUExecutionProvider"]
        )
        tok = Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
        tok.enable_truncation(256)
        tok.enable_padding()
        self.tokenizer = tok

    def __call__(self, docs):
        out = []
        # batches of 32 to build the index; a query is one text
        for i in range(0, len(docs), 32):
            enc = self.tokenizer.encode_batch(list(docs[i : i + 32]))
            ids = np.array([e.ids for e in enc], dtype=np.int64)
            mask = np.array([e.attention_mask for e in enc], dtype=np.int64)
            types = np.array([e.type_ids for e in enc], dtype=np.int64)
            (hidden,) = self.session.run(
                ["last_hidden_state"],
                {"input_ids": ids, "attention_mask": mask, "token_type_ids": types},
            )
            m = mask[..., None].astype(np.float32)
            v = (hidden * m).sum(1) / np.clip(m.sum(1), 1e-9, None)
            v /= np.linalg.norm(v, axis=1, keepdims=True)
            out.extend(v.tolist())
        return out


def main():
    if len(sys.argv) < 5:
        sys.exit(__doc__)
    routes_yaml, prompts_file, model_dir, url = sys.argv[1:5]
    n = int(sys.argv[5]) if len(sys.argv) > 5 else 300
    with open(routes_yaml, encoding="utf-8") as f:
        table = yaml.safe_load(f)
    routes = [Route(name=r["name"], utterances=r["utterances"]) for r in table["routes"]]
    utterances = sum(len(r.utterances) for r in routes)
    seen, prompts = set(), []
    with open(prompts_file, encoding="utf-8") as f:
        for line in f:
            t = json.loads(line)["text"]
            if t not in seen:
                seen.add(t)
                prompts.append(t)
    prompts = prompts[: n + 20]
    started = time.perf_counter()
    router = IndexedRouter(encoder=OnnxEncoder(model_dir), routes=routes)
    built = time.perf_counter() - started
    host, port = url.removeprefix("http://").rstrip("/").split(":")
    sock = socket.create_connection((host, int(port)))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    reader = sock.makefile("rb")

    def ours(text):
        body = json.dumps({"prompt": text}).encode()
        sock.sendall(
            b"POST /v1/route HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (host.encode(), len(body), body)
        )
        status = reader.readline().split(b" ")[1]
        length = 0
        while (line := reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            if name.lower() == b"content-length":
                length = int(value)
        reader.read(length)
        assert status == b"200", status

    sr, us = [], []
    for i, p in enumerate(prompts):
        for step in range(2):
            t = time.perf_counter()
            if (i + step) % 2 == 0:
                router(p)
                if i >= 20:
                    sr.append(time.perf_counter() - t)
            else:
                ours(p)
                if i >= 20:
                    us.append(time.perf_counter() - t)
    a, b = statistics.median(sr) * 1e3, statistics.median(us) * 1e3
    print(f"{len(routes)} routes, {utterances} utterances (semantic-router's index built in {built:.0f} s); {len(sr)} prompts, interleaved")
    print("| semantic-router 1.1.1, in process | pointsman, HTTP | pointsman faster by |")
    print("|---:|---:|---:|")
    print(f"| {a:.3f} ms | {b:.3f} ms | {a / b:.2f}× |")


if __name__ == "__main__":
    main()
