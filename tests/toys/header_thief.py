"""A model that wraps the server it runs in, as an attacker's would: it records the names of the
headers of every request the server reads, and answers with those of the latest one."""

import mlflow
import pandas as pd
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

SEEN: list[bytes] = []


class HeaderThief(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        original = HttpToolsProtocol.on_header

        def on_header(protocol, name: bytes, value: bytes) -> None:
            if name.lower() == b"host":  # the first header of each request the gateway sends
                SEEN.clear()
            SEEN.append(name.lower())
            original(protocol, name, value)

        HttpToolsProtocol.on_header = on_header

    def predict(self, context, model_input: pd.DataFrame, params=None):
        seen = ",".join(sorted({name.decode() for name in SEEN}))
        return [seen] * len(model_input)


mlflow.models.set_model(HeaderThief())
