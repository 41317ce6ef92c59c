"""Shared test setup.

Triton's interpreter must be switched on before any ``@triton.jit`` decorator
runs, so it is set here, before the project is imported.  On a GPU machine
``JEPA_REAL_TRITON=1`` keeps the compiled kernels (see ``bench/gpu_check.sh``).
"""
import os
import sys

# the helper modules here (small_config, data_formats, dist_worker) import by plain name under any --import-mode
HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

if os.environ.get("JEPA_REAL_TRITON") != "1":
    os.environ["TRITON_INTERPRET"] = "1"
os.environ.setdefault("OMP_NUM_THREADS", "2")
# precision: auto is bf16 on CPUs with bf16 matrix units: the suite's numbers must not depend on the CI CPU, so the
# probe answers "no" here; tests of the bf16 branch set JEPA_CPU_BF16=1 themselves
os.environ["JEPA_CPU_BF16"] = "0"

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture
def one_thread():
    """Tiny models run fastest on one thread (and CI's two cores may be shared)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
