"""Checkpoint loading on torch >= 2.6: mmengine checkpoints load with weights_only=True
through our allowlist, and nothing outside it is unpickled.

Each check runs in a fresh interpreter, because torch's allowlist is process-global."""
from __future__ import annotations

import inspect
import subprocess
import sys
import textwrap

import pytest
from crafted_checkpoints import INFLATED_BYTES, write_inflating_checkpoint
from mmengine.runner import load_checkpoint
from mmengine.runner.checkpoint import load_from_local
from torch import nn

from pisa_train.engine.checkpoint_files import load_checkpoint_file
from pisa_train.engine.patches.checkpoint_loading import guard_checkpoint_loading
from pisa_train.errors import CheckpointError, UnsafeCheckpointError

MAKE_CHECKPOINT = textwrap.dedent("""
    import torch
    from mmengine.logging import MessageHub
    hub = MessageHub.get_instance('ckpt-test')
    for value in (0.75, 0.5, 0.25):
        hub.update_scalar('train/loss', value)
    hub.update_info('iter', 3)
    torch.save({'meta': {'iter': 3, 'epoch': 0}, 'state_dict': {'w': torch.ones(2)},
                'message_hub': hub.state_dict()}, PATH)
""")


def run_python(code: str, tmp_path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code.replace("PATH", repr(str(tmp_path / "ckpt.pth")))],
                          capture_output=True, text=True, cwd=tmp_path)


def test_upstream_still_needs_the_wrapper(tmp_path):
    """Fails when torch or mmengine change so that plain torch.load reads mmengine checkpoints:
    then safe_checkpoint_loading can go."""
    result = run_python(MAKE_CHECKPOINT + "torch.load(PATH)\n", tmp_path)
    assert result.returncode != 0
    assert "mmengine.logging.history_buffer.HistoryBuffer" in result.stderr


def test_mmengine_checkpoints_load_through_the_allowlist(tmp_path):
    result = run_python(MAKE_CHECKPOINT + textwrap.dedent("""
        from pisa_train.engine.checkpoint_files import allow_mmengine_checkpoints
        allow_mmengine_checkpoints()
        loaded = torch.load(PATH)  # torch's default, weights_only=True
        buffer = loaded['message_hub']['log_scalars']['train/loss']
        print('MEAN', buffer.mean(), 'ITER', loaded['message_hub']['runtime_info']['iter'])
    """), tmp_path)
    assert result.returncode == 0, result.stderr
    assert "MEAN 0.5 ITER 3" in result.stdout


def test_a_checkpoint_whose_pickle_runs_code_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    result = run_python(textwrap.dedent(f"""
        import os, torch
        class Payload:
            def __reduce__(self):
                return (os.system, ('touch {marker}',))
        torch.save({{'state_dict': {{}}, 'meta': Payload()}}, PATH)
        from pisa_train.engine.checkpoint_files import allow_mmengine_checkpoints
        allow_mmengine_checkpoints()
        try:
            torch.load(PATH)
        except Exception as error:
            print('REFUSED', type(error).__name__, error)
    """), tmp_path)
    assert result.returncode == 0, result.stderr
    assert "REFUSED UnpicklingError" in result.stdout and "posix.system" in result.stdout
    assert not marker.exists()


def test_getattr_in_a_checkpoint_reaches_only_history_buffer_statistics(tmp_path):
    result = run_python(textwrap.dedent("""
        import numpy, torch
        class Sneaky:
            def __reduce__(self):
                return (getattr, (numpy.ndarray, 'tofile'))
        torch.save({'meta': Sneaky()}, PATH)
        from pisa_train.engine.checkpoint_files import allow_mmengine_checkpoints
        allow_mmengine_checkpoints()
        try:
            torch.load(PATH)
        except Exception as error:
            print('REFUSED', type(error).__name__, error)
    """), tmp_path)
    assert result.returncode == 0, result.stderr
    assert "REFUSED UnpicklingError" in result.stdout
    assert "only HistoryBuffer's statistics methods are allowed" in result.stdout


def test_upstream_loads_local_checkpoints_with_torchs_default():
    """Fails when mmengine's load_from_local starts choosing weights_only itself: then
    guard_checkpoint_loading's replacement loader should be reconsidered."""

    source = inspect.getsource(load_from_local)
    assert "torch.load(filename, map_location=map_location)" in source and "weights_only" not in source


GUARDED_LOAD = textwrap.dedent("""
    import os, torch
    class Payload:
        def __reduce__(self):
            return (os.system, ('touch MARKER',))
    torch.save({'state_dict': {}, 'meta': Payload()}, PATH)
    from pisa_train.engine.patches.checkpoint_loading import guard_checkpoint_loading
    guard_checkpoint_loading(TRUSTED)
    from mmengine.runner.checkpoint import _load_checkpoint
    try:
        _load_checkpoint(PATH, map_location='cpu')  # what Runner.resume and load_checkpoint call
        print('LOADED')
    except Exception as error:
        print('REFUSED', type(error).__name__, error)
""")


def test_mmengine_loads_go_through_weights_only_even_if_the_environment_says_otherwise(tmp_path):
    marker = tmp_path / "pwned"
    code = GUARDED_LOAD.replace("MARKER", str(marker)).replace("TRUSTED", "()")
    result = subprocess.run([sys.executable, "-c", code.replace("PATH", repr(str(tmp_path / "ckpt.pth")))],
                            capture_output=True, text=True, cwd=tmp_path,
                            env={**__import__("os").environ, "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"})
    assert result.returncode == 0, result.stderr
    assert "ignoring TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD" in result.stdout
    assert "REFUSED UnsafeCheckpointError" in result.stdout and "posix.system" in result.stdout
    assert f"load it anyway with --trust-checkpoint {tmp_path / 'ckpt.pth'}" in result.stdout
    assert not marker.exists()


def test_trust_checkpoint_unpickles_that_file_in_full(tmp_path):
    marker = tmp_path / "trusted-code-ran"
    code = GUARDED_LOAD.replace("MARKER", str(marker)).replace("TRUSTED", "[PATH]")
    result = run_python(code, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "LOADED" in result.stdout and marker.exists()


def test_truncated_and_missing_checkpoints_are_checkpoint_errors(tmp_path):
    result = run_python(MAKE_CHECKPOINT + textwrap.dedent("""
        from pisa_train.engine.checkpoint_files import load_checkpoint_file
        from pisa_train.errors import CheckpointError
        data = open(PATH, 'rb').read()
        open(PATH, 'wb').write(data[:len(data) // 2])
        for path in (PATH, PATH + '.missing'):
            try:
                load_checkpoint_file(path)
            except CheckpointError as error:
                print('ERROR', error)
    """), tmp_path)
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith("ERROR")]
    assert "cannot be read; it is truncated or corrupt" in lines[0]
    assert lines[1].startswith(f"ERROR checkpoint {tmp_path / 'ckpt.pth'}.missing not found")


def test_a_fresh_process_loads_history_buffer_statistics(tmp_path):
    """HistoryBuffer registers min/max/mean/current when the first buffer is made, so a process
    that loads before making one (pisa-eval, a resume) must allow them all the same."""
    made = run_python(MAKE_CHECKPOINT, tmp_path)
    assert made.returncode == 0, made.stderr
    result = run_python(textwrap.dedent("""
        from pisa_train.engine.checkpoint_files import load_checkpoint_file
        print('ITER', load_checkpoint_file(PATH)['message_hub']['runtime_info']['iter'])
    """), tmp_path)
    assert result.returncode == 0, result.stderr
    assert "ITER 3" in result.stdout


def test_bytes_that_are_no_checkpoint_are_corrupt_not_unsafe(tmp_path):
    """A file that starts with 'c' reads as pickle's GLOBAL opcode, with its next bytes as the global's name:
    that is not a checkpoint asking for code, it is no checkpoint at all."""

    junk = tmp_path / "iter_3.pth"
    junk.write_bytes(b"cut short by a kill")
    with pytest.raises(CheckpointError) as raised:
        load_checkpoint_file(junk)
    assert not isinstance(raised.value, UnsafeCheckpointError)
    assert str(raised.value).startswith(f"checkpoint {junk} cannot be read; it is truncated or corrupt (")


@pytest.mark.parametrize("text", [b"(not a checkpoint", b"hello world\n", b""])
def test_text_that_is_no_checkpoint_is_one_checkpoint_error_whatever_torch_raises(tmp_path, text):
    """A text file starting with '(' made torch's unpickler raise IndexError, which escaped as a traceback."""

    junk = tmp_path / "epoch_9.pth"
    junk.write_bytes(text)
    with pytest.raises(CheckpointError, match=rf"^checkpoint {junk} cannot be read; it is truncated or corrupt \("):
        load_checkpoint_file(junk)


def test_a_missing_checkpoint_is_still_a_file_not_found_error_for_mmengines_api(tmp_path):
    """Code that uses mmengine's API and catches FileNotFoundError, as mmengine's own loader raises it for a
    missing file, still catches it with pisa-train's loader in place; the user still gets one line, exit 5."""

    missing = tmp_path / "gone.pth"
    guard_checkpoint_loading()
    with pytest.raises(FileNotFoundError) as raised:
        load_checkpoint(nn.Linear(1, 1), str(missing), map_location="cpu")
    assert isinstance(raised.value, CheckpointError) and raised.value.exit_code == 5
    assert str(raised.value) == f"checkpoint {missing} not found; give the path of a .pth file written by pisa-train"


@pytest.fixture(scope="module")
def inflating_checkpoint(tmp_path_factory):
    return write_inflating_checkpoint(tmp_path_factory.mktemp("crafted") / "iter_1.pth")


def test_a_checkpoint_declaring_gigabytes_it_does_not_hold_is_refused_before_anything_is_allocated(
        tmp_path, inflating_checkpoint):
    """Issue 20, point 7: 1.9 MB on disk, 2 GB once inflated, and it passes the weights-only allowlist."""

    assert inflating_checkpoint.stat().st_size < 2_000_000
    result = run_python(textwrap.dedent(f"""
        import resource
        from pisa_train.engine.checkpoint_files import load_checkpoint_file
        from pisa_train.errors import CheckpointError
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        try:
            load_checkpoint_file({str(inflating_checkpoint)!r})
        except CheckpointError as error:
            print('REFUSED', error.exit_code, error)
        print('GREW_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)
    """), tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"REFUSED 5 checkpoint {inflating_checkpoint} was refused before loading: its entry archive/data/0 " \
           f"declares {INFLATED_BYTES} bytes in " in result.stdout
    assert "compressed ones, and torch.save writes entries uncompressed; the file was crafted or damaged; use a " \
           "checkpoint written by pisa-train or torch.save\n" in result.stdout
    grew_kb = int(result.stdout.split("GREW_KB ")[1].split()[0])
    assert grew_kb < 100_000, f"loading grew the process by {grew_kb} KB"  # torch.load alone: by 2 GB
