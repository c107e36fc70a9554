"""Files and folders every step shares: atomic writes and hashes, images, the manifest, shards of work, locks, and
the files steps read from one another (``plan.csv``, the filter and evaluate results)."""
