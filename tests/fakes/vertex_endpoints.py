"""A fake Vertex AI Model Registry and endpoints (REST v1, what the aiplatform SDK calls with api_transport="rest"),
and the OpenAI-compatible chat completions route of a vLLM endpoint (v1beta1).

Models are uploaded (models:upload), listed with a `labels.KEY="VALUE"` filter and read; endpoints are created,
listed the same way, read, updated (traffic split), and get models deployed and undeployed. Long-running operations
finish at once (`done: true`). The chat route answers as the deployed model with the most traffic:
`<model display name> says: <last user text>` (streamed as
server-sent events when asked); a model whose display name is in `silent` answers 503 instead (it never came up).

Besides the base's faults (429, 500, HANG before the handler runs), `lose_answer(predicate)` makes the next request
whose (method, path) matches run its handler and then drop the connection: the change is made, the answer lost.
"""
from __future__ import annotations

import json
import re
import time
from urllib.parse import unquote

from . import ApiError
from .vertex_pipelines import LoopbackFake, Raw

_V1 = "/v1/(?P<parent>projects/[^/]+/locations/[^/]+)"
_TYPE = "type.googleapis.com/google.cloud.aiplatform.v1."


def _labels_match(resource: dict, filter_: str) -> bool:
    for key, value in re.findall(r'labels\.([\w-]+)\s*=\s*"([^"]*)"', filter_ or ""):
        if (resource.get("labels") or {}).get(key) != value:
            return False
    return True


class FakeVertexEndpoints(LoopbackFake):
    routes = [
        ("POST", _V1 + r"/models:upload", "upload_model"),
        ("GET", _V1 + r"/models", "list_models"),
        ("GET", r"/v1/(?P<name>projects/[^/]+/locations/[^/]+/models/[^/@:]+)(@[^/:]+)?", "get_model"),
        ("POST", _V1 + r"/endpoints", "create_endpoint"),
        ("GET", _V1 + r"/endpoints", "list_endpoints"),
        ("GET", r"/v1/(?P<name>projects/[^/]+/locations/[^/]+/endpoints/[^/:]+)", "get_endpoint"),
        ("PATCH", r"/v1/(?P<name>projects/[^/]+/locations/[^/]+/endpoints/[^/:]+)", "update_endpoint"),
        ("POST", r"/v1/(?P<name>projects/[^/]+/locations/[^/]+/endpoints/[^/:]+):deployModel", "deploy_model"),
        ("POST", r"/v1/(?P<name>projects/[^/]+/locations/[^/]+/endpoints/[^/:]+):undeployModel", "undeploy_model"),
        ("POST", r"/v1beta1/(?P<name>projects/[^/]+/locations/[^/]+/endpoints/[^/:]+)/chat/completions", "chat"),
    ]

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.models: dict[str, dict] = {}  # name -> Model
        self.endpoints: dict[str, dict] = {}  # name -> Endpoint
        self.uploads: list[dict] = []  # every upload request body, in order
        self.silent: set[str] = set()  # display names of models whose server never answers
        self._lose: list = []
        self._ids = iter(range(1000, 10**6))

    # ---- faults ----
    def lose_answer(self, predicate) -> None:
        """The next request for which predicate(method, path) holds is handled, and its answer lost."""
        with self._lock:
            self._lose.append(predicate)

    def _serve(self, method: str, path: str, raw: bytes):
        path = unquote(path)  # the client quotes a model version's @
        with self._lock:
            rule = next((p for p in self._lose if p(method, path)), None)
            if rule:
                self._lose.remove(rule)
        result = super()._serve(method, path, raw)
        return None if rule else result

    # ---- helpers ----
    def _op(self, parent: str, response: dict, type_name: str) -> dict:
        return {"name": f"{parent}/operations/{next(self._ids)}", "done": True,
                "response": {"@type": _TYPE + type_name, **response}}

    def _endpoint(self, name: str) -> dict:
        if name not in self.endpoints:
            raise ApiError(404, f"{name} not found")
        return self.endpoints[name]

    def serving(self, endpoint: str) -> str | None:
        """The model resource name that gets the endpoint's requests (the most traffic)."""
        e = self._endpoint(endpoint)
        traffic = e.get("trafficSplit") or {}
        if not traffic:
            return None
        top = max(traffic, key=traffic.get)
        return next(d["model"] for d in e["deployedModels"] if d["id"] == top)

    # ---- models ----
    def upload_model(self, match, body: dict) -> dict:
        model = dict((body or {}).get("model") or {})
        if not (model.get("containerSpec") or {}).get("imageUri"):
            raise ApiError(400, "model.containerSpec.imageUri is required")
        name = f"{match['parent']}/models/{next(self._ids)}"
        self.models[name] = {**model, "name": name, "versionId": "1",
                             "supportedDeploymentResourcesTypes": ["DEDICATED_RESOURCES"],
                             "createTime": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        self.uploads.append(body)
        return self._op(match["parent"], {"model": name, "modelVersionId": "1"}, "UploadModelResponse")

    def list_models(self, match, body) -> dict:
        f = self.query().get("filter", "")
        return {"models": [m for n, m in self.models.items() if n.startswith(match["parent"]) and _labels_match(m, f)]}

    def get_model(self, match, body) -> dict:
        if match["name"] not in self.models:
            raise ApiError(404, f"{match['name']} not found")
        return self.models[match["name"]]

    # ---- endpoints ----
    def create_endpoint(self, match, body: dict) -> dict:
        if not (body or {}).get("displayName"):
            raise ApiError(400, "displayName is required")
        name = f"{match['parent']}/endpoints/{next(self._ids)}"
        self.endpoints[name] = {**body, "name": name, "deployedModels": [], "trafficSplit": {},
                                "createTime": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        return self._op(match["parent"], self.endpoints[name], "Endpoint")

    def list_endpoints(self, match, body) -> dict:
        f = self.query().get("filter", "")
        return {"endpoints": [e for n, e in self.endpoints.items()
                              if n.startswith(match["parent"]) and _labels_match(e, f)]}

    def get_endpoint(self, match, body) -> dict:
        return self._endpoint(match["name"])

    def update_endpoint(self, match, body: dict) -> dict:
        e = self._endpoint(match["name"])
        if "trafficSplit" in (body or {}):
            self._check_traffic(e, body["trafficSplit"])
            e["trafficSplit"] = body["trafficSplit"]
        return e

    def _check_traffic(self, e: dict, split: dict) -> None:
        ids = {d["id"] for d in e["deployedModels"]}
        if set(split) - ids or (ids and sum(split.values()) != 100):
            raise ApiError(400, f"traffic split {split} must cover deployed models {sorted(ids)} and sum to 100")

    def deploy_model(self, match, body: dict) -> dict:
        e, deployed = self._endpoint(match["name"]), dict((body or {}).get("deployedModel") or {})
        if deployed.get("model", "").split("@")[0] not in self.models:
            raise ApiError(400, f"model {deployed.get('model')!r} does not exist")
        if not (deployed.get("dedicatedResources") or {}).get("machineSpec", {}).get("machineType"):
            raise ApiError(400, "dedicatedResources.machineSpec.machineType is required")
        deployed["id"] = str(next(self._ids))
        deployed["model"] = deployed["model"].split("@")[0]
        e["deployedModels"].append(deployed)
        split = {(str(deployed["id"]) if k == "0" else k): v for k, v in (body.get("trafficSplit") or {"0": 100}).items()}
        self._check_traffic(e, split)
        e["trafficSplit"] = {k: v for k, v in split.items() if v}
        return self._op(match["name"], {"deployedModel": {"id": deployed["id"]}}, "DeployModelResponse")

    def undeploy_model(self, match, body: dict) -> dict:
        e, target = self._endpoint(match["name"]), (body or {}).get("deployedModelId")
        if target not in {d["id"] for d in e["deployedModels"]}:
            raise ApiError(404, f"deployed model {target} is not on {match['name']}")
        e["deployedModels"] = [d for d in e["deployedModels"] if d["id"] != target]
        split = {k: v for k, v in (body.get("trafficSplit") or e["trafficSplit"]).items() if k != target and v}
        self._check_traffic(e, split)
        e["trafficSplit"] = split
        return self._op(match["name"], {}, "UndeployModelResponse")

    # ---- serving ----
    def chat(self, match, body: dict) -> dict:
        model = self.serving(match["name"])
        if model is None or self.models[model]["displayName"] in self.silent:
            raise ApiError(503, "no deployed model is ready to serve")
        messages = (body or {}).get("messages") or []
        if not messages or not isinstance(messages[-1].get("content"), str):
            raise ApiError(400, "messages must end with a text message")
        text = f"{self.models[model]['displayName']} says: {messages[-1]['content']}"
        if body.get("stream"):  # server-sent events: the reply in two pieces, then the usage
            head = {"id": "chatcmpl-s", "object": "chat.completion.chunk", "created": 0, "model": body.get("model", "")}
            half = len(text) // 2
            events = [{**head, "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]}
                      for piece in (text[:half], text[half:])]
            events.append({**head, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
            events.append({**head, "choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 2,
                                                            "total_tokens": 3}})
            return Raw("".join(f"data: {json.dumps(e)}\n\n" for e in events).encode() + b"data: [DONE]\n\n",
                       "text/event-stream")
        return {"id": f"chatcmpl-{len(self.requests)}", "object": "chat.completion", "created": int(time.time()),
                "model": body.get("model", ""),
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}
