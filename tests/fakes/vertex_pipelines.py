"""Loopback fakes for delivering the pipeline: Vertex AI PipelineJobs and the Artifact Registry Kubeflow Pipelines
repository (what `kfp.registry.RegistryClient` talks to); Cloud Storage is in fakes.storage.

They extend the FakeGoogleApi base with multipart form bodies (handed to the handler as a dict of strings);
handlers read the query string with `query()` and answer `Raw` for non-JSON. Every request is still recorded in
`requests`; each fake also keeps what it was asked to create, in order, for the tests to assert on.
"""
from __future__ import annotations

import email.parser
import email.policy
import hashlib
import json
import time

import yaml

from . import ApiError, FakeGoogleApi, Raw


class LoopbackFake(FakeGoogleApi):
    def _serve(self, method: str, path: str, raw: bytes):
        ctype = self._header("Content-Type")
        if ctype.startswith("multipart/"):
            message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
                f"Content-Type: {ctype}\r\n\r\n".encode() + raw)
            form = {part.get_param("name", header="content-disposition"): part.get_payload(decode=True).decode()
                    for part in message.iter_parts()}
            raw = json.dumps(form).encode()
        return super()._serve(method, path, raw)


class FakePipelineService(LoopbackFake):
    """Vertex AI PipelineService (REST v1): create and get pipeline jobs.

    A created job is PENDING; each later get moves it one state along `script` (default: RUNNING, SUCCEEDED),
    and a job that ends FAILED carries `failure` as its error, and the failing task's. `create_then(status)`
    makes the next create store the job and only then answer `status` (an answer lost after the work was done).
    """
    routes = [
        ("POST", r"/v1/projects/(?P<project>[^/]+)/locations/(?P<location>[^/]+)/pipelineJobs", "create"),
        ("GET", r"/v1/(?P<name>projects/[^/]+/locations/[^/]+/pipelineJobs/[^/]+)", "get"),
    ]

    def __init__(self, *, script: tuple[str, ...] = ("RUNNING", "SUCCEEDED"), failure: str = "", **kwargs):
        super().__init__(**kwargs)
        self.script, self.failure = script, failure
        self.created: list[dict] = []  # {"job_id", "parent", "body"}
        self.jobs: dict[str, dict] = {}
        self._steps: dict[str, int] = {}
        self._commit_then: list[int] = []

    def create_then(self, status: int) -> None:
        self._commit_then.append(status)

    def create(self, match, body: dict) -> dict:
        job_id = self.query().get("pipelineJobId")
        if not job_id:
            raise ApiError(400, "pipelineJobId is required")
        name = f"projects/{match['project']}/locations/{match['location']}/pipelineJobs/{job_id}"
        if name in self.jobs:
            raise ApiError(409, f"{name} already exists")
        self.created.append({"job_id": job_id, "parent": name.rsplit("/", 2)[0], "body": body})
        job = {**body, "name": name, "state": "PIPELINE_STATE_PENDING",
               "createTime": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        self.jobs[name], self._steps[name] = job, 0
        if self._commit_then:
            status = self._commit_then.pop(0)
            raise ApiError(status, f"fake: {name} created, then answered {status}")
        return job

    def get(self, match, body) -> dict:
        job = self.jobs.get(match["name"])
        if job is None:
            raise ApiError(404, f"{match['name']} not found")
        step = self._steps[match["name"]]
        if step < len(self.script):
            state = self.script[step]
            job["state"] = f"PIPELINE_STATE_{state}"
            if state == "FAILED":
                job["error"] = {"code": 9, "message": self.failure}
                job["jobDetail"] = {"taskDetails": [{"taskName": "tune", "state": "FAILED",
                                                     "error": {"code": 9, "message": self.failure}}]}
            self._steps[match["name"]] = step + 1
        return job


class FakeKfpRegistry(LoopbackFake):
    """An Artifact Registry Kubeflow Pipelines repository at /{project}/{repo}: upload a template (multipart form:
    `content`, `tags` comma-separated) and download it by tag or by sha256 version."""
    routes = [
        ("POST", r"/(?P<project>[^/]+)/(?P<repo>[^/]+)", "upload"),
        ("GET", r"/(?P<project>[^/]+)/(?P<repo>[^/]+)/(?P<package>[^/]+)/(?P<ref>[^/]+)", "download"),
    ]

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.uploads: list[dict] = []  # {"repo", "package", "version", "tags"}
        self.versions: dict[tuple[str, str, str], bytes] = {}  # (repo, package, version) -> content
        self.tags: dict[tuple[str, str, str], str] = {}  # (repo, package, tag) -> version

    def host(self, project: str = "test-project", repo: str = "calltune") -> str:
        return f"{self.endpoint}/{project}/{repo}"

    def upload(self, match, form: dict) -> Raw:
        content = (form or {}).get("content")
        if not content:
            raise ApiError(400, "content is required")
        try:
            package = yaml.safe_load(content)["pipelineInfo"]["name"]
        except (yaml.YAMLError, KeyError, TypeError):
            raise ApiError(400, "content is not a pipeline template") from None
        repo = f"{match['project']}/{match['repo']}"
        version = "sha256:" + hashlib.sha256(content.encode()).hexdigest()
        tags = [t for t in (form.get("tags") or "").split(",") if t]
        self.versions[repo, package, version] = content.encode()
        for tag in tags:
            self.tags[repo, package, tag] = version
        self.uploads.append({"repo": repo, "package": package, "version": version, "tags": tags})
        return Raw(f"{package}/{version}".encode())

    def download(self, match, body) -> Raw:
        repo, package, ref = f"{match['project']}/{match['repo']}", match["package"], match["ref"]
        version = ref if ref.startswith("sha256:") else self.tags.get((repo, package, ref))
        if (repo, package, version) not in self.versions:
            raise ApiError(404, f"{repo}/{package}/{ref} not found")
        return Raw(self.versions[repo, package, version], "application/x-yaml")


# A config that can run on Vertex AI, as overrides of configs/vertex.yaml (its project-specific values are empty).
PROJECT, BUCKET, SERVICE_ACCOUNT = "test-project", "test-bucket", "calltune@test-project.iam.gserviceaccount.com"
IMAGE = f"us-central1-docker.pkg.dev/{PROJECT}/calltune/calltune:abc1234"
TRAINER_IMAGE = f"us-central1-docker.pkg.dev/{PROJECT}/calltune/calltune-trainer:abc1234"
VERTEX_OVERRIDES = [f"gcp.project={PROJECT}", f"gcp.pipeline_root=gs://{BUCKET}/pipeline_root",
                    f"state_dir=/gcs/{BUCKET}/state", f"deploy.project={PROJECT}", f"gcp.service_account={SERVICE_ACCOUNT}",
                    f"gcp.image={IMAGE}", f"gcp.trainer_image={TRAINER_IMAGE}"]
