"""Backend selection, the import without triton, and JEPA_KERNELS."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import jepa_kernels
from jepa_kernels import dispatch

ROOT = Path(__file__).resolve().parents[2]

# Makes ``import triton`` fail, as on a machine without it (e.g. macOS).
BLOCK_TRITON = """
import sys
class _NoTriton:
    def find_spec(self, name, path=None, target=None):
        if name == "triton" or name.startswith("triton."):
            raise ImportError("triton blocked for this test")
sys.meta_path.insert(0, _NoTriton())
"""


def run_python(code, env_extra):
    env = {k: v for k, v in os.environ.items() if k not in ("JEPA_KERNELS", "TRITON_INTERPRET")}
    env.update(env_extra, PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        [sys.executable, "-c", BLOCK_TRITON + code], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.fixture(autouse=True)
def _restore():
    yield
    jepa_kernels.set_backend("auto")


def test_set_backend_and_backend():
    jepa_kernels.set_backend("torch")
    assert jepa_kernels.backend() == "torch"
    assert not dispatch.use_triton(torch.zeros(1))
    jepa_kernels.set_backend("auto")
    assert dispatch.get_choice() == "auto"
    assert not dispatch.use_triton(torch.zeros(1))
    expected = "triton" if jepa_kernels.HAS_TRITON and torch.cuda.is_available() else "torch"
    assert jepa_kernels.backend() == expected
    with pytest.raises(ValueError):
        jepa_kernels.set_backend("cuda")


@pytest.mark.skipif(not jepa_kernels.HAS_TRITON, reason="triton not installed")
def test_forced_triton_on_cpu_tensors(monkeypatch):
    """Runs the kernels on CPU under the interpreter; without it, a clear error."""
    jepa_kernels.set_backend("triton")
    assert jepa_kernels.backend() == "triton"
    monkeypatch.setattr(dispatch, "interpreting", lambda: True)
    assert dispatch.use_triton(torch.zeros(1))
    monkeypatch.setattr(dispatch, "interpreting", lambda: False)
    with pytest.raises(RuntimeError, match="needs CUDA tensors"):
        jepa_kernels.masked_gather(torch.zeros(1, 3, 2), torch.zeros(1, 1, dtype=torch.long))


def test_triton_unavailable_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(dispatch, "HAS_TRITON", False)
    with pytest.raises(RuntimeError, match="triton"):
        jepa_kernels.set_backend("triton")


def test_import_and_ops_without_triton():
    out = run_python(
        """
import torch, jepa_kernels
assert not jepa_kernels.HAS_TRITON and "triton" not in sys.modules
assert jepa_kernels.backend() == "torch"
x = torch.randn(2, 9, 5, requires_grad=True)
idx = torch.randint(0, 9, (2, 2, 3))
y = jepa_kernels.masked_gather(x, idx)
loss = jepa_kernels.masked_target_loss(y * 2, x.detach(), idx)
loss.backward()
ts, os_ = [torch.zeros(4)], [torch.ones(4)]
jepa_kernels.ema_update_(ts, os_, 0.75)
assert torch.allclose(ts[0], torch.full((4,), 0.25))
try:
    jepa_kernels.set_backend("triton")
except RuntimeError as e:
    print("error:", e)
print("ok", x.grad.shape)
""",
        {"JEPA_KERNELS": "triton"},
    )
    assert "error: kernels backend 'triton' requested but triton is not importable" in out
    assert "ok torch.Size([2, 9, 5])" in out


def test_env_sets_initial_choice():
    out = run_python("import jepa_kernels; print(jepa_kernels.dispatch.get_choice())", {"JEPA_KERNELS": "torch"})
    assert out.strip() == "torch"
