"""MLflow tracking for one run (the only module, with its package, that imports mlflow).

Where runs go: ``tracking.tracking_uri`` from the config, else ``$MLFLOW_TRACKING_URI``, else
``sqlite:///mlflow.db`` in the working directory (MLflow 3.13+ refuses the plain ``./mlruns``
file store). With the sqlite default, artifacts land in ``./mlruns/`` beside it.

What a run holds: the resolved config as readable params (no ``None``s; the attack grid as one
``eval.attacks`` param of labels) and whole as ``config.yaml``; per-epoch metrics (step = epoch)
and the evaluation's metrics, named and in the unit of :mod:`rkd.evaluation.metric_names`
(hierarchical, accuracies in percent), with its robustness curves as stepped series; the
datasets it trained and was tested on (``mlflow.log_input``); ``results.json``, ``results.md``
and the figures; the final model in MLflow's ``pt2`` format (``torch.export``: loading needs
torch, not rkd) with a signature and an input example; tags ``rkd.role``, ``rkd.label``,
``rkd.method``, ``rkd.dataset``, ``rkd.run_dir``, the teacher's and source's run ids. Only rank 0
logs (others get a disabled tracker). A run whose body raises ends ``FAILED``.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from pathlib import Path

from rkd.config.loader import dump_config
from rkd.engine.callbacks import Callback
from rkd.evaluation.metric_names import epoch_metrics, stepped_metrics, summary_metrics, worst_case_label
from rkd.interrupt import STOPPED
from rkd.tracking.source_tags import source_tags

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
PARENT_TAG = "mlflow.parentRunId"
#: a run's (or an experiment's) description in the MLflow UI
NOTE_TAG = "mlflow.note.content"
#: a tracking server that stops answering costs a request at most about a minute (MLflow's
#: defaults, 7 retries with backoff 2 and 120 s timeouts, stall a run for minutes); set the
#: variables to override
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "4")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
#: the MLflow 3 UI's model-training mode (its URL parameter; the default is the GenAI view)
UI_MODE = "workflowType=machine_learning"
#: where a run whose tracking store failed keeps what it could not log (one JSON object a line)
BACKLOG_FILE = "tracking_backlog.jsonl"


def resolve_tracking_uri(configured: str | None = None) -> str:
    return configured or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def _client(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


def get_or_create_experiment(client, name: str) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    try:
        return client.create_experiment(name)
    except Exception:  # created concurrently by another process
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def prepare_store(tracking) -> None:
    """Create the store's tables and the experiment now, in one process: several processes that
    open a new sqlite store at once race to create its tables and fail (``table ... already
    exists``) -- a driver calls this before it starts concurrent runs."""
    if tracking.enabled:
        get_or_create_experiment(_client(resolve_tracking_uri(tracking.tracking_uri)), tracking.experiment)


def note_text(markdown: str, whole: str, limit: int = 7900) -> str:
    """``markdown`` as a run note: cut to fit MLflow's tag length, saying where the rest is."""
    if len(markdown) <= limit:
        return markdown
    return markdown[:limit - 120].rsplit("\n", 1)[0] + f"\n\n... (cut to MLflow's tag length; all of it: {whole})"


class MlflowRun:
    """One MLflow run, used as a context manager.

    Args:
        tracking: the ``tracking`` config section (enabled, tracking_uri, experiment, log_model).
        run_name: display name.
        tags: extra tags.
        parent_run_id: makes this a nested run (``mlflow.parentRunId``).
        run_id: reopen an existing run (a resumed training run).
        rank: only rank 0 logs; other ranks get a no-op object.
    """

    def __init__(self, tracking, *, run_name: str, tags: dict | None = None, parent_run_id: str | None = None,
                 run_id: str | None = None, rank: int = 0):
        self.enabled = bool(tracking.enabled) and rank == 0
        self.uri = resolve_tracking_uri(tracking.tracking_uri)
        self.experiment = tracking.experiment
        self.log_model_enabled = tracking.log_model
        self.run_name, self.tags, self.parent_run_id = run_name, dict(tags or {}), parent_run_id
        self.run_id = run_id
        self.client = None
        self.gap: dict | None = None  # set when the store failed mid-run: the run went on untracked
        #: seconds between system-metric samples; None: not monitored
        self.system_metrics_interval = tracking.system_metrics_interval_s if tracking.system_metrics else None
        self._monitor = None

    # ------------------------------------------------------------------- lifecycle
    def __enter__(self) -> "MlflowRun":
        if not self.enabled:
            return self
        self.client = _client(self.uri)
        if self.run_id is None:
            exp_id = get_or_create_experiment(self.client, self.experiment)
            tags = {**source_tags(), **{k: str(v) for k, v in self.tags.items()}}
            if self.parent_run_id:
                tags[PARENT_TAG] = self.parent_run_id
            self.run_id = self.client.create_run(exp_id, run_name=self.run_name, tags=tags).info.run_id
        else:
            self.client.update_run(self.run_id, status="RUNNING")
        if self.system_metrics_interval:
            self._monitor = self._call("system metrics", _start_system_metrics, self.run_id, self.uri,
                                       self.system_metrics_interval)
        return self

    def __exit__(self, exc_type, exc, tb):
        if self._monitor is not None:
            self._monitor.finish()
        if self.enabled and self.run_id:
            # stopped from outside (Ctrl-C, a Tune scheduler ending the trial): KILLED, not FAILED
            stopped = exc_type is not None and issubclass(exc_type, STOPPED)
            if exc_type is None:
                self._call("end", self.client.set_terminated, self.run_id, status="FINISHED",
                           record={"status": "FINISHED"})
            else:  # a run the sweep driver already ended (KILLED: its trial was stopped) stays so
                status = "KILLED" if stopped else "FAILED"
                self._call("end", _end_if_running, self.client, self.run_id, status, f"{exc_type.__name__}: {exc}",
                           record={"status": status})
        return False

    def _call(self, what: str, fn, *args, record: dict | None = None, **kwargs):
        """One request to the store. If it fails, the run goes on without tracking: one warning,
        :attr:`gap` set (the pipeline writes it into run.json), and this and every later record
        appended to ``RUN_DIR/tracking_backlog.jsonl`` (the run directory from the ``rkd.run_dir``
        tag) instead of being sent."""
        if self.gap is None:
            try:
                return fn(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - tracking must never end a run
                self.gap = {"since": time.strftime("%Y-%m-%dT%H:%M:%S"), "request": what,
                            "error": f"{type(exc).__name__}: {exc}"[:1000], "backlog": self._backlog_path()}
                warnings.warn(f"MLflow tracking at {self.uri} failed ({self.gap['error'][:200]}); the run goes on "
                              f"without it, what it could not log is kept in {self.gap['backlog']}", RuntimeWarning,
                              stacklevel=3)
        path = self._backlog_path()
        if path is not None:
            with open(path, "a") as f:
                f.write(json.dumps({"time": time.time(), "request": what, "run_id": self.run_id,
                                    **(record or {})}, default=str) + "\n")
        return None

    def _backlog_path(self) -> str | None:
        run_dir = self.tags.get("rkd.run_dir")
        return str(Path(run_dir) / BACKLOG_FILE) if run_dir else None

    # ---------------------------------------------------------------------- logging
    def log_config(self, cfg) -> None:
        if not self.enabled:
            return
        from mlflow.entities import Param

        batch = [Param(k[:250], v[:6000]) for k, v in readable_params(cfg).items()]
        for i in range(0, len(batch), 100):
            self._call("params", self.client.log_batch, self.run_id, params=batch[i:i + 100],
                       record={"params": {p.key: p.value for p in batch[i:i + 100]}})
        self._call("config", self.client.log_text, self.run_id, dump_config(cfg), "config.yaml")

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.log_points([(k, v, step or 0) for k, v in metrics.items() if v is not None])

    def log_points(self, points: list[tuple[str, float, int]]) -> None:
        """(metric, value, step) points, e.g. a robustness curve, in batches of MLflow's limit."""
        if not self.enabled or not points:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, int(step)) for k, v, step in points]
        for i in range(0, len(batch), 1000):
            part = batch[i:i + 1000]
            self._call("metrics", self.client.log_batch, self.run_id, metrics=part,
                       record={"points": [[m.key, m.value, m.step] for m in part]})

    def set_tags(self, tags: dict) -> None:
        if self.enabled:
            for k, v in tags.items():
                self._call("tag", self.client.set_tag, self.run_id, k, str(v), record={"tags": {k: str(v)}})

    def log_results(self, results: dict, files: list[Path]) -> None:
        """Summary metrics (:func:`rkd.evaluation.metric_names.summary_metrics`: clean, each
        attack, the worst case per threat, the headline ``robust/accuracy``, times, JSMA and
        input gradients when evaluated), the robustness curves as stepped series, the
        masking-flag and headline tags, and the results files as artifacts (PNGs under
        ``figures/``)."""
        if not self.enabled:
            return
        self.log_metrics(summary_metrics(results))
        self.log_points(stepped_metrics(results))
        self.set_tags(result_tags(results))
        for f in files:
            self.log_artifact(f, "figures" if Path(f).suffix == ".png" else None)

    def describe(self, markdown: str, whole: str = "summary.md") -> None:
        """The run's description in the MLflow UI (its note); ``whole``: the artifact that holds
        all of it, named when it is cut to MLflow's tag length."""
        self.set_tags({NOTE_TAG: note_text(markdown, whole)})

    def describe_experiment(self, markdown: str) -> None:
        """The experiment's description in the MLflow UI, unless it has one already."""
        if not self.enabled:
            return
        exp = self.client.get_experiment_by_name(self.experiment)
        if exp is not None and NOTE_TAG not in exp.tags:
            self._call("experiment note", self.client.set_experiment_tag, exp.experiment_id, NOTE_TAG, markdown)

    def ui_link(self, host: str = "http://127.0.0.1:5000", table: bool = False) -> str | None:
        """The UI address of this run (``table``: of its experiment's runs table), on ``mlflow
        ui``'s default host, in the UI's model-training mode (MLflow 3 opens on its GenAI view)."""
        if not self.enabled or self.run_id is None:
            return None
        exp = self.client.get_experiment_by_name(self.experiment)
        if exp is None:
            return None
        page = "runs" if table else f"runs/{self.run_id}"
        return f"{host}/#/experiments/{exp.experiment_id}/{page}?{UI_MODE}"

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        if self.enabled:
            self._call("artifact", self.client.log_artifact, self.run_id, str(path), artifact_path,
                       record={"artifact": str(path), "artifact_path": artifact_path})

    def log_model(self, model, example=None) -> None:
        """The model in MLflow's ``pt2`` format (``torch.export``; loading needs torch only) with
        the signature and input example of ``example`` (a CPU batch of at least 2 inputs, so
        that the batch dimension stays dynamic). A model that does not export (or no example)
        is logged pickled with rkd's source bundled (``code_paths``), so it loads without rkd
        installed either. Tag ``rkd.model_format``: which one."""
        if not (self.enabled and self.log_model_enabled):
            return
        model = model.cpu().eval()

        def log():
            import mlflow

            mlflow.set_tracking_uri(self.uri)
            with mlflow.start_run(run_id=self.run_id):
                fmt = _log_model_pt2(model, example) if example is not None else None
                if fmt is None:
                    fmt = _log_model_pickle(model)
            self.set_tags({"rkd.model_format": fmt})

        self._call("model", log, record={"model": "model.pt in the run directory"})

    def log_datasets(self, datasets: list[dict]) -> None:
        """The data the run used, as MLflow dataset inputs (the run's Datasets column): each
        ``{"name", "digest", "context" (training, validation, test), "source", "profile"}``."""
        if self.enabled and datasets:
            self._call("datasets", self.client.log_inputs, self.run_id, dataset_inputs(datasets),
                       record={"datasets": datasets})

    def callback(self) -> "MlflowCallback":
        return MlflowCallback(self)


def dataset_inputs(datasets: list[dict]) -> list:
    """MLflow ``DatasetInput``s of :meth:`MlflowRun.log_datasets`'s records."""
    from mlflow.entities import Dataset, DatasetInput, InputTag

    return [DatasetInput(Dataset(d["name"], d["digest"], "local", json.dumps({"uri": d["source"]}),
                                 profile=json.dumps(d.get("profile") or {})),
                         [InputTag("mlflow.data.context", d["context"])]) for d in datasets]


def _start_system_metrics(run_id: str, uri: str, interval_s: float):
    """MLflow's system-metrics monitor of this process for ``run_id`` (``system/*`` metrics)."""
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    monitor = SystemMetricsMonitor(run_id, sampling_interval=interval_s, tracking_uri=uri)
    monitor.start()
    return monitor


def _log_model_pt2(model, example) -> str | None:
    """Log ``model`` as pt2 with ``example``'s signature; None (with a warning) if it does not export."""
    import mlflow.pytorch
    import torch
    from mlflow.models import infer_signature

    from rkd.engine.precision import legacy_tf32_flag

    try:
        with torch.no_grad():
            out = model(example)
        signature = infer_signature(example.numpy(), out.numpy())
        with warnings.catch_warnings(), legacy_tf32_flag():
            warnings.simplefilter("ignore", UserWarning)  # torch.export's notes on its own internals
            mlflow.pytorch.log_model(model, name="model", serialization_format="pt2", signature=signature,
                                     input_example=example.numpy(), pip_requirements=_requirements())
        return "pt2"
    except Exception as exc:  # noqa: BLE001 -- torch.export refuses some models: fall back to pickle
        warnings.warn(f"the model does not export to pt2 ({type(exc).__name__}: {str(exc)[:200]}); "
                      "it is logged pickled with rkd's source", RuntimeWarning, stacklevel=2)
        return None


def _log_model_pickle(model) -> str:
    import mlflow.pytorch

    import rkd

    mlflow.pytorch.log_model(model, name="model", serialization_format="pickle", pip_requirements=_requirements(),
                             code_paths=[str(Path(rkd.__file__).parent)])
    return "pickle"


def _requirements() -> list[str]:
    import torch

    return [f"torch=={torch.__version__.split('+')[0]}"]


def readable_params(cfg) -> dict[str, str]:
    """The config as MLflow params: dotted keys, no ``None`` (an unset option is not a value),
    each attack grid as one param of its labels (``eval.attacks``, ``eval.transfer.attacks``:
    ``FGSM 8/255; PGD-7 Linf 8/255``) and any other list as one JSON value; ``config.yaml``
    holds everything."""
    out = {k: v if isinstance(v, str) else json.dumps(v)
           for k, v in flatten_sections(cfg.model_dump(mode="json")).items() if v is not None}
    transfer = cfg.eval.transfer.attacks if cfg.eval.transfer is not None else []
    for key, attacks in (("eval.attacks", cfg.eval.attacks), ("eval.transfer.attacks", transfer)):
        if key in out:
            out[key] = "; ".join(a.label for a in attacks) or "none"
    return out


def flatten_sections(data, prefix: str = "") -> dict:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists (of sections or values) stay one value."""
    if not isinstance(data, dict):
        return {prefix[:-1]: data}
    out = {}
    for k, v in data.items():
        out.update(flatten_sections(v, f"{prefix}{k}."))
    return out


def result_tags(results: dict) -> dict[str, str]:
    """``rkd.masking_flags`` (flagged check names, ``none``, or ``not checked``) and
    ``rkd.headline`` (what ``acc.robust`` measures) of a results dict."""
    tags = {}
    if "checks" in results:
        flags = results.get("flags")
        tags["rkd.masking_flags"] = ("not checked" if results.get("checks") is None
                                     else ",".join(flags) if flags else "none")
    head = results.get("headline")
    if head:
        tags["rkd.headline"] = f"{worst_case_label(head['norm'], head['eps_label'])} (suite {head['suite']})"
    return tags


def absolute_tracking_uri(configured: str | None = None) -> str:
    """:func:`resolve_tracking_uri` with a relative sqlite path made absolute, so that processes
    with another working directory (Ray workers) write into the same database."""
    uri = resolve_tracking_uri(configured)
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri[len(prefix):].startswith("/"):
        uri = prefix + str(Path(uri[len(prefix):]).resolve())
    return uri


def create_run(tracking, run_name: str, *, tags: dict | None = None, parent_run_id: str | None = None,
               find_tag: tuple[str, str] | None = None) -> str | None:
    """Create an MLflow run and leave it RUNNING (for a driver that hands its id to workers);
    ``None`` when tracking is off. With ``find_tag=(key, value)`` an existing run of the same
    experiment (and parent) carrying that tag is returned instead -- a retried trial continues
    its run rather than starting a second one."""
    if not tracking.enabled:
        return None
    client = _client(resolve_tracking_uri(tracking.tracking_uri))
    exp_id = get_or_create_experiment(client, tracking.experiment)
    if find_tag is not None:
        query = f"tags.`{find_tag[0]}` = '{find_tag[1]}'"
        if parent_run_id:
            query += f" and tags.`{PARENT_TAG}` = '{parent_run_id}'"
        found = client.search_runs([exp_id], filter_string=query, max_results=1)
        if found:
            return found[0].info.run_id
    all_tags = {**source_tags(), **{k: str(v) for k, v in (tags or {}).items()}}
    if find_tag is not None:
        all_tags[find_tag[0]] = find_tag[1]
    if parent_run_id:
        all_tags[PARENT_TAG] = parent_run_id
    return client.create_run(exp_id, run_name=run_name, tags=all_tags).info.run_id


def end_run(tracking, run_id: str | None, status: str, error: str | None = None) -> None:
    """End a run that is still RUNNING with ``status`` (FINISHED, FAILED, KILLED). A run already
    ended keeps its status: a sweep trial the driver recorded KILLED (the scheduler stopped it)
    whose process then sees its Train controller die is not turned FAILED."""
    if not tracking.enabled or run_id is None:
        return
    _end_if_running(_client(resolve_tracking_uri(tracking.tracking_uri)), run_id, status, error)


def _end_if_running(client, run_id: str, status: str, error: str | None = None) -> None:
    if client.get_run(run_id).info.status != "RUNNING":
        return
    if error:
        client.set_tag(run_id, "rkd.error", error[:4000])
    client.set_terminated(run_id, status=status)


def end_tagged_runs(tracking, tag: str, value: str, status: str, extra_tags: dict | None = None) -> int:
    """End the RUNNING runs of the experiment carrying ``tag = value`` with ``status`` (e.g. a
    trial a scheduler stopped: its process is gone). Returns how many were ended."""
    if not tracking.enabled:
        return 0
    client = _client(resolve_tracking_uri(tracking.tracking_uri))
    exp = client.get_experiment_by_name(tracking.experiment)
    if exp is None:
        return 0
    runs = client.search_runs([exp.experiment_id], filter_string=f"tags.`{tag}` = '{value}'")
    n = 0
    for r in runs:
        if r.info.status == "RUNNING":
            for k, v in (extra_tags or {}).items():
                client.set_tag(r.info.run_id, k, str(v))
            client.set_terminated(r.info.run_id, status=status)
            n += 1
    return n


def finish_run(tracking, run_id: str | None, status: str, *, metrics: dict | None = None, tags: dict | None = None,
               artifacts: list | None = None) -> None:
    """Log final metrics, tags and artifacts (paths; PNGs go under ``figures/``) into a run
    (e.g. a sweep's parent) and end it."""
    if not tracking.enabled or run_id is None:
        return
    client = _client(resolve_tracking_uri(tracking.tracking_uri))
    for k, v in (metrics or {}).items():
        client.log_metric(run_id, k, float(v))
    for k, v in (tags or {}).items():
        client.set_tag(run_id, k, str(v))
    for a in artifacts or []:
        client.log_artifact(run_id, str(a), "figures" if Path(a).suffix == ".png" else None)
    client.set_terminated(run_id, status=status)


class MlflowCallback(Callback):
    """Logs every epoch's metrics with step = epoch number."""

    def __init__(self, run: MlflowRun):
        self.run = run

    def on_epoch_end(self, trainer, epoch, metrics):
        self.run.log_metrics(epoch_metrics(metrics), step=epoch + 1)
