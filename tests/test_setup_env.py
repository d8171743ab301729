"""tools/setup_env.py and its package tools/pisa_setup/: the Pythons it accepts, what it installs, the mmcv
sdist patches, the wheelhouse and (slow) real installs onto a machine's own torch: the default set-up with no compiler on PATH, `pip install` of the
package, and an offline install from a wheelhouse, each of which then runs mmcv's ops or trains the demo."""
from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
from pathlib import Path

import pytest
from conftest import REPO_ROOT
from local_http_server import LocalHTTPServer
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from pisa_setup import compiled_mmcv, package_index, wheelhouse  # tools/ (pyproject.toml's pytest pythonpath)
from pisa_setup.context import SetupContext
from pisa_setup.messages import SetupFailed
from pisa_setup.pins import check_python_version, package_requirements, read_pins

SETUP_ENV = REPO_ROOT / "tools" / "setup_env.py"


def _python(minor: int) -> str | None:
    """A Python 3.<minor> that runs: on PATH, or among pyenv's versions (whose shims need PYENV_VERSION)."""
    pyenv_root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    candidates = [shutil.which(f"python3.{minor}"),
                  *map(str, sorted(pyenv_root.glob(f"versions/3.{minor}.*/bin/python3.{minor}")))]
    for python in filter(None, candidates):
        if subprocess.run([python, "-c", "1"], capture_output=True).returncode == 0:
            return python
    return None


def test_pythons_outside_3_10_to_3_13_are_refused_with_the_ones_that_work():
    for accepted in ((3, 10, 13), (3, 11, 7), (3, 12, 1), (3, 13, 0)):
        check_python_version(accepted, python="py")
    with pytest.raises(SetupFailed) as old:
        check_python_version((3, 9, 18), python="/usr/bin/python3.9")
    assert str(old.value) == (
        "/usr/bin/python3.9 is Python 3.9.18; pisa-train needs Python 3.10 to 3.13 (torch 2.14 has no wheels for "
        "older Pythons, and pisa-train's code needs 3.10): run make setup PYTHON=python3.11")
    with pytest.raises(SetupFailed) as new:
        check_python_version((3, 14, 0), python="python3.14")
    assert str(new.value) == (
        "python3.14 is Python 3.14.0; the set-up is proven on Python 3.10 to 3.13 (docs/getting_started.md, 'Python versions'), "
        "and newer Pythons have broken mmcv 2.1.0's setup.py before (3.13's PEP 667): run make setup "
        "PYTHON=python3.11, or set PISA_TRAIN_UNTESTED_PYTHON=1 to try this one")


def test_an_old_python_is_refused_in_one_line_before_anything_is_created(tmp_path):
    """A real run of the script by a Python it refuses (one is found beside this one by pyenv, else the check
    runs with a version passed in above only)."""
    old = _python(9) or _python(8)
    if old is None:
        pytest.skip("no Python older than 3.10 on this machine to run the script with")
    result = subprocess.run([old, str(SETUP_ENV), "--venv", str(tmp_path / "venv")], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 1
    assert re.fullmatch(r"\[setup\] error: \S+ is Python 3\.[89]\.\d+; pisa-train needs Python 3\.10 to 3\.13 "
                        r"\(torch 2\.14 has no wheels for older Pythons, and pisa-train's code needs 3\.10\): run "
                        r"make setup PYTHON=python3\.11\n", result.stderr), result.stderr
    assert result.stdout == "" and not (tmp_path / "venv").exists()


def test_pyproject_is_read_on_python_3_10_without_tomllib_or_tomli():
    """Python 3.10 has no tomllib, and a fresh 3.10 no tomli: the set-up uses the tomli inside pip."""
    code = ("import sys; sys.modules['tomllib'] = None; sys.modules['tomli'] = None\n"
            "from pathlib import Path; from pisa_setup.pins import read_pins\n"
            f"pins = read_pins(Path({str(REPO_ROOT)!r})); print(pins.torch, pins.pinned['mmcv-lite'], pins.torch_floor)")
    # Run from tools/, as tools/setup_env.py imports the package: from its own folder.
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT / "tools", capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["2.14.1", "2.1.0", "2.1"]


PYPROJECT_WITH_EXTRAS = """
[project]
dependencies = ["mmdet==3.3.0", "mmcv-lite==2.1.0", "torch>=2.1", "torchvision>=0.16", "Pillow>=9.0"]

[project.optional-dependencies]
test = ["pytest>=8", "import-linter>=2.1"]
export = ["onnx>=1.16", "onnxruntime>=1.18"]
trackers = ["wandb>=0.16", "aim>=3.19"]
all = ["pisa-train[export,test]"]

[tool.pisa-train.setup]
torch = "2.14.1"
torchvision = "0.29.1"
build-setuptools = ">=77,<81"
test-dependencies = ["pytest>=8", "import_linter>=2.1", "selenium>=4.10"]
extras-left-out = ["trackers"]
"""


def test_every_extra_of_pyproject_is_installed_and_put_in_the_wheelhouse_once(tmp_path):
    """The set-up reads the extras from pyproject.toml, not from a list of its own: the export extra (onnx,
    onnxruntime) comes along with the test extra and the test dependencies, each distribution once; an
    extra naming pisa-train itself adds nothing, and one that extras-left-out names is not installed. torch
    is the set-up's own step; compiled mmcv replaces mmcv-lite. What is installed is what the wheelhouse
    holds (both use package_requirements)."""
    (tmp_path / "pyproject.toml").write_text(PYPROJECT_WITH_EXTRAS)
    pins = read_pins(tmp_path)
    assert pins.extras == {"test": ["pytest>=8", "import-linter>=2.1"], "export": ["onnx>=1.16", "onnxruntime>=1.18"],
                           "trackers": ["wandb>=0.16", "aim>=3.19"], "all": ["pisa-train[export,test]"]}
    assert pins.extras_left_out == ["trackers"]
    assert package_requirements(pins, "lite") == [
        "mmdet==3.3.0", "mmcv-lite==2.1.0", "Pillow>=9.0", "onnx>=1.16", "onnxruntime>=1.18", "pytest>=8",
        "import-linter>=2.1", "selenium>=4.10"]
    assert "mmcv-lite==2.1.0" not in package_requirements(pins, "compiled")


def test_the_real_pyproject_s_extras_are_all_installed_but_those_left_out():
    pins = read_pins(REPO_ROOT)
    assert set(pins.extras_left_out) <= set(pins.extras)  # no misspelt name that leaves nothing out
    installed = {canonicalize_name(Requirement(r).name) for r in package_requirements(pins, "lite")}
    assert {"onnx", "onnxruntime"} <= installed  # the export extra
    for extra, requirements in pins.extras.items():
        if extra in pins.extras_left_out:
            continue
        for requirement in map(Requirement, requirements):
            assert canonicalize_name(requirement.name) in installed | {"pisa-train"}, (extra, str(requirement))
    assert {canonicalize_name(Requirement(r).name) for r in pins.test_dependencies} <= installed


def test_the_set_up_keeps_its_state_in_one_context_not_in_globals_or_sys_path():
    """What one run works on travels as a SetupContext: no module rebinds a global, and nothing edits sys.path
    (tools/setup_env.py finds the package in its own folder; the tests through pytest's pythonpath)."""
    sources = {path: path.read_text() for path in [SETUP_ENV, *sorted((REPO_ROOT / "tools" / "pisa_setup").glob("*.py"))]}
    assert len(sources) >= 9
    for path, text in sources.items():
        assert not re.search(r"^\s*global\s", text, re.M), path
        assert "sys.path" not in text.replace("on sys.path", ""), path


@pytest.fixture(scope="module")
def mmcv_sdist():
    """mmcv 2.1.0's sdist as the set-up gets it (the cache, else the package index)."""
    return compiled_mmcv.mmcv_sdist(SetupContext(repo_root=REPO_ROOT, venv=REPO_ROOT / ".venv",
                                                 pins=read_pins(REPO_ROOT)))


def test_upstream_mmcv_2_1_0_setup_py_is_patched_for_cpp20_and_python_3_13(mmcv_sdist, tmp_path, monkeypatch):
    with tarfile.open(mmcv_sdist) as archive:
        archive.extractall(tmp_path, filter="data")
    source = tmp_path / "mmcv-2.1.0"
    original = (source / "setup.py").read_text()
    # Upstream as the patch expects it: C++17 and __version__ read back from locals() after exec.
    assert "-std=c++17" in original and "return locals()['__version__']" in original
    compiled_mmcv.patch_mmcv_setup_py(source / "setup.py")
    patched = (source / "setup.py").read_text()
    assert "c++17" not in patched and patched.count("-std=c++20") == 3
    get_version = re.search(r"def get_version\(\):.*?\n\n", patched, re.S).group(0)
    namespace: dict = {}
    exec(get_version, namespace)
    monkeypatch.chdir(source)  # get_version opens mmcv/version.py relative to the sdist
    assert namespace["get_version"]() == "2.1.0"
    # Why: on Python 3.13 the unpatched function fails, where this Python is there to show it.
    python313 = _python(13)
    if python313:
        unpatched = re.search(r"def get_version\(\):.*?\n\n", original, re.S).group(0)
        for code, expected in ((unpatched, "KeyError: '__version__'"), (get_version, "2.1.0")):
            run = subprocess.run([python313, "-c", code + "\nprint(get_version())"], cwd=source,
                                 capture_output=True, text=True)
            assert expected in run.stdout + run.stderr


def test_a_changed_sdist_is_reported_not_half_patched(tmp_path):
    setup_py = tmp_path / "setup.py"
    setup_py.write_text("extra_compile_args = ['-std=c++20']\n")
    with pytest.raises(SetupFailed, match="no longer names -std=c\\+\\+17; the mmcv sdist changed"):
        compiled_mmcv.patch_mmcv_setup_py(setup_py)
    assert setup_py.read_text() == "extra_compile_args = ['-std=c++20']\n"


# ---- the package index -------------------------------------------------------------------------

def test_the_sdist_comes_from_the_index_checked_against_its_sha256(tmp_path):
    payload = b"an sdist's bytes"
    digest = hashlib.sha256(payload).hexdigest()
    files = {
        "/simple/mmcv/": (f'<html><body><a href="../../files/mmcv-2.0.0.tar.gz#sha256={"0" * 64}">mmcv-2.0.0.tar.gz'
                          f'</a><a href="../../files/mmcv-2.1.0.tar.gz#sha256={digest}">mmcv-2.1.0.tar.gz</a>'
                          f'</body></html>').encode(),
        "/files/mmcv-2.1.0.tar.gz": payload,
        "/simple/broken/": f'<a href="/files/broken-1.0.tar.gz#sha256={"1" * 64}">broken-1.0.tar.gz</a>'.encode(),
        "/files/broken-1.0.tar.gz": payload,
    }
    with LocalHTTPServer(files=files) as server:
        base_url = server.base_url
        index = base_url + "/simple/"
        sdist = package_index.download_sdist("mmcv", "2.1.0", tmp_path / "out", index=index)
        assert sdist == tmp_path / "out" / "mmcv-2.1.0.tar.gz" and sdist.read_bytes() == payload
        with pytest.raises(package_index.IndexProblem) as bad:
            package_index.download_sdist("broken", "1.0", tmp_path / "out", index=index)
        assert str(bad.value) == (f"{base_url}/files/broken-1.0.tar.gz has SHA-256 {digest}, but the index says "
                                  f"{'1' * 64}; not using it")
        with pytest.raises(package_index.IndexProblem) as missing:
            package_index.download_sdist("mmcv", "9.9.9", tmp_path / "out", index=index)
        assert str(missing.value) == f"the index {index}mmcv/ lists no mmcv-9.9.9.tar.gz"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["mmcv-2.1.0.tar.gz"]  # nothing partial


# ---- the wheelhouse ----------------------------------------------------------------------------

def test_a_target_freeze_is_read_as_names_and_public_versions():
    freeze = "\n".join([
        "numpy==1.26.4", "PyYAML==6.0.1", "opencv_python==4.10.0.84", "torch==2.11.0+cu130",
        "scipy @ file:///home/conda/feedstock_root/build_artifacts/scipy_1716", "# a comment", "",
        "-e git+https://github.com/someone/tool.git@abc123#egg=some_tool", "--extra-index-url https://x/simple",
        "requests[socks]==2.32.3"])
    assert wheelhouse.read_freeze(freeze) == {
        "numpy": "1.26.4", "pyyaml": "6.0.1", "opencv-python": "4.10.0.84", "torch": "2.11.0", "scipy": None,
        "some-tool": None, "requests": "2.32.3"}


def test_file_kinds_and_names():
    assert wheelhouse.file_kind("mmdet-3.3.0-py3-none-any.whl") == "pure Python"
    assert wheelhouse.file_kind("shapely-2.2.0-cp311-cp311-manylinux_2_24_x86_64.manylinux_2_28_x86_64.whl") == \
        "platform-specific (manylinux_2_24_x86_64.manylinux_2_28_x86_64)"
    assert wheelhouse.file_kind("mmcv-2.1.0.tar.gz") == "sdist"
    assert wheelhouse.distribution_of("PyYAML-6.0.2-cp311-cp311-linux_x86_64.whl") == "pyyaml"
    assert wheelhouse.distribution_of("faster_coco_eval-1.8.0-cp311-cp311-linux_x86_64.whl") == "faster-coco-eval"
    assert wheelhouse.distribution_of("mmcv-2.1.0.tar.gz") == "mmcv"


def test_an_offline_install_refuses_a_damaged_wheelhouse_in_one_line(tmp_path):
    house = tmp_path / "house"
    house.mkdir()
    (house / "addict-2.4.0-py3-none-any.whl").write_bytes(b"wheel bytes")
    wheelhouse.write_manifest(house, target_python="3.11", left_out={}, requirements=["addict"])
    assert wheelhouse.verify(house)["total_bytes"] == len(b"wheel bytes")
    (house / "addict-2.4.0-py3-none-any.whl").write_bytes(b"wheel byteZ")
    result = subprocess.run([sys.executable, str(SETUP_ENV), "--offline", str(house), "--use-system-torch",
                             "--venv", str(tmp_path / "venv")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr == (f"[setup] error: {house}/addict-2.4.0-py3-none-any.whl differs from its SHA-256 in "
                             f"{house}/manifest.json (a broken or partial copy?); copy the whole folder again\n")
    assert not (tmp_path / "venv").exists()
    (house / "manifest.json").unlink()
    result = subprocess.run([sys.executable, str(SETUP_ENV), "--offline", str(house), "--venv",
                             str(tmp_path / "venv")], capture_output=True, text=True, timeout=120)
    assert result.stderr == (f"[setup] error: {house} has no manifest.json: it is not a folder written by "
                             f"`tools/setup_env.py --wheelhouse` (make wheelhouse)\n")


def test_use_system_torch_refuses_a_python_without_torch_in_one_line(tmp_path):
    bare = tmp_path / "bare"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True)
    result = subprocess.run([str(bare / "bin" / "python"), str(SETUP_ENV), "--use-system-torch", "--venv",
                             str(tmp_path / "venv")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr == (
        f"[setup] error: --use-system-torch: {bare}/bin/python cannot import torch and torchvision "
        f"(ModuleNotFoundError: No module named 'torch'); install them there first, or leave out "
        f"--use-system-torch to install torch 2.14.1 into the venv\n")
    assert not (tmp_path / "venv").exists()


def test_use_system_torch_refuses_a_torch_older_than_the_project_supports(tmp_path):
    """A torch 1.13 cannot be installed for real on this Python (no wheels for 3.11), so a stand-in
    package that only carries the version numbers takes its place: the check reads nothing else."""
    stand_in = tmp_path / "old-torch"
    for package, version in (("torch", "1.13.1+cu117"), ("torchvision", "0.14.1")):
        (stand_in / package).mkdir(parents=True)
        (stand_in / package / "__init__.py").write_text(
            f"__version__ = {version!r}\nclass version:\n    cuda = '11.7'\n")
    bare = tmp_path / "bare"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True)
    result = subprocess.run([str(bare / "bin" / "python"), str(SETUP_ENV), "--use-system-torch", "--venv",
                             str(tmp_path / "venv")], capture_output=True, text=True, timeout=120,
                            env=dict(os.environ, PYTHONPATH=str(stand_in)))
    assert result.returncode == 1
    assert result.stderr == (
        f"[setup] error: --use-system-torch: {bare}/bin/python has torch 1.13.1+cu117, older than 2.1, the oldest "
        f"pisa-train supports (mmcv 2.1.0 is built from source against torch's C++ API; pyproject.toml: "
        f"torch>=2.1); upgrade torch there, or leave out --use-system-torch\n")


def test_offline_without_a_torch_needs_use_system_torch(tmp_path):
    house = tmp_path / "house"
    house.mkdir()
    wheelhouse.write_manifest(house, target_python="3.11", left_out={}, requirements=[])
    result = subprocess.run([sys.executable, str(SETUP_ENV), "--offline", str(house), "--venv",
                             str(tmp_path / "venv")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1] == (
        f"[setup] error: --offline {house} without --use-system-torch needs torch and torchvision wheels, and a "
        f"wheelhouse leaves them out: add --use-system-torch to use the machine's torch, or copy torch==2.14.1 and "
        f"torchvision==0.29.1 wheels into {house}")


# ---- (slow) the offline install, end to end ----------------------------------------------------

def _clone(destination: Path) -> Path:
    """A fresh copy of the repository's files (tracked and new, not ignored): what `git clone` of this
    working tree would give once committed."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO_ROOT,
                            capture_output=True, text=True, check=True).stdout.split("\0")
    for name in filter(None, listed):
        source = REPO_ROOT / name
        if source.is_file():
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination / name)
    return destination


def _distribution_closure(names: list[str]) -> list[importlib.metadata.Distribution]:
    """The installed distributions ``names`` and everything they require here, extras included
    (torch asks for ``cuda-toolkit[cufile,...]``), markers evaluated."""
    seen: dict[str, importlib.metadata.Distribution] = {}
    done: set[tuple[str, str]] = set()
    todo = [(name, "") for name in names]
    while todo:
        name, extra = todo.pop()
        name = canonicalize_name(name)
        if (name, extra) in done:
            continue
        done.add((name, extra))
        distribution = seen.setdefault(name, importlib.metadata.distribution(name))
        for line in distribution.requires or []:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate({"extra": extra}):
                todo += [(requirement.name, "")] + [(requirement.name, wanted) for wanted in requirement.extras]
    return list(seen.values())


def _machine_python_with_torch(root: Path) -> Path:
    """A venv standing for a GPU machine's Python: torch, torchvision and their dependencies, and nothing of
    pisa-train's. They are this environment's own installed files, hard-linked (copied across file systems)
    by their RECORD, as pip would have unpacked the same wheels: installing torch again would copy GBs."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True)
    site = Path(subprocess.run([str(root / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()"
                                "['purelib'])"], capture_output=True, text=True, check=True).stdout.strip())
    here = Path(sysconfig.get_paths()["purelib"])
    for distribution in _distribution_closure(["torch", "torchvision"]):
        for file in distribution.files or []:
            if str(file).startswith(".."):
                continue  # console scripts in bin/: not needed to import torch
            source, target = here / file, site / file
            if not source.is_file():
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(source, target)
            except OSError:
                shutil.copy2(source, target)
    return root / "bin" / "python"


def _without_compilers(tmp_path: Path) -> dict:
    """The environment of a machine with no C/C++ compiler and no nvcc: a PATH of a few plain tools,
    CC and CXX pointing at /bin/false, an empty pisa-train cache (no mmcv wheel to reuse)."""
    bin_dir = tmp_path / "bin-without-compilers"
    bin_dir.mkdir()
    for tool in ("sh", "env", "uname", "ls", "cat"):
        if shutil.which(tool):
            os.symlink(shutil.which(tool), bin_dir / tool)
    env = {key: value for key, value in os.environ.items() if not key.startswith(("PIP_", "CUDA_"))}
    env.update(PATH=str(bin_dir), CC="/bin/false", CXX="/bin/false", PYTHONPATH="",
               PISA_TRAIN_CACHE=str(tmp_path / "empty-pisa-train-cache"))
    return env


CHECK_THE_OPS = ("import pisa_train, torch, mmdet.models\n"
                 "from mmcv.ops import batched_nms, nms_match, roi_align\n"
                 "boxes = torch.tensor([[0., 0., 10., 10.], [1., 1., 10., 10.], [20., 20., 30., 30.]])\n"
                 "scores = torch.tensor([0.9, 0.8, 0.7])\n"
                 "print(batched_nms(boxes, scores, torch.tensor([0, 0, 1]), dict(iou_threshold=0.5))[1].tolist(),\n"
                 "      [g.tolist() for g in nms_match(torch.cat([boxes, scores[:, None]], 1), 0.5)])\n"
                 "features = torch.rand(1, 2, 8, 8, requires_grad=True)\n"
                 "roi_align(features, torch.tensor([[0., 1., 1., 6., 6.]]), (2, 2), 1.0, 2).sum().backward()\n"
                 "print(features.grad.abs().sum() > 0)\n")


@pytest.mark.slow
def test_the_default_set_up_compiles_nothing_and_trains_the_demo(tmp_path):
    """`tools/setup_env.py` (what make setup runs) on a machine with no C/C++ compiler or nvcc on PATH
    (CC and CXX are /bin/false) and an empty pisa-train cache, run by a Python that has torch and torchvision
    and nothing of ours: mmcv-lite is installed, mmcv's RoIAlign (forward and backward), batched_nms and
    nms_match run, and the demo trains 2 iterations. 2 to 4 minutes on 2 cores."""
    machine_python = _machine_python_with_torch(tmp_path / "machine")
    clone = _clone(tmp_path / "clone")
    env = _without_compilers(tmp_path)
    installed = subprocess.run([str(machine_python), "tools/setup_env.py", "--use-system-torch"], cwd=clone,
                               env=env, capture_output=True, text=True, timeout=1200)
    assert installed.returncode == 0, installed.stdout[-3000:] + installed.stderr[-3000:]
    assert "mmcv 2.1.0 (mmcv-lite) (kernels: torchvision and torch)" in installed.stdout
    assert "building mmcv" not in installed.stdout
    assert not (tmp_path / "empty-pisa-train-cache").exists()  # no mmcv wheel built or looked for
    venv_python = clone / ".venv" / "bin" / "python"
    names = json.loads(subprocess.run([str(venv_python), "-m", "pip", "list", "--format", "json"], env=env,
                                      capture_output=True, text=True, check=True).stdout)
    assert {"mmcv-lite", "mmdet", "mmengine"} <= {entry["name"] for entry in names}
    assert "mmcv" not in {entry["name"] for entry in names}
    ran = subprocess.run([str(venv_python), "-c", CHECK_THE_OPS], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=300)
    assert ran.stdout.splitlines() == ["[0, 2] [[0, 1], [2]]", "tensor(True)"], ran.stderr[-3000:]
    trained = subprocess.run([str(clone / ".venv" / "bin" / "pisa-train"), "configs/pisa_faster_rcnn_r18_fpn_"
                              "demo_shapes.py", "--max-iters", "2", "--work-dir", str(tmp_path / "work")],
                             cwd=clone, env=env, capture_output=True, text=True, timeout=900)
    assert trained.returncode == 0, trained.stdout[-3000:] + trained.stderr[-3000:]
    assert "RoIAlign and NMS kernels: torchvision" in trained.stdout + trained.stderr
    assert (tmp_path / "work" / "iter_2.pth").is_file()


@pytest.mark.slow
def test_pip_install_of_the_package_brings_every_dependency_and_compiles_nothing(tmp_path):
    """`pip install .` into an environment that has torch and torchvision, with no compiler on PATH: pisa-train
    and every dependency install from wheels, the console commands answer, and mmcv's ops run. 1 to 3 minutes."""
    machine_python = _machine_python_with_torch(tmp_path / "machine")
    clone = _clone(tmp_path / "clone")
    env = _without_compilers(tmp_path)
    subprocess.run([str(machine_python), "-m", "ensurepip"], env=env, check=True, timeout=300)
    installed = subprocess.run([str(machine_python), "-m", "pip", "install", "--quiet", str(clone)], cwd=tmp_path,
                               env=env, capture_output=True, text=True, timeout=1200)
    assert installed.returncode == 0, installed.stdout[-3000:] + installed.stderr[-3000:]
    checked = subprocess.run([str(machine_python), "-m", "pip", "check"], env=env, capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout
    ran = subprocess.run([str(machine_python), "-c", CHECK_THE_OPS], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=300)
    assert ran.stdout.splitlines() == ["[0, 2] [[0, 1], [2]]", "tensor(True)"], ran.stderr[-3000:]
    helped = subprocess.run([str(tmp_path / "machine" / "bin" / "pisa-train"), "--help"], env=env,
                            capture_output=True, text=True, timeout=120)
    assert helped.returncode == 0 and helped.stdout.startswith("usage: pisa-train"), helped.stderr


@pytest.mark.slow
def test_a_wheelhouse_from_one_clone_installs_another_offline_on_the_machines_torch_which_trains(tmp_path):
    """The offline install, as on a GPU cluster without network (docs/getting_started.md, 'Offline install'): a fresh clone
    writes a wheelhouse for a machine whose `pip freeze` it is given; a second fresh clone, run by that
    machine's Python (torch preinstalled, nothing else of ours), installs from the wheelhouse alone with
    PIP_NO_INDEX=1 and no pip configuration, with mmcv-lite (nothing to build), and the demo trains 2
    iterations. 3 to 6 minutes on 2 cores."""
    machine_python = _machine_python_with_torch(tmp_path / "machine")
    freeze = subprocess.run([sys.executable, "-m", "pip", "freeze", "--path",
                             str(next((tmp_path / "machine" / "lib").glob("python3*/site-packages")))],
                            capture_output=True, text=True, check=True).stdout
    (tmp_path / "machine-freeze.txt").write_text(freeze)
    assert re.search(r"^torch==", freeze, re.M) and not re.search(r"^mm(det|cv|engine)==", freeze, re.M)

    first = _clone(tmp_path / "first")
    house = tmp_path / "wheelhouse"
    written = subprocess.run([sys.executable, "tools/setup_env.py", "--wheelhouse", str(house), "--target-has",
                              str(tmp_path / "machine-freeze.txt")], cwd=first, capture_output=True, text=True,
                             timeout=900)
    assert written.returncode == 0, written.stdout[-3000:] + written.stderr[-3000:]
    manifest = json.loads((house / "manifest.json").read_text())
    files = {entry["file"]: entry for entry in manifest["files"]}
    assert sorted(files) == sorted(p.name for p in house.iterdir() if p.name != "manifest.json")
    assert manifest["total_bytes"] == sum(p.stat().st_size for p in house.iterdir() if p.name != "manifest.json")
    assert "mmcv_lite-2.1.0-py2.py3-none-any.whl" in files and any(name.startswith("mmdet-3.3.0-") for name in files)
    assert not any(name.startswith("mmcv-") for name in files)  # no sdist: nothing is built on the target
    names = {wheelhouse.distribution_of(name) for name in files}
    assert not names & {"torch", "torchvision", "numpy", "pillow", "sympy"}  # the machine has them
    assert {"numpy", "pillow"} <= set(manifest["left_out_as_the_target_has_them"])
    assert files[next(n for n in files if n.startswith("mmdet-"))]["kind"] == "pure Python"

    second = _clone(tmp_path / "second")
    env = {key: value for key, value in os.environ.items() if not key.startswith("PIP_")}
    env.update(PIP_NO_INDEX="1", PIP_CONFIG_FILE=os.devnull, PYTHONPATH="")
    installed = subprocess.run([str(machine_python), "tools/setup_env.py", "--offline", str(house),
                                "--use-system-torch"], cwd=second, env=env, capture_output=True, text=True,
                               timeout=1200)
    assert installed.returncode == 0, installed.stdout[-3000:] + installed.stderr[-3000:]
    assert "(kernels: torchvision and torch)" in installed.stdout
    venv_python = second / ".venv" / "bin" / "python"
    where = json.loads(subprocess.run(
        [str(venv_python), "-c", "import json, torch, mmcv, mmdet, pisa_train; print(json.dumps({m.__name__: "
         "m.__file__ for m in (torch, mmcv, mmdet, pisa_train)}))"], cwd=tmp_path, env=env, capture_output=True,
        text=True, check=True).stdout)
    assert where["torch"].startswith(str(tmp_path / "machine"))  # the machine's torch, not a copy
    for module in ("mmcv", "mmdet"):
        assert where[module].startswith(str(second / ".venv")), where
    assert where["pisa_train"].startswith(str(second / "pisa_train"))

    trained = subprocess.run([str(second / ".venv" / "bin" / "pisa-train"), "configs/pisa_faster_rcnn_r18_fpn_"
                              "demo_shapes.py", "--max-iters", "2", "--work-dir", str(tmp_path / "work")],
                             cwd=second, env=env, capture_output=True, text=True, timeout=900)
    assert trained.returncode == 0, trained.stdout[-3000:] + trained.stderr[-3000:]
    assert (tmp_path / "work" / "iter_2.pth").is_file()


GPU_TORCH = {"torch": "2.11.0", "cuda": "13.0", "gpu": True, "capabilities": ["9.0"], "python": "cp312"}


def test_a_gpu_without_nvcc_gets_cpu_ops_and_is_told_why(monkeypatch, tmp_path):
    """A GPU machine whose torch has CUDA but no nvcc (a runtime-only CUDA): mmcv is built with CPU ops,
    and the reason is what the set-up prints beside "--ops-backend auto runs torchvision's kernels"."""
    monkeypatch.delenv("CUDA_HOME", raising=False)
    monkeypatch.delenv("CUDA_PATH", raising=False)
    monkeypatch.delenv("PISA_MMCV_CUDA", raising=False)
    monkeypatch.delenv("TORCH_CUDA_ARCH_LIST", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvcc on it
    pins = read_pins(REPO_ROOT)
    plan = compiled_mmcv.mmcv_build_plan(GPU_TORCH, pins)
    assert (plan["with_cuda"], plan["cpu_only_reason"], plan["nvcc"]) == (
        False, "nvcc not found; set CUDA_HOME to build the CUDA ops", None)
    assert "_cpu_cp312_" in plan["key"]

    nvcc = tmp_path / "cuda" / "bin" / "nvcc"
    nvcc.parent.mkdir(parents=True)
    nvcc.write_text("#!/bin/sh\n")
    nvcc.chmod(0o755)
    monkeypatch.setenv("CUDA_HOME", str(tmp_path / "cuda"))
    plan = compiled_mmcv.mmcv_build_plan(GPU_TORCH, pins)
    assert (plan["with_cuda"], plan["arch_list"], plan["nvcc"]) == (True, "9.0", str(nvcc))
    assert "_cu130-sm90_cp312_" in plan["key"]  # a wheel of its own in the cache, beside the CPU one


def test_the_build_uses_max_jobs_else_the_cores_this_process_may_use(monkeypatch):
    monkeypatch.setenv("MAX_JOBS", "3")
    assert compiled_mmcv.compile_jobs() == "3"
    monkeypatch.delenv("MAX_JOBS")
    monkeypatch.setattr(compiled_mmcv.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11})
    assert compiled_mmcv.compile_jobs() == "12"  # a cluster job's share of the node, not os.cpu_count()
