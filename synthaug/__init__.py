"""synthaug: fix scarce and imbalanced image datasets with class-conditional synthetic data."""
