"""What the ``riemann`` commands do, as Python functions: the main job in a resumable run
directory (:mod:`~analysis.jobs.run`), the paper's reproductions (:mod:`~analysis.jobs.reproduce`)
and the export of an edited model (:mod:`~analysis.jobs.export`)."""
