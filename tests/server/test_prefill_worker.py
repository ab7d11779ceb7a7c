"""Disaggregated prefill: `tandem prefill-worker` processes beside
`tandem serve --prefill-listen`. An out-of-process prefill gives exactly
the in-process tokens and log-probabilities; a worker killed with SIGKILL
in the middle of a long prompt loses nothing (the request completes with
its solo run's tokens) and leaks no page; a worker of another model is
refused; a client that disconnects during a long prefill cancels it
within a chunk or so and frees its pages."""

import os
import signal
import socket
import subprocess
import threading
import time

import pytest

from conftest import BIN, MODEL, ROOT, Server

CHUNK = 16
# The long prompt: thousands of tokens, so its prefill takes many chunks.
LONG = " ".join(f"item{i} is followed by item{i + 1}." for i in range(240))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_worker(addr, model=MODEL):
    # The server's thread count: attention over a long context is split
    # by threads, so the same count gives the same bits.
    return subprocess.Popen(
        [str(BIN), "prefill-worker", "--model", str(model), "--connect", addr,
         "--threads", "2"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def stop_worker(w):
    if w.poll() is None:
        w.kill()
    w.wait(timeout=30)


def wait_metric(server, name, pred, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = server.metric(name)
        if v is not None and pred(v):
            return v
        time.sleep(0.01)
    raise AssertionError(f"{name} = {server.metric(name)}")


def wait_idle(server, timeout=30):
    wait_metric(server, "tandem:num_requests_running", lambda v: v == 0, timeout)
    wait_metric(server, "tandem:kv_cache_usage_perc", lambda v: v == 0, timeout)


def disagg_server(ctx):
    port = free_port()
    s = Server("--prefill-listen", f"127.0.0.1:{port}", "--prefill-remote-min", "1",
               "--prefill-chunk", str(CHUNK), "--max-batch", "4", ctx=ctx)
    s.prefill_addr = f"127.0.0.1:{port}"
    return s


@pytest.fixture(scope="module")
def plain():
    s = Server("--prefill-chunk", str(CHUNK), "--max-batch", "4", ctx=8192)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def disagg():
    s = disagg_server(ctx=8192)
    yield s
    s.stop()
    assert s.proc.returncode == 0, s.proc.stderr.read()


def run(server, prompt, max_tokens=12):
    r = server.client().completions.create(
        model="tiny", prompt=prompt, max_tokens=max_tokens, temperature=0, logprobs=2,
        extra_body={"ignore_eos": True})
    c = r.choices[0]
    return c.text, c.logprobs.tokens, c.logprobs.token_logprobs


PROMPTS = [
    "The Python language is",
    "A list is a mutable sequence of items, and a tuple " * 8,
    LONG[:3000],
]


def test_out_of_process_prefill_equals_in_process(plain, disagg):
    w = start_worker(disagg.prefill_addr)
    try:
        wait_metric(disagg, "tandem:prefill_workers", lambda v: v == 1)
        before = disagg.metric("tandem:remote_prefills_total")
        for p in PROMPTS:
            assert run(disagg, p) == run(plain, p), p[:40]
        assert disagg.metric("tandem:remote_prefills_total") == before + len(PROMPTS)
        assert disagg.metric("tandem:remote_prefill_failures_total") == 0
        wait_idle(disagg)
    finally:
        stop_worker(w)
    wait_metric(disagg, "tandem:prefill_workers", lambda v: v == 0)


def test_a_worker_killed_mid_prefill_loses_nothing_and_leaks_no_page(plain, disagg):
    solo = run(plain, LONG, max_tokens=8)
    wait_idle(disagg)
    w = start_worker(disagg.prefill_addr)
    try:
        wait_metric(disagg, "tandem:prefill_workers", lambda v: v == 1)
        failures = disagg.metric("tandem:remote_prefill_failures_total")
        out = {}
        t = threading.Thread(target=lambda: out.setdefault("r", run(disagg, LONG, max_tokens=8)))
        t.start()
        # Kill it while it computes: the job is handed off (busy), and a
        # few of its hundreds of chunks have run.
        wait_metric(disagg, "tandem:prefill_workers_busy", lambda v: v == 1)
        time.sleep(0.02)
        w.send_signal(signal.SIGKILL)
        t.join(120)
        assert out.get("r") == solo
        assert disagg.metric("tandem:remote_prefill_failures_total") == failures + 1
        wait_metric(disagg, "tandem:prefill_workers", lambda v: v == 0)
        wait_idle(disagg)
    finally:
        stop_worker(w)


def test_a_worker_of_another_model_is_refused(disagg):
    other = ROOT / "fixtures/models/tandem-tiny/gguf/tandem-tiny-Q4_K_M.gguf"
    w = start_worker(disagg.prefill_addr, model=other)
    try:
        assert w.wait(timeout=60) != 0
        err = w.stderr.read()
        assert "refused" in err and "model" in err, err
    finally:
        stop_worker(w)
    assert disagg.metric("tandem:prefill_workers") == 0


def test_a_client_gone_during_a_long_prefill_cancels_it(plain):
    wait_idle(plain)
    before = plain.metric("tandem:prefill_tokens_computed_total")
    # Not a prefix of anything cached: every token is to compute. Long
    # (about 7.7k tokens of the 8192 context), so that even on a fast
    # machine, where the metric poll below lags the prefill by a few
    # thousand tokens, the hang-up comes well before the end.
    prompt = "Cancel me. " + LONG + " " + LONG
    n_prompt = len(plain.post("/tokenize", {"content": prompt}).json()["tokens"])
    stream = plain.client().completions.create(
        model="tiny", prompt=prompt, max_tokens=4, temperature=0, stream=True)
    # Let a few chunks run, then hang up before the first token.
    wait_metric(plain, "tandem:prefill_tokens_computed_total", lambda v: v >= before + 4 * CHUNK)
    at_close = plain.metric("tandem:prefill_tokens_computed_total")
    stream.close()
    wait_idle(plain, timeout=10)
    after = plain.metric("tandem:prefill_tokens_computed_total")
    # Stopped within a few chunks of the hang-up (the steps already under
    # way when the connection's end is noticed), far from the prompt's end.
    assert after - at_close <= 8 * CHUNK, (at_close - before, after - at_close, n_prompt)
    assert after - before < n_prompt - 8 * CHUNK, (after - before, n_prompt)


def test_garbage_on_the_prefill_port_harms_nothing(disagg):
    host, port = disagg.prefill_addr.split(":")
    import struct
    frames = [
        b"GET / HTTP/1.1\r\n\r\n",
        # A frame header announcing 4 GiB.
        b"TDPF" + struct.pack("<HBBI", 1, 1, 0, 0xFFFFFFFF),
        # Another protocol version.
        b"TDPF" + struct.pack("<HBBI", 99, 1, 0, 32) + bytes(40),
        # A hello with a bad checksum.
        b"TDPF" + struct.pack("<HBBI", 1, 1, 0, 32) + bytes(40),
    ]
    for f in frames:
        with socket.create_connection((host, int(port)), timeout=10) as s:
            s.sendall(f)
            s.settimeout(10)
            try:
                assert s.recv(100) == b""  # closed without a word
            except ConnectionResetError:
                pass
    assert disagg.metric("tandem:prefill_workers") == 0
    assert run(disagg, PROMPTS[0])[0]
