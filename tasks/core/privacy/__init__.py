"""What an anonymized release may claim: the privacy audit's record, differential privacy, and the release's utility
(train on synthetic, test on real)."""
