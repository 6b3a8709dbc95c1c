"""Two pointsman builds side by side, prompt by prompt: the paired difference of their HTTP round
trips at concurrency 1, which the machine's drift (its speed moves by tens of percent within
minutes) cancels out of, where two runs one after the other do not.

    python3 benches/ab.py PROMPTS N URL_A URL_B

PROMPTS is a JSON-lines file with a `text` field; each of the first N prompts goes once to each
server (so neither answers from its embedding cache), A first on even prompts and B first on odd
ones. Prints each server's p50 round trip and its own timings, then the p50 and mean of B's
round trip less A's for the same prompt, and how the two answers differ: the prompts routed
elsewhere, and the largest difference in a listed route's similarity. Run by benches/ab.sh.
"""

import http.client
import json
import statistics
import sys
import time
from urllib.parse import urlsplit


def main() -> None:
    if len(sys.argv) != 5:
        sys.exit("usage: ab.py PROMPTS N URL_A URL_B")
    prompts, n, urls = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    with open(prompts, encoding="utf-8") as f:
        texts = [json.loads(line)["text"] for line in f if line.strip()][:n]
    conns = [http.client.HTTPConnection(urlsplit(u).hostname, urlsplit(u).port) for u in urls]
    trip, total, search, answers = ([[], []] for _ in range(4))
    for i, text in enumerate(texts):
        body = json.dumps({"prompt": text}).encode()
        for k in (0, 1) if i % 2 == 0 else (1, 0):
            start = time.perf_counter()
            conns[k].request("POST", "/v1/route", body=body,
                             headers={"content-type": "application/json"})
            response = conns[k].getresponse()
            answer = json.loads(response.read())
            if response.status != 200:
                sys.exit(f"{urls[k]} answered {response.status} to {text!r}")
            trip[k].append((time.perf_counter() - start) * 1e3)
            answers[k].append(answer)
            total[k].append(float(response.getheader("x-pointsman-total-ms")))
            search[k].append(float(response.getheader("x-pointsman-search-ms")))
    print(f"{len(texts)} prompts, each once to each server, alternating which goes first (ms):")
    print("| server | HTTP p50 | submission to answer | decision | the rest of the round trip |")
    print("|---|---:|---:|---:|---:|")
    for k, name in enumerate("AB"):
        rest = statistics.median(a - b for a, b in zip(trip[k], total[k]))
        print(f"| {name} | {statistics.median(trip[k]):.3f} | {statistics.median(total[k]):.3f} "
              f"| {statistics.median(search[k]):.3f} | {rest:.3f} |")
    diff = [b - a for a, b in zip(trip[0], trip[1])]
    print(f"\nB less A, the same prompt: p50 {statistics.median(diff):+.3f} ms, "
          f"mean {statistics.mean(diff):+.3f} ms")
    elsewhere = sum(a["route"] != b["route"] for a, b in zip(*answers))
    score_diff = max((abs(x["similarity"] - y["similarity"])
                      for a, b in zip(*answers)
                      for x, y in zip(a["routes"], b["routes"]) if x["route"] == y["route"]),
                     default=0.0)
    print(f"answers: {elsewhere} of {len(texts)} prompts routed elsewhere; largest difference "
          f"in a listed route's similarity {score_diff:.2e}")


if __name__ == "__main__":
    main()
