"""A simulated radiologist reading one synthetic radiograph: fixations and raw gaze samples.

`simulate_reading`: the reader fixates the centre first, then runs a systematic search (lung zones
top to bottom, side by side or one lung after the other, costophrenic angles, heart, hila,
trachea) with random omissions and swaps. An abnormality
captures the gaze early (a cluster of fixations on the consolidation; on the heart borders and
perihilar regions for CHF) and is revisited at the end; those fixations last longer. Normal
images get a broad second survey instead. Each image gets 25-50 fixations of 0.15-0.6 s within
``reading_seconds``. Raw samples (``gaze_hz``) jitter by a few pixels around each fixation, with
linearly interpolated samples during saccades. A fraction ``offscreen_frac`` of fixations look at
the display padding or below the screen, so their coordinates fall outside the image, as in the
real data.
"""

from __future__ import annotations

import numpy as np

from cxrlib.synthetic import anatomy

SCREEN = (1920, 1080)  # width, height of the simulated reading display
SURVEY_ZONES = ("upper", "middle", "lower")


def display_fit(h: int, w: int, screen=SCREEN) -> dict:
    """Fit an (h, w) image on the screen keeping its aspect ratio, centred; padding in pixels."""
    k = min(screen[0] / w, screen[1] / h)
    dw, dh = round(w * k), round(h * k)
    left, top = (screen[0] - dw) // 2, (screen[1] - dh) // 2
    return dict(left=left, right=screen[0] - dw - left, top=top, bottom=screen[1] - dh - top,
                sx=dw / w, sy=dh / h)


def _survey(rng: np.random.Generator) -> list[str]:
    """A systematic search order with randomness: one lung then the other, or side by side."""
    first, second = ("R", "L") if rng.random() < 0.6 else ("L", "R")
    if rng.random() < 0.5:  # lung by lung, top to bottom
        order = [f"{s}_{z}" for s in (first, second) for z in SURVEY_ZONES]
        order.insert(3, f"{first}_cp")
        order.append(f"{second}_cp")
    else:  # compare the sides zone by zone
        order = [f"{s}_{z}" for z in SURVEY_ZONES for s in (first, second)] + ["R_cp", "L_cp"]
    order += list(rng.permutation(["heart", "R_hilum", "L_hilum", "trachea"]))
    for i in range(len(order) - 1):  # readers do not follow their own routine exactly
        if rng.random() < 0.15:
            order[i], order[i + 1] = order[i + 1], order[i]
    return [t for t in order if rng.random() > 0.08]


def _focus(p: dict) -> list[tuple[str, float]]:
    """Where an abnormality pulls the gaze: (landmark, scatter in image heights)."""
    if p["label"] == 1:
        f = [("heart_L_border", 0.02), ("heart_R_border", 0.02), ("heart", 0.04),
             ("R_hilum", 0.045), ("L_hilum", 0.045)]
        return f + [(cp, 0.02) for cp, d in zip(("R_cp", "L_cp"), p["effusion"]) if d]
    if p["label"] == 2:
        return [("lesion", 0.45 * p["lesion"]["r"])] * 3 + [("heart", 0.04)]
    return []


def simulate_reading(rng: np.random.Generator, p: dict, acq: dict, *, reading_seconds=(8.0, 14.0),
                     gaze_hz: float = 60.0, offscreen_frac: float = 0.03):
    """One radiologist reading one image: (fixations, raw samples) as dicts of arrays.

    Positions are native pixels (x = column, y = row); times in seconds from the image's onset.
    """
    lm, h, w = anatomy.landmarks(p), acq["h"], acq["w"]
    lm["centre"] = (0.0, 0.45)  # the first look lands near the middle of the display
    total = rng.uniform(*reading_seconds)
    n_fix = int(np.clip(round(total / 0.3), 25, 50))
    seq = [("centre", 0.04, False)]
    for t in _survey(rng):
        seq += [(t, 0.035, False)] * (2 if rng.random() < 0.35 else 1)
    focus = _focus(p)
    if focus:  # a conspicuous finding captures the gaze early...
        at = int(rng.integers(2, 7))
        seq[at:at] = [(*focus[i], True) for i in rng.integers(len(focus), size=rng.integers(4, 8))]
    while len(seq) < n_fix:  # ...and is revisited; a normal image gets a broad second survey
        if focus and rng.random() < 0.6:
            seq.append((*focus[rng.integers(len(focus))], True))
        else:
            seq.append((seq[rng.integers(1, len(seq))][0], 0.05, False))
    seq = seq[:n_fix]

    ab = np.array([lm[t] for t, _, _ in seq])
    ab += rng.standard_normal(ab.shape) * np.array([[s] for _, s, _ in seq])
    x, y = anatomy.to_pixels(acq, ab[:, 0], ab[:, 1])
    x, y = np.clip(x, 0.02 * w, 0.98 * w), np.clip(y, 0.02 * h, 0.98 * h)
    off = rng.random(n_fix) < offscreen_frac  # looks at the display padding or below the screen
    side = rng.integers(3, size=n_fix)
    x = np.where(off & (side == 0), -w * rng.uniform(0.05, 0.35, n_fix), x)
    x = np.where(off & (side == 1), w * rng.uniform(1.05, 1.35, n_fix), x)
    y = np.where(off & (side == 2), h * rng.uniform(1.03, 1.12, n_fix), y)

    dur = rng.gamma(4.0, 0.065, n_fix) * np.where([f for _, _, f in seq], 1.6, 1.0)
    sacc = rng.uniform(0.025, 0.06, n_fix)
    sacc[-1] = 0.0
    dur = np.clip(dur * (total - sacc.sum()) / dur.sum(), 0.15, 0.6)
    start = np.concatenate([[0.0], np.cumsum(dur + sacc)[:-1]])
    fix = dict(t=start, x=x, y=y, s=start, d=dur)

    t = np.arange(int((start[-1] + dur[-1]) * gaze_hz)) / gaze_hz
    i = np.searchsorted(start, t, side="right") - 1
    j = np.minimum(i + 1, n_fix - 1)
    frac = np.clip((t - start[i] - dur[i]) / np.maximum(sacc[i], 1e-9), 0, 1)  # 0 while fixating
    jitter = rng.standard_normal((2, t.size)) * 0.006 * h  # fixational eye movements, a few px
    samples = dict(t=t, x=x[i] + frac * (x[j] - x[i]) + jitter[0],
                   y=y[i] + frac * (y[j] - y[i]) + jitter[1], s=start[i], d=dur[i], i=i)
    return fix, samples
