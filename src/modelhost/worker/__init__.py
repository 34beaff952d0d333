"""The model server: loads one MLflow model and answers the scoring protocol.

It runs inside the model's own Python environment, so it imports little beyond MLflow's pyfunc
loader, the ASGI server and the JSON codec.
"""
