"""#20: every refusal says why, on the side that can act on it, and never prints a token."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "reliability.py"


def _bench():
    spec = importlib.util.spec_from_file_location("bench_reliability", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
def test_registry_down_one_line_exit_2_no_traceback_no_token(tmp_path):
    """`dbserver nodes ...`, `run new`, `dbaudit run/suite --registry` with the registry stopped."""
    res = _bench().run_registry_down(tmp_path)
    for name, row in res["commands"].items():
        assert row["exit"] == 2 and row["lines"] == 1 and row["names_url"], (name, row["output"])
        assert not row["traceback"] and not row["token_leak"], (name, row["output"])
    assert res["tracebacks_registry_down"] == 0 and res["token_leaks"] == 0


def test_unreachable_registry_error_names_the_url_never_the_token():
    from dblocks.shared.registry_client import RegistryClient, RegistryError, RegistryUnreachable

    reg = RegistryClient("http://127.0.0.1:9", "dbk_secret_never_printed", connect_retries=0)
    with pytest.raises(RegistryUnreachable) as e:
        reg.whoami()
    assert isinstance(e.value, RegistryError)  # callers that catch RegistryError catch it too
    assert "http://127.0.0.1:9" in str(e.value) and "dbk_" not in str(e.value)
    assert e.value.__cause__ is None and e.value.__suppress_context__  # no chained httpx request in a traceback
