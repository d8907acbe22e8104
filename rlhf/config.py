"""Typed schemas of every config group, registered in Hydra's ConfigStore.

Each YAML under conf/<group>/ starts with `defaults: [<schema>]` (or with another option of
its group that it extends, e.g. rloo extends grpo), so a misspelled key or a wrong type fails
when Hydra composes the config, before any model is loaded. Defaults live here, once: not in
code (no `cfg.get(key, default)` anywhere) and not repeated in the YAML options, which hold
only what differs from these defaults. A stage's schema offers only the fields the stage uses.
Cross-field rules that a schema cannot express are checked in `validate`, which names the
field and the fix in one line; it runs when the config is composed, before any library is
imported.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

from data_tools.demo.generate import DemoSpec
from rlhf.errors import ConfigError
from rlhf.models.demo_tiny import DemoModelSpec


class DType(str, Enum):
    auto = "auto"
    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"


class Precision(str, Enum):
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"


class TrainSampling(str, Enum):
    """How stage=sft draws its micro-batches (transformers' train_sampling_strategy)."""
    random = "random"  # shuffled, micro-batches in draw order
    # each optimizer step's shuffled examples split by length into micro-batches of balanced
    # cost (transformers' BatchRebalanceSampler): less padding once there is gradient
    # accumulation or more than one rank
    batch_rebalance = "batch_rebalance"


class Backend(str, Enum):
    none = "none"  # one process
    ddp = "ddp"  # torch DistributedDataParallel
    deepspeed = "deepspeed"


class RMObjective(str, Enum):
    kwise = "kwise"  # one example per prompt with all C(K,2) comparisons (InstructGPT)
    pairwise = "pairwise"  # rankings expanded into one example per pair (Bradley-Terry)


class PreferenceFormat(str, Enum):
    rankings = "rankings"  # data.rankings_*
    pairs = "pairs"  # data.pairs_*


class PairSelection(str, Enum):
    """Which pairs of a ranking a pairwise loss trains on (ties never give a pair)."""
    all = "all"  # every C(K,2) pair
    adjacent = "adjacent"  # neighbouring rank levels only
    best = "best"  # the best answer(s) against each worse one (UltraFeedback's binarisation)


class DPOReference(str, Enum):
    model = "model"  # a frozen copy of stage.reference_path (default: model.path, the SFT model)
    lora_base = "lora_base"  # the policy with its LoRA adapters disabled (model.lora.enabled)
    precomputed = "precomputed"  # reference log-probs computed once before training


# TRL's DPOTrainer losses (DPOConfig.loss_type), listed here so that composing a config does
# not import TRL; tests/test_config.py fails when TRL's list and this one differ
DPO_LOSSES = ("sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair",
              "sppo_hard", "aot", "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft",
              "sigmoid_norm")
# reference-free; they run on TRL's CPO (SimPO) and ORPO trainers
REFERENCE_FREE_LOSSES = ("simpo", "orpo")
# the losses that read stage.label_smoothing (TRL 1.16's DPOTrainer and CPOTrainer); the
# others ignore it
LABEL_SMOOTHING_LOSSES = ("robust", "exo_pair", "aot", "aot_unpaired", "simpo")


class LoggerBackend(str, Enum):
    none = "none"
    wandb = "wandb"


class WandbMode(str, Enum):
    auto = "auto"  # online when an API key is configured, otherwise offline
    online = "online"
    offline = "offline"


# ---------------------------------------------------------------- model
@dataclass
class LoraConfig:
    enabled: bool = False
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    # module names, or ["all-linear"] for every linear layer except the output head
    target_modules: List[str] = field(default_factory=lambda: ["all-linear"])


@dataclass
class ModelConfig:
    # short name, used in run names
    name: str = MISSING
    # local directory or hub id (e.g. Qwen/Qwen2.5-0.5B-Instruct)
    path: str = MISSING
    # defaults to `path`
    tokenizer_path: Optional[str] = None
    revision: Optional[str] = None
    dtype: DType = DType.float32
    trust_remote_code: bool = False
    attn_implementation: Optional[str] = None
    # a Jinja file that replaces the tokenizer's chat template
    chat_template_path: Optional[str] = None
    lora: LoraConfig = field(default_factory=LoraConfig)
    # set for the built-in tiny model: build it at `path` when nothing is there yet
    demo: Optional[DemoModelSpec] = None


# ---------------------------------------------------------------- data
@dataclass
class DataConfig:
    name: str = MISSING
    # set for the built-in demo: generate the synthetic data set into `dir` when missing
    demo: Optional[DemoSpec] = None
    dir: Optional[str] = None
    # JSONL files or `datasets` directories, in the formats of docs/data.md
    sft_train: Optional[str] = None
    sft_eval: Optional[str] = None
    pairs_train: Optional[str] = None
    pairs_eval: Optional[str] = None
    rankings_train: Optional[str] = None
    rankings_eval: Optional[str] = None
    prompts_train: Optional[str] = None
    # held-out prompts answered by the model in stage=eval
    eval_prompts: Optional[str] = None
    # worker processes for tokenisation
    num_proc: int = 1


# ---------------------------------------------------------------- stages
@dataclass
class TrainStageConfig:
    """What every training stage shares (sft, rm, dpo, grpo, rloo). Batch sizes are given
    once, as the global batch."""
    name: str = MISSING
    seed: int = 42
    learning_rate: float = 1e-5
    # any transformers scheduler name: cosine, linear, constant, constant_with_warmup, ...
    lr_scheduler: str = "cosine"
    # share of the steps spent warming the learning rate up
    warmup_ratio: float = 0.0
    weight_decay: float = 0.0
    # gradient clipping by global norm; 0: none (as in transformers and DeepSpeed)
    max_grad_norm: float = 1.0
    # -1: run `num_epochs` instead
    max_steps: int = -1
    num_epochs: float = 1.0
    # sequences per optimizer step, over all ranks; accumulation is derived from it
    global_batch_size: int = 32
    per_device_batch_size: int = 8
    logging_steps: int = 10
    # also evaluate on the stage's held-out split (data.*_eval) every N steps; 0: only once,
    # at the end. grpo and rloo have no such split (their evaluation is stage.heldout, at
    # the end), so validate() requires 0 there
    eval_steps: int = 0
    gradient_checkpointing: bool = False
    # also save a resumable checkpoint (with DeepSpeed's sharded state) every N steps;
    # 0: only at the end
    save_every_steps: int = 0
    # resumable checkpoints kept in <run dir>/trainer
    keep_checkpoints: int = 1
    # continue from the newest complete checkpoint in <run dir>/trainer (rerun with the same
    # hydra.run.dir); the W&B run continues too. true, false, or auto: true inside a Slurm
    # job (a requeued job resumes by itself), false elsewhere (rlhf/stages/preemption.py)
    resume: Any = "auto"
    # reuse the outputs of a finished run of the same config and inputs instead of training
    # again (rlhf/stage_cache.py, docs/slurm.md)
    cache: bool = True


@dataclass
class OfflineStageConfig(TrainStageConfig):
    """Stages that learn from a fixed data set of token sequences (sft, rm, dpo), unlike grpo
    and rloo, which sample their own answers (their length is stage.max_new_tokens)."""
    # tokens per training sequence (prompt + answer); longer ones are truncated
    max_length: int = 512


@dataclass
class SFTStageConfig(OfflineStageConfig):
    name: str = "sft"
    learning_rate: float = 2e-5
    warmup_ratio: float = 0.03
    # loss on assistant tokens only (needs {% generation %} in the chat template)
    assistant_only_loss: bool = True
    # pack conversations into rows of max_length (TRL's bfd: each micro-batch becomes one
    # padding-free row; fast only with flash attention, docs/notes.md "On a GPU")
    packing: bool = False
    # flatten the batch into one row without padding (needs flash attention to pay off)
    padding_free: bool = False
    # random, or batch_rebalance: each optimizer step's examples sorted by length into
    # micro-batches of balanced cost (and sizes), so they carry less padding; needs
    # global_batch_size > per_device_batch_size x ranks. SFT only: its loss is a mean over
    # the whole step's tokens; the preference losses average each micro-batch's rows
    train_sampling: TrainSampling = TrainSampling.random


@dataclass
class RMStageConfig(OfflineStageConfig):
    """global_batch_size counts prompts (kwise) or pairs (pairwise)."""
    name: str = "rm"
    learning_rate: float = 1e-5
    warmup_ratio: float = 0.03
    objective: RMObjective = RMObjective.kwise
    data_format: PreferenceFormat = PreferenceFormat.rankings
    # subtract the score difference from the data as a margin
    use_margin: bool = False
    # keeps rewards near zero: + coef * mean(reward^2)
    center_coef: float = 0.0
    # training rows whose rewards give reward_stats.json
    reward_stats_rows: int = 2000
    # score a ranking as one sequence, the prompt once and its K responses after it (each
    # sees only the prompt and itself): same rewards, far fewer tokens than K sequences
    share_prompt: bool = True


@dataclass
class HeldOutEvalConfig:
    """Answers to held-out prompts (data.eval_prompts), scored: stage=eval, and the end of
    every policy-training stage (dpo, grpo, rloo)."""
    seed: int = 0
    # held-out prompts answered; 0 = all
    max_prompts: int = 200
    max_new_tokens: int = 64
    batch_size: int = 50
    greedy: bool = True
    # also sample answers at this temperature (0 = skip); KL to the reference is estimated on
    # these samples, without bias at temperature 1
    sample_temperature: float = 1.0
    # sampled answers per prompt: the sampled figures are means over all of them, so one
    # run's figure varies less (samples.jsonl keeps each draw: sampled, sampled_2, ...)
    samples_per_prompt: int = 1
    # answers printed and logged as a table
    num_examples: int = 5
    # a reward model (stage=rm run dir or checkpoint): its mean score on the answers
    reward_model: Optional[str] = None
    # a causal LM (e.g. the SFT run): KL(policy || reference) on the sampled answers
    reference_path: Optional[str] = None


@dataclass
class EvalStageConfig(HeldOutEvalConfig):
    """One model (model.path), or several side by side (stage.models; docs/evaluation.md)."""
    name: str = "eval"
    # name -> run dir or checkpoint, evaluated with identical generation settings on the
    # same prompts, e.g. stage.models='{sft: <run>, dpo: <run>}'; null: model.path alone.
    # (Any, not Dict[str, str]: Hydra cannot set a typed dict's new keys from the command
    # line; validate_eval_models checks the names and paths)
    models: Any = None
    # the name in `models` that the others are compared with (win rate, KL)
    baseline: Optional[str] = None
    # SFT conversations (e.g. ${data.sft_eval}) whose last assistant turn is the reference
    # answer (perplexity, BLEU, chrF, ROUGE-L); they replace data.eval_prompts. null: the
    # prompt rows' own `reference` field, when every row has one
    references: Optional[str] = None
    # win rate against the baseline: a tie when the reward-model scores differ by at most this
    tie_margin: float = 0.0
    # reuse a finished evaluation of the same models, prompts and settings (as for training)
    cache: bool = True
    # resamples of the prompts for the confidence intervals, and their level
    bootstrap_samples: int = 1000
    confidence: float = 0.95


@dataclass
class DPOStageConfig(OfflineStageConfig):
    """global_batch_size counts preference pairs."""
    name: str = "dpo"
    learning_rate: float = 1e-6
    warmup_ratio: float = 0.1
    # strength of the pull towards the reference (the KL coefficient of the implied reward)
    beta: float = 0.1
    # one of DPO_LOSSES, or the reference-free simpo / orpo
    loss_type: str = "sigmoid"
    # read by the losses in LABEL_SMOOTHING_LOSSES only: the chance that a label is flipped
    # (robust), EXO's epsilon (exo_pair, > 0; the paper uses 1e-3), ...
    label_smoothing: float = 0.0
    # SimPO's target reward margin (loss_type=simpo)
    simpo_gamma: float = 0.5
    # > 0 adds the chosen answer's NLL with this weight (RPO, Pang et al. 2024,
    # arXiv 2404.19733), so the loss cannot lower the chosen answers' likelihood with it
    sft_weight: float = 0.0
    # LD-DPO (Liu et al. 2024, arXiv 2409.06411): the log-probs of the tokens by which the
    # longer answer of a pair outruns the shorter one count with this weight (0..1), so the
    # loss cannot favour an answer for its length alone; null: plain sums (DPO)
    ld_alpha: Optional[float] = None
    # weight of the policy's next-token entropy over the chosen answers' tokens, subtracted
    # from the loss: > 0 an entropy bonus, < 0 entropy minimisation (Agarwal et al. 2025,
    # arXiv 2505.15134): the model learns to sample what it prefers at T = 1 more surely
    entropy_coef: float = 0.0
    reference: DPOReference = DPOReference.model
    # the reference model for reference=model/precomputed; null: model.path. Also the
    # default reference of the held-out KL
    reference_path: Optional[str] = None
    # pairs (data.pairs_*) or rankings (data.rankings_*) expanded to their non-tied pairs
    data_format: PreferenceFormat = PreferenceFormat.rankings
    # with data_format=rankings: which of a ranking's pairs to train on
    pairs: PairSelection = PairSelection.all
    heldout: HeldOutEvalConfig = field(default_factory=HeldOutEvalConfig)


@dataclass
class OnlineRLStageConfig(TrainStageConfig):
    """GRPO and RLOO: sample a group of answers per prompt, reward them, update the policy.
    global_batch_size and per_device_batch_size count completions (prompts x group)."""
    name: str = MISSING
    learning_rate: float = 1e-6
    max_steps: int = 200
    per_device_batch_size: int = 32
    # a stage=rm run (or checkpoint); its rewards are normalised with its reward_stats.json
    reward_model: Optional[str] = None
    reward_model_weight: float = 1.0
    # extra reward functions: [{_target_: pkg.module.fn_or_class, weight: 1.0, ...kwargs}]
    reward_funcs: List[Any] = field(default_factory=list)
    # answers sampled per prompt (the group)
    num_generations: int = 8
    # KL coefficient towards the reference (the starting model); 0 drops the reference
    beta: float = 0.04
    # tokens per sampled answer (TRL's max_completion_length); prompts are not truncated
    max_new_tokens: int = 64
    # sampling temperature of the training answers (> 0)
    temperature: float = 1.0
    heldout: HeldOutEvalConfig = field(default_factory=HeldOutEvalConfig)


class CriticInit(str, Enum):
    """Where PPO's critic (value model) starts."""
    reward_model = "reward_model"  # stage.reward_model's run: its backbone and score head
    policy = "policy"  # model.path with a new value head initialised to zero


class PtxData(str, Enum):
    """The conversations of PPO-ptx's SFT loss (stage.ptx_coef)."""
    sft = "sft"  # data.sft_train, every conversation as written
    rankings = "rankings"  # data.rankings_train: each ranking's prompt and best answer


class PPOReference(str, Enum):
    model = "model"  # a frozen copy of stage.reference_path (default: model.path)
    lora_base = "lora_base"  # the actor with its LoRA adapters disabled (model.lora.enabled)


KL_ESTIMATORS = ("k1", "k3")


@dataclass
class PPOStageConfig(TrainStageConfig):
    """PPO with a critic against a reward model, our own loop (rlhf/stages/ppo.py, docs/ppo.md).
    global_batch_size counts the answers of one rollout (one per prompt) over all ranks;
    per_device_batch_size is the micro batch of every forward/backward pass; max_steps counts
    rollouts."""
    name: str = "ppo"
    # the actor's learning rate (the critic has its own, critic_learning_rate)
    learning_rate: float = 1e-6
    critic_learning_rate: float = 1e-5
    lr_scheduler: str = "constant"
    max_steps: int = 200
    global_batch_size: int = 64
    per_device_batch_size: int = 8
    logging_steps: int = 1
    # passes over each rollout, each over shuffled minibatches (one optimizer step each)
    ppo_epochs: int = 4
    num_minibatches: int = 1
    # a stage=rm run (or checkpoint): the reward, normalised with its reward_stats.json
    reward_model: Optional[str] = None
    reward_model_weight: float = 1.0
    # extra reward functions, as for grpo: [{_target_: pkg.module.fn_or_class, weight: 1.0}]
    reward_funcs: List[Any] = field(default_factory=list)
    # the summed score is clipped to [-score_clip, score_clip]
    score_clip: float = 5.0
    # subtracted from the score of an answer that never reaches a stop token; null: none
    missing_eos_penalty: Optional[float] = None
    # rollout sampling; log-probs use logits / temperature, the distribution sampled from
    max_new_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    # under ZeRO-3: gather the actor's weights once per rollout instead of every layer for
    # every new token (docs/ppo.md has both timed)
    gather_for_generation: bool = True
    # true: the actor's log-probs of the sampled tokens come from generation's own logits
    # (TRL 1.12's way): one actor forward pass fewer per rollout, but B x T x vocabulary
    # logits held while generating, and in bf16 the cached and the full forward pass differ a
    # little. false: a full forward pass recomputes them (OpenRLHF, verl)
    rollout_logprobs: bool = False
    critic_init: CriticInit = CriticInit.reward_model
    # the reference for the KL: a frozen model (reference_path, default model.path) or the
    # actor with its LoRA adapters off
    reference: PPOReference = PPOReference.model
    reference_path: Optional[str] = None
    # KL coefficient (its start value with adaptive_kl) and estimator (k1 or k3, clamped
    # to +-kl_clamp per token)
    kl_coef: float = 0.05
    kl_estimator: str = "k1"
    kl_clamp: float = 10.0
    # true: -kl_coef x KL per token in the reward (InstructGPT); false: kl_coef x KL as a
    # loss term of the actor (k3 only: k1's gradient is zero in expectation)
    kl_in_reward: bool = True
    # Ziegler et al. 2019: steer the coefficient towards kl_target (nats per answer)
    adaptive_kl: bool = False
    kl_target: float = 6.0
    kl_horizon: float = 10000.0
    # GAE discount and lambda
    gamma: float = 1.0
    lam: float = 0.95
    # PPO's policy ratio clip and the value clip
    cliprange: float = 0.2
    cliprange_value: float = 0.2
    # weight of the critic's loss, and of the entropy bonus in the actor's loss (negative:
    # entropy minimisation, Agarwal et al. 2025, arXiv 2505.15134; the demo uses -0.2)
    vf_coef: float = 0.1
    entropy_coef: float = 0.0
    # PPO-ptx (InstructGPT): ptx_coef x the SFT loss on ptx_batch_size conversations of
    # ptx_data (each cut to ptx_max_length tokens) is added to every actor micro batch's loss,
    # so RL keeps what supervised data teaches (0: off). ptx_data: sft (data.sft_train) or
    # rankings (each ranking's best answer in data.rankings_train; the demo uses it)
    ptx_coef: float = 0.0
    ptx_data: PtxData = PtxData.sft
    ptx_batch_size: int = 8
    ptx_max_length: int = 512
    whiten_advantages: bool = True
    # divide the per-token rewards by their std over the rollout (mean kept)
    whiten_rewards: bool = False
    # the first N steps train the critic only (the actor is frozen)
    critic_warmup_steps: int = 0
    # stop a step's PPO epochs once the minibatch's approximate KL to the rollout policy
    # passes this; null: never
    target_kl_early_stop: Optional[float] = None
    # log a table of sample answers with their scores every N steps (0: never)
    sample_every: int = 10
    heldout: HeldOutEvalConfig = field(default_factory=HeldOutEvalConfig)


@dataclass
class ExportStageConfig:
    """A clean Hugging Face directory (<run dir>/model) from a stage's run: LoRA merged, ZeRO
    shards consolidated, generation_config.json and a README.md model card with the lineage
    (rlhf/stages/export.py, docs/deploy.md). The run exported is model.path, or the best of
    stage.candidates by stage.select_by."""
    name: str = "export"
    # run dirs (or checkpoints) to choose from; an eval run stands for the model it evaluated.
    # Empty: export model.path
    candidates: List[str] = field(default_factory=list)
    # the metric (in each candidate's metrics.json) that picks the candidate, e.g.
    # eval/oracle_fact_greedy; ties go to the earlier candidate
    select_by: Optional[str] = None
    # true: the highest value wins; false: the lowest (a loss)
    higher_is_better: bool = True
    # the model card's title; null: <model.name>-<stage of the exported run>
    model_name: Optional[str] = None
    # the license named in the model card's metadata (an SPDX id, e.g. apache-2.0); null: none
    license: Optional[str] = None
    # the weights' dtype in the export; auto: as the run saved them
    dtype: DType = DType.auto
    # generation_config.json's default length of an answer
    max_new_tokens: int = 256
    # largest safetensors file; bigger models are split with an index
    max_shard_size: str = "5GB"


@dataclass
class PipelineStageConfig:
    name: str = "pipeline"
    # false: every step runs, none reuses a finished run (stage.cache=false for each step)
    cache: bool = True


@dataclass
class PipelineStep:
    # a name for the step; later steps refer to its run directory as {name}
    name: str = MISSING
    stage: str = MISSING
    # Hydra overrides for this step only, e.g. "model.path={sft}"
    overrides: List[str] = field(default_factory=list)


@dataclass
class QualityFloor:
    """A figure the pipeline's result must reach, checked and printed under the summary."""
    # "<step>/<metric>", e.g. sft_eval/eval/oracle_fact_greedy
    metric: str = MISSING
    # the lowest acceptable value (a factor when relative_to is set)
    min: float = MISSING
    # "<step>/<metric>": the floor is min x this value (e.g. DPO >= 1.12 x SFT)
    relative_to: Optional[str] = None


@dataclass
class PipelineConfig:
    steps: List[PipelineStep] = field(default_factory=list)
    # summary table columns, short header -> metric name (full names stay in summary.json)
    summary_columns: Dict[str, str] = field(default_factory=dict)
    # checked after the last step and printed with the summary, each as met or MISSED
    floors: List[QualityFloor] = field(default_factory=list)
    # an eval step over several models (stage.models): its table of the models side by side
    # ends the summary
    final_table: Optional[str] = None
    # metrics plotted over training steps, one line per step that logged them (rlhf-compare's
    # PNGs and compare.csv in <run dir>/compare)
    plots: List[str] = field(default_factory=list)
    # more overrides for a step, by its name, e.g. to sweep one step of an experiment:
    #   rlhf -m experiment=demo +pipeline.step_overrides.dpo.stage.beta=0.05,0.3
    # (Any: Hydra sets a free-form node's new keys; run_step checks the step names)
    step_overrides: Any = None


# ---------------------------------------------------------------- infrastructure
@dataclass
class ZeroConfig:
    """DeepSpeed ZeRO knobs (https://www.deepspeed.ai/docs/config-json/#zero-optimizations)."""
    # 0: plain data parallel; 1: shard optimizer state; 2: + gradients; 3: + parameters
    stage: int = 0
    # keep optimizer state (and, at stage 3, parameters) in CPU memory
    offload_optimizer: bool = False
    offload_params: bool = False
    # overlap gradient reduction with the backward pass
    overlap_comm: bool = True
    contiguous_gradients: bool = True
    # elements per communication bucket: larger is faster, smaller saves memory
    reduce_bucket_size: int = 500_000_000
    allgather_bucket_size: int = 500_000_000
    stage3_prefetch_bucket_size: int = 50_000_000
    # parameters smaller than this stay whole on every rank under ZeRO-3
    stage3_param_persistence_threshold: int = 100_000
    stage3_max_live_parameters: int = 1_000_000_000
    # under ZeRO-3, gather the shards into one 16-bit Hugging Face checkpoint on save
    stage3_gather_16bit_weights_on_model_save: bool = True


@dataclass
class DistributedConfig:
    name: str = MISSING
    backend: Backend = Backend.none
    # ranks started on this node by `rlhf` itself (through torchrun) when not already inside
    # torchrun or srun
    nproc_per_node: int = 1
    precision: Precision = Precision.fp32
    # torch.distributed backend; null: nccl on GPU, gloo on CPU
    dist_backend: Optional[str] = None
    zero: ZeroConfig = field(default_factory=ZeroConfig)


@dataclass
class LoggerConfig:
    backend: LoggerBackend = LoggerBackend.none
    project: str = "rlhf"
    entity: Optional[str] = None
    # W&B group; defaults to experiment_name (all runs of an experiment), and for a run of a
    # local sweep (`rlhf -m`) to the sweep directory's name (each sweep a group of its own)
    group: Optional[str] = None
    tags: List[str] = field(default_factory=list)
    mode: WandbMode = WandbMode.auto


@dataclass
class DebugConfig:
    """Caps for quick runs (debug=tiny); null means no cap."""
    max_steps: Optional[int] = None
    max_train_rows: Optional[int] = None
    max_eval_rows: Optional[int] = None


@dataclass
class Config:
    stage: Any = MISSING
    model: ModelConfig = MISSING
    data: DataConfig = MISSING
    distributed: DistributedConfig = MISSING
    logger: LoggerConfig = MISSING
    debug: DebugConfig = MISSING
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    # groups runs (W&B group, output folder)
    experiment_name: str = "default"
    # where the demo data and tiny model are built once and reused
    cache_dir: str = MISSING
    # the index of finished runs that later runs of the same work reuse (rlhf/stage_cache.py)
    stage_cache_dir: str = MISSING


def register_configs() -> None:
    cs = ConfigStore.instance()
    cs.store(name="rlhf_schema", node=Config)
    # rloo has no schema of its own: conf/stage/rloo.yaml extends grpo
    for name, node in {"sft": SFTStageConfig, "rm": RMStageConfig, "eval": EvalStageConfig,
                       "dpo": DPOStageConfig, "grpo": OnlineRLStageConfig,
                       "ppo": PPOStageConfig, "export": ExportStageConfig,
                       "pipeline": PipelineStageConfig}.items():
        cs.store(group="stage", name=f"{name}_schema", node=node)
    for group, node in {"model": ModelConfig, "data": DataConfig,
                        "distributed": DistributedConfig, "logger": LoggerConfig,
                        "debug": DebugConfig}.items():
        cs.store(group=group, name="schema", node=node)


def is_schema_option(option: str) -> bool:
    """The ConfigStore entries above, which the YAML options extend: never a user's choice."""
    return option == "schema" or option.endswith("_schema")


# ---------------------------------------------------------------- keys no schema declares
def check_declared(cfg: Any) -> None:
    """Hydra lets `+key=value` add any key to a typed node: `+stage.learnig_rate=1e-4` (Hydra's
    own hint for the typo) trained at the default rate with a dead key in config.yaml."""
    declared, undeclared = key_tree(cfg)
    if undeclared:
        raise ConfigError(undeclared_message(undeclared[0], declared))


def key_tree(node: Any, prefix: str = "") -> tuple[list[str], list[str]]:
    """(declared, undeclared): the dotted keys below a composed config that its schemas declare
    and those they do not. Free-form mappings (reward_funcs' kwargs, summary_columns) hold the
    user's own keys and are not looked into, nor is what lies below an undeclared key."""
    if node._is_none() or node._is_missing():
        return [], []
    if OmegaConf.is_list(node):
        children = [(f"{prefix}[{i}]", node._get_node(i)) for i in range(len(node))]
        declared, undeclared = [], []
    else:
        schema = OmegaConf.get_type(node)
        if not dataclasses.is_dataclass(schema):
            return [], []
        fields = {f.name for f in dataclasses.fields(schema)}
        paths = {key: f"{prefix}.{key}" if prefix else key for key in node}
        declared = [paths[k] for k in node if k in fields]
        undeclared = [paths[k] for k in node if k not in fields]
        children = [(paths[k], node._get_node(k)) for k in node if k in fields]
    for path, child in children:
        if OmegaConf.is_config(child):
            below = key_tree(child, path)
            declared, undeclared = declared + below[0], undeclared + below[1]
    return declared, undeclared


def undeclared_message(key: str, declared: list[str]) -> str:
    """One line naming the undeclared key and its nearest declared key (never its value)."""
    from rlhf.tracking.secrets import is_secret_key  # rlhf.tracking imports this module

    parent, _, name = key.rpartition(".")
    if is_secret_key(name):
        return (f"{key} is not a setting: secrets are read from the environment (WANDB_API_KEY "
                "or `wandb login`, HF_TOKEN), never from the config, which is saved with the run")
    near = difflib.get_close_matches(key, declared, n=1, cutoff=0.75) or \
        [k for k in declared if k.rpartition(".")[2] == name]  # right name, wrong group
    if near:
        return f"{key} is not a setting; did you mean {near[0]}?"
    siblings = [k.rpartition(".")[2] for k in declared if k.rpartition(".")[0] == parent]
    return f"{key} is not a setting; {parent or 'the top level'} has {', '.join(siblings)}"


# ---------------------------------------------------------------- cross-field checks
def validate(cfg: Any, world: int | None = None) -> None:
    """Cross-field checks; each error (a ValueError) names the field and how to fix it.

    `world` is the number of ranks when already inside torchrun/srun; otherwise the ranks
    that `rlhf` will start (distributed.nproc_per_node)."""
    check_declared(cfg)
    world = world or cfg.distributed.nproc_per_node
    stage = cfg.stage
    if stage.name == "pipeline" and not cfg.pipeline.steps:
        raise ConfigError("stage=pipeline needs pipeline.steps; use an experiment that defines "
                          "them, e.g. `rlhf experiment=demo`")
    if stage.name == "pipeline" and cfg.pipeline.final_table:
        eval_steps = [s.name for s in cfg.pipeline.steps if s.stage == "eval"]
        if cfg.pipeline.final_table not in eval_steps:
            raise ConfigError(f"pipeline.final_table={cfg.pipeline.final_table} names no eval step; "
                              f"eval steps: {', '.join(eval_steps) or 'none'}")
    validate_distributed(cfg.distributed)
    if hasattr(stage, "global_batch_size"):
        validate_training(stage, world)
        validate_eval_data(stage, cfg.data)
    if stage.name == "dpo":
        validate_dpo(stage, cfg.model)
    if stage.name in ("grpo", "rloo"):
        validate_online_rl(stage)
    if stage.name == "ppo":
        validate_ppo(stage, cfg.model, cfg.distributed, world, cfg.data)
    if stage.name == "eval":
        validate_heldout(stage, "stage")
        validate_eval_models(stage)
    if stage.name == "export":
        validate_export(stage)
    if hasattr(stage, "heldout"):
        validate_heldout(stage.heldout, "stage.heldout")
    if stage.name == "rm" and stage.reward_stats_rows < 1:
        raise ConfigError(f"stage.reward_stats_rows={stage.reward_stats_rows}: reward_stats.json "
                          "is computed on that many training rows; use at least 1")


def validate_distributed(dist: Any) -> None:
    zero, deepspeed = dist.zero, dist.backend == Backend.deepspeed
    if dist.nproc_per_node < 1:
        raise ConfigError(f"distributed.nproc_per_node={dist.nproc_per_node} must be at least 1")
    if dist.nproc_per_node > 1 and dist.backend == Backend.none:
        raise ConfigError(f"distributed={dist.name} runs one process, but "
                          f"distributed.nproc_per_node={dist.nproc_per_node}; choose "
                          "distributed=ddp or distributed=zero1/zero2/zero3")
    if zero.stage not in (0, 1, 2, 3):
        raise ConfigError(f"distributed.zero.stage={zero.stage}: ZeRO stages are 0, 1, 2 and 3")
    if not deepspeed and (zero.stage or zero.offload_optimizer or zero.offload_params):
        raise ConfigError(f"distributed.zero.* is set but distributed.backend={dist.backend.value};"
                          " use distributed=zero1/zero2/zero3/zero3_offload for DeepSpeed")
    if zero.offload_optimizer and zero.stage < 2:
        raise ConfigError(f"distributed.zero.offload_optimizer=true needs ZeRO stage 2 or 3, but "
                          f"distributed.zero.stage={zero.stage}; use distributed=zero2 or "
                          "distributed=zero3_offload")
    if zero.offload_params and zero.stage != 3:
        raise ConfigError(f"distributed.zero.offload_params=true needs ZeRO stage 3, but "
                          f"distributed.zero.stage={zero.stage}; use distributed=zero3_offload")


def validate_training(stage: Any, world: int) -> None:
    per_step = stage.per_device_batch_size * world
    if stage.global_batch_size % per_step:
        raise ConfigError(
            f"stage.global_batch_size={stage.global_batch_size} is not divisible by "
            f"stage.per_device_batch_size={stage.per_device_batch_size} x "
            f"{world} rank(s) = {per_step}; choose a multiple of {per_step}")
    if not 0 <= stage.warmup_ratio < 1:
        raise ConfigError(f"stage.warmup_ratio={stage.warmup_ratio} must be in [0, 1)")
    if getattr(stage, "padding_free", False) and not stage.packing:
        raise ConfigError("stage.padding_free=true does not truncate rows to stage.max_length "
                          "by itself; also set stage.packing=true")
    if getattr(stage, "train_sampling", None) == TrainSampling.batch_rebalance:
        if stage.packing:
            raise ConfigError("stage.train_sampling=batch_rebalance sorts rows by length, but "
                              "stage.packing=true makes every row stage.max_length long; use "
                              "one of the two")
        if stage.global_batch_size == per_step:
            raise ConfigError(f"stage.train_sampling=batch_rebalance splits each step's "
                              f"{stage.global_batch_size} rows into micro-batches, but "
                              f"stage.per_device_batch_size={stage.per_device_batch_size} x "
                              f"{world} rank(s) takes them all at once; lower "
                              "stage.per_device_batch_size (e.g. to half)")
    if stage.max_steps == 0:
        raise ConfigError("stage.max_steps=0 trains nothing; use -1 (epochs) or a positive count")
    if not isinstance(stage.resume, bool) and str(stage.resume).lower() not in ("auto", "true",
                                                                                 "false"):
        raise ConfigError(f"stage.resume={stage.resume}: use true, false or auto (resume "
                          "inside a Slurm job)")


def eval_data_field(stage: Any) -> str | None:
    """The data.* field holding the held-out split a training stage evaluates on, if any."""
    if stage.name == "sft":
        return "sft_eval"
    if stage.name in ("rm", "dpo"):
        return f"{stage.data_format.value}_eval"
    return None  # grpo, rloo: no held-out split during training


def validate_eval_data(stage: Any, data: Any) -> None:
    """eval_steps > 0 asks the trainer to evaluate during training; without held-out data
    transformers' Trainer stops with a traceback once the model is loaded."""
    if stage.eval_steps <= 0:
        return
    field_name = eval_data_field(stage)
    if field_name is None:
        raise ConfigError(f"stage.eval_steps={stage.eval_steps}: stage={stage.name} has no "
                          "held-out split to evaluate during training (its held-out evaluation "
                          "is stage.heldout, at the end); set stage.eval_steps=0")
    if not data[field_name]:
        raise ConfigError(f"stage.eval_steps={stage.eval_steps} evaluates on data.{field_name}, "
                          f"which is not set; set data.{field_name}=<file> or stage.eval_steps=0")


def validate_dpo(stage: Any, model: Any) -> None:
    losses = DPO_LOSSES + REFERENCE_FREE_LOSSES
    if stage.loss_type not in losses:
        raise ConfigError(f"stage.loss_type={stage.loss_type!r} is not a known loss; use one of "
                          f"{', '.join(losses)}")
    if stage.beta <= 0:
        raise ConfigError(f"stage.beta={stage.beta} must be positive (it scales the implied "
                          "reward; ipo and sppo_hard divide by it)")
    if stage.pairs != PairSelection.all and stage.data_format == PreferenceFormat.pairs:
        raise ConfigError(f"stage.pairs={stage.pairs.value} chooses among a ranking's pairs, but "
                          "stage.data_format=pairs reads pairs as they are; drop stage.pairs or "
                          "use stage.data_format=rankings")
    if stage.sft_weight and (stage.loss_type in REFERENCE_FREE_LOSSES
                             or stage.loss_type == "sft"):
        raise ConfigError(f"stage.sft_weight={stage.sft_weight} adds an NLL term to a preference "
                          f"loss; loss_type={stage.loss_type} has none to add it to (orpo has its "
                          "own, weighted by beta); set it to 0")
    if stage.entropy_coef and stage.loss_type in REFERENCE_FREE_LOSSES:
        raise ConfigError(f"stage.entropy_coef={stage.entropy_coef} is added to TRL's "
                          f"DPOTrainer loss; loss_type={stage.loss_type} runs on another "
                          "trainer; set it to 0 or use a DPO loss")
    if stage.loss_type in REFERENCE_FREE_LOSSES:
        unused = ([f"stage.reference={stage.reference.value}"]
                  if stage.reference != DPOReference.model else []) + \
                 (["stage.reference_path"] if stage.reference_path else [])
        if unused:
            raise ConfigError(f"stage.loss_type={stage.loss_type} is reference-free, so "
                              f"{' and '.join(unused)} would do nothing; drop it (the held-out "
                              "KL's reference is stage.heldout.reference_path)")
    if stage.reference == DPOReference.lora_base and not model.lora.enabled:
        raise ConfigError("stage.reference=lora_base uses the policy with its adapters disabled; "
                          "set model.lora.enabled=true, or use stage.reference=model")
    if stage.reference == DPOReference.lora_base and stage.reference_path:
        raise ConfigError("stage.reference=lora_base takes the policy's base model as the "
                          "reference, so stage.reference_path is unused; drop it, or use "
                          "stage.reference=model")
    if stage.label_smoothing and stage.loss_type not in LABEL_SMOOTHING_LOSSES:
        raise ConfigError(f"stage.label_smoothing={stage.label_smoothing} is ignored by "
                          f"loss_type={stage.loss_type}; set it to 0, or use one of "
                          f"{', '.join(LABEL_SMOOTHING_LOSSES)}")
    if stage.loss_type == "robust" and not 0 <= stage.label_smoothing < 0.5:
        raise ConfigError(f"stage.label_smoothing={stage.label_smoothing}: robust DPO reads it as "
                          "the chance a label is flipped; it must be in [0, 0.5)")
    if stage.loss_type == "exo_pair" and not 0 < stage.label_smoothing < 1:
        raise ConfigError(f"stage.label_smoothing={stage.label_smoothing}: exo_pair takes "
                          "log(label_smoothing), infinite at 0; use a value in (0, 1), e.g. 1e-3")
    if stage.ld_alpha is not None and not 0 <= stage.ld_alpha <= 1:
        raise ConfigError(f"stage.ld_alpha={stage.ld_alpha} weighs the tokens by which the longer "
                          "answer of a pair outruns the shorter; use a value in [0, 1] (1 = DPO), "
                          "or null")
    if stage.ld_alpha is not None and stage.loss_type in REFERENCE_FREE_LOSSES:
        raise ConfigError(f"stage.ld_alpha is read by TRL's DPOTrainer only; "
                          f"loss_type={stage.loss_type} runs on another trainer, so drop it")


def validate_online_rl(stage: Any) -> None:
    if stage.num_generations < 2:
        raise ConfigError(f"stage.num_generations={stage.num_generations}: {stage.name} compares "
                          "answers within a group; sample at least 2 per prompt")
    if stage.global_batch_size % stage.num_generations:
        raise ConfigError(f"stage.global_batch_size={stage.global_batch_size} counts completions "
                          f"and must be a multiple of stage.num_generations="
                          f"{stage.num_generations} (whole groups per step)")
    if stage.temperature <= 0:
        raise ConfigError(f"stage.temperature={stage.temperature}: the group's answers are "
                          "sampled, so it must be positive (1.0 samples the policy as it is)")
    if stage.beta < 0:
        raise ConfigError(f"stage.beta={stage.beta} must be >= 0 (0 drops the reference model)")
    if not stage.reward_model and not stage.reward_funcs:
        raise ConfigError(f"stage={stage.name} needs a reward: set stage.reward_model=<stage=rm "
                          "run dir> and/or stage.reward_funcs=[{_target_: pkg.module.fn}]")


def validate_ppo(stage: Any, model: Any, dist: Any, world: int, data: Any) -> None:
    per_minibatch = world * stage.num_minibatches * stage.per_device_batch_size
    if stage.global_batch_size % per_minibatch:
        raise ConfigError(f"stage.global_batch_size={stage.global_batch_size} answers per rollout "
                          f"must split into stage.num_minibatches={stage.num_minibatches} x "
                          f"{world} rank(s) x stage.per_device_batch_size="
                          f"{stage.per_device_batch_size}; choose a multiple of {per_minibatch}")
    if stage.max_steps < 1 or stage.num_epochs != 1:
        raise ConfigError(f"stage.max_steps={stage.max_steps}, stage.num_epochs="
                          f"{stage.num_epochs}: stage=ppo counts rollouts, not epochs; give a "
                          "positive stage.max_steps and leave stage.num_epochs alone")
    if stage.ppo_epochs < 1 or stage.num_minibatches < 1:
        raise ConfigError(f"stage.ppo_epochs={stage.ppo_epochs} and stage.num_minibatches="
                          f"{stage.num_minibatches} must both be at least 1")
    if not stage.reward_model and not stage.reward_funcs:
        raise ConfigError("stage=ppo needs a reward: set stage.reward_model=<stage=rm run dir> "
                          "and/or stage.reward_funcs=[{_target_: pkg.module.fn}]")
    if stage.critic_init == CriticInit.reward_model and not stage.reward_model:
        raise ConfigError("stage.critic_init=reward_model starts the critic from "
                          "stage.reward_model, which is not set; set it or use "
                          "stage.critic_init=policy")
    if stage.temperature <= 0 or not 0 < stage.top_p <= 1:
        raise ConfigError(f"stage.temperature={stage.temperature} must be > 0 and stage.top_p="
                          f"{stage.top_p} in (0, 1]: PPO samples its answers")
    if stage.kl_estimator not in KL_ESTIMATORS:
        raise ConfigError(f"stage.kl_estimator={stage.kl_estimator!r}; use one of "
                          f"{', '.join(KL_ESTIMATORS)}")
    if not stage.kl_in_reward and stage.kl_estimator == "k1":
        raise ConfigError("stage.kl_in_reward=false makes the KL a loss term, and k1's gradient "
                          "there is zero in expectation; set stage.kl_estimator=k3")
    if stage.kl_coef < 0 or (stage.adaptive_kl and (stage.kl_target <= 0
                                                    or stage.kl_horizon <= 0)):
        raise ConfigError(f"stage.kl_coef={stage.kl_coef} must be >= 0, and with "
                          "stage.adaptive_kl=true stage.kl_target and stage.kl_horizon > 0")
    if stage.adaptive_kl and stage.kl_coef == 0:
        raise ConfigError("stage.adaptive_kl=true scales stage.kl_coef, which is 0 and would "
                          "stay 0; start it above 0")
    if stage.cliprange <= 0 or stage.cliprange_value <= 0:
        raise ConfigError(f"stage.cliprange={stage.cliprange} and stage.cliprange_value="
                          f"{stage.cliprange_value} must be positive")
    if not 0 <= stage.gamma <= 1 or not 0 <= stage.lam <= 1:
        raise ConfigError(f"stage.gamma={stage.gamma} and stage.lam={stage.lam} must be in "
                          "[0, 1]")
    if stage.ptx_coef < 0 or stage.ptx_batch_size < 1 or stage.ptx_max_length < 2:
        raise ConfigError(f"stage.ptx_coef={stage.ptx_coef} must be >= 0, stage.ptx_batch_size="
                          f"{stage.ptx_batch_size} >= 1 and stage.ptx_max_length="
                          f"{stage.ptx_max_length} >= 2")
    ptx_file = "rankings_train" if stage.ptx_data == PtxData.rankings else "sft_train"
    if stage.ptx_coef and not getattr(data, ptx_file):
        raise ConfigError(f"stage.ptx_coef={stage.ptx_coef} mixes an SFT loss on data.{ptx_file} "
                          f"(stage.ptx_data={stage.ptx_data.value}) into the actor's, and "
                          f"data.{ptx_file} is not set; set it, or stage.ptx_coef=0")
    if stage.critic_warmup_steps >= stage.max_steps:
        raise ConfigError(f"stage.critic_warmup_steps={stage.critic_warmup_steps} leaves no "
                          f"step of stage.max_steps={stage.max_steps} to train the actor")
    if stage.reference == PPOReference.lora_base and not model.lora.enabled:
        raise ConfigError("stage.reference=lora_base uses the actor with its adapters disabled; "
                          "set model.lora.enabled=true, or use stage.reference=model")
    if stage.reference == PPOReference.lora_base and stage.reference_path:
        raise ConfigError("stage.reference=lora_base takes the actor's base model as the "
                          "reference, so stage.reference_path is unused; drop it")
    if model.lora.enabled and dist.backend == Backend.deepspeed and dist.zero.stage == 3:
        raise ConfigError("stage=ppo with LoRA under ZeRO-3 is not supported yet; use "
                          "distributed=zero2 (LoRA's trained weights are small) or full training")


def validate_export(stage: Any) -> None:
    if stage.candidates and not stage.select_by:
        raise ConfigError(f"stage.candidates lists {len(stage.candidates)} run(s) but "
                          "stage.select_by is not set; name the metric that picks one, e.g. "
                          "stage.select_by=eval/oracle_fact_greedy")
    if stage.select_by and not stage.candidates:
        raise ConfigError(f"stage.select_by={stage.select_by} picks among stage.candidates, "
                          "which is empty; list the runs, or drop stage.select_by to export "
                          "model.path")
    if stage.max_new_tokens < 1:
        raise ConfigError(f"stage.max_new_tokens={stage.max_new_tokens} must be at least 1")


def validate_eval_models(stage: Any) -> None:
    """stage=eval over several models (stage.models, stage.baseline)."""
    if stage.models is not None and not OmegaConf.is_dict(stage.models):
        raise ConfigError(f"stage.models={stage.models} must map names to run dirs or "
                          "checkpoints, e.g. stage.models='{sft: <run>, dpo: <run>}'")
    names = list(stage.models or {})
    if stage.baseline is not None and stage.baseline not in names:
        raise ConfigError(f"stage.baseline={stage.baseline} is not one of stage.models "
                          f"({', '.join(names) or 'empty'}); name one of them")
    if len(names) > 1 and stage.baseline is None:
        raise ConfigError(f"stage.models has {len(names)} models; name the one the others are "
                          f"compared with, e.g. stage.baseline={names[0]}")
    bad = [n for n in names if not isinstance(n, str) or "/" in n
           or not isinstance(stage.models[n], str) or not stage.models[n]]
    if bad:
        raise ConfigError(f"stage.models.{bad[0]}: a model needs a name without '/' and a path "
                          "(run dir or checkpoint)")
    if names and stage.reference_path:
        raise ConfigError("stage.reference_path is for one model; with stage.models the KL is "
                          "taken to stage.baseline")
    if not 0 < stage.confidence < 1 or stage.bootstrap_samples < 1 or stage.tie_margin < 0:
        raise ConfigError(f"stage.confidence={stage.confidence} must be in (0, 1), "
                          f"stage.bootstrap_samples={stage.bootstrap_samples} >= 1 and "
                          f"stage.tie_margin={stage.tie_margin} >= 0")


def validate_heldout(settings: Any, prefix: str) -> None:
    """A HeldOutEvalConfig: stage=eval's own fields, or stage.heldout of dpo/grpo/rloo/ppo."""
    if settings.samples_per_prompt < 1:
        raise ConfigError(f"{prefix}.samples_per_prompt={settings.samples_per_prompt}: sample at "
                          "least 1 answer per prompt (or set sample_temperature=0 to sample none)")
    if settings.samples_per_prompt > 1 and getattr(settings, "models", None):
        raise ConfigError(f"{prefix}.samples_per_prompt={settings.samples_per_prompt} is for one "
                          "model; stage.models compares one sampled answer per prompt and model "
                          "(win rates pair them), so set it to 1")
    if not settings.greedy and settings.sample_temperature <= 0:
        raise ConfigError(f"{prefix}.greedy=false and {prefix}.sample_temperature="
                          f"{settings.sample_temperature} answer nothing; set {prefix}.greedy=true "
                          f"or {prefix}.sample_temperature > 0")
    if settings.reference_path and settings.sample_temperature <= 0:
        raise ConfigError(f"{prefix}.reference_path is set, but the KL to it is estimated on "
                          f"sampled answers and {prefix}.sample_temperature="
                          f"{settings.sample_temperature} samples none; set it to 1.0")
