"""gptforge.services.generation: the v1 GenerationService with continuous batching.

``serve(ckpt)`` runs it until a signal; ``start``/``serve_in_background`` embed it;
``GenerationClient`` talks to it. The model runs on one engine thread (:class:`Engine`), never on
the event loop.
"""

from gptforge.services.generation.client import GenerationClient, build_request
from gptforge.services.generation.engine import Engine, EngineEvent, Job
from gptforge.services.generation.requests import GenerationLimits, parse_request
from gptforge.services.generation.server import (
    GenerationServer,
    serve,
    serve_in_background,
    start,
    warm_up,
)
from gptforge.services.generation.servicer import SERVICE_NAME, GenerationServicer

__version__ = "0.1.0"

__all__ = [
    "SERVICE_NAME",
    "Engine",
    "EngineEvent",
    "GenerationClient",
    "GenerationLimits",
    "GenerationServer",
    "GenerationServicer",
    "Job",
    "build_request",
    "parse_request",
    "serve",
    "serve_in_background",
    "start",
    "warm_up",
]
