"""Performance: memory plans from shapes (:mod:`~analysis.perf.plan`), benchmarks measured side by
side (:mod:`~analysis.perf.bench`) and the 8B-scale accelerator run (:mod:`~analysis.perf.scale`)."""
