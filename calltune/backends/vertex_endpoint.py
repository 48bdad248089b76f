"""An open model served on a Vertex AI endpoint by Vertex Model Garden's vLLM container, and a client of its
OpenAI-compatible chat completions route.

Built on the aiplatform SDK rather than google-cloud-pipeline-components' ModelUploadOp / EndpointCreateOp /
ModelDeployOp: the step must look before it creates (a retried step, or a call whose answer was lost, must not
upload a second model or create a second endpoint), must undeploy the previous model only after the new one answers,
and publishes the secret version in the same step; GCPC's ops always create, and cannot run under kfp.local, where
the pipeline factory's components must also run.

Lookups go by label: the uploaded model carries `calltune-model=<model sha>`, the endpoint
`calltune-secret=<deploy.secret_id>`. Every call is retried on 429, 5xx, a timeout or a dropped connection; since
each attempt starts with the lookup, retrying after a lost answer finds what the first attempt made.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass

from calltune.backends import Retrying
from calltune.backends.resources import ResourceName
from calltune.config import DeployConfig, GcpConfig

log = logging.getLogger(__name__)

SERVED_NAME = "customer"  # the model name chat requests ask for: vLLM's --served-model-name, or the LoRA module
LABEL_MODEL, LABEL_SECRET = "calltune-model", "calltune-secret"


class EndpointError(RuntimeError):
    """Vertex AI refused a call, gave up answering, or the served model did not answer."""


def label_value(text: str) -> str:
    """`text` as a Vertex label value: lowercase letters, digits, - and _, at most 63 characters."""
    return re.sub(r"[^a-z0-9_-]", "-", text.lower())[:63]


def _transient(exc: BaseException) -> bool:
    import requests
    from google.api_core import exceptions as gexc

    return isinstance(exc, (gexc.TooManyRequests, gexc.InternalServerError, gexc.BadGateway, gexc.ServiceUnavailable,
                            gexc.GatewayTimeout, gexc.DeadlineExceeded, gexc.RetryError,
                            requests.ConnectionError, requests.Timeout, ConnectionError, TimeoutError))


def vllm_args(model_uri: str, *, adapter_uri: str = "", lora_rank: int = 16, accelerator_count: int = 1,
              max_model_len: int = 4096) -> list[str]:
    """The vLLM server's arguments: the merged model, or the base with the adapter as LoRA module `customer`."""
    args = ["--host=0.0.0.0", "--port=8080", f"--model={model_uri}", f"--tensor-parallel-size={accelerator_count}",
            f"--max-model-len={max_model_len}", "--gpu-memory-utilization=0.9", "--enable-prefix-caching",
            "--disable-log-stats"]
    if adapter_uri:
        return args + ["--enable-lora", "--max-loras=1", f"--max-lora-rank={lora_rank}",
                       f"--lora-modules={SERVED_NAME}={adapter_uri}"]
    return args + [f"--served-model-name={SERVED_NAME}"]


@dataclass
class Served:
    endpoint: str  # projects/P/locations/L/endpoints/E
    model: str  # projects/P/locations/L/models/M, the Model Registry entry
    deployed_model_id: str
    undeployed: list[str]  # deployed model ids taken off the endpoint once the new one answered


class VertexEndpoints:
    """Upload, deploy, probe and undeploy on the endpoint of one secret, through the aiplatform SDK (REST)."""

    def __init__(self, gcp: GcpConfig, deploy: DeployConfig):
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import aiplatform

        self.gcp, self.deploy_cfg, self.aiplatform = gcp, deploy, aiplatform
        plain = gcp.api_endpoint.startswith("http://")  # a local fake: no credentials over plain HTTP
        aiplatform.init(project=gcp.project, location=gcp.region, api_endpoint=gcp.api_endpoint or None,
                        credentials=AnonymousCredentials() if plain else None, api_transport="rest")
        self.retrying = Retrying(service="Vertex AI", setting="deploy.max_retries", max_retries=deploy.max_retries,
                                 backoff_s=deploy.retry_backoff_s, retryable=_transient, error=EndpointError)
        self.timeout_s = deploy.timeout_s

    # ---- model registry ----
    def upload(self, *, sha: str, display_name: str, artifact_uri: str, args: list[str]):
        """The Model Registry entry of the model with this sha: found, or uploaded with the vLLM container."""
        aip = self.aiplatform

        def attempt():
            found = aip.Model.list(filter=f'labels.{LABEL_MODEL}="{sha}"')
            if found:
                return found[0]
            return aip.Model.upload(
                display_name=display_name, artifact_uri=artifact_uri, serving_container_image_uri=self.gcp.serving_image,
                serving_container_command=["python", "-m", "vllm.entrypoints.api_server"], serving_container_args=args,
                serving_container_ports=[8080], serving_container_predict_route="/generate",
                serving_container_health_route="/ping", serving_container_shared_memory_size_mb=16 * 1024,
                serving_container_deployment_timeout=1800, labels={LABEL_MODEL: sha},
                upload_request_timeout=self.timeout_s, sync=True)

        return self.retrying.call(attempt)

    # ---- endpoint ----
    def endpoint(self, *, create: bool = True):
        """The secret's endpoint: found by its label, else created (once)."""
        aip, label = self.aiplatform, label_value(self.deploy_cfg.secret_id)
        name = self.gcp.endpoint_display_name or f"calltune-{self.deploy_cfg.secret_id}"

        def attempt():
            found = aip.Endpoint.list(filter=f'labels.{LABEL_SECRET}="{label}"', order_by="create_time")
            if found or not create:
                return found[0] if found else None
            return aip.Endpoint.create(display_name=name, labels={LABEL_SECRET: label, **self.gcp.labels},
                                       create_request_timeout=self.timeout_s, sync=True)

        return self.retrying.call(attempt)

    def deployed(self, endpoint_name: str) -> dict[str, str]:
        """Deployed model id -> model resource name, freshly read."""
        endpoint = self.retrying.call(lambda: self.aiplatform.Endpoint(endpoint_name))
        return {d.id: d.model for d in endpoint.gca_resource.deployed_models}

    def deploy(self, endpoint, model) -> str:
        """Deploy `model` on the endpoint with all the traffic (unless it is there already); its deployed model id."""
        g = self.gcp

        def on_endpoint() -> str | None:
            return next((i for i, m in self.deployed(endpoint.resource_name).items()
                         if m.split("@")[0] == model.resource_name), None)

        def attempt() -> str:
            found = on_endpoint()
            if found:
                return found
            endpoint.deploy(model=model, deployed_model_display_name=model.display_name, traffic_percentage=100,
                            machine_type=g.serving_machine_type, accelerator_type=g.serving_accelerator_type or None,
                            accelerator_count=g.serving_accelerator_count if g.serving_accelerator_type else None,
                            min_replica_count=g.serving_min_replicas, max_replica_count=g.serving_max_replicas,
                            service_account=g.service_account or None, deploy_request_timeout=self.timeout_s, sync=True)
            deployed = on_endpoint()
            if deployed is None:
                raise EndpointError(f"{model.resource_name} is not on {endpoint.resource_name} after deploying it")
            return deployed

        return self.retrying.call(attempt)

    def route_only(self, endpoint_name: str, keep: str) -> list[str]:
        """Give `keep` all the traffic and undeploy every other model of the endpoint; the ids undeployed."""
        aip, removed = self.aiplatform, []

        def undeploy(other: str) -> None:
            if other not in self.deployed(endpoint_name):  # a lost answer: the first attempt did it
                return
            aip.Endpoint(endpoint_name).undeploy(other, traffic_split={keep: 100}, sync=True)

        for other in [i for i in self.deployed(endpoint_name) if i != keep]:
            self.retrying.call(lambda: undeploy(other))
            removed.append(other)
        traffic = self.retrying.call(lambda: dict(aip.Endpoint(endpoint_name).gca_resource.traffic_split))
        if traffic.get(keep) != 100:
            self.retrying.call(lambda: aip.Endpoint(endpoint_name).update(traffic_split={keep: 100},
                                                                          update_request_timeout=self.timeout_s))
        return removed

    def undeploy(self, endpoint_name: str, deployed_id: str, restore: str | None) -> None:
        """Take a model that did not answer off the endpoint, the traffic back on `restore` (the previous one)."""
        def attempt():
            if deployed_id in self.deployed(endpoint_name):
                self.aiplatform.Endpoint(endpoint_name).undeploy(
                    deployed_id, traffic_split={restore: 100} if restore else None, sync=True)

        self.retrying.call(attempt)

    def serve(self, *, sha: str, display_name: str, artifact_uri: str, args: list[str]) -> Served:
        """Upload (once), deploy on the secret's endpoint (created once), check that it answers, then undeploy the
        models it replaces. A model that does not answer is undeployed again and the traffic stays where it was."""
        model = self.upload(sha=sha, display_name=display_name, artifact_uri=artifact_uri, args=args)
        endpoint = self.endpoint()
        now = self.retrying.call(lambda: self.aiplatform.Endpoint(endpoint.resource_name).gca_resource)
        before = {d.id: d.model.split("@")[0] for d in now.deployed_models}
        traffic = dict(now.traffic_split)
        previous = max((i for i, m in before.items() if m != model.resource_name), key=lambda i: traffic.get(i, 0),
                       default=None)  # the model serving now: it gets the traffic back if the new one fails
        deployed_id = self.deploy(endpoint, model)
        try:
            reply = EndpointChat(endpoint.resource_name, api_endpoint=self.gcp.api_endpoint,
                                 max_retries=self.deploy_cfg.max_retries, timeout_s=self.timeout_s).reply(
                [{"role": "user", "content": "Hello, is this a good time to talk?"}], max_tokens=16)
        except Exception as exc:  # noqa: BLE001 - any failure to answer keeps the previous model serving
            if deployed_id not in before:
                self.undeploy(endpoint.resource_name, deployed_id, previous)
            raise EndpointError(f"{model.resource_name} deployed on {endpoint.resource_name} did not answer "
                                f"({type(exc).__name__}: {exc}); it was undeployed, the previous model still serves"
                                ) from exc
        log.info("endpoint %s: %s answers (%d characters)", endpoint.resource_name, model.resource_name, len(reply))
        removed = self.route_only(endpoint.resource_name, deployed_id)
        return Served(endpoint.resource_name, model.resource_name, deployed_id, removed)

    def redeploy(self, model_name: str) -> Served:
        """Put an earlier Model Registry entry back on the secret's endpoint with all the traffic (a rollback)."""
        model = self.retrying.call(lambda: self.aiplatform.Model(model_name))
        endpoint = self.endpoint(create=False)
        if endpoint is None:
            raise EndpointError(f"no Vertex endpoint labelled {LABEL_SECRET}={label_value(self.deploy_cfg.secret_id)}"
                                f" in {self.gcp.project}/{self.gcp.region}: nothing to roll back on")
        deployed_id = self.deploy(endpoint, model)
        EndpointChat(endpoint.resource_name, api_endpoint=self.gcp.api_endpoint, max_retries=self.deploy_cfg.max_retries,
                     timeout_s=self.timeout_s).reply([{"role": "user", "content": "Hello?"}], max_tokens=16)
        removed = self.route_only(endpoint.resource_name, deployed_id)
        return Served(endpoint.resource_name, model.resource_name, deployed_id, removed)


class EndpointChat:
    """Chat completions from a model served on a Vertex endpoint by the vLLM container (its OpenAI-compatible route,
    https://REGION-aiplatform.googleapis.com/v1beta1/<endpoint>/chat/completions), through the openai client, whose
    own retries cover 429, 5xx, timeouts and dropped connections. Credentials: Application Default Credentials'
    token; an http:// api_endpoint (a local fake) gets a placeholder, never a real token."""

    def __init__(self, endpoint: str, *, api_endpoint: str = "", max_retries: int = 3, timeout_s: float = 60.0):
        from openai import OpenAI

        name = ResourceName.parse(endpoint, "endpoints")
        if name is None:
            raise ValueError(f"{endpoint!r} is not a Vertex endpoint (projects/P/locations/L/endpoints/E)")
        host = api_endpoint.rstrip("/") or f"https://{name.location}-aiplatform.googleapis.com"
        if not host.startswith(("http://", "https://")):
            host = f"https://{host}"
        self.endpoint = endpoint
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
        return self._fresh().chat.completions.create(model=SERVED_NAME, messages=messages, max_tokens=max_tokens,
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
