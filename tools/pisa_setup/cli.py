"""The set-up's command line (``tools/setup_env.py``, ``make setup``): the steps in their order, each skipped
when already done, and the one place that turns a failed step into ``[setup] error: ...`` and exit code 1."""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

from . import __doc__ as PACKAGE_DOC
from . import wheelhouse
from .compiled_mmcv import mmcv_build_plan, obtain_mmcv_wheel
from .context import SetupContext, say
from .messages import SetupFailed
from .pins import MMCV_CHOICES, check_python_version, compiled_mmcv_version, read_pins
from .venv import create_venv, describe_torch, install_build_tools, install_packages, install_torch, system_torch
from .verify import verify_environment

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_DIR.parent.parent
ENTRY_SCRIPT = REPO_ROOT / "tools" / "setup_env.py"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tools/setup_env.py", description=PACKAGE_DOC.splitlines()[0],
        epilog="docs/getting_started.md: 'Set-up', 'Offline install', 'Compiled mmcv', 'Python versions'.")
    parser.add_argument("--venv", type=Path, default=REPO_ROOT / ".venv",
                        help="the virtual environment to create or update (default: .venv/ in the repository)")
    parser.add_argument("--mmcv", choices=MMCV_CHOICES, default="lite",
                        help="lite (default): mmcv-lite, with RoIAlign, NMS and nms_match from torchvision and "
                             "torch, nothing compiled; compiled: mmcv with its compiled ops, built from the sdist "
                             "once and cached (5 to 25 minutes, needs a C++ compiler; nvcc for CUDA kernels)")
    parser.add_argument("--offline", metavar="DIR", type=Path,
                        help="install from this wheelhouse alone (pip --no-index); see --wheelhouse")
    parser.add_argument("--use-system-torch", action="store_true",
                        help="use the torch and torchvision of the Python running this script instead of "
                             "installing torch: the venv sees its packages")
    group = parser.add_argument_group("writing a wheelhouse (on a machine with the package index)")
    group.add_argument("--wheelhouse", metavar="DIR", type=Path,
                       help="write every file the install needs except torch/torchvision into DIR, with "
                            "manifest.json, and install nothing")
    group.add_argument("--target-has", metavar="FREEZE", type=Path,
                       help="the target's `pip freeze` output: leave out the packages it lists and resolve "
                            "the rest against their versions")
    group.add_argument("--target-python", metavar="X.Y", default="{}.{}".format(*sys.version_info[:2]),
                       help="the target's Python (default: this one's, %(default)s)")
    return parser


def setup_sources() -> list[str]:
    """The set-up's own code: a changed set-up redoes the install even where the request is the same."""
    return [path.read_text() for path in (ENTRY_SCRIPT, *sorted(PACKAGE_DIR.glob("*.py"))) if path.is_file()]


def main(argv: list[str] | None = None) -> int:
    started = time.monotonic()
    args = build_parser().parse_args(argv)
    try:
        check_python_version()
        pins = read_pins(REPO_ROOT)
        if args.wheelhouse:
            wheelhouse.write_for_target(pins, args.wheelhouse, mmcv=args.mmcv, target_has_file=args.target_has,
                                        target_python=args.target_python)
            return 0
        ctx = SetupContext(repo_root=REPO_ROOT, venv=args.venv.resolve(), pins=pins,
                           offline_from=args.offline.resolve() if args.offline else None)
        if ctx.offline_from:
            manifest = wheelhouse.verify(ctx.offline_from)
            say(f"installing offline from {args.offline} ({len(manifest['files'])} files, checked against "
                f"their SHA-256 in {wheelhouse.MANIFEST})")
        found_torch = system_torch(pins) if args.use_system_torch else None
        if ctx.offline_from and not found_torch and not list(ctx.offline_from.glob("torch-*.whl")):
            raise SetupFailed(f"--offline {args.offline} without --use-system-torch needs torch and torchvision "
                              f"wheels, and a wheelhouse leaves them out: add --use-system-torch to use the "
                              f"machine's torch, or copy torch=={pins.torch} and torchvision=="
                              f"{pins.torchvision} wheels into {args.offline}")
        wanted = {"pins": asdict(pins), "mmcv": args.mmcv, "python": sys.version.split()[0],
                  "system_torch": found_torch, "offline": str(ctx.offline_from) if ctx.offline_from else None,
                  "pyproject": (REPO_ROOT / "pyproject.toml").read_text(), "setup_scripts": setup_sources()}
        if ctx.stamp.exists() and ctx.venv_python.exists():
            recorded = json.loads(ctx.stamp.read_text())
            if recorded.get("wanted") == wanted:
                say(f"environment in {ctx.shown_path(ctx.venv)}/ is up to date "
                    f"(torch {found_torch['torch'] if found_torch else pins.torch}, mmcv "
                    f"{compiled_mmcv_version(pins)} {'compiled' if args.mmcv == 'compiled' else '(mmcv-lite)'}, "
                    f"mmdet {pins.pinned['mmdet']})")
                return 0
            ctx.stamp.unlink()
        create_venv(ctx, args.use_system_torch)
        install_build_tools(ctx, args.mmcv)
        if found_torch:
            say(f"using the system's torch {found_torch['torch']} and torchvision {found_torch['torchvision']} "
                f"(CUDA {found_torch['cuda'] or 'none'}) from {sys.executable}")
        else:
            install_torch(ctx)
        torch_info = describe_torch(ctx)
        wheel = None
        if args.mmcv == "compiled":
            plan = mmcv_build_plan(torch_info, pins)
            if torch_info["gpu"] and not plan["with_cuda"]:
                say(f"a GPU is visible but mmcv gets CPU ops only ({plan['cpu_only_reason']}); on the GPU, "
                    f"--ops-backend auto (the default) runs torchvision's RoIAlign and NMS instead of mmcv's")
            wheel = obtain_mmcv_wheel(ctx, plan)
        install_packages(ctx, wheel, torch_info)
        report = verify_environment(ctx, args.mmcv)
        ctx.stamp.write_text(json.dumps({"wanted": wanted, "installed": report,
                                         "mmcv_wheel": str(wheel) if wheel else None}, indent=1))
        kernels = report.get("mmcv_kernels") or ("compiled; CUDA ops: " + (
            "yes, checked on the GPU" if report["cuda_ops_checked_on_gpu"] else
            "yes" if report["mmcv_cuda_ops"] else "no"))
        say(f"done in {(time.monotonic() - started) / 60:.1f} min: torch {report['torch']}, mmcv {report['mmcv']} "
            f"(kernels: {kernels}), "
            f"mmdet {report['mmdet']}, mmengine {report['mmengine']}")
        return 0
    except (SetupFailed, wheelhouse.WheelhouseProblem) as error:
        print(f"[setup] error: {error}", file=sys.stderr)
        return 1
    except subprocess.CalledProcessError as error:
        print(f"[setup] error: `{' '.join(map(str, error.cmd))}` failed with exit code {error.returncode}; "
              f"see its output above", file=sys.stderr)
        return 1
