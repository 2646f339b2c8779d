"""llama.cpp CPU options that llama-cpp-python does not expose as arguments.

``use_extra_bufts`` lets llama.cpp repack weights into "extra" buffer types, including the
Intel AMX one. On a virtual machine that advertises AMX without enabling its register state,
the first AMX instruction (``ldtilecfg``) kills the process with a general protection fault
(seen on the development VMs with every K-quant model). So extra buffers are
off unless ``HAVEN_LLM_EXTRA_BUFFERS=true`` on hosts where they are known to work.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import llama_cpp
import llama_cpp.llama_cpp as llama_c

# Llama() reads llama_model_default_params() from this module while it loads; the override
# below swaps it for the duration of one load, so loads are serialised.
_load_lock = threading.Lock()


@contextmanager
def model_params(*, extra_buffers: bool) -> Iterator[None]:
    if extra_buffers:
        yield
        return
    with _load_lock:
        original: Callable[[], llama_cpp.llama_model_params] = llama_c.llama_model_default_params

        def without_extra_buffers() -> llama_cpp.llama_model_params:
            params = original()
            params.use_extra_bufts = False
            return params

        llama_c.llama_model_default_params = without_extra_buffers
        try:
            yield
        finally:
            llama_c.llama_model_default_params = original
