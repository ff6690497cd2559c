"""fit_batch: agreement with single fits, padding invariance, faults, resume, sharding."""

import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

import bayescale as bs
from bayescale.model import make_spec, model_data, potential_fn
from conftest import CHINCHILLA, TINY



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
    result = bs.fit_batch(frame, group="arch", strategy="loop", settings=TINY)
    diag = result.status()
    assert diag.loc["broken", "status"] == "failed" and "'loss'" in diag.loc["broken", "reason"]
    assert set(result.results) == {"g0", "g1"}
    # g0 has 64 rows (no padding): bit-identical to a single fit with seed + index.
    single0 = bs.fit(data["g0"], settings=TINY, seed=0)
    np.testing.assert_array_equal(result["g0"].posterior["alpha"].values, single0.posterior["alpha"].values)
    # g1 is padded 40 -> 64: same posterior within Monte Carlo error.
    single1 = bs.fit(data["g1"], settings=TINY, seed=1)
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
    first = bs.fit_batch(data, out_dir=tmp_path, seed=3, settings=TINY)
    os.remove(tmp_path / bs.store.group_file("g1"))  # as if killed before the second group was saved
    with pytest.warns(bs.ResumeWarning, match="'g1'.*group-g1-.*no such file"):
        again = bs.fit_batch(data, out_dir=tmp_path, seed=3, settings=TINY)
    assert again.resume == {"g0": "reused", "g1": again.resume["g1"]} and again.resume["g1"].startswith("refitted")
    for name in ("g0", "g1"):
        np.testing.assert_array_equal(again[name].posterior["beta"].values, first[name].posterior["beta"].values)
    loaded = bs.load_batch(tmp_path)
    assert loaded.order == ["g0", "g1"]
    np.testing.assert_array_equal(loaded["g1"].posterior["A"].values, first["g1"].posterior["A"].values)


def test_a_planning_group_made_by_an_older_method_is_not_reused() -> None:
    """A group's manifest keeps how its structural error was made; one made before the method changed is refitted
    with the reason, as is one whose planning mode was switched."""
    changes = bs.batch._changes
    now = {"data": "h", "structural": bs.posterior.STRUCTURAL_METHOD}
    assert "older method" in changes({"data": "h", "structural": True}, now)  # manifests before 2026-12-02
    assert changes({"data": "h", "structural": False}, now).endswith("switched on")
    assert changes(now, {"data": "h", "structural": False}).endswith("switched off")


@pytest.fixture(scope="module")
def saved(small_groups: dict, tmp_path_factory: pytest.TempPathFactory) -> tuple:
    """Three groups fitted into a folder (TINY settings), the folder, and its files' bytes."""
    folder = tmp_path_factory.mktemp("batch")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", bs.ConvergenceWarning)
        batch = bs.fit_batch(small_groups, out_dir=folder, settings=TINY)
    return batch, folder


def copy_of(folder, tmp_path):  # noqa: ANN001, ANN201
    shutil.copytree(folder, tmp_path / "copy")
    return tmp_path / "copy"


def same_draws(a: bs.FitResult, b: bs.FitResult) -> bool:
    return all(np.array_equal(a.draws(p), b.draws(p)) for p in a.latents)


@pytest.mark.filterwarnings("ignore::bayescale.ConvergenceWarning")
def test_rerun_with_groups_reordered_refits_and_never_mislabels(saved: tuple, small_groups: dict, tmp_path) -> None:  # noqa: ANN001
    batch, folder = saved
    folder = copy_of(folder, tmp_path)
    reordered = dict(reversed(list(small_groups.items())))
    with pytest.warns(bs.ResumeWarning, match="seed"):
        rerun = bs.fit_batch(reordered, out_dir=folder, settings=TINY)
    fresh = bs.fit_batch(reordered, settings=TINY)
    assert rerun.resume == {"g2": rerun.resume["g2"], "g1": "reused", "g0": rerun.resume["g0"]}  # g1 kept its seed
    for name in fresh.order:
        assert same_draws(rerun[name], fresh[name]), name
        assert same_draws(bs.load_batch(folder)[name], fresh[name]), name
    assert bs.load_batch(folder).order == ["g2", "g1", "g0"]
    assert not same_draws(fresh["g0"], batch["g0"])  # the saved g0 (another seed) was not passed off as this one


@pytest.mark.filterwarnings("ignore::bayescale.ConvergenceWarning")
def test_rerun_refits_exactly_the_groups_whose_inputs_changed(saved: tuple, small_groups: dict, tmp_path) -> None:  # noqa: ANN001
    batch, folder = saved
    folder = copy_of(folder, tmp_path)
    edited = dict(small_groups)
    edited["g1"] = dataclasses.replace(small_groups["g1"], loss=small_groups["g1"].loss * 1.5)
    with pytest.warns(bs.ResumeWarning, match="'g1' its data changed"):
        rerun = bs.fit_batch(edited, out_dir=folder, settings=TINY)
    assert rerun.resume == {"g0": "reused", "g1": "refitted: its data changed", "g2": "reused"}
    assert same_draws(rerun["g0"], batch["g0"]) and not same_draws(rerun["g1"], batch["g1"])
    np.testing.assert_array_equal(bs.load_batch(folder)["g1"].data.loss, edited["g1"].loss)
    reseeded = dataclasses.replace(TINY, seed=1)  # any field of the settings; a seed needs no new program
    with pytest.warns(bs.ResumeWarning, match="seed 0 -> 1"):
        rerun = bs.fit_batch(edited, out_dir=folder, settings=reseeded)
    assert all(r.startswith("refitted: sampler settings changed") for r in rerun.resume.values())
    with pytest.warns(bs.ResumeWarning, match="its law changed"):
        bs.fit_batch(edited, out_dir=folder, law="kaplan_nd", settings=reseeded)


@pytest.mark.filterwarnings("ignore::bayescale.ConvergenceWarning")
def test_a_smaller_batch_in_an_old_folder_lists_only_its_groups(saved: tuple, small_groups: dict, tmp_path) -> None:  # noqa: ANN001
    _, folder = saved
    folder = copy_of(folder, tmp_path)
    with pytest.warns(bs.ResumeWarning, match=r"2 saved groups are not in this batch \(\['g1', 'g2'\]"):
        rerun = bs.fit_batch({"g0": small_groups["g0"]}, out_dir=folder, settings=TINY)
    assert rerun.resume == {"g0": "reused"}
    assert bs.load_batch(folder).order == ["g0"]


@pytest.mark.filterwarnings("ignore::bayescale.ConvergenceWarning")
def test_damaged_group_file_is_named_and_refitted(saved: tuple, small_groups: dict, tmp_path) -> None:  # noqa: ANN001
    batch, folder = saved
    folder = copy_of(folder, tmp_path)
    damaged = folder / bs.store.group_file("g2")
    damaged.write_bytes(damaged.read_bytes()[:1000])  # a truncated file, as a dying disk or copy leaves it
    with pytest.raises(bs.DataError, match=f"{damaged.name}.*refits"):
        bs.load_batch(folder)
    with pytest.warns(bs.ResumeWarning, match=f"'g2' .*{damaged.name}"):
        rerun = bs.fit_batch(small_groups, out_dir=folder, settings=TINY)
    assert rerun.resume["g2"].startswith("refitted") and rerun.resume["g0"] == "reused"
    assert same_draws(bs.load_batch(folder)["g2"], batch["g2"])


@pytest.mark.filterwarnings("ignore::bayescale.ConvergenceWarning")
def test_a_group_file_copied_over_another_is_refused_and_refitted(saved: tuple, small_groups: dict, tmp_path) -> None:  # noqa: ANN001
    """load_batch (and so `bayescale plan`) served g1's posterior as g0's after a copy over g0's file."""
    batch, folder = saved
    folder = copy_of(folder, tmp_path)
    swapped = folder / bs.store.group_file("g0")
    shutil.copyfile(folder / bs.store.group_file("g1"), swapped)
    with pytest.raises(bs.DataError, match=f"{swapped.name}.*not the file the manifest recorded for group 'g0'"):
        bs.load_batch(folder)
    with pytest.warns(bs.ResumeWarning, match=f"'g0' .*{swapped.name}"):
        rerun = bs.fit_batch(small_groups, out_dir=folder, settings=TINY)
    assert rerun.resume["g0"].startswith("refitted") and rerun.resume["g1"] == "reused"
    assert same_draws(bs.load_batch(folder)["g0"], batch["g0"])


@pytest.mark.filterwarnings("ignore::bayescale.ConvergenceWarning")
def test_rerun_after_editing_unique_tokens_refits(saved: tuple, small_groups: dict, tmp_path) -> None:  # noqa: ANN001
    """U (unique tokens) was not hashed: a data-constrained batch rerun after editing it reused stale groups."""
    _, folder = saved
    folder = copy_of(folder, tmp_path)
    with_u = {name: dataclasses.replace(d, U=d.D / 4) for name, d in small_groups.items()}
    with pytest.warns(bs.ResumeWarning, match="its data changed"):
        bs.fit_batch(with_u, out_dir=folder, settings=TINY)
    edited = dict(with_u, g1=dataclasses.replace(with_u["g1"], U=with_u["g1"].U * 0.01))
    with pytest.warns(bs.ResumeWarning, match="'g1' its data changed"):
        rerun = bs.fit_batch(edited, out_dir=folder, settings=TINY)
    assert rerun.resume == {"g0": "reused", "g1": "refitted: its data changed", "g2": "reused"}


def test_concurrent_writers_and_readers_never_see_a_damaged_file(saved: tuple, tmp_path) -> None:  # noqa: ANN001
    batch, _ = saved
    folder = tmp_path / "shared"
    batch.save(folder)
    errors: list[BaseException] = []

    def write() -> None:
        try:
            for _ in range(3):
                batch.save(folder)
        except BaseException as err:  # noqa: BLE001 - collected and re-raised by the test
            errors.append(err)

    def read() -> None:
        try:
            for _ in range(3):
                loaded = bs.load_batch(folder)
                assert same_draws(loaded["g1"], batch["g1"])
        except BaseException as err:  # noqa: BLE001
            errors.append(err)

    with h5py_open(folder / bs.store.group_file("g0")):  # a reader holding a file open while others write it
        threads = [threading.Thread(target=f) for f in (write, write, read, read)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors, errors
    assert all(same_draws(bs.load_batch(folder)[n], batch[n]) for n in batch.order)
    assert not [f for f in os.listdir(folder) if f.endswith(".tmp")]


def h5py_open(path):  # noqa: ANN001, ANN201
    import h5netcdf

    return h5netcdf.File(path, "r")


def test_group_labels_missing_or_of_two_types(small_groups: dict) -> None:
    frame = pd.concat([small_groups["g0"].to_frame().assign(arch=1), small_groups["g1"].to_frame().assign(arch="1")],
                      ignore_index=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", bs.ConvergenceWarning)
        result = bs.fit_batch(frame, group="arch", settings=TINY)
    assert result.order == [1, "1"] and result[1].data.n == 10 and result["1"].data.n == 10
    frame.loc[[3, 14], "arch"] = np.nan
    with pytest.raises(bs.DataError, match=r"'arch'.*rows 3, 14"):
        bs.fit_batch(frame, group="arch", settings=TINY)


@pytest.mark.parametrize("shard", [(0, 0), (5, 2), (-1, 2)])
def test_shard_that_selects_nothing_is_an_error(small_groups: dict, shard: tuple) -> None:
    with pytest.raises(ValueError, match="shard"):
        bs.fit_batch(small_groups, shard=shard, settings=TINY)


KILLED_RUN = textwrap.dedent("""
    import sys, warnings
    import bayescale as bs
    from conftest import TINY
    from test_batch import groups
    warnings.simplefilter("ignore")
    data = {f"r{i}": d for i, d in enumerate(list(groups().values()) * 3)}
    bs.fit_batch(data, out_dir=sys.argv[1], seed=5, chunk_size=1, settings=TINY)
""")


@pytest.mark.slow
def test_kill_and_resume_ends_identical_to_an_uninterrupted_run(tmp_path) -> None:  # noqa: ANN001
    """SIGKILL a batch several times at random points; the finished folder equals one uninterrupted run."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.path.dirname(__file__), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-c", KILLED_RUN, str(tmp_path / "out")]
    rng = np.random.default_rng(0)
    saved = []
    for delay in rng.uniform(3, 9, size=3):  # the session's compilation cache: fits start within a second or two
        proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        manifest = tmp_path / "out" / bs.store.MANIFEST
        saved.append(len(bs.store.Manifest(tmp_path / "out").read()["groups"]) if manifest.exists() else 0)
    print("groups saved after each kill:", saved)
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    data = {f"r{i}": d for i, d in enumerate(list(groups().values()) * 3)}
    alone = bs.fit_batch(data, seed=5, settings=TINY)
    loaded = bs.load_batch(tmp_path / "out")
    assert loaded.order == alone.order and not loaded.failures
    for name in alone.order:
        assert same_draws(loaded[name], alone[name]), name


@pytest.mark.slow
def test_vmap_strategy_shards_over_devices() -> None:
    """Lanes split over four devices (each runs its own, shard_map) give the posterior the loop gives."""
    script = textwrap.dedent("""
        import jax, numpy as np, bayescale as bs
        from conftest import SMALL
        assert jax.device_count() == 4
        data = {}
        for g in range(2):
            N, D = bs.chinchilla_design(48, seed=g)
            data[f"g{g}"] = bs.simulate("chinchilla", {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28},
                                        N=N, D=D, seed=g)
        r = bs.fit_batch(data, strategy="vmap", **SMALL)
        looped = bs.fit_batch(data, strategy="loop", **SMALL)  # one device: the same posterior
        assert not r.failures, r.failures
        for g in r.order:
            assert np.isfinite(r[g].draws("alpha")).all()
            assert r[g].diagnostics.max_r_hat < 1.05
            for name in ("alpha", "beta", "E"):
                a, b = r[g].draws(name), looped[g].draws(name)
                assert abs(np.median(a) - np.median(b)) < 0.25 * np.std(b), (g, name)
        assert 0 < r.stats["lane_efficiency"] <= 1
        print("ok", r.stats)
    """)
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
           "PYTHONPATH": os.pathsep.join([os.path.dirname(__file__), os.environ.get("PYTHONPATH", "")])}
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
        from conftest import TINY
        from test_batch import groups
        data = {**groups(), "g2": groups()["g0"]}
        bs.fit_batch(data, shard=(jax.process_index(), jax.process_count()), out_dir=sys.argv[2], seed=3, settings=TINY)
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
    alone = bs.fit_batch(data, seed=3, settings=TINY)
    assert shared.order == alone.order == ["g0", "g1", "g2"]
    for name in alone.order:
        for param in ("E", "alpha", "beta", "A", "B", "sigma"):
            np.testing.assert_array_equal(shared[name].draws(param), alone[name].draws(param))
