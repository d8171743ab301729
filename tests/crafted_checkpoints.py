"""Checkpoints crafted the way an attacker would, for the checkpoint reader's tests (engine/checkpoint_files.py)."""
from __future__ import annotations

import io
import struct
import zipfile
from pathlib import Path

import torch

# 2 GB of zeros, deflated into a 1.9 MB file; torch.load without pisa-train's check allocates all of it
# (2.4 GB peak RSS measured with torch 2.14.1 on a 2-core AMD EPYC, 2026-12-06).
INFLATED_BYTES = 2_000_000_000
_MARKER_NUMEL = 123457  # an odd size whose 4 bytes appear in the pickle only as this tensor's numel and shape


def write_inflating_checkpoint(path: Path, declared: int = INFLATED_BYTES) -> Path:
    """A checkpoint that passes the weights-only allowlist (meta and one uint8 tensor) and whose one storage
    record is a deflate-compressed entry of ``declared`` zero bytes; its pickle declares the same size."""
    buffer = io.BytesIO()
    torch.save({"meta": {"epoch": 0, "iter": 1}, "state_dict": {"w": torch.zeros(_MARKER_NUMEL, dtype=torch.uint8)}},
               buffer)
    with zipfile.ZipFile(io.BytesIO(buffer.getvalue())) as original:
        entries = [(info.filename, original.read(info)) for info in original.infolist()]
    zeros = bytes(1 << 24)
    with zipfile.ZipFile(path, "w") as crafted:
        for name, data in entries:
            if name.endswith("/data.pkl"):
                data = data.replace(struct.pack("<I", _MARKER_NUMEL), struct.pack("<I", declared))
            if "/data/" not in name:
                crafted.writestr(name, data)
                continue
            info = zipfile.ZipInfo(name)
            info.compress_type = zipfile.ZIP_DEFLATED
            with crafted.open(info, "w", force_zip64=True) as entry:
                for _ in range(declared // len(zeros)):
                    entry.write(zeros)
                entry.write(bytes(declared % len(zeros)))
    return path
