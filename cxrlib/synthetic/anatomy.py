"""Procedural frontal chest radiographs for the synthetic EGD-like data set (see `synthetic.py`).

Everything is drawn in *anatomical* coordinates ``(a, b)``: ``a`` runs left to right across the
image from the midline (``a < 0`` is the image left, which is the **patient's right**), ``b`` runs
top to bottom, both in units of the image height. A small per-image affine (scale, rotation,
shift) maps them to pixels, so every landmark (heart, hila, lesion) is known in pixels too and the
simulated reader can look at it.

The picture is a sum of densities, like an X-ray: body soft tissue, minus air in the lungs, plus
mediastinum, heart, spine, ribs, clavicles, vessels and, below the diaphragm domes, the abdomen.
The class signatures are added on top (`render`). A final rank transform and a random tone curve
make the grey-level histogram independent of the class (see `render`).

``difficulty`` (0 to 1) weakens the signatures and makes the classes overlap, as real
radiographs do: milder cardiomegaly and borderline-normal hearts (the cardiothoracic ratios of the
classes overlap), subtler oedema haze, fewer effusions and less vascular redistribution in CHF,
smaller and fainter consolidations, and a faint haze in some normal studies. At 0
every signature has its full strength and the draws are those of the generator without this
setting. `DEFAULT_DIFFICULTY` is calibrated on the demo profile (docs/reproduction-notes.md).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage
from scipy.special import expit

CTR_RANGE = {0: (0.42, 0.50), 1: (0.55, 0.68), 2: (0.42, 0.50)}  # label -> cardiothoracic ratio
# At difficulty 1: CHF hearts from 0.48 (mild cardiomegaly), other hearts up to 0.52 (borderline).
CTR_RANGE_HARD = {0: (0.42, 0.52), 1: (0.48, 0.60), 2: (0.42, 0.52)}
DEFAULT_DIFFICULTY = 0.75  # the demo profile's calibration; config.StageConfig.synthetic_difficulty


def _lerp(easy, hard, difficulty: float):
    """Interpolate numbers or tuples of numbers between their easy (0) and hard (1) values."""
    if isinstance(easy, tuple):
        return tuple(_lerp(e, h, difficulty) for e, h in zip(easy, hard))
    return easy + (hard - easy) * difficulty


def ctr_range(label: int, difficulty: float = 0.0) -> tuple[float, float]:
    return _lerp(CTR_RANGE[label], CTR_RANGE_HARD[label], difficulty)


def check_difficulty(difficulty) -> float:
    if not isinstance(difficulty, (int, float)) or isinstance(difficulty, bool) or not 0 <= difficulty <= 1:
        raise ValueError(f"difficulty must be a number in [0, 1], got {difficulty!r}")
    return float(difficulty)


def draw_patient(rng: np.random.Generator, label: int, difficulty: float = 0.0) -> dict:
    """Body shape and disease of one patient; all of that patient's studies share it.

    ``difficulty`` only rescales draws (same draws in the same order) and adds draws at the end,
    so the bodies of a seed stay the same at every difficulty.
    """
    d = check_difficulty(difficulty)
    T = rng.uniform(0.33, 0.37)  # lateral lung edge (thoracic half-width)
    cp, apex = rng.uniform(0.74, 0.79), rng.uniform(0.08, 0.11)  # costophrenic angles, apices
    dome_r = cp - rng.uniform(0.08, 0.11)  # patient's right hemidiaphragm sits higher
    p = dict(label=label, T=T, m=rng.uniform(0.045, 0.06), apex=apex, cp=cp,
             hilum=apex + rng.uniform(0.46, 0.52) * (dome_r - apex),
             dome=(dome_r, dome_r + rng.uniform(0.005, 0.03)), body=rng.uniform(0.42, 0.48),
             ctr=rng.uniform(*ctr_range(label, d)), tilt=math.radians(rng.uniform(20, 38)),
             aspect=rng.uniform(0.62, 0.74), bubble=rng.random() < 0.7,
             rib_period=rng.uniform(0.052, 0.060), rib_phase=rng.uniform(0, 1),
             vessels=[(s, rng.uniform(-1.2, 1.3), rng.uniform(0.10, 0.22)) for s in (-1, 1)
                      for _ in range(9)])
    p["difficulty"] = d
    if label == 1:  # CHF: oedema around both hila, often blunted costophrenic angles
        amp = rng.uniform(*_lerp((0.26, 0.36), (0.0, 0.12), d))
        p["haze"] = (amp * rng.uniform(0.8, 1.2), amp * rng.uniform(0.8, 1.2))
        p["effusion"] = tuple(rng.uniform(0.05, 0.09) if rng.random() < _lerp(0.45, 0.10, d) else 0.0
                              for _ in (-1, 1))
    if label == 2:  # pneumonia: one consolidation in a random zone of a random lung
        s, zone = rng.choice([-1, 1]), rng.integers(3)
        lung_w = T - p["m"]
        b = apex + (dome_r - apex) * rng.uniform(*((0.2, 0.35), (0.45, 0.6), (0.7, 0.82))[zone])
        p["lesion"] = dict(a=s * (p["m"] + lung_w * rng.uniform(0.4, 0.72)), b=b,
                           r=lung_w * rng.uniform(*_lerp((0.18, 0.28), (0.17, 0.27), d)),
                           amp=rng.uniform(*_lerp((0.30, 0.42), (0.28, 0.41), d)),
                           side=int(s), zone=("upper", "middle", "lower")[zone],
                           harm=rng.uniform(-0.15, 0.15, (3, 2)))
    if d > 0 and label == 0 and rng.random() < 0.2 * d:  # overlap: a faint perihilar haze
        amp = rng.uniform(0.0, 0.10 * d)
        p["haze"] = (amp * rng.uniform(0.8, 1.2), amp * rng.uniform(0.8, 1.2))
    return p


def restudy(rng: np.random.Generator, p: dict) -> dict:
    """The same patient at a later study: same body, the disease a little changed."""
    q = dict(p, ctr=float(np.clip(p["ctr"] + rng.normal(0, 0.01), *ctr_range(p["label"], p.get("difficulty", 0.0)))))
    if "lesion" in p:
        q["lesion"] = dict(p["lesion"], r=p["lesion"]["r"] * rng.uniform(0.85, 1.15))
    return q


def draw_acquisition(rng: np.random.Generator, h: int, w: int) -> dict:
    """Positioning and exposure of one image (independent of the class)."""
    return dict(h=h, w=w, scale=rng.uniform(0.93, 1.04), rot=math.radians(rng.uniform(-3, 3)),
                shift=(rng.uniform(-0.025, 0.025), rng.uniform(-0.02, 0.02)),
                noise=rng.uniform(0.004, 0.01), grain=rng.uniform(0.005, 0.015),
                gamma=rng.uniform(0.75, 1.35), black=rng.uniform(0.0, 0.06),
                white=rng.uniform(0.92, 1.0))


def to_pixels(acq: dict, a, b):
    """Anatomical (a, b) -> pixel (x = column, y = row), floats."""
    a, b = np.asarray(a, float), np.asarray(b, float) - 0.5
    c, s, k = math.cos(acq["rot"]), math.sin(acq["rot"]), acq["scale"]
    x = k * (c * a - s * b) + acq["shift"][0]
    y = k * (s * a + c * b) + acq["shift"][1]
    return x * acq["h"] + acq["w"] / 2, y * acq["h"] + acq["h"] / 2


def _grid(acq: dict):
    """Pixel grid -> anatomical coordinates (the inverse of `to_pixels`)."""
    h, w = acq["h"], acq["w"]
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    x = (x - w / 2) / h - acq["shift"][0]
    y = (y - h / 2) / h - acq["shift"][1]
    c, s, k = math.cos(acq["rot"]), math.sin(acq["rot"]), acq["scale"]
    return (c * x + s * y) / k, (-s * x + c * y) / k + 0.5


def _smooth_noise(rng, shape, sigma):
    n = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma)
    return n / (n.std() + 1e-8)


def _lines(shape, acq, segments, sigma_px):
    """Thin tapered lines (vessels, bronchi): splat points along each segment, then blur once."""
    canvas = np.zeros(shape, np.float32)
    for (a0, b0, a1, b1, weight) in segments:
        t = np.linspace(0, 1, 80)
        x, y = to_pixels(acq, a0 + t * (a1 - a0), b0 + t * (b1 - b0))
        keep = (x >= 0) & (x < shape[1] - 1) & (y >= 0) & (y < shape[0] - 1)
        np.add.at(canvas, (y[keep].round().astype(int), x[keep].round().astype(int)),
                  weight * np.minimum(1, 5 * t[keep]) * (1.2 - t[keep]))  # no blob at the root
    return ndimage.gaussian_filter(canvas, sigma_px) * sigma_px


def landmarks(p: dict) -> dict:
    """Where things are, in anatomical coordinates; the simulated reader uses them."""
    T, m = p["T"], p["m"]
    mid = m + 0.5 * (T - m)
    E = p["ctr"] * T  # horizontal half-extent of the heart (thoracic width is 2T)
    lm = {f"{side}_{zone}": (s * mid, p["apex"] + f * (p["dome"][i] - p["apex"]))
          for i, (s, side) in enumerate(((-1, "R"), (1, "L")))
          for zone, f in (("upper", 0.25), ("middle", 0.55), ("lower", 0.82))}
    lm.update(R_cp=(-(T - 0.03), p["cp"] - 0.03), L_cp=(T - 0.03, p["cp"] - 0.03),
              R_hilum=(-0.11, p["hilum"]), L_hilum=(0.11, p["hilum"] - 0.01), trachea=(0.0, 0.2),
              heart=(E / 3, p["dome"][1] - 0.08), heart_R_border=(-2 * E / 3, p["dome"][1] - 0.07),
              heart_L_border=(4 * E / 3 - 0.01, p["dome"][1] - 0.04))
    if "lesion" in p:
        lm["lesion"] = (p["lesion"]["a"], p["lesion"]["b"])
    return lm


def render(p: dict, acq: dict, rng: np.random.Generator) -> np.ndarray:
    """Draw one radiograph: float32 (h, w) in [0, 1], bright = dense (MONOCHROME2 sense)."""
    h = acq["h"]
    A, B = _grid(acq)
    S = (A > 0).astype(np.int8)  # 0: image left = patient right, 1: image right = patient left
    T, m, cp = p["T"], p["m"], p["cp"]
    t = np.abs(A)
    e = 0.005  # edge softness of organ outlines, image heights

    # Body: an elliptic cross-section, so soft tissue thins towards the skin edge.
    half = p["body"] * (0.3 + 0.7 * expit((B - 0.10) / 0.025))  # neck widening into shoulders
    body = np.sqrt(np.clip(1 - (A / half) ** 2, 0, 1)) * expit(B / 0.01)
    # Lungs: rounded apex, slightly bowed lateral wall, diaphragm dome underneath.
    a_apex = m + 0.3 * (T - m)
    top = p["apex"] + 0.22 * ((t - a_apex) / (T - m)) ** 2
    lat = T - 0.025 * ((B - 0.5) / 0.3) ** 2
    dome_peak = np.where(S == 1, p["dome"][1], p["dome"][0])
    a_peak = m + 0.45 * (T - m)
    dome = dome_peak + (cp - dome_peak) * ((t - a_peak) / (T - a_peak)) ** 2
    lung = expit((t - m) / e) * expit((lat - t) / e) * expit((B - top) / e) * expit((dome - B) / e)
    # Heart: tilted ellipse, a third right of the midline; CTR sets its horizontal extent.
    E = p["ctr"] * T
    ct, st, asp = math.cos(p["tilt"]), math.sin(p["tilt"]), p["aspect"]
    ax = E / math.sqrt(ct**2 + (asp * st) ** 2)
    ay = ax * asp
    bot = p["dome"][1] + 0.025
    hc_b = bot - math.sqrt((ax * st) ** 2 + (ay * ct) ** 2)
    u, v = (A - E / 3) * ct + (B - hc_b) * st, -(A - E / 3) * st + (B - hc_b) * ct
    heart = expit((1 - np.sqrt((u / ax) ** 2 + (v / ay) ** 2)) / 0.04)
    lung = lung * (1 - heart)
    # Mediastinum (with aortic knob on the patient's left) and the abdomen below the domes.
    med = expit((0.045 + 0.02 * B - t) / e)  # runs down behind the heart to the diaphragm
    knob = np.exp(-(((A - 0.055) / 0.03) ** 2 + ((B - p["hilum"] + 0.1) / 0.03) ** 2))
    abdomen = expit((B - dome) / 0.006)
    bubble = 0.0
    if p["bubble"]:  # gas in the stomach under the left dome
        bubble = np.exp(-(((A - 0.14) / 0.045) ** 2 + ((B - p["dome"][1] - 0.05) / 0.025) ** 2))

    # Bones: posterior ribs (bands curving down laterally, one periodic pattern), fainter anterior
    # ribs sloping the other way, clavicles, and the vertebral column behind the mediastinum.
    phase = (B - (1.1 * t**2 - 0.12 * t) - p["apex"]) / p["rib_period"] + p["rib_phase"]
    rib = expit((0.18 - np.abs(phase % 1.0 - 0.5)) / 0.035)
    phase = (B + 0.5 * t - p["apex"]) / (1.25 * p["rib_period"])
    rib = rib + 0.4 * expit((0.15 - np.abs(phase % 1.0 - 0.5)) / 0.05) * expit((B - 0.3) / 0.03)
    thorax = expit((T + 0.03 - t) / 0.01) * expit((B - p["apex"] + 0.03) / 0.01) \
        * expit((dome - B) / 0.01)
    clav = np.exp(-(((B - (0.17 - 0.25 * t + 0.35 * t**2)) / 0.011) ** 2)) \
        * expit((0.34 - t) / 0.01) * expit((t - 0.035) / 0.005)  # stop short of the midline
    spine = expit((0.028 - t) / 0.004) * (0.6 + 0.4 * np.cos(2 * np.pi * B / 0.045))

    # Vessels branch out of the hila and fade towards the periphery; the trachea and main
    # bronchi are air inside the mediastinum.
    segs = []
    for s, ang, L in p["vessels"]:
        a0, b0 = 0.1 * s + 0.015 * s * math.cos(ang), p["hilum"] + 0.015 * math.sin(ang)
        a1, b1 = a0 + s * L * math.cos(ang), b0 + L * math.sin(ang)
        am, bm = (a0 + a1) / 2, (b0 + b1) / 2  # one branch from the middle of each vessel
        ab = (am + s * L * math.cos(ang + 0.5) / 2, bm + L * math.sin(ang + 0.5) / 2)
        segs += [(a0, b0, a1, b1, 1.0), (am, bm, *ab, 0.6)]
    vessels = _lines(A.shape, acq, segs, max(1.0, 0.0035 * h))
    hila = sum(np.exp(-(((A - 0.1 * s) / 0.025) ** 2 + ((B - p["hilum"]) / 0.04) ** 2))
               for s in (-1, 1))
    car = p["hilum"] - 0.07  # carina
    airway = [(0, 0.0, 0, car, 1.0), (0, car, -0.09, car + 0.08, 0.7),
              (0, car, 0.08, car + 0.07, 0.7)]
    airway = _lines(A.shape, acq, airway, max(1.0, 0.007 * h))
    texture = _smooth_noise(rng, A.shape, 0.012 * h)

    heel = 0.04 * (A + 0.5) + 0.03 * B  # anode heel effect and scatter: no region is flat
    # CHF's vascular redistribution: stronger vessels, less so the harder the set
    vessel_weight = 0.15 + (_lerp(0.05, 0.0, p.get("difficulty", 0.0)) if p["label"] == 1 else 0.0)
    # Overlapping soft-tissue organs do not add up (they displace each other): take the max.
    dense = np.maximum(0.22 * np.maximum(np.maximum(med, knob), heart),
                       (0.24 + 0.15 * (B - dome)) * abdomen)
    D = (0.45 * body - 0.33 * lung * body + dense * body + heel - 0.15 * bubble
         + 0.06 * rib * thorax * (0.1 + 0.9 * lung) + 0.12 * clav * body
         + 0.015 * spine * med + 0.006 * spine * heart
         + vessel_weight * vessels * lung + 0.06 * hila * lung
         - 0.35 * airway * med + 0.02 * texture * lung)

    if "haze" in p:  # CHF (and, on a hard set, some others): bilateral perihilar (butterfly) haze
        rows = ((B - p["hilum"]) / 0.11) ** 2
        haze = sum(amp * np.exp(-0.5 * (((A - s * 0.13) / 0.095) ** 2 + rows))
                   for s, amp in zip((-1, 1), p["haze"]))  # two wings around the hila
        D += haze * lung * (0.75 + 0.25 * np.clip(texture, -2, 2))
    if p["label"] == 1:  # CHF: blunted costophrenic angles
        for side, depth in zip((0, 1), p["effusion"]):  # fluid meniscus rising laterally
            if depth:
                level = cp + 0.01 - depth * np.clip((t - (T - 0.18)) / 0.18, 0, 1) ** 1.5
                D += 0.33 * lung * (S == side) * expit((B - level) / 0.006)
    if p["label"] == 2:  # pneumonia: one irregular, patchy consolidation
        L = p["lesion"]
        r = np.hypot(A - L["a"], B - L["b"])
        th = np.arctan2(B - L["b"], A - L["a"])
        harmonics = sum(c * np.cos((k + 2) * th + ph) for k, (c, ph) in enumerate(L["harm"]))
        rr = L["r"] * (1 + harmonics)  # an irregular outline
        blob = expit((1 - r / rr) / 0.15) * np.clip(0.8 + 0.3 * texture, 0.3, 1.3)
        D += L["amp"] * blob * lung

    D += acq["noise"] * rng.standard_normal(D.shape).astype(np.float32)
    D = ndimage.gaussian_filter(D, 0.6)
    # Rank transform + tone curve: every image gets the same grey-level histogram family whatever
    # its class, so no global statistic (mean, std, percentiles) can tell the classes apart.
    ranks = np.empty(D.size, np.float32)
    ranks[np.argsort(D, axis=None, kind="stable")] = np.linspace(0, 1, D.size, dtype=np.float32)
    img = acq["black"] + (acq["white"] - acq["black"]) * ranks.reshape(D.shape) ** acq["gamma"]
    img += acq["grain"] * rng.standard_normal(img.shape).astype(np.float32)  # detector noise
    return np.clip(img, 0, 1).astype(np.float32)
