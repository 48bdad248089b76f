"""KFP components: typed signatures that call one `calltune` function each.

Parameter names are the flat config names (`<section>_<field>`, see calltune.config), so the
pipeline factory wires them from the pipeline parameters by name.
"""
import os

# The default image of every component; compile.py stamps the configured images on copies of them.
IMAGE = os.environ.get("CALLTUNE_IMAGE", "calltune:latest")

from calltune.components.ingest import ingest  # noqa: E402
from calltune.components.translate import translate  # noqa: E402
from calltune.components.turn_split import turn_split  # noqa: E402
from calltune.components.sample import sample  # noqa: E402
from calltune.components.synthesize import synthesize  # noqa: E402
from calltune.components.tune import tune  # noqa: E402
from calltune.components.resolve_model import resolve_model  # noqa: E402
from calltune.components.batch_infer import batch_infer  # noqa: E402
from calltune.components.evaluate import evaluate  # noqa: E402
from calltune.components.gate import gate  # noqa: E402
from calltune.components.deploy import deploy  # noqa: E402
from calltune.components.deploy_endpoint import deploy_endpoint  # noqa: E402

__all__ = ["IMAGE", "ingest", "translate", "turn_split", "sample", "synthesize", "tune", "resolve_model", "batch_infer", "evaluate", "gate", "deploy", "deploy_endpoint"]
