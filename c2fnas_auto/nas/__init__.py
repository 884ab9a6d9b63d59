"""The C2FNAS search space: genotypes, topologies, networks, supernet and cost model."""

from c2fnas_auto.nas.config import NetworkConfig, NetworkConfigError
from c2fnas_auto.nas.genotype import OPS, Genotype, reference_genotype

__all__ = ["OPS", "Genotype", "NetworkConfig", "NetworkConfigError", "reference_genotype"]
