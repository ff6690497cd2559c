"""Shared fixtures: simulated runs and small fitted posteriors of every result type (built once per session)."""

import dataclasses
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import jax
import numpy as np
import pytest
from filelock import FileLock

import bayescale as bs



_FIXTURES = "BAYESCALE_TEST_FIXTURES"
"""Environment variable: the folder where session fixtures are saved for both workers (see :func:`built_once`)."""


def pytest_configure(config: pytest.Config) -> None:
    """One persistent compilation cache for the whole test session, never the user's: a fresh folder made by
    the controlling process before the workers start, so both workers, every notebook kernel and every
    subprocess inherit it (through the environment) and a program is compiled once per session. Dropping
    in-memory programs between modules (below) then costs a read-back, not a compilation. A second fresh
    folder holds the session fixtures that both workers read (:func:`built_once`)."""
    if os.environ.get("PYTEST_XDIST_WORKER") is None:
        made = {}
        if bs.cache.ENV not in os.environ:
            made[bs.cache.ENV] = tempfile.mkdtemp(prefix="bayescale-test-cache-")
        made[_FIXTURES] = tempfile.mkdtemp(prefix="bayescale-test-fixtures-")
        os.environ.update(made)
        config.stash[_MADE] = made


def pytest_unconfigure(config: pytest.Config) -> None:
    for name, folder in config.stash.get(_MADE, {}).items():
        shutil.rmtree(folder, ignore_errors=True)
        del os.environ[name]


_MADE = pytest.StashKey[dict]()
Result = TypeVar("Result", bound=bs.Posterior)


def built_once(name: str, build: Callable[[], Result]) -> Result:
    """A session fixture built once for the whole run, not once per worker: the first worker to ask builds
    it and saves it; the other waits on a file lock and loads it (a result loads back equal draw for draw,
    which the contract tests check)."""
    folder = os.environ.get(_FIXTURES)
    if folder is None:
        return build()
    path = Path(folder) / f"{name}.nc"
    with FileLock(f"{path}.lock"):
        if path.exists():
            return bs.load(path)
        result = build()
        result.save(path)
        return result

CHINCHILLA = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}
SMALL = {"num_warmup": 500, "num_samples": 500, "num_chains": 4}
"""Sampler size of statistical checks (converges on 40+ runs)."""
TINY = bs.SamplerSettings(num_warmup=150, num_samples=150, num_chains=2)
"""Sampler size of the fast tests that check behaviour, not statistics."""


SIZES = {(TINY.num_warmup, TINY.num_samples): "TINY", (SMALL["num_warmup"], SMALL["num_samples"]): "SMALL"}
"""The suite's two sampler sizes (warmup, draws): every NUTS program of the suite is one of them."""


@pytest.fixture(autouse=True, scope="session")
def _two_sampler_sizes():  # noqa: ANN202
    """Guard: record the size of every NUTS program the session builds; a third size fails the run at the end,
    naming the first test that used it. (Notebooks and subprocesses take their sizes from TINY and SMALL.)"""
    seen: dict[tuple[int, int], str] = {}
    kernels = bs.sampling._kernels

    def recording(potential, config):  # noqa: ANN001, ANN202
        test = os.environ.get("PYTEST_CURRENT_TEST", "a session fixture").split(" ")[0]
        seen.setdefault((config.num_warmup, config.num_samples), test)
        return kernels(potential, config)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(bs.sampling, "_kernels", recording)
        yield
    other = {size: test for size, test in seen.items() if size not in SIZES}
    assert not other, f"sampler sizes (warmup, draws) beyond TINY and SMALL: {other}"


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():  # noqa: ANN202
    """Drop compiled programs after each test module. Each XLA CPU program holds about 17 memory maps; a
    worker that keeps every program of the suite passed Linux's limit (vm.max_map_count, 65530: 41,900
    maps measured two thirds through) and crashed inside the compiler."""
    yield
    jax.clear_caches()


@pytest.fixture(scope="session")
def chinchilla_data() -> bs.ScalingData:
    """200 runs from the published Chinchilla law, 2% log-noise."""
    N, D = bs.chinchilla_design(200, seed=1)
    return bs.simulate("chinchilla", CHINCHILLA, N=N, D=D, noise=0.02, seed=2)


@pytest.fixture(scope="session")
def chinchilla_fit(chinchilla_data: bs.ScalingData) -> bs.FitResult:
    """Student-t posterior of the 200 simulated runs (small draws)."""
    return built_once("chinchilla_fit", lambda: bs.fit(chinchilla_data, seed=0, **SMALL))


@pytest.fixture(scope="session")
def kaplan_fit(chinchilla_data: bs.ScalingData) -> bs.FitResult:
    """Kaplan's joint law fitted to the same 200 Chinchilla runs (a wrong law for them)."""
    return built_once("kaplan_fit", lambda: bs.fit(chinchilla_data, law="kaplan_nd", seed=0, **SMALL))


@pytest.fixture(scope="session")
def small_groups() -> dict[str, bs.ScalingData]:
    """Three groups of 10 Chinchilla runs with group-specific E."""
    out = {}
    for g in range(3):
        N, D = bs.chinchilla_design(10, seed=10 + g)
        out[f"g{g}"] = bs.simulate("chinchilla", {**CHINCHILLA, "E": 1.6 + 0.1 * g}, N=N, D=D, noise=0.02, seed=20 + g)
    return out


def _quiet(fn, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
    with warnings.catch_warnings():  # tiny samplers do not converge; not what these fixtures are for
        warnings.simplefilter("ignore", bs.ConvergenceWarning)
        return fn(*args, **kwargs)


@pytest.fixture(scope="session")
def tiny_hierarchical(small_groups: dict) -> bs.HierarchicalResult:
    return built_once("tiny_hierarchical", lambda: _quiet(bs.fit_hierarchical, small_groups, settings=TINY))


@pytest.fixture(scope="session")
def tiny_batch(small_groups: dict) -> bs.BatchResult:
    return _quiet(bs.fit_batch, small_groups, settings=TINY)


@pytest.fixture(scope="session")
def tiny_structural_batch(tiny_batch: bs.BatchResult) -> bs.BatchResult:
    """The planning mode of the tiny batch: every group's structural error, its refits as one more batch."""
    return _quiet(bs.extrapolation.structural_error, tiny_batch, cuts=(0.6, 0.8))


@pytest.fixture(scope="session")
def tiny_isoflop() -> bs.IsoFlopResult:
    return built_once("tiny_isoflop", lambda: _quiet(bs.fit_isoflop, bs.datasets.load("palm2"), settings=TINY))


def unconverged(fit: bs.FitResult) -> bs.FitResult:
    """The same fit with chain 0 of alpha shifted: R-hat far above 1.01."""
    idata = fit.idata.copy()
    idata.posterior["alpha"][0] = idata.posterior["alpha"][0] + 0.2
    return dataclasses.replace(fit, idata=idata)


@pytest.fixture(scope="session")
def tiny_stacked(small_groups: dict) -> bs.StackedResult:
    """The Chinchilla law and Kaplan's joint law, fitted to the same 10 runs and stacked (PSIS-LOO weights)."""
    data = small_groups["g0"]

    def build() -> bs.StackedResult:
        fits = {law: _quiet(bs.fit, data, law=law, settings=TINY) for law in ("chinchilla", "kaplan_nd")}
        return bs.stack(fits, seed=1, method="loo")

    return built_once("tiny_stacked", build)


def sigmoid_accuracy(loss: np.ndarray, chance: float = 0.25, top: float = 0.9, k: float = 8.0,
                     midpoint: float = 2.6) -> np.ndarray:
    """The link's truth: accuracy of runs with this loss (no noise)."""
    return chance + (top - chance) / (1 + np.exp(k * (loss - midpoint)))


@pytest.fixture(scope="session")
def tiny_downstream(small_groups: dict) -> bs.DownstreamResult:
    """Stage 1 on 10 runs, and their accuracies through a sigmoid with 1% noise."""
    data = small_groups["g0"]
    acc = sigmoid_accuracy(data.loss) * np.exp(0.01 * np.random.default_rng(0).standard_normal(data.n))
    return built_once("tiny_downstream",
                      lambda: _quiet(bs.fit_downstream, _quiet(bs.fit, data, settings=TINY), acc, chance=0.25))


def interval(draws: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    lo, hi = np.quantile(draws, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


CURVE_TRUTH = {"L0": 3.2, "A": 0.4, "alpha": 0.65, "C": 0.6}
"""The annealing law of the simulated loss curves (a 25M-like run: peak rate 3e-4)."""
IN_PROGRESS = "wsd_19200_24000"
"""The simulated run logged up to half its schedule."""


SIZE_TRUTH = {"L0": 2.8, "A": 0.6, "alpha": 0.45, "C": 0.5}
SIZE_SLOPES = {"L0": -0.1, "A": 0.17, "alpha": -0.17, "C": 0.13}
"""The annealing law across sizes (at the reference size 100M) and each parameter's slope in log N: the
values fitted to the bundled 25M, 100M and 400M curves."""


def size_curves(prefix: float = 1.0) -> bs.LossCurves:
    """Three schedules at each of three sizes (25M, 100M, 400M, runs labelled ``"400M cosine_12000"``) simulated
    from :data:`SIZE_TRUTH` and :data:`SIZE_SLOPES`, logged every 400 steps; the 400M runs up to ``prefix`` of
    their schedules. The curve tests and the CLI's fit these same points."""
    names = ("cosine_12000", "constant_12000", "wsd_9600_12000")
    sizes = {"25M": 25e6, "100M": 100e6, "400M": 400e6}
    lrs = {f"{s} {n}": bs.schedules.from_name(n) for s in sizes for n in names}
    steps = {run: np.arange(bs.schedules.WARMUP, len(lr), 400) for run, lr in lrs.items()}
    curves = bs.simulate_curves("lr_annealing", SIZE_TRUTH, lrs, steps, sizes={r: sizes[r.split()[0]] for r in lrs},
                                slopes=SIZE_SLOPES, sigma=0.003, ell=3000.0, white=0.001, seed=2)
    for name in names:
        curves = curves.prefix(f"400M {name}", prefix)
    return curves


@pytest.fixture(scope="session")
def sizes_fit() -> bs.CurveResult:
    """The annealing law across sizes fitted to :func:`size_curves` with the 400M runs seen up to 30% (the
    suite's statistical size): the curve tests and the envelope's read it."""
    return built_once("sizes_fit", lambda: _quiet(bs.fit_curves, size_curves(prefix=0.3), "lr_annealing", **SMALL))


def annealing_curves() -> bs.LossCurves:
    """Four runs named by their schedules (``bs.schedules.from_name``), simulated from :data:`CURVE_TRUTH` with
    correlated residuals and white noise, logged every 200 steps after warmup; :data:`IN_PROGRESS` up to half
    its schedule. The curve tests and the CLI's fit these same points (one set of compiled programs)."""
    lrs = {name: bs.schedules.from_name(name) for name in ("cosine_12000", "constant_12000", "wsd_9600_12000", IN_PROGRESS)}
    steps = {run: np.arange(bs.schedules.WARMUP, len(lr), 200) for run, lr in lrs.items()}
    return bs.simulate_curves("lr_annealing", CURVE_TRUTH, lrs, steps, sigma=0.004, ell=3000.0, white=0.001, seed=4)
