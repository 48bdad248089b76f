"""An open model served on a Vertex AI endpoint by Vertex Model Garden's vLLM container, and a client of its
OpenAI-compatible chat completions route.

Built on the Vertex AI v1 GAPIC clients (google-cloud-aiplatform, REST) rather than the SDK's Model / Endpoint
classes or google-cloud-pipeline-components' ModelUploadOp / EndpointCreateOp / ModelDeployOp: a deploy must survive
lost answers and faults without doing anything twice, which takes client-chosen IDs and long-running operations
found again by name, and must move the traffic only once the new model has answered; GCPC's ops always create, and
cannot run under kfp.local, where the pipeline factory's components must also run.

Idempotent by construction:
- IDs derive from what a resource holds: the model `calltune-<sha>` (models.upload modelId), the secret's endpoint
  `calltune-<secret id>` (endpoints.create endpointId), a deployment a number from the model and the run or rollback
  that deploys it (DeployedModel.id). A create whose first answer was lost meets ALREADY_EXISTS when retried.
- Every request is retried on its own by the one retry policy (calltune.backends.Retrying): 429, 5xx, a timeout, a
  dropped connection. A request that starts work answers an operation, which is then read by its name until done;
  a request refused because the same work is already under way (ALREADY_EXISTS; for an undeploy FAILED_PRECONDITION
  or NOT_FOUND) waits instead for the operations running on that resource, listed under `<resource>/operations`,
  so a lost answer's or a killed run's operation is found again and waited for, never started twice.
- Each model is served under its own name (its model ID) besides `customer`: a reply that names it proves which
  deployment answered, however the endpoint's traffic split routed the request.

Labels stay for people and for endpoints made before calltune chose IDs: the model carries `calltune-model=<sha>`,
the endpoint `calltune-secret=<deploy.secret_id>`.

It is over 400 lines on purpose: the deploy's steps (upload, endpoint, deploy, canary, traffic, undeploy, sweep)
share one client, one retry policy and one way of finding an operation again; split apart, each would need the
others' idempotency rules to be read with it.
"""
from __future__ import annotations

import hashlib
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from calltune.backends import Retrying, brief
from calltune.backends.resources import ResourceName
from calltune.config import DeployConfig, GcpConfig

log = logging.getLogger(__name__)
T = TypeVar("T")

SERVED_NAME = "customer"  # the model name apps ask for: vLLM's --served-model-name, or the LoRA module
LABEL_MODEL, LABEL_SECRET = "calltune-model", "calltune-secret"
CANARY_PERCENT = 10  # the new model's share while it is checked; the model serving before keeps the rest
PROBES = 100  # chat requests that look for the new model behind its share: all 100 missing a 10% share: 0.9^100 ~ 3e-5
PROBE = [{"role": "user", "content": "Hello, is this a good time to talk?"}]
OPERATION_DEADLINE_S = 3 * 3600.0  # an operation still running after this long fails the step; a rerun waits again


class EndpointError(RuntimeError):
    """Vertex AI refused a request, gave up answering, or the served model did not answer."""


def label_value(text: str) -> str:
    """`text` as a Vertex label value: lowercase letters, digits, - and _, at most 63 characters."""
    return re.sub(r"[^a-z0-9_-]", "-", text.lower())[:63]


def model_id(sha: str) -> str:
    """The Model Registry ID of the model with this sha (models.upload modelId), also its served name."""
    return f"calltune-{label_value(sha)}"[:63]


def endpoint_id(secret_id: str) -> str:
    """The ID of the secret's endpoint (endpoints.create endpointId: a letter, then [a-z0-9-], at most 63, ending in a
    letter or digit). A secret id that has to change to fit gets a hash of itself, so two secrets never share one."""
    slug = re.sub(r"[^a-z0-9-]", "-", secret_id.lower())
    name = f"calltune-{slug}"
    if slug != secret_id or len(name) > 63 or name.endswith("-"):
        name = f"calltune-{slug[:40]}-{hashlib.sha256(secret_id.encode()).hexdigest()[:8]}"
    return name


def deployed_model_id(model: str, purpose: str) -> str:
    """A DeployedModel.id (1 to 10 digits) from the model and what deploys it (a run, a rollback): the same request
    retried carries the same id, and meets ALREADY_EXISTS instead of deploying the model twice."""
    digest = int(hashlib.sha256(f"{model}\0{purpose}".encode()).hexdigest(), 16)
    return str(10**9 + digest % (9 * 10**9))


def vllm_args(model_uri: str, *, name: str, adapter_uri: str = "", lora_rank: int = 16, accelerator_count: int = 1,
              max_model_len: int = 4096) -> list[str]:
    """The vLLM server's arguments: the merged model, or the base with the adapter as a LoRA module, answering to
    `name` (the model's own, which replies carry) and to `customer` (what apps ask for)."""
    args = ["--host=0.0.0.0", "--port=8080", f"--model={model_uri}", f"--tensor-parallel-size={accelerator_count}",
            f"--max-model-len={max_model_len}", "--gpu-memory-utilization=0.9", "--enable-prefix-caching",
            "--disable-log-stats"]
    if adapter_uri:  # a LoRA reply names the module asked for
        return args + ["--enable-lora", "--max-loras=1", f"--max-lora-rank={lora_rank}",
                       "--lora-modules", f"{SERVED_NAME}={adapter_uri}", f"{name}={adapter_uri}"]
    return args + ["--served-model-name", name, SERVED_NAME]  # a reply names the first


def own_name(args) -> str | None:
    """The name a model's server answers to besides `customer` (vllm_args); None for a model uploaded before
    calltune served each model under its own name."""
    names, option = [], None
    for arg in args:
        if arg.startswith("--"):
            option = arg
        elif option in ("--served-model-name", "--lora-modules"):
            names.append(arg.split("=", 1)[0])
    return next((n for n in names if n != SERVED_NAME), None)


def _transient(exc: BaseException) -> bool:
    import openai
    import requests
    from google.api_core import exceptions as gexc

    return isinstance(exc, (gexc.TooManyRequests, gexc.InternalServerError, gexc.BadGateway, gexc.ServiceUnavailable,
                            gexc.GatewayTimeout, gexc.DeadlineExceeded, gexc.RetryError,
                            openai.RateLimitError, openai.InternalServerError, openai.APIConnectionError,
                            requests.ConnectionError, requests.Timeout, ConnectionError, TimeoutError))


def _status(exc: BaseException) -> str:
    """The google.rpc status a refusal names (ALREADY_EXISTS, FAILED_PRECONDITION...): HTTP 400 and 409 each stand
    for several."""
    try:
        return exc.response.json()["error"]["status"]
    except (AttributeError, ValueError, KeyError, TypeError):
        return ""


def _same(a: str, b: str) -> bool:
    """Whether two resource names are the same resource: the service writes the project's number where calltune
    writes its id, and may name a model's version (`@1`)."""
    x, y = ResourceName.parse(a), ResourceName.parse(b)
    return bool(x and y) and (x.location, x.collection, x.id.split("@")[0]) == (y.location, y.collection,
                                                                                 y.id.split("@")[0])


@dataclass
class Served:
    endpoint: str  # projects/P/locations/L/endpoints/E
    model: str  # projects/P/locations/L/models/M, the Model Registry entry
    deployed_model_id: str


@dataclass
class Deployment:
    endpoint: str
    deployed_model_id: str
    model: str
    traffic: int  # percent of the endpoint's requests


@dataclass
class Swept:
    undeployed: list[Deployment] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)  # other endpoints labelled for the secret
    deleted: list[str] = field(default_factory=list)


class VertexEndpoints:
    """Upload, deploy, check, route and sweep on the endpoint of one secret, through the Vertex AI v1 REST API."""

    def __init__(self, gcp: GcpConfig, deploy: DeployConfig):
        from google.api_core.client_options import ClientOptions
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import aiplatform_v1

        self.gcp, self.deploy_cfg, self.v1 = gcp, deploy, aiplatform_v1
        plain = gcp.api_endpoint.startswith("http://")  # a local fake: no credentials over plain HTTP
        options = dict(transport="rest", credentials=AnonymousCredentials() if plain else None, client_options=
                       ClientOptions(api_endpoint=gcp.api_endpoint or f"{gcp.region}-aiplatform.googleapis.com"))
        self.models = aiplatform_v1.ModelServiceClient(**options)
        self.endpoints = aiplatform_v1.EndpointServiceClient(**options)
        self.parent = f"projects/{gcp.project}/locations/{gcp.region}"
        self.retrying = Retrying(service="Vertex AI", setting="deploy.max_retries", max_retries=deploy.max_retries,
                                 backoff_s=deploy.retry_backoff_s, retryable=_transient, error=EndpointError,
                                 wrap_refusals=False)
        self.timeout_s = deploy.timeout_s

    # ---- requests and operations ----
    def _call(self, what: str, fn: Callable[[], T], *, expect: tuple[type[BaseException], ...] = ()) -> T:
        """fn(), retried on its own. A refusal is an EndpointError naming `what`, unless the caller `expect`s it."""
        try:
            return self.retrying.call(fn, what)
        except expect:
            raise
        except EndpointError:
            raise
        except Exception as exc:  # noqa: BLE001 - a refusal: Retrying passes them through (wrap_refusals=False)
            raise EndpointError(f"Vertex AI refused {what}: {brief(exc)}") from exc

    def _wait(self, client, name: str, what: str) -> None:
        """Read the operation `name` until it is done; its error, if it ended in one, is an EndpointError."""
        from google.protobuf.duration_pb2 import Duration

        deadline = time.monotonic() + OPERATION_DEADLINE_S
        request = {"name": name, "timeout": Duration(seconds=max(1, int(self.timeout_s / 2)))}  # the service's wait
        while not (op := self._call(f"waiting for {what}", lambda: client.wait_operation(
                request=request, timeout=self.timeout_s))).done:
            if time.monotonic() > deadline:
                raise EndpointError(f"{what} is still running after {OPERATION_DEADLINE_S / 3600:.0f} h "
                                    f"({name}); run the step again: it waits for the same operation")
            self.retrying.pause(self.deploy_cfg.retry_backoff_s)  # the service may answer a wait early
        if op.error.code:
            raise EndpointError(f"{what} failed: {op.error.message} ({name})")

    def _settle(self, client, resource: str) -> None:
        """Wait for every operation still running on `resource`: one whose answer was lost, or a killed run's."""
        from google.api_core.exceptions import NotFound

        def page(token: str):
            return client.list_operations(request={"name": resource, "page_token": token}, timeout=self.timeout_s)

        try:
            listed = self._pages(f"listing the operations on {resource}", page, "operations", expect=(NotFound,))
        except NotFound:  # the resource is gone (a delete whose answer was lost finished): nothing runs on it
            return
        for name in [op.name for op in listed if not op.done]:
            log.info("Vertex AI: waiting for %s, under way on %s", name, resource)
            self._wait(client, name, f"the operation under way on {resource}")

    def _start(self, what: str, client, resource: str, send: Callable, settle_on: tuple[str, ...]) -> None:
        """Send the request that starts an operation on `resource` (retried on its own) and wait for the operation.
        A refusal in `settle_on` means the same work was started before (this request's attempt whose answer was
        lost, a killed run's): the operations running on `resource` are waited for instead; callers read the outcome.
        """
        from google.api_core.exceptions import GoogleAPICallError

        try:
            started = self._call(what, send, expect=(GoogleAPICallError,))
        except GoogleAPICallError as exc:
            if _status(exc) not in settle_on:
                raise EndpointError(f"Vertex AI refused {what}: {brief(exc)}") from exc
            log.info("Vertex AI: %s: %s; waiting for the work under way", what, _status(exc))
            self._settle(client, resource)
            return
        self._wait(client, started.operation.name, what)

    def _pages(self, what: str, fetch: Callable[[str], object], items: str, expect=()) -> list:
        """Every item of a paged list, each page its own request."""
        token, found = "", []
        while True:
            page = self._call(what, lambda: fetch(token), expect=expect)
            found += list(getattr(page, items))
            if not (token := page.next_page_token):
                return found

    def _get(self, what: str, fn: Callable[[], T]) -> T | None:
        """fn() (a read), None when the resource is not there."""
        from google.api_core.exceptions import NotFound

        try:
            return self._call(what, fn, expect=(NotFound,))
        except NotFound:
            return None

    # ---- model registry ----
    def upload(self, *, sha: str, display_name: str, artifact_uri: str, args: list[str]):
        """The Model Registry entry of the model with this sha: read under its ID, else uploaded under it once."""
        v1, name = self.v1, f"{self.parent}/models/{model_id(sha)}"
        found = self.model(name)
        if found is not None:
            return found
        spec = v1.ModelContainerSpec(
            image_uri=self.gcp.serving_image, command=["python", "-m", "vllm.entrypoints.api_server"], args=args,
            ports=[v1.Port(container_port=8080)], predict_route="/generate", health_route="/ping",
            shared_memory_size_mb=16 * 1024, deployment_timeout={"seconds": 1800})
        request = v1.UploadModelRequest(parent=self.parent, model_id=model_id(sha), model=v1.Model(
            display_name=display_name, artifact_uri=artifact_uri, container_spec=spec, labels={LABEL_MODEL: sha}))
        self._start(f"uploading {name}", self.models, name,
                    lambda: self.models.upload_model(request=request, timeout=self.timeout_s), ("ALREADY_EXISTS",))
        model = self.model(name)
        if model is None:
            raise EndpointError(f"{name} is not in the Model Registry after its upload finished")
        return model

    def model(self, name: str):
        """The Model Registry entry `name`, None when there is none."""
        return self._get(f"reading {name}", lambda: self.models.get_model(name=name, timeout=self.timeout_s))

    # ---- endpoints ----
    def read(self, name: str):
        """The endpoint `name`, freshly read; None when there is none."""
        return self._get(f"reading {name}", lambda: self.endpoints.get_endpoint(name=name, timeout=self.timeout_s))

    def labelled(self) -> list:
        """The endpoints labelled for the secret, oldest first."""
        label = f'labels.{LABEL_SECRET}="{label_value(self.deploy_cfg.secret_id)}"'
        found = self._pages("listing the secret's endpoints", lambda token: self.endpoints.list_endpoints(
            request={"parent": self.parent, "filter": label, "page_token": token}, timeout=self.timeout_s),
            "endpoints")
        return sorted(found, key=lambda e: e.create_time)

    def endpoint(self, named: str | None = None, *, create: bool = True):
        """The secret's endpoint: the one its latest version names, else the one under calltune's ID for the secret,
        else the oldest labelled one (made before calltune chose IDs), else created under that ID (once)."""
        name = f"{self.parent}/endpoints/{endpoint_id(self.deploy_cfg.secret_id)}"
        for candidate in filter(None, (named, name)):
            if (found := self.read(candidate)) is not None:
                return found
        if labelled := self.labelled():
            return labelled[0]
        if not create:
            return None
        secret, v1 = self.deploy_cfg.secret_id, self.v1
        endpoint = v1.Endpoint(display_name=self.gcp.endpoint_display_name or f"calltune-{secret}",
                               labels={LABEL_SECRET: label_value(secret), **self.gcp.labels})
        request = v1.CreateEndpointRequest(parent=self.parent, endpoint_id=endpoint_id(secret), endpoint=endpoint)
        self._start(f"creating {name}", self.endpoints, name,
                    lambda: self.endpoints.create_endpoint(request=request, timeout=self.timeout_s),
                    ("ALREADY_EXISTS",))
        if (found := self.read(name)) is None:
            raise EndpointError(f"{name} is not there after its creation finished")
        return found

    def deployments(self, named: str | None = None) -> list[Deployment]:
        """What is deployed on the secret's endpoints (those labelled for it, and `named`), with its traffic share."""
        endpoints = self.labelled()
        if named and not any(_same(e.name, named) for e in endpoints) and (e := self.read(named)) is not None:
            endpoints.append(e)
        return [d for e in endpoints for d in _deployments(e)]

    def _deployed(self, endpoint_name: str) -> list[Deployment]:
        endpoint = self.read(endpoint_name)
        return _deployments(endpoint) if endpoint is not None else []

    # ---- deploy beside, check, route ----
    def deploy(self, endpoint, model, deployed_id: str) -> str:
        """Deploy `model` beside what the endpoint serves, with CANARY_PERCENT of the traffic (all of it on an
        endpoint that serves nothing), unless it is deployed there already; its deployed model id."""
        g, v1 = self.gcp, self.v1
        self._settle(self.endpoints, endpoint.name)  # a deployment a killed run left under way finishes first
        now = self.read(endpoint.name)
        found = next((d.id for d in now.deployed_models if _same(d.model, model.name)), None)
        if found is None:
            gpus = dict(accelerator_type=g.serving_accelerator_type, accelerator_count=g.serving_accelerator_count) \
                if g.serving_accelerator_type else {}
            machine = v1.MachineSpec(machine_type=g.serving_machine_type, **gpus)
            request = v1.DeployModelRequest(endpoint=endpoint.name, traffic_split=_canary(now, "0"), deployed_model=(
                v1.DeployedModel(id=deployed_id, model=model.name, display_name=model.display_name,
                                 service_account=g.service_account, dedicated_resources=v1.DedicatedResources(
                                     machine_spec=machine, min_replica_count=g.serving_min_replicas,
                                     max_replica_count=g.serving_max_replicas))))
            self._start(f"deploying {model.name} on {endpoint.name}", self.endpoints, endpoint.name,
                        lambda: self.endpoints.deploy_model(request=request, timeout=self.timeout_s),
                        ("ALREADY_EXISTS",))
            now, found = self.read(endpoint.name), deployed_id
            if found not in {d.id for d in now.deployed_models}:
                raise EndpointError(f"{model.name} is not on {endpoint.name} after its deployment finished")
        elif not now.traffic_split.get(found):  # left deployed outside the split (a sweep that failed): no request
            self.route(endpoint.name, _canary(now, found))  # would reach it
        return found

    def check(self, endpoint_name: str, name: str) -> int:
        """Ask the endpoint for the model `name` until a reply names it. Only the new deployment serves that name, so
        such a reply proves it answers; the requests the split sends to the other model get 404 and are asked again.
        The length of the reply."""
        import openai

        chat = EndpointChat(endpoint_name, api_endpoint=self.gcp.api_endpoint, max_retries=0,
                            timeout_s=self.timeout_s, model=name)
        for _ in range(PROBES):
            try:
                reply = self._call(f"asking {endpoint_name} for {name}", lambda: chat.complete(PROBE, max_tokens=8),
                                   expect=(openai.NotFoundError,))
            except openai.NotFoundError:
                continue
            if reply.model == name:
                return len(reply.choices[0].message.content or "")
        raise EndpointError(f"none of {PROBES} requests to {endpoint_name} reached {name}")

    def route(self, endpoint_name: str, split: dict[str, int]) -> None:
        """Set the endpoint's traffic split in one update."""
        from google.protobuf.field_mask_pb2 import FieldMask

        endpoint = self.v1.Endpoint(name=endpoint_name, traffic_split=split)
        self._call(f"setting the traffic of {endpoint_name} to {split}", lambda: self.endpoints.update_endpoint(
            endpoint=endpoint, update_mask=FieldMask(paths=["traffic_split"]), timeout=self.timeout_s))

    def undeploy(self, endpoint_name: str, deployed_id: str, keep: str | None) -> None:
        """Take a deployed model off the endpoint, its traffic (if any) given to `keep`."""
        request = self.v1.UndeployModelRequest(endpoint=endpoint_name, deployed_model_id=deployed_id,
                                               traffic_split={keep: 100} if keep else {})
        self._start(f"undeploying {deployed_id} from {endpoint_name}", self.endpoints, endpoint_name,
                    lambda: self.endpoints.undeploy_model(request=request, timeout=self.timeout_s),
                    ("FAILED_PRECONDITION", "NOT_FOUND"))
        if deployed_id in {d.id for d in self.read(endpoint_name).deployed_models}:
            raise EndpointError(f"deployed model {deployed_id} is still on {endpoint_name} after undeploying it")

    def put(self, endpoint, model, deployed_id: str) -> Served:
        """Deploy `model` beside the model serving now, check that it answers, then move all the traffic to it in one
        update. A model that does not answer keeps its canary share until the caller's sweep undeploys it."""
        name = own_name(model.container_spec.args)
        if name is None:
            raise EndpointError(f"{model.name} was uploaded before calltune served each model under its own name: "
                                f"its replies cannot be told from the serving model's; deploy the model again")
        deployed = self.deploy(endpoint, model, deployed_id)
        try:
            length = self.check(endpoint.name, name)
        except EndpointError as exc:  # the traffic has not moved: the sweep that follows takes it off
            raise EndpointError(f"{model.name} deployed on {endpoint.name} did not answer ({exc})") from exc
        log.info("endpoint %s: %s answers (%d characters)", endpoint.name, name, length)
        self.route(endpoint.name, {deployed: 100})
        return Served(endpoint.name, model.name, deployed)

    def serve(self, *, sha: str, display_name: str, artifact_uri: str, args: list[str], purpose: str,
              named: str | None) -> Served:
        """Upload (once), deploy on the secret's endpoint (created once) beside the serving model, check that it
        answers, and give it all the traffic. `named`: the endpoint the secret's latest version names."""
        model = self.upload(sha=sha, display_name=display_name, artifact_uri=artifact_uri, args=args)
        endpoint = self.endpoint(named)
        return self.put(endpoint, model, deployed_model_id(ResourceName.parse(model.name).id, purpose))

    def redeploy(self, model_name: str, *, purpose: str, named: str | None) -> Served:
        """Put an earlier Model Registry entry back on the secret's endpoint with all the traffic (a rollback)."""
        model = self.model(model_name)
        if model is None:
            raise EndpointError(f"{model_name} is no longer in the Model Registry: nothing to roll back to")
        endpoint = self.endpoint(named, create=False)
        if endpoint is None:
            raise EndpointError(f"no Vertex endpoint for secret {self.deploy_cfg.secret_id} in {self.parent}: "
                                f"nothing to roll back on")
        return self.put(endpoint, model, deployed_model_id(ResourceName.parse(model.name).id, purpose))

    # ---- sweep ----
    def sweep(self, endpoint_name: str | None, deployed_id: str = "", model_name: str = "", *,
              delete_empty: bool) -> Swept:
        """Undeploy every deployed model of the secret's endpoints but the one its latest enabled version names (on
        `endpoint_name`: `deployed_id`, else a deployment of `model_name`; None: no version names one). The other
        endpoints labelled for the secret are emptied, and deleted with `delete_empty`."""
        swept = Swept()
        if endpoint_name:
            self._settle(self.endpoints, endpoint_name)  # a deployment still under way would finish after the sweep
            here = self._deployed(endpoint_name)
            keep = named_deployment(here, endpoint_name, deployed_id, model_name)
            if keep is None:
                raise EndpointError(f"the secret's latest enabled version names {model_name} on {endpoint_name}, "
                                    f"which is not deployed there: nothing swept (`calltune secrets --check`)")
            for other in [d for d in here if d != keep]:
                self.undeploy(endpoint_name, other.deployed_model_id, keep.deployed_model_id)
                swept.undeployed.append(other)
        for e in self.labelled():
            if endpoint_name and _same(e.name, endpoint_name):
                continue
            self._settle(self.endpoints, e.name)
            there = self._deployed(e.name)
            if any(d.traffic for d in there):  # no traffic there, so that each of its models can go
                self.route(e.name, {})
            for d in there:
                self.undeploy(e.name, d.deployed_model_id, None)
                swept.undeployed.append(d)
            if endpoint_name:  # another endpoint than the one the secret names
                swept.duplicates.append(e.name)
                if delete_empty:
                    self._start(f"deleting {e.name}", self.endpoints, e.name, lambda name=e.name:
                                self.endpoints.delete_endpoint(name=name, timeout=self.timeout_s),
                                ("NOT_FOUND", "FAILED_PRECONDITION"))
                    swept.deleted.append(e.name)
        return swept


def _deployments(endpoint) -> list[Deployment]:
    return [Deployment(endpoint.name, d.id, d.model, endpoint.traffic_split.get(d.id, 0))
            for d in endpoint.deployed_models]


def named_deployment(deployments: list[Deployment], endpoint: str, deployed_id: str, model: str) -> Deployment | None:
    """The deployment a secret version names (its endpoint, `deployed_model_id` and `vertex_model`): that deployed
    model id on that endpoint, else a deployment of that model there (after a redeploy by hand)."""
    here = [d for d in deployments if _same(d.endpoint, endpoint)]
    return next((d for d in here if d.deployed_model_id == deployed_id), None) or \
        next((d for d in here if _same(d.model, model)), None)


def _canary(endpoint, new: str) -> dict[str, int]:
    """The split that gives `new` CANARY_PERCENT and the rest to the model with the most traffic now."""
    split = endpoint.traffic_split
    old = max((i for i, p in split.items() if p and i != new), key=split.get, default=None)
    return {new: CANARY_PERCENT, old: 100 - CANARY_PERCENT} if old else {new: 100}


class EndpointChat:
    """Chat completions from a model served on a Vertex endpoint by the vLLM container (its OpenAI-compatible route,
    https://REGION-aiplatform.googleapis.com/v1beta1/<endpoint>/chat/completions), through the openai client, whose
    own retries cover 429, 5xx, timeouts and dropped connections. Requests ask for `model` (`customer`, which every
    model calltune deploys answers to). Credentials: Application Default Credentials' token; an http:// api_endpoint
    (a local fake) gets a placeholder, never a real token."""

    def __init__(self, endpoint: str, *, api_endpoint: str = "", max_retries: int = 3, timeout_s: float = 60.0,
                 model: str = SERVED_NAME):
        from openai import OpenAI

        name = ResourceName.parse(endpoint, "endpoints")
        if name is None:
            raise ValueError(f"{endpoint!r} is not a Vertex endpoint (projects/P/locations/L/endpoints/E)")
        host = api_endpoint.rstrip("/") or f"https://{name.location}-aiplatform.googleapis.com"
        if not host.startswith(("http://", "https://")):
            host = f"https://{host}"
        self.endpoint, self.model = endpoint, model
        self._plain = host.startswith("http://")
        self._credentials = None
        self.client = OpenAI(base_url=f"{host}/v1beta1/{endpoint}", api_key=self._token(), max_retries=max_retries,
                             timeout=timeout_s)

    def _token(self) -> str:
        if self._plain:
            return "placeholder"
        import google.auth
        import google.auth.transport.requests

        if self._credentials is None:
            self._credentials, _ = google.auth.default(scopes=["https://www.googleapis.com/auth/cloud-platform"])
        if not self._credentials.valid:
            self._credentials.refresh(google.auth.transport.requests.Request())
        return self._credentials.token

    def _fresh(self):
        if not self._plain:
            self.client.api_key = self._token()  # ADC tokens last an hour: refreshed when expired
        return self.client

    def complete(self, messages: list[dict], *, max_tokens: int = 64, temperature: float = 0.0, top_p: float = 1.0,
                 seed: int | None = None, stop: list[str] | None = None, stream: bool = False):
        """The chat completion (or, with `stream`, its chunks) for `messages` (OpenAI chat form)."""
        extra = {"seed": seed} if seed is not None else {}
        extra |= {"stop": stop} if stop else {}
        extra |= {"stream": True, "stream_options": {"include_usage": True}} if stream else {}
        return self._fresh().chat.completions.create(model=self.model, messages=messages, max_tokens=max_tokens,
                                                      temperature=temperature, top_p=top_p, **extra)

    def reply(self, messages: list[dict], **sampling) -> str:
        """The model's reply to `messages`."""
        return self.complete(messages, **sampling).choices[0].message.content or ""

    def is_vllm(self) -> bool:
        """Whether deploy.target=vertex-endpoint made the endpoint (its calltune label): a tuned Gemini's endpoint
        has the same kind of name but answers generateContent instead."""
        import requests

        headers = {} if self._plain else {"Authorization": f"Bearer {self._token()}"}
        root = str(self.client.base_url).split("/v1beta1/")[0]
        answer = requests.get(f"{root}/v1/{self.endpoint}", headers=headers, timeout=30)
        answer.raise_for_status()
        return LABEL_SECRET in (answer.json().get("labels") or {})
