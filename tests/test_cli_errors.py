"""User errors at the edges: public API names, Ultralytics argument errors and KD settings as one clear message."""

from __future__ import annotations


def test_public_api_exports_train_baseline():
    import detkd
    from detkd import train_baseline
    from detkd.api import train_baseline as original

    assert train_baseline is original
    assert "train_baseline" in detkd.__all__
