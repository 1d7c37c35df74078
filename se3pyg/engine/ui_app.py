"""The MLflow UI server ``se3pyg ui`` runs: MLflow's own app (``mlflow server --app-name se3pyg``), plus one page.

MLflow 3's UI keeps its navigation (model training or GenAI) in the browser's localStorage, GenAI unless chosen;
a ``workflowType`` in a page's address holds for that page only, so a click on a run switched to the GenAI
navigation. ``/se3pyg/#PAGE`` stores the model-training choice as the UI's own toggle does, then opens ``#PAGE``:
the page ``se3pyg ui`` prints, after which every page keeps that navigation.
"""

from __future__ import annotations

from mlflow.server.fastapi_app import app
from starlette.responses import HTMLResponse
from starlette.routing import Route

#: The UI's localStorage entry for its navigation (``{key}_v{version}``, a JSON value) and the value for the
#: model-training navigation.
NAVIGATION_KEY, MODEL_TRAINING = "mlflow.workflowType_v1", "machine_learning"

_LANDING = f"""<!doctype html><meta charset="utf-8"><title>MLflow</title>
<script>
localStorage.setItem({NAVIGATION_KEY!r}, JSON.stringify({MODEL_TRAINING!r}));
location.replace("../" + location.hash);
</script>"""


async def _training_view(_request: object) -> HTMLResponse:
    return HTMLResponse(_LANDING, headers={"Cache-Control": "no-store"})


app.router.routes.insert(0, Route("/se3pyg/", _training_view))  # before MLflow's catch-all mount of its UI

__all__ = ["app"]
