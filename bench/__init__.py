"""Benchmarks of triton_lstm against torch.nn.LSTM and a plain PyTorch loop.

``pytest bench/`` runs pytest-benchmark records, ``python -m bench`` the configuration sweep (CSV under
``bench/results/``), and ``python -m bench.report`` turns a sweep's CSV into a Markdown table and plots.
See ``bench/README.md``.
"""
