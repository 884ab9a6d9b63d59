"""Every plot the project writes goes through `utils.io.save_figure`: whole PNG or nothing."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from c2fnas_auto.utils.io import TMP_MARKER, save_figure  # noqa: E402


def test_save_figure_writes_a_png_and_closes_the_figure(tmp_path):
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    out = save_figure(fig, tmp_path / "sub" / "curve.png", dpi=50)
    assert out == tmp_path / "sub" / "curve.png"
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not plt.fignum_exists(fig.number)
    assert not [p for p in out.parent.iterdir() if TMP_MARKER in p.name]


def test_a_failed_save_leaves_neither_file_nor_temporary(tmp_path):
    fig, _ = plt.subplots()
    with pytest.raises(TypeError, match="no_such_option"):
        save_figure(fig, tmp_path / "bad.png", no_such_option=1)
    plt.close(fig)
    assert list(tmp_path.iterdir()) == []
