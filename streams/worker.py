"""`baton worker`: the Faust worker running every domain's agents."""

from __future__ import annotations

import asyncio
import gc

import faust
from faust.worker import Worker

from agents import conversations
from agents.classifier import AnthropicClassifier
from agents.effects import Effects
from agents.senders import LogSender, WhatsAppSender
from streams.app import create_app
from streams.settings import Settings
from streams.tenants import load_tenants
from streams.topics import ensure_topics


def build_effects(settings: Settings) -> Effects:
    """Effect worker dependencies chosen by settings: LLM classifier and WhatsApp sender when configured."""
    classifier = None
    if settings.anthropic_api_key:
        classifier = AnthropicClassifier(
            api_key=settings.anthropic_api_key.get_secret_value(),
            model=settings.classifier_model,
            timeout_s=settings.classifier_timeout_s,
            base_url=settings.anthropic_base_url,
            input_usd_per_mtok=settings.classifier_input_usd_per_mtok,
            output_usd_per_mtok=settings.classifier_output_usd_per_mtok,
        )
    if settings.whatsapp_access_token:
        sender = WhatsAppSender(
            access_token=settings.whatsapp_access_token.get_secret_value(),
            api_base=settings.whatsapp_api_base,
            timeout_s=settings.whatsapp_timeout_s,
        )
    else:
        sender = LogSender()
    return Effects(tenants=load_tenants(settings.tenants_file), sender=sender, classifier=classifier)


def build_worker_app(settings: Settings) -> faust.App:
    """The Faust app with every agent registered."""
    app = create_app(settings)
    conversations.register(app, settings, build_effects(settings))
    return app


def tune_gc(app: faust.App) -> None:
    """Freeze start-up objects and collect less often: decoding states allocates many short-lived objects."""

    @app.task
    async def freeze_after_start() -> None:
        gc.collect()
        gc.freeze()
        gc.set_threshold(50_000, 50, 100)


def run_worker(settings: Settings) -> None:
    """Create topics, then run the worker until SIGINT/SIGTERM."""
    asyncio.run(ensure_topics(settings))
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    asyncio.set_event_loop(asyncio.new_event_loop())
    app = build_worker_app(settings)
    tune_gc(app)
    Worker(app, loglevel=settings.log_level, quiet=True, redirect_stdouts=False).execute_from_commandline()
