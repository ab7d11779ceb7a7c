#!/usr/bin/env python3
"""Latency of `tandem serve` around prefill (not part of CI): what a long
prompt does to the running streams, with prefill in-process or in a
`tandem prefill-worker` process.

    tandem serve --model M.gguf --port 8080 [--prefill-listen 127.0.0.1:8081 \\
        --prefill-remote-min 256] &
    [tandem prefill-worker --model M.gguf --connect 127.0.0.1:8081 &]
    python3 bench/disagg-latency.py --url http://127.0.0.1:8080

Reports, each prompt made of fresh token ids (no prefix-cache hits):
- ttft: time to first token of a `--short`-token and a `--long`-token
  prompt alone (median of `--reps`), streamed, max_tokens 1;
- itl@1: inter-token latency of one stream alone (median, mean; 1/mean
  is comparable with `tandem bench`'s tg);
- itl while prefilling: `--streams` streams decode; once all of them do,
  and `--settle` seconds later, a `--long`-token prompt arrives; the
  streams' inter-token gaps between its arrival and its first token (p50,
  p99, max), and in the `--settle` seconds before it (p50, p99).

Needs `openai` (tests/server/requirements.txt).
"""

import argparse
import random
import statistics
import threading
import time

import openai


def pct(xs, p):
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p / 100 * len(xs)))]


class Bench:
    def __init__(self, url, key, vocab_lo, vocab_hi):
        self.client = openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0,
                                    timeout=600)
        self.rng = random.Random(1)
        self.lo, self.hi = vocab_lo, vocab_hi

    def prompt(self, n):
        return [self.rng.randrange(self.lo, self.hi) for _ in range(n)]

    def stream(self, prompt, max_tokens, times, stop=None):
        """Streams a completion; appends each chunk's arrival time."""
        s = self.client.completions.create(model="m", prompt=prompt, max_tokens=max_tokens,
                                           temperature=0, stream=True,
                                           extra_body={"ignore_eos": True})
        for ch in s:
            if ch.choices and ch.choices[0].text is not None:
                times.append(time.perf_counter())
            if stop is not None and stop.is_set():
                s.close()
                break

    def ttft(self, n, reps):
        out = []
        for _ in range(reps):
            t0 = time.perf_counter()
            times = []
            self.stream(self.prompt(n), 1, times)
            out.append(times[0] - t0)
        return out


def gaps(times):
    return [b - a for a, b in zip(times, times[1:])]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", default="http://127.0.0.1:8080")
    ap.add_argument("--key", default="none")
    ap.add_argument("--short", type=int, default=128)
    ap.add_argument("--long", type=int, default=4000)
    ap.add_argument("--streams", type=int, default=4)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--itl-tokens", type=int, default=128)
    ap.add_argument("--stream-tokens", type=int, default=4000,
                    help="max_tokens of the running streams (they must outlast the prefill)")
    ap.add_argument("--settle", type=float, default=3.0,
                    help="seconds the streams decode alone before the long prompt")
    ap.add_argument("--vocab", type=int, default=1000,
                    help="prompt token ids are drawn from [100, VOCAB)")
    a = ap.parse_args()
    b = Bench(a.url, a.key, 100, a.vocab)

    b.ttft(16, 1)  # warm-up
    for n in (a.short, a.long):
        t = b.ttft(n, a.reps if n == a.short else max(1, a.reps // 2))
        print(f"ttft {n} tokens: median {statistics.median(t) * 1e3:.1f} ms "
              f"(min {min(t) * 1e3:.1f}, n={len(t)})")

    times = []
    b.stream(b.prompt(16), a.itl_tokens, times)
    g = gaps(times)
    print(f"itl@1: median {statistics.median(g) * 1e3:.2f} ms, mean "
          f"{statistics.mean(g) * 1e3:.2f} ms = {1 / statistics.mean(g):.1f} tok/s")

    stop = threading.Event()
    per = [[] for _ in range(a.streams)]
    ths = [threading.Thread(target=b.stream, args=(b.prompt(16), a.stream_tokens, per[i], stop))
           for i in range(a.streams)]
    for t in ths:
        t.start()
    # Every stream decoding, then `--settle` seconds of decode-only steps:
    # the baseline the gaps during the prefill are compared with.
    while min(len(ts) for ts in per) < 2:
        if not all(t.is_alive() for t in ths):
            raise SystemExit("a stream ended before the long prompt (see its error above)")
        time.sleep(0.05)
    time.sleep(a.settle)
    t_arrive = time.perf_counter()
    long_times = []
    b.stream(b.prompt(a.long), 1, long_times)
    t_first = long_times[0]
    time.sleep(0.5)
    stop.set()
    for t in ths:
        t.join()
    during, before = [], []
    for ts in per:
        for x, y in zip(ts, ts[1:]):
            if t_arrive <= y <= t_first:
                during.append(y - x)
            elif y < t_arrive and x > t_arrive - a.settle:
                before.append(y - x)
    print(f"long prompt ({a.long} tokens) under {a.streams} streams: ttft "
          f"{(t_first - t_arrive) * 1e3:.0f} ms")
    print(f"  streams' itl before: p50 {pct(before, 50) * 1e3:.2f} ms, "
          f"p99 {pct(before, 99) * 1e3:.2f} ms (n={len(before)})")
    print(f"  streams' itl during: p50 {pct(during, 50) * 1e3:.2f} ms, "
          f"p99 {pct(during, 99) * 1e3:.2f} ms, max {max(during, default=0) * 1e3:.2f} ms "
          f"(n={len(during)})")
    if before and during:
        print(f"  p99 during / p50 before: {pct(during, 99) / pct(before, 50):.2f}")


if __name__ == "__main__":
    main()
