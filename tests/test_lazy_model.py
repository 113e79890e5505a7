"""The base of every lazily loaded model: loaded once whatever the threads, one failure line."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from core.errors import ModelUnavailable
from core.vision.lazy_model import LazyModel


class Slow(LazyModel):
    kind = "Test model"
    offline_hint = "set TEST_MODEL to a local file"

    def __init__(self, fail_first: bool = False) -> None:
        super().__init__()
        self.loads = 0
        self.fail_first = fail_first
        self.barrier = threading.Barrier(8)

    def _load(self) -> None:
        self.loads += 1
        time.sleep(0.2)
        if self.fail_first and self.loads == 1:
            try:
                raise OSError("hub unreachable\nTraceback line two\n  more")
            except OSError as exc:
                raise self.unavailable("tiny-test", exc) from exc


def test_loaded_once_by_whichever_thread_asks_first():
    model = Slow()

    def ask(_):
        model.barrier.wait()
        model.load()
        return model.loaded

    with ThreadPoolExecutor(8) as pool:
        assert all(pool.map(ask, range(8)))
    assert model.loads == 1


def test_a_failed_load_is_one_line_and_is_tried_again():
    model = Slow(fail_first=True)
    with pytest.raises(ModelUnavailable) as caught:
        model.load()
    message = str(caught.value)
    assert message == ("Test model 'tiny-test' could not be loaded (OSError: hub unreachable). It downloads on first "
                       "use when online; offline, set TEST_MODEL to a local file.")
    assert not model.loaded
    model.load()
    assert model.loaded and model.loads == 2
