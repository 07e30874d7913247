"""Treatment planning runtime: photon dose engine, dose mimicking, leaf sequencing, RT Plan export, review report.

Entry point: :func:`runtime.planning.plan.make_plan` (the dose to mimic is an argument, so a predicted dose plugs
in directly); the ``fedrt plan`` command wraps it with file input, DICOM export and the report.
"""

# The bulk-density synthetic CTs of an MR-only plan (``fedrt plan --sct``; :mod:`runtime.planning.synthetic_ct`): the
# body as water, and the same with the bone ROIs as bone. Here, without imports, so the command line can offer them.
BULK_DENSITIES = ("bulk", "bulk-bone")
