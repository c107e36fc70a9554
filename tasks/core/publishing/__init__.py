"""The data registry and what is published to it: versions and tags, git/DVC runs, dataset cards, the report and
card templates' run record, and generator artifacts (warm start, sampling from a published generator)."""
