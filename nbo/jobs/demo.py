"""The demo's service process: started in the background on fresh API keys with "now"
pinned to the shop's snapshot, found again by its pid file and stopped by it."""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path

IN_DEMO = "NBO_IN_DEMO_WORKSPACE"  # set once this process works in the demo's workspace
POLICY = Path(__file__).with_name("demo_policy.yaml")  # the demo's offer policy
PID_FILE = "serve.pid"
LOG_FILE = "serve.log"


class PortInUse(RuntimeError):
    pass


@dataclass(frozen=True)
class DemoService:
    url: str
    pid: int
    log: Path
    api_key: str
    admin_key: str
    now: str  # the pinned "now", ISO 8601


def use_demo_workspace() -> Path:
    """Point this process at the demo's own workspace, NBO_HOME/demo, and return it: its
    settings' home and, unless BENTOML_HOME was set by hand, its BentoML model store."""
    from features.settings import Settings

    home = Settings().home
    if os.environ.get(IN_DEMO) == str(home):  # pointed there already (one process, twice)
        return home
    demo = home / "demo"
    if os.environ.get("BENTOML_HOME") in (None, str(home.resolve() / "bentoml")):
        os.environ["BENTOML_HOME"] = str(demo.resolve() / "bentoml")
    os.environ["NBO_HOME"] = os.environ[IN_DEMO] = str(demo)
    return demo


def start_demo_service(home: Path, snapshot: Path, port: int) -> DemoService:
    """Stop a demo service started before, start one on ``port`` and wait until it is
    ready; RuntimeError (with the log's end) if it does not get there."""
    from features.snapshot import load_snapshot
    from serving import process

    stop_demo_service(home)
    if not process.port_is_free(port):
        raise PortInUse(f"port {port} is in use (another service?): pass --port")
    api_key, admin_key = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    from features.settings import Settings

    now = load_snapshot(snapshot).now.isoformat()
    erasure_key = Settings(home=home).local_erasure_key()  # the demo's, in its NBO_HOME
    env = {**os.environ, "NBO_API_KEYS": api_key, "NBO_ADMIN_API_KEYS": admin_key,
           "NBO_ERASURE_KEY": erasure_key, "NBO_NOW": now, "NBO_HOME": str(home),
           "NBO_POLICY_FILE": os.environ.get("NBO_POLICY_FILE", str(POLICY))}
    log = home / LOG_FILE
    server = process.start(port, env, log)
    (home / PID_FILE).write_text(str(server.pid))
    url = f"http://127.0.0.1:{port}"
    process.wait_ready(server, url, log)
    return DemoService(url, server.pid, log, api_key, admin_key, now)


def stop_demo_service(home: Path) -> bool:
    """Stop the demo service of ``home``; False if none was running."""
    pid_file = home / PID_FILE
    if not pid_file.exists():
        return False
    from serving.process import stop_pid

    try:  # returns once it is gone, so that a new demo service finds the port free
        stop_pid(int(pid_file.read_text()))
        stopped = True
    except (ProcessLookupError, ValueError, PermissionError):
        stopped = False
    pid_file.unlink()
    return stopped


def demo_customer(snapshot: Path, stage: str = "active") -> str:
    """A customer of ``stage`` with the most orders and e-mail consent: the ranking has
    something to show and the newsletter curl answers with blocks."""
    from features.snapshot import load_snapshot

    snap = load_snapshot(snapshot)
    state = snap.features.customer_state
    consents = snap.consents
    mailable = set(consents.loc[(consents["purpose"] == "email") & consents["granted"]
                                & consents["double_opt_in"], "customer_id"])
    denied = set(consents.loc[(consents["purpose"] == "personalization") & ~consents["granted"],
                              "customer_id"])
    ranked = state[state["lifecycle_stage"] == stage].sort_values("orders", ascending=False)
    for customer in ranked["customer_id"]:
        if customer in mailable and customer not in denied:
            return str(customer)
    return str(ranked["customer_id"].iloc[0])
