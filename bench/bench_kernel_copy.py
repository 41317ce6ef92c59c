"""Device copy bandwidth (``dst.copy_(src)``): the 100 % line for the kernels' GB/s."""
import torch


def bench_copy_bandwidth(run_bench, env):
    numel = (1 << 28) if env.cuda else (1 << 24)  # 1 GiB / 64 MiB of fp32
    src = torch.randn(numel, device=env.device)
    dst = torch.empty_like(src)
    run_bench(lambda: dst.copy_(src), nbytes=2 * src.numel() * 4, group="copy", impl="copy")
