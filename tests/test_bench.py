import torch

from emu_video.bench import peak_growth, timed


def test_peak_growth_sees_a_large_transient_allocation():
    def allocate():
        t = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched so it is resident
        return float(t[-1])
    assert peak_growth(allocate, "cpu") > 48


def test_timed_returns_a_median_per_candidate():
    calls = []
    out = timed({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, "cpu", repeats=3)
    assert set(out) == {"a", "b"} and all(v >= 0 for v in out.values())
    assert calls == ["a", "b"] + ["a", "b"] * 3  # warm-up, then interleaved
