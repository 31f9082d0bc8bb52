"""Drift: how far the texts a model sees are from the texts it was trained on.

- :mod:`service.drift.profile`: the per-text descriptors (length, word count, share of
  out-of-vocabulary tokens, token ids, score) and the reference profile each artifact ships
  (``drift_profile.json``, no raw texts).
- :mod:`service.drift.stats`: the tests (normed Wasserstein distance, PSI) and the words that
  gained or lost weight, in numpy only.
- :mod:`service.drift.monitor`: the online monitor, a bounded window per model tested off
  the request path, with Prometheus gauges and a log line on entering or leaving drift.
- :mod:`service.drift.report`: the offline Evidently report (the optional ``drift`` extra).
"""
