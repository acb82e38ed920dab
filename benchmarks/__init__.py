"""The gumbel_ext benchmark suite: ``python3 -m benchmarks.run`` (``make bench``).

workloads       what is measured: named shapes, dtypes, modes, passes, presets, bytes moved
implementations the contenders: gumbel_ext, F.gumbel_softmax eager / torch.compile, baselines
check           the fused kernel against reference.py on the same noise, before any timing
measure         torch.utils.benchmark timing (medians, IQR), compile time kept apart
memory          bytes kept for backward (saved-tensor hooks), CUDA peak allocation
report          machine info, terminal table, JSON / Markdown / PNG files
run             the command line
"""
