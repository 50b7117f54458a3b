"""Fixtures of the cluster tests: a real PostgreSQL server, a local Ray instance, credentials.

Where PostgreSQL or Ray is missing, the tests that need it are skipped with the reason, except
in CI (CI=true), where that is a failure: CI installs both (`.ci/run`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest

from tests.helpers import free_port
from tests.servers import KEYS

POSTGRES_DSN_ENV = "KLING_TEST_POSTGRES_DSN"
POSTGRES_BIN_ENV = "KLING_TEST_POSTGRES_BIN"


def unavailable(reason: str) -> NoReturn:
    """Skip with `reason` (a test, or a whole module); in CI, fail with it instead."""
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"{reason} (CI must run these tests)", pytrace=False)
    pytest.skip(reason, allow_module_level=True)


def require(module: str) -> None:
    """Import `module` or skip (fail in CI): it comes with the `ray` extra."""
    try:
        __import__(module)
    except ImportError:
        unavailable(f'{module} is not installed: pip install -e ".[dev,ray]"')


@pytest.fixture(scope="package")
def postgres_dsn() -> Iterator[str]:
    """A PostgreSQL URL: $KLING_TEST_POSTGRES_DSN, or a throw-away server on 127.0.0.1."""
    require("psycopg")
    given = os.environ.get(POSTGRES_DSN_ENV)
    if given:
        yield given
        return
    with _throwaway_postgres() as dsn:
        yield dsn


@pytest.fixture
def fresh_postgres(postgres_dsn: str) -> str:
    """`postgres_dsn` with the ledger's tables emptied."""
    import psycopg

    with psycopg.connect(postgres_dsn, autocommit=True) as db:
        for table in ("kling_expand_tasks", "kling_expand_results"):
            db.execute(f"DROP TABLE IF EXISTS {table}")
    return postgres_dsn


def _postgres_bin() -> Path | None:
    """$KLING_TEST_POSTGRES_BIN, or the newest Debian PostgreSQL's binaries, if installed."""
    given = os.environ.get(POSTGRES_BIN_ENV)
    found = (
        [Path(given)]
        if given
        else sorted(
            Path("/usr/lib/postgresql").glob("*/bin"), key=lambda path: int(path.parent.name)
        )
    )
    found = [folder for folder in found if (folder / "initdb").is_file()]
    return found[-1] if found else None


@contextlib.contextmanager
def _throwaway_postgres() -> Iterator[str]:
    """initdb and pg_ctl in a temporary folder, as the postgres user when running as root."""
    postgres_bin = _postgres_bin()
    if postgres_bin is None:
        unavailable("PostgreSQL is not installed (apt-get install postgresql)")
    as_user: list[str] = []
    folder = Path(tempfile.mkdtemp(prefix="kling-pg-"))
    if os.geteuid() == 0:
        runuser = shutil.which("runuser")
        if runuser is None:
            unavailable("running as root without runuser: cannot start PostgreSQL")
        as_user = [str(runuser), "-u", "postgres", "--"]
        shutil.chown(folder, user="postgres")
    data, port = folder / "data", free_port()
    pg_ctl = [*as_user, str(postgres_bin / "pg_ctl"), "-D", str(data)]
    options = f"-c listen_addresses=127.0.0.1 -p {port} -k {folder} -c fsync=off"
    try:
        initdb = [str(postgres_bin / "initdb"), "-D", str(data), "-A", "trust", "-U", "kling"]
        _run([*as_user, *initdb, "-E", "UTF8", "--no-sync"])
        _run([*pg_ctl, "-o", options, "-l", str(folder / "log"), "-w", "-t", "30", "start"])
    except (OSError, subprocess.CalledProcessError) as error:
        log = folder / "log"
        detail = log.read_text()[-500:] if log.is_file() else getattr(error, "stderr", "")
        shutil.rmtree(folder, ignore_errors=True)
        unavailable(f"PostgreSQL could not be started: {error}: {detail}")
    try:
        yield f"postgresql://kling@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*pg_ctl, "-m", "immediate", "-w", "stop"], capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


def _run(command: list[str]) -> None:
    subprocess.run(command, check=True, capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="package")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A local Ray instance on this machine's 2 CPUs, with the test credentials in its
    workers' environment and the tests importable there."""
    require("ray")
    import ray

    root = str(Path(__file__).resolve().parents[2])
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {**KEYS, "PYTHONPATH": root}},
        _temp_dir=str(tmp_path_factory.mktemp("ray")),
    )
    try:
        yield
    finally:
        ray.shutdown()
