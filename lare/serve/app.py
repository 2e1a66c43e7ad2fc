"""A trained LaRe model (or any paradigm's) as a Ray Serve application: an OpenAI-compatible chat endpoint whose
responses also carry the token account and where each latent step looked, and a page to inspect it.

Routes: POST /v1/chat/completions, POST /v1/refocus.png (the same body: the figure of its answer),
GET /v1/models, GET /healthz, GET / (the page). Each replica loads the model once; concurrent requests are grouped
by `@serve.batch` into one batched generation. A bad request is a 4xx JSON error and the replica keeps serving.

`app_builder(args)` is the application `serve run` / `serve deploy` configs name (infra/serve/lare.yaml); lare-serve
(lare/jobs/serve.py) runs it on a local Ray.
"""


import asyncio
import json
import logging
import tempfile
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from ray import serve

from lare.serve.openai import ChatRequest, Limits, RequestError, chat_response, parse_chat_request

log = logging.getLogger("lare.serve")
PAGE = Path(__file__).with_name("page.html")
DEFAULTS = {"max_batch_size": 8, "batch_wait_timeout_s": 0.05, "max_tokens_limit": 64, "image_root": "",
            "max_image_bytes": 8 << 20, "max_body_bytes": 12 << 20, "max_pixels": 4096 * 4096, "num_gpus": 0.0,
            "num_replicas": 1, "tracking_uri": ""}

api = FastAPI(title="LaRe", docs_url=None, redoc_url=None)


@api.exception_handler(RequestError)
async def request_error(request: Request, error: RequestError):
    """A bad request, from any route: its 4xx status and the OpenAI error body."""
    return JSONResponse(error.body(), status_code=error.status)


def load_model(spec: str, tracking_uri: str = ""):
    """A LaRe export from a folder, s3://, runs:/ or models:/ (fetched, loaded, the download not kept)."""
    import torch

    from lare.eval.inference import fetch_model
    from lare.model import LaReModel

    with tempfile.TemporaryDirectory(prefix="lare-serve-") as tmp:
        model = LaReModel.from_pretrained(fetch_model(spec, Path(tmp), tracking_uri or None))
    return model.to("cuda" if torch.cuda.is_available() else "cpu").eval()


@serve.deployment(name="LaReServer", max_ongoing_requests=32)
@serve.ingress(api)
class LaReServer:
    def __init__(self, model: str, name: str = "", **options):
        options = {**DEFAULTS, **options}
        self.model = load_model(model, options["tracking_uri"])
        self.name = name or Path(str(model).rstrip("/")).name or "lare"
        self.limits = Limits(max_tokens=options["max_tokens_limit"], max_image_bytes=options["max_image_bytes"],
                             max_pixels=options["max_pixels"], image_root=options["image_root"])
        self.max_body_bytes = options["max_body_bytes"]
        self.generate_batch.set_max_batch_size(options["max_batch_size"])
        self.generate_batch.set_batch_wait_timeout_s(options["batch_wait_timeout_s"])
        self.batch_sizes: list[int] = []  # the sizes of the batched generations so far (observable in /healthz)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.05)
    async def generate_batch(self, requests: "list[ChatRequest]"):
        """One generation for the requests that arrived together (one per distinct max_tokens: a budget is per call)."""
        self.batch_sizes.append(len(requests))
        answers = [None] * len(requests)
        for budget in dict.fromkeys(r.max_tokens for r in requests):
            index = [i for i, r in enumerate(requests) if r.max_tokens == budget]
            group = [requests[i] for i in index]
            choices = [r.choices for r in group] if any(r.choices for r in group) else None
            # The model runs in a thread: the replica's event loop keeps taking requests meanwhile.
            out = await asyncio.to_thread(self.model.answer, [r.image for r in group], [r.question for r in group],
                                          choices, max_new_tokens=budget)
            for i, a in zip(index, out):
                answers[i] = a
        return answers

    async def _answer(self, request: Request):
        body = await request.body()
        if len(body) > self.max_body_bytes:
            raise RequestError(413, f"the request body is over {self.max_body_bytes} bytes")
        try:
            payload = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise RequestError(400, "the request body is not JSON") from None
        chat = parse_chat_request(payload, self.limits)
        return chat, await self.generate_batch(chat)

    @api.post("/v1/chat/completions")
    async def chat_completions(self, request: Request):
        chat, answer = await self._answer(request)
        return JSONResponse(chat_response(answer, self.name, chat.refocus))

    @api.post("/v1/refocus.png")
    async def refocus_png(self, request: Request):
        from lare.eval.plots import refocus_figure

        chat, answer = await self._answer(request)
        steps = [vars(step) for step in answer.refocus]
        png = await asyncio.to_thread(refocus_figure, chat.image, steps, f"{chat.question} -> {answer.answer}")
        return Response(png, media_type="image/png")

    @api.get("/v1/models")
    def models(self):
        return {"object": "list", "data": [{"id": self.name, "object": "model", "owned_by": "lare",
                                            "lare": {"paradigm": self.model.paradigm}}]}

    @api.get("/healthz")
    def healthz(self):
        return {"status": "ok", "model": self.name, "paradigm": self.model.paradigm, "batch_sizes": self.batch_sizes[-50:]}

    @api.get("/", response_class=HTMLResponse)
    def page(self):
        return HTMLResponse(PAGE.read_text())


def app_builder(args: dict):
    """The application from its args (DEFAULTS lists the options beside `model` and `name`)."""
    args = dict(args)
    if not args.get("model"):
        raise ValueError("app_builder: args.model (a LaRe export folder, s3://, runs:/ or models:/) is required")
    unknown = sorted(set(args) - set(DEFAULTS) - {"model", "name"})
    if unknown:
        raise ValueError(f"app_builder: unknown args {unknown}; known: model, name, {', '.join(DEFAULTS)}")
    options = {**DEFAULTS, **args}
    deployment = LaReServer.options(num_replicas=int(options["num_replicas"]),
                                    ray_actor_options={"num_gpus": float(options["num_gpus"]), "num_cpus": 1})
    return deployment.bind(**{k: v for k, v in options.items() if k not in ("num_replicas", "num_gpus")})
