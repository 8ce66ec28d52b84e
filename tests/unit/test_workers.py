"""The rules of `serve --workers N` that need no process (the processes
themselves: tests/e2e/test_workers.py)."""

from __future__ import annotations

import dataclasses
import inspect
import socket

import pytest

from chat_service.bootstrap import relay_owner
from chat_service.config import ConfigError, Settings
from chat_service.grpc_api.server import server_options
from chat_service.wiring import Services
from chat_service.workers import check, drain_bound, worker_counters_path

REDIS = {"REDIS_URL": "redis://127.0.0.1:6379"}


def _worker(settings: Settings, index: int) -> Settings:
    return dataclasses.replace(settings, worker_index=index)


def test_workers_of_one_port_have_owner_ids_of_their_own_kept_across_restarts() -> None:
    # The outbox relay, delivery and inbox leases: two live holders of one
    # id would both publish (and deliver) the same rows.
    settings = Settings.from_env({"SERVICE_PORT": "8001", "WORKERS": "2", **REDIS})
    owners = [relay_owner(_worker(settings, index)) for index in range(2)]

    assert owners == [f"{socket.gethostname()}:8001/worker-{i}" for i in range(2)]
    assert relay_owner(_worker(settings, 1)) == owners[1]  # a restarted slot takes its own back
    named = dataclasses.replace(settings, outbox_relay_id="pod-7")
    assert relay_owner(_worker(named, 1)) == "pod-7/worker-1"
    assert relay_owner(named) == "pod-7"  # a lone process: as before


def test_only_workers_share_their_port() -> None:
    settings = Settings.from_env({})

    assert ("grpc.so_reuseport", 0) in server_options(settings)
    assert ("grpc.so_reuseport", 1) in server_options(_worker(settings, 0))


def test_one_process_needs_nothing_shared() -> None:
    check(Settings.from_env({}))
    check(Settings.from_env({"WORKERS": "1", "SERVICE_PORT": "0"}))


@pytest.mark.parametrize(
    ("env", "said"),
    [
        ({"WORKERS": "2"}, "needs REDIS_URL"),
        ({"WORKERS": "2", "SERVICE_PORT": "0", **REDIS}, "needs a fixed SERVICE_PORT"),
    ],
)
def test_more_workers_need_shared_coordination_and_a_fixed_port(
    env: dict[str, str], said: str
) -> None:
    with pytest.raises(ConfigError, match=said):
        check(Settings.from_env(env))


def test_workers_with_redis_on_a_fixed_port_are_accepted() -> None:
    settings = Settings.from_env({"WORKERS": "4", "SERVICE_PORT": "8001", **REDIS})
    check(settings)
    assert settings.workers == 4


@pytest.mark.parametrize("value", ["two", "nan", "inf", "-1", "0", "1.0", "65", "1e3"])
def test_a_malformed_worker_count_names_workers(value: str) -> None:
    with pytest.raises(ConfigError, match=r"^WORKERS must"):
        Settings.from_env({"WORKERS": value})


def test_each_worker_counts_into_a_file_of_its_own() -> None:
    assert worker_counters_path("/tmp/c.json", 0) != worker_counters_path("/tmp/c.json", 1)


def test_a_worker_is_killed_only_once_its_own_drain_is_overdue() -> None:
    # The supervisor's SIGKILL must not cut a drain that is still in bounds.
    settings = Settings.from_env({"SHUTDOWN_DELAY_SECONDS": "5", "SHUTDOWN_GRACE_SECONDS": "20"})
    closing = inspect.signature(Services.close).parameters["timeout"].default

    assert drain_bound(settings) > 5 + 20 + closing
