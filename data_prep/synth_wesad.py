"""A synthetic WESAD set in the published per-subject format, for runs without a data path.

Writes, for the 12 subject ids we hold real files of (S2-S11, S13, S14), ``SX/SX_quest.csv``
(``;``-separated, ``# ORDER`` / ``# START`` / ``# END`` in minutes.seconds, then questionnaire
rows) and ``SX/SX_E4_Data/{ACC,BVP,EDA,TEMP}.csv`` in the E4 format (start time row, rate row,
samples; ACC in 1/64 g as integers), or with ``form="pickle"`` ``SX/SX.pkl`` in the authors'
synchronised structure (float64 signals, int32 labels at 700 Hz, chest signals included).

As in the real recordings, the E4 starts several minutes before the protocol clock (a random
offset per subject), the protocol runs Base, then TSST and Fun in a subject-dependent order with a
meditation after each, with reading phases and questionnaires (movement) in between. Each
condition shifts the physiology relative to the subject's own level: stress raises heart rate
(BVP pulse rate), tonic EDA and skin-conductance responses and lowers skin temperature; amusement
does so weakly; meditation calms; the accelerometer shows posture and a movement level per phase
(meditations are still). Subjects differ in their levels by more than the conditions move them, so
the task is learnable but not trivial, and is learnt from changes rather than absolute values.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from data_prep.cache_paths import build_once, default_cache_root
from data_prep.wesad import DEFAULT_STEP_SECONDS, DEFAULT_WINDOW_SECONDS, EDGE_MARGIN_S, PICKLE_RATE

SYNTHETIC_FORMAT_VERSION = 1
SUBJECTS = ("S2", "S3", "S4", "S5", "S6", "S7", "S8", "S9", "S10", "S11", "S13", "S14")
RATES = {"ACC": 32, "BVP": 64, "EDA": 4, "TEMP": 4}
# the real protocol's lengths in seconds, before scaling
REAL_LENGTHS = {"Base": 1200, "TSST": 640, "Fun": 392, "Medi 1": 420, "Medi 2": 420, "bRead": 72, "sRead": 72,
                "fRead": 72}
SHORTEST = 2 * EDGE_MARGIN_S + DEFAULT_WINDOW_SECONDS
PICKLE_IDS = {"Base": 1, "TSST": 2, "Fun": 3, "Medi 1": 4, "Medi 2": 4, "bRead": 6, "sRead": 5, "fRead": 7}
# condition -> (heart-rate change bpm, tonic EDA factor, SCR per minute, temperature change C, movement level)
EFFECT = {"Base": (0.0, 1.0, 1.0, 0.0, 1.2), "TSST": (14.0, 1.9, 4.0, -0.35, 2.5), "Fun": (4.0, 1.15, 1.8, 0.0, 1.0),
          "Medi 1": (-4.0, 0.85, 0.4, 0.1, 0.3), "Medi 2": (-4.0, 0.85, 0.4, 0.1, 0.3),
          "read": (2.0, 1.0, 1.2, 0.0, 1.5),
          "gap": (6.0, 1.1, 2.0, 0.0, 6.0)}


def _schedule(scale: float, rng: np.random.Generator) -> list[tuple[str, float, float]]:
    """(name, start, end) in protocol seconds: Base, then TSST/Fun in either order, each followed by a meditation."""
    middle = [("TSST", "sRead"), ("Fun", "fRead")]
    if rng.random() < 0.5:
        middle.reverse()
    names = ["bRead", "Base", *[n for pair in middle for n in (pair[1], pair[0], "Medi")]]
    short = min(1.0, 2 * scale)  # meditations, readings and pauses shrink less than the three conditions
    t, out, medi = rng.uniform(90, 300) * short, [], 0
    for name in names:
        if name == "Medi":
            medi += 1
            name = f"Medi {medi}"
        if name in ("Base", "TSST", "Fun"):  # at least one default window between the alignment margins
            length = SHORTEST + scale * (REAL_LENGTHS[name] - SHORTEST)
        else:
            length = REAL_LENGTHS[name] * short
        start = round(t)
        out.append((name, float(start), float(start + round(length))))
        t = start + round(length) + rng.uniform(60, 180) * short  # questionnaires and walking between phases
    return out


def _phase_at(schedule: list[tuple[str, float, float]], t: np.ndarray) -> list[str]:
    names = np.full(t.shape, "gap", dtype=object)
    for name, a, b in schedule:
        names[(t >= a) & (t < b)] = "read" if name.endswith("Read") else name
    return list(names)


def _subject(schedule, offset: float, tail: float, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Wrist signals at their native rates from the E4's start, as float64 (n, columns)."""
    seconds = offset + schedule[-1][2] + tail
    hr0, eda0, temp0 = rng.uniform(62, 88), np.exp(rng.uniform(np.log(0.3), np.log(4.0))), rng.uniform(31.5, 34.0)
    per_s = np.arange(int(seconds))
    phases = _phase_at(schedule, per_s - offset)
    effect = np.array([EFFECT[p] for p in phases])
    smooth = np.ones(60) / 60  # physiology follows a phase change within about a minute
    level = np.stack([np.convolve(np.pad(effect[:, k], (59, 0), mode="edge"), smooth, "valid")
                      for k in range(effect.shape[1])], axis=1)
    level[:, 4] = effect[:, 4]  # movement, unlike physiology, stops and starts with the phase
    hr = hr0 + level[:, 0] * rng.uniform(0.6, 1.3) + np.cumsum(rng.normal(0, 0.15, per_s.size)).clip(-6, 6)
    out = {}
    t = np.arange(int(seconds * RATES["BVP"])) / RATES["BVP"]
    beat_phase = 2 * np.pi * np.cumsum(np.interp(t, per_s, hr) / 60.0) / RATES["BVP"]
    amplitude = rng.uniform(30, 90) * (1 + 0.2 * np.sin(2 * np.pi * t / 17.0))
    out["BVP"] = (amplitude * (np.sin(beat_phase) + 0.35 * np.sin(2 * beat_phase + 0.8))
                  + rng.normal(0, 8, t.size))[:, None]
    t = np.arange(int(seconds * RATES["EDA"])) / RATES["EDA"]
    tonic = eda0 * np.interp(t, per_s, level[:, 1]) * (1 + 0.1 * np.sin(2 * np.pi * t / 600))
    responses = np.zeros(t.size)
    rate_per_tick = np.interp(t, per_s, level[:, 2]) / 60.0 / RATES["EDA"]
    onsets = np.flatnonzero(rng.random(t.size) < rate_per_tick)
    kernel_t = np.arange(0, 20, 1 / RATES["EDA"])
    kernel = (1 - np.exp(-kernel_t / 0.75)) * np.exp(-kernel_t / 4.0)
    for onset in onsets:
        span = min(kernel.size, t.size - onset)
        responses[onset:onset + span] += rng.uniform(0.05, 0.3) * eda0 * kernel[:span]
    out["EDA"] = np.maximum(tonic + responses + rng.normal(0, 0.01 * eda0, t.size), 0.0)[:, None]
    out["TEMP"] = (temp0 + np.interp(t, per_s, level[:, 3]) + np.cumsum(rng.normal(0, 0.003, t.size))
                   + rng.normal(0, 0.02, t.size))[:, None]
    t = np.arange(int(seconds * RATES["ACC"])) / RATES["ACC"]
    movement = np.interp(t, per_s, level[:, 4])
    posture = np.array([rng.uniform(-20, 20), rng.uniform(-40, -10), rng.uniform(40, 58)])
    standing = np.interp(t, per_s, np.array([p == "TSST" for p in phases], dtype=float))
    gravity = posture + standing[:, None] * np.array([25.0, 20.0, -15.0])
    wobble = np.stack([np.convolve(rng.normal(0, 1, t.size), np.ones(8) / np.sqrt(8), "same") for _ in range(3)], 1)
    out["ACC"] = np.round(gravity + movement[:, None] * 2.0 * wobble + rng.normal(0, 0.5, (t.size, 3)))
    return out


def _quest_text(subject: str, schedule, rng: np.random.Generator) -> str:
    def mmss(seconds: float) -> str:
        minutes, rest = divmod(int(seconds), 60)
        return f"{minutes}.{rest:02d}".rstrip("0").rstrip(".") if rest else str(minutes)  # as the real files print
    order = ["Base", "TSST", "Medi 1", "Fun", "Medi 2", "bRead", "sRead", "fRead"]
    times = {name: (a, b) for name, a, b in schedule}
    width = 26

    def row(key: str, cells) -> str:
        return ";".join([f"# {key}", *map(str, cells)] + [""] * (width - len(cells)))
    lines = [row("Subj", [subject]), row("ORDER", order), row("START", [mmss(times[n][0]) for n in order]),
             row("END", [mmss(times[n][1]) for n in order]), ";" * width]
    lines += [row("PANAS", rng.integers(1, 6, 24)) for _ in range(5)] + [";" * width]
    lines += [row("STAI", rng.integers(1, 5, 6)) for _ in range(5)]
    return "\n".join(lines) + "\n"


def synthetic_offset(subject: str, seed: int) -> float:
    """The seconds the synthetic E4 of ``subject`` runs before the protocol clock: what alignment must find."""
    return float(round(np.random.default_rng([seed, int(subject[1:]), 1]).uniform(300, 1200)))


def _write_e4(folder: Path, signals: dict[str, np.ndarray], start: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    formats = {"ACC": "%d", "BVP": "%.2f", "EDA": "%.6f", "TEMP": "%.2f"}
    for key, values in signals.items():
        columns = values.shape[1]
        header = ", ".join([f"{start:.6f}"] * columns) + "\n" + ", ".join([f"{RATES[key]:.6f}"] * columns)
        np.savetxt(folder / f"{key}.csv", values, fmt=formats[key], delimiter=",", header=header, comments="")


def write_wesad_pickle(path: Path, subject: str, wrist: dict[str, np.ndarray], label: np.ndarray,
                       rng: np.random.Generator) -> None:
    """``SX.pkl`` in the published structure: chest signals at 700 Hz next to the wrist ones."""
    n = label.size
    chest = {"ACC": rng.normal(0, 0.1, (n, 3)), "ECG": rng.normal(0, 0.5, (n, 1)), "EMG": rng.normal(0, 0.01, (n, 1)),
             "EDA": rng.uniform(1, 5, (n, 1)), "Temp": rng.uniform(30, 34, (n, 1)), "Resp": rng.normal(0, 2, (n, 1))}
    content = {"signal": {"chest": chest, "wrist": {k: np.asarray(v, dtype=np.float64) for k, v in wrist.items()}},
               "label": label.astype(np.int32), "subject": subject}
    with path.open("wb") as handle:
        pickle.dump(content, handle, protocol=2)


def write_synthetic_wesad(out_dir: Path, n_windows: int = 1000, seed: int = 0, form: str = "wrist",
                          subjects: tuple[str, ...] = SUBJECTS, scale: float = 0.0) -> Path:
    """About ``n_windows`` default windows over ``subjects``, as wrist files (default) or pickles.

    ``scale`` (0 < scale <= 1), when given, sets the protocol's length against the real one instead:
    a pickle holds 700 Hz chest signals (about 45 kB per second), so its fixtures use a small scale.
    """
    if form not in ("wrist", "pickle"):
        raise ValueError(f"form {form!r}: expected 'wrist' or 'pickle'")
    # at scale s a subject gives s * (usable / step) + 3 windows on the wrist route (117 at the real lengths)
    usable = sum(REAL_LENGTHS[n] - SHORTEST for n in ("Base", "TSST", "Fun"))
    scale = scale or float(np.clip((n_windows / len(subjects) - 3) * DEFAULT_STEP_SECONDS / usable, 0.0, 1.0))
    root = Path(out_dir)
    for subject in subjects:
        rng = np.random.default_rng([seed, int(subject[1:])])
        schedule = _schedule(scale, rng)
        folder = root / subject
        folder.mkdir(parents=True, exist_ok=True)
        if form == "wrist":
            offset, tail = synthetic_offset(subject, seed), rng.uniform(120, 600)
            signals = _subject(schedule, offset, tail, rng)
            (folder / f"{subject}_quest.csv").write_text(_quest_text(subject, schedule, rng))
            _write_e4(folder / f"{subject}_E4_Data", signals, 1_500_000_000 + 86_400 * int(subject[1:]))
        else:
            signals = _subject(schedule, 0.0, 60.0, rng)
            seconds = min(len(v) / RATES[k] for k, v in signals.items())
            t = np.arange(int(seconds * PICKLE_RATE)) / PICKLE_RATE
            label = np.zeros(t.size, dtype=np.int32)
            for name, a, b in schedule:
                label[(t >= a) & (t < b)] = PICKLE_IDS[name]
            write_wesad_pickle(folder / f"{subject}.pkl", subject, signals, label, rng)
    return root


def ensure_synthetic_wesad(n_windows: int, seed: int = 0, cache_root: Path | None = None) -> Path:
    base = default_cache_root() if cache_root is None else Path(cache_root)
    target = base / f"synthetic-wesad-n{n_windows}-s{seed}-v{SYNTHETIC_FORMAT_VERSION}"
    folder, _ = build_once(target, lambda tmp: write_synthetic_wesad(tmp, n_windows, seed))
    return folder
