"""`tandem serve --prefill gpu`: the GPU prefill (tandem-gpu) as an
in-process prefill worker, and `tandem prefill-worker --gpu` as a process
of its own. Without a GPU it runs on the CPU stand-in
device (`--gpu-stand-in`, the same code but the CUDA calls), which is
what CI can check: the prompts go to the worker, and the first token is
the CPU's with its log-probability within the GPU path's tolerance (0.3:
half-precision operands against the CPU's 8-bit activations, see
tandem-gpu's tests; later tokens may part at a near tie)."""

import pytest

from conftest import Server
from test_prefill_worker import PROMPTS, disagg_server, run, stop_worker, wait_metric


@pytest.fixture(scope="module")
def cpu():
    s = Server("--max-batch", "4", ctx=8192)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def gpu():
    s = Server("--prefill", "gpu", "--gpu-stand-in", "--prefill-remote-min", "8",
               "--max-batch", "4", ctx=8192)
    yield s
    s.stop()
    assert s.proc.returncode == 0, s.proc.stderr.read()


def test_gpu_worker_prefills_long_prompts_with_the_cpu_tokens(cpu, gpu):
    # The worker joins the engine thread between its steps, which may be
    # just after the server answers /health (seen on a loaded machine).
    wait_metric(gpu, "tandem:prefill_workers", lambda v: v == 1)
    before = gpu.metric("tandem:remote_prefills_total")
    for p in PROMPTS:
        text, tokens, lps = run(gpu, p)
        want_text, want_tokens, want_lps = run(cpu, p)
        assert tokens[0] == want_tokens[0], p[:40]
        assert abs(lps[0] - want_lps[0]) < 0.3, p[:40]
    assert gpu.metric("tandem:remote_prefills_total") == before + len(PROMPTS)
    assert gpu.metric("tandem:remote_prefill_failures_total") == 0


def test_auto_without_a_profile_is_a_clean_error(tmp_path):
    import os
    import subprocess

    from conftest import BIN, MODEL
    env = dict(os.environ, TANDEM_GPU_PROFILE=str(tmp_path / "missing.json"))
    p = subprocess.run([str(BIN), "serve", "--model", str(MODEL), "--port", "0",
                        "--prefill", "auto"], env=env, capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 1, p.stderr
    assert "tandem calibrate" in p.stderr, p.stderr


def test_out_of_process_gpu_worker_prefills_with_the_cpu_tokens(cpu):
    import subprocess

    from conftest import BIN, MODEL
    server = disagg_server(ctx=8192)
    w = subprocess.Popen(
        [str(BIN), "prefill-worker", "--model", str(MODEL), "--connect", server.prefill_addr,
         "--gpu", "--gpu-stand-in"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_metric(server, "tandem:prefill_workers", lambda v: v == 1)
        before = server.metric("tandem:remote_prefills_total")
        for p in PROMPTS:
            text, tokens, lps = run(server, p)
            want_text, want_tokens, want_lps = run(cpu, p)
            assert tokens[0] == want_tokens[0], p[:40]
            assert abs(lps[0] - want_lps[0]) < 0.3, p[:40]
        assert server.metric("tandem:remote_prefills_total") == before + len(PROMPTS)
        assert server.metric("tandem:remote_prefill_failures_total") == 0
    finally:
        stop_worker(w)
        server.stop()
    assert "prefilling on" in w.stderr.read()
