"""Treatment planning runtime: photon dose engine, dose mimicking, leaf sequencing, RT Plan export, review report.

Entry point: :func:`runtime.planning.plan.make_plan` (the dose to mimic is an argument, so a predicted dose plugs
in directly); the ``fedrt plan`` command wraps it with file input, DICOM export and the report.
"""
