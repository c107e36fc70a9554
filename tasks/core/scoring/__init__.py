"""The feature space and the per-image rules the filter and the privacy gate share: the judge loaded back, its
embeddings, memorization thresholds and reject reasons."""
