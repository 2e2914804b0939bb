"""pagerl.distributed.compute_log: the union of compute spans, which the RL benchmark's share outside compute is."""

import time

from pagerl.distributed.compute_log import ComputeLog, covered_seconds


def test_overlapping_spans_count_once_and_are_clipped_to_the_window():
    spans = [("train", 1.0, 3.0), ("generate", 2.0, 4.0),  # overlap: [1, 4] is 3 s, not 4
             ("reward", 6.0, 7.0), ("probe", 6.5, 6.8),  # nested inside the reward span
             ("generate", -2.0, 0.5), ("train", 9.0, 12.0)]  # partly outside [0, 10]
    assert covered_seconds(spans, 0.0, 10.0) == 0.5 + 3.0 + 1.0 + 1.0
    assert covered_seconds(spans, 4.0, 6.0) == 0.0
    assert covered_seconds([], 0.0, 10.0) == 0.0
    # the order spans arrive in (roles report one after another) does not matter
    assert covered_seconds(list(reversed(spans)), 0.0, 10.0) == covered_seconds(spans, 0.0, 10.0)


def test_a_log_records_when_its_role_computed_and_is_emptied_by_take():
    log = ComputeLog()
    before = time.time()
    with log.span("train"):
        time.sleep(0.01)
    try:
        with log.span("experience"):
            raise RuntimeError("a failed phase still took its time")
    except RuntimeError:
        pass
    spans = log.take()
    assert [p for p, _, _ in spans] == ["train", "experience"]
    assert before <= spans[0][1] < spans[0][2] - 0.009 <= spans[1][1] <= spans[1][2] <= time.time()
    assert log.take() == []
