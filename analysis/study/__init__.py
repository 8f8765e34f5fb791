"""Studies of a pair: what is computed and judged, before anything is written or drawn.

- :mod:`~analysis.study.estimators`: the registry of estimators (method, cost model, description).
- :mod:`~analysis.study.suite`: the default edit suite, scoring every edit, per-pair checks.
- :mod:`~analysis.study.stats`: agreement statistics (Spearman, Pearson, confusion, bootstrap intervals).
- :mod:`~analysis.study.tolerance`: the classification tolerance, fixed from calibration data.
- :mod:`~analysis.study.artefact`: the edited model as saved, and the direction that reaches it.
- :mod:`~analysis.study.claims`: the paper's claims judged on a run's records.
- :mod:`~analysis.study.resume`: path integrals saved to disk as they go and resumed.
"""
