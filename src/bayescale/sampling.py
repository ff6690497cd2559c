"""Functional NUTS over independent lanes (chains, or datasets x chains).

One compiled NUTS kernel (NumPyro's ``hmc(potential_fn_gen=...)``) runs every
lane; each lane has its own data, PRNG key, step size and mass-matrix
adaptation. One call of the compiled sampler runs up to ``SEGMENT`` iterations
in a loop; the host steps between calls (progress bar). The warmup and draw
counts are data, not constants of the program: every sampler size of a model
runs the same two compiled programs.

Two execution strategies sit behind :func:`sample_lanes`:

- ``"vmap"``: all lanes vectorised in one program (split over devices when
  there are several, each device running its own lanes with ``shard_map``).
  Best on accelerators, where lanes are free; a vectorised while-loop runs as
  long as its slowest lane (on its device), so lane efficiency matters.
- ``"loop"``: the single-lane program compiled once and called per lane from a
  small thread pool (one worker per core). Best on CPU, where vectorising buys
  little and every lane would wait for the slowest.

``"auto"`` picks ``"vmap"`` on GPU/TPU and ``"loop"`` on CPU.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from numpyro.infer.hmc import HMCState, hmc
from numpyro.infer.hmc_util import HMCAdaptState, build_adaptation_schedule, dual_averaging, welford_covariance
from tqdm.auto import tqdm

__all__ = [
    "check_seed",
    "SEED_LIMIT",
    "FitKeys",
    "fit_keys",
    "SamplerSettings",
    "sampler_settings",
    "NUTSConfig",
    "Draws",
    "sample_lanes",
    "compile_ahead",
    "default_strategy",
    "resolve_strategy",
]

Potential = Callable[[jax.Array, Any], jax.Array]


class NUTSConfig(NamedTuple):
    """Settings of the NUTS sampler (see ``numpyro.infer.NUTS``)."""

    num_warmup: int = 1000
    num_samples: int = 1000
    target_accept_prob: float = 0.95
    max_tree_depth: int = 10
    dense_mass: bool = True


_STRATEGIES = ("auto", "vmap", "loop")
_PRECISIONS = ("auto", "float64", "float32")


SEED_LIMIT = 2**32
"""Seeds are integers in ``[0, SEED_LIMIT)``: a batch derives ``seed + i`` per group, which stays in JAX's range."""


def check_seed(seed: Any, name: str = "seed") -> int:
    """Return ``seed`` as an int, or raise ValueError naming ``name`` when it is not an integer in ``[0, 2**32)``."""
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or not 0 <= seed < SEED_LIMIT:
        raise ValueError(f"{name} must be an integer in [0, 2**32), got {seed!r}")
    return int(seed)


class FitKeys(NamedTuple):
    """The random streams of one fit, raw ``uint32`` keys as NumPy arrays.

    Attributes:
        init: the starting points' key, ``(2,)``.
        chains: one sampler key per chain, ``(num_chains, 2)``.
        predictive: the posterior predictive's key, ``(2,)``.
    """

    init: np.ndarray
    chains: np.ndarray
    predictive: np.ndarray


@functools.partial(jax.jit, static_argnums=1)
def _fit_keys(seed: jax.Array, num_chains: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    init, sample, predictive = jax.random.split(jax.random.PRNGKey(seed), 3)
    return init, jax.random.split(sample, num_chains), predictive


def fit_keys(seed: int, num_chains: int) -> FitKeys:
    """The keys a fit with ``seed`` uses, derived one way everywhere (fits, batches, any model).

    One small compiled program per chain count (splitting keys eagerly compiles a program per operation).
    """
    return FitKeys(*(np.asarray(k) for k in _fit_keys(np.uint32(check_seed(seed)), num_chains)))


@dataclasses.dataclass(frozen=True)
class SamplerSettings:
    """How every ``fit_*`` samples: one object, one set of defaults.

    Every fitting function takes ``settings=SamplerSettings(...)`` and, as a
    convenience, the same fields as keyword arguments (``bs.fit(data, seed=3)``),
    which override ``settings``.

    Attributes:
        num_warmup: adaptation iterations per chain.
        num_samples: kept draws per chain.
        num_chains: independent chains (at least 2 for R-hat).
        target_accept_prob: NUTS target acceptance (0.95: on datasets of tens of
            runs 0.8 left divergences in most Chinchilla fits; on 240 runs 0.95 costs
            about 20% more time, see benchmarks/RESULTS.md).
        max_tree_depth: NUTS maximum tree depth.
        dense_mass: adapt a dense mass matrix (the parameters of additive laws are
            strongly correlated; a diagonal one needs about six times more
            leapfrog steps).
        strategy: how lanes run: ``"auto"``, ``"vmap"`` or ``"loop"`` (see module docs).
        precision: ``"auto"`` (float64 on CPU, float32 on accelerators),
            ``"float64"`` or ``"float32"``.
        progress: show tqdm progress bars.
        seed: PRNG seed; the same seed gives identical draws.
    """

    num_warmup: int = 1000
    num_samples: int = 1000
    num_chains: int = 4
    target_accept_prob: float = 0.95
    max_tree_depth: int = 10
    dense_mass: bool = True
    strategy: str = "auto"
    precision: str = "auto"
    progress: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        for name, least in (("num_warmup", 0), ("num_samples", 1), ("num_chains", 1), ("max_tree_depth", 1)):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < least:
                raise ValueError(f"{name} must be an integer >= {least}, got {value!r}")
        check_seed(self.seed)
        if not isinstance(self.target_accept_prob, (int, float)) or not 0 < self.target_accept_prob < 1:
            raise ValueError(f"target_accept_prob must be in (0, 1), got {self.target_accept_prob!r}")
        if self.strategy not in _STRATEGIES:
            raise ValueError(f"strategy must be one of {_STRATEGIES}, got {self.strategy!r}")
        if self.precision not in _PRECISIONS:
            raise ValueError(f"precision must be one of {_PRECISIONS}, got {self.precision!r}")

    @property
    def nuts(self) -> NUTSConfig:
        """The settings that shape the compiled kernel."""
        return NUTSConfig(self.num_warmup, self.num_samples, float(self.target_accept_prob), self.max_tree_depth,
                          self.dense_mass)

    @property
    def x64(self) -> bool:
        """Whether to sample in float64 (``precision``, with ``"auto"`` resolved by backend)."""
        if self.precision == "auto":
            return jax.default_backend() == "cpu"
        return self.precision == "float64"

    def to_dict(self) -> dict[str, Any]:
        """Fields by name (JSON-ready)."""
        return dataclasses.asdict(self)


_FIELDS = tuple(f.name for f in dataclasses.fields(SamplerSettings))


def sampler_settings(settings: SamplerSettings | None, options: dict[str, Any]) -> SamplerSettings:
    """``settings`` (default: :class:`SamplerSettings`) with the sampler fields in ``options`` applied.

    The sampler fields are removed from ``options``; what remains (column options
    for loading a table) is left to the caller.
    """
    if settings is not None and not isinstance(settings, SamplerSettings):
        raise ValueError(f"settings must be a SamplerSettings, got {type(settings).__name__}")
    chosen = {name: options.pop(name) for name in _FIELDS if name in options}
    return dataclasses.replace(settings or SamplerSettings(), **chosen)


class Draws(NamedTuple):
    """Post-warmup output of every lane.

    Attributes:
        z: sampler coordinates, ``(lanes, num_samples, k)``.
        diverging: divergent transitions, ``(lanes, num_samples)``.
        num_steps: leapfrog steps per iteration, ``(lanes, num_samples)``.
        accept_prob: acceptance probability, ``(lanes, num_samples)``.
        potential_energy: negative log density, ``(lanes, num_samples)``.
        step_size: adapted step size, ``(lanes,)``.
    """

    z: np.ndarray
    diverging: np.ndarray
    num_steps: np.ndarray
    accept_prob: np.ndarray
    potential_energy: np.ndarray
    step_size: np.ndarray


def default_strategy() -> str:
    """``"vmap"`` on accelerators, ``"loop"`` on CPU."""
    return "loop" if jax.default_backend() == "cpu" else "vmap"


SEGMENT = 100
"""Iterations per call of the compiled sampler: the host steps between calls (progress bar, finished chunks)."""

_WINDOWS = 32
"""Length of the padded adaptation schedule (NumPyro's windows double: 32 covers any warmup below 25 x 2^28)."""


class _Schedule(NamedTuple):
    """Warmup adaptation as data (NumPyro's schedule for ``num_warmup``), so one compiled sampler serves every
    warmup and draw count.

    Attributes:
        num_warmup: adaptation iterations, ``()`` int32.
        num_windows: number of adaptation windows, ``()`` int32.
        ends: last iteration of each window, ``(32,)`` int32, padded with -1.
    """

    num_warmup: np.ndarray
    num_windows: np.ndarray
    ends: np.ndarray


def _schedule(num_warmup: int) -> _Schedule:
    """The adaptation :class:`_Schedule` of ``num_warmup`` iterations: NumPyro's windows
    (``build_adaptation_schedule``: a fast step-size window, doubling mass-matrix windows, a final step-size window)."""
    windows = build_adaptation_schedule(num_warmup)
    ends = np.full(_WINDOWS, -1, np.int32)
    ends[: len(windows)] = [window.end for window in windows]
    return _Schedule(np.int32(num_warmup), np.int32(len(windows)), ends)


def _calls(total: int) -> list[int]:
    """Iterations of each call of the sampler for ``total`` iterations."""
    return [min(SEGMENT, total - begin) for begin in range(0, total, SEGMENT)]


class _Config(NamedTuple):
    """The settings a compiled sampler depends on (not the sizes: those are data)."""

    target_accept_prob: float
    max_tree_depth: int
    dense_mass: bool


def _kernels(potential: Potential, config: NUTSConfig):  # noqa: ANN202
    """``init`` and compiled ``advance`` for one lane and their vmapped versions (cached; shared by every warmup
    and draw count)."""
    return _programs(potential, _Config(config.target_accept_prob, config.max_tree_depth, config.dense_mass))


@functools.lru_cache(maxsize=64)
def _programs(potential: Potential, config: _Config):  # noqa: ANN202
    """``init(z0, data, key)`` builds a lane's NUTS state (traced for its shapes only); ``advance(state, data,
    schedule, n)`` runs the next ``n <= SEGMENT`` iterations (outputs padded to ``SEGMENT`` rows), starting
    with ``init`` when handed a :func:`_fresh` state: one compiled program per model, shape and precision.

    NumPyro's kernel is built without warmup (its adaptation schedule would be a constant of the program);
    the step size and mass matrix adapt here, as NumPyro's ``warmup_adapter`` does, reading the
    :class:`_Schedule` as data: the draws are NumPyro's, iteration for iteration.
    """
    init_kernel, sample_kernel = hmc(potential_fn_gen=lambda data: lambda z: potential(z, data), algo="NUTS")
    ss_init, ss_update = dual_averaging()
    mm_init, mm_update, mm_final = welford_covariance(diagonal=not config.dense_mass)

    def window_end(state: HMCAdaptState) -> HMCAdaptState:
        inverse_mass_matrix, mass_matrix_sqrt, mass_matrix_sqrt_inv = mm_final(state.mm_state, regularize=True)
        return state._replace(inverse_mass_matrix=inverse_mass_matrix, mass_matrix_sqrt=mass_matrix_sqrt,
                              mass_matrix_sqrt_inv=mass_matrix_sqrt_inv,
                              mm_state=mm_init(inverse_mass_matrix.shape[-1]),
                              ss_state=ss_init(jnp.log(10) + jnp.log(state.step_size)))

    def adapt(t: jax.Array, accept_prob: jax.Array, z: jax.Array, state: HMCAdaptState, plan: _Schedule):
        ss_state = ss_update(config.target_accept_prob - accept_prob, state.ss_state)
        log_step_size, log_step_size_avg, *_ = ss_state
        step_size = jnp.where(t == plan.num_warmup - 1, jnp.exp(log_step_size_avg), jnp.exp(log_step_size))
        finfo = jnp.finfo(jnp.result_type(step_size))
        middle = (0 < state.window_idx) & (state.window_idx < plan.num_windows - 1)
        mm_state = jax.lax.cond(middle, lambda m: mm_update(z, m), lambda m: m, state.mm_state)
        at_end = t == plan.ends[state.window_idx]
        state = state._replace(step_size=jnp.clip(step_size, finfo.tiny, finfo.max), ss_state=ss_state,
                               mm_state=mm_state, window_idx=jnp.where(at_end, state.window_idx + 1, state.window_idx),
                               rng_key=jax.random.split(state.rng_key)[0])
        return jax.lax.cond(at_end & middle, window_end, lambda s: s, state)

    def init(z0: jax.Array, data: Any, key: jax.Array) -> HMCState:
        return init_kernel(z0, 0, target_accept_prob=config.target_accept_prob,
                           max_tree_depth=config.max_tree_depth, dense_mass=config.dense_mass,
                           model_args=(data,), rng_key=key)

    def advance(state: HMCState, data: Any, plan: _Schedule, n: jax.Array):  # noqa: ANN202
        state = jax.lax.cond(state.i < 0, lambda s: init(s.z, data, s.rng_key), lambda s: s, state)

        def body(j: jax.Array, carry: tuple[HMCState, tuple]):  # noqa: ANN202
            s, rows = carry
            new = sample_kernel(s, model_args=(data,))
            adapt_state = jax.lax.cond(s.i < plan.num_warmup,
                                       lambda a: adapt(s.i, new.accept_prob, new.z, a, plan), lambda a: a,
                                       s.adapt_state)
            new = new._replace(adapt_state=adapt_state)
            row = (new.z, new.diverging, new.num_steps, new.accept_prob, new.potential_energy, adapt_state.step_size)
            return new, tuple(r.at[j].set(v) for r, v in zip(rows, row))

        rows = tuple(jnp.zeros((SEGMENT, *jnp.shape(v)), jnp.result_type(v)) for v in (
            state.z, state.diverging, state.num_steps, state.accept_prob, state.potential_energy,
            state.adapt_state.step_size))
        return jax.lax.fori_loop(0, n, body, (state, rows))

    # init is jitted for its cached trace (eval_shape); it is never compiled: advance runs it.
    return (jax.jit(init), jax.jit(advance), jax.jit(jax.vmap(init)),
            jax.jit(jax.vmap(advance, in_axes=(0, 0, None, None))))


def _fresh(shapes: HMCState, z0: Any, keys: Any) -> HMCState:
    """A state ``advance`` starts with ``init``: ``z0`` and the keys in ``init``'s structure ``shapes``, the
    iteration -1, every other field zero."""
    state = jax.tree_util.tree_map(lambda s: np.zeros(s.shape, s.dtype), shapes)
    return state._replace(i=np.full(state.i.shape, -1, state.i.dtype), z=z0, rng_key=keys)


def _collect(chunks: list[tuple[np.ndarray, ...]], num_warmup: int, axis: int) -> Draws:
    z, div, steps, acc, pe, step = (np.concatenate(parts, axis=axis) for parts in zip(*chunks))
    keep = (slice(None),) * axis + (slice(num_warmup, None),)
    return Draws(
        z=z[keep], diverging=div[keep], num_steps=steps[keep], accept_prob=acc[keep],
        potential_energy=pe[keep], step_size=step[keep][..., -1] if axis else step[keep][-1],
    )


def _rows(out: tuple[jax.Array, ...], n: int, axis: int) -> tuple[np.ndarray, ...]:
    """The first ``n`` iterations of one call's padded outputs, on the host."""
    cut = (slice(None),) * axis + (slice(0, n),)
    return tuple(np.asarray(part)[cut] for part in jax.device_get(out))


def _lane_mesh(lanes: int) -> Mesh | None:
    devices = jax.devices()
    if len(devices) < 2 or lanes % len(devices):
        return None
    return Mesh(np.asarray(devices), ("lanes",))


@functools.lru_cache(maxsize=16)
def _sharded(advance_v: Callable, mesh: Mesh):  # noqa: ANN202
    """``advance`` of vectorised lanes split over ``mesh``'s devices with ``shard_map``: each device
    runs its own lanes' while-loops, so devices neither step together nor exchange anything until the end
    (partitioned automatically, every tree-doubling of NUTS would wait for the slowest lane on any device).
    The schedule and the iteration count are replicated."""
    lanes, every = PartitionSpec("lanes"), PartitionSpec()
    return jax.jit(jax.shard_map(advance_v, mesh=mesh, in_specs=(lanes, lanes, every, every), out_specs=lanes,
                                 check_vma=False))


def _vmap_kernels(potential: Potential, config: NUTSConfig, lanes: int):  # noqa: ANN202
    """The vectorised ``init``/``advance`` for ``lanes`` lanes, and the sharding to put the lanes' inputs
    in (None on one device, or when the lanes do not divide evenly over the devices)."""
    _, _, init_v, advance_v = _kernels(potential, config)
    mesh = _lane_mesh(lanes)
    if mesh is None:
        return init_v, advance_v, None
    return init_v, _sharded(advance_v, mesh), NamedSharding(mesh, PartitionSpec("lanes"))


def resolve_strategy(strategy: str) -> str:
    """``"vmap"`` or ``"loop"`` for a strategy name (``"auto"`` picks by backend); raise on anything else."""
    strategy = default_strategy() if strategy == "auto" else strategy
    if strategy not in ("vmap", "loop"):
        raise ValueError(f"strategy must be 'auto', 'vmap' or 'loop', got {strategy!r}")
    return strategy


def compile_ahead(
    potential: Potential,
    init_z: Any,
    data: Any,
    keys: Any,
    config: NUTSConfig = NUTSConfig(),
    *,
    strategy: str = "auto",
) -> tuple[HMCState, jax.stages.Compiled]:
    """Compile the program :func:`sample_lanes` will run for these shapes, without running it (a program
    compiled before is returned at once). The program does not depend on ``config``'s warmup and draw counts.

    Arguments are as for :func:`sample_lanes` (arrays or ``jax.ShapeDtypeStruct``).
    Useful from a background thread while the caller prepares initial points. Returns the shapes of a lane's
    state and the compiled ``advance(state, data, schedule, n)``: calling it traces nothing (NumPyro's tracing
    is not thread-safe, so the lanes of a loop call it).
    """
    strategy = resolve_strategy(strategy)
    if strategy == "loop":
        init_z, data, keys = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape[1:], a.dtype), (init_z, data, keys))
        init, advance = _kernels(potential, config)[:2]
    else:
        init, advance, sharding = _vmap_kernels(potential, config, int(init_z.shape[0]))
        if sharding is not None:
            init_z, data, keys = jax.tree_util.tree_map(
                lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding), (init_z, data, keys))
    shapes = jax.eval_shape(init, init_z, data, keys)
    return shapes, advance.lower(shapes, data, _schedule(0), np.int32(0)).compile()


def sample_lanes(
    potential: Potential,
    init_z: jax.Array,
    data: Any,
    keys: jax.Array,
    config: NUTSConfig = NUTSConfig(),
    *,
    strategy: str = "auto",
    workers: int | None = None,
    progress: bool = False,
    desc: str = "sampling",
    on_lane: Callable[[int, Draws], None] | None = None,
) -> Draws:
    """Run NUTS on independent lanes.

    Args:
        potential: ``potential(z, data) -> scalar``, the negative log density of
            one lane, pure JAX.
        init_z: initial coordinates, ``(lanes, k)``.
        data: a pytree whose leaves have leading axis ``lanes``.
        keys: PRNG keys, ``(lanes, 2)`` (raw ``uint32`` keys).
        config: sampler settings (the warmup and draw counts are data of the compiled programs: changing
            them compiles nothing).
        strategy: ``"auto"``, ``"vmap"`` or ``"loop"`` (see module docs).
        workers: threads for ``"loop"``; default: number of CPU cores.
        progress: show a tqdm progress bar.
        desc: progress-bar label.
        on_lane: called as ``on_lane(lane, draws)`` with each lane's draws as soon as
            that lane finishes (``"loop"``: in the worker thread, in the caller's
            precision; ``"vmap"``: lanes finish together, in lane order).

    Returns:
        :class:`Draws` with the post-warmup iterations of every lane, in lane order.
        Lane ``i`` depends only on ``init_z[i]``, ``data[i]`` and ``keys[i]``.
    """
    strategy = resolve_strategy(strategy)
    lanes = int(init_z.shape[0])
    calls = _calls(config.num_warmup + config.num_samples)
    plan = _schedule(config.num_warmup)
    bar = tqdm(total=sum(calls) * lanes, desc=desc, disable=not progress, unit="it", leave=False)
    try:
        if strategy == "vmap":
            sharding = _vmap_kernels(potential, config, lanes)[2]
            if sharding is not None:
                init_z, data, keys = jax.device_put((init_z, data, keys), sharding)
            shapes, advance_c = compile_ahead(potential, init_z, data, keys, config, strategy="vmap")
            state, chunks = _fresh(shapes, init_z, keys), []
            for n in calls:
                state, out = advance_c(state, data, plan, np.int32(n))
                chunks.append(_rows(out, n, axis=1))
                bar.update(n * lanes)
            draws = _collect(chunks, config.num_warmup, axis=1)
            for lane in range(lanes if on_lane is not None else 0):
                on_lane(lane, Draws(*(field[lane] for field in draws)))
            return draws

        # Lanes are cut on the host: indexing device arrays compiles a program per slice and shape.
        init_z, data, keys = jax.tree_util.tree_map(np.asarray, (init_z, data, keys))
        # Compiled once before fanning out (at once after compile_ahead): every lane runs at the same time.
        shapes, advance_c = compile_ahead(potential, init_z, data, keys, config, strategy="loop")

        x64 = bool(jax.config.jax_enable_x64)  # config contexts are thread-local

        def run(lane: int) -> Draws:
            with jax.enable_x64(x64):
                lane_data = jax.tree_util.tree_map(lambda a: a[lane], data)
                state, chunks = _fresh(shapes, init_z[lane], keys[lane]), []
                for n in calls:
                    state, out = advance_c(state, lane_data, plan, np.int32(n))
                    chunks.append(_rows(out, n, axis=0))
                    bar.update(n)
                draws = _collect(chunks, config.num_warmup, axis=0)
                if on_lane is not None:
                    on_lane(lane, draws)
                return draws

        with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
            lanes_draws = list(pool.map(run, range(lanes)))
        return Draws(*(np.stack(field) for field in zip(*lanes_draws)))
    finally:
        bar.close()
