"""The persistent compilation cache: on at the first fit (not at import), opt-out, user config respected,
shared by processes."""

import os
import subprocess
import sys
import textwrap

import pytest

from bayescale import cache


def run(code: str, env: dict[str, str]) -> str:
    path = os.pathsep.join([os.path.dirname(__file__), os.environ.get("PYTHONPATH", "")])
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env={**os.environ, "PYTHONPATH": path, **env},
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.strip()


@pytest.mark.parametrize("setting", ["folder", "off", "user"])
def test_switched_on_at_first_fit_unless_configured(setting: str, tmp_path) -> None:  # noqa: ANN001
    env = {cache.ENV: {"folder": str(tmp_path / "bs"), "off": "0", "user": str(tmp_path / "bs")}[setting]}
    code = f"""
        import jax
        {"jax.config.update('jax_compilation_cache_dir', " + repr(str(tmp_path / "mine")) + ")" if setting == "user" else ""}
        before = jax.config.jax_compilation_cache_dir
        import bayescale as bs
        assert jax.config.jax_compilation_cache_dir == before, "import changed the cache"
        print(bs.cache.ensure())
    """
    expected = {"folder": str(tmp_path / "bs"), "off": "None", "user": str(tmp_path / "mine")}[setting]
    assert run(code, env) == expected


def test_a_second_process_reads_compiled_programs_back(tmp_path) -> None:  # noqa: ANN001
    code = """
        import jax, numpy as np, warnings
        hits = []
        jax.monitoring.register_event_listener(
            lambda name, **kw: hits.append(name) if name == "/jax/compilation_cache/cache_hits" else None)
        import bayescale as bs
        warnings.simplefilter("ignore")
        N, D = bs.chinchilla_design(20, seed=0)
        data = bs.simulate("chinchilla", {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}, N=N, D=D)
        from conftest import TINY
        bs.fit(data, settings=TINY)
        print(len(hits))
    """
    env = {cache.ENV: str(tmp_path / "shared")}
    first, second = int(run(code, env)), int(run(code, env))
    assert second >= first + 3, (first, second)  # point fit, sampler and InferenceData programs read back


def test_cli_info_names_the_cache(tmp_path) -> None:  # noqa: ANN001
    out = run("from bayescale.cli import main; main(['info'])", {cache.ENV: str(tmp_path / "c")})
    assert f"compilation cache: {tmp_path / 'c'}" in " ".join(out.split())
    assert "jax:" in out and "devices:" in out
