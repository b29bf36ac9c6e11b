"""compose.yaml cannot run here (no Docker engine): parse it and check the wiring instead."""

from __future__ import annotations

from pathlib import Path

import yaml

COMPOSE = Path(__file__).resolve().parents[1] / "compose.yaml"


def test_compose_wiring() -> None:
    doc = yaml.safe_load(COMPOSE.read_text())
    services = doc["services"]
    qdrant = services["qdrant"]
    assert "6333:6333" in qdrant["ports"]
    assert "healthcheck" in qdrant
    indexer = services["indexer"]
    env = indexer["environment"]
    assert env["TANDEM_QDRANT__URL"] == "http://qdrant:6333"
    assert env["TANDEM_QDRANT__API_KEY"].startswith("${QDRANT_API_KEY:?")
    assert indexer["depends_on"]["qdrant"]["condition"] == "service_healthy"
    for volume in (v.split(":")[0] for s in services.values() for v in s.get("volumes", [])):
        assert volume.startswith(("${", "./")) or volume in doc["volumes"]


def test_compose_api_service() -> None:
    doc = yaml.safe_load(COMPOSE.read_text())
    services = doc["services"]
    api = services["api"]
    assert api["command"][:2] == ["serve", "--prepare"] and "0.0.0.0" in api["command"]
    env = api["environment"]
    # Listening beyond loopback needs keys: compose refuses to start without them.
    assert env["TANDEM_API__KEYS"].startswith("${TANDEM_API_KEYS:?")
    assert env["TANDEM_QDRANT__URL"] == "http://qdrant:6333"
    assert env["TANDEM_STORAGE__S3_ENDPOINT_URL"] == "http://minio:9000"
    assert {"qdrant", "minio"} <= set(api["depends_on"])
    assert all(
        dep["condition"] == "service_healthy" for name, dep in api["depends_on"].items() if name != "ollama-pull"
    )
    assert "/readyz" in " ".join(api["healthcheck"]["test"])
    assert "8000:8000" in api["ports"]
    # Every ${VAR:?...} names what to set.
    for service in services.values():
        for value in (service.get("environment") or {}).values():
            if ":?" in str(value):
                assert str(value).split(":?", 1)[1].rstrip("}").strip()


def test_compose_shares_chat_sessions_through_redis() -> None:
    from api.settings import SessionSettings

    doc = yaml.safe_load(COMPOSE.read_text())
    services = doc["services"]
    redis, api = services["redis"], services["api"]
    assert redis["image"].startswith("redis:7")
    assert redis["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]
    assert "ports" not in redis  # only the API reaches it
    command = redis["command"]
    assert command[command.index("--save") + 1] == "" and command[command.index("--appendonly") + 1] == "no"
    sessions = SessionSettings(url=api["environment"]["TANDEM_SESSIONS__URL"])
    assert sessions.url is not None and sessions.url.get_secret_value() == "redis://redis:6379/0"
    assert api["depends_on"]["redis"]["condition"] == "service_healthy"


def _defaults(text: str) -> str:
    """Substitute ``${VAR:-default}`` with its default, as compose does when VAR is unset."""
    import re

    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", text)


def test_compose_llm_workers_are_wired_to_the_api() -> None:
    import json

    from api.settings import LlmSettings
    from prompts import load_chat_template

    doc = yaml.safe_load(COMPOSE.read_text())
    services = doc["services"]
    vllm, ollama, api = services["vllm"], services["ollama"], services["api"]
    args = [_defaults(a) for a in vllm["command"]]
    flag = {a: args[i + 1] for i, a in enumerate(args[:-1]) if a.startswith("--")}
    assert "--enable-lora" in args and "--enable-auto-tool-choice" in args
    # The tool-call parser must read what the chat template writes.
    assert flag["--tool-call-parser"] == "hermes" and "<tool_call>" in load_chat_template()
    adapter_name, adapter_dir = flag["--lora-modules"].split("=")
    # By default the adapter shipped in the repo, with Tandem's chat template (the format it was trained on).
    root = COMPOSE.parent
    mounts = dict(v.split(":")[:2][::-1] for v in vllm["volumes"])
    assert adapter_dir == "/tandem/artifacts/tandem-ranker" and mounts["/tandem/artifacts"] == "./artifacts"
    assert (root / "artifacts" / "tandem-ranker" / "adapter_config.json").is_file()
    assert flag["--chat-template"] == "/tandem/prompts/chat_template.jinja" and mounts["/tandem/prompts"] == "./prompts"
    served_base = json.loads((root / "artifacts" / "tandem-ranker" / "adapter_config.json").read_text())
    assert served_base["base_model_name_or_path"] == flag["--model"]  # the adapter's own base
    # A ranker-trainer adapter lands where `tandem train ranker` writes it inside the shared volume.
    assert "tandem-data:/data:ro" in vllm["volumes"] and "TANDEM_HOME=/data" in (root / "Dockerfile").read_text()
    trainer = services["ranker-trainer"]
    assert trainer["command"][:2] == ["train", "ranker"] and "tandem-data:/data" in trainer["volumes"]

    env = {k: _defaults(str(v)) for k, v in api["environment"].items()}
    llm = LlmSettings.model_validate(
        {
            "workers": json.loads(env["TANDEM_LLM__WORKERS"]),
            "ranker_model": env["TANDEM_LLM__RANKER_MODEL"],
            "explainer_model": env["TANDEM_LLM__EXPLAINER_MODEL"],
        }
    )
    by_name = {w.name: w for w in llm.workers}
    assert by_name["vllm"].url == f"http://vllm:{flag['--port']}/v1"
    assert llm.ranker_model == adapter_name and adapter_name in by_name["vllm"].models
    assert flag["--served-model-name"] in by_name["vllm"].models
    pulled = _defaults(services["ollama-pull"]["entrypoint"][-1])
    assert by_name["ollama"].url == "http://ollama:11434/v1" and "11434:11434" in ollama["ports"]
    assert llm.explainer_model == pulled and pulled in by_name["ollama"].models
    assert by_name["ollama"].health_url == "http://ollama:11434/api/version"
    needs = api["depends_on"]
    assert needs["vllm"]["condition"] == needs["ollama"]["condition"] == "service_healthy"
    assert needs["ollama-pull"]["condition"] == "service_completed_successfully"
    for name in ("vllm", "ollama"):
        assert services[name]["healthcheck"]["test"]
    assert vllm["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
