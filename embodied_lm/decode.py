"""Greedy decoding with a KV cache, optionally grammar-constrained.

Constrained decoding walks a token trie of every well-formed skill call over the objects in the
current scene, plus ``done`` and the answers (``skills.vocab.all_calls``), so each emitted step parses
into a valid call — the model still chooses which one; feasibility (is the block clear?) is NOT encoded
in the grammar.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


class Trie:
    """Token-id prefix tree of candidate continuations (each ends with eos)."""

    def __init__(self, tok, candidates: Sequence[str]):
        self.root: dict = {}
        enc = tok([" " + c for c in candidates], add_special_tokens=False)["input_ids"]
        for seq, text in zip(enc, candidates):
            node = self.root
            for t in [*seq, tok.eos_token_id]:
                node = node.setdefault(t, {})
            node[None] = text  # leaf marker


@torch.no_grad()
def greedy(model, embeds: torch.Tensor, tok, trie: Trie | None = None, max_new: int = 16) -> str:
    """Decode from prefix ``embeds`` (1, T, D).  With ``trie`` only its continuations are allowed, and a
    token the trie forces (" obj" after "pick") is chosen without a forward pass: forced tokens wait in
    ``pending`` and enter the KV cache together with the next token that needs logits."""
    from transformers import DynamicCache

    return greedy_in_context(model, embeds, tok, trie, DynamicCache(), max_new)[0]


@torch.no_grad()
def greedy_in_context(model, embeds: torch.Tensor, tok, trie: Trie | None, cache, max_new: int = 16
                      ) -> tuple[str, list[int]]:
    """``greedy`` after the context already in ``cache`` (a ``DynamicCache``, extended in place):
    -> (text, the ids of the chosen tokens that entered the cache, in order)."""
    out = model.body(inputs_embeds=embeds, cache=cache, use_cache=True)
    h = out.last_hidden_state[:, -1]  # (1, D)
    node = trie.root if trie is not None else None
    ids: list[int] = []
    fed: list[int] = []  # chosen and in the cache
    pending: list[int] = []  # chosen, not yet in the cache
    for _ in range(max_new):
        if node is not None:
            allowed = [t for t in node if t is not None]
            if len(allowed) == 1:
                nxt = allowed[0]
            else:
                if pending:
                    new = model.embed(torch.tensor([pending], device=embeds.device))  # (1, P, D)
                    out = model.body(inputs_embeds=new, cache=cache, use_cache=True)
                    h = out.last_hidden_state[:, -1]
                    fed, pending = fed + pending, []
                logits = model.head(h)[0]  # (V,)
                nxt = allowed[int(torch.argmax(logits[allowed]))]
            node = node[nxt]
            if nxt == tok.eos_token_id:
                return node[None], fed
            ids.append(nxt)
            pending.append(nxt)
            continue
        nxt = int(torch.argmax(model.head(h)[0]))
        if nxt == tok.eos_token_id:
            break
        ids.append(nxt)
        if "\n" in tok.decode([nxt]):
            break
        new = model.embed(torch.tensor([[nxt]], device=embeds.device))  # (1, 1, D)
        out = model.body(inputs_embeds=new, cache=cache, use_cache=True)
        h = out.last_hidden_state[:, -1]
        fed.append(nxt)
    return tok.decode(ids).strip(), fed


@torch.no_grad()
def score_candidates(model, embeds: torch.Tensor, tok, candidates: Sequence[str]) -> torch.Tensor:
    """Sum of log-probabilities of each candidate (+ eos) after prefix ``embeds`` (1, T, D) -> (C,)."""
    from transformers import DynamicCache

    out = model.body(inputs_embeds=embeds, use_cache=True, cache=DynamicCache())
    enc = tok([" " + c for c in candidates], add_special_tokens=False)["input_ids"]
    seqs = [s + [tok.eos_token_id] for s in enc]
    L = max(len(s) for s in seqs)
    C = len(seqs)
    ids = torch.full((C, L), tok.eos_token_id, dtype=torch.long)
    mask = torch.zeros((C, L), dtype=torch.bool)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = torch.tensor(s)
        mask[i, :len(s)] = True
    # Reuse the prefix cache for every candidate: expand it along the batch.
    cache = out.cache
    cache.batch_repeat_interleave(C)
    ids, mask = ids.to(embeds.device), mask.to(embeds.device)
    first = model.head(out.last_hidden_state[:, -1]).log_softmax(-1)[0]  # (V,)
    rest = model.body(inputs_embeds=model.embed(ids[:, :-1]), cache=cache, use_cache=False)
    logp = model.head(rest.last_hidden_state).log_softmax(-1)  # (C, L-1, V)
    scores = first[ids[:, 0]]  # (C,)
    tok_lp = logp.gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)  # (C, L-1)
    return scores + (tok_lp * mask[:, 1:]).sum(-1)
