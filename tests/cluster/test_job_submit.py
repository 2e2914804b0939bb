"""The command line under `ray job submit`, against a head started with `ray start --head` on loopback.

Token authentication stays on (Ray's default): the head and the client share a
token through RAY_AUTH_TOKEN, and the client sends it (RAY_AUTH_MODE=token).
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
import torch
from safetensors.torch import load_file

from pagerl.app.recipes import load_recipe


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def head(tmp_path):
    """A head node of its own, stopped alone at the end.

    ``ray start --head --block`` keeps the node's processes under this one process, which on
    SIGTERM shuts down exactly that node; ``ray stop`` would end every Ray process of the user
    on the machine, a developer's other clusters included.
    """
    env = dict(os.environ)
    env.update({
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # single node: bind to loopback
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(32),
    })
    env.pop("RAY_ADDRESS", None)
    # Every port the head listens on is a free one, so it starts beside any other cluster on the
    # machine (the job agent's default, 52365, is taken by the first cluster that starts).
    gcs, dash, agent = _free_port(), _free_port(), _free_port()
    log = open(tmp_path / "head.log", "w")
    node = subprocess.Popen(
        ["ray", "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={gcs}",
         "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", f"--dashboard-agent-listen-port={agent}",
         "--num-cpus=2",
         "--disable-usage-stats"],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 180
        while not _answers(f"http://127.0.0.1:{dash}/api/version"):
            assert node.poll() is None, (tmp_path / "head.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the head's dashboard did not answer within 180 s"
            time.sleep(1)
        yield env, f"http://127.0.0.1:{dash}"
    finally:
        node.send_signal(signal.SIGTERM)
        try:
            node.wait(timeout=120)
        except subprocess.TimeoutExpired:
            node.kill()
            node.wait(timeout=30)
        log.close()


def _answers(url: str) -> bool:
    """Whether an HTTP server answers at ``url`` (any status: with token auth on, it may refuse)."""
    try:
        urllib.request.urlopen(url, timeout=2)
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False
    return True


def test_job_submit_runs_an_ablation_of_the_pipeline(head, tmp_path, fresh_repo):
    """`pagerl ablate` as a cluster job: the shared stages (synth, SFT, RM) and the eval of the
    baselines once, then RL and eval of each reward variant, and the table; run again locally
    over the same run directory, every part is complete and nothing trains again."""
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

    args = ["recipes/ci_small.yaml", f"run.output_dir={out}", "sft.max_steps=2", "sft.checkpoint_every=2",
            "eval.num_requests=10", "sim.num_train_requests=200", "ablation.seeds=[0]", "rl.checkpoint_every=0",
            "eval.baselines=[random,logging]"]
    command = ["ray", "job", "submit", "--address", address, "--working-dir", ".", "--", "pagerl", "ablate", *args]
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
    assert "succeeded" in log.lower() and "ablation:" in log
    base = out / "ci_small"
    assert (base / "sft" / "final" / "model.safetensors").is_file()
    assert {"sft", "random", "logging"} == set(json.loads((base / "eval" / "results.json").read_text())["methods"])
    table = json.loads((base / "ablation" / "ablation.json").read_text())
    assert set(table["variants"]) == {"mixed", "item_only", "page_only"} and table["num_requests"] == 10
    report = (base / "report.md").read_text()
    assert "## Reward ablation" in report
    # where the time went: the shared stages here, each variant's RL and eval in its own run directory
    time_spent = report[report.index("## Where the time went"):]
    for row in ("| `sft`", "| `rm`", "| `mixed`     | 1    |", "| `item_only` | 1    |", "| `page_only` | 1    |"):
        assert row in time_spent, (row, time_spent)
    weights = {}
    for variant, w_page, w_item in (("mixed", 1.0, 1.0), ("item_only", 0.0, 1.0), ("page_only", 1.0, 0.0)):
        run = base / "ablation" / f"{variant}-seed0"
        assert table["runs"][variant]["0"] == str(run)
        saved = load_recipe(run / "recipe.yaml")[0]
        assert (saved.rewards.w_page, saved.rewards.w_item) == (w_page, w_item)
        summary = json.loads((run / "rl" / "summary.json").read_text())
        assert summary["steps"] == saved.rl.steps and summary["policy_dir"] == str(base / "sft" / "final")
        assert set(json.loads((run / "eval" / "results.json").read_text())["methods"]) == {"rl"}
        assert not (run / "sft").exists()  # the shared stages ran once, in the recipe's run directory
        weights[variant] = load_file(run / "rl" / "final" / "model.safetensors")
    # the variants trained on different rewards from the same start: their policies differ
    for a, b in (("mixed", "item_only"), ("mixed", "page_only"), ("item_only", "page_only")):
        assert any(not torch.equal(weights[a][k], weights[b][k]) for k in weights[a]), (a, b)

    # the same command again, on this machine: every part is complete, nothing is trained again
    local = {k: v for k, v in env.items() if not k.startswith("RAY_AUTH")}
    again = subprocess.run([sys.executable, "-m", "pagerl", "ablate", *args], env=local, capture_output=True,
                           text=True, timeout=600, cwd=fresh_repo)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert again.stdout.count("already complete") == 4 + 3 * 2  # synth, sft, rm, eval; then rl, eval per variant
    assert json.loads((base / "ablation" / "ablation.json").read_text())["variants"] == table["variants"]
