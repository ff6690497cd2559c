"""Learning-rate schedules: the rate at every optimiser step, as float64 NumPy arrays.

Every constructor returns ``lr`` of shape ``(total,)``, ``lr[s]`` the rate used at step ``s``
(``s = 0 .. total - 1``). All warm up linearly from 0 to ``peak`` over the first ``warmup`` steps
(``lr[s] = peak * s / warmup``), then follow their shape; the definitions are those of the loss-curve
study of Luo et al. 2025 (arXiv 2503.12811) as its data README states them:

- :func:`constant`: ``peak`` after warmup;
- :func:`cosine`: ``final + (peak - final) * (1 + cos(pi * (s - warmup) / (total - warmup))) / 2``;
- :func:`wsd`: warmup-stable-decay, ``peak`` until ``decay_start``, then to ``final`` at ``total``,
  geometrically (``peak * (final / peak) ** ((s - decay_start) / (total - decay_start))``) or linearly;
- :func:`two_stage`: ``peak`` until ``switch``, then the constant ``second``.

:func:`from_name` builds the study's named schedules (``"cosine_24000"``, ``"wsd_20000_24000"``,
``"wsdld_20000_24000"``, ``"constant_72000"``, ``"wsdcon_9"``).
"""

from __future__ import annotations

import numpy as np

__all__ = ["constant", "cosine", "wsd", "two_stage", "from_name", "PEAK", "FINAL", "WARMUP"]

PEAK = 3e-4
"""Peak learning rate of the study's schedules."""
FINAL = 3e-5
"""Final learning rate of its cosine and WSD schedules."""
WARMUP = 2160
"""Linear warmup steps of its schedules."""
_TWO_STAGE = (8000, 16000, 1e-5)  # the study's wsdcon_k: switch step, total, unit of the second rate


def _check(total: int, warmup: int, peak: float, **steps: int) -> None:
    if not (isinstance(total, int | np.integer) and total > 0):
        raise ValueError(f"total must be a positive number of steps, got {total!r}")
    if not (isinstance(warmup, int | np.integer) and 0 <= warmup < total):
        raise ValueError(f"warmup must be a whole number of steps in [0, total), got {warmup!r}")
    if not (np.isfinite(peak) and peak > 0):
        raise ValueError(f"peak must be a positive learning rate, got {peak!r}")
    for name, step in steps.items():
        if not (isinstance(step, int | np.integer) and warmup <= step <= total):
            raise ValueError(f"{name} must be a step in [warmup, total] = [{warmup}, {total}], got {step!r}")


def _warm(total: int, warmup: int, peak: float) -> tuple[np.ndarray, np.ndarray]:
    s = np.arange(total, dtype=float)
    lr = np.full(total, float(peak))
    lr[:warmup] = peak * s[:warmup] / warmup
    return s, lr


def constant(total: int, *, peak: float = PEAK, warmup: int = WARMUP) -> np.ndarray:
    """Linear warmup, then ``peak`` until ``total`` steps."""
    _check(total, warmup, peak)
    return _warm(total, warmup, peak)[1]


def cosine(total: int, *, peak: float = PEAK, final: float = FINAL, warmup: int = WARMUP) -> np.ndarray:
    """Linear warmup, then a half cosine from ``peak`` (at ``warmup``) towards ``final`` (at ``total``)."""
    _check(total, warmup, peak)
    s, lr = _warm(total, warmup, peak)
    after = s >= warmup
    lr[after] = final + (peak - final) * (1 + np.cos(np.pi * (s[after] - warmup) / (total - warmup))) / 2
    return lr


def wsd(total: int, decay_start: int, *, peak: float = PEAK, final: float = FINAL, warmup: int = WARMUP,
        decay: str = "exponential") -> np.ndarray:
    """Warmup, ``peak`` until ``decay_start``, then ``"exponential"`` or ``"linear"`` decay to ``final`` at ``total``."""
    _check(total, warmup, peak, decay_start=decay_start)
    if decay not in ("exponential", "linear"):
        raise ValueError(f"decay must be 'exponential' or 'linear', got {decay!r}")
    if not (0 < final <= peak):
        raise ValueError(f"final must be in (0, peak], got {final!r}")
    s, lr = _warm(total, warmup, peak)
    tail = s >= decay_start
    u = (s[tail] - decay_start) / (total - decay_start)
    lr[tail] = peak * (final / peak) ** u if decay == "exponential" else peak - (peak - final) * u
    return lr


def two_stage(total: int, switch: int, second: float, *, peak: float = PEAK, warmup: int = WARMUP) -> np.ndarray:
    """Warmup, ``peak`` until ``switch``, then the constant ``second`` until ``total``."""
    _check(total, warmup, peak, switch=switch)
    if not (np.isfinite(second) and second > 0):
        raise ValueError(f"second must be a positive learning rate, got {second!r}")
    s, lr = _warm(total, warmup, peak)
    lr[s >= switch] = second
    return lr


def from_name(name: str, *, peak: float = PEAK, final: float = FINAL, warmup: int = WARMUP) -> np.ndarray:
    """The schedule called ``name``: ``constant_T``, ``cosine_T``, ``wsd_S_T`` (exponential decay from step S
    to T), ``wsdld_S_T`` (linear decay), or the study's two-stage ``wsdcon_k`` (its own peak and warmup:
    ``peak`` until step 8000, then ``k * 1e-5`` until 16000). ``peak``, ``final`` and ``warmup`` as in the
    constructors (defaults: the study's).

    Raises:
        ValueError: a name of no such form, or arguments the constructor refuses.
    """
    kind, _, rest = name.partition("_")
    try:
        numbers = [int(v) for v in rest.split("_")]
    except ValueError:
        numbers = []
    if kind == "constant" and len(numbers) == 1:
        return constant(numbers[0], peak=peak, warmup=warmup)
    if kind == "cosine" and len(numbers) == 1:
        return cosine(numbers[0], peak=peak, final=final, warmup=warmup)
    if kind in ("wsd", "wsdld") and len(numbers) == 2:
        return wsd(numbers[1], numbers[0], peak=peak, final=final, warmup=warmup,
                   decay="exponential" if kind == "wsd" else "linear")
    if kind == "wsdcon" and len(numbers) == 1:
        switch, total, unit = _TWO_STAGE
        return two_stage(total, switch, numbers[0] * unit)
    raise ValueError(f"unknown schedule name {name!r}: expected constant_T, cosine_T, wsd_S_T, wsdld_S_T or wsdcon_k")
