"""The result contract, over every result type: idata groups, draws, summary, diagnostics, predict, save/load."""

import warnings

import numpy as np
import pandas as pd
import pytest

import bayescale as bs
from conftest import CHINCHILLA, TINY

GROUPS = ("posterior", "sample_stats", "log_likelihood", "posterior_predictive", "observed_data", "constant_data")


def _results(request: pytest.FixtureRequest) -> dict[str, tuple[bs.Posterior, dict]]:
    """Every result type with points at which to predict."""
    fit = request.getfixturevalue("chinchilla_fit")
    hier = request.getfixturevalue("tiny_hierarchical")
    batch = request.getfixturevalue("tiny_batch")
    iso = request.getfixturevalue("tiny_isoflop")
    stacked = request.getfixturevalue("tiny_stacked")
    downstream = request.getfixturevalue("tiny_downstream")
    structural = request.getfixturevalue("tiny_structural_batch")
    nd = {"N": [1e9, 1e10], "D": [2e10, 2e11]}
    return {
        "fit": (fit, nd),
        "batch member": (batch["g1"], nd),
        "structural member": (structural["g1"], nd),
        "hierarchical member": (hier["g0"], nd),
        "hierarchical": (hier, {"group": "g2", **nd}),
        "isoflop": (iso, {"N": [1e9, 3e9], "C": [iso.compute[0]] * 2}),
        "stacked": (stacked, nd),
        "downstream": (downstream, nd),
    }


KINDS = ("fit", "batch member", "structural member", "hierarchical member", "hierarchical", "isoflop", "stacked",
         "downstream")
PLANNED = ("fit", "batch member", "structural member", "hierarchical member", "stacked")
"""Kinds read law by law (``components()``): every planning function takes them."""


@pytest.mark.parametrize("kind", KINDS)
def test_contract(kind: str, request: pytest.FixtureRequest, tmp_path) -> None:  # noqa: ANN001
    result, points = _results(request)[kind]
    assert isinstance(result, bs.Posterior)
    assert set(GROUPS) <= set(result.idata.groups())
    runs = result.data.n
    assert result.idata.log_likelihood["log_loss"].shape[-1] == runs
    assert result.idata.observed_data["log_loss"].shape == (runs,)
    np.testing.assert_allclose(result.idata.constant_data["loss"].values, result.data.loss)
    chains, draws = result.idata.posterior.sizes["chain"], result.idata.posterior.sizes["draw"]
    for name, values in result.draws().items():
        assert values.shape[0] == chains * draws, name
    summary = result.summary()
    assert isinstance(summary, pd.DataFrame) and len(summary) > 0
    assert isinstance(result.diagnostics, bs.Diagnostics)
    assert result.diagnostics.table["r_hat"].notna().all()
    predicted = result.predict_draws(**points)
    assert predicted.shape == (chains * draws, 2) and np.all(np.isfinite(predicted) & (predicted > 0))
    assert len(result.predict(**points)) == 2

    path = tmp_path / "result.nc"
    result.save(path)
    loaded = bs.load(path)
    assert type(loaded) is type(result)
    assert loaded.settings == result.settings
    for name in result.latents:
        np.testing.assert_array_equal(loaded.draws(name), result.draws(name))
    for group in GROUPS:
        assert loaded.idata[group].equals(result.idata[group]), group
    np.testing.assert_array_equal(loaded.data.loss, result.data.loss)
    pd.testing.assert_frame_equal(loaded.summary(), result.summary())
    np.testing.assert_array_equal(loaded.predict_draws(**points), predicted)
    if isinstance(result, (bs.FitResult, bs.DownstreamResult)):
        assert loaded.spec == result.spec
    assert not list(tmp_path.glob(".*.tmp")), "a temporary file was left behind"


@pytest.mark.parametrize("kind", PLANNED)
def test_every_planning_function_reads_the_one_predictive(kind: str, request: pytest.FixtureRequest, tmp_path) -> None:  # noqa: ANN001
    """compute_optimal (all columns), loss_at, compute_for_loss, allocation_exponents and inference_optimal on
    every result read law by law, equal after save/load (the components, structural error included, survive)."""
    result, _ = _results(request)[kind]
    result.save(tmp_path / "r.nc")
    loaded = bs.load(tmp_path / "r.nc")
    for planned in (result, loaded):
        table = bs.compute_optimal(planned, [1e21, 1e24])
        assert {"N_opt", "D_opt", "tokens_per_param", "loss_opt"} <= set(table.columns.get_level_values(0))
        assert np.all(np.isfinite(table.to_numpy()))
        at = bs.loss_at(planned, N=[1e9], C=[1e21])
        assert np.all(np.isfinite(at.to_numpy()))
        reach = bs.compute_for_loss(planned, [2.0])
        assert 0 <= reach[("p_reachable", "")].iloc[0] <= 1
        assert set(bs.allocation_exponents(planned).index) == {"a", "b"}
    pd.testing.assert_frame_equal(bs.compute_optimal(loaded, [1e21, 1e24]), bs.compute_optimal(result, [1e21, 1e24]))
    # one signature on every result: a stack's predict bound a positional N to `level`
    pd.testing.assert_frame_equal(result.predict([1e9], [2e10], seed=2), result.predict(N=[1e9], D=[2e10], seed=2))
    np.testing.assert_array_equal(result.predict_draws([1e9], [2e10], noise=True, seed=2),
                                  loaded.predict_draws(N=[1e9], D=[2e10], noise=True, seed=2))
    pd.testing.assert_frame_equal(bs.loss_at(loaded, N=[1e9], C=[1e21]), bs.loss_at(result, N=[1e9], C=[1e21]))
    lowest = bs.compute_optimal(result, [1e24])[("loss_opt", "median")].iloc[0]
    assert bs.inference_optimal(result, 1.1 * lowest, inference_tokens=1e12).attrs["p_reachable"] > 0


def test_hierarchical_member_saves_loads_and_compares(tiny_hierarchical: bs.HierarchicalResult,
                                                      small_groups: dict, tmp_path) -> None:  # noqa: ANN001
    """Regressions: `h[g].save` then `bs.load` failed (no constant_data); `bs.compare` with a member
    raised 'log likelihood not found'."""
    member = tiny_hierarchical["g0"]
    member.save(tmp_path / "h.nc")
    loaded = bs.load(tmp_path / "h.nc")
    np.testing.assert_array_equal(loaded.draws("E"), member.draws("E"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        alone = bs.fit(small_groups["g0"], settings=TINY)
        table = bs.compare({"member": member, "alone": alone, "loaded": loaded})
    assert set(table.index) == {"member", "alone", "loaded"}
    assert table.loc["member", "elpd_loo"] == pytest.approx(table.loc["loaded", "elpd_loo"])
    # allocation takes any posterior honouring the contract, loaded or not
    pd.testing.assert_frame_equal(bs.compute_optimal(loaded, [1e22]), bs.compute_optimal(member, [1e22]))


def test_hierarchical_member_spec_states_only_priors_it_used(tiny_hierarchical: bs.HierarchicalResult) -> None:
    spec = tiny_hierarchical["g0"].spec
    roles = dict(spec.roles)
    assert roles == dict(tiny_hierarchical.roles)
    # shared exponents keep the law's prior; pooled E and the amplitudes have no prior of their own
    assert set(spec.priors) == {"alpha", "beta", "sigma"}


def test_batch_diagnostics_is_one_diagnostics(tiny_batch: bs.BatchResult) -> None:
    diag = tiny_batch.diagnostics
    assert isinstance(diag, bs.Diagnostics)
    assert set(diag.table.index.get_level_values("group")) == {"g0", "g1", "g2"}
    assert diag.divergences == sum(tiny_batch[g].diagnostics.divergences for g in ("g0", "g1", "g2"))
    assert all(p.split(":")[0] in ("g0", "g1", "g2") for p in diag.problems)
    assert list(tiny_batch.status().index) == ["g0", "g1", "g2"]


def test_idata_groups_and_summary(chinchilla_fit: bs.FitResult) -> None:
    idata = chinchilla_fit.idata
    for group in ("posterior", "sample_stats", "log_likelihood", "posterior_predictive", "observed_data", "constant_data"):
        assert group in idata.groups(), group
    assert idata.log_likelihood["log_loss"].shape == (4, 500, 200)
    table = chinchilla_fit.summary(level=0.9)
    assert list(table.index) == ["E", "alpha", "beta", "A", "B", "sigma"]
    assert {"mean", "sd", "median", "5%", "95%", "r_hat", "ess_bulk", "ess_tail"} <= set(table.columns)
    assert (table["5%"] < table["median"]).all() and (table["median"] < table["95%"]).all()


def test_loo_works_on_idata(chinchilla_fit: bs.FitResult) -> None:
    import arviz as az

    loo = az.loo(chinchilla_fit.idata)
    assert np.isfinite(loo.elpd_loo)


def test_predict_bands_contain_truth_and_widen_when_extrapolating(chinchilla_fit: bs.FitResult) -> None:
    N = np.array([1e9, 1e11])
    D = 20 * N
    table = chinchilla_fit.predict(N=N, D=D, level=0.95)
    truth = CHINCHILLA["E"] + CHINCHILLA["A"] * N ** -CHINCHILLA["alpha"] + CHINCHILLA["B"] * D ** -CHINCHILLA["beta"]
    assert ((table["lower"] < truth) & (truth < table["upper"])).all()
    assert (table["pred_lower"] <= table["lower"]).all() and (table["pred_upper"] >= table["upper"]).all()
    width = (table["upper"] - table["lower"]) / table["median"]
    assert width[1] > width[0]
    by_compute = chinchilla_fit.predict(N=N, C=6 * N * D)
    np.testing.assert_allclose(by_compute["median"], chinchilla_fit.predict(N=N, D=D)["median"])
    with pytest.raises(ValueError, match="needs \\['D'\\]"):
        chinchilla_fit.predict(N=N)
    with pytest.raises(ValueError, match="'N'.*must be > 0"):
        chinchilla_fit.predict(N=[-1.0], D=[1e10])


def test_save_load_round_trip(chinchilla_fit: bs.FitResult, tmp_path) -> None:  # noqa: ANN001
    path = tmp_path / "fit.nc"
    chinchilla_fit.save(path)
    loaded = bs.load(path)
    for name in chinchilla_fit.spec.latents:
        np.testing.assert_array_equal(loaded.posterior[name].values, chinchilla_fit.posterior[name].values)
    np.testing.assert_array_equal(loaded.data.N, chinchilla_fit.data.N)
    np.testing.assert_array_equal(loaded.data.loss, chinchilla_fit.data.loss)
    assert loaded.spec == chinchilla_fit.spec and loaded.law.name == "chinchilla"
    assert loaded.settings == chinchilla_fit.settings and loaded.seed == chinchilla_fit.seed
    assert loaded.summary().equals(chinchilla_fit.summary())


def test_isoflop_predicts_only_fitted_budgets(tiny_isoflop: bs.IsoFlopResult) -> None:
    with pytest.raises(ValueError, match="fitted budgets"):
        tiny_isoflop.predict_draws(N=[1e9], C=[3e20])


def test_load_names_the_file_it_cannot_read(tmp_path) -> None:  # noqa: ANN001
    bad = tmp_path / "broken.nc"
    bad.write_bytes(b"not a netcdf file")
    with pytest.raises(ValueError, match="broken.nc"):
        bs.load(bad)


def test_pointwise_groups_are_computed_in_bounded_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """A table too large for one pointwise call is cut into blocks of draws: same log-likelihood and
    predictive, float32."""
    N, D = bs.chinchilla_design(40, seed=0)
    data = bs.simulate("chinchilla", CHINCHILLA, N=N, D=D, seed=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", bs.ConvergenceWarning)
        whole = bs.fit(data, settings=TINY)
        monkeypatch.setattr(bs.posterior, "POINTWISE_ELEMENTS", 40 * 37)  # blocks of 37 of the 300 draws
        blocks = bs.fit(data, settings=TINY)
    np.testing.assert_array_equal(blocks.draws("E"), whole.draws("E"))
    for group in ("log_likelihood", "posterior_predictive"):
        assert blocks.idata[group]["log_loss"].dtype == np.float32
        assert blocks.idata[group]["log_loss"].shape == whole.idata[group]["log_loss"].shape
    np.testing.assert_allclose(blocks.idata.log_likelihood["log_loss"], whole.idata.log_likelihood["log_loss"], rtol=1e-5)
    # a new run's noise is drawn on the host in draw order: cutting the draws into blocks does not change it
    np.testing.assert_allclose(blocks.idata.posterior_predictive["log_loss"],
                               whole.idata.posterior_predictive["log_loss"], rtol=1e-5)


def test_hierarchical_fit_with_integer_labels(tiny_hierarchical: bs.HierarchicalResult, small_groups: dict,
                                              tmp_path) -> None:  # noqa: ANN001
    """Labels were compared as strings: with groups 0, 1, 2, `h[1].data.n` was 0."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", bs.ConvergenceWarning)
        h = bs.fit_hierarchical(dict(enumerate(small_groups.values())), settings=TINY)
    assert h.groups == [0, 1, 2] and [h[g].data.n for g in h.groups] == [10, 10, 10]
    np.testing.assert_array_equal(h[1].draws("E"), tiny_hierarchical["g1"].draws("E"))  # labels change nothing
    h.save(tmp_path / "h.nc")
    loaded = bs.load(tmp_path / "h.nc")
    assert loaded.groups == [0, 1, 2] and loaded[1].data.n == 10
    np.testing.assert_array_equal(loaded[1].draws("E"), h[1].draws("E"))
    with pytest.raises(bs.DataError, match="differ as text"):
        bs.fit_hierarchical({1: small_groups["g0"], "1": small_groups["g1"]}, settings=TINY)


def test_load_refuses_damaged_or_foreign_metadata_naming_the_file(chinchilla_fit: bs.FitResult, tmp_path) -> None:  # noqa: ANN001
    """A JSON list as metadata raised AttributeError; an unknown law a ValueError without the file; any
    attribute of numpyro.distributions named as a prior was called."""
    import json

    import xarray as xr

    chinchilla_fit.save(tmp_path / "fit.nc")
    meta = json.loads(xr.open_dataset(tmp_path / "fit.nc", group="posterior", engine="h5netcdf").attrs["bayescale"])
    edits = {
        "list.nc": ([1, 2], "damaged bayescale metadata"),
        "law.nc": ({**meta, "law": {"name": "no_such_law", "options": {}}}, "law.nc: .*custom law 'no_such_law'"),
        "settings.nc": ({**meta, "settings": {**meta["settings"], "num_chains": -1}}, "settings.nc: num_chains"),
        "prior.nc": ({**meta, "priors": {**meta["priors"], "E": {"type": "biject_to", "args": {}}}},
                     "prior.nc: cannot rebuild 'biject_to': not a .*Distribution"),
    }
    for name, (value, message) in edits.items():
        idata = chinchilla_fit.idata.copy()
        idata.posterior.attrs["bayescale"] = json.dumps(value)
        idata.to_netcdf(tmp_path / name, engine="h5netcdf")
        with pytest.raises(bs.DataError, match=message):
            bs.load(tmp_path / name)


def test_noise_drawn_on_the_host_has_the_likelihoods_distribution() -> None:
    """Predictives draw a new run's noise with NumPy (`likelihoods.draw_noise`): its quantiles are the
    Student-t's (nu=4) and the normal's, broadcast per draw, and the same generator seed gives the same draws."""
    import scipy.stats

    loc, scale = np.array([[1.0], [2.0]]), np.array([[0.1], [0.3]])
    levels = np.array([0.01, 0.1, 0.5, 0.9, 0.99])
    for likelihood, quantiles in ((bs.likelihoods.student_t(), scipy.stats.t(4).ppf(levels)),
                                  (bs.likelihoods.normal(), scipy.stats.norm.ppf(levels))):
        draws = likelihood.sample(np.random.default_rng(0), loc, scale)
        assert draws.shape == (2, 1)
        many = likelihood.sample(np.random.default_rng(1), np.broadcast_to(loc, (2, 100_000)),
                                 np.broadcast_to(scale, (2, 100_000)))
        for row in range(2):
            standard = (many[row] - loc[row, 0]) / scale[row, 0]
            np.testing.assert_allclose(np.quantile(standard, levels), quantiles, atol=0.05 * np.abs(quantiles).max())
        np.testing.assert_array_equal(likelihood.sample(np.random.default_rng(0), loc, scale), draws)
    learned = bs.likelihoods.student_t(nu=None).sample(np.random.default_rng(2), np.zeros(200_000), 1.0, np.full(200_000, 2.5))
    np.testing.assert_allclose(np.quantile(learned, 0.9), scipy.stats.t(2.5).ppf(0.9), rtol=0.03)
