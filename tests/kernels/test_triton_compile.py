"""The Triton kernels compile for a real GPU target (sm_90) on this CPU-only machine.

The interpreter accepts code the compiler rejects (e.g. differently typed values from two
branches), so every kernel variant is also lowered to PTX/cubin, in a subprocess without
TRITON_INTERPRET, with the argument specialisation a CUDA launch would get.  The main
paths must vectorise (128-bit loads/stores) to approach copy bandwidth.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest

import kernels

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = r'''
import re, triton, triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
import kernels.gather as g, kernels.target_loss as t, kernels.ema as e

def ptx(fn, sig, consts, div16=(), warps=4):
    attrs = {(fn.arg_names.index(a),): [["tt.divisibility", 16]] for a in div16}
    src = ASTSource(fn=fn, signature=sig, constexprs=consts, attrs=attrs)
    k = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": warps})
    assert "cubin" in k.asm
    return k.asm["ptx"]

for dt in ("fp32", "fp16", "bf16"):
    s = ptx(g._gather_fwd_kernel,
            dict(x_ptr="*" + dt, idx_ptr="*i64", out_ptr="*" + dt, R="i32", K="i32", B="i32", D="i32",
                 stride_xb="i32", stride_xn="i32", BLOCK_R="constexpr", BLOCK_D="constexpr"),
            dict(BLOCK_R=4, BLOCK_D=1024), ("x_ptr", "idx_ptr", "out_ptr", "D", "stride_xb", "stride_xn"))
    assert "ld.global.v4" in s and "st.global.v4" in s, "gather fwd " + dt
    s = ptx(g._gather_bwd_kernel,
            dict(grad_ptr="*" + dt, idx_ptr="*i64", acc_ptr="*fp32", R="i32", K="i32", B="i32", N="i32",
                 D="i32", BLOCK_R="constexpr", BLOCK_D="constexpr"),
            dict(BLOCK_R=4, BLOCK_D=1024), ("grad_ptr", "idx_ptr", "acc_ptr", "D"))
    assert "atom.global" in s or "red.global" in s, "gather bwd " + dt
    for kind in (0, 1):
        for normalize in (True, False):
            for grad in (True, False):
                s = ptx(t._target_loss_kernel,
                        dict(pred_ptr="*" + dt, tgt_ptr="*" + dt, idx_ptr="*i64", partial_ptr="*fp32",
                             dgrad_ptr="*" + dt, R="i32", K="i32", B="i32", D="i32", stride_tb="i32",
                             stride_tn="i32", eps="fp32", beta="fp32", inv_beta="fp32", KIND="constexpr",
                             NORMALIZE="constexpr", COMPUTE_GRAD="constexpr", ACC="constexpr",
                             BLOCK_R="constexpr", BLOCK_D="constexpr"),
                        dict(KIND=kind, NORMALIZE=normalize, COMPUTE_GRAD=grad, ACC=tl.float32,
                             BLOCK_R=4, BLOCK_D=1024),
                        ("pred_ptr", "tgt_ptr", "idx_ptr", "partial_ptr", "dgrad_ptr", "D",
                         "stride_tb", "stride_tn"))
                assert "ld.global.v4" in s, ("target loss", dt, kind, normalize, grad)
for from_ptr in (True, False):
    for aligned in (True, False):
        s = ptx(e._ema_kernel,
                dict(table_ptr="*i64", mom_ptr="*fp32", momentum="fp32", MOM_FROM_PTR="constexpr",
                     ALIGNED="constexpr", BLOCK="constexpr", ITERS="constexpr"),
                dict(MOM_FROM_PTR=from_ptr, ALIGNED=aligned, BLOCK=1024, ITERS=8), ("table_ptr", "mom_ptr"))
        assert ("ld.global.v4" in s and "st.global.v4" in s) == aligned, ("ema", from_ptr, aligned)
print("compiled-ok")
'''


@pytest.mark.skipif(not kernels.HAS_TRITON, reason="triton not installed")
def test_kernels_compile_for_sm90():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "compiled-ok" in proc.stdout
