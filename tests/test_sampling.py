"""The sampler: one settings object, compiled programs shared by equal models, traced once."""

import dataclasses
import subprocess
import sys
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bayescale as bs
from bayescale.allocation import _optimum_draws
from bayescale.model import make_spec, potential_fn
from bayescale.sampling import SamplerSettings, sampler_settings
from conftest import SMALL, TINY


def test_settings_defaults_and_overrides() -> None:
    options = {"seed": 3, "num_samples": 200, "params": "N"}
    settings = sampler_settings(TINY, options)
    assert settings == dataclasses.replace(TINY, seed=3, num_samples=200)
    assert options == {"params": "N"}, "column options are left for the table loader"
    assert sampler_settings(None, {}) == SamplerSettings()
    assert SamplerSettings().target_accept_prob == 0.95 and SamplerSettings().progress is False


@pytest.mark.parametrize(
    "field, value, match",
    [
        ("num_warmup", -1, "num_warmup must be an integer >= 0"),
        ("num_chains", 2.5, "num_chains must be an integer"),
        ("seed", True, "seed must be an integer"),
        ("target_accept_prob", 1.0, "target_accept_prob must be in"),
        ("strategy", "pmap", "strategy must be one of"),
        ("precision", "float16", "precision must be one of"),
    ],
)
def test_bad_settings_name_the_field(field: str, value: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        SamplerSettings(**{field: value})


def test_every_fit_takes_the_same_settings(small_groups: dict) -> None:
    settings = dataclasses.replace(TINY, seed=5)  # the fixtures' size: compiled programs are reused
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", bs.ConvergenceWarning)
        results = [
            bs.fit(small_groups["g0"], settings=settings),
            bs.fit_batch(small_groups, settings=settings)["g0"],
            bs.fit_hierarchical(small_groups, settings=settings),
            bs.fit_isoflop(bs.datasets.load("palm2"), settings=settings),
        ]
    for result in results:
        assert result.idata.posterior.sizes["draw"] == TINY.num_samples
        assert result.idata.posterior.sizes["chain"] == TINY.num_chains
        assert result.settings.seed == 5
    assert results[0].settings == settings and results[1].settings == settings  # group 0 keeps seed + 0


def test_equal_laws_share_compiled_programs(chinchilla_fit: bs.FitResult, tmp_path) -> None:  # noqa: ANN001
    law = bs.laws.get_law("chinchilla")
    assert law == bs.laws.get_law("chinchilla") and hash(law) == hash(bs.laws.get_law("chinchilla"))
    assert law != bs.laws.get_law("kaplan_nd")
    assert bs.laws.get_law("offset_power", covariate="N") != bs.laws.get_law("offset_power", covariate="C")
    custom = dataclasses.replace(law, builtin=False)
    assert custom != law and custom == custom
    spec = make_spec(law, bs.likelihoods.student_t())
    assert potential_fn(spec) is potential_fn(make_spec(bs.laws.get_law("chinchilla"), bs.likelihoods.student_t()))
    chinchilla_fit.save(tmp_path / "fit.nc")
    loaded = bs.load(tmp_path / "fit.nc")
    bs.compute_optimal(chinchilla_fit, [1e22, 1e23])
    compiled = _optimum_draws._cache_size()
    bs.compute_optimal(loaded, [1e22, 1e23])
    assert _optimum_draws._cache_size() == compiled, "a loaded fit recompiled allocation"


def test_refit_with_another_seed_traces_nothing_new(small_groups: dict) -> None:
    """blackjax-style: count how often the law's mean is traced. A second fit of the same model and
    shapes, with another seed, must reuse every compiled program."""
    traces = []

    def log_mean(p: dict, x: dict) -> jnp.ndarray:
        traces.append(1)
        return jnp.log(p["E"] + p["A"] * jnp.exp(-p["alpha"] * x["N"]))

    law = bs.laws.custom("counted", ("E", "alpha", "A"), ("N",), log_mean,
                         {k: bs.laws.get_law("offset_power").priors[k] for k in ("E", "alpha", "A")})
    settings = TINY
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", bs.ConvergenceWarning)
        first = bs.fit(small_groups["g0"], law=law, settings=settings)
        traced = len(traces)
        second = bs.fit(small_groups["g0"], law=law, settings=dataclasses.replace(settings, seed=1))
    assert traced > 0 and len(traces) == traced
    assert not np.array_equal(first.draws("E"), second.draws("E"))


def test_import_changes_no_global_state() -> None:
    """bayescale itself adds no warnings filter and changes no JAX setting (NumPyro's own import adds
    filters, so the dependencies are imported first)."""
    code = (
        "import warnings, jax, numpyro, arviz, matplotlib, pandas, xarray\n"
        "filters = list(warnings.filters); x64 = jax.config.jax_enable_x64\n"
        "import bayescale\n"
        "assert warnings.filters == filters, 'import bayescale changed the warnings filters'\n"
        "assert jax.config.jax_enable_x64 == x64, 'import bayescale changed jax_enable_x64'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def _quartic(z: jnp.ndarray, data: dict) -> jnp.ndarray:
    """A correlated, non-Gaussian potential (module level: equal potentials share compiled programs)."""
    d = z - data["mu"]
    return 0.5 * d @ data["precision"] @ d + 0.1 * jnp.sum(z**4)


def test_draws_are_numpyros_and_every_size_runs_one_program() -> None:
    """The warmup schedule is data of the compiled sampler: its draws are NumPyro's own kernel's (its schedule
    a constant), iteration for iteration, at both of the suite's sizes (three and six adaptation windows); and
    the second size lowers no new sampler program."""
    from numpyro.infer.hmc import hmc

    from bayescale.sampling import NUTSConfig, sample_lanes

    data = {"mu": np.array([1.0, -2.0, 0.5]),
            "precision": np.array([[2.0, 1.5, 0.0], [1.5, 2.0, 0.3], [0.0, 0.3, 1.0]])}
    z0, key = np.array([0.1, 0.2, -0.3]), np.array([0, 3], np.uint32)
    lowered = []

    def listener(name: str, *args: object, fun_name: str = "", **kwargs: object) -> None:
        if name == "/jax/core/compile/jaxpr_to_mlir_module_duration":
            lowered.append(fun_name)

    init_kernel, sample_kernel = hmc(potential_fn_gen=lambda d: lambda z: _quartic(z, d), algo="NUTS")
    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        with jax.enable_x64(True):
            for warmup, samples in ((TINY.num_warmup, TINY.num_samples), (SMALL["num_warmup"], SMALL["num_samples"])):
                config = NUTSConfig(warmup, samples)
                lowered.clear()
                draws = sample_lanes(_quartic, z0[None], {k: v[None] for k, v in data.items()}, key[None], config,
                                     strategy="loop")
                if warmup == SMALL["num_warmup"]:
                    assert not [name for name in lowered if "advance" in name], lowered

                def reference(z0: jnp.ndarray, key: jnp.ndarray, warmup: int = warmup):  # noqa: ANN202
                    state = init_kernel(z0, warmup, target_accept_prob=config.target_accept_prob,
                                        max_tree_depth=config.max_tree_depth, dense_mass=True, model_args=(data,),
                                        rng_key=key)
                    step = lambda s, _: (s := sample_kernel(s, model_args=(data,)), (s.z, s.num_steps))  # noqa: E731
                    return jax.lax.scan(step, state, None, length=warmup + samples)[1]

                z, steps = jax.jit(reference)(z0, key)
                np.testing.assert_array_equal(draws.num_steps[0], steps[warmup:])
                # equal to rounding: the final step-size average differs in its last bit
                np.testing.assert_allclose(draws.z[0], z[warmup:], rtol=1e-10, atol=1e-12)
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
