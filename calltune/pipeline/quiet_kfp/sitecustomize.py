"""Logging of a kfp.local task process of `calltune run` (this folder is put first on PYTHONPATH; see
calltune.pipeline.local_run): calltune's own INFO lines (the step's progress and result), every library's warnings and
errors, and none of kfp's executor INFO lines (the full executor_input JSON of every task). Python runs this
before kfp's executor sets up logging, whose basicConfig then leaves this configuration as it is."""
import logging
import sys
import warnings

logging.basicConfig(stream=sys.stdout, level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s",
                    datefmt="%H:%M:%S")
logging.getLogger("calltune").setLevel(logging.INFO)
# Notes for library developers (deprecations), not for the person running the pipeline.
warnings.simplefilter("ignore", FutureWarning)
warnings.simplefilter("ignore", DeprecationWarning)
