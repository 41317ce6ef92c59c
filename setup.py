from setuptools import find_packages, setup

# Triton is pinned to the version torch 2.13's GPU wheels pin; it is only installed on Linux x86-64
# (macOS/MPS users run the PyTorch fallbacks).
# The distribution is "jepa-trainer" ("jepa" on the package index belongs to another project); the import
# packages are jepa and jepa_kernels ("kernels" is Hugging Face's, which transformers needs).
CLIS = ("train", "eval", "export", "finetune", "visualize", "shards", "launch")

setup(
    name="jepa-trainer",
    version="0.1.0",
    description="Kernel-optimised I-JEPA / H-JEPA self-supervised pre-training of ViT encoders",
    packages=find_packages(include=["jepa", "jepa.*", "jepa_kernels", "jepa_kernels.*"]),
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.4",
        "triton==3.7.1; platform_system == 'Linux' and platform_machine == 'x86_64'",
        "pyyaml>=6.0",
        "pillow>=9.0",
        "numpy",
        "tensorboard>=2.14",
        "safetensors>=0.4",
    ],
    extras_require={
        # transformers: the tests load our Hugging Face exports with IJepaModel (it needs no torchvision)
        # submitit: tests/test_slurm.py runs jobs through its local executor (small, pure Python)
        # wandb: tests/test_wandb.py logs offline runs and reads their files back
        "dev": ["pytest>=8", "pytest-benchmark>=4", "torch-tb-profiler>=0.4", "hypothesis>=6", "transformers>=4.47",
                "submitit>=1.5", "wandb>=0.16", "datasets>=3"],
        "hf": ["transformers>=4.47", "datasets>=3"],  # datasets: data.dataset: hf (imported only when used)
        "cuda": ["xformers"],
        "slurm": ["submitit>=1.5"],  # python -m jepa.launch
        "wandb": ["wandb>=0.16"],  # logging.wandb: true
    },
    entry_points={"console_scripts": [f"jepa-{name}=jepa.{name}:main" for name in CLIS]},
)
