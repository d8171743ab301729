"""Patch: dataloader workers that live through a stop signal sent to their whole process group.

Upstream: torch 2.14, ``torch/utils/data/_utils/worker.py``'s ``_worker_loop`` first calls
``signal_handling._set_worker_signal_handlers()`` (``torch/csrc/DataLoader.cpp``), whose SIGTERM
handler exits quietly when the parent sent the signal and otherwise dies of it; SIGINT keeps
Python's handler, and ``_worker_loop`` ends the worker on the KeyboardInterrupt. A scheduler's
SIGTERM (Slurm's preemption and time limit, ``docker stop``, Kubernetes) and a terminal's Ctrl-C
reach every process of the job, so the workers die first, and the training process stops with
"DataLoader worker (pid(s) ...) exited unexpectedly" instead of finishing its iteration and saving
(engine/hooks/training_guards.py's ``StopOnSignalHook``).

This wraps ``_set_worker_signal_handlers`` so that a worker, once torch has set its handlers,
ignores SIGINT and a SIGTERM from anyone but its parent. The parent's own SIGTERM still ends it at
once, as torch's handler does: that is how the training process ends its workers when it stops
(``DataLoader``'s shutdown and multiprocessing's exit handler ``terminate()`` them). Python's
signal handlers cannot tell who sent a signal, so the worker blocks SIGTERM and a thread of its
own waits for it with ``sigwaitinfo``, which can. torch's SIGSEGV/SIGBUS/SIGFPE handlers stay.

Guard test: tests/test_training_guards.py::test_upstream_dataloader_workers_die_of_a_sigterm_from_outside
fails if torch's workers stop dying of it (then this patch can go).
"""
from __future__ import annotations

import os
import signal
import threading

from pisa_train.engine.patches.rebinding import rebind_everywhere


def ignore_stop_signals_but_the_parents_sigterm() -> None:
    """In a freshly forked worker (one thread): SIGINT ignored; SIGTERM ends the worker only when its
    parent sent it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # threads started from here on inherit it
    parent = os.getppid()

    def exit_on_the_parents_sigterm() -> None:
        while True:
            if signal.sigwaitinfo({signal.SIGTERM}).si_pid == parent:
                os._exit(0)  # as torch's own handler does for the parent's SIGTERM

    threading.Thread(target=exit_on_the_parents_sigterm, name="pisa-train-sigterm", daemon=True).start()


def keep_dataloader_workers_through_stop_signals() -> None:
    """Applied before a run forks its dataloader workers (they inherit it), by engine/runner.py."""

    def make_replacement(set_worker_signal_handlers):
        def set_worker_signal_handlers_then_keep_working(*args, **kwargs):
            set_worker_signal_handlers(*args, **kwargs)
            ignore_stop_signals_but_the_parents_sigterm()

        return set_worker_signal_handlers_then_keep_working

    rebind_everywhere("torch.utils.data._utils.signal_handling", "_set_worker_signal_handlers", make_replacement)
