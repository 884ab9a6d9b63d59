"""Package data: the shipped reference genotype."""
