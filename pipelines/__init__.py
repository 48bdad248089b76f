from calltune.pipelines.training import build_pipeline

__all__ = ["build_pipeline"]
