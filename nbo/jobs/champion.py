"""The champion: published to BentoML's model store for the service, or loaded as the
service loads it for looking at what a customer is served."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from features.settings import Settings
    from serving.engine import Engine


def publish_champion(client: Any) -> str:
    """Copy the champion (model and serving context) into BentoML's model store; its tag."""
    from serving.models import import_model
    from training.tracking import registered_folder

    with tempfile.TemporaryDirectory() as tmp:
        folder, version = registered_folder(client, into=Path(tmp))
        return import_model(folder, version)


def champion_engine(client: Any, settings: Settings, into: Path, local: bool = False
                    ) -> Engine:
    """The champion with its serving context and the consent store, as the service has it;
    the registered model is copied into ``into``. ``local``: the store may use the key in
    NBO_HOME (see :func:`serving.store.open_store`)."""
    from serving.engine import Engine, PolicySettings
    from serving.store import open_store
    from training.tracking import CHAMPION, registered_folder

    folder, version = registered_folder(client, CHAMPION, into)
    store = open_store(settings, local)
    return Engine.load(folder, version, store, PolicySettings.from_settings(settings))
