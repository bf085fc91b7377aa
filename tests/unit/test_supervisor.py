"""Pure parts of `rpcache worker --processes`: child identities, exit codes, the check's verdict."""

from __future__ import annotations

import os

from streams.observe.check import CheckResult, judge_heartbeats
from streams.observe.heartbeat import child_worker_ids
from streams.worker.supervisor import SUPERVISOR_PID_ENV, child_env, exit_code


def test_each_child_has_its_own_heartbeat_id_and_port() -> None:
    base = {"APP_ID": "rpcache", "WORKER_ID": "host", "WORKER_PROCESSES": "3"}
    envs = [child_env(base, i, "host", 6066) for i in range(3)]
    assert [e["WORKER_ID"] for e in envs] == ["host-0", "host-1", "host-2"]
    assert [e["WORKER_WEB_PORT"] for e in envs] == ["6066", "6067", "6068"]
    assert all(e["WORKER_PROCESSES"] == "1" and e["APP_ID"] == "rpcache" for e in envs)
    assert base["WORKER_ID"] == "host"  # the parent's environment is left alone
    assert all(e[SUPERVISOR_PID_ENV] == str(os.getpid()) for e in envs)  # watch_parent's


def test_check_reads_the_rows_the_children_write() -> None:
    assert child_worker_ids("host", 1) == ["host"]
    assert child_worker_ids("host", 3) == [
        child_env({}, i, "host", 0)["WORKER_ID"] for i in range(3)
    ]


def test_exit_codes_as_a_shell_reports_them() -> None:
    assert exit_code(0) == 0
    assert exit_code(75) == 75
    assert exit_code(-9) == 137  # killed by SIGKILL
    assert exit_code(-15) == 143
    assert exit_code(None) == 1


def test_all_processes_must_beat() -> None:
    ok = CheckResult("heartbeat", True, "worker 'h-0' beat 1.0 s ago")
    ok2 = CheckResult("heartbeat", True, "worker 'h-1' beat 2.0 s ago")
    stale = CheckResult("heartbeat", False, "worker 'h-1' is stale")
    assert judge_heartbeats([ok]) == ok
    both = judge_heartbeats([ok, ok2])
    assert both.ok and both.detail.startswith("all 2 processes beat")
    one_bad = judge_heartbeats([ok, stale])
    assert not one_bad.ok and one_bad.detail == "worker 'h-1' is stale"
