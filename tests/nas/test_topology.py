from c2fnas_auto.nas.genotype import check_levels, reference_genotype
from c2fnas_auto.nas.topology import (enumerate_topologies, genotype_neighbours, topology_distance,
                                      topology_neighbours)


def test_1486_topologies_all_valid_and_distinct():
    tops = enumerate_topologies()
    assert len(tops) == 1486
    assert len(set(tops)) == 1486
    for t in tops:
        check_levels(t)
    # forcing the first cell onto level 1 leaves 848 (documentation/explanation/search_space.md)
    assert sum(t[0] == 1 for t in tops) == 848


def test_small_space_counts_match_brute_force():
    import itertools

    from c2fnas_auto.errors import GenotypeError

    def brute(n, nl):
        count = 0
        for s in itertools.product(range(1, nl + 1), repeat=n):
            try:
                check_levels(s, nl, n)
                count += 1
            except GenotypeError:
                pass
        return count

    for n, nl in [(4, 3), (6, 3), (7, 4)]:
        assert len(enumerate_topologies(n, nl)) == brute(n, nl)


def test_neighbours_are_valid_one_step_mutations():
    ref = tuple(reference_genotype().levels)
    nbs = topology_neighbours(ref)
    assert nbs and ref not in nbs
    all_tops = set(enumerate_topologies())
    for nb in nbs:
        assert nb in all_tops
        assert topology_distance(ref, nb) == 1
    # every valid single-cell change is found
    expected = [t for t in all_tops if topology_distance(ref, t) == 1]
    assert sorted(nbs) == sorted(expected)


def test_genotype_neighbours_change_one_op():
    g = reference_genotype()
    nbs = genotype_neighbours(g)
    assert len(nbs) == 24
    for nb in nbs:
        assert nb.levels == g.levels
        assert sum(a != b for a, b in zip(nb.ops, g.ops)) == 1


def test_distance_is_a_metric_on_samples():
    tops = enumerate_topologies()[::97]
    for a in tops:
        assert topology_distance(a, a) == 0
        for b in tops:
            assert topology_distance(a, b) == topology_distance(b, a)
    assert topology_distance((1,) * 12, (1, 2, 3, 4, 4, 4, 4, 4, 4, 3, 2, 1)) == 24
