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


@torch.no_grad()
def greedy_batch(model, prompts: Sequence[torch.Tensor], tok, tries: Sequence[Trie | None],
                 max_new: int = 16) -> list[str]:
    """``greedy`` for several prompts at once: prompt i's embeddings (1, T_i, D), decoded under
    ``tries[i]``.  One forward serves every row: the prompts are left-padded, and each later forward
    feeds every row's pending tokens right-padded to the longest (a row with none feeds only padding);
    padded positions are masked out and position ids count real tokens only, so each row computes what
    ``greedy`` computes for it alone (up to float summation order)."""
    from transformers import DynamicCache

    B, D = len(prompts), prompts[0].shape[-1]
    lens = [p.shape[1] for p in prompts]
    T = max(lens)
    device = prompts[0].device
    embeds = prompts[0].new_zeros((B, T, D))
    mask = torch.zeros((B, T), dtype=torch.long, device=device)
    for i, p in enumerate(prompts):
        embeds[i, T - lens[i]:] = p[0]
        mask[i, T - lens[i]:] = 1
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    cache = DynamicCache()
    h = model.body(inputs_embeds=embeds, attention_mask=mask, position_ids=pos, cache=cache,
                   use_cache=True).last_hidden_state[:, -1]  # (B, D): every row's last prompt position
    seen = torch.tensor(lens, device=device)  # real tokens per row so far (the next position id)
    nodes = [t.root if t is not None else None for t in tries]
    ids: list[list[int]] = [[] for _ in range(B)]
    pending: list[list[int]] = [[] for _ in range(B)]
    out: list[str | None] = [None] * B
    for _ in range(max_new + 1):
        # advance each open row through forced tokens; note which need logits
        need = []
        for i in range(B):
            while out[i] is None and nodes[i] is not None and len(ids[i]) < max_new:  # greedy's one per step
                allowed = [t for t in nodes[i] if t is not None]
                if len(allowed) != 1:
                    break
                nodes[i] = nodes[i][allowed[0]]
                if allowed[0] == tok.eos_token_id:
                    out[i] = nodes[i][None]
                else:
                    ids[i].append(allowed[0])
                    pending[i].append(allowed[0])
            if out[i] is None:
                if len(ids[i]) >= max_new:
                    out[i] = tok.decode(ids[i]).strip()
                else:
                    need.append(i)
        if not need:
            break
        if any(pending[i] for i in need):  # feed pending tokens: one right-padded chunk for all rows
            P = max(len(pending[i]) for i in need)
            chunk = torch.full((B, P), tok.eos_token_id, dtype=torch.long, device=device)
            cmask = torch.zeros((B, P), dtype=torch.long, device=device)
            for i in need:
                n = len(pending[i])
                chunk[i, :n] = torch.tensor(pending[i], device=device)
                cmask[i, :n] = 1
            cpos = seen[:, None] + (cmask.cumsum(-1) - 1).clamp(min=0)
            mask = torch.cat([mask, cmask], 1)
            hs = model.body(inputs_embeds=model.embed(chunk), attention_mask=mask, position_ids=cpos, cache=cache,
                            use_cache=True).last_hidden_state  # (B, P, D)
            for i in need:
                n = len(pending[i])
                if n:
                    h[i] = hs[i, n - 1]
                    seen[i] += n
                    pending[i] = []
        logits = model.head(h[need])  # (len(need), V)
        for row, i in enumerate(need):
            if nodes[i] is not None:
                allowed = [t for t in nodes[i] if t is not None]
                nxt = allowed[int(torch.argmax(logits[row, allowed]))]
                nodes[i] = nodes[i][nxt]
                if nxt == tok.eos_token_id:
                    out[i] = nodes[i][None]
                    continue
            else:
                nxt = int(torch.argmax(logits[row]))
                if nxt == tok.eos_token_id:
                    out[i] = tok.decode(ids[i]).strip()
                    continue
                if "\n" in tok.decode([nxt]):
                    ids[i].append(nxt)
                    out[i] = tok.decode(ids[i]).strip()
                    continue
            ids[i].append(nxt)
            pending[i].append(nxt)
    return [o if o is not None else tok.decode(i).strip() for o, i in zip(out, ids)]
