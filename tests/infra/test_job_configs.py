"""Every RayJob's entrypoint is a stage run that works: rendered with the sample `terraform output -json`,
its `--config` loads with its overrides through orchestration.config.load_config (an unknown key fails),
every s3:// URI the stage will touch is in a bucket its IRSA role reaches, and the stages connect: what
one writes is what the next one reads."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
import yaml

from orchestration.config import ConfigError, flatten, load_config, parse_overrides, to_dict

REPO = Path(__file__).resolve().parents[2]
JOBS = sorted(p.stem for p in (REPO / "infra" / "k8s" / "jobs").glob("*.yaml"))
CHAIN_CONFIG = REPO / "configs" / "chain" / "full_7b.yaml"
FINGERPRINTS = {"pretrain_fingerprint": "0123456789abcdef", "instruct_fingerprint": "fedcba9876543210"}
WRITTEN = ("out", "root", "storage_path")  # config keys (last part) naming where a stage writes
TRAIN_STAGES = ("vl_stage1", "vl_stage2", "al_stage1", "al_stage2")


@pytest.fixture(scope="module")
def rendered(render, sample_outputs, tmp_path_factory) -> dict[str, dict]:
    """Each RayJob after `render.py --set pretrain_fingerprint=... --set instruct_fingerprint=...`."""
    out = tmp_path_factory.mktemp("k8s")
    values = render.parse_run_values([f"{k}={v}" for k, v in FINGERPRINTS.items()])
    render.render_tree(sample_outputs, out, values=values)
    return {p.stem: yaml.safe_load(p.read_text()) for p in (out / "jobs").glob("*.yaml")}


def _entrypoint(job: dict) -> tuple[str, str, list[str]]:
    """(script, config, overrides), split as the job's shell splits the entrypoint."""
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[0] == "python" and argv[2] == "--config", argv
    return argv[1], argv[3], argv[4:]


def _load(job: dict):
    _, config, overrides = _entrypoint(job)
    return load_config(None, REPO / config, overrides)


def _chain_pending(name: str) -> None:
    if name == "chain" and not CHAIN_CONFIG.exists():
        pytest.skip(
            "configs/chain/full_7b.yaml does not exist yet; it lands with jobs/chain.py and orchestration/chain.py"
        )


def _same(a, b) -> bool:
    """Config values after a round trip: tuples and lists compare equal."""
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


@pytest.mark.parametrize("name", JOBS)
def test_entrypoint_loads_its_config_and_every_override_takes(name, rendered):
    _chain_pending(name)
    script, config, overrides = _entrypoint(rendered[name])
    assert (REPO / script).is_file() and (REPO / config).is_file(), (script, config)
    cfg = load_config(None, REPO / config, overrides)  # raises ConfigError on an unknown key or a bad value
    loaded = flatten(to_dict(cfg, redact=False))
    for key, value in flatten(parse_overrides(overrides)).items():
        assert _same(loaded[key], value), f"{name}: {key}={value!r} loaded as {loaded[key]!r}"
    with pytest.raises(ConfigError, match="unknown key"):  # the check has teeth: a misspelt key fails
        load_config(None, REPO / config, [*overrides, "outptu=s3://x"])


@pytest.mark.parametrize("name", JOBS)
def test_every_s3_uri_is_in_a_bucket_the_stage_role_reaches(name, rendered, sample_outputs, irsa_roles):
    """The YAML's own defaults (s3://vllama-media/...) are examples: every one must be overridden."""
    _chain_pending(name)
    head = rendered[name]["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    role = irsa_roles[head["serviceAccountName"]]
    bucket = {kind: sample_outputs[f"{kind}_bucket"]["value"] for kind in ("media", "features", "checkpoints")}
    values = flatten(to_dict(_load(rendered[name]), redact=False))
    uris = {
        key: uri
        for key, value in values.items()
        for uri in (value if isinstance(value, list | tuple) else [value])
        if isinstance(uri, str) and uri.startswith("s3://")
    }
    assert uris, name
    readable = {bucket[k] for k in role["read"] | role["write"]}
    writable = {bucket[k] for k in role["write"]}
    for key, uri in uris.items():
        where = uri.split("/")[2]
        assert where in readable, f"{name}: {key}={uri} is outside the role's buckets {sorted(readable)}"
        if key.rsplit(".", 1)[-1] in WRITTEN:
            assert where in writable, f"{name}: {key}={uri} is written, but the role may only read it"


def test_each_stage_reads_what_the_one_before_wrote(rendered):
    from model.config import model_size
    from orchestration.checkpointing import export_paths  # imports torch: only here

    cfg = {name: _load(job) for name, job in rendered.items() if name != "chain"}
    webvid, webvid_val = cfg["ingest-webvid"].out, cfg["ingest-webvid-val"].out
    instruct = cfg["ingest-instruct"]
    assert instruct.videochat.webvid_shards == (webvid,)  # VideoChat-11K's clips come out of the WebVid shards

    pretrain, tuned = cfg["extract-features"], cfg["extract-features-instruct"]
    assert pretrain.sources == {
        "webvid": webvid,
        "webvid_val": webvid_val,
        "llava_cc3m": cfg["ingest-llava595k"].llava595k.out,
    }
    assert tuned.sources == {s: getattr(instruct, s).out for s in ("cc_sbu_align", "llava_instruct", "videochat")}

    for stage in TRAIN_STAGES:
        train = cfg[f"train-{stage.replace('_', '-')}"]
        extract, fingerprint = (
            (pretrain, FINGERPRINTS["pretrain_fingerprint"])
            if stage.endswith("1")
            else (tuned, FINGERPRINTS["instruct_fingerprint"])
        )
        assert train.data.store == f"{extract.root}/{fingerprint}", stage
        # every dataset the stage mixes or evaluates on is one the extraction writes into that store
        assert {d.name for d in (*train.data.train, *train.data.val)} <= set(extract.sources), stage
        if stage.endswith("2"):  # stage 2 starts from the .pth its branch's stage 1 exports
            first = cfg[f"train-{stage[:2]}-stage1"]
            assert train.model.init == (export_paths(first.run_dir, first.model.branch, model_size("7b"))["pth"],)
            assert train.storage_path == first.storage_path and train.model.llm == first.model.llm


def test_cc3m_jobs_set_albumentations_quiet(rendered):
    """img2dataset imports albumentations, which asks PyPI for updates unless told not to; nodes have no PyPI."""
    for name, job in rendered.items():
        env = yaml.safe_load(job["spec"]["runtimeEnvYAML"])["env_vars"]
        imports_img2dataset = name in ("ingest-cc3m", "chain")
        assert (env.get("NO_ALBUMENTATIONS_UPDATE") == "1") == imports_img2dataset, name


def test_the_chain_uses_the_prefixes_of_the_stage_jobs(rendered):
    """Stage by stage or as one chain, the runs read and write the same places (and skip each other's work)."""
    _chain_pending("chain")
    chain = flatten(to_dict(_load(rendered["chain"]), redact=False))
    cfg = {name: _load(rendered[name]) for name in ("ingest-webvid", "extract-features", "train-vl-stage1")}
    assert cfg["ingest-webvid"].csv == f"{chain['inputs']}/webvid/results_2M_train.csv"
    assert cfg["ingest-webvid"].out == f"{chain['media']}/webvid"
    assert cfg["extract-features"].root == chain["features"]
    assert cfg["extract-features"].encoders.weights == f"{chain['models']}/encoders"
    assert cfg["train-vl-stage1"].storage_path == chain["runs"]
    assert cfg["train-vl-stage1"].model.llm == f"{chain['models']}/llama-2-7b-chat-hf"
