"""`upgrade --scheduler`: the same plan on a Dask distributed cluster gives byte-identical archives."""

from __future__ import annotations

import json
import warnings

import pytest
from test_upgrade import build_tree

from etm_compat.bulk.upgrade import open_executor
from etm_compat.cli.main import main
from etm_compat.errors import UsageError
from etm_compat.verification import verify

distributed = pytest.importorskip("distributed")


@pytest.fixture
def cluster():
    with warnings.catch_warnings():
        # distributed may warn about its dashboard or ports at start-up; not ours to fix.
        warnings.filterwarnings("ignore", module=r"distributed\..*")
        warnings.filterwarnings("ignore", category=ResourceWarning)
        with distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as local:
            yield local


def test_dask_cluster_writes_the_same_bytes_as_the_local_path(tmp_path, capsys, cluster):
    tree = build_tree(tmp_path / "tree", 24)
    local, remote = tmp_path / "local", tmp_path / "dask"
    assert main(["upgrade", str(tree.root), "--out", str(local), "-j", "1", "--json"]) == 1  # broken ones
    capsys.readouterr()
    code = main(["upgrade", str(tree.root), "--out", str(remote), "--scheduler", cluster.scheduler_address, "--json"])
    result = json.loads(capsys.readouterr().out)
    assert code == 1 and result["counts"]["written"] == len(tree.good)
    assert len(cluster.workers) == 2
    local_files = sorted(p.relative_to(local) for p in local.rglob("*.etm"))
    assert local_files == sorted(p.relative_to(remote) for p in remote.rglob("*.etm"))
    assert len(local_files) == len(tree.good)
    for rel in local_files:
        assert (local / rel).read_bytes() == (remote / rel).read_bytes(), rel
        assert verify(remote / rel).ok
    # A re-run through the cluster redoes nothing (and does not even need the workers).
    code = main(["upgrade", str(tree.root), "--out", str(remote), "--scheduler", cluster.scheduler_address, "--json"])
    again = json.loads(capsys.readouterr().out)
    assert again["counts"]["up_to_date"] == len(tree.good) and again["counts"]["written"] == 0


def test_unreachable_scheduler_is_a_usage_error():
    opening = open_executor(jobs=1, scheduler="tcp://127.0.0.1:9", pending=3, connect_timeout=1)
    with pytest.raises(UsageError, match="cannot reach the Dask scheduler"), opening:
        pass  # pragma: no cover - never reached
