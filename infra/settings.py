"""One settings object, read from CRM_* environment variables and validated at start."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ROLES = ("admin", "agent", "sales", "auditor")


def parse_api_keys(raw: str | None) -> dict[str, str]:
    """`key=role` pairs, comma-separated, into {key: role}; a malformed pair is an error."""
    keys: dict[str, str] = {}
    for pair in filter(None, (p.strip() for p in (raw or "").split(","))):
        key, sep, role = pair.partition("=")
        key, role = key.strip(), role.strip()
        if not sep or not key or not _valid_role(role):
            raise ValueError(f"CRM_API_KEYS: '{_redact(pair)}' is not key=role with a known role")
        if len(key) < 8:
            raise ValueError("CRM_API_KEYS: keys must be at least 8 characters")
        keys[key] = role
    return keys


def _valid_role(role: str) -> bool:
    if role.startswith("customer:"):
        from uuid import UUID
        try:
            UUID(role.removeprefix("customer:"))
        except ValueError:
            return False
        return True
    return role in ROLES


def _redact(pair: str) -> str:
    key, _, role = pair.partition("=")
    return f"{key[:2]}…={role}"


class Settings(BaseSettings):
    """The contract's CRM_* settings; unset means the embedded, local defaults."""

    model_config = SettingsConfigDict(env_prefix="CRM_", extra="ignore")

    database_url: str | None = Field(None, description="PostgreSQL URL; unset starts an embedded server")
    kafka_bootstrap: str | None = Field(None, description="Kafka bootstrap servers; 'off' disables")
    smtp_url: str | None = Field(None, description="smtp://host:port; unset writes .eml files")
    api_keys: str | None = Field(None, description="key=role pairs, comma-separated", repr=False)
    data_dir: Path = Field(Path(".crm"), description="where embedded services keep their data")
    http_port: int = Field(8000, ge=1, le=65535, description="API port on 127.0.0.1")
    currency: str = Field("EUR", pattern=r"^[A-Z]{3}$", description="ISO 4217 default currency")
    kafka_partitions: int = Field(6, ge=1, le=1000, description="partitions of topics crm creates")
    kafka_replication_factor: int = Field(1, ge=1, le=10, description="replication of topics crm creates")
    relay_shards: int = Field(1, ge=1, le=256,
                              description="relay processes of `crm relay`, each publishing a share of the aggregates")
    api_lookup_threads: int = Field(3, ge=1, le=1000,
                                    description="threads per API process for the query API's lookups")

    @field_validator("api_keys")
    @classmethod
    def _keys_parse(cls, value: str | None) -> str | None:
        parse_api_keys(value)
        return value

    def key_roles(self) -> dict[str, str]:
        return parse_api_keys(self.api_keys)
