"""A synthetic PAMAP2 set in the published format, for runs without a data path.

Writes ``Protocol/subject101.dat`` .. ``subject109.dat``: space-separated, 54 columns, ``NaN``
for missing values, one row per 100 Hz tick. Each subject performs the 12 protocol activities in
turn, separated by transient (activity 0) stretches. Per activity, each IMU's accelerometer shows a
posture (a gravity direction) plus a periodic movement (its frequency and amplitude), the gyroscope
follows the movement, the magnetometer a subject's heading, the temperature drifts, and the heart
rate has an activity level; it is written only every ~11th tick (about 9 Hz, as in the real files),
and about 0.5 % of IMU ticks are dropped (``NaN``). Subjects differ in movement frequency, posture
tilt and heart rate, and noise is comparable to the differences between neighbouring activities
(sitting and standing, the two stair directions), so the task is learnable but not trivial.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from data_prep.cache_paths import build_once, default_cache_root
from data_prep.pamap2 import ACTIVITIES, COLUMNS, DEFAULT_STEP_SECONDS, DEFAULT_WINDOW_SECONDS, IMUS, RATE

SYNTHETIC_FORMAT_VERSION = 1
SUBJECTS = tuple(range(101, 110))
G = 9.81
# activity -> (movement frequency Hz, movement amplitude m/s^2, heart rate bpm, posture angle rad)
PROFILE = {1: (0.0, 0.1, 70, 1.5), 2: (0.0, 0.2, 80, 0.35), 3: (0.0, 0.3, 88, 0.05), 4: (1.8, 3.0, 110, 0.1),
           5: (2.8, 9.0, 160, 0.15), 6: (1.3, 2.0, 125, 0.5), 7: (1.9, 4.0, 120, 0.15), 12: (1.6, 3.5, 130, 0.2),
           13: (1.9, 3.5, 120, 0.05), 16: (0.8, 2.0, 105, 0.3), 17: (0.5, 1.0, 95, 0.25), 24: (2.4, 12.0, 165, 0.1)}


def _subject_rows(subject: int, seconds_per_activity: float, rng: np.random.Generator) -> np.ndarray:
    blocks, t0 = [], 5.0
    tempo = rng.uniform(0.9, 1.1)
    heading = rng.normal(0, 1, 3)
    heading = 40.0 * heading / np.linalg.norm(heading)
    for activity in [0, *ACTIVITIES]:
        for current, seconds in ((activity, seconds_per_activity), (0, rng.uniform(1.0, 3.0))):
            if current == 0 and activity == 0:
                continue
            n = int(seconds * RATE)
            t = t0 + np.arange(n) / RATE
            freq, amp, hr, angle = PROFILE.get(current, (0.5, 1.0, 90, 0.3))
            rows = np.full((n, len(COLUMNS)), np.nan)
            rows[:, 0], rows[:, 1] = np.round(t, 2), current
            hr_ticks = np.arange(n) % 11 == 0
            rows[hr_ticks, 2] = np.round(hr * rng.uniform(0.93, 1.07) + rng.normal(0, 3, hr_ticks.sum()))
            for k, imu in enumerate(IMUS):
                base = 1 + 2 + 17 * k
                tilt = angle + rng.normal(0, 0.08)
                gravity = G * np.array([np.sin(tilt), 0.2 * k - 0.2, np.cos(tilt)])
                phase = 2 * np.pi * freq * tempo * (1 + 0.1 * k) * t + rng.uniform(0, 2 * np.pi)
                motion = amp * (0.6 + 0.3 * k) * np.stack([np.sin(phase), 0.5 * np.cos(phase), np.sin(2 * phase)], 1)
                acc = gravity + motion + rng.normal(0, 0.6, (n, 3))
                rows[:, base] = 32 + 0.001 * t + rng.normal(0, 0.05, n)
                rows[:, base + 1:base + 4] = acc
                rows[:, base + 4:base + 7] = np.clip(acc, -6 * G, 6 * G)
                rows[:, base + 7:base + 10] = 0.3 * np.gradient(motion, axis=0) * RATE / max(freq, 0.5) \
                    + rng.normal(0, 0.05, (n, 3))
                rows[:, base + 10:base + 13] = heading + rng.normal(0, 1.5, (n, 3))
                quaternion = rng.normal(0, 1, (n, 4))
                rows[:, base + 13:base + 17] = quaternion / np.linalg.norm(quaternion, axis=1, keepdims=True)
                dropped = rng.random(n) < 0.005
                rows[dropped, base:base + 17] = np.nan
            blocks.append(rows)
            t0 = t[-1] + 1.0 / RATE
    return np.concatenate(blocks)


def write_synthetic_pamap2(out_dir: Path, n_windows: int = 1000, seed: int = 0) -> Path:
    """About ``n_windows`` default windows over 9 subjects x 12 activities, in the Protocol format."""
    per_segment = max(1, round(n_windows / (len(SUBJECTS) * len(ACTIVITIES))))
    seconds = DEFAULT_WINDOW_SECONDS + (per_segment - 1) * DEFAULT_STEP_SECONDS + 0.5
    folder = Path(out_dir) / "Protocol"
    folder.mkdir(parents=True, exist_ok=True)
    for subject in SUBJECTS:
        rows = _subject_rows(subject, seconds, np.random.default_rng([seed, subject]))
        lines = [" ".join("NaN" if np.isnan(v) else f"{v:.6g}" for v in row) for row in rows]
        (folder / f"subject{subject}.dat").write_text("\n".join(lines) + "\n")
    return Path(out_dir)


def ensure_synthetic_pamap2(n_windows: int, seed: int = 0, cache_root: Path | None = None) -> Path:
    base = default_cache_root() if cache_root is None else Path(cache_root)
    target = base / f"synthetic-pamap2-n{n_windows}-s{seed}-v{SYNTHETIC_FORMAT_VERSION}"
    folder, _ = build_once(target, lambda tmp: write_synthetic_pamap2(tmp, n_windows, seed))
    return folder
