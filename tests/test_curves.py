"""Loss curves: schedules as the study defines them, the schedule sums against direct loops, input checks, the
AR(1)-plus-white-noise likelihood against the multivariate normal, and a fit that recovers a simulated law."""

import dataclasses
import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

import bayescale as bs
from bayescale import schedules
from bayescale.curves import BLOCK, LossCurves, curve_inputs, departure, lr_annealing, multi_power, warmup_of
from bayescale.data import DataError
from conftest import CURVE_TRUTH, IN_PROGRESS, SIZE_SLOPES, SIZE_TRUTH, SMALL, annealing_curves, size_curves

NAMES = ["constant_24000", "constant_72000", "cosine_24000", "cosine_72000", "wsd_20000_24000",
         "wsdld_20000_24000", "wsdcon_3", "wsdcon_9", "wsdcon_18"]


def readme_rate(name: str, s: int) -> float:
    """The data README's definition of each schedule, step by step."""
    peak, final, warm = 3e-4, 3e-5, 2160
    if s < warm:
        return peak * s / warm
    kind, *numbers = name.split("_")
    if kind == "constant":
        return peak
    if kind == "cosine":
        total = int(numbers[0])
        return final + 0.5 * (peak - final) * (1 + math.cos(math.pi * (s - warm) / (total - warm)))
    if kind in ("wsd", "wsdld"):
        start, total = map(int, numbers)
        if s < start:
            return peak
        u = (s - start) / (total - start)
        return peak * (final / peak) ** u if kind == "wsd" else peak - (peak - final) * u
    return peak if s < 8000 else int(numbers[0]) * 1e-5


@pytest.mark.parametrize("name", NAMES)
def test_each_schedule_is_the_readme_definition_at_every_step(name: str) -> None:
    lr = schedules.from_name(name)
    assert lr.size == (16000 if name.startswith("wsdcon") else int(name.split("_")[-1]))
    expected = np.array([readme_rate(name, s) for s in range(lr.size)])
    np.testing.assert_allclose(lr, expected, rtol=1e-12, atol=0)


def test_a_schedule_departs_from_the_known_ones_where_it_first_differs_or_outruns_them() -> None:
    """The study's schedules share a constant trunk: a run is a run of a known schedule up to the step where
    its rates first differ from every known one (the README's rates at that step differ), or run past them."""
    lr = {name: schedules.from_name(name) for name in NAMES}
    assert departure(lr["wsd_20000_24000"], [lr["constant_24000"], lr["wsdcon_9"]]) == 20001  # u = 0 at 20,000: still the peak
    assert departure(lr["constant_72000"], [lr["constant_24000"]]) == 24000
    assert departure(lr["wsdcon_9"], [lr["constant_72000"], lr["wsdcon_3"]]) == 8000
    assert departure(lr["wsdcon_9"], [lr["wsdcon_9"].copy()]) == 16000
    assert departure(lr["cosine_24000"], []) == 0
    first = departure(lr["cosine_24000"], [lr["constant_24000"], lr["wsd_20000_24000"]])
    gap = [3e-4 - readme_rate("cosine_24000", s) for s in (first - 1, first)]
    assert gap[0] <= 3e-10 < gap[1]  # the tolerance: a millionth of the rate


def test_the_bundled_curves_log_the_schedules_rates() -> None:
    table = bs.datasets.load_frame("loss_curves")
    assert set(table["size"]) == {"25M", "100M", "400M"} and len(table) == 4613
    for name, rows in table.groupby("schedule"):
        lr = schedules.from_name(name)
        np.testing.assert_allclose(lr[rows["step"].to_numpy()], rows["lr"].to_numpy(), rtol=1e-9)
    curves = bs.datasets.loss_curves("25M")
    assert sorted(curves.runs) == sorted(NAMES) and curves.table["loss"].between(3.0, 4.5).all()


def direct(lr: np.ndarray, t: int, p: dict[str, float], decay: float = 0.999) -> tuple[float, float]:
    """Both laws at step t by plain loops over the steps, float64."""
    w = warmup_of(lr)
    area = math.fsum(lr[: t + 1])
    ld, tail = 0.0, 0.0
    for k in range(t, w, -1):  # k = t .. W+1, the tail sum S_k(t) grown one step at a time
        tail += lr[k]
        ld += (lr[k - 1] - lr[k]) * (1 - (p["C"] * lr[k] ** -p["gamma"] * tail + 1) ** -p["beta"])
    m, s2 = 0.0, 0.0
    for k in range(w + 1, t + 1):
        m = decay * m + (lr[k - 1] - lr[k])
        s2 += m
    power = p["L0"] + p["A"] * area ** -p["alpha"]
    return power - p["B"] * ld, power - p["C2"] * s2


@pytest.mark.parametrize("name", ["cosine_24000", "wsd_20000_24000", "wsdld_20000_24000", "wsdcon_9"])
def test_the_schedule_sums_equal_a_direct_loop(name: str) -> None:
    """Exact with one step per block; with the default blocks (``BLOCK`` steps), within 5e-4 of the loss (under
    a third of the published fits' error), and within 1e-4 with blocks of 64 steps."""
    p = {"L0": 3.0, "A": 0.6, "alpha": 0.5, "B": 400.0, "C": 2.0, "beta": 0.6, "gamma": 0.6, "C2": 300.0}
    lr = schedules.from_name(name)[:12000] if name == "wsdcon_9" else schedules.from_name(name)
    steps = np.array([2160, 2300, 7999, 8000, 8001, 9000, 11999, 20001, 23000])
    steps = steps[steps < lr.size]
    loops = np.array([direct(lr, int(t), p) for t in steps])
    points = pd.DataFrame({"run": name, "step": steps})
    with jax.enable_x64(True):
        for block, tolerance in ((1, 1e-12), (64, 1e-4), (BLOCK, 5e-4)):
            x = curve_inputs({name: lr}, points, block=block)
            mpl = np.asarray(multi_power().mean({**p, "K": p["C"] * 1e-4 ** -p["gamma"]}, x))
            ann = np.asarray(lr_annealing().mean({**p, "C": p["C2"]}, x))
            np.testing.assert_allclose(mpl, loops[:, 0], rtol=tolerance, atol=0)
            np.testing.assert_allclose(ann, loops[:, 1], rtol=1e-12, atol=0)


def test_curve_inputs_keep_the_row_order_of_the_points() -> None:
    lrs = {"a": schedules.cosine(6000), "b": schedules.wsd(6000, 5000)}
    points = pd.DataFrame({"run": ["b", "a", "b", "a"], "step": [5500, 3000, 2500, 5900]})
    mixed = curve_inputs(lrs, points)
    for i, row in points.iterrows():
        alone = curve_inputs(lrs, points.iloc[[i]])
        for field in ("s1", "sw", "s2"):
            assert getattr(mixed, field)[i] == getattr(alone, field)[0]
        for field in ("drop", "eta", "tail"):
            np.testing.assert_array_equal(getattr(mixed, field)[mixed.point == i], getattr(alone, field))


@pytest.mark.parametrize("change, message", [
    (lambda t, s: t.drop(columns="loss"), "columns \\['loss'\\]"),
    (lambda t, s: t.assign(loss=[3.0, -1.0, 2.9]), "column 'loss'.*rows \\[1\\]"),
    (lambda t, s: t.assign(step=[2200, 2300, 2300.5]), "column 'step'.*whole.*rows \\[2\\]"),
    (lambda t, s: t.assign(step=[2200, 2300, 2300]), "repeated in rows \\[1, 2\\]"),
    (lambda t, s: t.assign(step=[100, 2300, 2400]), "run 'a'.*warmup \\(step 2160\\).*rows \\[0\\]"),
    (lambda t, s: t.assign(step=[2200, 2300, 9000]), "within its schedule \\(6000 steps\\); rows \\[2\\]"),
    (lambda t, s: t.assign(run=["a", "a", "b"]), "run 'b' has no schedule"),
])
def test_bad_curves_name_the_column_row_or_run(change, message: str) -> None:  # noqa: ANN001
    table = pd.DataFrame({"run": ["a"] * 3, "step": [2200, 2300, 2400], "loss": [3.0, 2.95, 2.9]})
    lrs = {"a": schedules.cosine(6000)}
    with pytest.raises(DataError, match=message):
        LossCurves.from_table(change(table, lrs), lrs)


@pytest.mark.parametrize("sizes, message", [
    ([25e6, 25e6, -1.0], "column 'N'.*positive and finite; rows \\[2\\]"),
    ([25e6, 25e6, 1e8], "column 'N'.*one model size; runs \\['a'\\]"),
])
def test_bad_model_sizes_are_named(sizes: list, message: str) -> None:
    table = pd.DataFrame({"run": ["a"] * 3, "step": [2200, 2300, 2400], "loss": [3.0, 2.95, 2.9], "N": sizes})
    with pytest.raises(DataError, match=message):
        LossCurves.from_table(table, {"a": schedules.cosine(6000)}, params="N")
    with pytest.raises(DataError, match="columns \\['size'\\]"):
        LossCurves.from_table(table, {"a": schedules.cosine(6000)}, params="size")


def test_a_schedule_that_rises_after_warmup_is_refused() -> None:
    lr = schedules.cosine(6000)
    lr[4000:] = 2e-4  # re-warmed
    curves = LossCurves.from_table(pd.DataFrame({"run": "a", "step": [2200, 5000], "loss": [3.0, 2.9]}), {"a": lr})
    with pytest.raises(DataError, match="rises after warmup \\(step 4000\\)"):
        curve_inputs(curves.schedules, curves.table)


@pytest.mark.parametrize("kwargs, message", [
    ({"total": 0}, "total must be"), ({"total": 1000}, "warmup must be"),
    ({"total": 6000, "peak": -1.0}, "peak must be"),
])
def test_schedule_arguments_are_checked(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        schedules.cosine(**kwargs)
    with pytest.raises(ValueError, match="decay_start must be"):
        schedules.wsd(6000, 7000)
    with pytest.raises(ValueError, match="unknown schedule name"):
        schedules.from_name("cosine")


@pytest.mark.parametrize("white", [0.0, 0.01])
def test_the_ou_residuals_are_the_exact_joint_density_and_simulate_its_covariance(white: float) -> None:
    """Per-point conditionals of the AR(1) residuals (with white noise: the Kalman filter's one-step-ahead
    densities) sum to the multivariate normal with covariance sigma² exp(-|step gap| / ell) within a run
    (zero across runs) plus white² on the diagonal; simulated paths have that covariance."""
    from bayescale.curve_fit import OUResiduals

    steps = np.array([0.0, 100.0, 250.0, 300.0, 0.0, 500.0])
    run = np.array([0, 0, 0, 0, 1, 1])
    sigma, ell = 0.02, 200.0
    gap = np.r_[np.inf, np.where(run[1:] == run[:-1], np.diff(steps), np.inf)]
    phi = np.where(np.isinf(gap), 0.0, np.exp(-np.where(np.isinf(gap), 1.0, gap) / ell))
    loc = np.linspace(1.0, 1.1, 6)
    cov = sigma**2 * np.exp(-np.abs(steps[:, None] - steps[None, :]) / ell) * (run[:, None] == run[None, :])
    cov = cov + white**2 * np.eye(6)
    with jax.enable_x64(True):
        noise = OUResiduals(loc, sigma, phi, jnp.asarray(white) if white else 0.0)
        value = loc + np.random.default_rng(0).multivariate_normal(np.zeros(6), cov)
        joint = float(jax.scipy.stats.multivariate_normal.logpdf(value, loc, cov))
        assert float(noise.log_prob(value).sum()) == pytest.approx(joint, rel=1e-10)
        paths = np.asarray(noise.sample(jax.random.PRNGKey(0), (40000,))) - loc
    np.testing.assert_allclose(np.cov(paths.T), cov, atol=4e-5)


def test_points_padded_after_the_real_ones_add_nothing_to_the_density() -> None:
    """A rolling-origin refit is padded to its fit's points and sparse entries (so it runs the fit's compiled
    sampler): the model's log density at any parameters is the unpadded one's."""
    from numpyro.infer.util import log_density

    from bayescale.curve_fit import CurveData, CurveModel, _gaps, _pad, _padded

    curves = annealing_curves().subset(["cosine_12000", "wsd_9600_12000"])
    points = curves.table
    x, gap, log_y = curve_inputs(curves.schedules, points), _gaps(points), np.log(points["loss"].to_numpy())
    n, size = len(points), len(points) + 37
    plain = CurveData(x, gap, log_y, np.zeros(n), np.ones(n, bool))
    px, log_size = _padded(x, np.zeros(n), (size, x.point.shape[0] + 5))
    padded = CurveData(px, _pad(gap, size, np.inf), _pad(log_y, size), log_size, np.arange(size) < n)
    params = {"L0_z": 0.1, "A_z": -0.2, "alpha_z": 0.3, "C_z": 0.0, "sigma_z": 0.4, "ell_z": 0.5, "white_z": 0.2}
    with jax.enable_x64(True):
        dens = [float(log_density(CurveModel("lr_annealing", "ar1"), (d,), {}, params)[0]) for d in (plain, padded)]
    assert dens[0] == pytest.approx(dens[1], rel=1e-12)


@pytest.fixture(scope="module")
def simulated() -> tuple[LossCurves, bs.CurveResult]:
    """The simulated curves (whole) and the fit of their logged points (the run in progress up to half), at the
    suite's statistical size (its intervals are checked against the truth)."""
    curves = annealing_curves()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", bs.ConvergenceWarning)
        return curves, bs.fit_curves(curves.prefix(IN_PROGRESS, 0.5), "lr_annealing", **SMALL)


def test_a_curve_fit_recovers_the_annealing_law_and_continues_a_run_in_progress(simulated) -> None:  # noqa: ANN001
    """The posterior covers the truth; the run in progress's final loss lies inside its band, both continued
    from its logged prefix and predicted as a new run of its schedule, and the continued band is the narrower
    (it is conditioned on where the run is)."""
    curves, result = simulated
    summary = result.summary(level=0.98)
    for name, value in CURVE_TRUTH.items():
        assert summary.loc[name, "1%"] <= value <= summary.loc[name, "99%"], (name, summary.loc[name].to_dict())
    assert result.diagnostics.table["r_hat"].max() < 1.1
    final = curves.table[curves.table["run"] == IN_PROGRESS].iloc[-1]
    continued = result.predict([final["step"]], run=IN_PROGRESS).iloc[0]
    fresh = result.predict([final["step"]], schedule=curves.schedules[IN_PROGRESS]).iloc[0]
    for band in (continued, fresh):
        assert band["lower"] <= final["loss"] <= band["upper"], band.to_dict()
    assert continued["upper"] - continued["lower"] < fresh["upper"] - fresh["lower"]


def test_schedules_compared_on_the_same_draws(simulated) -> None:  # noqa: ANN001
    """A decay at the end beats no decay at the same horizon in every draw (the annealing term is positive);
    the probabilities of being lowest sum to one; predictions are reproducible from the seed."""
    _, result = simulated
    table = result.compare_schedules({"constant": schedules.constant(12000), "wsd": schedules.wsd(12000, 9600)})
    assert table.loc["wsd", "p_lowest"] == 1.0 and table["p_lowest"].sum() == pytest.approx(1.0)
    assert table.loc["wsd", "upper"] < table.loc["constant", "median"]
    twice = [result.predict_draws([5000, 9000], schedule=schedules.cosine(12000), seed=4) for _ in range(2)]
    np.testing.assert_array_equal(*twice)
    assert not np.array_equal(twice[0], result.predict_draws([5000, 9000], schedule=schedules.cosine(12000), seed=5))


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"steps": [3000], "run": "cosine_12000", "schedule": schedules.cosine(12000)}, ValueError, "one of run="),
        ({"steps": [3000, 2000], "run": IN_PROGRESS}, ValueError, "increasing"),
        ({"steps": [3000], "run": IN_PROGRESS}, ValueError, "logged up to step"),
        ({"steps": [30000], "schedule": schedules.cosine(12000)}, DataError, "within its schedule"),
        ({"steps": [13000], "run": "nope"}, KeyError, "unknown run"),
        ({"steps": [5000], "schedule": schedules.cosine(12000), "N": 1e8}, ValueError, "one model size"),
    ],
)
def test_bad_prediction_requests_are_named(simulated, kwargs: dict, error: type, message: str) -> None:  # noqa: ANN001
    _, result = simulated
    with pytest.raises(error, match=message):
        result.predict_draws(**kwargs)


def test_plot_curves_draws_a_band_per_run(simulated) -> None:  # noqa: ANN001
    import matplotlib.pyplot as plt

    curves, result = simulated
    held = curves.subset([IN_PROGRESS])
    ax = bs.plots.plot_curves(result, held_out=held, schedules={"cosine_24000": schedules.cosine(24000)})
    assert len(ax.collections) >= 2 * (len(result.curves.runs) + 1) + 1  # a band and the points of each run
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any("held out" in t for t in labels) and "cosine_24000 (predicted)" in labels
    plt.close("all")


def test_a_curve_fit_saved_is_loaded_back_exactly(simulated, tmp_path) -> None:  # noqa: ANN001
    curves, result = simulated
    path = tmp_path / "curves.nc"
    result.save(path)
    loaded = bs.load(path)
    assert isinstance(loaded, bs.CurveResult) and loaded.settings == result.settings
    assert (loaded.law.name, loaded.noise, loaded.block) == (result.law.name, result.noise, result.block)
    pd.testing.assert_frame_equal(loaded.curves.table, result.curves.table)
    for run, lr in result.curves.schedules.items():
        np.testing.assert_array_equal(loaded.curves.schedules[run], lr)
    for group in result.idata.groups():
        assert loaded.idata[group].equals(result.idata[group]), group
    np.testing.assert_array_equal(loaded.predict_draws([13000], run=IN_PROGRESS), result.predict_draws([13000], run=IN_PROGRESS))
    assert not list(tmp_path.glob(".*.tmp")), "a temporary file was left behind"
    with pytest.raises(DataError, match="not of the law given"):
        bs.load(path, law=multi_power())
    odd = bs.CurveResult(result.idata, LossCurves(result.curves.table.assign(run=[("a", 1)] * len(result.curves.table)),
                                                   {("a", 1): curves.schedules["cosine_12000"]}),
                         result.law, result.noise, result.block, result.settings)
    with pytest.raises(TypeError, match="strings or integers"):
        odd.save(tmp_path / "odd.nc")


@pytest.mark.slow
def test_the_structural_error_is_learned_in_steps_and_across_schedules_and_added_only_where_they_are_new(
        simulated, tmp_path) -> None:  # noqa: ANN001
    """Rolling-origin refits on the first third and half of the steps: each run of each cut counts once (its
    points' weights sum to one over the number of cuts) at its distance beyond the refit's last step. Refits
    without each schedule: a left-out schedule is scored from where it departs from the others and counts once
    (constant_12000 and the run in progress, constant until 19,200, never depart inside the steps, and are not
    refitted). On curves from the law itself both scales stay under the noise (median). A schedule that logged
    runs took up to a step is predicted there as the plain fit, draw for draw; beyond the fitted steps it
    deviates by exactly ``tau z sqrt(d)`` plus, from where it departs from what every logged run took (a run in
    progress too), one more shift per draw, drawn apart for each schedule; the band at 36k steps widens but by
    less than three times and still covers the true curve; both scales are saved and loaded back."""
    curves, result = simulated
    real_refit = bs.curve_fit._refit
    record = bs.curve_fit.curve_record(result)
    assert set(record["cut"]) == {1 / 3, 1 / 2}
    top = result.curves.table["step"].max()
    for q, rows in record.groupby("cut"):
        assert (rows["step"] > q * top).all()
        np.testing.assert_allclose(rows.groupby("run")["weight"].sum(), 0.5)
        last = result.curves.table.loc[result.curves.table["step"] <= q * top, "step"].max()
        np.testing.assert_allclose(rows["distance"], np.log(rows["step"] / last))
    refits = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(bs.curve_fit, "_refit", lambda *a: refits.append(a) or real_refit(*a))
        across = bs.curve_fit.schedule_record(result)
    assert len(refits) == 2  # the two schedules that never depart inside the others' steps are not refitted
    assert set(across["run"]) == {"cosine_12000", "wsd_9600_12000"}
    assert (across.loc[across["run"] == "wsd_9600_12000", "step"] >= 9600).all()
    np.testing.assert_allclose(across.groupby("run")["weight"].sum(), 1.0)
    assert (across["distance"] == 1.0).all() and (across["step"] <= top).all()
    planning = bs.curve_fit.curve_structural_error(result, record=record, across=across)
    assert np.median(planning.misfit) < 0.004 and np.median(planning.schedule_misfit) < 0.004  # the path's sd
    lr = schedules.constant(36000)  # constant_12000 and the run in progress, each seen up to its last logged step
    seen, beyond = [5000, top], np.array([15000, 24000, 35999])
    np.testing.assert_array_equal(planning.predict_draws(seen, schedule=lr), result.predict_draws(seen, schedule=lr))
    deviation = np.log(planning.predict_draws(beyond, schedule=lr, seed=2) / result.predict_draws(beyond, schedule=lr, seed=2))
    shift = deviation - bs.posterior.shock_draws(planning.misfit, 2)[:, None] * np.sqrt(np.log(beyond / top))
    np.testing.assert_allclose(shift - shift[:, :1], 0.0, atol=1e-9)
    assert 0.5 < np.std(shift[:, 0]) / np.sqrt(np.mean(planning.schedule_misfit ** 2)) < 1.5
    ahead = np.log(planning.predict_draws([13000], run=IN_PROGRESS) / result.predict_draws([13000], run=IN_PROGRESS))
    assert np.std(ahead) > 0  # the run in progress goes where no logged run went: the law's misfit there too
    decays = {name: schedules.from_name(name) for name in ("wsd_6000_12000", "wsd_7000_12000")}
    z = [np.log(planning.predict_draws([11000], schedule=v) / result.predict_draws([11000], schedule=v))[:, 0]
         / planning.schedule_misfit for v in decays.values()]
    assert abs(np.corrcoef(*z)[0, 1]) < 0.2  # each new schedule misfits on its own
    points = pd.DataFrame({"run": "new", "step": [35999]})
    lr = schedules.cosine(36000)
    with jax.enable_x64(True):
        truth = float(lr_annealing().mean(CURVE_TRUTH, curve_inputs({"new": lr}, points))[0])
    plain, wide = (r.predict([35999], schedule=lr).iloc[0] for r in (result, planning))
    assert wide["lower"] <= truth <= wide["upper"]
    assert 1.0 < (wide["upper"] - wide["lower"]) / (plain["upper"] - plain["lower"]) < 3.0
    planning.save(tmp_path / "planning.nc")
    loaded = bs.load(tmp_path / "planning.nc")
    np.testing.assert_array_equal(loaded.misfit, planning.misfit)
    np.testing.assert_array_equal(loaded.schedule_misfit, planning.schedule_misfit)
    with pytest.raises(ValueError, match="fractions in"):
        bs.curve_fit.curve_record(result, cuts=[1.5])
    one = dataclasses.replace(result, curves=curves.subset(["cosine_12000"]))
    assert bs.curve_fit.schedule_record(one).empty
    with pytest.warns(UserWarning, match="one schedule"):
        alone = bs.curve_fit.curve_structural_error(one, record=record, across=bs.curve_fit.schedule_record(one))
    assert alone.schedule_misfit is None and alone.misfit is not None


@pytest.fixture(scope="module")
def across_sizes(sizes_fit: bs.CurveResult) -> tuple[LossCurves, bs.CurveResult]:
    """:func:`conftest.size_curves` whole, and their fit with the 400M runs seen up to 30%."""
    return size_curves(), sizes_fit


@pytest.mark.slow
def test_a_fit_across_sizes_recovers_the_trend_and_predicts_the_larger_size(across_sizes, tmp_path) -> None:  # noqa: ANN001
    """The parameters at the reference size and their slopes in log N cover the truth; each 400M run's next point
    and final loss lie inside its bands continued from its 30% prefix and predicted from its schedule alone (no
    prefix): the continued band is narrower at the next point, about as wide at the final (the residual path
    is forgotten by then); the fit is saved and loaded back with its sizes."""
    curves, result = across_sizes
    assert result.size_ref == pytest.approx(100e6)
    summary = result.summary(level=0.98)
    truth = {**SIZE_TRUTH, **{f"{n}_slope": v for n, v in SIZE_SLOPES.items()}}
    for name, value in truth.items():
        assert summary.loc[name, "1%"] <= value <= summary.loc[name, "99%"], (name, summary.loc[name].to_dict())
    assert result.diagnostics.table["r_hat"].max() < 1.1
    for run in ("400M cosine_12000", "400M wsd_9600_12000"):
        logged = curves.table[curves.table["run"] == run]
        seen = result.curves.table.loc[result.curves.table["run"] == run, "step"].max()
        at = logged[logged["step"] > seen].iloc[[0, -1]]  # the next logged point after the prefix, and the final
        continued = result.predict(at["step"].to_numpy(), run=run)
        fresh = result.predict(at["step"].to_numpy(), schedule=curves.schedules[run], N=400e6)
        for band in (continued, fresh):
            assert (band["lower"].to_numpy() <= at["loss"].to_numpy()).all(), (run, band)
            assert (at["loss"].to_numpy() <= band["upper"].to_numpy()).all(), (run, band)
        # the run's own residual path narrows its next point (it is forgotten over ell = 3000 steps: by the
        # final step, 8,400 steps on, both bands are the mean curve's)
        width = (continued["upper"] - continued["lower"]).to_numpy(), (fresh["upper"] - fresh["lower"]).to_numpy()
        assert width[0][0] < 0.9 * width[1][0] and width[0][1] == pytest.approx(width[1][1], rel=0.1)
    with pytest.raises(ValueError, match="give the new run's N"):
        result.predict_draws([5000], schedule=schedules.cosine(12000))
    with pytest.raises(ValueError, match="give N only with a new schedule"):
        result.predict_draws([11000], run="400M cosine_12000", N=400e6)
    result.save(tmp_path / "sizes.nc")
    loaded = bs.load(tmp_path / "sizes.nc")
    assert loaded.size_ref == result.size_ref and loaded.curves.sizes == result.curves.sizes
    np.testing.assert_array_equal(loaded.predict_draws([9000], schedule=schedules.cosine(12000), N=200e6),
                                  result.predict_draws([9000], schedule=schedules.cosine(12000), N=200e6))
