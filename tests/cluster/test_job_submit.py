"""The main entry point under `ray job submit`, against a head started with `ray start --head` on loopback.

Token authentication stays on (Ray's default): the head and the client share a
token through RAY_AUTH_TOKEN, and the client sends it (RAY_AUTH_MODE=token).
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import time

import pytest

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def head(tmp_path):
    env = dict(os.environ)
    env.update({
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # single node: bind to loopback
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(32),
    })
    env.pop("RAY_ADDRESS", None)
    gcs, dash = _free_port(), _free_port()
    start = subprocess.run(
        ["ray", "start", "--head", "--node-ip-address=127.0.0.1", f"--port={gcs}",
         "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", "--num-cpus=2",
         "--disable-usage-stats"],
        env=env, capture_output=True, text=True, timeout=180,
    )
    assert start.returncode == 0, start.stdout + start.stderr
    try:
        yield env, f"http://127.0.0.1:{dash}"
    finally:
        subprocess.run(["ray", "stop", "--force"], env=env, capture_output=True, timeout=120)


def test_job_submit_runs_the_pipeline(head, tmp_path, fresh_repo):
    env, address = head
    # On a cluster the run directory is shared storage, named by an absolute path; the
    # recipe is the repository's, relative to the uploaded working directory.
    out = tmp_path / "runs"
    # without the token the head refuses the job
    no_token = {k: v for k, v in env.items() if k not in ("RAY_AUTH_TOKEN",)}
    no_token["RAY_AUTH_TOKEN_PATH"] = str(tmp_path / "no-such-token")
    refused = subprocess.run(["ray", "job", "list", "--address", address], env=no_token,
                             capture_output=True, text=True, timeout=120)
    assert refused.returncode != 0 and "auth" in (refused.stdout + refused.stderr).lower()

    command = ["ray", "job", "submit", "--address", address, "--working-dir", ".",
               "--", "pagerl", "run", "recipes/ci_small.yaml", f"run.output_dir={out}", "sft.max_steps=2",
               "sft.checkpoint_every=2", "eval.num_requests=10", "sim.num_train_requests=200"]
    # The head answers before its job agent is up ("No available agent to submit job"):
    # wait for the agent, up to four minutes (a loaded 2-core machine is slow to start it).
    deadline = time.monotonic() + 240
    while True:
        submit = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900, cwd=fresh_repo)
        log = submit.stdout + submit.stderr
        if "No available agent" not in log or time.monotonic() > deadline:
            break
        time.sleep(3)
    assert submit.returncode == 0, log[-4000:]
    assert "succeeded" in log.lower()
    run_dir = out / "ci_small"
    results = json.loads((run_dir / "eval" / "results.json").read_text())
    assert {"sft", "rl"} <= set(results["methods"])
    assert (run_dir / "sft" / "final" / "model.safetensors").is_file()
    assert "report:" in log
