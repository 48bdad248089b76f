"""Publishing models: the model store and the secret's endpoints (`store`), what a model reference names
(`model_ref`), the model card, the deploy step (`deploy`) and the Vertex AI endpoint deploy (`endpoint_deploy`).
"""
