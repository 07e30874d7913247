"""``fedrt listen``: a DICOM node that receives a CT (with or without a structure set), segments or plans it, and
sends the result back by C-STORE.

One module per job: :mod:`.settings` (what the node is told), :mod:`.store` (inputs and results on disk until sent),
:mod:`.tracker` (when a study is complete, what state each is in), :mod:`.scp` (the Storage SCP),
:mod:`.jobs` (segment or plan one study), :mod:`.sender` (C-STORE to the destination, with retries),
:mod:`.audit` (the JSON-lines audit log) and :mod:`.node` (wires them together, stops cleanly on SIGTERM).
"""
