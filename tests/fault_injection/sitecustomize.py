"""Faults injected into a real pisa-train process, for tests that cannot produce them for real.

Python imports this module at start-up when its folder is on PYTHONPATH; it does nothing unless
one of these environment variables is set:

- PISA_TEST_ENOSPC_AT_SAVE=N: the N-th file that MMEngine's LocalBackend.put writes gets half its
  bytes and then fails with ENOSPC. Faked, because a really full filesystem needs a small mount,
  which needs root.
- PISA_TEST_NAN_LOSS_AT_ITER=N: the loss term PISA_TEST_NAN_LOSS_TERM (default loss_cls) of the
  N-th training step is NaN, as after a divergence.
"""
import os

if os.environ.get("PISA_TEST_ENOSPC_AT_SAVE"):
    import errno

    from mmengine.fileio.backends.local_backend import LocalBackend

    _fail_at = int(os.environ["PISA_TEST_ENOSPC_AT_SAVE"])
    _original_put = LocalBackend.put
    _writes = []

    def _put(self, obj, filepath):
        _writes.append(str(filepath))
        if len(_writes) == _fail_at:
            with open(filepath, "wb") as file:
                file.write(obj[: len(obj) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(filepath))
        return _original_put(self, obj, filepath)

    LocalBackend.put = _put

if os.environ.get("PISA_TEST_NAN_LOSS_AT_ITER"):
    from mmengine.model import BaseModel

    _nan_at = int(os.environ["PISA_TEST_NAN_LOSS_AT_ITER"])
    _term = os.environ.get("PISA_TEST_NAN_LOSS_TERM", "loss_cls")
    _original_parse = BaseModel.parse_losses
    _steps = []

    def _parse_losses(self, losses):
        _steps.append(1)
        if len(_steps) == _nan_at:
            losses = dict(losses)
            losses[_term] = losses[_term] * float("nan")
        return _original_parse(self, losses)

    BaseModel.parse_losses = _parse_losses
