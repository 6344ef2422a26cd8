"""The champion in BentoML's model store, and swapping models in a running service.

``nbo promote`` copies the MLflow champion's folder (model and serving context) into the
BentoML model store as ``nbo-ranker``, labelled with its MLflow version, so ``bentoml build``
packs it into a self-contained Bento. The service serves the newest entry and looks for a newer
one every ``NBO_RELOAD_SECONDS``; a model that fails to load or to score is refused and the
previous one keeps serving.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import bentoml
from bentoml._internal.configuration.containers import BentoMLContainer

from features.context import DATASET_FILE, read_into
from serving.arbitration import Arbiter
from serving.assignment import CONTROL
from serving.decision_log import Assigned
from serving.engine import Engine, Letter, PolicySettings, RequestError
from serving.experiments import Arm, Experiment
from serving.metrics import METRICS
from serving.offer_policy import NEUTRAL, PolicyError, Versioned
from serving.offer_policy import load as load_policy
from serving.offer_policy import parse as parse_policy
from serving.store import Store

MODEL_NAME = "nbo-ranker"
FILES = "nbo_files"  # metadata: the digest of every file the entry was imported with
CURRENT: ModelHolder | None = None  # the holder of this worker's service, for /readyz
log = logging.getLogger("nbo.serving")


def import_model(folder: Path, version: str, name: str = MODEL_NAME) -> str:
    """Copy a saved model folder into the BentoML model store (as the champion, or under
    another ``name``: an experiment's arm); returns the new tag."""
    if not (folder / "model.json").exists():
        raise FileNotFoundError(f"{folder}: not a saved nbo model (no model.json)")
    labels = {"mlflow_version": version}
    # BentoML copies the entry into its store in place: the digests, in the entry's own
    # model.yaml, let the service refuse an entry whose copy was cut short
    metadata = {"imported_at": datetime.now(UTC).isoformat(), FILES: digests(folder)}
    with bentoml.models.create(name, labels=labels, metadata=metadata) as entry:
        shutil.copytree(folder, entry.path, dirs_exist_ok=True)
    return str(entry.tag)


def digests(folder: Path) -> dict[str, str]:
    """SHA-256 of every file under ``folder``, by its path there."""
    return {path.relative_to(folder).as_posix(): read_into(hashlib.sha256(), path).hexdigest()
            for path in sorted(p for p in folder.rglob("*") if p.is_file())}


def verify(entry: bentoml.Model) -> None:
    """Raise unless every file the entry was imported with is there, unchanged (entries
    imported before digests were recorded are taken as they are)."""
    expected = entry.info.metadata.get(FILES)
    if expected is None:
        return
    if not isinstance(expected, dict):
        raise ValueError(f"the store entry's {FILES} is not a mapping of files to digests")
    found = digests(Path(entry.path))
    broken = sorted(name for name, digest in expected.items() if found.get(name) != digest)
    if broken:
        raise ValueError(f"the store entry is incomplete or changed: {len(broken)} of "
                         f"{len(expected)} files missing or different ({', '.join(broken[:3])})")


def newest(tag: str) -> bentoml.Model:
    """The store entry for ``tag``; ``name:latest`` is the most recently imported."""
    return bentoml.models.get(tag)


def candidates(tag: str) -> tuple[list[bentoml.Model], dict[str, str]]:
    """The entries ``tag`` may serve, newest first: every entry of its name for
    ``name:latest`` (or a bare name), else the one entry it names; and the entries that
    cannot even be read (a copy cut short before its model.yaml), with why."""
    name, _, version = tag.partition(":")
    if version and version != "latest":
        versions = [version]
    else:
        folder = Path(BentoMLContainer.bentoml_home.get()) / "models" / name.lower()
        versions = [p.name for p in folder.iterdir() if p.is_dir()] if folder.is_dir() else []
    entries, unreadable = [], {}
    for found in versions:
        try:
            entries.append(bentoml.models.get(f"{name}:{found}"))
        except bentoml.exceptions.NotFound:
            continue
        except bentoml.exceptions.BentoMLException as error:
            unreadable[f"{name}:{found}"] = f"{type(error).__name__}: {error}"
    return sorted(entries, key=lambda m: m.info.creation_time, reverse=True), unreadable


@dataclass(frozen=True)
class Built:
    bento: str  # the Bento's tag
    models: list[str]  # the model store entries it carries
    exported: Path | None  # the archive, model included, when one was written


def build_bento(project: Path, tag: str, export: Path | None = None) -> Built:
    """``bentoml build`` of ``project``'s bentofile.yaml, with the model store's ``tag`` in it;
    ``export`` also writes the Bento as one archive that carries the model."""
    bentofile = project / "bentofile.yaml"
    if not bentofile.exists():
        raise FileNotFoundError(f"{bentofile} is missing: build from a checkout of the project")
    try:
        model = newest(tag)
    except bentoml.exceptions.NotFound:
        raise LookupError(f"no model {tag} in the BentoML store; run 'nbo promote' first"
                          ) from None
    bento = bentoml.bentos.build_bentofile(str(bentofile), build_ctx=str(project))
    carried = [str(m.tag) for m in bento.info.all_models]
    if str(model.tag) not in carried:
        raise RuntimeError(f"the Bento {bento.tag} carries {carried}, not {model.tag}")
    exported = Path(bentoml.export_bento(bento.tag, str(export))) if export else None
    return Built(str(bento.tag), carried, exported)


@dataclass
class Status:
    """What /readyz reports."""

    serving: str | None = None  # BentoML tag of the engine in use
    version: str | None = None  # its MLflow version
    since: str | None = None
    refused: dict[str, str] = field(default_factory=dict)  # tag -> why
    passed_over: list[str] = field(default_factory=list)  # newer entries refused
    checked_seconds: float | None = None  # the health check of every customer
    experiment: str | None = None  # the running experiment served here
    experiment_refused: dict[str, str] = field(default_factory=dict)  # name -> why not


@dataclass(frozen=True)
class Running:
    """The running experiment and the engine of each arm (the champion's where an arm
    serves the champion's version)."""

    experiment: Experiment
    engines: dict[str, Engine]
    champion: str | None  # the champion's tag the engines were chosen with


class ModelHolder:
    """Holds the engine in use; a request takes one reference and keeps it to the end, so
    a swap never changes the model under a request in flight."""

    def __init__(self, tag: str, store: Store, settings: PolicySettings,
                 allow_other_dataset: bool = False) -> None:
        self.tag, self.store, self.settings = tag, store, settings
        self.allow_other_dataset = allow_other_dataset
        self.status = Status()
        self.engine: Engine | None = None
        self.policy: Versioned = NEUTRAL  # the offer policy every engine ranks with
        self._policy_id = 0  # the store's row of it (0: none)
        self._erasures = -1  # erasures the engine in use has forgotten
        self.running: Running | None = None
        # by store tag and policy variant, kept while an arm serves them
        self._arm_engines: dict[tuple[str, str], Engine] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()

    def serving(self) -> Engine:
        """The champion's engine; a 503 refusal while nothing is loaded."""
        engine = self.engine
        if engine is None:
            raise RequestError("no model is loaded yet; promote one with 'nbo promote'", 503)
        return engine

    def route(self, customer_id: str, now: datetime) -> tuple[Engine, Assigned | None]:
        """The engine that answers the customer and their experiment arm: the champion and
        none for the universal control group and while no experiment runs."""
        engine, running = self.serving(), self.running
        if running is None:
            return engine, None
        if engine.settings.control.arm(customer_id, now) == CONTROL:
            return engine, None
        arm = running.experiment.arm_of(customer_id)
        return running.engines[arm.name], (running.experiment.name, arm.name)

    def letters(self, customers: list[str], blocks: tuple[str, ...], at: datetime
                ) -> tuple[list[Letter], dict[str, Assigned], dict[str, str]]:
        """Letters of customers, each written by the engine of their experiment arm, in the
        order asked; with each customer's arm and the model version that wrote their
        letter."""
        groups: dict[int, tuple[Engine, list[str]]] = {}
        assigned: dict[str, Assigned] = {}
        for customer_id in customers:
            engine, arm = self.route(customer_id, at)
            groups.setdefault(id(engine), (engine, []))[1].append(customer_id)
            if arm is not None:
                assigned[customer_id] = arm
        letters, versions = {}, {}
        for engine, group in groups.values():
            for letter in engine.newsletter(group, blocks, at):
                letters[letter.customer_id] = letter
                versions[letter.customer_id] = engine.version
        return [letters[c] for c in dict.fromkeys(customers)], assigned, versions

    def engines(self, of_the_policy: bool = False) -> list[Engine]:
        """Every engine serving here: the champion's and the running experiment's arms'
        (``of_the_policy``: only those ranking with the offer policy in use, not an arm's
        variant)."""
        held = [self.engine] if self.engine is not None else []
        running = self.running
        if running is not None:
            variants = {a.name for a in running.experiment.arms if a.policy}
            held += [e for name, e in running.engines.items()
                     if all(e is not h for h in held)
                     and not (of_the_policy and name in variants)]
        return held

    def sync_experiment(self) -> str | None:
        """Serve the store's running experiment (none: stop serving one), loading the arms'
        models that are not the champion's. An arm that cannot be served keeps the whole
        experiment from serving here (every customer gets the champion, logged under no
        experiment) and is said in the status. Returns the experiment served."""
        experiment = self.store.running_experiment()
        with self._lock:
            running = self.running
            if experiment is None or self.engine is None:
                self.running, self._arm_engines = None, {}
                self.status.experiment = None
                return None
            if (running is not None and running.experiment == experiment
                    and running.champion == self.status.serving):
                return experiment.name
            if experiment.name in self.status.experiment_refused:
                return None
            try:
                engines = {arm.name: self._engine_of(arm) for arm in experiment.arms}
            except Exception as error:  # the experiment waits; the champion keeps serving
                why = f"{type(error).__name__}: {error}"
                self.status.experiment_refused[experiment.name] = why
                log.error("experiment %s is not served: %s", experiment.name, why)
                self.running = None
                return None
            in_use = {(arm.model, arm.policy) for arm in experiment.arms}
            self._arm_engines = {k: e for k, e in self._arm_engines.items() if k in in_use}
            self.running = Running(experiment, engines, self.status.serving)
            self.status.experiment = experiment.name
            log.info("serving experiment %s: %s", experiment.name, ", ".join(
                f"{a.name} {a.share:g}% version {a.model_version}"
                + (" with its own policy" if a.policy else "") for a in experiment.arms))
            return experiment.name

    def _engine_of(self, arm: Arm) -> Engine:
        """The champion's engine for an arm of its version and policy, else one of the
        arm's own (loaded once per model and policy variant)."""
        if not arm.policy and arm.model_version == self.status.version and self.engine:
            return self.engine
        key = (arm.model, arm.policy)
        if key not in self._arm_engines:
            entry = bentoml.models.get(arm.model)
            verify(entry)
            engine = Engine.load(Path(entry.path), arm.model_version, self.store,
                                 self.settings)
            engine.use_policy(parse_policy(arm.policy, f"arm {arm.name}'s offer policy")
                              if arm.policy else self.policy)
            self._arm_engines[key] = engine
        return self._arm_engines[key]

    def refresh(self) -> str:
        """Load the newest model that loads and passes its check, unless the one in use is
        newer; says what it did. A refused entry is not tried again; while nothing serves,
        older entries are tried in turn, so a broken newest model never keeps a service
        with good older ones from starting."""
        with self._lock:
            entries, unreadable = candidates(self.tag)
            for tag, why in unreadable.items():
                if tag not in self.status.refused:
                    self._refuse(tag, why)
            if not entries:
                return f"no model {self.tag} in the BentoML store; run 'nbo promote'"
            said = []
            for at, entry in enumerate(entries):
                tag, newer = str(entry.tag), [str(e.tag) for e in entries[:at]]
                if tag == self.status.serving:
                    self.status.passed_over = newer
                    said.append(f"already serving {tag}")
                    break
                if tag in self.status.refused:
                    said.append(f"{tag} was refused: {self.status.refused[tag]}")
                    continue
                if self._load(entry):
                    self.status.passed_over = newer
                    said.append(f"serving {tag} (version {self.status.version})"
                                + (f", not the newer {', '.join(newer)}" if newer else ""))
                    break
                said.append(f"refused {tag}: {self.status.refused[tag]}")
            return "; ".join(said)

    def _load(self, entry: bentoml.Model) -> bool:
        """Load and check one store entry and serve it; False (and refused) if it fails."""
        tag = str(entry.tag)
        version = str(entry.info.labels.get("mlflow_version", entry.tag.version))
        erasures = self.store.erasure_count()  # the load forgets these
        try:
            verify(entry)
            self._check_dataset(Path(entry.path))
            engine = Engine.load(Path(entry.path), version, self.store, self.settings)
            engine.use_policy(self.policy)  # a model the policy does not fit is refused
        except Exception as error:  # any failure refuses the model, never the service
            self._refuse(tag, f"{type(error).__name__}: {error}")
            return False
        # an erasure recorded while the model loaded is forgotten before it serves (and
        # every request checks the store for erasures in any case)
        self._erasures = self.store.erasure_count()
        if self._erasures != erasures:
            engine.forget_erased()
        self.engine = engine
        self.status.serving, self.status.version = tag, version
        self.status.since = datetime.now(UTC).isoformat(timespec="seconds")
        self.status.checked_seconds = round(engine.checked_seconds, 3)
        METRICS.reloads.labels(outcome="loaded").inc()
        log.info("serving model %s (version %s), every customer checked in %.2f s", tag,
                 version, engine.checked_seconds)
        return True

    # --- the offer policy -------------------------------------------------------------

    def put_policy(self, versioned: Versioned, source: str) -> Versioned:
        """Check a policy against the engine in use, make it the store's (so every worker
        and replica takes it up within ``NBO_RELOAD_SECONDS``) and rank with it here from
        the next request on. A policy that does not fit raises :class:`PolicyError`."""
        with self._lock:
            engine = self.engine
            if engine is not None:
                Arbiter(versioned, engine.offers, engine.calibration)  # refuses before storing
            at = datetime.now(UTC).replace(tzinfo=None)
            self._policy_id = self.store.put_policy(versioned.version, versioned.text, source,
                                                    at)
            self.policy = versioned
            for serving in self.engines(of_the_policy=True):
                serving.use_policy(versioned)
            log.info("offer policy %s in use (from %s)", versioned.version, source)
            return versioned

    def offer_policy_file(self, path: Path) -> Versioned:
        """The policy file read again: put into the store when its text differs from the
        policy in use there; bad files raise :class:`PolicyError`."""
        versioned = load_policy(path)
        held = self.store.current_policy()
        if held is not None and held.text == versioned.text:
            self.sync_policy()
            return versioned
        return self.put_policy(versioned, f"file {path.name}"[:64])

    def sync_policy(self) -> str:
        """Take up the store's policy where another worker or replica changed it."""
        held = self.store.current_policy()
        if held is None or held.id == self._policy_id:
            return self.policy.version
        with self._lock:
            try:
                versioned = parse_policy(held.text, f"stored policy {held.version}")
                for serving in self.engines(of_the_policy=True):
                    serving.use_policy(versioned)
            except PolicyError as error:  # stays on the policy in use; said on every poll
                log.error("the store's offer policy %s cannot be used: %s", held.version,
                          error)
                return self.policy.version
            self.policy, self._policy_id = versioned, held.id
            log.info("offer policy %s in use (from the store)", versioned.version)
            return versioned.version

    def _refuse(self, tag: str, why: str) -> None:
        self.status.refused[tag] = why
        METRICS.reloads.labels(outcome="refused").inc()
        log.error("refused model %s: %s", tag, why)

    def _check_dataset(self, folder: Path) -> None:
        """Refuse a model of another dataset than the store serves (its consents would be
        seeded into this store and its offers shown to this store's customers), unless
        NBO_ALLOW_OTHER_DATASET says so. Models saved before the record are let through."""
        record = folder / DATASET_FILE
        if not record.exists():
            return
        dataset = str(json.loads(record.read_text())["dataset"])
        bound = self.store.bind_dataset(dataset)
        if bound != dataset and not self.allow_other_dataset:
            raise ValueError(f"trained on dataset {dataset!r}, but this service's store "
                             f"serves {bound!r}: give it its own store (NBO_CONSENT_DB_URL), "
                             "or set NBO_ALLOW_OTHER_DATASET=true")

    def sweep_erasures(self) -> int:
        """Forget the customers erased through other workers or replicas since the last
        sweep: their requests are answered as erased already (the store is asked on every
        request); this frees what the engine still holds of them. Returns how many
        erasures the store has recorded."""
        count = self.store.erasure_count()
        if count != self._erasures:
            for engine in self.engines():
                engine.forget_erased()
            self._erasures = count
        return count

    def watch(self, seconds: float) -> None:
        """Look for a newer model every ``seconds`` in a daemon thread."""
        if seconds <= 0:
            return

        def loop() -> None:
            while not self._stop.wait(seconds):
                try:
                    self.sync_policy()
                    self.refresh()
                    self.sync_experiment()
                    self.sweep_erasures()
                except Exception:  # the watcher must outlive a broken store; logged
                    log.exception("looking for a newer model failed")

        threading.Thread(target=loop, name="nbo-model-watch", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()

