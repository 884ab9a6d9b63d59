"""Row 8's goal: time, organ and lesion must all meet their bars."""

from benchmarks.rows.end_to_end import goal_met


def test_demo_goal_needs_time_organ_and_lesion():
    assert goal_met(150.0, 0.99, 0.66) is True
    assert goal_met(181.0, 0.99, 0.66) is False  # too slow
    assert goal_met(150.0, 0.94, 0.66) is False  # organ below 0.95
    assert goal_met(150.0, 0.99, 0.00) is False  # lesion not learned (the old demo)
    assert goal_met(150.0, 0.99, None) is None  # lesion absent from every test case: not judged
