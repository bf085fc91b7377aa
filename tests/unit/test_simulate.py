"""The demo's traffic shapes: real WAV bytes and a Zipf prompt distribution."""

from __future__ import annotations

import io
import random
import wave
from collections import Counter

from streams.tools.simulate import Zipf, wav_tone


def test_wav_tone_is_a_real_wav_file() -> None:
    data = wav_tone(0.5, rate=16_000)
    with wave.open(io.BytesIO(data)) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, 16_000)
        assert w.getnframes() == 8_000
    assert data[:4] == b"RIFF" and data[8:12] == b"WAVE"


def test_zipf_ranks_are_in_range_and_skewed() -> None:
    zipf = Zipf(100, 1.2, random.Random(1))
    counts = Counter(zipf.draw() for _ in range(20_000))
    assert set(counts) <= set(range(100))
    assert counts[0] > counts[1] > counts[9] > counts[99]
    # P(0) = 1 / sum(1 / k^1.2, k = 1..100) ≈ 0.278
    assert 0.26 < counts[0] / 20_000 < 0.30
