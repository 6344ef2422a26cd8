"""The reference for the service's own overhead: a plain Starlette app that answers /rank with
a model's top 10 and nothing else (no rules, no store, no reasons), served by uvicorn with
the same number of workers.

    NBO_YARDSTICK_MODEL=FOLDER uvicorn --workers 2 --app-dir bench yardstick:app
"""

from __future__ import annotations

import os
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from features.settings import quiet_third_parties

quiet_third_parties()

from training.models.base import Recommender  # noqa: E402  (after the thread settings)
from training.ranking import top_k  # noqa: E402

MODEL = Recommender.load(Path(os.environ["NBO_YARDSTICK_MODEL"]))


async def rank(request: Request) -> JSONResponse:
    body = await request.json()
    scores = MODEL.score([str(body["customer_id"])])
    best = top_k(scores, int(body.get("k", 10)))[0]
    return JSONResponse({"offers": [{"product_id": str(MODEL.items.names[i]),
                                     "score": float(scores[0, i])} for i in best]})


async def ready(_: Request) -> JSONResponse:
    return JSONResponse({"ready": True, "worker": os.getpid()})


app = Starlette(routes=[Route("/rank", rank, methods=["POST"]),
                        Route("/readyz", ready)])
