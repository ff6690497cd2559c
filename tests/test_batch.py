"""fit_batch: agreement with single fits, padding invariance, faults, resume, sharding."""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

import bayescale as bs
from bayescale.model import make_spec, model_data, potential_fn
from conftest import CHINCHILLA

QUICK = {"num_warmup": 300, "num_samples": 300, "num_chains": 2, "progress": False}
SHARDED = {"num_warmup": 50, "num_samples": 50, "num_chains": 2}  # draw-for-draw equality needs no convergence


def groups() -> dict[str, bs.ScalingData]:
    out = {}
    for g, n in enumerate((64, 40)):
        N, D = bs.chinchilla_design(n, seed=20 + g)
        out[f"g{g}"] = bs.simulate("chinchilla", {**CHINCHILLA, "alpha": 0.3 + 0.05 * g}, N=N, D=D, seed=30 + g)
    return out


def test_padding_does_not_change_the_posterior_density() -> None:
    data = groups()["g1"]
    spec = make_spec(bs.laws.get_law("chinchilla"), bs.likelihoods.student_t())
    with jax.enable_x64(True):
        z = jnp.array([0.5, -1.1, -1.3, -1.0, -0.8, -3.9])
        exact = potential_fn(spec)(z, model_data(data, spec.law))
        padded = potential_fn(spec)(z, model_data(data, spec.law, size=128))
    assert float(exact) == pytest.approx(float(padded), rel=1e-12)


@pytest.mark.filterwarnings("ignore::bayescale.ConvergenceWarning")
def test_batch_matches_single_fits_and_survives_a_bad_group() -> None:
    data = groups()
    bad = data["g1"].to_frame()
    bad.iloc[3, bad.columns.get_loc("loss")] = np.nan
    frame = pd.concat([d.to_frame().assign(arch=k) for k, d in data.items()] + [bad.assign(arch="broken")])
    result = bs.fit_batch(frame, group="arch", strategy="loop", **QUICK)
    diag = result.status()
    assert diag.loc["broken", "status"] == "failed" and "'loss'" in diag.loc["broken", "reason"]
    assert set(result.results) == {"g0", "g1"}
    # g0 has 64 rows (no padding): bit-identical to a single fit with seed + index.
    single0 = bs.fit(data["g0"], seed=0, num_warmup=300, num_samples=300, num_chains=2)
    np.testing.assert_array_equal(result["g0"].posterior["alpha"].values, single0.posterior["alpha"].values)
    # g1 is padded 40 -> 64: same posterior within Monte Carlo error.
    single1 = bs.fit(data["g1"], seed=1, num_warmup=300, num_samples=300, num_chains=2)
    for p in ("E", "alpha", "beta"):
        a, b = result["g1"].draws(p), single1.draws(p)
        mcse = np.hypot(a.std() / np.sqrt(150), b.std() / np.sqrt(150))
        assert abs(np.median(a) - np.median(b)) < 4 * mcse, p
    table = result.summary()
    assert set(table["group"]) == {"g0", "g1"} and {"parameter", "median", "r_hat", "ess_bulk"} <= set(table.columns)
    plan = result.compute_optimal([1e22])
    assert plan.index.get_level_values("group").tolist() == ["g0", "g1"]
    with pytest.raises(KeyError, match="broken"):
        result["broken"]


def test_resume_from_out_dir(tmp_path) -> None:  # noqa: ANN001
    data = groups()
    first = bs.fit_batch(data, out_dir=tmp_path, seed=3, **QUICK)
    os.remove(tmp_path / "group_000001.nc")  # as if interrupted before the second group was saved
    again = bs.fit_batch(data, out_dir=tmp_path, seed=3, **QUICK)
    for name in ("g0", "g1"):
        np.testing.assert_array_equal(again[name].posterior["beta"].values, first[name].posterior["beta"].values)
    loaded = bs.load_batch(tmp_path)
    assert loaded.order == ["g0", "g1"]
    np.testing.assert_array_equal(loaded["g1"].posterior["A"].values, first["g1"].posterior["A"].values)


@pytest.mark.slow
def test_vmap_strategy_shards_over_devices() -> None:
    script = textwrap.dedent("""
        import jax, numpy as np, bayescale as bs
        assert jax.device_count() == 4
        data = {}
        for g in range(2):
            N, D = bs.chinchilla_design(48, seed=g)
            data[f"g{g}"] = bs.simulate("chinchilla", {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28},
                                        N=N, D=D, seed=g)
        r = bs.fit_batch(data, strategy="vmap", num_warmup=200, num_samples=200, num_chains=2, progress=False)
        assert not r.failures, r.failures
        for g in r.order:
            assert np.isfinite(r[g].draws("alpha")).all()
            assert r[g].diagnostics.max_r_hat < 1.05
        assert 0 < r.stats["lane_efficiency"] <= 1
        print("ok", r.stats)
    """)
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.startswith("ok")


@pytest.mark.slow
def test_two_processes_share_one_out_dir(tmp_path) -> None:  # noqa: ANN001
    """Two processes under jax.distributed (coordinator on 127.0.0.1) each fit their shard into one
    out_dir; load_batch reads every group back, identical to a one-process run."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    script = textwrap.dedent("""
        import sys, jax
        jax.distributed.initialize(coordinator_address="127.0.0.1:%d", num_processes=2, process_id=int(sys.argv[1]))
        import bayescale as bs
        from test_batch import groups, SHARDED
        data = {**groups(), "g2": groups()["g0"]}
        bs.fit_batch(data, shard=(jax.process_index(), jax.process_count()), out_dir=sys.argv[2], seed=3, **SHARDED)
        jax.distributed.shutdown()
    """ % port)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.path.dirname(__file__), os.environ.get("PYTHONPATH", "")])}
    procs = [subprocess.Popen([sys.executable, "-c", script, str(i), str(tmp_path / "shared")], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    for proc in procs:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-2000:]
    shared = bs.load_batch(tmp_path / "shared")
    data = {**groups(), "g2": groups()["g0"]}
    alone = bs.fit_batch(data, seed=3, **SHARDED)
    assert shared.order == alone.order == ["g0", "g1", "g2"]
    for name in alone.order:
        for param in ("E", "alpha", "beta", "A", "B", "sigma"):
            np.testing.assert_array_equal(shared[name].draws(param), alone[name].draws(param))
