"""Where :class:`~pagerl.tracking.metrics.MetricsLogger` sends a run's scalars besides ``metrics.jsonl``.

Why a registry: the logger validates each call once and hands the same finite
values to every sink it opened, so TensorBoard, Weights & Biases and MLflow
cannot disagree with each other or with the JSONL record; a new sink is one
class with the protocol below and one entry in :data:`SINKS`, not another
branch in the logger. A sink is named after the ``tracking`` key that turns
it on, which is also how errors name it.

Each sink's package is imported only when a logger opens it, so recipes that
leave the optional sinks off (the default) never import W&B or MLflow, and
:func:`missing_modules` answers "is it installed?" without importing either,
for the recipe check at load (``pagerl.app.recipes``).

Layout inside the run directory::

    <run_dir>/tensorboard/         TensorBoard event files, tags "<stage>/<name>"
    <run_dir>/wandb/offline-run-*  one W&B run per logger and stage (offline mode)
    <run_dir>/mlflow/mlflow.db     MLflow's SQLite store (when tracking.mlflow_uri is empty)
    <run_dir>/mlflow/runs.json     the MLflow run of each stage, continued by later loggers

Every sink names a stage's run ``<run_dir name>-<stage>`` and records the
run's resolved recipe (``<run_dir>/recipe.yaml``, flattened to dotted keys)
as its config or parameters when it starts that run.
"""

from __future__ import annotations

import importlib.util
import json
import re
import time
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Mapping, Protocol, Sequence, Tuple, TypeVar

from pagerl.errors import PageRLError

TENSORBOARD_DIR = "tensorboard"
WANDB_DIR = "wandb"  # the folder W&B itself makes in init(dir=run_dir)
MLFLOW_DIR = "mlflow"
RECIPE_FILE = "recipe.yaml"
TRACKING_EXTRA = "pip install -e '.[tracking]'"
WANDB_MODES = ("offline", "online")
# MLflow refuses larger batches (mlflow.utils.validation).
_MLFLOW_PARAMS_PER_BATCH = 100
_MLFLOW_METRICS_PER_BATCH = 1000
_MLFLOW_PARAM_CHARS = 6000
# MLflow stores whose URI scheme needs SQLAlchemy and Alembic (the "tracking" extra has them).
_DATABASE_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")
_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.\-]*):")

T = TypeVar("T")


class Sink(Protocol):
    """What the logger needs of a sink; ``values`` holds finite floats only."""

    def log(self, stage: str, step: int, values: Mapping[str, float]) -> None: ...

    def close(self) -> None: ...


class SinkStartError(PageRLError):
    """A sink that a recipe turned on could not start: a misconfiguration, shown before training runs."""


def metric_tag(stage: str, name: str) -> str:
    """The one name a metric has in every sink: ``<stage>/<name>``."""
    return f"{stage}/{name}"


def run_name(run_dir: Path, stage: str) -> str:
    return f"{run_dir.name}-{stage}"


def recipe_params(run_dir: Path) -> Dict[str, Any]:
    """The run's resolved recipe as flat ``section.key -> value`` (lists as JSON); {} without one."""
    path = run_dir / RECIPE_FILE
    if not path.is_file():
        return {}
    import yaml

    return _flatten(yaml.safe_load(path.read_text(encoding="utf-8")) or {})


def _flatten(node: Mapping[str, Any], prefix: str = "") -> Dict[str, Any]:
    flat: Dict[str, Any] = {}
    for key, value in node.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, name + "."))
        elif isinstance(value, (list, tuple)):
            flat[name] = json.dumps(value)
        else:
            flat[name] = value
    return flat


def _chunks(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


class TensorBoardSink:
    """Scalars as TensorBoard events under ``<run_dir>/tensorboard``, tags ``<stage>/<name>``."""

    @staticmethod
    def modules(cfg: Any) -> Tuple[str, ...]:
        return ()  # torch and tensorboard are core dependencies

    def __init__(self, run_dir: Path, cfg: Any = None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self._writer = SummaryWriter(log_dir=str(run_dir / TENSORBOARD_DIR))

    def log(self, stage: str, step: int, values: Mapping[str, float]) -> None:
        for name, value in values.items():
            self._writer.add_scalar(metric_tag(stage, name), value, global_step=step)
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


class _RunPerStage:
    """A tracker that keeps one run per stage, started when the stage first logs.

    Lazily: a logger learns its stage from its first :meth:`log` call, and a
    logger that never logs leaves no empty run behind.
    """

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self._params = recipe_params(run_dir)
        self._runs: Dict[str, Any] = {}

    def log(self, stage: str, step: int, values: Mapping[str, float]) -> None:
        if stage not in self._runs:
            self._runs[stage] = self._start(stage)
        self._write(self._runs[stage], stage, step, values)

    def close(self) -> None:
        runs, self._runs = self._runs, {}
        for run in runs.values():
            self._end(run)

    def _start(self, stage: str) -> Any:
        raise NotImplementedError

    def _write(self, run: Any, stage: str, step: int, values: Mapping[str, float]) -> None:
        raise NotImplementedError

    def _end(self, run: Any) -> None:
        raise NotImplementedError


class WandbSink(_RunPerStage):
    """Weights & Biases: one W&B run per logger and stage, grouped by the run directory's name.

    A run per logger rather than one per stage: an offline W&B run cannot be
    continued by a later process (a resumed stage, the RM stage's quality
    logger), so each writes its own ``offline-run-*`` directory, and
    ``group``/``job_type`` (run name, stage) keep them together in the W&B
    UI once synced. The x axis of a stage's metrics is its own
    ``<stage>/step`` (``define_metric``), not W&B's call counter, so a resumed
    stage that logs earlier steps again is plotted where those steps are.

    Settings, all passed explicitly rather than read from the environment:
    the mode is passed to ``wandb.setup`` too, because W&B's process-wide
    settings, not the run's, decide whether its usage analytics contact the
    server (with an offline ``init`` alone W&B 0.31 still looked up its
    default server); console capture is off so W&B does not wrap the
    stdout/stderr that PageRL routes to its run log; system-metric sampling,
    machine, git and code probes are off so the sink adds no background
    work beside training and sends nothing but the metrics and the recipe.
    """

    @staticmethod
    def modules(cfg: Any) -> Tuple[str, ...]:
        return ("wandb",)

    def __init__(self, run_dir: Path, cfg: Any) -> None:
        import wandb

        super().__init__(run_dir)
        self._wandb = wandb
        self._mode = cfg.wandb_mode
        if self._mode not in WANDB_MODES:
            raise ValueError(f"tracking.wandb_mode must be one of {', '.join(WANDB_MODES)}, got {self._mode!r}")
        self._settings = wandb.Settings(
            mode=self._mode, project=cfg.wandb_project, console="off", quiet=True,
            x_disable_stats=True, x_disable_meta=True, x_disable_machine_info=True,
            save_code=False, disable_git=True, disable_job_creation=True,
        )
        wandb.setup(settings=self._settings)

    def _start(self, stage: str) -> Any:
        run = self._wandb.init(
            dir=str(self.run_dir), project=self._settings.project, mode=self._mode,
            name=run_name(self.run_dir, stage), group=self.run_dir.name, job_type=stage,
            config=self._params, settings=self._settings, reinit="create_new",
        )
        run.define_metric(metric_tag(stage, "step"))
        run.define_metric(metric_tag(stage, "*"), step_metric=metric_tag(stage, "step"))
        return run

    def _write(self, run: Any, stage: str, step: int, values: Mapping[str, float]) -> None:
        row = {metric_tag(stage, name): value for name, value in values.items()}
        row[metric_tag(stage, "step")] = step
        run.log(row)

    def _end(self, run: Any) -> None:
        run.finish()


def mlflow_default_uri(run_dir: Path) -> str:
    """The SQLite store under the run directory: MLflow 3 refuses plain ``file:`` stores by default."""
    return "sqlite:///" + str(Path(run_dir).absolute() / MLFLOW_DIR / "mlflow.db")


def _is_database(uri: str) -> bool:
    match = _SCHEME.match(uri)
    return not uri or (match is not None and match.group(1).split("+")[0].lower() in _DATABASE_SCHEMES)


class MlflowSink(_RunPerStage):
    """MLflow: one MLflow run per stage, continued by every later logger of that stage.

    Through ``MlflowClient`` rather than ``mlflow.start_run``: the fluent API
    keeps one active run per process in global state, and a logger may hold
    several stages' runs. The run id of each stage is kept in
    ``<run_dir>/mlflow/runs.json``, so the RM stage's quality figures and a
    resumed stage land in the run the stage started (MLflow's metric history
    takes steps in any order); an id the store does not know (a new
    ``tracking.mlflow_uri``, a deleted run) starts a new run.
    """

    @staticmethod
    def modules(cfg: Any) -> Tuple[str, ...]:
        return ("mlflow", "sqlalchemy", "alembic") if _is_database(cfg.mlflow_uri) else ("mlflow",)

    def __init__(self, run_dir: Path, cfg: Any) -> None:
        from mlflow.tracking import MlflowClient

        super().__init__(run_dir)
        local = not cfg.mlflow_uri
        (run_dir / MLFLOW_DIR).mkdir(parents=True, exist_ok=True)
        self._client = MlflowClient(tracking_uri=mlflow_default_uri(run_dir) if local else cfg.mlflow_uri)
        self._ids_file = run_dir / MLFLOW_DIR / "runs.json"
        self._experiment_id = self._experiment(cfg.mlflow_experiment, local)

    def _experiment(self, name: str, local: bool) -> str:
        experiment = self._client.get_experiment_by_name(name)
        if experiment is None:
            # Artifacts of the run directory's own store stay in it, not under the current directory.
            artifacts = (self.run_dir / MLFLOW_DIR / "artifacts").absolute().as_uri() if local else None
            return self._client.create_experiment(name, artifact_location=artifacts)
        if experiment.lifecycle_stage != "active":
            raise ValueError(f"MLflow experiment {name!r} is deleted; restore it or set tracking.mlflow_experiment")
        return experiment.experiment_id

    def _known_ids(self) -> Dict[str, str]:
        return json.loads(self._ids_file.read_text()) if self._ids_file.is_file() else {}

    def _continue(self, run_id: str) -> bool:
        from mlflow.exceptions import MlflowException

        try:
            run = self._client.get_run(run_id)
        except MlflowException:
            return False
        return run.info.experiment_id == self._experiment_id and run.info.lifecycle_stage == "active"

    def _start(self, stage: str) -> str:
        from mlflow.entities import Param

        ids = self._known_ids()
        if stage in ids and self._continue(ids[stage]):
            self._client.update_run(ids[stage], status="RUNNING")
            return ids[stage]
        run_id = self._client.create_run(
            self._experiment_id, run_name=run_name(self.run_dir, stage),
            tags={"pagerl.run": self.run_dir.name, "pagerl.stage": stage, "pagerl.run_dir": str(self.run_dir)},
        ).info.run_id
        params = [Param(key, str(value)[:_MLFLOW_PARAM_CHARS]) for key, value in self._params.items()]
        for batch in _chunks(params, _MLFLOW_PARAMS_PER_BATCH):
            self._client.log_batch(run_id, params=batch)
        ids[stage] = run_id
        self._ids_file.write_text(json.dumps(ids, indent=2))
        return run_id

    def _write(self, run_id: str, stage: str, step: int, values: Mapping[str, float]) -> None:
        from mlflow.entities import Metric

        now_ms = int(time.time() * 1000)
        metrics = [Metric(metric_tag(stage, name), value, now_ms, step) for name, value in values.items()]
        for batch in _chunks(metrics, _MLFLOW_METRICS_PER_BATCH):
            self._client.log_batch(run_id, metrics=batch)

    def _end(self, run_id: str) -> None:
        self._client.set_terminated(run_id)


# Every sink class, by the tracking key that turns it on (tracking.<name>: true). A class is
# called as cls(run_dir, tracking_cfg) and answers cls.modules(tracking_cfg).
SINKS: Dict[str, type] = {
    "tensorboard": TensorBoardSink,
    "wandb": WandbSink,
    "mlflow": MlflowSink,
}


def missing_modules(name: str, cfg: Any) -> List[str]:
    """Modules sink ``name`` needs with settings ``cfg`` that cannot be imported (none are imported here)."""
    return [module for module in SINKS[name].modules(cfg) if not _importable(module)]


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def open_sinks(run_dir: Path, names: Iterable[str], cfg: Any) -> Dict[str, Sink]:
    """Start sinks ``names``; a sink that cannot start closes those started and raises SinkStartError."""
    opened: Dict[str, Sink] = {}
    for name in names:
        try:
            opened[name] = SINKS[name](run_dir, cfg)
        except Exception as err:
            for sink in opened.values():
                sink.close()
            hint = f" (install it: {TRACKING_EXTRA})" if isinstance(err, ImportError) else ""
            raise SinkStartError(
                f"tracking.{name}: the {name} sink could not start for {run_dir}: "
                f"{type(err).__name__}: {err}{hint}"
            ) from err
    return opened
