"""``pisa-train --doctor [CONFIG]``: what this machine has, and whether a config's needs are in place.

It reports the versions of Python, torch (and its CUDA), mmcv, mmdet and mmengine;
whether mmcv's compiled ops have CPU and CUDA kernels (and which RoIAlign/NMS kernels
``--ops-backend auto`` would use); the GPUs and their memory; free disk in the work dir;
and, given a config, whether its dataset files and pretrained weights are where the run
will look for them (a downloaded checkpoint is verified against the SHA-256 prefix in its
name, as fetch/weights.py verifies it). It changes nothing and downloads nothing. Anything
the config needs that is missing makes it exit with ENVIRONMENT_ERROR (6) after the whole report.
"""
from __future__ import annotations

import os
import platform
import shutil
from dataclasses import dataclass
from pathlib import Path

from pisa_train.data.presence import GET_DATA_HINT, dataset_paths
from pisa_train.engine.device import MMCV_LITE, choose_ops_backend, mmcv_kernels
from pisa_train.errors import CheckpointError, EnvironmentProblem, UsageError
from pisa_train.fetch.weights import (
    WEIGHTS_SHA256_ENV,
    cached_checkpoint_path,
    cached_file_problem,
    check_mirrors,
    config_checkpoints,
    expected_sha256,
    is_remote,
    weights_name,
)


@dataclass
class Finding:
    topic: str
    detail: str
    problem: str | None = None  # what is missing and how to fix it; None when fine

    def line(self) -> str:
        mark = "ok" if self.problem is None else "MISSING"
        return f"{mark:8s}{self.topic}: {self.detail}" + (f" -- {self.problem}" if self.problem else "")


def _version(module_name: str) -> str:
    try:
        module = __import__(module_name)
    except Exception as error:  # noqa: BLE001 - a broken install is what the doctor is for
        return f"not importable ({type(error).__name__}: {error})"
    return getattr(module, "__version__", "unknown version")


def environment_findings() -> list[Finding]:
    import torch

    findings = [Finding("python", f"{platform.python_version()} ({platform.platform()})"),
                Finding("torch", f"{torch.__version__}, built with "
                                 f"{'CUDA ' + torch.version.cuda if torch.version.cuda else 'no CUDA'}")]
    findings += [Finding(name, _version(name)) for name in ("torchvision", "mmcv", "mmdet", "mmengine")]
    kernels = mmcv_kernels()
    if kernels.description == MMCV_LITE:  # the default set-up: nothing compiled, nothing to fix
        findings.append(Finding("mmcv ops", MMCV_LITE))
    else:
        findings.append(Finding("mmcv ops", f"compiled; CPU kernels: {'yes' if 'cpu' in kernels.devices else 'no'}; "
                                            f"CUDA kernels: {'yes' if 'cuda' in kernels.devices else 'no'} "
                                            f"({kernels.description})",
                                None if kernels.devices else "mmcv's compiled ops do not load; set up again with "
                                                             "`make setup` (mmcv-lite) or `make setup MMCV=compiled`"))
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if gpus:
        for index in range(gpus):
            props = torch.cuda.get_device_properties(index)
            findings.append(Finding(f"GPU {index}", f"{props.name}, {props.total_memory / 2**30:.1f} GiB, "
                                                    f"compute capability {props.major}.{props.minor}"))
    else:
        findings.append(Finding("GPUs", f"none visible (CUDA_VISIBLE_DEVICES="
                                        f"{os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>')}); runs use the CPU"))
    device = "cuda" if gpus else "cpu"
    findings.append(Finding("RoIAlign/NMS kernels",
                            f"--ops-backend auto uses {choose_ops_backend('auto', device, kernels)}'s on {device}"))
    return findings


def free_disk_finding(work_dir: str) -> Finding:
    folder = Path(work_dir).resolve()
    while not folder.exists():  # the work dir is created by the run: measure the disk it will be on
        folder = folder.parent
    usage = shutil.disk_usage(folder)
    return Finding("free disk", f"{usage.free / 2**30:.1f} GiB free of {usage.total / 2**30:.1f} GiB at {folder} "
                                f"(work dir {work_dir})")


def weights_findings(cfg, environ=os.environ) -> list[Finding]:
    """Each checkpoint the config starts from: a local file that exists, or a download that is in the
    torch hub cache and matches its pin, the record of its first download or the SHA-256 prefix in its
    name, checked as the downloader checks it, with what that check is worth; and the weight mirrors."""

    references = config_checkpoints(cfg)
    if not references:
        return [Finding("pretrained weights", "none: the config trains from scratch")]
    findings = []
    try:
        check_mirrors(environ)
    except UsageError as error:
        findings.append(Finding("weight mirrors", environ.get("PISA_TRAIN_WEIGHT_MIRRORS", ""), str(error)))
    for setting, reference in references:
        topic = "checkpoint (load_from)" if setting == "load_from" else "pretrained weights"
        if not is_remote(reference):
            findings.append(Finding(topic, reference, None if Path(reference).is_file() else "file not found"))
            continue
        try:
            place = cached_checkpoint_path(reference, environ)
        except CheckpointError as error:
            findings.append(Finding(topic, reference, str(error)))
            continue
        fetch = f"run `pisa-data weights --only {weights_name(reference)}`"
        if not place.is_file():
            problem = f"not downloaded yet; a run with network downloads it, or {fetch} (needed offline)"
        else:
            problem = cached_file_problem(place, environ)
            problem = problem and f"it is not the file its name promises ({problem}); delete it and {fetch}"
        # What each check is worth: a full SHA-256 stops a forged file, the 8 hex digits of a name only corruption.
        expected = expected_sha256(place, environ) if place.is_file() and not problem else None
        verified = "" if expected is None else f", full SHA-256 {expected.check}" if expected.full else \
            (f", SHA-256 starts with the {expected.digest} in its name (catches corruption, not a forged file: "
             f"pin it with {WEIGHTS_SHA256_ENV})")
        findings.append(Finding(topic, f"{reference} -> {place}{verified}", problem))
    return findings


def dataset_findings(cfg) -> list[Finding]:
    if cfg.get("synthetic_dataset"):
        return [Finding("dataset", f"synthetic, generated into {cfg.get('data_root')} on first use")]
    paths = dataset_paths(cfg)
    if not paths:
        return [Finding("dataset", "the config names no dataset files")]
    return [Finding("dataset", f"{setting} = {path}",
                    None if os.path.exists(path) else f"not found; {GET_DATA_HINT}")
            for setting, path in paths]


def run_doctor(cfg=None, work_dir: str = ".", print_line=print) -> None:
    """Print the report; raise EnvironmentProblem (after printing) if the config lacks something."""
    findings = environment_findings()
    findings.append(free_disk_finding(cfg.work_dir if cfg is not None else work_dir))
    if cfg is not None:
        print_line(f"config: {cfg.filename}")
        findings += dataset_findings(cfg) + weights_findings(cfg)
    for finding in findings:
        print_line(finding.line())
    problems = [finding for finding in findings if finding.problem]
    if problems:
        raise EnvironmentProblem(f"{len(problems)} thing(s) this run needs are missing; first: "
                                 f"{problems[0].topic}: {problems[0].detail} -- {problems[0].problem}")
