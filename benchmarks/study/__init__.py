"""The search study: does the searched genotype beat the reference and random
valid genotypes on held-out cases of its task and on transfer tasks? See
documentation/studies/search_study.md."""
