"""How the eval stage lays out the pages of a saved policy, by the kind of policy it is.

A run's policies are not all language models: the ``rllib`` stage saves an
RLlib module that scores candidates (:mod:`pagerl.rllib_baseline.ppo`). A
saved policy directory says what it is in :data:`MANIFEST` (``{"kind": ...}``);
a directory without one is a language-model policy (``"lm"``: a Hugging Face
checkpoint and its tokenizer, what the sft and rl stages save). Each kind is
one entry of :data:`POLICY_KINDS`, a function ``(recipe, policy_dir,
requests, env) -> MethodPages``, registered by the module that knows that kind
of policy (``"lm"``: :mod:`pagerl.eval.pages`; ``"rllib_ppo"``:
:mod:`pagerl.rllib_baseline.ppo`), so the eval loop has no branch per kind and
a new kind of policy is one registered function.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Dict, Sequence

from pagerl.data.types import Request
from pagerl.registry import Registry, lookup, register

MANIFEST = "pagerl_policy.json"
LM = "lm"

PolicyPages = Callable[[Any, str, Sequence[Request], Any], Any]
POLICY_KINDS: Registry = Registry("policy kind")


def register_policy_kind(name: str) -> Callable[[PolicyPages], PolicyPages]:
    return register(POLICY_KINDS, name)


def write_manifest(policy_dir: str | Path, kind: str, **info: Any) -> Path:
    path = Path(policy_dir) / MANIFEST
    path.write_text(json.dumps({"kind": kind, **info}, indent=2) + "\n", encoding="utf-8")
    return path


def read_manifest(policy_dir: str | Path) -> Dict[str, Any]:
    """The directory's manifest, or ``{"kind": "lm"}`` where it has none."""
    path = Path(policy_dir) / MANIFEST
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {"kind": LM}


def is_saved_policy(policy_dir: str | Path) -> bool:
    """A directory a policy kind can load: one with a manifest, or a language model's ``config.json``."""
    return (Path(policy_dir) / MANIFEST).is_file() or (Path(policy_dir) / "config.json").is_file()


def saved_policy_pages(recipe: Any, policy_dir: str, requests: Sequence[Request], env: Any) -> Any:
    """The pages of the saved policy in ``policy_dir`` for ``requests`` (a ``MethodPages``)."""
    kind = str(read_manifest(policy_dir).get("kind", LM))
    return lookup(POLICY_KINDS, kind)(recipe, str(policy_dir), requests, env)
