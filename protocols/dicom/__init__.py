"""DICOM RT in and out: readers (CT, MR, RTSTRUCT, RTDOSE, RTPLAN, spatial registrations) into cases, writers, and
the dataset import.

Modules, one job each: ``geometry`` (grids in patient space, resampling), ``raster`` (contours <-> masks),
``names`` (structure-name mapping), ``series`` (what every image series reader shares), ``ct``/``mr``/``rtstruct``/
``rtdose``/``rtplan``/``registration`` (readers), ``pairing`` (which MR goes with the CT, and how), ``study`` (one
patient's objects -> a case), ``mr_only`` (an MR-only patient's MR and structure set, for a synthetic CT),
``importer`` (folders -> protocol dataset), ``header`` (what every written object shares), ``export`` (writers).
"""

FORMATS = ("fedrt", "openkbp")  # dataset layouts the import writes: fedrt's (gzip + import record), the challenge's
