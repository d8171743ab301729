"""Experiment trackers: MMEngine 0.10.7's visualization backends by the name ``--vis-backend`` takes,
and the package each one imports.

MMEngine imports a backend's package only when the first scalar is logged, so a missing package
would fail after the model, the datasets and the first iterations are built; ``require_tracker_packages``
checks them all before anything runs. Which keys of the config each one sets: config/rewrites.py's
``enable_vis_backends``.
"""
from __future__ import annotations

import importlib.util
import os
import time
from typing import NamedTuple

from pisa_train.errors import EnvironmentProblem, UsageError


class Tracker(NamedTuple):
    backend: str  # MMEngine's vis backend type
    module: str  # what it imports
    package: str  # what to install (pyproject.toml's `trackers` extra lists the same)


TRACKERS = {
    "tensorboard": Tracker("TensorboardVisBackend", "tensorboard", "tensorboard"),
    "wandb": Tracker("WandbVisBackend", "wandb", "wandb"),
    # mlflow-skinny is enough for a file store in the work dir and for a tracking server.
    "mlflow": Tracker("MLflowVisBackend", "mlflow", "mlflow-skinny"),
    "clearml": Tracker("ClearMLVisBackend", "clearml", "clearml"),
    "neptune": Tracker("NeptuneVisBackend", "neptune", "neptune"),
    "dvclive": Tracker("DVCLiveVisBackend", "dvclive", "dvclive"),
    "aim": Tracker("AimVisBackend", "aim", "aim"),
}


def known_tracker(name: str) -> Tracker:
    if name not in TRACKERS:
        raise UsageError(f"--vis-backend {name!r} is not one of MMEngine's backends; choose from "
                         f"{', '.join(TRACKERS)}")
    return TRACKERS[name]


def require_tracker_packages(names) -> None:
    """Each named tracker's package is importable, or one line naming the first that is not."""
    for name in names:
        tracker = known_tracker(name)
        if importlib.util.find_spec(tracker.module) is None:
            raise EnvironmentProblem(f"--vis-backend {name} needs the {tracker.package} package, which is not "
                                     f"installed in this environment; install it with `.venv/bin/pip install "
                                     f"{tracker.package}` (or all trackers: `pip install -e .[trackers]`)")


def allow_mlflow_file_store(cfg) -> None:
    """MLflow 3.x keeps its file store ("./mlruns") in maintenance mode and refuses it unless
    MLFLOW_ALLOW_FILE_STORE=true; its database store needs SQLAlchemy, which mlflow-skinny lacks. The store
    in WORK_DIR/mlruns (config/rewrites.py's ``enable_vis_backends``) is the one place a run's metrics go
    without a server, so a run that logs there opts in; a tracking URI the user set is left to MLflow."""
    backends = (cfg.get("visualizer") or {}).get("vis_backends") or []
    if any(backend.get("type", "").removeprefix("mmengine.") == "MLflowVisBackend"  # no URI: MMEngine's file store
           and str(backend.get("tracking_uri") or "file://").startswith("file://") for backend in backends):
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")


def log_evaluation_to_trackers(cfg, record: dict, say) -> None:
    """pisa-eval's COCO metrics (``record``: results/evaluation_analysis.py's, {"bbox": {"AP": ...}, ...}) to the
    config's trackers, as ``test/bbox_AP`` and so on, saying which.

    pisa-eval computes the metrics itself after MMEngine's test loop, whose visualizer (and so its trackers)
    MMEngine 0.10.7's LoggerHook has closed by then, and whose test metrics it sends to no tracker anyway.
    A second visualizer built from the config's own vis_backends logs them (MLflow: a run of its own)."""
    from mmengine.visualization import Visualizer

    backends = [backend for backend in (cfg.get("visualizer") or {}).get("vis_backends") or []
                if backend.get("type", "").removeprefix("mmengine.") != "LocalVisBackend"]
    if not backends:
        return
    visualizer = Visualizer(name=f"pisa-eval trackers {time.time()}", vis_backends=[dict(b) for b in backends],
                            save_dir=os.path.join(cfg.work_dir, "evaluation_" + time.strftime("%Y%m%d_%H%M%S")))
    visualizer.add_config(cfg)  # as the Runner does (MLflow's backend needs it to close)
    visualizer.add_scalars({f"test/{iou_type}_{name}": value for iou_type in ("bbox", "segm")
                            for name, value in (record.get(iou_type) or {}).items()
                            if isinstance(value, (int, float))}, step=0)
    visualizer.close()
    say(f"metrics logged to {', '.join(backend['type'] for backend in backends)}")
