from c2fnas_auto.nas.genotype import reference_genotype
from c2fnas_auto.nas.plot import plot_genotype, plot_links


def test_links_follow_the_plan_of_each_style():
    g = reference_genotype()
    assert plot_links(g, "c2fnas") == [("same", 0, 2), ("skip", 5, 7), ("skip", 4, 9), ("skip", 2, 10),
                                       ("same", 10, 12)]
    # residual: only the encoder skips, added after the transition of the first decoder cell per level
    assert plot_links(g, "residual") == [("skip", 5, 7), ("skip", 4, 9), ("skip", 2, 10)]


def test_plot_writes_a_png_for_both_styles(tmp_path):
    for style in ("c2fnas", "residual"):
        out = plot_genotype(reference_genotype(), tmp_path / f"{style}.png", cell_style=style)
        assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
