#!/usr/bin/env python3
"""Load run for `tandem serve` (not part of CI).

N concurrent streaming clients (default 32) send completions for a given
time (default 10 minutes) on loopback, and the run reports time to first
token and inter-token latency (p50/p99), throughput, failed requests, the
pages still in use afterwards (tandem:kv_cache_usage_perc must be 0) and
the server's resident memory over time (it must stay flat).

    tandem serve --model M.gguf --port 8080 &
    python3 bench/serve-load.py --url http://127.0.0.1:8080 --pid $! \\
        --clients 32 --duration 600

Needs the `openai` and `httpx` packages (tests/server/requirements.txt).
"""

import argparse
import json
import random
import statistics
import threading
import time

import httpx
import openai

PROMPTS = [
    "The Python language is",
    "Explain what a hash map is and when to use one.",
    "Write a short story about a robot learning to paint.",
    "List the planets of the solar system with one fact each.",
    "def quicksort(xs):",
    "Summarize the causes of the French Revolution.",
]


def pct(xs, p):
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p / 100 * len(xs)))]


def rss_kib(pid, field="VmRSS"):
    """A resident-size field of /proc/PID/status in KiB: VmRSS (all),
    RssAnon (the process's own memory: what a leak grows) or RssFile
    (mapped file pages, e.g. embedding rows read from the model file as
    new tokens appear)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def metric(url, key, name):
    r = httpx.get(url + "/metrics", headers={"Authorization": f"Bearer {key}"}, timeout=30)
    for line in r.text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", default="http://127.0.0.1:8080")
    ap.add_argument("--api-key", default="none")
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--duration", type=float, default=600)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--pid", type=int, help="server pid, to sample its RSS")
    ap.add_argument("--json", help="write the report here too")
    ap.add_argument("--warmup", type=float, default=60,
                    help="seconds left out of the RSS trend (the server commits its KV pool "
                         "on a thread of its own while it starts)")
    a = ap.parse_args()

    lock = threading.Lock()
    ttft, itl, fails, done, tokens = [], [], [], [0], [0]
    rss = []
    stop_at = time.time() + a.duration

    def client(i):
        c = openai.OpenAI(base_url=a.url + "/v1", api_key=a.api_key, max_retries=0, timeout=600)
        rng = random.Random(i)
        while time.time() < stop_at:
            t0 = time.perf_counter()
            last, n, first = None, 0, None
            try:
                s = c.completions.create(model="m", prompt=rng.choice(PROMPTS),
                                         max_tokens=a.max_tokens, temperature=0.7,
                                         seed=rng.randrange(1 << 30), stream=True)
                gaps = []
                for ch in s:
                    now = time.perf_counter()
                    if not ch.choices or not ch.choices[0].text:
                        continue
                    if first is None:
                        first = now - t0
                    else:
                        gaps.append(now - last)
                    last = now
                    n += 1
                with lock:
                    if first is not None:
                        ttft.append(first)
                    itl.extend(gaps)
                    done[0] += 1
                    tokens[0] += n
            except Exception as e:  # noqa: BLE001 - every failure counts
                with lock:
                    fails.append(repr(e))

    def sampler():
        while time.time() < stop_at:
            if a.pid:
                rss.append((time.time(), rss_kib(a.pid), rss_kib(a.pid, "RssAnon")))
            time.sleep(5)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(a.clients)]
    threads.append(threading.Thread(target=sampler))
    t_start = time.time()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.time() - t_start
    time.sleep(1)
    kv = metric(a.url, a.api_key, "tandem:kv_cache_usage_perc")
    running = metric(a.url, a.api_key, "tandem:num_requests_running")
    rss_vals = [r for _, r, _ in rss if r]
    anon_vals = [r for _, _, r in rss if r]
    warm = [r for t, _, r in rss if r and t >= t_start + a.warmup]
    third = max(1, len(rss_vals) // 3)
    report = {
        "clients": a.clients,
        "seconds": round(elapsed, 1),
        "requests": done[0],
        "failed": len(fails),
        "tokens": tokens[0],
        "throughput_tok_s": round(tokens[0] / elapsed, 1),
        "ttft_p50_ms": round(pct(ttft, 50) * 1e3, 2),
        "ttft_p99_ms": round(pct(ttft, 99) * 1e3, 2),
        "itl_p50_ms": round(pct(itl, 50) * 1e3, 2),
        "itl_p99_ms": round(pct(itl, 99) * 1e3, 2),
        "kv_cache_usage_after": kv,
        "running_after": running,
        "rss_kib_first_third_mean": statistics.mean(rss_vals[:third]) if rss_vals else None,
        "rss_kib_last_third_mean": statistics.mean(rss_vals[-third:]) if rss_vals else None,
        "rss_anon_kib_first_third_mean":
            statistics.mean(anon_vals[:third]) if anon_vals else None,
        "rss_anon_kib_last_third_mean":
            statistics.mean(anon_vals[-third:]) if anon_vals else None,
        # After the warm-up: the first and the last sample, and the most.
        "rss_anon_kib_after_warmup": [warm[0], warm[-1], max(warm)] if warm else None,
        "first_failures": fails[:5],
    }
    print(json.dumps(report, indent=2))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(report, f, indent=2)
    ok = not fails and kv == 0
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
