"""The cloud motion-language model: projected motion spliced into a frozen LLM's prompt.

The user turn of the chat is `<motion_start>` + `<motion>` x N + `<motion_end>` + question. The
input embeddings at the N `<motion>` positions are replaced by the projector's output, and the
LLM continues from the assistant turn. Batches are left-padded, with position ids counted from
each sample's first real token, so a sample gives the same result alone or in a batch.
"""

import logging
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from toau.cloud.llm import MOTION_END_TOKEN, MOTION_START_TOKEN, MOTION_TOKEN
from toau.cloud.projector import MotionProjector

log = logging.getLogger(__name__)

DEFAULT_MAX_NEW_TOKENS = 64
IGNORE_INDEX = -100  # label of positions that the loss skips (torch cross_entropy's default ignore_index)


class Sample(NamedTuple):
    features: np.ndarray  # (T, 263) float32, normalised with the training statistics
    question: str
    answer: str


class Encoded(NamedTuple):
    ids: list[int]  # prompt followed by the answer's tokens (if any)
    num_prompt_tokens: int


def left_pad(rows: Sequence[Sequence[int]], value: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad integer rows to one length: returns values (B, L) and attention mask (B, L)."""
    length = max(len(row) for row in rows)
    values = torch.full((len(rows), length), value, dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    for i, row in enumerate(rows):
        if row:
            values[i, length - len(row) :] = torch.as_tensor(row, dtype=torch.long)
            mask[i, length - len(row) :] = 1
    return values, mask


def right_pad(rows: Sequence[Sequence[int]], value: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad integer rows: values (B, L) and mask (B, L), the mirror of `left_pad`."""
    flipped, mask = left_pad([list(reversed(row)) for row in rows], value)
    return flipped.flip(1), mask.flip(1)


def position_ids_from_mask(mask: torch.Tensor) -> torch.Tensor:
    """Positions (B, L) that start at 0 on each row's first real token; padding gets 0."""
    return (mask.cumsum(dim=-1) - 1).clamp(min=0)


def splice_motion(
    embeds: torch.Tensor, ids: torch.Tensor, motion_id: int, motion_embeds: Sequence[torch.Tensor]
) -> torch.Tensor:
    """Replace the embeddings (B, L, d) at the `motion_id` positions of `ids` (B, L) by motion embeddings.

    `motion_embeds[i]` (N_i, d) fills the N_i placeholders of row i in order. Returns a new tensor,
    so gradients flow into `motion_embeds`.
    """
    placeholders = ids == motion_id
    counts = placeholders.sum(dim=1).tolist()
    if len(motion_embeds) != len(counts):
        raise ValueError(f"{len(counts)} prompts but {len(motion_embeds)} motions were given")
    for i, (count, motion) in enumerate(zip(counts, motion_embeds)):
        if count != motion.shape[0]:
            raise ValueError(
                f"sample {i}: the prompt has {count} {MOTION_TOKEN} placeholders "
                f"but {motion.shape[0]} motion embeddings were given"
            )
    motion = torch.cat(list(motion_embeds)).to(embeds.dtype)
    return embeds.masked_scatter(placeholders.unsqueeze(-1), motion)


class MotionLanguageModel(nn.Module):
    """Frozen causal LM + trainable motion projector.

    `llm` and `tokenizer` must come from `toau.cloud.llm.load_backbone` (or carry the motion tokens
    some other way). `max_length` caps the tokens of one sequence; None means the LLM's
    `max_position_embeddings`.
    """

    def __init__(
        self,
        llm: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        projector: MotionProjector,
        max_length: int | None = None,
    ):
        super().__init__()
        self.llm = llm
        self.tokenizer = tokenizer
        self.projector = projector
        self.max_length = max_length or llm.config.max_position_embeddings

        vocab = tokenizer.get_vocab()
        missing = [token for token in (MOTION_TOKEN, MOTION_START_TOKEN, MOTION_END_TOKEN) if token not in vocab]
        if missing:
            raise ValueError(
                f"tokenizer lacks the motion tokens {missing}; load the LLM with toau.cloud.llm.load_backbone"
            )
        self.motion_id = vocab[MOTION_TOKEN]
        self.motion_end_id = vocab[MOTION_END_TOKEN]
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

        width = llm.get_input_embeddings().weight.shape[1]
        if projector.config.llm_hidden_size != width:
            raise ValueError(
                f"projector outputs width {projector.config.llm_hidden_size} "
                f"but the LLM embeddings have width {width}; "
                f"build the projector with llm_hidden_size={width}"
            )

    def train(self, mode: bool = True) -> "MotionLanguageModel":
        """Set the projector's mode; the frozen LLM stays in eval mode."""
        super().train(mode)
        self.llm.eval()
        return self

    @property
    def device(self) -> torch.device:
        return self.llm.get_input_embeddings().weight.device

    # ------------------------------------------------------------ prompts and tokens

    def _user_message(self, question: str, num_motion_tokens: int) -> list[dict]:
        content = MOTION_START_TOKEN + MOTION_TOKEN * num_motion_tokens + MOTION_END_TOKEN + question
        return [{"role": "user", "content": content}]

    def build_prompt(self, question: str, num_motion_tokens: int) -> str:
        """Render the chat up to the start of the assistant's answer."""
        messages = self._user_message(question, num_motion_tokens)
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def completion_text(self, question: str, num_motion_tokens: int, answer: str) -> str:
        """Render the assistant's turn that follows `build_prompt`: the answer and the template's end-of-turn text."""
        prompt = self.build_prompt(question, num_motion_tokens)
        messages = self._user_message(question, num_motion_tokens) + [{"role": "assistant", "content": answer}]
        full = self.tokenizer.apply_chat_template(messages, tokenize=False)
        if not full.startswith(prompt):
            raise ValueError(
                "the chat template does not render the assistant turn after the generation prompt, "
                f"so the answer tokens cannot be separated: prompt {prompt!r}, full chat {full!r}"
            )
        return full[len(prompt) :]

    def _tokenize(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def encode(self, question: str, num_motion_tokens: int, answer: str | None = None) -> Encoded:
        """Tokenise the prompt (and the answer turn, cut at `max_length`).

        The prompt and the answer are tokenised separately, the prompt exactly as for generation.
        Only answer tokens are ever truncated: a prompt longer than `max_length` raises ValueError,
        with its own message when the cut would fall inside the motion span.
        """
        prompt = self._tokenize(self.build_prompt(question, num_motion_tokens))
        motion_end = prompt.index(self.motion_end_id) + 1
        if motion_end > self.max_length:
            raise ValueError(
                f"the prompt needs {motion_end} tokens up to the end of the motion span "
                f"({num_motion_tokens} motion tokens) but max_length is {self.max_length}; "
                f"shorten the motion or raise max_length"
            )
        if len(prompt) > self.max_length:
            raise ValueError(
                f"the prompt is {len(prompt)} tokens long but max_length is {self.max_length}; "
                f"shorten the question or raise max_length"
            )
        if answer is None:
            return Encoded(prompt, len(prompt))
        completion = self._tokenize(self.completion_text(question, num_motion_tokens, answer))
        ids = (prompt + completion)[: self.max_length]
        return Encoded(ids, len(prompt))

    # ------------------------------------------------------------ embeddings

    def project(self, motion: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Project one motion (T, 263) to LLM input embeddings (N, d_model)."""
        features = motion if torch.is_tensor(motion) else torch.from_numpy(np.asarray(motion))
        if features.ndim != 2:
            raise ValueError(f"a motion must have shape (T, 263), got {tuple(features.shape)}")
        weight = next(self.projector.parameters())
        return self.projector(features.to(device=weight.device, dtype=weight.dtype))

    def embed_batch(
        self, rows: Sequence[Sequence[int]], motion_embeds: Sequence[torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Left-pad token rows and splice in the motion.

        Returns inputs_embeds (B, L, d), the attention mask (B, L) and position ids (B, L).
        """
        ids, mask = left_pad(rows, self.pad_id)
        ids, mask = ids.to(self.device), mask.to(self.device)
        embeds = self.llm.get_input_embeddings()(ids)
        embeds = splice_motion(embeds, ids, self.motion_id, motion_embeds)
        return embeds, mask, position_ids_from_mask(mask)

    # ------------------------------------------------------------ scoring and loss

    def answer_log_probs(
        self, motions: Sequence[np.ndarray | torch.Tensor], questions: Sequence[str], answers: Sequence[str]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Score each answer turn under teacher forcing.

        Returns the log-probability of every target token (B, K) and a mask (B, K) of the answer
        tokens, where K is the longest answer turn in the batch. Raises if a sample has no answer
        token left after truncation.
        """
        if not len(motions) == len(questions) == len(answers):
            raise ValueError(f"got {len(motions)} motions, {len(questions)} questions and {len(answers)} answers")
        motion_embeds = [self.project(motion) for motion in motions]
        encoded = [
            self.encode(question, embeds.shape[0], answer)
            for question, embeds, answer in zip(questions, motion_embeds, answers)
        ]
        answer_lengths = [len(e.ids) - e.num_prompt_tokens for e in encoded]
        for i, length in enumerate(answer_lengths):
            if length < 1:
                raise ValueError(
                    f"sample {i} has no answer token to supervise: the prompt alone fills max_length={self.max_length}"
                )

        embeds, mask, positions = self.embed_batch([e.ids for e in encoded], motion_embeds)
        # Left padding puts every answer at the end, so only the last K + 1 positions need logits.
        keep = max(answer_lengths) + 1
        logits = self.llm(
            inputs_embeds=embeds, attention_mask=mask, position_ids=positions, logits_to_keep=keep
        ).logits
        targets, _ = left_pad([e.ids[e.num_prompt_tokens :] for e in encoded], IGNORE_INDEX)
        targets = targets.to(logits.device)
        answer_mask = targets != IGNORE_INDEX
        log_probs = torch.log_softmax(logits[:, :-1].float(), dim=-1)
        token_log_probs = log_probs.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        return token_log_probs * answer_mask, answer_mask

    def loss(self, batch: Sequence[Sample]) -> torch.Tensor:
        """Mean cross-entropy over the answer tokens of the batch (prompt and padding are not supervised)."""
        features, questions, answers = zip(*batch)
        token_log_probs, answer_mask = self.answer_log_probs(features, questions, answers)
        return -token_log_probs.sum() / answer_mask.sum()

    @torch.no_grad()
    def score_choices(self, motion: np.ndarray | torch.Tensor, question: str, choices: Sequence[str]) -> np.ndarray:
        """Return the log-likelihood (C,) of each choice as the answer.

        Each score sums over the choice's tokens and the template's end-of-turn tokens, so a choice
        that is a prefix of another is not favoured for being short. The shared prompt (motion and
        question) runs through the LLM once with a KV cache, and the C answer turns then run as one
        right-padded batch on C copies of that cache: C - 1 fewer passes over the prompt than
        `score_choices_full`, with the same scores.
        """
        if not choices:
            raise ValueError("score_choices needs at least one choice")
        motion_embeds = self.project(motion)
        num_motion_tokens = motion_embeds.shape[0]
        prompt = self.encode(question, num_motion_tokens).ids
        answers = []
        for choice in choices:
            encoded = self.encode(question, num_motion_tokens, choice)
            answers.append(encoded.ids[encoded.num_prompt_tokens :])
            if not answers[-1]:
                raise ValueError(f"choice {choice!r} has no answer token left within max_length={self.max_length}")

        embeds, mask, positions = self.embed_batch([prompt], [motion_embeds])
        prefill = self.llm(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1)
        first = torch.log_softmax(prefill.logits[0, -1].float(), dim=-1)  # (V,) for every answer's first token

        count, longest = len(answers), max(len(answer) for answer in answers)
        ids, answer_mask = right_pad(answers, self.pad_id)  # (C, L) each
        scores = first[ids[:, 0]]
        if longest > 1:
            cache = prefill.cache
            cache.batch_repeat_interleave(count)
            prompt_mask = torch.ones((count, len(prompt)), dtype=torch.long)
            attention = torch.cat([prompt_mask, answer_mask[:, :-1]], dim=1).to(self.device)
            answer_positions = (len(prompt) + torch.arange(longest - 1)).expand(count, -1).to(self.device)
            logits = self.llm(
                input_ids=ids[:, :-1].to(self.device), attention_mask=attention, position_ids=answer_positions,
                cache=cache, use_cache=True,
            ).logits  # (C, L-1, V)
            log_probs = torch.log_softmax(logits.float(), dim=-1).gather(-1, ids[:, 1:, None].to(logits.device))[..., 0]
            scores = scores + (log_probs.cpu() * answer_mask[:, 1:]).sum(dim=1)
        return scores.double().cpu().numpy()

    @torch.no_grad()
    def score_choices_full(self, motion: np.ndarray | torch.Tensor, question: str, choices: Sequence[str]) -> np.ndarray:
        """Return the same scores as `score_choices` by running C full sequences in one batch.

        Slower, but it shares its code path with training (`answer_log_probs`), so it is the
        reference the cached scoring is tested against.
        """
        if not choices:
            raise ValueError("score_choices_full needs at least one choice")
        token_log_probs, _ = self.answer_log_probs([motion] * len(choices), [question] * len(choices), choices)
        return token_log_probs.sum(dim=1).double().cpu().numpy()

    # ------------------------------------------------------------ generation

    @torch.no_grad()
    def generate(
        self,
        motions: Sequence[np.ndarray | torch.Tensor],
        questions: Sequence[str],
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    ) -> list[str]:
        """Answer each question about its motion (T_i, 263) by batched greedy decoding."""
        if len(motions) != len(questions):
            raise ValueError(f"got {len(motions)} motions but {len(questions)} questions")
        if not motions:
            return []
        motion_embeds = [self.project(motion) for motion in motions]
        rows = [self.encode(question, embeds.shape[0]).ids for question, embeds in zip(questions, motion_embeds)]
        embeds, mask, positions = self.embed_batch(rows, motion_embeds)
        motion_token_ids = self.tokenizer.convert_tokens_to_ids([MOTION_TOKEN, MOTION_START_TOKEN, MOTION_END_TOKEN])
        output = self.llm.generate(
            inputs_embeds=embeds,
            attention_mask=mask,
            position_ids=positions,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=self.pad_id,
            suppress_tokens=motion_token_ids,
        )
        # Given only inputs_embeds, generate returns just the new tokens.
        return [text.strip() for text in self.tokenizer.batch_decode(output, skip_special_tokens=True)]
