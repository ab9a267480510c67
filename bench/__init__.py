"""Benchmarks of triton_lstm against its peers (torch.nn.LSTM on cuDNN, FlashRNN, a compiled cell loop, an eager
loop) and against the GPU's step-latency floor.

``pytest bench/`` runs pytest-benchmark records and the tests of this code, ``python -m bench`` the configuration
sweep (CSV under ``bench/results/``), ``python -m bench.floor`` the latency floor, ``python -m bench.report`` turns
sweeps into Markdown tables and plots, ``python -m bench.readme_table`` writes README.md's performance tables. See
``bench/README.md``.
"""
