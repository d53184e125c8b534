"""The typed config of one training stage (configs/train/<stage>_<size>.yaml).

Defaults are the reference recipe's VL stage 1 (DAMO-NLP-SG/Video-LLaMA
`train_configs/visionbranch_stage1_pretrain.yaml`); each YAML under configs/train/ sets what its
stage changes. A run lives in `{storage_path}/{name}/`: Ray Train's checkpoints, the exported `.pth`
and, by default, the MLflow store. Re-running with the same name and storage path resumes it.
"""

from __future__ import annotations

from dataclasses import field
from typing import Literal

from pipelines import storage as storage_lib
from pipelines.config import config_dataclass
from pipelines.storage import StorageConfig

Branch = Literal["vl", "al"]
# How a dataset's samples become token sequences (orchestration/samples.py):
#   caption       stage 1: [BOS] + media + caption + '\n' (WebVid, CC595K)
#   prompted      stage 2 image-caption pairs (cc_sbu_align): a random alignment prompt in the template,
#                 the caption as the answer
#   conversation  stage 2 instruction data: the sample's json `conversations` (LLaVA) or `QA` (VideoChat)
TextKind = Literal["caption", "prompted", "conversation"]

# Video-LLaMA prompts/alignment_image.txt, the stage-2 prompts for image-caption pairs.
ALIGNMENT_PROMPTS = (
    "<Image><ImageHere></Image> Describe this image in detail.",
    "<Image><ImageHere></Image> Take a look at this image and describe what you notice.",
    "<Image><ImageHere></Image> Please provide a detailed description of the picture.",
    "<Image><ImageHere></Image> Could you describe the contents of this image for me?",
)


@config_dataclass
class DatasetConfig:
    name: str  # the dataset's folder in the feature store: webvid, llava_cc3m, cc_sbu_align, ...
    # Sampling weight: each step's batch comes from ONE dataset, drawn with these weights (the
    # original's `sample_ratio`: WebVid 100 : CC595K 24 in stage 1; stage 2 weighs its three equally).
    ratio: float = 1.0
    text: TextKind = "caption"

    def __post_init__(self):
        if not self.name or "/" in self.name:
            raise ValueError(f"dataset name {self.name!r} must be a folder name in the feature store, e.g. webvid")
        if self.ratio <= 0:
            raise ValueError(f"dataset {self.name}: ratio must be > 0, got {self.ratio}; drop the dataset instead")


@config_dataclass
class DataConfig:
    store: str = ""  # the feature store, `{root}/{fingerprint}` as `vllama features extract` reports it
    train: tuple[DatasetConfig, ...] = ()
    val: tuple[DatasetConfig, ...] = ()  # held-out datasets (e.g. webvid_val) for the validation loss
    # Caption tokens kept, end symbol included: 32 in stage 1 (the model's default), 320 (VL) / 512 (AL)
    # for stage-2 prompted captions (the stage-2 configs' max_txt_len).
    max_txt_len: int = 32
    max_len: int = 512  # whole conversation: the original's instruct tokenizer cuts at 512 tokens
    prompts: tuple[str, ...] = ALIGNMENT_PROMPTS
    prefetch: int = 4  # batches a background thread prepares ahead of the step, per worker
    # At every checkpoint, each rank writes the keys (and passes) of the samples of the steps since the
    # previous one to {run_dir}/consumed/: which step saw what, for lineage audits and resume checks.
    record_keys: bool = False

    def __post_init__(self):
        names = [d.name for d in self.train]
        if len(set(names)) != len(names):
            raise ValueError(f"data.train names a dataset twice: {names}; give each once with its ratio")
        if self.max_txt_len < 1 or self.max_len < 1 or self.prefetch < 1:
            raise ValueError("data.max_txt_len, data.max_len and data.prefetch must be >= 1")
        bad = [p for p in self.prompts if "<ImageHere>" not in p]
        if bad:
            raise ValueError(f"data.prompts must each hold <ImageHere> where the media goes: {bad}")


@config_dataclass
class ModelConfig:
    size: str = "7b"  # model/config.py SIZES: tiny, 7b, 13b
    llm: str = ""  # HF-format LLaMA directory, local or s3:// (frozen, loaded in bf16 on GPU)
    branch: Branch = "vl"  # the branch this stage trains and reads features for (VL: vl.npy, AL: ibv.npy)
    template: Literal["vicuna", "llama2"] = "llama2"  # stage-2 prompt template; must match the LLM's family
    # Checkpoints to start from, loaded in order: our exported .pth, a released Video-LLaMA .pth, or a
    # vllama .safetensors branch file. VL stage 2 starts from VL stage 1; AL stage 2 from AL stage 1.
    init: tuple[str, ...] = ()
    # The original's VL stage 1 starts `llama_proj` from MiniGPT-4's projection (`llama_proj_model:
    # pretrained_minigpt4.pth`); a file holding `llama_proj.weight/bias`. None: random init.
    llama_proj_init: str | None = None
    # Recompute the frozen LLM's activations in backward: less activation memory for long stage-2
    # conversations, about a third more compute.
    gradient_checkpointing: bool = False

    def __post_init__(self):
        from model.config import model_size

        model_size(self.size)  # raises with the known names
        if self.llama_proj_init and self.branch != "vl":
            raise ValueError("model.llama_proj_init initialises the VL projection; it does not apply to branch 'al'")


@config_dataclass
class OptimConfig:
    init_lr: float = 1e-4  # peak lr, reached at the end of warmup
    min_lr: float = 8e-5
    warmup_lr: float = 1e-6  # lr at step 0
    warmup_steps: int = 2500
    iters_per_epoch: int = 2500  # optimizer steps per epoch; the schedule's unit
    epochs: int = 5
    weight_decay: float = 0.05  # 0 on biases, LayerNorms and < 2-d tensors (orchestration/optim.py)
    betas: tuple[float, float] = (0.9, 0.999)
    # video_llama: Video-LLaMA's optims.py (cosine over all steps); lavis: LAVIS' (cosine by epoch).
    schedule: Literal["video_llama", "lavis"] = "video_llama"

    def __post_init__(self):
        if not 0 <= self.min_lr <= self.init_lr or self.warmup_lr < 0:
            raise ValueError(f"need 0 <= min_lr <= init_lr and warmup_lr >= 0; got {self}")
        if self.iters_per_epoch < 1 or self.epochs < 1:
            raise ValueError("optim.iters_per_epoch and optim.epochs must be >= 1")
        if not 0 <= self.warmup_steps <= self.iters_per_epoch:
            raise ValueError(
                f"optim.warmup_steps={self.warmup_steps} must be within the first epoch "
                f"(<= iters_per_epoch={self.iters_per_epoch}): both original schedulers warm up in epoch 0 only"
            )

    @property
    def total_steps(self) -> int:
        return self.iters_per_epoch * self.epochs


@config_dataclass
class ScalingConfig:
    workers: int = 8  # Ray Train workers, one per GPU (the reference: 8 x A100-80G)
    use_gpu: bool = True
    cpus_per_worker: float = 4  # data reading, decoding and tokenisation run in a thread beside the step
    micro_batch: int = 32  # samples per worker per forward (the original's batch_size_train)
    grad_accum: int = 1  # forwards per optimizer step; global batch = workers x micro_batch x grad_accum

    def __post_init__(self):
        if min(self.workers, self.micro_batch, self.grad_accum) < 1 or self.cpus_per_worker <= 0:
            raise ValueError("scaling.workers, micro_batch, grad_accum must be >= 1 and cpus_per_worker > 0")

    @property
    def global_batch(self) -> int:
        return self.workers * self.micro_batch * self.grad_accum


@config_dataclass
class CheckpointConfig:
    every_steps: int = 500  # also at the end; each holds trainable weights, optimizer state, data position
    keep: int = 2  # newest checkpoints kept in storage (Ray Train's num_to_keep)
    max_failures: int = 3  # worker failures survived, each restarting from the newest checkpoint

    def __post_init__(self):
        if self.every_steps < 1 or self.keep < 1 or self.max_failures < 0:
            raise ValueError("checkpoint.every_steps and keep must be >= 1, max_failures >= 0 (-1 is not allowed)")


@config_dataclass
class EvalConfig:
    every_steps: int = 0  # held-out loss every N steps (and at the end); 0 = never
    batches: int = 20  # micro-batches per rank per val dataset, the same held-out samples every time


@config_dataclass
class TrackingConfig:
    uri: str | None = None  # MLflow tracking URI; None: $MLFLOW_TRACKING_URI, else sqlite in the run directory
    experiment: str = "video-llama"
    registered_model: str | None = None  # model-registry name; None: video-llama-{branch}-{size}
    log_every: int = 10  # steps between metric logs (loss, lr, grad norm, throughput, data-wait share)


@config_dataclass
class TrainConfig:
    name: str  # run name: the run directory's name; re-running the same name resumes
    stage: Literal[1, 2] = 1
    storage_path: str = "runs"  # local path or s3:// URI holding the run directories
    storage: StorageConfig = field(default_factory=StorageConfig)
    seed: int = 42  # the original's run seed; fixes dataset choice, shard order, views and init
    deepspeed: str = "configs/deepspeed/zero2_bf16.json"  # DeepSpeed JSON; "auto" fields filled from this config
    max_steps: int | None = None  # stop after this many steps (smoke runs); the lr schedule is unchanged
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    scaling: ScalingConfig = field(default_factory=ScalingConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def __post_init__(self):
        if not self.name or "/" in self.name or self.name.startswith("."):
            raise ValueError(f"name {self.name!r} must be a plain folder name for the run, e.g. vl_stage1_7b")
        if not self.model.llm:
            raise ValueError("model.llm is required: the HF-format LLaMA directory (local or s3://)")
        if not self.data.store or not self.data.train:
            raise ValueError("data.store and data.train are required: the feature store and the datasets to mix")
        self._check_texts()
        if self.eval.every_steps and not self.data.val:
            raise ValueError("eval.every_steps is set but data.val names no held-out dataset; set one or eval 0")
        if self.max_steps is not None and not 1 <= self.max_steps <= self.optim.total_steps:
            raise ValueError(f"max_steps must be in 1..{self.optim.total_steps} (iters_per_epoch x epochs)")

    def _check_texts(self):
        for d in (*self.data.train, *self.data.val):
            if (self.stage == 1) != (d.text == "caption"):
                want = "caption" if self.stage == 1 else "prompted or conversation"
                raise ValueError(
                    f"stage {self.stage}: dataset {d.name} has text {d.text!r}; stage {self.stage} uses {want}"
                )

    @property
    def total_steps(self) -> int:
        return self.max_steps or self.optim.total_steps

    @property
    def run_dir(self) -> str:
        return storage_lib.join(self.storage_path, self.name)

    @property
    def registered_model(self) -> str:
        return self.tracking.registered_model or f"video-llama-{self.model.branch}-{self.model.size}"
