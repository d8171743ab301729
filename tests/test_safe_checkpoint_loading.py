"""Checkpoint loading on torch >= 2.6: mmengine checkpoints load with weights_only=True
through our allowlist, and nothing outside it is unpickled.

Each check runs in a fresh interpreter, because torch's allowlist is process-global."""
from __future__ import annotations

import subprocess
import sys
import textwrap

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
        from pisa_train.safe_checkpoint_loading import allow_mmengine_checkpoints
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
        from pisa_train.safe_checkpoint_loading import allow_mmengine_checkpoints
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
        from pisa_train.safe_checkpoint_loading import allow_mmengine_checkpoints
        allow_mmengine_checkpoints()
        try:
            torch.load(PATH)
        except Exception as error:
            print('REFUSED', type(error).__name__, error)
    """), tmp_path)
    assert result.returncode == 0, result.stderr
    assert "REFUSED UnpicklingError" in result.stdout
    assert "only HistoryBuffer's statistics methods are allowed" in result.stdout
