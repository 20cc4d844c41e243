"""Job configs: pydantic models loaded from YAML, with ``key.sub=value`` overrides.

Every job's config derives from :class:`JobConfig`, so every job has top-level ``input`` and
``output`` URLs. Models forbid unknown keys; any problem is raised as :class:`ConfigError`
naming the offending key, before a job does any work.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Annotated, Any, ClassVar, get_args, get_origin

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from egoray import storage
from egoray.errors import EgorayError
from egoray.stages.base import Resources


class ConfigError(EgorayError, ValueError):
    """A config that cannot be run; the message names the file and key."""


def _url(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty")
    return storage.absolute(value.strip())


_URL_CHECK = AfterValidator(_url)
Url = Annotated[str, _URL_CHECK]
"""A storage URL field: local paths become absolute when the config is loaded (in the driver),
so that Ray workers running in another directory read and write the same place."""


def _holds_url(annotation: Any, metadata: Sequence[Any] = ()) -> bool:
    if any(m is _URL_CHECK for m in metadata):
        return True
    if get_origin(annotation) is Annotated:
        return any(m is _URL_CHECK for m in get_args(annotation)[1:])
    return any(_holds_url(a) for a in get_args(annotation))  # Url | None, list[Url]


def urls_of(model: BaseModel, prefix: str = "") -> list[tuple[str, str]]:
    """(dotted key, URL) of every storage URL field a config sets, nested sections included."""
    found: list[tuple[str, str]] = []
    for name, info in type(model).model_fields.items():
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            found += urls_of(value, f"{prefix}{name}.")
        elif _holds_url(info.annotation, info.metadata):
            found += [(f"{prefix}{name}", v) for v in (value if isinstance(value, list) else [value])
                      if isinstance(v, str)]
    return found


class StrictModel(BaseModel):
    """Base for every config section: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class RayOptions(StrictModel):
    """How to reach Ray. ``RAY_ADDRESS`` in the environment wins over everything here."""

    num_cpus: int | None = Field(None, ge=1, description="CPUs of a local Ray; default: all cores")
    object_store_mb: int | None = Field(None, ge=64, description="object store size of a local Ray")
    dashboard: bool | None = Field(None, description="start the dashboard with a local Ray; default: for "
                                   "training jobs (Ray Train queries its state API)")
    in_process: bool = Field(False, description="run a streaming job's pass in this process, without Ray "
                             "(egoray run --in-process): for pdb and fast tests of a plan")


class ActorPool(StrictModel):
    """The actor pool of a job's model stage (or of an LLM engine): how many actors, what each
    asks of the cluster. Each job declares its own ``batch_size``: its default says what one call holds."""

    num_actors: int = Field(1, ge=1, description="actor pool size")
    cpus_per_actor: float = Field(1, gt=0)
    gpus_per_actor: float = Field(0, ge=0)

    def resources(self, batch_size: int | None) -> Resources:
        """The pool as a stage's :class:`~egoray.stages.base.Resources`, fed ``batch_size`` rows per call."""
        return Resources(cpus=self.cpus_per_actor, gpus=self.gpus_per_actor, actors=self.num_actors,
                         batch_size=batch_size)


class JobConfig(StrictModel):
    """Fields every job has."""

    job: str = Field(description="which job this config runs")
    input: Url = Field(description="URL (path, file://, s3://) the job reads")
    output: Url = Field(description="URL of the directory the job writes")
    ray: RayOptions = RayOptions()

    # Settings a resumed run may change: e.g. training jobs may be given more epochs.
    resumable_changes: ClassVar[dict[str, Any]] = {}

    @model_validator(mode="after")
    def _in_process_streams_only(self) -> JobConfig:
        if self.ray.in_process and not isinstance(self, StreamingJobConfig):
            raise ValueError(f"job {self.job!r} runs on Ray only: ray.in_process (--in-process) is for the "
                             "jobs that stream rows through stages")
        return self

    def fingerprint(self) -> str:
        """A hash of everything that determines the output (Ray sizing and the error budget excluded)."""
        payload = json.dumps(self.model_dump(mode="json", exclude={"ray": True, "max_error_fraction": True,
                                                               **self.resumable_changes}), sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


class StreamingJobConfig(JobConfig):
    """Fields of every job that streams rows through stages (:func:`egoray.runner.run_plan`)."""

    max_error_fraction: float = Field(0.01, ge=0, le=1, description="share of rows a stage may raise on "
                                      "(each rejected as stage_error) before the job stops; judged after 100 "
                                      "rows, and at once when the first 8 all fail")


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b=3`` → (["a", "b"], 3); the value is read as YAML so types come out right."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not key=value")
    key, raw = text.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return parts, value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set each ``key.sub=value`` into a nested dict, creating sections as needed; a number
    indexes into a list (``captioning.0.predictions=...``)."""
    for text in overrides:
        parts, value = parse_override(text)
        node: Any = data
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            where = ".".join(parts[: i + 1])
            if not isinstance(node, (dict, list)):
                raise ConfigError(f"override {text!r}: {'.'.join(parts[:i])!r} is a value, not a section")
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise ConfigError(f"override {text!r}: {where!r} is not an index of a {len(node)}-item list")
                if last:
                    node[int(part)] = value
                else:
                    node = node[int(part)]
                continue
            if last:
                node[part] = value
                break
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, (dict, list)):
                raise ConfigError(f"override {text!r}: {where!r} is a value, not a section")
            node = child
    return data


def read_yaml(url: str) -> dict[str, Any]:
    try:
        text = storage.read_bytes(url).decode("utf-8")
    except storage.StorageError as e:
        raise ConfigError(f"cannot read config: {e}") from e
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{url}: not valid YAML: {e}") from e
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{url}: the top level must be a mapping of keys to values")
    return data


def describe_errors(e: ValidationError) -> str:
    """One line per problem, each naming the dotted key."""
    lines = []
    for err in e.errors():
        key = ".".join(str(p) for p in err["loc"]) or "<top>"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        lines.append(f"key {key!r}: {msg}")
    return "; ".join(lines)
