"""Count tensor-to-Python conversions (host syncs on an accelerator) in a block of code.

A ``TorchFunctionMode`` sees every tensor method call; the conversions that read a value
back to the host are ``item``, ``__bool__``, ``__float__``, ``__int__``, ``__index__``,
``tolist``, ``cpu`` and ``numpy``. On a GPU each one waits for the device; on CPU they are
cheap, but the count is the same, so it is measured here.
"""

from __future__ import annotations

import traceback
from collections import Counter

from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

CONVERSIONS = {"item", "__bool__", "__float__", "__int__", "__index__", "tolist", "cpu", "numpy"}
# what a conversion becomes below Python, and what C++ code reads a scalar with (e.g. an op
# that takes a tensor where it needs a number)
READS = {"aten._local_scalar_dense.default"}


class HostSyncs(TorchFunctionMode):
    """``with HostSyncs() as h: ...`` then ``h.count`` (and ``h.where``: the callers)."""

    def __init__(self):
        super().__init__()
        self.count = 0
        self.where: Counter = Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", "") in CONVERSIONS:
            self.count += 1
            frames = [f for f in traceback.extract_stack()[:-1] if "scorekit" in f.filename]
            if frames:
                f = frames[-1]
                self.where[f"{f.filename.rsplit('/', 1)[-1]}:{f.lineno} {func.__name__}"] += 1
        return func(*args, **(kwargs or {}))


class ScalarReads(TorchDispatchMode):
    """The reads of a tensor's value by the host at the dispatcher, whoever asks for them
    (Python's conversions and those made inside torch's own C++ code)."""

    def __init__(self):
        super().__init__()
        self.count = 0
        self.where: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if str(func) in READS:
            self.count += 1
            frames = [f for f in traceback.extract_stack()[:-1] if "scorekit" in f.filename]
            if frames:
                f = frames[-1]
                self.where[f"{f.filename.rsplit('/', 1)[-1]}:{f.lineno} {func}"] += 1
        return func(*args, **(kwargs or {}))


def syncs(fn) -> tuple[int, Counter]:
    """The host reads ``fn()`` makes (Python conversions and dispatcher-level scalar reads),
    and where."""
    with HostSyncs() as h, ScalarReads() as r:
        fn()
    return h.count + r.count, h.where + r.where
