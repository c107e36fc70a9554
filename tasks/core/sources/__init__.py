"""Source readers: image folders, tables, ``.npz`` archives, DICOM and NIfTI, git/DVC revisions, and the bundled
example (ingest reads through them; ``synthaug serve`` fingerprints sources with them)."""
