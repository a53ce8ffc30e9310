"""The cloud service without HTTP: the loaded models, and a worker thread that batches requests for the LLM.

A request becomes a `Job` (packet indices, question, optional choices). `BatchWorker.submit`
puts it on a bounded queue and returns a `concurrent.futures.Future`. The worker thread takes
up to `max_batch` jobs that arrive within `batch_window_s` of the first, decodes each packet
with the VQ-VAE, and answers the jobs that share max_new_tokens with one `generate` call.
Multiple-choice jobs run one at a time, because `score_choices` already batches the choices.
All model calls run on this one thread, so torch never runs two of them at once.

NOTE: the worker thread shares the GIL with the HTTP event loop. With the tiny test model,
whose decoding steps are mostly Python, requests waited outside the handler for most of
their latency under load (benchmarks/load_test.py); with SmolLM2 that wait was about 0.3 %.
"""

import json
import logging
import os
import queue
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from toau.channel.codec import Tokenizer, load_tokenizer
from toau.channel.packet import MotionPacket, PacketFieldError, decode_packet
from toau.cloud import llm
from toau.cloud.model import MotionLanguageModel
from toau.cloud.projector import MotionProjector, ProjectorConfig, load_projector
from toau.motion.humanml3d import FEATURE_DIM
from toau.tokenizer.vqvae import VQVAE, VQVAEConfig

log = logging.getLogger(__name__)

RANDOM_TOKENIZER = "random"  # an untrained VQ-VAE with the architecture in params.yaml
TINY = "tiny"  # a VQ-VAE of width 16 as tokenizer, or a 2-layer Llama of width 32 as LLM


@dataclass(frozen=True)
class ServiceLimits:
    """Every limit and batching setting of the service, in one place."""

    max_body_bytes: int = 64 * 1024  # a fixed-width packet of 1024 indices is 1183 bytes
    max_indices: int = 1024  # 204.8 s of motion at 4 frames per index and 20 fps
    max_question_chars: int = 2000
    max_choices: int = 16
    max_choice_chars: int = 200  # every choice runs through the LLM, so their length sets a request's cost
    max_new_tokens: int = 64  # max per request, and the default
    request_timeout_s: float = 60.0  # from the request's arrival to its response
    max_queue: int = 64  # jobs waiting for the worker; one more gets 503
    max_batch: int = 8  # jobs per generate call
    batch_window_s: float = 0.005  # how long the worker waits for more jobs after the first
    retry_after_s: int = 1  # Retry-After of a 503

    def __post_init__(self):
        for name in ("max_body_bytes", "max_indices", "max_question_chars", "max_choices", "max_choice_chars",
                     "max_new_tokens", "max_queue", "max_batch", "retry_after_s"):
            if getattr(self, name) < 1:
                raise ValueError(f"ServiceLimits.{name} is {getattr(self, name)}; it must be at least 1")
        if self.request_timeout_s <= 0 or self.batch_window_s < 0:
            raise ValueError(
                f"request_timeout_s is {self.request_timeout_s} and batch_window_s {self.batch_window_s}; "
                "the timeout must be positive and the window non-negative"
            )


class QueueFullError(RuntimeError):
    """The job queue has max_queue jobs waiting."""


class ServiceStoppedError(RuntimeError):
    """The worker has stopped, so the job will never run."""


# ---------------------------------------------------------------- models


@dataclass
class GenerateResult:
    texts: list[str]
    prefill_ms: float  # tokenising, projector and the LLM's first forward pass
    generation_ms: float  # every later decoding step
    steps: int  # LLM forward passes, one per generated token


class _StepClock:
    """Forward hook that records when each forward pass of the LLM ends."""

    def __init__(self):
        self.times: list[float] = []

    def __call__(self, module, args, output):
        self.times.append(time.perf_counter())


@dataclass(eq=False)
class ModelBundle:
    """The VQ-VAE tokenizer, the motion-language model and the name of its LLM, loaded once.

    The projector reads features normalised with the tokenizer's statistics, which are the
    training split's statistics that the projector was trained with.
    """

    tokenizer: Tokenizer
    model: MotionLanguageModel
    llm_name: str = "custom"

    def __post_init__(self):
        if self.model.projector.config.frames_per_index != self.tokenizer.frames_per_index:
            raise ValueError(
                f"projector groups {self.model.projector.config.frames_per_index} frames per index but the "
                f"tokenizer has {self.tokenizer.frames_per_index}; train the projector for this tokenizer"
            )

    @property
    def codebook_hash(self) -> bytes:
        return self.tokenizer.hash

    def parse(self, data: bytes, max_indices: int) -> MotionPacket:
        """Check untrusted packet bytes against the loaded codebook and return the packet.

        Raises the `PacketError` subclasses of `decode_packet`, and PacketFieldError when
        codebook_size, frames_per_index or fps differs from the tokenizer's. A packet can carry
        the right codebook hash with another K or fps only if its sender is broken or forged the header.
        """
        packet = decode_packet(
            data, expected_hash=self.tokenizer.hash, max_indices=max_indices, model=self.tokenizer.index_model
        )
        expected = {
            "codebook_size": self.tokenizer.codebook_size,
            "frames_per_index": self.tokenizer.frames_per_index,
            "fps": self.tokenizer.fps,
        }
        for name, value in expected.items():
            if getattr(packet, name) != value:
                raise PacketFieldError(
                    name,
                    f"{name} is {getattr(packet, name)}, but the loaded tokenizer has {value}; "
                    "encode the motion with the tokenizer this server loaded",
                )
        if packet.index_count == 0:
            raise PacketFieldError("index_count", "index_count is 0, but a question needs at least one index of motion")
        return packet

    def check_prompt(self, index_count: int, question: str) -> None:
        """Raise ValueError if the prompt of index_count indices and this question exceeds the LLM's max_length."""
        frames = index_count * self.tokenizer.frames_per_index
        self.model.encode(question, self.model.projector.num_tokens(frames))

    def features(self, indices: np.ndarray) -> np.ndarray:
        """Decode indices (N,) into normalised features (4N, 263) float32 for the projector."""
        raw = self.tokenizer.decode(indices)
        return ((raw - self.tokenizer.mean) / self.tokenizer.std).astype(np.float32)

    def generate(self, motions: Sequence[np.ndarray], questions: Sequence[str], max_new_tokens: int) -> GenerateResult:
        """Answer each question about its normalised motion (T_i, 263) in one batched call."""
        clock = _StepClock()
        handle = self.model.llm.register_forward_hook(clock)
        started = time.perf_counter()
        try:
            texts = self.model.generate(motions, questions, max_new_tokens=max_new_tokens)
        finally:
            handle.remove()
        ended = time.perf_counter()
        first = clock.times[0] if clock.times else ended
        return GenerateResult(texts, 1000 * (first - started), 1000 * (ended - first), len(clock.times))

    def score(self, motion: np.ndarray, question: str, choices: Sequence[str]) -> np.ndarray:
        """Return the log-likelihood (C,) of each choice."""
        return self.model.score_choices(motion, question, list(choices))


def load_motion_tokenizer(source: str | os.PathLike, seed: int = 0) -> Tokenizer:
    """Load a tokenizer folder, or build an untrained one for RANDOM_TOKENIZER or TINY (equal seeds, equal hashes)."""
    if source == RANDOM_TOKENIZER:
        from toau.config import load_params

        return random_tokenizer(VQVAEConfig.from_dict(load_params(section="tokenizer")["model"]), seed)
    if source == TINY:
        return random_tokenizer(seed=seed)
    return load_tokenizer(source)


def check_projector_codebook(projector: str | os.PathLike, tokenizer: Tokenizer) -> None:
    """Raise when the projector folder records a codebook other than the tokenizer's.

    The projector stage writes cloud.json with the codebook hash of the motion it was trained on;
    a folder without that file (a projector saved by hand) is accepted as it is.
    """
    record_path = Path(projector) / "cloud.json"
    if not record_path.is_file():
        return
    trained_on = json.loads(record_path.read_text()).get("codebook_hash")
    if trained_on is not None and trained_on != tokenizer.hash.hex():
        raise ValueError(
            f"the projector in {projector} was trained on motion decoded by codebook {trained_on}, but the "
            f"tokenizer has codebook {tokenizer.hash.hex()}; pass the tokenizer it was trained with or rerun "
            f"`dvc repro projector`"
        )


def load_bundle(
    tokenizer: str | os.PathLike = RANDOM_TOKENIZER,
    projector: str | os.PathLike | None = None,
    llm_name: str = llm.SMOLLM2,
    *,
    seed: int = 0,
    tokens_per: str = "frame",
) -> ModelBundle:
    """Load a tokenizer, an LLM and a projector into a bundle.

    tokenizer: a tokenizer folder, RANDOM_TOKENIZER or TINY. llm_name: a name that
    `toau.cloud.llm.load_backbone` accepts, or TINY. projector: a projector folder, or None for an
    untrained one with `tokens_per` motion tokens. Untrained parts (seeded) cost the same
    compute as trained ones, so they give real timings but meaningless answers.
    """
    motion_tokenizer = load_motion_tokenizer(tokenizer, seed)

    if llm_name == TINY:
        text_tokenizer = llm.tiny_tokenizer()
        backbone = llm.tiny_llama(text_tokenizer, seed=seed)
        llm.add_motion_tokens(backbone, text_tokenizer)
        llm.freeze(backbone)
    else:
        backbone, text_tokenizer = llm.load_backbone(llm_name)

    if projector is None:
        log.warning("no projector given: using an untrained one, so the generated text is meaningless")
        torch.manual_seed(seed)
        width = backbone.get_input_embeddings().weight.shape[1]
        config = ProjectorConfig(width, tokens_per, frames_per_index=motion_tokenizer.frames_per_index)
        motion_projector = MotionProjector(config)
    else:
        check_projector_codebook(projector, motion_tokenizer)
        motion_projector = load_projector(projector)
    model = MotionLanguageModel(backbone, text_tokenizer, motion_projector)
    return ModelBundle(motion_tokenizer, model, f"{TINY}-llama" if llm_name == TINY else str(llm_name))


def random_tokenizer(config: VQVAEConfig | None = None, seed: int = 0) -> Tokenizer:
    """Build an untrained VQ-VAE tokenizer with a random codebook and statistics.

    It costs the same compute as a trained one of the same config, so it serves timing
    benchmarks, smoke tests and tests. Equal seeds give equal codebook hashes.
    """
    config = config or VQVAEConfig(width=16, depth=1)
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = VQVAE(config)
    with torch.no_grad():
        model.quantizer.codebook.copy_(torch.randn(config.nb_code, config.code_dim, generator=generator))
    rng = np.random.default_rng(seed)
    mean = rng.standard_normal(FEATURE_DIM).astype(np.float32)
    std = rng.uniform(0.5, 2.0, FEATURE_DIM).astype(np.float32)
    return Tokenizer(model.eval(), mean, std)


def tiny_bundle(seed: int = 0) -> ModelBundle:
    """Build a bundle of random tiny models in about a second, one motion token per index.

    The generated text is meaningless. The bundle exercises the service machinery in tests and load tests.
    """
    return load_bundle(TINY, None, TINY, seed=seed, tokens_per="index")


# ---------------------------------------------------------------- jobs and worker


@dataclass
class JobResult:
    answer: str | None  # generated text, for jobs without choices
    scores: list[float] | None  # log-likelihood per choice, for jobs with choices
    batch_size: int  # jobs that shared the model call
    timings_ms: dict[str, float]  # queue_wait, decode, prefill, generation


@dataclass(eq=False)
class Job:
    """One request for the worker: indices (N,) of a checked packet and the question.

    choices None asks for a generated answer; a tuple asks for the scores of the choices.
    """

    request_id: str
    indices: np.ndarray
    question: str
    choices: tuple[str, ...] | None = None
    max_new_tokens: int = ServiceLimits.max_new_tokens
    future: Future = field(default_factory=Future)
    enqueued_at: float = 0.0


_STOP = object()


class BatchWorker:
    """A thread that runs queued jobs on the bundle, batching generation (see the module docstring)."""

    def __init__(self, bundle: ModelBundle, limits: ServiceLimits = ServiceLimits()):
        self.bundle = bundle
        self.limits = limits
        self._queue: queue.Queue = queue.Queue(maxsize=limits.max_queue)
        self._thread = threading.Thread(target=self._run, name="toau-batch-worker", daemon=True)
        self._stopped = threading.Event()
        self.batches_run = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 30.0) -> None:
        """Finish the running batch, fail the queued jobs with ServiceStoppedError, and join the thread."""
        self._stopped.set()
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is not _STOP and job.future.set_running_or_notify_cancel():
                job.future.set_exception(ServiceStoppedError("the server is shutting down"))
        try:
            self._queue.put_nowait(_STOP)
        except queue.Full:
            pass
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    @property
    def queue_depth(self) -> int:
        return self._queue.qsize()

    def submit(self, job: Job) -> Future:
        """Queue a job and return its future; raise QueueFullError or ServiceStoppedError instead of blocking."""
        if self._stopped.is_set():
            raise ServiceStoppedError("the server is shutting down")
        job.enqueued_at = time.perf_counter()
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            raise QueueFullError(f"{self.limits.max_queue} requests are already waiting") from None
        return job.future

    def _next_batch(self) -> list[Job] | None:
        """Block for one job, then gather more until max_batch or batch_window_s; None means stop."""
        first = self._queue.get()
        if first is _STOP:
            return None
        batch = [first]
        deadline = time.perf_counter() + self.limits.batch_window_s
        while len(batch) < self.limits.max_batch:
            remaining = deadline - time.perf_counter()
            try:
                job = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if job is _STOP:
                self._queue.put_nowait(_STOP)
                break
            batch.append(job)
        return batch

    def _run(self) -> None:
        log.info("batch worker started: max_batch %d, window %.1f ms", self.limits.max_batch, 1000 * self.limits.batch_window_s)
        while True:
            batch = self._next_batch()
            if batch is None:
                break
            # A job whose request timed out in the queue is cancelled and skipped here.
            live = [job for job in batch if job.future.set_running_or_notify_cancel()]
            for group in _group_jobs(live):
                self._run_group(group)
            self.batches_run += 1
        log.info("batch worker stopped after %d batches", self.batches_run)

    def _run_group(self, jobs: list[Job]) -> None:
        try:
            if jobs[0].choices is None:
                results = self._answer(jobs)
            else:
                results = [self._choose(jobs[0])]
        except Exception as error:  # the request handlers turn it into a 500 response
            log.exception("batch of requests %s failed", [job.request_id for job in jobs])
            for job in jobs:
                job.future.set_exception(error)
            return
        for job, result in zip(jobs, results):
            job.future.set_result(result)

    def _decode(self, job: Job, started: float) -> tuple[np.ndarray, dict]:
        decode_started = time.perf_counter()
        features = self.bundle.features(job.indices)
        timings = {
            "queue_wait": 1000 * (started - job.enqueued_at),
            "decode": 1000 * (time.perf_counter() - decode_started),
        }
        return features, timings

    def _answer(self, jobs: list[Job]) -> list[JobResult]:
        started = time.perf_counter()
        decoded = [self._decode(job, started) for job in jobs]
        generated = self.bundle.generate(
            [features for features, _ in decoded], [job.question for job in jobs], jobs[0].max_new_tokens
        )
        results = []
        for text, (_, timings) in zip(generated.texts, decoded):
            timings.update(prefill=generated.prefill_ms, generation=generated.generation_ms)
            results.append(JobResult(text, None, len(jobs), timings))
        return results

    def _choose(self, job: Job) -> JobResult:
        started = time.perf_counter()
        features, timings = self._decode(job, started)
        scoring_started = time.perf_counter()
        scores = self.bundle.score(features, job.question, job.choices)
        timings.update(prefill=1000 * (time.perf_counter() - scoring_started), generation=0.0)
        return JobResult(None, [float(score) for score in scores], 1, timings)


def _group_jobs(jobs: list[Job]) -> list[list[Job]]:
    """Split jobs into generate groups (equal max_new_tokens, in arrival order) and single choice jobs."""
    groups: dict[int, list[Job]] = {}
    singles = []
    for job in jobs:
        if job.choices is None:
            groups.setdefault(job.max_new_tokens, []).append(job)
        else:
            singles.append([job])
    return list(groups.values()) + singles
