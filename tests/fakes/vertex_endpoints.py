"""A fake Vertex AI v1 Model Registry and endpoints (REST, what the google-cloud-aiplatform clients send with
transport="rest"), with the service's rules, and the OpenAI-compatible chat completions route of the vLLM container
on an endpoint (v1beta1).

The rules it keeps (Vertex AI v1 reference):
- models.upload takes an optional client-chosen `modelId` (up to 63 of [a-z0-9_-], not starting with a digit or -);
  endpoints.create an optional `endpointId` query parameter (a letter, then up to 62 of [a-z0-9-], ending in a letter
  or digit; or a number of up to 9 digits). Without one, the service picks a number. A create of an ID that exists
  or is being created fails with ALREADY_EXISTS (409).
- Creates, deployModel, undeployModel and endpoints.delete answer a long-running operation named
  `<resource>/operations/<n>`. It runs while the service answers `op_steps` more requests (any request: the work goes
  on whether or not anyone asks), then finishes; only then does the change show (a model or endpoint being created
  is not found yet). Operations are read (get, or wait: under /v1/ or /ui/, as the GAPIC REST transport sends them)
  by name, and listed under `<resource>/operations` (NOT_FOUND once the resource is gone).
- DeployedModel.id is client-chosen (1 to 10 digits) or picked. Deploying an id that is on the endpoint or being
  deployed fails with ALREADY_EXISTS. A deployment under way is listed in the endpoint's deployedModels (with no
  traffic) when `list_pending`, else not. Undeploying a model whose undeployment is under way fails with
  FAILED_PRECONDITION (400); one that is not on the endpoint, NOT_FOUND.
- trafficSplit maps deployed model ids to percentages that sum to 100, or is empty (no traffic). A deployModel's split
  ("0": the model being deployed) replaces the endpoint's when the deployment finishes; an undeployModel's at once.
  A model that still has traffic is undeployed only if the request's split takes it away or it is the last one.
  endpoints.patch (updateMask=trafficSplit) sets the split at once and answers the endpoint.
- endpoints.delete refuses an endpoint that still has deployed models (FAILED_PRECONDITION).
- The chat route sends each request to a deployed model picked by the split (a fixed stride over the percentages, so
  a test sees the same sequence every time) and answers as vLLM does: a model name the container does not serve
  (its --served-model-name names, its --lora-modules names) is 404; the reply's `model` is the first served name, or
  the LoRA module asked for; the text is `<model display name> says: <last user text>`, streamed as server-sent events
  when asked. A model whose display name is in `silent` answers 503 (it never came up).

Besides the base's faults (429, 500, HANG before the handler runs), `lose_answer(predicate)` makes the next request
whose (method, path) matches run its handler and then drop the connection: the change is made, the answer lost; and
`outage_after(predicate)` answers 503 to every request after the next one that matches, until `heal()` (a run that
dies there). Operations make no progress during an outage.
"""
from __future__ import annotations

import json
import re
import threading
import time
from collections import Counter
from urllib.parse import unquote

from . import ApiError
from .vertex_pipelines import LoopbackFake, Raw

_LOC = r"projects/[^/]+/locations/[^/]+"
_V1 = f"/v1/(?P<parent>{_LOC})"
_RESOURCE = f"(?P<name>{_LOC}/(?:models|endpoints)/[^/:@]+)"
_ENDPOINT = f"/v1/(?P<name>{_LOC}/endpoints/[^/:]+)"
_OPERATION = f"/(?:v1|ui)/(?P<name>{_LOC}/(?:models|endpoints)/[^/:@]+/operations/[^/:]+)"
_TYPE = "type.googleapis.com/google.cloud.aiplatform.v1."
_MODEL_ID = re.compile(r"[a-z_][a-z0-9_-]{0,62}")
_ENDPOINT_ID = re.compile(r"[a-z]([a-z0-9-]{0,61}[a-z0-9])?|[1-9][0-9]{0,8}")
_DEPLOYED_ID = re.compile(r"[0-9]{1,10}")


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _labels_match(resource: dict, filter_: str) -> bool:
    for key, value in re.findall(r'labels\.([\w-]+)\s*=\s*"([^"]*)"', filter_ or ""):
        if (resource.get("labels") or {}).get(key) != value:
            return False
    return True


def served_names(args: list[str]) -> tuple[list[str], bool]:
    """(the model names a vLLM server started with `args` answers to, whether they are LoRA modules), as vLLM's
    argument parser reads them: `--opt=value` or `--opt value...` (nargs='+')."""
    names: dict[str, list[str]] = {}
    option = None
    for arg in args:
        if arg.startswith("--"):
            option, _, value = arg[2:].partition("=")
            names.setdefault(option, [])
            if value:
                names[option].append(value)
                option = None  # `--opt=value` takes that value alone
        elif option:
            names[option].append(arg)
    if names.get("lora-modules"):
        return [m.split("=", 1)[0] for m in names["lora-modules"]], True
    return names.get("served-model-name") or [next(a.split("=", 1)[1] for a in args if a.startswith("--model="))], False


class FakeVertexEndpoints(LoopbackFake):
    routes = [
        ("POST", _V1 + r"/models:upload", "upload_model"),
        ("GET", _V1 + r"/models", "list_models"),
        ("GET", f"/v1/(?P<name>{_LOC}/models/[^/:@]+)(@[^/:]+)?", "get_model"),
        ("POST", _V1 + r"/endpoints", "create_endpoint"),
        ("GET", _V1 + r"/endpoints", "list_endpoints"),
        ("GET", _ENDPOINT, "get_endpoint"),
        ("PATCH", _ENDPOINT, "update_endpoint"),
        ("DELETE", _ENDPOINT, "delete_endpoint"),
        ("POST", _ENDPOINT + ":deployModel", "deploy_model"),
        ("POST", _ENDPOINT + ":undeployModel", "undeploy_model"),
        ("GET", f"/(?:v1|ui)/{_RESOURCE}/operations", "list_operations"),
        ("GET", _OPERATION, "get_operation"),
        ("POST", _OPERATION + ":wait", "get_operation"),
        ("POST", f"/v1beta1/(?P<name>{_LOC}/endpoints/[^/:]+)/chat/completions", "chat"),
    ]

    def __init__(self, *, op_steps: int = 3, list_pending: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.op_steps, self.list_pending = op_steps, list_pending
        self.models: dict[str, dict] = {}  # name -> Model
        self.endpoints: dict[str, dict] = {}  # name -> Endpoint
        self.operations: dict[str, dict] = {}  # name -> Operation, with "_steps" left and "_finish" (applies it)
        self.uploads: list[dict] = []  # every accepted upload request body, in order
        self.deploys: list[dict] = []  # every accepted deployModel request body, in order
        self.silent: set[str] = set()  # display names of models whose server never answers
        self._lose: list = []
        self._outage, self._down = None, False
        self._ids = iter(range(1000, 10**6))
        self._turns: Counter[str] = Counter()  # chat requests per endpoint, for the traffic stride
        self._state = threading.Lock()
        self._deploying: set[tuple[str, str]] = set()  # (endpoint, deployed model id) under way
        self._undeploying: set[tuple[str, str]] = set()

    # ---- faults ----
    def lose_answer(self, predicate) -> None:
        """The next request for which predicate(method, path) holds is handled, and its answer lost."""
        with self._lock:
            self._lose.append(predicate)

    def outage_after(self, predicate) -> None:
        """Once a request for which predicate(method, path) holds is answered, answer 503 to all until heal()."""
        with self._lock:
            self._outage = predicate

    def heal(self) -> None:
        super().heal()
        with self._lock:
            self._outage, self._down = None, False

    def _next_fault(self, index: int, body):
        return 503 if self._down else super()._next_fault(index, body)

    def forget_lost_answers(self) -> None:
        """Drop the lose_answer rules no request has met."""
        with self._lock:
            self._lose.clear()

    def _serve(self, method: str, path: str, raw: bytes):
        path = unquote(path)  # the client quotes a model version's @
        with self._lock:
            rule = next((p for p in self._lose if p(method, path)), None)
            if rule:
                self._lose.remove(rule)
        result = super()._serve(method, path, raw)
        with self._lock:
            if self._outage and self._outage(method, path):
                self._down = True
        return None if rule else result

    def _dispatch(self, method: str, path: str, body):
        with self._state:  # one handler at a time: each change to the service's state is atomic
            for op in [op for op in self.operations.values() if not op["done"]]:  # the service works on
                op["_steps"] -= 1
                if op["_steps"] <= 0:
                    self._finish(op)
            return super()._dispatch(method, path, body)

    # ---- for tests ----
    def serving(self, endpoint: str) -> dict[str, int]:
        """Model resource name -> its share of the endpoint's traffic."""
        e = self.endpoints[endpoint]
        return {d["model"]: e["trafficSplit"].get(d["id"], 0) for d in e["deployedModels"]}

    def pending(self) -> list[str]:
        return [n for n, op in self.operations.items() if not op["done"]]

    # ---- operations ----
    def _start(self, resource: str, kind: str, finish, response: dict, type_name: str) -> dict:
        name = f"{resource}/operations/{next(self._ids)}"
        self.operations[name] = {
            "name": name, "done": False, "_steps": self.op_steps, "_finish": finish,
            "metadata": {"@type": f"{_TYPE}{kind}OperationMetadata", "genericMetadata": {"createTime": _now()}},
            "_response": {"@type": type_name if "." in type_name else _TYPE + type_name, **response}}
        if self.op_steps == 0:
            self._finish(self.operations[name])
        return self._public(self.operations[name])

    def _finish(self, op: dict) -> None:
        op["_finish"]()
        op["done"], op["response"] = True, op.pop("_response")

    @staticmethod
    def _public(op: dict) -> dict:
        return {k: v for k, v in op.items() if not k.startswith("_")}

    def get_operation(self, match, body) -> dict:
        op = self.operations.get(match["name"])
        if op is None:
            raise ApiError(404, f"operation {match['name']} not found")
        return self._public(op)

    def list_operations(self, match, body) -> dict:
        name = match["name"]
        if name not in self.models and name not in self.endpoints and not self._creating(name):
            raise ApiError(404, f"{name} not found")
        prefix = name + "/operations/"
        return {"operations": [self._public(op) for n, op in self.operations.items() if n.startswith(prefix)]}

    def _creating(self, name: str) -> bool:
        return any(not op["done"] for n, op in self.operations.items() if n.startswith(name + "/operations/"))

    # ---- models ----
    def upload_model(self, match, body: dict) -> dict:
        model, model_id = dict((body or {}).get("model") or {}), (body or {}).get("modelId")
        if not (model.get("containerSpec") or {}).get("imageUri"):
            raise ApiError(400, "model.containerSpec.imageUri is required")
        if model_id is not None and not _MODEL_ID.fullmatch(model_id):
            raise ApiError(400, f"modelId {model_id!r}: up to 63 of [a-z0-9_-], not starting with a digit or -")
        name = f"{match['parent']}/models/{model_id or next(self._ids)}"
        if name in self.models or self._creating(name):
            raise ApiError(409, f"Model {name} already exists")
        self.uploads.append(body)

        def finish():
            self.models[name] = {**model, "name": name, "versionId": "1", "createTime": _now(),
                                 "supportedDeploymentResourcesTypes": ["DEDICATED_RESOURCES"]}
        return self._start(name, "UploadModel", finish, {"model": name, "modelVersionId": "1"}, "UploadModelResponse")

    def list_models(self, match, body) -> dict:
        f = self.query().get("filter", "")
        return {"models": [m for n, m in self.models.items() if n.startswith(match["parent"]) and _labels_match(m, f)]}

    def get_model(self, match, body) -> dict:
        if match["name"] not in self.models:
            raise ApiError(404, f"Model {match['name']} not found")
        return self.models[match["name"]]

    # ---- endpoints ----
    def create_endpoint(self, match, body: dict) -> dict:
        endpoint_id = self.query().get("endpointId")
        if not (body or {}).get("displayName"):
            raise ApiError(400, "displayName is required")
        if endpoint_id is not None and not _ENDPOINT_ID.fullmatch(endpoint_id):
            raise ApiError(400, f"endpointId {endpoint_id!r} is not a valid endpoint ID")
        name = f"{match['parent']}/endpoints/{endpoint_id or next(self._ids)}"
        if name in self.endpoints or self._creating(name):
            raise ApiError(409, f"Endpoint {name} already exists")
        endpoint = {**body, "name": name, "deployedModels": [], "trafficSplit": {}, "createTime": _now()}

        def finish():
            self.endpoints[name] = endpoint
        return self._start(name, "CreateEndpoint", finish, endpoint, "Endpoint")

    def add_endpoint(self, display_name: str, labels: dict[str, str], models: tuple[str, ...] = ()) -> str:
        """An endpoint made before calltune chose IDs (a server-picked number), with `models` deployed on it (all the
        traffic on the first): its name."""
        name = f"projects/test-project/locations/us-central1/endpoints/{next(self._ids)}"
        deployed = [{"id": str(next(self._ids)), "model": m, "displayName": m.rsplit("/", 1)[1], "createTime": _now(),
                     "dedicatedResources": {"machineSpec": {"machineType": "g2-standard-12"}}} for m in models]
        self.endpoints[name] = {"name": name, "displayName": display_name, "labels": labels, "deployedModels": deployed,
                                "trafficSplit": {deployed[0]["id"]: 100} if deployed else {}, "createTime": _now()}
        return name

    def list_endpoints(self, match, body) -> dict:
        f = self.query().get("filter", "")
        return {"endpoints": [e for n, e in self.endpoints.items()
                              if n.startswith(match["parent"]) and _labels_match(e, f)]}

    def _endpoint(self, name: str) -> dict:
        if name not in self.endpoints:
            raise ApiError(404, f"Endpoint {name} not found")
        return self.endpoints[name]

    def get_endpoint(self, match, body) -> dict:
        return self._endpoint(match["name"])

    def update_endpoint(self, match, body: dict) -> dict:
        e = self._endpoint(match["name"])
        mask = [p for p in self.query().get("updateMask", "").split(",") if p]
        if not mask or set(mask) - {"trafficSplit", "traffic_split", "displayName", "display_name"}:
            raise ApiError(400, f"fake: updateMask {mask} is not supported (trafficSplit, displayName)")
        if {"trafficSplit", "traffic_split"} & set(mask):
            split = {k: v for k, v in ((body or {}).get("trafficSplit") or {}).items() if v}
            self._check_traffic(split, {d["id"] for d in self._ready(e)})
            e["trafficSplit"] = split
        return e

    def delete_endpoint(self, match, body) -> dict:
        e = self._endpoint(match["name"])
        if e["deployedModels"] or self._creating(e["name"]):
            raise ApiError(400, f"Endpoint {e['name']} has deployed models or operations under way: undeploy first",
                           "FAILED_PRECONDITION")
        return self._start(e["name"], "Delete", lambda: self.endpoints.pop(e["name"], None), {},
                           "type.googleapis.com/google.protobuf.Empty")

    def _ready(self, e: dict) -> list[dict]:
        """The endpoint's deployed models whose deployment has finished."""
        return [d for d in e["deployedModels"] if (e["name"], d["id"]) not in self._deploying]

    @staticmethod
    def _check_traffic(split: dict, ids: set[str]) -> None:
        if set(split) - ids or (split and sum(split.values()) != 100) or any(v < 0 for v in split.values()):
            raise ApiError(400, f"traffic split {split} must name deployed models {sorted(ids)} and sum to 100")

    def deploy_model(self, match, body: dict) -> dict:
        e, deployed = self._endpoint(match["name"]), dict((body or {}).get("deployedModel") or {})
        model = deployed.get("model", "").split("@")[0]
        if model not in self.models:
            raise ApiError(400, f"model {deployed.get('model')!r} does not exist")
        if not (deployed.get("dedicatedResources") or {}).get("machineSpec", {}).get("machineType"):
            raise ApiError(400, "dedicatedResources.machineSpec.machineType is required")
        deployed_id = deployed.get("id") or str(next(self._ids))
        if not _DEPLOYED_ID.fullmatch(deployed_id):
            raise ApiError(400, f"deployedModel.id {deployed_id!r}: 1 to 10 digits")
        if deployed_id in {d["id"] for d in e["deployedModels"]} or (e["name"], deployed_id) in self._deploying:
            raise ApiError(409, f"DeployedModel {deployed_id} already exists on {e['name']}")
        split = {(deployed_id if k == "0" else k): v for k, v in ((body or {}).get("trafficSplit") or {}).items() if v}
        self._check_traffic(split, {d["id"] for d in self._ready(e)} | {deployed_id})
        deployed.update(id=deployed_id, model=model, createTime=_now())
        self.deploys.append(body)
        self._deploying.add((e["name"], deployed_id))
        if self.list_pending:
            e["deployedModels"].append(deployed)

        def finish():
            self._deploying.discard((e["name"], deployed_id))
            if deployed not in e["deployedModels"]:
                e["deployedModels"].append(deployed)
            if split:
                e["trafficSplit"] = split
        return self._start(e["name"], "DeployModel", finish, {"deployedModel": {"id": deployed_id}},
                           "DeployModelResponse")

    def undeploy_model(self, match, body: dict) -> dict:
        e, target = self._endpoint(match["name"]), (body or {}).get("deployedModelId")
        if (e["name"], target) in self._undeploying:
            raise ApiError(400, f"DeployedModel {target} is being undeployed already", "FAILED_PRECONDITION")
        if target not in {d["id"] for d in self._ready(e)}:
            raise ApiError(404, f"DeployedModel {target} is not on {match['name']}")
        given = (body or {}).get("trafficSplit")
        split = {k: v for k, v in (given if given is not None else e["trafficSplit"]).items() if v}
        others = {d["id"] for d in self._ready(e)} - {target}
        if split.get(target) and others:
            raise ApiError(400, f"DeployedModel {target} still has {split[target]}% of the traffic: move it first",
                           "FAILED_PRECONDITION")
        split.pop(target, None)
        self._check_traffic(split, others)
        e["trafficSplit"] = split
        self._undeploying.add((e["name"], target))

        def finish():
            self._undeploying.discard((e["name"], target))
            e["deployedModels"] = [d for d in e["deployedModels"] if d["id"] != target]
        return self._start(e["name"], "UndeployModel", finish, {}, "UndeployModelResponse")

    # ---- serving ----
    def _pick(self, e: dict) -> dict | None:
        """The deployed model that gets the next request: a stride of 37 over the percentages, in deployment order."""
        point, start = self._turns[e["name"]] * 37 % 100, 0
        self._turns[e["name"]] += 1
        for d in self._ready(e):
            start += e["trafficSplit"].get(d["id"], 0)
            if point < start:
                return d
        return None

    def chat(self, match, body: dict) -> dict:
        deployed = self._pick(self._endpoint(match["name"]))
        model = self.models[deployed["model"]] if deployed else None
        if model is None or model["displayName"] in self.silent:
            raise ApiError(503, "no deployed model is ready to serve")
        names, lora = served_names(model["containerSpec"].get("args") or [])
        asked = (body or {}).get("model", "")
        if asked not in names:
            raise ApiError(404, f"The model `{asked}` does not exist.")  # vLLM's answer, passed through
        messages = (body or {}).get("messages") or []
        if not messages or not isinstance(messages[-1].get("content"), str):
            raise ApiError(400, "messages must end with a text message")
        text, name = f"{model['displayName']} says: {messages[-1]['content']}", asked if lora else names[0]
        if body.get("stream"):  # server-sent events: the reply in two pieces, then the usage
            head = {"id": "chatcmpl-s", "object": "chat.completion.chunk", "created": 0, "model": name}
            half = len(text) // 2
            events = [{**head, "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]}
                      for piece in (text[:half], text[half:])]
            events.append({**head, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
            events.append({**head, "choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 2,
                                                            "total_tokens": 3}})
            return Raw("".join(f"data: {json.dumps(e)}\n\n" for e in events).encode() + b"data: [DONE]\n\n",
                       "text/event-stream")
        return {"id": f"chatcmpl-{len(self.requests)}", "object": "chat.completion", "created": int(time.time()),
                "model": name,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}
