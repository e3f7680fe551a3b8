import pytest

from workers.inference.batching import MicroBatcher


def test_batch_is_ready_when_full():
    batcher = MicroBatcher[int](max_batch_size=3, max_wait_s=10.0)
    for i in range(3):
        assert not batcher.ready(0.0)
        batcher.add(i, 0.0)
    assert batcher.ready(0.0)
    assert batcher.room() == 0
    assert batcher.take() == [0, 1, 2]
    assert len(batcher) == 0


def test_batch_is_ready_when_oldest_waited_long_enough():
    batcher = MicroBatcher[str](max_batch_size=8, max_wait_s=0.020)
    batcher.add("a", 100.000)
    batcher.add("b", 100.015)
    assert batcher.time_until_ready(100.010) == pytest.approx(0.010)
    assert not batcher.ready(100.019)
    assert batcher.ready(100.020)
    assert batcher.take() == ["a", "b"]


def test_take_never_exceeds_max_and_keeps_fifo_order():
    batcher = MicroBatcher[int](max_batch_size=4, max_wait_s=0.0)
    for i in range(10):
        batcher.add(i, float(i))
    assert batcher.take() == [0, 1, 2, 3]
    assert batcher.take() == [4, 5, 6, 7]
    assert batcher.take() == [8, 9]
    assert batcher.time_until_ready(0.0) is None


def test_invalid_configuration_is_refused():
    with pytest.raises(ValueError):
        MicroBatcher(0, 0.01)
